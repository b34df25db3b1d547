"""Converter: round trip, bad input accounting, strict mode, formats, shard sizing, determinism, resume."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import TO_TENSOR, make_mixed_set, make_numbered_set, write_jsonl
from open_clip_thermal.convert import main
from open_clip_thermal.data.loader import make_thermal_dataset

REPO = Path(__file__).resolve().parents[1]


def _tokenize(text):
    """Stand-in tokenizer that keeps the caption recoverable (list of code points)."""
    import torch
    codes = [ord(c) for c in text][:200]
    return torch.tensor([codes + [0] * (200 - len(codes))])


def _untokenize(tokens):
    return "".join(chr(int(c)) for c in tokens if int(c))


def _convert(tmp_path, records, *extra, name="ann.jsonl"):
    annotations = write_jsonl(tmp_path / name, records)
    out = tmp_path / "out"
    status = main(["--annotations", str(annotations), "--image-root", str(tmp_path), "--output-dir", str(out),
                   "--no-progress", *extra])
    return status, out


def _members(tar_path):
    with tarfile.open(tar_path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


def test_round_trip_keeps_bytes_captions_and_pixels(tmp_path):
    records = make_mixed_set(tmp_path)
    # pseudo.jpg is random colour noise, i.e. strongly coloured: white-hot accepts its luma explicitly
    status, out = _convert(tmp_path, records, "--verify", "--palette", "white-hot")
    assert status == 0
    frames = json.loads((out / "manifest.json").read_text())["thermal_frames"]
    assert {k: frames[k] for k in ("grey_8bit", "high_bit_depth", "rgb_grey", "false_colour")} == \
        {"grey_8bit": 1, "high_bit_depth": 2, "rgb_grey": 0, "false_colour": 1}
    assert sorted(os.listdir(out)) == ["_convert_journal-thermal.jsonl", "manifest.json", "sizes.json",
                                       "thermal-train-000000.tar"]
    assert json.loads((out / "sizes.json").read_text()) == {"thermal-train-000000.tar": 4}
    members = _members(out / "thermal-train-000000.tar")
    key = "kaist_set00_grey16_tif"
    assert members[f"{key}.tif"] == (tmp_path / "thermal/grey16.tif").read_bytes()  # original bytes, no re-encode
    assert members[f"{key}.rgb.jpg"] == (tmp_path / "rgb/2.jpg").read_bytes()
    assert json.loads(members[f"{key}.json"])["time_of_day"] == "night"
    assert all("." not in name.split(".", 1)[0] for name in members)

    loaded = {meta["json"]["id"]: (image, _untokenize(g), _untokenize(f)) for image, g, f, meta in make_thermal_dataset(
        str(out / "thermal-train-000000.tar"), TO_TENSOR, _tokenize, captions="both", is_train=False, with_meta=True)}
    assert set(loaded) == {r["id"] for r in records}
    for record in records:
        image, global_caption, fg_caption = loaded[record["id"]]
        assert (global_caption, fg_caption) == (record["global_caption"], record["fg_caption"])
        source = Image.open(tmp_path / record["image"])
        values = np.asarray(source).astype(np.float64)
        if source.mode == "RGB":  # pseudo-colour JPEG: its luma
            expected = np.asarray(source.convert("L")) / 255.0
        elif values.max() < 256 and source.mode == "L":
            expected = values / 255.0
        else:  # 16-bit: 1st-99th percentile stretch, then 8-bit
            lo, hi = np.percentile(values, [1, 99])
            expected = np.round(np.clip((values - lo) / (hi - lo), 0, 1) * 255) / 255.0
        assert image.shape == (3, 12, 16)
        np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
        assert image.min() == 0.0 or source.mode == "RGB"


def test_bad_input_is_skipped_counted_and_listed(tmp_path):
    records = make_numbered_set(tmp_path, 4)
    (tmp_path / "thermal/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "thermal/empty.png").write_bytes(b"")
    records += [
        {"id": "corrupt", "image": "thermal/corrupt.png", "global_caption": "infrared thermal x", "fg_caption": "y"},
        {"id": "blank", "image": "thermal/0000.png", "global_caption": "   ", "fg_caption": "y"},
        {"id": "gone", "image": "thermal/missing.png", "global_caption": "infrared thermal x", "fg_caption": "y"},
        {"id": "zero", "image": "thermal/empty.png", "global_caption": "infrared thermal x", "fg_caption": "y"},
        {"id": "img0001", "image": "thermal/0002.png", "global_caption": "duplicate", "fg_caption": "y"},
        {"id": "nocap", "image": "thermal/0003.png", "fg_caption": "y"},
    ]
    status, out = _convert(tmp_path, records)
    assert status == 1  # 6 of 10 rows skipped: more than the default --max-skip-fraction 0.1
    manifest = json.loads((out / "manifest.json").read_text())  # ... but everything is written
    assert manifest["total_samples"] == 4 and manifest["skipped_count"] == 6
    assert manifest["total_rows"] == 10 and manifest["skipped_fraction"] == 0.6
    reasons = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["corrupt"].startswith("undecodable image")
    assert reasons["blank"].startswith("empty or whitespace global caption")
    assert reasons["gone"].startswith("missing image file")
    assert reasons["zero"].startswith("zero-size image file")
    assert reasons["img0001"].startswith("duplicate id (first seen at row 2)")
    assert reasons["nocap"].startswith("missing required field 'global_caption'")
    assert [s["row"] for s in manifest["skipped"]] == [5, 6, 7, 8, 9, 10]
    assert sum(manifest["skipped_by_reason"].values()) == 6
    assert manifest["splits"]["train"]["caption_tokens"]["global"]["count"] == 4


def test_strict_fails_naming_the_row(tmp_path, capsys):
    records = make_numbered_set(tmp_path, 3)
    records.insert(1, {"id": "blank", "image": "thermal/0000.png", "global_caption": "", "fg_caption": "y"})
    status, out = _convert(tmp_path, records, "--strict")
    assert status == 1
    error = capsys.readouterr().err
    assert "row 2" in error and "'blank'" in error and "empty or whitespace global caption" in error
    assert not (out / "manifest.json").exists()

    (tmp_path / "thermal/0001.png").write_bytes(b"broken")
    records.pop(1)
    status, _ = _convert(tmp_path, records, "--strict")
    assert status == 1
    assert "row 2 (id 'img0001'): undecodable image" in capsys.readouterr().err


def test_zero_samples_written_is_an_error(tmp_path):
    records = [{"id": "a", "image": "nope.png", "global_caption": "infrared thermal", "fg_caption": "x"}]
    status, out = _convert(tmp_path, records)
    assert status == 1
    assert json.loads((out / "manifest.json").read_text())["skipped_count"] == 1


def test_csv_tsv_json_with_custom_fields_and_non_utf8_row(tmp_path):
    make_numbered_set(tmp_path, 3)
    header = ["file", "cap", "fine", "weather"]
    rows = [[f"thermal/{i:04d}.png", f"infrared thermal {i}", f"fine {i}", "rain"] for i in range(3)]
    common = ["--id-field", "", "--image-field", "file", "--global-field", "cap", "--fg-field", "fine",
              "--meta-fields", "weather", "--image-root", str(tmp_path), "--no-progress", "--max-skip-fraction", "0.5"]
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        path = tmp_path / f"ann.{fmt}"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, delimiter=delimiter).writerows([header, *rows])
        with open(path, "ab") as handle:  # a latin-1 byte in the last row
            handle.write(delimiter.join(["thermal/0000.png", "caf\xe9", "x", "y"]).encode("latin-1") + b"\n")
        out = tmp_path / f"out_{fmt}"
        assert main(["--annotations", str(path), "--output-dir", str(out), *common]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["total_samples"] == 3
        assert [s["reason"] for s in manifest["skipped"]] == ["non-UTF-8 text [line 5]"]
        meta = json.loads(_members(out / "thermal-train-000000.tar")["thermal_0001.json"])
        assert meta["weather"] == "rain" and meta["id"] == "thermal/0001"
    listed = tmp_path / "ann.json"
    listed.write_text(json.dumps([dict(zip(header, row)) for row in rows]))
    assert main(["--annotations", str(listed), "--output-dir", str(tmp_path / "out_json"), *common]) == 0


def test_min_shards_spreads_each_split(tmp_path):
    records = make_numbered_set(tmp_path, 10) + make_numbered_set(tmp_path / "v", 2, split="val")
    for record in records[10:]:
        record["id"], record["image"] = "v" + record["id"], "v/" + record["image"]
    status, out = _convert(tmp_path, records, "--min-shards", "4", "--maxcount", "100")
    assert status == 0
    sizes = json.loads((out / "sizes.json").read_text())
    # 10 // 4 = 2 samples per shard -> 5 shards (>= 4); val has only 2 samples -> 2 shards and a warning
    assert sizes == {**{f"thermal-train-{i:06d}.tar": 2 for i in range(5)},
                     "thermal-val-000000.tar": 1, "thermal-val-000001.tar": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_shards"] == 5
    assert [w for w in manifest["warnings"] if "--min-shards" in w] == [
        w for w in manifest["warnings"] if w.startswith("split 'val' has 2 shard(s)")]


def test_same_input_gives_byte_identical_shards_and_seed_changes_order(tmp_path):
    records = make_numbered_set(tmp_path, 12)
    annotations = write_jsonl(tmp_path / "ann.jsonl", records)

    def run(out, seed):
        assert main(["--annotations", str(annotations), "--image-root", str(tmp_path), "--output-dir", str(out),
                     "--maxcount", "5", "--seed", str(seed), "--no-progress"]) == 0
        return {name: (out / name).read_bytes() for name in sorted(os.listdir(out)) if name.endswith(".tar")}

    first, second, other = run(tmp_path / "a", 3), run(tmp_path / "b", 3), run(tmp_path / "c", 4)
    assert first == second and len(first) == 3
    assert first != other
    keys = [name.split(".")[0] for blob in first.values() for name in _members_from_bytes(blob) if name.endswith(".txt")
            and not name.endswith(".fg.txt")]
    assert sorted(keys) == sorted(r["id"] for r in records) and keys != sorted(keys)


def _members_from_bytes(blob):
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        return [m.name for m in archive.getmembers()]


def test_existing_different_conversion_is_refused_without_overwrite(tmp_path):
    records = make_numbered_set(tmp_path, 4)
    assert _convert(tmp_path, records)[0] == 0
    status, out = _convert(tmp_path, records, "--seed", "9")
    assert status == 2
    assert _convert(tmp_path, records, "--seed", "9", "--overwrite")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 9


def test_killed_conversion_resumes_to_identical_duplicate_free_output(tmp_path):
    records = make_numbered_set(tmp_path, 60)
    annotations = write_jsonl(tmp_path / "ann.jsonl", records)

    def command(out):
        return [sys.executable, "-m", "open_clip_thermal.convert", "--annotations", str(annotations),
                "--image-root", str(tmp_path), "--output-dir", str(out), "--maxcount", "5", "--no-progress",
                "--threads", "1"]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(command(interrupted) + ["--throttle", "0.05"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (interrupted / "thermal-train-000000.tar").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(n for n in os.listdir(interrupted) if n.endswith(".tar"))
    assert 1 <= len(finished) < 12, "the kill should land mid-way"
    assert not (interrupted / "manifest.json").exists()

    # Re-runs in-process: the same code path as the CLI, without another interpreter start-up.
    assert main(command(interrupted)[3:]) == 0
    clean = tmp_path / "clean"
    assert main(command(clean)[3:]) == 0

    names = sorted(os.listdir(interrupted))
    assert not [n for n in names if n.endswith(".partial")]
    assert [n for n in names if n.endswith(".tar")] == [f"thermal-train-{i:06d}.tar" for i in range(12)]
    for name in names:
        if name.endswith(".tar") or name == "sizes.json":
            assert (interrupted / name).read_bytes() == (clean / name).read_bytes(), name
    manifest = json.loads((interrupted / "manifest.json").read_text())
    assert manifest["resumed_shards"] >= 1 and manifest["total_samples"] == 60
    keys = [n.split(".")[0] for tar in sorted(interrupted.glob("*.tar")) for n in _members(tar) if n.endswith(".json")]
    assert sorted(keys) == sorted(r["id"] for r in records)


def test_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--annotations", "--min-shards", "--maxcount", "--strict", "--verify", "--reencode", "--seed"):
        assert flag in text
    assert "--throttle" not in text and "(default: 10000)" in text


def test_verify_catches_truncated_image_that_passes_the_header_check(tmp_path):
    records = make_numbered_set(tmp_path, 2)
    big = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "thermal/0001.png")
    full = (tmp_path / "thermal/0001.png").read_bytes()
    (tmp_path / "thermal/0001.png").write_bytes(full[: len(full) // 2])
    status, out = _convert(tmp_path, records)
    assert status == 0 and json.loads((out / "manifest.json").read_text())["total_samples"] == 2
    status, out = _convert(tmp_path, records, "--verify", "--overwrite", "--max-skip-fraction", "0.5")
    manifest = json.loads((out / "manifest.json").read_text())
    assert status == 0 and manifest["total_samples"] == 1
    assert [(s["id"], s["stage"]) for s in manifest["skipped"]] == [("img0001", "write")]
    assert manifest["skipped"][0]["reason"].startswith("undecodable image")


def test_reencode_stores_lossless_sixteen_bit_png(tmp_path):
    array = np.random.default_rng(3).integers(1000, 3001, (5, 7)).astype(np.uint16)
    (tmp_path / "thermal").mkdir()
    Image.fromarray(array).save(tmp_path / "thermal/a.tif")
    records = [{"id": "a", "image": "thermal/a.tif", "global_caption": "infrared thermal", "fg_caption": "fine"}]
    status, out = _convert(tmp_path, records, "--reencode")
    assert status == 0
    members = _members(out / "thermal-train-000000.tar")
    assert sorted(members) == ["a.fg.txt", "a.json", "a.png", "a.txt"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(members["a.png"]))), array)


def _float_tiff(path, array):
    Image.fromarray(np.asarray(array, dtype=np.float32), mode="F").save(path, format="TIFF")
    assert Image.open(path).mode == "F"


def test_reencode_keeps_float_frames_instead_of_truncating_them_to_two_levels(tmp_path):
    (tmp_path / "thermal").mkdir()
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (8, 1))  # a float32 frame in [0, 1]
    counts = np.tile(np.arange(1000, 1064, dtype=np.float32), (8, 1))  # whole counts stored as float
    _float_tiff(tmp_path / "thermal/ramp.tif", ramp)
    _float_tiff(tmp_path / "thermal/counts.tif", counts)
    records = [{"id": name, "image": f"thermal/{name}.tif", "global_caption": "infrared thermal", "fg_caption": "f"}
               for name in ("ramp", "counts")]
    status, out = _convert(tmp_path, records, "--reencode")
    assert status == 0
    members = _members(out / "thermal-train-000000.tar")
    # whole-valued counts fit a lossless 16-bit PNG; fractional values stay in their float TIFF
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(members["counts.png"]))), counts.astype(np.uint16))
    assert members["ramp.tif"] == (tmp_path / "thermal/ramp.tif").read_bytes()
    assert json.loads(members["ramp.json"])["stored_as"].startswith("original float frame")
    loaded = {meta["json"]["id"]: image for image, _, meta in make_thermal_dataset(
        str(out / "thermal-train-000000.tar"), TO_TENSOR, _tokenize, captions="global", is_train=False,
        with_meta=True, thermal_norm="minmax")}
    for name, array in (("ramp", ramp), ("counts", counts)):
        levels = np.unique(np.round(loaded[name][0].numpy() * 255))
        assert len(levels) == 64, name  # 64 distinct values survive, not 2 grey levels


def _tars(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_refused_resume_names_the_settings_that_differ_and_touches_nothing(tmp_path, capsys):
    records = make_numbered_set(tmp_path, 6)
    assert _convert(tmp_path, records, "--maxcount", "2")[0] == 0
    out = tmp_path / "out"
    before, journal = _tars(out), (out / "_convert_journal-thermal.jsonl").read_bytes()
    capsys.readouterr()
    status, _ = _convert(tmp_path, records, "--maxcount", "3", "--seed", "9", "--allow-outside-root")
    err = capsys.readouterr().err
    assert status == 2
    assert "other settings (then -> now: allow_outside_root: false -> true; maxcount: 2 -> 3; seed: 0 -> 9)" in err
    assert "Rerun with the earlier settings and input to resume, pass --overwrite" in err
    assert _tars(out) == before and (out / "_convert_journal-thermal.jsonl").read_bytes() == journal


def test_refused_resume_with_a_changed_field_name_names_the_nested_setting(tmp_path, capsys):
    records = make_numbered_set(tmp_path, 4)
    assert _convert(tmp_path, records)[0] == 0
    capsys.readouterr()
    assert _convert(tmp_path, records, "--fg-field", "")[0] == 2
    assert 'fields.fg_caption: "fg_caption" -> ""' in capsys.readouterr().err


def test_refused_resume_with_the_same_settings_but_other_input_says_so(tmp_path, capsys):
    records = make_numbered_set(tmp_path, 4)
    assert _convert(tmp_path, records)[0] == 0
    capsys.readouterr()
    records[1]["global_caption"] = "infrared thermal global, edited"
    assert _convert(tmp_path, records)[0] == 2
    assert "the same settings but other input" in capsys.readouterr().err


def test_journal_of_an_older_version_without_settings_is_refused_saying_why(tmp_path, capsys):
    records = make_numbered_set(tmp_path, 4)
    assert _convert(tmp_path, records)[0] == 0
    journal = tmp_path / "out" / "_convert_journal-thermal.jsonl"
    lines = journal.read_text().splitlines()
    lines[0] = json.dumps({"fingerprint": "0" * 64})  # the header the previous version wrote
    journal.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert _convert(tmp_path, records)[0] == 2
    err = capsys.readouterr().err
    assert "journal records only a fingerprint (written by an older open_clip_thermal" in err and "--overwrite" in err
    journal.unlink()
    assert _convert(tmp_path, records)[0] == 2
    assert "with no readable conversion journal (_convert_journal-thermal.jsonl)" in capsys.readouterr().err


def test_same_settings_resume_keeps_every_finished_shard(tmp_path):
    records = make_numbered_set(tmp_path, 6)
    assert _convert(tmp_path, records, "--maxcount", "2")[0] == 0
    out = tmp_path / "out"
    header = json.loads((out / "_convert_journal-thermal.jsonl").read_text().splitlines()[0])
    assert header["settings"]["maxcount"] == 2 and len(header["fingerprint"]) == 64
    before = _tars(out)
    assert _convert(tmp_path, records, "--maxcount", "2")[0] == 0
    assert _tars(out) == before and json.loads((out / "manifest.json").read_text())["resumed_shards"] == 3

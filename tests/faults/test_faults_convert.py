"""Converter inputs that used to escape the image root, end in tracebacks, or exit 0 after losing most rows.

Each test runs the CLI (``main``) end to end on tiny real images in ``tmp_path``.
"""
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_helpers import make_numbered_set, write_jsonl
from open_clip_thermal.convert import build_parser, main


def _convert(root, records, *extra, image_root=None):
    annotations = write_jsonl(root / "ann.jsonl", records)
    out = root / "out"
    status = main(["--annotations", str(annotations), "--image-root", str(image_root or root / "data"),
                   "--output-dir", str(out), "--no-progress", *extra])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    return status, out, manifest


def _written_members(out):
    names = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".tar"):
            with tarfile.open(out / name) as archive:
                names += archive.getnames()
    return names


def _record(sample_id, image, **extra):
    return {"id": sample_id, "image": image, "global_caption": f"infrared thermal {sample_id}",
            "fg_caption": f"fine {sample_id}", **extra}


# ----------------------------------------------------------------------------- 1: paths escaping the root

@pytest.fixture
def escaping(tmp_path):
    """``data/`` (the image root) with 10 good frames, and a secret frame next to it, outside."""
    records = make_numbered_set(tmp_path / "data", 10)
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside/secret.png"
    Image.fromarray(np.full((6, 6), 200, dtype=np.uint8)).save(secret)
    (tmp_path / "data/thermal/link.png").symlink_to(secret)
    (tmp_path / "data/thermal/inner.png").symlink_to(tmp_path / "data/thermal/0000.png")  # inside: fine
    records += [_record("dotdot", "../outside/secret.png"), _record("absolute", str(secret)),
                _record("symlink", "thermal/link.png"), _record("inner", "thermal/inner.png"),
                _record("rgb_out", "thermal/0001.png", rgb="../outside/secret.png")]
    return tmp_path, records


def test_rows_escaping_the_image_root_are_refused_and_listed(escaping, capsys):
    tmp_path, records = escaping
    status, out, manifest = _convert(tmp_path, records, "--max-skip-fraction", "1")
    assert status == 0
    refused = {s["id"]: s for s in manifest["skipped"]}
    assert set(refused) == {"dotdot", "absolute", "symlink", "rgb_out"}
    for sample_id in ("dotdot", "absolute", "symlink"):
        assert refused[sample_id]["reason"].startswith("image path outside --image-root: "), refused[sample_id]
    assert refused["rgb_out"]["reason"].startswith("rgb: image path outside --image-root: ")
    assert "secret.png" in refused["symlink"]["reason"]  # names where the link leads
    assert manifest["skipped_by_reason"]["image path outside --image-root"] == 3
    assert any("--allow-outside-root" in w for w in manifest["warnings"])
    assert manifest["total_samples"] == 11  # 10 + the symlink that stays inside
    assert not any(name.startswith(("dotdot", "absolute", "symlink", "rgb_out")) for name in _written_members(out))


def test_allow_outside_root_lets_them_in(escaping):
    tmp_path, records = escaping
    status, out, manifest = _convert(tmp_path, records, "--allow-outside-root")
    assert status == 0 and manifest["skipped_count"] == 0 and manifest["total_samples"] == 15
    assert manifest["options"]["allow_outside_root"] is True


def test_resolve_annotation_path_rule(tmp_path):
    from open_clip_thermal.data.annotations import UnsafePathError, resolve_annotation_path
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert resolve_annotation_path("a/x.png", str(root)) == os.path.join(str(root), "a/x.png")
    assert resolve_annotation_path("a/../a/x.png", str(root)) == os.path.join(str(root), "a/../a/x.png")
    assert resolve_annotation_path(str(root / "a/x.png"), str(root)) == str(root / "a/x.png")
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", "s3://bucket/x.png", "file:///etc/passwd"):
        with pytest.raises(UnsafePathError):
            resolve_annotation_path(bad, str(root))
    assert resolve_annotation_path("../x.png", str(root), allow_outside=True) == os.path.join(str(root), "../x.png")
    assert resolve_annotation_path("/etc/passwd", str(root), allow_outside=True) == "/etc/passwd"
    # URL roots: lexical rule on the normalised path, same scheme and bucket
    assert resolve_annotation_path("a/x.png", "s3://bucket/data/") == "s3://bucket/data/a/x.png"
    assert resolve_annotation_path("s3://bucket/data/b.png", "s3://bucket/data") == "s3://bucket/data/b.png"
    for bad in ("../x.png", "s3://bucket/database/x.png", "s3://other/data/x.png", "/etc/passwd"):
        with pytest.raises(UnsafePathError):
            resolve_annotation_path(bad, "s3://bucket/data")
    with pytest.raises(UnsafePathError, match="NUL"):
        resolve_annotation_path("a/x\x00.png", str(root), allow_outside=True)
    # no root: the current directory
    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert resolve_annotation_path("a/x.png", None) == "a/x.png"
        with pytest.raises(UnsafePathError):
            resolve_annotation_path("../x.png", None)
    finally:
        os.chdir(cwd)


# ----------------------------------------------------------------------------- 2: one bad row, whole run lost

def test_per_row_failures_are_skipped_and_the_manifest_is_written(tmp_path, capsys):
    records = make_numbered_set(tmp_path / "data", 20)
    records += [_record("s3", "s3://no-such-bucket/x.png"),  # s3fs is not installed in the test venv
                _record("nul", "thermal/00\x0001.png"),
                _record("rgb_s3", "thermal/0002.png", rgb="s3://no-such-bucket/y.jpg")]
    status, out, manifest = _convert(tmp_path, records, "--allow-outside-root")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert manifest is not None and manifest["total_samples"] == 20
    reasons = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"s3", "nul", "rgb_s3"}
    assert "s3://no-such-bucket/x.png" in reasons["s3"] and "NUL" in reasons["nul"]
    assert reasons["rgb_s3"].startswith("rgb: ")
    assert status == 1  # 3 of 23 rows is more than the default --max-skip-fraction 0.1


def test_nul_byte_and_unopenable_url_are_skipped_with_the_default_rule(tmp_path):
    records = make_numbered_set(tmp_path / "data", 20) + [_record("nul", "thermal/00\x0001.png")]
    status, out, manifest = _convert(tmp_path, records)
    assert status == 0 and manifest["total_samples"] == 20
    assert [s["id"] for s in manifest["skipped"]] == ["nul"]


def test_strict_mode_still_names_the_failing_row(tmp_path, capsys):
    records = make_numbered_set(tmp_path / "data", 2) + [_record("s3", "s3://no-such-bucket/x.png")]
    status, _, _ = _convert(tmp_path, records, "--allow-outside-root", "--strict")
    err = capsys.readouterr().err
    assert status == 1 and "row 3 (id 's3')" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- 4: mostly failed, exit 0

def test_mostly_skipped_run_exits_non_zero_after_writing_the_manifest(tmp_path, capsys):
    records = make_numbered_set(tmp_path / "data", 1)
    records += [_record(f"gone{i}", f"thermal/missing{i}.png") for i in range(7)]
    records += [_record(f"out{i}", f"../x{i}.png") for i in range(3)]
    status, out, manifest = _convert(tmp_path, records)
    err = capsys.readouterr().err
    assert status == 1
    assert manifest["total_samples"] == 1 and manifest["skipped_count"] == 10
    assert manifest["skipped_fraction"] == pytest.approx(10 / 11, abs=1e-4)
    # the console names the reasons with their counts and the first rows
    assert "missing image file: 7 (first: row 2)" in err and "image path outside --image-root: 3" in err
    assert "row 2 (id 'gone0'): missing image file" in err
    assert "--max-skip-fraction" in err
    assert main(["--annotations", str(tmp_path / "ann.jsonl"), "--image-root", str(tmp_path / "data"),
                 "--output-dir", str(out), "--no-progress", "--max-skip-fraction", "0.95"]) == 0


def test_max_skip_fraction_must_be_a_fraction(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--annotations", "a.jsonl", "--output-dir", str(tmp_path), "--max-skip-fraction", "1.5"])
    assert exit_info.value.code == 2 and "--max-skip-fraction" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5: abbreviations

def test_abbreviated_flags_are_rejected(capsys):
    parser = build_parser()
    assert parser.allow_abbrev is False
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--annotations", "a.jsonl", "--output-dir", "o", "--image-ro", "/data"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --image-ro" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 3: float frames, NaN

def _float_tiff(path, array):
    Image.fromarray(np.asarray(array, dtype=np.float32), mode="F").save(path, format="TIFF")
    return path


def test_all_nan_float_frame_is_a_skipped_row_and_a_skipped_loader_sample(tmp_path):
    import io

    from data_helpers import TO_TENSOR, write_tar
    from open_clip_thermal.data.loader import make_thermal_dataset
    records = make_numbered_set(tmp_path / "data", 20)
    nan_path = _float_tiff(tmp_path / "data/thermal/nan.tif", np.full((6, 8), np.nan))
    spotty = np.tile(np.linspace(20.0, 40.0, 8, dtype=np.float32), (6, 1))  # degrees C, a few NaNs
    spotty[0, :3] = np.nan
    _float_tiff(tmp_path / "data/thermal/spotty.tif", spotty)
    records += [_record("nan", "thermal/nan.tif"), _record("spotty", "thermal/spotty.tif")]
    status, out, manifest = _convert(tmp_path, records)  # no --verify: float frames are always decoded
    assert status == 0 and manifest["total_samples"] == 21
    [skip] = manifest["skipped"]
    assert skip["id"] == "nan" and skip["stage"] == "write" and "no finite pixel" in skip["reason"]
    shard = write_tar(tmp_path / "hand.tar", [
        {"__key__": "nan", "tif": nan_path.read_bytes(), "txt": b"infrared thermal"},
        {"__key__": "spotty", "tif": (tmp_path / "data/thermal/spotty.tif").read_bytes(), "txt": b"infrared"}])
    pipeline = make_thermal_dataset(str(shard), TO_TENSOR, lambda text: [text], is_train=False, with_meta=True)
    items = list(pipeline)
    assert [meta["key"] for *_, meta in items] == ["spotty"] and pipeline.decode_failures.count == 1
    image = items[0][0][0].numpy()
    assert image[0, :3].tolist() == [0.0, 0.0, 0.0] and image[1].max() == 1.0 and len(np.unique(image[1])) == 8

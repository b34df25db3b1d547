"""Pair listing of the KAIST, FLIR-aligned and FMB layouts (the T-CLIP paper's splits), and the list_pairs tool."""
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from data_helpers import write_jsonl
from open_clip_thermal.convert import main as convert_main
from open_clip_thermal.data.layouts import LayoutError, list_pairs

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "list_pairs.py"


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_kaist_tree(root: Path, frames_per_video: int, sets, videos=("V000",), data: bytes = b"x") -> Path:
    """KAIST release layout: setNN/VNNN/{lwir,visible}/INNNNN.jpg, frames I00000 .. I{n-1}."""
    for set_name in sets:
        for video in videos:
            for index in range(frames_per_video):
                for modality in ("lwir", "visible"):
                    _touch(root / set_name / video / modality / f"I{index:05d}.jpg", data)
    return root


def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def _read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


TEST_SETS = [f"set{i:02d}" for i in range(6, 12)]
# test-all-20: frames with index % 20 == 19, i.e. I00019 and I00039 of a 45-frame video
TEST_IDS_45 = {f"kaist_{s}_V000_I{i:05d}" for s in TEST_SETS for i in (19, 39)}


def test_kaist_split_time_of_day_and_unpaired(tmp_path):
    # set09 I00001 is not a test-all-20 frame: under the paper's split it is only in 'test-all'
    # (id suffix _all); before, every set06-11 frame was 'test'.
    for name in ("set00/V000/lwir/I00000.jpg", "set00/V000/visible/I00000.jpg", "set04/V001/lwir/I00003.jpg",
                 "set04/V001/visible/I00003.jpg", "set09/V000/lwir/I00001.jpg", "set09/V000/visible/I00001.jpg",
                 "set06/V000/lwir/I00002.jpg"):
        _touch(tmp_path / name)
    listing = list_pairs(str(tmp_path), "kaist")
    by_id = {r["id"]: r for r in listing.records}
    assert set(by_id) == {"kaist_set00_V000_I00000", "kaist_set04_V001_I00003", "kaist_set09_V000_I00001_all"}
    assert by_id["kaist_set04_V001_I00003"] == {
        "id": "kaist_set04_V001_I00003", "image": "set04/V001/lwir/I00003.jpg",
        "rgb": "set04/V001/visible/I00003.jpg", "split": "train", "dataset": "kaist",
        "meta": {"time_of_day": "night"}}
    assert by_id["kaist_set09_V000_I00001_all"]["split"] == "all-test"
    assert by_id["kaist_set00_V000_I00000"]["meta"]["time_of_day"] == "day"
    assert listing.problems == ["set06/V000/lwir/I00002.jpg: no visible/I00002.* partner"]
    assert any("'test' is empty" in w and "19" in w for w in listing.warnings)


def test_kaist_paper_splits_exact_ids(tmp_path):
    make_kaist_tree(tmp_path, 45, ["set00", *TEST_SETS])
    listing = list_pairs(str(tmp_path), "kaist")
    by_split = {}
    for record in listing.records:
        by_split.setdefault(record["split"], []).append(record)
    assert set(by_split) == {"train", "test", "all-test"}
    assert {r["id"] for r in by_split["test"]} == TEST_IDS_45
    assert len(by_split["test"]) == 12
    assert {r["id"] for r in by_split["all-test"]} == {
        f"kaist_{s}_V000_I{i:05d}_all" for s in TEST_SETS for i in range(45)}
    assert {r["id"] for r in by_split["train"]} == {f"kaist_set00_V000_I{i:05d}" for i in range(45)}
    assert len(listing.records) == len({r["id"] for r in listing.records}) == 45 + 12 + 270
    test_record = next(r for r in by_split["test"] if r["id"] == "kaist_set09_V000_I00039")
    assert test_record == {"id": "kaist_set09_V000_I00039", "image": "set09/V000/lwir/I00039.jpg",
                           "rgb": "set09/V000/visible/I00039.jpg", "split": "test", "dataset": "kaist",
                           "meta": {"time_of_day": "night"}}
    assert listing.problems == [] and listing.warnings == []
    assert [r["id"] for r in list_pairs(str(tmp_path), "kaist", ["test"]).records] == sorted(TEST_IDS_45)


def test_tool_kaist_jsonl_and_per_split_counts(tmp_path):
    tree = make_kaist_tree(tmp_path / "kaist", 45, ["set00", *TEST_SETS])
    output = tmp_path / "x.jsonl"
    result = _run_tool("--dataset", "kaist", "--root", str(tree), "--output", str(output))
    assert result.returncode == 0, result.stderr
    records = _read_jsonl(output)
    assert Counter(r["split"] for r in records) == {"train": 45, "test": 12, "all-test": 270}
    assert {r["id"] for r in records if r["split"] == "test"} == TEST_IDS_45
    assert len({r["id"] for r in records}) == len(records)
    tail = result.stderr.strip().splitlines()[-3:]
    assert tail == ["train: 45", "test: 12", "all-test: 270"]
    only_test = tmp_path / "test.jsonl"
    result = _run_tool("--dataset", "kaist", "--root", str(tree), "--output", str(only_test), "--splits", "test")
    assert result.returncode == 0, result.stderr
    assert {r["id"] for r in _read_jsonl(only_test)} == TEST_IDS_45
    assert result.stderr.strip().splitlines()[-1] == "test: 12"


def test_converter_test_split_gets_exactly_the_test_all_20_frames(tmp_path):
    tree = make_kaist_tree(tmp_path / "kaist", 40, ["set00", "set06"], data=_jpeg())
    captioned = [dict(r, global_caption=f"thermal {r['id']}", fg_caption=f"fine {r['id']}")
                 for r in list_pairs(str(tree), "kaist").records]
    expected_test = {"kaist_set06_V000_I00019", "kaist_set06_V000_I00039"}
    for name, records, splits in (
            ("all", captioned, {"train": 40, "test": 2, "all-test": 40}),
            ("test", [r for r in captioned if r["split"] == "test"], {"test": 2})):
        out = tmp_path / f"out-{name}"
        status = convert_main(["--annotations", str(write_jsonl(tmp_path / f"{name}.jsonl", records)),
                               "--image-root", str(tree), "--output-dir", str(out), "--prefix", "kaist",
                               "--no-progress", "--threads", "1"])
        assert status == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert {split: info["samples"] for split, info in manifest["splits"].items()} == splits
        assert manifest["skipped_count"] == 0
        with tarfile.open(out / "kaist-test-000000.tar") as archive:
            ids = [json.loads(archive.extractfile(m).read())["id"] for m in archive.getmembers()
                   if m.name.endswith(".json")]
        assert sorted(ids) == sorted(expected_test)


def test_flir_aligned_lists_decide_the_split(tmp_path):
    # align_validation.txt now gives 'test' (the paper tests on the validation pairs); it was 'val'.
    for pair in ("FLIR_00001", "FLIR_00002", "FLIR_00003"):
        _touch(tmp_path / f"JPEGImages/{pair}_PreviewData.jpeg")
        _touch(tmp_path / f"JPEGImages/{pair}_RGB.jpg")
    _touch(tmp_path / "JPEGImages/FLIR_00004_PreviewData.jpeg")
    (tmp_path / "align_train.txt").write_text("FLIR_00001\nFLIR_00009\n")
    (tmp_path / "align_validation.txt").write_text("FLIR_00002_PreviewData.jpeg\n")
    listing = list_pairs(str(tmp_path), "flir")
    assert [(r["id"], r["split"]) for r in listing.records] == [
        ("flir_FLIR_00001", "train"), ("flir_FLIR_00002", "test"), ("flir_FLIR_00003", "unlisted")]
    assert listing.records[0]["rgb"] == "JPEGImages/FLIR_00001_RGB.jpg"
    assert len(listing.problems) == 2  # FLIR_00004 without RGB, FLIR_00009 listed but absent


def test_flir_two_lists_give_train_and_test(tmp_path):
    root = tmp_path / "flir"
    for number in range(1, 8):
        _touch(root / f"JPEGImages/FLIR_{number:05d}_PreviewData.jpeg")
        _touch(root / f"JPEGImages/FLIR_{number:05d}_RGB.jpg")
    (root / "align_train.txt").write_text("FLIR_00001\nFLIR_00003\nFLIR_00004\nFLIR_00007\n")
    (root / "align_validation.txt").write_text("FLIR_00002\nFLIR_00005\nFLIR_00006\n")
    output = tmp_path / "flir.jsonl"
    result = _run_tool("--dataset", "flir", "--root", str(root), "--output", str(output))
    assert result.returncode == 0, result.stderr
    records = _read_jsonl(output)
    assert {r["id"] for r in records if r["split"] == "train"} == {
        "flir_FLIR_00001", "flir_FLIR_00003", "flir_FLIR_00004", "flir_FLIR_00007"}
    assert {r["id"] for r in records if r["split"] == "test"} == {
        "flir_FLIR_00002", "flir_FLIR_00005", "flir_FLIR_00006"}
    assert len(records) == 7
    assert result.stderr.strip().splitlines()[-2:] == ["train: 4", "test: 3"]
    with pytest.raises(LayoutError, match="align_validation.txt gives 'test'"):
        list_pairs(str(root), "flir", ["val"])


def test_fmb_and_tool_writes_jsonl(tmp_path, capsys):
    for split in ("train", "test"):
        _touch(tmp_path / f"ds/{split}/Infrared/00{split}.png")
        _touch(tmp_path / f"ds/{split}/Visible/00{split}.png")
    spec = importlib.util.spec_from_file_location("list_pairs_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    output = tmp_path / "pairs.jsonl"
    assert tool.main(["--dataset", "fmb", "--root", str(tmp_path / "ds"), "--output", str(output),
                      "--splits", "test"]) == 0
    records = _read_jsonl(output)
    assert records == [{"id": "fmb_test_00test", "image": "test/Infrared/00test.png",
                        "rgb": "test/Visible/00test.png", "split": "test", "dataset": "fmb"}]
    err = capsys.readouterr().err
    assert "1 pairs" in err and err.strip().splitlines()[-1] == "test: 1"
    with pytest.raises(ValueError, match="unknown dataset layout"):
        list_pairs(str(tmp_path), "llvip")


def test_fmb_train_test_counts(tmp_path):
    for split, count in (("train", 5), ("test", 3)):
        for index in range(count):
            _touch(tmp_path / f"{split}/Infrared/{index:05d}.png")
            _touch(tmp_path / f"{split}/Visible/{index:05d}.png")
    listing = list_pairs(str(tmp_path), "fmb")
    assert listing.split_counts() == {"train": 5, "test": 3}
    assert {r["id"] for r in listing.records if r["split"] == "test"} == {"fmb_test_00000", "fmb_test_00001",
                                                                         "fmb_test_00002"}


def test_flat_kaist_files_fail_naming_the_expected_layout(tmp_path):
    root = tmp_path / "flat"
    for index in (19, 39):
        for modality in ("lwir", "visible"):
            _touch(root / f"set06_V000_I{index:05d}_{modality}.jpg")
    output = tmp_path / "x.jsonl"
    result = _run_tool("--dataset", "kaist", "--root", str(root), "--output", str(output))
    assert result.returncode == 1
    assert "setNN/VNNN/lwir/INNNNN.jpg" in result.stderr
    assert "not the KAIST release layout" in result.stderr
    assert "set06_V000_I00019_lwir.jpg" in result.stderr
    assert not output.exists()


@pytest.mark.parametrize("dataset, expected", [
    ("kaist", "setNN/VNNN/lwir/INNNNN.jpg"), ("flir", "JPEGImages/FLIR_NNNNN_PreviewData.jpeg"),
    ("fmb", "Infrared/NAME.png")])
def test_empty_root_names_the_layout(tmp_path, dataset, expected):
    with pytest.raises(LayoutError, match="no .* pair found") as caught:
        list_pairs(str(tmp_path), dataset)
    assert expected in str(caught.value)


def test_hints_for_a_root_one_level_off_and_an_empty_requested_split(tmp_path):
    make_kaist_tree(tmp_path / "download" / "kaist", 3, ["set00"])
    with pytest.raises(LayoutError, match="pass --root") as caught:
        list_pairs(str(tmp_path), "kaist")
    assert str(tmp_path / "download" / "kaist") in str(caught.value)
    with pytest.raises(LayoutError, match="split\\(s\\) 'test'"):
        list_pairs(str(tmp_path / "download" / "kaist"), "kaist", ["test"])
    result = _run_tool("--dataset", "kaist", "--root", str(tmp_path / "download" / "kaist"),
                       "--output", str(tmp_path / "t.jsonl"), "--splits", "test")
    assert result.returncode == 1 and "set06-set11" in result.stderr
    assert not (tmp_path / "t.jsonl").exists()

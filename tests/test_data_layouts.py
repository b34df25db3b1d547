"""Pair listing of the KAIST, FLIR-aligned and FMB layouts, and the list_pairs tool."""
import importlib.util
import json
from pathlib import Path

import pytest

from open_clip_thermal.data.layouts import list_pairs

REPO = Path(__file__).resolve().parents[1]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_kaist_split_time_of_day_and_unpaired(tmp_path):
    for name in ("set00/V000/lwir/I00000.jpg", "set00/V000/visible/I00000.jpg", "set04/V001/lwir/I00003.jpg",
                 "set04/V001/visible/I00003.jpg", "set09/V000/lwir/I00001.jpg", "set09/V000/visible/I00001.jpg",
                 "set06/V000/lwir/I00002.jpg"):
        _touch(tmp_path / name)
    listing = list_pairs(str(tmp_path), "kaist")
    by_id = {r["id"]: r for r in listing.records}
    assert set(by_id) == {"kaist_set00_V000_I00000", "kaist_set04_V001_I00003", "kaist_set09_V000_I00001"}
    assert by_id["kaist_set04_V001_I00003"] == {
        "id": "kaist_set04_V001_I00003", "image": "set04/V001/lwir/I00003.jpg",
        "rgb": "set04/V001/visible/I00003.jpg", "split": "train", "dataset": "kaist",
        "meta": {"time_of_day": "night"}}
    assert by_id["kaist_set09_V000_I00001"]["split"] == "test"
    assert by_id["kaist_set00_V000_I00000"]["meta"]["time_of_day"] == "day"
    assert listing.problems == ["set06/V000/lwir/I00002.jpg: no visible/I00002.* partner"]


def test_flir_aligned_lists_decide_the_split(tmp_path):
    for pair in ("FLIR_00001", "FLIR_00002", "FLIR_00003"):
        _touch(tmp_path / f"JPEGImages/{pair}_PreviewData.jpeg")
        _touch(tmp_path / f"JPEGImages/{pair}_RGB.jpg")
    _touch(tmp_path / "JPEGImages/FLIR_00004_PreviewData.jpeg")
    (tmp_path / "align_train.txt").write_text("FLIR_00001\nFLIR_00009\n")
    (tmp_path / "align_validation.txt").write_text("FLIR_00002_PreviewData.jpeg\n")
    listing = list_pairs(str(tmp_path), "flir")
    assert [(r["id"], r["split"]) for r in listing.records] == [
        ("flir_FLIR_00001", "train"), ("flir_FLIR_00002", "val"), ("flir_FLIR_00003", "unlisted")]
    assert listing.records[0]["rgb"] == "JPEGImages/FLIR_00001_RGB.jpg"
    assert len(listing.problems) == 2  # FLIR_00004 without RGB, FLIR_00009 listed but absent


def test_fmb_and_tool_writes_jsonl(tmp_path, capsys):
    for split in ("train", "test"):
        _touch(tmp_path / f"ds/{split}/Infrared/00{split}.png")
        _touch(tmp_path / f"ds/{split}/Visible/00{split}.png")
    spec = importlib.util.spec_from_file_location("list_pairs_tool", REPO / "tools/list_pairs.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    output = tmp_path / "pairs.jsonl"
    assert tool.main(["--dataset", "fmb", "--root", str(tmp_path / "ds"), "--output", str(output),
                      "--splits", "test"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records == [{"id": "fmb_test_00test", "image": "test/Infrared/00test.png",
                        "rgb": "test/Visible/00test.png", "split": "test", "dataset": "fmb"}]
    assert "1 pairs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown dataset layout"):
        list_pairs(str(tmp_path), "llvip")

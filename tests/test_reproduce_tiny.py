"""Tiny reproductions on CPU through the real command: Tables 4, 5 and 6 end to end, and a killed
reproduction that, restarted, trains only what was missing and writes the same table."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_helpers import tiny_clip
from open_clip_thermal.convert import main as convert_main
from open_clip_thermal.reproduce import cli
from open_clip_thermal.reproduce.plan import MARKER_NAME

TINY = ["--scale", "tiny", "--seeds", "0", "--no-plots"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A KAIST-named shard folder (16 train / 8 test pairs of 32 px frames) and a tiny base checkpoint."""
    root = tmp_path_factory.mktemp("reproduce")
    torch.save(tiny_clip(seed=0).state_dict(), root / "base.pt")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(images / f"{i:03d}.png")
        records.append({"id": f"s{i:03d}", "image": f"{i:03d}.png", "split": "train" if i < 16 else "test",
                        "global_caption": f"infrared thermal image of scene {i}, a street at {'night' if i % 2 else 'noon'}",
                        "fg_caption": f"infrared thermal image: object {i} is {'hot' if i % 3 else 'cold'}",
                        "meta": {"time_of_day": "night" if i % 2 else "day"}})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert convert_main(["--annotations", str(root / "annotations.jsonl"), "--image-root", str(images),
                         "--output-dir", str(root / "kaist"), "--prefix", "kaist", "--maxcount", "4",
                         "--no-progress", "--no-shuffle"]) == 0
    return {"data": f"kaist={root / 'kaist'}", "base": str(root / "base.pt")}


def _args(world, out, experiment):
    return ["--experiment", experiment, "--data", world["data"], "--base", world["base"], "--out", str(out), *TINY]


def _markers(out: Path):
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob(f"*/{MARKER_NAME}")}


def _recalls(out: Path, experiment: str):
    table = json.loads((out / "tables" / f"{experiment}.json").read_text())
    return [(row["label"], row["recall"]) for row in table["rows"]]


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert cli.main(_args(world, out, "6")) == 0
    return out


def test_table_6_vision_text_and_both_towers(uninterrupted, capsys):
    table = json.loads((uninterrupted / "tables" / "6.json").read_text())
    labels = [row["label"] for row in table["rows"]]
    assert labels == ["Global LoRA", "T-CLIP (Dual), LoRA on the vision tower only",
                      "T-CLIP (Dual), LoRA on the text tower only", "T-CLIP (Dual), LoRA on both towers"]
    assert [g["of"] for g in table["gains"]] == labels[1:]
    for gain in table["gains"]:  # the gain row is the difference of the two rows, in points
        row = next(r for r in table["rows"] if r["label"] == gain["of"])
        reference = table["rows"][0]
        for direction, cells in gain["points"].items():
            for k, points in cells.items():
                assert points == pytest.approx(100 * (row["recall"][direction][k]["mean"]
                                                      - reference["recall"][direction][k]["mean"]))
    markdown = (uninterrupted / "tables" / "6.md").read_text()
    assert "| Method | I→T R@1 | I→T R@5 | I→T R@8 | T→I R@1 | T→I R@5 | T→I R@8 |" in markdown
    assert "Δ T-CLIP (Dual), LoRA on the text tower only − Global LoRA" in markdown
    # The tower setting reached the adapters: vision-only runs carry no text-tower LoRA and vice versa.
    for towers in ("vision", "text"):
        run = next((uninterrupted / "runs").glob(f"kaist-lora-global-{towers}-s0-*"))
        config = json.loads((run / "adapters" / "adapter_config.json").read_text())
        assert json.dumps(config).count(f'"towers": "{towers}"') >= 1
    assert len(_markers(uninterrupted)) == 6


def test_tables_4_and_5_reuse_the_finished_runs(world, uninterrupted, capsys):
    before = _markers(uninterrupted)
    assert cli.main(_args(world, uninterrupted, "4,5")) == 0
    after = _markers(uninterrupted)
    assert {name: after[name] for name in before} == before  # nothing finished was trained again
    assert sorted(set(after) - set(before)) == sorted(
        n for n in after if any(f"-{row}-s0-" in n for row in ("lora-mixed", "lora-fg-from-global", "lora-global-from-fg")))
    assert len(after) - len(before) == 3
    table4 = [label for label, _ in _recalls(uninterrupted, "4")]
    assert "Mixed 50:50 LoRA (global captions)" in table4 and "T-CLIP (Dual)" in table4
    table5 = [label for label, _ in _recalls(uninterrupted, "5")]
    assert "F-G LoRA initialised from Global LoRA" in table5
    assert "T-CLIP (Dual), F-G branch initialised from Global" in table5
    log = (uninterrupted / "runs" / next(n for n in after if "-lora-fg-from-global-" in n) / "out.log").read_text()
    assert "initialised branches ['fine_grained'] from adapters" in log


# Long enough (2 epochs of 10 steps) that a kill after the first epoch's checkpoint lands mid-run.
LONGER = ["--train-args", "--max-steps 20 --steps-per-epoch 10"]


def test_killed_reproduction_resumes_and_gives_the_same_table(world, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "open_clip_thermal.reproduce", *_args(world, out, "fig7"), *LONGER]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # SIGKILL the whole process group (the reproduction and its training child) as soon as the second
    # run has written its first-epoch checkpoint: the first run is finished, the second half done.
    while time.time() < deadline and process.poll() is None:
        if len(_markers(out)) == 1 and list((out / "runs").glob("*/checkpoints/epoch_1.pt")):
            second = [p for p in (out / "runs").glob("*/checkpoints/epoch_1.pt") if not (p.parents[1] / MARKER_NAME).exists()]
            if second:
                break
        time.sleep(0.02)
    assert process.poll() is None, "the reproduction ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = _markers(out)
    assert len(finished_before) == 1, finished_before
    assert cli.main([*_args(world, out, "fig7"), *LONGER]) == 0
    log = (out / "logs" / "reproduce.log").read_text().splitlines()
    assert any("finished earlier, skipped" in line for line in log)
    assert any(" resuming (" in line for line in log)  # continued from epoch_1.pt, not from zero
    assert log[-2].endswith("trained 1 run(s), skipped 1 finished")
    after = _markers(out)
    assert {name: after[name] for name in finished_before} == finished_before  # not retrained
    assert len(after) == 2
    # The same runs uninterrupted, in another folder: the same table.
    assert cli.main([*_args(world, uninterrupted, "fig7"), *LONGER]) == 0
    assert _recalls(out, "fig7") == _recalls(uninterrupted, "fig7")
    reference = json.loads((uninterrupted / "tables" / "fig7.json").read_text())["lambda_sweep"]
    assert json.loads((out / "tables" / "fig7.json").read_text())["lambda_sweep"] == reference


def test_assemble_only_trains_nothing(world, uninterrupted):
    before = _markers(uninterrupted)
    assert cli.main([*_args(world, uninterrupted, "fig1"), "--assemble-only"]) == 0  # fig1 needs Table 6's runs
    assert _markers(uninterrupted) == before
    labels = [label for label, _ in _recalls(uninterrupted, "fig1")]
    assert labels[:3] == ["CLIP zero-shot (global captions)", "CLIP zero-shot (fine-grained captions)", "Global LoRA"]
    gap = json.loads((uninterrupted / "tables" / "fig1.json").read_text())["thermal_gap"]
    assert gap["family"] == "paper" and len(gap["tests"]) == 3


def test_table_7_counts_a_vit_b16_lora_branch_as_the_paper(tmp_path):
    """737,280 LoRA values per branch (rank 8 on q, k, v of the 12 + 12 blocks); the temperature is not counted."""
    import warnings
    import open_clip_thermal
    from open_clip_thermal.reproduce.tables import trainable_parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random base weights: only the shapes matter here
        model = open_clip_thermal.create_model("tclip-global")
    open_clip_thermal.save_adapters(model, tmp_path / "adapters")
    assert trainable_parameters(tmp_path / "adapters") == 737_280

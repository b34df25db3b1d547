"""A scaled-down quickstart: every stage through the real entry points, in well under a minute."""
import json
import logging
import os

import pytest

from open_clip_thermal.quickstart import main as quickstart_main
from open_clip_thermal.quickstart.cli import build_parser, quiet, variant_specs

SMALL = ["--num-train", "96", "--num-val", "16", "--num-test", "48", "--steps", "60", "--batch-size", "16",
         "--lr", "3e-2", "--proxy-steps", "10", "--proxy-scenes", "128", "--recall-k", "1,5,10", "--workers", "1",
         "--train-seeds", "0,1", "--bootstrap", "500"]


def test_small_quickstart_runs_every_stage(tmp_path, capfd):
    out = tmp_path / "qs"
    assert quickstart_main(["--out", str(out), "--cache-dir", str(tmp_path / "cache"), *SMALL]) == 0
    printed = capfd.readouterr()
    console = printed.out + printed.err
    # The console is a screenful: one line per stage, then the summary; the stages log to files.
    assert len(console.splitlines()) < 100
    assert "INFO" not in console and "Model initialized randomly" not in console
    for n, stage in enumerate(["simulate", "convert to shards", "proxy RGB base", "train LoRA global, seed 0",
                               "train LoRA fg, seed 0", "train LoRA global, seed 1", "train LoRA fg, seed 1",
                               "retrieval benchmark", "bootstrap Dual"], start=1):
        assert any(line.startswith(f"[{n}/9] ") and stage in line for line in console.splitlines()), stage
    # 1-2: simulation and shards
    annotations = [json.loads(line) for line in (out / "data" / "annotations.jsonl").read_text().splitlines()]
    assert len(annotations) == 96 + 16 + 48
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 96 + 16 + 48
    assert (out / "logs" / "convert.log").is_file()
    # 3: proxy base cached
    assert list((tmp_path / "cache").rglob("*.safetensors"))
    # 4: one trained adapter folder per branch and seed, with the trainer's logs in the run folder
    for run in ("global_s0", "fg_s0", "global_s1", "fg_s1"):
        run_dir = out / "runs" / run
        assert (run_dir / "adapters" / "adapter_config.json").is_file()
        assert "INFO" in (run_dir / "console.log").read_text()
        assert (run_dir / "out.log").stat().st_size > 0
    # 5: benchmark over both seeds, its outputs, and the printed tables with chance levels
    results = json.loads((out / "results" / "results.json").read_text())
    assert (out / "results" / "results.md").is_file()
    assert (out / "results" / "lambda_sweep_tclip-dual.png").stat().st_size > 0
    assert "| tclip-dual |" in console and "| chance (random ranking) | 2.1 | 10.4 | 20.8 |" in console
    assert "Matched-pair image-text cosine" in console and "λ sweep of tclip-dual" in console
    assert "Stage times" in console
    by_label = {row["label"]: row for row in results["rows"]}
    assert {"zeroshot (global)", "lora-global", "lora-fg", "tclip-global", "tclip-fg", "tclip-dual"} <= set(by_label)
    assert by_label["lora-global"]["mean_recall"] > by_label["zeroshot (global)"]["mean_recall"]
    assert len(by_label["zeroshot (global)"]["recall"]["image_to_text"]) == 3
    assert by_label["tclip-dual"]["n_seeds"] == 2
    assert by_label["lora-global"]["recall"]["image_to_text"]["1"]["std"] is not None
    # 6: the paired bootstrap agrees with the table's mean recalls and brackets its own estimate
    ci = json.loads((out / "results" / "dual_minus_global.json").read_text())
    expected = by_label["tclip-dual"]["mean_recall"] - by_label["lora-global"]["mean_recall"]
    assert ci["difference"] == pytest.approx(expected, abs=1e-9)
    assert ci["low"] <= ci["difference"] <= ci["high"] and ci["n"] == 48
    assert f"{100 * expected:+.2f} points" in console


def test_defaults_are_three_seeds_of_both_branches():
    args = build_parser().parse_args([])
    assert args.train_seeds == [0, 42, 123] and args.branches == ["global", "fg"]
    assert build_parser().parse_args(["--branches", "fg,mixed,global"]).branches == ["global", "fg", "mixed"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--branches", "mixed"])
    specs = variant_specs({"global": ["g0", "g1"], "fg": ["f0", "f1"], "mixed": ["m0", "m1"]})
    assert specs["tclip"] == "tclip=tclip-tiny-dual:g0+f0,g1+f1"
    assert specs["lora-mixed"] == "lora-mixed=tclip-tiny-global:m0,m1"


def test_quiet_sends_prints_logs_and_raw_writes_to_the_file(tmp_path, capfd):
    root = logging.getLogger()
    before = list(root.handlers)
    with quiet(tmp_path / "stage.log"):
        print("from print")
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
        root.addHandler(logging.StreamHandler())
        logging.getLogger("x").warning("from logging")
    assert root.handlers == before
    text = (tmp_path / "stage.log").read_text()
    for line in ("from print", "from fd 1", "from fd 2", "from logging"):
        assert line in text
    printed = capfd.readouterr()
    assert "from" not in printed.out + printed.err


def test_quiet_repeats_the_package_warnings_on_the_console_once(tmp_path, capfd):
    import warnings

    from open_clip_thermal.console import PACKAGE_DIR
    ours = os.path.join(PACKAGE_DIR, "evaluation", "encode.py")
    with quiet(tmp_path / "stage.log"):
        for _ in range(3):
            warnings.warn_explicit("scores may be wrong", UserWarning, ours, 10)
        warnings.warn("a third-party deprecation", DeprecationWarning)
    printed = capfd.readouterr()
    assert printed.err.splitlines() == ["warning: scores may be wrong"] and printed.out == ""
    text = (tmp_path / "stage.log").read_text()
    assert text.count("scores may be wrong") == 1 and "a third-party deprecation" in text

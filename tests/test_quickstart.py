"""A scaled-down quickstart: every stage through the real entry points, in well under a minute."""
import json

from open_clip_thermal.quickstart import main as quickstart_main

SMALL = ["--num-train", "96", "--num-val", "16", "--num-test", "48", "--steps", "60", "--batch-size", "16",
         "--lr", "3e-2", "--proxy-steps", "10", "--proxy-scenes", "128", "--recall-k", "1,5,10", "--workers", "1",
         "--no-progress"]


def test_small_quickstart_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "qs"
    assert quickstart_main(["--out", str(out), "--cache-dir", str(tmp_path / "cache"), *SMALL]) == 0
    printed = capsys.readouterr().out
    # 1-2: simulation and shards
    annotations = [json.loads(line) for line in (out / "data" / "annotations.jsonl").read_text().splitlines()]
    assert len(annotations) == 96 + 16 + 48
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 96 + 16 + 48
    # 3: proxy base cached
    assert list((tmp_path / "cache").rglob("*.safetensors"))
    # 4: three trained adapter folders
    for run in ("global", "fg", "mixed"):
        assert (out / "runs" / run / "adapters" / "adapter_config.json").is_file()
    # 5: benchmark outputs and the printed table
    results = json.loads((out / "results" / "results.json").read_text())
    assert (out / "results" / "results.md").is_file()
    assert (out / "results" / "lambda_sweep_tclip-dual.png").stat().st_size > 0
    assert "| tclip-dual |" in printed and "Stage times" in printed
    by_label = {row["label"]: row for row in results["rows"]}
    assert {"zeroshot (global)", "lora-global", "lora-fg", "tclip-global", "tclip-fg", "tclip-dual"} <= set(by_label)
    assert by_label["lora-global"]["mean_recall"] > by_label["zeroshot (global)"]["mean_recall"]
    assert len(by_label["zeroshot (global)"]["recall"]["image_to_text"]) == 3

"""``python -m open_clip_thermal.quickstart``: the whole T-CLIP pipeline on a synthetic world, on CPU.

Stages, each through the project's real entry points:

1. simulate paired RGB / thermal scenes with IR-Cap-style captions (``open_clip_thermal.synthetic``),
   train / val / test splits from disjoint random streams;
2. convert the annotations to WebDataset shards (``open_clip_thermal.convert``);
3. get the proxy "RGB-pretrained" tiny CLIP (pretrained on RGB renderings and RGB captions only,
   cached after the first run) - the stand-in for OpenAI's CLIP;
4. train the Global, Fine-grained and Mixed LoRA branches (``open_clip_thermal.train``, i.e.
   open_clip_train with our hooks);
5. run the retrieval benchmark (``open_clip_thermal.benchmark``): zero-shot, each LoRA, T-CLIP
   (Global / F-G / Dual) and the lambda sweep, then print the table.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

BASE_MODEL = "thermal-vit-tiny"
BRANCH_RUNS = (  # (name, --branch, --model)
    ("global", "global", "tclip-tiny-global"),
    ("fg", "fine_grained", "tclip-tiny-fg"),
    ("mixed", "mixed", "tclip-tiny-global"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.quickstart", allow_abbrev=False,
        description="Run the whole T-CLIP pipeline (simulated captions -> shards -> LoRA branches -> fused "
                    "retrieval -> paper-style table) on a synthetic RGB-thermal world, on CPU, in minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="quickstart_out", help="output folder (data, shards, runs, results)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation, the training and the proxy base")
    p.add_argument("--num-train", type=int, default=1000, help="simulated training pairs")
    p.add_argument("--num-val", type=int, default=100, help="simulated validation pairs")
    p.add_argument("--num-test", type=int, default=300, help="simulated test pairs (disjoint scenes)")
    p.add_argument("--image-size", type=int, default=64, help="rendered image size in pixels")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=16,
                   help="thermal images as 8-bit AGC frames or 16-bit radiometric counts")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per LoRA branch")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of the LoRA branches")
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--proxy-steps", type=int, default=None,
                   help="optimiser steps of the proxy base pretraining (default: the documented recipe)")
    p.add_argument("--proxy-scenes", type=int, default=None,
                   help="RGB scenes rendered for the proxy pretraining (default: the documented recipe)")
    p.add_argument("--cache-dir", default=None,
                   help="proxy checkpoint cache (default: $OPEN_CLIP_THERMAL_CACHE or ~/.cache/open_clip_thermal)")
    p.add_argument("--recall-k", default="1,5,10,25,50,100", help="Recall@K values")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


class StageTimer:
    """Prints each stage's wall time as it ends and keeps them for the summary."""

    def __init__(self):
        self.times: Dict[str, float] = {}
        self.start = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t0
        print(f"== {name}: {self.times[name]:.1f} s", flush=True)
        return result

    def summary(self) -> str:
        lines = [f"  {name:<28} {seconds:7.1f} s" for name, seconds in self.times.items()]
        lines.append(f"  {'total':<28} {time.perf_counter() - self.start:7.1f} s")
        return "\n".join(lines)


def simulate(out: Path, args) -> Path:
    from ..synthetic.dataset import generate_dataset
    annotations = generate_dataset(out / "data", num_train=args.num_train, num_val=args.num_val,
                                   num_test=args.num_test, size=args.image_size, seed=args.seed,
                                   bit_depth=args.bit_depth, progress=not args.no_progress)
    return Path(annotations)


def make_shards(annotations: Path, out: Path, args) -> Dict[str, str]:
    from ..convert.cli import main as convert_main
    shard_dir = out / "shards"
    argv = ["--annotations", str(annotations), "--image-root", str(annotations.parent), "--output-dir",
            str(shard_dir), "--prefix", "synthetic", "--min-shards", str(max(2, args.workers)),
            "--seed", str(args.seed)]
    if args.no_progress:
        argv.append("--no-progress")
    if convert_main(argv) != 0:
        raise SystemExit("quickstart: conversion to shards failed (see the manifest)")
    sizes = json.loads((shard_dir / "sizes.json").read_text())
    patterns = {}
    for split in ("train", "val", "test"):
        names = sorted(n for n in sizes if n.startswith(f"synthetic-{split}-"))
        if not names:
            raise SystemExit(f"quickstart: no {split} shards were written")
        patterns[split] = "::".join(str(shard_dir / n) for n in names)
    return patterns


def proxy_base(args) -> str:
    from ..synthetic.proxy import get_proxy_checkpoint
    recipe = {k: v for k, v in (("steps", args.proxy_steps), ("num_scenes", args.proxy_scenes)) if v is not None}
    return str(get_proxy_checkpoint(cache_dir=args.cache_dir, seed=args.seed, progress=not args.no_progress,
                                    **recipe))


def train_branch(name: str, branch: str, model: str, base: str, shards: Dict[str, str], out: Path, args) -> Path:
    from ..train.cli import main as train_main
    logs = out / "runs"
    run_dir = logs / name
    if run_dir.exists():  # open_clip_train refuses to reuse a run name
        import shutil
        shutil.rmtree(run_dir)
    argv = ["--model", model, "--pretrained", base, "--branch", branch, "--train-data", shards["train"],
            "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--wd", "0.01", "--warmup", str(max(1, min(20, args.steps // 10))), "--grad-clip-norm", "1.0", "--workers", str(args.workers),
            "--seed", str(args.seed), "--precision", "fp32", "--logs", str(logs), "--name", name,
            "--log-every-n-steps", "50", "--save-frequency", "0", "--device", "cpu"]
    rc = train_main(argv)
    if rc != 0:
        raise SystemExit(f"quickstart: training the {name} branch failed (exit code {rc})")
    return run_dir / "adapters"


def benchmark(adapters: Dict[str, Path], base: str, shards: Dict[str, str], out: Path, args) -> Path:
    from ..benchmark.cli import main as benchmark_main
    results = out / "results"
    argv = ["--data", shards["test"], "--out", str(results), "--base-model", BASE_MODEL, "--base-pretrained", base,
            "--recall-k", args.recall_k,
            "--variant", f"lora-global=tclip-tiny-global:{adapters['global']}",
            "--variant", f"lora-fg=tclip-tiny-fg:{adapters['fg']}",
            "--variant", f"lora-mixed=tclip-tiny-global:{adapters['mixed']}",
            "--variant", f"tclip=tclip-tiny-dual:{adapters['global']}+{adapters['fg']}"]
    rc = benchmark_main(argv)
    if rc != 0:
        raise SystemExit(f"quickstart: the benchmark failed (exit code {rc})")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1" if args.no_progress else "0")
    timer = StageTimer()
    annotations = timer.run("1. simulate RGB/thermal scenes", simulate, out, args)
    shards = timer.run("2. convert to shards", make_shards, annotations, out, args)
    base = timer.run("3. proxy RGB-pretrained base", proxy_base, args)
    adapters = {}
    for name, branch, model in BRANCH_RUNS:
        adapters[name] = timer.run(f"4. train LoRA ({name})", train_branch, name, branch, model, base, shards, out,
                                   args)
    results = timer.run("5. retrieval benchmark", benchmark, adapters, base, shards, out, args)
    print("\n" + (results / "results.md").read_text())
    print("Stage times:\n" + timer.summary())
    print(f"\nResults: {results / 'results.md'}, {results / 'results.json'} and the PNG plots in {results}")
    return 0


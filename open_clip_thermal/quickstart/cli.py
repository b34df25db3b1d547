"""``python -m open_clip_thermal.quickstart``: the whole T-CLIP pipeline on a synthetic world, on CPU.

Stages, each through the project's real entry points:

1. simulate paired RGB / thermal scenes with IR-Cap-style captions (``open_clip_thermal.synthetic``),
   train / val / test splits from disjoint random streams;
2. convert the annotations to WebDataset shards (``open_clip_thermal.convert``);
3. get the proxy "RGB-pretrained" tiny CLIP (pretrained on RGB renderings and RGB captions only,
   cached after the first run) - the stand-in for OpenAI's CLIP;
4. train the Global, Fine-grained (and Mixed) LoRA branches once per training seed
   (``open_clip_thermal.train``, i.e. open_clip_train with our hooks);
5. run the retrieval benchmark (``open_clip_thermal.benchmark``): zero-shot, each LoRA, T-CLIP
   (Global / F-G / Dual) over all seeds and the lambda sweep;
6. a paired bootstrap confidence interval of T-CLIP (Dual) minus Global LoRA in mean recall.

The console gets one line per stage and the summary tables; everything the stages print or log
goes to files in the output folder (``logs/``, ``runs/<run>/console.log`` next to open_clip_train's
``out.log``, ``results/benchmark.log``). The parser imports nothing heavy, so ``--help`` is instant.
"""
import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..console import quiet
from ..contracts import DEFAULT_LAM  # torch-free

BASE_MODEL = "thermal-vit-tiny"
BRANCH_RUNS = {  # name -> (--branch, --model)
    "global": ("global", "tclip-tiny-global"),
    "fg": ("fine_grained", "tclip-tiny-fg"),
    "mixed": ("mixed", "tclip-tiny-global"),
}
DEFAULT_TRAIN_SEEDS = "0,42,123"


def _int_list(text: str) -> List[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _branch_list(text: str) -> List[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in BRANCH_RUNS]
    if unknown or not {"global", "fg"} <= set(names):
        raise argparse.ArgumentTypeError(f"--branches needs global and fg, optionally mixed; got {text!r}")
    return [n for n in BRANCH_RUNS if n in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.quickstart", allow_abbrev=False,
        description="Run the whole T-CLIP pipeline (simulated captions -> shards -> LoRA branches -> fused "
                    "retrieval -> paper-style table with chance levels, seeds and a bootstrap interval) on a "
                    "synthetic RGB-thermal world, on CPU, in minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="quickstart_out", help="output folder (data, shards, runs, results, logs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated dataset and of the proxy base")
    p.add_argument("--train-seeds", type=_int_list, default=_int_list(DEFAULT_TRAIN_SEEDS),
                   help="training seeds; every branch is trained once per seed (mean +- std over seeds)")
    p.add_argument("--branches", type=_branch_list, default=_branch_list("global,fg"),
                   help="LoRA runs per seed: global and fg (needed by T-CLIP), optionally mixed")
    p.add_argument("--num-train", type=int, default=1000, help="simulated training pairs")
    p.add_argument("--num-val", type=int, default=100, help="simulated validation pairs")
    p.add_argument("--num-test", type=int, default=300, help="simulated test pairs (disjoint scenes)")
    p.add_argument("--image-size", type=int, default=64, help="rendered image size in pixels")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=16,
                   help="thermal images as 8-bit AGC frames or 16-bit radiometric counts")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per LoRA run")
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
    p.add_argument("--bootstrap", type=int, default=10000, help="paired bootstrap resamples of the test pairs")
    p.add_argument("--no-progress", action="store_true", help="no per-stage progress lines (the summary still prints)")
    return p


class StageTimer:
    """One console line per stage (name, time, where its log went); keeps the times for the summary."""

    def __init__(self, show: bool = True):
        self.times: Dict[str, float] = {}
        self.start = time.perf_counter()
        self.show = show

    def run(self, name: str, log: Optional[Path], fn, *args, **kwargs):
        if self.show:
            print(f"{name} ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            with (quiet(log) if log is not None else contextlib.nullcontext()):
                result = fn(*args, **kwargs)
        except BaseException:
            if self.show:
                print(" failed" + (f"; see {log}" if log is not None else ""), flush=True)
            raise
        self.times[name] = time.perf_counter() - t0
        if self.show:
            print(f" {self.times[name]:.1f} s", flush=True)
        return result

    def total(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> str:
        lines = [f"  {name:<52} {seconds:7.1f} s" for name, seconds in self.times.items()]
        lines.append(f"  {'total':<52} {self.total():7.1f} s")
        return "\n".join(lines)


def simulate(out: Path, args) -> Path:
    from ..synthetic.dataset import generate_dataset
    annotations = generate_dataset(out / "data", num_train=args.num_train, num_val=args.num_val,
                                   num_test=args.num_test, size=args.image_size, seed=args.seed,
                                   bit_depth=args.bit_depth, progress=False)
    return Path(annotations)


def make_shards(annotations: Path, out: Path, args) -> Dict[str, str]:
    import json

    from ..convert.cli import main as convert_main
    shard_dir = out / "shards"
    argv = ["--annotations", str(annotations), "--image-root", str(annotations.parent), "--output-dir",
            str(shard_dir), "--prefix", "synthetic", "--min-shards", str(max(2, args.workers)),
            "--seed", str(args.seed), "--no-progress"]
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
    return str(get_proxy_checkpoint(cache_dir=args.cache_dir, seed=args.seed, progress=False, **recipe))


def proxy_is_cached(args) -> bool:
    from ..synthetic.proxy_recipe import ProxyRecipe, checkpoint_path, default_cache_dir
    recipe = {k: v for k, v in (("steps", args.proxy_steps), ("num_scenes", args.proxy_scenes)) if v is not None}
    return checkpoint_path(args.cache_dir or default_cache_dir(), ProxyRecipe.from_kwargs(**recipe), args.seed).exists()


def run_name(name: str, seed: int) -> str:
    return f"{name}_s{seed}"


def train_branch(name: str, seed: int, base: str, shards: Dict[str, str], out: Path, args) -> Path:
    from ..train.cli import main as train_main
    branch, model = BRANCH_RUNS[name]
    logs = out / "runs"
    run_dir = logs / run_name(name, seed)
    if run_dir.exists():  # open_clip_train refuses to reuse a run name
        import shutil
        shutil.rmtree(run_dir)
    argv = ["--model", model, "--pretrained", base, "--branch", branch, "--train-data", shards["train"],
            "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--wd", "0.01", "--warmup", str(max(1, min(20, args.steps // 10))), "--grad-clip-norm", "1.0",
            "--workers", str(args.workers), "--seed", str(seed), "--precision", "fp32", "--logs", str(logs),
            "--name", run_name(name, seed), "--log-every-n-steps", "50", "--save-frequency", "0", "--device", "cpu"]
    rc = train_main(argv)
    if rc != 0:
        raise SystemExit(f"quickstart: training the {name} branch (seed {seed}) failed (exit code {rc}); "
                         f"see {run_dir / 'console.log'}")
    return run_dir / "adapters"


def variant_specs(adapters: Dict[str, List[Path]]) -> Dict[str, str]:
    """Benchmark ``--variant`` texts, every training seed as one weight set (mean +- std over seeds)."""
    def seeds(name):
        return ",".join(str(p) for p in adapters[name])
    specs = {"lora-global": f"lora-global=tclip-tiny-global:{seeds('global')}",
             "lora-fg": f"lora-fg=tclip-tiny-fg:{seeds('fg')}"}
    if "mixed" in adapters:
        specs["lora-mixed"] = f"lora-mixed=tclip-tiny-global:{seeds('mixed')}"
    pairs = ",".join(f"{g}+{f}" for g, f in zip(adapters["global"], adapters["fg"]))
    specs["tclip"] = f"tclip=tclip-tiny-dual:{pairs}"
    return specs


def benchmark(adapters: Dict[str, List[Path]], base: str, shards: Dict[str, str], out: Path, args) -> Path:
    from ..benchmark.cli import main as benchmark_main
    results = out / "results"
    argv = ["--data", shards["test"], "--out", str(results), "--base-model", BASE_MODEL, "--base-pretrained", base,
            "--recall-k", args.recall_k, "--lam", str(DEFAULT_LAM)]
    for spec in variant_specs(adapters).values():
        argv += ["--variant", spec]
    rc = benchmark_main(argv)
    if rc != 0:
        raise SystemExit(f"quickstart: the benchmark failed (exit code {rc}); see {results / 'benchmark.log'}")
    return results


def _row_scores(spec_text: str, urls, index, data_id, cache, ks) -> "object":
    """Per-pair hit rate (both directions, all K) of one variant, averaged over its seeds."""
    import numpy as np

    from ..evaluation.bootstrap import per_pair_hits
    from ..evaluation.encode import encode_test_set, seed_norm
    from ..evaluation.evaluate import row_features
    from ..evaluation.variants import build_model, needed_embeddings, parse_variant, rows_for
    spec = parse_variant(spec_text)[0]
    row = rows_for(spec)[0]
    per_seed = []
    for seed in spec.seeds:
        model = build_model(spec, seed)
        norm = seed_norm(spec.kind, seed, None, spec.name)[0]
        embeddings = encode_test_set(model, spec.model, spec.name, set(needed_embeddings(row)), urls, index, data_id,
                                     cache, norm=norm)
        per_seed.append(per_pair_hits(*row_features(row, embeddings, DEFAULT_LAM), ks))
    return np.mean(per_seed, axis=0)


def dual_minus_global(adapters: Dict[str, List[Path]], shards: Dict[str, str], results: Path, args) -> Dict:
    """Paired bootstrap CI of T-CLIP (Dual) minus Global LoRA in mean recall, resampling test pairs.

    Embeddings come from the benchmark's cache (same weights, same shards), so nothing is re-encoded.
    """
    from ..evaluation.bootstrap import paired_bootstrap
    from ..evaluation.cache import EmbeddingCache, cache_key
    from ..evaluation.retrieval import cap_ks
    from ..evaluation.shard_reader import data_fingerprint, expand_urls, read_sample_index
    urls = expand_urls([shards["test"]])
    index = read_sample_index(urls)
    data_id = cache_key(shards=data_fingerprint(urls), keys=index.keys)
    cache = EmbeddingCache(results / "embedding_cache")
    ks = cap_ks([int(k) for k in args.recall_k.split(",") if k.strip()], len(index))
    pairs = ",".join(f"{g}+{f}" for g, f in zip(adapters["global"], adapters["fg"]))
    dual = _row_scores(f"tclip-dual=tclip-tiny-dual:{pairs}", urls, index, data_id, cache, ks)
    single = _row_scores(variant_specs(adapters)["lora-global"], urls, index, data_id, cache, ks)
    return paired_bootstrap(dual, single, num_resamples=args.bootstrap, seed=0)


def _cell(cell: Dict) -> str:
    mean, std = 100 * cell["mean"], cell.get("std")
    return f"{mean:.1f}" if std is None else f"{mean:.1f}±{100 * std:.1f}"


def summary_tables(results: Dict, ci: Optional[Dict], n_seeds: int) -> str:
    """The console summary: Recall@K (mean ± std, chance), cosine gap, lambda sweep, Dual - Global CI."""
    ks = [str(k) for k in results["config"]["ks"]]
    n = results["config"]["n_samples"]
    directions = (("image_to_text", "I→T"), ("text_to_image", "T→I"))
    header = ["Method"] + [f"{d} R@{k}" for _, d in directions for k in ks] + ["mean"]
    lines = [f"Recall@K in %, {n} test pairs, mean±std over {n_seeds} training seed(s); T-CLIP rows fuse at "
             f"λ = {results['config']['lam']}:", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        cells = [_cell(row["recall"][d][k]) for d, _ in directions for k in ks]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {100 * row['mean_recall']:.1f} |")
    chance = results.get("chance") or {d: {k: {"mean": min(1.0, int(k) / n)} for k in ks} for d, _ in directions}
    chance_cells = [f"{100 * chance[d][k]['mean']:.1f}" for d, _ in directions for k in ks]
    chance_mean = sum(chance[d][k]["mean"] for d, _ in directions for k in ks) / (2 * len(ks))
    lines.append("| chance (random ranking) | " + " | ".join(chance_cells) + f" | {100 * chance_mean:.1f} |")
    gap = results["thermal_gap"]["per_row"]
    lines += ["", "Matched-pair image-text cosine (the thermal perception gap), mean over seeds:",
              "| Method | mean cosine | std over pairs |", "|---|---|---|"]
    lines += [f"| {label} | {g['mean']:.3f} | {g['std']:.3f} |" if g["std"] is not None else
              f"| {label} | {g['mean']:.3f} | - |" for label, g in gap.items()]
    for label, sweep in results.get("lambda_sweep", {}).items():
        lambdas = sweep["lambdas"]
        lines += ["", f"λ sweep of {label}, mean recall in % (λ = 1: global branch only, 0: fine-grained only):"]
        for mode in ("feature", "score"):
            if mode not in sweep:
                continue
            scores = dict(zip(lambdas, sweep[mode]["mean_recall"]))
            picks = [x for x in (0.0, 0.5, DEFAULT_LAM, 1.0) if x in scores]
            lines.append(f"  {mode:<7} fusion: best λ = {sweep[mode]['best_lambda']:g} "
                         f"({100 * sweep[mode]['best_mean_recall']:.2f}); "
                         + ", ".join(f"λ={x:g}: {100 * scores[x]:.2f}" for x in picks))
    if ci is not None:
        lines += ["", f"T-CLIP (Dual, λ = {DEFAULT_LAM}) − Global LoRA, mean recall: {100 * ci['difference']:+.2f} points, "
                      f"{100 * ci['confidence']:.0f}% CI [{100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}] "
                      f"(paired bootstrap over the {ci['n']} test pairs, seeds averaged per pair; "
                      f"{'the interval excludes 0' if ci['low'] > 0 or ci['high'] < 0 else 'the interval includes 0: no clear difference'})"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import json
    args = build_parser().parse_args(argv)
    from ..evaluation.report import read_results  # after parsing: --help stays torch-free
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    os.environ.setdefault("TQDM_DISABLE", "1")  # the stages log to files; bars would only fill them
    timer = StageTimer(show=not args.no_progress)
    seeds, branches = args.train_seeds, args.branches
    n_stages = 4 + len(seeds) * len(branches) + 1
    step = iter(range(1, n_stages + 1))

    def label(text):
        return f"[{next(step)}/{n_stages}] {text}"

    annotations = timer.run(label("simulate RGB/thermal scenes"), logs / "simulate.log", simulate, out, args)
    shards = timer.run(label("convert to shards"), logs / "convert.log", make_shards, annotations, out, args)
    proxy_label = "proxy RGB-pretrained base (cached)" if proxy_is_cached(args) else \
        "pretrain the proxy RGB base (once, then cached)"
    base = timer.run(label(proxy_label), logs / "proxy.log", proxy_base, args)
    adapters: Dict[str, List[Path]] = {name: [] for name in branches}
    for seed in seeds:
        for name in branches:
            console = out / "runs" / run_name(name, seed) / "console.log"
            adapters[name].append(timer.run(label(f"train LoRA {name}, seed {seed}"), None, _train_quietly, console,
                                            name, seed, base, shards, out, args))
    results_dir = timer.run(label("retrieval benchmark"), out / "results" / "benchmark.log", benchmark, adapters,
                            base, shards, out, args)
    ci = timer.run(label("bootstrap Dual − Global"), logs / "bootstrap.log", dual_minus_global, adapters, shards,
                   results_dir, args)
    results = read_results(results_dir)
    (results_dir / "dual_minus_global.json").write_text(json.dumps(ci, indent=2) + "\n")
    print("\n" + summary_tables(results, ci, len(seeds)))
    print("\nStage times:\n" + timer.summary())
    print(f"\nFull tables and plots: {results_dir}/ (results.md, results.json, *.png); logs: {logs}/, "
          f"{out / 'runs'}/<run>/")
    return 0


def _train_quietly(console: Path, name: str, seed: int, base: str, shards, out: Path, args) -> Path:
    # The run folder is (re)created by train_branch, so the console log is opened once it exists.
    console.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = console.parent.parent / f".{console.parent.name}.console.log"
    try:
        with quiet(tmp):
            adapters = train_branch(name, seed, base, shards, out, args)
    finally:
        if tmp.exists() and console.parent.exists():
            tmp.replace(console)
    return adapters

"""Command line of the synthetic RGB-thermal world.

    python -m open_clip_thermal.synthetic                      (the oracle diagnostic, as ``oracle``)
    python -m open_clip_thermal.synthetic oracle [--seed S] [--num-test N]
    python -m open_clip_thermal.synthetic generate --out DIR [--num-train N ...]
    python -m open_clip_thermal.synthetic pretrain-proxy [--cache-dir DIR] [--seed S] [--steps N ...]
"""
import argparse
import time
from typing import List, Optional

from .proxy_recipe import EVAL_SCENES, ProxyRecipe, checkpoint_path, default_cache_dir

_DEFAULT_RECIPE = ProxyRecipe()


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        help="simulate scenes and write thermal + RGB images and annotations.jsonl",
        description="Simulate seeded street scenes, render each one as a pixel-aligned RGB and thermal "
                    "image, caption them, and write images plus annotations.jsonl (the converter's input "
                    "format; image paths are relative to --out).")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--num-train", type=int, default=1000, help="number of training scenes")
    p.add_argument("--num-val", type=int, default=200, help="number of validation scenes")
    p.add_argument("--num-test", type=int, default=300, help="number of test scenes (disjoint from train/val)")
    p.add_argument("--size", type=int, default=64, help="image width and height in pixels (64-128 intended)")
    p.add_argument("--seed", type=int, default=0,
                   help="dataset seed; also fixes the simulated camera's fixed-pattern noise")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8,
                   help="thermal PNGs as 8-bit AGC images or 16-bit radiometric counts (~1000-20000)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain-proxy", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        help="pretrain the tiny RGB proxy CLIP from scratch (cached)",
        description="Pretrain the proxy base model (an OpenCLIP architecture) from scratch, contrastively, "
                    "on simulated RGB renderings with RGB-style captions. Thermal data is never used. The "
                    "checkpoint is a plain OpenCLIP state_dict in safetensors with a JSON report (recipe, "
                    "time, R@1 on held-out RGB and thermal scenes) beside it. Without --out it lives in the "
                    "cache, keyed by a hash of the recipe, and is reused unless --force is given.")
    p.add_argument("--cache-dir", default=None,
                   help=f"cache folder (default: $OPEN_CLIP_THERMAL_CACHE or {default_cache_dir()})")
    p.add_argument("--out", default=None, help="write the checkpoint here instead of the cache (always trains)")
    p.add_argument("--force", action="store_true", help="retrain even if the cache holds this recipe")
    p.add_argument("--seed", type=int, default=0, help="seeds scenes, initialisation, batching, caption wording")
    p.add_argument("--model", default=_DEFAULT_RECIPE.model, help="OpenCLIP architecture to pretrain")
    p.add_argument("--num-scenes", type=int, default=_DEFAULT_RECIPE.num_scenes, help="simulated RGB scenes")
    p.add_argument("--steps", type=int, default=_DEFAULT_RECIPE.steps, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=_DEFAULT_RECIPE.batch_size, help="contrastive batch size")
    p.add_argument("--lr", type=float, default=_DEFAULT_RECIPE.lr, help="peak AdamW learning rate (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=_DEFAULT_RECIPE.weight_decay,
                   help="AdamW weight decay on weight matrices")
    p.add_argument("--warmup-steps", type=int, default=_DEFAULT_RECIPE.warmup_steps, help="linear warmup steps")
    p.add_argument("--image-size", type=int, default=_DEFAULT_RECIPE.image_size,
                   help="render size; must match the architecture's input size")
    p.add_argument("--eval-scenes", type=int, default=EVAL_SCENES,
                   help="held-out scenes for the R@1 report (0 skips it)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_oracle(sub) -> None:
    p = sub.add_parser(
        "oracle", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        help="oracle diagnostic: how well global, fine-grained and both fact sets identify a test image",
        description="Retrieval with the generator's own facts instead of a model: a caption's candidates are "
                    "the images with the same facts, in random order. Prints expected Recall@K for global "
                    "facts only, fine-grained facts only and both, and how many 8 x 8 patches the parts that "
                    "fine-grained captions describe cover. Needs no model and no files.")
    _add_oracle_flags(p)


def _add_oracle_flags(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="dataset seed (as for generate)")
    p.add_argument("--split", default="test", help="split whose scenes are scored")
    p.add_argument("--num-test", type=int, default=300, help="number of scenes of the split")
    p.add_argument("--size", type=int, default=64, help="image size for the patch-coverage table")
    p.add_argument("--patch", type=int, default=8, help="vision-tower patch size for the coverage table")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with the ``oracle`` (default), ``generate`` and ``pretrain-proxy`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.synthetic", allow_abbrev=False,
        description="Synthetic RGB-thermal world: the oracle diagnostic (the default), simulated datasets, "
                    "and the RGB proxy base model.")
    sub = parser.add_subparsers(dest="command", metavar="{oracle,generate,pretrain-proxy}")
    _add_oracle(sub)
    _add_generate(sub)
    _add_pretrain(sub)
    return parser


def _run_oracle(args) -> None:
    from .oracle import format_report, oracle_report
    print(format_report(oracle_report(args.seed, args.split, args.num_test, size=args.size, patch=args.patch)))


def _run_generate(args) -> None:
    from .dataset import generate_dataset

    start = time.perf_counter()
    path = generate_dataset(args.out, args.num_train, args.num_val, args.num_test, size=args.size,
                            seed=args.seed, bit_depth=args.bit_depth, progress=not args.no_progress)
    print(f"wrote {path} ({args.num_train}/{args.num_val}/{args.num_test} train/val/test scenes) "
          f"in {time.perf_counter() - start:.1f} s")


def _print_report(report) -> None:
    print(f"checkpoint: {report['checkpoint']}")
    print(f"pretraining: {report['train_seconds']:.1f} s with {report['torch_threads']} torch threads, "
          f"final loss {report['final_loss']:.3f}")
    retrieval = report.get("retrieval")
    if retrieval:
        rgb, thermal = retrieval["rgb_image_to_rgb_caption"], retrieval["thermal_image_to_global_caption"]
        print(f"held-out R@1 on {retrieval['num_scenes']} scenes (chance {rgb['chance']:.3f}): "
              f"RGB image->RGB caption {rgb['image_to_text']:.3f}, "
              f"thermal image->thermal global caption {thermal['image_to_text']:.3f}")


def _run_pretrain(args) -> None:
    from .proxy import ensure_model_configs, load_report, pretrain_proxy
    recipe = ProxyRecipe(model=args.model, num_scenes=args.num_scenes, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_steps=args.warmup_steps, image_size=args.image_size)
    ensure_model_configs()
    if args.out:
        path = args.out
    else:
        path = checkpoint_path(args.cache_dir or default_cache_dir(), recipe, args.seed)
        if path.exists() and not args.force:
            print(f"cached, not retraining (use --force to retrain): {path}")
            _print_report({**load_report(path), "checkpoint": str(path)})
            return
    _print_report(pretrain_proxy(path, recipe, args.seed, progress=not args.no_progress,
                                 eval_scenes=args.eval_scenes))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no subcommand: the oracle diagnostic with its defaults
        args = parser.parse_args(["oracle"])
    {"oracle": _run_oracle, "generate": _run_generate, "pretrain-proxy": _run_pretrain}[args.command](args)
    return 0

"""Command-line flags of ``python -m open_clip_thermal.train`` and their translation for open_clip_train.

Our flags are parsed with ``parse_known_args`` (exact names only, no abbreviations); every other flag
goes to open_clip_train unchanged.
"""
import argparse
import math
import os
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from ..contracts import GLOBAL
from ..data.decode import add_norm_arguments, norm_from_args
from ..settings import (BRANCH_MODES, CLIP_ADAPTER_ALPHA, CLIP_ADAPTER_REDUCTION, METHODS, TARGETS, TOWERS,
                        DeclipConfig, LoRAConfig)

if TYPE_CHECKING:  # the trainer hooks import torch and OpenCLIP: only train_options needs them
    from .hooks import TrainOptions

# The paper's training recipe. lr and weight decay are not legible in the paper: 1e-4 and 0.01 are
# common LoRA choices (the adapters start at zero, so a larger lr than full fine-tuning is safe).
PAPER_PRESET = {
    "trainer": ["--beta1", "0.9", "--beta2", "0.999", "--eps", "1e-8", "--lr", "1e-4", "--wd", "0.01",
                "--warmup", "100", "--lr-scheduler", "cosine", "--batch-size", "128"],
    "ours": {"grad_clip_norm": 1.0, "max_steps": 10_000},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        # allow_abbrev=False: parse_known_args would otherwise take "--lora-r 4" as --lora-rank;
        # parse_args stops on a left-over abbreviation of ours
        prog="python -m open_clip_thermal.train", add_help=False, allow_abbrev=False,
        description="Train T-CLIP LoRA branches with OpenCLIP's trainer (open_clip_train). The flags below "
                    "are ours; every open_clip_train flag (--train-data, --val-data, --model, --pretrained, "
                    "--lr, --wd, --batch-size, --epochs, --warmup, --precision, --workers, --logs, --name, "
                    "--report-to, --resume, --save-frequency, --seed, --dist-backend, --device, ...) works as "
                    "with `python -m open_clip_train.main`; they are listed after ours.")
    parser.add_argument("-h", "--help", action="store_true", help="Show this help (ours and open_clip_train's).")
    g = parser.add_argument_group("T-CLIP")
    g.add_argument("--branch", choices=BRANCH_MODES, default=GLOBAL,
                   help="Which LoRA branch(es) to train: 'global' on global captions, 'fine_grained' on "
                        "fine-grained captions, 'mixed' one branch on either caption type 50:50 (seeded), "
                        "'both' the global and fine-grained branches at once on one data stream. Default: global.")
    g.add_argument("--method", choices=METHODS, default="lora",
                   help="'lora' (T-CLIP), or a baseline (docs/baselines.md): 'full' fine-tuning of the whole CLIP, "
                        "'clip-adapter' (frozen CLIP + a residual bottleneck adapter on the image embedding), "
                        "'declip' (full fine-tuning + nearest-neighbour losses against a momentum encoder). "
                        "Baselines use the base of a tclip-* --model (or a stock OpenCLIP --model) and one caption "
                        "type (--branch global, fine_grained or mixed). Default: lora.")
    g.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r. Default: 8 (paper).")
    g.add_argument("--lora-alpha", type=float, default=1.0, help="LoRA alpha (update scaled by alpha/r). Default: 1.")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="Dropout on the LoRA input. Default: 0.")
    g.add_argument("--lora-targets", default="q,k,v",
                   help=f"Comma-separated LoRA targets from {','.join(TARGETS)}. Default: q,k,v (paper).")
    g.add_argument("--lora-towers", choices=TOWERS, default="both", help="Towers with LoRA. Default: both.")
    g.add_argument("--lora-last-k", type=int, default=None,
                   help="Adapt only the last k blocks of each tower (default: all blocks).")
    _add_baseline_flags(parser)
    g.add_argument("--max-steps", type=int, default=None,
                   help="Train for this many optimiser steps (the paper: 10,000) instead of --epochs; the run "
                        "is cut into epochs of --steps-per-epoch steps, each a checkpoint/resume point.")
    g.add_argument("--steps-per-epoch", type=int, default=None,
                   help="Steps per epoch with --max-steps (default: one pass over the data per sizes.json, "
                        "at most --max-steps; 1000 with --dataset-resampled).")
    g.add_argument("--preset", choices=("none", "paper"), default="none",
                   help="'paper': AdamW(0.9, 0.999), lr 1e-4, wd 0.01, cosine with 100 warmup steps, grad-norm "
                        "clip 1.0, batch 128, AMP on CUDA, 10,000 steps. Explicit flags override it. Default: none.")
    g.add_argument("--init-from", default=None,
                   help="Adapter folder to initialise the branch(es) from (a single-branch folder starts every "
                        "branch: the cross-initialisation ablation).")
    g.add_argument("--grad-clip-norm", type=float, default=None,
                   help="Clip the gradient norm of each branch separately (a global norm would couple the "
                        "branches). Default: no clipping (1.0 with --preset paper).")
    add_norm_arguments(g, default="percentile",  # --thermal-norm/-range/-percentiles, --stretch-8bit
                       what=" Recorded in the saved adapter config; the benchmark decodes with it.")
    g.add_argument("--force-gelu", action="store_true",
                   help="Build the base with GELU even when its --pretrained weights were trained with QuickGELU "
                        "(every 'openai' tag). Without it, such weights always get QuickGELU, whatever "
                        "--force-quick-gelu says; with it the features differ from the released model's.")
    g.add_argument("--strict-data", action="store_true",
                   help="Stop at the first undecodable sample instead of skipping and counting it.")
    return parser


def _add_baseline_flags(parser: argparse.ArgumentParser) -> None:
    d = DeclipConfig()
    b = parser.add_argument_group("Baselines (--method clip-adapter / declip)")
    b.add_argument("--clip-adapter-alpha", type=float, default=CLIP_ADAPTER_ALPHA,
                   help="CLIP-Adapter residual ratio: image embedding = alpha * adapter(f) + (1 - alpha) * f. "
                        f"Default: {CLIP_ADAPTER_ALPHA}.")
    b.add_argument("--clip-adapter-reduction", type=int, default=CLIP_ADAPTER_REDUCTION,
                   help=f"CLIP-Adapter bottleneck reduction (hidden width = embed dim / this). Default: {CLIP_ADAPTER_REDUCTION}.")
    b.add_argument("--declip-queue-size", type=int, default=d.queue_size,
                   help=f"DeCLIP: momentum image/text embeddings kept in each FIFO queue. Default: {d.queue_size}.")
    b.add_argument("--declip-momentum", type=float, default=d.momentum,
                   help=f"DeCLIP: EMA decay of the momentum encoder, updated after every optimizer step. "
                        f"Default: {d.momentum}.")
    b.add_argument("--declip-nn-temperature", type=float, default=d.nn_temperature,
                   help=f"DeCLIP: temperature of the nearest-neighbour InfoNCE over the queue. Default: {d.nn_temperature}.")
    b.add_argument("--declip-image-nn-weight", type=float, default=d.image_nn_weight,
                   help=f"DeCLIP: weight of the image-image nearest-neighbour loss. Default: {d.image_nn_weight}.")
    b.add_argument("--declip-text-nn-weight", type=float, default=d.text_nn_weight,
                   help=f"DeCLIP: weight of the text-text nearest-neighbour loss. Default: {d.text_nn_weight}.")


def _reject_abbreviations(parser: argparse.ArgumentParser, rest: Sequence[str]) -> None:
    """Stop on a left-over flag that abbreviates one of ours: open_clip_train would otherwise take it
    as one of its own (``--grad-clip`` as its global ``--grad-clip-norm``) or fail on it obscurely."""
    ours = sorted(s for action in parser._actions for s in action.option_strings if s.startswith("--"))
    for arg in rest:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("--"):
            continue
        matches = [flag for flag in ours if flag.startswith(name) and flag != name]
        if matches:
            raise SystemExit(f"open_clip_thermal.train: {name} abbreviates {', '.join(matches)}: write the flag "
                             "in full (abbreviations are not accepted)")


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    """Split ``argv`` into our namespace and the open_clip_train remainder (preset flags first).

    Flags are matched by their full names only; an abbreviation of one of ours stops with a message.
    """
    argv = list(argv) if argv is not None else []
    parser = build_parser()
    preset_probe, _ = parser.parse_known_args(argv)
    trainer_prefix: List[str] = []
    if preset_probe.preset == "paper":
        parser.set_defaults(**PAPER_PRESET["ours"])
        trainer_prefix = list(PAPER_PRESET["trainer"])
        import torch  # only here: --help and the other flags stay torch-free
        if torch.cuda.is_available():
            trainer_prefix += ["--precision", "amp"]
    ours, rest = parser.parse_known_args(argv)
    _reject_abbreviations(parser, rest)
    return ours, trainer_prefix + rest


def train_options(ours: argparse.Namespace) -> "TrainOptions":
    """The hooks' options from our parsed flags (imports the trainer hooks, hence torch)."""
    from .hooks import TrainOptions
    targets = tuple(t.strip() for t in ours.lora_targets.split(",") if t.strip())
    lora = LoRAConfig(rank=ours.lora_rank, alpha=ours.lora_alpha, dropout=ours.lora_dropout, targets=targets,
                      towers=ours.lora_towers, last_k_blocks=ours.lora_last_k)
    try:
        declip = DeclipConfig(queue_size=ours.declip_queue_size, momentum=ours.declip_momentum,
                              nn_temperature=ours.declip_nn_temperature, image_nn_weight=ours.declip_image_nn_weight,
                              text_nn_weight=ours.declip_text_nn_weight)
    except ValueError as e:  # a bad --declip-* value: one line, like argparse errors
        raise SystemExit(f"open_clip_thermal.train: {e}") from None
    try:
        thermal_norm = norm_from_args(ours)  # a bad --thermal-* value: one line too
    except ValueError as e:
        raise SystemExit(f"open_clip_thermal.train: {e}") from None
    return TrainOptions(branch=ours.branch, method=ours.method, lora=lora, init_from=ours.init_from,
                        grad_clip_norm=ours.grad_clip_norm, thermal_norm=thermal_norm,
                        strict_data=ours.strict_data, force_gelu=ours.force_gelu, clip_adapter_alpha=ours.clip_adapter_alpha,
                        clip_adapter_reduction=ours.clip_adapter_reduction, declip=declip)


def refuse_stock_loader_flags(trainer_args: argparse.Namespace) -> None:
    """Refuse open_clip_train data flags that only its own ``get_data`` reads.

    The trainer hooks replace open_clip_train's ``get_data`` by the thermal loader (``training/hooks.py``),
    so these flags would be accepted and then do nothing: no ImageNet zero-shot numbers, uniform instead
    of weighted sources, shards read where a CSV was asked for.

    Args:
        trainer_args: open_clip_train's parsed flags (``open_clip_train.params.parse_args``).

    Raises:
        ValueError: naming the first such flag and what to do instead.
    """
    for flag in ("imagenet_val", "imagenet_v2"):
        if getattr(trainer_args, flag, None):
            raise ValueError(f"--{flag.replace('_', '-')}: ImageNet zero-shot evaluation is part of open_clip_train's own "
                             "data loader, which this trainer replaces by the thermal loader, so it would not run; "
                             "drop the flag and evaluate the trained model afterwards (python -m "
                             "open_clip_thermal.classify on an ImageFolder tree, or python -m open_clip_thermal.benchmark)")
    if getattr(trainer_args, "train_data_upsampling_factors", None):
        raise ValueError("--train-data-upsampling-factors: the thermal loader has no per-source weights (every shard "
                         "of every '::'-joined source counts the same), so the factors would be ignored; drop the flag "
                         "(to weight a source up, convert it into more shards; docs/data.md)")
    dataset_type = getattr(trainer_args, "dataset_type", "auto")
    if dataset_type not in ("auto", "webdataset"):
        raise ValueError(f"--dataset-type {dataset_type}: this trainer reads WebDataset shards with its thermal "
                         "loader; open_clip_train's csv and synthetic loaders are not used. Write shards with "
                         "python -m open_clip_thermal.convert and drop the flag")
    for flag in ("train_data", "val_data"):
        for source in str(getattr(trainer_args, flag, None) or "").split("::"):
            if source.strip().lower().endswith((".csv", ".tsv")):
                raise ValueError(f"--{flag.replace('_', '-')} {source.strip()}: a CSV/TSV file; this trainer reads "
                                 "WebDataset shards (python -m open_clip_thermal.convert turns annotations into them)")


def _flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def plan_steps(ours: argparse.Namespace, rest: List[str]) -> List[str]:
    """Translate ``--max-steps`` into open_clip_train's ``--epochs`` and ``--train-num-samples``."""
    if ours.max_steps is None:
        return rest
    if ours.max_steps < 1:
        raise SystemExit(f"--max-steps must be >= 1, got {ours.max_steps}")
    user_epochs = _flag_value(rest, "--epochs")
    if user_epochs is not None:
        raise SystemExit("give --max-steps or --epochs, not both")
    batch = int(_flag_value(rest, "--batch-size") or 64)
    workers = max(1, int(_flag_value(rest, "--workers") or 4))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    train_data = _flag_value(rest, "--train-data")
    steps = ours.steps_per_epoch
    if steps is None:
        if "--dataset-resampled" in rest or train_data is None:
            steps = 1000
        else:
            from ..data.loader import read_dataset_size
            size = _flag_value(rest, "--train-num-samples")
            size = int(size) if size else read_dataset_size(train_data)
            if not size:
                raise SystemExit(f"--max-steps needs the training set size: no sizes.json next to {train_data}; "
                                 "pass --steps-per-epoch or --train-num-samples")
            steps = max(1, size // (batch * world))
        steps = min(steps, ours.max_steps)
    steps = workers * math.ceil(steps / workers)  # the loader gives every worker the same number of batches
    epochs = math.ceil(ours.max_steps / steps)
    if epochs * steps != ours.max_steps:
        print(f"open_clip_thermal.train: --max-steps {ours.max_steps} rounded up to {epochs * steps} "
              f"({epochs} epochs x {steps} steps; steps per epoch are a multiple of --workers {workers})")
    rest = [a for i, a in enumerate(rest) if not (a == "--train-num-samples" or
                                                  (i > 0 and rest[i - 1] == "--train-num-samples") or
                                                  a.startswith("--train-num-samples="))]
    return rest + ["--epochs", str(epochs), "--train-num-samples", str(steps * batch * world)]

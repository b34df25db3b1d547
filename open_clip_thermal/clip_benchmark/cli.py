"""Command line: CLIP_benchmark with the T-CLIP plug-in (``python -m open_clip_thermal.clip_benchmark``, ``tclip-clip-benchmark``).

``export`` writes our shards as a CLIP_benchmark WebDataset folder (``wds_export.py``); every other
subcommand (``eval``, ``build``) is CLIP_benchmark's own, run with ``open_clip_thermal`` imported first
(``passthrough.py``). This module imports no torch: ``--help`` and ``export --help`` are instant.
Exit status: 0 on success, 2 on bad input (a one-line ``error:`` naming it).
"""
import argparse
import sys
from typing import List, Optional, Sequence

from ..contracts import CAPTION_FIELDS, GLOBAL
from ..data.decode import add_norm_arguments, norm_from_args

EXPORT = "export"
TASKS = ("retrieval", "classification")  # what export writes
DEFAULT_SPLIT = "test"  # CLIP_benchmark's default --split
DEFAULT_MAXCOUNT = 1000  # samples per exported shard

DESCRIPTION = """\
CLIP_benchmark with T-CLIP models (docs/benchmark.md, section CLIP_benchmark).

subcommands:
  export    our shards -> CLIP_benchmark's WebDataset folder (see 'export --help')
  eval      CLIP_benchmark's 'eval', with open_clip_thermal imported first so the tclip-* models are
            known; every argument is CLIP_benchmark's (see 'eval --help'), except:
              * without CUDA, '--no_amp' (fp32) is added: CLIP_benchmark's default autocast is bfloat16
                on a CPU and shifts recalls; pass '--amp' to keep its autocast anyway;
              * an adapter folder as --pretrained needs --output FILE.json (CLIP_benchmark's default
                output name embeds --pretrained, slashes included).
  build     CLIP_benchmark's 'build' (results JSON files -> one CSV), unchanged

example:
  python -m open_clip_thermal.clip_benchmark export --data 'shards/flir-test-{000000..000003}.tar' \\
      --out wds/flir_global --caption global
  python -m open_clip_thermal.clip_benchmark eval --model tclip-global --pretrained adapters/global \\
      --dataset wds/flir_global --dataset_root 'wds/{dataset}' --task zeroshot_retrieval \\
      --recall_k 1 5 10 --output flir_global.json
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``export`` (``eval`` and ``build`` are parsed by CLIP_benchmark itself)."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.clip_benchmark export", allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write our shards (docs/contracts.md) as a CLIP_benchmark WebDataset folder: OUT/SPLIT/{0..N-1}.tar "
                    "with 8-bit PNG frames (decoded and normalised exactly as python -m open_clip_thermal.benchmark "
                    "decodes them, stored losslessly) and one caption type (.txt) or a class index (.cls), plus "
                    "nshards.txt, dataset_type.txt and, for classification, classnames.txt and "
                    "zeroshot_classification_templates.txt. Evaluate it with "
                    "'eval --dataset wds/NAME --dataset_root wds/{dataset}' (NAME: the folder name of --out).")
    parser.add_argument("--data", required=True, nargs="+",
                        help="our test shards: a brace pattern ('dir/x-test-{000000..000003}.tar'), a '::' list "
                             "or several paths, read in the given order")
    parser.add_argument("--out", required=True, help="the folder to write, e.g. wds/flir_global")
    parser.add_argument("--caption", choices=tuple(CAPTION_FIELDS), default=GLOBAL,
                        help="the caption type written as each image's .txt (retrieval): one type per export, "
                             "export twice for both")
    parser.add_argument("--task", choices=TASKS, default="retrieval",
                        help="retrieval (CLIP_benchmark --task zeroshot_retrieval) or classification "
                             "(--task zeroshot_classification, needs --label-field)")
    parser.add_argument("--label-field", default=None,
                        help="classification: the field of each sample's .json metadata holding its class; "
                             "classes are numbered in sorted order of their names")
    parser.add_argument("--templates", default=None,
                        help="classification: a JSON list of prompt templates with '{}' or '{c}' for the class "
                             "name (default: our shipped thermal ensemble, open_clip_thermal/classify/templates.json)")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="the split folder to write (CLIP_benchmark's --split)")
    parser.add_argument("--maxcount", type=int, default=DEFAULT_MAXCOUNT, help="samples per output shard")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/SPLIT (default: refuse)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_norm_arguments(parser.add_argument_group(
        "thermal normalisation of >8-bit frames (use what the evaluated adapters recorded in adapter_config.json, "
        "as the benchmark does)"), default="percentile")
    return parser


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _export(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        norm = norm_from_args(args)
    except ValueError as error:
        return _usage_error(str(error))
    from .wds_export import ExportError, describe, export_wds  # imports torch: after parsing
    try:
        report = export_wds(args.data, args.out, args.caption, task=args.task, label_field=args.label_field,
                            split=args.split, norm=norm, maxcount=args.maxcount, templates=args.templates,
                            overwrite=args.overwrite, progress=not args.no_progress)
    except (ExportError, ValueError) as error:
        return _usage_error(str(error))
    print(describe(report))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m open_clip_thermal.clip_benchmark`` and ``tclip-clip-benchmark``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(DESCRIPTION, end="")
        return 0 if argv else 2
    if argv[0] == EXPORT:
        return _export(argv[1:])
    from .passthrough import PassthroughError, run_clip_benchmark
    try:
        return run_clip_benchmark(argv)
    except PassthroughError as error:
        return _usage_error(str(error))

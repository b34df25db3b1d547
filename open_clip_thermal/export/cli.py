"""``python -m open_clip_thermal.export {onnx,transformers}``: export a trained T-CLIP model.

Each subcommand's flags are declared by a torch-free ``*_flags.py`` module (``onnx_flags.py``,
``transformers_flags.py``: ``add_arguments(parser)``), and its work is done by the matching
``*_export.py`` module's ``run(args) -> int``, imported only after the flags parse.
"""
import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> (flags module, export module, one-line description)
SUBCOMMANDS = {
    "onnx": (".onnx_flags", ".onnx_export",
             "ONNX graphs of the image and text towers (one merged branch, or the fused dual model)"),
    "transformers": (".transformers_flags", ".transformers_export",
                     "a merged branch as a Transformers CLIPModel folder (loadable by diffusers)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m open_clip_thermal.export", allow_abbrev=False,
                                     description="Export a trained T-CLIP model for other runtimes; docs/export.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (flags, _, description) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=description, description=description, allow_abbrev=False)
        importlib.import_module(flags, __package__).add_arguments(command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; bad input exits with 2 and a one-line message."""
    args = build_parser().parse_args(argv)
    run = importlib.import_module(SUBCOMMANDS[args.command][1], __package__).run
    try:
        return run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

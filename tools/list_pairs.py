"""List RGB/thermal pairs of a KAIST, FLIR-aligned or FMB folder as JSONL (the IR-Cap captioner's input).

Example:
    python tools/list_pairs.py --dataset kaist --root /data/kaist --output kaist_pairs.jsonl

Splits are the T-CLIP paper's (KAIST train / test (test-all-20) / all-test, FLIR train / test, FMB
train / test; see docs/data.md). Exit status 1, with a message naming the expected layout, when the
root holds no pair of that layout (or none in a requested split); nothing is written then.
Per-split counts are printed to stderr at the end, e.g. ``test: 2252``.
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Optional


def _load_layouts() -> ModuleType:
    """``open_clip_thermal.data.layouts``, read from its file when the tool runs from the repository.

    The module needs only the standard library, while importing the package loads torch and OpenCLIP
    (seconds) just to list files; outside a checkout the installed package is imported.
    """
    path = Path(__file__).resolve().parents[1] / "open_clip_thermal" / "data" / "layouts.py"
    if not path.is_file():
        from open_clip_thermal.data import layouts
        return layouts
    name = "_list_pairs_layouts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


_layouts = _load_layouts()
LAYOUTS, list_pairs = _layouts.LAYOUTS, _layouts.list_pairs


def build_parser() -> argparse.ArgumentParser:
    """The tool's argument parser."""
    parser = argparse.ArgumentParser(
        description="Write one JSON record {id, image, rgb, split, dataset[, meta]} per RGB/thermal pair; "
                    "paths are relative to --root (pass the same folder as the converter's --image-root).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(LAYOUTS), help="folder layout (see docs/data.md)")
    parser.add_argument("--root", required=True, help="the dataset's root folder")
    parser.add_argument("--output", required=True, help="JSONL file to write ('-' for stdout)")
    parser.add_argument("--splits", default="", help="comma-separated splits to keep (default: all)")
    parser.add_argument("--max-problems", type=int, default=20, help="how many unpaired frames to print")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool; returns 0, or 1 when no pair was found (then no output file is written)."""
    args = build_parser().parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] or None
    try:
        listing = list_pairs(args.root, args.dataset, splits)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in listing.records)
    if args.output == "-":
        sys.stdout.write(lines)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(lines)
    counts = listing.split_counts()
    print(f"{len(listing.records)} pairs {counts}; {len(listing.problems)} problem(s)", file=sys.stderr)
    for problem in listing.problems[: args.max_problems]:
        print(f"  {problem}", file=sys.stderr)
    if len(listing.problems) > args.max_problems:
        print(f"  ... and {len(listing.problems) - args.max_problems} more", file=sys.stderr)
    for warning in listing.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for split, count in counts.items():
        print(f"{split}: {count}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

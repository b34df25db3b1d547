"""List RGB/thermal pairs of a KAIST, FLIR-aligned or FMB folder as JSONL (the IR-Cap captioner's input).

Example:
    python tools/list_pairs.py --dataset kaist --root /data/kaist --output kaist_pairs.jsonl
"""
import argparse
import json
import sys
from typing import List, Optional

from open_clip_thermal.data.layouts import LAYOUTS, list_pairs


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
    """Run the tool; returns 0, or 1 when no pair was found."""
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
    counts = {}
    for record in listing.records:
        counts[record["split"]] = counts.get(record["split"], 0) + 1
    print(f"{len(listing.records)} pairs {counts}; {len(listing.problems)} problem(s)", file=sys.stderr)
    for problem in listing.problems[: args.max_problems]:
        print(f"  {problem}", file=sys.stderr)
    return 0 if listing.records else 1


if __name__ == "__main__":
    sys.exit(main())

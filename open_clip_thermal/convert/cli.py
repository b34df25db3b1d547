"""Command line: IR-Cap annotations -> WebDataset shards (``python -m open_clip_thermal.convert``).

The logic lives in :mod:`open_clip_thermal.data.conversion`; this module only parses arguments.
Exit status: 0 on success; 1 when nothing was written, more rows than ``--max-skip-fraction`` were
skipped (shards and manifest are written all the same) or a ``--strict`` problem stopped the run;
2 on bad arguments or an output folder that holds another conversion's shards.
"""
import argparse
import logging
import shlex
import sys
from typing import List, Optional

from ..data.annotations import AnnotationFormatError, BadRowError, FieldNames
from ..data.conversion import DEFAULT_MAX_SKIP_FRACTION, ConversionError, ConvertOptions, convert
from ..data.decode import PALETTE_CHOICES, add_norm_arguments, norm_from_args


def build_parser() -> argparse.ArgumentParser:
    """The converter's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.convert",
        description="Write thermal image + caption annotations as WebDataset tar shards "
                    "({prefix}-{split}-{000000}.tar) with sizes.json and manifest.json. See docs/data.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument("--annotations", required=True,
                          help="annotation file: JSON list, JSONL, CSV or TSV (local path or fsspec URL)")
    io_group.add_argument("--format", choices=["json", "jsonl", "csv", "tsv"], default=None,
                          help="annotation format; by default guessed from the file extension")
    io_group.add_argument("--image-root", default=None,
                          help="folder or fsspec URL that relative image paths are resolved against "
                               "(default: relative to the current directory). Every image path must stay "
                               "under it: rows whose path is absolute elsewhere, climbs out with '..', is a "
                               "symlink leading out or another URL are refused and listed in the manifest")
    io_group.add_argument("--allow-outside-root", action="store_true",
                          help="read image paths that lead outside --image-root (absolute paths, '..', symlinks, "
                               "other URLs) instead of refusing those rows; only for annotation files you trust")
    io_group.add_argument("--output-dir", required=True, help="local folder for shards, sizes.json and manifest.json")
    io_group.add_argument("--prefix", default="thermal", help="shard name prefix: {prefix}-{split}-{000000}.tar")
    io_group.add_argument("--overwrite", action="store_true",
                          help="delete existing shards of this prefix and start clean; without it an interrupted "
                               "run with the same inputs and settings is resumed, and shards of a different "
                               "conversion are refused")

    fields = parser.add_argument_group("field names (an empty string disables an optional field)")
    defaults = FieldNames()
    fields.add_argument("--id-field", default=defaults.id, help="unique sample id; empty: derived from the image path")
    fields.add_argument("--image-field", default=defaults.image, help="thermal image path")
    fields.add_argument("--global-field", default=defaults.global_caption, help="global caption (stored as txt)")
    fields.add_argument("--fg-field", default=defaults.fg_caption,
                        help="fine-grained caption (stored as fg.txt); empty: the data has none")
    fields.add_argument("--rgb-field", default=defaults.rgb, help="optional paired RGB image path (stored as rgb.<ext>)")
    fields.add_argument("--split-field", default=defaults.split, help="optional split name")
    fields.add_argument("--dataset-field", default=defaults.dataset, help="optional source dataset name")
    fields.add_argument("--meta-field", default=defaults.meta, help="optional object (JSON text in CSV/TSV) of metadata")
    fields.add_argument("--meta-fields", default="",
                        help="comma-separated extra columns copied into the metadata, e.g. time_of_day,weather")
    fields.add_argument("--default-split", default="train", help="split of rows without one")
    fields.add_argument("--default-dataset", default=None, help="dataset name of rows without one")

    shards = parser.add_argument_group("shards")
    shards.add_argument("--maxcount", type=int, default=10000, help="most samples per shard")
    shards.add_argument("--maxsize", type=float, default=3e9, help="most payload bytes per shard")
    shards.add_argument("--min-shards", type=int, default=1,
                        help="spread each split over at least this many shards (set it to workers x GPUs of "
                             "the training run); the manifest warns when a split still has fewer")
    shards.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle within each split")
    shards.add_argument("--no-shuffle", action="store_true", help="keep the annotation file order")
    shards.add_argument("--reencode", action="store_true",
                        help="re-encode thermal images as lossless PNG (16-bit kept) instead of copying their bytes")

    thermal = parser.add_argument_group(
        "thermal frames", "Frames are stored raw (16-bit stays 16-bit); the normalisation is recorded in the "
                          "manifest for training and the benchmark, and --verify decodes with it (docs/data.md).")
    add_norm_arguments(thermal, default="percentile")
    thermal.add_argument("--palette", choices=PALETTE_CHOICES, default="refuse",
                         help="False-colour thermal JPEGs (strong chroma, e.g. FLIR iron/rainbow exports): 'refuse' "
                              "leaves them out and lists them in the manifest (fatal with --strict); 'iron' or "
                              "'rainbow' maps them back to intensity by nearest palette colour; 'white-hot' keeps "
                              "their luma; 'black-hot' inverts every 8-bit frame (hot = dark in the source). "
                              "Remapped frames are stored as 8-bit grey PNG.")

    checks = parser.add_argument_group("checks")
    checks.add_argument("--verify", action="store_true",
                        help="fully decode every image before writing it (default: only the header is read)")
    checks.add_argument("--strict", action="store_true",
                        help="stop at the first bad row or image, naming it (default: skip and list it in the manifest)")
    checks.add_argument("--max-skip-fraction", type=float, default=DEFAULT_MAX_SKIP_FRACTION, metavar="F",
                        help="exit with status 1 (after writing the shards and the manifest) when more than this "
                             "fraction of the annotation rows was skipped; false-colour refusals (--palette "
                             "refuse) do not count. 1 never fails, 0 fails on any skipped row")
    checks.add_argument("--threads", type=int, default=8, help="threads reading images")
    checks.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    checks.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)  # test-only: slow writes
    return parser


def options_from_args(args: argparse.Namespace, command: str) -> ConvertOptions:
    """Turn parsed arguments into :class:`ConvertOptions` (``ValueError`` for bad thermal-norm flags)."""
    meta_fields = tuple(name.strip() for name in args.meta_fields.split(",") if name.strip())
    fields = FieldNames(id=args.id_field, image=args.image_field, global_caption=args.global_field,
                        fg_caption=args.fg_field, rgb=args.rgb_field, split=args.split_field,
                        dataset=args.dataset_field, meta=args.meta_field, meta_fields=meta_fields)
    return ConvertOptions(
        annotations=args.annotations, output_dir=args.output_dir, image_root=args.image_root, fields=fields,
        fmt=args.format, prefix=args.prefix, maxcount=args.maxcount, maxsize=args.maxsize,
        min_shards=args.min_shards, seed=args.seed, shuffle=not args.no_shuffle, reencode=args.reencode,
        verify=args.verify, strict=args.strict, default_split=args.default_split,
        default_dataset=args.default_dataset, overwrite=args.overwrite, threads=args.threads, command=command,
        progress=not args.no_progress, throttle=args.throttle, norm=norm_from_args(args), palette=args.palette,
        allow_outside_root=args.allow_outside_root, max_skip_fraction=args.max_skip_fraction)


SUMMARY_EXAMPLES = 5  # skipped rows named on the console


def print_skip_summary(manifest: dict, file=None) -> None:
    """The skip reasons with their counts and the first few skipped rows (the manifest lists them all)."""
    from ..data.manifest import reason_kind
    file = file or sys.stderr
    skipped = manifest.get("skipped") or []
    if not skipped:
        return
    first_row = {}
    for entry in skipped:
        first_row.setdefault(reason_kind(entry["reason"]), entry.get("row"))
    print(f"skipped {len(skipped)} of {manifest['total_rows']} rows ({manifest['skipped_fraction']:.1%} counted "
          f"against --max-skip-fraction {manifest['max_skip_fraction']}), by reason:", file=file)
    for kind, count in sorted(manifest["skipped_by_reason"].items(), key=lambda item: (-item[1], item[0])):
        print(f"  {kind}: {count}" + (f" (first: row {first_row[kind]})" if first_row.get(kind) else ""),
              file=file)
    print("first skipped rows:", file=file)
    for entry in skipped[:SUMMARY_EXAMPLES]:
        where = f"row {entry['row']}" if entry.get("row") is not None else "row ?"
        who = f" (id {entry['id']!r})" if entry.get("id") is not None else ""
        print(f"  {where}{who}: {entry['reason']}", file=file)
    if len(skipped) > SUMMARY_EXAMPLES:
        print(f"  ... {len(skipped) - SUMMARY_EXAMPLES} more in the manifest", file=file)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the converter; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.maxcount < 1 or args.min_shards < 1 or args.maxsize <= 0:
        parser.error("--maxcount and --min-shards must be >= 1 and --maxsize > 0")
    if not 0.0 <= args.max_skip_fraction <= 1.0:
        parser.error(f"--max-skip-fraction must be between 0 and 1, got {args.max_skip_fraction:g}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m open_clip_thermal.convert " + shlex.join(argv)
    try:
        options = options_from_args(args, command)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        manifest = convert(options)
    except (BadRowError, ConversionError) as exc:
        status = 2 if isinstance(exc, ConversionError) and "--overwrite" in str(exc) else 1
        if getattr(exc, "manifest", None) is not None:
            _report(exc.manifest, args.output_dir)
        print(f"error: {exc}", file=sys.stderr)
        return status
    except AnnotationFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _report(manifest, args.output_dir)
    return 0


def _report(manifest: dict, output_dir: str) -> None:
    summary = ", ".join(f"{name}: {split['samples']} samples in {split['num_shards']} shard(s)"
                        for name, split in manifest["splits"].items())
    print(f"wrote {manifest['total_samples']} samples ({summary}); skipped {manifest['skipped_count']}; "
          f"manifest: {output_dir}/manifest.json", file=sys.stderr)
    print_skip_summary(manifest)
    for warning in manifest["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


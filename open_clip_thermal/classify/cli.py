"""Command line: zero-shot thermal classification (``python -m open_clip_thermal.classify``).

Subcommands: ``eval`` (the default when the first argument is an option) scores one or more models
on an ImageFolder tree and prints a comparison table; ``crops`` cuts COCO-style detection boxes
(FLIR ADAS) into such a tree; ``synthetic-tree`` does the same for a generated synthetic set.
The parser imports no torch (``--help`` is instant); ``eval`` imports it when it runs.
Exit status: 0 on success, 2 on bad input (a one-line ``error:`` naming it), 1 when images were
unreadable and ``--max-unreadable-fraction`` was exceeded (results are written all the same).
"""
import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..console import surfaced_warnings  # standard library only
from ..contracts import BRANCHES, DEFAULT_LAM, FUSION_MODES
from ..data.decode import add_norm_arguments, norm_from_args
from .crops import CropError, coco_crops
from .report import TASK, format_table, write_report
from .synthetic_tree import synthetic_crops
from .templates import DEFAULT_TEMPLATES_FILE, TemplateError, load_templates
from .tree import TreeError, scan_tree

COMMANDS = ("eval", "crops", "synthetic-tree")
LOG_FILE = "classify.log"
log = logging.getLogger("open_clip_thermal.classify")


class ClassifyError(ValueError):
    """Bad input for the command line (exit status 2, one line)."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of all three subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.classify",
        description="Zero-shot classification of thermal images with CLIP / T-CLIP models (docs/usage.md). "
                    "'eval' is the default subcommand: 'python -m open_clip_thermal.classify --data TREE ...'.",
        allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="{eval,crops,synthetic-tree}")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    ev = sub.add_parser("eval", help="score models on an ImageFolder tree, print a table, write results.json",
                        formatter_class=fmt, allow_abbrev=False,
                        description="Zero-shot classify every image of an ImageFolder tree (ROOT/<class>/<image>) "
                                    "with each --model and write results.json (CLIP_benchmark key names), "
                                    "results.md, confusion_<model>.png and classify.log into --out.")
    ev.add_argument("--data", required=True, help="ImageFolder tree: one sub-folder per class, thermal images inside "
                                                  "(8-bit or 16-bit PNG/TIFF/JPEG, .npy)")
    ev.add_argument("--model", dest="models", action="append", required=True, metavar="[LABEL=]NAME[:PRETRAINED]",
                    help="a model to score; repeat to compare several. NAME: an OpenCLIP or T-CLIP name "
                         "(tclip-dual, tclip-tiny-dual, ViT-B-16, ...); PRETRAINED: an OpenCLIP tag (openai), a "
                         "checkpoint, an adapter folder, GLOBAL_DIR+FG_DIR for a dual model, or none (random "
                         "init, seeded 0; the default). LABEL names the table row (default NAME:PRETRAINED)")
    ev.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ev.add_argument("--classes", default=None,
                    help="class folders to use, comma-separated, in label order (default: every sub-folder, sorted)")
    ev.add_argument("--classnames", default=None,
                    help="text names used in the prompts, comma-separated in --classes order, or JSON (inline or a "
                         "file: a list in that order, or an object folder -> name), e.g. 'ped' -> 'pedestrian'. "
                         "Default: the folder names with '_' as spaces")
    ev.add_argument("--templates", default=None,
                    help="JSON file of prompt templates with '{}' for the class name (a list, or an object with a "
                         f"'templates' list). Default: the shipped thermal ensemble {DEFAULT_TEMPLATES_FILE.name}")
    fusion = ev.add_argument_group("T-CLIP fusion (dual models only)")
    fusion.add_argument("--lam", type=float, default=DEFAULT_LAM, help="fusion weight of the global branch, in [0, 1]")
    fusion.add_argument("--fusion", choices=FUSION_MODES, default=None,
                        help="feature: fuse each prompt's and image's branch embeddings; score: lam-weighted sum of "
                             "the per-branch cosines. Default: the model's own setting")
    fusion.add_argument("--per-branch", action="store_true",
                        help=f"also score each branch ({', '.join(BRANCHES)}) alone: extra table rows and "
                             "results[].branches")
    thermal = ev.add_argument_group("thermal decoding", "As in training (docs/data.md). Without a flag each model "
                                    "uses the normalisation its adapters recorded, else percentile 1:99.")
    add_norm_arguments(thermal, default=None)
    run = ev.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    run.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    run.add_argument("--no-plots", action="store_true", help="skip the confusion-matrix PNGs")
    run.add_argument("--max-unreadable-fraction", type=float, default=0.0,
                     help="exit 1 when more than this fraction of the images could not be decoded (they are always "
                          "counted, listed in results.json and left out of the metrics)")
    run.add_argument("--verbose", action="store_true", help="also print the log on the console")

    cr = sub.add_parser("crops", help="cut COCO-style detection boxes (FLIR ADAS) into an ImageFolder tree",
                        formatter_class=fmt, allow_abbrev=False,
                        description="Cut every bbox [x, y, w, h] of a COCO detection file into OUT/<category>/"
                                    "<image stem>_<annotation id>.png, keeping the bit depth.")
    cr.add_argument("--coco", required=True, help="COCO annotation JSON (images[], annotations[], categories[])")
    cr.add_argument("--images", required=True, help="folder that images[].file_name is relative to")
    cr.add_argument("--out", required=True, type=Path, help="ImageFolder tree to write")
    cr.add_argument("--categories", default=None, help="keep only these category names, comma-separated")
    cr.add_argument("--min-size", type=int, default=4, help="leave out boxes whose shorter side is below this (px)")
    cr.add_argument("--include-crowd", action="store_true", help="also cut iscrowd boxes")

    st = sub.add_parser("synthetic-tree", help="cut the objects of a generated synthetic set into an ImageFolder tree",
                        formatter_class=fmt, allow_abbrev=False,
                        description="Cut every visible object (car, van, bus, pedestrian, umbrella, building, tree) "
                                    "of 'python -m open_clip_thermal.synthetic generate' output into "
                                    "OUT/<label>/<scene id>_<label>_<index>.png (thermal, bit depth kept).")
    st.add_argument("--data", required=True, help="the generate output folder (holds annotations.jsonl)")
    st.add_argument("--out", required=True, type=Path, help="ImageFolder tree to write")
    st.add_argument("--split", default="test", help="scenes of this split; 'all' for every split")
    st.add_argument("--labels", default=None, help="keep only these object labels, comma-separated")
    st.add_argument("--min-size", type=int, default=4, help="leave out boxes whose shorter side is below this (px)")
    return parser


def _csv(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def parse_model(text: str) -> Tuple[str, str, Optional[str]]:
    """``[LABEL=]NAME[:PRETRAINED]`` -> (label, name, pretrained or None)."""
    label, sep, body = text.partition("=")
    if not sep:
        label, body = "", text
    name, _, pretrained = body.strip().partition(":")
    if not name.strip():
        raise ClassifyError(f"--model {text!r}: no model name (expected [LABEL=]NAME[:PRETRAINED])")
    pretrained = pretrained.strip() or None
    if pretrained is not None and pretrained.lower() == "none":
        pretrained = None
    return label.strip() or f"{name.strip()}:{pretrained or 'none'}", name.strip(), pretrained


def variant_for(name: str, pretrained: Optional[str]):
    """The benchmark's VariantSpec of one --model (kind chosen so build_model loads it as the benchmark does)."""
    import os

    import open_clip_thermal
    from ..evaluation.variants import VariantSpec

    seed = tuple(pretrained.split("+")) if pretrained and "+" in pretrained else (pretrained,)
    if name in open_clip_thermal.list_tclip_models():
        dual = set(BRANCHES) <= set(open_clip_thermal.get_tclip_config(name).get("branches", ()))
        kind = "tclip-dual" if dual else "lora-global"
    elif pretrained is not None and os.path.isfile(pretrained):
        kind = "full"  # a stock architecture with a fine-tuned checkpoint
    else:
        kind = "zeroshot"  # the stock base CLIP, with the activation its weights were trained with
    return VariantSpec(kind, name, name, (seed,)), seed


def _classnames(args, folders: List[str]) -> List[str]:
    if args.classnames is None:
        return [f.replace("_", " ") for f in folders]
    text = args.classnames
    if text.lstrip().startswith(("{", "[")) or text.endswith(".json") or Path(text).is_file():
        import json
        try:
            inline = text.lstrip().startswith(("{", "["))
            content = json.loads(text if inline else Path(text).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ClassifyError(f"--classnames {text}: cannot read JSON ({error})") from None
        if isinstance(content, dict):
            return [str(content.get(f, f.replace("_", " "))) for f in folders]
        names = [str(c) for c in content] if isinstance(content, list) else None
    else:
        names = _csv(text)
    if names is None or len(names) != len(folders):
        raise ClassifyError(f"--classnames {text!r}: {0 if names is None else len(names)} names for "
                            f"{len(folders)} class folders ({', '.join(folders)})")
    return names


def _setup_logging(out: Path, verbose: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOG_FILE
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    if verbose:
        root.addHandler(logging.StreamHandler(sys.stderr))
    logging.captureWarnings(True)
    return path


def run_eval(args) -> Dict:
    """The ``eval`` subcommand: build each model, classify, write the report; returns it."""
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0)):
        if value < low:
            raise ClassifyError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 <= args.lam <= 1.0:
        raise ClassifyError(f"--lam must lie in [0, 1], got {args.lam}")
    try:
        override = norm_from_args(args)
        folders, samples = scan_tree(args.data, _csv(args.classes))
        templates = load_templates(args.templates)
    except (ValueError, TreeError, TemplateError) as error:
        raise ClassifyError(str(error)) from None
    classnames = _classnames(args, folders)
    parsed = [parse_model(text) for text in args.models]
    labels = [p[0] for p in parsed]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ClassifyError(f"--model labels {repeated} repeat; name rows with LABEL=NAME[:PRETRAINED]")
    log_path = _setup_logging(args.out, args.verbose)
    log.info("classify %s: %d images, %d classes %s, %d templates", args.data, len(samples), len(folders),
             folders, len(templates))

    import torch

    from ..evaluation.encode import model_preprocess, model_tokenizer, norm_record, seed_norm, unrecorded_norm_message
    from ..evaluation.errors import BenchmarkError
    from ..evaluation.variants import build_model, check_spec
    from .tree import ThermalImageFolder
    from .zeroshot import classify

    results = []
    for label, name, pretrained in parsed:
        spec, seed = variant_for(name, pretrained)
        try:
            check_spec(spec)
            norm, source = seed_norm(spec.kind, seed, override, label)
            unrecorded = unrecorded_norm_message(spec.kind, seed, source, f"--model {label}")
            if unrecorded:  # the log goes to a file: say it on the console too
                print(f"warning: {unrecorded}", file=sys.stderr)
            with surfaced_warnings():  # logged; ours (e.g. random base weights) also on the console
                model = build_model(spec, seed)
        except BenchmarkError as error:
            raise ClassifyError(f"--model {label}: {error}") from None
        start = time.time()
        dataset = ThermalImageFolder(args.data, transform=model_preprocess(model), norm=norm, classes=folders)
        metrics = classify(model, dataset, classnames, templates, tokenizer=model_tokenizer(model, name), lam=args.lam,
                           fusion=args.fusion, per_branch=args.per_branch, batch_size=args.batch_size,
                           workers=args.workers, device=args.device)
        branches = metrics.pop("branches", None)
        entry = {"name": label, "model": name, "pretrained": pretrained, "task": TASK, "dataset": str(args.data),
                 "language": "en", "kind": spec.kind, "thermal_norm": norm_record(norm, source), "metrics": metrics}
        if branches is not None:
            entry["branches"] = branches
        results.append(entry)
        log.info("%s: acc1 %.4f acc5 %s mean_per_class_recall %.4f (%d images, %d unreadable, %.1f s)", label,
                 metrics["acc1"], metrics["acc5"], metrics["mean_per_class_recall"], metrics["n_samples"],
                 metrics["n_unreadable"], time.time() - start)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report = {"task": TASK, "dataset": str(args.data), "classnames": classnames, "class_folders": folders,
              "templates": templates, "n_images": len(samples), "lam": args.lam, "fusion": args.fusion,
              "results": results, "log": log_path.name}
    write_report(report, args.out, plots=not args.no_plots)
    return report


def _report_crops(report, out: Path) -> int:
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "crops_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {report.summary()} to {out}")
    for line in report.unreadable[:5]:
        print(f"unreadable: {line}", file=sys.stderr)
    if len(report.unreadable) > 5:
        print(f"... {len(report.unreadable) - 5} more unreadable images, see {out / 'crops_report.json'}", file=sys.stderr)
    return 0 if report.total else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "eval")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "crops":
            return _report_crops(coco_crops(args.coco, args.images, args.out, args.min_size, _csv(args.categories),
                                            args.include_crowd), args.out)
        if args.command == "synthetic-tree":
            split = None if args.split == "all" else args.split
            return _report_crops(synthetic_crops(args.data, args.out, split, args.min_size, _csv(args.labels)), args.out)
        report = run_eval(args)
    except (ClassifyError, CropError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(report["results"]))
    print(f"wrote {args.out / 'results.json'}, results.md and {LOG_FILE} in {args.out}")
    unreadable = sum(e["metrics"]["n_unreadable"] for e in report["results"]) / max(1, len(report["results"]))
    if unreadable:
        print(f"warning: {int(unreadable)} of {report['n_images']} images unreadable, left out of the metrics "
              "(listed in results.json)", file=sys.stderr)
        if unreadable / report["n_images"] > args.max_unreadable_fraction:
            return 1
    return 0

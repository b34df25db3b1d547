"""Command line: text-to-thermal search (``python -m open_clip_thermal.search``).

``index`` embeds thermal images (folders, file lists, shards) into an index folder, resumably and
incrementally; ``query`` searches it by text or by example image and prints a table, optionally
writing JSON and an HTML contact sheet. The parser imports no torch (``--help`` is instant).
Exit status: 0 on success, 2 on bad input (one ``error:`` line naming it), 1 when no image of the
sources could be stored, 130 when interrupted (what was embedded is kept: run the command again).
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..console import surfaced_warnings  # standard library only
from ..contracts import DEFAULT_LAM, FUSION_MODES
from ..data.decode import add_norm_arguments, norm_from_args
from .backends import BACKENDS, EXACT_BELOW, INSTALL_HINT
from .errors import SearchError
from .store import LOG_FILE, IndexStore

log = logging.getLogger("open_clip_thermal.search")


def _add_search_options(group) -> None:
    group.add_argument("--exact-below", type=int, default=EXACT_BELOW,
                       help="search exactly while the index holds fewer embeddings than this; from there on use "
                            f"faiss IVF when installed ({INSTALL_HINT}), else stay exact and say so once")


def build_parser() -> argparse.ArgumentParser:
    """The parser of both subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.search",
        description="Text-to-thermal search with CLIP / T-CLIP models (docs/usage.md): 'index' embeds thermal "
                    "images once, 'query' finds them by text or by example image.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="{index,query}")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    ix = sub.add_parser("index", help="embed thermal images into an index folder (resumable, incremental)",
                        formatter_class=fmt, allow_abbrev=False,
                        description="Embed every thermal image of the sources with --model and store the float16 "
                                    "embeddings with their paths in --index. Run it again to resume an interrupted "
                                    "run or to add new and changed files: unchanged files (same path, size and "
                                    "mtime) are skipped. An index refuses a model other than the one it was "
                                    "built with.")
    ix.add_argument("--index", required=True, type=Path, help="index folder (created; holds index.json, chunks/, "
                                                              f"{LOG_FILE})")
    given = ix.add_argument_group("sources (at least one; each repeatable)")
    given.add_argument("--folder", action="append", default=[], metavar="DIR",
                       help="a folder of thermal images, searched recursively (PNG/TIFF/JPEG 8- or 16-bit, .npy...)")
    given.add_argument("--list", dest="lists", action="append", default=[], metavar="FILE",
                       help="a text file naming one image per line (relative to the file's folder; '#' comments)")
    given.add_argument("--shards", action="append", default=[], metavar="SPEC",
                       help="WebDataset shards of this project (docs/contracts.md), a brace pattern or a '::' list, "
                            "e.g. 'data/shards/synthetic-test-{000000..000003}.tar'; samples are stored as SHARD#KEY "
                            "with their captions and metadata")
    ix.add_argument("--model", default=None, metavar="[LABEL=]NAME[:PRETRAINED]",
                    help="the model that embeds: an OpenCLIP or T-CLIP name (tclip-dual, tclip-tiny-dual, ViT-B-16, "
                         "...); PRETRAINED an OpenCLIP tag (openai), a checkpoint, an adapter folder, GLOBAL_DIR+FG_DIR "
                         "for a dual model, or none (random init, seeded 0). Required for a new index; for an existing "
                         "one the recorded model is used, and a different one is refused")
    fusion = ix.add_argument_group("T-CLIP fusion (dual models only; recorded in the index, used by every query)")
    fusion.add_argument("--lam", type=float, default=None,
                        help=f"fusion weight of the global branch, in [0, 1] (default: the model's own, {DEFAULT_LAM} "
                             "for the shipped configs)")
    fusion.add_argument("--fusion", choices=FUSION_MODES, default=None,
                        help="how the two branch embeddings are fused (default: the model's own); in score mode the "
                             "similarity is lam * s_global + (1 - lam) * s_fine_grained")
    thermal = ix.add_argument_group("thermal decoding", "As in training (docs/data.md). Without a flag the model's "
                                    "recorded normalisation is used, else percentile 1:99; recorded in the index.")
    add_norm_arguments(thermal, default=None)
    run = ix.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    run.add_argument("--workers", type=int, default=2,
                     help="DataLoader worker processes decoding ahead of the model (0: decode in the main process)")
    run.add_argument("--commit-every", type=int, default=512,
                     help="save the embeddings every this many images: an interrupted run loses at most these")
    run.add_argument("--prune", action="store_true",
                     help="also drop entries whose file or shard no longer exists (default: keep them)")
    _add_search_options(run)
    run.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--verbose", action="store_true", help="also print the log on the console")

    qy = sub.add_parser("query", help="search an index by text or by example image", formatter_class=fmt,
                        allow_abbrev=False,
                        description="Embed each query with the index's model and print the --top-k most similar "
                                    "images (cosine similarity) per query; optionally write them as JSON and as an "
                                    "HTML contact sheet of thumbnails.")
    qy.add_argument("--index", required=True, type=Path, help="an index folder built by 'index'")
    what = qy.add_argument_group("queries (at least one; each repeatable)")
    what.add_argument("--text", dest="texts", action="append", default=[], metavar="TEXT",
                      help="a text query, e.g. 'a pedestrian crossing a road at night'")
    what.add_argument("--image", dest="images", action="append", default=[], metavar="PATH",
                      help="an example thermal image: find the most similar indexed images")
    qy.add_argument("--top-k", type=int, default=10, help="hits per query (>= 1)")
    out = qy.add_argument_group("output (the table is always printed)")
    out.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    out.add_argument("--html", type=Path, default=None, metavar="FILE",
                     help="write an HTML contact sheet (thumbnails in FILE's folder, <name>_thumbs/, linked relatively)")
    out.add_argument("--embed-thumbnails", action="store_true",
                     help="put the thumbnails into the HTML file itself (data URIs) instead of <name>_thumbs/")
    out.add_argument("--thumb-size", type=int, default=160, help="thumbnail size in pixels (longer side)")
    search = qy.add_argument_group("search")
    search.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: exact below --exact-below embeddings, faiss above when installed; exact: always "
                             "exact; faiss: approximate IVF search (needs faiss)")
    search.add_argument("--nprobe", type=int, default=None,
                        help="faiss: index cells scanned per query (default: one eighth of them); more is slower and "
                             "finds more of the exact top-k")
    _add_search_options(search)
    qy.add_argument("--model", default=None, metavar="[LABEL=]NAME[:PRETRAINED]",
                    help="build the query model from this instead of the spec the index recorded (e.g. the weights "
                         "moved); it must give the recorded weights, else it is refused")
    qy.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    qy.add_argument("--verbose", action="store_true", help="also print the log on the console")
    return parser


def _setup_logging(folder: Path, verbose: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    try:
        handler = logging.FileHandler(folder / LOG_FILE, mode="a", encoding="utf-8")
    except OSError:  # a read-only index folder can still be queried
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if verbose:
        root.addHandler(logging.StreamHandler(sys.stderr))
    logging.captureWarnings(True)


def _check_counts(pairs) -> None:
    for flag, value, low in pairs:
        if value is not None and value < low:
            raise SearchError(f"{flag} must be >= {low}, got {value}")


def run_index(args) -> int:
    """The ``index`` subcommand."""
    _check_counts((("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                   ("--commit-every", args.commit_every, 1), ("--exact-below", args.exact_below, 0)))
    if args.lam is not None and not 0.0 <= args.lam <= 1.0:
        raise SearchError(f"--lam must lie in [0, 1], got {args.lam}")
    try:
        norm = norm_from_args(args)
    except ValueError as error:
        raise SearchError(str(error)) from None
    from .sources import collect_sources
    sources = collect_sources(args.folder, args.lists, args.shards)  # before the model: bad paths fail fast
    exists = IndexStore.exists(args.index)
    if not exists and args.model is None:
        raise SearchError(f"--index {args.index}: no index there yet; give --model to build one")
    if exists:
        IndexStore.open(args.index)  # a corrupt header fails here, before the model is built
    else:
        IndexStore.check_creatable(args.index)
    args.index.mkdir(parents=True, exist_ok=True)
    _setup_logging(args.index, args.verbose)  # before the model: OpenCLIP's warnings go to the log too

    from .embedder import load_embedder
    from .index import ThermalIndex

    with surfaced_warnings():  # logged; ours (e.g. random base weights) also on the console
        if args.model is None:  # the recorded model, with any setting given on the command line
            recorded = IndexStore.open(args.index).header.get("model") or {}
            from ..data.decode import ThermalNorm
            norm = norm or (ThermalNorm.from_dict(recorded["thermal_norm"]) if recorded.get("thermal_norm") else None)
            if not recorded.get("spec"):
                raise SearchError(f"--index {args.index}: built from Python; pass --model")
            embedder = load_embedder(recorded["spec"], norm,
                                     args.lam if args.lam is not None else recorded.get("lam"),
                                     args.fusion or recorded.get("fusion"), args.device)
        else:
            embedder = load_embedder(args.model, norm, args.lam, args.fusion, args.device)
            if embedder.norm_warning:  # the log goes to a file: say it on the console too
                print(f"warning: {embedder.norm_warning}", file=sys.stderr)
        index = ThermalIndex.open(args.index, embedder, device=args.device, exact_below=args.exact_below)
    log.info("index %s with %s (%d stored)", args.index, index.identity.get("spec"), len(index))
    try:
        report = index.add(sources, batch_size=args.batch_size, workers=args.workers, commit_every=args.commit_every,
                           prune=args.prune, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted: {len(index)} images stored in {args.index}; run the same command to resume",
              file=sys.stderr)
        return 130
    backend = index.prepare("auto", progress=not args.no_progress)
    print(f"index {args.index}: {len(index)} images, {report.summary()}; model {index.identity.get('spec')}; "
          f"{backend} search")
    for entry in report.unreadable[:5]:
        print(f"unreadable: {entry['path']}: {entry['error']}", file=sys.stderr)
    if len(report.unreadable) > 5:
        print(f"... {len(report.unreadable) - 5} more unreadable, see {args.index / LOG_FILE}", file=sys.stderr)
    return 1 if report.unreadable and not len(index) else 0


def run_query(args) -> int:
    """The ``query`` subcommand."""
    _check_counts((("--top-k", args.top_k, 1), ("--nprobe", args.nprobe, 1), ("--thumb-size", args.thumb_size, 8),
                   ("--exact-below", args.exact_below, 0)))
    if not args.texts and not args.images:
        raise SearchError("nothing to search for: give --text and/or --image")
    for image in args.images:
        if not Path(image).is_file():
            raise SearchError(f"--image {image}: not a file")
    from .index import ThermalIndex
    from .report import format_results, write_contact_sheet, write_json

    IndexStore.open(args.index)  # no index there: one line before anything is imported
    _setup_logging(args.index, args.verbose)
    with surfaced_warnings():
        index = ThermalIndex.load(args.index, args.model, device=args.device, exact_below=args.exact_below)
        results = index.query(args.texts, args.images, k=args.top_k, backend=args.backend, nprobe=args.nprobe)
    print(format_results(results))
    log.info("query %s: %d queries, top %d", args.index, len(results), args.top_k)
    if args.json is not None:
        print(f"wrote {write_json(results, args.json, str(args.index), index.identity, args.top_k)}")
    if args.html is not None:
        path = write_contact_sheet(results, args.html, index.embedder.norm, embed=args.embed_thumbnails,
                                   size=args.thumb_size)
        print(f"wrote {path}" + ("" if args.embed_thumbnails else f" (thumbnails in {path.stem}_thumbs/)"))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return run_index(args) if args.command == "index" else run_query(args)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

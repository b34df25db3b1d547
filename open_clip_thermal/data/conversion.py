"""Annotations + image files -> WebDataset shards, ``sizes.json`` and ``manifest.json``.

Two passes: the first validates every row and reads each image's header (cheap, parallel) so the
number of good samples per split, and with it the shard plan, is known up front; the second reads
the bytes and writes the shards in a seeded, deterministic order. Because the plan is
deterministic, an interrupted run resumes exactly where its last complete shard ended and the
result is byte-identical to an uninterrupted run (see ``docs/data.md``).
"""
import hashlib
import json
import logging
import os
import random
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from tqdm import tqdm

from ..contracts import FG_CAPTION_KEY, GLOBAL_CAPTION_KEY, METADATA_KEY, RGB_PREFIX, SAMPLE_KEY
from .annotations import Annotation, FieldNames, Skipped, UnsafePathError, read_annotations, resolve_annotation_path
from .decode import PALETTE_CHOICES, PALETTES, ThermalNorm, decode_with, palette_to_intensity
from .image_files import ImageFileError, ImageInfo, grey_png, inspect_image, read_bytes, reencode_png
from .manifest import build_manifest, write_json_atomic, write_sizes
from .shard_writer import PARTIAL_SUFFIX, ConversionJournal, SplitShardWriter, make_keys

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FALSE_COLOUR_REASON = "false-colour thermal frame"  # start of the skip reason of refused palette frames
OFF_PALETTE_WARNING = 0.2  # a remapped frame with more off-palette pixels than this is logged
OUTSIDE_ROOT_REASON = "image path outside --image-root"  # start of the skip reason of refused paths
BAD_PATH_REASON = "unusable image path"
DEFAULT_MAX_SKIP_FRACTION = 0.1
FLOAT_MODES = ("F", "F;32", "F;32BF", "F;64")  # PIL modes of floating-point frames


class ConversionError(RuntimeError):
    """The conversion cannot go on (strict-mode problem, output conflict, nothing written).

    ``manifest`` is the written manifest when the error comes after it (nothing written, too many skipped).
    """

    def __init__(self, message: str, manifest: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.manifest = manifest


class TooManySkippedError(ConversionError):
    """More rows were skipped than ``max_skip_fraction`` allows; the shards and manifest are written."""


@dataclass
class ConvertOptions:
    """Everything the converter needs; the CLI fills it from argparse."""

    annotations: str  # annotation file path or URL
    output_dir: str  # local folder for shards, sizes.json, manifest.json
    image_root: Optional[str] = None  # prefix of relative image paths (folder or fsspec URL)
    fields: FieldNames = field(default_factory=FieldNames)
    fmt: Optional[str] = None  # json | jsonl | csv | tsv; None: from the extension
    prefix: str = "thermal"
    maxcount: int = 10000  # samples per shard at most
    maxsize: float = 3e9  # payload bytes per shard at most
    min_shards: int = 1  # spread each split over at least this many shards
    seed: int = 0
    shuffle: bool = True  # seeded shuffle within each split
    reencode: bool = False  # re-encode thermal images as PNG instead of copying their bytes
    verify: bool = False  # fully decode every image before writing it
    strict: bool = False  # first bad input is fatal
    default_split: str = "train"
    default_dataset: Optional[str] = None
    overwrite: bool = False  # delete this prefix's existing shards and start clean (never resume)
    threads: int = 8  # parallel image reads
    command: str = ""  # recorded in the manifest
    progress: bool = True
    throttle: float = 0.0  # seconds to sleep per written sample (only to test interruption)
    # decode of >8-bit frames the shards are meant for: recorded in the manifest and used by
    # --verify; frames are stored raw, so it does not change the shard bytes
    norm: ThermalNorm = field(default_factory=ThermalNorm)
    # false-colour frames: 'refuse' skips them (listed in the manifest), 'white-hot' keeps their luma,
    # 'black-hot' inverts every 8-bit frame, 'iron' / 'rainbow' invert the palette; see docs/data.md
    palette: str = "refuse"
    # read annotation paths that lead outside image_root (absolute, '..', symlinks, other URLs);
    # by default such rows are refused and listed (annotations.resolve_annotation_path)
    allow_outside_root: bool = False
    # a run that skips more than this fraction of its rows (false-colour refusals aside) ends in
    # TooManySkippedError after writing everything; None: no limit
    max_skip_fraction: Optional[float] = DEFAULT_MAX_SKIP_FRACTION

    def __post_init__(self):
        if self.palette not in PALETTE_CHOICES:
            raise ValueError(f"palette must be one of {PALETTE_CHOICES}, got {self.palette!r}")
        if self.max_skip_fraction is not None and not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"--max-skip-fraction must be between 0 and 1, got {self.max_skip_fraction}")


@dataclass
class PlannedSample:
    """A validated annotation whose image headers were read, ready to be written."""

    annotation: Annotation
    key: str
    image_path: str
    rgb_path: Optional[str]
    thermal: ImageInfo
    rgb: Optional[ImageInfo]


def _ordered_map(function: Callable, items: Iterable, threads: int, window: int = 64) -> Iterator:
    """``map`` over a thread pool, in input order, with at most ``window`` items in flight."""
    if threads <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _fail_or_skip(options: ConvertOptions, skipped: Skipped) -> Skipped:
    if options.strict:
        raise ConversionError(f"row {skipped.row} (id {skipped.id!r}): {skipped.reason}")
    return skipped


def _resolve(path: str, options: ConvertOptions) -> str:
    """The path to read for an annotation path (the confinement rule); ``ImageFileError`` if refused."""
    try:
        return resolve_annotation_path(path, options.image_root, options.allow_outside_root)
    except UnsafePathError as exc:
        reason = OUTSIDE_ROOT_REASON if exc.outside else BAD_PATH_REASON
        raise ImageFileError(f"{reason}: {exc}") from None


def _inspect_one(path: str, options: ConvertOptions, colour_check: bool = False) -> Tuple[str, ImageInfo]:
    """(path to read, header info) of one annotation path; every failure is an ``ImageFileError``."""
    resolved = _resolve(path, options)
    try:
        return resolved, inspect_image(resolved, colour_check=colour_check)
    except ImageFileError:
        raise
    except Exception as exc:  # one row's unexpected failure must not end the run
        raise ImageFileError(f"cannot read image {resolved}: {type(exc).__name__}: {exc}") from exc


def _inspect_row(annotation: Annotation, options: ConvertOptions) -> Tuple[Annotation, Any]:
    """Resolve and read the image headers of one row.

    Returns:
        (annotation, skip reason) or (annotation, (thermal path, thermal info, rgb path, rgb info)).
    """
    try:
        image_path, thermal = _inspect_one(annotation.image, options, colour_check=True)
    except ImageFileError as exc:
        return annotation, str(exc)
    if annotation.rgb is None:
        return annotation, (image_path, thermal, None, None)
    try:
        rgb_path, rgb = _inspect_one(annotation.rgb, options)
    except ImageFileError as exc:
        return annotation, f"rgb: {exc}"
    return annotation, (image_path, thermal, rgb_path, rgb)


def plan_samples(annotations: List[Annotation], options: ConvertOptions) -> Tuple[Dict[str, List[PlannedSample]], List[Skipped]]:
    """Check image headers and order the good samples of each split (seeded shuffle)."""
    skipped: List[Skipped] = []
    good: List[Tuple[Annotation, str, ImageInfo, Optional[str], Optional[ImageInfo]]] = []
    results = _ordered_map(lambda a: _inspect_row(a, options), annotations, options.threads)
    for annotation, result in tqdm(results, total=len(annotations), desc="checking images", unit="img",
                                   disable=not options.progress):
        if isinstance(result, str):
            skipped.append(_fail_or_skip(options, Skipped(annotation.row, annotation.id, result, "image")))
            continue
        path, thermal, rgb_path, rgb = result
        if thermal.false_colour and options.palette == "refuse":
            skipped.append(_fail_or_skip(options, Skipped(
                annotation.row, annotation.id, f"{FALSE_COLOUR_REASON} {path} ({thermal.chroma:.0%} strongly "
                f"coloured pixels): luma of a palette is not intensity; pass --palette "
                f"{{{','.join(PALETTE_CHOICES[1:])}}} to map it back", "image")))
        else:
            good.append((annotation, path, thermal, rgb_path, rgb))
    keys = make_keys([annotation.id for annotation, *_ in good])
    plan: Dict[str, List[PlannedSample]] = {}
    for annotation, path, thermal, rgb_path, rgb in good:
        plan.setdefault(annotation.split, []).append(
            PlannedSample(annotation, keys[annotation.id], path, rgb_path, thermal, rgb))
    if options.shuffle:
        for split in sorted(plan):
            random.Random(f"{options.seed}:{split}").shuffle(plan[split])
    return plan, skipped


def _settings(options: ConvertOptions) -> Dict[str, Any]:
    """The options that decide the shard bytes, as JSON values (the journal records them)."""
    settings = {k: v for k, v in asdict(options).items()
                if k not in ("command", "progress", "threads", "overwrite", "throttle", "strict", "norm",
                             "max_skip_fraction")}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _fingerprint(options: ConvertOptions, plan: Dict[str, List[PlannedSample]]) -> str:
    """Hash of everything that decides the shard bytes; a resume needs the same value."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_settings(options), sort_keys=True).encode())
    for split in sorted(plan):
        for item in plan[split]:
            digest.update(json.dumps([split, item.key, asdict(item.annotation), asdict(item.thermal),
                                      asdict(item.rgb) if item.rgb else None], sort_keys=True).encode(
                "utf-8", errors="surrogateescape"))
    return digest.hexdigest()


def _split_shard_count_limit(options: ConvertOptions, count: int) -> int:
    """Samples per shard: ``maxcount``, lowered so a split of ``count`` fills at least ``min_shards`` shards.

    ``count // min_shards`` per shard gives ``count / (count // min_shards) >= min_shards`` shards
    (rounding up would not: 9 samples at 3 per shard fill only 3 of 4 requested shards).
    """
    if options.min_shards <= 1 or count == 0:
        return options.maxcount
    return max(1, min(options.maxcount, count // options.min_shards))


def _our_files(options: ConvertOptions) -> List[str]:
    """Shards and partial files of this prefix (any split) that already exist in the output folder."""
    ours = re.compile(re.escape(f"{options.prefix}-") + r".+-\d{6}\.tar(" + re.escape(PARTIAL_SUFFIX) + ")?")
    return [name for name in sorted(os.listdir(options.output_dir)) if ours.fullmatch(name)]


def _journal_path(options: ConvertOptions) -> str:
    return os.path.join(options.output_dir, f"_convert_journal-{options.prefix}.jsonl")


def _valid_entries(options: ConvertOptions, entries: List[Dict[str, Any]], plan: Dict[str, List[PlannedSample]]) -> List[Dict[str, Any]]:
    """Journal entries whose shard file still exists intact, in order and consistent with the plan."""
    kept: List[Dict[str, Any]] = []
    next_index: Dict[str, int] = {}
    for entry in entries:
        split = entry["split"]
        path = os.path.join(options.output_dir, entry["name"])
        expected_index = next_index.get(split, 0)
        intact = (split in plan and entry["index"] == expected_index and os.path.exists(path)
                  and os.path.getsize(path) == entry["bytes"])
        if intact:
            kept.append(entry)
            next_index[split] = expected_index + 1
        else:
            next_index[split] = -1  # later shards of this split cannot be trusted either
    return kept


def _setting_changes(before: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> List[str]:
    """``name: old -> new`` for every setting that differs (nested ones as ``fields.image``)."""
    changes = []
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name, "(not recorded)"), now.get(name, "(not recorded)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _setting_changes(old, new, f"{prefix}{name}.")
        elif old != new:
            changes.append(f"{prefix}{name}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def _not_resumable(options: ConvertOptions, header: Optional[Dict[str, Any]], existing: List[str]) -> str:
    """Why the shards in the output folder cannot be resumed by this run, and what to do (one line)."""
    what = f"{options.output_dir} already holds shards of prefix {options.prefix!r} (e.g. {existing[0]})"
    if header is None:
        why = f"with no readable conversion journal ({os.path.basename(_journal_path(options))}), so nothing says what wrote them"
    elif "settings" not in header:
        why = ("from a conversion whose journal records only a fingerprint (written by an older open_clip_thermal; "
               "the fingerprint also changed when --allow-outside-root was added), so they cannot be resumed")
    else:
        changes = _setting_changes(header["settings"], _settings(options))
        if changes:
            shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
            why = f"from a conversion with other settings (then -> now: {shown})"
        else:
            why = ("from a conversion with the same settings but other input (annotation rows, image files or "
                   "their formats changed since)")
    return (f"{what} {why}; resuming would mix two conversions. Rerun with the earlier settings and input to "
            f"resume, pass --overwrite to delete them and start clean, or choose another --output-dir / --prefix")


def prepare_output(options: ConvertOptions, fingerprint: str, plan: Dict[str, List[PlannedSample]]) -> Tuple[ConversionJournal, List[Dict[str, Any]]]:
    """Decide between resuming and starting clean, and clean the output folder accordingly.

    Returns:
        the journal and the entries of shards that are kept (empty when starting clean).
    """
    os.makedirs(options.output_dir, exist_ok=True)
    journal = ConversionJournal(_journal_path(options))
    previous = None if options.overwrite else journal.load(fingerprint)
    existing = _our_files(options)
    if previous is None and existing and not options.overwrite:
        raise ConversionError(_not_resumable(options, journal.header(), existing))
    kept = _valid_entries(options, previous or [], plan)
    kept_names = {entry["name"] for entry in kept}
    for name in existing:
        if name not in kept_names:
            os.remove(os.path.join(options.output_dir, name))
    manifest_path = os.path.join(options.output_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # rewritten at the end; a stale one must not describe new shards
    journal.start(fingerprint, kept, _settings(options))
    if kept:
        log.info("resuming: keeping %d finished shard(s) in %s", len(kept), options.output_dir)
    return journal, kept


def _read_sample(item: PlannedSample, options: ConvertOptions) -> Dict[str, Any]:
    """Read the bytes of one planned sample and build the shard sample dict."""
    annotation = item.annotation
    thermal = read_bytes(item.image_path)
    ext = item.thermal.ext
    if options.verify or item.thermal.mode in FLOAT_MODES:  # float frames: always (NaN-only frames)
        try:
            decode_with(thermal, ext, options.norm)
        except ValueError as exc:
            raise ImageFileError(f"undecodable image {item.image_path}: {exc}") from exc
    metadata = {"id": annotation.id, "dataset": annotation.dataset, "split": annotation.split,
                "image": annotation.image, "thermal_mode": item.thermal.mode,
                "width": item.thermal.width, "height": item.thermal.height, **annotation.meta}
    remapped = _remap_palette(thermal, item, options, metadata)
    if remapped is not None:
        thermal, ext = remapped, "png"
    elif options.reencode:
        reencoded = reencode_png(thermal)
        if reencoded is not None:
            thermal, ext = reencoded, "png"
        else:  # fractional float values: PNG has no float pixels, keep the lossless original
            metadata["stored_as"] = f"original float frame (.{ext}): PNG cannot hold its fractional values"
    sample = {SAMPLE_KEY: item.key, ext: thermal, GLOBAL_CAPTION_KEY: annotation.global_caption.encode("utf-8")}
    if annotation.fg_caption is not None:
        sample[FG_CAPTION_KEY] = annotation.fg_caption.encode("utf-8")
    if item.rgb_path is not None:
        rgb = read_bytes(item.rgb_path)
        if options.verify:
            inspect_rgb_bytes(rgb, item.rgb_path)
        sample[f"{RGB_PREFIX}{item.rgb.ext}"] = rgb
        metadata["rgb"] = annotation.rgb
    sample[METADATA_KEY] = json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return sample


def frame_kind(info: ImageInfo) -> str:
    """``high_bit_depth``, ``grey_8bit``, ``rgb_grey`` (grey replicated over RGB) or ``false_colour``."""
    if info.false_colour:
        return "false_colour"
    if info.is_colour:
        return "rgb_grey"
    if info.mode in ("1", "L", "LA", "P"):
        return "grey_8bit"
    return "high_bit_depth"


def _remap_palette(data: bytes, item: PlannedSample, options: ConvertOptions, metadata: Dict[str, Any]) -> Optional[bytes]:
    """8-bit grey PNG bytes of a frame that ``--palette`` maps to intensity, or None to keep the bytes.

    ``iron``/``rainbow``: false-colour frames are inverted by nearest palette colour; ``white-hot``:
    false-colour frames become their luma (accepted explicitly); ``black-hot``: every 8-bit frame
    (grey, grey RGB or false-colour luma) is inverted so that hot is bright. Deeper frames are raw
    counts and never remapped.
    """
    import io

    import numpy as np
    from PIL import Image
    kind = frame_kind(item.thermal)
    palette = options.palette
    if kind == "high_bit_depth" or palette == "refuse" or (kind != "false_colour" and palette != "black-hot"):
        return None
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if palette in PALETTES:
            intensity, off = palette_to_intensity(np.asarray(image.convert("RGB")), palette)
            values = np.round(intensity * 255.0).astype(np.uint8)
            metadata["off_palette"] = round(off, 4)
            if off > OFF_PALETTE_WARNING:
                log.warning("%s: %.0f%% of its pixels are far from every %s colour; was it rendered with another "
                            "palette or does it carry overlays?", item.image_path, 100 * off, palette)
        else:
            values = np.asarray(image.convert("RGB").convert("L"))
            if palette == "black-hot":
                values = 255 - values
    metadata["palette"] = palette
    metadata["stored_mode"] = "L"
    return grey_png(values)


def inspect_rgb_bytes(data: bytes, path: str) -> None:
    """Fully decode RGB image bytes, raising :class:`ImageFileError` when they are corrupt."""
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageFileError(f"rgb: undecodable image {path}: {exc}") from exc


def _safe_read(item: PlannedSample, options: ConvertOptions):
    try:
        return _read_sample(item, options)
    except (ImageFileError, OSError, ValueError) as exc:
        return exc
    except Exception as exc:  # one sample's unexpected failure must not end the run
        return ImageFileError(f"cannot read {item.image_path}: {type(exc).__name__}: {exc}")


def write_split(options: ConvertOptions, split: str, items: List[PlannedSample], journal: ConversionJournal,
                kept: List[Dict[str, Any]], progress: tqdm) -> List[Dict[str, Any]]:
    """Write the part of one split that is not covered by kept shards; returns all its shard entries."""
    start = kept[-1]["end"] if kept else 0
    if start >= len(items):
        return kept
    writer = SplitShardWriter(options.output_dir, options.prefix, split, journal,
                              maxcount=_split_shard_count_limit(options, len(items)), maxsize=options.maxsize,
                              start_shard=len(kept))
    remaining = items[start:]
    for position, (item, sample) in enumerate(
            zip(remaining, _ordered_map(lambda i: _safe_read(i, options), remaining, options.threads)), start=start):
        if isinstance(sample, Exception):
            writer.skip(_fail_or_skip(options, Skipped(item.annotation.row, item.annotation.id, str(sample), "write")))
        else:
            writer.write(sample, position)
        progress.update(1)
        if options.throttle:
            time.sleep(options.throttle)
    return kept + writer.close(len(items))


def convert(options: ConvertOptions) -> Dict[str, Any]:
    """Run a whole conversion; see the module docstring and ``docs/data.md``.

    Args:
        options: the conversion settings.

    Returns:
        the manifest (also written to ``output_dir/manifest.json``).

    Raises:
        ConversionError: a problem in ``strict`` mode, an output folder holding another
            conversion's shards, or zero samples written (the manifest is written first).
        BadRowError: a bad annotation row in ``strict`` mode.
    """
    annotations, skipped = read_annotations(options.annotations, options.fields, options.fmt,
                                            options.default_split, options.default_dataset, options.strict)
    plan, image_skips = plan_samples(annotations, options)
    skipped += image_skips
    fingerprint = _fingerprint(options, plan)
    journal, kept = prepare_output(options, fingerprint, plan)
    entries: Dict[str, List[Dict[str, Any]]] = {}
    kept_by_split = {split: [entry for entry in kept if entry["split"] == split] for split in plan}
    # plan positions already covered by kept shards (written or skipped in an earlier run)
    resumed = sum(split_kept[-1]["end"] for split_kept in kept_by_split.values() if split_kept)
    total = sum(len(items) for items in plan.values()) - resumed
    started = time.time()
    with tqdm(total=total, desc="writing shards", unit="sample", disable=not options.progress) as progress:
        for split in sorted(plan):
            entries[split] = write_split(options, split, plan[split], journal, kept_by_split[split], progress)
    elapsed = time.time() - started
    for split_entries in entries.values():
        for entry in split_entries:
            skipped += [Skipped(**s) for s in entry["skipped"]]
    skipped.sort(key=lambda s: (s.row is None, s.row or 0))
    manifest = build_manifest(options, plan, entries, skipped, fingerprint, resumed_shards=len(kept),
                              write_seconds=elapsed, written_this_run=total)
    write_sizes(options.output_dir, {entry["name"]: entry["samples"] for es in entries.values() for entry in es},
                prefix=options.prefix)
    write_json_atomic(os.path.join(options.output_dir, MANIFEST_NAME), manifest)
    if manifest["total_samples"] == 0:
        raise ConversionError(f"no samples written ({len(skipped)} skipped; see {options.output_dir}/{MANIFEST_NAME})",
                              manifest)
    limit = options.max_skip_fraction
    if limit is not None and manifest["skipped_failures"] > limit * manifest["total_rows"]:
        raise TooManySkippedError(
            f"{manifest['skipped_fraction']:.1%} of the rows were skipped ({manifest['skipped_failures']} of "
            f"{manifest['total_rows']}), more than --max-skip-fraction {limit:g}; the shards and "
            f"{options.output_dir}/{MANIFEST_NAME} are written, see the reasons there", manifest)
    return manifest

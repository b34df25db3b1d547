"""The converter's report files: ``manifest.json`` and open_clip_train's ``sizes.json``."""
import json
import os
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Dict, List

from ..contracts import FINE_GRAINED, GLOBAL
from ..files import atomic_write_json
from ..text_stats import caption_token_stats
from ..version import __version__
from .annotations import Skipped

if TYPE_CHECKING:  # only for annotations; conversion imports this module
    from .conversion import ConvertOptions, PlannedSample

MANIFEST_VERSION = 1


def write_json_atomic(path: str, content: Any) -> None:
    """The manifest's JSON (sorted keys), written atomically (``files.atomic_write_json``)."""
    atomic_write_json(path, content, sort_keys=True)


def write_sizes(output_dir: str, sizes: Dict[str, int], prefix: str) -> Dict[str, int]:
    """Write ``sizes.json`` ({shard basename: sample count}) as ``get_dataset_size`` reads it.

    Entries of other prefixes already in the file are kept; those of ``prefix`` are replaced.
    """
    path = os.path.join(output_dir, "sizes.json")
    merged: Dict[str, int] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            merged = {k: v for k, v in json.load(handle).items() if not k.startswith(f"{prefix}-")}
    merged.update(sizes)
    write_json_atomic(path, merged)
    return merged


def _norm_flags(norm) -> str:
    """The trainer / benchmark flags that decode like the recorded normalisation."""
    flags = f"--thermal-norm {norm.mode}"
    if norm.mode == "fixed" and norm.value_range is not None:
        flags += f" --thermal-range={':'.join(f'{v:g}' for v in norm.value_range)}"
    if norm.mode == "percentile" and (norm.low, norm.high) != (1.0, 99.0):
        flags += f" --thermal-percentiles {norm.low:g}:{norm.high:g}"
    return flags + (" --stretch-8bit" if norm.stretch_8bit else "")


def reason_kind(reason: str) -> str:
    """The kind of a skip reason: its text before any path or detail (``rgb: `` kept as a prefix)."""
    if reason.startswith("rgb: "):
        return "rgb: " + reason_kind(reason[len("rgb: "):])
    for marker in (" /", " file:", " http", " s3:", " gs:", " (", ":", " ["):
        reason = reason.split(marker, 1)[0]
    return reason.strip()


def skipped_by_reason(skipped: List[Skipped]) -> Dict[str, int]:
    """Count skipped samples by kind of reason (the reason text before any path or detail)."""
    return dict(sorted(Counter(reason_kind(s.reason) for s in skipped).items()))


def counted_skips(skipped: List[Skipped]) -> List[Skipped]:
    """The skips ``--max-skip-fraction`` counts: all but false-colour refusals (a policy with its own warning)."""
    from .conversion import FALSE_COLOUR_REASON
    return [s for s in skipped if not s.reason.startswith(FALSE_COLOUR_REASON)]


def _caption_stats(samples: List["PlannedSample"]) -> Dict[str, Any]:
    stats = {GLOBAL: caption_token_stats([s.annotation.global_caption for s in samples])}
    fine_grained = [s.annotation.fg_caption for s in samples if s.annotation.fg_caption is not None]
    if fine_grained:
        stats[FINE_GRAINED] = caption_token_stats(fine_grained)
    return stats


FRAME_KINDS = ("grey_8bit", "high_bit_depth", "rgb_grey", "false_colour")
FALSE_COLOUR_EXAMPLES = 20  # refused false-colour files named in the manifest


def frame_counts(samples: List["PlannedSample"]) -> Dict[str, int]:
    """Written thermal frames by kind: 8-bit grey, >8-bit, grey replicated over RGB, false-colour."""
    from .conversion import frame_kind
    counts = Counter(frame_kind(s.thermal) for s in samples)
    return {kind: counts.get(kind, 0) for kind in FRAME_KINDS}


def _thermal_frames(options: "ConvertOptions", plan: Dict[str, List["PlannedSample"]], splits: Dict[str, Any],
                    skipped: List[Skipped], warnings: List[str]) -> Dict[str, Any]:
    from .conversion import FALSE_COLOUR_REASON
    from .decode import CHROMA_THRESHOLD, FALSE_COLOUR_FRACTION
    totals = Counter()
    for split in splits.values():
        totals.update(split["thermal_frames"])
    refused = [s for s in skipped if s.reason.startswith(FALSE_COLOUR_REASON)]
    files = [s.reason[len(FALSE_COLOUR_REASON):].split(" (", 1)[0].strip() for s in refused]
    if refused:
        warnings.append(f"{len(refused)} false-colour (palette) thermal frame(s) were NOT written, e.g. "
                        f"{', '.join(files[:3])}: their luma is not intensity; convert with --palette iron, rainbow, "
                        f"white-hot or black-hot (the palette they were rendered with), or remove them")
    if totals["false_colour"]:
        warnings.append(f"{totals['false_colour']} false-colour thermal frame(s) were mapped to intensity with "
                        f"--palette {options.palette} and stored as 8-bit grey PNG")
    return {
        **{kind: totals.get(kind, 0) for kind in FRAME_KINDS},
        "false_colour_refused": len(refused),
        "false_colour_refused_files": files[:FALSE_COLOUR_EXAMPLES],
        "palette": options.palette,
        "false_colour_rule": f"more than {FALSE_COLOUR_FRACTION:.0%} of pixels with max(R,G,B) - min(R,G,B) > "
                             f"{CHROMA_THRESHOLD} (of 255)",
    }


def build_manifest(options: "ConvertOptions", plan: Dict[str, List["PlannedSample"]],
                   entries: Dict[str, List[Dict[str, Any]]], skipped: List[Skipped], fingerprint: str,
                   resumed_shards: int, write_seconds: float, written_this_run: int) -> Dict[str, Any]:
    """Assemble the manifest of a finished conversion.

    Args:
        options: the conversion settings.
        plan: the ordered good samples of each split (before read failures).
        entries: journal entries of every shard, by split.
        skipped: every skipped sample with its reason.
        fingerprint: hash of the inputs and settings (also in the journal).
        resumed_shards: shards kept from an interrupted earlier run.
        write_seconds: time spent in the writing pass of this run.
        written_this_run: plan positions handled by this run (for the throughput figure).
    """
    splits: Dict[str, Any] = {}
    warnings: List[str] = []
    for split in sorted(entries):
        written = {key for entry in entries[split] for key in entry["keys"]}
        samples = [item for item in plan[split] if item.key in written]
        shards = [{"name": e["name"], "samples": e["samples"], "bytes": e["bytes"]} for e in entries[split]]
        splits[split] = {
            "samples": sum(e["samples"] for e in entries[split]),
            "bytes": sum(e["bytes"] for e in entries[split]),
            "num_shards": len(shards),
            "shards": shards,
            "datasets": dict(sorted(Counter(str(s.annotation.dataset) for s in samples).items())),
            "thermal_frames": frame_counts(samples),
            "caption_tokens": _caption_stats(samples),
        }
        if len(shards) < options.min_shards:
            warnings.append(f"split {split!r} has {len(shards)} shard(s), fewer than --min-shards "
                            f"{options.min_shards}: open_clip_train needs workers x ranks shards unless it "
                            f"samples with replacement (--dataset-resampled)")
        over = splits[split]["caption_tokens"].get(FINE_GRAINED, {}).get("over_context", 0)
        if over:
            warnings.append(f"split {split!r}: {over} fine-grained caption(s) exceed the 77-token context "
                            f"and will be truncated by the tokenizer")
    thermal_frames = _thermal_frames(options, plan, splits, skipped, warnings)
    from .conversion import OUTSIDE_ROOT_REASON
    outside = [s for s in skipped if s.reason.split("rgb: ", 1)[-1].startswith(OUTSIDE_ROOT_REASON)]
    if outside:
        warnings.append(f"{len(outside)} row(s) were refused because an image path leads outside --image-root "
                        f"(absolute path, '..', a symlink or another URL), e.g. row {outside[0].row}; fix the "
                        f"annotations or pass --allow-outside-root if those files are meant to be read")
    total_samples = sum(split["samples"] for split in splits.values())
    failures = len(counted_skips(skipped))
    total_rows = total_samples + len(skipped)
    settings = asdict(options)
    settings["fields"] = asdict(options.fields)
    for private in ("command", "progress", "throttle"):
        settings.pop(private)
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": f"open_clip_thermal.convert {__version__}",
        "command": options.command,
        "seed": options.seed,
        "source": {"annotations": options.annotations, "image_root": options.image_root},
        "options": settings,
        "fingerprint": fingerprint,
        "resumed_shards": resumed_shards,
        "write_seconds": round(write_seconds, 3),
        "samples_per_second": round(written_this_run / write_seconds, 1) if write_seconds > 0 else None,
        "total_samples": total_samples,
        "total_bytes": sum(split["bytes"] for split in splits.values()),
        "splits": splits,
        "thermal_frames": thermal_frames,
        # frames are stored raw; this is the decode recorded for training and the benchmark
        "normalisation": dict(options.norm.to_dict(), applied="at decode time (train / benchmark); shards "
                              "hold the original frames", flags=_norm_flags(options.norm)),
        "skipped_count": len(skipped),
        # every annotation row is either written or skipped; false-colour refusals are not failures
        "total_rows": total_rows,
        "skipped_failures": failures,
        "skipped_fraction": round(failures / total_rows, 4) if total_rows else 0.0,
        "max_skip_fraction": options.max_skip_fraction,
        "skipped_by_reason": skipped_by_reason(skipped),
        "skipped": [s.to_dict() for s in skipped],
        "warnings": warnings,
    }

"""The converter's report files: ``manifest.json`` and open_clip_train's ``sizes.json``."""
import json
import os
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Dict, List

from ..text_stats import caption_token_stats
from ..version import __version__
from .annotations import Skipped

if TYPE_CHECKING:  # only for annotations; conversion imports this module
    from .conversion import ConvertOptions, PlannedSample

MANIFEST_VERSION = 1


def write_json_atomic(path: str, content: Any) -> None:
    """Write JSON to a temporary name and rename it, so readers never see half a file."""
    temporary = path + ".partial"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


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


def skipped_by_reason(skipped: List[Skipped]) -> Dict[str, int]:
    """Count skipped samples by kind of reason (the reason text before any path or detail)."""
    def kind(reason: str) -> str:
        for marker in (" /", " file:", " http", " s3:", " gs:", " (", ":", " ["):
            reason = reason.split(marker, 1)[0]
        return reason.strip()
    return dict(sorted(Counter(kind(s.reason) for s in skipped).items()))


def _caption_stats(samples: List["PlannedSample"]) -> Dict[str, Any]:
    stats = {"global": caption_token_stats([s.annotation.global_caption for s in samples])}
    fine_grained = [s.annotation.fg_caption for s in samples if s.annotation.fg_caption is not None]
    if fine_grained:
        stats["fine_grained"] = caption_token_stats(fine_grained)
    return stats


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
            "caption_tokens": _caption_stats(samples),
        }
        if len(shards) < options.min_shards:
            warnings.append(f"split {split!r} has {len(shards)} shard(s), fewer than --min-shards "
                            f"{options.min_shards}: open_clip_train needs workers x ranks shards unless it "
                            f"samples with replacement (--dataset-resampled)")
        over = splits[split]["caption_tokens"].get("fine_grained", {}).get("over_context", 0)
        if over:
            warnings.append(f"split {split!r}: {over} fine-grained caption(s) exceed the 77-token context "
                            f"and will be truncated by the tokenizer")
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
        "total_samples": sum(split["samples"] for split in splits.values()),
        "total_bytes": sum(split["bytes"] for split in splits.values()),
        "splits": splits,
        "skipped_count": len(skipped),
        "skipped_by_reason": skipped_by_reason(skipped),
        "skipped": [s.to_dict() for s in skipped],
        "warnings": warnings,
    }

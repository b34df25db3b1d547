"""Write one split's samples to tar shards with webdataset's ShardWriter, crash-safely.

Each shard is written under a temporary ``.partial`` name and renamed to
``{prefix}-{split}-{000000}.tar`` only once it is complete; then a line describing it is appended
to a journal. A killed conversion therefore leaves complete, journaled shards, at most one
complete-but-unjournaled shard, and a ``.partial`` file; the resume logic in ``conversion.py``
keeps the first and deletes the rest.
"""
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional

from .annotations import Skipped

TAR_MTIME = 946684800.0  # 2000-01-01: a fixed member mtime makes the same input give identical tars
PARTIAL_SUFFIX = ".partial"
MAX_KEY_LENGTH = 80  # member names (key + ".rgb.jpeg") must stay within the 100-character ustar limit

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def shard_name(prefix: str, split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``."""
    return f"{prefix}-{split}-{index:06d}.tar"


# Any shard this converter writes: STEM-NNNNNN.tar, STEM being prefix-split (readers group by it).
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<number>\d{6})\.tar$")


def shard_pattern(prefix: str, split: str) -> "re.Pattern[str]":
    """Regex matching the final shard names of ``split`` (group 1: the index)."""
    return re.compile(re.escape(f"{prefix}-{split}-") + r"(\d{6})\.tar")


def sanitise_key(sample_id: str) -> str:
    """Replace characters webdataset cannot keep in a key (dots split the extension) by ``_``."""
    return _UNSAFE_KEY_CHARS.sub("_", sample_id)


def _hashed(sample_id: str, base: str) -> str:
    digest = hashlib.sha1(sample_id.encode("utf-8", errors="surrogateescape")).hexdigest()[:12]
    return f"{base[:MAX_KEY_LENGTH - 13]}-{digest}"


def make_keys(sample_ids: List[str]) -> Dict[str, str]:
    """Map unique sample ids to unique, dot-free shard keys.

    Ids whose sanitised form is empty, too long, or shared with another id get a short hash of the
    original id appended; the result does not depend on the order of ``sample_ids``.
    """
    bases = {sample_id: sanitise_key(sample_id) for sample_id in sample_ids}
    owners: Dict[str, int] = {}
    for base in bases.values():
        owners[base] = owners.get(base, 0) + 1
    keys = {}
    for sample_id, base in bases.items():
        clash = owners[base] > 1 or not base or len(base) > MAX_KEY_LENGTH
        keys[sample_id] = _hashed(sample_id, base) if clash else base
    if len(set(keys.values())) != len(keys):
        raise RuntimeError("shard key collision after hashing; please report the offending ids")
    return keys


class ConversionJournal:
    """Append-only JSONL log of finished shards, tagged with the conversion's fingerprint."""

    def __init__(self, path: str):
        self.path = path

    def header(self) -> Optional[Dict[str, Any]]:
        """The journal's first line (``fingerprint``, and ``settings`` since they are recorded), or None
        when there is no readable journal."""
        if not os.path.exists(self.path):
            return None
        with open(self.path, encoding="utf-8") as handle:
            first = handle.readline()
        try:
            header = json.loads(first)
        except json.JSONDecodeError:
            return None
        return header if isinstance(header, dict) else None

    def load(self, fingerprint: str) -> Optional[List[Dict[str, Any]]]:
        """Finished shard entries if the journal belongs to ``fingerprint``, None otherwise."""
        header = self.header()
        if header is None or header.get("fingerprint") != fingerprint:
            return None
        entries: List[Dict[str, Any]] = []
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for line in lines[1:]:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the last line of a killed run may be cut short
        return entries

    def start(self, fingerprint: str, entries: List[Dict[str, Any]],
              settings: Optional[Dict[str, Any]] = None) -> None:
        """Rewrite the journal with a header and the ``entries`` that are kept.

        ``settings`` (the fingerprinted options) go into the header, so that a later run with other
        settings can be told which ones differ.
        """
        temporary = self.path + PARTIAL_SUFFIX
        header = {"fingerprint": fingerprint, **({"settings": settings} if settings is not None else {})}
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(header, sort_keys=True) + "\n")
            for entry in entries:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
        os.replace(temporary, self.path)

    def append(self, entry: Dict[str, Any]) -> None:
        """Record one finished shard."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class SplitShardWriter:
    """Write the samples of one split; shards become visible only when complete.

    Args:
        output_dir: local folder of the shards.
        prefix: shard name prefix.
        split: split name.
        journal: where finished shards are recorded.
        maxcount: most samples per shard.
        maxsize: most payload bytes per shard (webdataset counts member bytes).
        start_shard: index of the first shard to write (non-zero when resuming).
    """

    def __init__(self, output_dir: str, prefix: str, split: str, journal: ConversionJournal,
                 maxcount: int, maxsize: float, start_shard: int = 0):
        self.output_dir, self.prefix, self.split, self.journal = output_dir, prefix, split, journal
        self.entries: List[Dict[str, Any]] = []
        self._keys: List[str] = []
        self._skipped: List[Dict[str, Any]] = []
        self._position = 0
        self._index = start_shard
        escaped = os.path.join(output_dir, f"{prefix}-{split}-").replace("%", "%%")
        import webdataset as wds  # here, not at import: it loads torch, which --help need not pay for
        self._writer = wds.ShardWriter(escaped + "%06d.tar" + PARTIAL_SUFFIX, maxcount=maxcount, maxsize=maxsize,
                                       post=self._finish_shard, start_shard=start_shard, verbose=0,
                                       encoder=False, mtime=TAR_MTIME)

    def _finish_shard(self, partial_path: str) -> None:
        final_path = partial_path[: -len(PARTIAL_SUFFIX)]
        if not self._keys:
            os.remove(partial_path)  # only the last shard can end up empty (all its reads failed)
            return
        os.replace(partial_path, final_path)
        entry = {"split": self.split, "index": self._index, "name": os.path.basename(final_path),
                 "samples": len(self._keys), "bytes": os.path.getsize(final_path), "end": self._position,
                 "keys": self._keys, "skipped": self._skipped}
        self.journal.append(entry)
        self.entries.append(entry)
        self._index += 1
        self._keys, self._skipped = [], []

    def write(self, sample: Dict[str, Any], position: int) -> None:
        """Write ``sample`` (a dict of bytes with ``__key__``), the ``position``-th of the split's plan."""
        self._position = position  # a shard closed inside write() ends before this sample
        self._writer.write(sample)
        self._keys.append(sample["__key__"])

    def skip(self, skipped: Skipped) -> None:
        """Record a sample that could not be written; it is journaled with the current shard."""
        self._skipped.append(skipped.to_dict())

    def close(self, end_position: int) -> List[Dict[str, Any]]:
        """Finish the last shard; returns the entries of the shards written by this writer."""
        self._position = end_position
        self._writer.close()
        return self.entries

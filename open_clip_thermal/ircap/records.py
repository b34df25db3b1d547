"""Reading pair listings and writing caption records as crash-safe JSONL.

Input (``--pairs``): JSONL, a JSON list (or ``{"records": [...]}``), CSV or TSV, one record per
thermal image with at least ``id``, ``image`` (thermal path) and ``rgb`` (RGB path), optionally
``split``, ``dataset`` and ``meta`` (in CSV/TSV, ``meta`` may hold a JSON object).

Output: one JSON object per line, appended with a single write + flush + fsync under a lock, so a
killed process leaves at most one partial last line; :func:`load_jsonl_ids` cuts such a line off
before a resumed run appends to the file.
"""
import csv
import io
import json
import os
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Set, Union

REQUIRED_FIELDS = ("id", "image", "rgb")
PASSTHROUGH_FIELDS = ("id", "image", "rgb", "split", "dataset", "meta")  # copied to the output


def _parse_meta(value):
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_delimited(text: str, delimiter: str) -> List[dict]:
    rows = []
    for row in csv.DictReader(io.StringIO(text), delimiter=delimiter):
        # Empty cells mean "not given" so optional fields stay optional.
        record = {k.strip(): v for k, v in row.items() if k and v not in (None, "")}
        if "meta" in record:
            record["meta"] = _parse_meta(record["meta"])
        rows.append(record)
    return rows


def _read_jsonl(text: str, path: Path) -> List[dict]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no} is not valid JSON: {exc}") from None
    return rows


def read_pairs(path: Union[str, Path]) -> List[dict]:
    """Read and validate a pair listing.

    Args:
        path: ``.jsonl``/``.ndjson``, ``.json``, ``.csv`` or ``.tsv`` file.

    Returns:
        The records, in file order, each a dict with at least ``id``, ``image``, ``rgb`` (ids as
        strings).

    Raises:
        ValueError: unknown extension, a record that is not an object, a missing required field,
            or a duplicated id; the message names the file and the record.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(text, path)
    elif suffix == ".json":
        data = json.loads(text)
        rows = data.get("records") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records or {{\"records\": [...]}}")
    elif suffix in (".csv", ".tsv"):
        rows = _read_delimited(text, "," if suffix == ".csv" else "\t")
    else:
        raise ValueError(f"{path}: unknown pairs format {suffix!r}; use .jsonl, .json, .csv or .tsv")
    seen: Set[str] = set()
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record #{index} is not an object: {row!r:.80}")
        missing = [f for f in REQUIRED_FIELDS if not row.get(f)]
        if missing:
            raise ValueError(f"{path}: record #{index} (id={row.get('id')!r}) lacks {missing}")
        row["id"] = str(row["id"])
        if row["id"] in seen:
            raise ValueError(f"{path}: id {row['id']!r} appears more than once")
        seen.add(row["id"])
    return rows


def repair_partial_line(path: Union[str, Path]) -> bool:
    """Cut an unterminated last line off a JSONL file (left by a killed writer).

    Returns:
        True if the file was shortened.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # Walk back to the last newline; everything after it is the partial record.
        block = 1 << 16
        pos = size
        keep = 0
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = pos + idx + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


def iter_jsonl(path: Union[str, Path]) -> Iterable[dict]:
    """Objects of a JSONL file, skipping blank lines and lines that are not JSON objects."""
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from an older crash; the id will simply be redone
            if isinstance(obj, dict):
                yield obj


def load_jsonl_ids(path: Union[str, Path], repair: bool = True) -> Dict[str, dict]:
    """Records of an existing output file keyed by id (first occurrence wins).

    Args:
        path: the JSONL file; a missing file gives an empty dict.
        repair: cut off a trailing partial line first (see :func:`repair_partial_line`).
    """
    path = Path(path)
    if not path.exists():
        return {}
    if repair:
        repair_partial_line(path)
    found: Dict[str, dict] = {}
    for obj in iter_jsonl(path):
        if "id" in obj:
            found.setdefault(str(obj["id"]), obj)
    return found


class JsonlAppender:
    """Thread-safe, crash-safe appender: one JSON object per line, durable once ``append`` returns.

    Args:
        path: output file (created with its parent folder if missing).
        truncate: start from an empty file instead of appending.
    """

    def __init__(self, path: Union[str, Path], truncate: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not truncate:
            repair_partial_line(self.path)
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        self._fd = os.open(self.path, flags, 0o644)
        self.count = 0

    def append(self, record: dict) -> None:
        """Write ``record`` as one line, then fsync."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:  # os.write may write less than asked for large lines
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            self.count += 1

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Read caption annotations (JSON list, JSONL, CSV, TSV) into validated records.

Every row either becomes an :class:`Annotation` or a :class:`Skipped` entry with a reason; nothing
is dropped silently. Files are read through fsspec, so local paths and remote URLs both work.
Text is decoded as UTF-8 with ``surrogateescape`` so that one bad byte only costs its own row.
"""
import csv
import io
import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import fsspec

FORMATS = ("json", "jsonl", "csv", "tsv")
_EXTENSION_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_RESERVED_META_KEYS = ("id", "dataset", "split", "image", "rgb")


class AnnotationFormatError(ValueError):
    """The annotation file as a whole cannot be read (unknown format, broken JSON list...)."""


class UnsafePathError(ValueError):
    """An annotation path that must not be read: it leads outside its root (``outside``), or holds a NUL byte."""

    def __init__(self, message: str, outside: bool = True):
        super().__init__(message)
        self.outside = outside


def _split_url(url: str) -> Tuple[str, str]:
    """``'s3://bucket/a/b'`` -> ``('s3://bucket', '/a/b')`` (scheme and authority, normalised path)."""
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    return f"{scheme.lower()}://{authority}", posixpath.normpath("/" + path)


def _is_under(path: str, root: str, separator_join=os.path.join) -> bool:
    return path == root or path.startswith(separator_join(root, ""))


def resolve_annotation_path(path: str, root: Optional[str], allow_outside: bool = False) -> str:
    """The one rule for every reader of an image path named by an annotation row (converter, IR-Cap).

    A relative ``path`` is joined to ``root``; the result must stay under ``root``:

    * a local root: the joined path is resolved (``..`` and symlinks, ``os.path.realpath``) and must
      lie inside the resolved root; an absolute path is accepted only if it lies inside too;
      ``file://`` URLs count as local paths, any other URL is outside a local root;
    * a URL root (``s3://bucket/data``...): same scheme and bucket, and the normalised path (``..``
      removed, lexically: remote stores have no symlinks) under the root's path;
    * ``root=None``: the current directory is the root.

    ``allow_outside=True`` (the converter's ``--allow-outside-root``) keeps the old behaviour:
    relative paths are joined to ``root``, absolute paths and URLs are used as given. A path with
    a NUL byte is refused either way (no file system can open it).

    Returns:
        the path to read: ``root`` joined with ``path`` (not resolved, so messages show what the
        annotation named), ``path`` itself when it is absolute or a URL.

    Raises:
        UnsafePathError: naming the path, where it leads and the root.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"not a path: {path!r}", outside=False)
    if "\x00" in path or (root and "\x00" in root):
        raise UnsafePathError(f"path {path!r} contains a NUL byte", outside=False)
    path_is_url = "://" in path
    if allow_outside:
        if path_is_url or os.path.isabs(path) or not root:
            return path
        return posixpath.join(root.rstrip("/"), path) if "://" in root else os.path.join(root, path)
    if root and "://" in root and not root.startswith("file://"):
        base, root_path = _split_url(root)
        if path_is_url:
            joined = path
        elif path.startswith("/"):
            raise UnsafePathError(f"{path} is an absolute local path, not under {root}")
        else:
            joined = f"{base}{posixpath.join(root_path, path)}"
        joined_base, joined_path = _split_url(joined)
        if joined_base != base or not _is_under(joined_path, root_path, posixpath.join):
            raise UnsafePathError(f"{path} leads to {joined_base}{joined_path}, not under {root}")
        return f"{base}{joined_path}"
    local_root = (root[len("file://"):] if root and root.startswith("file://") else root) or os.curdir
    if path_is_url:
        if not path.startswith("file://"):
            raise UnsafePathError(f"{path} is a URL, not under the local root {local_root}")
        candidate = path[len("file://"):]
    else:
        candidate = path if os.path.isabs(path) or not root else os.path.join(local_root, path)
    real_root, real = os.path.realpath(local_root), os.path.realpath(candidate)
    if not _is_under(real, real_root):
        raise UnsafePathError(f"{path} resolves to {real}, not under {real_root}")
    return candidate


class BadRowError(ValueError):
    """One row is unusable; carries the row number, id (if known) and the reason."""

    def __init__(self, row: int, reason: str, sample_id: Optional[str] = None, line: Optional[int] = None):
        self.row, self.reason, self.sample_id, self.line = row, reason, sample_id, line
        where = f"row {row}" + (f" (line {line})" if line is not None else "")
        who = f" id {sample_id!r}" if sample_id is not None else ""
        super().__init__(f"{where}{who}: {reason}")


@dataclass(frozen=True)
class FieldNames:
    """Column / key names of the annotation file. An empty name disables an optional field."""

    id: str = "id"  # empty: derive the id from the image path
    image: str = "image"
    global_caption: str = "global_caption"
    fg_caption: str = "fg_caption"  # empty: the data has no fine-grained captions
    rgb: str = "rgb"
    split: str = "split"
    dataset: str = "dataset"
    meta: str = "meta"  # a JSON object (or JSON text in CSV/TSV) of free metadata
    meta_fields: Tuple[str, ...] = ()  # extra top-level columns copied into the metadata


@dataclass
class Annotation:
    """One validated annotation row."""

    row: int  # 1-based record number in the file (header excluded)
    id: str
    image: str
    global_caption: str
    fg_caption: Optional[str]
    rgb: Optional[str]
    split: str
    dataset: Optional[str]
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """A sample left out of the output, with the reason."""

    row: Optional[int]
    id: Optional[str]
    reason: str
    stage: str = "annotation"  # annotation | image | write

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict for the manifest."""
        return asdict(self)


@dataclass
class RawRow:
    """A row as parsed from the file, before validation."""

    number: int
    line: Optional[int]
    values: Optional[Dict[str, Any]]
    error: Optional[str] = None


def detect_format(path: str, fmt: Optional[str] = None) -> str:
    """Return the annotation format: ``fmt`` if given, else guessed from the file extension."""
    if fmt:
        if fmt not in FORMATS:
            raise AnnotationFormatError(f"unknown annotation format {fmt!r}; choose one of {FORMATS}")
        return fmt
    lowered = path.lower()
    for extension, guessed in _EXTENSION_FORMATS.items():
        if lowered.endswith(extension):
            return guessed
    raise AnnotationFormatError(f"cannot tell the format of {path!r} from its extension; pass --format")


def _read_text(path: str) -> str:
    with fsspec.open(path, "rb") as handle:
        raw = handle.read()
    return raw.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")


def _iter_json_list(text: str, path: str) -> Iterator[RawRow]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationFormatError(f"{path}: not a valid JSON document: {exc}") from exc
    if not isinstance(records, list):
        raise AnnotationFormatError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
    for number, values in enumerate(records, start=1):
        yield RawRow(number, None, values if isinstance(values, dict) else None,
                     None if isinstance(values, dict) else "row is not a JSON object")


def _iter_jsonl(text: str) -> Iterator[RawRow]:
    number = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number += 1
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(number, line_number, None, f"invalid JSON: {exc.msg}")
            continue
        if not isinstance(values, dict):
            yield RawRow(number, line_number, None, "row is not a JSON object")
            continue
        yield RawRow(number, line_number, values)


def _iter_delimited(text: str, delimiter: str) -> Iterator[RawRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for number, values in enumerate(reader, start=1):
        if None in values:  # DictReader puts surplus cells under the key None
            yield RawRow(number, reader.line_num, None, "more cells than header columns")
            continue
        yield RawRow(number, reader.line_num, values)


def iter_raw_rows(path: str, fmt: Optional[str] = None) -> Iterator[RawRow]:
    """Yield the rows of an annotation file without validating them.

    Args:
        path: local path or fsspec URL.
        fmt: one of ``json``, ``jsonl``, ``csv``, ``tsv``; guessed from the extension if None.
    """
    fmt = detect_format(path, fmt)
    text = _read_text(path)
    if fmt == "json":
        yield from _iter_json_list(text, path)
    elif fmt == "jsonl":
        yield from _iter_jsonl(text)
    else:
        yield from _iter_delimited(text, "," if fmt == "csv" else "\t")


def _has_bad_utf8(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= char <= "\udcff" for char in value)
    if isinstance(value, dict):
        return any(_has_bad_utf8(k) or _has_bad_utf8(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_utf8(v) for v in value)
    return False


def _optional_text(values: Dict[str, Any], name: str) -> Optional[str]:
    if not name:
        return None
    value = values.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def _caption(values: Dict[str, Any], name: str, label: str) -> str:
    if name not in values or values[name] is None:
        raise ValueError(f"missing required field {name!r} ({label})")
    value = values[name]
    if not isinstance(value, str):
        raise ValueError(f"{label} {name!r} is not text ({type(value).__name__})")
    if not value.strip():
        raise ValueError(f"empty or whitespace {label} {name!r}")
    return value.strip()


def _metadata(values: Dict[str, Any], fields: FieldNames) -> Dict[str, Any]:
    meta: Dict[str, Any] = {}
    raw = values.get(fields.meta) if fields.meta else None
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field {fields.meta!r} is not a JSON object: {exc.msg}") from exc
    if isinstance(raw, dict):
        meta.update(raw)
    elif raw not in (None, ""):
        raise ValueError(f"field {fields.meta!r} must be an object, got {type(raw).__name__}")
    for name in fields.meta_fields:
        if name in values and values[name] not in (None, ""):
            meta[name] = values[name]
    # Reserved keys describe the sample itself in the shard's json; keep colliding metadata apart.
    return {(f"meta_{k}" if k in _RESERVED_META_KEYS else k): v for k, v in meta.items()}


def _id_from_path(image: str) -> str:
    stem = image.rsplit("://", 1)[-1]
    return stem.rsplit(".", 1)[0] if "." in stem.rsplit("/", 1)[-1] else stem


def parse_row(raw: RawRow, fields: FieldNames, default_split: str = "train",
              default_dataset: Optional[str] = None) -> Annotation:
    """Validate one raw row.

    Raises:
        BadRowError: naming the row, its id when known, and the problem.
    """
    if raw.values is None:
        raise BadRowError(raw.number, raw.error or "unreadable row", line=raw.line)
    values = raw.values
    sample_id = None
    try:
        if fields.id:
            if values.get(fields.id) in (None, "") or not str(values.get(fields.id)).strip():
                raise ValueError(f"missing required field {fields.id!r} (id)")
            sample_id = str(values[fields.id]).strip()
        if _has_bad_utf8(values):
            raise ValueError("non-UTF-8 text")
        image = _optional_text(values, fields.image)
        if image is None:
            raise ValueError(f"missing required field {fields.image!r} (thermal image path)")
        if sample_id is None:
            sample_id = _id_from_path(image)
        return Annotation(
            row=raw.number,
            id=sample_id,
            image=image,
            global_caption=_caption(values, fields.global_caption, "global caption"),
            fg_caption=_caption(values, fields.fg_caption, "fine-grained caption") if fields.fg_caption else None,
            rgb=_optional_text(values, fields.rgb),
            split=_optional_text(values, fields.split) or default_split,
            dataset=_optional_text(values, fields.dataset) or default_dataset,
            meta=_metadata(values, fields),
        )
    except ValueError as exc:
        shown_id = sample_id if sample_id is None or not _has_bad_utf8(sample_id) else ascii(sample_id)
        raise BadRowError(raw.number, str(exc), shown_id, raw.line) from exc


def read_annotations(path: str, fields: FieldNames = FieldNames(), fmt: Optional[str] = None,
                     default_split: str = "train", default_dataset: Optional[str] = None,
                     strict: bool = False) -> Tuple[List[Annotation], List[Skipped]]:
    """Read and validate an annotation file.

    Args:
        path: local path or fsspec URL of the JSON / JSONL / CSV / TSV file.
        fields: column names (see :class:`FieldNames`).
        fmt: file format; guessed from the extension when None.
        default_split: split of rows without one.
        default_dataset: dataset name of rows without one.
        strict: raise :class:`BadRowError` at the first bad row instead of skipping it.

    Returns:
        ``(annotations, skipped)`` in file order. Of rows sharing an id, the first is kept.
    """
    annotations: List[Annotation] = []
    skipped: List[Skipped] = []
    first_row_of_id: Dict[str, int] = {}
    for raw in iter_raw_rows(path, fmt):
        try:
            annotation = parse_row(raw, fields, default_split, default_dataset)
            if annotation.id in first_row_of_id:
                raise BadRowError(raw.number, f"duplicate id (first seen at row {first_row_of_id[annotation.id]})",
                                  annotation.id, raw.line)
        except BadRowError as exc:
            if strict:
                raise
            skipped.append(Skipped(exc.row, exc.sample_id, exc.reason + (f" [line {exc.line}]" if exc.line else "")))
            continue
        except Exception as exc:  # one row's unexpected failure costs that row, not the file
            error = BadRowError(raw.number, f"unreadable row: {type(exc).__name__}: {exc}", line=raw.line)
            if strict:
                raise error from exc
            skipped.append(Skipped(error.row, None, error.reason + (f" [line {raw.line}]" if raw.line else "")))
            continue
        first_row_of_id[annotation.id] = annotation.row
        annotations.append(annotation)
    return annotations, skipped

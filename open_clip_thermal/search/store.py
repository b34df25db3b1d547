"""The on-disk layout of a search index: an append-only list of committed chunks.

::

    INDEX/index.json          format, the model identity, embedding dim, the shards read to their end
    INDEX/chunks/000000.npy   float16 (n, dim) embeddings, unit norm
    INDEX/chunks/000000.jsonl one record per row (path, size, mtime_ns, source...), in row order
    INDEX/faiss.index, faiss.json   the vector-search index over the rows (optional, rebuilt when stale)

A chunk is committed when its ``.jsonl`` exists: the ``.npy`` is written first, both through
:func:`open_clip_thermal.files.atomic_write`, so a run killed at any point leaves whole chunks and at
most one ``.npy`` without records, which the next run deletes. Resuming or re-indexing only appends:
a changed file gets a new row in a later chunk (the later row wins), and a record
``{"path": ..., "removed": true}`` (no row) drops an entry. :meth:`IndexStore.compact` rewrites the
chunks with the live rows only. Rows are numbered in chunk order; those numbers are the faiss ids.

Standard library and numpy only (no torch).
"""
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..files import atomic_replace_dir, atomic_write, atomic_write_json, atomic_write_text
from .errors import SearchError

FORMAT = "open_clip_thermal-search-index"
FORMAT_VERSION = 1
HEADER_NAME = "index.json"
CHUNKS_DIR = "chunks"
LOG_FILE = "search.log"  # the commands' log, which may exist before the index does
REMOVED = "removed"  # record flag: drops the entry, takes no row
STORED_DTYPE = np.float16


class StoreError(SearchError):
    """A search-index folder that is missing, corrupt or of another format (the message names it)."""


def _save_npy(path: Path, array: np.ndarray) -> None:
    # np.save appends ".npy" to a path without it, so write through a handle onto the temporary name
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    atomic_write(path, write)


def _records_text(records: Sequence[Dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def chunk_rows(records: Sequence[Dict]) -> int:
    """How many embedding rows a chunk's records describe (removal records take none)."""
    return sum(not r.get(REMOVED) for r in records)


class IndexStore:
    """One index folder. Use :meth:`create` for a new one and :meth:`open` for an existing one."""

    def __init__(self, folder: Path, header: Dict):
        self.folder = Path(folder)
        self.header = header

    # ------------------------------------------------------------------ opening
    @staticmethod
    def exists(folder) -> bool:
        """Whether ``folder`` holds an index (its ``index.json``)."""
        return (Path(folder) / HEADER_NAME).is_file()

    @staticmethod
    def check_creatable(folder) -> None:
        """Raise :class:`StoreError` unless ``folder`` is missing or empty (its log aside).

        An index is never written over other files.
        """
        folder = Path(folder)
        if folder.exists() and (not folder.is_dir() or any(p.name != LOG_FILE for p in folder.iterdir())):
            raise StoreError(f"--index {folder}: exists and is neither a search index nor an empty folder")

    @classmethod
    def create(cls, folder, model: Optional[Dict], dim: int) -> "IndexStore":
        """A new, empty index folder recording the ``model`` identity and the embedding ``dim``.

        Raises:
            StoreError: see :meth:`check_creatable`.
        """
        folder = Path(folder)
        cls.check_creatable(folder)
        store = cls(folder, {"format": FORMAT, "version": FORMAT_VERSION, "model": model, "dim": int(dim),
                             "dtype": np.dtype(STORED_DTYPE).name, "shards_done": {}})
        (folder / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
        store.write_header()
        return store

    @classmethod
    def open(cls, folder) -> "IndexStore":
        """An existing index folder.

        Raises:
            StoreError: no ``index.json``, invalid JSON, or another format or version.
        """
        folder = Path(folder)
        path = folder / HEADER_NAME
        if not folder.is_dir():
            raise StoreError(f"--index {folder}: not a folder (build it with 'python -m open_clip_thermal.search index')")
        try:
            header = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"--index {folder}: no {HEADER_NAME}, not a search index") from None
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: cannot read it ({error})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise StoreError(f"{path}: not a search index (format {header.get('format') if isinstance(header, dict) else None!r})")
        if header.get("version") != FORMAT_VERSION:
            raise StoreError(f"{path}: index format version {header.get('version')}, this code reads {FORMAT_VERSION}")
        return cls(folder, header)

    def write_header(self) -> None:
        """Rewrite ``index.json`` (atomically)."""
        atomic_write_json(self.folder / HEADER_NAME, self.header)

    # ------------------------------------------------------------------ chunks
    @property
    def chunks_dir(self) -> Path:
        return self.folder / CHUNKS_DIR

    def committed(self) -> List[str]:
        """Names (``000000``...) of the committed chunks, in order."""
        if not self.chunks_dir.is_dir():
            return []
        return sorted(p.stem for p in self.chunks_dir.glob("*.jsonl") if p.stem.isdigit())

    def discard_uncommitted(self) -> int:
        """Delete embedding files a killed run left without records; returns how many."""
        names = set(self.committed())
        stale = [p for p in self.chunks_dir.glob("*.npy") if p.stem not in names]
        for path in stale:
            path.unlink()
        return len(stale)

    def read_chunks(self) -> Iterator[Tuple[np.ndarray, List[Dict]]]:
        """(float16 embeddings, records) of every committed chunk, in order.

        Raises:
            StoreError: a chunk's embeddings are missing or unreadable, or their count or width
                disagrees with its records or the index's dim.
        """
        dim = int(self.header["dim"])
        for name in self.committed():
            records_path = self.chunks_dir / f"{name}.jsonl"
            try:
                records = [json.loads(line) for line in records_path.read_text(encoding="utf-8").splitlines()
                           if line.strip()]
            except (OSError, ValueError) as error:
                raise StoreError(f"{records_path}: cannot read it ({error})") from None
            rows = chunk_rows(records)
            array_path = self.chunks_dir / f"{name}.npy"
            if rows == 0 and not array_path.exists():
                yield np.zeros((0, dim), dtype=STORED_DTYPE), records
                continue
            try:
                array = np.load(array_path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise StoreError(f"{array_path}: cannot read it ({error}); delete {records_path} to drop the chunk "
                                 "and re-index its files") from None
            if array.ndim != 2 or array.shape != (rows, dim):
                raise StoreError(f"{array_path}: shape {tuple(array.shape)}, but {records_path.name} describes "
                                 f"{rows} rows of dim {dim}")
            yield array.astype(STORED_DTYPE, copy=False), records

    def append_chunk(self, embeddings: np.ndarray, records: Sequence[Dict]) -> str:
        """Commit one chunk: the embeddings (stored as float16), then the records; returns its name."""
        embeddings = np.ascontiguousarray(embeddings, dtype=STORED_DTYPE)
        if embeddings.shape != (chunk_rows(records), int(self.header["dim"])):
            raise ValueError(f"chunk of shape {embeddings.shape} for {chunk_rows(records)} rows of dim {self.header['dim']}")
        names = self.committed()
        name = f"{int(names[-1]) + 1 if names else 0:06d}"
        if len(embeddings):
            _save_npy(self.chunks_dir / f"{name}.npy", embeddings)
        atomic_write_text(self.chunks_dir / f"{name}.jsonl", _records_text(records))
        return name

    def compact(self, embeddings: np.ndarray, records: Sequence[Dict], rows_per_chunk: int = 65536) -> None:
        """Replace every chunk with ``embeddings``/``records`` (the live rows), in one folder swap."""
        def fill(tmp: Path) -> None:
            for number, start in enumerate(range(0, len(records), rows_per_chunk)):
                part = records[start:start + rows_per_chunk]
                _save_npy(tmp / f"{number:06d}.npy", np.asarray(embeddings[start:start + len(part)], STORED_DTYPE))
                (tmp / f"{number:06d}.jsonl").write_text(_records_text(part), encoding="utf-8")
        atomic_replace_dir(self.chunks_dir, fill)

    # ------------------------------------------------------------------ shards read to their end
    def shard_done(self, url: str, fingerprint: Tuple[int, int]) -> bool:
        """Whether every sample of shard ``url`` with this fingerprint is already stored."""
        return tuple(self.header.get("shards_done", {}).get(url, ())) == tuple(fingerprint)

    def mark_shard_done(self, url: str, fingerprint: Tuple[int, int]) -> None:
        """Record that shard ``url`` was read to its end (call after its rows are committed)."""
        self.header.setdefault("shards_done", {})[url] = list(fingerprint)
        self.write_header()

    def forget_shard(self, url: str) -> None:
        """Drop the end-of-shard mark of ``url`` (its samples were removed)."""
        if self.header.get("shards_done", {}).pop(url, None) is not None:
            self.write_header()


def write_compacted(folder, model: Optional[Dict], dim: int, shards_done: Dict, embeddings: np.ndarray,
                    records: Sequence[Dict]) -> IndexStore:
    """A new index in ``folder`` (must be new or empty) holding ``embeddings``/``records`` as its only rows."""
    target = IndexStore.create(folder, model, dim)
    target.header["shards_done"] = dict(shards_done)
    target.write_header()
    target.compact(embeddings, records)
    return target


def remove_file(path: Path) -> None:
    """Delete a file or folder if present (derived files that went stale)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        os.unlink(path)

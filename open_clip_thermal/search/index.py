"""``ThermalIndex``: thermal images embedded once, searched by text or by example image.

An index holds float16 unit-norm embeddings with one record each (path, size, mtime_ns, source...),
the identity of the model that made them (:mod:`.embedder`) and, when it is bound to a folder
(:meth:`ThermalIndex.open`), commits every ``commit_every`` new embeddings to disk (:mod:`.store`), so
an interrupted :meth:`~ThermalIndex.add` resumes where it stopped and a later one embeds only new or
changed files. Search is exact below ``exact_below`` rows and faiss IVF above (:mod:`.backends`).

Example::

    from open_clip_thermal.search import ThermalIndex
    index = ThermalIndex.open("runs/flir-index", model="tclip-dual:runs/g/adapters+runs/f/adapters")
    index.add("FLIR_ADAS/images_thermal_val")          # a folder, a list of files or a SourceSet
    for hit in index.query(["a pedestrian crossing at night"], k=5)[0].hits:
        print(hit.rank, f"{hit.similarity:.3f}", hit.path)
    index.save()                                       # compacts the folder
"""
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from .backends import BACKENDS, EXACT_BELOW, FaissSearch, exact_top_k, load_faiss, report_exact_fallback
from .embedder import Embedder, check_identity, from_model, load_embedder, rebuild
from .errors import SearchError
from .loading import DONE, ERROR, SKIP, FileImages, ShardImages, collate_items
from .sources import FILE_SOURCE, SHARD_SOURCE, SourceSet, as_source_set, unchanged
from ..files import atomic_write_json
from .store import REMOVED, STORED_DTYPE, IndexStore, remove_file, write_compacted

log = logging.getLogger(__name__)

FAISS_FILE = "faiss.index"
FAISS_RECORD = "faiss.json"
REBUILD_GROWTH = 4.0  # retrain the faiss cells once the rows outgrow their training set this many times
TEXT, IMAGE = "text", "image"


@dataclass
class Hit:
    """One search result."""
    rank: int  # 1 = best
    similarity: float  # cosine (fused for dual models)
    path: str  # the file, or SHARD#KEY
    record: Dict  # everything stored about it


@dataclass
class QueryResult:
    """The hits of one query and what they cost."""
    query: str  # the text, or the example image's path
    kind: str  # "text" | "image"
    hits: List[Hit]
    embed_ms: float  # embedding the query (shared by a batch of queries: their mean)
    search_ms: float
    backend: str  # "exact" | "faiss"


@dataclass
class AddReport:
    """What :meth:`ThermalIndex.add` did."""
    embedded: int = 0
    skipped: int = 0  # unchanged, already stored
    removed: int = 0  # with prune: entries whose file is gone, or rows of a rewritten shard
    unreadable: List[Dict] = field(default_factory=list)  # {"path", "error"}
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"embedded {self.embedded}, skipped {self.skipped} unchanged, {len(self.unreadable)} unreadable"
                + (f", removed {self.removed}" if self.removed else "") + f" in {self.seconds:.1f} s")


ModelLike = Union[None, str, torch.nn.Module, Embedder]


def _shard_samples(urls: List[str]) -> Optional[int]:
    """Samples in these shards from their sizes.json (the progress bar's total), None when unknown."""
    from ..data.sources import read_dataset_size
    try:
        return read_dataset_size(urls)
    except ValueError:  # a shard missing from its sizes.json: only the bar's total is unknown
        return None


def _embedder(model: ModelLike, device: str) -> Optional[Embedder]:
    if model is None or isinstance(model, Embedder):
        return model
    if isinstance(model, str):
        return load_embedder(model, device=device)
    return from_model(model, device=device)


class ThermalIndex:
    """Embeddings of thermal images, their records and the model identity; see the module docstring.

    Args:
        embedder: the model that embeds images and query texts (:func:`.embedder.load_embedder`,
            :func:`.embedder.from_model`); None for an index of precomputed vectors (``add_embeddings``).
        dim: embedding width, needed only without an embedder.
        exact_below: search exactly below this many rows (faiss, when installed, from there on).
    """

    def __init__(self, embedder: Optional[Embedder] = None, dim: Optional[int] = None,
                 exact_below: int = EXACT_BELOW, device: str = "cpu"):
        self.embedder = embedder
        self.device = device  # of a model rebuilt from the recorded identity
        self.identity: Optional[Dict] = None
        self.dim = dim
        self.exact_below = int(exact_below)
        self.store: Optional[IndexStore] = None
        self.paths: List[str] = []  # per row, dead rows included
        self.records: List[Optional[Dict]] = []
        self._chunks: List[np.ndarray] = []
        self._matrix: Optional[np.ndarray] = None
        self._live_buffer = np.zeros(0, dtype=bool)  # grown by doubling: loading many chunks stays linear
        self._row_of: Dict[str, int] = {}  # id -> its live row
        self._shards_done: Dict[str, List[int]] = {}  # unbound indexes; bound ones keep it in the store
        self._faiss: Optional[FaissSearch] = None
        self._faiss_state: Optional[Tuple[int, int]] = None  # (rows, dead rows) it reflects

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: Union[str, torch.nn.Module], device: str = "cpu", **settings) -> "ThermalIndex":
        """An empty in-memory index for ``model`` (a ``NAME[:PRETRAINED]`` spec or a built model).

        ``settings``: ``norm``, ``lam``, ``fusion``, ``model_name`` of :func:`.embedder.from_model`
        (or of :func:`.embedder.load_embedder` for a spec).
        """
        if isinstance(model, str):
            settings.pop("model_name", None)
            return cls(load_embedder(model, device=device, **settings))
        return cls(from_model(model, device=device, **settings))

    @classmethod
    def open(cls, folder, model: ModelLike = None, device: str = "cpu", create: bool = True,
             exact_below: int = EXACT_BELOW) -> "ThermalIndex":
        """The index in ``folder`` (created if missing and ``create``), bound to it: adds are committed there.

        Args:
            folder: the index folder.
            model: what embeds: a ``NAME[:PRETRAINED]`` spec, a model or an :class:`Embedder`. For an
                existing index it must have the recorded identity (None: rebuilt from the record
                when first needed); for a new one it is required.
            device: torch device of a model built here.
            create: make a new index when ``folder`` holds none.

        Raises:
            SearchError: no index there (and not ``create``) or no model for a new one, a corrupt
                index, or (:class:`.errors.ModelMismatchError`) a model of another identity.
        """
        folder = Path(folder)
        embedder = _embedder(model, device)
        index = cls(embedder, exact_below=exact_below, device=device)
        if IndexStore.exists(folder):
            store = IndexStore.open(folder)
            index.identity = store.header.get("model")
            index.dim = int(store.header["dim"])
            if embedder is not None:
                if index.identity is None:
                    raise SearchError(f"index {folder} holds precomputed vectors (no model recorded): open it "
                                      "without a model and search it with vectors")
                check_identity(index.identity, embedder.identity(), f"index {folder}")
            store.discard_uncommitted()
            for matrix, records in store.read_chunks():
                index._append(matrix, records)
            index.store = store
            return index
        if not create:
            IndexStore.open(folder)  # raises the precise error (not a folder / no index.json)
        if embedder is None:
            raise SearchError(f"--index {folder}: no index there yet; give --model to build one")
        index.identity = embedder.identity()
        index.dim = index.identity["dim"]
        index.store = IndexStore.create(folder, index.identity, index.dim)
        return index

    @classmethod
    def load(cls, folder, model: ModelLike = None, device: str = "cpu",
             exact_below: int = EXACT_BELOW) -> "ThermalIndex":
        """An existing index (see :meth:`open`); ``model`` None rebuilds the recorded one on the first text query."""
        return cls.open(folder, model, device, create=False, exact_below=exact_below)

    def save(self, folder=None) -> Path:
        """Write the live rows, compacted: into the bound folder (default) or into a new ``folder``."""
        live = np.flatnonzero(self._live)
        records = [self._full_record(int(r)) for r in live]
        matrix = self.matrix[live] if len(live) else np.zeros((0, self.dim or 0), STORED_DTYPE)
        if folder is None or (self.store is not None and Path(folder).resolve() == self.store.folder.resolve()):
            if self.store is None:
                raise SearchError("save() of an index that was never opened on a folder needs a folder")
            self.store.compact(matrix, records)
            self.store.header["generation"] = int(self.store.header.get("generation", 0)) + 1
            self.store.write_header()
            target = self.store
        else:
            shards_done = self.store.header.get("shards_done", {}) if self.store is not None else self._shards_done
            target = write_compacted(folder, self._identity(), self.dim, shards_done, matrix, records)
        for name in (FAISS_FILE, FAISS_RECORD):
            remove_file(target.folder / name)  # row numbers changed
        self._reset_rows(matrix, records)
        self.store = target
        return target.folder

    def _identity(self) -> Optional[Dict]:
        if self.identity is None and self.embedder is not None:
            self.identity = self.embedder.identity()
            self.dim = self.identity["dim"]
        return self.identity

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def matrix(self) -> np.ndarray:
        """All rows (dead ones included) as one ``(N, D)`` float16 array."""
        if self._matrix is None or len(self._matrix) != len(self.paths):
            self._matrix = np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim or 0), STORED_DTYPE)
            self._chunks = [self._matrix]
        return self._matrix

    @property
    def _live(self) -> np.ndarray:
        return self._live_buffer[:len(self.paths)]

    def _grow_live(self, rows: int) -> None:
        """Room for ``rows`` more rows, marked live (call before extending ``paths``)."""
        needed = len(self.paths) + rows
        if needed > len(self._live_buffer):
            grown = np.zeros(max(needed, 2 * len(self._live_buffer)), dtype=bool)
            grown[:len(self.paths)] = self._live
            self._live_buffer = grown
        self._live_buffer[len(self.paths):needed] = True

    @property
    def live_mask(self) -> np.ndarray:
        """``(N,)`` bool over all rows: False for replaced and removed ones."""
        return self._live

    @property
    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._live)

    def row_of(self, path: str) -> Optional[int]:
        """The live row of an id, or None."""
        return self._row_of.get(path)

    def ids(self) -> List[str]:
        """The ids (paths, SHARD#KEY) of the live entries, in row order."""
        return [self.paths[r] for r in self.live_rows]

    def record_of(self, path: str) -> Optional[Dict]:
        """The stored record of an id (absolute file path or SHARD#KEY), or None."""
        row = self._row_of.get(path)
        return None if row is None else self._full_record(row)

    def _full_record(self, row: int) -> Dict:
        return self.records[row] if self.records[row] is not None else {"path": self.paths[row]}

    def _append(self, matrix: np.ndarray, records: Sequence[Dict]) -> None:
        """Apply one chunk in memory: its rows, then its removals (records flagged ``removed``)."""
        first = len(self.paths)
        rows = [r for r in records if not r.get(REMOVED)]
        self._chunks.append(np.asarray(matrix, dtype=STORED_DTYPE))
        self._grow_live(len(rows))
        for offset, record in enumerate(rows):
            previous = self._row_of.get(record["path"])
            if previous is not None:
                self._live_buffer[previous] = False
            self._row_of[record["path"]] = first + offset
        self.paths.extend(r["path"] for r in rows)
        self.records.extend(rows)
        for record in records:
            if record.get(REMOVED):
                row = self._row_of.pop(record["path"], None)
                if row is not None:
                    self._live_buffer[row] = False

    def _reset_rows(self, matrix: np.ndarray, records: List[Dict]) -> None:
        self.paths, self.records, self._chunks, self._matrix = [], [], [], None
        self._live_buffer, self._row_of = np.zeros(0, dtype=bool), {}
        self._faiss, self._faiss_state = None, None
        self._append(matrix, records)

    def _commit(self, vectors: np.ndarray, records: List[Dict]) -> None:
        vectors = np.asarray(vectors, dtype=STORED_DTYPE)
        if self.store is not None:
            self.store.append_chunk(vectors, records)
        self._append(vectors, records)

    def add_embeddings(self, vectors: np.ndarray, paths: Sequence[str], records: Optional[Sequence[Dict]] = None) -> None:
        """Add precomputed unit-norm vectors (stored as float16) under ``paths``; a path already there is replaced.

        Records are kept in memory only when given (a million bare paths stay small).
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(paths):
            raise ValueError(f"{len(paths)} paths for vectors of shape {vectors.shape}")
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of dim {vectors.shape[1]} for an index of dim {self.dim}")
        if records is None and self.store is None:
            first = len(self.paths)
            self._chunks.append(np.asarray(vectors, dtype=STORED_DTYPE))
            self._grow_live(len(paths))
            for offset, path in enumerate(paths):
                previous = self._row_of.get(path)
                if previous is not None:
                    self._live_buffer[previous] = False
                self._row_of[path] = first + offset
            self.paths.extend(paths)
            self.records.extend([None] * len(paths))
            return
        records = [dict(r or {}, path=p) for p, r in zip(paths, records or [None] * len(paths))]
        self._commit(vectors, records)

    def remove(self, paths: Sequence[str]) -> int:
        """Drop entries by id; returns how many were present."""
        present = [p for p in paths if p in self._row_of]
        if present:
            self._commit(np.zeros((0, self.dim), STORED_DTYPE), [{"path": p, REMOVED: True} for p in present])
        return len(present)

    # ------------------------------------------------------------------ adding images
    def _shard_done(self, url: str, fingerprint) -> bool:
        if self.store is not None:
            return self.store.shard_done(url, fingerprint)
        return tuple(self._shards_done.get(url, ())) == tuple(fingerprint)

    def _mark_shard_done(self, url: str, fingerprint) -> None:
        if self.store is not None:
            self.store.mark_shard_done(url, fingerprint)
        else:
            self._shards_done[url] = list(fingerprint)

    def _prune(self, sources: SourceSet) -> int:
        """Entries whose file or shard no longer exists, and rows of shards rewritten since."""
        gone = []
        fingerprints = {s.url: s.fingerprint for s in sources.shards}
        for path, row in self._row_of.items():
            record = self._full_record(row)
            if record.get("source") == FILE_SOURCE and not os.path.exists(path):
                gone.append(path)
            elif record.get("source") == SHARD_SOURCE and not os.path.exists(record.get("shard", "")):
                gone.append(path)
            elif record.get("source") == SHARD_SOURCE and record.get("shard") in fingerprints \
                    and not unchanged(record, fingerprints[record["shard"]]):
                gone.append(path)
        return self.remove(gone)

    def add(self, source, batch_size: int = 32, workers: int = 0, commit_every: int = 512, prune: bool = False,
            progress: bool = True) -> AddReport:
        """Embed the new and changed images of ``source``; unchanged ones (same size and mtime) are skipped.

        Args:
            source: a folder (searched recursively), a sequence of image files, or a
                :class:`~.sources.SourceSet` (folders, file lists and shards; :func:`.sources.collect_sources`).
            batch_size: images per forward pass.
            workers: DataLoader worker processes decoding ahead of the model (0: decode in this process).
            commit_every: for an index opened on a folder, commit the embeddings every this many images
                (an interrupted run resumes after the last commit; unbound indexes keep everything in memory).
            prune: also drop entries whose file or shard is gone, and the old rows of rewritten shards.
            progress: show a tqdm bar.

        Raises:
            SearchError: no model, a bad source (missing or empty folder...), or bad settings.
        """
        if self.embedder is None:
            if self._identity() is None and self.store is None:
                raise SearchError("this index has no model to embed images; open it with model=...")
            self.embedder = rebuild(self.identity, device=self.device)
        for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 0), ("commit_every", commit_every, 1)):
            if value < low:
                raise SearchError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        sources = as_source_set(source)
        self._identity()
        start = time.time()
        report = AddReport()
        if prune:
            report.removed = self._prune(sources)
        pending_files = [f for f in sources.files if not unchanged(self.record_of(f.path), f.fingerprint)]
        report.skipped = len(sources.files) - len(pending_files)
        done = [s for s in sources.shards if self._shard_done(s.url, s.fingerprint)]
        pending_shards = [s for s in sources.shards if s not in done]
        # per shard: the keys already stored from its current content (a resumed shard skips them)
        fingerprints = {s.url: s.fingerprint for s in sources.shards}
        stored_keys: Dict[str, set] = {url: set() for url in fingerprints}
        for row in self._row_of.values():
            record = self._full_record(row)
            url = record.get("shard")
            if url in fingerprints and unchanged(record, fingerprints[url]):
                stored_keys[url].add(record["key"])
        report.skipped += sum(len(stored_keys[s.url]) for s in done)
        stored_keys = {s.url: stored_keys[s.url] for s in pending_shards}
        log.info("index: %s; %d files pending, %d unchanged; %d shards pending", ", ".join(sources.roots),
                 len(pending_files), report.skipped, len(pending_shards))
        embedder = self.embedder
        datasets = []
        if pending_files:
            datasets.append(FileImages(pending_files, embedder.preprocess, embedder.norm))
        if pending_shards:
            datasets.append(ShardImages(pending_shards, embedder.preprocess, embedder.norm, stored_keys))
        shard_total = _shard_samples([s.url for s in pending_shards]) if pending_shards else 0
        total = None if shard_total is None else len(pending_files) + shard_total
        with tqdm(total=total, desc="index", unit="img", disable=not progress) as bar:
            for dataset in datasets:
                loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                                     collate_fn=collate_items, shuffle=False)
                self._embed_loader(loader, report, commit_every, bar)
        report.seconds = time.time() - start
        log.info("index: %s", report.summary())
        return report

    def _embed_loader(self, loader, report: AddReport, commit_every: int, bar) -> None:
        vectors: List[np.ndarray] = []
        records: List[Dict] = []

        def flush() -> None:
            if records:
                self._commit(np.concatenate(vectors), list(records))
                vectors.clear()
                records.clear()

        done_cleanly = False
        try:
            for images, rows, others in loader:
                for kind, _, record, error in others:
                    if kind == SKIP:
                        report.skipped += 1
                    elif kind == ERROR:
                        report.unreadable.append({"path": record["path"], "error": error})
                        log.warning("unreadable %s: %s", record["path"], error)
                    elif kind == DONE:
                        flush()
                        self._mark_shard_done(record["shard"], (record["size"], record["mtime_ns"]))
                if images is not None:
                    embedded = self.embedder.embed_images(images)
                    finite = np.isfinite(embedded).all(axis=1)
                    for record in (r for r, ok in zip(rows, finite) if not ok):
                        report.unreadable.append({"path": record["path"], "error": "the model gave a NaN/inf embedding"})
                    vectors.append(embedded[finite])
                    records.extend(r for r, ok in zip(rows, finite) if ok)
                    report.embedded += int(finite.sum())
                    if len(records) >= commit_every:
                        flush()
                bar.update(len(rows) + sum(kind in (SKIP, ERROR) for kind, *_ in others))
            done_cleanly = True
        finally:
            # an interrupted run keeps what it embedded (resumable); a failed commit is not retried
            if done_cleanly or records:
                flush()

    # ------------------------------------------------------------------ search
    def _dead_rows(self) -> int:
        return len(self.paths) - len(self._row_of)  # every live row is in _row_of

    def faiss_index(self, progress: bool = False) -> FaissSearch:
        """The faiss index over the live rows: loaded from the folder, brought up to date, or built."""
        state = (len(self.paths), self._dead_rows())
        if self._faiss is not None and self._faiss_state == state:
            return self._faiss
        search, covered = self._faiss, (self._faiss_state or (0, 0))[0]
        if search is None and self.store is not None and (self.store.folder / FAISS_RECORD).is_file():
            note = json.loads((self.store.folder / FAISS_RECORD).read_text(encoding="utf-8"))
            if note.get("generation", 0) == self.store.header.get("generation", 0) and note.get("rows", 0) <= len(self.paths):
                search = FaissSearch.load(self.store.folder / FAISS_FILE, trained_rows=note.get("trained_rows"))
                covered = int(note["rows"])
        live = self._live
        if search is not None and len(self) > REBUILD_GROWTH * max(1, search.trained_rows):
            search = None  # the cells were trained on far fewer rows
        if search is None:
            log.info("faiss: building an IVF index over %d rows", len(self))
            search = FaissSearch.build(self.matrix, live, progress=progress)
        else:
            search.remove(np.flatnonzero(~live[:covered]))
            new = np.flatnonzero(live[covered:]) + covered
            search.add(self.matrix, new, progress)
        self._faiss, self._faiss_state = search, state
        if self.store is not None:
            # the record goes first and comes back last: a crash in between leaves no record, so a rebuild
            remove_file(self.store.folder / FAISS_RECORD)
            search.save(self.store.folder / FAISS_FILE)
            atomic_write_json(self.store.folder / FAISS_RECORD, {
                "rows": state[0], "dead": state[1], "nlist": search.nlist, "trained_rows": search.trained_rows,
                "generation": self.store.header.get("generation", 0)})
        return search

    def backend_for(self, backend: str = "auto") -> str:
        """The search that ``backend`` (auto | exact | faiss) means for this index's size."""
        if backend not in BACKENDS:
            raise SearchError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
        if backend == "faiss" and load_faiss() is None:
            raise SearchError("--backend faiss: faiss is not installed (pip install 'open_clip_thermal[search]')")
        if backend != "auto":
            return backend
        if len(self) < self.exact_below:
            return "exact"
        if load_faiss() is None:
            report_exact_fallback(len(self))
            return "exact"
        return "faiss"

    def prepare(self, backend: str = "auto", progress: bool = False) -> str:
        """Build or update what ``backend`` needs now (the faiss index), so that the first query is fast."""
        chosen = self.backend_for(backend)
        if chosen == "faiss" and len(self):
            self.faiss_index(progress)
        return chosen

    def search(self, vectors: np.ndarray, k: int = 10, backend: str = "auto",
               nprobe: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, str]:
        """Top ``k`` live rows for each query vector: (similarities, rows (-1: none), backend used)."""
        if k < 1:
            raise SearchError(f"--top-k must be >= 1, got {k}")
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        chosen = self.backend_for(backend)
        if not len(self):
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64), chosen
        if chosen == "faiss":
            scores, rows = self.faiss_index().search(vectors, k, nprobe)
        else:
            scores, rows = exact_top_k(self.matrix, vectors, k, self._live)
        return scores, rows, chosen

    def _query_embedder(self) -> Embedder:
        if self.embedder is None:
            if self.identity is None:
                raise SearchError("this index holds bare vectors (no model): search it with search(vectors)")
            self.embedder = rebuild(self.identity, device=self.device)
        return self.embedder

    def query(self, texts: Union[str, Sequence[str]] = (), images: Sequence = (), k: int = 10,
              backend: str = "auto", nprobe: Optional[int] = None) -> List[QueryResult]:
        """Search by text and/or by example image; one :class:`QueryResult` per query, texts first.

        Args:
            texts: query texts (a single string is one query).
            images: example thermal images (paths, decoded as the indexed images were).
            k: hits per query.
            backend: ``'auto'`` (exact below ``exact_below`` rows, else faiss when installed),
                ``'exact'`` or ``'faiss'``.
            nprobe: faiss cells to scan (default: one eighth).
        """
        if k < 1:
            raise SearchError(f"--top-k must be >= 1, got {k}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        images = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        for image in images:
            if not Path(image).is_file():
                raise SearchError(f"--image {image}: not a file")
        if not texts and not images:
            raise SearchError("nothing to search for: give --text or --image")
        embedder = self._query_embedder()
        results = []
        for kind, queries in ((TEXT, texts), (IMAGE, images)):
            if not queries:
                continue
            start = time.perf_counter()
            try:
                vectors = embedder.embed_texts(queries) if kind == TEXT else embedder.embed_files(queries)
            except SearchError:
                raise
            except Exception as error:  # an example image that does not decode
                raise SearchError(f"--image: cannot decode {error}") from None
            embed_ms = (time.perf_counter() - start) * 1000 / len(queries)
            for query, vector in zip(queries, vectors):
                start = time.perf_counter()
                scores, rows, chosen = self.search(vector[None], k, backend, nprobe)
                search_ms = (time.perf_counter() - start) * 1000
                hits = [Hit(rank, float(s), self.paths[r], self._full_record(int(r)))
                        for rank, (s, r) in enumerate(((s, r) for s, r in zip(scores[0], rows[0]) if r >= 0), 1)]
                results.append(QueryResult(str(query), kind, hits, embed_ms, search_ms, chosen))
        return results

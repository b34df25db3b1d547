"""Top-k inner-product search over the stored float16 embeddings: exact (torch) or faiss IVF.

Exact search: one float16 matrix product over all rows gives candidate scores; every row within
:data:`CANDIDATE_MARGIN` of the k-th candidate is rescored in float32 from the stored values and the
best k are returned (ties: lower row first). The float16 product rounds each score by at most
2^-11 (unit vectors, float32 accumulation) and the query's float16 rounding adds as much again, so
the margin, twice the worst case of two such scores, keeps the true top k among the candidates:
the result equals a float32 brute force over the same rows. It reads the 1 GB of a million 512-d rows
once per query (~50 ms on two idle cores), which is fine below :data:`EXACT_BELOW` rows.

Above it, with faiss installed (the ``search`` extra), an ``IndexIVFScalarQuantizer`` with float16
codes (the stored values, no further compression) and inner product: k-means into
``nlist ~ sqrt(rows)`` cells, a query scans the ``nprobe`` nearest cells (default: nlist / 8).
It is approximate: how many of the true top k it finds depends on the data; benchmarks/search_speed.py
measures it on random (worst case) and clustered vectors. Without faiss the search stays exact and
says so once.
"""
import logging
import math
import sys
from typing import Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

EXACT_BELOW = 100_000  # rows: exact search below, faiss (when installed) from here on
CANDIDATE_MARGIN = 4.0 * 2.0 ** -11  # see the module docstring
QUERY_GROUP = 32  # queries per matrix product (bounds the (rows, queries) score matrix)
TRAIN_POINTS_PER_CELL = 40  # k-means training rows per IVF cell (faiss warns below 39)
BACKENDS = ("auto", "exact", "faiss")
INSTALL_HINT = "pip install 'open_clip_thermal[search]' (faiss-cpu)"

_fallback_reported = False


def load_faiss():
    """The faiss module, or None when the optional ``search`` extra is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def report_exact_fallback(rows: int) -> None:
    """Say once per process that a large index is searched exactly because faiss is missing."""
    global _fallback_reported
    if _fallback_reported:
        return
    _fallback_reported = True
    message = (f"note: faiss is not installed, so the {rows} embeddings are searched exactly (correct, about "
               f"{max(1, round(rows / 2e7 * 1000))} ms per query on two cores); {INSTALL_HINT} for faster search")
    log.warning(message)
    print(message, file=sys.stderr)


def exact_top_k(matrix: np.ndarray, queries: np.ndarray, k: int,
                live: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` rows of ``matrix`` by inner product with each query.

    Args:
        matrix: ``(N, D)`` float16 stored embeddings.
        queries: ``(Q, D)`` float32 query embeddings.
        k: results per query.
        live: ``(N,)`` bool, rows that may be returned (None: all).

    Returns:
        (scores ``(Q, k')`` float32, rows ``(Q, k')`` int64), best first, ``k' = min(k, live rows)``.
    """
    import torch

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_live = int(matrix.shape[0] if live is None else live.sum())
    k = min(int(k), n_live)
    scores_out = np.zeros((len(queries), k), dtype=np.float32)
    rows_out = np.zeros((len(queries), k), dtype=np.int64)
    if k == 0 or not len(queries):
        return scores_out, rows_out
    stored = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float16))
    dead = None if live is None or live.all() else torch.from_numpy(~np.asarray(live, dtype=bool))
    for start in range(0, len(queries), QUERY_GROUP):
        group = queries[start:start + QUERY_GROUP]
        rough = (stored @ torch.from_numpy(group.astype(np.float16)).T).T.float()  # (q, N)
        if dead is not None:
            rough.masked_fill_(dead[None, :], -math.inf)
        kth = torch.topk(rough, k, dim=1).values[:, -1]
        for offset, query in enumerate(group):
            candidates = torch.nonzero(rough[offset] >= kth[offset] - CANDIDATE_MARGIN).flatten().numpy()
            exact = matrix[candidates].astype(np.float32) @ query
            best = np.argsort(-exact, kind="stable")[:k]  # candidates are in row order: ties keep it
            scores_out[start + offset] = exact[best]
            rows_out[start + offset] = candidates[best]
    return scores_out, rows_out


def default_nlist(rows: int) -> int:
    """IVF cells for ``rows`` vectors: about sqrt(rows), with enough training rows per cell."""
    return max(1, min(int(round(math.sqrt(rows))), rows // TRAIN_POINTS_PER_CELL))


def default_nprobe(nlist: int) -> int:
    """Cells a query scans by default: one eighth of them."""
    return max(1, math.ceil(nlist / 8))


class FaissSearch:
    """A faiss IVF (float16 codes, inner product) over rows of the store, ids = row numbers."""

    def __init__(self, index, nprobe: Optional[int] = None, trained_rows: Optional[int] = None):
        self.index = index
        self.nprobe = nprobe or default_nprobe(index.nlist)
        self.trained_rows = int(index.ntotal if trained_rows is None else trained_rows)  # rows when the cells were trained

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, matrix: np.ndarray, live: np.ndarray, nlist: Optional[int] = None, seed: int = 0,
              progress: bool = False) -> "FaissSearch":
        """Train the cells on a seeded sample of the live rows and add every live row."""
        faiss = load_faiss()
        if faiss is None:
            raise RuntimeError(f"faiss is not installed: {INSTALL_HINT}")
        rows = np.flatnonzero(live)
        nlist = nlist or default_nlist(len(rows))
        dim = matrix.shape[1]
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = rows if len(rows) <= TRAIN_POINTS_PER_CELL * nlist else \
            np.sort(rng.choice(rows, TRAIN_POINTS_PER_CELL * nlist, replace=False))
        log.info("faiss: training %d cells on %d of %d rows", nlist, len(sample), len(rows))
        index.train(np.ascontiguousarray(matrix[sample], dtype=np.float32))
        search = cls(index, trained_rows=len(rows))
        search.add(matrix, rows, progress)
        return search

    def add(self, matrix: np.ndarray, rows: np.ndarray, progress: bool = False, block: int = 65536) -> None:
        """Add ``matrix[rows]`` under ids ``rows`` (converted to float32 a block at a time)."""
        from tqdm import tqdm

        for start in tqdm(range(0, len(rows), block), desc="faiss add", unit="block", disable=not progress,
                          leave=False):
            ids = np.asarray(rows[start:start + block], dtype=np.int64)
            self.index.add_with_ids(np.ascontiguousarray(matrix[ids], dtype=np.float32), ids)

    def remove(self, rows: np.ndarray) -> int:
        """Remove ids ``rows`` (already absent ones are ignored); returns how many were removed."""
        faiss = load_faiss()
        if not len(rows):
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))))

    def search(self, queries: np.ndarray, k: int, nprobe: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, rows) like :func:`exact_top_k`; row -1 where the probed cells held fewer than k rows."""
        self.index.nprobe = int(nprobe or self.nprobe)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
        return scores.astype(np.float32), rows.astype(np.int64)

    def save(self, path) -> None:
        """Write the faiss index to ``path`` atomically."""
        from ..files import atomic_write
        faiss = load_faiss()
        atomic_write(path, lambda tmp: faiss.write_index(self.index, tmp))

    @classmethod
    def load(cls, path, nprobe: Optional[int] = None, trained_rows: Optional[int] = None) -> "FaissSearch":
        """Read a faiss index written by :meth:`save`."""
        return cls(load_faiss().read_index(str(path)), nprobe, trained_rows)

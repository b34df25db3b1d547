"""Chunked image-text retrieval: rank of the first correct item and Recall@K.

The full query x gallery similarity matrix is never built: queries are processed in row chunks
sized from a memory budget, so 50k x 50k pairs of 512-d embeddings need a few hundred MB, not 10 GB.

Ranking rule (see docs/benchmark.md): gallery items are ordered by descending cosine score, ties
broken by ascending gallery index, i.e. the order of a stable sort. A query's rank is the 0-based
position of its first correct gallery item; a gallery item is correct when its group id equals the
query's group id (by default every pair is its own group; with repeated captions, all pairs that share
a caption share a group).
"""
import math
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from ..contracts import DEFAULT_RECALL_KS  # re-exported: the benchmark and reports import it from here

# Bytes of working memory per (query, gallery) cell in one chunk: the float32 score plus a few
# boolean masks and one float temporary.
_BYTES_PER_CELL = 12


def chunk_rows(gallery_size: int, memory_budget_mb: float = 256.0) -> int:
    """Number of query rows whose score block fits into ``memory_budget_mb``."""
    if gallery_size <= 0:
        raise ValueError(f"gallery_size must be positive, got {gallery_size}")
    rows = int(memory_budget_mb * 2 ** 20 // (gallery_size * _BYTES_PER_CELL))
    return max(1, rows)


def _as_float32(name: str, features: torch.Tensor, device: Optional[torch.device]) -> torch.Tensor:
    features = torch.as_tensor(features)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (count, dim) array, got shape {tuple(features.shape)}")
    features = features.to(device=device, dtype=torch.float32)
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return features


def _group_members(query_groups: torch.Tensor, gallery_groups: torch.Tensor):
    """Gallery indices sorted by group (CSR layout) and each query's start and count in it."""
    sorted_groups, order = torch.sort(gallery_groups, stable=True)
    unique, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(unique, query_groups).clamp(max=len(unique) - 1)
    found = unique[slot] == query_groups
    if not found.all():
        missing = int((~found).nonzero()[0])
        raise ValueError(f"query {missing} (group {int(query_groups[missing])}) has no correct item in the gallery")
    return order, starts[slot], counts[slot]


def first_hit_ranks(
        queries: torch.Tensor,
        gallery: torch.Tensor,
        query_groups: Optional[Sequence[int]] = None,
        gallery_groups: Optional[Sequence[int]] = None,
        chunk_size: Optional[int] = None,
        memory_budget_mb: float = 256.0,
        device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Rank of the first correct gallery item for every query, computed chunk by chunk.

    Scores are dot products in float32, so pass L2-normalised features to rank by cosine.

    Args:
        queries: (Q, D) query features.
        gallery: (G, D) gallery features.
        query_groups: (Q,) integer group of each query; defaults to ``arange(Q)``.
        gallery_groups: (G,) integer group of each gallery item; defaults to ``arange(G)``.
            A gallery item is a hit for a query when their groups are equal.
        chunk_size: query rows per chunk; derived from ``memory_budget_mb`` when None.
        memory_budget_mb: working memory allowed for one chunk's score block.
        device: where to compute (e.g. ``cuda``); defaults to the device of ``queries``.

    Returns:
        (Q,) int64 tensor on the CPU: 0-based rank of each query's first hit, with ties broken by
        ascending gallery index.
    """
    device = torch.device(device) if device is not None else torch.as_tensor(queries).device
    queries = _as_float32("queries", queries, device)
    gallery = _as_float32("gallery", gallery, device)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dim {queries.shape[1]} but gallery has dim {gallery.shape[1]}")
    n_query, n_gallery = queries.shape[0], gallery.shape[0]
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"empty retrieval problem: {n_query} queries, {n_gallery} gallery items")
    q_groups = torch.arange(n_query) if query_groups is None else torch.as_tensor(query_groups)
    g_groups = torch.arange(n_gallery) if gallery_groups is None else torch.as_tensor(gallery_groups)
    if q_groups.shape != (n_query,) or g_groups.shape != (n_gallery,):
        raise ValueError("query_groups / gallery_groups must have one entry per query / gallery item")
    member_order, member_start, member_count = _group_members(q_groups.long(), g_groups.long())
    member_order, member_start, member_count = member_order.to(device), member_start.to(device), member_count.to(device)
    rows = chunk_size or chunk_rows(n_gallery, memory_budget_mb)
    gallery_index = torch.arange(n_gallery, device=device)
    ranks = torch.empty(n_query, dtype=torch.long)
    for start in range(0, n_query, rows):
        stop = min(start + rows, n_query)
        scores = queries[start:stop] @ gallery.T
        # Gallery indices of each query's correct items, padded to the largest group in the chunk;
        # members are in ascending index order, so the first maximum is the lowest-index best hit.
        count = member_count[start:stop]
        offsets = torch.arange(int(count.max()), device=device)
        members = member_order[(member_start[start:stop, None] + offsets[None, :]).clamp(max=n_gallery - 1)]
        member_scores = scores.gather(1, members).masked_fill(offsets[None, :] >= count[:, None], -math.inf)
        best = member_scores.max(dim=1).values
        members_at_best = member_scores == best[:, None]
        # No correct item scores above `best`, so `above` counts wrong items only.
        above = (scores > best[:, None]).sum(dim=1)
        at_or_above = (scores >= best[:, None]).sum(dim=1)
        # Exact ties between a wrong item and the best correct one are rare: resolve them (by
        # gallery index) only for the rows that have one.
        tied = (at_or_above - above > members_at_best.sum(dim=1)).nonzero().flatten()
        if tied.numel():
            first_best = members[tied].gather(1, members_at_best[tied].to(torch.uint8).argmax(dim=1, keepdim=True))
            # Correct items never tie before `first_best`, so this counts wrong items only.
            above[tied] += ((scores[tied] == best[tied, None]) & (gallery_index[None, :] < first_best)).sum(dim=1)
        ranks[start:stop] = above.cpu()
        del scores
    return ranks


def cap_ks(ks: Iterable[int], gallery_size: int, what: str = "gallery") -> List[int]:
    """Sorted unique K values, each capped to ``gallery_size`` with a warning when it exceeds it."""
    ks = [int(k) for k in ks]
    bad = [k for k in ks if k < 1]
    if bad:
        raise ValueError(f"recall K values must be >= 1, got {bad}")
    too_large = sorted(k for k in ks if k > gallery_size)
    if too_large:
        warnings.warn(f"Recall@K with K={too_large} exceeds the {what} size {gallery_size}; "
                      f"capping K to {gallery_size}")
    return sorted({min(k, gallery_size) for k in ks})


def recall_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> Dict[int, float]:
    """Fraction of queries whose first hit is within the top K, for every K in ``ks``."""
    ranks = torch.as_tensor(ranks)
    return {int(k): float((ranks < k).double().mean()) for k in ks}


def retrieval_recalls(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        ks: Iterable[int] = DEFAULT_RECALL_KS,
        groups: Optional[Sequence[int]] = None,
        memory_budget_mb: float = 256.0,
        device: Optional[torch.device] = None,
) -> Dict[str, Dict[int, float]]:
    """Recall@K in both directions for N paired images and texts.

    Args:
        image_features: (N, D) normalised image features; row i is paired with text row i.
        text_features: (N, D) normalised text features.
        ks: K values; values above N are capped to N with a warning.
        groups: (N,) group id of pair i (see ``caption_groups``); pairs in one group count as
            correct for each other. Defaults to one group per pair.
        memory_budget_mb: working memory per chunk.
        device: compute device.

    Returns:
        ``{"image_to_text": {k: recall}, "text_to_image": {k: recall}}``.
    """
    n_images, n_texts = len(image_features), len(text_features)
    if n_images != n_texts:
        raise ValueError(f"expected paired features, got {n_images} images and {n_texts} texts")
    ks = cap_ks(ks, n_images)
    i2t = first_hit_ranks(image_features, text_features, groups, groups, memory_budget_mb=memory_budget_mb, device=device)
    t2i = first_hit_ranks(text_features, image_features, groups, groups, memory_budget_mb=memory_budget_mb, device=device)
    return {"image_to_text": recall_from_ranks(i2t, ks), "text_to_image": recall_from_ranks(t2i, ks)}


def caption_groups(captions: Sequence[str]) -> List[int]:
    """Group id per caption: identical strings (after stripping whitespace) share one id."""
    ids: Dict[str, int] = {}
    return [ids.setdefault(c.strip(), len(ids)) for c in captions]


def chance_recalls(gallery_size: int, ks: Iterable[int], groups: Optional[Sequence[int]] = None) -> Dict[int, float]:
    """Expected Recall@K of a uniformly random ranking, the floor every table is read against.

    A query whose group has ``m`` members in a gallery of ``N`` items is hit within the top ``K`` with
    probability ``1 - C(N-m, K) / C(N, K)``; with one positive per query this is ``K / N``. The result
    is the mean over queries (one query per gallery item, as in paired retrieval).

    Args:
        gallery_size: number of gallery items ``N``.
        ks: K values (capped to ``N``).
        groups: (N,) group id per item when duplicate captions count as positives; None = paired only.

    Returns:
        ``{k: expected recall}`` as fractions.
    """
    if gallery_size <= 0:
        raise ValueError(f"gallery_size must be positive, got {gallery_size}")
    if groups is None:
        sizes = {1: gallery_size}
    else:
        if len(groups) != gallery_size:
            raise ValueError(f"groups has {len(groups)} entries for a gallery of {gallery_size}")
        per_group: Dict[int, int] = {}
        for g in groups:
            per_group[int(g)] = per_group.get(int(g), 0) + 1
        sizes = {}
        for m in per_group.values():  # each of the m members is a query whose group has m members
            sizes[m] = sizes.get(m, 0) + m

    def miss_probability(m: int, k: int) -> float:
        # C(N-m, K) / C(N, K) = prod_{i<m} (N-K-i) / (N-i), computed in logs for large N
        if k + m > gallery_size:
            return 0.0
        return math.exp(sum(math.log(gallery_size - k - i) - math.log(gallery_size - i) for i in range(m)))

    result = {}
    for k in ks:
        k = min(int(k), gallery_size)
        hit = sum(count * (1.0 - miss_probability(m, k)) for m, count in sizes.items())
        result[k] = hit / gallery_size
    return result

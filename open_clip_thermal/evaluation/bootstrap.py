"""Paired bootstrap over test pairs: is one method's recall really higher than another's?

Both methods are scored on the same test pairs, so the difference is resampled pair by pair (the
same resampled pairs for both), which removes the between-pair variance that an unpaired
comparison would leave in. Per pair, a method's score is its hit rate averaged over directions, K
values and training seeds, so the mean over pairs is the "mean recall" of the tables.
"""
from typing import Dict, Iterable, Sequence

import numpy as np
import torch

from .retrieval import first_hit_ranks


def per_pair_hits(image_features: torch.Tensor, text_features: torch.Tensor, ks: Iterable[int]) -> np.ndarray:
    """(N,) mean over both directions and all K of "pair i is hit within the top K".

    The mean of the result over pairs equals the mean recall over directions and K.
    """
    ks = list(ks)
    i2t = first_hit_ranks(image_features, text_features).cpu().numpy()
    t2i = first_hit_ranks(text_features, image_features).cpu().numpy()
    hits = [(ranks < k) for ranks in (i2t, t2i) for k in ks]
    return np.mean(np.stack(hits).astype(np.float64), axis=0)


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], num_resamples: int = 10000,
                     confidence: float = 0.95, seed: int = 0) -> Dict[str, float]:
    """Percentile bootstrap confidence interval of ``mean(a) - mean(b)`` over paired items.

    Args:
        scores_a: per-item scores of method A (e.g. :func:`per_pair_hits`, averaged over seeds).
        scores_b: the same items scored by method B.
        num_resamples: bootstrap resamples of the items (with replacement, shared by A and B).
        confidence: coverage of the interval.
        seed: numpy seed of the resampling.

    Returns:
        dict with ``difference`` (observed mean of A - B), ``low``, ``high``, ``confidence``,
        ``p_not_positive`` (share of resamples with a difference <= 0) and ``n`` (items).
    """
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equally long, non-empty 1-d score arrays, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = a - b
    rng = np.random.default_rng(seed)
    resampled = np.empty(num_resamples)
    for start in range(0, num_resamples, 1000):  # chunks keep memory at 1000 x N
        stop = min(start + 1000, num_resamples)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))
        resampled[start:stop] = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high), "confidence": confidence,
            "p_not_positive": float(np.mean(resampled <= 0)), "n": int(diff.size)}

"""Thermal perception gap statistics: matched-pair cosine, Welch's t-tests, Benjamini-Hochberg."""
import itertools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import stats as scipy_stats


def matched_pair_cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every image with its own caption (row i with row i), as float64."""
    image = torch.nn.functional.normalize(torch.as_tensor(image_features, dtype=torch.float32), dim=-1)
    text = torch.nn.functional.normalize(torch.as_tensor(text_features, dtype=torch.float32), dim=-1)
    if image.shape != text.shape:
        raise ValueError(f"image features {tuple(image.shape)} and text features {tuple(text.shape)} are not paired")
    return (image * text).sum(dim=-1).double().cpu().numpy()


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order.

    The adjusted value of the i-th smallest of m p-values is min over j >= i of p_(j) * m / j,
    clipped to 1.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("p_values must be one-dimensional")
    if p.size == 0:
        return p.copy()
    if np.any((p < 0) | (p > 1) | np.isnan(p)):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    # Running minimum from the largest p-value down keeps the adjusted values monotone.
    adjusted_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return adjusted


def pairwise_welch_tests(cosines_by_model: Mapping[str, Sequence[float]], alpha: float = 0.05,
                         pairs: Optional[Sequence[Tuple[str, str]]] = None) -> List[Dict]:
    """Welch's t-test on matched-pair cosines between pairs of models, BH-corrected over those pairs.

    Args:
        cosines_by_model: model label -> per-pair cosines.
        alpha: false discovery rate for the ``significant`` flag.
        pairs: the comparisons of the family (labels of ``cosines_by_model``); None: every unordered pair.
            Benjamini-Hochberg adjusts over exactly these, so a smaller family gives smaller ``p_bh``.

    Returns:
        One dict per unordered pair (in insertion order of the labels) with ``model_a``,
        ``model_b``, ``mean_a``, ``mean_b``, ``t``, ``p`` (two-sided, unequal variances),
        ``p_bh`` and ``significant`` (``p_bh < alpha``).
    """
    labels = list(cosines_by_model)
    if pairs is None:
        pairs = list(itertools.combinations(labels, 2))
    unknown = sorted({label for pair in pairs for label in pair} - set(labels))
    if unknown:
        raise ValueError(f"Welch's t-test: no cosines for {unknown} (known: {labels})")
    rows = []
    for a, b in pairs:
        xa = np.asarray(cosines_by_model[a], dtype=np.float64)
        xb = np.asarray(cosines_by_model[b], dtype=np.float64)
        if xa.size < 2 or xb.size < 2:
            raise ValueError(f"Welch's t-test needs at least 2 cosines per model ({a}: {xa.size}, {b}: {xb.size})")
        result = scipy_stats.ttest_ind(xa, xb, equal_var=False)
        p = float(result.pvalue)
        if np.isnan(p):  # both samples constant and equal: no evidence of a difference
            p = 1.0
        rows.append({"model_a": a, "model_b": b, "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
                     "t": float(result.statistic), "p": p})
    adjusted = benjamini_hochberg([r["p"] for r in rows])
    for row, p_bh in zip(rows, adjusted):
        row["p_bh"] = float(p_bh)
        row["significant"] = bool(p_bh < alpha)
    return rows

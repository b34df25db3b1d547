"""Zero-shot classification metrics from a score matrix (numpy only).

Key names follow LAION-AI/CLIP_benchmark's zero-shot classification results: ``acc1``, ``acc5``
(fractions in [0, 1]; ``acc5`` is None below five classes, as there) and ``mean_per_class_recall``
(balanced accuracy: the mean over the classes that have test images of each class's top-1 recall).
Ties in the scores are broken towards the lower class index, so results are deterministic.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

TOP_K = 5  # the second accuracy reported (acc5)


def ranked_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best class indices of every row, best first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    return order[:, :k]


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_metrics(scores: np.ndarray, targets: Sequence[int], classnames: Sequence[str]) -> Dict:
    """Top-1 / top-5 accuracy, per-class accuracy, mean per-class recall and the confusion matrix.

    Args:
        scores: ``(N, C)`` image-to-class similarities (higher is better).
        targets: ``N`` true class indices in ``[0, C)``.
        classnames: the ``C`` class names, in index order.

    Returns:
        ``{"acc1", "acc5", "mean_per_class_recall", "per_class": {name: {"n", "acc1", "acc5"}},
        "confusion_matrix": [[...]], "n_samples", "num_classes"}``. A class without test images has
        ``n = 0`` and accuracies None and does not count in ``mean_per_class_recall``.

    Raises:
        ValueError: shapes disagree, a target is out of range, or there are no samples.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    num_classes = len(classnames)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must have shape (N, {num_classes}), got {scores.shape}")
    if scores.shape[0] != targets.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {targets.shape[0]} targets")
    if targets.size == 0:
        raise ValueError("no samples to score")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}), got {targets.min()}..{targets.max()}")
    k = min(TOP_K, num_classes)
    top = ranked_classes(scores, k)
    hit1 = top[:, 0] == targets
    hit5 = (top == targets[:, None]).any(axis=1) if num_classes >= TOP_K else None
    per_class: Dict[str, Dict[str, Optional[float]]] = {}
    recalls: List[float] = []
    for index, name in enumerate(classnames):
        mask = targets == index
        n = int(mask.sum())
        acc1 = float(hit1[mask].mean()) if n else None
        acc5 = float(hit5[mask].mean()) if n and hit5 is not None else None
        per_class[name] = {"n": n, "acc1": acc1, "acc5": acc5}
        if n:
            recalls.append(acc1)
    return {
        "acc1": float(hit1.mean()),
        "acc5": float(hit5.mean()) if hit5 is not None else None,
        "mean_per_class_recall": float(np.mean(recalls)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(targets, top[:, 0], num_classes).tolist(),
        "n_samples": int(targets.size),
        "num_classes": num_classes,
    }

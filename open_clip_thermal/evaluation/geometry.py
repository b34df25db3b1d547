"""Feature geometry of the LoRA branches: within-group cohesion and the angle between branches."""
import math
from typing import Dict, Hashable, Sequence

import torch


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float64), dim=-1)


def mean_intra_group_cosine(features: torch.Tensor, groups: Sequence[Hashable]) -> Dict[str, Dict]:
    """Mean cosine between distinct members of each group.

    Uses sum_{i != j} <x_i, x_j> = ||sum_i x_i||^2 - n for unit vectors, so the cost is linear in
    the group size instead of quadratic.

    Args:
        features: (N, D) features (normalised here).
        groups: (N,) group label of each row, e.g. the ``time_of_day`` metadata field; ``None``
            labels are skipped.

    Returns:
        ``{str(label): {"count": n, "mean_cosine": value}}``; groups with a single member get
        ``mean_cosine`` None because they have no pair.
    """
    x = _normalised(features)
    if len(groups) != x.shape[0]:
        raise ValueError(f"got {len(groups)} group labels for {x.shape[0]} feature rows")
    members: Dict[str, list] = {}
    for index, label in enumerate(groups):
        if label is not None:
            members.setdefault(str(label), []).append(index)
    result = {}
    for label in sorted(members):
        rows = x[members[label]]
        n = rows.shape[0]
        total = rows.sum(dim=0)
        mean = float((total @ total - n) / (n * (n - 1))) if n > 1 else None
        result[label] = {"count": n, "mean_cosine": mean}
    return result


def mean_feature_angle(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Angle in degrees between the mean (normalised) features of two sets, e.g. two branches."""
    mean_a = _normalised(features_a).mean(dim=0)
    mean_b = _normalised(features_b).mean(dim=0)
    denominator = float(mean_a.norm() * mean_b.norm())
    if denominator == 0.0:
        raise ValueError("a mean feature vector is zero; the angle is undefined")
    cosine = max(-1.0, min(1.0, float(mean_a @ mean_b) / denominator))
    return math.degrees(math.acos(cosine))

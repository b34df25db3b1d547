"""Fusion of cached per-branch features, so the lambda sweep and both modes need no re-encoding."""
from typing import Mapping

import torch

from ..contracts import BRANCHES as BRANCH_ORDER
from ..contracts import FUSION_FEATURE, FUSION_MODES
from ..model import fuse_features


def fuse_branches(features_by_branch: Mapping[str, torch.Tensor], lam: float, mode: str = FUSION_FEATURE) -> torch.Tensor:
    """Fuse ``{'global': f_G, 'fine_grained': f_F}`` with weight ``lam`` on the global branch.

    ``feature``: normalize(lam * f_G + (1 - lam) * f_F) (the paper's rule);
    ``score``: concat(sqrt(lam) f_G, sqrt(1 - lam) f_F), whose dot products are the lam-weighted
    sum of the per-branch cosines. The arithmetic is :func:`open_clip_thermal.model.fuse_features`,
    so the benchmark and the model share one definition; this wrapper checks that both branches
    are there (the cache may hold only one) and casts to float32.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    missing = [b for b in BRANCH_ORDER if b not in features_by_branch]
    if missing:
        raise ValueError(f"fusion needs branches {BRANCH_ORDER}, missing {missing}")
    return fuse_features({b: features_by_branch[b].float() for b in BRANCH_ORDER}, lam, mode, order=BRANCH_ORDER)

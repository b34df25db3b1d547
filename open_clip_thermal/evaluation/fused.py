"""Fusion of cached per-branch features, so the lambda sweep and both modes need no re-encoding."""
from typing import Mapping

import torch

from ..contracts import BRANCHES as BRANCH_ORDER
from ..contracts import FINE_GRAINED, FUSION_FEATURE, FUSION_MODES, GLOBAL


def _local_fuse(features_by_branch: Mapping[str, torch.Tensor], lam: float, mode: str) -> torch.Tensor:
    f_global = torch.nn.functional.normalize(features_by_branch[GLOBAL].float(), dim=-1)
    f_fine = torch.nn.functional.normalize(features_by_branch[FINE_GRAINED].float(), dim=-1)
    if mode == FUSION_FEATURE:
        return torch.nn.functional.normalize(lam * f_global + (1.0 - lam) * f_fine, dim=-1)
    # Score mode: <concat(a), concat(b)> = lam <aG,bG> + (1 - lam) <aF,bF>, still unit norm.
    return torch.cat([lam ** 0.5 * f_global, (1.0 - lam) ** 0.5 * f_fine], dim=-1)


def fuse_branches(features_by_branch: Mapping[str, torch.Tensor], lam: float, mode: str = FUSION_FEATURE) -> torch.Tensor:
    """Fuse ``{'global': f_G, 'fine_grained': f_F}`` with weight ``lam`` on the global branch.

    ``feature``: normalize(lam * f_G + (1 - lam) * f_F) (the paper's rule);
    ``score``: concat(sqrt(lam) f_G, sqrt(1 - lam) f_F), whose dot products are the lam-weighted
    sum of the per-branch cosines. Uses ``open_clip_thermal.model.fuse_features`` when the
    package provides it, so the benchmark and the model share one definition.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    missing = [b for b in BRANCH_ORDER if b not in features_by_branch]
    if missing:
        raise ValueError(f"fusion needs branches {BRANCH_ORDER}, missing {missing}")
    try:
        from open_clip_thermal.model import fuse_features
    except ImportError:
        return _local_fuse(features_by_branch, lam, mode)
    return fuse_features({b: features_by_branch[b].float() for b in BRANCH_ORDER}, lam, mode)

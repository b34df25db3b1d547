"""Thermal retrieval benchmark: Recall@K tables, lambda sweep, gap statistics, feature geometry.

Run ``python -m open_clip_thermal.benchmark --help``; definitions are in docs/benchmark.md. The
retrieval functions live in :mod:`open_clip_thermal.evaluation` and are forwarded here lazily, so that
``--help`` imports no torch.
"""
from ..lazy import forward_attributes

# public name -> module that defines it
_LAZY = {
    "main": ".cli",
    "BenchmarkError": "..evaluation.errors",
    "first_hit_ranks": "..evaluation.retrieval",
    "recall_from_ranks": "..evaluation.retrieval",
    "retrieval_recalls": "..evaluation.retrieval",
}

__all__ = list(_LAZY)

__getattr__ = forward_attributes(__name__, _LAZY)

"""Thermal retrieval benchmark: Recall@K tables, lambda sweep, gap statistics, feature geometry.

Run ``python -m open_clip_thermal.benchmark --help``; definitions are in docs/benchmark.md. The
retrieval functions live in :mod:`open_clip_thermal.evaluation` and are forwarded here lazily, so that
``--help`` imports no torch.
"""
import importlib

# public name -> module that defines it
_LAZY = {
    "main": ".cli",
    "BenchmarkError": "..evaluation.errors",
    "first_hit_ranks": "..evaluation.retrieval",
    "recall_from_ranks": "..evaluation.retrieval",
    "retrieval_recalls": "..evaluation.retrieval",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Thermal retrieval benchmark: Recall@K tables, lambda sweep, gap statistics, feature geometry.

Run ``python -m open_clip_thermal.benchmark --help``; definitions are in docs/benchmark.md.
"""
from .cli import main
from ..evaluation.errors import BenchmarkError
from ..evaluation.retrieval import first_hit_ranks, recall_from_ranks, retrieval_recalls

__all__ = ["main", "BenchmarkError", "first_hit_ranks", "recall_from_ranks", "retrieval_recalls"]

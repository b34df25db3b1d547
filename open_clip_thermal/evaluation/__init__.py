"""Retrieval evaluation: encoding test sets, Recall@K, lambda sweeps, gap statistics, feature geometry.

The library behind ``python -m open_clip_thermal.benchmark`` (the command lives in
:mod:`open_clip_thermal.benchmark`); the timing scripts in the repository's ``benchmarks/`` folder
are unrelated. Definitions are in docs/benchmark.md.
"""

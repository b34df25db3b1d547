"""The one error type the benchmark CLI turns into a message instead of a traceback."""


class BenchmarkError(Exception):
    """Bad benchmark input (shards, variant specs, weights); the message names the cause."""

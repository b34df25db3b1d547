"""Shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so importable by name)."""
import contextlib
import logging
import warnings


@contextlib.contextmanager
def random_weights_quietly():
    """Silence the random-weights warnings of OpenCLIP (a log record) and T-CLIP (a UserWarning):
    timing does not need pretrained weights, so they would only be noise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*random weights.*")
            yield
    finally:
        logging.disable(previous)

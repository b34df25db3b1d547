"""Keep a long stage's output off the console, but not this package's warnings.

Everything a stage prints or logs goes to a file (:func:`quiet`: the quickstart's stages, the
reproduction's benchmarks), so a newcomer's console shows one line per stage. Commands whose logs go to
files (classify, search) use :func:`surfaced_warnings`. In both, the warnings this package raises (random
base weights, an unrecorded thermal normalisation, part of a split, ...) are also printed on the console,
once each, when the block ends: they say a number may be wrong, which a log file alone would hide.
"""
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, TextIO

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def raised_by_package(caught: warnings.WarningMessage) -> bool:
    """Whether a recorded warning was raised (or attributed by ``stacklevel``) inside open_clip_thermal."""
    return os.path.abspath(caught.filename).startswith(PACKAGE_DIR + os.sep)


def report_warnings(caught: List[warnings.WarningMessage], console: TextIO, log_file: Optional[TextIO] = None) -> None:
    """Write every recorded warning to the log (``log_file``, else the ``py.warnings`` logger) once per
    place, and this package's to ``console`` once per message, as ``warning: MESSAGE``."""
    logged, shown = set(), set()
    for item in caught:
        text = warnings.formatwarning(item.message, item.category, item.filename, item.lineno).rstrip()
        if text not in logged:
            logged.add(text)
            if log_file is not None:
                log_file.write(text + "\n")
            else:
                logging.getLogger("py.warnings").warning("%s", text)
        message = str(item.message)
        if raised_by_package(item) and message not in shown:
            shown.add(message)
            print(f"warning: {message}", file=console)


@contextlib.contextmanager
def surfaced_warnings():
    """Record the warnings raised in the block; when it ends (also by an exception), log them all and print
    this package's on stderr (see :func:`report_warnings`)."""
    caught: List[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # "default" would drop one already shown earlier in the process
            yield
    finally:
        report_warnings(caught, sys.stderr)


@contextlib.contextmanager
def quiet(log_path: Path):
    """Send everything a stage prints or logs (Python and C level, worker processes too) to ``log_path``;
    the package's warnings are repeated on the console when the stage ends (:func:`report_warnings`).

    Standard output and error are redirected at the file-descriptor level, so data loader workers
    and native libraries land in the file as well; logging handlers the stage installs (open_clip_train
    adds a console handler to the root logger) are removed afterwards.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    caught: List[warnings.WarningMessage] = []
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield log
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            for handler in list(root.handlers):
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(level)
            report_warnings(caught, sys.stderr, log_file=log)

"""Keep a long stage's output off the console: everything it prints or logs goes to a file.

Used by the quickstart (each stage) and the reproduction (each benchmark), so that a newcomer's console
shows one line per stage and the logs stay next to the results.
"""
import contextlib
import logging
import os
import sys
from pathlib import Path


@contextlib.contextmanager
def quiet(log_path: Path):
    """Send everything a stage prints or logs (Python and C level, worker processes too) to ``log_path``.

    Standard output and error are redirected at the file-descriptor level, so data loader workers
    and native libraries land in the file as well; logging handlers the stage installs (open_clip_train
    adds a console handler to the root logger) are removed afterwards.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
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

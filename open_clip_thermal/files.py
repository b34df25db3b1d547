"""Writing files so that a reader, or a crash, never sees half of one: the package's one atomic-write rule.

Every writer of a file that another step reads back (adapter folders, exports, checkpoints, manifests,
caches, annotation files) goes through :func:`atomic_write`: the content is written to a temporary
file in the destination folder, flushed to disk, and renamed over the destination (``os.replace`` is
atomic on POSIX and Windows). A process killed at any point leaves either the old file or the new
one, plus at most a ``*.tmp`` file that the next write does not trip over. :func:`atomic_replace_dir`
does the same for a folder of files.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def _fsync(path: PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write(path: PathLike, write: Callable[[str], Any], mode: int = None) -> Path:
    """Call ``write(temporary_path)``, then move the finished file to ``path`` in one rename.

    Args:
        path: destination; its folder is created if needed.
        write: writes the whole content to the path it is given (e.g. ``lambda t: torch.save(x, t)``).
        mode: permission bits for the result (temporary files are private, 0o600).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, mode: int = None) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), mode)


def atomic_write_json(path: PathLike, content: Any, **dump_options) -> Path:
    """:func:`atomic_write` of ``content`` as indented JSON with a final newline."""
    options = {"indent": 2, **dump_options}
    return atomic_write_text(path, json.dumps(content, **options) + "\n")


def atomic_replace_dir(folder: PathLike, fill: Callable[[Path], Any]) -> Path:
    """Build a folder with ``fill(temporary_folder)``, then swap it in for ``folder``.

    Between the two renames of a replacement the old folder exists as ``NAME.old``; a crash there
    leaves that copy rather than nothing.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

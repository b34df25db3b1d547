"""The package's file layer: the one atomic-write rule, and reading back the folders it writes.

Every writer of a file that another step reads back (adapter folders, exports, checkpoints, manifests,
caches, annotation files) goes through :func:`atomic_write`: the content is written to a temporary
file in the destination folder, flushed to disk, and renamed over the destination (``os.replace`` is
atomic on POSIX and Windows). A process killed at any point leaves either the old file or the new
one, plus at most a ``*.tmp`` file that the next write does not trip over. :func:`atomic_write_all`
writes a set of files (a report) so that a failure while writing leaves all of them as they were, and
:func:`atomic_replace_dir` does the same for a folder of files.

Saved model folders (LoRA adapter folders, CLIP-Adapter folders) share two file names,
:data:`CONFIG_NAME` and :data:`WEIGHTS_NAME`, and are read back through :func:`read_config_file` and
:func:`read_weights_file`, which turn every way a file can be missing or broken into one
:class:`AdapterError` naming the file; :func:`check_finite` refuses NaN/inf weights before they are
written (:func:`first_non_finite` is its rule, also used by the trainer's checkpoint guard).
Standard library only at import time (``convert --help`` imports this module): torch and safetensors
are imported inside the functions that need them.
"""
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # annotations only; imported lazily where used
    import torch

PathLike = Union[str, os.PathLike]

CONFIG_NAME = "adapter_config.json"  # the JSON description of a saved folder (PEFT's name)
WEIGHTS_NAME = "adapter_model.safetensors"  # its weights, never pickled (PEFT's name)


class AdapterError(ValueError):
    """An adapter folder that is missing, corrupt or does not fit the model."""


def _fsync(path: PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _new_beside(path: Path, make: Callable[[Path], Any]) -> Path:
    """``make`` a new, uniquely named temporary entry beside ``path`` (``FileExistsError``: draw again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue


def _temporary_beside(path: Path) -> str:
    # Created as open(path, 'w') / mkdir would be (0o666 / 0o777 less the umask, applied by the system),
    # not with mkstemp's / mkdtemp's private 0o600 / 0o700: renamed into place, those would make every
    # result (adapters, checkpoints, results.json) unreadable to the rest of a shared project group.
    return str(_new_beside(path, lambda tmp: os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))))


def _existing_mode(path: Path) -> Optional[int]:
    """The permission bits of an existing ``path`` (a rewrite keeps them, as writing in place would), or None."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def atomic_write(path: PathLike, write: Callable[[str], Any], mode: int = None) -> Path:
    """Call ``write(temporary_path)``, then move the finished file to ``path`` in one rename.

    Args:
        path: destination; its folder is created if needed.
        write: writes the whole content to the path it is given (e.g. ``lambda t: torch.save(x, t)``).
        mode: permission bits for the result (default: what a plain ``open`` would give: the existing
            file's, else 0o666 less the umask).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_all([(path, write)], mode)[0]


def atomic_write_all(writes: Sequence[Tuple[PathLike, Callable[[str], Any]]], mode: int = None) -> List[Path]:
    """Write several files as one step: every ``write(temporary_path)`` first, then the renames, in order.

    A failure in any ``write`` (or a kill before the renames) leaves every destination as it was. Only a
    crash between two renames, after all content is on disk, can leave some files new and others old;
    so name last the file whose presence readers take to mean the set is complete (a report's JSON).

    Args:
        writes: ``(destination, write)`` pairs, as for :func:`atomic_write`.
        mode: permission bits for every result.

    Returns:
        the destinations as :class:`~pathlib.Path`.
    """
    paths = [Path(path) for path, _ in writes]
    temporaries: List[str] = []
    try:
        for path, (_, write) in zip(paths, writes):
            temporaries.append(_temporary_beside(path))
            write(temporaries[-1])
            _fsync(temporaries[-1])
            keep = _existing_mode(path) if mode is None else mode
            if keep is not None:
                os.chmod(temporaries[-1], keep)
        for path, tmp in zip(paths, temporaries):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temporaries:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return paths


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
    tmp = _new_beside(folder, lambda path: path.mkdir(0o777))  # as mkdir would (see _temporary_beside)
    try:
        keep = _existing_mode(folder)  # a replaced folder keeps its own bits
        if keep is not None:
            os.chmod(tmp, keep)
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


# ----------------------------------------------------------------------------- saved model folders
def read_config_file(folder: PathLike, expected_format: str, required: Iterable[str], what: str) -> dict:
    """Parse ``folder/adapter_config.json`` and check its format tag and required keys.

    Args:
        folder: the saved folder.
        expected_format: the ``format`` value the file must hold.
        required: keys the file must have.
        what: the folder's kind in error messages (``'open_clip_thermal adapter'``, ``'CLIP-Adapter'``).

    Raises:
        AdapterError: naming the file, for a missing file, invalid JSON, another format or a missing key.
    """
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"no {CONFIG_NAME} in {what} folder {folder}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{what} config {path} is not valid JSON: {e}") from None
    if config.get("format") != expected_format:
        raise AdapterError(f"{path} is not a valid {what} config (format={config.get('format')!r})")
    for key in required:
        if key not in config:
            raise AdapterError(f"{what} config {path} lacks {key!r}")
    return config


def read_weights_file(path: PathLike, what: str) -> Dict[str, "torch.Tensor"]:
    """Load a safetensors file; :class:`AdapterError` names the file when it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise AdapterError(f"{what} weights {path} missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{what} weights {path} cannot be read: {e}") from None


def first_non_finite(tensors: Iterable[Tuple[str, Any]]) -> Optional[str]:
    """The name of the first floating-point tensor holding NaN/inf in ``(name, value)`` pairs, or None.

    The package's one non-finite rule: integer tensors and values that are not tensors (an optimizer's
    plain ``step`` counts, say) are not checked.
    """
    import torch
    for name, value in tensors:
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def check_finite(tensors: Mapping[str, "torch.Tensor"], what: str) -> None:
    """Refuse to write NaN/inf weights: :class:`AdapterError` naming the tensor and ``what`` was to be written."""
    bad = first_non_finite(tensors.items())
    if bad is not None:
        raise AdapterError(f"refusing to write {what}: {bad} holds non-finite values (NaN/inf)")

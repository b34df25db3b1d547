"""What to index: image files found in folders (recursively) or named in file lists, and shard samples.

Every stored embedding is identified by an *id* and a *fingerprint*:

* a file: id = its absolute path, fingerprint = (size, mtime_ns); a file whose size or mtime changed
  is embedded again, an unchanged one is skipped;
* a shard sample: id = ``SHARD_PATH#KEY``, fingerprint = the shard's (size, mtime_ns); a shard that
  was read to its end with an unchanged fingerprint is not opened again.

Listing is torch-free (and webdataset-free): ``--help`` and argument checks import neither.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..contracts import THERMAL_EXTENSIONS
from .errors import SearchError

SHARD_ID_SEPARATOR = "#"  # between a shard's path and a sample key in the id of a shard sample
FILE_SOURCE = "file"
SHARD_SOURCE = "shard"


class SourceError(SearchError):
    """A folder, file list or shard spec that cannot be indexed (the message names it)."""


@dataclass(frozen=True)
class FileItem:
    """One image file to embed."""
    path: str  # absolute; the id of the stored row
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> Tuple[int, int]:
        return self.size, self.mtime_ns

    def record(self) -> Dict:
        """The row record stored next to the embedding."""
        return {"path": self.path, "source": FILE_SOURCE, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class Shard:
    """One WebDataset shard (tar) whose samples are embedded."""
    url: str  # absolute path for local shards
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> Tuple[int, int]:
        return self.size, self.mtime_ns


@dataclass
class SourceSet:
    """Everything an ``index`` run was asked to look at."""
    files: List[FileItem] = field(default_factory=list)
    shards: List[Shard] = field(default_factory=list)
    roots: List[str] = field(default_factory=list)  # the folders, lists and shard specs given, for the log

    def __len__(self) -> int:
        return len(self.files) + len(self.shards)


def is_image_file(name: str) -> bool:
    """Whether ``name`` has one of the thermal extensions the loader and the benchmark read."""
    return Path(name).suffix.lower().lstrip(".") in THERMAL_EXTENSIONS


def shard_sample_id(url: str, key: str) -> str:
    """The stored id of sample ``key`` of shard ``url``."""
    return f"{url}{SHARD_ID_SEPARATOR}{key}"


def _file_item(path: Path, what: str) -> FileItem:
    try:
        stat = path.stat()
    except OSError as error:
        raise SourceError(f"{what}: cannot read {path}: {error.strerror or error}") from None
    return FileItem(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def scan_folder(folder) -> List[FileItem]:
    """Every thermal image under ``folder`` (recursive, sorted, hidden entries left out).

    Raises:
        SourceError: ``folder`` is not a folder, or holds no image with a thermal extension.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SourceError(f"--folder {folder}: not a folder")
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(name):
                items.append(_file_item(Path(dirpath) / name, f"--folder {folder}"))
    if not items:
        raise SourceError(f"--folder {folder}: no images with extensions {', '.join(THERMAL_EXTENSIONS)} in it "
                          "or its sub-folders")
    return items


def read_file_list(list_file) -> List[FileItem]:
    """The images named in a text file, one path per line (relative to the list's folder; '#' comments).

    Raises:
        SourceError: the list cannot be read, is empty, or names a file that does not exist.
    """
    list_path = Path(list_file)
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"--list {list_file}: cannot read it ({error})") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise SourceError(f"--list {list_file}: names no image")
    items = []
    for number, name in enumerate(names, 1):
        path = Path(name) if Path(name).is_absolute() else list_path.parent / name
        if not path.is_file():
            raise SourceError(f"--list {list_file}: entry {number} {name!r} is not a file")
        items.append(_file_item(path, f"--list {list_file}"))
    return items


def expand_shards(spec: str) -> List[Shard]:
    """The shards of a brace pattern or ``::`` list (the training loader's expansion); local files only.

    Raises:
        SourceError: no shard, a missing shard, a shard named twice, or a remote URL (its content
            cannot be fingerprinted, so an incremental index could not tell it changed).
    """
    from ..data.sources import ShardListError, expand_urls  # webdataset: only when shards are given

    try:
        urls = expand_urls(spec, split_items=True, check_exists=True)
    except ShardListError as error:
        raise SourceError(f"--shards {spec}: {error}") from None
    shards = []
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            raise SourceError(f"--shards {spec}: {url!r} is not a local file (only local shards can be indexed "
                              "incrementally: copy it here first)")
        stat = os.stat(url)
        shards.append(Shard(os.path.abspath(url), stat.st_size, stat.st_mtime_ns))
    return shards


def collect_sources(folders: Iterable = (), lists: Iterable = (), shards: Iterable[str] = ()) -> SourceSet:
    """Scan every folder, read every list and expand every shard spec; files named twice count once.

    Raises:
        SourceError: nothing was given, or one of them is unusable (see the functions above).
    """
    found = SourceSet()
    seen = set()
    for kind, values, read in (("folder", folders, scan_folder), ("list", lists, read_file_list)):
        for value in values:
            found.roots.append(f"{kind} {value}")
            for item in read(value):
                if item.path not in seen:
                    seen.add(item.path)
                    found.files.append(item)
    for spec in shards:
        found.roots.append(f"shards {spec}")
        for shard in expand_shards(spec):
            if shard.url not in seen:
                seen.add(shard.url)
                found.shards.append(shard)
    if not found.roots:
        raise SourceError("nothing to index: give --folder, --list or --shards")
    return found


def as_source_set(source) -> SourceSet:
    """The Python API's shorthand: a :class:`SourceSet`, a folder, or a sequence of image file paths."""
    if isinstance(source, SourceSet):
        return source
    if isinstance(source, (str, os.PathLike)):
        return collect_sources(folders=[source])
    paths: Sequence = list(source)
    found = SourceSet(roots=[f"{len(paths)} files"])
    for value in paths:
        path = Path(value)
        if not path.is_file():
            raise SourceError(f"{value}: not a file")
        found.files.append(_file_item(path, str(value)))
    return found


def unchanged(record: Optional[Dict], fingerprint: Tuple[int, int]) -> bool:
    """Whether a stored row ``record`` was made from content with this ``fingerprint``."""
    return record is not None and (record.get("size"), record.get("mtime_ns")) == tuple(fingerprint)

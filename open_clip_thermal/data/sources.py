"""Shard URLs: expand patterns, open local / file:// / http(s) / pipe: / fsspec URLs, read tars, read sizes.json.

Local paths and ``file://`` are opened directly, ``http(s)://`` with ``urllib`` (never webdataset's
``gopen``, which runs ``curl`` through a shell with the URL pasted into the command line, so a quote
in a URL ran a command), ``pipe:`` (a shell command by definition, written by the user) with
webdataset's ``gopen``; every other scheme (``s3://``, ``gs://``, ``hf://``...) goes through fsspec and
needs its back-end package (``s3fs``, ``gcsfs``...).

Tars are read with :func:`read_tar_files`, which, unlike webdataset's reader (Python's ``tarfile``
in stream mode), does not take a damaged header or a missing end-of-archive marker for the end of
the shard: it raises :class:`ShardReadError` naming the shard.
"""
import json
import logging
import os
import posixpath
import re
import shutil  # noqa: F401 - kept: tests patch sources.shutil.which (curl is no longer used)
import tarfile
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union
from urllib.parse import urlparse

import braceexpand
import fsspec
import webdataset as wds

log = logging.getLogger(__name__)

_HTTP_SCHEMES = ("http", "https")
HTTP_TIMEOUT_S = 60  # per connect / read of an http(s) shard, so a stalled server cannot hang a worker


class ShardReadError(OSError):
    """A shard cannot be opened or read to its end; ``url`` is the shard, ``reason`` what went wrong."""

    def __init__(self, url: str, reason: Optional[str] = None):
        super().__init__(url if reason is None else f"shard {url}: {reason}")
        self.url, self.reason = url, reason

    def __reduce__(self):  # picklable across DataLoader workers
        return type(self), (self.url, self.reason)


def _scheme(url: str) -> str:
    scheme = urlparse(url).scheme
    return "" if len(scheme) == 1 else scheme  # a Windows drive letter is not a scheme


def shard_identity(url: str) -> str:
    """What makes two spellings the same shard: the real path of a local file, else the URL itself."""
    scheme = _scheme(url)
    if scheme == "":
        return os.path.realpath(url)
    if scheme == "file":
        return os.path.realpath(urlparse(url).path)
    return url


def duplicate_shards(urls: Sequence[str]) -> List[tuple]:
    """``(first spelling, repeated spelling)`` for every shard that ``urls`` name more than once."""
    seen: Dict[str, str] = {}
    repeats = []
    for url in urls:
        identity = shard_identity(url)
        if identity in seen:
            repeats.append((seen[identity], url))
        else:
            seen[identity] = url
    return repeats


class ShardListError(ValueError):
    """A shard list that cannot be used: ``problem`` is ``'empty'``, ``'missing'`` or ``'repeat'``.

    ``spec`` is what was given, ``urls`` the expanded shard URLs, ``missing`` the local shards that do
    not exist (``'missing'``), ``repeats`` the ``(first, repeated)`` spellings (``'repeat'``), so a
    caller (the benchmark) can word its own error from the same facts.
    """

    def __init__(self, message: str, problem: str, spec: Any = None, urls: Sequence[str] = (),
                 missing: Sequence[str] = (), repeats: Sequence[tuple] = ()):
        super().__init__(message)
        self.problem, self.spec = problem, spec
        self.urls, self.missing, self.repeats = list(urls), list(missing), list(repeats)

    def __reduce__(self):  # picklable across DataLoader workers
        return type(self), (str(self), self.problem, self.spec, self.urls, self.missing, self.repeats)


def _split_patterns(urls: Union[str, Sequence[str]], split_items: bool) -> List[str]:
    if not split_items:  # training loader: a str is split on '::', list items are taken as given
        patterns = urls.split("::") if isinstance(urls, str) else list(urls)
        return [pattern for pattern in patterns if pattern]
    parts = [urls] if isinstance(urls, str) else list(urls)  # benchmark: every item split and stripped
    return [piece.strip() for part in parts for piece in str(part).split("::") if piece.strip()]


def expand_urls(urls: Union[str, Sequence[str]], *, split_items: bool = False,
                check_exists: bool = False) -> List[str]:
    """Expand ``::``-joined brace patterns (or a list of them) into a flat list of shard URLs.

    The one shard-list expansion of the package: the training loader calls it as is, the benchmark
    (:func:`open_clip_thermal.evaluation.shard_reader.expand_urls`) with ``split_items=True`` (list items are
    split on ``::`` too and stripped) and ``check_exists=True`` (a local shard that does not exist
    fails here, naming the file), wrapping the error into a ``BenchmarkError``.

    Raises:
        ShardListError (a ValueError): no URL at all, a missing local shard (``check_exists``), or a
            shard named twice (also as another spelling of the same local file): it would be read
            twice per epoch and counted twice in ``sizes.json``, or, when resampling, drawn twice as
            often as the others.
    """
    expanded = [url for pattern in _split_patterns(urls, split_items) for url in braceexpand.braceexpand(pattern)]
    if not expanded:
        raise ShardListError(f"no shard URLs in {urls!r}", "empty", urls)
    if check_exists:
        missing = [u for u in expanded if "://" not in u and not os.path.isfile(u)]
        if missing:
            raise ShardListError(f"{len(missing)} of {len(expanded)} shards do not exist, e.g. {missing[0]!r}",
                                 "missing", urls, expanded, missing=missing)
    repeats = duplicate_shards(expanded)
    if repeats:
        first, again = repeats[0]
        same = "" if first == again else f" (also as {again!r})"
        raise ShardListError(f"shard {first!r} is given twice{same}; {len(repeats)} repeat(s) in {len(expanded)} "
                             f"shard URLs: name each shard once (a repeated shard would be read twice per epoch, "
                             f"counted twice in the epoch size, or drawn twice as often when resampling)",
                             "repeat", urls, expanded, repeats=repeats)
    return expanded


def open_url(url: str):
    """Open a shard (or any file) URL for binary reading, without a shell (except ``pipe:``, which is one).

    Raises:
        ShardReadError: an http(s) URL that cannot be opened (the message names it).
        ValueError: the scheme needs an fsspec back-end that is not installed.
    """
    scheme = _scheme(url)
    if scheme == "":
        return open(url, "rb")
    if scheme == "file":
        return open(urlparse(url).path, "rb")
    if scheme == "pipe":
        return wds.gopen(url, "rb")
    if scheme in _HTTP_SCHEMES:
        try:
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)  # noqa: S310 - http(s) only
        except Exception as exc:  # HTTP errors, refused connections, URLs http.client refuses to send
            raise ShardReadError(url, f"cannot open: {type(exc).__name__}: {exc}") from exc
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as exc:
        raise ValueError(f"cannot open {url}: the fsspec back-end for {scheme}:// is not installed ({exc})") from exc


_META_MEMBER = re.compile(r"__[^/]*__($|/)")


class _CheckedTarInfo(tarfile.TarInfo):
    """TarInfo whose damaged headers are errors: stream-mode ``tarfile`` takes them for the archive's end."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise  # an all-zero block: the regular end of the archive
        except tarfile.EmptyHeaderError:
            raise _TarDamage(f"ends at byte {tar.offset} without an end-of-archive marker (truncated?)") from None
        except tarfile.HeaderError as exc:
            raise _TarDamage(f"corrupt tar header at byte {tar.offset} ({exc})") from None


class _TarDamage(Exception):
    """Raised inside ``tarfile``; not a ``tarfile.HeaderError``, so ``TarFile.next`` lets it through."""


def read_tar_files(stream, url: str) -> Iterator[Dict[str, Any]]:
    """``{'fname', 'data', '__url__'}`` for each regular file of a tar stream, to the archive's real end.

    Closes ``stream`` when done.

    Raises:
        ShardReadError: naming ``url``: a corrupt header, a shard cut short, a member that cannot
            be read. The members before the damage have been yielded; the rest of the shard is lost.
    """
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo)
        for info in archive:
            if not info.isreg() or _META_MEMBER.match(info.name):  # as webdataset's tar_file_iterator skips
                continue
            data = archive.extractfile(info).read()
            archive.members = []  # stream mode: keep no index of what was read
            yield dict(fname=info.name, data=data, __url__=url)
    except _TarDamage as exc:
        raise ShardReadError(url, str(exc)) from None
    except ShardReadError:
        raise
    except Exception as exc:  # tarfile.ReadError, a stream cut mid-member, socket timeouts...
        raise ShardReadError(url, f"unreadable tar: {type(exc).__name__}: {exc}") from exc
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def expand_tar_files(data: Iterable[Dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[Dict[str, Any]]:
    """Files of every opened shard; a damaged shard goes to ``handler`` (count and go on, or raise)."""
    for source in data:
        try:
            yield from read_tar_files(source["stream"], source["url"])
        except Exception as exc:
            if handler(exc):
                continue
            break


def _open_shards(data: Iterable[Dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[Dict[str, Any]]:
    for sample in data:
        url = sample["url"]
        try:
            yield dict(sample, stream=open_url(url))
        except Exception as exc:  # any failure to open a shard goes to the handler
            if not isinstance(exc, ShardReadError):
                exc.args = exc.args + (url,)
            if handler(exc):
                continue
            break


open_shards = wds.pipelinefilter(_open_shards)


def _sizes_url(shard_url: str) -> Optional[str]:
    if shard_url.startswith("pipe:"):
        return None
    return posixpath.join(shard_url.rsplit("/", 1)[0], "sizes.json") if "/" in shard_url else "sizes.json"


def read_dataset_size(urls: Union[str, Sequence[str]]) -> Optional[int]:
    """Total samples of the shards, from the ``sizes.json`` next to them (as open_clip_train reads it).

    Returns:
        the sample count, or None when a shard folder has no ``sizes.json`` (or the URL is a pipe).

    Raises:
        ValueError: a shard is missing from its folder's ``sizes.json``.
    """
    tables: Dict[str, Optional[Dict[str, int]]] = {}
    total = 0
    for url in expand_urls(urls):
        sizes_url = _sizes_url(url)
        if sizes_url is None:
            return None
        if sizes_url not in tables:
            try:
                with open_url(sizes_url) as handle:
                    tables[sizes_url] = json.loads(handle.read())
            except Exception as exc:  # absent or unreadable: the caller must give num_samples
                log.debug("no sizes.json at %s: %s", sizes_url, exc)
                tables[sizes_url] = None
        table = tables[sizes_url]
        if table is None:
            return None
        name = url.rsplit("/", 1)[-1]
        if name not in table:
            raise ValueError(f"shard {name} is not listed in {sizes_url}")
        total += int(table[name])
    return total

"""Shard URLs: expand patterns, open local / file:// / http(s) / pipe: / fsspec URLs, read sizes.json.

webdataset's ``gopen`` handles local paths, ``file://``, ``pipe:`` and (through the ``curl``
command) ``http(s)://``. Where ``curl`` is missing, http(s) falls back to ``urllib``; every other
scheme (``s3://``, ``gs://``, ``hf://``...) goes through fsspec and needs its back-end package
(``s3fs``, ``gcsfs``...).
"""
import json
import logging
import posixpath
import shutil
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union
from urllib.parse import urlparse

import braceexpand
import fsspec
import webdataset as wds

log = logging.getLogger(__name__)

_GOPEN_SCHEMES = ("", "file", "pipe")
_HTTP_SCHEMES = ("http", "https")


def expand_urls(urls: Union[str, Sequence[str]]) -> List[str]:
    """Expand ``::``-joined brace patterns (or a list of them) into a flat list of shard URLs."""
    patterns = urls.split("::") if isinstance(urls, str) else list(urls)
    expanded = [url for pattern in patterns if pattern for url in braceexpand.braceexpand(pattern)]
    if not expanded:
        raise ValueError(f"no shard URLs in {urls!r}")
    return expanded


def open_url(url: str):
    """Open a shard (or any file) URL for binary reading.

    Raises:
        ValueError: the scheme needs an fsspec back-end that is not installed.
    """
    scheme = urlparse(url).scheme
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    if scheme in _GOPEN_SCHEMES or (scheme in _HTTP_SCHEMES and shutil.which("curl")):
        return wds.gopen(url, "rb")
    if scheme in _HTTP_SCHEMES:
        return urllib.request.urlopen(url)  # noqa: S310 - the user chose the URL
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as exc:
        raise ValueError(f"cannot open {url}: the fsspec back-end for {scheme}:// is not installed ({exc})") from exc


def _open_shards(data: Iterable[Dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[Dict[str, Any]]:
    for sample in data:
        url = sample["url"]
        try:
            yield dict(sample, stream=open_url(url))
        except Exception as exc:  # any failure to open a shard goes to the handler
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

"""Read benchmark shards (layout in docs/contracts.md) in their fixed on-disk order.

The benchmark needs the raw caption strings (repeated captions share a hit group), the sample keys
(to check that every model saw the same samples) and the metadata (geometry groups), so it reads
the tars itself instead of going through the training loader's tokenised batches.
"""
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from webdataset.tariterators import group_by_keys

from ..contracts import CAPTION_FIELDS, FINE_GRAINED, GLOBAL, METADATA_KEY
# The thermal members the training loader reads (a superset of what the converter writes), in the
# loader's order of preference: the benchmark decodes the same member of a sample as training did.
from ..contracts import THERMAL_EXTENSIONS as IMAGE_EXTENSIONS
from ..data.decode import ThermalNorm, decode_with, thermal_to_pil
from ..data.shard_writer import SHARD_NAME
from ..data import sources
from ..data.sources import ShardListError, ShardReadError, open_url, read_tar_files
from .errors import BenchmarkError


@dataclass
class SampleIndex:
    """Everything about the test set except the pixels, in shard order."""
    keys: List[str] = field(default_factory=list)
    captions: Dict[str, List[Optional[str]]] = field(default_factory=lambda: {GLOBAL: [], FINE_GRAINED: []})
    metas: List[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def missing_captions(self, caption_type: str) -> int:
        """Number of samples without a caption of ``caption_type``."""
        return sum(c is None for c in self.captions[caption_type])


def expand_urls(spec: Union[str, Sequence[str]]) -> List[str]:
    """Shard list from a brace pattern, a ``::``-separated list (OpenCLIP style) or a list of those.

    Local paths are checked for existence so a typo fails here, naming the file. The expansion is
    :func:`open_clip_thermal.data.sources.expand_urls` (the training loader's); this wraps its error.
    """
    try:
        return sources.expand_urls(spec, split_items=True, check_exists=True)
    except ShardListError as error:
        if error.problem == "empty":
            raise BenchmarkError(f"no shards in --data {spec!r}: the shard list is empty") from None
        if error.problem == "missing":
            raise BenchmarkError(f"{len(error.missing)} of {len(error.urls)} shards do not exist, "
                                 f"e.g. {error.missing[0]!r}") from None
        # the same pairs twice would weigh double in every recall
        first, again = error.repeats[0]
        same = "" if first == again else f" (also as {again!r})"
        raise BenchmarkError(f"shard {first!r} is given twice in --data{same}; {len(error.repeats)} repeat(s) in "
                             f"{len(error.urls)} shards: name each test shard once") from None


def unlisted_shards(urls: Sequence[str]) -> Dict[str, List[str]]:
    """Shards of the same split that ``urls`` leave out: ``{'DIR/STEM': [missing names]}``.

    Read from the ``sizes.json`` the converter writes beside local shards (``STEM-NNNNNN.tar``, where
    STEM is ``prefix-split``); a split evaluated on part of its shards gives numbers that cannot be
    compared with the full test set's. Remote URLs and folders without ``sizes.json`` are not checked; a damaged ``sizes.json`` is a warning.
    """
    given: Dict[Tuple[str, str], set] = {}
    for url in urls:
        match = SHARD_NAME.match(os.path.basename(url))
        if "://" in url or match is None:
            continue
        given.setdefault((os.path.dirname(os.path.abspath(url)), match["stem"]), set()).add(os.path.basename(url))
    missing: Dict[str, List[str]] = {}
    for (folder, stem), names in given.items():
        sizes = os.path.join(folder, "sizes.json")
        try:
            with open(sizes, encoding="utf-8") as f:
                listed = json.load(f)
        except FileNotFoundError:
            continue  # not written by our converter: nothing to compare with
        except (OSError, ValueError) as error:
            # Damaged: the completeness check cannot run, which the user must know.
            warnings.warn(f"{sizes} cannot be read ({error}); not checking whether --data names every shard "
                          f"of {stem}-*")
            continue
        same_split = {n for n in listed if (m := SHARD_NAME.match(n)) is not None and m["stem"] == stem}
        if same_split - names:
            missing[os.path.join(folder, stem)] = sorted(same_split - names)
    return missing


def _iter_raw_samples(urls: Sequence[str]) -> Iterator[dict]:
    # The training loader's opener (no shell for http(s)) and tar reader (a corrupt header or a cut
    # shard is an error, not a shorter test set), grouped into samples as webdataset groups them.
    for url in urls:
        try:
            yield from group_by_keys(read_tar_files(open_url(url), url))
        except ShardReadError as error:
            raise BenchmarkError(f"cannot read shard {url!r}: {error.reason or error}") from None
        except Exception as error:  # tarfile/IO errors surface from deep inside webdataset
            raise BenchmarkError(f"cannot read shard {url!r}: {type(error).__name__}: {error}") from None


def _text(sample: dict, name: str) -> Optional[str]:
    value = sample.get(name)
    return value.decode("utf-8").strip() if value is not None else None


def _image_field(sample: dict) -> Optional[str]:
    return next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)


def read_sample_index(urls: Sequence[str]) -> SampleIndex:
    """Keys, captions and metadata of every sample, without decoding images.

    Raises:
        BenchmarkError: a shard cannot be read, holds no samples, or a sample has no thermal image.
    """
    index = SampleIndex()
    for sample in _iter_raw_samples(urls):
        key = sample["__key__"]
        if _image_field(sample) is None:
            raise BenchmarkError(f"sample {key!r} in {sample.get('__url__')} has no thermal image "
                                 f"({'/'.join(IMAGE_EXTENSIONS)})")
        index.keys.append(key)
        for caption_type, name in CAPTION_FIELDS.items():
            index.captions[caption_type].append(_text(sample, name))
        meta = sample.get(METADATA_KEY)
        index.metas.append(json.loads(meta) if meta is not None else {})
    if not index.keys:
        raise BenchmarkError(f"the {len(urls)} shard(s) given hold no samples (first: {urls[0]!r})")
    return index


def _decode(sample: dict, norm: Optional[ThermalNorm] = None) -> Image.Image:
    # Same decoding as training: the normalisation the variant's adapters recorded (or --thermal-norm),
    # percentile by default, so scores are comparable.
    ext = _image_field(sample)
    try:
        return thermal_to_pil(decode_with(sample[ext], ext, norm))
    except Exception as error:
        raise BenchmarkError(f"sample {sample['__key__']!r} in {sample.get('__url__')}: cannot decode its "
                             f".{ext} image: {error}") from None


def iter_image_batches(urls: Sequence[str], preprocess: Callable, batch_size: int,
                       norm: Optional[ThermalNorm] = None) -> Iterator[Tuple[List[str], torch.Tensor]]:
    """(keys, preprocessed image batch) in shard order, frames decoded with ``norm`` (None: percentile)."""
    keys: List[str] = []
    images: List[torch.Tensor] = []
    for sample in _iter_raw_samples(urls):
        keys.append(sample["__key__"])
        images.append(preprocess(_decode(sample, norm)))
        if len(keys) == batch_size:
            yield keys, torch.stack(images)
            keys, images = [], []
    if keys:
        yield keys, torch.stack(images)


def data_fingerprint(urls: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(url, size, mtime_ns) per shard; a rewritten shard changes its size or mtime."""
    parts = []
    for url in urls:
        if "://" in url:
            parts.append((url, -1, -1))  # remote: identified by URL only
        else:
            stat = os.stat(url)
            parts.append((os.path.abspath(url), stat.st_size, stat.st_mtime_ns))
    return parts

"""Thermal-aware WebDataset streaming: shards -> (image, caption tokens) for OpenCLIP training.

The pipeline mirrors open_clip_train's ``get_wds_dataset`` (seeded shard shuffle, node then worker
split, optional resampling with replacement, sample shuffle buffer, ``with_epoch``) but decodes the
thermal image from its raw bytes (16-bit aware, see :mod:`.decode`) and can hand out the global
caption (``txt``), the fine-grained one (``fg.txt``), both, or a seeded 50:50 mix.

Stages follow webdataset's convention: a private generator ``_stage(data, ...)`` and a curried
public name built with ``webdataset.pipelinefilter``.
"""
import hashlib
import json
import logging
import math
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import webdataset as wds
from open_clip_train.data import DataInfo, SharedEpoch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from ..contracts import FG_CAPTION_KEY, FINE_GRAINED, GLOBAL, GLOBAL_CAPTION_KEY, METADATA_KEY, MIXED, THERMAL_EXTENSIONS
from .decode import NORM_MODES, ThermalDecodeError, ThermalNorm, decode_thermal, thermal_to_pil
from .sources import ShardReadError, expand_tar_files, expand_urls, open_shards, read_dataset_size

log = logging.getLogger(__name__)

CAPTION_MODES = (GLOBAL, FINE_GRAINED, "both", MIXED)

EpochLike = Union[int, SharedEpoch]


def _epoch_value(epoch: EpochLike) -> int:
    return epoch.get_value() if isinstance(epoch, SharedEpoch) else int(epoch)


def _worker() -> Tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def resolve_rank(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """Rank and world size: explicit values, else torch.distributed, else env RANK/WORLD_SIZE, else (0, 1)."""
    if rank is not None and world_size is not None:
        resolved = (int(rank), int(world_size))
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        resolved = (torch.distributed.get_rank(), torch.distributed.get_world_size())
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        resolved = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    else:
        resolved = (0, 1)
    if not 0 <= resolved[0] < resolved[1]:
        raise ValueError(f"rank {resolved[0]} is outside world size {resolved[1]}")
    return resolved


class DecodeFailures:
    """Counts samples dropped by this process (one copy per DataLoader worker) and logs each one."""

    def __init__(self, strict: bool = False, keep: int = 100):
        self.strict, self.keep = strict, keep
        self.count = 0
        self.recent: List[Tuple[Optional[str], str]] = []  # (key or url, reason), the first ``keep``

    def record(self, what: Optional[str], reason: str) -> None:
        """Count one failure and log it with the sample key (or shard URL)."""
        self.count += 1
        if len(self.recent) < self.keep:
            self.recent.append((what, reason))
        worker, _ = _worker()
        log.warning("skipping %s (worker %d, %d skipped so far): %s", what, worker, self.count, reason)

    def handle(self, exn: Exception) -> bool:
        """webdataset handler for shard-level errors: count and continue, or re-raise when strict.

        A shard that cannot be opened, or whose tar is damaged (corrupt header, cut short), counts
        once, logged with the shard URL; the samples before the damage have been read, the rest of
        that shard is skipped.
        """
        if self.strict:
            raise exn
        if isinstance(exn, ShardReadError):
            self.record(exn.url, f"{exn.reason}; rest of the shard skipped")
        else:
            self.record(str(exn.args[-1]) if exn.args else None, repr(exn))
        return True


class ShardList(IterableDataset):
    """Every shard once per epoch, in an order shuffled by ``seed + epoch`` (same on every rank)."""

    def __init__(self, urls: List[str], shuffle: bool, seed: int, epoch: EpochLike):
        super().__init__()
        self.urls, self.shuffle, self.seed, self.epoch = urls, shuffle, seed, epoch

    def __iter__(self) -> Iterator[Dict[str, str]]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed + _epoch_value(self.epoch)).shuffle(urls)
        for url in urls:
            yield dict(url=url)


class ResampledShardList(IterableDataset):
    """Shards drawn with replacement, seeded per epoch, rank and worker (for training by steps)."""

    def __init__(self, urls: List[str], seed: int, epoch: EpochLike, rank: int, nshards: int = sys.maxsize):
        super().__init__()
        self.urls, self.seed, self.epoch, self.rank, self.nshards = urls, seed, epoch, rank, nshards

    def __iter__(self) -> Iterator[Dict[str, str]]:
        worker, _ = _worker()
        rng = random.Random(f"{self.seed}:{_epoch_value(self.epoch)}:{self.rank}:{worker}")
        for _ in range(self.nshards):
            yield dict(url=rng.choice(self.urls))


def _reseed_augmentation(data: Iterator, seed: int, epoch: EpochLike, rank: int) -> Iterator:
    """Seed torch/NumPy/Python RNGs of this worker from (seed, epoch, rank, worker) at each epoch start.

    Random augmentations (OpenCLIP's ``RandomResizedCrop``) draw from the worker's global RNGs.
    Persistent workers would otherwise carry their RNG state over from earlier epochs, so a run
    resumed at epoch k would see other crops than the uninterrupted run.
    """
    worker, _ = _worker()
    digest = hashlib.sha256(f"augment:{seed}:{_epoch_value(epoch)}:{rank}:{worker}".encode()).digest()
    value = int.from_bytes(digest[:4], "little")
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    yield from data


reseed_augmentation = wds.pipelinefilter(_reseed_augmentation)


def _split_by_rank(data: Iterator, rank: int, world_size: int) -> Iterator:
    for index, item in enumerate(data):
        if index % world_size == rank:
            yield item


split_by_rank = wds.pipelinefilter(_split_by_rank)


def _tar_samples(data: Iterator, handler: Callable[[Exception], bool]) -> Iterator[Dict[str, Any]]:
    # our tar reader, not webdataset's tar_file_expander: that one ends a shard silently at a corrupt header
    yield from group_by_keys(expand_tar_files(data, handler), handler=handler)


tar_samples = wds.pipelinefilter(_tar_samples)


def _seeded_shuffle(data: Iterator, bufsize: int, seed: int, epoch: EpochLike, rank: int) -> Iterator:
    worker, _ = _worker()
    rng = random.Random(f"{seed}:{_epoch_value(epoch)}:{rank}:{worker}")
    # webdataset's public shuffle stage (its _shuffle with our rng), not detshuffle: that seeds
    # with seed + epoch only, so every rank and worker would draw the same order.
    yield from wds.shuffle(bufsize, min(bufsize, 100), rng=rng)(data)


seeded_shuffle = wds.pipelinefilter(_seeded_shuffle)


def thermal_member(sample: Dict[str, Any]) -> Tuple[str, bytes]:
    """The (extension, bytes) of the thermal image in a shard sample (``rgb.*`` members excluded)."""
    for ext in THERMAL_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    raise ThermalDecodeError(f"no thermal image member ({'/'.join(THERMAL_EXTENSIONS)}) in sample")


def mixed_pick_is_fine_grained(seed: int, epoch: int, key: str) -> bool:
    """The seeded 50:50 caption choice of ``captions='mixed'``: same for a key, seed and epoch everywhere."""
    return hashlib.sha1(f"{seed}:{epoch}:{key}".encode()).digest()[0] & 1 == 1


def _caption_texts(sample: Dict[str, Any], captions: str, seed: int, epoch: int) -> List[str]:
    def text(member: str) -> str:
        if member not in sample:
            raise ThermalDecodeError(f"no {member} member in sample")
        return sample[member].decode("utf-8")
    if captions == GLOBAL:
        return [text(GLOBAL_CAPTION_KEY)]
    if captions == FINE_GRAINED:
        return [text(FG_CAPTION_KEY)]
    if captions == "both":
        return [text(GLOBAL_CAPTION_KEY), text(FG_CAPTION_KEY)]
    fine = mixed_pick_is_fine_grained(seed, epoch, sample["__key__"])
    return [text(FG_CAPTION_KEY if fine else GLOBAL_CAPTION_KEY)]


def _check_first_sample(sample: Dict[str, Any], captions: str) -> None:
    if captions != GLOBAL and FG_CAPTION_KEY not in sample:
        raise ValueError(f"captions={captions!r} needs fine-grained captions ({FG_CAPTION_KEY}), but sample "
                         f"{sample.get('__key__')!r} of shard {sample.get('__url__')} has none; "
                         f"use captions='global' or convert with a fine-grained caption field")


def _thermal_samples(data: Iterator[Dict[str, Any]], preprocess: Callable, tokenizer: Callable, captions: str,
                     norm: str, norm_kwargs: Dict[str, Any], seed: int, epoch: EpochLike, with_meta: bool,
                     failures: DecodeFailures) -> Iterator[Tuple]:
    epoch_now = _epoch_value(epoch)
    first = True
    for sample in data:
        if first:
            _check_first_sample(sample, captions)
            first = False
        key = sample.get("__key__")
        try:
            ext, raw = thermal_member(sample)
            frame = decode_thermal(raw, ext, norm=norm, **norm_kwargs)
            texts = _caption_texts(sample, captions, seed, epoch_now)
            metadata = json.loads(sample[METADATA_KEY]) if METADATA_KEY in sample else {}
        except (ThermalDecodeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if failures.strict:
                raise ValueError(f"sample {key!r} of {sample.get('__url__')}: {exc}") from exc
            failures.record(key, str(exc))
            continue
        image = preprocess(thermal_to_pil(frame))
        tokens = [tokenizer(text)[0] for text in texts]
        item = (image, *tokens)
        if with_meta:
            item += ({"key": key, "url": sample.get("__url__"), "json": metadata},)
        yield item


thermal_samples = wds.pipelinefilter(_thermal_samples)


def check_captions_available(urls: Union[str, Sequence[str]], captions: str) -> None:
    """Read the first sample of the first shard and refuse a caption mode the shards cannot serve.

    Raises:
        ValueError: naming the shard and sample, e.g. ``fine_grained`` on shards without ``fg.txt``.
    """
    shard_urls = expand_urls(urls)
    if not shard_urls:
        raise ValueError(f"no shards match {urls!r}")
    failures = DecodeFailures(strict=True)
    first = wds.DataPipeline(ShardList(shard_urls[:1], shuffle=False, seed=0, epoch=0),
                             open_shards(failures.handle), tar_samples(failures.handle))
    sample = next(iter(first), None)
    if sample is None:
        raise ValueError(f"shard {shard_urls[0]} holds no samples")
    _check_first_sample(sample, captions)


def collate_tuples(samples: List[Tuple]) -> Tuple:
    """Batch a list of tuples: tensors are stacked, anything else (metadata dicts) becomes a list."""
    columns = list(zip(*samples))
    return tuple(torch.stack(column) if isinstance(column[0], torch.Tensor) else list(column) for column in columns)


def resolve_norm(thermal_norm: Union[str, ThermalNorm], norm_kwargs: Optional[Dict[str, Any]] = None) -> ThermalNorm:
    """The loader's normalisation as a checked :class:`ThermalNorm` (``ValueError`` when invalid)."""
    if isinstance(thermal_norm, ThermalNorm):
        if norm_kwargs:
            raise ValueError("give either a ThermalNorm or norm_kwargs, not both")
        return thermal_norm
    if thermal_norm not in NORM_MODES:
        raise ValueError(f"thermal_norm must be one of {NORM_MODES}, got {thermal_norm!r}")
    kwargs = dict(norm_kwargs or {})
    unknown = sorted(set(kwargs) - {"low", "high", "value_range", "stretch_8bit"})
    if unknown:
        raise ValueError(f"unknown norm_kwargs {unknown}; expected low, high, value_range, stretch_8bit")
    if kwargs.get("value_range") is not None:
        kwargs["value_range"] = tuple(kwargs["value_range"])
    return ThermalNorm(mode=thermal_norm, **kwargs)


def make_thermal_dataset(urls: Union[str, Sequence[str]], preprocess: Callable, tokenizer: Callable, *,
                         captions: str = GLOBAL, is_train: bool = True, batch_size: Optional[int] = None,
                         resampled: bool = False, shuffle_buffer: int = 1000, seed: int = 0, epoch: EpochLike = 0,
                         thermal_norm: Union[str, ThermalNorm] = "percentile",
                         norm_kwargs: Optional[Dict[str, Any]] = None,
                         strict: bool = False, with_meta: bool = False, rank: Optional[int] = None,
                         world_size: Optional[int] = None) -> wds.DataPipeline:
    """Build the thermal WebDataset pipeline.

    Args:
        urls: shard URLs: a string of brace patterns joined by ``::`` or a list; local paths,
            ``file://``, ``http(s)://``, ``pipe:`` commands and fsspec URLs (``s3://``...).
        preprocess: the model's OpenCLIP image preprocess (takes an RGB PIL image).
        tokenizer: OpenCLIP tokenizer (``tokenizer(text)[0]`` is one token tensor).
        captions: ``'global'`` (txt), ``'fine_grained'`` (fg.txt), ``'both'`` (two token tensors)
            or ``'mixed'`` (one of the two per sample, seeded 50:50).
        is_train: shuffle shards and samples (seeded); otherwise keep order and emit partial batches.
        batch_size: batch inside the pipeline (tensors stacked); None yields single samples.
        resampled: draw shards with replacement (infinite stream; bound it with ``with_epoch``).
        shuffle_buffer: sample shuffle buffer size when training.
        seed: seed of every random choice (shard order, shuffle buffer, mixed captions).
        epoch: epoch number or an open_clip_train ``SharedEpoch`` (reseeds each epoch).
        thermal_norm: normalisation of >8-bit frames: ``'percentile'``, ``'minmax'`` or ``'fixed'``,
            or a :class:`~open_clip_thermal.data.decode.ThermalNorm` (then without ``norm_kwargs``).
        norm_kwargs: extra arguments of the normalisation (``low``, ``high``, ``value_range``,
            ``stretch_8bit``), checked as :class:`~open_clip_thermal.data.decode.ThermalNorm` checks them.
        strict: stop at the first undecodable sample or unreadable / damaged shard instead of skipping it.
        with_meta: append ``{'key', 'url', 'json'}`` (a list of them when batched) to each item.
        rank: this process's rank; with ``world_size`` None, see :func:`resolve_rank`.
        world_size: number of ranks.

    Returns:
        a ``webdataset.DataPipeline`` yielding ``(image, text)`` or ``(image, text_global, text_fg)``
        (plus the metadata when ``with_meta``). ``pipeline.decode_failures`` counts skipped samples
        and unreadable or damaged shards of the current process.

    Raises:
        ValueError: bad options, or a shard named twice in ``urls`` (see :func:`.sources.expand_urls`).
    """
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")
    norm = resolve_norm(thermal_norm, norm_kwargs)
    shard_urls = expand_urls(urls)
    rank, world_size = resolve_rank(rank, world_size)
    failures = DecodeFailures(strict=strict)
    handler = failures.handle
    if resampled:
        stages: List[Any] = [ResampledShardList(shard_urls, seed, epoch, rank)]
    else:
        stages = [ShardList(shard_urls, shuffle=is_train, seed=seed, epoch=epoch),
                  split_by_rank(rank, world_size), wds.split_by_worker]
    if is_train:
        stages.append(reseed_augmentation(seed, epoch, rank))
    stages += [open_shards(handler), tar_samples(handler)]
    if is_train and shuffle_buffer > 1:
        stages.append(seeded_shuffle(shuffle_buffer, seed, epoch, rank))
    stages.append(thermal_samples(preprocess, tokenizer, captions, norm.mode, norm.decode_kwargs(), seed,
                                  epoch, with_meta, failures))
    if batch_size is not None:
        stages.append(wds.batched(batch_size, collation_fn=collate_tuples, partial=not is_train))
    pipeline = wds.DataPipeline(*stages)
    pipeline.decode_failures = failures
    return pipeline


@dataclass
class ThermalDataInfo(DataInfo):
    """open_clip_train's ``DataInfo`` plus the epoch size; ``set_epoch`` reseeds the workers."""

    num_samples: int = 0
    num_batches: int = 0


def make_thermal_dataloader(urls: Union[str, Sequence[str]], preprocess: Callable, tokenizer: Callable, *,
                            batch_size: int, num_workers: int, num_samples: Optional[int] = None,
                            is_train: bool = True, resampled: bool = False, epoch: int = 0, floor: bool = False,
                            rank: Optional[int] = None, world_size: Optional[int] = None,
                            **dataset_kwargs: Any) -> ThermalDataInfo:
    """Build a ``WebLoader`` over :func:`make_thermal_dataset`, sized like open_clip_train's.

    Args:
        urls: shard URLs (see :func:`make_thermal_dataset`).
        preprocess: OpenCLIP image preprocess.
        tokenizer: OpenCLIP tokenizer.
        batch_size: per-rank batch size.
        num_workers: DataLoader worker processes.
        num_samples: samples per epoch; None reads ``sizes.json`` next to the shards.
        is_train: training stream (shuffled, fixed number of full batches per worker).
        resampled: draw shards with replacement.
        epoch: starting epoch; later epochs via ``info.set_epoch(epoch)``.
        floor: round the number of batches down instead of up (as open_clip_train's ``floor``).
        rank: this process's rank (see :func:`resolve_rank`).
        world_size: number of ranks.
        **dataset_kwargs: the other keyword arguments of :func:`make_thermal_dataset`.

    Returns:
        a :class:`ThermalDataInfo` with ``.dataloader`` (also carrying ``num_samples`` and
        ``num_batches`` as open_clip_train's trainer expects), ``.num_samples``, ``.num_batches``.

    Raises:
        ValueError: fewer shards than ``num_workers x world_size`` without ``resampled``, or an
            unknown training set size.
    """
    rank, world_size = resolve_rank(rank, world_size)
    shard_count = len(expand_urls(urls))
    readers = max(1, num_workers) * world_size
    if not resampled and shard_count < readers:
        raise ValueError(f"{shard_count} shard(s) cannot feed {max(1, num_workers)} worker(s) x {world_size} rank(s) "
                         f"= {readers} readers without resampling: convert with --min-shards {readers}, lower "
                         f"num_workers, or sample with replacement (resampled=True; --dataset-resampled when training)")
    if num_samples is None:
        num_samples = read_dataset_size(urls)
        if num_samples is None:
            if is_train:
                raise ValueError(f"no sizes.json next to the shards of {urls!r}: pass num_samples")
            num_samples = 0
    shared_epoch = SharedEpoch(epoch=epoch)
    dataset = make_thermal_dataset(urls, preprocess, tokenizer, is_train=is_train, batch_size=batch_size,
                                   resampled=resampled, epoch=shared_epoch, rank=rank, world_size=world_size,
                                   **dataset_kwargs)
    if is_train:
        round_fn = math.floor if floor else math.ceil
        global_batch_size = batch_size * world_size
        worker_batches = round_fn(round_fn(num_samples / global_batch_size) / max(1, num_workers))
        num_batches = worker_batches * max(1, num_workers)
        num_samples = num_batches * global_batch_size
        dataset = dataset.with_epoch(worker_batches)
    else:
        num_batches = math.ceil(num_samples / batch_size)
    dataloader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                               persistent_workers=num_workers > 0)
    dataloader.num_samples = num_samples
    dataloader.num_batches = num_batches
    return ThermalDataInfo(dataloader=dataloader, shared_epoch=shared_epoch, num_samples=num_samples,
                           num_batches=num_batches)

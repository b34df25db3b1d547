"""Decode images for indexing in DataLoader workers, so decoding overlaps the model's encoding.

Two datasets feed one item format, ``(kind, image tensor or None, record, error text)``:

* :class:`FileImages` (map-style): one pending image file per item;
* :class:`ShardImages` (iterable): the samples of pending shards, split over the workers shard by
  shard; samples already stored are passed over undecoded (``SKIP``), and each shard ends with a
  ``DONE`` item, which reaches the main process after all of that shard's samples.

Decoding is the training loader's: the thermal member it would pick (``thermal_member``), decoded by
:func:`open_clip_thermal.data.decode.decode_with` with the index's normalisation, then the model's
evaluation preprocess. An undecodable image becomes an ``ERROR`` item (counted and reported, not stored).
"""
import json
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch

from ..classify.tree import load_thermal_pil
from ..contracts import CAPTION_FIELDS, METADATA_KEY, SAMPLE_KEY
from ..data.decode import ThermalNorm, decode_with, thermal_to_pil
from .sources import SHARD_SOURCE, FileItem, Shard, shard_sample_id

ROW, SKIP, DONE, ERROR = "row", "skip", "done", "error"
Item = Tuple[str, Optional[torch.Tensor], Dict, str]


class FileImages(torch.utils.data.Dataset):
    """Pending image files, decoded and preprocessed one per item."""

    def __init__(self, items: Sequence[FileItem], preprocess: Callable, norm: ThermalNorm):
        self.items = list(items)
        self.preprocess = preprocess
        self.norm = norm

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        item = self.items[index]
        try:
            return ROW, self.preprocess(load_thermal_pil(item.path, self.norm)), item.record(), ""
        except Exception as error:  # any decoder failure: reported by the indexer, the file is not stored
            return ERROR, None, item.record(), f"{type(error).__name__}: {error}"


def _text(sample: Dict, member: str) -> Optional[str]:
    value = sample.get(member)
    return value.decode("utf-8", errors="replace").strip() if isinstance(value, bytes) else None


class ShardImages(torch.utils.data.IterableDataset):
    """Samples of pending shards; ``stored[url]`` holds the keys of that shard already in the index."""

    def __init__(self, shards: Sequence[Shard], preprocess: Callable, norm: ThermalNorm,
                 stored: Optional[Dict[str, Set[str]]] = None):
        super().__init__()
        self.shards = list(shards)
        self.preprocess = preprocess
        self.norm = norm
        self.stored = stored or {}

    def _mine(self) -> List[Shard]:
        info = torch.utils.data.get_worker_info()
        return self.shards if info is None else self.shards[info.id::info.num_workers]

    def _sample_item(self, shard: Shard, sample: Dict) -> Item:
        from ..data.loader import thermal_member

        key = sample[SAMPLE_KEY]
        record = {"path": shard_sample_id(shard.url, key), "source": SHARD_SOURCE, "shard": shard.url, "key": key,
                  "size": shard.size, "mtime_ns": shard.mtime_ns}
        captions = {kind: _text(sample, member) for kind, member in CAPTION_FIELDS.items() if member in sample}
        if captions:
            record["captions"] = captions
        try:
            if METADATA_KEY in sample:
                record["meta"] = json.loads(sample[METADATA_KEY])
            ext, raw = thermal_member(sample)
            image = self.preprocess(thermal_to_pil(decode_with(raw, ext, self.norm)))
        except Exception as error:  # undecodable member or metadata: reported, not stored
            return ERROR, None, record, f"{type(error).__name__}: {error}"
        return ROW, image, record, ""

    def __iter__(self) -> Iterator[Item]:
        from webdataset.tariterators import group_by_keys

        from ..data.sources import open_url, read_tar_files

        for shard in self._mine():
            stored = self.stored.get(shard.url, set())
            try:
                for sample in group_by_keys(read_tar_files(open_url(shard.url), shard.url)):
                    if sample[SAMPLE_KEY] in stored:
                        yield SKIP, None, {"path": shard_sample_id(shard.url, sample[SAMPLE_KEY])}, ""
                    else:
                        yield self._sample_item(shard, sample)
            except Exception as error:  # a damaged shard: its readable samples are kept, the shard is not done
                yield ERROR, None, {"path": shard.url, "shard": shard.url}, f"{type(error).__name__}: {error}"
                continue
            yield DONE, None, {"shard": shard.url, "size": shard.size, "mtime_ns": shard.mtime_ns}, ""


def collate_items(items: Sequence[Item]) -> Tuple[Optional[torch.Tensor], List[Dict], List[Item]]:
    """(stacked images of the ROW items or None, their records, the other items in order)."""
    rows = [item for item in items if item[0] == ROW]
    images = torch.stack([item[1] for item in rows]) if rows else None
    return images, [item[2] for item in rows], [item for item in items if item[0] != ROW]

"""Our shards -> CLIP_benchmark's WebDataset layout (``--dataset wds/NAME``), one caption type per export.

CLIP_benchmark (``clip_benchmark.datasets.builder.build_wds_dataset``) reads::

    OUT/dataset_type.txt                      "retrieval" (else the folder is a classification set)
    OUT/classnames.txt                        classification: one class name a line, line i = label i
    OUT/zeroshot_classification_templates.txt classification: one template a line, "{c}" = class name
    OUT/SPLIT/nshards.txt                     the number of shards, read as SPLIT/{0..N-1}.tar
    OUT/SPLIT/0.tar ...                       KEY.png (or webp/jpg) + KEY.txt (retrieval: one caption
                                              a line) or KEY.cls (classification: the label index)

Its image decoder is webdataset's PIL one, which turns a 16-bit frame into an all-white 8-bit image.
So the frames are decoded here exactly as our benchmark decodes them (the same member of each sample,
:func:`open_clip_thermal.data.decode.decode_with` with the same normalisation, then ``thermal_to_pil``)
and stored as 8-bit PNG, which is lossless: CLIP_benchmark's preprocess then sees the pixels ours sees.
"""
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from ..classify import load_templates
from ..contracts import CAPTION_FIELDS
from ..data.decode import ThermalNorm
from ..data.shard_writer import TAR_MTIME
from ..evaluation.errors import BenchmarkError
from ..files import atomic_write_text  # a killed export never leaves a cut-short nshards.txt or record
from ..evaluation.shard_reader import expand_urls, iter_image_batches, read_sample_index
from .cli import DEFAULT_MAXCOUNT, DEFAULT_SPLIT, TASKS

RETRIEVAL_TYPE = "retrieval"  # CLIP_benchmark's dataset_type.txt value for retrieval sets
EXPORT_RECORD = "export.json"  # our provenance file beside CLIP_benchmark's (it ignores it)
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class ExportError(ValueError):
    """Bad input for the export (message names it); the CLI prints it and exits with status 2."""


@dataclass
class ExportReport:
    """What an export wrote."""
    out: str
    task: str
    caption: str
    samples: int = 0
    shards: int = 0
    classnames: List[str] = field(default_factory=list)
    joined_line_breaks: int = 0  # captions whose line breaks became spaces (CLIP_benchmark splits on them)


def _pixels(image) -> np.ndarray:
    # iter_image_batches stacks what the "preprocess" returns; keep the decoded 8-bit RGB pixels as they are.
    import torch
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def _png(pixels: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless: the 8-bit pixels survive exactly
    return buffer.getvalue()


def _class_labels(metas: Sequence[dict], keys: Sequence[str], label_field: str) -> List[str]:
    labels = []
    for key, meta in zip(keys, metas):
        value = meta.get(label_field)
        if value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
            raise ExportError(f"sample {key!r} has no usable --label-field {label_field!r} in its .json metadata "
                              f"(got {value!r}; fields: {', '.join(sorted(meta)) or 'none'})")
        labels.append(str(value).strip())
    return labels


def _prepare_out(out: str, split: str, overwrite: bool) -> str:
    split_dir = os.path.join(out, split)
    if os.path.exists(split_dir) and os.listdir(split_dir):
        if not overwrite:
            raise ExportError(f"--out {out}: {split_dir} already holds files; pass --overwrite to replace them")
        shutil.rmtree(split_dir)
    os.makedirs(split_dir, exist_ok=True)
    return split_dir


def export_wds(data, out: str, caption: str, task: str = "retrieval", label_field: Optional[str] = None,
               split: str = DEFAULT_SPLIT, norm: Optional[ThermalNorm] = None, maxcount: int = DEFAULT_MAXCOUNT,
               templates=None, overwrite: bool = False, progress: bool = True) -> ExportReport:
    """Write the shards ``data`` as CLIP_benchmark's WebDataset folder ``out`` (layout in the module docstring).

    Args:
        data: our shards (a brace pattern, a ``::`` list or a list of paths), read in their fixed order.
        out: the folder to write, e.g. ``wds/flir_global`` (CLIP_benchmark: ``--dataset wds/flir_global
            --dataset_root wds/{dataset}``).
        caption: ``'global'`` or ``'fine_grained'``: the caption written as ``.txt`` (retrieval).
        task: ``'retrieval'`` or ``'classification'``.
        label_field: classification: the metadata (``.json``) field holding each sample's class.
        split: the split folder name (CLIP_benchmark's ``--split``, default ``test``).
        norm: thermal normalisation of >8-bit frames; None = the benchmark's default (percentile). Use the
            one the evaluated adapters recorded, as ``python -m open_clip_thermal.benchmark`` does.
        maxcount: samples per output shard.
        templates: classification prompts (None: our shipped thermal ensemble; ``{}`` or ``{c}`` slots).
        overwrite: replace an existing ``out/split``.
        progress: show a tqdm bar.

    Raises:
        ExportError: bad arguments, unreadable shards, a sample without the caption or label asked for.
    """
    if caption not in CAPTION_FIELDS:
        raise ExportError(f"--caption {caption!r}: choose one of {', '.join(CAPTION_FIELDS)}")
    if task not in TASKS:
        raise ExportError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    if (task == "classification") != bool(label_field):
        raise ExportError("--label-field is needed for --task classification, and only there"
                          if label_field is None or task == "classification" else
                          f"--label-field {label_field!r} only applies to --task classification")
    if maxcount < 1:
        raise ExportError(f"--maxcount must be at least 1, got {maxcount}")
    if not split or "/" in split or split.startswith("."):
        raise ExportError(f"--split {split!r}: expected a plain folder name such as 'test'")
    try:
        urls = expand_urls(data)
        index = read_sample_index(urls)
    except BenchmarkError as error:
        raise ExportError(str(error)) from None
    report = ExportReport(out=out, task=task, caption=caption, samples=len(index))
    captions = index.captions[caption]
    missing = [key for key, text in zip(index.keys, captions) if text is None]
    if task == "retrieval" and missing:
        raise ExportError(f"--caption {caption}: {len(missing)} of {len(index)} samples have no "
                          f".{CAPTION_FIELDS[caption]} caption, e.g. {missing[0]!r}")
    if task == "classification":
        labels = _class_labels(index.metas, index.keys, label_field)
        report.classnames = sorted(set(labels))
        label_ids = {name: i for i, name in enumerate(report.classnames)}
        prompts = [t.replace("{}", "{c}") for t in load_templates(templates)]  # CLIP_benchmark fills {c}
    split_dir = _prepare_out(out, split, overwrite)
    position = 0
    writer = None
    bar = tqdm(total=len(index), desc=f"export {os.path.basename(out.rstrip('/'))}", unit="img", disable=not progress)
    try:
        for keys, pixels in iter_image_batches(urls, _pixels, 1, norm):
            key = keys[0]
            if key != index.keys[position]:
                raise ExportError(f"shards changed while exporting: sample {position} is {key!r}, "
                                  f"was {index.keys[position]!r}")
            if position % maxcount == 0:
                if writer is not None:
                    writer.close()
                writer = TarWriter(os.path.join(split_dir, f"{report.shards}.tar"), mtime=TAR_MTIME)
                report.shards += 1
            sample = {"__key__": key, "png": _png(pixels[0].numpy())}
            if task == "retrieval":
                text = _LINE_BREAKS.sub(" ", captions[position])
                report.joined_line_breaks += text != captions[position]
                sample["txt"] = text
            else:
                sample["cls"] = str(label_ids[labels[position]])
            writer.write(sample)
            position += 1
            bar.update(1)
    except BenchmarkError as error:
        raise ExportError(str(error)) from None
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    atomic_write_text(os.path.join(split_dir, "nshards.txt"), f"{report.shards}\n")
    atomic_write_text(os.path.join(out, "dataset_type.txt"), (RETRIEVAL_TYPE if task == "retrieval" else "classification") + "\n")
    if task == "classification":
        atomic_write_text(os.path.join(out, "classnames.txt"), "".join(name + "\n" for name in report.classnames))
        atomic_write_text(os.path.join(out, "zeroshot_classification_templates.txt"), "".join(p + "\n" for p in prompts))
    record = {"source_shards": urls, "caption": caption, "task": task, "label_field": label_field, "split": split,
              "samples": report.samples, "shards": report.shards,
              "thermal_norm": (norm or ThermalNorm()).to_dict(), "image_format": "8-bit RGB PNG (lossless)"}
    atomic_write_text(os.path.join(out, EXPORT_RECORD), json.dumps(record, indent=2) + "\n")
    return report


def describe(report: ExportReport) -> str:
    """One line for the console."""
    what = (f"{report.caption} captions" if report.task == "retrieval"
            else f"{len(report.classnames)} classes")
    extra = f"; {report.joined_line_breaks} captions had line breaks, joined by spaces" if report.joined_line_breaks else ""
    return f"wrote {report.samples} samples ({what}) in {report.shards} shard(s) to {report.out}{extra}"

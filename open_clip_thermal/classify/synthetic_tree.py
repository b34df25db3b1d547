"""Turn a generated synthetic set (``python -m open_clip_thermal.synthetic generate``) into an
ImageFolder tree of thermal object crops, one folder per object label (car, van, bus, pedestrian,
umbrella, building, tree; docs/synthetic.md). Torch-free.
"""
from pathlib import Path
from typing import Optional, Sequence

from .crops import CropError, CropReport, cut_objects

ANNOTATION_FILE = "annotations.jsonl"  # what generate_dataset writes in its output folder


def synthetic_crops(data_dir, out, split: Optional[str] = "test", min_size: int = 4,
                    labels: Optional[Sequence[str]] = None) -> CropReport:
    """Cut the visible objects of a generated synthetic set into ``out/<label>/<scene id>_<label>_<index>.png``.

    Args:
        data_dir: the ``generate`` output folder (``annotations.jsonl``; image paths relative to it),
            or the annotation file itself.
        out: the ImageFolder tree to write.
        split: only scenes of this split (None: all).
        min_size: leave out boxes whose shorter side is below this many pixels.
        labels: keep only these object labels (default: all).

    Raises:
        CropError: no annotation file, a malformed record, or no scene of ``split``.
    """
    from ..synthetic import read_scene_records  # numpy/PIL only

    data_dir = Path(data_dir)
    annotation_file = data_dir if data_dir.is_file() else data_dir / ANNOTATION_FILE
    if not annotation_file.is_file():
        raise CropError(f"{data_dir}: no {ANNOTATION_FILE} (give the output folder of "
                        "'python -m open_clip_thermal.synthetic generate')")
    try:
        records = read_scene_records(annotation_file)
    except ValueError as error:
        raise CropError(f"{annotation_file}: not valid JSONL ({error})") from None
    image_root = annotation_file.parent
    report = CropReport()
    scenes = 0
    for number, record in enumerate(records, 1):
        if split is not None and record.get("split") != split:
            continue
        if "image" not in record or not isinstance(record.get("objects"), list):
            raise CropError(f"{annotation_file} line {number}: no 'image' or 'objects' (not a synthetic record)")
        scenes += 1
        objects = []
        for obj in record["objects"]:
            if labels is not None and obj["label"] not in labels:
                report.skipped["label not selected"] += 1
                continue
            objects.append((obj["label"], f"{obj['label']}_{obj['index']}", tuple(int(v) for v in obj["box"])))
        if objects:
            cut_objects(image_root / record["image"], objects, Path(out), report, min_size, str(record["id"]))
    if not scenes:
        raise CropError(f"{annotation_file}: no scene of split {split!r}")
    return report

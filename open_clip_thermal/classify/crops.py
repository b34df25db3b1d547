"""Cut labelled object crops into an ImageFolder tree (torch-free).

Two sources:

* COCO-style detection annotations (FLIR ADAS ships them): ``images[]`` (``id``, ``file_name``),
  ``annotations[]`` (``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]`` in pixels,
  optional ``iscrowd``) and ``categories[]`` (``id``, ``name``): :func:`coco_crops`.
* The synthetic world's ``annotations.jsonl`` (docs/synthetic.md): every record's ``objects`` carry a
  ``label`` and a ``box`` = ``[x0, y0, x1, y1]`` with exclusive ends: :func:`synthetic_crops`
  (in :mod:`.synthetic_tree`).

Crops keep the source's pixel values and bit depth (a 16-bit frame gives a 16-bit PNG crop), so the
classifier decodes them exactly like full frames. Each crop is ``OUT/<class>/<image stem>_<object
id>.png``. Boxes that are too small or fall outside the image, unknown categories and unreadable
images are counted per reason, never silently dropped.
"""
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


class CropError(ValueError):
    """An annotation file or folder cannot be used (message names it)."""


@dataclass
class CropReport:
    """What a crop run wrote and what it left out (and why)."""
    written: Counter = field(default_factory=Counter)  # class -> crops written
    skipped: Counter = field(default_factory=Counter)  # reason -> objects left out
    unreadable: List[str] = field(default_factory=list)  # images that could not be opened

    @property
    def total(self) -> int:
        return sum(self.written.values())

    def to_dict(self) -> Dict:
        return {"written": dict(sorted(self.written.items())), "total": self.total,
                "skipped": dict(sorted(self.skipped.items())), "unreadable_images": self.unreadable}

    def summary(self) -> str:
        text = f"{self.total} crops in {len(self.written)} classes"
        if self.skipped:
            text += "; left out: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return text


def folder_name(label: str) -> str:
    """A class name as a folder name (path separators replaced; the name must not be empty)."""
    name = str(label).strip().replace("/", "_").replace("\\", "_")
    if name in ("", ".", ".."):
        raise CropError(f"class name {label!r} cannot be a folder name")
    return name


def coco_box(bbox: Sequence[float]) -> Box:
    """COCO ``[x, y, w, h]`` (floats) -> integer ``(x0, y0, x1, y1)`` covering every touched pixel."""
    x, y, w, h = (float(v) for v in bbox)
    return math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)


def clip_box(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def save_crop(image: Image.Image, box: Box, path: Path) -> None:
    """Write ``image[y0:y1, x0:x1]`` as PNG, keeping its mode (``L``, ``I;16``, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    crop = image.crop(box)
    if crop.mode not in ("L", "I;16", "I", "RGB", "RGBA", "LA"):
        crop = crop.convert("I" if crop.mode.startswith("I") or crop.mode == "F" else "RGB")
    crop.save(path, format="PNG")


def cut_objects(image_path: Path, objects: Sequence[Tuple[str, str, Box]], out: Path, report: CropReport,
                min_size: int, stem: str) -> None:
    """Cut ``(class, object id, box)`` crops of one image into ``out``; counts every object in ``report``."""
    try:
        with Image.open(image_path) as image:
            image.load()
            for label, object_id, box in objects:
                x0, y0, x1, y1 = clip_box(box, image.width, image.height)
                if x1 <= x0 or y1 <= y0:
                    report.skipped["box outside the image"] += 1
                elif min(x1 - x0, y1 - y0) < min_size:
                    report.skipped[f"smaller than {min_size} px"] += 1
                else:
                    save_crop(image, (x0, y0, x1, y1), out / folder_name(label) / f"{stem}_{object_id}.png")
                    report.written[label] += 1
    except (OSError, ValueError) as error:
        report.unreadable.append(f"{image_path}: {type(error).__name__}: {error}")
        report.skipped["unreadable image"] += len(objects)


def read_json(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise CropError(f"{what} {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CropError(f"{what} {path}: not valid JSON ({error})") from None


def coco_crops(annotation_file, image_dir, out, min_size: int = 4, categories: Optional[Sequence[str]] = None,
               include_crowd: bool = False) -> CropReport:
    """Cut every annotated box of a COCO-style detection file into ``out/<category name>/``.

    Args:
        annotation_file: the COCO JSON (``images``, ``annotations``, ``categories``).
        image_dir: folder that ``images[].file_name`` is relative to.
        out: the ImageFolder tree to write (created; existing crops of the same name are replaced).
        min_size: leave out boxes whose shorter side is below this many pixels (after clipping).
        categories: keep only these category names (default: all).
        include_crowd: also cut ``iscrowd`` boxes (left out by default: they hold several objects).

    Raises:
        CropError: the file is missing, not JSON, or lacks ``images``/``annotations``/``categories``.
    """
    coco = read_json(annotation_file, "COCO annotations")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise CropError(f"COCO annotations {annotation_file}: no '{key}' list")
    image_dir, out = Path(image_dir), Path(out)
    if not image_dir.is_dir():
        raise CropError(f"--images {image_dir}: not a folder")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    if categories is not None:
        unknown = sorted(set(categories) - set(names.values()))
        if unknown:
            raise CropError(f"COCO annotations {annotation_file}: no category {unknown[0]!r} "
                            f"(categories: {', '.join(sorted(names.values()))})")
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    report = CropReport()
    per_image: Dict[object, List[Tuple[str, str, Box]]] = {}
    for ann in coco["annotations"]:
        label = names.get(ann.get("category_id"))
        if label is None:
            report.skipped["unknown category_id"] += 1
        elif ann.get("image_id") not in files:
            report.skipped["unknown image_id"] += 1
        elif categories is not None and label not in categories:
            report.skipped["category not selected"] += 1
        elif ann.get("iscrowd") and not include_crowd:
            report.skipped["iscrowd"] += 1
        elif not isinstance(ann.get("bbox"), (list, tuple)) or len(ann["bbox"]) != 4:
            report.skipped["no [x, y, w, h] bbox"] += 1
        else:
            per_image.setdefault(ann["image_id"], []).append((label, str(ann.get("id", len(report.written))),
                                                               coco_box(ann["bbox"])))
    for image_id, objects in per_image.items():
        path = image_dir / files[image_id]
        cut_objects(path, objects, out, report, min_size, Path(files[image_id]).stem)
    return report

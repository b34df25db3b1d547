"""Write simulated RGB-thermal pairs and their annotation file (docs/contracts.md format).

Layout under ``out_dir``::

    annotations.jsonl            one record per thermal image (all splits)
    synthetic_info.json          the arguments that produced the folder
    thermal/<split>/<id>.png     8-bit AGC or 16-bit radiometric thermal image
    rgb/<split>/<id>.png         the pixel-aligned RGB rendering

Image paths in the records are relative to ``out_dir`` (pass it as the converter's image root).
Every scene is drawn from its own ``(seed, split, index)`` stream, so splits are disjoint and
any single sample can be regenerated alone.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.annotations import iter_raw_rows
from ..files import atomic_write
from .captions import fine_grained_thermal_caption, global_thermal_caption, rgb_caption
from .facts import engine_state, road_patch_state
from .layout import object_boxes, rasterize
from .render_rgb import render_rgb
from .render_thermal import render_thermal
from .scene import Scene, sample_scene, scene_rng

SPLITS = ("train", "val", "test")
ANNOTATION_FILE = "annotations.jsonl"
INFO_FILE = "synthetic_info.json"


@dataclass
class SyntheticSample:
    """One rendered scene with its captions, in memory."""

    id: str
    split: str
    scene: Scene
    rgb: np.ndarray  # (H, W, 3) uint8
    thermal: np.ndarray  # (H, W) uint8 (AGC) or uint16 (radiometric counts)
    global_caption: str
    fg_caption: str
    rgb_caption: str
    objects: List[Dict[str, object]]  # visible objects: label, pixel box [x0, y0, x1, y1], index


def sample_id(split: str, index: int) -> str:
    """Shard-safe (dot-free) id of sample ``index`` of ``split``."""
    return f"synthetic_{split}_{index:06d}"


def render_sample(seed: int, split: str, index: int, size: int = 64, bit_depth: int = 8) -> SyntheticSample:
    """Simulate, render and caption one scene.

    Args:
        seed: dataset seed; it also identifies the simulated camera (fixed-pattern noise).
        split: split name; different splits draw from different random streams.
        index: sample number within the split.
        size: image width and height in pixels.
        bit_depth: thermal output, 8 (AGC) or 16 (radiometric counts).

    Returns:
        A :class:`SyntheticSample`.
    """
    rng = scene_rng(seed, split, index)
    scene = sample_scene(rng)
    raster = rasterize(scene, size)  # one rasterisation for both images keeps them aligned
    return SyntheticSample(
        id=sample_id(split, index), split=split, scene=scene,
        rgb=render_rgb(scene, raster=raster),
        thermal=render_thermal(scene, bit_depth=bit_depth, sensor_seed=seed, raster=raster),
        global_caption=global_thermal_caption(scene, rng),
        fg_caption=fine_grained_thermal_caption(scene, rng),
        rgb_caption=rgb_caption(scene, rng), objects=object_boxes(scene, raster))


def iter_samples(seed: int, split: str, count: int, size: int = 64, bit_depth: int = 8,
                 progress: bool = False) -> Iterator[SyntheticSample]:
    """Yield samples ``0 .. count-1`` of ``split`` (see :func:`render_sample`)."""
    for index in tqdm(range(count), desc=f"simulate {split}", disable=not progress, unit="scene"):
        yield render_sample(seed, split, index, size, bit_depth)


def scene_meta(scene: Scene) -> Dict[str, object]:
    """Free-form metadata of a scene for the annotation record's ``meta`` field."""
    return {
        "time_of_day": scene.time_of_day, "weather": scene.weather, "place": scene.place,
        "road_wet": scene.road_wet, "air_temp_c": round(scene.air_temp_c, 2),
        "num_pedestrians": len(scene.pedestrians), "num_umbrellas": sum(p.umbrella for p in scene.pedestrians),
        "num_vehicles": len(scene.vehicles), "num_moving_vehicles": sum(v.moving for v in scene.vehicles),
        "num_buildings": len(scene.buildings), "num_trees": len(scene.trees),
        # object-level thermal state (world v2), stated by the fine-grained caption
        "engine_states": sorted(engine_state(v) for v in scene.vehicles),
        "num_occupied_vehicles": sum(v.occupied for v in scene.vehicles),
        "num_exerted_pedestrians": sum(p.exerted for p in scene.pedestrians),
        "num_heated_buildings": sum(b.heated for b in scene.buildings),
        "road_patches": sorted(road_patch_state(p) for p in scene.road_patches),
    }


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # uint16 arrays become 16-bit greyscale PNGs ('I;16'), uint8 ones 8-bit.
    Image.fromarray(array).save(path, format="PNG")


def write_sample(sample: SyntheticSample, out_dir: Path, bit_depth: int) -> Dict[str, object]:
    """Write one sample's images under ``out_dir`` and return its annotation record."""
    thermal_rel = f"thermal/{sample.split}/{sample.id}.png"
    rgb_rel = f"rgb/{sample.split}/{sample.id}.png"
    _save_png(sample.thermal, out_dir / thermal_rel)
    _save_png(sample.rgb, out_dir / rgb_rel)
    meta = scene_meta(sample.scene)
    meta["thermal_bit_depth"] = bit_depth
    return {"id": sample.id, "image": thermal_rel, "rgb": rgb_rel, "global_caption": sample.global_caption,
            "fg_caption": sample.fg_caption, "rgb_caption": sample.rgb_caption, "split": sample.split,
            "dataset": "synthetic", "objects": sample.objects, "meta": meta}


def generate_dataset(out_dir, num_train: int = 1000, num_val: int = 200, num_test: int = 300,
                     size: int = 64, seed: int = 0, bit_depth: int = 8, progress: bool = True,
                     counts: Optional[Dict[str, int]] = None) -> Path:
    """Simulate the train/val/test splits and write images plus ``annotations.jsonl``.

    Args:
        out_dir: output folder (created if missing).
        num_train: number of training scenes.
        num_val: number of validation scenes.
        num_test: number of test scenes (disjoint from the others by construction).
        size: image width and height in pixels (16 or more; 64-128 is the intended range).
        seed: dataset seed; the same seed always writes the same bytes.
        bit_depth: thermal images as 8-bit AGC PNGs or 16-bit radiometric PNGs.
        progress: show a progress bar per split.
        counts: optional ``{split: count}`` replacing the three ``num_*`` arguments (any split names).

    Returns:
        Path of the annotation file.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    counts = counts if counts is not None else {"train": num_train, "val": num_val, "test": num_test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"number of {split} scenes must be >= 0, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    annotation_path = out_dir / ANNOTATION_FILE
    def write_annotations(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for split, n in counts.items():
                for sample in iter_samples(seed, split, n, size, bit_depth, progress):
                    f.write(json.dumps(write_sample(sample, out_dir, bit_depth)) + "\n")

    # The annotation file appears only once complete, so a crash never leaves a half dataset.
    atomic_write(annotation_path, write_annotations)
    info = {"seed": seed, "size": size, "bit_depth": bit_depth, "counts": counts,
            "annotations": ANNOTATION_FILE, "image_root": "."}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return annotation_path


def read_scene_records(path) -> List[dict]:
    """The records of a simulated annotation file, as written: one dict per scene, unvalidated.

    Unlike :func:`open_clip_thermal.data.annotations.read_annotations` (validated ``Annotation``
    rows for the converter), this keeps every field the simulator writes (``objects`` boxes,
    ``rgb_caption``, ``meta``). Rows are read by that module's row reader.

    Raises:
        ValueError: naming the line of a row that is not a JSON object.
    """
    records = []
    for row in iter_raw_rows(str(path), "jsonl"):
        if row.error:
            raise ValueError(f"{path} line {row.line}: {row.error}")
        records.append(row.values)
    return records

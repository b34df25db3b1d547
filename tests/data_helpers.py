"""Tiny on-disk thermal datasets for the data tests (images + annotation files in tmp_path)."""
import io
import json
import tarfile
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image
from torchvision import transforms

# Keep tensors at the stored resolution so pixels can be compared exactly.
TO_TENSOR = transforms.Compose([transforms.ToTensor()])


def save_image(path: Path, array: np.ndarray, fmt: str) -> Path:
    """Save ``array`` (uint8 grey, uint8 RGB or uint16 grey) as ``fmt`` at ``path``."""
    Image.fromarray(array).save(path, format=fmt)
    return path


def make_mixed_set(root: Path) -> List[Dict]:
    """Four thermal images (8-bit PNG, 16-bit PNG, 16-bit TIFF, JPEG) with RGB pairs; returns records."""
    rng = np.random.default_rng(7)
    images = {
        "grey8.png": (rng.integers(0, 256, (12, 16), dtype=np.uint8), "PNG"),
        "grey16.png": (rng.integers(1000, 3001, (12, 16)).astype(np.uint16), "PNG"),
        "grey16.tif": (rng.integers(1000, 3001, (12, 16)).astype(np.uint16), "TIFF"),
        "pseudo.jpg": (rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "JPEG"),
    }
    (root / "thermal").mkdir(parents=True, exist_ok=True)
    (root / "rgb").mkdir(exist_ok=True)
    records = []
    for index, (name, (array, fmt)) in enumerate(images.items()):
        save_image(root / "thermal" / name, array, fmt)
        save_image(root / "rgb" / f"{index}.jpg", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "JPEG")
        records.append({"id": f"kaist/set00.{name}", "image": f"thermal/{name}", "rgb": f"rgb/{index}.jpg",
                        "global_caption": f"infrared thermal image {index}, a street at night",
                        "fg_caption": f"infrared thermal image {index}: a warm pedestrian left of a cold car",
                        "split": "train", "dataset": "kaist", "meta": {"time_of_day": "night"}})
    return records


def make_numbered_set(root: Path, count: int, split: str = "train") -> List[Dict]:
    """``count`` small 8-bit PNGs with distinct captions; returns records."""
    (root / "thermal").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        array = np.full((6, 6), index % 256, dtype=np.uint8)
        save_image(root / "thermal" / f"{index:04d}.png", array, "PNG")
        records.append({"id": f"img{index:04d}", "image": f"thermal/{index:04d}.png",
                        "global_caption": f"infrared thermal global {index}",
                        "fg_caption": f"infrared thermal fine {index}", "split": split})
    return records


def write_jsonl(path: Path, records: List[Dict]) -> Path:
    """Write records one JSON object per line."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_tar(path: Path, samples: List[Dict[str, bytes]]) -> Path:
    """Write a tar shard by hand (for inputs the converter would never produce)."""
    with tarfile.open(path, "w") as archive:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()

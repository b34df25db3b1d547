"""Tiny shards and adapter folders for the training tests."""
import json
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from open_clip_thermal.convert import main as convert_main

# Small, fast, deterministic open_clip_train flags for test runs.
TRAIN_FLAGS = ["--batch-size", "4", "--workers", "1", "--lr", "1e-2", "--wd", "0.1", "--warmup", "1",
               "--seed", "3", "--precision", "fp32", "--log-every-n-steps", "1"]


def make_shards(root: Path, count: int = 32, shards: int = 4, with_fg: bool = True) -> str:
    """``count`` random 32x32 8-bit thermal PNGs with two captions each, in ``shards`` shards.

    Returns the brace pattern of the shards.
    """
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records: List[dict] = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(images / f"{i:03d}.png")
        record = {"id": f"s{i:03d}", "image": f"{i:03d}.png", "split": "train",
                  "global_caption": f"infrared thermal image of scene {i}, a street at {'night' if i % 2 else 'noon'}"}
        if with_fg:
            record["fg_caption"] = f"infrared thermal image: object {i} is {'hot' if i % 3 else 'cold'}"
        records.append(record)
    annotations = root / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "shards"
    args = ["--annotations", str(annotations), "--image-root", str(images), "--output-dir", str(out),
            "--maxcount", str(count // shards), "--no-progress", "--no-shuffle"]
    if not with_fg:
        args += ["--fg-field", ""]
    assert convert_main(args) == 0
    return str(out / f"thermal-train-{{000000..{shards - 1:06d}}}.tar")

"""The world of the paper-scale dress rehearsal (tests/test_rehearsal.py), made here and served on 127.0.0.1.

* ``openai_checkpoint``: random ViT-B-16 weights in the layout of OpenAI's ``ViT-B-16.pt`` (the CLIP
  state_dict in fp16), named by its SHA-256 like OpenAI's URLs, so OpenCLIP's real download code
  fetches and verifies it.
* ``FileServer`` (tests/server_helpers.py) serves it on 127.0.0.1.
* ``sitecustomize_dir``: a folder whose ``sitecustomize.py`` points OpenCLIP's registry entry for
  ``ViT-B-16`` / ``openai`` at that server in every child process (commands run as subprocesses).
  Nothing else of OpenCLIP or of this package is touched.
* ``make_kaist_tree`` / ``make_flir_tree`` / ``make_fmb_tree``: tiny images with the releases' file
  naming and folder layout (docs/data.md).
"""
import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, Tuple

import numpy as np
from PIL import Image

URL_ENV = "OPEN_CLIP_THERMAL_REHEARSAL_OPENAI_URL"
ARCH, TAG = "ViT-B-16", "openai"

_SITECUSTOMIZE = f'''\
# Written by tests/rehearsal_helpers.py: point OpenCLIP's {ARCH}/{TAG} entry at a loopback server,
# patched right after open_clip.pretrained is first imported (processes that never import it pay nothing).
import os
import sys
from importlib.machinery import PathFinder

_URL = os.environ.get("{URL_ENV}")


def _point_at_loopback(module):
    entries = module._PRETRAINED["{ARCH}"]
    entries["{TAG}"] = dict(entries["{TAG}"], url=_URL, hf_hub="")


class _PatchAfterImport:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "open_clip.pretrained":
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _point_at_loopback(module)
            spec.loader.exec_module = exec_and_patch
        return spec


if _URL:
    sys.meta_path.insert(0, _PatchAfterImport)
'''


def openai_checkpoint(folder: Path, seed: int = 0) -> Tuple[Path, str]:
    """Random ViT-B-16 weights saved like OpenAI's release; returns (path, sha256).

    The path is ``folder/openaipublic/clip/models/<sha256>/ViT-B-16.pt``: OpenCLIP checks the digest
    in the URL of any ``openaipublic`` address.
    """
    import open_clip
    import torch
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(ARCH, force_quick_gelu=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "ViT-B-16.pt"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    target = folder / "openaipublic" / "clip" / "models" / digest / "ViT-B-16.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return target, digest


def sitecustomize_dir(folder: Path) -> Path:
    """A folder to put first on PYTHONPATH so child processes see the loopback URL (see module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return folder


def _frame(rng: np.random.Generator, size: Tuple[int, int], rgb: bool) -> Image.Image:
    """A smooth random frame (a blurred blob field), grey-replicated RGB or colour."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.zeros((h, w))
    for _ in range(3):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
        field += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    grey = (40 + 180 * field / field.max()).astype(np.uint8)
    if rgb:
        colour = np.stack([grey, np.roll(grey, 3, axis=1), 255 - grey], axis=-1)
        return Image.fromarray(colour, "RGB")
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")  # KAIST/FLIR save grey thermal as 3 channels


def make_kaist_tree(root: Path, videos: Dict[str, Iterable[int]], size=(40, 32), seed=0) -> Dict[str, list]:
    """``setNN/VNNN/{lwir,visible}/INNNNN.jpg`` for ``videos`` = {"set06/V000": frame indices}; returns
    the frame stems written per video."""
    rng = np.random.default_rng(seed)
    written = {}
    for video, frames in videos.items():
        stems = []
        for index in frames:
            stem = f"I{index:05d}"
            for kind, rgb in (("lwir", False), ("visible", True)):
                path = root / video / kind / f"{stem}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                _frame(rng, size, rgb).save(path, quality=95)
            stems.append(stem)
        written[video] = stems
    return written


def make_flir_tree(root: Path, train_ids: Iterable[int], test_ids: Iterable[int], size=(40, 32), seed=1) -> None:
    """Aligned FLIR: ``JPEGImages/FLIR_NNNNN_{PreviewData.jpeg,RGB.jpg}`` and the two split lists."""
    rng = np.random.default_rng(seed)
    images = root / "JPEGImages"
    images.mkdir(parents=True, exist_ok=True)
    for list_name, ids in (("align_train.txt", list(train_ids)), ("align_validation.txt", list(test_ids))):
        names = [f"FLIR_{i:05d}" for i in ids]
        (root / list_name).write_text("".join(n + "\n" for n in names))
        for name in names:
            _frame(rng, size, False).save(images / f"{name}_PreviewData.jpeg", quality=95)
            _frame(rng, size, True).save(images / f"{name}_RGB.jpg", quality=95)


def make_fmb_tree(root: Path, counts: Dict[str, int], size=(40, 32), seed=2) -> None:
    """FMB: ``{train,test}/{Infrared,Visible}/NAME.png``."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for i in range(count):
            for kind, rgb in (("Infrared", False), ("Visible", True)):
                path = root / split / kind / f"{split}_{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                frame = _frame(rng, size, rgb)
                (frame.convert("L") if kind == "Infrared" else frame).save(path)

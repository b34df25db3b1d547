"""ImageFolder trees of thermal images: one sub-folder per class (LanguageBind's LLVIP/FLIR layout).

Scanning and decoding are torch-free; :class:`ThermalImageFolder` is a map-style dataset that a
``torch.utils.data.DataLoader`` reads. Frames are decoded as in training
(:func:`open_clip_thermal.data.decode.decode_with`: 16-bit frames stretched by a
:class:`~open_clip_thermal.data.decode.ThermalNorm`, 8-bit frames passed through), then turned into the
8-bit RGB PIL image an OpenCLIP preprocess takes. An image that cannot be read is not dropped: its
item carries the error text, the classifier counts it and the report lists it.
"""
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..contracts import THERMAL_EXTENSIONS
from ..data.decode import ThermalNorm, decode_with, thermal_to_pil

ClassifyItem = Tuple[object, int, int, str]  # (preprocessed image or None, label, index, error text or "")


class TreeError(ValueError):
    """The folder is not a usable ImageFolder tree (message names the path)."""


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the thermal extensions the loader and the benchmark read."""
    return path.suffix.lower().lstrip(".") in THERMAL_EXTENSIONS


def scan_tree(root, classes: Optional[Sequence[str]] = None) -> Tuple[List[str], List[Tuple[Path, int]]]:
    """(class folder names, [(image path, label)]) of an ImageFolder tree, sorted like torchvision's.

    Args:
        root: the tree; every sub-folder is a class, images anywhere below it belong to that class.
        classes: use these folders, in this order (default: all sub-folders, sorted).

    Raises:
        TreeError: ``root`` is not a folder, has no class folders, a requested class folder is
            missing, or no image was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise TreeError(f"{root}: not a folder (expected an ImageFolder tree, one sub-folder per class)")
    found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if classes is None:
        classes = found
    missing = [name for name in classes if name not in found]
    if missing:
        raise TreeError(f"{root}: no class folder {missing[0]!r} (folders: {', '.join(found) or 'none'})")
    if not classes:
        raise TreeError(f"{root}: no class sub-folders (expected ROOT/<class>/<image>)")
    samples = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            samples.extend((Path(dirpath) / f, label) for f in sorted(filenames) if is_image_file(Path(f)))
    if not samples:
        raise TreeError(f"{root}: no images with extensions {', '.join(THERMAL_EXTENSIONS)} under its class folders")
    return list(classes), samples


def load_thermal_pil(path: Path, norm: Optional[ThermalNorm] = None):
    """Decode one thermal file to the 8-bit RGB PIL image a preprocess takes (raises on bad data)."""
    return thermal_to_pil(decode_with(Path(path).read_bytes(), Path(path).suffix.lstrip("."), norm))


class ThermalImageFolder:
    """Map-style dataset over an ImageFolder tree: item ``i`` is ``(image, label, i, error)``.

    ``image`` is ``transform(PIL image)`` (the PIL image itself without a transform); for an
    unreadable file it is None and ``error`` says why (``collate`` leaves such items out of the batch
    and passes their errors on).

    Args:
        root: the tree.
        transform: e.g. the model's OpenCLIP preprocess.
        norm: thermal normalisation of >8-bit frames (default: per-frame 1-99 percentile, as training).
        classes: class folders to use, in label order (default: all, sorted).
    """

    def __init__(self, root, transform: Optional[Callable] = None, norm: Optional[ThermalNorm] = None,
                 classes: Optional[Sequence[str]] = None):
        self.root = Path(root)
        self.classes, self.samples = scan_tree(self.root, classes)
        self.transform = transform
        self.norm = norm or ThermalNorm()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> List[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> ClassifyItem:
        path, label = self.samples[index]
        try:
            image = load_thermal_pil(path, self.norm)
            if self.transform is not None:
                image = self.transform(image)
        except Exception as error:  # any decoder failure: counted and reported by the caller
            return None, label, index, f"{type(error).__name__}: {error}"
        return image, label, index, ""


def collate(items: Sequence[ClassifyItem]):
    """Batch the readable items: (stacked images or None, labels, indices, [(index, error)] of the others)."""
    import torch  # lazily: scanning and cropping stay torch-free

    good = [item for item in items if not item[3]]
    bad = [(item[2], item[3]) for item in items if item[3]]
    images = torch.stack([item[0] for item in good]) if good else None
    return images, [item[1] for item in good], [item[2] for item in good], bad

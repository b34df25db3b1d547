"""List RGB/thermal pairs from the public KAIST, FLIR-aligned and FMB folder layouts.

The records (``id``, ``image``, ``rgb``, ``split``, ``dataset``, optional ``meta``) are the input of
the IR-Cap captioner, which adds the captions. Paths are relative to the dataset root, with ``/``
separators, so the converter's ``--image-root`` is that root. Layout assumptions are documented in
``docs/data.md``; frames without a partner are reported, not silently dropped.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

KAIST_TRAIN_SETS = tuple(f"set{i:02d}" for i in range(0, 6))
KAIST_TEST_SETS = tuple(f"set{i:02d}" for i in range(6, 12))
KAIST_NIGHT_SETS = frozenset({"set03", "set04", "set05", "set09", "set10", "set11"})

FLIR_THERMAL_SUFFIX = "_PreviewData.jpeg"
FLIR_RGB_SUFFIX = "_RGB.jpg"
FLIR_SPLIT_LISTS = (("align_train.txt", "train"), ("align_validation.txt", "val"))

FMB_SPLITS = ("train", "test")


@dataclass
class PairListing:
    """Pairs found under a dataset root, and what could not be paired."""

    records: List[Dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


def _images_by_stem(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def list_kaist(root: str) -> PairListing:
    """KAIST multispectral pedestrian: ``setNN/VNNN/{lwir,visible}/INNNNN.jpg``.

    set00-set05 are the standard training sets, set06-set11 the test sets; set03-05 and set09-11
    were recorded at night (``meta.time_of_day``).
    """
    base = Path(root)
    listing = PairListing()
    for set_dir in sorted(p for p in base.glob("set[0-9][0-9]") if p.is_dir()):
        split = "train" if set_dir.name in KAIST_TRAIN_SETS else "test" if set_dir.name in KAIST_TEST_SETS else None
        if split is None:
            listing.problems.append(f"{set_dir.name}: not a standard KAIST set (set00-set11), ignored")
            continue
        for video_dir in sorted(p for p in set_dir.glob("V[0-9][0-9][0-9]") if p.is_dir()):
            visible = _images_by_stem(video_dir / "visible")
            for stem, thermal in _images_by_stem(video_dir / "lwir").items():
                if stem not in visible:
                    listing.problems.append(f"{_relative(thermal, base)}: no visible/{stem}.* partner")
                    continue
                listing.records.append({
                    "id": f"kaist_{set_dir.name}_{video_dir.name}_{stem}", "image": _relative(thermal, base),
                    "rgb": _relative(visible[stem], base), "split": split, "dataset": "kaist",
                    "meta": {"time_of_day": "night" if set_dir.name in KAIST_NIGHT_SETS else "day"}})
    return listing


def _flir_list_ids(path: Path) -> List[str]:
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if not token:
            continue
        name = os.path.basename(token)
        for suffix in (FLIR_THERMAL_SUFFIX, FLIR_RGB_SUFFIX):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        ids.append(re.sub(r"\.(jpe?g|png|xml|txt)$", "", name))
    return ids


def list_flir_aligned(root: str) -> PairListing:
    """FLIR ADAS as released by the "aligned FLIR" work.

    ``JPEGImages/FLIR_NNNNN_PreviewData.jpeg`` (thermal) and ``JPEGImages/FLIR_NNNNN_RGB.jpg`` (RGB),
    split by ``align_train.txt`` / ``align_validation.txt`` (one id per line, e.g. ``FLIR_00002``;
    suffixes and extensions are tolerated). Pairs in neither list get split ``unlisted``.
    """
    base = Path(root)
    images = base / "JPEGImages"
    listing = PairListing()
    split_of: Dict[str, str] = {}
    for list_name, split in FLIR_SPLIT_LISTS:
        list_path = base / list_name
        if list_path.is_file():
            for pair_id in _flir_list_ids(list_path):
                split_of.setdefault(pair_id, split)
        else:
            listing.problems.append(f"{list_name} not found: its pairs get split 'unlisted'")
    found = set()
    for thermal in sorted(images.glob(f"*{FLIR_THERMAL_SUFFIX}")):
        pair_id = thermal.name[: -len(FLIR_THERMAL_SUFFIX)]
        rgb = images / f"{pair_id}{FLIR_RGB_SUFFIX}"
        if not rgb.is_file():
            listing.problems.append(f"{_relative(thermal, base)}: no {rgb.name} partner")
            continue
        found.add(pair_id)
        listing.records.append({"id": f"flir_{pair_id}", "image": _relative(thermal, base),
                                "rgb": _relative(rgb, base), "split": split_of.get(pair_id, "unlisted"),
                                "dataset": "flir"})
    for pair_id in sorted(set(split_of) - found):
        listing.problems.append(f"{pair_id}: listed for {split_of[pair_id]} but no image pair in JPEGImages/")
    return listing


def list_fmb(root: str) -> PairListing:
    """FMB: ``{train,test}/Infrared/NAME.png`` with ``{train,test}/Visible/NAME.png``."""
    base = Path(root)
    listing = PairListing()
    for split in FMB_SPLITS:
        if not (base / split).is_dir():
            listing.problems.append(f"{split}/ not found")
            continue
        visible = _images_by_stem(base / split / "Visible")
        for stem, thermal in _images_by_stem(base / split / "Infrared").items():
            if stem not in visible:
                listing.problems.append(f"{_relative(thermal, base)}: no Visible/{stem}.* partner")
                continue
            listing.records.append({"id": f"fmb_{split}_{stem}", "image": _relative(thermal, base),
                                    "rgb": _relative(visible[stem], base), "split": split, "dataset": "fmb"})
    return listing


LAYOUTS: Dict[str, Callable[[str], PairListing]] = {"kaist": list_kaist, "flir": list_flir_aligned, "fmb": list_fmb}


def list_pairs(root: str, dataset: str, splits: Optional[List[str]] = None) -> PairListing:
    """List the RGB/thermal pairs of ``dataset`` (``kaist``, ``flir`` or ``fmb``) under ``root``.

    Args:
        root: the dataset's root folder.
        dataset: layout name.
        splits: keep only these splits (all when None).

    Raises:
        ValueError: unknown layout, or ``root`` is not a folder.
    """
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {dataset!r}; choose one of {sorted(LAYOUTS)}")
    if not Path(root).is_dir():
        raise ValueError(f"dataset root {root!r} is not a folder")
    listing = LAYOUTS[dataset](root)
    if splits:
        listing.records = [r for r in listing.records if r["split"] in splits]
    return listing

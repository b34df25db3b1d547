"""List RGB/thermal pairs from the public KAIST, FLIR-aligned and FMB folder layouts, split as in T-CLIP.

The records (``id``, ``image``, ``rgb``, ``split``, ``dataset``, optional ``meta``) are the input of
the IR-Cap captioner, which adds the captions. Paths are relative to the dataset root, with ``/``
separators, so the converter's ``--image-root`` is that root. Layout assumptions and the splits are
documented in ``docs/data.md``; frames without a partner are reported, not silently dropped, and a
root in which a layout finds nothing raises :class:`LayoutError` naming the layout it expected.

Splits (the T-CLIP paper's):

* KAIST: ``train`` = every frame of set00-set05; ``test`` = the standard *test-all-20* sampling of
  set06-set11 (frame index ``% 20 == 19``: I00019, I00039, ...; 2,252 pairs on the full release);
  ``all-test`` = every frame of set06-set11. A test-all-20 frame is in both ``test`` and
  ``all-test``; its ``all-test`` record's id carries the suffix :data:`KAIST_TEST_ALL_ID_SUFFIX`, so ids
  are unique over the whole listing (IR-Cap and the converter both reject duplicate ids).
* FLIR aligned: ``align_train.txt`` -> ``train``, ``align_validation.txt`` -> ``test`` (1,013 pairs).
* FMB: ``train`` / ``test`` as released.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

KAIST_TRAIN_SETS = tuple(f"set{i:02d}" for i in range(0, 6))
KAIST_TEST_SETS = tuple(f"set{i:02d}" for i in range(6, 12))
KAIST_NIGHT_SETS = frozenset({"set03", "set04", "set05", "set09", "set10", "set11"})
KAIST_TEST_EVERY = 20  # test-all-20: every 20th frame of the test videos ...
KAIST_TEST_OFFSET = 19  # ... starting at I00019 (index % 20 == 19)
KAIST_TEST_ALL_SPLIT = "all-test"
KAIST_TEST_ALL_ID_SUFFIX = "_all"  # id of an all-test record = its frame's id + this suffix
KAIST_LAYOUT = "setNN/VNNN/lwir/INNNNN.jpg with setNN/VNNN/visible/INNNNN.jpg (set00-set11)"

FLIR_THERMAL_SUFFIX = "_PreviewData.jpeg"
FLIR_RGB_SUFFIX = "_RGB.jpg"
FLIR_SPLIT_LISTS = (("align_train.txt", "train"), ("align_validation.txt", "test"))
FLIR_LAYOUT = ("JPEGImages/FLIR_NNNNN_PreviewData.jpeg with JPEGImages/FLIR_NNNNN_RGB.jpg, "
               "split by align_train.txt and align_validation.txt beside JPEGImages/")

FMB_SPLITS = ("train", "test")
FMB_LAYOUT = "{train,test}/Infrared/NAME.png with {train,test}/Visible/NAME.png"

SPLIT_ORDER = ("train", "test", KAIST_TEST_ALL_SPLIT)  # order of the printed counts
LAYOUT_DESCRIPTIONS = {"kaist": KAIST_LAYOUT, "flir": FLIR_LAYOUT, "fmb": FMB_LAYOUT}
EXPECTED_SPLITS = {"kaist": ("train", "test", KAIST_TEST_ALL_SPLIT), "flir": ("train", "test"), "fmb": FMB_SPLITS}

# A KAIST frame flattened into one file name, e.g. set06_V000_I00019_lwir.jpg (not the release layout).
_KAIST_FLAT = re.compile(r"set\d{2}[_-]?V\d{3}[_-]?.*(lwir|visible)|set\d{2}[_-]?V\d{3}[_-]?I\d{5}", re.IGNORECASE)
_KAIST_FRAME = re.compile(r"I(\d+)")
_SEARCH_DEPTH = 3  # how deep the hints look below the root
_SEARCH_LIMIT = 20000  # directory entries the hints look at, at most


class LayoutError(ValueError):
    """A dataset root holds no pair of the expected layout (or none in a requested split)."""


@dataclass
class PairListing:
    """Pairs found under a dataset root, what could not be paired, and split-level warnings."""

    records: List[Dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def split_counts(self) -> Dict[str, int]:
        """Records per split: train, test, all-test first, then any other split by name."""
        counts: Dict[str, int] = {}
        for record in self.records:
            counts[record["split"]] = counts.get(record["split"], 0) + 1
        rank = {split: index for index, split in enumerate(SPLIT_ORDER)}
        return dict(sorted(counts.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _images_by_stem(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _walk(root: Path, max_depth: int = _SEARCH_DEPTH) -> Iterator[os.DirEntry]:
    """Directory entries below ``root`` (breadth first, bounded in depth and count), for the hints."""
    queue, seen = [(root, 0)], 0
    while queue:
        folder, depth = queue.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > _SEARCH_LIMIT:
                return
            yield entry
            if depth + 1 < max_depth and entry.is_dir(follow_symlinks=False):
                queue.append((Path(entry.path), depth + 1))


def _nested_root(base: Path, marker: Callable[[os.DirEntry], bool]) -> Optional[str]:
    """The folder below ``base`` holding an entry that ``marker`` accepts, relative to ``base``."""
    for entry in _walk(base):
        if marker(entry):
            parent = Path(entry.path).parent
            if parent != base:
                return _relative(parent, base)
    return None


def _kaist_hints(base: Path) -> List[str]:
    flat = [e for e in _walk(base) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
            and _KAIST_FLAT.search(e.name)]
    hints = []
    if flat:
        example = _relative(Path(flat[0].path), base)
        hints.append(f"found {len(flat)} flat image file(s) such as {example!r}: "
                     "frames flattened into one file name (setNN_VNNN_INNNNN_lwir.jpg) are not the KAIST release "
                     "layout; put each frame at setNN/VNNN/lwir/INNNNN.jpg and setNN/VNNN/visible/INNNNN.jpg "
                     "(or use the release as downloaded)")
    nested = _nested_root(base, lambda e: e.is_dir() and re.fullmatch(r"set\d{2}", e.name) is not None)
    if nested:
        hints.append(f"set folders were found under {nested!r}: pass --root {base / nested}")
    if any(p.is_dir() for p in base.glob("V[0-9][0-9][0-9]")):
        hints.append("the root holds VNNN video folders itself: it looks like one setNN folder; pass the folder "
                     "that holds set00 ... set11")
    if (base / "lwir").is_dir() or (base / "visible").is_dir():
        hints.append("the root holds lwir/ and visible/ itself: it looks like one video folder; pass the folder "
                     "that holds set00 ... set11")
    sets = [p for p in base.glob("set[0-9][0-9]") if p.is_dir()]
    if sets and not any(p.is_dir() for s in sets for p in s.glob("V[0-9][0-9][0-9]")):
        hints.append("setNN folders exist but hold no VNNN video folders (only annotations downloaded?)")
    return hints


def _flir_hints(base: Path) -> List[str]:
    hints = []
    if not (base / "JPEGImages").is_dir():
        hints.append("no JPEGImages/ folder under the root")
    nested = _nested_root(base, lambda e: e.is_file() and e.name.endswith(FLIR_THERMAL_SUFFIX))
    if nested and nested != "JPEGImages":
        hints.append(f"*{FLIR_THERMAL_SUFFIX} files were found in {nested!r}: pass the folder above that "
                     "JPEGImages/ as --root")
    original = _nested_root(base, lambda e: e.is_dir() and e.name in (
        "thermal_8_bit", "thermal_16_bit", "images_thermal_train", "images_rgb_train", "RGB"))
    if original is not None or any((base / name).is_dir() for name in ("thermal_8_bit", "images_thermal_train")):
        hints.append("this looks like the original FLIR ADAS release (thermal_8_bit/, RGB/ or images_thermal_*/), "
                     "whose RGB frames are not aligned; the paper uses the aligned-FLIR release")
    return hints


def _fmb_hints(base: Path) -> List[str]:
    hints = []
    nested = _nested_root(base, lambda e: e.is_dir() and e.name == "Infrared")
    if nested and nested not in FMB_SPLITS:
        hints.append(f"an Infrared/ folder was found in {nested!r}: --root must be the folder holding train/ and "
                     "test/")
    for split in FMB_SPLITS:
        folder = base / split
        if folder.is_dir() and not (folder / "Infrared").is_dir():
            names = sorted(p.name for p in folder.iterdir() if p.is_dir())
            hints.append(f"{split}/ holds {names or 'no folders'}, not Infrared/ and Visible/ (names are case "
                         "sensitive)")
    return hints


_HINTS: Dict[str, Callable[[Path], List[str]]] = {"kaist": _kaist_hints, "flir": _flir_hints, "fmb": _fmb_hints}


def _kaist_frame_index(stem: str) -> Optional[int]:
    match = _KAIST_FRAME.fullmatch(stem)
    return int(match.group(1)) if match else None


def is_kaist_test_frame(stem: str) -> bool:
    """True for the frames of the test-all-20 sampling (``I00019``, ``I00039``, ...)."""
    index = _kaist_frame_index(stem)
    return index is not None and index % KAIST_TEST_EVERY == KAIST_TEST_OFFSET


def list_kaist(root: str) -> PairListing:
    """KAIST multispectral pedestrian: ``setNN/VNNN/{lwir,visible}/INNNNN.jpg``.

    set00-set05 give ``train`` (every frame); set06-set11 give ``test`` (test-all-20: frames whose
    index is 19 mod 20) and ``all-test`` (every frame; ids with the ``_all`` suffix). set03-05 and
    set09-11 were recorded at night (``meta.time_of_day``).
    """
    base = Path(root)
    listing = PairListing()
    for set_dir in sorted(p for p in base.glob("set[0-9][0-9]") if p.is_dir()):
        is_train, is_test = set_dir.name in KAIST_TRAIN_SETS, set_dir.name in KAIST_TEST_SETS
        if not (is_train or is_test):
            listing.problems.append(f"{set_dir.name}: not a standard KAIST set (set00-set11), ignored")
            continue
        meta = {"time_of_day": "night" if set_dir.name in KAIST_NIGHT_SETS else "day"}
        for video_dir in sorted(p for p in set_dir.glob("V[0-9][0-9][0-9]") if p.is_dir()):
            visible = _images_by_stem(video_dir / "visible")
            for stem, thermal in _images_by_stem(video_dir / "lwir").items():
                if stem not in visible:
                    listing.problems.append(f"{_relative(thermal, base)}: no visible/{stem}.* partner")
                    continue
                record = {"id": f"kaist_{set_dir.name}_{video_dir.name}_{stem}", "image": _relative(thermal, base),
                          "rgb": _relative(visible[stem], base), "split": "train", "dataset": "kaist",
                          "meta": dict(meta)}
                if is_train:
                    listing.records.append(record)
                    continue
                if _kaist_frame_index(stem) is None:
                    listing.problems.append(f"{_relative(thermal, base)}: frame name is not INNNNN, so it is "
                                            f"only in {KAIST_TEST_ALL_SPLIT}")
                elif is_kaist_test_frame(stem):
                    listing.records.append(dict(record, split="test", meta=dict(meta)))
                listing.records.append(dict(record, id=record["id"] + KAIST_TEST_ALL_ID_SUFFIX,
                                            split=KAIST_TEST_ALL_SPLIT, meta=dict(meta)))
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
    split by ``align_train.txt`` -> ``train`` and ``align_validation.txt`` -> ``test`` (the paper tests
    on the validation pairs); one id per line, e.g. ``FLIR_00002`` (suffixes and extensions are
    tolerated). Pairs in neither list get split ``unlisted``.
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
            listing.problems.append(f"{list_name} not found: no pair gets split {split!r} (unlisted pairs get "
                                    "split 'unlisted')")
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


def _nothing_found(dataset: str, root: str, what: str, listing: PairListing) -> LayoutError:
    lines = [f"no {dataset} pair {what} under {root!r}; expected the {dataset} layout: {LAYOUT_DESCRIPTIONS[dataset]}"]
    lines += [f"  hint: {hint}" for hint in _HINTS[dataset](Path(root))]
    lines += [f"  problem: {problem}" for problem in listing.problems[:5]]
    lines.append("  (see the 'Public folder layouts' section of docs/data.md)")
    return LayoutError("\n".join(lines))


def list_pairs(root: str, dataset: str, splits: Optional[List[str]] = None) -> PairListing:
    """List the RGB/thermal pairs of ``dataset`` (``kaist``, ``flir`` or ``fmb``) under ``root``.

    Args:
        root: the dataset's root folder.
        dataset: layout name.
        splits: keep only these splits (all when None).

    Raises:
        ValueError: unknown layout, or ``root`` is not a folder.
        LayoutError (a ValueError): no pair found, or none in one of the requested ``splits``; the
            message names the expected layout and hints at common mistakes (flat KAIST file names,
            a root one level off, the unaligned FLIR release, ...).

    A standard split that comes out empty while others do not (e.g. only set00-set05 downloaded)
    is reported in ``warnings``, not raised.
    """
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {dataset!r}; choose one of {sorted(LAYOUTS)}")
    if not Path(root).is_dir():
        raise ValueError(f"dataset root {root!r} is not a folder")
    listing = LAYOUTS[dataset](root)
    if not listing.records:
        raise _nothing_found(dataset, root, "found", listing)
    counts = listing.split_counts()
    if splits:
        empty = [split for split in splits if not counts.get(split)]
        if empty:
            lines = [f"no {dataset} pair in split(s) {', '.join(map(repr, empty))} under {root!r} (found: "
                     f"{_format_counts(counts)}); the {dataset} layout's splits are "
                     f"{', '.join(EXPECTED_SPLITS[dataset])}; expected layout: {LAYOUT_DESCRIPTIONS[dataset]}"]
            lines += [f"  hint: {hint}" for split in empty for hint in _empty_split_hints(dataset, split, counts)]
            raise LayoutError("\n".join(lines))
        listing.records = [r for r in listing.records if r["split"] in splits]
    else:
        for split in EXPECTED_SPLITS[dataset]:
            if not counts.get(split):
                hints = "".join(f"; {hint}" for hint in _empty_split_hints(dataset, split, counts))
                listing.warnings.append(f"split {split!r} is empty (found: {_format_counts(counts)}){hints}")
    return listing


def _format_counts(counts: Dict[str, int]) -> str:
    return ", ".join(f"{split}: {count}" for split, count in counts.items()) or "nothing"


def _empty_split_hints(dataset: str, split: str, counts: Dict[str, int]) -> List[str]:
    if split not in EXPECTED_SPLITS[dataset]:
        extra = (" (align_validation.txt gives 'test': the paper tests on the FLIR validation pairs)"
                 if dataset == "flir" and split in ("val", "validation") else "")
        return [f"{split!r} is not a split of the {dataset} layout{extra}"]
    if dataset == "kaist" and split == "train":
        return ["the train split is every frame of set00-set05; are those sets under the root?"]
    if dataset == "kaist" and split == "test" and counts.get(KAIST_TEST_ALL_SPLIT):
        return [f"test keeps only frames INNNNN with NNNNN % {KAIST_TEST_EVERY} == {KAIST_TEST_OFFSET} "
                f"(I00019, I00039, ...) of set06-set11; every test frame is in {KAIST_TEST_ALL_SPLIT!r}"]
    if dataset == "kaist" and split in ("test", KAIST_TEST_ALL_SPLIT):
        return ["the test splits come from set06-set11; are those sets under the root?"]
    if dataset == "flir":
        list_name = dict((s, n) for n, s in FLIR_SPLIT_LISTS).get(split)
        if list_name:
            return [f"{split!r} pairs are those listed in {list_name} (beside JPEGImages/)"]
    if dataset == "fmb" and split in FMB_SPLITS:
        return [f"{split!r} pairs come from {split}/Infrared and {split}/Visible"]
    return []

"""Thermal image decoding that keeps the dynamic range of 16-bit frames.

Generic image decoders (webdataset's ``pil*`` decoders, OpenCLIP's ``pilrgb``) convert every frame
to 8-bit RGB, which clips a 16-bit radiometric value >= 256 to 255: a typical LWIR frame with raw
counts in the thousands becomes a white image. Here the raw bytes are decoded with PIL, turned
into one float channel in [0, 1] and only then converted to the 8-bit 3-channel PIL image that an
OpenCLIP preprocess (a torchvision ``Compose`` starting from a PIL image) expects.

Rules:

* 8-bit grey (``L``) passes through unchanged (``value / 255``); no normalisation is applied, so
  8-bit pixels survive the trip to the preprocess bit for bit, unless ``stretch_8bit=True``
  normalises them like deeper frames (same ``norm``; see :class:`ThermalNorm`).
* RGB or pseudo-colour (``RGB``, ``RGBA``, ``P``...) is reduced to luma (ITU-R 601, PIL's ``L``).
  Pseudo-colour palettes are not inverted here; the converter detects false-colour frames
  (:func:`chroma_fraction`) and refuses them or maps them back with :func:`palette_to_intensity`.
* Frames with more than 8 bits (``I;16``, ``I``, ``F``, 16-bit PNG/TIFF, ``.npy`` arrays) are
  stretched to [0, 1] by ``norm``:

  - ``'percentile'`` (default): per-image ``low``-th to ``high``-th percentile (1st to 99th),
    robust to a few hot or dead pixels and adaptive to the scene's temperature span;
  - ``'minmax'``: per-image minimum to maximum;
  - ``'fixed'``: a fixed ``value_range=(lo, hi)`` (e.g. the scene range of the sensor's counts),
    which keeps absolute temperature comparable across images.

  The 8-bit conversion happens after this stretch, so the 256 grey levels cover the scene's
  actual range instead of the full 16-bit code space.

* Float frames (``F`` TIFFs, float ``.npy``) go through the same stretch. Non-finite pixels (NaN,
  +-inf: no-data or saturated marks of radiometric exports) are left out of the statistics and
  set to :data:`NON_FINITE_VALUE` (0.0, black) in the result; a frame with no finite pixel at all
  is a :class:`ThermalDecodeError` (a skipped sample in the loader and with ``--verify``).
"""
import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # annotations only: the converter uses this module without torch
    import torch

NORM_MODES = ("percentile", "minmax", "fixed")
NON_FINITE_VALUE = 0.0  # what NaN / inf pixels of a float frame become after normalisation

_EIGHT_BIT_MODES = {"1", "L", "LA"}
# PIL modes with colour channels; a thermal frame in one of these is grey-replicated or false-colour.
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S"}


class ThermalDecodeError(ValueError):
    """Raised when bytes cannot be decoded into a thermal frame."""


def _open_array(data: bytes, ext: str) -> Tuple[np.ndarray, bool]:
    """Decode ``data`` into a 2-D array; the flag says whether it is plain 8-bit data."""
    if ext.lower().lstrip(".").endswith("npy"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise ThermalDecodeError(f"expected a 2-D array in .{ext} data, got shape {array.shape}")
        return array, array.dtype == np.uint8
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mode = image.mode
        if mode in _EIGHT_BIT_MODES:
            return np.asarray(image.convert("L")), True
        if mode in COLOUR_MODES:
            return np.asarray(image.convert("RGB").convert("L")), True
        if mode in _HIGH_DEPTH_MODES:
            return np.asarray(image), False
        raise ThermalDecodeError(f"unsupported image mode {mode!r} in .{ext} data")


def normalise(values: np.ndarray, norm: str = "percentile", low: float = 1.0, high: float = 99.0,
              value_range: Optional[Sequence[float]] = None) -> np.ndarray:
    """Stretch a high-bit-depth frame to float32 in [0, 1].

    Args:
        values: 2-D array of raw values (any numeric dtype).
        norm: ``'percentile'``, ``'minmax'`` or ``'fixed'``.
        low: lower percentile for ``'percentile'``.
        high: upper percentile for ``'percentile'``.
        value_range: ``(lo, hi)`` for ``'fixed'``; defaults to ``(0, 65535)``.

    Returns:
        float32 array of the same shape, clipped to [0, 1]. A flat image (no spread) maps to 0.
        Non-finite values (NaN, +-inf) are ignored by the statistics and become
        :data:`NON_FINITE_VALUE`.

    Raises:
        ThermalDecodeError: not a single finite value.
    """
    values = values.astype(np.float32, copy=False)
    if norm not in NORM_MODES:
        raise ValueError(f"unknown thermal normalisation {norm!r}; choose one of {NORM_MODES}")
    finite = None
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if finite.all():
            finite = None
        elif not finite.any():
            raise ThermalDecodeError(f"no finite pixel value in the frame ({values.size} NaN or inf pixels)")
    valid = values if finite is None else values[finite]
    if norm == "percentile":
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
        lo, hi = np.percentile(valid, [low, high])
    elif norm == "minmax":
        lo, hi = float(valid.min()), float(valid.max())
    else:
        lo, hi = value_range if value_range is not None else (0.0, 65535.0)
    span = float(hi) - float(lo)
    if span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        frame = np.clip((values - float(lo)) / span, 0.0, 1.0).astype(np.float32)
    if finite is not None:
        frame[~finite] = NON_FINITE_VALUE
    return frame


def decode_thermal(data: bytes, ext: str, norm: str = "percentile", low: float = 1.0, high: float = 99.0,
                   value_range: Optional[Sequence[float]] = None, stretch_8bit: bool = False) -> np.ndarray:
    """Decode thermal image bytes into one float channel in [0, 1].

    Args:
        data: the encoded file content (PNG, JPEG, TIFF, BMP, WebP, ... or a ``.npy`` array).
        ext: the file extension (``'png'``, ``'tif'``, ``'npy'``...), used for ``.npy`` and messages.
        norm: normalisation of frames deeper than 8 bits (see :func:`normalise`); ignored for 8-bit.
        low: lower percentile for ``norm='percentile'``.
        high: upper percentile for ``norm='percentile'``.
        value_range: ``(lo, hi)`` for ``norm='fixed'``.
        stretch_8bit: normalise 8-bit frames (and the luma of colour frames) with ``norm`` too
            (for ``'fixed'`` the range is then in 8-bit counts); default: ``value / 255``.

    Returns:
        float32 numpy array of shape (H, W) with values in [0, 1].

    Raises:
        ThermalDecodeError: the bytes are empty or cannot be decoded.
    """
    if not data:
        raise ThermalDecodeError(f"empty .{ext} data")
    try:
        array, is_eight_bit = _open_array(data, ext)
    except ThermalDecodeError:
        raise
    except Exception as exc:  # PIL raises many exception types for corrupt files
        raise ThermalDecodeError(f"cannot decode .{ext} data: {exc}") from exc
    if is_eight_bit and not stretch_8bit:
        return array.astype(np.float32) / 255.0
    return normalise(array, norm=norm, low=low, high=high, value_range=value_range)


def thermal_to_pil(frame: np.ndarray) -> Image.Image:
    """Turn a [0, 1] float frame into the 8-bit 3-channel PIL image an OpenCLIP preprocess takes."""
    frame = np.nan_to_num(np.asarray(frame, dtype=np.float32), nan=NON_FINITE_VALUE, posinf=NON_FINITE_VALUE,
                          neginf=NON_FINITE_VALUE)
    grey = np.round(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def thermal_to_tensor(frame: np.ndarray) -> "torch.Tensor":
    """Turn a [0, 1] float frame into a float tensor of shape (3, H, W), the channel repeated."""
    import torch  # lazily: the converter uses this module without needing torch

    return torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).unsqueeze(0).repeat(3, 1, 1)


def decode_thermal_pil(data: bytes, ext: str, norm: str = "percentile",
                       **norm_kwargs: Union[float, bool, Sequence[float], None]) -> Image.Image:
    """Decode thermal bytes straight to an 8-bit RGB PIL image (see :func:`decode_thermal`)."""
    return thermal_to_pil(decode_thermal(data, ext, norm=norm, **norm_kwargs))


# ----------------------------------------------------------------------------- normalisation choice

@dataclass(frozen=True)
class ThermalNorm:
    """One normalisation choice, as the converter, the trainer and the benchmark take and record it.

    ``mode`` is ``'percentile'`` (per-frame ``low``-th..``high``-th percentile, the default),
    ``'minmax'`` or ``'fixed'`` (``value_range=(lo, hi)`` in sensor counts, the same for every
    frame). ``stretch_8bit`` applies the same mode to 8-bit frames, which otherwise pass as
    ``value / 255``.
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.0
    value_range: Optional[Tuple[float, float]] = None
    stretch_8bit: bool = False

    def __post_init__(self):
        if self.mode not in NORM_MODES:
            raise ValueError(f"unknown thermal normalisation {self.mode!r}; choose one of {NORM_MODES}")
        if not 0.0 <= float(self.low) < float(self.high) <= 100.0:
            raise ValueError(f"thermal percentiles must satisfy 0 <= LO < HI <= 100, got {self.low}:{self.high}")
        if self.value_range is not None:
            if self.mode != "fixed":
                raise ValueError(f"a thermal value range ({_range_text(self.value_range)}) only applies to "
                                 f"normalisation 'fixed', not {self.mode!r}")
            lo, hi = (float(v) for v in self.value_range)
            if not lo < hi:
                raise ValueError(f"thermal range {_range_text(self.value_range)}: LO ({lo:g}) must be below HI ({hi:g})")
            object.__setattr__(self, "value_range", (lo, hi))

    def decode_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`decode_thermal` (and the loader's ``norm_kwargs``) besides ``norm``."""
        return {"low": float(self.low), "high": float(self.high), "value_range": self.value_range,
                "stretch_8bit": bool(self.stretch_8bit)}

    def to_dict(self) -> Dict[str, Any]:
        """JSON form, recorded in adapter configs, manifests and results.json."""
        record = asdict(self)
        record["value_range"] = list(self.value_range) if self.value_range is not None else None
        if self.mode != "percentile":  # percentiles mean nothing for the other modes
            record.pop("low"), record.pop("high")
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ThermalNorm":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` for an invalid record."""
        if not isinstance(record, Mapping) or "mode" not in record:
            raise ValueError(f"not a thermal normalisation record: {record!r}")
        value_range = record.get("value_range")
        return cls(mode=record["mode"], low=float(record.get("low", 1.0)), high=float(record.get("high", 99.0)),
                   value_range=tuple(value_range) if value_range is not None else None,
                   stretch_8bit=bool(record.get("stretch_8bit", False)))

    def describe(self) -> str:
        """Short text, e.g. ``fixed 2900:3230`` or ``percentile 1:99 +8bit``."""
        if self.mode == "fixed":
            text = f"fixed {_range_text(self.value_range) if self.value_range else '0:65535'}"
        elif self.mode == "percentile":
            text = f"percentile {self.low:g}:{self.high:g}"
        else:
            text = self.mode
        return text + (" +stretch-8bit" if self.stretch_8bit else "")


def _range_text(value_range: Sequence[float]) -> str:
    return ":".join(f"{float(v):g}" for v in value_range)


def parse_pair(text: str, flag: str = "--thermal-range") -> Tuple[float, float]:
    """``'LO:HI'`` -> ``(lo, hi)`` with ``lo < hi``; ``ValueError`` names the flag and the bad value."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{flag} expects LO:HI (two numbers), got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{flag} {text!r}: LO and HI must be finite numbers")
    if not lo < hi:
        raise ValueError(f"{flag} {text!r}: LO ({lo:g}) must be below HI ({hi:g})")
    return lo, hi


def add_norm_arguments(group, default: Optional[str] = "percentile", what: str = "") -> None:
    """Add ``--thermal-norm``, ``--thermal-range``, ``--thermal-percentiles`` and ``--stretch-8bit``.

    ``default=None`` lets :func:`norm_from_args` return None when no flag was given (the benchmark
    then uses what each variant recorded).
    """
    group.add_argument("--thermal-norm", choices=NORM_MODES, default=default,
                       help="Normalisation of >8-bit thermal frames: 'percentile' (per-frame 1st-99th percentile "
                            "stretch, adapts to each scene), 'minmax', or 'fixed' (one --thermal-range for every "
                            f"frame, keeps absolute temperature; see docs/data.md).{what} Default: {default}.")
    group.add_argument("--thermal-range", default=None, metavar="LO:HI",
                       help="Raw-count range of --thermal-norm fixed, e.g. 0:16383 for a 14-bit sensor or the scene "
                            "span such as 2900:3230 (LO < HI; write --thermal-range=-20:40 for negative values). "
                            "Required by, and only valid with, --thermal-norm fixed.")
    group.add_argument("--thermal-percentiles", default=None, metavar="LO:HI",
                       help="Percentiles of --thermal-norm percentile (0 <= LO < HI <= 100). Default: 1:99.")
    group.add_argument("--stretch-8bit", action="store_true", default=None,
                       help="Normalise 8-bit frames too, with the same --thermal-norm (percentile: per-frame "
                            "stretch; fixed: --thermal-range in 8-bit counts, e.g. 0:130 for KAIST lwir). "
                            "Default: off, 8-bit frames pass as value/255.")


def norm_from_args(args) -> Optional[ThermalNorm]:
    """The :class:`ThermalNorm` of parsed :func:`add_norm_arguments` flags (None: none given, no default).

    Raises:
        ValueError: ``--thermal-range`` without ``fixed``, ``fixed`` without a range, LO >= HI, or
            ``--thermal-percentiles`` without ``percentile``; the message names the flag and value.
    """
    mode = getattr(args, "thermal_norm", None)
    value_range = getattr(args, "thermal_range", None)
    percentiles = getattr(args, "thermal_percentiles", None)
    stretch = getattr(args, "stretch_8bit", None)
    if mode is None:
        if value_range is not None:
            raise ValueError(f"--thermal-range {value_range} needs --thermal-norm fixed")
        if percentiles is not None:
            raise ValueError(f"--thermal-percentiles {percentiles} needs --thermal-norm percentile")
        if stretch:
            raise ValueError("--stretch-8bit needs --thermal-norm (it applies that normalisation to 8-bit frames)")
        return None
    if value_range is not None and mode != "fixed":
        raise ValueError(f"--thermal-range {value_range} only applies to --thermal-norm fixed, not {mode!r}")
    if percentiles is not None and mode != "percentile":
        raise ValueError(f"--thermal-percentiles {percentiles} only applies to --thermal-norm percentile, not {mode!r}")
    if mode == "fixed" and value_range is None:
        raise ValueError("--thermal-norm fixed needs --thermal-range LO:HI, the raw-count range mapped to black..white "
                         "(e.g. 0:16383 for a 14-bit sensor; 0:65535 keeps the old full 16-bit code space)")
    low, high = parse_pair(percentiles, "--thermal-percentiles") if percentiles is not None else (1.0, 99.0)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"--thermal-percentiles {percentiles}: need 0 <= LO < HI <= 100")
    return ThermalNorm(mode=mode, low=low, high=high,
                       value_range=parse_pair(value_range) if value_range is not None else None,
                       stretch_8bit=bool(stretch))


def decode_with(data: bytes, ext: str, norm: Optional[ThermalNorm] = None) -> np.ndarray:
    """:func:`decode_thermal` with a :class:`ThermalNorm` (None: the default percentile choice)."""
    norm = norm or ThermalNorm()
    return decode_thermal(data, ext, norm=norm.mode, **norm.decode_kwargs())


# ----------------------------------------------------------------------------- false-colour frames
#
# A thermal frame stored as RGB is either grey replicated over three channels (R = G = B, up to JPEG
# noise) or a false-colour rendering through a palette. A pixel is "strongly coloured" when
# max(R, G, B) - min(R, G, B) > CHROMA_THRESHOLD (of 255); a frame is false-colour when more than
# FALSE_COLOUR_FRACTION of its pixels are. JPEG chroma noise on grey frames stays below ~10 levels;
# iron and rainbow palettes exceed 48 on most of their ramp.

CHROMA_THRESHOLD = 48
FALSE_COLOUR_FRACTION = 0.05
PALETTES = ("iron", "rainbow")
# Palette names of the converter's --palette: 'refuse' (default) skips false-colour frames, the
# grey palettes say how grey frames encode heat, the colour palettes are inverted by lookup.
PALETTE_CHOICES = ("refuse", "white-hot", "black-hot") + PALETTES

# Our own colour ramps: piecewise-linear control points (position in [0, 1], R, G, B), cold -> hot.
# "iron" (ironbow, FLIR's default export palette): black, indigo, purple-magenta, red, orange,
# yellow, white. "rainbow": dark blue, blue, cyan, green, yellow, red, dark red (jet-like); its
# luma rises then falls, so luma is not a monotonic function of temperature.
PALETTE_CONTROL_POINTS = {
    "iron": ((0.00, 0, 0, 0), (0.15, 40, 0, 110), (0.35, 150, 0, 150), (0.50, 215, 40, 80),
             (0.65, 245, 110, 0), (0.82, 255, 200, 20), (1.00, 255, 255, 255)),
    "rainbow": ((0.00, 0, 0, 140), (0.125, 0, 0, 255), (0.375, 0, 255, 255), (0.50, 0, 255, 0),
                (0.625, 255, 255, 0), (0.875, 255, 0, 0), (1.00, 130, 0, 0)),
}
# A pixel farther than this (RGB Euclidean distance) from every palette colour is "off palette".
OFF_PALETTE_DISTANCE = 60.0


def palette_lut(name: str, size: int = 256) -> np.ndarray:
    """The ``(size, 3)`` uint8 colour table of palette ``name`` (entry i = intensity i / (size - 1))."""
    if name not in PALETTE_CONTROL_POINTS:
        raise ValueError(f"unknown palette {name!r}; choose one of {PALETTES}")
    points = np.asarray(PALETTE_CONTROL_POINTS[name], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, size)
    channels = [np.interp(positions, points[:, 0], points[:, c]) for c in (1, 2, 3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


def render_palette(intensity: np.ndarray, name: str) -> np.ndarray:
    """Render a [0, 1] intensity array through palette ``name`` -> uint8 RGB ``(..., 3)``."""
    lut = palette_lut(name)
    index = np.round(np.clip(intensity, 0.0, 1.0) * (len(lut) - 1)).astype(np.intp)
    return lut[index]


def palette_to_intensity(rgb: np.ndarray, name: str) -> Tuple[np.ndarray, float]:
    """Invert a false-colour rendering: nearest palette colour of every pixel -> intensity in [0, 1].

    Args:
        rgb: uint8 array ``(H, W, 3)``.
        name: ``'iron'`` or ``'rainbow'``.

    Returns:
        (float32 intensity ``(H, W)``, fraction of pixels farther than ``OFF_PALETTE_DISTANCE`` from
        the palette: high values mean the frame was rendered with another palette or carries overlays).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    lut = palette_lut(name).astype(np.float32)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    colours, inverse = np.unique(packed.ravel(), return_inverse=True)
    unique_rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float32)
    best = np.empty(len(colours), dtype=np.intp)
    distance = np.empty(len(colours), dtype=np.float32)
    for start in range(0, len(colours), 8192):  # bounded memory: 8192 x 256 distances at a time
        chunk = unique_rgb[start:start + 8192]
        d2 = ((chunk[:, None, :] - lut[None, :, :]) ** 2).sum(axis=2)
        best[start:start + 8192] = d2.argmin(axis=1)
        distance[start:start + 8192] = np.sqrt(d2.min(axis=1))
    intensity = (best[inverse] / (len(lut) - 1)).astype(np.float32).reshape(rgb.shape[:2])
    off = float((distance[inverse] > OFF_PALETTE_DISTANCE).mean())
    return intensity, off


def chroma_fraction(rgb: np.ndarray, threshold: int = CHROMA_THRESHOLD) -> float:
    """Fraction of pixels whose ``max(R, G, B) - min(R, G, B)`` exceeds ``threshold``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        return 0.0
    channels = rgb[..., :3].astype(np.int16)
    chroma = channels.max(axis=-1) - channels.min(axis=-1)
    return float((chroma > threshold).mean())


def is_false_colour(rgb: np.ndarray) -> bool:
    """Whether an RGB frame is a false-colour (palette) rendering rather than replicated grey."""
    return chroma_fraction(rgb) > FALSE_COLOUR_FRACTION

"""Thermal image decoding that keeps the dynamic range of 16-bit frames.

Generic image decoders (webdataset's ``pil*`` decoders, OpenCLIP's ``pilrgb``) convert every frame
to 8-bit RGB, which clips a 16-bit radiometric value >= 256 to 255: a typical LWIR frame with raw
counts in the thousands becomes a white image. Here the raw bytes are decoded with PIL, turned
into one float channel in [0, 1] and only then converted to the 8-bit 3-channel PIL image that an
OpenCLIP preprocess (a torchvision ``Compose`` starting from a PIL image) expects.

Rules:

* 8-bit grey (``L``) passes through unchanged (``value / 255``); no normalisation is applied, so
  8-bit pixels survive the trip to the preprocess bit for bit.
* RGB or pseudo-colour (``RGB``, ``RGBA``, ``P``...) is reduced to luma (ITU-R 601, PIL's ``L``).
  Pseudo-colour palettes are not inverted; their luma is what the model sees.
* Frames with more than 8 bits (``I;16``, ``I``, ``F``, 16-bit PNG/TIFF, ``.npy`` arrays) are
  stretched to [0, 1] by ``norm``:

  - ``'percentile'`` (default): per-image ``low``-th to ``high``-th percentile (1st to 99th),
    robust to a few hot or dead pixels and adaptive to the scene's temperature span;
  - ``'minmax'``: per-image minimum to maximum;
  - ``'fixed'``: a fixed ``value_range=(lo, hi)`` (e.g. the camera's radiometric range), which
    keeps absolute temperature comparable across images.

  The 8-bit conversion happens after this stretch, so the 256 grey levels cover the scene's
  actual range instead of the full 16-bit code space.
"""
import io
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

NORM_MODES = ("percentile", "minmax", "fixed")

_EIGHT_BIT_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
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
        if mode in _COLOUR_MODES:
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
    """
    values = values.astype(np.float32, copy=False)
    if norm == "percentile":
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
        lo, hi = np.percentile(values, [low, high])
    elif norm == "minmax":
        lo, hi = float(values.min()), float(values.max())
    elif norm == "fixed":
        lo, hi = value_range if value_range is not None else (0.0, 65535.0)
    else:
        raise ValueError(f"unknown thermal normalisation {norm!r}; choose one of {NORM_MODES}")
    span = float(hi) - float(lo)
    if span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - float(lo)) / span, 0.0, 1.0).astype(np.float32)


def decode_thermal(data: bytes, ext: str, norm: str = "percentile", low: float = 1.0, high: float = 99.0,
                   value_range: Optional[Sequence[float]] = None) -> np.ndarray:
    """Decode thermal image bytes into one float channel in [0, 1].

    Args:
        data: the encoded file content (PNG, JPEG, TIFF, BMP, WebP, ... or a ``.npy`` array).
        ext: the file extension (``'png'``, ``'tif'``, ``'npy'``...), used for ``.npy`` and messages.
        norm: normalisation of frames deeper than 8 bits (see :func:`normalise`); ignored for 8-bit.
        low: lower percentile for ``norm='percentile'``.
        high: upper percentile for ``norm='percentile'``.
        value_range: ``(lo, hi)`` for ``norm='fixed'``.

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
    if is_eight_bit:
        return array.astype(np.float32) / 255.0
    return normalise(array, norm=norm, low=low, high=high, value_range=value_range)


def thermal_to_pil(frame: np.ndarray) -> Image.Image:
    """Turn a [0, 1] float frame into the 8-bit 3-channel PIL image an OpenCLIP preprocess takes."""
    grey = np.round(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def thermal_to_tensor(frame: np.ndarray) -> "torch.Tensor":
    """Turn a [0, 1] float frame into a float tensor of shape (3, H, W), the channel repeated."""
    import torch  # lazily: the converter uses this module without needing torch

    return torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).unsqueeze(0).repeat(3, 1, 1)


def decode_thermal_pil(data: bytes, ext: str, norm: str = "percentile",
                       **norm_kwargs: Union[float, Sequence[float], None]) -> Image.Image:
    """Decode thermal bytes straight to an 8-bit RGB PIL image (see :func:`decode_thermal`)."""
    return thermal_to_pil(decode_thermal(data, ext, norm=norm, **norm_kwargs))

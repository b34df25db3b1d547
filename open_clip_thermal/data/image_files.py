"""Locate, inspect and read the image files named by annotations (local paths or fsspec URLs)."""
import io
import os
from dataclasses import dataclass
from typing import Optional

import fsspec
import numpy as np
from PIL import Image

from ..contracts import STANDARD_EXTENSIONS  # PIL format -> extension stored in the shard
from .decode import COLOUR_MODES, FALSE_COLOUR_FRACTION, chroma_fraction

CHROMA_CHECK_SIZE = 256  # colour frames are checked on a copy at most this many pixels wide/high


class ImageFileError(ValueError):
    """The image file is missing, empty, unreadable or not a decodable image."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says."""

    ext: str  # standard extension for the shard member
    mode: str  # PIL mode, e.g. L, I;16, RGB
    width: int
    height: int
    nbytes: int
    # colour frames only (inspect_image(colour_check=True)): fraction of strongly coloured pixels
    # (decode.chroma_fraction); above decode.FALSE_COLOUR_FRACTION the frame is false-colour
    chroma: Optional[float] = None

    @property
    def is_colour(self) -> bool:
        """Stored with colour channels (RGB, palette-indexed...), grey or not."""
        return self.mode in COLOUR_MODES

    @property
    def false_colour(self) -> bool:
        """A palette rendering (strong chroma), not grey replicated over RGB."""
        return self.chroma is not None and self.chroma > FALSE_COLOUR_FRACTION


def _is_url(path: str) -> bool:
    return "://" in path


def _open(path: str):
    if _is_url(path) and not path.startswith("file://"):
        return fsspec.open(path, "rb").open()
    return open(path[len("file://"):] if path.startswith("file://") else path, "rb")


def read_bytes(path: str) -> bytes:
    """Read a whole image file.

    Raises:
        ImageFileError: missing or unreadable file, or zero bytes.
    """
    try:
        with _open(path) as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise ImageFileError(f"missing image file {path}") from exc
    except OSError as exc:
        raise ImageFileError(f"unreadable image file {path}: {exc}") from exc
    except (ImportError, ValueError) as exc:  # fsspec back-end not installed, NUL byte, bad URL
        raise ImageFileError(f"cannot open image file {path}: {exc}") from exc
    if not data:
        raise ImageFileError(f"zero-size image file {path}")
    return data


def _describe(image: Image.Image, path: str, nbytes: int, colour_check: bool = False) -> ImageInfo:
    ext = STANDARD_EXTENSIONS.get(image.format or "")
    if ext is None:
        raise ImageFileError(f"unsupported image format {image.format!r} in {path}")
    mode, width, height = image.mode, image.width, image.height
    chroma = None
    if colour_check and mode in COLOUR_MODES:
        if image.format == "JPEG":
            image.draft("RGB", (CHROMA_CHECK_SIZE, CHROMA_CHECK_SIZE))  # DCT scaling: cheap decode
        small = image.convert("RGB")
        small.thumbnail((CHROMA_CHECK_SIZE, CHROMA_CHECK_SIZE), Image.NEAREST)
        chroma = round(chroma_fraction(np.asarray(small)), 4)
    return ImageInfo(ext=ext, mode=mode, width=width, height=height, nbytes=nbytes, chroma=chroma)


def inspect_image(path: str, full_decode: bool = False, colour_check: bool = False) -> ImageInfo:
    """Check that ``path`` is a non-empty image, reading only its header unless ``full_decode``.

    ``colour_check`` decodes colour frames (a reduced copy) to measure their chroma, which tells
    grey-replicated RGB from false-colour renderings (:attr:`ImageInfo.false_colour`).

    Raises:
        ImageFileError: with the reason (missing, zero-size, undecodable, unsupported format).
    """
    try:
        with _open(path) as handle:
            handle.seek(0, os.SEEK_END)
            nbytes = handle.tell()
            if nbytes == 0:
                raise ImageFileError(f"zero-size image file {path}")
            handle.seek(0)
            try:
                with Image.open(handle) as image:
                    if full_decode:
                        image.load()
                    return _describe(image, path, nbytes, colour_check)
            except ImageFileError:
                raise
            except Exception as exc:  # PIL raises many types for corrupt data
                raise ImageFileError(f"undecodable image {path}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageFileError(f"missing image file {path}") from exc
    except OSError as exc:
        raise ImageFileError(f"unreadable image file {path}: {exc}") from exc
    except ImageFileError:
        raise
    except (ImportError, ValueError) as exc:  # fsspec back-end not installed, NUL byte, bad URL
        raise ImageFileError(f"cannot open image file {path}: {exc}") from exc


def reencode_png(data: bytes) -> Optional[bytes]:
    """Re-encode image bytes as lossless PNG, keeping 16-bit grey as 16-bit.

    Float frames (PIL mode ``F``) become a 16-bit PNG only when every value is a whole number in
    0..65535 (counts stored as float); otherwise PNG cannot hold them without loss (a [0, 1] frame
    would collapse to two grey levels) and None is returned: keep the original bytes.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "F":
            values = np.asarray(image)
            whole = np.isfinite(values).all() and np.array_equal(values, np.round(values))
            if not (whole and values.min() >= 0 and values.max() <= 65535):
                return None
            image = Image.fromarray(values.astype(np.uint16))
        elif image.mode in ("I", "I;16B", "I;16L", "I;16N"):
            values = np.asarray(image)
            if values.min() < 0 or values.max() > 65535:
                raise ImageFileError(f"values {values.min()}..{values.max()} do not fit a 16-bit PNG")
            image = Image.fromarray(values.astype(np.uint16))
        elif image.mode not in ("1", "L", "LA", "I;16", "RGB", "RGBA", "P"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def grey_png(values: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) array as a lossless 8-bit grey PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

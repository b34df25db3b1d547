"""Thermal decoding: 8-bit pass-through, 16-bit stretch, colour to luma, bad bytes."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_thermal.data.decode import (ThermalDecodeError, decode_thermal, decode_thermal_pil, normalise,
                                           thermal_to_pil, thermal_to_tensor)


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_eight_bit_grey_passes_through_unchanged_for_every_norm():
    array = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for norm in ("percentile", "minmax", "fixed"):
        frame = decode_thermal(_encode(array, "PNG"), "png", norm=norm)
        assert frame.dtype == np.float32 and frame.shape == (16, 16)
        np.testing.assert_array_equal(np.round(frame * 255).astype(np.uint8), array)
    assert np.array_equal(np.asarray(thermal_to_pil(frame))[..., 0], array)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("TIFF", "tif")])
def test_sixteen_bit_1000_to_3000_spans_full_range_not_white(fmt, ext):
    rng = np.random.default_rng(0)
    array = rng.integers(1000, 3001, (40, 50)).astype(np.uint16)
    data = _encode(array, fmt)
    # What an 8-bit decoder makes of it: every value >= 256 saturates.
    assert np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).min() == 255
    frame = decode_thermal(data, ext)
    assert frame.min() == 0.0 and frame.max() == 1.0
    assert 0.3 < frame.mean() < 0.7
    lo, hi = np.percentile(array.astype(np.float64), [1, 99])
    expected = np.clip((array - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(frame, expected, atol=1e-5)


def test_minmax_and_fixed_range():
    array = np.array([[1000, 2000], [3000, 1500]], dtype=np.uint16)
    data = _encode(array, "PNG")
    np.testing.assert_allclose(decode_thermal(data, "png", norm="minmax"), [[0, 0.5], [1, 0.25]], atol=1e-6)
    fixed = decode_thermal(data, "png", norm="fixed", value_range=(0, 4000))
    np.testing.assert_allclose(fixed, [[0.25, 0.5], [0.75, 0.375]], atol=1e-6)


def test_percentile_ignores_a_hot_pixel():
    array = np.tile(np.linspace(1000, 2000, 100), (100, 1)).astype(np.uint16)
    array[0, 0] = 60000
    frame = normalise(array, "percentile")
    by_minmax = normalise(array, "minmax")
    assert frame[50].max() == 1.0  # the scene keeps the full range
    assert by_minmax[50].max() < 0.05  # min-max wastes it on the outlier


def test_flat_sixteen_bit_image_is_zero_not_nan():
    frame = decode_thermal(_encode(np.full((4, 4), 1234, dtype=np.uint16), "PNG"), "png")
    assert np.array_equal(frame, np.zeros((4, 4), dtype=np.float32))


def test_rgb_and_pseudo_colour_become_luma():
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    frame = decode_thermal(_encode(rgb, "PNG"), "png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(np.round(frame * 255).astype(np.uint8), expected)
    palette = Image.fromarray(rgb).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    paletted = decode_thermal(buffer.getvalue(), "png")
    np.testing.assert_array_equal(np.round(paletted * 255).astype(np.uint8),
                                  np.asarray(palette.convert("RGB").convert("L")))


def test_npy_radiometric_array():
    array = np.array([[10.0, 20.0], [30.0, 40.0]], dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array)
    np.testing.assert_allclose(decode_thermal(buffer.getvalue(), "npy", norm="minmax"), [[0, 1 / 3], [2 / 3, 1]],
                               atol=1e-6)


@pytest.mark.parametrize("data", [b"", b"definitely not an image", _encode(np.zeros((4, 4), np.uint8), "PNG")[:30]])
def test_bad_bytes_raise_thermal_decode_error(data):
    with pytest.raises(ThermalDecodeError):
        decode_thermal(data, "png")


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown thermal normalisation"):
        decode_thermal(_encode(np.zeros((2, 2), np.uint16), "PNG"), "png", norm="log")


def test_pil_and_tensor_helpers_give_three_identical_channels():
    array = np.array([[0, 1000], [2000, 3000]], dtype=np.uint16)
    image = decode_thermal_pil(_encode(array, "PNG"), "png", norm="minmax")
    assert image.mode == "RGB" and image.size == (2, 2)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], [[0, 85], [170, 255]])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    tensor = thermal_to_tensor(decode_thermal(_encode(array, "PNG"), "png", norm="minmax"))
    assert tensor.shape == (3, 2, 2) and torch.equal(tensor[0], tensor[1])


# ----------------------------------------------------------------------------- float frames (NaN / inf)

def _float_tiff(array):
    """A real float32 TIFF (PIL mode F), as radiometric cameras and tools export them."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.float32), mode="F").save(buffer, format="TIFF")
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).mode == "F"
    return data


def test_float_tiff_with_a_few_nan_pixels_keeps_the_scene_and_zeroes_the_nans():
    array = np.tile(np.linspace(0.0, 1.0, 40, dtype=np.float32), (30, 1))
    array[3, 5] = array[10, 20] = np.nan
    array[7, 7] = np.inf
    array[8, 8] = -np.inf
    finite = np.isfinite(array)
    for norm in ("percentile", "minmax", "fixed"):
        kwargs = {"value_range": (0.0, 1.0)} if norm == "fixed" else {}
        frame = decode_thermal(_float_tiff(array), "tif", norm=norm, **kwargs)
        assert np.isfinite(frame).all(), norm
        assert frame.min() == 0.0 and frame.max() == 1.0, norm
        np.testing.assert_array_equal(frame[~finite], 0.0)  # non-finite pixels: a defined value, 0
        if norm == "minmax":
            np.testing.assert_allclose(frame[finite], array[finite], atol=1e-6)
        grey = np.asarray(thermal_to_pil(frame))[..., 0]
        assert len(np.unique(grey[finite])) > 30, norm  # not blank, not two levels
    lo, hi = np.percentile(array[finite].astype(np.float64), [1, 99])
    frame = decode_thermal(_float_tiff(array), "tif")
    np.testing.assert_allclose(frame[finite], np.clip((array[finite] - lo) / (hi - lo), 0, 1), atol=1e-5)


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_all_non_finite_float_frame_is_a_decode_error(fill):
    with pytest.raises(ThermalDecodeError, match="no finite pixel"):
        decode_thermal(_float_tiff(np.full((4, 5), fill)), "tif")


def test_normalise_never_returns_nan():
    values = np.array([[np.nan, 1.0], [2.0, 3.0]])
    assert np.isfinite(normalise(values, "percentile")).all()
    assert np.isfinite(normalise(values, "minmax")).all()
    assert np.isfinite(normalise(values, "fixed", value_range=(0, 3))).all()

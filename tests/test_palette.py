"""False-colour (palette) thermal frames: detection, manifest counts, refusal and inversion."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_helpers import write_jsonl
from open_clip_thermal.convert import main
from open_clip_thermal.data.decode import (PALETTES, chroma_fraction, is_false_colour, palette_lut,
                                           palette_to_intensity, render_palette)

RAMP = np.tile(np.linspace(0.0, 1.0, 256), (16, 1))  # cold -> hot, left to right


def _jpeg(rgb, quality=90):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.mark.parametrize("name", PALETTES)
def test_a_gradient_through_each_palette_inverts_to_a_monotonic_ramp(name):
    assert palette_lut(name).shape == (256, 3)
    exact, off = palette_to_intensity(render_palette(RAMP, name), name)
    np.testing.assert_allclose(exact, RAMP, atol=1e-6)
    assert off == 0.0
    intensity, off = palette_to_intensity(_jpeg(render_palette(RAMP, name)), name)  # through JPEG q90
    columns = intensity.mean(axis=0)
    assert np.abs(columns - RAMP[0]).max() <= 2 / 255
    assert np.diff(columns).min() >= -1 / 255  # monotonic within one grey level
    assert off == 0.0


def test_luma_of_a_rainbow_ramp_is_not_monotonic():
    luma = np.asarray(Image.fromarray(render_palette(RAMP, "rainbow")).convert("L"))[0].astype(int)
    assert np.diff(luma).min() < 0 and 0 < int(np.argmax(luma)) < 255  # brightest in the middle, not hottest
    assert luma[-1] < luma[128]  # the hottest red is darker than lukewarm cyan/green


def test_chroma_rule_tells_palette_frames_from_grey_rgb():
    grey = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    grey_rgb = _jpeg(np.stack([grey] * 3, axis=-1), quality=75)
    assert chroma_fraction(grey_rgb) == 0.0 and not is_false_colour(grey_rgb)
    for name in PALETTES:
        assert is_false_colour(_jpeg(render_palette(RAMP, name)))


def _dataset(root):
    """2 grey 8-bit PNGs, 1 grey-replicated RGB JPEG, 2 iron-rendered JPEGs (a gradient and its mirror)."""
    (root / "img").mkdir()
    grey = (RAMP * 255).round().astype(np.uint8)
    Image.fromarray(grey).save(root / "img/g0.png")
    Image.fromarray(grey[:, ::-1]).save(root / "img/g1.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(root / "img/rgbgrey.jpg", quality=90)
    Image.fromarray(render_palette(RAMP, "iron")).save(root / "img/iron0.jpg", quality=90)
    Image.fromarray(render_palette(RAMP[:, ::-1], "iron")).save(root / "img/iron1.jpg", quality=90)
    names = ["g0.png", "g1.png", "rgbgrey.jpg", "iron0.jpg", "iron1.jpg"]
    return write_jsonl(root / "ann.jsonl", [{"id": n.split(".")[0], "image": f"img/{n}", "global_caption": n,
                                             "fg_caption": n} for n in names])


def _run(tmp_path, *flags):
    annotations = tmp_path / "ann.jsonl"
    if not annotations.exists():
        _dataset(tmp_path)
    out = tmp_path / "out"
    status = main(["--annotations", str(annotations), "--image-root", str(tmp_path), "--output-dir", str(out),
                   "--no-progress", "--no-shuffle", "--overwrite", *flags])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    return status, out, manifest


def _members(out):
    with tarfile.open(out / "thermal-train-000000.tar") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


def test_palette_frames_are_refused_by_default_and_counted_apart_from_grey_rgb(tmp_path, capsys):
    status, out, manifest = _run(tmp_path)
    assert status == 0
    frames = manifest["thermal_frames"]
    assert {k: frames[k] for k in ("grey_8bit", "high_bit_depth", "rgb_grey", "false_colour", "false_colour_refused")} \
        == {"grey_8bit": 2, "high_bit_depth": 0, "rgb_grey": 1, "false_colour": 0, "false_colour_refused": 2}
    assert [f.rsplit("/", 1)[-1] for f in frames["false_colour_refused_files"]] == ["iron0.jpg", "iron1.jpg"]
    assert manifest["total_samples"] == 3 and manifest["skipped_count"] == 2
    assert manifest["skipped_by_reason"] == {"false-colour thermal frame": 2}
    assert manifest["splits"]["train"]["thermal_frames"]["rgb_grey"] == 1
    assert "warning: 2 false-colour (palette) thermal frame(s) were NOT written" in capsys.readouterr().err
    assert sorted(n for n in _members(out) if n.endswith((".png", ".jpg"))) == ["g0.png", "g1.png", "rgbgrey.jpg"]

    status, _, _ = _run(tmp_path, "--strict")
    assert status == 1
    err = capsys.readouterr().err
    assert "false-colour thermal frame" in err and "iron0.jpg" in err and "--palette" in err


def test_iron_palette_maps_frames_back_to_intensity(tmp_path):
    status, out, manifest = _run(tmp_path, "--palette", "iron")
    assert status == 0
    assert manifest["thermal_frames"]["false_colour"] == 2 and manifest["thermal_frames"]["false_colour_refused"] == 0
    assert manifest["total_samples"] == 5
    members = _members(out)
    assert "iron0.jpg" not in members  # stored as 8-bit grey PNG
    for key, ramp in (("iron0", RAMP[0]), ("iron1", RAMP[0][::-1])):
        grey = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))
        assert grey.ndim == 2
        assert np.abs(grey.mean(axis=0) / 255 - ramp).max() <= 2 / 255
        meta = json.loads(members[f"{key}.json"])
        assert meta["palette"] == "iron" and meta["thermal_mode"] == "RGB" and meta["off_palette"] == 0.0
    assert members["g0.png"] == (tmp_path / "img/g0.png").read_bytes()  # grey frames untouched


def test_black_hot_inverts_every_8bit_frame(tmp_path):
    status, out, manifest = _run(tmp_path, "--palette", "black-hot")
    assert status == 0 and manifest["total_samples"] == 5
    g0 = np.asarray(Image.open(io.BytesIO(_members(out)["g0.png"])))
    np.testing.assert_array_equal(g0, 255 - np.asarray(Image.open(tmp_path / "img/g0.png")))

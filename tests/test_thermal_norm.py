"""Thermal normalisation end to end: flags -> loader -> adapter config -> benchmark decoding."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from data_helpers import TO_TENSOR, png_bytes, write_tar
from open_clip_thermal.data.decode import ThermalNorm, decode_thermal, decode_with, norm_from_args, thermal_to_pil

LO, SPAN = 2900, 330  # a real FLIR 14-bit TIFF of one scene spans ~330 counts
FIXED = ThermalNorm("fixed", value_range=(LO, LO + SPAN - 1))


def _frame():
    return (LO + np.arange(SPAN)).reshape(11, 30).astype(np.uint16)


def _file_bytes(tmp_path, fmt):
    path = tmp_path / f"flir.{fmt.lower()}"
    Image.fromarray(_frame()).save(path, format=fmt)
    return path.read_bytes()


def _grey_levels(frame):
    return len(np.unique(np.asarray(thermal_to_pil(frame).convert("L"))))


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("TIFF", "tif")])
def test_fixed_range_keeps_a_330_count_span_where_0_65535_flattens_it(tmp_path, fmt, ext):
    data = _file_bytes(tmp_path, fmt)
    fixed = decode_with(data, ext, FIXED)
    assert len(np.unique(fixed)) == 330 and fixed.min() == 0.0 and fixed.max() == 1.0
    assert _grey_levels(fixed) == 256  # every 8-bit level is used
    old = decode_thermal(data, ext, norm="fixed")  # the old 0..65535 range
    assert _grey_levels(old) == 3  # 2900..3229 of 65535 -> grey levels 11, 12, 13
    assert old.max() < 0.05


def test_stretch_8bit_is_off_by_default_and_uses_the_same_norm():
    dim = np.tile(np.arange(0, 101, dtype=np.uint8), (4, 1))  # a KAIST-like lwir frame, maximum 100
    data = png_bytes(dim)
    assert decode_with(data, "png").max() == pytest.approx(100 / 255)  # default: value / 255
    stretched = decode_with(data, "png", ThermalNorm("minmax", stretch_8bit=True))
    assert stretched.min() == 0.0 and stretched.max() == 1.0 and _grey_levels(stretched) == 101
    fixed = decode_with(data, "png", ThermalNorm("fixed", value_range=(0, 130), stretch_8bit=True))
    np.testing.assert_allclose(fixed[0], np.arange(101) / 130, atol=1e-6)


def _converter_error(capsys, *flags):
    from open_clip_thermal.convert import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--annotations", "a.jsonl", "--output-dir", "out", *flags])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_range_flags_are_refused_naming_the_value(capsys):
    assert "--thermal-range '3230:2900': LO (3230) must be below HI (2900)" in _converter_error(
        capsys, "--thermal-norm", "fixed", "--thermal-range", "3230:2900")
    assert "--thermal-range 0:100 only applies to --thermal-norm fixed" in _converter_error(
        capsys, "--thermal-range", "0:100")
    assert "--thermal-norm fixed needs --thermal-range LO:HI" in _converter_error(capsys, "--thermal-norm", "fixed")
    assert "expects LO:HI (two numbers), got '12'" in _converter_error(
        capsys, "--thermal-norm", "fixed", "--thermal-range", "12")

    from open_clip_thermal.training.options import parse_args, train_options
    with pytest.raises(SystemExit, match=r"--thermal-range '5:5': LO \(5\) must be below HI \(5\)"):
        train_options(parse_args(["--thermal-norm", "fixed", "--thermal-range", "5:5"])[0])
    with pytest.raises(SystemExit, match="only applies to --thermal-norm fixed, not 'minmax'"):
        train_options(parse_args(["--thermal-norm", "minmax", "--thermal-range", "0:9"])[0])

    from open_clip_thermal.benchmark import main as benchmark
    assert benchmark(["--data", "x.tar", "--out", "o", "--thermal-range", "0:9"]) == 2
    assert "--thermal-range 0:9 needs --thermal-norm fixed" in capsys.readouterr().err


def test_converter_records_the_choice_in_the_manifest(tmp_path):
    from open_clip_thermal.convert import main
    Image.fromarray(_frame()).save(tmp_path / "a.tif", format="TIFF")
    (tmp_path / "ann.jsonl").write_text(json.dumps({"id": "a", "image": "a.tif", "global_caption": "x",
                                                    "fg_caption": "y"}) + "\n")
    assert main(["--annotations", str(tmp_path / "ann.jsonl"), "--image-root", str(tmp_path), "--output-dir",
                 str(tmp_path / "out"), "--no-progress", "--verify", "--thermal-norm", "fixed",
                 "--thermal-range", "2900:3229"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["normalisation"]["mode"] == "fixed"
    assert manifest["normalisation"]["value_range"] == [2900.0, 3229.0]
    assert manifest["normalisation"]["flags"] == "--thermal-norm fixed --thermal-range=2900:3229"
    assert manifest["thermal_frames"]["high_bit_depth"] == 1


def test_trainer_flags_reach_the_loader_and_decode_with_the_range(tmp_path):
    from open_clip_thermal.data.loader import make_thermal_dataset
    from open_clip_thermal.training.options import parse_args, train_options
    options = train_options(parse_args(["--thermal-norm", "fixed", "--thermal-range", "2900:3229",
                                        "--stretch-8bit"])[0])
    assert options.thermal_norm == ThermalNorm("fixed", value_range=(2900, 3229), stretch_8bit=True)
    shard = write_tar(tmp_path / "s-000000.tar", [{"__key__": "a", "tif": _file_bytes(tmp_path, "TIFF"), "txt": b"x"}])
    (image, _), = list(make_thermal_dataset(str(shard), TO_TENSOR, lambda t: [t], thermal_norm=options.thermal_norm,
                                            is_train=False))
    assert len(np.unique(image[0].numpy())) == 256
    with pytest.raises(ValueError, match="LO \\(9\\) must be below HI \\(1\\)"):
        make_thermal_dataset(str(shard), TO_TENSOR, str, thermal_norm="fixed", norm_kwargs={"value_range": (9, 1)})


def _recording_model(norm):
    """The model the trainer builds (tiny config, random base) for a run with ``norm``."""
    from open_clip_thermal.training.hooks import TrainerHooks, TrainOptions
    return TrainerHooks(TrainOptions(thermal_norm=norm)).create_model_and_transforms("tclip-tiny-global")[0]


def test_adapter_config_round_trip_and_benchmark_uses_the_recorded_norm(tmp_path, monkeypatch):
    from open_clip_thermal.adapters import read_adapter_config, save_adapters
    from open_clip_thermal.evaluation import encode
    from open_clip_thermal.evaluation import shard_reader as shards
    model = _recording_model(FIXED)
    save_adapters(model, tmp_path / "fixed")
    assert read_adapter_config(tmp_path / "fixed")["thermal_norm"] == {
        "mode": "fixed", "value_range": [2900.0, 3229.0], "stretch_8bit": False}
    save_adapters(_recording_model("percentile"), tmp_path / "pct")
    assert encode.recorded_norm(str(tmp_path / "fixed")) == FIXED
    assert encode.recorded_norm(str(tmp_path / "fixed" / "global" / "adapter_model.safetensors")) == FIXED
    assert encode.seed_norm("lora-global", (str(tmp_path / "fixed"),), None) == (FIXED, "recorded")
    assert encode.seed_norm("lora-global", (str(tmp_path / "pct"),), None) == (ThermalNorm(), "recorded")
    assert encode.seed_norm("zeroshot", ("openai",), None) == (ThermalNorm(), "default")
    override = ThermalNorm("minmax")
    assert encode.seed_norm("lora-global", (str(tmp_path / "fixed"),), override) == (override, "override")

    # the benchmark's shard decoding receives each seed's setting
    shard = write_tar(tmp_path / "test-000000.tar", [{"__key__": key, "tif": _file_bytes(tmp_path, "TIFF"),
                                                      "txt": b"a hot " + key.encode()} for key in ("car", "dog")])
    seen = []
    real = shards.decode_with
    monkeypatch.setattr(shards, "decode_with", lambda data, ext, norm=None: seen.append(norm) or real(data, ext, norm))
    (_, batch), = list(shards.iter_image_batches([str(shard)], TO_TENSOR, 4, FIXED))
    assert seen == [FIXED] * 2 and len(np.unique(batch[0, 0].numpy())) == 256

    from open_clip_thermal.benchmark import main
    seen.clear()
    out = tmp_path / "out"
    argv = ["--data", str(shard), "--out", str(out), "--no-zeroshot", "--no-plots", "--no-cache", "--recall-k", "1",
            "--group-field", "", "--variant", f"lora-global/fixed=tclip-tiny-global:{tmp_path / 'fixed'}",
            "--variant", f"lora-global/pct=tclip-tiny-global:{tmp_path / 'pct'}"]
    assert main(argv) == 0
    assert seen == [FIXED] * 2 + [ThermalNorm()] * 2  # each variant's two images decoded with its own
    results = json.loads((out / "results.json").read_text())
    by_row = {row["label"]: row["thermal_norm"] for row in results["rows"]}
    assert by_row["lora-global/fixed"]["text"] == "fixed 2900:3229"
    assert by_row["lora-global/fixed"]["source"] == "recorded"
    assert by_row["lora-global/pct"]["text"] == "percentile 1:99"
    assert results["config"]["variants"][0]["thermal_norm"][0]["value_range"] == [2900.0, 3229.0]
    seen.clear()
    assert main(argv + ["--thermal-norm", "minmax"]) == 0
    assert seen == [ThermalNorm("minmax")] * 4  # the override, for both variants
    assert {row["thermal_norm"]["source"] for row in json.loads((out / "results.json").read_text())["rows"]} == {"override"}

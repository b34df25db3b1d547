"""Benchmark edge cases that used to end in tracebacks, and shard members the benchmark refused.

Each test runs the CLI (``main``) end to end on tiny real shards and tiny random models.
"""
import io
import json

from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from open_clip_thermal.benchmark import main
from test_benchmark_cli import HAVE_MODEL, make_adapter, needs_model, write_shards

ZEROSHOT = ["--base-model", "thermal-vit-tiny", "--base-pretrained", "none", "--no-plots", "--no-cache"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.replace("\r", "\n").strip().splitlines()[-1]  # progress bars share stderr
    assert last.startswith("error: "), err
    return last


# ----------------------------------------------------------------------------- 1a: one pair

def test_one_pair_test_set_skips_the_gap_tests_with_a_note(tmp_path):
    urls = write_shards(tmp_path / "shards", count=1)
    out = tmp_path / "out"
    assert main(["--data", *urls, "--out", str(out), *ZEROSHOT, "--recall-k", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["n_samples"] == 1
    gap = results["thermal_gap"]
    assert gap["tests"] == [] and "at least 2" in gap["note"] and "1 pair" in gap["note"]
    assert all(cell["n"] == 1 and cell["std"] is None for cell in gap["per_row"].values())
    assert gap["note"] in (out / "results.md").read_text()


# ----------------------------------------------------------------------------- 1b: K <= 0

@pytest.mark.parametrize("ks,bad", [("0,5", "[0]"), ("=-1,1", "[-1]"), ("=1,-3,0", "[-3, 0]")])
def test_non_positive_recall_k_is_a_one_line_error(ks, bad, tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", count=4)
    flag = ["--recall-k" + ks] if ks.startswith("=") else ["--recall-k", ks]
    assert main(["--data", *urls, "--out", str(tmp_path / "out"), *ZEROSHOT, *flag]) == 2
    err = _one_line_error(capsys)
    assert "--recall-k" in err and bad in err


def test_empty_recall_k_is_a_one_line_error(tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", count=4)
    assert main(["--data", *urls, "--out", str(tmp_path / "out"), *ZEROSHOT, "--recall-k", ","]) == 2
    assert "--recall-k" in _one_line_error(capsys)


@pytest.mark.parametrize("size", ["0", "=-3"])
def test_non_positive_batch_size_is_a_one_line_error(size, tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", count=4)
    flag = ["--batch-size" + size] if size.startswith("=") else ["--batch-size", size]
    assert main(["--data", *urls, "--out", str(tmp_path / "out"), *ZEROSHOT, "--recall-k", "1", *flag]) == 2
    assert "--batch-size" in _one_line_error(capsys)


# ----------------------------------------------------------------------------- 1c: NaN embeddings

def _nan_adapter(name, folder):
    """An adapter folder whose LoRA weights are NaN (a blown-up run saved by a version without the
    finite-weights check): written finite, then the weights files are overwritten with NaN."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from open_clip_thermal.adapters import save_adapters
    import open_clip_thermal
    torch.manual_seed(0)
    save_adapters(open_clip_thermal.create_model(name, pretrained=None), folder)
    for path in Path(folder).rglob("adapter_model.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = {k: torch.full_like(v, float("nan")) if "lora_" in k else v for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata=metadata)
    return str(folder)


@needs_model
def test_nan_embeddings_name_the_variant_and_seed(tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", count=4)
    good = make_adapter("tclip-tiny-global", tmp_path / "g_s0", seed=1)
    bad = _nan_adapter("tclip-tiny-global", tmp_path / "g_s42")
    out = tmp_path / "out"
    argv = ["--data", *urls, "--out", str(out), "--no-zeroshot", "--recall-k", "1", "--no-plots",
            "--variant", f"lora-global=tclip-tiny-global:{good},{bad}"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "lora-global" in err and "seed 2 of 2" in err and bad in err and "NaN" in err
    assert good not in err
    # nothing non-finite was cached: the cache holds the good seed's embeddings only, all finite
    cached = sorted((out / "embedding_cache").glob("*.npy"))
    assert cached and all(np.isfinite(np.load(p)).all() for p in cached)


# ----------------------------------------------------------------------------- 2: image members

def _frame(i):
    return np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8)


def _write(folder, formats):
    """One shard; sample i holds frame i encoded (losslessly) as ``formats[i]``."""
    folder.mkdir(parents=True)
    with wds.TarWriter(str(folder / "test-test-000000.tar")) as sink:
        for i, (ext, pil_format) in enumerate(formats):
            buffer = io.BytesIO()
            Image.fromarray(_frame(i)).save(buffer, format=pil_format, **({"lossless": True} if ext == "webp" else {}))
            sink.write({"__key__": f"s{i:04d}", ext: buffer.getvalue(), "txt": f"infrared thermal image of scene {i}",
                        "fg.txt": f"infrared thermal image of scene {i}, a warm engine block number {i}",
                        "json": json.dumps({"time_of_day": "day" if i % 2 else "night"})})
    return [str(folder / "test-test-000000.tar")]


def test_benchmark_reads_the_image_members_the_loader_reads():
    from open_clip_thermal.evaluation import shard_reader as shards
    from open_clip_thermal.data import image_files, loader
    assert shards.IMAGE_EXTENSIONS is loader.THERMAL_EXTENSIONS  # one list, not a copy
    assert set(image_files.STANDARD_EXTENSIONS.values()) <= set(shards.IMAGE_EXTENSIONS)  # all the converter writes


def test_bmp_webp_ppm_members_are_benchmarked_like_png(tmp_path):
    formats = [("bmp", "BMP"), ("webp", "WEBP"), ("ppm", "PPM"), ("bmp", "BMP"), ("webp", "WEBP"), ("ppm", "PPM")]
    mixed = _write(tmp_path / "mixed", formats)
    png = _write(tmp_path / "png", [("png", "PNG")] * len(formats))
    argv = [*ZEROSHOT, "--recall-k", "1,3"]
    assert main(["--data", *mixed, "--out", str(tmp_path / "out_mixed"), *argv]) == 0
    assert main(["--data", *png, "--out", str(tmp_path / "out_png"), *argv]) == 0
    got = json.loads((tmp_path / "out_mixed" / "results.json").read_text())
    want = json.loads((tmp_path / "out_png" / "results.json").read_text())
    assert got["config"]["n_samples"] == len(formats)
    # the same pixels, stored losslessly in another format, give the same numbers
    assert got["rows"] == want["rows"] and got["thermal_gap"] == want["thermal_gap"]

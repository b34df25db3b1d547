"""The thermal normalisation recorded at training follows the weights on every load path.

Adapters trained with minmax are pushed to a loopback Hub (tests/server_helpers.py) or kept in a local
folder; the benchmark, classify and search of those weights must encode 16-bit test images exactly as an
explicit ``--thermal-norm minmax`` does, and differently from the default percentile. A corrupt config is
an error naming the file; the baselines' exports record the choice and are read back.
"""
import json
import logging

import numpy as np
import open_clip
import pytest
import torch

import open_clip_thermal as oct
from open_clip_thermal.adapters import (CONFIG_NAME, THERMAL_NORM_ATTR, export_merged, read_adapter_config,
                                        recorded_thermal_norm)
from open_clip_thermal.contracts import BRANCHES, CAPTION_FIELDS, FINE_GRAINED, GLOBAL
from open_clip_thermal.data.decode import ThermalNorm
from open_clip_thermal.evaluation import encode
from open_clip_thermal.evaluation.errors import BenchmarkError

from data_helpers import png_bytes, save_image, write_tar
from model_helpers import randomise_lora, tiny_clip

TOKEN = "hf_loopback_write_token"
MINMAX = ThermalNorm("minmax")
FIXED = ThermalNorm("fixed", value_range=(900.0, 2500.0))
REPO = "thermal-org/tiny-minmax"


def _frame(seed: int) -> np.ndarray:
    """A 16-bit frame whose hot and cold outliers make minmax, percentile and fixed stretches differ."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(1000, 3000, (40, 40)).astype(np.uint16)
    frame[seed % 40, :3] = 20000  # a hot spot: minmax maps the scene to a few dark levels, percentile does not
    frame[-1, -2:] = 100
    return frame



@pytest.fixture
def minmax_dual(tmp_path):
    """A tclip-tiny-dual on a base checkpoint, LoRA perturbed, recording minmax as the trainer does."""
    base = tmp_path / "base.pt"
    torch.save(tiny_clip().state_dict(), base)
    model = open_clip.create_model("tclip-tiny-dual", pretrained=str(base))
    randomise_lora(model)
    setattr(model, THERMAL_NORM_ATTR, MINMAX.to_dict())
    return model.eval()


@pytest.fixture(params=["hub", "folder"])
def weights(request, tmp_path, minmax_dual):
    """The minmax adapters as the commands name them: an hf-hub repo or a local folder."""
    if request.param == "folder":
        return str(oct.save_adapters(minmax_dual, tmp_path / "adapters"))
    request.getfixturevalue("loopback_hub")
    oct.push_adapters(minmax_dual, REPO, token=TOKEN)
    return f"hf-hub:{REPO}"


def _differ(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_the_record_of_a_hub_repo_or_folder_is_read(weights, minmax_dual):
    assert recorded_thermal_norm(weights) == MINMAX.to_dict()
    assert encode.recorded_norm(weights) == MINMAX
    assert encode.seed_norm("tclip-dual", (weights,), None) == (MINMAX, "recorded")
    loaded = oct.create_model("tclip-tiny-dual", pretrained=weights)
    assert getattr(loaded, THERMAL_NORM_ATTR) == MINMAX.to_dict()  # kept, so a re-save or re-push records it


def test_benchmark_encodes_with_the_recorded_norm(weights, tmp_path, monkeypatch):
    from open_clip_thermal.benchmark import main
    from open_clip_thermal.benchmark import runner

    shard = write_tar(tmp_path / "test-000000.tar", [
        {"__key__": f"s{i}", "png": png_bytes(_frame(i)), CAPTION_FIELDS[GLOBAL]: f"a hot car {i}".encode(),
         CAPTION_FIELDS[FINE_GRAINED]: f"a hot car {i} on the left".encode()} for i in range(4)])
    encoded = []
    real = runner.encode_test_set
    monkeypatch.setattr(runner, "encode_test_set", lambda *a, **k: encoded.append(real(*a, **k)) or encoded[-1])

    def image_features(*flags):
        encoded.clear()
        out = tmp_path / f"out{len(flags)}{'-'.join(flags)}"
        assert main(["--data", str(shard), "--out", str(out), "--no-zeroshot", "--no-plots", "--no-cache",
                     "--recall-k", "1", "--group-field", "", "--variant", f"tclip-dual=tclip-tiny-dual:{weights}",
                     *flags]) == 0
        (features,) = encoded
        return [features[(branch, "image")] for branch in BRANCHES], json.loads((out / "results.json").read_text())

    recorded, results = image_features()
    explicit, _ = image_features("--thermal-norm", "minmax")
    default, _ = image_features("--thermal-norm", "percentile")
    for got, want, other in zip(recorded, explicit, default):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert _differ(got, other) > 1e-3
    (row,) = results["rows"]
    assert row["thermal_norm"]["source"] == "recorded" and row["thermal_norm"]["text"] == "minmax"


def _tree(root):
    for label in ("car", "person"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            save_image(root / label / f"{i}.png", _frame(i + (10 if label == "car" else 0)), "PNG")
    return root


def test_classify_encodes_with_the_recorded_norm(weights, tmp_path, monkeypatch, capsys):
    from open_clip_thermal.classify import zeroshot
    from open_clip_thermal.classify.cli import main

    tree = _tree(tmp_path / "tree")
    seen = []
    real = zeroshot.classify
    monkeypatch.setattr(zeroshot, "classify", lambda model, dataset, *a, **k: seen.append((model, dataset))
                        or real(model, dataset, *a, **k))

    def image_features(*flags):
        seen.clear()
        out = tmp_path / f"out{'-'.join(flags)}"
        assert main(["eval", "--data", str(tree), "--model", f"tclip-tiny-dual:{weights}", "--out", str(out),
                     "--no-plots", *flags]) == 0
        (model, dataset), = seen
        batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            features = model.branch_image_features(batch, branch=BRANCHES, normalize=True)
        return features, json.loads((out / "results.json").read_text())["results"][0]["thermal_norm"]

    recorded, record = image_features()
    explicit, _ = image_features("--thermal-norm", "minmax")
    default, _ = image_features("--thermal-norm", "percentile")
    assert record["source"] == "recorded" and record["mode"] == "minmax"
    for branch in BRANCHES:
        torch.testing.assert_close(recorded[branch], explicit[branch], atol=0, rtol=0)
        assert _differ(recorded[branch], default[branch]) > 1e-3
    assert "warning" not in capsys.readouterr().err  # recorded: nothing to warn about


def test_search_encodes_with_the_recorded_norm(weights, tmp_path):
    from open_clip_thermal.search.cli import main
    from open_clip_thermal.search.embedder import load_embedder

    files = [save_image(tmp_path / f"{i}.png", _frame(i), "PNG") for i in range(3)]
    recorded = load_embedder(f"tclip-tiny-dual:{weights}")
    assert recorded.norm == MINMAX and recorded.norm_warning is None
    explicit = load_embedder(f"tclip-tiny-dual:{weights}", norm=MINMAX)
    default = load_embedder(f"tclip-tiny-dual:{weights}", norm=ThermalNorm())
    got = recorded.embed_files(files)
    np.testing.assert_array_equal(got, explicit.embed_files(files))
    assert np.abs(got - default.embed_files(files)).max() > 1e-3

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        save_image(folder / f"{i}.png", _frame(i), "PNG")
    assert main(["index", "--index", str(tmp_path / "idx"), "--folder", str(folder), "--model",
                 f"tclip-tiny-dual:{weights}", "--workers", "0", "--no-progress"]) == 0
    header = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert header["model"]["thermal_norm"] == MINMAX.to_dict()


def _corrupt(folder):
    config = folder / CONFIG_NAME
    config.write_text(config.read_text()[:-20])  # cut: no longer JSON
    return config


def test_a_corrupt_config_is_an_error_naming_the_file(minmax_dual, tmp_path, capsys):
    from open_clip_thermal.benchmark import main as benchmark
    from open_clip_thermal.classify.cli import main as classify
    from open_clip_thermal.search.embedder import load_embedder
    from open_clip_thermal.search.errors import SearchError

    folder = oct.save_adapters(minmax_dual, tmp_path / "adapters")
    config = _corrupt(folder)
    with pytest.raises(BenchmarkError, match=f"cannot read the thermal normalisation record of {config}"):
        encode.seed_norm("tclip-dual", (str(folder),), None)
    with pytest.raises(SearchError, match=str(config)):
        load_embedder(f"tclip-tiny-dual:{folder}")
    assert classify(["eval", "--data", str(_tree(tmp_path / "tree")), "--model", f"tclip-tiny-dual:{folder}",
                     "--out", str(tmp_path / "c")]) == 2
    assert str(config) in capsys.readouterr().err
    shard = write_tar(tmp_path / "t-000000.tar", [{"__key__": "a", "png": png_bytes(_frame(0)),
                                                   CAPTION_FIELDS[GLOBAL]: b"x", CAPTION_FIELDS[FINE_GRAINED]: b"y"}])
    assert benchmark(["--data", str(shard), "--out", str(tmp_path / "b"), "--no-zeroshot",
                      "--variant", f"tclip-dual=tclip-tiny-dual:{folder}"]) == 2
    assert str(config) in capsys.readouterr().err


def test_a_corrupt_config_in_a_hub_repo_names_the_cached_file(loopback_hub, minmax_dual, tmp_path):
    folder = oct.save_adapters(minmax_dual, tmp_path / "adapters")
    oct.push_adapters(str(folder), REPO, token=TOKEN)
    sha = loopback_hub.repos[REPO]["refs"]["main"]
    files = dict(loopback_hub.repos[REPO]["commits"][sha])
    files[CONFIG_NAME] = files[CONFIG_NAME][:-20]
    loopback_hub.add_commit(REPO, files)
    with pytest.raises(BenchmarkError, match=f"hf-hub:{REPO}.*{CONFIG_NAME}"):
        encode.recorded_norm(f"hf-hub:{REPO}")
    with pytest.raises(BenchmarkError, match="RepositoryNotFoundError"):
        encode.recorded_norm("hf-hub:thermal-org/missing")


def test_a_reloaded_model_pushed_again_keeps_the_record(loopback_hub, minmax_dual):
    oct.push_adapters(minmax_dual, REPO, token=TOKEN)
    reloaded = open_clip.create_model("tclip-tiny-dual", pretrained=f"hf-hub:{REPO}")
    oct.push_adapters(reloaded, "thermal-org/again", token=TOKEN)
    assert encode.recorded_norm("hf-hub:thermal-org/again") == MINMAX


def _trained(method, model_name):
    """The model the trainer builds for ``--method METHOD`` with --thermal-norm fixed 900:2500."""
    from open_clip_thermal.training.hooks import TrainerHooks, TrainOptions
    return TrainerHooks(TrainOptions(method=method, thermal_norm=FIXED)).create_model_and_transforms(model_name)[0]


@pytest.mark.parametrize("method", ["full", "declip"])
def test_full_and_declip_exports_record_the_norm(method, tmp_path):
    from open_clip_thermal.baselines import save_openclip_weights
    from open_clip_thermal.evaluation.variants import VariantSpec, build_model

    model = _trained(method, "thermal-vit-tiny")
    path = save_openclip_weights(model, tmp_path / "model.safetensors")
    assert encode.recorded_norm(str(path)) == FIXED
    assert encode.seed_norm("full", (str(path),), None) == (FIXED, "recorded")
    rebuilt = build_model(VariantSpec("full", "full", "thermal-vit-tiny", ((str(path),),)), (str(path),))
    online = model.online if method == "declip" else model
    for key, value in online.state_dict().items():  # the export still loads as the same weights
        torch.testing.assert_close(rebuilt.state_dict()[key], value, atol=0, rtol=0)


def test_clip_adapter_folder_records_the_norm_and_keeps_it_on_reload(tmp_path):
    from open_clip_thermal.baselines import save_clip_adapter

    folder = save_clip_adapter(_trained("clip-adapter", "thermal-vit-tiny"), tmp_path / "ca")
    assert json.loads((folder / CONFIG_NAME).read_text())["thermal_norm"] == FIXED.to_dict()
    assert encode.seed_norm("clip-adapter", (str(folder),), None) == (FIXED, "recorded")
    reloaded = oct.create_model("clip-adapter", pretrained=str(folder))
    assert encode.recorded_norm(str(save_clip_adapter(reloaded, tmp_path / "again"))) == FIXED


def test_merged_lora_export_records_the_norm(tmp_path):
    model = _trained("lora", "tclip-tiny-global")
    path = export_merged(model, GLOBAL, tmp_path / "merged.safetensors")
    assert encode.seed_norm("full", (str(path),), None) == (FIXED, "recorded")
    assert read_adapter_config(oct.save_adapters(model, tmp_path / "a"))["thermal_norm"] == FIXED.to_dict()


def test_weights_without_a_record_are_decoded_with_the_default_and_say_so(tmp_path, caplog, capsys):
    from open_clip_thermal.classify.cli import main as classify

    checkpoint = tmp_path / "full.pt"
    torch.save(tiny_clip().state_dict(), checkpoint)
    with caplog.at_level(logging.WARNING, logger=encode.__name__):
        assert encode.seed_norm("full", (str(checkpoint),), None, "full/pt") == (ThermalNorm(), "default")
        assert encode.seed_norm("lora-global", (None,), None) == (ThermalNorm(), "default")  # random init
        assert encode.seed_norm("zeroshot", ("openai",), None) == (ThermalNorm(), "default")
        assert encode.seed_norm("full", ("https://example.org/w.safetensors",), None)[1] == "default"
    warned = [r.getMessage() for r in caplog.records if r.name == encode.__name__]
    assert len(warned) == 2  # the checkpoint and the URL; neither the random init nor the zero-shot row
    assert str(checkpoint) in warned[0] and "percentile 1:99" in warned[0] and "--thermal-norm" in warned[0]
    assert "https://example.org/w.safetensors" in warned[1]

    assert classify(["eval", "--data", str(_tree(tmp_path / "tree")), "--model", f"thermal-vit-tiny:{checkpoint}",
                     "--out", str(tmp_path / "c"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"warning: --model thermal-vit-tiny:{checkpoint}: the weights {checkpoint} record no thermal" in err

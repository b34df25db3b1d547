"""push_adapters and pretrained='hf-hub:ORG/NAME' against a loopback Hub (no network, nothing of ours mocked).

``LoopbackHub`` (tests/server_helpers.py; the ``loopback_hub`` fixture in conftest.py) is a small in-memory git-like Hub on 127.0.0.1 that answers
the routes huggingface_hub calls; huggingface_hub is pointed at it through its ``constants``.
"""
import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file

import open_clip_thermal as oct
from open_clip_thermal import hub
from open_clip_thermal.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterError

from model_helpers import TINY, images, randomise_lora, tiny_clip, tokens

TOKEN = "hf_loopback_write_token"



@pytest.fixture
def trained_dual(tmp_path):
    """A tclip-tiny-dual on a base checkpoint file, LoRA B perturbed (so the adapters matter), λ 0.6."""
    base_ckpt = str(tmp_path / "base.pt")
    torch.save(tiny_clip().state_dict(), base_ckpt)
    model = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt, lam=0.6)
    randomise_lora(model)
    return model.eval()


def _outputs(model):
    with torch.no_grad():
        return model.encode_image(images()), model.encode_text(tokens())


RESULTS = {"config": {"ks": [1, 5]}, "rows": [
    {"label": "T-CLIP Dual", "recall": {"image_to_text": {"1": {"mean": 0.4321}, "5": {"mean": 0.9}},
                                        "text_to_image": {"1": {"mean": 0.25}, "5": {"mean": 0.75}}}}]}


def test_push_then_load_from_the_hub_gives_the_same_model(loopback_hub, trained_dual, tmp_path):
    commit = oct.push_adapters(trained_dual, "thermal-org/tiny-dual", token=TOKEN,
                               data="synthetic thermal pairs (test)", recall_table=RESULTS)
    files = loopback_hub.repos["thermal-org/tiny-dual"]["commits"][commit.oid]
    assert set(files) == {".gitattributes", "README.md", CONFIG_NAME,
                          f"global/{WEIGHTS_NAME}", f"fine_grained/{WEIGHTS_NAME}"}
    assert set(loopback_hub.authorizations) == {f"Bearer {TOKEN}"}  # every write carried the token
    assert commit.repo_url.repo_id == "thermal-org/tiny-dual"

    card = files["README.md"].decode()
    assert "`thermal-vit-tiny`" in card and "base.pt" in card  # base model and its weights
    assert "λ = 0.6" in card and "synthetic thermal pairs (test)" in card
    assert "| T-CLIP Dual | 43.21 | 90.00 | 25.00 | 75.00 |" in card  # recall in %
    assert "pretrained='hf-hub:thermal-org/tiny-dual'" in card
    assert json.loads(files[CONFIG_NAME])["lam"] == 0.6

    loaded = open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/tiny-dual").eval()
    assert loaded.lam == 0.6
    for got, want in zip(_outputs(loaded), _outputs(trained_dual)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    with_transforms, _, preprocess = open_clip.create_model_and_transforms("tclip-tiny-dual",
                                                                           pretrained="hf-hub:thermal-org/tiny-dual")
    torch.testing.assert_close(_outputs(with_transforms.eval())[1], _outputs(trained_dual)[1], atol=0, rtol=0)
    plain = open_clip.create_model("tclip-tiny-dual", pretrained=trained_dual.provenance.base_pretrained).eval()
    assert (_outputs(plain)[0] - _outputs(trained_dual)[0]).abs().max() > 1e-3  # the adapters did load


def test_revision_pins_a_commit_and_the_cache_serves_offline(loopback_hub, trained_dual, monkeypatch):
    first = oct.push_adapters(trained_dual, "thermal-org/tiny-dual", token=TOKEN)
    reference = _outputs(trained_dual)
    randomise_lora(trained_dual, seed=11)
    second = oct.push_adapters(trained_dual, "thermal-org/tiny-dual", token=TOKEN, commit_message="retrained")
    assert first.oid != second.oid

    pinned = open_clip.create_model("tclip-tiny-dual", pretrained=f"hf-hub:thermal-org/tiny-dual@{first.oid}").eval()
    latest = open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/tiny-dual").eval()
    torch.testing.assert_close(_outputs(pinned)[0], reference[0], atol=0, rtol=0)
    torch.testing.assert_close(_outputs(latest)[0], _outputs(trained_dual)[0], atol=0, rtol=0)

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the cache, no request
    seen = len(loopback_hub.requests)
    offline = open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/tiny-dual").eval()
    assert len(loopback_hub.requests) == seen
    torch.testing.assert_close(_outputs(offline)[0], _outputs(trained_dual)[0], atol=0, rtol=0)


def test_pushing_a_saved_folder_uploads_only_the_adapter_files(loopback_hub, trained_dual, tmp_path):
    folder = oct.save_adapters(trained_dual, tmp_path / "adapters", branches=["global"])
    (folder / "train.log").write_text("not for the Hub")
    commit = oct.push_adapters(str(folder), "thermal-org/tiny-global", token=TOKEN, private=True,
                               recall_table="| row | R@1 |\n|---|---|\n| mine | 12.5 |")
    files = loopback_hub.repos["thermal-org/tiny-global"]["commits"][commit.oid]
    assert set(files) == {".gitattributes", "README.md", CONFIG_NAME, f"global/{WEIGHTS_NAME}"}
    assert files[f"global/{WEIGHTS_NAME}"] == (folder / "global" / WEIGHTS_NAME).read_bytes()
    assert loopback_hub.repos["thermal-org/tiny-global"]["private"]
    assert "| mine | 12.5 |" in files["README.md"].decode()
    with pytest.raises(AdapterError, match="not an adapter folder"):
        oct.push_adapters(str(tmp_path), "thermal-org/nothing", token=TOKEN)


def test_a_repo_without_adapter_config_is_openclips_business(loopback_hub, tmp_path):
    stock = tiny_clip(seed=5).eval()
    loopback_hub.repos["thermal-org/stock-tiny"] = {"refs": {}, "commits": {}, "private": False}
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(weights))
    config = {"model_cfg": open_clip.get_model_config(TINY), "preprocess_cfg": {}}
    loopback_hub.add_commit("thermal-org/stock-tiny", {"open_clip_config.json": json.dumps(config).encode(),
                                                       "open_clip_model.safetensors": weights.read_bytes()})
    with pytest.raises(AdapterError, match="no adapter_config.json.*open_clip.create_model\\('hf-hub:thermal-org/stock-tiny'\\)"):
        open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/stock-tiny")
    assert not any("open_clip_model" in path for _, path in loopback_hub.requests)  # adapter files only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_hub = open_clip.create_model("hf-hub:thermal-org/stock-tiny").eval()  # OpenCLIP's own hf-hub loader
    with torch.no_grad():
        torch.testing.assert_close(from_hub.encode_image(images()), stock.encode_image(images()), atol=0, rtol=0)
    with pytest.raises(RepositoryNotFoundError):
        open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/missing")


def test_hub_names_are_parsed_and_other_values_pass_through():
    assert hub.parse_hub_name("hf-hub:org/name") == ("org/name", None)
    assert hub.parse_hub_name("hf-hub:org/name@v1.0") == ("org/name", "v1.0")
    for other in (None, "openai", "/tmp/adapters", Path("hf-hub:org/name")):
        assert hub.parse_hub_name(other) is None
        assert hub.resolve_pretrained(other) is other
    with pytest.raises(ValueError, match="ORG/NAME"):
        hub.parse_hub_name("hf-hub:name-without-org")


def test_recall_table_from_a_results_file_and_a_damaged_one_is_named(tmp_path):
    from open_clip_thermal.evaluation.errors import BenchmarkError
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    assert hub.render_recall_table(path) == hub.render_recall_table(RESULTS)
    assert "| T-CLIP Dual | 43.21 | 90.00 | 25.00 | 75.00 |" in hub.render_recall_table(str(path))
    path.write_text(json.dumps(RESULTS)[:40])  # cut short, as by a killed writer
    with pytest.raises(BenchmarkError, match="results.json are not valid JSON"):
        hub.render_recall_table(path)

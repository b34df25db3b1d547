"""Proxy base model: a few-step pretraining run, the safetensors checkpoint, the cache, the metric."""
import json

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

from open_clip_thermal.synthetic import proxy
from open_clip_thermal.synthetic.__main__ import main as cli_main
from open_clip_thermal.synthetic.proxy import (CACHE_ENV, ProxyRecipe, default_cache_dir, get_proxy_checkpoint,
                                               images_to_tensor, load_report, recall_at_1, save_proxy_checkpoint,
                                               train_proxy)
from open_clip_thermal.synthetic.render_rgb import render_rgb
from open_clip_thermal.synthetic.scene import sample_scene, scene_rng

TINY = dict(num_scenes=12, steps=3, batch_size=6, warmup_steps=1)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _probe_inputs():
    images = [render_rgb(sample_scene(scene_rng(123, "probe", i)), 64) for i in range(4)]
    tokens = open_clip.get_tokenizer("thermal-vit-tiny")(["a photo of a highway at night", "a picture of a street"])
    return images_to_tensor(images, 64), tokens


def test_pretrained_checkpoint_loads_in_stock_open_clip(tmp_path):
    model, stats = train_proxy(ProxyRecipe(**TINY), seed=0, progress=False)
    assert np.isfinite(stats["final_loss"])
    path = save_proxy_checkpoint(model, tmp_path / "proxy.safetensors")
    assert sorted(load_file(str(path))) == sorted(model.state_dict())

    loaded = open_clip.create_model("thermal-vit-tiny", pretrained=str(path)).eval()
    images, tokens = _probe_inputs()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), loaded.encode_image(images))
        assert torch.equal(model.encode_text(tokens), loaded.encode_text(tokens))

    torch.manual_seed(0)
    untrained = open_clip.create_model("thermal-vit-tiny").eval()
    with torch.no_grad():
        assert not torch.equal(untrained.encode_image(images), model.encode_image(images))


def test_get_proxy_checkpoint_caches_by_recipe(tmp_path, monkeypatch):
    path = get_proxy_checkpoint(cache_dir=tmp_path, seed=0, progress=False, eval_scenes=6, **TINY)
    report = load_report(path)
    assert report["recipe"]["steps"] == 3 and report["seed"] == 0
    assert report["retrieval"]["num_scenes"] == 6
    assert report["retrieval"]["rgb_image_to_rgb_caption"]["chance"] == pytest.approx(1 / 6)
    before = (tmp_path / path).stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached recipe was pretrained again")

    monkeypatch.setattr(proxy, "train_proxy", must_not_train)
    assert get_proxy_checkpoint(cache_dir=tmp_path, seed=0, progress=False, **TINY) == path
    assert (tmp_path / path).stat().st_mtime_ns == before
    # A different recipe or seed is a different cache entry, so it would need training.
    with pytest.raises(AssertionError, match="pretrained again"):
        get_proxy_checkpoint(cache_dir=tmp_path, seed=1, progress=False, **TINY)
    with pytest.raises(AssertionError, match="pretrained again"):
        get_proxy_checkpoint(cache_dir=tmp_path, seed=0, progress=False, **{**TINY, "steps": 4})
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir().parts[-2:] == (".cache", "open_clip_thermal")


def test_unknown_recipe_field_is_named():
    with pytest.raises(TypeError, match="stpes"):
        get_proxy_checkpoint(cache_dir="/nonexistent", stpes=3)


class _FixedFeatures(torch.nn.Module):
    """Returns preset features, to check the metric on known answers."""

    def __init__(self, image_features, text_features):
        super().__init__()
        self.image_features, self.text_features = image_features, text_features

    def encode_image(self, images, normalize=True):
        return self.image_features[: len(images)]

    def encode_text(self, tokens, normalize=True):
        return self.text_features[: len(tokens)]


def test_recall_at_1_on_known_answers():
    images = [np.zeros((8, 8, 3), np.uint8)] * 4
    captions = ["a", "b", "c", "d"]
    eye = torch.eye(4)
    perfect = recall_at_1(_FixedFeatures(eye, eye), images, captions, lambda c: torch.zeros(len(c), 1), 8)
    assert perfect == {"image_to_text": 1.0, "text_to_image": 1.0, "chance": 0.25}
    half = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 swapped
    swapped = recall_at_1(_FixedFeatures(eye, half), images, captions, lambda c: torch.zeros(len(c), 1), 8)
    assert swapped["image_to_text"] == 0.5 and swapped["text_to_image"] == 0.5


def test_cli_pretrain_then_reuse(tmp_path, capsys):
    argv = ["pretrain-proxy", "--cache-dir", str(tmp_path), "--num-scenes", "8", "--steps", "2",
            "--batch-size", "4", "--warmup-steps", "1", "--eval-scenes", "4", "--no-progress"]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out
    assert "checkpoint:" in first and "R@1" in first
    assert cli_main(argv) == 0
    assert "cached, not retraining" in capsys.readouterr().out
    checkpoints = list((tmp_path / "proxy").glob("*.safetensors"))
    assert len(checkpoints) == 1
    assert json.loads(checkpoints[0].with_suffix(".json").read_text())["recipe"]["steps"] == 2

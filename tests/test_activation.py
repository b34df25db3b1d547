"""The QuickGELU rule (base_model.py): weights trained with QuickGELU get it on every path.

A tiny architecture stands in for ViT-B-16: the tests register a pretrained *tag* for it whose
config says ``quick_gelu`` (as OpenCLIP's ``openai`` tags do) and whose ``file`` is a checkpoint on
disk, so OpenCLIP's own tag resolution runs. tests/test_rehearsal.py does the same for ViT-B-16 and
the real ``openai`` tag through OpenCLIP's download code.
"""
import json
import warnings

import open_clip
import open_clip.pretrained as oc_pretrained
import pytest
import torch

import open_clip_thermal as oct
from open_clip_thermal.adapters import CONFIG_NAME, AdapterError
from open_clip_thermal.base_model import build_base, uses_quick_gelu
from open_clip_thermal.train import main as train_main

from model_helpers import TINY, images, randomise_lora, tokens, tiny_clip
from train_helpers import TRAIN_FLAGS

TAG = "quickgelu_test"  # OpenCLIP normalises tags to lower case with underscores


@pytest.fixture()
def quick_gelu_tag(tmp_path, monkeypatch):
    """Register ``TAG`` for the tiny architecture: QuickGELU weights, like every 'openai' tag."""
    path = tmp_path / "tag_weights.pt"
    torch.save(tiny_clip(seed=0).state_dict(), path)
    tags = dict(oc_pretrained._PRETRAINED.get(TINY, {}))
    tags[TAG] = {"file": str(path), "quick_gelu": True}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY, tags)
    assert open_clip.get_pretrained_cfg(TINY, TAG)["quick_gelu"] is True
    return str(path)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# Every public OpenCLIP factory function, called as users call it; the two *_transforms ones pass
# force_quick_gelu=False on their own, which is what the old rule missed.
FACTORIES = {
    "create_model": lambda name, pretrained, **kw: open_clip.create_model(name, pretrained=pretrained, **kw),
    "create_model_and_transforms": lambda name, pretrained, **kw: open_clip.create_model_and_transforms(
        name, pretrained=pretrained, **kw)[0],
    "create_model_from_pretrained": lambda name, pretrained, **kw: open_clip.create_model_from_pretrained(
        name, pretrained=pretrained, return_transform=False, **kw),
}


@pytest.mark.parametrize("factory", sorted(FACTORIES))
@pytest.mark.parametrize("name", ["tclip-tiny-dual", "tclip-tiny-global", "clip-adapter"])
def test_quick_gelu_tag_gives_quick_gelu_on_every_factory(quick_gelu_tag, factory, name):
    if name == "clip-adapter":  # a fresh CLIP-Adapter names its base; pretrained= is reserved for its folder
        model = _quiet(FACTORIES[factory], name, None, base_model=TINY, base_pretrained=TAG, force_quick_gelu=False)
    else:
        model = _quiet(FACTORIES[factory], name, TAG, force_quick_gelu=False)
    assert uses_quick_gelu(model)


def test_zero_shot_base_and_trainer_baselines_follow_the_tag(quick_gelu_tag):
    assert uses_quick_gelu(_quiet(build_base, TINY, TAG, {"force_quick_gelu": False}))
    assert not uses_quick_gelu(_quiet(build_base, TINY, None, {}))  # random weights: the JSON config decides


def test_force_gelu_builds_gelu_with_a_warning(quick_gelu_tag):
    with pytest.warns(UserWarning, match="trained with QuickGELU, but force_gelu=True"):
        model = open_clip.create_model("tclip-tiny-dual", pretrained=TAG, force_gelu=True)
    assert not uses_quick_gelu(model)
    with pytest.raises(ValueError, match="contradict"):
        _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=TAG, force_gelu=True, force_quick_gelu=True)


def test_stock_names_keep_openclip_behaviour(quick_gelu_tag):
    """A stock name with a stock tag is OpenCLIP's business (it warns on the mismatch); unchanged."""
    with pytest.warns(UserWarning, match="QuickGELU mismatch"):
        model = open_clip.create_model(TINY, pretrained=TAG)
    assert not uses_quick_gelu(model)


def test_adapters_record_activation_and_refuse_the_other_one(quick_gelu_tag, tmp_path):
    model = _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=TAG).eval()
    randomise_lora(model)
    folder = oct.save_adapters(model, tmp_path / "adapters")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["activation"] == "quick_gelu" and config["base_pretrained"] == TAG
    reloaded = _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=str(folder)).eval()
    assert uses_quick_gelu(reloaded)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images(2)), reloaded.encode_image(images(2)))
        assert torch.equal(model.encode_text(tokens(2)), reloaded.encode_text(tokens(2)))
    # the same weights as a plain file carry no tag: the folder's record still gives QuickGELU
    from_file = _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=str(folder),
                       base_pretrained=quick_gelu_tag).eval()
    assert uses_quick_gelu(from_file)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images(2)), from_file.encode_image(images(2)))
    # a flag that contradicts the record is refused, not mis-scored
    with pytest.raises(AdapterError, match="trained on a base with quick_gelu, but this base uses gelu.*Drop force_gelu"):
        _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=str(folder), force_gelu=True)


def test_gelu_adapters_rebuild_gelu_and_old_folders_warn(quick_gelu_tag, tmp_path):
    gelu = _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=TAG, force_gelu=True)  # --force-gelu
    assert not uses_quick_gelu(gelu)
    randomise_lora(gelu)
    folder = oct.save_adapters(gelu.eval(), tmp_path / "gelu")
    with pytest.warns(UserWarning, match="trained on a GELU base"):
        reloaded = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder))
    assert not uses_quick_gelu(reloaded)
    with torch.no_grad():
        assert torch.equal(gelu.encode_image(images(2)), reloaded.eval().encode_image(images(2)))
    with pytest.raises(AdapterError, match="Drop force_quick_gelu"):
        _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=str(folder), force_quick_gelu=True)
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["activation"]  # as written by open_clip_thermal 0.1.0
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="does not record the activation"):
        old = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder), base_pretrained=quick_gelu_tag)
    assert not uses_quick_gelu(old)


def test_merged_export_records_quick_gelu(quick_gelu_tag, tmp_path):
    model = _quiet(open_clip.create_model, "tclip-tiny-dual", pretrained=TAG).eval()
    randomise_lora(model)
    path = oct.export_merged(model, "global", tmp_path / "global.safetensors")
    loaded = _quiet(oct.create_model, TINY, pretrained=str(path)).eval()
    assert uses_quick_gelu(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images(2), normalize=True), model.encode_image(images(2), branch="global"),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "clip-adapter"])
def test_trainer_with_a_quick_gelu_tag_trains_on_quick_gelu(quick_gelu_tag, shards, tmp_path, method):
    """open_clip_train passes --force-quick-gelu's default (False); the tag still decides."""
    argv = ["--model", "tclip-tiny-global", "--pretrained", TAG, "--train-data", shards, "--logs", str(tmp_path),
            "--name", "run", "--max-steps", "1", *TRAIN_FLAGS]
    if method != "lora":
        argv += ["--method", method]
    assert train_main(argv) == 0
    folder = next(p.parent for p in (tmp_path / "run").rglob(CONFIG_NAME))
    assert json.loads((folder / CONFIG_NAME).read_text())["activation"] == "quick_gelu"

"""The OpenCLIP seam: registration, stock models untouched, pretrained= resolution and errors."""
import subprocess
import sys
import textwrap
import warnings

import open_clip
import open_clip.factory as oc_factory
import pytest
import torch

import open_clip_thermal as oct
from open_clip_thermal import seam, base_model, registry

from model_helpers import TINY, images


def test_names_are_registered_with_openclip():
    models = open_clip.list_models()
    for name in ("tclip-global", "tclip-fg", "tclip-dual", "tclip-tiny-global", "tclip-tiny-fg",
                 "tclip-tiny-dual", TINY):
        assert name in models
    assert open_clip.get_model_config("tclip-dual") == open_clip.get_model_config("ViT-B-16")
    assert open_clip.get_tokenizer("tclip-tiny-dual").context_length == 77
    assert oct.list_tclip_models() == sorted(["tclip-dual", "tclip-fg", "tclip-global", "tclip-tiny-dual",
                                              "tclip-tiny-fg", "tclip-tiny-global", "tclip-siglip-dual",
                                              "tclip-siglip-fg", "tclip-siglip-global", "tclip-tiny-timm-dual"])


_STOCK_SCRIPT = textwrap.dedent("""
    import sys, torch, open_clip

    def snapshot():
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32").eval()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, 3, 224, 224, generator=g)
        t = open_clip.get_tokenizer("ViT-B-32")(["a thermal image"])
        with torch.no_grad():
            out = torch.cat([model.encode_image(x), model.encode_text(t)], dim=1)
        checksum = sum(float(p.double().sum()) for p in model.state_dict().values())
        return {"type": type(model).__name__, "out": out, "checksum": checksum, "keys": sorted(model.state_dict())}

    without = snapshot()
    assert "open_clip_thermal" not in sys.modules
    import open_clip_thermal
    assert open_clip.create_model is not None and open_clip_thermal.registry.is_installed()
    torch.save({"without": without, "with": snapshot()}, sys.argv[1])
""")


def test_stock_model_identical_with_and_without_plugin(tmp_path):
    path = tmp_path / "snapshots.pt"
    subprocess.run([sys.executable, "-c", _STOCK_SCRIPT, str(path)], check=True, capture_output=True)
    snapshots = torch.load(path, weights_only=True)
    without, with_plugin = snapshots["without"], snapshots["with"]
    assert without["type"] == with_plugin["type"] == "CLIP"
    assert without["keys"] == with_plugin["keys"]
    assert without["checksum"] == with_plugin["checksum"]
    assert torch.equal(without["out"], with_plugin["out"])


def test_install_is_idempotent_and_reversible():
    patched = oc_factory.create_model
    oct.install()
    assert oc_factory.create_model is patched and open_clip.create_model is patched
    oct.uninstall()
    try:
        assert not registry.is_installed()
        assert not getattr(open_clip.create_model, "_open_clip_thermal", False)
        # the package's own factory works without touching OpenCLIP
        with pytest.warns(UserWarning, match="random weights"):
            model = oct.create_model("tclip-tiny-global")
        assert isinstance(model, oct.DualLoRAFusion)
    finally:
        oct.install()
    assert registry.is_installed()


def test_create_model_and_transforms_and_tokenizer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, train_tf, val_tf = open_clip.create_model_and_transforms("tclip-tiny-dual", output_dict=True)
    assert isinstance(model, oct.DualLoRAFusion) and model.output_dict
    from PIL import Image
    image = val_tf(Image.new("RGB", (100, 80))).unsqueeze(0)
    assert image.shape == (1, 3, 64, 64)
    tok = open_clip.get_tokenizer("tclip-tiny-dual")(["infrared thermal image of a street"])
    out = model(image, tok)
    assert out["image_features"].shape == out["text_features"].shape == (1, 64)


def test_pretrained_none_warns_random():
    with pytest.warns(UserWarning, match="random weights"):
        open_clip.create_model("tclip-tiny-fg", pretrained=None)


def test_unknown_tag_missing_file_and_corrupt_file_are_named(tmp_path):
    with pytest.raises(ValueError, match="no-such-tag.*thermal-vit-tiny"):
        open_clip.create_model("tclip-tiny-dual", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="missing.pt"):
        open_clip.create_model("tclip-tiny-dual", pretrained=str(tmp_path / "missing.pt"))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt.pt"):
        open_clip.create_model("tclip-tiny-dual", pretrained=str(bad))
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    with pytest.raises(ValueError, match="adapter_config.json"):
        open_clip.create_model("tclip-tiny-dual", pretrained=str(folder))


def test_openai_tag_reaches_openclip_download_path(monkeypatch):
    """No network here: record what the seam asks OpenCLIP for, and serve a tiny model instead."""
    calls = []

    def fake_original(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs))
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return real_original(TINY)

    real_original = base_model.original_create_model()
    monkeypatch.setattr(seam, "_original", fake_original)
    model = open_clip.create_model("tclip-dual", pretrained="openai", precision="fp32")
    assert calls == [("ViT-B-16", "openai", {"precision": "fp32", "force_quick_gelu": True})]
    assert model.provenance == base_model.Provenance(model_name="tclip-dual", base_model="ViT-B-16", base_pretrained="openai")
    assert oc_factory.get_pretrained_cfg("ViT-B-16", "openai")["url"].startswith("https://")


def test_add_lora_on_another_openclip_vit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-S-32-alt") if "ViT-S-32-alt" in open_clip.list_models() else \
            open_clip.create_model(TINY)
    wrapped = oct.add_lora(model, rank=4, last_k_blocks=2)
    assert oct.count_lora_parameters(wrapped) > 0
    with torch.no_grad():
        assert wrapped.encode_image(images(1, wrapped.visual.image_size[0])).shape[0] == 1


def test_model_builders_are_registered_not_imported(monkeypatch):
    """The factory dispatches by a name -> builder table that other packages fill (baselines does)."""
    assert "clip-adapter" in registry.list_model_builders()
    built = []

    def builder(pretrained, **kwargs):
        built.append((pretrained, kwargs))
        return torch.nn.Identity()

    monkeypatch.setitem(registry._MODEL_BUILDERS, "my-thermal-kind", builder)
    assert isinstance(open_clip.create_model("my-thermal-kind", pretrained="w", precision="fp32"), torch.nn.Identity)
    assert built == [("w", {"precision": "fp32"})]
    monkeypatch.setattr(registry, "_PRETRAINED_GUARDS", [lambda name, p: f"{name}: no" if p == "bad" else None])
    with pytest.raises(ValueError, match="ViT-B-32: no"):
        open_clip.create_model("ViT-B-32", pretrained="bad")


def test_install_registers_the_configs_once(monkeypatch):
    """install() adds our config folder only when OpenCLIP lacks our architectures (asked through the
    public get_model_config; each add_model_config call would grow OpenCLIP's path list again)."""
    assert seam.configs_registered()
    assert {p.stem for p in seam.MODEL_CONFIG_DIR.glob("*.json")} <= set(open_clip.list_models())
    added = []
    monkeypatch.setattr(open_clip, "add_model_config", added.append)
    oct.install()
    assert added == []  # already there: nothing added again
    real = open_clip.get_model_config
    monkeypatch.setattr(open_clip, "get_model_config", lambda name: None if name == TINY else real(name))
    assert not seam.configs_registered()
    oct.install()
    assert added == [seam.MODEL_CONFIG_DIR]


def test_random_weights_warning_says_what_happened_and_what_to_pass():
    with pytest.warns(UserWarning) as caught:
        oct.create_model("tclip-tiny-global")
    message = next(str(w.message) for w in caught if "random weights" in str(w.message))
    assert message.startswith("base model 'thermal-vit-tiny' built with random weights, because no weights were given")
    assert "--base-pretrained none" in message and "untrained network" in message
    assert "a base checkpoint file (it has no OpenCLIP pretrained tag)" in message and "'openai'" not in message
    # the tags offered are the base's own (no 'openai' for SigLIP), read from OpenCLIP's local table
    assert "tags ('openai', " in base_model.random_weights_message("ViT-B-16")
    siglip = base_model.random_weights_message("ViT-B-16-SigLIP")
    assert "tags ('webli')" in siglip and "openai" not in siglip

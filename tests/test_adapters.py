"""Adapter files: round trips, merged export loaded by stock OpenCLIP, clear errors."""
import json
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import open_clip_thermal as oct
from open_clip_thermal import registry
from open_clip_thermal.adapters import AdapterError, CONFIG_NAME, WEIGHTS_NAME
from open_clip_thermal.base_model import Provenance

from model_helpers import TINY, images, randomise_lora, tokens


@pytest.fixture()
def base_ckpt(tmp_path):
    """A tiny base CLIP checkpoint on disk, standing in for pretrained weights."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = open_clip.create_model(TINY)
    path = tmp_path / "base.pt"
    torch.save(stock.state_dict(), path)
    return str(path)


def _trained_dual(base_ckpt, seed=3):
    model = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt)
    randomise_lora(model, seed=seed)
    with torch.no_grad():
        model.logit_scales["fine_grained"].fill_(3.0)
    return model.eval()


def test_save_load_round_trip(tmp_path, base_ckpt):
    model = _trained_dual(base_ckpt)
    folder = oct.save_adapters(model, tmp_path / "adapters")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        CONFIG_NAME, f"fine_grained/{WEIGHTS_NAME}", f"global/{WEIGHTS_NAME}"]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model_name"] == "tclip-tiny-dual"
    assert config["base_model"] == TINY and config["base_pretrained"] == base_ckpt
    assert config["lora"]["rank"] == 8 and config["branches"] == ["global", "fine_grained"]
    assert len(load_file(str(folder / "global" / WEIGHTS_NAME))) == 2 * 4 * 2 + 1  # (A, B) x 4 blocks x 2 towers + temperature

    reloaded = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder)).eval()
    x, t = images(), tokens()
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(x), model.encode_image(x))
        assert torch.equal(reloaded.encode_text_dual(t, t), model.encode_text_dual(t, t))
    assert reloaded.logit_scales["fine_grained"].item() == 3.0


def test_single_branch_folder_into_dual_branch(tmp_path, base_ckpt):
    fg_model = open_clip.create_model("tclip-tiny-fg", pretrained=base_ckpt)
    randomise_lora(fg_model, seed=11)
    oct.save_adapters(fg_model, tmp_path / "fg")
    dual = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt)
    oct.load_adapters(dual, tmp_path / "fg")
    oct.load_adapters(dual, tmp_path / "fg", as_branch="global")  # cross-initialisation
    x = images()
    with torch.no_grad():
        ref = fg_model.eval().encode_image(x)
        assert torch.equal(dual.eval().encode_image(x, branch="fine_grained"), ref)
        assert torch.equal(dual.encode_image(x, branch="global"), ref)


def test_merged_export_loads_in_stock_openclip(tmp_path, base_ckpt):
    model = _trained_dual(base_ckpt)
    x, t = images(), tokens()
    for branch in ("global", "fine_grained"):
        path = oct.export_merged(model, branch, tmp_path / f"{branch}.safetensors")
        oct.uninstall()
        try:
            stock = open_clip.create_model(TINY, pretrained=str(path)).eval()
        finally:
            oct.install()
        assert type(stock).__name__ == "CLIP"
        with torch.no_grad():
            assert (stock.encode_image(x, normalize=True) - model.encode_image(x, branch=branch)).abs().max() <= 1e-5
            assert (stock.encode_text(t, normalize=True) - model.encode_text(t, branch=branch)).abs().max() <= 1e-5
        assert stock.logit_scale.item() == pytest.approx(model.logit_scales[branch].item())


def test_wrong_rank_is_refused(tmp_path, base_ckpt):
    oct.save_adapters(_trained_dual(base_ckpt), tmp_path / "r8")
    other = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt, lora={"rank": 4})
    with pytest.raises(AdapterError, match="LoRA settings"):
        oct.load_adapters(other, tmp_path / "r8")


def test_wrong_base_is_refused(tmp_path, base_ckpt):
    oct.save_adapters(_trained_dual(base_ckpt), tmp_path / "a")
    with pytest.warns(UserWarning, match="random weights"):
        random_base = open_clip.create_model("tclip-tiny-dual")
    with pytest.raises(AdapterError, match="other base weights"):
        oct.load_adapters(random_base, tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    config["base_model"] = "ViT-B-16"
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="ViT-B-16"):
        open_clip.create_model("tclip-tiny-dual", pretrained=str(tmp_path / "a"))


def test_missing_keys_and_corrupt_weights_are_named(tmp_path, base_ckpt):
    folder = oct.save_adapters(_trained_dual(base_ckpt), tmp_path / "a")
    weights = folder / "global" / WEIGHTS_NAME
    tensors = load_file(str(weights))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    from safetensors.torch import save_file
    save_file(tensors, str(weights))
    model = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt)
    with pytest.raises(AdapterError, match="1 missing keys"):
        oct.load_adapters(model, folder)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="cannot be read"):
        oct.load_adapters(model, folder)
    (folder / CONFIG_NAME).write_text("{")
    with pytest.raises(AdapterError, match="not valid JSON"):
        oct.load_adapters(model, folder)


# --------------------------------------------------------------------------- single-branch folders in a dual model
def _single_branch_folders(tmp_path, base_ckpt):
    folders = {}
    for seed, (name, branch) in enumerate((("tclip-tiny-global", "global"), ("tclip-tiny-fg", "fine_grained"))):
        model = open_clip.create_model(name, pretrained=base_ckpt)
        randomise_lora(model, seed=10 + seed)
        folders[branch] = (oct.save_adapters(model, tmp_path / branch), model.eval())
    return folders


def test_dual_model_refuses_one_single_branch_folder(tmp_path, base_ckpt):
    folders = _single_branch_folders(tmp_path, base_ckpt)
    with pytest.raises(AdapterError, match=r"also needs \['fine_grained'\].*GLOBAL_DIR\+FINE_GRAINED_DIR"):
        open_clip.create_model("tclip-tiny-dual", pretrained=str(folders["global"][0]))
    with pytest.raises(AdapterError, match=r"also needs \['global'\]"):
        open_clip.create_model("tclip-tiny-dual", pretrained=str(folders["fine_grained"][0]))


def test_dual_model_from_one_folder_per_branch(tmp_path, base_ckpt):
    folders = _single_branch_folders(tmp_path, base_ckpt)
    (g_dir, g_model), (f_dir, f_model) = folders["global"], folders["fine_grained"]
    dual = open_clip.create_model("tclip-tiny-dual", pretrained=f"{g_dir}+{f_dir}").eval()
    x, t = images(), tokens()
    with torch.no_grad():
        assert torch.equal(dual.encode_image(x, branch="global"), g_model.encode_image(x, branch="global"))
        assert torch.equal(dual.encode_text(t, branch="fine_grained"), f_model.encode_text(t, branch="fine_grained"))
    with pytest.raises(AdapterError, match="is not an adapter folder"):
        open_clip.create_model("tclip-tiny-dual", pretrained=f"{g_dir}+{tmp_path / 'nowhere'}")
    with pytest.raises(AdapterError, match="give one per branch"):
        open_clip.create_model("tclip-tiny-global", pretrained=f"{g_dir}+{f_dir}")


def test_zero_branch_only_on_request(tmp_path, base_ckpt):
    folders = _single_branch_folders(tmp_path, base_ckpt)
    dual = open_clip.create_model("tclip-tiny-dual", pretrained=str(folders["global"][0]), allow_zero_branch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = open_clip.create_model(TINY, pretrained=base_ckpt).eval()
    with torch.no_grad():  # the untrained branch is the plain base
        torch.testing.assert_close(dual.eval().encode_image(images(), branch="fine_grained"),
                                   stock.encode_image(images(), normalize=True), atol=1e-5, rtol=1e-5)


def test_provenance_is_recorded_and_checked(tmp_path, base_ckpt):
    model = _trained_dual(base_ckpt)
    assert model.provenance == Provenance(model_name="tclip-tiny-dual", base_model=TINY, base_pretrained=base_ckpt)
    by_hand = oct.add_lora(open_clip.create_model(TINY, pretrained=base_ckpt), branches=("global",))
    assert by_hand.provenance is None  # nobody recorded where it came from
    config = json.loads((oct.save_adapters(by_hand, tmp_path / "by_hand") / CONFIG_NAME).read_text())
    assert (config["model_name"], config["base_model"], config["base_pretrained"]) == (None, None, None)
    oct.save_adapters(model, tmp_path / "dual")
    model.provenance = Provenance(model_name="tclip-tiny-dual", base_model="ViT-B-16", base_pretrained=base_ckpt)
    with pytest.raises(AdapterError, match="this model's base is 'ViT-B-16'"):
        oct.load_adapters(model, tmp_path / "dual")  # the recorded base decides, not the weights alone


# --------------------------------------------------------------------------- fusion settings saved in a folder
def _folder_with(tmp_path, base_ckpt, name="saved", **settings):
    model = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt, **settings)
    return oct.save_adapters(model, tmp_path / name)


def test_saved_lam_and_fusion_are_honoured(tmp_path, base_ckpt):
    folder = _folder_with(tmp_path, base_ckpt, lam=0.9, fusion="score")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert (config["lam"], config["fusion"]) == (0.9, "score")
    reloaded = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder))
    assert (reloaded.lam, reloaded.fusion) == (0.9, "score")
    x = images()
    with torch.no_grad():  # the default of encode_image is the folder's fusion: sqrt-weighted concatenation
        g, f = (reloaded.encode_image(x, branch=b) for b in ("global", "fine_grained"))
        torch.testing.assert_close(reloaded.encode_image(x), torch.cat([0.9 ** 0.5 * g, 0.1 ** 0.5 * f], dim=-1))
    # an explicit argument wins over the folder
    chosen = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder), lam=0.5, fusion="feature")
    assert (chosen.lam, chosen.fusion) == (0.5, "feature")


def test_folder_without_fusion_settings_gets_the_registered_ones(tmp_path, base_ckpt):
    folder = _folder_with(tmp_path, base_ckpt, lam=0.9, fusion="score")
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["lam"], config["fusion"]
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    plain = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder))
    assert (plain.lam, plain.fusion) == (0.7, "feature")  # tclip-tiny-dual.json's
    registry.register_tclip_model("tclip-tiny-dual-score", {**registry.get_tclip_config("tclip-tiny-dual"),
                                                             "lam": 0.4, "fusion": "score"})
    try:
        registered = open_clip.create_model("tclip-tiny-dual-score", pretrained=str(folder))
    finally:
        registry.unregister_tclip_model("tclip-tiny-dual-score")
    assert (registered.lam, registered.fusion) == (0.4, "score")


def test_disagreeing_or_broken_fusion_records(tmp_path, base_ckpt):
    folders = []
    for name, branch, lam in (("tclip-tiny-global", "global", 0.2), ("tclip-tiny-fg", "fine_grained", 0.6)):
        model = open_clip.create_model(name, pretrained=base_ckpt, lam=lam)
        folders.append(oct.save_adapters(model, tmp_path / branch))
    with pytest.warns(UserWarning, match="record different lam values"):
        dual = open_clip.create_model("tclip-tiny-dual", pretrained="+".join(map(str, folders)))
    assert (dual.lam, dual.fusion) == (0.7, "feature")  # neither run fused: the registered model decides
    config = json.loads((folders[0] / CONFIG_NAME).read_text())
    for key, value, message in (("lam", 1.5, "lam=1.5 is not a fusion weight"),
                                ("fusion", "average", "fusion='average' is not one of")):
        (folders[0] / CONFIG_NAME).write_text(json.dumps({**config, key: value}))
        with pytest.raises(AdapterError, match=message):
            open_clip.create_model("tclip-tiny-global", pretrained=str(folders[0]))

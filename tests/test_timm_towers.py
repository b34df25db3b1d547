"""T-CLIP LoRA on timm vision towers (SigLIP-style): init equality, exact counts, merge, round trip, training.

The tiny base ``thermal-timm-tiny`` is SigLIP's layout at toy size: a timm ViT trunk (timm's
``test_vit``: width 64, 6 blocks, 2 heads, MAP pooling, no projection) under OpenCLIP's ``TimmModel``,
OpenCLIP's own text tower without causal mask, and a ``logit_bias``. Its names lack "siglip" on
purpose: for such a name without ``hf_tokenizer_name`` OpenCLIP's ``get_tokenizer`` fetches SigLIP's
sentencepiece model from the Hub, and the trainer asks for the tokenizer by model name.
"""
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import open_clip_thermal as oct
from open_clip_thermal.lora import LoRALinear, count_lora_parameters, tower_transformers
from open_clip_thermal.train import main as train_main

from model_helpers import images, randomise_lora, tokens
from train_helpers import TRAIN_FLAGS

BASE = "thermal-timm-tiny"
DUAL = "tclip-tiny-timm-dual"
BRANCHES = ("global", "fine_grained")
SIZE = 32  # the tiny config's image_size

# By hand, rank r = 8 on q, k, v: per block A is (3r, width) and B is (3 * width, r).
VISION_PER_BRANCH = 6 * (3 * 8 * 64 + 3 * 64 * 8)  # 6 timm blocks of width 64: 18,432
TEXT_PER_BRANCH = 4 * (3 * 8 * 64 + 3 * 64 * 8)  # 4 text blocks of width 64: 12,288
SIGLIP_B16_PER_BRANCH = 2 * 12 * (3 * 8 * 768 + 3 * 768 * 8)  # both towers 12 x 768: 884,736


def _stock(seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oct.uninstall()
        try:
            return open_clip.create_model(BASE)
        finally:
            oct.install()


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """Tiny SigLIP-style base weights on disk, standing in for pretrained ones."""
    path = tmp_path_factory.mktemp("siglip_base") / "base.pt"
    torch.save(_stock().state_dict(), path)
    return str(path)


def _trained_dual(base_ckpt, seed=3):
    model = open_clip.create_model(DUAL, pretrained=base_ckpt)
    randomise_lora(model, std=0.3, seed=seed)
    return model.eval()


def _tower_count(tower, branch):
    return sum(p.numel() for block in tower.resblocks for n, p in block.named_parameters()
               if "lora_" in n and n.endswith("." + branch))


def test_vision_tower_is_timm_and_qkv_is_wrapped(base_ckpt):
    model = open_clip.create_model(DUAL, pretrained=base_ckpt)
    assert type(model.base.visual).__name__ == "TimmModel" and model.base.logit_bias is not None
    qkv = [m for n, m in model.base.visual.named_modules() if n.endswith("attn.qkv")]
    assert len(qkv) == 6 and all(isinstance(m, LoRALinear) and m.update.enable == (True, True, True) for m in qkv)


def test_exact_lora_parameter_counts(base_ckpt):
    model = open_clip.create_model(DUAL, pretrained=base_ckpt)
    towers = tower_transformers(model.base)
    for branch in BRANCHES:
        assert _tower_count(towers["vision"], branch) == VISION_PER_BRANCH == 18_432
        assert _tower_count(towers["text"], branch) == TEXT_PER_BRANCH == 12_288
        assert count_lora_parameters(model, branch) == VISION_PER_BRANCH + TEXT_PER_BRANCH
    stock_params = sum(p.numel() for p in _stock().parameters())
    assert sum(p.numel() for p in model.parameters()) == stock_params + 2 * (VISION_PER_BRANCH + TEXT_PER_BRANCH) + 2


def test_only_lora_and_temperatures_train_and_keys_stay_stock(base_ckpt):
    model = open_clip.create_model(DUAL, pretrained=base_ckpt)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("logit_scales.") for n in trainable)
    assert not model.base.logit_bias.requires_grad
    stock = _stock()
    assert {k for k in model.base.state_dict() if "lora_" not in k} == set(stock.state_dict())
    missing, unexpected = model.base.load_state_dict(stock.state_dict(), strict=False)
    assert unexpected == [] and all("lora_" in k for k in missing)


def test_siglip_b16_counts_without_download():
    # the real ViT-B-16-SigLIP shape, on the meta device: no weights allocated, none downloaded
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = open_clip.create_model("tclip-siglip-dual", device="meta")
    towers = tower_transformers(model.base)
    for branch in BRANCHES:
        assert count_lora_parameters(model, branch) == SIGLIP_B16_PER_BRANCH == 884_736
        assert _tower_count(towers["vision"], branch) == _tower_count(towers["text"], branch) == 442_368


@pytest.mark.parametrize("grad", [False, True])  # folded-weight inference path and activation path
def test_equal_to_base_at_init(base_ckpt, grad):
    model = open_clip.create_model(DUAL, pretrained=base_ckpt).eval()
    stock = _stock().eval()
    x, t = images(3, SIZE), tokens(3)
    with torch.set_grad_enabled(grad):
        want_image, want_text = stock.encode_image(x, normalize=True), stock.encode_text(t, normalize=True)
        for branch in BRANCHES:
            torch.testing.assert_close(model.encode_image(x, branch=branch), want_image, atol=1e-6, rtol=0)
            torch.testing.assert_close(model.encode_text(t, branch=branch), want_text, atol=1e-6, rtol=0)
        both = model.branch_image_features(x)  # one batched pass through both branches
        for branch in BRANCHES:
            torch.testing.assert_close(both[branch], want_image, atol=1e-6, rtol=0)
    assert torch.equal(model(x, t)["logit_bias"], stock.logit_bias)


def test_branches_differ_and_each_equals_a_single_branch_model(tmp_path, base_ckpt):
    dual = _trained_dual(base_ckpt)
    folder = oct.save_adapters(dual, tmp_path / "adapters")
    singles = {b: open_clip.create_model(DUAL, pretrained=str(folder), branches=[b]).eval() for b in BRANCHES}
    x, tg, tf = images(4, SIZE), tokens(4, seed=5), tokens(4, seed=6)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            img = dual.branch_image_features(x)
            txt = dual.branch_text_features({"global": tg, "fine_grained": tf})
            assert (img["global"] - img["fine_grained"]).abs().max() > 1e-2
            for branch, texts in zip(BRANCHES, (tg, tf)):
                torch.testing.assert_close(img[branch], singles[branch].encode_image(x), atol=1e-5, rtol=0)
                torch.testing.assert_close(txt[branch], singles[branch].encode_text(texts), atol=1e-5, rtol=0)
    out = dual(x, torch.stack([tg, tf], dim=1))  # the dual-branch training forward
    torch.testing.assert_close(out["fg_image_features"], singles["fine_grained"].encode_image(x), atol=1e-5, rtol=0)


def test_merged_export_equals_unmerged(tmp_path, base_ckpt):
    model = _trained_dual(base_ckpt)
    x, t = images(3, SIZE), tokens(3)
    for branch in BRANCHES:
        path = oct.export_merged(model, branch, tmp_path / f"{branch}.safetensors")
        oct.uninstall()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plain = open_clip.create_model(BASE, pretrained=str(path)).eval()
        finally:
            oct.install()
        assert type(plain).__name__ == "CustomTextCLIP"
        with torch.no_grad():
            assert (plain.encode_image(x, normalize=True) - model.encode_image(x, branch=branch)).abs().max() <= 1e-5
            assert (plain.encode_text(t, normalize=True) - model.encode_text(t, branch=branch)).abs().max() <= 1e-5
            unchanged = _stock().encode_image(x, normalize=True)
            assert (plain.encode_image(x, normalize=True) - unchanged).abs().max() > 1e-2  # the update is in
        assert torch.equal(plain.logit_bias, model.base.logit_bias)


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "out", "mlp")])
def test_other_targets_merge_equal(base_ckpt, targets):
    model = open_clip.create_model(DUAL, pretrained=base_ckpt, lora={"targets": list(targets)})
    randomise_lora(model)
    model.eval()
    qkv = model.base.visual.trunk.blocks[0].attn.qkv
    assert qkv.update.enable == tuple(t in targets for t in ("q", "k", "v"))
    assert count_lora_parameters(model, "global") == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("lora_A.global") or n.endswith("lora_B.global"))
    plain = _stock()
    plain.load_state_dict(model.merged_state_dict("fine_grained"))
    x, t = images(2, SIZE), tokens(2)
    with torch.no_grad():
        assert (plain.eval().encode_image(x, normalize=True)
                - model.encode_image(x, branch="fine_grained")).abs().max() <= 1e-5
        assert (plain.encode_text(t, normalize=True) - model.encode_text(t, branch="fine_grained")).abs().max() <= 1e-5


def test_adapters_round_trip(tmp_path, base_ckpt):
    model = _trained_dual(base_ckpt)
    folder = oct.save_adapters(model, tmp_path / "adapters")
    reloaded = open_clip.create_model(DUAL, pretrained=str(folder)).eval()
    x, t = images(3, SIZE), tokens(3)
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(x), model.encode_image(x))
        assert torch.equal(reloaded.encode_text_dual(t, t), model.encode_text_dual(t, t))


def test_one_training_step_saves_and_reloads(tmp_path, shards, base_ckpt):
    rc = train_main(["--model", DUAL, "--pretrained", base_ckpt, "--train-data", shards, "--logs", str(tmp_path),
                     "--name", "siglip", *TRAIN_FLAGS, "--branch", "both", "--max-steps", "1"])
    assert rc == 0
    adapters = tmp_path / "siglip" / "adapters"
    model = open_clip.create_model(DUAL, pretrained=str(adapters))
    params = dict(model.base.named_parameters())
    for branch in BRANCHES:
        saved = load_file(str(adapters / branch / oct.adapters.WEIGHTS_NAME))
        trunk_b = [k for k in saved if k.startswith("visual.trunk.") and "lora_B" in k]
        assert len(trunk_b) == 6 and any(saved[k].abs().max() > 0 for k in trunk_b)  # B left zero: it trained
        for key in trunk_b:  # saved keys drop the branch suffix of the parameter name
            assert torch.equal(params[f"{key}.{branch}"], saved[key])

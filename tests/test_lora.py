"""LoRA injection: parameter counts, frozen base, stock state-dict keys, equality at init, gradients."""
import copy
import itertools
import warnings

import open_clip
import pytest
import torch

import open_clip_thermal as oct
from open_clip_thermal.lora import (BranchRouter, LoRAAttention, LoRAConfig, LoRAUpdate, count_lora_parameters,
                                   tower_transformers)

from model_helpers import images, randomise_lora, tiny_clip, tokens


@pytest.fixture(scope="module")
def vit_b16_dual():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model("tclip-dual")


def _tower_lora_count(model, tower, branch):
    return sum(p.numel() for n, p in tower.named_parameters() if "lora_" in n and n.endswith("." + branch))


def test_vit_b16_counts_match_paper(vit_b16_dual):
    towers = tower_transformers(vit_b16_dual.base)
    for branch in ("global", "fine_grained"):
        assert count_lora_parameters(vit_b16_dual, branch) == 737_280
        assert _tower_lora_count(vit_b16_dual, towers["vision"], branch) == 442_368
        assert _tower_lora_count(vit_b16_dual, towers["text"], branch) == 294_912


def test_vit_b16_dual_stores_backbone_once(vit_b16_dual):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = open_clip.create_model("ViT-B-16")
    stock_params = sum(p.numel() for p in stock.parameters())
    dual_params = sum(p.numel() for p in vit_b16_dual.parameters())
    assert dual_params == stock_params + 2 * 737_280 + 2  # two adapter sets + two temperatures


def test_vit_b16_equals_base_at_init(vit_b16_dual):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        stock = open_clip.create_model("ViT-B-16")
    stock.load_state_dict({k: v for k, v in vit_b16_dual.base.state_dict().items() if "lora_" not in k})
    x = images(2, 224)
    with torch.no_grad():
        for branch in vit_b16_dual.branches:
            torch.testing.assert_close(vit_b16_dual.encode_image(x, branch=branch),
                                       stock.encode_image(x, normalize=True), atol=1e-6, rtol=0)


def test_only_lora_and_temperature_trainable():
    model = oct.add_lora(tiny_clip(), branches=("global", "fine_grained"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("logit_scales.") for n in trainable)
    assert {n for n in trainable if n.startswith("logit_scales.")} == {"logit_scales.global", "logit_scales.fine_grained"}


@pytest.mark.parametrize("attention", ["mha", "custom"])
def test_state_dict_keys_stay_stock(attention):
    stock = tiny_clip(attention=attention)
    stock_keys = set(stock.state_dict())
    model = oct.add_lora(copy.deepcopy(stock))
    base_keys = {k for k in model.base.state_dict() if "lora_" not in k}
    assert base_keys == stock_keys
    # an unmodified OpenCLIP checkpoint loads strictly into the base (LoRA keys excepted)
    missing, unexpected = model.base.load_state_dict(stock.state_dict(), strict=False)
    assert unexpected == [] and all("lora_" in k for k in missing)


@pytest.mark.parametrize("attention", ["mha", "custom"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_equal_to_base_at_init(attention, train_mode):
    stock = tiny_clip(attention=attention)
    model = oct.add_lora(copy.deepcopy(stock), branches=("global", "fine_grained"))
    stock.train(train_mode)
    model.train(train_mode)
    x, t = images(), tokens()
    with torch.no_grad():
        ref_i, ref_t = stock.encode_image(x, normalize=True), stock.encode_text(t, normalize=True)
        for branch in ("global", "fine_grained", None):
            torch.testing.assert_close(model.encode_image(x, branch=branch), ref_i, atol=1e-6, rtol=0)
            torch.testing.assert_close(model.encode_text(t, branch=branch), ref_t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("targets,expected_per_block", [
    (("q", "k", "v"), 6 * 8 * 64),
    (("q", "v"), 4 * 8 * 64),
    (("out",), 2 * 8 * 64),
    (("mlp",), 2 * 8 * (64 + 256)),
])
def test_targets_counts(targets, expected_per_block):
    model = oct.add_lora(tiny_clip(), targets=targets)
    assert count_lora_parameters(model) == 8 * expected_per_block  # 4 blocks x 2 towers


@pytest.mark.parametrize("towers,last_k,expected_blocks", [("vision", None, 4), ("text", 2, 2), ("both", 1, 2)])
def test_towers_and_last_k(towers, last_k, expected_blocks):
    model = oct.add_lora(tiny_clip(), towers=towers, last_k_blocks=last_k)
    adapted = [n for n, m in model.named_modules() if isinstance(m, LoRAAttention)]
    assert len(adapted) == expected_blocks
    if last_k:
        assert all(".resblocks.3." in n or (last_k == 2 and ".resblocks.2." in n) for n in adapted)
    if towers == "vision":
        assert all(n.startswith("base.visual.") for n in adapted)


@pytest.mark.parametrize("targets", [("q", "k", "v"), ("out",), ("mlp",)])
def test_every_target_receives_gradient(targets):
    # loralib on attn.out_proj gets no gradient under nn.MultiheadAttention; ours must.
    model = oct.add_lora(tiny_clip(), targets=targets)
    randomise_lora(model)
    (model.encode_image(images()) @ model.encode_text(tokens()).T).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_bad_config_names_the_value():
    with pytest.raises(ValueError, match="attn"):
        LoRAConfig(targets=("attn",))
    with pytest.raises(ValueError, match="towers"):
        LoRAConfig(towers="audio")
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)


def _scatter_delta_weight(update, branch):
    """The dense update as lora.py computed it before the concatenation: boolean-index assignment."""
    a = update.lora_A[branch].view(update.num_enabled, update.r, update.in_features)
    b = update.lora_B[branch].view(update.num_enabled, update.group_size, update.r)
    full = a.new_zeros(len(update.enable), update.group_size, update.in_features)
    full[list(update.enable)] = torch.bmm(b, a)
    return full.reshape(update.out_features, update.in_features) * update.scaling


def _scatter_activation_delta(update, x, branch):
    h = torch.nn.functional.linear(x, update.lora_A[branch]).unflatten(-1, (update.num_enabled, update.r))
    out = torch.einsum("...gr,gor->...go", h, update.lora_B[branch].view(update.num_enabled, update.group_size, update.r))
    full = out.new_zeros(*out.shape[:-2], len(update.enable), update.group_size)
    full[..., list(update.enable), :] = out
    return full.flatten(-2) * update.scaling


@pytest.mark.parametrize("enable", [e for e in itertools.product([True, False], repeat=3) if any(e)])
def test_group_placement_equals_the_scatter_formula(enable):
    """Every q/k/v mask (all enabled included): same dense update, same activations, same gradients."""
    router = BranchRouter(("a",))
    update = LoRAUpdate(16, 48, LoRAConfig(rank=4, alpha=8), router, enable)
    torch.manual_seed(sum(enable))
    with torch.no_grad():
        update.lora_B["a"].normal_()
    assert torch.equal(update.delta_weight("a"), _scatter_delta_weight(update, "a"))
    x = torch.randn(2, 5, 16, requires_grad=True)
    grads = []
    for compute in (lambda: update(x), lambda: _scatter_activation_delta(update, x, "a")):
        out = compute()
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
        params = (x, update.lora_A["a"], update.lora_B["a"])
        grads.append((out.detach(), *torch.autograd.grad((out * weights).sum(), params)))
    assert all(torch.equal(new, old) for new, old in zip(*grads))
    dense = update.delta_weight("a").view(3, 16, 16)  # disabled groups add exactly nothing
    assert all(bool((dense[g] == 0).all()) != on for g, on in enumerate(enable))

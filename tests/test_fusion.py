"""DualLoRAFusion: batched branches equal separate passes, shared prefix, fusion maths, isolation."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import open_clip_thermal as oct
from open_clip_thermal.model import fuse_features

from model_helpers import images, randomise_lora, tiny_clip, tokens

BRANCHES = ("global", "fine_grained")


def _dual(attention="mha", last_k=None, **kw):
    model = oct.add_lora(tiny_clip(attention=attention), branches=BRANCHES, last_k_blocks=last_k, **kw)
    randomise_lora(model)
    return model.eval()


@pytest.mark.parametrize("attention", ["mha", "custom"])
@pytest.mark.parametrize("last_k", [None, 2])
def test_one_batched_pass_equals_separate_branches(attention, last_k):
    model = _dual(attention, last_k)
    assert model._first_adapted == ({"vision": 0, "text": 0} if last_k is None else {"vision": 2, "text": 2})
    x, t, t2 = images(), tokens(), tokens(seed=9)
    with torch.no_grad():
        img = model.branch_image_features(x)
        txt = model.branch_text_features(t)
        dual = model.branch_text_features({"global": t, "fine_grained": t2})
        for b in BRANCHES:
            torch.testing.assert_close(img[b], model.encode_image(x, branch=b), atol=1e-6, rtol=0)
            torch.testing.assert_close(txt[b], model.encode_text(t, branch=b), atol=1e-6, rtol=0)
        torch.testing.assert_close(dual["fine_grained"], model.encode_text(t2, branch="fine_grained"), atol=1e-6, rtol=0)
        assert (img["global"] - img["fine_grained"]).abs().max() > 1e-3  # branches really differ


def test_shared_prefix_runs_unadapted_blocks_once():
    model = _dual(last_k=2)
    calls = {}
    for i, block in enumerate(model.base.visual.transformer.resblocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls.get(i, 0) + a[0].shape[0]))
    with torch.no_grad():
        model.encode_image(images(4))
    assert calls == {0: 4, 1: 4, 2: 8, 3: 8}  # prefix on 4 images, adapted blocks on 2 x 4


def test_fused_encoders_follow_the_equations():
    model = _dual()
    x, tg, tf = images(), tokens(), tokens(seed=5)
    with torch.no_grad():
        fi = {b: model.encode_image(x, branch=b) for b in BRANCHES}
        expected = F.normalize(0.8 * fi["global"] + 0.2 * fi["fine_grained"], dim=-1)
        torch.testing.assert_close(model.encode_image(x, lam=0.8), expected, atol=1e-6, rtol=0)
        dual = model.encode_text_dual(tg, tf)
        g, f = model.encode_text(tg, branch="global"), model.encode_text(tf, branch="fine_grained")
        torch.testing.assert_close(dual, F.normalize(0.7 * g + 0.3 * f, dim=-1), atol=1e-6, rtol=0)


def test_score_fusion_is_weighted_sum_of_branch_scores():
    g = torch.Generator().manual_seed(0)
    a = {b: F.normalize(torch.randn(5, 16, generator=g), dim=-1) for b in BRANCHES}
    c = {b: F.normalize(torch.randn(7, 16, generator=g), dim=-1) for b in BRANCHES}
    lam = 0.65
    fa, fc = fuse_features(a, lam, "score"), fuse_features(c, lam, "score")
    expected = lam * a["global"] @ c["global"].T + (1 - lam) * a["fine_grained"] @ c["fine_grained"].T
    torch.testing.assert_close(fa @ fc.T, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(fa.norm(dim=-1), torch.ones(5), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="lam"):
        fuse_features(a, 1.5)
    with pytest.raises(ValueError, match="mode"):
        fuse_features(a, 0.5, "average")


def test_no_gradient_between_branches():
    model = _dual().train()
    x, t = images(), tokens()
    img = model.branch_image_features(x)
    txt = model.branch_text_features({"global": t, "fine_grained": tokens(seed=4)})
    loss = ClipLoss()(img["global"], txt["global"], model.logit_scales["global"].exp())
    loss.backward()
    named = dict(model.named_parameters())
    g_grads = [p.grad for n, p in named.items() if n.endswith(".global") and "lora_" in n]
    f_grads = [p.grad for n, p in named.items() if n.endswith(".fine_grained") and "lora_" in n]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in g_grads)
    assert all(gr is None or gr.abs().max() == 0 for gr in f_grads)
    assert named["logit_scales.fine_grained"].grad is None


def test_forward_speaks_openclip():
    model = oct.add_lora(tiny_clip(), branches=BRANCHES)
    model.output_dict = True
    out = model(images(), tokens())
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert math.isclose(out["logit_scale"].item(), math.exp(model.logit_scale.item()), rel_tol=1e-6)
    loss = ClipLoss()(**out)
    assert torch.isfinite(loss)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images()), model.encode_image(images()))
    assert model.visual is model.base.visual  # OpenCLIP attributes reach the base


def test_unknown_branch_is_named():
    model = _dual()
    with pytest.raises(ValueError, match="thermal"):
        model.encode_image(images(), branch="thermal")
    single = oct.add_lora(tiny_clip(), branches=("global",))
    with pytest.raises(ValueError, match="encode_text_dual"):
        single.encode_text_dual(tokens(), tokens())


@pytest.mark.parametrize("last_k", [None, 2])
def test_inference_folding_equals_activation_path(last_k):
    """Without autograd the update is folded into the weights per branch; with it, it runs on activations."""
    model = _dual(last_k=last_k)
    x, t = images(), tokens()
    with torch.no_grad():
        folded = (model.branch_image_features(x), model.branch_text_features(t))
    unfolded = (model.branch_image_features(x), model.branch_text_features(t))  # autograd on
    for a, b in zip(folded, unfolded):
        for branch in BRANCHES:
            torch.testing.assert_close(a[branch], b[branch].detach(), atol=1e-6, rtol=0)

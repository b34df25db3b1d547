"""Gap statistics, BH correction, geometry and fusion against scipy and hand computations."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from open_clip_thermal.evaluation.fused import fuse_branches
from open_clip_thermal.evaluation.geometry import mean_feature_angle, mean_intra_group_cosine
from open_clip_thermal.evaluation.stats import benjamini_hochberg, matched_pair_cosine, pairwise_welch_tests
from open_clip_thermal.model import fuse_features


def test_bh_by_hand():
    # m = 4: sorted p = .01 .02 .03 .5 -> scaled .04 .04 .04 .5 (running min from the top).
    assert benjamini_hochberg([0.03, 0.5, 0.01, 0.02]).tolist() == pytest.approx([0.04, 0.5, 0.04, 0.04])
    # Monotonicity: .04*3/2 = .06 for the 2nd, but the 3rd's .045 caps it.
    assert benjamini_hochberg([0.01, 0.04, 0.045]).tolist() == pytest.approx([0.03, 0.045, 0.045])


def test_bh_matches_scipy():
    p = np.random.default_rng(0).uniform(size=37) ** 3
    assert benjamini_hochberg(p) == pytest.approx(scipy_stats.false_discovery_control(p, method="bh"))


def test_bh_rejects_invalid():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.1, 1.5])


def test_pairwise_welch_matches_scipy_and_hand_formula():
    rng = np.random.default_rng(1)
    samples = {"zeroshot": rng.normal(0.20, 0.05, 50), "lora": rng.normal(0.30, 0.08, 60),
               "tclip": rng.normal(0.31, 0.02, 40)}
    rows = pairwise_welch_tests(samples)
    assert [(r["model_a"], r["model_b"]) for r in rows] == list(itertools.combinations(samples, 2))
    for row in rows:
        a, b = samples[row["model_a"]], samples[row["model_b"]]
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        t = (a.mean() - b.mean()) / math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
        assert row["t"] == pytest.approx(t)
        assert row["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), dof))
    assert [r["p_bh"] for r in rows] == pytest.approx(list(benjamini_hochberg([r["p"] for r in rows])))
    assert rows[0]["significant"] is True  # 0.20 vs 0.30 with n=50/60 is far apart


def test_bh_adjusts_over_the_chosen_family_only():
    rng = np.random.default_rng(2)
    samples = {name: rng.normal(mean, 0.05, 40) for name, mean in
               [("zs", 0.20), ("zs-fg", 0.21), ("lora", 0.23), ("lora-fg", 0.22), ("dual", 0.235)]}
    family = [("zs", "lora"), ("zs", "dual"), ("lora", "dual")]
    chosen = pairwise_welch_tests(samples, pairs=family)
    every = {(r["model_a"], r["model_b"]): r for r in pairwise_welch_tests(samples)}
    assert [(r["model_a"], r["model_b"]) for r in chosen] == family
    assert [r["p"] for r in chosen] == pytest.approx([every[pair]["p"] for pair in family])  # same tests
    assert [r["p_bh"] for r in chosen] == pytest.approx(list(benjamini_hochberg([r["p"] for r in chosen])))
    assert any(r["p_bh"] < every[(r["model_a"], r["model_b"])]["p_bh"] for r in chosen)  # m = 3, not 10
    with pytest.raises(ValueError, match="nope"):
        pairwise_welch_tests(samples, pairs=[("zs", "nope")])


def test_gap_family_roles_and_fallback():
    from open_clip_thermal.evaluation.evaluate import gap_test_pairs
    from open_clip_thermal.evaluation.variants import Row

    def row(label, kind):
        return Row(label=label, variant=label, kind=kind, captions=("global",), fused=False)
    rows = [row("zeroshot (global)", "zeroshot"), row("zeroshot (fine-grained)", "zeroshot"),
            row("clip-adapter", "clip-adapter"), row("lora-global", "lora-global"), row("lora-global/r16", "lora-global"),
            row("tclip-global", "tclip-global"), row("tclip-dual", "tclip-dual")]
    assert gap_test_pairs(rows, "paper") == ([("zeroshot (global)", "lora-global"), ("zeroshot (global)", "tclip-dual"),
                                              ("lora-global", "tclip-dual")], None)
    assert gap_test_pairs(rows[:3], "paper")[0] is None and "1 row(s)" in gap_test_pairs(rows[:3], "paper")[1]
    assert gap_test_pairs(rows, "all") == (None, None)
    with pytest.raises(ValueError, match="family"):
        gap_test_pairs(rows, "some")


def test_matched_pair_cosine():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert matched_pair_cosine(image, text).tolist() == pytest.approx([math.sqrt(0.5), 1.0])


def test_intra_group_cosine_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    result = mean_intra_group_cosine(features, ["day", "day", "night", "night"])
    assert result == {"day": {"count": 2, "mean_cosine": pytest.approx(0.0)},
                      "night": {"count": 2, "mean_cosine": pytest.approx(1.0)}}
    # Three members: pairs (0,1)=0, (0,2)=1, (1,2)=0 -> 1/3.
    assert mean_intra_group_cosine(features[:3], ["x"] * 3)["x"]["mean_cosine"] == pytest.approx(1 / 3)
    assert mean_intra_group_cosine(features[:1], ["x"])["x"]["mean_cosine"] is None


def test_mean_feature_angle():
    assert mean_feature_angle(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])) == pytest.approx(90.0)
    assert mean_feature_angle(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0]])) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_fusion_formulas(lam):
    generator = torch.Generator().manual_seed(3)
    image = {b: torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=-1) for b in ("global", "fine_grained")}
    text = {b: torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=-1) for b in ("global", "fine_grained")}
    fused = fuse_branches(image, lam, "feature")
    want = torch.nn.functional.normalize(lam * image["global"] + (1 - lam) * image["fine_grained"], dim=-1)
    assert torch.allclose(fused, want, atol=1e-6)
    score_i, score_t = fuse_branches(image, lam, "score"), fuse_branches(text, lam, "score")
    assert torch.allclose(score_i.norm(dim=-1), torch.ones(5))
    weighted = lam * image["global"] @ text["global"].T + (1 - lam) * image["fine_grained"] @ text["fine_grained"].T
    assert torch.allclose(score_i @ score_t.T, weighted, atol=1e-6)
    # The benchmark fuses with the model's rule: one definition.
    for mode in ("feature", "score"):
        assert torch.equal(fuse_branches(image, lam, mode), fuse_features(image, lam, mode))
    with pytest.raises(ValueError, match="unknown fusion mode"):
        fuse_branches(image, lam, "sum")

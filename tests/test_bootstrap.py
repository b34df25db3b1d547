"""Paired bootstrap of a difference in mean recall (open_clip_thermal.evaluation.bootstrap)."""
import numpy as np
import pytest
import torch

from open_clip_thermal.evaluation.bootstrap import paired_bootstrap, per_pair_hits


def test_identical_methods_differ_by_exactly_zero():
    scores = np.random.default_rng(0).random(200)
    ci = paired_bootstrap(scores, scores, num_resamples=500)
    assert ci["difference"] == ci["low"] == ci["high"] == 0.0 and ci["p_not_positive"] == 1.0


def test_a_constant_shift_is_recovered_without_spread():
    b = np.random.default_rng(1).random(300)
    ci = paired_bootstrap(b + 0.1, b, num_resamples=500)
    assert ci["difference"] == pytest.approx(0.1) and ci["low"] == pytest.approx(0.1) and ci["high"] == pytest.approx(0.1)


def test_pairing_removes_between_item_variance():
    rng = np.random.default_rng(2)
    b = rng.random(300)  # items differ a lot from each other ...
    a = b + 0.02 + rng.normal(0, 0.01, 300)  # ... but A beats B by a little on every item
    ci = paired_bootstrap(a, b, num_resamples=2000)
    assert 0 < ci["low"] < 0.02 < ci["high"] < 0.03 and ci["p_not_positive"] == 0.0


def test_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    diff = rng.normal(0.05, 1.0, 2000)
    ci = paired_bootstrap(diff, np.zeros_like(diff), num_resamples=4000, confidence=0.9)
    half = 1.645 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert ci["low"] == pytest.approx(diff.mean() - half, abs=0.01)
    assert ci["high"] == pytest.approx(diff.mean() + half, abs=0.01)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.5)


def test_per_pair_hits_average_to_mean_recall():
    eye = torch.eye(4)
    swapped = eye[[1, 0, 2, 3]]  # pairs 0 and 1 exchanged: their first hit is at rank 1
    hits = per_pair_hits(eye, swapped, ks=(1, 2))
    assert hits.tolist() == [0.5, 0.5, 1.0, 1.0]
    assert hits.mean() == pytest.approx(np.mean([0.5, 1.0, 0.5, 1.0]))  # R@1 = 0.5, R@2 = 1 in both directions

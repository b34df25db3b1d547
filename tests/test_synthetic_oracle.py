"""The oracle diagnostic, and the separation of global from fine-grained facts that it measures."""
import dataclasses
from collections import Counter

import numpy as np
import pytest

from open_clip_thermal.synthetic import (fine_grained_thermal_caption, global_thermal_caption, oracle_report,
                                         sample_scene, scene_rng)
from open_clip_thermal.synthetic.cli import main as cli_main
from open_clip_thermal.synthetic.oracle import fact_retrieval


def test_fact_retrieval_on_known_answers():
    r = fact_retrieval(["a", "a", "b", "c", "c", "c"], ks=(1, 2))
    assert r["distinct"] == 3 and r["unique"] == pytest.approx(1 / 6)
    assert r["recall"][1] == pytest.approx((0.5 + 0.5 + 1 + 1 / 3 * 3) / 6)
    assert r["recall"][2] == pytest.approx((1 + 1 + 1 + 2 / 3 * 3) / 6)
    assert r["chance"] == {1: pytest.approx(1 / 6), 2: pytest.approx(2 / 6)}


def _independent_facts(scene):
    """The caption facts, written out again from the raw scene fields (not via synthetic.facts)."""
    def engine(v):
        if v.moving:
            return 0
        return 1 if v.parked_minutes < 10 else 2 if v.parked_minutes < 45 else 3

    def patch(p):
        return p.kind + ("-fresh" if p.kind == "vacated" and p.minutes < 10 else "")

    g = (scene.place, scene.time_of_day, scene.weather, scene.road_wet, len(scene.pedestrians),
         frozenset(Counter(v.kind for v in scene.vehicles).items()))
    f = (frozenset(Counter((engine(v), v.occupied) for v in scene.vehicles).items()),
         frozenset(Counter(p.exerted for p in scene.pedestrians).items()),
         frozenset(Counter(b.heated for b in scene.buildings).items()),
         frozenset(Counter(patch(p) for p in scene.road_patches).items()))
    return g, f


def test_oracle_on_the_default_test_split_recomputed_independently():
    report = oracle_report(seed=0, split="test", count=300)["retrieval"]
    scenes = [sample_scene(scene_rng(0, "test", i)) for i in range(300)]
    facts = [_independent_facts(s) for s in scenes]
    for name, key in (("global", lambda gf: gf[0]), ("fine-grained", lambda gf: gf[1]), ("both", lambda gf: gf)):
        keys = [key(gf) for gf in facts]
        sizes = Counter(keys)
        assert report[name]["distinct"] == len(sizes), name
        assert report[name]["unique"] == pytest.approx(np.mean([sizes[k] == 1 for k in keys])), name
        assert report[name]["recall"][1] == pytest.approx(np.mean([1 / sizes[k] for k in keys])), name
    # The numbers docs/synthetic.md states, fixed before any model was trained on world v2.
    assert [report[n]["distinct"] for n in ("global", "fine-grained", "both")] == [242, 284, 299]
    assert report["both"]["unique"] > report["global"]["unique"] + 0.3


def _twin(scene, **changes):
    return dataclasses.replace(scene, **changes)


@pytest.mark.parametrize("index", range(20))
def test_each_caption_type_ignores_the_other_types_facts(index):
    scene = sample_scene(scene_rng(0, "test", index))
    # Changing scene-level facts leaves the fine-grained caption as it is, wording draw included ...
    other_scene_level = _twin(scene, time_of_day="dusk" if scene.time_of_day != "dusk" else "day",
                              weather="fog" if scene.weather != "fog" else "clear", road_wet=not scene.road_wet)
    assert fine_grained_thermal_caption(scene, np.random.default_rng(1)) == \
        fine_grained_thermal_caption(other_scene_level, np.random.default_rng(1))
    # ... and changing object states leaves the global caption as it is.
    other_states = _twin(scene, vehicles=[dataclasses.replace(v, moving=not v.moving, occupied=not v.occupied)
                                          for v in scene.vehicles],
                         pedestrians=[dataclasses.replace(p, exerted=not p.exerted) for p in scene.pedestrians],
                         road_patches=[])
    assert global_thermal_caption(scene, np.random.default_rng(1)) == \
        global_thermal_caption(other_states, np.random.default_rng(1))


def test_fine_grained_captions_name_every_engine_state():
    phrases = {"running": ("running",), "just off": ("just switched off", "stopped minutes ago"),
               "cooling": ("cooling",), "cold": ("cold engine", "long cold")}
    from open_clip_thermal.synthetic import Scene, Vehicle
    for state, minutes in (("running", 0.0), ("just off", 3.0), ("cooling", 20.0), ("cold", 100.0)):
        scene = Scene(vehicles=[Vehicle(u=0.5, v=0.8, moving=state == "running", parked_minutes=minutes)])
        for seed in range(6):
            caption = fine_grained_thermal_caption(scene, np.random.default_rng(seed))
            assert any(p in caption for p in phrases[state]), (state, caption)


def test_captions_fit_clips_context():
    import open_clip
    tokenizer = open_clip.get_tokenizer("thermal-vit-tiny")
    captions = []
    for index in range(300):
        rng = scene_rng(0, "test", index)
        scene = sample_scene(rng)
        captions += [global_thermal_caption(scene, rng), fine_grained_thermal_caption(scene, rng)]
    lengths = (tokenizer(captions) != 0).sum(1)
    assert (lengths < 77).float().mean() >= 0.99  # a full 77-token row means the caption was cut


def test_cli_without_a_subcommand_prints_the_oracle(capsys):
    assert cli_main([]) == 0
    text = capsys.readouterr().out
    for line in ("| global |", "| fine-grained |", "| both |", "| chance |", "vehicle_engine"):
        assert line in text
    assert cli_main(["oracle", "--num-test", "20", "--seed", "3"]) == 0
    assert "seed 3, split test, 20 scenes" in capsys.readouterr().out

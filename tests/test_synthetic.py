"""Physics invariants, determinism, captions and the dataset writer of the synthetic world."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from open_clip_thermal.synthetic import (THERMAL_PREFIX, Building, Pedestrian, Scene, Tree, Vehicle,
                                         fine_grained_thermal_caption, generate_dataset, global_thermal_caption,
                                         rasterize, read_scene_records, render_rgb, render_sample, render_thermal,
                                         rgb_caption, sample_scene, scene_rng)
from open_clip_thermal.synthetic.__main__ import main as cli_main
from open_clip_thermal.synthetic.render_thermal import COUNTS_PER_KELVIN, apply_sensor

SIZE = 96


def _scene(**overrides) -> Scene:
    """A hand-placed street scene; tests switch single factors on and off."""
    base = dict(
        time_of_day="night", weather="clear", place="street", road_wet=False, air_temp_c=12.0,
        horizon=0.4, road_centre=0.5, texture_seed=11,
        vehicles=[Vehicle(u=0.3, v=0.8, colour="silver", moving=True),
                  Vehicle(u=0.75, v=0.8, colour="silver", moving=False, parked_minutes=15.0)],
        pedestrians=[Pedestrian(u=0.08, v=0.97, clothing="jacket")],
        buildings=[Building(u0=0.0, u1=0.3, top=0.05), Building(u0=0.7, u1=1.0, top=0.08)],
        trees=[Tree(u=0.45, v=0.5, crown=1.3)])
    base.update(overrides)
    return Scene(**base)


def _mean_counts(scene: Scene, kind: str, owner=None) -> float:
    raster = rasterize(scene, SIZE)
    counts = render_thermal(scene, raster=raster, bit_depth=16).astype(np.float64)
    mask = raster.mask(kind, owner)
    assert mask.sum() > 0, f"no {kind} pixels to measure"
    return float(counts[mask].mean())


@pytest.mark.parametrize("weather", ["clear", "overcast", "fog", "rain"])
def test_sky_darker_than_road_at_night(weather):
    scene = _scene(weather=weather, road_wet=weather == "rain")
    assert _mean_counts(scene, "sky") < _mean_counts(scene, "road")


def test_sky_darker_than_road_in_random_night_scenes():
    checked = 0
    for index in range(60):
        scene = sample_scene(scene_rng(5, "train", index))
        if scene.time_of_day != "night":
            continue
        assert _mean_counts(scene, "sky") < _mean_counts(scene, "road"), index
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("time_of_day", ["day", "dusk", "night"])
@pytest.mark.parametrize("parked_minutes", [10.0, 60.0])
def test_moving_engine_brighter_than_parked(time_of_day, parked_minutes):
    scene = _scene(time_of_day=time_of_day)
    scene.vehicles[1].parked_minutes = parked_minutes
    assert _mean_counts(scene, "vehicle_engine", 0) > _mean_counts(scene, "vehicle_engine", 1)
    assert _mean_counts(scene, "vehicle_tyre", 0) > _mean_counts(scene, "vehicle_tyre", 1)


def test_headlights_are_hot_spots_only_when_driving_at_night():
    night = _scene(time_of_day="night")
    assert _mean_counts(night, "headlight", 0) > _mean_counts(night, "vehicle_body", 0) + 20 * COUNTS_PER_KELVIN
    day = _scene(time_of_day="day")
    assert _mean_counts(day, "headlight", 0) < _mean_counts(day, "vehicle_engine", 0)


def test_fog_and_rain_lower_contrast():
    for index in range(8):
        clear = sample_scene(scene_rng(1, "train", index))
        clear = dataclasses.replace(clear, weather="clear")
        contrast = {}
        for weather in ("clear", "rain", "fog"):
            counts = render_thermal(dataclasses.replace(clear, weather=weather), SIZE, bit_depth=16)
            contrast[weather] = np.std(counts.astype(np.float64))
        assert contrast["fog"] < contrast["clear"], index
        assert contrast["rain"] < contrast["clear"], index


def test_wet_road_brighter_than_dry():
    for time_of_day in ("day", "night"):
        dry = _scene(time_of_day=time_of_day, road_wet=False)
        wet = dataclasses.replace(dry, road_wet=True)
        assert _mean_counts(wet, "road") > _mean_counts(dry, "road")


@pytest.mark.parametrize("clothing", ["t-shirt", "jacket", "coat"])
@pytest.mark.parametrize("air_temp_c", [0.0, 15.0, 28.0])
@pytest.mark.parametrize("time_of_day", ["day", "night"])
def test_pedestrian_torso_and_head_warmer_than_limbs(clothing, air_temp_c, time_of_day):
    scene = _scene(air_temp_c=air_temp_c, time_of_day=time_of_day,
                   pedestrians=[Pedestrian(u=0.5, v=0.97, clothing=clothing)], vehicles=[])
    torso, head = _mean_counts(scene, "ped_torso"), _mean_counts(scene, "ped_head")
    for limb in ("ped_arm", "ped_leg"):
        assert torso > _mean_counts(scene, limb)
        assert head > _mean_counts(scene, limb)


def test_umbrella_darker_than_the_person():
    scene = _scene(weather="rain", road_wet=True, vehicles=[],
                   pedestrians=[Pedestrian(u=0.5, v=0.97, clothing="coat", umbrella=True)])
    assert _mean_counts(scene, "umbrella") < _mean_counts(scene, "ped_torso")
    assert _mean_counts(scene, "umbrella") < _mean_counts(scene, "ped_leg")


@pytest.mark.parametrize("weather", ["clear", "overcast"])
def test_vegetation_cooler_than_buildings_by_day(weather):
    scene = _scene(time_of_day="day", weather=weather, place="campus")
    wall = _mean_counts(scene, "building_wall")
    assert _mean_counts(scene, "foliage") < wall
    assert _mean_counts(scene, "grass") < wall


def test_radiometric_counts_are_linear_and_in_range():
    for index in range(10):
        counts = render_thermal(sample_scene(scene_rng(2, "train", index)), 64, bit_depth=16)
        assert counts.dtype == np.uint16
        assert 1000 <= counts.min() and counts.max() <= 20000
    hot = _scene(air_temp_c=20.0)
    warmer = dataclasses.replace(hot, air_temp_c=25.0)
    # Everything that tracks air temperature moves by about 5 K worth of counts.
    shift = _mean_counts(warmer, "building_wall") - _mean_counts(hot, "building_wall")
    assert shift == pytest.approx(5 * COUNTS_PER_KELVIN, rel=0.1)


def test_fixed_pattern_noise_belongs_to_the_camera():
    flat = np.full((64, 64), 10000.0)
    same_camera = [apply_sensor(flat, sensor_seed=0, noise_seed=n).astype(float).mean(0) for n in (1, 2)]
    other_camera = apply_sensor(flat, sensor_seed=1, noise_seed=1).astype(float).mean(0)
    stripes = same_camera[0] - same_camera[0].mean()
    assert np.std(stripes) > 10  # visible column stripes
    assert np.corrcoef(same_camera[0], same_camera[1])[0, 1] > 0.9
    assert abs(np.corrcoef(same_camera[0], other_camera)[0, 1]) < 0.5


def test_eight_bit_agc_spans_the_grey_levels():
    image = render_thermal(_scene(time_of_day="day"), SIZE, bit_depth=8)
    assert image.dtype == np.uint8
    assert image.max() - image.min() > 200


def test_rgb_and_thermal_share_one_layout():
    scene = _scene()
    raster = rasterize(scene, SIZE)
    rgb, thermal = render_rgb(scene, raster=raster), render_thermal(scene, raster=raster)
    assert rgb.shape == (SIZE, SIZE, 3) and thermal.shape == (SIZE, SIZE)
    # Lit-from-inside and driving-at-night parts: the headlight is bright in both modalities.
    lamp = raster.mask("headlight", 0)
    assert rgb[lamp].mean() > rgb[raster.mask("road")].mean()
    assert thermal[lamp].mean() > thermal[raster.mask("road")].mean()


def test_render_is_deterministic_per_seed():
    a, b = render_sample(3, "train", 5, size=64), render_sample(3, "train", 5, size=64)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.thermal, b.thermal)
    assert (a.global_caption, a.fg_caption, a.rgb_caption) == (b.global_caption, b.fg_caption, b.rgb_caption)
    c = render_sample(4, "train", 5, size=64)
    assert not np.array_equal(a.rgb, c.rgb)


def test_generate_is_byte_identical_for_the_same_seed(tmp_path):
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, 3, 1, 2, size=32, seed=9, bit_depth=16, progress=False)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + 2 * 6
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def _count_words(n):
    return {0: ["no"], 1: ["one", "a single"], 2: ["two", "a pair of"]}[n]


def test_captions_vary_and_carry_the_facts():
    scene = _scene(pedestrians=[Pedestrian(u=0.1, v=0.9), Pedestrian(u=0.9, v=0.95)])
    rng = np.random.default_rng(0)
    drawn = {"global": set(), "fg": set(), "rgb": set()}
    for _ in range(40):
        g, f, r = global_thermal_caption(scene, rng), fine_grained_thermal_caption(scene, rng), rgb_caption(scene, rng)
        drawn["global"].add(g), drawn["fg"].add(f), drawn["rgb"].add(r)
        assert g.startswith(THERMAL_PREFIX) and f.startswith(THERMAL_PREFIX)
        assert "thermal" not in r and "infrared" not in r
        assert any(f" {w} " in g for w in _count_words(2)), g  # two pedestrians
        assert "silver" in r  # car colour is visible in RGB only
        assert "silver" not in g and "silver" not in f
    assert all(len(v) >= 10 for v in drawn.values()), {k: len(v) for k, v in drawn.items()}
    openers = {" ".join(c.split()[:3]) for c in drawn["global"]}
    assert len(openers) >= 3


def test_annotation_file_matches_the_contract(tmp_path):
    path = generate_dataset(tmp_path, num_train=4, num_val=2, num_test=3, size=32, seed=1, bit_depth=16,
                            progress=False)
    records = read_scene_records(path)
    assert [r["split"] for r in records].count("train") == 4
    assert [r["split"] for r in records].count("val") == 2
    assert [r["split"] for r in records].count("test") == 3
    assert len({r["id"] for r in records}) == 9 and all("." not in r["id"] for r in records)
    for record in records:
        assert record["dataset"] == "synthetic"
        assert record["global_caption"].startswith(THERMAL_PREFIX)
        assert record["fg_caption"].startswith(THERMAL_PREFIX)
        assert record["rgb_caption"]
        assert {"time_of_day", "weather", "place", "engine_states", "road_patches"} <= set(record["meta"])
        for obj in record["objects"]:  # labelled boxes for cutting object crops
            x0, y0, x1, y1 = obj["box"]
            assert obj["label"] in ("car", "van", "bus", "pedestrian", "umbrella", "building", "tree")
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        thermal = Image.open(tmp_path / record["image"])
        assert thermal.mode == "I;16" and thermal.size == (32, 32)
        assert np.array(thermal).min() >= 1000
        rgb = Image.open(tmp_path / record["rgb"])
        assert rgb.mode == "RGB" and rgb.size == (32, 32)
    info = json.loads((tmp_path / "synthetic_info.json").read_text())
    assert info["counts"] == {"train": 4, "val": 2, "test": 3}


def test_splits_are_disjoint_scenes():
    train = [render_sample(0, "train", i, size=32) for i in range(5)]
    test = [render_sample(0, "test", i, size=32) for i in range(5)]
    assert not any(np.array_equal(a.rgb, b.rgb) for a in train for b in test)


def test_cli_generate_writes_eight_bit_pngs(tmp_path, capsys):
    assert cli_main(["generate", "--out", str(tmp_path), "--num-train", "2", "--num-val", "0", "--num-test", "1",
                     "--size", "64", "--seed", "3", "--bit-depth", "8", "--no-progress"]) == 0
    records = read_scene_records(tmp_path / "annotations.jsonl")
    assert len(records) == 3
    image = Image.open(tmp_path / records[0]["image"])
    assert image.mode == "L" and image.size == (64, 64)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["generate"], ["pretrain-proxy"]])
def test_cli_help_explains_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(command + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage" in text
    if command == ["generate"]:
        assert all(flag in text for flag in ("--out", "--num-train", "--size", "--seed", "--bit-depth"))
    if command == ["pretrain-proxy"]:
        assert all(flag in text for flag in ("--cache-dir", "--steps", "--batch-size", "--force"))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="bit_depth"):
        render_thermal(_scene(), 32, bit_depth=12)
    with pytest.raises(ValueError, match="too small"):
        rasterize(_scene(), 8)

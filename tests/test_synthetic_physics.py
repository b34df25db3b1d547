"""World v2: every object-level thermal state is visible in the thermal image, physically ordered, invisible
or unfixed in RGB, and sampled independently of time, weather and place."""
import dataclasses

import numpy as np
import pytest

from open_clip_thermal.synthetic import (Building, Pedestrian, RoadPatch, Scene, Vehicle, object_boxes, rasterize,
                                         render_rgb, render_sample, render_thermal, sample_scene, scene_rng)
from open_clip_thermal.synthetic.render_thermal import COUNTS_PER_KELVIN

SIZE = 96
TIMES = ("day", "dusk", "night")


def _scene(**overrides) -> Scene:
    base = dict(time_of_day="night", weather="clear", place="street", air_temp_c=12.0, horizon=0.4,
                road_centre=0.5, texture_seed=3,
                vehicles=[Vehicle(u=0.3, v=0.8, colour="silver", moving=False, parked_minutes=2.0),
                          Vehicle(u=0.75, v=0.8, colour="silver", moving=False, parked_minutes=30.0)],
                buildings=[Building(u0=0.0, u1=0.3, top=0.05), Building(u0=0.7, u1=1.0, top=0.05)])
    base.update(overrides)
    return Scene(**base)


def _mean(scene: Scene, kind: str, owner=None) -> float:
    raster = rasterize(scene, SIZE)
    counts = render_thermal(scene, raster=raster, bit_depth=16).astype(np.float64)
    mask = raster.mask(kind, owner)
    assert mask.sum() > 0, f"no {kind} pixels to measure"
    return float(counts[mask].mean())


@pytest.mark.parametrize("time_of_day", TIMES)
def test_engine_stopped_two_minutes_ago_is_warmer_than_thirty(time_of_day):
    scene = _scene(time_of_day=time_of_day)
    assert _mean(scene, "vehicle_engine", 0) > _mean(scene, "vehicle_engine", 1) + 5 * COUNTS_PER_KELVIN
    assert _mean(scene, "vehicle_tyre", 0) > _mean(scene, "vehicle_tyre", 1)


def test_engine_cools_monotonically_towards_the_body():
    temps = []
    for minutes in (1, 5, 15, 45, 150):
        scene = _scene(vehicles=[Vehicle(u=0.5, v=0.85, colour="silver", moving=False, parked_minutes=minutes)])
        temps.append(_mean(scene, "vehicle_engine"))
    assert all(a > b for a, b in zip(temps, temps[1:])), temps
    cold = _scene(vehicles=[Vehicle(u=0.5, v=0.85, colour="silver", moving=False, parked_minutes=150)])
    assert temps[-1] - _mean(cold, "vehicle_body") < 1 * COUNTS_PER_KELVIN  # near the body after 2.5 hours


@pytest.mark.parametrize("time_of_day", TIMES)
def test_occupied_cabin_is_warmer_than_an_empty_one(time_of_day):
    scene = _scene(time_of_day=time_of_day, vehicles=[
        Vehicle(u=0.3, v=0.8, colour="silver", moving=False, parked_minutes=60, occupied=True),
        Vehicle(u=0.75, v=0.8, colour="silver", moving=False, parked_minutes=60, occupied=False)])
    assert _mean(scene, "vehicle_window", 0) > _mean(scene, "vehicle_window", 1) + 2 * COUNTS_PER_KELVIN


def _road_scene(patch: RoadPatch, **overrides) -> Scene:
    return _scene(vehicles=[], road_patches=[patch], **overrides)


@pytest.mark.parametrize("time_of_day", TIMES)
@pytest.mark.parametrize("weather", ["clear", "rain"])
def test_vacated_spot_is_warm_and_fades_with_time(time_of_day, weather):
    temps = []
    for minutes in (2.0, 10.0, 30.0):
        scene = _road_scene(RoadPatch("vacated", u=0.5, v=0.8, width=0.5, height=0.2, minutes=minutes),
                            time_of_day=time_of_day, weather=weather, road_wet=weather == "rain")
        temps.append(_mean(scene, "road_vacated"))
        road = _mean(scene, "road")
    assert temps[0] > temps[1] > temps[2] > road, (temps, road)
    assert temps[0] - road > 3 * COUNTS_PER_KELVIN


@pytest.mark.parametrize("time_of_day", TIMES)
@pytest.mark.parametrize("kind", ["shade", "damp"])
def test_shaded_earlier_and_drying_patches_are_cooler_than_the_road(time_of_day, kind):
    scene = _road_scene(RoadPatch(kind, u=0.5, v=0.8, width=0.5, height=0.2), time_of_day=time_of_day)
    assert _mean(scene, f"road_{kind}") < _mean(scene, "road") - 1 * COUNTS_PER_KELVIN


@pytest.mark.parametrize("kind", ["vacated", "shade"])
def test_the_roads_memory_is_invisible_in_rgb(kind):
    with_patch = _road_scene(RoadPatch(kind, u=0.5, v=0.8, width=0.5, height=0.2, minutes=2.0), time_of_day="day")
    without = dataclasses.replace(with_patch, road_patches=[])
    assert np.array_equal(render_rgb(with_patch, SIZE), render_rgb(without, SIZE))
    assert not np.array_equal(render_thermal(with_patch, SIZE), render_thermal(without, SIZE))


@pytest.mark.parametrize("time_of_day", TIMES)
@pytest.mark.parametrize("clothing", ["t-shirt", "coat"])
def test_exerted_pedestrian_is_warmer_than_a_resting_one(time_of_day, clothing):
    scene = _scene(time_of_day=time_of_day, vehicles=[],
                   pedestrians=[Pedestrian(u=0.3, v=0.9, clothing=clothing, exerted=True),
                                Pedestrian(u=0.7, v=0.9, clothing=clothing, exerted=False)])
    for part in ("ped_torso", "ped_head", "ped_leg"):
        assert _mean(scene, part, 0) > _mean(scene, part, 1) + 0.5 * COUNTS_PER_KELVIN, part


@pytest.mark.parametrize("lit_fraction", [0.0, 1.0])
@pytest.mark.parametrize("time_of_day", TIMES)
def test_heated_building_is_warmer_whether_or_not_its_windows_are_lit(lit_fraction, time_of_day):
    scene = _scene(time_of_day=time_of_day, vehicles=[], buildings=[
        Building(u0=0.0, u1=0.35, top=0.05, heated=True, lit_fraction=lit_fraction, lit_seed=1),
        Building(u0=0.65, u1=1.0, top=0.05, heated=False, lit_fraction=lit_fraction, lit_seed=1)])
    assert _mean(scene, "building_wall", 0) > _mean(scene, "building_wall", 1) + 2 * COUNTS_PER_KELVIN
    window = "window_lit" if lit_fraction else "window_dark"
    assert _mean(scene, window, 0) > _mean(scene, window, 1)
    # Lit windows come from the time of day and show in RGB; heating does not change the RGB image.
    unheated = dataclasses.replace(scene, buildings=[dataclasses.replace(b, heated=False) for b in scene.buildings])
    assert np.array_equal(render_rgb(scene, SIZE), render_rgb(unheated, SIZE))


def test_glass_facade_mirrors_the_cold_sky():
    scene = _scene(vehicles=[], buildings=[Building(u0=0.0, u1=0.35, top=0.05, material="glass"),
                                           Building(u0=0.65, u1=1.0, top=0.05, material="brick")])
    assert _mean(scene, "building_wall", 0) < _mean(scene, "building_wall", 1)


def _state_rates(scenes):
    vehicles = [v for s in scenes for v in s.vehicles]
    people = [p for s in scenes for p in s.pedestrians]
    buildings = [b for s in scenes for b in s.buildings]
    return {"running": np.mean([v.moving for v in vehicles]), "occupied": np.mean([v.occupied for v in vehicles]),
            "log_minutes": np.mean([np.log(v.parked_minutes) for v in vehicles if not v.moving]),
            "exerted": np.mean([p.exerted for p in people]), "heated": np.mean([b.heated for b in buildings]),
            "patches": np.mean([len(s.road_patches) for s in scenes])}


def test_object_states_do_not_depend_on_time_weather_or_place():
    scenes = [sample_scene(scene_rng(7, "independence", i)) for i in range(3000)]
    overall = _state_rates(scenes)
    for attribute, values in (("time_of_day", TIMES), ("weather", ("clear", "rain")),
                              ("place", ("street", "crossing"))):
        for value in values:
            subset = _state_rates([s for s in scenes if getattr(s, attribute) == value])
            for name, rate in subset.items():
                tolerance = 0.35 if name == "log_minutes" else 0.08
                assert abs(rate - overall[name]) < tolerance, (attribute, value, name, rate, overall[name])


@pytest.mark.parametrize("index", range(0, 40))
def test_object_boxes_cover_the_visible_objects(index):
    sample = render_sample(0, "test", index)
    raster = rasterize(sample.scene, 64)
    boxes = object_boxes(sample.scene, raster)
    assert boxes == sample.objects
    assert {b["label"] for b in boxes} <= {"car", "van", "bus", "pedestrian", "umbrella", "building", "tree"}
    for box in boxes:
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        if box["label"] in ("car", "van", "bus"):
            assert sample.scene.vehicles[box["index"]].kind == box["label"]
            mask = raster.mask("vehicle_body", box["index"])
            rows, cols = np.nonzero(mask)
            assert x0 <= cols.min() and cols.max() < x1 and y0 <= rows.min() and rows.max() < y1
    counted = sum(b["label"] == "pedestrian" for b in boxes)
    assert counted <= len(sample.scene.pedestrians)

"""Seeded scene descriptions for the synthetic RGB-thermal world.

A :class:`Scene` is plain data: what is where, how warm the air is, what the weather does. The
rasteriser turns it into a part map once, and the RGB and thermal renderers colour that same map,
so the two images are pixel-aligned by construction. Positions are fractions of the image
(``u`` left to right, ``v`` top to bottom); an object's ``v`` is where it touches the ground, so
perspective size follows from it.
"""
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

TIMES_OF_DAY = ("day", "dusk", "night")
WEATHERS = ("clear", "overcast", "fog", "rain")
PLACES = ("street", "highway", "crossing", "campus")
CLOTHING = ("t-shirt", "jacket", "coat")
VEHICLE_KINDS = ("car", "van", "bus")

# Named colours shared by the RGB renderer and the RGB captions (sRGB, 0-1).
CAR_COLOURS = {
    "red": (0.75, 0.08, 0.08), "blue": (0.1, 0.2, 0.7), "white": (0.92, 0.92, 0.92),
    "black": (0.06, 0.06, 0.07), "silver": (0.65, 0.67, 0.7), "yellow": (0.9, 0.78, 0.1),
    "green": (0.1, 0.5, 0.2),
}
CLOTHING_COLOURS = {
    "black": (0.08, 0.08, 0.08), "blue": (0.15, 0.25, 0.6), "red": (0.7, 0.1, 0.12),
    "grey": (0.45, 0.45, 0.47), "beige": (0.78, 0.7, 0.55), "green": (0.2, 0.45, 0.2),
}
UMBRELLA_COLOURS = {"black": (0.05, 0.05, 0.06), "red": (0.8, 0.1, 0.1), "yellow": (0.9, 0.8, 0.1),
                    "blue": (0.1, 0.3, 0.8)}
LANE_COLOURS = {"white": (0.95, 0.95, 0.95), "yellow": (0.95, 0.8, 0.1)}


@dataclass
class Pedestrian:
    u: float  # horizontal centre
    v: float  # feet on the ground
    clothing: str = "jacket"  # one of CLOTHING; sets insulation and sleeve coverage
    colour: str = "blue"  # key of CLOTHING_COLOURS (top)
    umbrella: bool = False
    umbrella_colour: str = "black"  # key of UMBRELLA_COLOURS


@dataclass
class Vehicle:
    u: float  # horizontal centre
    v: float  # wheels on the ground
    kind: str = "car"  # one of VEHICLE_KINDS
    colour: str = "red"  # key of CAR_COLOURS
    moving: bool = True
    facing_right: bool = True  # the engine sits at the front
    parked_minutes: float = 0.0  # time since the engine stopped (parked vehicles only)


@dataclass
class Building:
    u0: float  # left edge
    u1: float  # right edge
    top: float  # roof line (v)
    colour: Tuple[float, float, float] = (0.6, 0.55, 0.5)
    window_rows: int = 3
    window_cols: int = 3
    lit_fraction: float = 0.0  # share of windows lit from inside (night / dusk)
    lit_seed: int = 0  # which windows are lit


@dataclass
class Tree:
    u: float  # trunk centre
    v: float  # trunk base on the ground
    crown: float = 1.0  # relative crown size


@dataclass
class Scene:
    """Everything the renderers and caption writers need to know about one scene."""

    time_of_day: str = "day"  # one of TIMES_OF_DAY
    weather: str = "clear"  # one of WEATHERS
    place: str = "street"  # one of PLACES
    road_wet: bool = False
    air_temp_c: float = 18.0  # ambient air temperature, degrees Celsius
    horizon: float = 0.45  # v of the horizon line
    road_centre: float = 0.5  # u of the road's vanishing point and centre line
    lane_colour: str = "white"  # key of LANE_COLOURS
    pedestrians: List[Pedestrian] = field(default_factory=list)
    vehicles: List[Vehicle] = field(default_factory=list)
    buildings: List[Building] = field(default_factory=list)
    trees: List[Tree] = field(default_factory=list)
    texture_seed: int = 0  # seeds surface texture and sensor noise of this scene


def _air_temperature(rng: np.random.Generator, time_of_day: str, weather: str) -> float:
    base = {"day": 20.0, "dusk": 15.0, "night": 10.0}[time_of_day]
    base += {"clear": 2.0, "overcast": 0.0, "fog": -3.0, "rain": -2.0}[weather]
    return float(np.clip(base + rng.normal(0.0, 4.0), 0.0, 30.0))


def _clothing_for(rng: np.random.Generator, air_temp_c: float) -> str:
    # People dress for the weather: light clothing only when it is warm.
    if air_temp_c > 18:
        return str(rng.choice(["t-shirt", "t-shirt", "jacket"]))
    if air_temp_c > 8:
        return str(rng.choice(["jacket", "jacket", "coat"]))
    return str(rng.choice(["coat", "coat", "jacket"]))


def _road_halfwidth(place: str) -> float:
    """Half the road width at the bottom image edge, as a fraction of the width."""
    return {"street": 0.32, "highway": 0.48, "crossing": 0.36, "campus": 0.16}[place]


def road_half_width_at(scene: Scene, v: float) -> float:
    """Half width of the road at image row ``v`` (zero at the horizon, linear perspective)."""
    depth_frac = max(0.0, (v - scene.horizon) / (1.0 - scene.horizon))
    return _road_halfwidth(scene.place) * depth_frac


def _sample_buildings(rng, place, horizon, time_of_day) -> List[Building]:
    count = {"street": (2, 5), "crossing": (2, 5), "campus": (1, 3), "highway": (0, 2)}[place]
    lit = {"day": 0.0, "dusk": 0.35, "night": 0.6}[time_of_day]
    buildings = []
    for side in range(int(rng.integers(*count))):
        width = float(rng.uniform(0.12, 0.3))
        left_side = side % 2 == 0
        u0 = float(rng.uniform(-0.05, 0.3 - width / 2)) if left_side else float(rng.uniform(0.6, 1.0 - width / 2))
        tone = rng.uniform(0.35, 0.8)
        tint = rng.uniform(-0.08, 0.08, size=3)
        buildings.append(Building(
            u0=u0, u1=u0 + width, top=float(rng.uniform(0.05, horizon - 0.12)),
            colour=tuple(float(np.clip(tone + t, 0, 1)) for t in tint),
            window_rows=int(rng.integers(2, 6)), window_cols=int(rng.integers(2, 5)),
            lit_fraction=float(np.clip(lit + rng.normal(0, 0.1), 0, 1)) if lit else 0.0,
            lit_seed=int(rng.integers(1 << 30))))
    return buildings


def _ground_v(rng, horizon) -> float:
    # Keep objects out of the last stretch before the horizon, where they would be sub-pixel.
    return float(rng.uniform(horizon + 0.2 * (1 - horizon), 0.97))


def _sample_vehicles(rng, scene: Scene) -> List[Vehicle]:
    n_max = {"street": 3, "highway": 4, "crossing": 3, "campus": 1}[scene.place]
    vehicles = []
    for _ in range(int(rng.integers(0, n_max + 1))):
        v = _ground_v(rng, scene.horizon)
        half = road_half_width_at(scene, v)
        # Parking happens at the kerb on streets and campus; highways have no parked vehicles.
        moving = True if scene.place == "highway" else bool(rng.random() < 0.6)
        offset = rng.uniform(-0.8, 0.8) * half if moving else rng.choice([-1, 1]) * half * 0.9
        kinds = ["car"] * 6 + ["van"] * 2 + (["bus"] if scene.place != "campus" else [])
        vehicles.append(Vehicle(
            u=float(scene.road_centre + offset), v=v, kind=str(rng.choice(kinds)),
            colour=str(rng.choice(list(CAR_COLOURS))), moving=moving,
            facing_right=bool(rng.random() < 0.5),
            parked_minutes=0.0 if moving else float(rng.uniform(10, 240))))
    return vehicles


def _sample_pedestrians(rng, scene: Scene) -> List[Pedestrian]:
    n_max = {"street": 4, "highway": 0, "crossing": 5, "campus": 5}[scene.place]
    umbrella_p = {"rain": 0.7, "overcast": 0.1}.get(scene.weather, 0.03)
    pedestrians = []
    for _ in range(int(rng.integers(0, n_max + 1))):
        v = _ground_v(rng, scene.horizon)
        half = road_half_width_at(scene, v)
        if scene.place == "crossing" and rng.random() < 0.6:
            u = scene.road_centre + rng.uniform(-1, 1) * half  # walking across the road
        else:
            u = scene.road_centre + rng.choice([-1, 1]) * (half + rng.uniform(0.03, 0.25))
        pedestrians.append(Pedestrian(
            u=float(u), v=v, clothing=_clothing_for(rng, scene.air_temp_c),
            colour=str(rng.choice(list(CLOTHING_COLOURS))), umbrella=bool(rng.random() < umbrella_p),
            umbrella_colour=str(rng.choice(list(UMBRELLA_COLOURS)))))
    return pedestrians


def _sample_trees(rng, scene: Scene) -> List[Tree]:
    n_range = {"street": (0, 3), "highway": (1, 5), "crossing": (0, 2), "campus": (2, 6)}[scene.place]
    trees = []
    for _ in range(int(rng.integers(*n_range))):
        v = float(rng.uniform(scene.horizon + 0.02, scene.horizon + 0.3 * (1 - scene.horizon)))
        half = road_half_width_at(scene, v)
        u = scene.road_centre + rng.choice([-1, 1]) * (half + rng.uniform(0.05, 0.4))
        trees.append(Tree(u=float(u), v=v, crown=float(rng.uniform(0.7, 1.3))))
    return trees


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene.

    Args:
        rng: numpy generator; the same generator state always gives the same scene.

    Returns:
        A :class:`Scene` with objects sorted far to near (the order they are painted in).
    """
    time_of_day = str(rng.choice(TIMES_OF_DAY, p=[0.45, 0.15, 0.4]))
    weather = str(rng.choice(WEATHERS, p=[0.4, 0.25, 0.15, 0.2]))
    place = str(rng.choice(PLACES))
    air = _air_temperature(rng, time_of_day, weather)
    scene = Scene(
        time_of_day=time_of_day, weather=weather, place=place,
        road_wet=weather == "rain" or bool(rng.random() < 0.15), air_temp_c=air,
        horizon=float(rng.uniform(0.38, 0.5)), road_centre=float(rng.uniform(0.4, 0.6)),
        lane_colour=str(rng.choice(list(LANE_COLOURS), p=[0.7, 0.3])),
        texture_seed=int(rng.integers(1 << 31)))
    scene.buildings = _sample_buildings(rng, place, scene.horizon, time_of_day)
    scene.trees = _sample_trees(rng, scene)
    scene.vehicles = sorted(_sample_vehicles(rng, scene), key=lambda o: o.v)
    scene.pedestrians = sorted(_sample_pedestrians(rng, scene), key=lambda o: o.v)
    return scene


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator for scene ``index`` of ``split``; splits never share a stream, so they are disjoint."""
    split_code = sum(ord(c) * 131 ** i for i, c in enumerate(split)) % (1 << 31)
    return np.random.default_rng([seed, split_code, index])

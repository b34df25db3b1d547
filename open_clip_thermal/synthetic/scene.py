"""Seeded scene descriptions for the synthetic RGB-thermal world.

A :class:`Scene` is plain data: what is where, how warm the air is, what the weather does. The
rasteriser turns it into a part map once, and the RGB and thermal renderers colour that same map,
so the two images are pixel-aligned by construction. Positions are fractions of the image
(``u`` left to right, ``v`` top to bottom); an object's ``v`` is where it touches the ground, so
perspective size follows from it.

World v2 separates two kinds of state. *Scene-level* facts (time of day, weather, place, wet road,
building materials, how many people and vehicles) are what a global caption describes. *Object-level*
thermal state (how long ago each engine stopped, whether a cabin is occupied, whether a person is
exerted, whether a building is heated, warm outlines where a vehicle stood, road that lay in shade
earlier, damp patches drying) is what a fine-grained caption describes; it is sampled from its own
distributions, independently of time, weather and place, so neither caption follows from the other.
"""
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

TIMES_OF_DAY = ("day", "dusk", "night")
WEATHERS = ("clear", "overcast", "fog", "rain")
PLACES = ("street", "highway", "crossing", "campus")
CLOTHING = ("t-shirt", "jacket", "coat")
VEHICLE_KINDS = ("car", "van", "bus")
MATERIALS = ("brick", "concrete", "glass")  # building facades (a global, scene-level fact)
ROAD_PATCH_KINDS = ("vacated", "shade", "damp")  # see RoadPatch

# Object-state probabilities, the same for every time, weather and place (world v2).
P_ENGINE_RUNNING = 0.3
ENGINE_OFF_MINUTES = (1.0, 150.0)  # log-uniform range of minutes since a stopped engine was switched off
P_OCCUPIED = 0.5
P_EXERTED = 0.4
P_HEATED = 0.5
P_ROAD_PATCH = {"vacated": 0.35, "shade": 0.35, "damp": 0.3}
VACATED_MINUTES = (1.0, 40.0)  # uniform range of minutes since the vehicle left its spot

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
    exerted: bool = False  # just ran or cycled: warmer skin and clothing surface


@dataclass
class Vehicle:
    u: float  # horizontal centre
    v: float  # wheels on the ground
    kind: str = "car"  # one of VEHICLE_KINDS
    colour: str = "red"  # key of CAR_COLOURS
    moving: bool = True  # engine running (driving or idling); otherwise switched off
    facing_right: bool = True  # the engine sits at the front
    parked_minutes: float = 0.0  # minutes since the engine was switched off (engines not running only)
    occupied: bool = False  # people inside warm the cabin and its glass


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
    heated: bool = True  # heated interior leaking through walls and windows (independent of lit windows)
    material: str = "brick"  # one of MATERIALS; glass facades mirror the cold sky


@dataclass
class Tree:
    u: float  # trunk centre
    v: float  # trunk base on the ground
    crown: float = 1.0  # relative crown size


@dataclass
class RoadPatch:
    """A region of road whose temperature remembers the past."""

    kind: str  # "vacated": a vehicle stood here and left; "shade": shaded earlier; "damp": drying
    u: float  # horizontal centre
    v: float  # row of the patch centre
    width: float  # as a fraction of the road width at that row
    height: float  # as a fraction of the ground below the horizon
    minutes: float = 0.0  # "vacated" only: minutes since the vehicle left


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
    road_patches: List[RoadPatch] = field(default_factory=list)
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
    count = {"street": (1, 3), "crossing": (1, 3), "campus": (0, 3), "highway": (0, 2)}[place]
    lit = {"day": 0.0, "dusk": 0.35, "night": 0.6}[time_of_day]
    buildings = []
    for side in range(int(rng.integers(count[0], count[1] + 1))):
        width = float(rng.uniform(0.22, 0.38))
        left_side = side % 2 == 0
        u0 = float(rng.uniform(-0.1, 0.2)) if left_side else float(rng.uniform(0.62, 1.0 - width / 2))
        tone = rng.uniform(0.35, 0.8)
        tint = rng.uniform(-0.08, 0.08, size=3)
        buildings.append(Building(
            u0=u0, u1=u0 + width, top=float(rng.uniform(0.03, horizon - 0.15)),
            colour=tuple(float(np.clip(tone + t, 0, 1)) for t in tint),
            window_rows=int(rng.integers(2, 4)), window_cols=int(rng.integers(2, 4)),
            lit_fraction=float(np.clip(lit + rng.normal(0, 0.1), 0, 1)) if lit else 0.0,
            lit_seed=int(rng.integers(1 << 30)),
            heated=bool(rng.random() < P_HEATED), material=str(rng.choice(MATERIALS))))
    return buildings


def _ground_v(rng, horizon) -> float:
    # Objects stand in the near half of the ground, so their parts span several 8 x 8 patches at 64 px.
    return float(rng.uniform(horizon + 0.55 * (1 - horizon), 0.98))


def _engine_state(rng) -> Tuple[bool, float]:
    """(running, minutes since switched off): the same distribution everywhere, at any time."""
    if rng.random() < P_ENGINE_RUNNING:
        return True, 0.0
    low, high = np.log(ENGINE_OFF_MINUTES[0]), np.log(ENGINE_OFF_MINUTES[1])
    return False, float(np.exp(rng.uniform(low, high)))


def _sample_vehicles(rng, scene: Scene) -> List[Vehicle]:
    n_max = {"street": 2, "highway": 2, "crossing": 2, "campus": 1}[scene.place]
    vehicles = []
    for _ in range(int(rng.integers(0, n_max + 1))):
        v = _ground_v(rng, scene.horizon)
        half = road_half_width_at(scene, v)
        running, minutes = _engine_state(rng)
        kinds = ["car"] * 6 + ["van"] * 2 + (["bus"] if scene.place != "campus" else [])
        vehicles.append(Vehicle(
            u=float(scene.road_centre + rng.uniform(-0.6, 0.6) * half), v=v, kind=str(rng.choice(kinds)),
            colour=str(rng.choice(list(CAR_COLOURS))), moving=running,
            facing_right=bool(rng.random() < 0.5), parked_minutes=minutes,
            occupied=bool(rng.random() < P_OCCUPIED)))
    return vehicles


def _sample_pedestrians(rng, scene: Scene) -> List[Pedestrian]:
    n_max = {"street": 3, "highway": 0, "crossing": 3, "campus": 3}[scene.place]
    umbrella_p = {"rain": 0.7, "overcast": 0.1}.get(scene.weather, 0.03)
    pedestrians = []
    for _ in range(int(rng.integers(0, n_max + 1))):
        v = _ground_v(rng, scene.horizon)
        half = road_half_width_at(scene, v)
        if scene.place == "crossing" and rng.random() < 0.6:
            u = scene.road_centre + rng.uniform(-1, 1) * half  # walking across the road
        else:
            u = scene.road_centre + rng.choice([-1, 1]) * (half + rng.uniform(0.03, 0.2))
        pedestrians.append(Pedestrian(
            u=float(np.clip(u, 0.05, 0.95)), v=v, clothing=_clothing_for(rng, scene.air_temp_c),
            colour=str(rng.choice(list(CLOTHING_COLOURS))), umbrella=bool(rng.random() < umbrella_p),
            umbrella_colour=str(rng.choice(list(UMBRELLA_COLOURS))), exerted=bool(rng.random() < P_EXERTED)))
    return pedestrians


def _sample_trees(rng, scene: Scene) -> List[Tree]:
    n_range = {"street": (0, 2), "highway": (1, 3), "crossing": (0, 2), "campus": (1, 4)}[scene.place]
    trees = []
    for _ in range(int(rng.integers(*n_range))):
        v = float(rng.uniform(scene.horizon + 0.02, scene.horizon + 0.3 * (1 - scene.horizon)))
        half = road_half_width_at(scene, v)
        u = scene.road_centre + rng.choice([-1, 1]) * (half + rng.uniform(0.05, 0.4))
        trees.append(Tree(u=float(u), v=v, crown=float(rng.uniform(0.7, 1.3))))
    return trees


def _sample_road_patches(rng, scene: Scene) -> List[RoadPatch]:
    """At most one patch of each kind; present or not independently of time, weather and place."""
    patches = []
    for kind in ROAD_PATCH_KINDS:
        if rng.random() >= P_ROAD_PATCH[kind]:
            continue
        v = float(rng.uniform(scene.horizon + 0.45 * (1 - scene.horizon), 0.93))
        width = {"vacated": 0.45, "shade": 0.5, "damp": 0.4}[kind] * float(rng.uniform(0.8, 1.2))
        u = scene.road_centre + float(rng.uniform(-0.5, 0.5)) * road_half_width_at(scene, v)
        minutes = float(rng.uniform(*VACATED_MINUTES)) if kind == "vacated" else 0.0
        patches.append(RoadPatch(kind=kind, u=float(u), v=v, width=width,
                                 height=float(rng.uniform(0.12, 0.2)), minutes=minutes))
    return patches


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
    scene.road_patches = _sample_road_patches(rng, scene)
    return scene


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator for scene ``index`` of ``split``; splits never share a stream, so they are disjoint."""
    split_code = sum(ord(c) * 131 ** i for i, c in enumerate(split)) % (1 << 31)
    return np.random.default_rng([seed, split_code, index])

"""The facts each caption type states about a scene: one definition for the captions and the oracle.

A global caption states scene-level facts (place, time of day, weather, wet or dry road, how many
people and how many vehicles of each kind). Building facade materials and trees are drawn but
not captioned: nuisance variation, as in real captions that do not list everything. A fine-grained caption states
object-level thermal state (each engine's cool-down stage and whether its cabin is occupied,
exerted or resting people, heated or unheated buildings, the road's memory of the past). The
caption writers in :mod:`.captions` phrase exactly these facts, with varied wording, and
:mod:`.oracle` asks how many images each fact set identifies.
"""
from collections import Counter
from typing import Tuple

from .scene import Pedestrian, RoadPatch, Scene, Vehicle

ENGINE_STATES = ("running", "just off", "cooling", "cold")
JUST_OFF_MINUTES = 10.0  # below: switched off minutes ago, still hot
COOLING_MINUTES = 45.0  # below: cooling; above: near ambient (about 17 % of the peak left)
FRESH_VACATED_MINUTES = 10.0  # a vacated spot younger than this is "fresh", older ones "faint"

Facts = Tuple[Tuple[str, object], ...]


def engine_state(vehicle: Vehicle) -> str:
    """Cool-down stage of a vehicle's engine, one of ``ENGINE_STATES``."""
    if vehicle.moving:
        return "running"
    if vehicle.parked_minutes < JUST_OFF_MINUTES:
        return "just off"
    return "cooling" if vehicle.parked_minutes < COOLING_MINUTES else "cold"


def road_patch_state(patch: RoadPatch) -> str:
    """``vacated fresh``, ``vacated faint``, ``shade`` or ``damp``."""
    if patch.kind == "vacated":
        return "vacated fresh" if patch.minutes < FRESH_VACATED_MINUTES else "vacated faint"
    return patch.kind


def _counts(items) -> Tuple[Tuple[object, int], ...]:
    return tuple(sorted(Counter(items).items()))


def global_facts(scene: Scene) -> Facts:
    """Scene-level facts a global caption states (hashable, order-free)."""
    return (("place", scene.place), ("time", scene.time_of_day), ("weather", scene.weather),
            ("road", "wet" if scene.road_wet else "dry"),
            ("people", len(scene.pedestrians)), ("vehicles", _counts(v.kind for v in scene.vehicles)))


def vehicle_state(vehicle: Vehicle) -> Tuple[str, bool]:
    return engine_state(vehicle), vehicle.occupied


def person_state(person: Pedestrian) -> bool:
    return person.exerted


def fine_grained_facts(scene: Scene) -> Facts:
    """Object-level thermal facts a fine-grained caption states (hashable, order-free)."""
    return (("vehicles", _counts(vehicle_state(v) for v in scene.vehicles)),
            ("people", _counts(person_state(p) for p in scene.pedestrians)),
            ("buildings", _counts(b.heated for b in scene.buildings)),
            ("road", tuple(sorted(road_patch_state(p) for p in scene.road_patches))))

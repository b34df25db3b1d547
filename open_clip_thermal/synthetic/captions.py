"""Captions written from the scene description, with varied wording.

Three kinds, each drawn with a caller-supplied generator so the wording changes between draws:

* a global thermal caption in the IR-Cap style (scene type, time, weather, object counts),
* a fine-grained thermal caption (heat signatures of people, engines, tyres, road, sky),
* an RGB-style caption (colours and visible appearance) used only to pretrain the proxy model.

Both thermal captions start with ``THERMAL_PREFIX`` like IR-Cap's. Several templates and
synonyms per fact keep retrieval from keying on a single literal string.
"""
from collections import Counter
from typing import List, Sequence

import numpy as np

from .scene import Scene, Vehicle

THERMAL_PREFIX = "infrared thermal"

_TIME = {"day": ["in the daytime", "during the day", "by day", "in daylight"],
         "dusk": ["at dusk", "at twilight", "in the early evening"],
         "night": ["at night", "at nighttime", "after dark", "in the night"]}
_WEATHER = {"clear": ["in clear weather", "under a clear sky", "with clear skies"],
            "overcast": ["under an overcast sky", "in cloudy weather", "under grey clouds"],
            "fog": ["in fog", "in foggy conditions", "in thick mist"],
            "rain": ["in the rain", "in rainy weather", "during rainfall"]}
_PLACE = {"street": ["a city street", "an urban street", "a downtown road"],
          "highway": ["a highway", "a motorway", "a multi-lane expressway"],
          "crossing": ["a pedestrian crossing", "a crosswalk", "a zebra crossing"],
          "campus": ["a campus walkway", "a university campus", "a path through a campus"]}
_NUMBER = {1: ["one", "a single"], 2: ["two", "a pair of"], 3: ["three", "several"], 4: ["four", "several"],
           5: ["five", "many"]}
_PERSON = (["pedestrian", "person", "walker"], ["pedestrians", "people", "walkers"])
_VEHICLE = {"car": (["car", "automobile"], ["cars", "automobiles"]), "van": (["van"], ["vans"]),
            "bus": (["bus"], ["buses"])}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _count_phrase(rng, n: int, nouns, none_phrases: Sequence[str], adjective: str = "") -> str:
    """'two warm pedestrians', 'a single car' or a phrase for none."""
    if n == 0:
        return _pick(rng, none_phrases)
    number = _pick(rng, _NUMBER[min(n, 5)])
    noun = _pick(rng, nouns[0] if n == 1 else nouns[1])
    return " ".join(w for w in (number, adjective, noun) if w)


def _vehicle_phrase(rng, vehicles: List[Vehicle], adjective: str = "") -> str:
    if not vehicles:
        return _pick(rng, ["no vehicles", "no traffic", "no cars"])
    counts = Counter(v.kind for v in vehicles)
    parts = [_count_phrase(rng, n, _VEHICLE[kind], [], adjective) for kind, n in sorted(counts.items())]
    return " and ".join(parts)


def global_thermal_caption(scene: Scene, rng: np.random.Generator) -> str:
    """IR-Cap-style global thermal caption: scene type, time, weather and object counts."""
    place, time, weather = _pick(rng, _PLACE[scene.place]), _pick(rng, _TIME[scene.time_of_day]), \
        _pick(rng, _WEATHER[scene.weather])
    people = _count_phrase(rng, len(scene.pedestrians), _PERSON, ["no people", "no pedestrians"],
                           _pick(rng, ["", "warm", "bright"]))
    vehicles = _vehicle_phrase(rng, scene.vehicles, _pick(rng, ["", "warm"]))
    templates = [
        f"{THERMAL_PREFIX} image of {place} {time} {weather}, showing {people} and {vehicles}.",
        f"{THERMAL_PREFIX} view of {place} {time}: {people}, {vehicles}, {weather}.",
        f"{THERMAL_PREFIX} scene {time} {weather} on {place} with {people} and {vehicles}.",
        f"{THERMAL_PREFIX} photograph of {place} {weather} {time}, containing {vehicles} and {people}.",
    ]
    return _pick(rng, templates)


def _people_clauses(rng, scene: Scene) -> List[str]:
    peds = scene.pedestrians
    if not peds:
        return []
    who = _count_phrase(rng, len(peds), _PERSON, [])
    clauses = [_pick(rng, [
        f"{who} with bright heads and torsos and cooler limbs",
        f"{who} whose heads and upper bodies glow warmer than their arms and legs",
        f"{who} appearing as warm silhouettes, hottest at the head and chest"])]
    if any(p.clothing == "coat" for p in peds):
        clauses.append(_pick(rng, ["thick coats dim the body heat", "heavy clothing masks part of the torso heat"]))
    n_umbrella = sum(p.umbrella for p in peds)
    if n_umbrella:
        clauses.append(_pick(rng, [f"{_count_phrase(rng, n_umbrella, (['umbrella'], ['umbrellas']), [])} "
                                   f"showing as cool dark shapes above the head",
                                   "an umbrella darker than the person beneath it"]))
    return clauses


def _vehicle_clauses(rng, scene: Scene) -> List[str]:
    moving = [v for v in scene.vehicles if v.moving]
    parked = [v for v in scene.vehicles if not v.moving]
    clauses = []
    if moving:
        clauses.append(_pick(rng, [
            f"{_vehicle_phrase(rng, moving)} in motion with hot engines and warm tyres",
            f"{_vehicle_phrase(rng, moving)} driving, engine bays and wheels glowing bright"]))
        if scene.time_of_day in ("dusk", "night"):
            clauses.append(_pick(rng, ["headlights as small hot spots", "glowing hot headlamps"]))
    if parked:
        clauses.append(_pick(rng, [
            f"{_vehicle_phrase(rng, parked)} parked with cooling engines",
            f"{_vehicle_phrase(rng, parked)} standing still, engines near ambient temperature"]))
    return clauses


def _background_clauses(rng, scene: Scene) -> List[str]:
    warm_road = scene.time_of_day == "day" and scene.weather in ("clear", "overcast")
    road = _pick(rng, ["a warm bright road surface", "sun-heated asphalt"] if warm_road else
                 ["a moderately warm road", "the road slightly warmer than the air"])
    clauses = [road]
    if scene.road_wet:
        clauses.append(_pick(rng, ["wet pavement looking brighter", "a wet road with raised emissivity"]))
    clauses.append(_pick(rng, ["a cold dark sky", "the sky as a cold black region", "a dark cold sky"]))
    if scene.buildings and scene.trees:
        clauses.append(_pick(rng, ["trees cooler than the buildings", "vegetation darker than the walls"]))
    if any(b.lit_fraction > 0 for b in scene.buildings):
        clauses.append(_pick(rng, ["heated windows slightly warm", "buildings leaking heat at the windows"]))
    if scene.weather in ("fog", "rain"):
        clauses.append(_pick(rng, [f"{scene.weather} lowering the contrast", f"contrast washed out by {scene.weather}"]))
    return clauses


def fine_grained_thermal_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Fine-grained thermal caption describing the heat signatures in the scene."""
    background = _background_clauses(rng, scene)
    # Keep the road and at most two other background facts, so most captions fit CLIP's context.
    keep = sorted(rng.permutation(np.arange(1, len(background)))[:2]) if len(background) > 1 else []
    background = [background[0]] + [background[i] for i in keep]
    clauses = _people_clauses(rng, scene) + _vehicle_clauses(rng, scene) + background
    opener = _pick(rng, [f"{THERMAL_PREFIX} image with", f"{THERMAL_PREFIX} close-up description:",
                         f"{THERMAL_PREFIX} detail view showing"])
    return f"{opener} " + ", ".join(clauses) + "."


def _colour_list(rng, vehicles: List[Vehicle]) -> str:
    items = [f"a {v.colour} {_pick(rng, _VEHICLE[v.kind][0])}" for v in vehicles]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def rgb_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Visible-light caption (colours, lights, sky) for pretraining the RGB proxy model."""
    place, time, weather = _pick(rng, _PLACE[scene.place]), _pick(rng, _TIME[scene.time_of_day]), \
        _pick(rng, _WEATHER[scene.weather])
    details = []
    if scene.vehicles:
        details.append(_colour_list(rng, scene.vehicles))
    if scene.pedestrians:
        people = _count_phrase(rng, len(scene.pedestrians), _PERSON, [])
        colours = sorted({p.colour for p in scene.pedestrians})
        details.append(f"{people} in {' and '.join(colours)} clothes")
        umbrellas = sorted({p.umbrella_colour for p in scene.pedestrians if p.umbrella})
        if umbrellas:
            details.append(f"{' and '.join(umbrellas)} umbrellas")
    if any(b.lit_fraction > 0 for b in scene.buildings) and scene.time_of_day != "day":
        details.append(_pick(rng, ["lit yellow windows", "glowing windows"]))
    if scene.weather == "clear" and scene.time_of_day != "night":
        details.append("a blue sky" if scene.time_of_day == "day" else "an orange evening sky")
    if scene.place != "campus":
        details.append(f"{scene.lane_colour} lane markings")
    if scene.road_wet:
        details.append(_pick(rng, ["a wet shiny road", "puddles on the road"]))
    opener = _pick(rng, ["a photo of", "a picture of", "a color photograph of", "a street-level photo of"])
    body = f"{opener} {place} {time} {weather}"
    return body + (", with " + ", ".join(details) if details else "") + "."

"""Captions written from the scene description, with varied wording.

Three kinds, each drawn with a caller-supplied generator so the wording changes between draws:

* a global thermal caption in the IR-Cap style (scene type, time, weather, wet or dry road, counts),
* a fine-grained thermal caption (object-level thermal state: engines cooling down, occupied
  cabins, exerted people, heated buildings, the road's memory of vehicles, shade and damp),
* an RGB-style caption (colours and visible appearance) used only to pretrain the proxy model.

Both thermal captions start with ``THERMAL_PREFIX`` like IR-Cap's. Several templates and
synonyms per fact keep retrieval from keying on a single literal string. The thermal captions
state exactly the facts of :mod:`.facts` (the oracle diagnostic relies on that).
"""
from collections import Counter
from typing import List, Sequence

import numpy as np

from .facts import person_state, road_patch_state, vehicle_state
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


_ROAD = {"wet": ["wet asphalt", "a wet road", "rain-soaked pavement"],
         "dry": ["dry asphalt", "a dry road", "dry pavement"]}


def global_thermal_caption(scene: Scene, rng: np.random.Generator) -> str:
    """IR-Cap-style global thermal caption: the scene-level facts of :func:`.facts.global_facts`."""
    place, time, weather = _pick(rng, _PLACE[scene.place]), _pick(rng, _TIME[scene.time_of_day]), \
        _pick(rng, _WEATHER[scene.weather])
    road = _pick(rng, _ROAD["wet" if scene.road_wet else "dry"])
    people = _count_phrase(rng, len(scene.pedestrians), _PERSON, ["no people", "no pedestrians"])
    vehicles = _vehicle_phrase(rng, scene.vehicles)
    templates = [
        f"{THERMAL_PREFIX} image of {place} {time} {weather}, {road}, showing {people} and {vehicles}.",
        f"{THERMAL_PREFIX} view of {place} {time}: {people}, {vehicles}, {road}, {weather}.",
        f"{THERMAL_PREFIX} scene {time} {weather} on {place} with {road}, {people} and {vehicles}.",
        f"{THERMAL_PREFIX} photograph of {place} {weather} {time}, {road}, {vehicles} and {people}.",
    ]
    return _pick(rng, templates)


_ENGINE = {"running": ["a running hot engine", "its engine running hot"],
           "just off": ["a hot engine just switched off", "a hot engine stopped minutes ago"],
           "cooling": ["a lukewarm cooling engine", "an engine cooling down"],
           "cold": ["a cold engine", "an engine long cold"]}
_CABIN = {True: ["a warm occupied cabin", "an occupied cabin"],
          False: ["an empty cool cabin", "an empty cabin"]}
_PEOPLE_STATE = {True: ["warm from exertion", "glowing after exertion"],
                 False: ["at rest", "resting"]}
_BUILDING_STATE = {True: ["heated, leaking warmth", "heated inside"],
                   False: ["unheated, at air temperature", "unheated"]}
_ROAD_STATE = {"vacated fresh": ["a fresh warm spot a vehicle just left",
                                 "a bright spot where a vehicle just stood"],
               "vacated faint": ["a faint warm spot a vehicle left earlier",
                                 "a fading warm spot left by a departed vehicle"],
               "shade": ["a cool band of road shaded earlier", "a cool strip once shaded"],
               "damp": ["cool damp patches drying", "cool drying wet patches"]}


def _grouped(rng, states, nouns, describe) -> List[str]:
    """'two people at rest', one phrase per distinct state (sorted, so the wording is order-free)."""
    return [f"{_count_phrase(rng, n, nouns, [])} {describe(state)}" for state, n in sorted(Counter(states).items())]


def fine_grained_thermal_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Fine-grained thermal caption: the object-level facts of :func:`.facts.fine_grained_facts`."""
    clauses = _grouped(rng, [vehicle_state(v) for v in scene.vehicles], (["vehicle"], ["vehicles"]),
                       lambda s: f"with {_pick(rng, _ENGINE[s[0]])} and {_pick(rng, _CABIN[s[1]])}")
    clauses += _grouped(rng, [person_state(p) for p in scene.pedestrians], _PERSON,
                        lambda s: _pick(rng, _PEOPLE_STATE[s]))
    clauses += _grouped(rng, [b.heated for b in scene.buildings], (["building"], ["buildings"]),
                        lambda s: _pick(rng, _BUILDING_STATE[s]))
    clauses += [_pick(rng, _ROAD_STATE[road_patch_state(p)]) for p in scene.road_patches]
    if not clauses:
        clauses = [_pick(rng, ["no warm objects and an undisturbed road", "nothing warm, an even road surface"])]
    opener = _pick(rng, [f"{THERMAL_PREFIX} image with", f"{THERMAL_PREFIX} close-up:",
                         f"{THERMAL_PREFIX} detail showing"])
    return f"{opener} " + "; ".join(clauses) + "."


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

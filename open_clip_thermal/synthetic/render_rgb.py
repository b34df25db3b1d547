"""Visible-light rendering of a scene from the same part map as the thermal image.

Colours come from the scene description (car, clothing, umbrella and lane colours; blue, grey,
orange or dark sky), scaled by the daylight level. Lit windows and headlights emit light, so
they stay bright at night. Fog and rain blend distant pixels toward a haze colour.
"""
from typing import Optional

import numpy as np

from .layout import Part, SceneRaster, rasterize
from .scene import CAR_COLOURS, CLOTHING_COLOURS, LANE_COLOURS, UMBRELLA_COLOURS, Scene

_LIGHT = {"day": 1.0, "dusk": 0.55, "night": 0.2}
_WEATHER_LIGHT = {"clear": 1.0, "overcast": 0.8, "fog": 0.85, "rain": 0.7}
_HAZE_EXTINCTION = {"clear": 0.002, "overcast": 0.004, "rain": 0.02, "fog": 0.1}
_FIXED = {
    "road": (0.3, 0.3, 0.32), "sidewalk": (0.62, 0.6, 0.56), "grass": (0.28, 0.52, 0.2),
    "foliage": (0.14, 0.4, 0.12), "tree_trunk": (0.36, 0.25, 0.15), "zebra": (0.95, 0.95, 0.95),
    "window_dark": (0.25, 0.3, 0.38), "window_lit": (1.0, 0.85, 0.45), "vehicle_window": (0.14, 0.17, 0.22),
    "vehicle_tyre": (0.05, 0.05, 0.05), "ped_head": (0.82, 0.62, 0.48), "ped_leg": (0.14, 0.15, 0.22),
}
_WET_ROAD = (0.2, 0.2, 0.23)
_SKIN = (0.82, 0.62, 0.48)
_GLASS_FACADE = (0.45, 0.55, 0.62)


def _sky_colours(scene: Scene):
    """(zenith, horizon) sky colours."""
    if scene.time_of_day == "night":
        return (0.01, 0.02, 0.08), (0.08, 0.08, 0.15)
    if scene.weather == "fog":
        return (0.78, 0.79, 0.8), (0.85, 0.85, 0.86)
    if scene.weather in ("overcast", "rain"):
        return (0.55, 0.57, 0.6), (0.72, 0.73, 0.75)
    if scene.time_of_day == "dusk":
        return (0.25, 0.28, 0.5), (0.95, 0.6, 0.35)
    return (0.3, 0.52, 0.92), (0.7, 0.82, 0.97)


def _emits_light(scene: Scene, part: Part) -> bool:
    if part.kind == "window_lit":
        return True
    if part.kind == "headlight":
        return scene.vehicles[part.owner].moving and scene.time_of_day in ("dusk", "night")
    return False


def _part_colour(scene: Scene, part: Part):
    kind = part.kind
    if kind in ("road", "road_vacated", "road_shade"):  # the road's past is invisible in visible light
        return _WET_ROAD if scene.road_wet else _FIXED["road"]
    if kind == "road_damp":  # a damp patch is a little darker, like a wet road
        return _WET_ROAD
    if kind in _FIXED:
        return _FIXED[kind]
    if kind == "lane_marking":
        return LANE_COLOURS[scene.lane_colour]
    if kind == "building_wall":
        b = scene.buildings[part.owner]
        return _GLASS_FACADE if b.material == "glass" else b.colour
    if kind in ("vehicle_body", "vehicle_engine"):  # the engine is invisible in visible light
        return CAR_COLOURS[scene.vehicles[part.owner].colour]
    if kind == "headlight":
        return (1.0, 1.0, 0.9) if _emits_light(scene, part) else (0.85, 0.85, 0.8)
    if kind == "ped_torso":
        return CLOTHING_COLOURS[scene.pedestrians[part.owner].colour]
    if kind == "ped_arm":
        ped = scene.pedestrians[part.owner]
        return _SKIN if ped.clothing == "t-shirt" else CLOTHING_COLOURS[ped.colour]
    if kind == "umbrella":
        return UMBRELLA_COLOURS[scene.pedestrians[part.owner].umbrella_colour]
    if kind == "sky":
        return _sky_colours(scene)[0]
    raise ValueError(f"no colour for part kind {kind!r}")


def render_rgb(scene: Scene, size: int = 64, raster: Optional[SceneRaster] = None) -> np.ndarray:
    """Render the visible-light image of ``scene``.

    Args:
        scene: scene description.
        size: width and height in pixels (ignored when ``raster`` is given).
        raster: a precomputed part map, so the RGB and thermal images share one rasterisation.

    Returns:
        (H, W, 3) uint8 array.
    """
    raster = raster if raster is not None else rasterize(scene, size)
    colours = np.array([_part_colour(scene, p) for p in raster.parts], dtype=np.float32)
    emissive = np.array([_emits_light(scene, p) for p in raster.parts])
    light = _LIGHT[scene.time_of_day] * _WEATHER_LIGHT[scene.weather]
    image = colours[raster.part_map]
    zenith, horizon = (np.asarray(c, dtype=np.float32) for c in _sky_colours(scene))
    t = np.clip(raster.v_grid / scene.horizon, 0, 1)[..., None] ** 2
    is_sky = (raster.part_map == 0)[..., None]
    image = np.where(is_sky, zenith + (horizon - zenith) * t, image)
    # The sky colour already encodes the light level; surfaces are lit, lamps emit.
    lit = np.where(is_sky | emissive[raster.part_map][..., None], 1.0, light)
    image = image * lit
    rng = np.random.default_rng([scene.texture_seed, 3])
    image = image * (1.0 + rng.normal(0.0, 0.04, image.shape[:2]))[..., None]
    haze = horizon * (0.3 if scene.time_of_day == "night" else 1.0)
    keep = np.exp(-_HAZE_EXTINCTION[scene.weather] * raster.distance)[..., None]
    image = keep * image + (1 - keep) * haze
    image = image + rng.normal(0.0, 0.01, image.shape)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)

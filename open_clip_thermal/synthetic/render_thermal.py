"""Long-wave infrared rendering of a scene: temperatures, emissivity, atmosphere, sensor.

The model is deliberately simple and linear (apparent temperature instead of radiance), but
every effect has a physical reason:

* Surface temperature per part from air temperature, solar load and internal heat sources
  (sky a cold sink; sun-heated road and walls; evapotranspiring vegetation near air temperature;
  body core > limbs, damped by clothing insulation; hot running engines and tyres, parked ones
  cooling exponentially after the engine is switched off; hot headlight glass at night).
* Object state that only a thermal camera sees (world v2): an occupied cabin warms its glass;
  exertion warms a person's skin and clothing; a heated building leaks heat through walls and
  windows whether or not its windows are lit; the road remembers the past: warm where a vehicle
  stood until recently (fading), cooler where it lay in shade earlier, cooler still where damp
  patches are drying (evaporation).
* Apparent temperature ``eps * T + (1 - eps) * T_reflected``: low-emissivity glass and paint
  mirror the cold sky, water on a wet road raises emissivity so it looks brighter.
* Atmosphere: transmittance ``exp(-beta * distance)`` blends each pixel toward air temperature;
  fog and rain have a large ``beta``, so they lower contrast, most of all far away.
* Sensor: radiometric counts linear in temperature (about 1,000 to 20,000), temporal noise
  (NETD), and fixed-pattern non-uniformity (column offsets and per-pixel gain) that belongs to
  the camera, not to the scene. An 8-bit output stretches counts like a camera's AGC.
"""
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from .layout import Part, SceneRaster, rasterize
from .scene import CAR_COLOURS, Scene

COUNTS_AT_MINUS_40C = 1000.0  # radiometric counts of a -40 degC blackbody
COUNTS_PER_KELVIN = 190.0  # so 60 degC maps to about 20,000
NETD_K = 0.06  # temporal noise, kelvin (a typical uncooled microbolometer)
COLUMN_OFFSET_K = 0.15  # std of fixed column offsets, kelvin
PIXEL_GAIN_STD = 0.004  # std of fixed per-pixel gain
AGC_MIN_SPAN_K = 8.0  # an AGC never stretches less than this, or noise would fill the image

_SUN = {"day": 1.0, "dusk": 0.3, "night": 0.0}
_SUN_THROUGH = {"clear": 1.0, "overcast": 0.4, "fog": 0.25, "rain": 0.1}
_SKY_BELOW_AIR = {"clear": 35.0, "overcast": 10.0, "fog": 3.0, "rain": 6.0}  # effective sky, kelvin
_EXTINCTION = {"clear": 0.004, "overcast": 0.006, "rain": 0.03, "fog": 0.12}  # per distance unit
_EMISSIVITY = {
    "sky": 1.0, "road": 0.93, "sidewalk": 0.92, "grass": 0.97, "lane_marking": 0.9, "zebra": 0.9,
    "building_wall": 0.92, "window_dark": 0.84, "window_lit": 0.84, "tree_trunk": 0.95, "foliage": 0.97,
    "vehicle_body": 0.88, "vehicle_window": 0.84, "vehicle_engine": 0.9, "vehicle_tyre": 0.95,
    "headlight": 0.9, "ped_head": 0.98, "ped_torso": 0.95, "ped_arm": 0.95, "ped_leg": 0.95, "umbrella": 0.9,
    "road_vacated": 0.93, "road_shade": 0.93, "road_damp": 0.97,
}
_WALL_EMISSIVITY = {"brick": 0.93, "concrete": 0.94, "glass": 0.84}  # a glass facade mirrors the sky
WET_ROAD_EMISSIVITY = 0.98  # a water film is close to a blackbody in the LWIR
_ROAD_KINDS = {"road", "road_vacated", "road_shade", "road_damp"}
_HORIZONTAL = _ROAD_KINDS | {"sidewalk", "grass", "lane_marking", "zebra"}  # these reflect the zenith sky
_TORSO_INSULATION = {"t-shirt": 0.85, "jacket": 0.6, "coat": 0.45}  # share of core-air difference kept
ENGINE_PEAK_K, ENGINE_COOLING_MIN = 30.0, 25.0  # engine bay above body when running; e-folding time off
TYRE_PEAK_K, TYRE_COOLING_MIN = 15.0, 20.0
OCCUPIED_CABIN_K = 4.0  # body heat of the occupants warming the cabin glass
EXERTION_K = {"ped_head": 1.0, "ped_torso": 2.5, "ped_arm": 2.0, "ped_leg": 2.0}
BUILDING_HEAT_K = 3.0  # heated interior leaking through the walls
VACATED_PEAK_K, VACATED_FADE_MIN = 6.0, 15.0  # asphalt under a departed vehicle's engine, and its fade
SHADE_DEFICIT_K = 4.0  # heat the road did not store while it lay in shade earlier
DAMP_COOLING_K = 3.5  # evaporative cooling of a drying patch


def sky_temperature(scene: Scene) -> float:
    """Effective zenith sky temperature in degC (clouds, fog and rain are warmer than clear sky)."""
    return scene.air_temp_c - _SKY_BELOW_AIR[scene.weather]


def _engine_heat(scene: Scene, owner: int, peak: float, cooling_minutes: float) -> float:
    car = scene.vehicles[owner]
    if car.moving:
        return peak
    return peak * float(np.exp(-car.parked_minutes / cooling_minutes))


def _road_temperature(scene: Scene, sun: float, damp: float) -> float:
    # asphalt stores the day's heat and gives it back at night
    return scene.air_temp_c + damp * (18.0 * sun + 4.0)


def _part_temperature(scene: Scene, part: Part) -> float:
    """Kinetic surface temperature of one part, degC."""
    air = scene.air_temp_c
    sun = _SUN[scene.time_of_day] * _SUN_THROUGH[scene.weather]
    # Rain keeps passive surfaces near the wet-bulb temperature, close to air.
    damp = 0.6 if scene.weather == "rain" else 1.0
    kind = part.kind
    if kind == "sky":
        return sky_temperature(scene)
    if kind == "road":
        return _road_temperature(scene, sun, damp)
    if kind == "road_vacated":  # engine heat soaked into the asphalt under a vehicle that has left
        minutes = scene.road_patches[part.owner].minutes
        return _road_temperature(scene, sun, damp) + VACATED_PEAK_K * float(np.exp(-minutes / VACATED_FADE_MIN))
    if kind == "road_shade":
        return _road_temperature(scene, sun, damp) - damp * SHADE_DEFICIT_K
    if kind == "road_damp":
        return _road_temperature(scene, sun, damp) - DAMP_COOLING_K
    if kind == "sidewalk":
        return air + damp * (12.0 * sun + 2.5)
    if kind in ("lane_marking", "zebra"):  # white paint reflects part of the sun
        return air + damp * (13.0 * sun + 3.5)
    if kind == "grass":  # evapotranspiration holds leaves near air temperature
        return air + damp * (3.0 * sun - 2.5)
    if kind == "foliage":
        return air + damp * (2.0 * sun - 1.5)
    if kind == "tree_trunk":
        return air + damp * (3.0 * sun)
    if kind == "building_wall":  # solar load plus heat leaking from a heated interior
        heated = scene.buildings[part.owner].heated
        return air + damp * 10.0 * sun + (BUILDING_HEAT_K if heated else 0.0)
    if kind in ("window_dark", "window_lit"):  # glass between the room and the street
        heated = scene.buildings[part.owner].heated
        lamps = 1.0 if kind == "window_lit" else 0.0
        if heated:
            return 0.5 * (air + 21.0) + 2.0 * sun + lamps
        return air + 2.0 * sun + 0.5 * lamps
    if kind.startswith("vehicle") or kind == "headlight":
        car = scene.vehicles[part.owner]
        darkness = 1.0 - float(np.mean(CAR_COLOURS[car.colour]))
        body = air + damp * sun * (4.0 + 8.0 * darkness) + (1.0 if car.moving else 0.0)
        if kind == "vehicle_body":
            return body
        if kind == "vehicle_window":
            return air + damp * 3.0 * sun + (OCCUPIED_CABIN_K if car.occupied else 0.0)
        if kind == "vehicle_engine":
            return body + _engine_heat(scene, part.owner, ENGINE_PEAK_K, ENGINE_COOLING_MIN)
        if kind == "vehicle_tyre":  # rolling friction heats tyres; they cool once parked
            return air + 4.0 * sun + _engine_heat(scene, part.owner, TYRE_PEAK_K, TYRE_COOLING_MIN)
        if kind == "headlight":
            lamps_on = car.moving and scene.time_of_day in ("dusk", "night")
            return air + 45.0 if lamps_on else body
    if kind.startswith("ped") or kind == "umbrella":
        ped = scene.pedestrians[part.owner]
        insulation = _TORSO_INSULATION[ped.clothing]
        exertion = EXERTION_K.get(kind, 0.0) if ped.exerted else 0.0
        if kind == "ped_head":
            return 33.5 + exertion
        if kind == "ped_torso":  # core heat, partly held back by clothing
            return air + (35.0 - air) * insulation + 1.5 * sun + exertion
        if kind == "ped_arm":
            if ped.clothing == "t-shirt":  # bare skin, cooler than the core
                return 31.0 + 0.1 * (air - 20.0) + exertion
            return air + (31.0 - air) * insulation * 0.85 + 1.5 * sun + exertion
        if kind == "ped_leg":
            return air + (30.5 - air) * 0.5 + 1.5 * sun + exertion
        if kind == "umbrella":  # thin fabric at air temperature, cooled further by rain
            return air - (2.0 if scene.weather == "rain" else 1.0)
    raise ValueError(f"no thermal model for part kind {kind!r}")


def _part_emissivity(scene: Scene, part: Part) -> float:
    if part.kind in _ROAD_KINDS and scene.road_wet:
        return WET_ROAD_EMISSIVITY
    if part.kind == "building_wall":
        return _WALL_EMISSIVITY[scene.buildings[part.owner].material]
    return _EMISSIVITY[part.kind]


def temperature_map(scene: Scene, raster: SceneRaster) -> np.ndarray:
    """Apparent temperature reaching the camera, degC, before sensor effects.

    Args:
        scene: scene description.
        raster: its part map (from :func:`~open_clip_thermal.synthetic.layout.rasterize`).

    Returns:
        (H, W) float32 array.
    """
    temps = np.array([_part_temperature(scene, p) for p in raster.parts], dtype=np.float32)
    emis = np.array([_part_emissivity(scene, p) for p in raster.parts], dtype=np.float32)
    sky_zenith = sky_temperature(scene)
    # Horizontal surfaces mirror the zenith sky; vertical ones see half sky, half surroundings.
    reflected = np.array([sky_zenith if p.kind in _HORIZONTAL else 0.5 * (sky_zenith + scene.air_temp_c)
                          for p in raster.parts], dtype=np.float32)
    kinetic = temps[raster.part_map]
    # The sky warms toward the horizon, where the line of sight crosses more air.
    horizon_weight = np.clip(raster.v_grid / scene.horizon, 0, 1) ** 3
    is_sky = raster.part_map == 0
    kinetic = np.where(is_sky, kinetic + (scene.air_temp_c - 2.0 - kinetic) * horizon_weight, kinetic)
    texture = np.random.default_rng([scene.texture_seed, 1]).normal(0.0, 0.3, kinetic.shape)
    e = emis[raster.part_map]
    apparent = e * (kinetic + np.where(is_sky, 0.0, texture)) + (1 - e) * reflected[raster.part_map]
    transmittance = np.exp(-_EXTINCTION[scene.weather] * raster.distance)
    return (transmittance * apparent + (1 - transmittance) * scene.air_temp_c).astype(np.float32)


@lru_cache(maxsize=8)
def _fixed_pattern(size: int, sensor_seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([sensor_seed, 7919])
    column_offset = rng.normal(0.0, COLUMN_OFFSET_K * COUNTS_PER_KELVIN, (1, size))
    pixel_gain = rng.normal(1.0, PIXEL_GAIN_STD, (size, size))
    return column_offset, pixel_gain


def to_counts(temperature_c: np.ndarray) -> np.ndarray:
    """Ideal radiometric counts (float) for temperatures in degC; linear, 190 counts per kelvin."""
    return COUNTS_AT_MINUS_40C + (temperature_c + 40.0) * COUNTS_PER_KELVIN


def apply_sensor(counts: np.ndarray, sensor_seed: int, noise_seed: int) -> np.ndarray:
    """Add fixed-pattern non-uniformity (fixed per ``sensor_seed``) and temporal noise; uint16 out."""
    column_offset, pixel_gain = _fixed_pattern(counts.shape[0], sensor_seed)
    noise = np.random.default_rng([noise_seed, 2]).normal(0.0, NETD_K * COUNTS_PER_KELVIN, counts.shape)
    measured = COUNTS_AT_MINUS_40C + (counts - COUNTS_AT_MINUS_40C) * pixel_gain + column_offset + noise
    return np.clip(np.rint(measured), 0, 65535).astype(np.uint16)


def agc_8bit(counts: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0,
             equalize: float = 0.35) -> np.ndarray:
    """Map radiometric counts to 0-255 (white hot) the way a camera's automatic gain control does.

    A linear percentile stretch alone lets the cold sky take most of the grey levels, so, like
    common camera AGCs, it is blended with histogram equalisation.

    Args:
        counts: (H, W) radiometric counts.
        low_pct: percentile mapped to black by the linear stretch.
        high_pct: percentile mapped to white by the linear stretch.
        equalize: weight of the histogram-equalised image (0 = purely linear).

    Returns:
        (H, W) uint8 array.
    """
    values = counts.astype(np.float32)
    low, high = np.percentile(values, [low_pct, high_pct])
    scene_span = high - low
    span = max(scene_span, AGC_MIN_SPAN_K * COUNTS_PER_KELVIN)
    centre = 0.5 * (high + low)
    linear = np.clip((values - centre) / span + 0.5, 0, 1)
    ordered = np.sort(values, axis=None)
    # Rank of each pixel among all pixels (ties share their mean rank), scaled to 0-1.
    ranks = 0.5 * (np.searchsorted(ordered, values, "left") + np.searchsorted(ordered, values, "right"))
    # Equalisation must not invent contrast the minimum span refuses (fog would become noise).
    equalised = 0.5 + (ranks / values.size - 0.5) * (scene_span / span)
    mixed = (1 - equalize) * linear + equalize * np.clip(equalised, 0, 1)
    return np.clip(np.rint(mixed * 255.0), 0, 255).astype(np.uint8)


def render_thermal(scene: Scene, size: int = 64, bit_depth: int = 16, sensor_seed: int = 0,
                   raster: Optional[SceneRaster] = None) -> np.ndarray:
    """Render the thermal image of ``scene``.

    Args:
        scene: scene description.
        size: width and height in pixels (ignored when ``raster`` is given).
        bit_depth: 16 for radiometric counts (uint16), 8 for an AGC-stretched uint8 image.
        sensor_seed: identifies the camera; its fixed-pattern noise is the same in every image.
        raster: a precomputed part map, so the RGB and thermal images share one rasterisation.

    Returns:
        (H, W) uint16 or uint8 array.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    raster = raster if raster is not None else rasterize(scene, size)
    counts = apply_sensor(to_counts(temperature_map(scene, raster)), sensor_seed, scene.texture_seed)
    return counts if bit_depth == 16 else agc_8bit(counts)

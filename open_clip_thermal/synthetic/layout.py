"""Rasterise a :class:`Scene` into a part map shared by the RGB and thermal renderers.

Every pixel gets the index of the part that is visible there (sky, road, a car's engine, a
pedestrian's torso, ...) and a viewing distance. Renderers only look up per-part colours or
temperatures and apply distance-dependent effects, which keeps the two modalities aligned to
the pixel and lets tests pick regions by name.
"""
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .scene import Building, Pedestrian, RoadPatch, Scene, Tree, Vehicle, road_half_width_at

SKY_DISTANCE = 80.0  # viewing distance of the sky, in units of the nearest ground row


@dataclass(frozen=True)
class Part:
    kind: str  # e.g. "road", "vehicle_engine", "ped_torso"
    owner: int = -1  # index into the scene's list for that object type, -1 for background


@dataclass
class SceneRaster:
    """Part map of one scene at one resolution."""

    part_map: np.ndarray  # (H, W) int32 indices into ``parts``
    distance: np.ndarray  # (H, W) float32 viewing distance (1 = nearest ground row)
    parts: List[Part]
    v_grid: np.ndarray  # (H, W) row coordinate of each pixel centre, 0 top .. 1 bottom

    def mask(self, kind: str, owner: Optional[int] = None) -> np.ndarray:
        """Boolean mask of the pixels showing parts of ``kind`` (optionally of one owner)."""
        ids = [i for i, p in enumerate(self.parts) if p.kind == kind and (owner is None or p.owner == owner)]
        return np.isin(self.part_map, ids)

    def kinds(self) -> np.ndarray:
        """(H, W) array of part kind names, handy for debugging and plots."""
        return np.asarray([p.kind for p in self.parts], dtype=object)[self.part_map]


class _Painter:
    """Paints masks back to front onto the part map."""

    def __init__(self, size: int, horizon: float):
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.v, self.u = np.meshgrid(centres, centres, indexing="ij")
        self.horizon = horizon
        self.parts: List[Part] = [Part("sky")]
        self.part_map = np.zeros((size, size), dtype=np.int32)
        self.distance = np.full((size, size), SKY_DISTANCE, dtype=np.float32)

    def ground_distance(self, v):
        # Flat ground seen from a camera at the horizon line: distance ~ 1 / (v - horizon).
        return np.minimum((1.0 - self.horizon) / np.maximum(v - self.horizon, 1e-3), SKY_DISTANCE - 1)

    def paint(self, mask: np.ndarray, kind: str, owner: int = -1, distance=None) -> None:
        if not mask.any():
            return
        self.parts.append(Part(kind, owner))
        self.part_map[mask] = len(self.parts) - 1
        if distance is not None:
            self.distance[mask] = distance if np.isscalar(distance) else distance[mask]

    def rect(self, u0, u1, v0, v1) -> np.ndarray:
        return (self.u >= u0) & (self.u < u1) & (self.v >= v0) & (self.v < v1)

    def ellipse(self, cu, cv, ru, rv) -> np.ndarray:
        return ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 <= 1.0


def _perspective_scale(scene: Scene, v: float) -> float:
    return max(0.05, (v - scene.horizon) / (1.0 - scene.horizon))


def _paint_ground(p: _Painter, scene: Scene) -> None:
    below = p.v >= scene.horizon
    verge = "grass" if scene.place in ("campus", "highway") else "sidewalk"
    p.paint(below, verge, distance=p.ground_distance(p.v))
    depth_frac = np.clip((p.v - scene.horizon) / (1.0 - scene.horizon), 0, 1)
    half = road_half_width_at(scene, 1.0) * depth_frac
    offset = p.u - scene.road_centre
    road = below & (np.abs(offset) <= half)
    p.paint(road, "road", distance=p.ground_distance(p.v))
    for i, patch in enumerate(scene.road_patches):
        _paint_road_patch(p, scene, patch, i, road)
    if scene.place == "campus":
        return
    line_half = 0.012 * depth_frac + 0.5 / p.u.shape[1]
    dashes = (np.floor(np.log(p.ground_distance(p.v)) * 6) % 2) == 0
    lines = np.abs(offset) <= line_half
    if scene.place == "highway":
        for frac in (-0.5, 0.5):
            lines |= np.abs(offset - frac * half) <= line_half
    p.paint(road & lines & dashes, "lane_marking", distance=p.ground_distance(p.v))
    if scene.place == "crossing":
        band_v = scene.horizon + 0.6 * (1 - scene.horizon)
        band = (p.v >= band_v) & (p.v < band_v + 0.12 * (1 - scene.horizon))
        stripe_width = 0.04 * _perspective_scale(scene, band_v) + 1.0 / p.u.shape[1]
        stripes = (np.floor(offset / stripe_width) % 2) == 0
        p.paint(road & band & stripes, "zebra", distance=p.ground_distance(p.v))


def _paint_road_patch(p: _Painter, scene: Scene, patch: RoadPatch, owner: int, road: np.ndarray) -> None:
    half_u = patch.width * road_half_width_at(scene, patch.v)
    half_v = 0.5 * patch.height * (1 - scene.horizon)
    if patch.kind == "damp":  # irregular blotches: an ellipse cut by a seeded noise field
        blob = p.ellipse(patch.u, patch.v, half_u, half_v)
        noise = np.random.default_rng([owner, int(patch.u * 1e6)]).random((4, 4))
        rows = np.clip(((p.v - patch.v) / (2 * half_v) + 0.5) * 4, 0, 3).astype(int)
        cols = np.clip(((p.u - patch.u) / (2 * half_u) + 0.5) * 4, 0, 3).astype(int)
        region = blob & (noise[rows, cols] < 0.75)
    else:
        region = p.rect(patch.u - half_u, patch.u + half_u, patch.v - half_v, patch.v + half_v)
    p.paint(region & road, f"road_{patch.kind}", owner, distance=p.ground_distance(p.v))


def _paint_building(p: _Painter, scene: Scene, b: Building, owner: int) -> None:
    base = scene.horizon + 0.02
    distance = float(p.ground_distance(np.float32(base + 0.04)))
    p.paint(p.rect(b.u0, b.u1, b.top, base), "building_wall", owner, distance)
    # Window grid: each cell's central part is glass; a seeded table decides which are lit.
    cell_u = (p.u - b.u0) / (b.u1 - b.u0) * b.window_cols
    cell_v = (p.v - b.top) / (base - b.top) * (b.window_rows + 0.5)
    inside = (cell_u >= 0) & (cell_u < b.window_cols) & (cell_v >= 0) & (cell_v < b.window_rows)
    glass = inside & (np.abs(cell_u % 1 - 0.5) < 0.25) & (np.abs(cell_v % 1 - 0.55) < 0.25)
    lit_table = np.random.default_rng(b.lit_seed).random((b.window_rows, b.window_cols)) < b.lit_fraction
    rows = np.clip(cell_v.astype(int), 0, b.window_rows - 1)
    cols = np.clip(cell_u.astype(int), 0, b.window_cols - 1)
    lit = lit_table[rows, cols]
    p.paint(glass & lit, "window_lit", owner, distance)
    p.paint(glass & ~lit, "window_dark", owner, distance)


def _paint_tree(p: _Painter, scene: Scene, t: Tree, owner: int) -> None:
    height = 0.5 * t.crown * (0.35 + _perspective_scale(scene, t.v))
    distance = float(p.ground_distance(np.float32(t.v)))
    trunk_half = max(0.012 * height / 0.5, 0.4 / p.u.shape[1])
    p.paint(p.rect(t.u - trunk_half, t.u + trunk_half, t.v - 0.45 * height, t.v), "tree_trunk", owner, distance)
    p.paint(p.ellipse(t.u, t.v - 0.7 * height, 0.28 * height, 0.32 * height), "foliage", owner, distance)


_VEHICLE_SHAPES = {  # width, height as fractions of the image at the nearest row (a close camera)
    "car": (0.6, 0.26), "van": (0.62, 0.34), "bus": (0.85, 0.42)}


def _paint_vehicle(p: _Painter, scene: Scene, car: Vehicle, owner: int) -> None:
    s = _perspective_scale(scene, car.v)
    w, h = (x * s for x in _VEHICLE_SHAPES[car.kind])
    distance = float(p.ground_distance(np.float32(car.v)))
    left = car.u - w / 2

    def along(a0, a1):  # horizontal span measured from the rear (0) to the front (1)
        if car.facing_right:
            return left + a0 * w, left + a1 * w
        return left + (1 - a1) * w, left + (1 - a0) * w

    bottom = car.v - 0.12 * h
    if car.kind == "car":
        body_top, cabin, engine = car.v - 0.6 * h, (0.15, 0.7), (0.68, 1.0)
    elif car.kind == "van":
        body_top, cabin, engine = car.v - 0.55 * h, (0.0, 0.78), (0.76, 1.0)
    else:  # buses carry the engine at the rear
        body_top, cabin, engine = car.v - 0.55 * h, (0.0, 1.0), (0.0, 0.22)
    p.paint(p.rect(*along(0, 1), body_top, bottom), "vehicle_body", owner, distance)
    p.paint(p.rect(*along(*cabin), car.v - h, body_top), "vehicle_body", owner, distance)
    win_u0, win_u1 = along(cabin[0] + 0.05, cabin[1] - 0.05)
    p.paint(p.rect(win_u0, win_u1, car.v - 0.92 * h, body_top - 0.04 * h), "vehicle_window", owner, distance)
    p.paint(p.rect(*along(*engine), body_top + 0.03 * h, bottom - 0.03 * h), "vehicle_engine", owner, distance)
    wheel_r = 0.2 * h if car.kind == "car" else 0.15 * h
    for a in (0.2, 0.8):
        wu = along(a, a)[0]
        p.paint(p.ellipse(wu, car.v - wheel_r, max(wheel_r, 0.6 / p.u.shape[1]), wheel_r),
                "vehicle_tyre", owner, distance)
    lamp_u0, lamp_u1 = along(0.95, 1.0)
    lamp_half = max(0.06 * h, 0.5 / p.u.shape[0])
    lamp_v = body_top + 0.25 * (bottom - body_top)
    p.paint(p.rect(lamp_u0, lamp_u1, lamp_v - lamp_half, lamp_v + lamp_half), "headlight", owner, distance)


def _paint_pedestrian(p: _Painter, scene: Scene, ped: Pedestrian, owner: int) -> None:
    height = 0.62 * _perspective_scale(scene, ped.v)
    distance = float(p.ground_distance(np.float32(ped.v)))
    top = ped.v - height
    torso_half = 0.14 * height
    limb_half = max(0.05 * height, 0.5 / p.u.shape[1])
    torso_bottom = top + (0.62 if ped.clothing == "coat" else 0.55) * height
    for side in (-1, 1):
        leg_u = ped.u + side * 0.07 * height
        p.paint(p.rect(leg_u - limb_half, leg_u + limb_half, torso_bottom, ped.v), "ped_leg", owner, distance)
        arm_u = ped.u + side * (torso_half + limb_half)
        p.paint(p.rect(arm_u - limb_half, arm_u + limb_half, top + 0.2 * height, top + 0.52 * height),
                "ped_arm", owner, distance)
    p.paint(p.rect(ped.u - torso_half, ped.u + torso_half, top + 0.18 * height, torso_bottom),
            "ped_torso", owner, distance)
    p.paint(p.ellipse(ped.u, top + 0.09 * height, 0.08 * height, 0.09 * height), "ped_head", owner, distance)
    if ped.umbrella:
        dome = p.ellipse(ped.u, top - 0.02 * height, 0.38 * height, 0.16 * height) & (p.v <= top - 0.02 * height)
        p.paint(dome, "umbrella", owner, distance)


_OBJECT_PARTS = {  # part kind -> (scene list, how the object's box is labelled)
    "vehicle_body": "vehicles", "vehicle_window": "vehicles", "vehicle_engine": "vehicles",
    "vehicle_tyre": "vehicles", "headlight": "vehicles", "ped_head": "pedestrians", "ped_torso": "pedestrians",
    "ped_arm": "pedestrians", "ped_leg": "pedestrians", "umbrella": "umbrellas", "building_wall": "buildings",
    "window_lit": "buildings", "window_dark": "buildings", "tree_trunk": "trees", "foliage": "trees"}


def object_boxes(scene: Scene, raster: SceneRaster) -> List[dict]:
    """Class label and pixel box of every visible object, for cutting labelled crops.

    Returns:
        ``[{"label", "box": [x0, y0, x1, y1], "index"}]`` in painting order per type; the box spans the
        object's visible pixels (x1, y1 exclusive, so ``image[y0:y1, x0:x1]`` is the crop); ``label`` is
        the vehicle kind (car / van / bus), ``pedestrian``, ``umbrella``, ``building`` or ``tree``;
        ``index`` is the object's position in its scene list. Fully hidden objects are left out.
    """
    owner_of = np.full(len(raster.parts), -1, dtype=np.int64)
    keys = []
    for i, part in enumerate(raster.parts):
        group = _OBJECT_PARTS.get(part.kind)
        if group is not None:
            key = (group, part.owner)
            if key not in keys:
                keys.append(key)
            owner_of[i] = keys.index(key)
    object_map = owner_of[raster.part_map]
    boxes = []
    for group in ("vehicles", "pedestrians", "umbrellas", "buildings", "trees"):
        for key_index, (g, owner) in enumerate(keys):
            if g != group:
                continue
            rows, cols = np.nonzero(object_map == key_index)
            if not rows.size:  # painted, then covered entirely by nearer objects
                continue
            if group == "vehicles":
                label = scene.vehicles[owner].kind
            else:
                label = {"pedestrians": "pedestrian", "umbrellas": "umbrella", "buildings": "building",
                         "trees": "tree"}[group]
            boxes.append({"label": label, "box": [int(cols.min()), int(rows.min()), int(cols.max()) + 1,
                                                  int(rows.max()) + 1], "index": int(owner)})
    return boxes


def rasterize(scene: Scene, size: int) -> SceneRaster:
    """Rasterise ``scene`` into a ``size`` x ``size`` part map.

    Args:
        scene: the scene description.
        size: output width and height in pixels.

    Returns:
        A :class:`SceneRaster`; part 0 is always the sky.
    """
    if size < 16:
        raise ValueError(f"image size {size} is too small to draw a scene; use at least 16 px")
    p = _Painter(size, scene.horizon)
    _paint_ground(p, scene)
    for i, b in enumerate(scene.buildings):
        _paint_building(p, scene, b, i)
    # Trees, vehicles and pedestrians overlap each other, so they are painted far to near.
    objects = ([(t.v, _paint_tree, t, i) for i, t in enumerate(scene.trees)]
               + [(c.v, _paint_vehicle, c, i) for i, c in enumerate(scene.vehicles)]
               + [(q.v, _paint_pedestrian, q, i) for i, q in enumerate(scene.pedestrians)])
    for _, paint_fn, obj, owner in sorted(objects, key=lambda o: o[0]):
        paint_fn(p, scene, obj, owner)
    return SceneRaster(part_map=p.part_map, distance=p.distance, parts=p.parts, v_grid=p.v)

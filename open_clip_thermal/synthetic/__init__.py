"""A small, physically grounded synthetic RGB-thermal street world.

``sample_scene`` draws a seeded scene description, ``rasterize`` turns it into a part map,
``render_rgb`` / ``render_thermal`` colour that same map (so the pair is pixel-aligned), the
caption writers describe it (stating the facts of ``facts``), ``oracle`` measures how well each
caption type can identify an image in principle, and ``generate_dataset`` writes images plus the annotation file the
converter reads. ``proxy`` pretrains a tiny RGB CLIP on the RGB half of this world.

Command line: ``python -m open_clip_thermal.synthetic --help``.
"""
from .captions import THERMAL_PREFIX, fine_grained_thermal_caption, global_thermal_caption, rgb_caption
from .dataset import generate_dataset, iter_samples, read_scene_records, render_sample
from .layout import SceneRaster, rasterize
from .render_rgb import render_rgb
from .render_thermal import render_thermal, temperature_map
from .facts import fine_grained_facts, global_facts
from .layout import object_boxes
from .oracle import oracle_report
from .scene import Building, Pedestrian, RoadPatch, Scene, Tree, Vehicle, sample_scene, scene_rng

__all__ = ["THERMAL_PREFIX", "fine_grained_thermal_caption", "global_thermal_caption", "rgb_caption",
           "generate_dataset", "iter_samples", "read_scene_records", "render_sample", "SceneRaster", "rasterize",
           "object_boxes", "render_rgb", "render_thermal", "temperature_map", "fine_grained_facts", "global_facts",
           "oracle_report", "Building", "Pedestrian", "RoadPatch", "Scene", "Tree", "Vehicle", "sample_scene",
           "scene_rng"]

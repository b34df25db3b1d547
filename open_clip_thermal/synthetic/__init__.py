"""A small, physically grounded synthetic RGB-thermal street world.

``sample_scene`` draws a seeded scene description, ``rasterize`` turns it into a part map,
``render_rgb`` / ``render_thermal`` colour that same map (so the pair is pixel-aligned), the
caption writers describe it, and ``generate_dataset`` writes images plus the annotation file the
converter reads. ``proxy`` pretrains a tiny RGB CLIP on the RGB half of this world.

Command line: ``python -m open_clip_thermal.synthetic --help``.
"""
from .captions import THERMAL_PREFIX, fine_grained_thermal_caption, global_thermal_caption, rgb_caption
from .dataset import generate_dataset, iter_samples, read_annotations, render_sample
from .layout import SceneRaster, rasterize
from .render_rgb import render_rgb
from .render_thermal import render_thermal, temperature_map
from .scene import Building, Pedestrian, Scene, Tree, Vehicle, sample_scene, scene_rng

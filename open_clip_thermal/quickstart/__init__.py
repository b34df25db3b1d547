"""``python -m open_clip_thermal.quickstart``: the embedded end-to-end job: synthetic data, training, benchmark. The code is in :mod:`.cli`.

Names are forwarded lazily (open_clip_thermal.lazy) so that ``python -m open_clip_thermal.quickstart`` pays only for what it uses.
"""
from ..lazy import forward_attributes

__getattr__ = forward_attributes(__name__, ".cli")

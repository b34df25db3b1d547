"""``python -m open_clip_thermal.train``: fine-tuning T-CLIP branches and baselines on open_clip_train. The code is in :mod:`.cli`.

Names are forwarded lazily (open_clip_thermal.lazy) so that ``python -m open_clip_thermal.train`` pays only for what it uses.
"""
from ..lazy import forward_attributes

__getattr__ = forward_attributes(__name__, ".cli")

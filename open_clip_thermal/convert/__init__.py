"""``python -m open_clip_thermal.convert``: IR-Cap annotations or a dataset layout to WebDataset shards. The code is in :mod:`.cli`.

Names are forwarded lazily (open_clip_thermal.lazy) so that ``python -m open_clip_thermal.convert`` pays only for what it uses.
"""
from ..lazy import forward_attributes

__getattr__ = forward_attributes(__name__, ".cli")

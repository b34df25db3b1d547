"""Trained baselines of the paper's tables, next to T-CLIP's LoRA branches.

* ``full``: every CLIP weight fine-tuned; exported as a plain OpenCLIP checkpoint (:mod:`.export`).
* ``clip-adapter``: :mod:`.clip_adapter` (model) and :mod:`.clip_adapter_files` (folders; the
  ``'clip-adapter'`` name of ``open_clip_thermal.create_model``).
* ``declip``: full fine-tuning with nearest-neighbour supervision from a momentum encoder,
  :mod:`.declip` (model) and :mod:`.declip_loss`; exported like ``full``.

Training: ``python -m open_clip_thermal.train --method full|clip-adapter|declip`` (docs/baselines.md).
"""
import os

from .clip_adapter import DEFAULT_ALPHA, DEFAULT_REDUCTION, ClipAdapterModel, ResidualBottleneck
from .clip_adapter_files import (CLIP_ADAPTER_FORMAT, CLIP_ADAPTER_MODEL, clip_adapter_folder,
                                 create_clip_adapter_model, load_clip_adapter, read_clip_adapter_config,
                                 save_clip_adapter)
from .declip import DeclipConfig, DeclipModel, FeatureQueue, MomentumWeights
from .declip_loss import DeclipLoss, nearest_neighbour_infonce
from .export import EXPORT_NAME, exported_with_quick_gelu, openclip_state_dict, save_openclip_weights

from ..registry import register_model_builder, register_pretrained_guard

# model names open_clip_thermal.create_model builds here (not OpenCLIP architectures: the base is
# recorded in the weights folder)
BASELINE_MODELS = {CLIP_ADAPTER_MODEL: create_clip_adapter_model}


def _refuse_clip_adapter_folder(model_name, pretrained):
    """A CLIP-Adapter folder under a stock name would load as a broken checkpoint: say what to do."""
    if isinstance(pretrained, (str, os.PathLike)) and clip_adapter_folder(pretrained) is not None:
        return (f"pretrained={pretrained!r} is a CLIP-Adapter folder; load it with "
                f"create_model({CLIP_ADAPTER_MODEL!r}, pretrained=...), not {model_name!r}")
    return None


for _name, _builder in BASELINE_MODELS.items():
    register_model_builder(_name, _builder)
register_pretrained_guard(_refuse_clip_adapter_folder)


def list_baseline_models():
    """Names of the baseline models ``open_clip_thermal.create_model`` knows (``['clip-adapter']``)."""
    return sorted(BASELINE_MODELS)


__all__ = [
    "BASELINE_MODELS", "list_baseline_models", "ClipAdapterModel", "ResidualBottleneck", "DEFAULT_ALPHA",
    "DEFAULT_REDUCTION", "CLIP_ADAPTER_FORMAT", "CLIP_ADAPTER_MODEL", "clip_adapter_folder",
    "create_clip_adapter_model", "load_clip_adapter", "read_clip_adapter_config", "save_clip_adapter",
    "DeclipConfig", "DeclipModel", "FeatureQueue", "MomentumWeights", "DeclipLoss", "nearest_neighbour_infonce",
    "EXPORT_NAME", "exported_with_quick_gelu", "openclip_state_dict", "save_openclip_weights",
]

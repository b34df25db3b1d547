"""Plain OpenCLIP weights of the fully fine-tuned baselines (``full``, ``declip``).

The safetensors header records the thermal normalisation the model was trained with
(``adapters.thermal_norm_metadata``; ``adapters.recorded_thermal_norm`` reads it back, so the benchmark,
classify and search decode test images as training did) and whether the model ran with QuickGELU:
OpenAI-initialised ViT-B-16 trains with QuickGELU although its JSON config says GELU, and stock OpenCLIP cannot tell from the
weights. ``open_clip_thermal.create_model`` reads the flag (``base_model.export_records_quick_gelu``); stock
OpenCLIP needs ``force_quick_gelu=True`` or the ``-quickgelu`` model name.
"""
import os
from pathlib import Path
from typing import Dict, Union

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..adapters import thermal_norm_metadata
from ..files import atomic_write
from ..base_model import EXPORT_FORMAT, export_metadata, export_records_quick_gelu, uses_quick_gelu  # noqa: F401

EXPORT_NAME = "model.safetensors"


def openclip_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weights stock ``open_clip.create_model(<base>, pretrained=...)`` loads: the model's own
    state_dict, or for wrappers with training-only state (DeCLIP's momentum encoder and queues)
    what their ``export_state_dict`` keeps."""
    export = getattr(model, "export_state_dict", None)
    state = export() if callable(export) else model.state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_openclip_weights(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write :func:`openclip_state_dict` of ``model`` to ``path`` as safetensors, atomically."""
    path = Path(path)
    state = openclip_state_dict(model)
    metadata = dict(export_metadata(model), **thermal_norm_metadata(model))
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return path


exported_with_quick_gelu = export_records_quick_gelu  # the name this module has always exported

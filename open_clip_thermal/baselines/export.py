"""Plain OpenCLIP weights of the fully fine-tuned baselines (``full``, ``declip``).

The safetensors header records whether the model ran with QuickGELU: OpenAI-initialised ViT-B-16
trains with QuickGELU although its JSON config says GELU, and stock OpenCLIP cannot tell from the
weights. ``open_clip_thermal.create_model`` reads the flag (:func:`exported_with_quick_gelu`); stock
OpenCLIP needs ``force_quick_gelu=True`` or the ``-quickgelu`` model name.
"""
import os
from pathlib import Path
from typing import Dict, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..adapters import _atomic_write

EXPORT_NAME = "model.safetensors"
EXPORT_FORMAT = "open_clip_thermal.openclip_weights"


def openclip_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weights stock ``open_clip.create_model(<base>, pretrained=...)`` loads: the model's own
    state_dict, or for wrappers with training-only state (DeCLIP's momentum encoder and queues)
    what their ``export_state_dict`` keeps."""
    export = getattr(model, "export_state_dict", None)
    state = export() if callable(export) else model.state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def uses_quick_gelu(model: nn.Module) -> bool:
    """Whether any transformer block of ``model`` uses OpenCLIP's QuickGELU."""
    from open_clip.transformer import QuickGELU
    return any(isinstance(m, QuickGELU) for m in model.modules())


def save_openclip_weights(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write :func:`openclip_state_dict` of ``model`` to ``path`` as safetensors, atomically."""
    path = Path(path)
    state = openclip_state_dict(model)
    info = getattr(model, "tclip_info", {})
    metadata = {"format": EXPORT_FORMAT, "quick_gelu": str(uses_quick_gelu(model)).lower(),
                "base_model": str(info.get("base_model")), "method": str(info.get("model_name"))}
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return path


def exported_with_quick_gelu(path) -> bool:
    """True when ``path`` is a baseline export whose model ran with QuickGELU (False for anything else)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".safetensors") or not os.path.isfile(path):
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return metadata.get("format") == EXPORT_FORMAT and metadata.get("quick_gelu") == "true"

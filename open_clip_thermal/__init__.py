"""open_clip_thermal: thermal (LWIR) perception for OpenCLIP (T-CLIP).

``import open_clip_thermal`` registers the ``tclip-*`` models with OpenCLIP (see ``registry.py``), after
which ``open_clip.create_model('tclip-dual', pretrained='openai')`` and friends build T-CLIP models.

The import itself is light: the names below are loaded on first use (PEP 562), and registration
happens as soon as OpenCLIP is imported (``seam.py``), so commands that need neither torch
nor OpenCLIP (``convert --help``, ``ircap``) start at once.
"""
import importlib

from . import seam
from .version import __version__

# public name -> (module, attribute)
_LAZY = {
    "LoRAConfig": ("lora", "LoRAConfig"),
    "count_lora_parameters": ("lora", "count_lora_parameters"),
    "inject_lora": ("lora", "inject_lora"),
    "DualLoRAFusion": ("model", "DualLoRAFusion"),
    "TCLIP": ("model", "DualLoRAFusion"),  # the model class, under the method's name
    "fuse_features": ("model", "fuse_features"),
    "AdapterError": ("files", "AdapterError"),  # files.py: no torch, so the error type loads at once
    "export_merged": ("adapters", "export_merged"),
    "load_adapters": ("adapters", "load_adapters"),
    "save_adapters": ("adapters", "save_adapters"),
    "push_adapters": ("hub", "push_adapters"),  # hub.py: adapter repos on the Hugging Face Hub
    **{name: ("registry", name) for name in (
        "add_lora", "create_model", "create_tclip_model", "get_tclip_config", "install", "list_tclip_models",
        "register_tclip_model", "uninstall")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in ("registry", "lora", "model", "adapters", "base_model", "files", "contracts", "baselines",
                "training", "data", "evaluation", "benchmark", "ircap", "synthetic", "testing"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


seam.arm()

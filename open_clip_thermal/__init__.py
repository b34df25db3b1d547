"""open_clip_thermal: thermal (LWIR) perception for OpenCLIP (T-CLIP).

``import open_clip_thermal`` registers the ``tclip-*`` models with OpenCLIP (see ``registry.py``), after
which ``open_clip.create_model('tclip-dual', pretrained='openai')`` and friends build T-CLIP models.
"""
from .version import __version__
from .lora import LoRAConfig, count_lora_parameters, inject_lora
from .fusion import DualLoRAFusion, fuse_features
from .adapters import AdapterError, export_merged, load_adapters, save_adapters
from .registry import (add_lora, create_model, create_tclip_model, get_tclip_config, install,
                       list_tclip_models, register_tclip_model, uninstall)

TCLIP = DualLoRAFusion  # the model class, under the method's name

install()

__all__ = [
    "__version__", "LoRAConfig", "count_lora_parameters", "inject_lora", "DualLoRAFusion", "TCLIP",
    "fuse_features", "AdapterError", "export_merged", "load_adapters", "save_adapters", "add_lora",
    "create_model", "create_tclip_model", "get_tclip_config", "install", "list_tclip_models",
    "register_tclip_model", "uninstall",
]

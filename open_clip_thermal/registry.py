"""The one place where open_clip_thermal hooks into OpenCLIP.

OpenCLIP (3.x) has no plug-in hook for model classes: ``open_clip.factory.create_model`` builds
``CLIP``/``CustomTextCLIP``/``CoCa`` in a fixed if/else. Two public seams are used instead:

1. ``open_clip.add_model_config`` registers our architecture JSONs (``model_configs/``, pure OpenCLIP
   schema), so ``list_models``, ``get_tokenizer`` and CLIP_benchmark know ``tclip-*`` names.
2. :func:`install` wraps ``open_clip.factory.create_model`` (and the package-level alias
   ``open_clip.create_model``). ``create_model_and_transforms`` and ``create_model_from_pretrained``
   look ``create_model`` up in the factory module at call time, and so does ``open_clip_train``, so
   everything that creates models goes through the wrapper. The wrapper hands every name that is not a
   T-CLIP name to the original untouched; T-CLIP names build the plain base CLIP through the original
   (weights loaded strictly by OpenCLIP), then inject LoRA (``tclip_configs/``: branches, LoRA, fusion).

:func:`install` runs at ``import open_clip_thermal``; it is idempotent and :func:`uninstall` reverts it.
"""
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import open_clip
import open_clip.factory as oc_factory
import torch.nn as nn

from .adapters import AdapterError, adapter_folder, load_adapters, read_adapter_config
from .fusion import DualLoRAFusion
from .lora import LoRAConfig

_HERE = Path(__file__).parent
MODEL_CONFIG_DIR = _HERE / "model_configs"
TCLIP_CONFIG_DIR = _HERE / "tclip_configs"

_TCLIP_CONFIGS: Dict[str, dict] = {}
_ORIGINAL_CREATE_MODEL = None


def _scan_tclip_configs() -> None:
    for path in sorted(TCLIP_CONFIG_DIR.glob("*.json")):
        _TCLIP_CONFIGS[path.stem] = json.loads(path.read_text())


def list_tclip_models() -> List[str]:
    """Names of the registered T-CLIP models."""
    return sorted(_TCLIP_CONFIGS)


def get_tclip_config(name: str) -> dict:
    """A copy of the T-CLIP settings (base model, branches, LoRA, fusion) of ``name``."""
    if name not in _TCLIP_CONFIGS:
        raise KeyError(f"{name!r} is not a T-CLIP model; known: {list_tclip_models()}")
    return json.loads(json.dumps(_TCLIP_CONFIGS[name]))


def register_tclip_model(name: str, config: dict) -> None:
    """Register a T-CLIP variant, e.g. LoRA on another OpenCLIP base (``{'base_model': 'ViT-L-14', ...}``)."""
    missing = {"base_model", "branches", "lora"} - set(config)
    if missing:
        raise ValueError(f"T-CLIP config for {name!r} lacks {sorted(missing)}")
    _TCLIP_CONFIGS[name] = json.loads(json.dumps(config))


def _original_create_model():
    return _ORIGINAL_CREATE_MODEL or oc_factory.create_model


def _create_base(base_model: str, pretrained: Optional[str], kwargs: dict) -> nn.Module:
    """Build the plain OpenCLIP base, with a clear error for bad ``pretrained`` values."""
    create = _original_create_model()
    if pretrained is None:
        warnings.warn(f"T-CLIP base {base_model!r} built with random weights (pretrained=None); "
                      "pass pretrained='openai', a base checkpoint or an adapter folder for real use",
                      UserWarning, stacklevel=3)
        return create(base_model, pretrained=None, **kwargs)
    tag_cfg = oc_factory.get_pretrained_cfg(base_model, pretrained)
    if tag_cfg:
        # OpenAI's weights were trained with QuickGELU; ViT-B-16's JSON says GELU. Follow the weights.
        if tag_cfg.get("quick_gelu") and "force_quick_gelu" not in kwargs:
            kwargs = dict(kwargs, force_quick_gelu=True)
        return create(base_model, pretrained=pretrained, **kwargs)
    if not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(base_model)
        raise ValueError(f"pretrained={pretrained!r} is neither a known tag of base model {base_model!r} "
                         f"(tags: {tags}), nor an existing checkpoint file or adapter folder")
    if os.path.isdir(pretrained):
        raise ValueError(f"pretrained={pretrained!r} is a folder without adapter_config.json; "
                         "give a checkpoint file or an adapter folder")
    try:
        return create(base_model, pretrained=pretrained, **kwargs)
    except Exception as e:  # torch.load/safetensors/state_dict errors surface from deep inside
        raise ValueError(f"could not load base checkpoint {pretrained!r} into {base_model!r}: "
                         f"{type(e).__name__}: {e}") from e


def create_tclip_model(model_name: str, pretrained: Optional[str] = None, *,
                       lam: Optional[float] = None, fusion: Optional[str] = None,
                       lora: Union[None, dict, LoRAConfig] = None, base_pretrained: Optional[str] = None,
                       strict_base: bool = True, branches: Optional[List[str]] = None,
                       **kwargs) -> DualLoRAFusion:
    """Build a registered T-CLIP model.

    Args:
        model_name: a T-CLIP name (``tclip-dual``, ``tclip-tiny-global``, ...).
        pretrained: an OpenCLIP tag of the base (``'openai'``), a base checkpoint file, an adapter
            folder (its recorded base weights are loaded, then the adapters), or None (random base).
        lam: fusion weight of the global branch (default from the config, 0.7).
        fusion: ``'feature'`` or ``'score'``.
        lora: LoRA settings overriding the config's (dict of :class:`LoRAConfig` fields or the object).
        base_pretrained: base weights to use under an adapter folder instead of the recorded ones.
        strict_base: refuse adapters whose recorded base fingerprint differs from the loaded base.
        branches: branch names overriding the config's (e.g. ``['mixed']``).
        **kwargs: passed to ``open_clip.create_model`` for the base (precision, device, cache_dir, ...).
    """
    cfg = get_tclip_config(model_name)
    if branches is not None:
        cfg["branches"] = list(branches)
    if kwargs.pop("jit", False):
        raise ValueError("T-CLIP models do not support jit=True")
    output_dict = bool(kwargs.pop("output_dict", None))
    adapters = adapter_folder(pretrained) if pretrained is not None else None
    base_weights = pretrained
    lora_cfg = LoRAConfig.from_dict(cfg["lora"])
    if adapters is not None:
        saved = read_adapter_config(adapters)
        if saved["base_model"] != cfg["base_model"]:
            raise AdapterError(f"adapter {adapters} was trained on base {saved['base_model']!r}, "
                               f"{model_name!r} uses {cfg['base_model']!r}")
        base_weights = base_pretrained if base_pretrained is not None else saved.get("base_pretrained")
        lora_cfg = LoRAConfig.from_dict(saved["lora"])
        if base_weights is None:
            strict_base = False  # adapters saved on a random base cannot be matched again
    elif base_pretrained is not None:
        raise ValueError("base_pretrained= only applies when pretrained= is an adapter folder")
    if isinstance(lora, LoRAConfig):
        lora_cfg = lora
    elif lora:
        lora_cfg = LoRAConfig.from_dict({**lora_cfg.to_dict(), **lora})
    base = _create_base(cfg["base_model"], base_weights, kwargs)
    model = DualLoRAFusion(
        base, branches=cfg["branches"], lora=lora_cfg,
        lam=cfg.get("lam", 0.7) if lam is None else lam,
        fusion=fusion or cfg.get("fusion", "feature"),
        train_logit_scale=cfg.get("train_logit_scale", True),
        output_dict=output_dict,
    )
    # a local checkpoint is recorded by absolute path, so adapter folders load from any working directory
    recorded = os.path.abspath(base_weights) if base_weights and os.path.isfile(base_weights) else base_weights
    model.tclip_info = {"model_name": model_name, "base_model": cfg["base_model"], "base_pretrained": recorded}
    if adapters is not None:
        saved_branches = saved["branches"]
        mapping = {b: b for b in saved_branches if b in model.branches}
        if not mapping and len(saved_branches) == 1 and len(model.branches) == 1:
            # a single-branch adapter trained under another name (e.g. 'mixed') into a single-branch model
            mapping = {saved_branches[0]: model.branches[0]}
        if not mapping:
            raise AdapterError(f"adapter {adapters} holds branches {saved_branches}; "
                               f"{model_name!r} has {list(model.branches)}")
        load_adapters(model, adapters, mapping, strict_base=strict_base)
    return model


def create_model(model_name: str, pretrained: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """``open_clip.create_model`` that also knows T-CLIP names; stock names go to OpenCLIP unchanged."""
    if model_name in _TCLIP_CONFIGS:
        return create_tclip_model(model_name, pretrained, **kwargs)
    # Trained baselines that are not plain OpenCLIP weights (docs/baselines.md): 'clip-adapter' is a
    # frozen base + adapter folder; the folder records the base, so the name carries no architecture.
    from .baselines import BASELINE_MODELS, CLIP_ADAPTER_MODEL, clip_adapter_folder, exported_with_quick_gelu
    if model_name in BASELINE_MODELS:
        return BASELINE_MODELS[model_name](pretrained, **kwargs)
    if isinstance(pretrained, (str, os.PathLike)) and clip_adapter_folder(pretrained) is not None:
        raise ValueError(f"pretrained={pretrained!r} is a CLIP-Adapter folder; load it with "
                         f"create_model({CLIP_ADAPTER_MODEL!r}, pretrained=...), not {model_name!r}")
    # full/declip exports of an OpenAI-initialised base record that they ran with QuickGELU
    if "force_quick_gelu" not in kwargs and exported_with_quick_gelu(pretrained):
        kwargs = dict(kwargs, force_quick_gelu=True)
    return _original_create_model()(model_name, pretrained, **kwargs)


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 1.0, dropout: float = 0.0,
             targets=("q", "k", "v"), towers: str = "both", last_k_blocks: Optional[int] = None,
             branches=("global",), lam: float = 0.7, fusion: str = "feature") -> DualLoRAFusion:
    """Apply the T-CLIP LoRA recipe to any OpenCLIP ViT model (in place) and wrap it.

    Returns:
        A :class:`DualLoRAFusion` whose only trainable parameters are the LoRA matrices and the
        per-branch temperatures.
    """
    config = LoRAConfig(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(targets), towers=towers,
                        last_k_blocks=last_k_blocks)
    return DualLoRAFusion(model, branches=branches, lora=config, lam=lam, fusion=fusion,
                          output_dict=bool(getattr(model, "output_dict", False)))


@functools.wraps(oc_factory.create_model)
def _patched_create_model(model_name, pretrained=None, **kwargs):
    return create_model(model_name, pretrained, **kwargs)


_patched_create_model._open_clip_thermal = True


def install() -> None:
    """Register configs with OpenCLIP and route ``create_model`` through :func:`create_model` (idempotent)."""
    global _ORIGINAL_CREATE_MODEL
    _scan_tclip_configs()
    if str(MODEL_CONFIG_DIR) not in map(str, oc_factory._MODEL_CONFIG_PATHS):
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    if getattr(oc_factory.create_model, "_open_clip_thermal", False):
        return
    _ORIGINAL_CREATE_MODEL = oc_factory.create_model
    oc_factory.create_model = _patched_create_model
    open_clip.create_model = _patched_create_model


def uninstall() -> None:
    """Restore OpenCLIP's own ``create_model`` (the JSON configs stay registered)."""
    global _ORIGINAL_CREATE_MODEL
    if _ORIGINAL_CREATE_MODEL is None:
        return
    oc_factory.create_model = _ORIGINAL_CREATE_MODEL
    open_clip.create_model = _ORIGINAL_CREATE_MODEL
    _ORIGINAL_CREATE_MODEL = None


def is_installed() -> bool:
    """Whether OpenCLIP's ``create_model`` currently routes through open_clip_thermal."""
    return bool(getattr(oc_factory.create_model, "_open_clip_thermal", False))

"""T-CLIP model names: what ``open_clip.create_model`` builds for them, behind the seam in ``seam.py``.

OpenCLIP (3.x) has no plug-in hook for model classes: ``open_clip.factory.create_model`` builds
``CLIP``/``CustomTextCLIP``/``CoCa`` in a fixed if/else. Two public seams are used instead:

1. ``open_clip.add_model_config`` registers our architecture JSONs (``model_configs/``, pure OpenCLIP
   schema), so ``list_models``, ``get_tokenizer`` and CLIP_benchmark know ``tclip-*`` names.
2. :func:`install` (``seam.install``) wraps ``open_clip.factory.create_model`` (and the package-level alias
   ``open_clip.create_model``). ``create_model_and_transforms`` and ``create_model_from_pretrained``
   look ``create_model`` up in the factory module at call time, and so does ``open_clip_train``, so
   everything that creates models goes through the wrapper. The wrapper hands every name that is not a
   T-CLIP name to the original untouched; T-CLIP names build the plain base CLIP through the original
   (weights loaded strictly by OpenCLIP), then inject LoRA (``tclip_configs/``: branches, LoRA, fusion).

:func:`install` runs when both ``open_clip_thermal`` and OpenCLIP are imported (``seam.py``:
at ``import open_clip_thermal`` if OpenCLIP is loaded, else right after ``import open_clip``); it
is idempotent and :func:`uninstall` reverts it.
"""
import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

from . import seam
from .contracts import DEFAULT_LAM, FUSION_FEATURE, FUSION_MODES, GLOBAL, TCLIP_CUSTOM_PREFIX
from .adapters import CONFIG_NAME, AdapterError, adapter_folder, load_adapters, read_adapter_config
from .hub import resolve_pretrained as resolve_hub_pretrained
from .base_model import FORCE_GELU, Provenance, build_base, original_create_model, resolve_activation
from .model import DualLoRAFusion
from .lora import LoRAConfig

_HERE = Path(__file__).parent
MODEL_CONFIG_DIR = seam.MODEL_CONFIG_DIR
TCLIP_CONFIG_DIR = _HERE / "tclip_configs"

_TCLIP_CONFIGS: Dict[str, dict] = {}


def _scan_tclip_configs() -> None:
    for path in sorted(TCLIP_CONFIG_DIR.glob("*.json")):
        _TCLIP_CONFIGS[path.stem] = json.loads(path.read_text())


_scan_tclip_configs()


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


def unregister_tclip_model(name: str) -> None:
    """Forget a name added with :func:`register_tclip_model` (a no-op for an unknown name)."""
    _TCLIP_CONFIGS.pop(name, None)


def _adapter_folders(pretrained) -> List[Path]:
    """The adapter folders ``pretrained`` names: none, one folder, or ``'GLOBAL_DIR+FG_DIR'``."""
    if pretrained is None:
        return []
    folder = adapter_folder(pretrained)
    if folder is not None:
        return [folder]
    text = str(pretrained)
    if "+" not in text or os.path.exists(text):
        return []
    folders = []
    for part in text.split("+"):
        folder = adapter_folder(part.strip()) if part.strip() else None
        if folder is None:
            raise AdapterError(f"pretrained={text!r}: {part.strip()!r} is not an adapter folder "
                               "(the 'GLOBAL_DIR+FG_DIR' form joins one single-branch folder per branch)")
        folders.append(folder)
    return folders


def _branch_mapping(model_name: str, model: DualLoRAFusion, folders: List[Path], configs: List[dict],
                    allow_zero_branch: bool) -> List[Dict[str, str]]:
    """Per folder, saved branch -> model branch; refuses to leave a model branch untrained silently."""
    if len(folders) > 1:
        if len(folders) != len(model.branches):
            raise AdapterError(f"{len(folders)} adapter folders for {model_name!r}, which has "
                               f"{len(model.branches)} branches {list(model.branches)}: give one per branch")
        mappings = []
        for folder, config, target in zip(folders, configs, model.branches):
            if len(config["branches"]) != 1:
                raise AdapterError(f"adapter {folder} holds branches {config['branches']}; the "
                                   "'GLOBAL_DIR+FG_DIR' form joins single-branch folders")
            mappings.append({config["branches"][0]: target})
        return mappings
    saved = configs[0]["branches"]
    mapping = {b: b for b in saved if b in model.branches}
    if not mapping and len(saved) == 1 and len(model.branches) == 1:
        # a single-branch adapter trained under another name (e.g. 'mixed') into a single-branch model
        mapping = {saved[0]: model.branches[0]}
    if not mapping:
        raise AdapterError(f"adapter {folders[0]} holds branches {saved}; {model_name!r} has {list(model.branches)}")
    missing = [b for b in model.branches if b not in mapping.values()]
    if missing and not allow_zero_branch:
        form = "+".join(f"{b.upper()}_DIR" for b in model.branches)
        raise AdapterError(
            f"adapter {folders[0]} holds only branch(es) {saved}, but {model_name!r} also needs {missing}: "
            f"that branch would keep B = 0 (the plain base) and be fused in silently. Give one folder per "
            f"branch as pretrained='{form}', or pass allow_zero_branch=True to fuse with an untrained branch "
            "on purpose")
    return [mapping]


def _recorded_activation(folders: List[Path], configs: List[dict]) -> Optional[str]:
    """The activation the adapter folders were trained with (None: not recorded, or no folder)."""
    recorded = {config.get("activation") for config in configs} - {None}
    if len(recorded) > 1:
        raise AdapterError(f"adapter folders {[str(f) for f in folders]} were trained with different activations "
                           f"{sorted(recorded)}; they cannot share one base")
    return recorded.pop() if recorded else None


def _recorded_fusion(folders: List[Path], configs: List[dict], key: str) -> Any:
    """The ``lam`` or ``fusion`` the adapter folders record (None: none records one).

    Folders that disagree (one single-branch folder per branch, saved by two runs) decide nothing:
    a warning, and None. A value that is no fusion weight in [0, 1] / no fusion mode is refused.
    """
    recorded = {}
    for folder, config in zip(folders, configs):
        value = config.get(key)
        if value is None:
            continue
        if key == "lam" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise AdapterError(f"{folder / CONFIG_NAME}: lam={value!r} is not a fusion weight in [0, 1]")
        if key == "fusion" and value not in FUSION_MODES:
            raise AdapterError(f"{folder / CONFIG_NAME}: fusion={value!r} is not one of {FUSION_MODES}")
        recorded[str(folder)] = value
    if len(set(recorded.values())) > 1:
        warnings.warn(f"adapter folders record different {key} values {recorded}; using the registered "
                      f"model's (pass {key}= to choose)", UserWarning, stacklevel=4)
        return None
    return next(iter(recorded.values()), None)


def _fusion_settings(cfg: dict, folders: List[Path], configs: List[dict], lam: Optional[float],
                     fusion: Optional[str]) -> Tuple[float, str]:
    """``(lam, fusion)`` of a model: the caller's value, else the adapter folders' record, else the
    registered config's, else the defaults (0.7, ``'feature'``)."""
    saved_lam, saved_fusion = (_recorded_fusion(folders, configs, key) for key in ("lam", "fusion"))
    if lam is None:
        lam = saved_lam if saved_lam is not None else cfg.get("lam", DEFAULT_LAM)
    return float(lam), fusion or saved_fusion or cfg.get("fusion", FUSION_FEATURE)


def create_tclip_model(model_name: str, pretrained: Optional[str] = None, *,
                       lam: Optional[float] = None, fusion: Optional[str] = None,
                       lora: Union[None, dict, LoRAConfig] = None, base_pretrained: Optional[str] = None,
                       strict_base: bool = True, branches: Optional[List[str]] = None,
                       allow_zero_branch: bool = False, tclip_config: Optional[dict] = None,
                       **kwargs) -> DualLoRAFusion:
    """Build a registered T-CLIP model.

    Args:
        model_name: a T-CLIP name (``tclip-dual``, ``tclip-tiny-global``, ...).
        pretrained: an OpenCLIP tag of the base (``'openai'``), a base checkpoint file, an adapter
            folder (its recorded base weights are loaded, then the adapters), ``'GLOBAL_DIR+FG_DIR'``
            (one single-branch adapter folder per branch, in the model's branch order), or None
            (random base).
        lam: fusion weight of the global branch; default: the adapter folder's recorded value, else
            the registered config's (0.7 for the shipped names).
        fusion: ``'feature'`` or ``'score'``; default as for ``lam``.
        lora: LoRA settings overriding the config's (dict of :class:`LoRAConfig` fields or the object).
        base_pretrained: base weights to use under an adapter folder instead of the recorded ones.
        strict_base: refuse adapters whose recorded base fingerprint differs from the loaded base.
        branches: branch names overriding the config's (e.g. ``['mixed']``).
        allow_zero_branch: let an adapter folder fill only some branches of the model, the others
            staying at B = 0 (the plain base); refused by default.
        tclip_config: the settings to build with instead of ``model_name``'s registered ones (a name
            rebuilt from its adapter folder's record, :func:`recorded_tclip_config`).
        **kwargs: passed to ``open_clip.create_model`` for the base (precision, device, cache_dir, ...);
            ``force_gelu=True`` builds GELU on QuickGELU weights (see ``base_model``).

    Raises:
        AdapterError: folders that do not fit the model, or that leave a branch untrained.
    """
    cfg = json.loads(json.dumps(tclip_config)) if tclip_config is not None else get_tclip_config(model_name)
    if branches is not None:
        cfg["branches"] = list(branches)
    if kwargs.pop("jit", False):
        raise ValueError("T-CLIP models do not support jit=True")
    output_dict = bool(kwargs.pop("output_dict", None))
    pretrained = resolve_hub_pretrained(pretrained, kwargs.get("cache_dir"))  # hf-hub:ORG/NAME -> its snapshot folder
    folders = _adapter_folders(pretrained)
    base_weights = pretrained
    lora_cfg = LoRAConfig.from_dict(cfg["lora"])
    configs = [read_adapter_config(folder) for folder in folders]
    if folders:
        for folder, saved in zip(folders, configs):
            if saved["base_model"] != cfg["base_model"]:
                raise AdapterError(f"adapter {folder} was trained on base {saved['base_model']!r}, "
                                   f"{model_name!r} uses {cfg['base_model']!r}")
        base_weights = base_pretrained if base_pretrained is not None else configs[0].get("base_pretrained")
        lora_cfg = LoRAConfig.from_dict(configs[0]["lora"])
        if base_weights is None:
            strict_base = False  # adapters saved on a random base cannot be matched again
    elif base_pretrained is not None:
        raise ValueError("base_pretrained= only applies when pretrained= is an adapter folder")
    if isinstance(lora, LoRAConfig):
        lora_cfg = lora
    elif lora:
        lora_cfg = LoRAConfig.from_dict({**lora_cfg.to_dict(), **lora})
    lam, fusion = _fusion_settings(cfg, folders, configs, lam, fusion)
    base = build_base(cfg["base_model"], base_weights, kwargs, _recorded_activation(folders, configs))
    model = DualLoRAFusion(
        base, branches=cfg["branches"], lora=lora_cfg, lam=lam, fusion=fusion,
        train_logit_scale=cfg.get("train_logit_scale", True),
        output_dict=output_dict,
    )
    # a local checkpoint is recorded by absolute path, so adapter folders load from any working directory
    recorded = os.path.abspath(base_weights) if base_weights and os.path.isfile(base_weights) else base_weights
    model.provenance = Provenance(model_name=model_name, base_model=cfg["base_model"], base_pretrained=recorded)
    if folders:
        for folder, mapping in zip(folders, _branch_mapping(model_name, model, folders, configs, allow_zero_branch)):
            load_adapters(model, folder, mapping, strict_base=strict_base)
    return model


# Model kinds other packages add (timm-style): name -> builder(pretrained, **kwargs), and checks on the
# ``pretrained`` of stock names (each returns an error message or None). ``baselines/__init__.py`` fills
# both; the packages named here are imported on the first create_model so that they can.
_MODEL_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED_GUARDS: List[Callable[[str, Any], Optional[str]]] = []
_BUILDER_PACKAGES = ("open_clip_thermal.baselines",)


def register_model_builder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Let ``create_model(name, pretrained, **kwargs)`` build ``name`` with ``builder`` (warns on overwrite)."""
    if name in _MODEL_BUILDERS and _MODEL_BUILDERS[name] is not builder:
        warnings.warn(f"model builder {name!r} registered again; the new one replaces the old", UserWarning,
                      stacklevel=2)
    _MODEL_BUILDERS[name] = builder


def register_pretrained_guard(guard: Callable[[str, Any], Optional[str]]) -> None:
    """Add a check ``guard(model_name, pretrained) -> error message | None`` for stock model names."""
    if guard not in _PRETRAINED_GUARDS:
        _PRETRAINED_GUARDS.append(guard)


def list_model_builders() -> List[str]:
    """Names registered with :func:`register_model_builder` (after importing the packages that do)."""
    _import_builder_packages()
    return sorted(_MODEL_BUILDERS)


def _import_builder_packages() -> None:
    for package in _BUILDER_PACKAGES:
        if package not in sys.modules:
            importlib.import_module(package)


def custom_base(model_name: Any) -> Optional[str]:
    """The OpenCLIP base of a derived name ``tclip-custom-<base>`` (what ``train --model <base>`` records),
    or None for any other name."""
    import open_clip
    if not isinstance(model_name, str) or not model_name.startswith(TCLIP_CUSTOM_PREFIX):
        return None
    base = model_name[len(TCLIP_CUSTOM_PREFIX):]
    return base if base in open_clip.list_models() else None


def recorded_tclip_config(model_name: str, pretrained: Any, cache_dir: Optional[str] = None) -> Optional[dict]:
    """T-CLIP settings of an unregistered ``model_name`` rebuilt from the adapter folder(s) ``pretrained``
    names, when they record that name (a ``tclip-custom-<base>`` run, or a name registered at training
    time in another process): base, branches (in folder order) and LoRA as saved. None otherwise."""
    folders = _adapter_folders(resolve_hub_pretrained(pretrained, cache_dir))
    configs = [read_adapter_config(folder) for folder in folders]
    if not configs or any(c.get("model_name") != model_name for c in configs):
        return None
    if len({json.dumps(c.get("lora"), sort_keys=True) for c in configs}) > 1 or \
            len({c.get("base_model") for c in configs}) > 1:
        raise AdapterError(f"pretrained={pretrained!r}: the folders of {model_name!r} record different bases or "
                           "LoRA settings")
    branches = [branch for c in configs for branch in c["branches"]]
    return {"base_model": configs[0]["base_model"], "branches": branches, "lora": configs[0]["lora"]}


def create_model(model_name: str, pretrained: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """``open_clip.create_model`` that also knows T-CLIP names; stock names go to OpenCLIP unchanged.

    An unregistered name that the adapter folder(s) in ``pretrained`` record (``tclip-custom-<base>``
    from ``train --model <base>``) is rebuilt from that record for this call.
    """
    if model_name in _TCLIP_CONFIGS:
        return create_tclip_model(model_name, pretrained, **kwargs)
    recorded = recorded_tclip_config(model_name, pretrained, kwargs.get("cache_dir")) \
        if isinstance(model_name, str) and model_name.startswith("tclip-") and pretrained is not None else None
    if recorded is not None:  # built from the record; the name is not registered (no global state)
        return create_tclip_model(model_name, pretrained, tclip_config=recorded, **kwargs)
    _import_builder_packages()
    if model_name in _MODEL_BUILDERS:  # e.g. 'clip-adapter' (docs/baselines.md): no OpenCLIP architecture
        return _MODEL_BUILDERS[model_name](pretrained, **kwargs)
    for guard in _PRETRAINED_GUARDS:
        problem = guard(model_name, pretrained)
        if problem:
            raise ValueError(problem)
    # Stock names keep OpenCLIP's own behaviour (it warns on a QuickGELU mismatch), except our exports:
    # full/declip/merged exports of an OpenAI-initialised base record that they ran with QuickGELU.
    if isinstance(pretrained, (str, os.PathLike)) and os.path.isfile(pretrained):
        kwargs = resolve_activation(model_name, pretrained, kwargs)
    else:
        kwargs.pop(FORCE_GELU, None)  # stock weights: OpenCLIP's config already decides the activation
    return original_create_model()(model_name, pretrained, **kwargs)


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 1.0, dropout: float = 0.0,
             targets=("q", "k", "v"), towers: str = "both", last_k_blocks: Optional[int] = None,
             branches=(GLOBAL,), lam: float = DEFAULT_LAM, fusion: str = FUSION_FEATURE) -> DualLoRAFusion:
    """Apply the T-CLIP LoRA recipe to any OpenCLIP ViT model (in place) and wrap it.

    Returns:
        A :class:`DualLoRAFusion` whose only trainable parameters are the LoRA matrices and the
        per-branch temperatures.
    """
    config = LoRAConfig(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(targets), towers=towers,
                        last_k_blocks=last_k_blocks)
    return DualLoRAFusion(model, branches=branches, lora=config, lam=lam, fusion=fusion,
                          output_dict=bool(getattr(model, "output_dict", False)))


def install() -> None:
    """Register configs with OpenCLIP and route ``create_model`` through :func:`create_model` (idempotent)."""
    _scan_tclip_configs()
    seam.install()


uninstall = seam.uninstall
is_installed = seam.is_installed

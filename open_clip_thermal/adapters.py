"""Adapter files: LoRA weights (+ temperature) of each branch, as PEFT saves them.

Layout of an adapter folder::

    adapter_config.json                 base model, base weights, LoRA settings, branches, fusion
    global/adapter_model.safetensors    one file per branch; keys without the branch name
    fine_grained/adapter_model.safetensors

Only LoRA matrices and the branch's ``logit_scale`` are stored (a few MB for ViT-B-16), never the
frozen backbone, never with pickle. :func:`export_merged` writes one branch folded into the base
weights as a plain OpenCLIP checkpoint that stock ``open_clip.create_model`` loads.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .base_model import activation_of, check_activation, export_metadata, provenance_of
# the file layer's names, re-exported: ``from open_clip_thermal.adapters import AdapterError`` keeps working
from .files import (CONFIG_NAME, WEIGHTS_NAME, AdapterError, atomic_write, atomic_write_json, check_finite,
                    read_config_file, read_weights_file)
from .model import DualLoRAFusion
from .lora import LoRAConfig
from .version import __version__

FORMAT = "open_clip_thermal.lora_adapter"
PathLike = Union[str, os.PathLike]
# model attribute holding the training run's thermal normalisation (data.decode.ThermalNorm.to_dict());
# the trainer sets it, adapter_config records it, the benchmark decodes the test set with it
THERMAL_NORM_ATTR = "tclip_thermal_norm"
# the same record in the safetensors header of plain exports (full, declip, merged LoRA), as JSON text
THERMAL_NORM_KEY = "thermal_norm"


def base_fingerprint(model: nn.Module) -> str:
    """A cheap hash of the frozen base weights: names, shapes and the first 1024 values of each tensor.

    Enough to tell two different pretrained weights of one architecture apart without hashing the
    whole backbone on every save.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.base.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().flatten()[:1024].to("cpu", torch.float32).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def check_saved_base(config: dict, model: nn.Module, what: str, strict_base: bool = True) -> None:
    """Refuse a saved folder whose base does not fit ``model.base``: another activation (always), or
    other base weights by the recorded fingerprint (unless ``strict_base=False``).

    Args:
        config: the folder's parsed ``adapter_config.json`` (``activation``, ``base_fingerprint``, ...).
        model: a wrapper with the base under ``model.base`` (T-CLIP, CLIP-Adapter).
        what: the folder as error messages name it (``'adapter runs/x/adapters'``).

    Raises:
        AdapterError: naming ``what`` and the mismatch.
    """
    try:
        check_activation(config.get("activation"), model.base, what)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    fingerprint = config.get("base_fingerprint")
    if strict_base and fingerprint and fingerprint != base_fingerprint(model):
        raise AdapterError(f"{what} was saved on other base weights than this model's "
                           f"(base_pretrained={config.get('base_pretrained')!r}); load the same base "
                           "weights or pass strict_base=False")


def _branch_tensors(model: DualLoRAFusion, branch: str) -> Dict[str, torch.Tensor]:
    suffix = "." + branch
    tensors = {}
    for name, param in model.base.named_parameters():
        if "lora_" in name and name.endswith(suffix):
            tensors[name[: -len(suffix)]] = param.detach().to("cpu").contiguous()
    tensors["logit_scale"] = model.logit_scales[branch].detach().to("cpu").reshape(1).contiguous()
    return tensors


def adapter_config(model: DualLoRAFusion, branches: Iterable[str]) -> dict:
    """The JSON description saved next to the weights."""
    import open_clip
    provenance = provenance_of(model)
    return {
        "format": FORMAT,
        "model_name": provenance.model_name,
        "base_model": provenance.base_model,
        "base_pretrained": provenance.base_pretrained,
        "base_fingerprint": base_fingerprint(model),
        "activation": activation_of(model.base),  # QuickGELU or GELU: the weights alone cannot tell
        "lora": model.lora_config.to_dict(),
        "branches": list(branches),
        "lam": model.lam,
        "fusion": model.fusion,
        THERMAL_NORM_KEY: getattr(model, THERMAL_NORM_ATTR, None),  # None: not recorded (not trained here)
        "open_clip_version": open_clip.__version__,
        "open_clip_thermal_version": __version__,
    }


def save_adapters(model: DualLoRAFusion, folder: PathLike, branches: Optional[Iterable[str]] = None) -> Path:
    """Write the LoRA weights of ``branches`` (default: all) and the config to ``folder``.

    Files are written to temporary names and renamed, so a crash never leaves half a file; non-finite
    weights are refused before any file is written.
    """
    folder = Path(folder)
    names = list(model.branches if branches is None else branches)
    for b in names:
        if b not in model.branches:
            raise AdapterError(f"model has no branch {b!r} (branches: {list(model.branches)})")
        check_finite(_branch_tensors(model, b), f"adapter branch {b!r} to {folder}")
    for b in names:
        tensors = _branch_tensors(model, b)
        atomic_write(folder / b / WEIGHTS_NAME,
                      lambda tmp, t=tensors: save_file(t, tmp, metadata={"format": FORMAT, "branch": b}))
    atomic_write_json(folder / CONFIG_NAME, adapter_config(model, names))
    return folder


def adapter_folder(path: PathLike) -> Optional[Path]:
    """The adapter folder ``path`` points at (the folder, its config or a weights file), or None."""
    p = Path(path)
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        return p
    if p.is_file() and p.name == CONFIG_NAME:
        return p.parent
    if p.is_file() and p.name == WEIGHTS_NAME:
        for candidate in (p.parent, p.parent.parent):
            if (candidate / CONFIG_NAME).is_file():
                return candidate
    return None


def read_adapter_config(folder: PathLike) -> dict:
    """Parse and check ``adapter_config.json``; raises :class:`AdapterError` naming the file."""
    return read_config_file(folder, FORMAT, ("base_model", "lora", "branches"), "open_clip_thermal adapter")


def load_adapters(model: DualLoRAFusion, folder: PathLike, branches: Optional[Mapping[str, str]] = None,
                  strict_base: bool = True, as_branch: Optional[str] = None) -> DualLoRAFusion:
    """Load branch weights from an adapter folder into ``model``, in place.

    Args:
        model: a T-CLIP model with the same base architecture and LoRA settings.
        folder: adapter folder (or its config / weights file).
        branches: saved branch -> model branch (default: every saved branch into the same name).
            ``{'global': 'global'}`` loads one branch of a dual folder; a single-branch folder can
            go into another branch of a dual model this way (also the cross-initialisation ablation).
        strict_base: refuse adapters saved on other base weights (fingerprint mismatch).
        as_branch: shorthand for a single-branch folder: load its one branch into this model branch.

    Returns:
        ``model``.
    """
    folder_path = adapter_folder(folder)
    if folder_path is None:
        raise AdapterError(f"{folder} is not an adapter folder (expected {CONFIG_NAME} and "
                           f"<branch>/{WEIGHTS_NAME})")
    config = read_adapter_config(folder_path)
    base_model = provenance_of(model).base_model
    if base_model and config["base_model"] != base_model:
        raise AdapterError(f"adapter {folder_path} was trained on base {config['base_model']!r}, "
                           f"this model's base is {base_model!r}")
    saved_lora = LoRAConfig.from_dict(config["lora"])
    if saved_lora != model.lora_config:
        raise AdapterError(f"adapter {folder_path} has LoRA settings {saved_lora.to_dict()}, the model has "
                           f"{model.lora_config.to_dict()}; create the model with matching settings")
    check_saved_base(config, model, f"adapter {folder_path}", strict_base)
    if as_branch is not None:
        if branches is not None or len(config["branches"]) != 1:
            raise AdapterError(f"as_branch needs a single-branch adapter folder and no branches= mapping; "
                               f"{folder_path} holds {config['branches']}")
        branches = {config["branches"][0]: as_branch}
    mapping = dict(branches) if branches is not None else {b: b for b in config["branches"]}
    for saved, target in mapping.items():
        if saved not in config["branches"]:
            raise AdapterError(f"adapter {folder_path} has no branch {saved!r} (has {config['branches']})")
        if target not in model.branches:
            raise AdapterError(f"model has no branch {target!r} (branches: {list(model.branches)})")
        _load_branch(model, folder_path / saved / WEIGHTS_NAME, target)
    keep_thermal_norm(model, config)
    return model


def keep_thermal_norm(model: nn.Module, config: Mapping) -> None:
    """Carry a loaded folder's thermal normalisation record over to ``model`` (unless it has one), so
    saving or pushing the loaded model again keeps it."""
    record = config.get(THERMAL_NORM_KEY)
    if record is not None and getattr(model, THERMAL_NORM_ATTR, None) is None:
        setattr(model, THERMAL_NORM_ATTR, record)


def thermal_norm_metadata(model: nn.Module) -> Dict[str, str]:
    """The safetensors header entry recording ``model``'s thermal normalisation ({} when it has none)."""
    record = getattr(model, THERMAL_NORM_ATTR, None)
    return {} if record is None else {THERMAL_NORM_KEY: json.dumps(record, sort_keys=True)}


def recorded_thermal_norm(weights: Optional[PathLike]) -> Optional[dict]:
    """The thermal normalisation recorded with ``weights`` (``ThermalNorm.to_dict()`` form), or None.

    The one rule for every reader (benchmark, classify, search):

    * ``'hf-hub:ORG/NAME[@REVISION]'``: the repo's snapshot folder, by :func:`hub.resolve_pretrained`
      (the same download and cache as loading the model), then as a folder;
    * an adapter or CLIP-Adapter folder, its ``adapter_config.json`` or a weights file inside it: the
      config's ``thermal_norm``;
    * another ``.safetensors`` file (a ``full``/``declip`` or merged export): its header's ``thermal_norm``;
    * anything else (an OpenCLIP tag, a ``://`` URL, a ``.pt`` checkpoint, a missing path): None.

    Raises:
        AdapterError: naming the file, when the config or header cannot be read or is not valid JSON
            (never silently the default normalisation); or the Hub repo holds no adapter config.
    """
    if weights is None or "://" in str(weights):
        return None
    from .hub import resolve_pretrained  # hub imports this module, so lazily; other values pass unchanged
    weights = resolve_pretrained(weights)
    path = Path(weights)
    if path.is_dir():
        config = path / CONFIG_NAME
        return _config_record(config) if config.is_file() else None
    if not path.is_file():
        return None
    if path.name == CONFIG_NAME:
        return _config_record(path)
    if path.name == WEIGHTS_NAME:  # a CLIP-Adapter's weights, or a LoRA branch's one folder down
        for folder in (path.parent, path.parent.parent):
            if (folder / CONFIG_NAME).is_file():
                return _config_record(folder / CONFIG_NAME)
        return None
    return _header_record(path) if path.suffix == ".safetensors" else None


def _config_record(path: Path) -> Optional[dict]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: invalid JSON or UTF-8
        raise AdapterError(f"cannot read the thermal normalisation record of {path}: {error}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} is not a JSON object (a corrupt adapter config?)")
    return config.get(THERMAL_NORM_KEY)


def _header_record(path: Path) -> Optional[dict]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(THERMAL_NORM_KEY)
        return None if text is None else json.loads(text)
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"cannot read the thermal normalisation record in the header of {path}: {error}") from None


def _load_branch(model: DualLoRAFusion, path: Path, branch: str) -> None:
    tensors = read_weights_file(path, "adapter")
    expected = _branch_tensors(model, branch)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterError(f"adapter weights {path} do not fit the model: {len(missing)} missing keys "
                           f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    params = dict(model.base.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key == "logit_scale":
                target = model.logit_scales[branch]
            else:
                target = params[f"{key}.{branch}"]
            if value.numel() != target.numel() or (key != "logit_scale" and value.shape != target.shape):
                raise AdapterError(f"adapter weights {path}: {key} has shape {tuple(value.shape)}, "
                                   f"the model expects {tuple(target.shape)}")
            target.copy_(value.reshape(target.shape))


def export_merged(model: DualLoRAFusion, branch: Optional[str], path: PathLike) -> Path:
    """Write one branch merged into the base weights as an OpenCLIP checkpoint (``.safetensors``
    or a ``torch.save`` of the state_dict for other suffixes). Load it with
    ``open_clip.create_model(<base model>, pretrained=path)``. A ``.safetensors`` export records the
    activation in its header, so ``open_clip_thermal.create_model`` rebuilds a QuickGELU base as
    QuickGELU; stock OpenCLIP needs ``force_quick_gelu=True`` for those."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.merged_state_dict(branch).items()}
    check_finite(state, f"merged export {path}")
    if path.suffix == ".safetensors":
        metadata = dict(export_metadata(model), method=f"tclip-lora:{branch}", **thermal_norm_metadata(model))
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    else:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path

"""CLIP-Adapter folders: the adapter's weights and how to rebuild the model around them.

Layout (same file names as the LoRA adapter folders, a different ``format``)::

    adapter_config.json          format, base model, base weights and fingerprint, alpha, reduction
    adapter_model.safetensors    adapter.down.weight, adapter.up.weight (never the frozen CLIP)

:func:`create_clip_adapter_model` is what ``open_clip_thermal.create_model('clip-adapter', ...)`` runs.
"""
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Union

from safetensors.torch import save_file

from ..adapters import (THERMAL_NORM_ATTR, THERMAL_NORM_KEY, base_fingerprint, check_saved_base,
                        keep_thermal_norm)
from ..files import (CONFIG_NAME, WEIGHTS_NAME, AdapterError, atomic_write, atomic_write_json, read_config_file,
                     read_weights_file)
from ..base_model import Provenance, activation_of, build_base, provenance_of
from ..version import __version__
from .clip_adapter import DEFAULT_ALPHA, DEFAULT_REDUCTION, ClipAdapterModel

CLIP_ADAPTER_FORMAT = "open_clip_thermal.clip_adapter"
CLIP_ADAPTER_MODEL = "clip-adapter"  # the name open_clip_thermal.create_model knows
DEFAULT_BASE_MODEL = "ViT-B-16"
PathLike = Union[str, os.PathLike]


def clip_adapter_folder(path: PathLike) -> Optional[Path]:
    """The CLIP-Adapter folder ``path`` points at (folder, its config or weights file), or None."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent if p.name in (CONFIG_NAME, WEIGHTS_NAME) else None
    if folder is None or not (folder / CONFIG_NAME).is_file():
        return None
    try:
        return folder if json.loads((folder / CONFIG_NAME).read_text()).get("format") == CLIP_ADAPTER_FORMAT else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None


def read_clip_adapter_config(folder: PathLike) -> dict:
    """Parse and check a CLIP-Adapter ``adapter_config.json``; :class:`AdapterError` names the file."""
    return read_config_file(folder, CLIP_ADAPTER_FORMAT, ("base_model", "alpha", "reduction"), "CLIP-Adapter")


def save_clip_adapter(model: ClipAdapterModel, folder: PathLike) -> Path:
    """Write the adapter weights and config of ``model`` to ``folder`` (each file atomically)."""
    import open_clip
    folder = Path(folder)
    provenance = provenance_of(model)
    tensors = {f"adapter.{k}": v.detach().to("cpu").contiguous() for k, v in model.adapter.state_dict().items()}
    config = {
        "format": CLIP_ADAPTER_FORMAT,
        "model_name": CLIP_ADAPTER_MODEL,
        "base_model": provenance.base_model,
        "base_pretrained": provenance.base_pretrained,
        "base_fingerprint": base_fingerprint(model),
        "activation": activation_of(model.base),
        "alpha": model.alpha,
        "reduction": model.reduction,
        "embed_dim": model.adapter.up.out_features,
        # the training run's thermal decoding, read back by adapters.recorded_thermal_norm (None: not recorded)
        THERMAL_NORM_KEY: getattr(model, THERMAL_NORM_ATTR, None),
        "open_clip_version": open_clip.__version__,
        "open_clip_thermal_version": __version__,
    }
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": CLIP_ADAPTER_FORMAT}))
    atomic_write_json(folder / CONFIG_NAME, config)
    return folder


def load_clip_adapter(model: ClipAdapterModel, folder: PathLike, strict_base: bool = True) -> ClipAdapterModel:
    """Load adapter weights from ``folder`` into ``model`` in place.

    Raises:
        AdapterError: not a CLIP-Adapter folder, other alpha/reduction/base weights, unreadable
            or ill-fitting weights.
    """
    config = read_clip_adapter_config(folder)
    if (config["alpha"], config["reduction"]) != (model.alpha, model.reduction):
        raise AdapterError(f"CLIP-Adapter {folder} has alpha={config['alpha']}, reduction={config['reduction']}; "
                           f"the model has alpha={model.alpha}, reduction={model.reduction}")
    check_saved_base(config, model, f"CLIP-Adapter {folder}", strict_base)
    path = Path(folder) / WEIGHTS_NAME
    tensors = read_weights_file(path, "CLIP-Adapter")
    prefix = "adapter."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = model.adapter.state_dict()
    if set(state) != set(expected) or len(state) != len(tensors):
        raise AdapterError(f"CLIP-Adapter weights {path} hold {sorted(tensors)}; expected "
                           f"{sorted(prefix + k for k in expected)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise AdapterError(f"CLIP-Adapter weights {path}: {prefix}{key} has shape {tuple(value.shape)}, "
                               f"the model expects {tuple(expected[key].shape)} (another base model?)")
    model.adapter.load_state_dict(state)
    keep_thermal_norm(model, config)
    return model


def create_clip_adapter_model(pretrained: Optional[str] = None, *, base_model: Optional[str] = None,
                              base_pretrained: Optional[str] = None, alpha: Optional[float] = None,
                              reduction: Optional[int] = None, strict_base: bool = True,
                              **kwargs) -> ClipAdapterModel:
    """Build a CLIP-Adapter model, from a trained folder or fresh on a base CLIP.

    Args:
        pretrained: a CLIP-Adapter folder (its recorded base model and base weights are loaded, then
            the adapter), or None for a fresh adapter on ``base_model``/``base_pretrained``.
        base_model: OpenCLIP name of the base (default: the folder's, or ViT-B-16).
        base_pretrained: base weights (an OpenCLIP tag or checkpoint file) instead of the recorded ones.
        alpha: residual ratio of a fresh adapter (default 0.2); a folder's own value is always used.
        reduction: bottleneck reduction of a fresh adapter (default 4).
        strict_base: refuse a folder whose recorded base fingerprint differs from the loaded base.
        **kwargs: passed to ``open_clip.create_model`` for the base (precision, device, output_dict, ...).

    Raises:
        AdapterError: ``pretrained`` is not a CLIP-Adapter folder, or the folder does not fit.
    """
    if kwargs.pop("jit", False):
        raise ValueError("CLIP-Adapter models do not support jit=True")
    output_dict = bool(kwargs.pop("output_dict", None))
    config = None
    if pretrained is not None:
        folder = clip_adapter_folder(pretrained)
        if folder is None:
            raise AdapterError(f"pretrained={pretrained!r} is not a CLIP-Adapter folder (expected {CONFIG_NAME} "
                               f"with format {CLIP_ADAPTER_FORMAT!r} and {WEIGHTS_NAME}); train one with "
                               "`python -m open_clip_thermal.train --method clip-adapter`")
        config = read_clip_adapter_config(folder)
        if base_model is not None and base_model != config["base_model"]:
            raise AdapterError(f"CLIP-Adapter {folder} was trained on base {config['base_model']!r}, "
                               f"base_model={base_model!r} was asked for")
        base_model = config["base_model"]
        alpha, reduction = config["alpha"], config["reduction"]
        if base_pretrained is None:
            base_pretrained = config.get("base_pretrained")
            if base_pretrained is None:
                strict_base = False  # saved on a random base: nothing to match
    base_model = base_model or DEFAULT_BASE_MODEL
    with warnings.catch_warnings():
        if config is not None:  # a random base under a folder is what was trained; no need to warn
            warnings.simplefilter("ignore", UserWarning)
        base = build_base(base_model, base_pretrained, kwargs, config.get("activation") if config else None)
    model = ClipAdapterModel(base, alpha=DEFAULT_ALPHA if alpha is None else alpha,
                             reduction=DEFAULT_REDUCTION if reduction is None else reduction, output_dict=output_dict)
    model.provenance = Provenance(model_name=CLIP_ADAPTER_MODEL, base_model=base_model, base_pretrained=base_pretrained)
    if config is not None:
        load_clip_adapter(model, folder, strict_base=strict_base)
    return model


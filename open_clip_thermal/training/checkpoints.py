"""Small, resumable training checkpoints and adapter folders written at every save.

open_clip_train saves ``{"epoch", "name", "state_dict", "optimizer", "scaler"}`` with the full model
state. For LoRA runs the frozen backbone is never saved: ``state_dict`` keeps only trainable tensors,
and the RNG states of the process are added so a resumed run continues the same random stream. On
resume the full state dict is rebuilt from the live model (whose frozen weights came from the same
``--pretrained``) before open_clip_train loads it strictly; the slim checkpoint records a fingerprint of
those frozen weights, and a resume on other base weights is refused.

Every checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain containers only: a
pickled object that would run code is refused, whatever torch's default), written atomically, and
written only when every tensor in it is finite.
"""
import pickle
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ..files import first_non_finite  # re-exported: the trainer's hooks check checkpoints with it

MARKER = "open_clip_thermal"


class ResumeError(ValueError):
    """A checkpoint that cannot be read, is unsafe to unpickle, or does not fit this run."""


class NonFiniteWeightsError(RuntimeError):
    """Training produced NaN/inf weights; nothing with them is written."""


def load_checkpoint(path: str, map_location=None) -> Any:
    """``torch.load(weights_only=True)`` of ``path`` (local or fsspec URL), with a :class:`ResumeError`
    naming the file when it is truncated, corrupt, or holds objects that would run code on load."""
    import fsspec
    try:
        with fsspec.open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip().split(". ")[0] for line in str(e).splitlines() if "Unsupported" in line),
                      "not a weights-only checkpoint")
        raise ResumeError(f"refusing to load checkpoint {path}: it holds objects other than tensors and plain "
                          f"containers, which could run code when unpickled ({detail}); open_clip_thermal "
                          "loads checkpoints with torch.load(weights_only=True) only") from None
    except FileNotFoundError:
        raise ResumeError(f"checkpoint {path} does not exist") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "the file ends early"
        raise ResumeError(f"checkpoint {path} cannot be read (truncated or corrupt?): "
                          f"{type(e).__name__}: {first}") from None


def model_base_fingerprint(model: nn.Module) -> Optional[str]:
    """:func:`open_clip_thermal.adapters.base_fingerprint` of a model with a frozen ``base``, else None."""
    if not isinstance(getattr(model, "base", None), nn.Module):
        return None
    from ..adapters import base_fingerprint
    return base_fingerprint(model)


def check_base(checkpoint: Dict[str, Any], model: nn.Module, path: str) -> None:
    """Refuse a slim checkpoint written on other frozen base weights than ``model``'s."""
    saved = checkpoint[MARKER].get("base_fingerprint")
    live = model_base_fingerprint(model)
    if saved and live and saved != live:
        raise ResumeError(f"resume checkpoint {path} was trained on other base weights than this run's "
                          f"--pretrained (checkpoint base {saved}, this run's {live}); the slim checkpoint holds "
                          "only the LoRA/adapter tensors, so resume with the --pretrained of the run that wrote it")


def optimizer_tensors(optimizer_state: Dict[str, Any]):
    """``(name, tensor)`` of an optimizer ``state_dict``'s per-parameter state."""
    for index, state in (optimizer_state or {}).get("state", {}).items():
        for key, value in state.items():
            yield f"optimizer state {index}.{key}", value


def rng_state() -> Dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python RNG states, in types ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def slim_checkpoint(checkpoint: Dict[str, Any], model: nn.Module, step: Optional[int] = None) -> Dict[str, Any]:
    """A copy of an open_clip_train checkpoint keeping only ``model``'s trainable tensors, plus RNG states."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = {k: v for k, v in checkpoint["state_dict"].items() if _strip_module(k) in trainable}
    if len(state) != len(trainable):
        raise RuntimeError(f"checkpoint holds {len(state)} of the model's {len(trainable)} trainable tensors")
    return dict(checkpoint, state_dict=state, **{MARKER: {"slim": True, "rng": rng_state(), "step": step,
                                                          "base_fingerprint": model_base_fingerprint(model)}})


def is_slim(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get(MARKER), dict) and checkpoint[MARKER].get("slim")


def expand_checkpoint(checkpoint: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """Rebuild a full ``state_dict`` from the live ``model`` and the checkpoint's trainable tensors."""
    saved = checkpoint["state_dict"]
    prefixed = any(k.startswith("module.") for k in saved)
    full = {("module." + k if prefixed else k): v for k, v in model.state_dict().items()}
    unknown = [k for k in saved if k not in full]
    if unknown:
        raise RuntimeError(f"resume checkpoint has tensors the model lacks, e.g. {unknown[:3]}: "
                           "was it written with other --branch/--lora-* settings?")
    full.update(saved)
    return dict(checkpoint, state_dict=full)

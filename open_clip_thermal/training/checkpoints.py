"""Small, resumable training checkpoints and adapter folders written at every save.

open_clip_train saves ``{"epoch", "name", "state_dict", "optimizer", "scaler"}`` with the full model
state. For LoRA runs the frozen backbone is never saved: ``state_dict`` keeps only trainable tensors,
and the RNG states of the process are added so a resumed run continues the same random stream. On
resume the full state dict is rebuilt from the live model (whose frozen weights came from the same
``--pretrained``) before open_clip_train loads it strictly.
"""
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

MARKER = "open_clip_thermal"


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
    return dict(checkpoint, state_dict=state, **{MARKER: {"slim": True, "rng": rng_state(), "step": step}})


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

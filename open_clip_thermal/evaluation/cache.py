"""On-disk cache of embeddings, keyed by a hash of the weights, the data and what was encoded."""
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..files import atomic_write, atomic_write_text


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append '.npy' to a name
        np.save(handle, array)


def hash_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor: changes whenever a weight does."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Hash the raw bytes; a uint8 view works for every dtype, bfloat16 included.
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """Stable short hash of JSON-serialisable ``parts``."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class EmbeddingCache:
    """``<root>/<key>.npy`` float32 arrays with a ``<key>.json`` note of what they hold.

    Entries are also kept in memory for the current run.

    Args:
        root: cache folder; None keeps nothing on disk (every run encodes again).
    """

    def __init__(self, root: Optional[os.PathLike]):
        self.root = Path(root) if root is not None else None
        self._memory: dict = {}  # this run's entries, so variants sharing weights encode once
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def load(self, key: str) -> Optional[torch.Tensor]:
        """The cached tensor for ``key``, or None when absent or unreadable."""
        if key in self._memory:
            return self._memory[key]
        if self.root is None:
            return None
        path = self.root / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError):  # truncated file from an interrupted run: encode again
            return None

    def save(self, key: str, tensor: torch.Tensor, note: Mapping[str, Any]) -> None:
        """Store ``tensor`` under ``key``; written to a temp file first so readers never see half a file."""
        self._memory[key] = tensor
        if self.root is None:
            return
        array = tensor.detach().cpu().float().numpy()
        atomic_write(self.root / f"{key}.npy", lambda tmp: _save_npy(tmp, array))
        atomic_write_text(self.root / f"{key}.json", json.dumps(dict(note), indent=2, default=str))

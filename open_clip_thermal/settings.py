"""Settings of the training methods and the choices of their flags, in the standard library only.

The trainer's parser (``python -m open_clip_thermal.train --help``) needs every default and choice,
but must not import torch; the modules that use the settings (``lora.py``, ``baselines/``,
``training/hooks.py``) import them from here and re-export them.
"""
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

from .contracts import FINE_GRAINED, GLOBAL, MIXED

# ----------------------------------------------------------------------------- LoRA
TOWERS = ("vision", "text", "both")
TARGETS = ("q", "k", "v", "out", "mlp")


@dataclass
class LoRAConfig:
    """Where and how LoRA is applied. Defaults are the T-CLIP paper's."""
    rank: int = 8  # r of every low-rank update
    alpha: float = 1.0  # update scaled by alpha / rank
    dropout: float = 0.0  # dropout on the LoRA input only
    targets: Tuple[str, ...] = ("q", "k", "v")  # subset of TARGETS
    towers: str = "both"  # vision | text | both
    last_k_blocks: Optional[int] = None  # adapt only the last k blocks of each tower (None: all)

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets {list(self.targets)} invalid; choose from {list(TARGETS)}")
        if self.towers not in TOWERS:
            raise ValueError(f"LoRA towers {self.towers!r} invalid; choose from {list(TOWERS)}")
        if self.last_k_blocks is not None and self.last_k_blocks < 1:
            raise ValueError(f"last_k_blocks must be >= 1 or None, got {self.last_k_blocks}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LoRA config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------- training methods
BOTH = "both"  # --branch both: the two branches at once
BRANCH_MODES = (GLOBAL, FINE_GRAINED, MIXED, BOTH)
METHODS = ("lora", "full", "clip-adapter", "declip")

# ----------------------------------------------------------------------------- baselines
CLIP_ADAPTER_ALPHA = 0.2  # residual ratio: image embedding = alpha * adapter(f) + (1 - alpha) * f
CLIP_ADAPTER_REDUCTION = 4  # bottleneck width = embedding width / this


@dataclass(frozen=True)
class DeclipConfig:
    """Settings of the DeCLIP-style baseline (defaults as in our experiments)."""
    queue_size: int = 4096  # momentum features kept per modality (FIFO)
    momentum: float = 0.995  # EMA decay of the momentum encoder
    nn_temperature: float = 0.1  # temperature of the nearest-neighbour InfoNCE
    image_nn_weight: float = 0.5  # weight of the image-image nearest-neighbour loss
    text_nn_weight: float = 0.5  # weight of the text-text nearest-neighbour loss

    def __post_init__(self):
        if self.queue_size < 1:
            raise ValueError(f"DeCLIP queue size must be >= 1, got {self.queue_size}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"DeCLIP momentum (EMA decay) must be in [0, 1], got {self.momentum}")
        if self.nn_temperature <= 0:
            raise ValueError(f"DeCLIP nearest-neighbour temperature must be > 0, got {self.nn_temperature}")

    def to_dict(self) -> dict:
        return asdict(self)

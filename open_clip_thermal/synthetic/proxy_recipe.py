"""The proxy's recipe and cache key, without torch (so command-line parsers stay light).

:mod:`.proxy` trains and caches the model; this module only says what a recipe is and where its
checkpoint lives.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# Bump when the simulator or the loop changes what a recipe produces, so old caches are not reused.
SIMULATOR_VERSION = "2"  # 2: world v2 (object-level thermal state, close camera)
CACHE_ENV = "OPEN_CLIP_THERMAL_CACHE"
PRETRAIN_SPLIT = "proxy-pretrain"  # own random streams: never the quickstart's train/val/test scenes
EVAL_SPLIT = "proxy-eval"
EVAL_SCENES = 200


@dataclass(frozen=True)
class ProxyRecipe:
    """Everything that determines the proxy weights (together with the seed)."""

    model: str = "thermal-vit-tiny"  # OpenCLIP architecture name
    num_scenes: int = 3000  # simulated RGB scenes rendered for pretraining
    steps: int = 300  # optimiser steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.1  # on weight matrices only, as in open_clip_train
    warmup_steps: int = 20
    image_size: int = 64  # must match the architecture's input size

    @classmethod
    def from_kwargs(cls, **overrides) -> "ProxyRecipe":
        """Default recipe with ``overrides``; unknown names raise a TypeError that lists the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"unknown proxy recipe field(s) {unknown}; valid fields: {sorted(valid)}")
        return cls(**overrides)


def default_cache_dir() -> Path:
    """``$OPEN_CLIP_THERMAL_CACHE`` if set, else ``~/.cache/open_clip_thermal``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "open_clip_thermal"


def recipe_key(recipe: ProxyRecipe, seed: int) -> str:
    """Short hash of the recipe, the seed and the simulator version (the cache key)."""
    payload = json.dumps({"recipe": asdict(recipe), "seed": seed, "simulator": SIMULATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def checkpoint_path(cache_dir, recipe: ProxyRecipe, seed: int) -> Path:
    """Where the checkpoint of ``recipe`` and ``seed`` lives in ``cache_dir``."""
    return Path(cache_dir) / "proxy" / f"proxy-{recipe.model}-seed{seed}-{recipe_key(recipe, seed)}.safetensors"

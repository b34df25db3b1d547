"""Proxy "RGB-pretrained" base model: a tiny OpenCLIP CLIP trained from scratch on the simulator.

The paper starts from a CLIP pretrained on web RGB images. Offline and on a CPU we stand in for
it with ``thermal-vit-tiny`` trained contrastively on simulated *RGB* renderings paired with
*RGB-style* captions. Thermal images and thermal captions never reach it, so on thermal data it
is out of domain: the thermal perception gap in miniature.

The recipe is a plain in-process loop (AdamW, warmup + cosine, OpenCLIP's ``ClipLoss``). The
result is cached as a plain OpenCLIP state_dict in safetensors, keyed by a hash of the recipe, so
``open_clip.create_model('thermal-vit-tiny', pretrained=path)`` loads it unchanged.
"""
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import ClipLoss
from open_clip_train.scheduler import cosine_lr
from safetensors.torch import save_file
from tqdm import tqdm

from ..files import atomic_write, atomic_write_json
from .captions import rgb_caption
from .dataset import iter_samples
from .proxy_recipe import (CACHE_ENV, EVAL_SCENES, EVAL_SPLIT, PRETRAIN_SPLIT, SIMULATOR_VERSION, ProxyRecipe,
                           checkpoint_path, default_cache_dir, recipe_key)
from .render_rgb import render_rgb
from .scene import sample_scene, scene_rng

__all__ = ["CACHE_ENV", "EVAL_SCENES", "EVAL_SPLIT", "PRETRAIN_SPLIT", "SIMULATOR_VERSION", "ProxyRecipe",
           "checkpoint_path", "default_cache_dir", "recipe_key", "ensure_model_configs", "images_to_tensor",
           "train_proxy", "recall_at_1", "evaluate_proxy", "save_proxy_checkpoint", "pretrain_proxy",
           "get_proxy_checkpoint", "load_report"]


def ensure_model_configs() -> None:
    """Make the package's architectures (``thermal-vit-tiny`` ...) known to OpenCLIP, once."""
    if "thermal-vit-tiny" not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).resolve().parent.parent / "model_configs")


def images_to_tensor(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """uint8 RGB (H, W, 3) or greyscale (H, W) arrays -> normalised (N, 3, S, S) float tensor.

    Greyscale thermal frames are repeated over three channels, as CLIP pipelines do for IR.
    """
    batch = np.stack([img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1) for img in images])
    if batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {batch.dtype}; convert 16-bit thermal to 8-bit first")
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict]:
    # Same split as open_clip_train: no decay on gains, biases, norms and the logit scale.
    def exclude(name, p):
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}]


def _render_pretraining_set(recipe: ProxyRecipe, seed: int, progress: bool):
    scenes, images = [], []
    for index in tqdm(range(recipe.num_scenes), desc="render RGB scenes", disable=not progress, unit="scene"):
        scene = sample_scene(scene_rng(seed, PRETRAIN_SPLIT, index))
        scenes.append(scene)
        images.append(render_rgb(scene, recipe.image_size))
    return scenes, images


def train_proxy(recipe: Optional[ProxyRecipe] = None, seed: int = 0, progress: bool = True
                ) -> Tuple[torch.nn.Module, Dict[str, float]]:
    """Pretrain the proxy model from scratch on simulated RGB images with RGB captions.

    Args:
        recipe: training recipe (default :class:`ProxyRecipe`).
        seed: seeds the simulated scenes, the initialisation, batching and caption wording.
        progress: show progress bars.

    Returns:
        ``(model, stats)``: the trained OpenCLIP model in eval mode and training statistics
        (``final_loss``, ``train_seconds``, ``torch_threads``).
    """
    recipe = recipe or ProxyRecipe()
    ensure_model_configs()
    start = time.perf_counter()
    scenes, images = _render_pretraining_set(recipe, seed, progress)
    torch.manual_seed(seed)
    model = open_clip.create_model(recipe.model)
    if model.visual.image_size[0] != recipe.image_size:
        raise ValueError(f"recipe image_size {recipe.image_size} does not match {recipe.model}'s "
                         f"input size {model.visual.image_size[0]}")
    tokenizer = open_clip.get_tokenizer(recipe.model)
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    schedule = cosine_lr(optimizer, recipe.lr, recipe.warmup_steps, recipe.steps)
    loss_fn = ClipLoss()
    rng = np.random.default_rng([seed, 4242])
    batch_size = min(recipe.batch_size, len(scenes))
    order, cursor, loss = rng.permutation(len(scenes)), 0, torch.tensor(float("nan"))
    for step in tqdm(range(recipe.steps), desc="pretrain proxy", disable=not progress, unit="step"):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(scenes)), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        # Flips and freshly drawn caption wording each time a scene comes back.
        batch_images = [images[i][:, ::-1] if rng.random() < 0.5 else images[i] for i in idx]
        captions = [rgb_caption(scenes[i], rng) for i in idx]
        schedule(step)
        image_features = model.encode_image(images_to_tensor(batch_images, recipe.image_size), normalize=True)
        text_features = model.encode_text(tokenizer(captions), normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # as open_clip_train: keep the temperature in a sane range
            model.logit_scale.clamp_(0, math.log(100))
    model.eval()
    return model, {"final_loss": float(loss.item()), "train_seconds": time.perf_counter() - start,
                   "torch_threads": torch.get_num_threads()}


@torch.no_grad()
def recall_at_1(model: torch.nn.Module, images: Sequence[np.ndarray], captions: Sequence[str],
                tokenizer, image_size: int, batch_size: int = 256) -> Dict[str, float]:
    """Zero-shot retrieval R@1 between paired ``images[i]`` and ``captions[i]``.

    Returns:
        dict with ``image_to_text`` and ``text_to_image`` recall@1 and ``chance`` (1 / N).
    """
    if len(images) != len(captions) or not images:
        raise ValueError(f"need the same non-zero number of images and captions, got {len(images)} and {len(captions)}")
    img = torch.cat([model.encode_image(images_to_tensor(images[i:i + batch_size], image_size), normalize=True)
                     for i in range(0, len(images), batch_size)])
    txt = torch.cat([model.encode_text(tokenizer(list(captions[i:i + batch_size])), normalize=True)
                     for i in range(0, len(captions), batch_size)])
    sim = img @ txt.T
    target = torch.arange(len(images))
    return {"image_to_text": (sim.argmax(1) == target).float().mean().item(),
            "text_to_image": (sim.argmax(0) == target).float().mean().item(),
            "chance": 1.0 / len(images)}


def evaluate_proxy(model: torch.nn.Module, recipe: ProxyRecipe, seed: int = 0,
                   num_scenes: int = EVAL_SCENES, progress: bool = False) -> Dict[str, Dict[str, float]]:
    """R@1 on held-out simulated scenes: RGB image -> RGB caption, and thermal image -> global thermal caption.

    The second number measures the thermal perception gap: the proxy never saw thermal data.
    """
    samples = list(iter_samples(seed, EVAL_SPLIT, num_scenes, recipe.image_size, bit_depth=8, progress=progress))
    tokenizer = open_clip.get_tokenizer(recipe.model)
    return {
        "rgb_image_to_rgb_caption": recall_at_1(model, [s.rgb for s in samples], [s.rgb_caption for s in samples],
                                                tokenizer, recipe.image_size),
        "thermal_image_to_global_caption": recall_at_1(model, [s.thermal for s in samples],
                                                       [s.global_caption for s in samples],
                                                       tokenizer, recipe.image_size),
        "num_scenes": num_scenes,
    }


def save_proxy_checkpoint(model: torch.nn.Module, path, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``model.state_dict()`` as safetensors, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # the temporary file is private; the cached checkpoint need not be
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}),
                        mode=0o644)


def pretrain_proxy(out_path, recipe: Optional[ProxyRecipe] = None, seed: int = 0, progress: bool = True,
                   eval_scenes: int = EVAL_SCENES) -> Dict[str, object]:
    """Train, evaluate and save the proxy; also write ``<out_path>.json`` with recipe and metrics.

    Args:
        out_path: checkpoint path (``.safetensors``).
        recipe: training recipe (default :class:`ProxyRecipe`).
        seed: random seed.
        progress: show progress bars.
        eval_scenes: held-out scenes for the R@1 report (0 skips the evaluation).

    Returns:
        The report written to the JSON file.
    """
    recipe = recipe or ProxyRecipe()
    model, stats = train_proxy(recipe, seed, progress)
    report = {"recipe": asdict(recipe), "seed": seed, "simulator_version": SIMULATOR_VERSION,
              "open_clip_version": open_clip.__version__, **stats}
    if eval_scenes:
        report["retrieval"] = evaluate_proxy(model, recipe, seed, eval_scenes, progress)
    out_path = Path(out_path)
    save_proxy_checkpoint(model, out_path, {"recipe": json.dumps(asdict(recipe)), "seed": seed,
                                            "simulator_version": SIMULATOR_VERSION})
    report["checkpoint"] = str(out_path)
    report_path = out_path.with_suffix(".json")
    atomic_write_json(report_path, report)
    return report


def get_proxy_checkpoint(cache_dir=None, seed: int = 0, progress: bool = True, eval_scenes: int = EVAL_SCENES,
                         **recipe) -> str:
    """Path of the cached proxy checkpoint, pretraining it first if it is missing.

    Args:
        cache_dir: cache folder; default ``$OPEN_CLIP_THERMAL_CACHE`` or ``~/.cache/open_clip_thermal``.
        seed: random seed of the recipe.
        progress: show progress bars while pretraining.
        eval_scenes: held-out scenes for the R@1 report written when pretraining (0 skips it).
        **recipe: overrides of :class:`ProxyRecipe` fields (``steps``, ``batch_size``, ...).

    Returns:
        Path (str) of a safetensors state_dict loadable with
        ``open_clip.create_model(recipe.model, pretrained=path)``.
    """
    recipe_obj = ProxyRecipe.from_kwargs(**recipe)
    path = checkpoint_path(cache_dir if cache_dir is not None else default_cache_dir(), recipe_obj, seed)
    if not path.exists():
        pretrain_proxy(path, recipe_obj, seed, progress, eval_scenes)
    ensure_model_configs()  # so the caller can load it by name right away
    return str(path)


def load_report(checkpoint) -> Dict[str, object]:
    """The JSON report written next to a proxy checkpoint (recipe, timing, R@1)."""
    return json.loads(Path(checkpoint).with_suffix(".json").read_text(encoding="utf-8"))

"""Encode the test set once per (model weights, branch, caption type), through the disk cache."""
import math
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
from tqdm import tqdm

from .cache import EmbeddingCache, cache_key, hash_state_dict
from .errors import BenchmarkError
from .shards import CAPTION_FIELDS, SampleIndex, iter_image_batches

EmbeddingKey = Tuple[Optional[str], str]  # (branch or None for the whole model, "image" | caption type)


def model_preprocess(model: torch.nn.Module):
    """The model's evaluation image transform (OpenCLIP's, from its preprocess config)."""
    import open_clip
    visual = getattr(model, "visual", None)
    config = dict(getattr(visual, "preprocess_cfg", None) or {})
    image_size = config.pop("size", None) or getattr(visual, "image_size", 224)
    return open_clip.image_transform(image_size, is_train=False, mean=config.get("mean"), std=config.get("std"),
                                     resize_mode=config.get("resize_mode"), interpolation=config.get("interpolation"))


def model_tokenizer(model_name: str):
    """OpenCLIP's tokenizer for ``model_name`` (the default CLIP BPE when the name is unknown)."""
    import open_clip
    try:
        return open_clip.get_tokenizer(model_name)
    except Exception:  # unregistered name: every T-CLIP base uses the CLIP BPE tokenizer
        return open_clip.get_tokenizer("ViT-B-16")


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    return (slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size))


def _encode_images(model, branches: Sequence[Optional[str]], urls, preprocess, index: SampleIndex,
                   batch_size: int, device, label: str) -> Dict[Optional[str], torch.Tensor]:
    chunks: Dict[Optional[str], List[torch.Tensor]] = {b: [] for b in branches}
    seen = 0
    total = math.ceil(len(index) / batch_size)
    for keys, images in tqdm(iter_image_batches(urls, preprocess, batch_size), total=total,
                             desc=f"images {label}", unit="batch", leave=False):
        if keys != index.keys[seen:seen + len(keys)]:
            raise BenchmarkError(f"shards changed while reading: expected key {index.keys[seen]!r}, got {keys[0]!r}")
        seen += len(keys)
        images = images.to(device)
        named = [b for b in branches if b is not None]
        if named:
            feats = model.branch_image_features(images, branch=tuple(named), normalize=True)
            for b in named:
                chunks[b].append(feats[b].float().cpu())
        if None in branches:
            chunks[None].append(model.encode_image(images, normalize=True).float().cpu())
    return {b: torch.cat(c) for b, c in chunks.items()}


def _encode_texts(model, tokenizer, branches: Sequence[Optional[str]], captions: List[str],
                  batch_size: int, device, label: str) -> Dict[Optional[str], torch.Tensor]:
    chunks: Dict[Optional[str], List[torch.Tensor]] = {b: [] for b in branches}
    named = [b for b in branches if b is not None]
    for part in tqdm(list(_batches(len(captions), batch_size)), desc=f"texts {label}", unit="batch", leave=False):
        tokens = tokenizer(captions[part]).to(device)
        if named:
            feats = model.branch_text_features(tokens, branch=tuple(named), normalize=True)
            for b in named:
                chunks[b].append(feats[b].float().cpu())
        if None in branches:
            chunks[None].append(model.encode_text(tokens, normalize=True).float().cpu())
    return {b: torch.cat(c) for b, c in chunks.items()}


def encode_test_set(model: torch.nn.Module, model_name: str, label: str, needs: Set[EmbeddingKey],
                    urls: Sequence[str], index: SampleIndex, data_id, cache: EmbeddingCache,
                    batch_size: int = 64, device: str = "cpu") -> Dict[EmbeddingKey, torch.Tensor]:
    """Embeddings (N, D) of the test set for every (branch, image|caption type) in ``needs``.

    Each entry is looked up in ``cache`` under a key made of the model's weight hash, the shard
    fingerprint ``data_id``, the preprocessing and the entry itself; only missing entries are encoded,
    images in one pass over the shards for all branches.

    Raises:
        BenchmarkError: a needed caption type is missing from some samples.
    """
    preprocess = model_preprocess(model)
    tokenizer = model_tokenizer(model_name)
    weights = hash_state_dict(model.state_dict())
    keys = {need: cache_key(weights=weights, model=type(model).__name__, data=data_id, branch=need[0], what=need[1],
                            preprocess=repr(preprocess) if need[1] == "image" else getattr(tokenizer, "context_length", 77))
            for need in needs}
    result = {need: cache.load(key) for need, key in keys.items()}
    result = {need: t for need, t in result.items() if t is not None and t.shape[0] == len(index)}
    missing = [need for need in sorted(needs, key=str) if need not in result]
    if not missing:
        return result
    model = model.to(device)
    fresh: Dict[EmbeddingKey, torch.Tensor] = {}
    with torch.no_grad():
        image_branches = [b for b, what in missing if what == "image"]
        if image_branches:
            for b, feats in _encode_images(model, image_branches, urls, preprocess, index, batch_size, device, label).items():
                fresh[(b, "image")] = feats
        for caption_type in CAPTION_FIELDS:
            branches = [b for b, what in missing if what == caption_type]
            if not branches:
                continue
            captions = index.captions[caption_type]
            if index.missing_captions(caption_type):
                raise BenchmarkError(f"{label} needs {caption_type} captions, but {index.missing_captions(caption_type)} "
                                     f"of {len(index)} samples lack '.{CAPTION_FIELDS[caption_type]}'")
            for b, feats in _encode_texts(model, tokenizer, branches, captions, batch_size, device,
                                          f"{label} {caption_type}").items():
                fresh[(b, caption_type)] = feats
    for need, tensor in fresh.items():
        cache.save(keys[need], tensor, {"label": label, "model": model_name, "branch": need[0], "what": need[1],
                                        "count": tensor.shape[0]})
    result.update(fresh)
    return result

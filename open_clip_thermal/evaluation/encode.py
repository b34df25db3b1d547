"""Encode the test set once per (model weights, branch, caption type), through the disk cache."""
import logging
import math
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
from tqdm import tqdm

from ..adapters import recorded_thermal_norm
from ..base_model import provenance_of
from ..contracts import CAPTION_FIELDS
from ..data.decode import ThermalNorm
from .cache import EmbeddingCache, cache_key, hash_state_dict
from ..files import AdapterError
from .errors import BenchmarkError
from .shard_reader import SampleIndex, iter_image_batches

log = logging.getLogger(__name__)

EmbeddingKey = Tuple[Optional[str], str]  # (branch or None for the whole model, "image" | caption type)


def model_preprocess(model: torch.nn.Module):
    """The model's evaluation image transform (OpenCLIP's, from its preprocess config)."""
    import open_clip
    visual = getattr(model, "visual", None)
    config = dict(getattr(visual, "preprocess_cfg", None) or {})
    image_size = config.pop("size", None) or getattr(visual, "image_size", 224)
    return open_clip.image_transform(image_size, is_train=False, mean=config.get("mean"), std=config.get("std"),
                                     resize_mode=config.get("resize_mode"), interpolation=config.get("interpolation"))


def model_tokenizer(model: Optional[torch.nn.Module] = None, model_name: str = ""):
    """OpenCLIP's tokenizer for ``model``: its base's when its provenance records one, else ``model_name``'s.

    The base decides (a text tower is its base's): a CLIP-Adapter or any T-CLIP model on a SigLIP base
    needs SigLIP's tokenizer, which a name like ``clip-adapter`` cannot tell OpenCLIP. For a name
    OpenCLIP has no configuration for, it returns CLIP's BPE; that is said with a warning, because the
    text features are wrong if the model was trained with another tokenizer.
    """
    import open_clip
    name = (provenance_of(model).base_model if model is not None else None) or model_name
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models():
        # one report: commands that log to files capture warnings into the log (console.surfaced_warnings)
        warnings.warn(f"no tokenizer is known for model {name!r} (no recorded base, not an OpenCLIP name); "
                      "using CLIP's BPE tokenizer (77 tokens), which is right only for CLIP-text bases",
                      UserWarning, stacklevel=2)
    return open_clip.get_tokenizer(name)


# ----------------------------------------------------------------------------- normalisation per seed

NORM_SOURCES = ("override", "recorded", "default")


def recorded_norm(weights: Optional[str]) -> Optional[ThermalNorm]:
    """The thermal normalisation recorded by training with ``weights`` (None: not recorded).

    Which weights carry a record, and where, is :func:`open_clip_thermal.adapters.recorded_thermal_norm`'s
    rule (adapter and CLIP-Adapter folders, ``hf-hub:`` adapter repos, safetensors exports).

    Raises:
        BenchmarkError: the record cannot be read (a corrupt config, naming the file), the Hub repo
            cannot be fetched, or the recorded value is not a valid normalisation.
    """
    try:
        record = recorded_thermal_norm(weights)
    except AdapterError as error:
        raise BenchmarkError(f"weights {weights!r}: {error}") from None
    except Exception as error:  # the Hub: unknown repo or revision, no connection and no cached copy
        raise BenchmarkError(f"weights {weights!r}: cannot read their thermal normalisation record: "
                             f"{type(error).__name__}: {error}") from None
    if record is None:
        return None
    try:
        return ThermalNorm.from_dict(record)
    except (ValueError, TypeError) as error:
        raise BenchmarkError(f"weights {weights!r}: invalid recorded thermal_norm {record!r}: {error}") from None


def seed_norm(kind: str, seed: Sequence[Optional[str]], override: Optional[ThermalNorm],
              label: str = "") -> Tuple[ThermalNorm, str]:
    """(normalisation, source) of one seed: the ``override``, else what its adapters recorded, else percentile.

    Zero-shot rows always use the default percentile unless overridden. The two folders of a
    ``GLOBAL+FG`` seed share one image pass; if they recorded different choices the global one is
    used and a warning says so.
    """
    if override is not None:
        return override, "override"
    if kind == "zeroshot":
        return ThermalNorm(), "default"
    recorded = [recorded_norm(weights) for weights in seed]
    found = [norm for norm in recorded if norm is not None]
    if not found:
        message = unrecorded_norm_message(kind, seed, "default", label)
        if message:
            log.warning("WARNING: %s", message)
        return ThermalNorm(), "default"
    if len(set(found)) > 1:
        log.warning("WARNING: %s: the folders %s recorded different thermal normalisations (%s); encoding its "
                    "images with the first (%s); pass --thermal-norm to choose", label, "+".join(map(str, seed)),
                    ", ".join(n.describe() for n in found), found[0].describe())
    return found[0], "recorded"


def unrecorded_norm_message(kind: str, seed: Sequence[Optional[str]], source: str, label: str = "") -> Optional[str]:
    """What to tell the user when trained weights recorded no normalisation and the default decodes
    their test images (None otherwise: a recorded or given choice, a zero-shot row, a random init).

    ``seed_norm`` logs it; commands whose log goes to a file (classify, search) also print it.
    """
    weights = "+".join(str(w) for w in seed if w is not None)
    if source != "default" or kind == "zeroshot" or not weights:
        return None
    return (f"{label or weights}: the weights {weights} record no thermal normalisation (a URL, a .pt checkpoint or "
            f"a folder saved without one), so frames deeper than 8 bits are decoded with the default "
            f"{ThermalNorm().describe()}, which may not be what they were trained with (8-bit frames are not "
            "affected); pass --thermal-norm to choose")


def norm_record(norm: ThermalNorm, source: str) -> dict:
    """The normalisation as results.json records it per seed and row."""
    return dict(norm.to_dict(), source=source, text=norm.describe())


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    return (slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size))


def _append_features(chunks: Dict[Optional[str], List[torch.Tensor]], model, what: str, inputs: torch.Tensor) -> None:
    """Encode one batch of ``what`` (``image`` | ``text``) for each branch in ``chunks`` (None: the whole model)."""
    named = tuple(b for b in chunks if b is not None)
    if named:
        feats = getattr(model, f"branch_{what}_features")(inputs, branch=named, normalize=True)
        for b in named:
            chunks[b].append(feats[b].float().cpu())
    if None in chunks:
        chunks[None].append(getattr(model, f"encode_{what}")(inputs, normalize=True).float().cpu())


def _encode_images(model, branches: Sequence[Optional[str]], urls, preprocess, index: SampleIndex,
                   batch_size: int, device, label: str, norm: Optional[ThermalNorm] = None) -> Dict[Optional[str], torch.Tensor]:
    chunks: Dict[Optional[str], List[torch.Tensor]] = {b: [] for b in branches}
    seen = 0
    total = math.ceil(len(index) / batch_size)
    for keys, images in tqdm(iter_image_batches(urls, preprocess, batch_size, norm), total=total,
                             desc=f"images {label}", unit="batch", leave=False):
        if keys != index.keys[seen:seen + len(keys)]:
            raise BenchmarkError(f"shards changed while reading: expected key {index.keys[seen]!r}, got {keys[0]!r}")
        seen += len(keys)
        _append_features(chunks, model, "image", images.to(device))
    return {b: torch.cat(c) for b, c in chunks.items()}


def _encode_texts(model, tokenizer, branches: Sequence[Optional[str]], captions: List[str],
                  batch_size: int, device, label: str) -> Dict[Optional[str], torch.Tensor]:
    chunks: Dict[Optional[str], List[torch.Tensor]] = {b: [] for b in branches}
    for part in tqdm(list(_batches(len(captions), batch_size)), desc=f"texts {label}", unit="batch", leave=False):
        _append_features(chunks, model, "text", tokenizer(captions[part]).to(device))
    return {b: torch.cat(c) for b, c in chunks.items()}


def check_finite(embeddings: Dict[EmbeddingKey, torch.Tensor], index: SampleIndex, who: str) -> None:
    """Refuse NaN or infinite embeddings (diverged or corrupt weights), naming ``who`` produced them.

    Raises:
        BenchmarkError: with the variant/seed in ``who``, the embedding kind and the first bad sample.
    """
    for (branch, what), tensor in sorted(embeddings.items(), key=str):
        finite = torch.isfinite(tensor).reshape(tensor.shape[0], -1).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten()
            kind = f"{what if what == 'image' else what + ' caption'} embeddings" + (f" of branch {branch}" if branch else "")
            raise BenchmarkError(f"{who}: the model produced NaN or infinite {kind} for {len(bad)} of "
                                 f"{len(finite)} samples (first: {index.keys[int(bad[0])]!r}); its weights are "
                                 f"probably broken (diverged training?), so it has no recall to report")


def encode_test_set(model: torch.nn.Module, model_name: str, label: str, needs: Set[EmbeddingKey],
                    urls: Sequence[str], index: SampleIndex, data_id, cache: EmbeddingCache,
                    batch_size: int = 64, device: str = "cpu",
                    norm: Optional[ThermalNorm] = None, who: Optional[str] = None) -> Dict[EmbeddingKey, torch.Tensor]:
    """Embeddings (N, D) of the test set for every (branch, image|caption type) in ``needs``.

    Each entry is looked up in ``cache`` under a key made of the model's weight hash, the shard
    fingerprint ``data_id``, the preprocessing and the entry itself; only missing entries are encoded,
    images in one pass over the shards for all branches, decoded with ``norm`` (None: percentile),
    which is part of the image cache key.

    Raises:
        BenchmarkError: a needed caption type is missing from some samples, or the model produced NaN or
            infinite embeddings (named by ``who``, default ``label``; such embeddings are never cached).
    """
    who = who or label
    preprocess = model_preprocess(model)
    tokenizer = model_tokenizer(model, model_name)
    weights = hash_state_dict(model.state_dict())
    norm = norm or ThermalNorm()
    keys = {need: cache_key(weights=weights, model=type(model).__name__, data=data_id, branch=need[0], what=need[1],
                            preprocess=repr(preprocess) if need[1] == "image" else getattr(tokenizer, "context_length", 77),
                            **({"thermal_norm": norm.to_dict()} if need[1] == "image" else {}))
            for need in needs}
    result = {need: cache.load(key) for need, key in keys.items()}
    result = {need: t for need, t in result.items() if t is not None and t.shape[0] == len(index)}
    missing = [need for need in sorted(needs, key=str) if need not in result]
    if not missing:
        check_finite(result, index, who)
        return result
    model = model.to(device)
    fresh: Dict[EmbeddingKey, torch.Tensor] = {}
    with torch.no_grad():
        image_branches = [b for b, what in missing if what == "image"]
        if image_branches:
            for b, feats in _encode_images(model, image_branches, urls, preprocess, index, batch_size, device, label,
                                           norm).items():
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
    check_finite({**result, **fresh}, index, who)
    for need, tensor in fresh.items():
        cache.save(keys[need], tensor, {"label": label, "model": model_name, "branch": need[0], "what": need[1],
                                        "count": tensor.shape[0]})
    result.update(fresh)
    return result

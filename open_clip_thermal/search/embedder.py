"""The model side of an index: build the model, embed images and texts, and say which model it is.

Models are built exactly as ``classify`` and the retrieval benchmark build them
(:func:`open_clip_thermal.classify.cli.variant_for` + :func:`open_clip_thermal.evaluation.variants.build_model`),
and images are decoded as in training: :func:`open_clip_thermal.data.decode.decode_with` with the
thermal normalisation the model's adapters recorded (or the one given), then the model's evaluation
preprocess. A dual T-CLIP model stores fused embeddings: ``fuse_features`` of the two branches with
the index's ``lam`` and fusion mode (what the model's own ``encode_image`` gives with its defaults);
in score mode the fused vector is the lam-weighted concatenation, whose inner product with a fused
text is ``lam * s_G + (1 - lam) * s_F``. Every embedding is unit norm.

The *identity* of an embedder is everything that changes the vectors: the weights (SHA-256 of the
state dict), the wrapper class, the fusion, the preprocess and the thermal normalisation. An index
records it and refuses to mix in embeddings of another identity.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..base_model import provenance_of
from ..classify.cli import ClassifyError, parse_model, variant_for
from ..classify.tree import load_thermal_pil
from ..classify.zeroshot import dual_branches
from ..contracts import BRANCHES, FUSION_MODES
from ..data.decode import ThermalNorm
from ..evaluation.cache import hash_state_dict
from ..evaluation.encode import model_preprocess, model_tokenizer, seed_norm, unrecorded_norm_message
from ..evaluation.errors import BenchmarkError
from ..evaluation.variants import build_model, check_spec
from ..model import fuse_features
from ..version import __version__
from .errors import ModelMismatchError, SearchError

# Identity fields that change the embeddings; the others (how the model was named) are informative.
COMPARED_FIELDS = ("weights_sha256", "model_class", "dim", "lam", "fusion", "preprocess", "thermal_norm")


@dataclass
class Embedder:
    """A model ready to embed thermal images and query texts into one unit-norm space."""
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    norm: ThermalNorm
    lam: Optional[float] = None  # dual models only
    fusion: Optional[str] = None  # dual models only
    spec: Optional[str] = None  # NAME[:PRETRAINED] it was built from (None: built by the caller)
    device: str = "cpu"
    norm_warning: Optional[str] = None  # set when trained weights recorded no normalisation (the CLI prints it)

    @property
    def dual(self) -> bool:
        return self.fusion is not None

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, D)`` float32 unit-norm embeddings."""
        images = images.to(self.device)
        if self.dual:
            feats = self.model.branch_image_features(images, branch=BRANCHES)
            out = fuse_features(feats, self.lam, self.fusion)
        else:
            out = F.normalize(self.model.encode_image(images), dim=-1)
        return out.float().cpu().numpy()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query texts -> ``(N, D)`` float32 unit-norm embeddings (fused like the images)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        if self.dual:
            out = fuse_features(self.model.branch_text_features(tokens, branch=BRANCHES), self.lam, self.fusion)
        else:
            out = F.normalize(self.model.encode_text(tokens), dim=-1)
        return out.float().cpu().numpy()

    def load_image(self, path) -> torch.Tensor:
        """One thermal file decoded as in training and preprocessed: ``(3, H, W)``."""
        return self.preprocess(load_thermal_pil(Path(path), self.norm))

    def embed_files(self, paths: Sequence) -> np.ndarray:
        """Image files (query examples) -> ``(N, D)`` embeddings."""
        return self.embed_images(torch.stack([self.load_image(p) for p in paths]))

    def identity(self) -> Dict:
        """What the index records about this embedder (see the module docstring)."""
        provenance = provenance_of(self.model)
        probe = self.embed_texts(["a thermal image"])
        return {
            "spec": self.spec,
            "model_name": provenance.model_name,
            "model_class": type(self.model).__name__,
            "weights_sha256": hash_state_dict(self.model.state_dict()),
            "dim": int(probe.shape[1]),
            "lam": self.lam,
            "fusion": self.fusion,
            "preprocess": repr(self.preprocess),
            "thermal_norm": self.norm.to_dict(),
            "open_clip_thermal": __version__,
        }


def check_identity(recorded: Dict, current: Dict, where: str) -> None:
    """Refuse ``current`` when it would embed differently from ``recorded``.

    Raises:
        ModelMismatchError: naming the index and every field that differs.
    """
    differ = [name for name in COMPARED_FIELDS if recorded.get(name) != current.get(name)]
    if differ:
        def show(identity: Dict, name: str) -> str:
            value = identity.get(name)
            return str(value)[:12] if name == "weights_sha256" else str(value)
        details = "; ".join(f"{name} {show(recorded, name)} != {show(current, name)}" for name in differ)
        raise ModelMismatchError(f"{where} was built with model {recorded.get('spec') or recorded.get('model_name')}, "
                                 f"not {current.get('spec') or current.get('model_name')}: {details}. Index with the "
                                 "same model and settings, or build a new index in another folder")


def _absolute_weights(pretrained: Optional[str]) -> Optional[str]:
    """Local weight paths made absolute, so the recorded spec rebuilds the model from any folder."""
    if pretrained is None:
        return None
    parts = pretrained.split("+")
    return "+".join(os.path.abspath(p) if os.path.exists(p) else p for p in parts)


def load_embedder(model_text: str, norm: Optional[ThermalNorm] = None, lam: Optional[float] = None,
                  fusion: Optional[str] = None, device: str = "cpu") -> Embedder:
    """Build the embedder of a ``[LABEL=]NAME[:PRETRAINED]`` model (as ``classify --model`` takes it).

    Args:
        model_text: the model; PRETRAINED an OpenCLIP tag, a checkpoint, an adapter folder,
            ``GLOBAL_DIR+FG_DIR`` or ``none`` (random init, seeded 0; the default).
        norm: thermal normalisation (None: what the weights recorded, ``adapters.recorded_thermal_norm``:
            an adapter folder, an ``hf-hub:`` adapter repo or a safetensors export; else percentile 1:99).
        lam, fusion: fusion of a dual model (None: the model's own); refused for other models.
        device: torch device.

    Raises:
        SearchError: unknown model, missing weights, weights that do not load, or fusion settings
            for a model that has no two branches.
    """
    try:
        label, name, pretrained = parse_model(model_text)
    except ClassifyError as error:
        raise SearchError(str(error)) from None
    pretrained = _absolute_weights(pretrained)
    spec, seed = variant_for(name, pretrained)
    try:
        check_spec(spec)
        norm, source = seed_norm(spec.kind, seed, norm, label)
        model = build_model(spec, seed)
    except BenchmarkError as error:
        raise SearchError(f"--model {model_text}: {error}") from None
    embedder = from_model(model, name, norm=norm, lam=lam, fusion=fusion, device=device,
                          spec=f"{name}:{pretrained or 'none'}")
    embedder.norm_warning = unrecorded_norm_message(spec.kind, seed, source, f"--model {model_text}")
    return embedder


def from_model(model: torch.nn.Module, model_name: Optional[str] = None, norm: Optional[ThermalNorm] = None,
               lam: Optional[float] = None, fusion: Optional[str] = None, device: str = "cpu",
               spec: Optional[str] = None) -> Embedder:
    """An embedder around a model built by the caller (the Python API).

    ``model_name`` picks the tokenizer (default: the model's provenance, else CLIP's BPE).
    """
    dual = dual_branches(model) is not None
    if not dual and (lam is not None or fusion is not None):
        raise SearchError("--lam/--fusion apply to dual T-CLIP models (branches "
                          f"{', '.join(BRANCHES)}); {type(model).__name__} has {list(getattr(model, 'branches', ())) or 'none'}")
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise SearchError(f"--lam must lie in [0, 1], got {lam}")
    if fusion is not None and fusion not in FUSION_MODES:
        raise SearchError(f"--fusion {fusion!r}: choose from {', '.join(FUSION_MODES)}")
    model = model.to(device).eval()
    name = model_name or provenance_of(model).model_name or ""
    return Embedder(model=model, preprocess=model_preprocess(model), tokenizer=model_tokenizer(model, name),
                    norm=norm or ThermalNorm(), lam=(model.lam if lam is None else float(lam)) if dual else None,
                    fusion=(fusion or model.fusion) if dual else None, spec=spec, device=device)


def rebuild(identity: Dict, model_text: Optional[str] = None, device: str = "cpu") -> Embedder:
    """The embedder an index was built with, from its recorded spec (or ``model_text``), checked.

    Raises:
        SearchError: the index records no spec (built from the Python API) and none is given.
        ModelMismatchError: the weights rebuilt are not the recorded ones.
    """
    text = model_text or identity.get("spec")
    if not text:
        raise SearchError("this index was built from Python with a model the CLI cannot rebuild; pass --model")
    norm = ThermalNorm.from_dict(identity["thermal_norm"]) if identity.get("thermal_norm") else None
    embedder = load_embedder(text, norm, identity.get("lam"), identity.get("fusion"), device)
    check_identity(identity, embedder.identity(), "the index")
    return embedder


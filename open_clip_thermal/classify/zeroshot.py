"""Zero-shot classification with CLIP and T-CLIP models: class embeddings from a prompt ensemble,
image embeddings, scores and metrics.

Class embeddings are built as CLIP does: every prompt ``template.format(classname)`` is encoded, each
embedding L2-normalised, the class's prompts averaged and the mean renormalised. A dual T-CLIP model
(branches ``GLOBAL`` and ``FINE_GRAINED``) sends every prompt and every image through both branches:

* feature fusion: each prompt's two branch embeddings are fused with
  :func:`open_clip_thermal.model.fuse_features` (``normalize(lam * g_G + (1 - lam) * g_F)``, what the
  model's own ``encode_text`` gives) before the CLIP averaging; images are fused the same way;
* score fusion: the score is ``lam * s_G + (1 - lam) * s_F``, each ``s`` the cosine of a branch's image
  embedding with that branch's own averaged class embedding (``fuse_features`` in score mode on both sides).

Per-branch results score each branch alone with its own class embeddings.
"""
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..base_model import provenance_of
from ..contracts import BRANCHES, DEFAULT_LAM, FUSION_FEATURE, FUSION_MODES
from ..data.decode import ThermalNorm
from ..model import fuse_features
from .metrics import classification_metrics
from .templates import load_templates, prompts_for
from .tree import ThermalImageFolder, collate

log = logging.getLogger(__name__)

FUSED = "fused"  # key of the fused features next to the branch names


def dual_branches(model) -> Optional[tuple]:
    """The branch names to fuse if ``model`` is a dual T-CLIP model (both contract branches), else None."""
    branches = tuple(getattr(model, "branches", ()) or ())
    return BRANCHES if set(BRANCHES) <= set(branches) else None


def _features(model, encode: str, inputs: torch.Tensor, dual: bool) -> Dict[str, torch.Tensor]:
    """Normalised features: {branch: (N, D)} for a dual model, {FUSED: (N, D)} for any other."""
    if dual:
        return getattr(model, f"branch_{encode}_features")(inputs, branch=BRANCHES)
    return {FUSED: F.normalize(getattr(model, f"encode_{encode}")(inputs), dim=-1)}


def _class_mean(per_prompt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C * T, D) normalised prompt embeddings, class-major -> (C, D): mean per class, renormalised."""
    return F.normalize(per_prompt.reshape(num_classes, -1, per_prompt.shape[-1]).mean(dim=1), dim=-1)


@torch.no_grad()
def class_embeddings(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str],
                     lam: float = DEFAULT_LAM, fusion: Optional[str] = None, device: str = "cpu",
                     batch_size: int = 256) -> Dict[str, torch.Tensor]:
    """Class embeddings ``{name: (C, D')}``: ``'fused'`` (what is scored) and, for dual models, each branch.

    ``fusion`` defaults to the model's own (``model.fusion``) and otherwise to feature fusion.
    """
    prompts = [p for name in classnames for p in prompts_for(name, templates)]
    dual = dual_branches(model) is not None
    chunks: Dict[str, List[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size]).to(device)
        for name, feats in _features(model, "text", tokens, dual).items():
            chunks.setdefault(name, []).append(feats.float().cpu())
    per_prompt = {name: torch.cat(parts) for name, parts in chunks.items()}
    if not dual:
        return {FUSED: _class_mean(per_prompt[FUSED], len(classnames))}
    out = {name: _class_mean(per_prompt[name], len(classnames)) for name in BRANCHES}
    if _fusion_of(model, fusion) == FUSION_FEATURE:
        out[FUSED] = _class_mean(fuse_features(per_prompt, lam, FUSION_FEATURE), len(classnames))
    else:
        out[FUSED] = fuse_features({name: out[name] for name in BRANCHES}, lam, _fusion_of(model, fusion))
    return out


def _fusion_of(model, fusion: Optional[str]) -> str:
    mode = fusion or getattr(model, "fusion", None) or FUSION_FEATURE
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion mode {mode!r} unknown; choose from {FUSION_MODES}")
    return mode


def scores_from_embeddings(images: Dict[str, torch.Tensor], classes: Dict[str, torch.Tensor], lam: float,
                           fusion: str) -> Dict[str, np.ndarray]:
    """``{name: (N, C) cosine scores}`` for the fused features and every branch present in both dicts."""
    out = {}
    if FUSED in images:
        out[FUSED] = images[FUSED] @ classes[FUSED].T
    else:
        fused_images = fuse_features({b: images[b] for b in BRANCHES}, lam, fusion)
        out[FUSED] = fused_images @ classes[FUSED].T
    for name in BRANCHES:
        if name in images and name in classes:
            out[name] = images[name] @ classes[name].T
    return {name: s.numpy() for name, s in out.items()}


def _as_dataset(tree_or_dataset, preprocess, norm: Optional[ThermalNorm], classnames):
    if isinstance(tree_or_dataset, (str, Path)):
        return ThermalImageFolder(tree_or_dataset, transform=preprocess, norm=norm)
    return tree_or_dataset


@torch.no_grad()
def classify(model, tree_or_dataset, classnames: Optional[Sequence[str]] = None,
             templates: Union[None, str, Sequence[str]] = None, *, tokenizer: Optional[Callable] = None,
             preprocess: Optional[Callable] = None, lam: float = DEFAULT_LAM, fusion: Optional[str] = None,
             per_branch: bool = False, norm: Optional[ThermalNorm] = None, batch_size: int = 64,
             workers: int = 0, device: str = "cpu", progress: bool = True) -> Dict:
    """Zero-shot classify an ImageFolder tree (or a dataset) and return the metrics.

    Args:
        model: an OpenCLIP CLIP or a T-CLIP model (dual models are fused, see the module docstring).
        tree_or_dataset: an ImageFolder tree path, or a map-style dataset whose items are
            ``(image tensor or None, label, index, error text)`` like :class:`ThermalImageFolder`.
        classnames: the text name of each label, in label order (default: the tree's folder names).
        templates: prompt templates with ``{}`` (or ``{c}``) for the class name, a JSON file of them,
            or None for the shipped thermal ensemble (``templates.json``).
        tokenizer: OpenCLIP tokenizer (default: the model's, else CLIP's BPE).
        preprocess: image transform for a tree (default: the model's evaluation transform).
        lam: fusion weight of the global branch.
        fusion: ``'feature'`` or ``'score'`` (default: the model's own).
        per_branch: also score each branch of a dual model alone (``result['branches']``).
        norm: thermal normalisation of >8-bit frames (default: percentile 1-99, as training).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        device: torch device.
        progress: show a tqdm bar.

    Returns:
        CLIP_benchmark-style metrics (``acc1``, ``acc5``, ``mean_per_class_recall``), ``per_class``,
        ``confusion_matrix``, ``classnames``, ``n_samples`` (scored), ``n_unreadable`` and
        ``unreadable`` (``[{"path", "error"}]``), the ``fusion`` and ``lam`` used (None for a plain model)
        and, with ``per_branch``, ``branches: {branch: metrics}``.

    Raises:
        ValueError: no readable image, or the class names do not match the labels.
    """
    from open_clip_thermal.evaluation.encode import model_preprocess, model_tokenizer

    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    model = model.to(device).eval()
    dataset = _as_dataset(tree_or_dataset, preprocess or model_preprocess(model), norm, classnames)
    if classnames is None:
        classnames = list(getattr(dataset, "classes"))
    labels = set(getattr(dataset, "targets", []))
    if labels and max(labels) >= len(classnames):
        raise ValueError(f"{len(classnames)} class names for labels up to {max(labels)}")
    templates = load_templates(templates)
    if tokenizer is None:
        tokenizer = model_tokenizer(model, provenance_of(model).model_name or "")
    dual = dual_branches(model) is not None
    mode = _fusion_of(model, fusion) if dual else None
    classes = class_embeddings(model, tokenizer, classnames, templates, lam, mode, device)

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    chunks: Dict[str, List[torch.Tensor]] = {}
    targets: List[int] = []
    unreadable = []
    for images, batch_labels, _, bad in tqdm(loader, desc="classify", unit="batch", disable=not progress,
                                             leave=False):
        for index, error in bad:
            path = dataset.samples[index][0] if hasattr(dataset, "samples") else index
            unreadable.append({"path": str(path), "error": error})
            log.warning("unreadable image %s: %s", path, error)
        if images is None:
            continue
        for name, feats in _features(model, "image", images.to(device), dual).items():
            chunks.setdefault(name, []).append(feats.float().cpu())
        targets.extend(batch_labels)
    if not targets:
        raise ValueError(f"no readable image ({len(unreadable)} unreadable)")
    image_feats = {name: torch.cat(parts) for name, parts in chunks.items()}
    scores = scores_from_embeddings(image_feats, classes, lam, mode or FUSION_FEATURE)
    result = classification_metrics(scores[FUSED], targets, classnames)
    result.update(classnames=list(classnames), n_unreadable=len(unreadable), unreadable=unreadable,
                  n_templates=len(templates), fusion=mode, lam=lam if dual else None)
    if per_branch and dual:
        result["branches"] = {name: classification_metrics(scores[name], targets, classnames) for name in BRANCHES}
    return result

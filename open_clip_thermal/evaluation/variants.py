"""Variant specs: parsing, which captions each row uses, and building the models.

Spec syntax (one ``--variant`` each)::

    KIND[/TAG]=MODEL[:WEIGHTS[,WEIGHTS...]]

``WEIGHTS`` is one seed: an adapter folder, a checkpoint, ``none`` (random init, for smoke
tests), or for the ``tclip*`` kinds ``GLOBAL_DIR+FG_DIR`` (two single-branch adapter folders of
the same seed). Several comma-separated seeds give mean +- std.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..contracts import FINE_GRAINED, GLOBAL
from .errors import BenchmarkError

SINGLE_KINDS = ("lora-global", "lora-fg", "lora-mixed", "clip-adapter", "full", "declip")
FUSED_KINDS = ("tclip-global", "tclip-fg", "tclip-dual")
KINDS = ("zeroshot",) + SINGLE_KINDS + FUSED_KINDS + ("tclip",)
BASELINE_KINDS = ("clip-adapter", "full", "declip")
REFERENCE_KIND = "lora-global"  # the "vs. Global LoRA" row compares against this kind

# Captions each kind is scored with: single-branch rows list one caption type per row; fused rows
# give (caption through the global branch, caption through the fine-grained branch).
_SINGLE_ROWS = {
    "zeroshot": (GLOBAL, FINE_GRAINED),
    "lora-global": (GLOBAL,),
    "lora-fg": (FINE_GRAINED,),
    "lora-mixed": (GLOBAL, FINE_GRAINED),
    "clip-adapter": (GLOBAL, FINE_GRAINED),
    "full": (GLOBAL, FINE_GRAINED),
    "declip": (GLOBAL, FINE_GRAINED),
}
_FUSED_CAPTIONS = {
    "tclip-global": (GLOBAL, GLOBAL),
    "tclip-fg": (FINE_GRAINED, FINE_GRAINED),
    "tclip-dual": (GLOBAL, FINE_GRAINED),
}
CAPTION_LABELS = {c: c.replace("_", "-") for c in (GLOBAL, FINE_GRAINED)}  # in row names: "lora-mixed (fine-grained)"


@dataclass(frozen=True)
class VariantSpec:
    """One ``--variant``: a kind, its row name, the model name and one weight set per seed."""
    kind: str
    name: str
    model: str
    seeds: Tuple[Tuple[Optional[str], ...], ...]  # per seed: (weights,) or (global_dir, fg_dir)

    @property
    def fused(self) -> bool:
        return self.kind in FUSED_KINDS


@dataclass(frozen=True)
class Row:
    """One table row: how to turn a model's cached embeddings into paired image/text features."""
    label: str
    variant: str
    kind: str
    captions: Tuple[str, ...]  # (caption,) for single rows, (global-branch, fg-branch caption) fused
    fused: bool


def _weights(token: str) -> Optional[str]:
    return None if token.lower() == "none" else token


def parse_variant(text: str) -> List[VariantSpec]:
    """Parse one ``KIND[/TAG]=MODEL[:WEIGHTS,...]`` spec; kind ``tclip`` expands to the three T-CLIP rows.

    Raises:
        BenchmarkError: unknown kind, missing model, or a ``+`` pair used outside the tclip kinds.
    """
    if "=" not in text:
        raise BenchmarkError(f"variant {text!r}: expected KIND[/TAG]=MODEL[:WEIGHTS,...]")
    head, body = text.split("=", 1)
    kind, _, tag = head.strip().partition("/")
    if kind not in KINDS:
        raise BenchmarkError(f"variant {text!r}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "zeroshot":
        raise BenchmarkError(f"variant {text!r}: zero-shot rows come from --base-model/--base-pretrained")
    model, _, weights = body.partition(":")
    if not model.strip():
        raise BenchmarkError(f"variant {text!r}: no model name before ':'")
    seeds = []
    for token in (weights.split(",") if weights.strip() else ["none"]):
        parts = tuple(_weights(p.strip()) for p in token.split("+"))
        if len(parts) > 2 or (len(parts) == 2 and not kind.startswith("tclip")):
            raise BenchmarkError(f"variant {text!r}: 'GLOBAL+FG' adapter pairs only apply to tclip kinds")
        if len(parts) == 2 and None in parts:
            raise BenchmarkError(f"variant {text!r}: both folders of a 'GLOBAL+FG' pair are needed")
        seeds.append(parts)
    kinds = FUSED_KINDS if kind == "tclip" else (kind,)
    return [VariantSpec(k, f"{k}/{tag}" if tag else k, model.strip(), tuple(seeds)) for k in kinds]


def zeroshot_spec(base_model: str, base_pretrained: Optional[str]) -> VariantSpec:
    """The zero-shot base CLIP as a one-seed variant."""
    return VariantSpec("zeroshot", "zeroshot", base_model, ((base_pretrained,),))


def rows_for(spec: VariantSpec) -> List[Row]:
    """Table rows of a variant (e.g. lora-mixed gives one row per caption type)."""
    if spec.fused:
        return [Row(spec.name, spec.name, spec.kind, _FUSED_CAPTIONS[spec.kind], True)]
    captions = _SINGLE_ROWS[spec.kind]
    if len(captions) == 1:
        return [Row(spec.name, spec.name, spec.kind, captions, False)]
    return [Row(f"{spec.name} ({CAPTION_LABELS[c]})", spec.name, spec.kind, (c,), False) for c in captions]


def needed_embeddings(row: Row) -> List[Tuple[Optional[str], str]]:
    """(branch, what) pairs a row reads; ``what`` is ``image`` or a caption type, branch None = whole model."""
    if not row.fused:
        return [(None, "image"), (None, row.captions[0])]
    return [(GLOBAL, "image"), (FINE_GRAINED, "image"), (GLOBAL, row.captions[0]), (FINE_GRAINED, row.captions[1])]


def _thermal_create(model_name: str, pretrained: Optional[str]) -> torch.nn.Module:
    from open_clip_thermal import create_model
    return create_model(model_name, pretrained=pretrained)


def _zeroshot_create(model_name: str, pretrained: Optional[str]) -> torch.nn.Module:
    """The stock base CLIP, with the activation its weights were trained with ('openai' -> QuickGELU)."""
    from open_clip_thermal.base_model import build_base
    return build_base(model_name, pretrained, {})


def _load_pair(model_name: str, global_dir: str, fg_dir: str) -> torch.nn.Module:
    """A dual model from two single-branch adapter folders of one seed (the registry's 'G+F' form)."""
    return _thermal_create(model_name, f"{global_dir}+{fg_dir}")


def _short(message: str, limit: int = 400) -> str:
    # OpenCLIP's "config not found" lists every known model; keep messages to the point.
    return message if len(message) <= limit else message[:limit] + " ..."


def check_spec(spec: VariantSpec) -> None:
    """Cheap checks before any encoding: the model name is known, no seed repeats and local weight paths exist.

    Raises:
        BenchmarkError: naming the variant and the unknown model, repeated seed or missing path.
    """
    import open_clip
    known = set(open_clip.list_models())
    # baselines whose architecture is recorded in their weights folder ('clip-adapter')
    from open_clip_thermal.baselines import list_baseline_models
    known.update(list_baseline_models())
    from open_clip_thermal.registry import custom_base  # 'tclip-custom-<base>': rebuilt from its adapter folders
    if not spec.model.startswith(("hf-hub:", "local-dir:")) and spec.model not in known and not custom_base(spec.model):
        raise BenchmarkError(f"variant {spec.name}: unknown model {spec.model!r} "
                             "(not an OpenCLIP, T-CLIP or baseline model name; see open_clip.list_models() "
                             "and open_clip_thermal.baselines.list_baseline_models())")
    repeated = sorted({"+".join("none" if w is None else w for w in seed) for seed in spec.seeds if spec.seeds.count(seed) > 1})
    if repeated:  # 'none' too: random inits are seeded, so they are one model
        raise BenchmarkError(f"variant {spec.name}: the seeds repeat {', '.join(repeated)}; each seed must be its own "
                             "run, else one run counts several times in the mean and the ± std shrinks")
    for seed in spec.seeds:
        for weights in seed:
            looks_like_path = weights is not None and ("/" in weights or "\\" in weights or "." in weights)
            if looks_like_path and "://" not in weights and not weights.startswith("hf-hub:") and not os.path.exists(weights):
                raise BenchmarkError(f"variant {spec.name}: weights {weights!r} do not exist")


def build_model(spec: VariantSpec, seed: Tuple[Optional[str], ...]) -> torch.nn.Module:
    """Build the model of one seed of ``spec`` in eval mode.

    Raises:
        BenchmarkError: the weights cannot be loaded (missing file, adapter for another base,
            shape mismatch, unsupported baseline), naming the variant, model and weights.
    """
    # Random inits ('none') are seeded so repeated runs, and the embedding cache, see the same model.
    torch.manual_seed(0)
    try:
        if spec.kind == "zeroshot":
            model = _zeroshot_create(spec.model, seed[0])
        elif len(seed) == 2:
            model = _load_pair(spec.model, seed[0], seed[1])
        else:
            model = _thermal_create(spec.model, seed[0])
    except BenchmarkError:
        raise
    except Exception as error:
        hint = " (a baseline checkpoint must be loadable by open_clip_thermal.create_model)" \
            if spec.kind in BASELINE_KINDS else ""
        raise BenchmarkError(f"variant {spec.name}: cannot load model {spec.model!r} with weights "
                             f"{'+'.join(str(s) for s in seed)!r}{hint}: {type(error).__name__}: {_short(str(error))}") from None
    branches = tuple(getattr(model, "branches", ()))
    if spec.fused and not {GLOBAL, FINE_GRAINED} <= set(branches):
        raise BenchmarkError(f"variant {spec.name}: model {spec.model!r} has branches {list(branches) or 'none'}; "
                             f"{spec.kind} needs '{GLOBAL}' and '{FINE_GRAINED}' (use a dual model or GLOBAL+FG folders)")
    return model.eval()

"""Building the frozen base CLIP, and the one rule for the activation its weights need.

OpenAI's CLIP weights were trained with QuickGELU (``x * sigmoid(1.702 x)``), but OpenCLIP's
``ViT-B-16.json`` says GELU; OpenCLIP only *warns* when the two disagree. Worse, the flag that fixes
it, ``force_quick_gelu``, cannot tell "not asked" from "asked for GELU": ``create_model_and_transforms``,
``create_model_from_pretrained`` and open_clip_train all pass ``force_quick_gelu=False`` by default.
So the rule here ignores that flag's False and follows the weights:

* a base built from an OpenCLIP pretrained tag whose pretrained config says ``quick_gelu`` (every
  ``openai`` tag), or from one of our exports that records QuickGELU, gets QuickGELU;
* a user who really wants GELU on such weights says so with ``force_gelu=True`` (``--force-gelu`` on
  the trainer) and gets a warning naming what that does.

Adapter folders and exports record the activation their model ran with (:func:`activation_of`).
When one is loaded, that record decides the base's activation (the adapters fit no other); an
explicit flag that contradicts it makes :func:`check_activation` refuse the load.

Every path that builds a base goes through :func:`build_base` (T-CLIP names, the baselines) or
:func:`resolve_activation` (stock names the package builds itself: the benchmark's zero-shot rows, the
trainer's full fine-tuning), so the rule lives in this file only.
"""
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import open_clip
import open_clip.factory as oc_factory
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .seam import original_create_model  # noqa: F401  (OpenCLIP's own create_model)

QUICK_GELU = "quick_gelu"
GELU = "gelu"
FORCE_GELU = "force_gelu"  # keyword of create_model (and --force-gelu of the CLIs): GELU on QuickGELU weights

EXPORT_FORMAT = "open_clip_thermal.openclip_weights"  # safetensors header of full-model exports


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights come from, as the factory or the trainer built it.

    Every model class of the package declares ``provenance: Optional[Provenance] = None``; the builder
    sets it, and adapter folders and export headers record it (:func:`provenance_of` reads it).
    """
    model_name: Optional[str] = None  # the name it was built under ('tclip-dual', 'clip-adapter', 'full', ...)
    base_model: Optional[str] = None  # OpenCLIP architecture of the base ('ViT-B-16')
    base_pretrained: Optional[str] = None  # base weights: an OpenCLIP tag, an absolute checkpoint path, or None


def provenance_of(model: nn.Module) -> Provenance:
    """``model.provenance``, or an empty :class:`Provenance` for a model nobody recorded one on
    (a plain OpenCLIP model, or a wrapper built by hand)."""
    # getattr: a plain OpenCLIP CLIP (the ``full`` baseline) does not declare the attribute
    return getattr(model, "provenance", None) or Provenance()


def weights_need_quick_gelu(model_name: str, pretrained) -> bool:
    """Whether the weights named by ``pretrained`` for ``model_name`` were trained with QuickGELU.

    True for an OpenCLIP tag whose pretrained config says ``quick_gelu`` (``'openai'``) and for a
    safetensors export of this package that records QuickGELU; False otherwise (unknown files included).
    """
    if not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained):
        return False
    tag_cfg = oc_factory.get_pretrained_cfg(model_name, str(pretrained)) if isinstance(pretrained, str) else {}
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu"))
    return export_records_quick_gelu(pretrained)


def resolve_activation(model_name: str, pretrained, kwargs: dict, recorded: Optional[str] = None) -> dict:
    """``kwargs`` for ``open_clip.create_model`` with ``force_quick_gelu`` set by the weights.

    Pops :data:`FORCE_GELU`; a ``force_quick_gelu=True`` the caller passed is kept. ``recorded`` is
    the activation an adapter folder or export was trained with: without an explicit flag it decides,
    because the adapters only fit the base they were trained on.
    """
    kwargs = dict(kwargs)
    force_gelu = bool(kwargs.pop(FORCE_GELU, False))
    if kwargs.get("force_quick_gelu") and force_gelu:
        raise ValueError("force_quick_gelu=True and force_gelu=True contradict each other")
    explicit = force_gelu or bool(kwargs.get("force_quick_gelu"))
    weights_quick = weights_need_quick_gelu(model_name, pretrained)
    if recorded is not None and not explicit:
        if weights_quick and recorded == GELU:
            warnings.warn(f"{model_name} weights {pretrained!r} were trained with QuickGELU, but these adapters were "
                          "trained on a GELU base (--force-gelu); building GELU to match them", UserWarning,
                          stacklevel=3)
        kwargs["force_quick_gelu"] = recorded == QUICK_GELU
        return kwargs
    if weights_quick:
        if force_gelu:
            warnings.warn(f"{model_name} weights {pretrained!r} were trained with QuickGELU, but force_gelu=True "
                          "builds the base with GELU: every feature differs from the released model's",
                          UserWarning, stacklevel=3)
            kwargs["force_quick_gelu"] = False
        else:
            kwargs["force_quick_gelu"] = True
    return kwargs


def uses_quick_gelu(model: nn.Module) -> bool:
    """Whether any block of ``model`` uses OpenCLIP's QuickGELU."""
    from open_clip.transformer import QuickGELU
    return any(isinstance(m, QuickGELU) for m in model.modules())


def activation_of(model: nn.Module) -> str:
    """``'quick_gelu'`` or ``'gelu'``: the MLP activation ``model`` runs with (recorded in saved files)."""
    return QUICK_GELU if uses_quick_gelu(model) else GELU


def check_activation(recorded: Optional[str], model: nn.Module, what: str) -> None:
    """Refuse weights trained under another activation than ``model``'s; warn when none was recorded.

    Raises:
        ValueError: ``recorded`` differs from :func:`activation_of` ``(model)``.
    """
    actual = activation_of(model)
    if recorded is None:
        warnings.warn(f"{what} does not record the activation it was trained with (saved by an older "
                      f"open_clip_thermal); assuming it matches this base's {actual}", UserWarning, stacklevel=3)
        return
    if recorded != actual:
        flag = "force_gelu=True" if recorded == QUICK_GELU else "force_quick_gelu=True"
        raise ValueError(f"{what} was trained on a base with {recorded}, but this base uses {actual}; its features "
                         f"would be wrong. Drop {flag}: without a flag, create_model builds the base with the "
                         "activation the folder records")


def export_metadata(model: nn.Module) -> dict:
    """safetensors header of a plain OpenCLIP export of ``model``: records its activation, which the
    weights alone cannot tell (read back by :func:`export_records_quick_gelu`)."""
    provenance = provenance_of(model)
    return {"format": EXPORT_FORMAT, "quick_gelu": str(uses_quick_gelu(model)).lower(),
            "base_model": str(provenance.base_model), "method": str(provenance.model_name)}


def export_records_quick_gelu(path) -> bool:
    """True when ``path`` is a safetensors export of this package whose model ran with QuickGELU."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".safetensors") or not os.path.isfile(path):
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return metadata.get("format") == EXPORT_FORMAT and metadata.get("quick_gelu") == "true"


def random_weights_message(base_model: str) -> str:
    """The warning for a base built without weights: what happened, what it means, what to pass instead."""
    tags = open_clip.list_pretrained_tags_by_model(base_model)
    shown = ", ".join(repr(t) for t in tags[:3]) + (", ..." if len(tags) > 3 else "")
    instead = (f"one of its OpenCLIP tags ({shown}) or a base checkpoint file" if tags
               else "a base checkpoint file (it has no OpenCLIP pretrained tag)")
    return (f"base model {base_model!r} built with random weights, because no weights were given (pretrained=None; "
            "on the command line: no --pretrained, weights 'none' or --base-pretrained none): its features, and "
            f"every score computed from them, are those of an untrained network. For real use give {instead}; "
            "a T-CLIP model also takes an adapter folder")


def build_base(base_model: str, pretrained: Optional[str], kwargs: dict, recorded: Optional[str] = None) -> nn.Module:
    """Build the plain OpenCLIP base ``base_model`` with ``pretrained`` weights and the activation they need.

    Args:
        base_model: an OpenCLIP architecture name (``'ViT-B-16'``).
        pretrained: an OpenCLIP tag, a checkpoint file, or None (random weights, with a warning).
        kwargs: passed to OpenCLIP's ``create_model`` (may hold ``force_gelu``).
        recorded: the activation recorded by the adapter folder that will be loaded on this base.

    Raises:
        ValueError: ``pretrained`` is neither a tag nor a loadable checkpoint of ``base_model``.
    """
    create = original_create_model()
    kwargs = resolve_activation(base_model, pretrained, kwargs, recorded)
    if pretrained is None:
        warnings.warn(random_weights_message(base_model), UserWarning, stacklevel=3)
        return create(base_model, pretrained=None, **kwargs)
    if oc_factory.get_pretrained_cfg(base_model, pretrained):
        return create(base_model, pretrained=pretrained, **kwargs)
    if not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(base_model)
        raise ValueError(f"pretrained={pretrained!r} is neither a known tag of base model {base_model!r} "
                         f"(tags: {tags}), nor an existing checkpoint file or adapter folder")
    if os.path.isdir(pretrained):
        raise ValueError(f"pretrained={pretrained!r} is a folder without adapter_config.json; "
                         "give a checkpoint file or an adapter folder")
    try:
        return create(base_model, pretrained=pretrained, **kwargs)
    except Exception as e:  # torch.load/safetensors/state_dict errors surface from deep inside
        raise ValueError(f"could not load base checkpoint {pretrained!r} into {base_model!r}: "
                         f"{type(e).__name__}: {e}") from e

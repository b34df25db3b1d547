"""The OpenCLIP model interface, once, for every model class of the package that wraps an OpenCLIP CLIP.

open_clip_train, OpenCLIP's transforms and tests, CLIP_benchmark and our benchmark treat a model as an
OpenCLIP ``CLIP``: ``encode_image``/``encode_text`` with ``normalize``, ``forward`` returning a dict,
a top-level ``logit_scale`` (the trainer clamps it), ``lock_image_tower``/``lock_text_tower``,
``set_grad_checkpointing``, ``visual`` (transforms read ``visual.preprocess_cfg``), ``context_length``
and ``vocab_size``, an ``output_dict`` attribute. :class:`OpenCLIPWrapper` gives all of that by
forwarding to the wrapped CLIP (like PEFT's model wrappers, every other attribute too), so a subclass
(T-CLIP's :class:`~open_clip_thermal.model.DualLoRAFusion`, the CLIP-Adapter and DeCLIP baselines)
only writes what it changes.

The wrapped CLIP stays registered under the subclass's own attribute name (``WRAPPED``: ``base`` or
``online``), so state_dict keys, and with them every saved checkpoint, are what they were.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn

from .base_model import Provenance


class OpenCLIPWrapper(nn.Module):
    """An OpenCLIP ``CLIP``/``CustomTextCLIP`` behind the same interface, plus what a subclass adds.

    Subclasses register the wrapped model as ``self.<WRAPPED>`` in their ``__init__`` and set
    ``FROZEN_BASE`` when only their own parts train (then :meth:`lock_image_tower` and
    :meth:`lock_text_tower` refuse to unlock base layers instead of calling OpenCLIP's ``lock``, which
    would also freeze the parts that train).

    Args:
        output_dict: kept as an attribute for OpenCLIP's ``create_model(..., output_dict=...)`` and code
            that sets ``model.output_dict``; :meth:`forward` returns a dict either way, as OpenCLIP
            expects of every model class other than its own ``CLIP``/``CustomTextCLIP``.
    """

    WRAPPED = "base"  # attribute (and state_dict prefix) of the wrapped OpenCLIP model
    FROZEN_BASE: Optional[str] = None  # e.g. "T-CLIP trains LoRA": the base stays frozen, lock_* refuse to unlock
    provenance: Optional[Provenance] = None  # set by the factory or the trainer: model name, base model, base weights

    def __init__(self, output_dict: bool = True):
        super().__init__()
        self.output_dict = output_dict

    # ------------------------------------------------------------------ the wrapped model
    @property
    def wrapped(self) -> nn.Module:
        """The OpenCLIP model inside (``self.base`` or ``self.online``)."""
        return self._modules[self.WRAPPED]

    def __getattr__(self, name: str):
        """Fall back to the wrapped model (``transformer``, ``token_embedding``, ``ln_final``, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            # read _modules from __dict__: while copy/pickle rebuild the object it is not there yet
            wrapped = self.__dict__.get("_modules", {}).get(self.WRAPPED)
            if wrapped is None:
                raise
            return getattr(wrapped, name)

    @property
    def visual(self) -> nn.Module:
        """The image tower (OpenCLIP transforms read ``visual.preprocess_cfg``, tests ``visual.image_size``)."""
        return self.wrapped.visual

    @property
    def context_length(self) -> int:
        return self.wrapped.context_length

    @property
    def vocab_size(self) -> int:
        return self.wrapped.vocab_size

    @property
    def logit_scale(self) -> nn.Parameter:
        """The temperature open_clip_train clamps (log scale): the wrapped model's."""
        return self.wrapped.logit_scale

    @property
    def logit_bias(self) -> Optional[nn.Parameter]:
        """SigLIP-style bias of the wrapped model, None for CLIP."""
        return getattr(self.wrapped, "logit_bias", None)

    # ------------------------------------------------------------------ training controls
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False):
        """OpenCLIP's lock of the image tower, or for a frozen base a check that nothing is unlocked."""
        if self.FROZEN_BASE is None:
            return self.wrapped.lock_image_tower(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)
        if unlocked_groups:
            raise ValueError(f"{self.FROZEN_BASE} only; unlocking base image layers is not supported")

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """See :meth:`lock_image_tower`."""
        if self.FROZEN_BASE is None:
            return self.wrapped.lock_text_tower(unlocked_layers=unlocked_layers, freeze_layer_norm=freeze_layer_norm)
        if unlocked_layers:
            raise ValueError(f"{self.FROZEN_BASE} only; unlocking base text layers is not supported")

    def set_grad_checkpointing(self, enable: bool = True):
        self.wrapped.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------ encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.wrapped.encode_image(images, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.wrapped.encode_text(text, normalize=normalize)

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None
                ) -> Dict[str, Optional[torch.Tensor]]:
        """OpenCLIP's contract: ``image_features`` and ``text_features`` (normalised, None for a missing
        input), the exponentiated ``logit_scale`` and, when the base has one, ``logit_bias``, as
        ``CLIP.forward`` gives them."""
        out = {
            "image_features": self.encode_image(image, normalize=True) if image is not None else None,
            "text_features": self.encode_text(text, normalize=True) if text is not None else None,
            "logit_scale": self.logit_scale.exp(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

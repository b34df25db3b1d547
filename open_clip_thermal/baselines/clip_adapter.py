"""CLIP-Adapter (Gao et al., 2021, "CLIP-Adapter: Better Vision-Language Models with Feature Adapters").

A small residual bottleneck on the frozen CLIP image embedding::

    f'  = alpha * adapter(f) + (1 - alpha) * f,     adapter = ReLU . Linear(E/r -> E) . ReLU . Linear(E -> E/r)

with ``r = 4`` (reduction) and ``alpha = 0.2`` (the residual ratio) by default, both linear layers
without bias. Everything of CLIP stays frozen, the text tower and the temperature included: CLIP-Adapter
keeps CLIP's logit scale fixed, so only ``2 * E * E / r`` weights train (131,072 for ViT-B-16, E = 512).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base_model import Provenance

DEFAULT_ALPHA = 0.2
DEFAULT_REDUCTION = 4


class ResidualBottleneck(nn.Module):
    """The adapter MLP: ``E -> E/reduction -> E``, ReLU after each layer, no biases."""

    def __init__(self, dim: int, reduction: int = DEFAULT_REDUCTION):
        super().__init__()
        if reduction < 1 or dim % reduction:
            raise ValueError(f"reduction must divide the embedding size {dim}, got {reduction}")
        self.down = nn.Linear(dim, dim // reduction, bias=False)
        self.up = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.up(F.relu(self.down(x))))


class ClipAdapterModel(nn.Module):
    """A frozen OpenCLIP CLIP with a CLIP-Adapter on its image embedding.

    Keeps the interface open_clip_train and the benchmark use: ``encode_image``/``encode_text`` with
    ``normalize``, ``forward`` returning a dict (always, as OpenCLIP expects of classes other than its
    own ``CLIP``), ``logit_scale``, ``visual``, ``lock_*_tower`` and ``set_grad_checkpointing``.

    Args:
        base: an OpenCLIP ``CLIP``/``CustomTextCLIP`` with its weights loaded; frozen here, in place.
        alpha: residual ratio, the share of the adapter's output in the image embedding, in [0, 1].
        reduction: bottleneck reduction factor of the adapter.
        output_dict: kept as an attribute for OpenCLIP's ``create_model(..., output_dict=...)``;
            ``forward`` returns a dict either way.
    """

    provenance: Optional[Provenance] = None  # set by create_clip_adapter_model and the trainer

    def __init__(self, base: nn.Module, alpha: float = DEFAULT_ALPHA, reduction: int = DEFAULT_REDUCTION,
                 output_dict: bool = True):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"CLIP-Adapter alpha must be in [0, 1], got {alpha}")
        embed_dim = embedding_size(base)
        base.requires_grad_(False)
        self.base = base
        self.adapter = ResidualBottleneck(embed_dim, reduction)
        self.alpha = float(alpha)
        self.reduction = int(reduction)
        self.output_dict = output_dict
        self.adapter.to(base.logit_scale.device)

    # ------------------------------------------------------------------ OpenCLIP interface
    @property
    def visual(self) -> nn.Module:
        """The base's image tower (OpenCLIP transforms read ``visual.preprocess_cfg``)."""
        return self.base.visual

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's temperature, frozen (open_clip_train still clamps it, a no-op)."""
        return self.base.logit_scale

    @property
    def logit_bias(self) -> Optional[nn.Parameter]:
        return getattr(self.base, "logit_bias", None)

    @property
    def context_length(self) -> int:
        return self.base.context_length

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False):
        """The base is frozen already; unlocking base layers is not CLIP-Adapter."""
        if unlocked_groups:
            raise ValueError("CLIP-Adapter trains the adapter only; unlocking base image layers is not supported")

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """See :meth:`lock_image_tower`."""
        if unlocked_layers:
            raise ValueError("CLIP-Adapter trains the adapter only; unlocking base text layers is not supported")

    def set_grad_checkpointing(self, enable: bool = True):
        self.base.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------ encoders
    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """Blend raw (unnormalised) CLIP image features with the adapter's output."""
        # The adapter keeps its own dtype (fp32) under a half-precision base, like open_clip_train's AMP.
        adapted = self.adapter(image_features.to(self.adapter.down.weight.dtype)).to(image_features.dtype)
        return self.alpha * adapted + (1.0 - self.alpha) * image_features

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.adapt(self.base.encode_image(images, normalize=False))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.base.encode_text(text, normalize=normalize)

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        """OpenCLIP's contract for models other than its own ``CLIP``: a dict of normalised features, the
        exponentiated temperature and, when the base has one, ``logit_bias``."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        out = {"image_features": image_features, "text_features": text_features,
               "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def embedding_size(base: nn.Module) -> int:
    """The joint embedding size E of an OpenCLIP model (the image tower's output width)."""
    visual = base.visual
    size = getattr(visual, "output_dim", None)
    if size is None:
        proj = getattr(visual, "proj", None)
        size = proj.shape[1] if isinstance(proj, torch.Tensor) else None
    if size is None:
        raise ValueError(f"cannot tell the embedding size of {type(base).__name__}; expected visual.output_dim")
    return int(size)

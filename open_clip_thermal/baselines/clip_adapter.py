"""CLIP-Adapter (Gao et al., 2021, "CLIP-Adapter: Better Vision-Language Models with Feature Adapters").

A small residual bottleneck on the frozen CLIP image embedding::

    f'  = alpha * adapter(f) + (1 - alpha) * f,     adapter = ReLU . Linear(E/r -> E) . ReLU . Linear(E -> E/r)

with ``r = 4`` (reduction) and ``alpha = 0.2`` (the residual ratio) by default, both linear layers
without bias. Everything of CLIP stays frozen, the text tower and the temperature included: CLIP-Adapter
keeps CLIP's logit scale fixed, so only ``2 * E * E / r`` weights train (131,072 for ViT-B-16, E = 512).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..settings import CLIP_ADAPTER_ALPHA as DEFAULT_ALPHA  # re-exported under the names callers use
from ..settings import CLIP_ADAPTER_REDUCTION as DEFAULT_REDUCTION
from ..wrapper import OpenCLIPWrapper


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


class ClipAdapterModel(OpenCLIPWrapper):
    """A frozen OpenCLIP CLIP with a CLIP-Adapter on its image embedding.

    The OpenCLIP interface open_clip_train and the benchmark use (``encode_text``, ``forward``
    returning a dict, ``logit_scale`` - CLIP's, frozen -, ``visual``, ``lock_*_tower``,
    ``set_grad_checkpointing``) comes from :class:`~open_clip_thermal.wrapper.OpenCLIPWrapper`; this
    class adds the adapter to ``encode_image``.

    Args:
        base: an OpenCLIP ``CLIP``/``CustomTextCLIP`` with its weights loaded; frozen here, in place.
        alpha: residual ratio, the share of the adapter's output in the image embedding, in [0, 1].
        reduction: bottleneck reduction factor of the adapter.
        output_dict: kept as an attribute for OpenCLIP's ``create_model(..., output_dict=...)``;
            ``forward`` returns a dict either way.
    """

    FROZEN_BASE = "CLIP-Adapter trains the adapter"  # the whole CLIP stays frozen, its temperature included

    def __init__(self, base: nn.Module, alpha: float = DEFAULT_ALPHA, reduction: int = DEFAULT_REDUCTION,
                 output_dict: bool = True):
        super().__init__(output_dict)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"CLIP-Adapter alpha must be in [0, 1], got {alpha}")
        embed_dim = embedding_size(base)
        base.requires_grad_(False)
        self.base = base
        self.adapter = ResidualBottleneck(embed_dim, reduction)
        self.alpha = float(alpha)
        self.reduction = int(reduction)
        self.adapter.to(base.logit_scale.device)

    # ------------------------------------------------------------------ encoders
    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """Blend raw (unnormalised) CLIP image features with the adapter's output."""
        # The adapter keeps its own dtype (fp32) under a half-precision base, like open_clip_train's AMP.
        adapted = self.adapter(image_features.to(self.adapter.down.weight.dtype)).to(image_features.dtype)
        return self.alpha * adapted + (1.0 - self.alpha) * image_features

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CLIP's image features through the adapter (see the module docstring), then optionally normalised."""
        features = self.adapt(self.base.encode_image(images, normalize=False))
        return F.normalize(features, dim=-1) if normalize else features


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

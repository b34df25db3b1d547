"""The DeCLIP-style loss: OpenCLIP's CLIP loss plus image-image and text-text nearest-neighbour InfoNCE."""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from .declip import DeclipConfig


def nearest_neighbour_infonce(online: torch.Tensor, momentum: torch.Tensor, queue: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """InfoNCE of ``online`` embeddings over ``queue``, the positive being the queue row nearest to
    each sample's ``momentum`` embedding.

    Args:
        online: ``(B, D)`` normalised embeddings with gradient.
        momentum: ``(B, D)`` normalised momentum-encoder embeddings of the same samples (no gradient).
        queue: ``(Q, D)`` normalised embeddings of earlier batches; ``Q = 0`` gives a zero loss
            (still attached to the graph, so every parameter keeps a gradient under DDP).
        temperature: softmax temperature.

    Returns:
        The mean cross-entropy, a scalar.
    """
    if queue.shape[0] == 0:
        return online.sum() * 0.0
    queue = queue.to(online.dtype)
    # the stable momentum embedding picks the neighbour; the online one learns to find it
    positives = (momentum.to(online.dtype) @ queue.t()).argmax(dim=1)
    logits = online @ queue.t() / temperature
    return F.cross_entropy(logits, positives)


class DeclipLoss(nn.Module):
    """``CLIP loss + w_img * NN(image) + w_txt * NN(text)``, reported as three named terms.

    Reads the extra outputs of :class:`.declip.DeclipModel` in training mode.
    """

    def __init__(self, config: Optional[DeclipConfig] = None, **clip_loss_kwargs):
        super().__init__()
        self.config = config or DeclipConfig()
        self.clip_loss = ClipLoss(**clip_loss_kwargs)

    def forward(self, image_features, text_features, logit_scale, momentum_image_features=None,
                momentum_text_features=None, image_queue=None, text_queue=None, output_dict: bool = False,
                **unused) -> Dict[str, torch.Tensor]:
        if momentum_image_features is None or image_queue is None:
            raise ValueError("DeclipLoss needs the momentum features and queues that DeclipModel returns in "
                             "training mode (model.train(), both images and texts given)")
        c = self.config
        losses = {
            "contrastive_loss": self.clip_loss(image_features, text_features, logit_scale),
            "image_nn_loss": c.image_nn_weight * nearest_neighbour_infonce(
                image_features, momentum_image_features, image_queue, c.nn_temperature),
            "text_nn_loss": c.text_nn_weight * nearest_neighbour_infonce(
                text_features, momentum_text_features, text_queue, c.nn_temperature),
        }
        return losses if output_dict else sum(losses.values())

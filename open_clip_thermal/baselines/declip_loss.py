"""The DeCLIP-style loss: OpenCLIP's CLIP loss plus image-image and text-text nearest-neighbour InfoNCE,
the neighbours drawn from the momentum feature queue and the current batch."""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from .declip import DeclipConfig


def nearest_neighbour_infonce(online: torch.Tensor, momentum: torch.Tensor, queue: torch.Tensor,
                              temperature: float, include_batch: bool = True) -> torch.Tensor:
    """InfoNCE of ``online`` embeddings over the candidates (the queue and the current batch), the
    positive being the candidate nearest to each sample's ``momentum`` embedding.

    The candidates of sample ``i`` are the queue rows and, with ``include_batch``, the momentum
    embeddings of the batch's other samples (the T-CLIP paper's Table 21: nearest neighbours from the
    feature queue and the current batch). Its own momentum embedding is left out of both the
    neighbour search and the softmax: it would always be the nearest.

    Args:
        online: ``(B, D)`` normalised embeddings with gradient.
        momentum: ``(B, D)`` normalised momentum-encoder embeddings of the same samples (no gradient).
        queue: ``(Q, D)`` normalised embeddings of earlier batches.
        temperature: softmax temperature.
        include_batch: also search the current batch (default); False searches the queue only.

    Returns:
        The mean cross-entropy, a scalar; zero (still attached to the graph, so every parameter keeps
        a gradient under DDP) when no sample has a candidate (empty queue and a batch of one).
    """
    momentum = momentum.to(online.dtype)
    queued = queue.shape[0]
    others = online.shape[0] - 1 if include_batch else 0  # batch candidates per sample
    if queued + others <= 0:
        return online.sum() * 0.0
    candidates = torch.cat([queue.to(online.dtype), momentum]) if include_batch else queue.to(online.dtype)
    # the stable momentum embedding picks the neighbour; the online one learns to find it
    similarity = momentum @ candidates.t()
    logits = online @ candidates.t() / temperature
    if include_batch:
        rows = torch.arange(online.shape[0], device=online.device)
        own = torch.zeros_like(similarity, dtype=torch.bool)
        own[rows, queued + rows] = True  # sample i's own momentum embedding: column Q + i
        similarity = similarity.masked_fill(own, float("-inf"))
        logits = logits.masked_fill(own, float("-inf"))
    return F.cross_entropy(logits, similarity.argmax(dim=1))


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

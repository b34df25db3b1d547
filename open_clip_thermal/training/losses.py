"""Losses for T-CLIP training on top of OpenCLIP's ``ClipLoss``."""
from typing import Dict

import torch
import torch.nn as nn
from open_clip.loss import ClipLoss


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and the last saved checkpoint stays valid."""


class FiniteLossGuard(nn.Module):
    """Wraps a loss; raises :class:`NonFiniteLossError` naming the step (and branch) on NaN/inf.

    ``first_step`` is the global step of the first call (non-zero after a resume); each call is one
    optimisation step (gradient accumulation is not supported with this guard's step count).
    """

    def __init__(self, loss: nn.Module, first_step: int = 0):
        super().__init__()
        self.loss = loss
        self.step = first_step

    def forward(self, *args, output_dict: bool = False, **kwargs):
        out = self.loss(*args, output_dict=True, **kwargs)
        for name, value in out.items():
            if not torch.isfinite(value).all():
                branch = name[: -len("_loss")] if name.endswith("_loss") else name
                raise NonFiniteLossError(
                    f"non-finite loss ({value.detach().float().item()}) at step {self.step} in {branch!r}; "
                    "stopping - the last saved checkpoint is intact (lower --lr, check the data, or use fp32)")
        self.step += 1
        return out if output_dict else sum(out.values())


class DualBranchClipLoss(nn.Module):
    """Sum of one InfoNCE per branch, each on its own caption type and temperature.

    The branches share no parameter, so the gradient of the sum with respect to each branch equals
    that branch's own loss gradient: training both at once equals training each alone.
    """

    def __init__(self, **clip_loss_kwargs):
        super().__init__()
        self.global_loss = ClipLoss(**clip_loss_kwargs)
        self.fine_grained_loss = ClipLoss(**clip_loss_kwargs)

    def forward(self, image_features, text_features, logit_scale, fg_image_features=None, fg_text_features=None,
                fg_logit_scale=None, output_dict: bool = False, **unused) -> Dict[str, torch.Tensor]:
        if fg_image_features is None:
            raise ValueError("DualBranchClipLoss needs the fine-grained branch's outputs "
                             "(the model must be given global and fine-grained captions)")
        losses = {
            "global_loss": self.global_loss(image_features, text_features, logit_scale),
            "fine_grained_loss": self.fine_grained_loss(fg_image_features, fg_text_features, fg_logit_scale),
        }
        return losses if output_dict else sum(losses.values())

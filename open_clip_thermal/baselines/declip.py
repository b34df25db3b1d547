"""DeCLIP-style nearest-neighbour supervision (Li et al., 2022, "Supervision Exists Everywhere").

Full fine-tuning of CLIP plus two extra InfoNCE terms, one per modality, against a momentum encoder:

* the momentum encoder is an exponential moving average (EMA) of the online CLIP,
  ``m <- decay * m + (1 - decay) * theta`` after every optimiser step (decay 0.995);
* two FIFO queues keep the last ``queue_size`` (4,096) momentum image and text embeddings;
* for each sample, the momentum embedding's top-1 nearest neighbour (cosine) among the queue and the
  batch's other momentum embeddings is the positive of the online embedding in an InfoNCE over those
  candidates (temperature 0.1), image-image and text-text (see :mod:`.declip_loss`); both terms are
  weighted 0.5 and added to the CLIP loss.

The momentum weights and the queues are *buffers* (saved, never optimised). The momentum encoder
is the online model's own code run on the EMA tensors (``torch.func.functional_call``), so no second
copy of the module tree exists. The EMA update runs after each optimiser step, in training through a
global optimiser step post-hook (:mod:`open_clip_thermal.training.hooks`), so it runs exactly once per
step however many forwards a step takes; custom loops call :meth:`DeclipModel.update_momentum`.
Only the online CLIP is exported: the result is a plain OpenCLIP model.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.func import functional_call

from ..settings import DeclipConfig  # re-exported: the baseline's settings, standard library
from ..wrapper import OpenCLIPWrapper
from .clip_adapter import embedding_size


class MomentumWeights(nn.Module):
    """EMA copies of a module's parameters, held as buffers under sanitised names."""

    def __init__(self, module: nn.Module):
        super().__init__()
        # buffer names may not contain dots; keep the real names in order to map back
        self.names = [name for name, _ in module.named_parameters()]
        for name, param in module.named_parameters():
            self.register_buffer(self._key(name), param.detach().clone())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def as_dict(self) -> Dict[str, torch.Tensor]:
        """Parameter name -> EMA tensor, ready for ``functional_call``."""
        return {name: getattr(self, self._key(name)) for name in self.names}

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float) -> None:
        """``m <- decay * m + (1 - decay) * theta`` for every parameter theta of ``module``."""
        for name, param in module.named_parameters():
            ema = getattr(self, self._key(name))
            ema.mul_(decay).add_(param.detach().to(ema.dtype), alpha=1.0 - decay)


class FeatureQueue(nn.Module):
    """A FIFO ring buffer of ``size`` embeddings of width ``dim`` (buffers: saved with the model)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # rows filled so far

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def filled(self) -> torch.Tensor:
        """The stored embeddings (row order is the ring's, not arrival order)."""
        return self.features[: int(self.count)]

    def ordered(self) -> torch.Tensor:
        """The stored embeddings oldest first."""
        if int(self.count) < self.size:
            return self.filled()
        p = int(self.pointer)
        return torch.cat([self.features[p:], self.features[:p]])

    @torch.no_grad()
    def push(self, batch: torch.Tensor) -> None:
        """Append ``batch`` (N, dim), dropping the oldest rows once full."""
        batch = batch.detach().to(self.features.dtype)[-self.size:]
        n = batch.shape[0]
        rows = (int(self.pointer) + torch.arange(n, device=self.features.device)) % self.size
        self.features[rows] = batch
        self.pointer.fill_((int(self.pointer) + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))


def _gather(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features in rank order, so every rank's queue stays identical under DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.contiguous())
    return torch.cat(parts)


class DeclipModel(OpenCLIPWrapper):
    """An OpenCLIP CLIP trained in full, with a momentum encoder and image/text feature queues.

    In training mode ``forward`` also returns the momentum embeddings of the batch and snapshots of
    both queues (taken before the batch is pushed), which :class:`.declip_loss.DeclipLoss` reads.
    Evaluation mode returns OpenCLIP's usual outputs. Always a dict, as OpenCLIP expects of model
    classes other than its own ``CLIP``/``CustomTextCLIP``. The encoders, ``lock_*`` (OpenCLIP's own:
    everything trains here) and the rest of the interface are the online model's, through
    :class:`~open_clip_thermal.wrapper.OpenCLIPWrapper`.

    Args:
        base: an OpenCLIP ``CLIP``/``CustomTextCLIP`` with its starting weights loaded (trained in place).
        config: queue size, EMA decay, temperature and loss weights.
        output_dict: kept as an attribute for OpenCLIP's ``create_model(..., output_dict=...)``;
            ``forward`` returns a dict either way.
    """

    # The queues grow from all ranks' gathered features and the EMA follows identical weights, so the
    # buffers agree on every rank already; DDP's per-step broadcast of them would only cost bandwidth.
    ddp_broadcast_buffers = False
    WRAPPED = "online"  # the state_dict prefix of the trained CLIP (checkpoints keep it)

    def __init__(self, base: nn.Module, config: Optional[DeclipConfig] = None, output_dict: bool = True):
        super().__init__(output_dict)
        self.config = config or DeclipConfig()
        self.online = base
        self.momentum = MomentumWeights(base)
        dim = embedding_size(base)
        device = base.logit_scale.device
        self.image_queue = FeatureQueue(self.config.queue_size, dim).to(device)
        self.text_queue = FeatureQueue(self.config.queue_size, dim).to(device)

    # ------------------------------------------------------------------ momentum encoder
    @torch.no_grad()
    def update_momentum(self) -> None:
        """One EMA step of the momentum encoder towards the online weights (after an optimiser step)."""
        self.momentum.update(self.online, self.config.momentum)

    @torch.no_grad()
    def momentum_features(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised image and text embeddings of the momentum encoder."""
        out = functional_call(self.online, self.momentum.as_dict(), (image, text))
        if isinstance(out, dict):
            return out["image_features"], out["text_features"]
        return out[0], out[1]

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        """OpenCLIP's dict (:meth:`OpenCLIPWrapper.forward`); in training mode with both inputs also the
        momentum embeddings and the queue snapshots, then the batch's momentum embeddings are queued."""
        out = super().forward(image, text)
        if self.training and image is not None and text is not None:
            momentum_image, momentum_text = self.momentum_features(image, text)
            out.update(momentum_image_features=momentum_image, momentum_text_features=momentum_text,
                       image_queue=self.image_queue.filled().clone(), text_queue=self.text_queue.filled().clone())
            self.image_queue.push(_gather(momentum_image))
            self.text_queue.push(_gather(momentum_text))
        return out

    def export_state_dict(self) -> Dict[str, torch.Tensor]:
        """The online CLIP's state_dict: a plain OpenCLIP checkpoint of the base architecture."""
        return self.online.state_dict()

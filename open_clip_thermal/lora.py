"""LoRA for OpenCLIP transformers, with several independent adapters ("branches") per layer.

T-CLIP keeps one frozen CLIP backbone and trains two LoRA branches on it. Each adapted layer
therefore holds the frozen base weights once and one pair of low-rank matrices per branch, keyed
by branch name (PEFT's ``lora_A[adapter]`` idea). Which branch a forward pass uses is decided by a
:class:`BranchRouter` shared by every layer of a model; with several active branches the batch is
split into equal chunks, one per branch, so both branches run in one batched pass.

The low-rank matrices follow loralib's ``MergedLinear`` layout (``lora_A``: ``(r * groups, in)``,
``lora_B``: ``(out_per_group * groups, r)``), and their parameter names contain ``lora_``, so
``loralib.mark_only_lora_as_trainable`` and ``loralib.lora_state_dict`` work on T-CLIP models.
loralib's own layers are not used directly: they own a private copy of the base weight and merge it
in place on ``.eval()`` (``merge_weights=True``), both fatal when two branches share one backbone.

OpenCLIP's attention is ``nn.MultiheadAttention`` (3.x ``ResidualAttentionBlock``) or OpenCLIP's own
``Attention`` (``CustomResidualAttentionBlock``; the only attention of 4.x). Both read the fused
``in_proj_weight`` directly and ``nn.MultiheadAttention`` never calls ``out_proj.forward``, so wrapping
their sub-layers does nothing. :class:`LoRAAttention` replaces either module with one that keeps the
same parameter names (so stock checkpoints load unchanged) and adds the per-branch updates to q, k, v.

timm towers (OpenCLIP's ``TimmModel``, e.g. ViT-B-16-SigLIP's ``visual.trunk``) use timm's ``Attention``,
whose forward does call its fused ``qkv`` ``nn.Linear``: there the Linear itself is wrapped
(:class:`LoRALinear` with three groups, one per q/k/v), so ``attn.qkv.weight``/``attn.qkv.bias`` keep
their names and the rest of timm's attention runs unchanged.
"""
import math
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import loralib
import torch
import torch.nn as nn
import torch.nn.functional as F
# OpenCLIP's own attention class (3.x CustomResidualAttentionBlock); every release setup.py allows
# (open_clip_torch>=3.0,<4) has it.
from open_clip.transformer import Attention as OpenCLIPAttention
# timm's ViT attention (fused qkv Linear), the one of OpenCLIP's timm vision towers; timm is an
# install requirement (setup.py), and timm.models.vision_transformer.Attention is this class.
from timm.layers import Attention as TimmAttention

# The LoRA settings live in settings.py (standard library, so parsers import no torch); re-exported here.
from .settings import LoRAConfig


class BranchRouter:
    """Which branches the next forward pass uses, shared by every LoRA layer of one model.

    ``active`` holds one branch name, or several: then each LoRA layer splits its input batch into
    ``len(active)`` equal chunks and applies branch ``active[i]`` to chunk ``i``.
    """

    def __init__(self, branches: Sequence[str]):
        self.branches = tuple(branches)
        self.active: Tuple[str, ...] = self.branches[:1]


class LoRAUpdate(nn.Module, loralib.LoRALayer):
    """Per-branch low-rank update ``scaling * B_b A_b x`` for a (possibly fused) linear layer.

    ``groups`` splits the output into equal parts (3 for a fused q,k,v projection);
    ``enable[g]`` says whether part ``g`` gets an update, as loralib's ``enable_lora``.
    """

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, router: BranchRouter,
                 enable: Sequence[bool] = (True,), batch_dim: int = 0,
                 device=None, dtype=None):
        nn.Module.__init__(self)
        loralib.LoRALayer.__init__(self, r=config.rank, lora_alpha=config.alpha,
                                   lora_dropout=config.dropout, merge_weights=False)
        if out_features % len(enable) != 0:
            raise ValueError(f"{len(enable)} groups do not divide out_features={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.enable = tuple(bool(e) for e in enable)
        self.group_size = out_features // len(enable)
        self.scaling = config.scaling
        self.batch_dim = batch_dim
        self.router = router
        self._factory = dict(device=device, dtype=dtype)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for branch in router.branches:
            self.add_branch(branch)

    @property
    def num_enabled(self) -> int:
        return sum(self.enable)

    def add_branch(self, branch: str) -> None:
        """Create the matrices of a new branch: A Kaiming-uniform, B zero, so the update starts at 0."""
        a = torch.empty(self.r * self.num_enabled, self.in_features, **self._factory)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's default, as loralib
        b = torch.zeros(self.group_size * self.num_enabled, self.r, **self._factory)
        self.lora_A[branch] = nn.Parameter(a)
        self.lora_B[branch] = nn.Parameter(b)

    def _place_groups(self, per_group: torch.Tensor, dim: int) -> torch.Tensor:
        """Spread the enabled groups (stacked along ``dim``) over all groups, with zeros at disabled ones.

        Built by concatenation, not by assigning into a zero tensor with a boolean index (which copies
        even when every group is enabled, and which the ONNX exporter traces as NonZero + ScatterND).
        With every group enabled (q, k and v, the default) the input is returned as it is, no copy.
        """
        if self.num_enabled == len(self.enable):
            return per_group
        dim = dim % per_group.ndim
        enabled = iter(per_group.split(1, dim))
        zeros = per_group.new_zeros(per_group.shape[:dim] + (1,) + per_group.shape[dim + 1:])
        return torch.cat([next(enabled) if on else zeros for on in self.enable], dim)

    def delta_weight(self, branch: str) -> torch.Tensor:
        """The branch's update as a dense ``(out, in)`` weight, already scaled."""
        a = self.lora_A[branch].view(self.num_enabled, self.r, self.in_features)
        b = self.lora_B[branch].view(self.num_enabled, self.group_size, self.r)
        per_group = torch.bmm(b, a)  # (groups_enabled, group_size, in)
        return self._place_groups(per_group, 0).reshape(self.out_features, self.in_features) * self.scaling

    def _branch_delta(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        h = F.linear(self.lora_dropout(x), self.lora_A[branch])  # (..., groups_enabled * r)
        h = h.unflatten(-1, (self.num_enabled, self.r))
        b = self.lora_B[branch].view(self.num_enabled, self.group_size, self.r)
        out = torch.einsum("...gr,gor->...go", h, b)  # (..., groups_enabled, group_size)
        return self._place_groups(out, -2).flatten(-2) * self.scaling

    def _split(self, x: torch.Tensor, active: Tuple[str, ...]) -> Tuple[torch.Tensor, ...]:
        """The per-branch chunks of a batch that carries ``len(active)`` branches."""
        chunks = x.chunk(len(active), dim=self.batch_dim)
        if len(chunks) != len(active) or chunks[0].shape != chunks[-1].shape:
            raise RuntimeError(f"batch of size {x.shape[self.batch_dim]} cannot be split evenly "
                               f"across branches {active}")
        return chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.router.active
        if len(active) == 1:
            return self._branch_delta(x, active[0])
        chunks = self._split(x, active)
        return torch.cat([self._branch_delta(c, b) for c, b in zip(chunks, active)], dim=self.batch_dim)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` plus this update for the active branch(es).

        With autograd off (inference) the update is folded into the weight per branch, which costs one
        ``(out, in)`` weight sum instead of two extra matmuls over the activations; with autograd on the
        update runs on the activations, so no gradient for the frozen weight is ever formed.
        """
        if torch.is_grad_enabled():
            return F.linear(x, weight, bias) + self(x)
        return self.per_branch_linear(x, {b: weight + self.delta_weight(b).to(weight.dtype)
                                          for b in self.router.active}, bias)

    def per_branch_linear(self, x: torch.Tensor, weights: Dict[str, torch.Tensor],
                          bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``F.linear`` of each active branch's chunk of ``x`` with ``weights[branch]`` (one active branch:
        the whole batch), split and concatenated along the batch as :meth:`forward` does."""
        active = self.router.active
        if len(active) == 1:
            return F.linear(x, weights[active[0]], bias)
        chunks = self._split(x, active)
        return torch.cat([F.linear(c, weights[b], bias) for c, b in zip(chunks, active)], dim=self.batch_dim)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"enable={list(self.enable)}, branches={list(self.lora_A.keys())}")


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a :class:`LoRAUpdate`; keeps ``weight``/``bias`` names for stock checkpoints.

    ``enable`` splits the output into groups as :class:`LoRAUpdate` does: ``(True, False, True)`` on a
    fused q,k,v Linear (timm's ``attn.qkv``) updates q and v only.
    """

    def __init__(self, base: nn.Linear, config: LoRAConfig, router: BranchRouter, batch_dim: int = 0,
                 enable: Sequence[bool] = (True,)):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.update = LoRAUpdate(self.in_features, self.out_features, config, router, enable, batch_dim,
                                 device=base.weight.device, dtype=base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.update.linear(x, self.weight, self.bias)

    def merge(self, branch: str) -> None:
        """Fold the branch's update into ``weight`` (for export; the model then stops being a T-CLIP)."""
        with torch.no_grad():
            self.weight += self.update.delta_weight(branch).to(self.weight.dtype)


class LoRAAttention(nn.Module):
    """Self-attention with a fused q,k,v projection and per-branch LoRA on q, k and/or v.

    Replaces ``nn.MultiheadAttention`` or OpenCLIP's ``Attention`` with the same parameter names
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*`` and, for OpenCLIP's class, ``ln_q``/``ln_k``/
    ``head_scale``/``ln_inner``), and mimics the call convention of the module it replaced.
    """

    def __init__(self, attn: nn.Module, config: LoRAConfig, router: BranchRouter, batch_first: bool = True):
        super().__init__()
        self.mimic_mha = isinstance(attn, nn.MultiheadAttention)
        if self.mimic_mha:
            if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                raise NotImplementedError("LoRAAttention supports nn.MultiheadAttention with equal q/k/v "
                                          "dims and no bias_k/bias_v/add_zero_attn")
            self.batch_first = attn.batch_first
            self.num_heads = attn.num_heads
            self.dropout_p = attn.dropout
            self.ln_q = self.ln_k = self.ln_inner = None
            self.head_scale = None
            self.out_drop = None
        elif isinstance(attn, OpenCLIPAttention):
            if attn.logit_scale is not None:
                raise NotImplementedError("LoRAAttention does not support scaled-cosine attention")
            self.batch_first = True  # OpenCLIP's Attention is always batch-first
            self.num_heads = attn.num_heads
            self.dropout_p = attn.attn_drop.p
            self.ln_q, self.ln_k, self.ln_inner = attn.ln_q, attn.ln_k, attn.ln_inner
            self.head_scale = attn.head_scale
            self.out_drop = attn.out_drop
        else:
            raise TypeError(f"cannot add LoRA to attention module of type {type(attn).__name__}")
        self.in_proj_weight = attn.in_proj_weight
        self.in_proj_bias = attn.in_proj_bias
        self.out_proj = attn.out_proj
        width = self.in_proj_weight.shape[1]
        enable = [t in config.targets for t in ("q", "k", "v")]
        self.qkv_update = None
        if any(enable):
            self.qkv_update = LoRAUpdate(width, 3 * width, config, router, enable,
                                         batch_dim=0 if self.batch_first else 1,
                                         device=self.in_proj_weight.device, dtype=self.in_proj_weight.dtype)
        if "out" in config.targets:
            self.out_proj = LoRALinear(self.out_proj, config, router, batch_dim=0 if self.batch_first else 1)

    def _additive_mask(self, mask: Optional[torch.Tensor], n: int, seq: int, dtype) -> Optional[torch.Tensor]:
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            mask = torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
        else:
            mask = mask.to(dtype)
        if mask.ndim == 3:  # (n * heads, L, L) as both stock modules accept
            mask = mask.reshape(n, self.num_heads, seq, seq)
        return mask

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[torch.Tensor] = None, **unused):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError("LoRAAttention implements self-attention only")
        x = query if self.batch_first else query.transpose(0, 1)
        n, seq, width = x.shape
        if self.qkv_update is not None:
            qkv = self.qkv_update.linear(x, self.in_proj_weight, self.in_proj_bias)
        else:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = (t.reshape(n, seq, self.num_heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if self.ln_q is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        mask = self._additive_mask(attn_mask, n, seq, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        if self.head_scale is not None:
            out = out * self.head_scale
        out = out.transpose(1, 2).reshape(n, seq, width)
        if self.ln_inner is not None:
            out = self.ln_inner(out)
        out = self.out_proj(out)
        if self.out_drop is not None:
            out = self.out_drop(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out, None) if self.mimic_mha else out

    def merge(self, branch: str) -> None:
        """Fold the branch's q/k/v (and out) updates into the base weights, for export."""
        if self.qkv_update is not None:
            with torch.no_grad():
                self.in_proj_weight += self.qkv_update.delta_weight(branch).to(self.in_proj_weight.dtype)
        if isinstance(self.out_proj, LoRALinear):
            self.out_proj.merge(branch)


# ---------------------------------------------------------------------------------------------
# Injection into OpenCLIP models
# ---------------------------------------------------------------------------------------------

class BlockStack(NamedTuple):
    """The blocks of a tower that is no OpenCLIP ``Transformer`` (a timm ViT trunk), under the two names
    callers read from a ``Transformer``: ``resblocks`` (indexable blocks) and ``batch_first``."""
    resblocks: nn.Module
    batch_first: bool = True


def tower_transformers(model: nn.Module) -> Dict[str, nn.Module]:
    """The ``Transformer`` of each tower of an OpenCLIP CLIP / CustomTextCLIP model.

    A timm vision tower (``visual.trunk.blocks``, timm ViTs are batch-first) is given as a
    :class:`BlockStack`, which has the same ``resblocks``/``batch_first``.
    """
    towers = {}
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(getattr(visual, "transformer", None), "resblocks"):
        towers["vision"] = visual.transformer
    elif visual is not None and isinstance(getattr(getattr(visual, "trunk", None), "blocks", None), nn.Sequential):
        towers["vision"] = BlockStack(visual.trunk.blocks)
    if hasattr(getattr(model, "transformer", None), "resblocks"):  # CLIP keeps the text tower at top level
        towers["text"] = model.transformer
    elif hasattr(getattr(getattr(model, "text", None), "transformer", None), "resblocks"):
        towers["text"] = model.text.transformer
    return towers


def adapted_block_indices(num_blocks: int, config: LoRAConfig) -> List[int]:
    """Indices of the blocks that receive LoRA in a tower of ``num_blocks`` blocks."""
    k = num_blocks if config.last_k_blocks is None else min(config.last_k_blocks, num_blocks)
    return list(range(num_blocks - k, num_blocks))


def _inject_timm_attention(attn: nn.Module, config: LoRAConfig, router: BranchRouter) -> None:
    """LoRA inside timm's ``Attention``, which calls its ``qkv`` and ``proj`` Linears: wrap those in place."""
    enable = [t in config.targets for t in ("q", "k", "v")]
    if any(enable):
        attn.qkv = LoRALinear(attn.qkv, config, router, batch_dim=0, enable=enable)
    if "out" in config.targets:
        attn.proj = LoRALinear(attn.proj, config, router, batch_dim=0)


def _inject_block(block: nn.Module, config: LoRAConfig, router: BranchRouter, batch_first: bool) -> None:
    if isinstance(block.attn, TimmAttention):
        _inject_timm_attention(block.attn, config, router)
    elif any(t in config.targets for t in ("q", "k", "v", "out")):
        block.attn = LoRAAttention(block.attn, config, router, batch_first)
    if "mlp" in config.targets:
        batch_dim = 0 if batch_first else 1
        for name, layer in block.mlp.named_children():
            if isinstance(layer, nn.Linear):
                setattr(block.mlp, name, LoRALinear(layer, config, router, batch_dim))


def inject_lora(model: nn.Module, config: LoRAConfig, branches: Sequence[str] = ("default",),
                router: Optional[BranchRouter] = None) -> BranchRouter:
    """Add per-branch LoRA to the attention (and optionally MLP) layers of an OpenCLIP model, in place.

    Base weights stay where they were under the same names; everything except the LoRA matrices is
    frozen (``loralib.mark_only_lora_as_trainable``).

    Args:
        model: an OpenCLIP ``CLIP`` or ``CustomTextCLIP`` with ViT / transformer towers.
        config: rank, alpha, dropout, targets, towers and blocks.
        branches: names of the independent adapters to create in every adapted layer.
        router: share an existing router (normally a new one is made).

    Returns:
        The :class:`BranchRouter` that selects the active branch(es).
    """
    router = router or BranchRouter(branches)
    towers = tower_transformers(model)
    wanted = ("vision", "text") if config.towers == "both" else (config.towers,)
    missing = [t for t in wanted if t not in towers]
    if missing:
        raise ValueError(f"model {type(model).__name__} has no transformer for tower(s) {missing}; "
                         "LoRA needs ViT/transformer towers (OpenCLIP's own or a timm ViT trunk; HF towers "
                         "are not supported)")
    for tower in wanted:
        transformer = towers[tower]
        for i in adapted_block_indices(len(transformer.resblocks), config):
            _inject_block(transformer.resblocks[i], config, router, getattr(transformer, "batch_first", True))
    loralib.mark_only_lora_as_trainable(model)
    return router


def lora_layers(model: nn.Module) -> Iterable[Tuple[str, nn.Module]]:
    """(name, module) of every outermost LoRA-carrying module that can ``merge``.

    A :class:`LoRALinear` inside a :class:`LoRAAttention` (its ``out_proj`` with the ``out`` target) is
    left out: the attention's ``merge`` folds it already, and merging it twice would add its update twice.
    """
    outer: List[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in outer):
            continue
        if isinstance(module, (LoRAAttention, LoRALinear)):
            outer.append(name)
            yield name, module


def first_adapted_block(transformer: nn.Module) -> Optional[int]:
    """Index of the first block with any LoRA in a tower, or None if the tower is unadapted."""
    for i, block in enumerate(transformer.resblocks):
        if any(isinstance(m, LoRAUpdate) for m in block.modules()):
            return i
    return None


def count_lora_parameters(model: nn.Module, branch: Optional[str] = None) -> int:
    """Number of LoRA parameters, of one branch or all."""
    total = 0
    for module in model.modules():
        if isinstance(module, LoRAUpdate):
            for b in module.lora_A.keys():
                if branch is None or b == branch:
                    total += module.lora_A[b].numel() + module.lora_B[b].numel()
    return total

"""T-CLIP: one frozen OpenCLIP backbone, independent LoRA branches, fused at inference.

Fusion (the paper's equations, ``mode='feature'``)::

    image = normalize(lam * f_G(x) + (1 - lam) * f_F(x))
    text  = normalize(lam * g_G(t_G) + (1 - lam) * g_F(t_F))

with each branch's feature L2-normalised first. ``mode='score'`` instead concatenates
``sqrt(lam) * f_G`` and ``sqrt(1 - lam) * f_F``: the dot product of two such vectors is exactly
``lam * s_G + (1 - lam) * s_F`` (no cross-branch terms) and the vector keeps unit norm, so any
cosine-based tool computes the fused score. Its dimension is twice the embedding size.

Running several branches is one batched pass: the batch is repeated once per branch at the first
adapted block of a tower (a forward pre-hook), so blocks before it - a shared prefix when LoRA sits
in the last k blocks only - run once for all branches, and every LoRA layer applies branch ``i`` to
chunk ``i`` of the batch. Chunks never mix (attention, LayerNorm and MLP act per sample), so no
gradient flows between branches.
"""
import contextlib
import math
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contracts import DEFAULT_LAM, FINE_GRAINED, FUSION_FEATURE, FUSION_MODES, GLOBAL
from .lora import BranchRouter, LoRAConfig, first_adapted_block, inject_lora, lora_layers, tower_transformers
from .wrapper import OpenCLIPWrapper


def fuse_features(features: Mapping[str, torch.Tensor], lam: float, mode: str = FUSION_FEATURE,
                  order: Sequence[str] = (GLOBAL, FINE_GRAINED)) -> torch.Tensor:
    """Fuse per-branch embeddings that are already L2-normalised.

    Args:
        features: branch name -> ``(N, D)`` normalised features; with one branch it is returned as is.
        lam: weight of the first branch of ``order`` (the global branch), in [0, 1].
        mode: ``'feature'`` (weighted sum, renormalised) or ``'score'`` (weighted concatenation).
        order: which branch gets ``lam`` (first) and which ``1 - lam`` (second).

    Returns:
        ``(N, D)`` for feature mode, ``(N, 2D)`` for score mode; unit norm rows.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion mode {mode!r} unknown; choose from {FUSION_MODES}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"fusion weight lam must be in [0, 1], got {lam}")
    if len(features) == 1:
        return next(iter(features.values()))
    first, second = (features[name] for name in order)
    if mode == FUSION_FEATURE:
        return F.normalize(lam * first + (1.0 - lam) * second, dim=-1)
    return torch.cat([math.sqrt(lam) * first, math.sqrt(1.0 - lam) * second], dim=-1)


class DualLoRAFusion(OpenCLIPWrapper):
    """A T-CLIP model: an OpenCLIP CLIP with LoRA branches, usable wherever an OpenCLIP CLIP is.

    The OpenCLIP interface (``visual``, ``lock_*``, attribute forwarding to ``base``, ...) comes from
    :class:`~open_clip_thermal.wrapper.OpenCLIPWrapper`; this class adds the branches, their
    temperatures and the fusion.

    Args:
        base: an OpenCLIP ``CLIP``/``CustomTextCLIP`` with its pretrained weights loaded.
        branches: branch names; T-CLIP uses ``('global',)``, ``('fine_grained',)`` or both.
        lora: LoRA settings, applied identically to every branch.
        lam: fusion weight of the global branch (default of :meth:`encode_image` etc.).
        fusion: ``'feature'`` or ``'score'``, see the module docstring.
        train_logit_scale: train each branch's temperature (initialised from the base's).
        output_dict: kept as an attribute for OpenCLIP's ``create_model(..., output_dict=...)`` and
            code that sets ``model.output_dict``; ``forward`` returns a dict either way (see :meth:`forward`).
    """

    FROZEN_BASE = "T-CLIP trains LoRA"  # lock_* must not freeze the LoRA matrices (OpenCLIP's lock would)

    def __init__(self, base: nn.Module, branches: Sequence[str] = (GLOBAL, FINE_GRAINED),
                 lora: Optional[LoRAConfig] = None, lam: float = DEFAULT_LAM, fusion: str = FUSION_FEATURE,
                 train_logit_scale: bool = True, output_dict: bool = True):
        super().__init__(output_dict)
        if not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct names, got {list(branches)}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion mode {fusion!r} unknown; choose from {FUSION_MODES}")
        if len(branches) > 2:
            raise ValueError("T-CLIP fuses at most two branches (global and fine_grained)")
        self.base = base
        self.branches = tuple(branches)
        self.lora_config = lora or LoRAConfig()
        self.lam = float(lam)
        self.fusion = fusion
        self.router: BranchRouter = inject_lora(base, self.lora_config, self.branches)
        init = base.logit_scale.detach().clone().float()
        self.logit_scales = nn.ParameterDict({
            b: nn.Parameter(init.clone(), requires_grad=train_logit_scale) for b in self.branches})
        # Plain dicts (not submodules): the towers are registered under ``base`` already.
        self._towers = dict(tower_transformers(base))
        self._first_adapted = {t: first_adapted_block(m) for t, m in self._towers.items()}

    # ------------------------------------------------------------------ OpenCLIP interface
    @property
    def logit_scale(self) -> nn.Parameter:
        """The temperature open_clip_train clamps: the first branch's (each branch has its own)."""
        return self.logit_scales[self.branches[0]]

    # ------------------------------------------------------------------ branch plumbing
    def _resolve(self, branch: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
        names = self.branches if branch is None else ((branch,) if isinstance(branch, str) else tuple(branch))
        unknown = [b for b in names if b not in self.branches]
        if unknown:
            raise ValueError(f"unknown branch(es) {unknown}; this model has {list(self.branches)}")
        return names

    @contextlib.contextmanager
    def _route(self, active: Tuple[str, ...]) -> Iterator[None]:
        previous = self.router.active
        self.router.active = active
        try:
            yield
        finally:
            self.router.active = previous

    @staticmethod
    @contextlib.contextmanager
    def _fork_at(transformer: nn.Module, copies: int, first: int,
                 dedupe: Optional[nn.Module] = None) -> Iterator[None]:
        """Repeat the batch ``copies`` times on entry to block ``first`` (optionally keeping only the
        first 1/copies of ``dedupe``'s output, for inputs that were repeated up front)."""
        batch_dim = 0 if getattr(transformer, "batch_first", True) else 1
        handles = []

        def repeat_batch(module, args, kwargs):
            x = args[0]
            reps = [1] * x.ndim
            reps[batch_dim] = copies
            return (x.repeat(*reps),) + tuple(args[1:]), kwargs

        handles.append(transformer.resblocks[first].register_forward_pre_hook(repeat_batch, with_kwargs=True))
        if dedupe is not None:
            def keep_first(module, args, output):
                return output[: output.shape[0] // copies]
            handles.append(dedupe.register_forward_hook(keep_first))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _text_embedding_module(self) -> nn.Module:
        return self.base.token_embedding if hasattr(self.base, "token_embedding") else self.base.text.token_embedding

    def _per_branch(self, encode, inputs: torch.Tensor, names: Tuple[str, ...], tower: str,
                    same_input: bool, dedupe: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        """Run ``encode`` once for all branches in ``names``; unnormalised features per branch.

        ``same_input``: every branch reads ``inputs``; otherwise ``inputs`` is the branches' own
        inputs concatenated in ``names`` order. ``dedupe``: the module whose output must be cut back
        to one copy when the (text) inputs have to be repeated up front for pooling.
        """
        n = len(names)
        transformer, first = self._towers[tower], self._first_adapted[tower]
        if n == 1 or first is None:  # one branch, or a tower without LoRA: any routing gives the same
            with self._route(names[:1]):
                out = encode(inputs)
            return {b: out for b in names} if same_input else dict(zip(names, out.chunk(n)))
        with self._route(names):
            if not same_input:
                out = encode(inputs)
            elif dedupe is None:
                with self._fork_at(transformer, n, first):
                    out = encode(inputs)
            else:
                repeated = inputs.repeat(n, *([1] * (inputs.ndim - 1)))
                if first == 0:  # no shared prefix to save
                    out = encode(repeated)
                else:
                    with self._fork_at(transformer, n, first, dedupe):
                        out = encode(repeated)
        return dict(zip(names, out.chunk(n)))

    # ------------------------------------------------------------------ encoders
    def branch_image_features(self, images: torch.Tensor, branch=None, normalize: bool = True) -> Dict[str, torch.Tensor]:
        """Image features of each requested branch (all by default), from one batched pass."""
        feats = self._per_branch(self.base.encode_image, images, self._resolve(branch), "vision", same_input=True)
        return {n: F.normalize(f, dim=-1) if normalize else f for n, f in feats.items()}

    def branch_text_features(self, texts: Union[torch.Tensor, Mapping[str, torch.Tensor]], branch=None,
                             normalize: bool = True) -> Dict[str, torch.Tensor]:
        """Text features per branch, from one batched pass.

        Args:
            texts: one token tensor read by every branch, or a dict branch -> tokens (each branch
                reads its own captions; all batches the same size).
            branch: restrict to these branches (default: all, or the dict's keys).
            normalize: L2-normalise each branch's features.
        """
        if isinstance(texts, Mapping):
            names = self._resolve(tuple(texts.keys()) if branch is None else branch)
            sizes = {texts[n].shape[0] for n in names}
            if len(sizes) != 1:
                raise ValueError(f"per-branch caption batches differ in size: {sorted(sizes)}")
            feats = self._per_branch(self.base.encode_text, torch.cat([texts[n] for n in names]), names,
                                     "text", same_input=False)
        else:
            feats = self._per_branch(self.base.encode_text, texts, self._resolve(branch), "text",
                                     same_input=True, dedupe=self._text_embedding_module())
        return {n: F.normalize(f, dim=-1) if normalize else f for n, f in feats.items()}

    def _fuse(self, feats: Dict[str, torch.Tensor], lam: Optional[float], normalize: bool) -> torch.Tensor:
        if len(feats) == 1:
            f = next(iter(feats.values()))
            return F.normalize(f, dim=-1) if normalize else f
        return fuse_features(feats, self.lam if lam is None else lam, self.fusion)

    def encode_image(self, images: torch.Tensor, normalize: bool = True, branch=None,
                     lam: Optional[float] = None) -> torch.Tensor:
        """Image embeddings: one branch (``branch='global'``) or all branches fused with weight ``lam``.

        A single branch with ``normalize=False`` gives raw features; fused features are always unit norm.
        """
        names = self._resolve(branch)
        return self._fuse(self.branch_image_features(images, names, normalize=len(names) > 1 or normalize),
                          lam, normalize)

    def encode_text(self, texts: torch.Tensor, normalize: bool = True, branch=None,
                    lam: Optional[float] = None) -> torch.Tensor:
        """Text embeddings; with several branches the same caption goes through each and is fused."""
        names = self._resolve(branch)
        return self._fuse(self.branch_text_features(texts, names, normalize=len(names) > 1 or normalize),
                          lam, normalize)

    def encode_text_dual(self, global_texts: torch.Tensor, fg_texts: torch.Tensor, normalize: bool = True,
                         lam: Optional[float] = None) -> torch.Tensor:
        """T-CLIP (Dual): global captions through the global branch, fine-grained through the other."""
        if set(self.branches) != {GLOBAL, FINE_GRAINED}:
            raise ValueError(f"encode_text_dual needs branches {GLOBAL!r} and {FINE_GRAINED!r}, "
                             f"this model has {list(self.branches)}")
        feats = self.branch_text_features({GLOBAL: global_texts, FINE_GRAINED: fg_texts})
        return self._fuse(feats, lam, normalize)

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None
                ) -> Dict[str, Optional[torch.Tensor]]:
        """OpenCLIP's contract: a dict of normalised (fused) features and the exponentiated temperature.

        Always a dict, whatever ``output_dict`` says: OpenCLIP returns tuples only from its own
        ``CLIP``/``CustomTextCLIP`` with ``output_dict`` off, and expects every other model class (CoCa,
        wrappers like this one) to return a dict; open_clip_train reads the dict's keys. Keys:
        ``image_features`` and ``text_features`` (None for a missing input), ``logit_scale``, and
        ``logit_bias`` when the base has one (SigLIP), as ``CLIP.forward`` gives them.

        ``text`` of shape ``(B, 2, L)`` holds each image's global and fine-grained caption (dual-branch
        training): the dict then holds each branch's own features and temperature, the fine-grained
        ones under ``fg_*`` keys (see ``training.losses.DualBranchClipLoss``).
        """
        if text is not None and text.ndim == 3:
            return self._forward_both_branches(image, text)
        return super().forward(image, text)

    def _forward_both_branches(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.branches != (GLOBAL, FINE_GRAINED) or text.shape[1] != 2:
            raise ValueError(f"(B, 2, L) captions need branches ({GLOBAL!r}, {FINE_GRAINED!r}), "
                             f"this model has {list(self.branches)}; text shape {tuple(text.shape)}")
        img = self.branch_image_features(image)
        txt = self.branch_text_features({GLOBAL: text[:, 0], FINE_GRAINED: text[:, 1]})
        return {
            "image_features": img[GLOBAL], "text_features": txt[GLOBAL],
            "logit_scale": self.logit_scales[GLOBAL].exp(),
            "fg_image_features": img[FINE_GRAINED], "fg_text_features": txt[FINE_GRAINED],
            "fg_logit_scale": self.logit_scales[FINE_GRAINED].exp(),
        }

    # ------------------------------------------------------------------ export
    def merged_state_dict(self, branch: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """A plain OpenCLIP state_dict of the base model with one branch folded into its weights.

        The model itself is left unchanged (a copy is merged).
        """
        import copy
        if branch is None:
            if len(self.branches) != 1:
                raise ValueError(f"name the branch to merge: one of {list(self.branches)}")
            branch = self.branches[0]
        branch = self._resolve(branch)[0]
        base = copy.deepcopy(self.base)
        for _, layer in lora_layers(base):
            layer.merge(branch)
        state = {k: v for k, v in base.state_dict().items() if "lora_" not in k}
        state["logit_scale"] = self.logit_scales[branch].detach().clone().to(state["logit_scale"].dtype)
        return state

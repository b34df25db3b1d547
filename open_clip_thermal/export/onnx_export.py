"""ONNX export of a T-CLIP model: ``image.onnx``, ``text.onnx`` and ``export.json`` (docs/export.md).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo exporter of
torch 2.14 fails to decompose the batched two-branch pass (checked on ``tclip-tiny-dual``), while the
TorchScript one traces it and keeps the batch axis dynamic.

What the graphs compute, traced under ``torch.no_grad`` (so every LoRA layer uses ``W + B A`` of its
branch as one weight, as at inference).

* one branch: a copy with the LoRA of ``b`` merged into the weights and the LoRA layers removed
  (:func:`merged_copy`), so the graph holds plain weights; ``encode_image``/``encode_text``, normalised.
* dual: a copy in which every LoRA layer holds each branch's ``W + B A``, computed once before
  tracing (:func:`folded_copy`), so the graph holds one constant weight per branch and adapted layer
  and no LoRA op. Tracing the live model instead leaves ``B A`` as a MatMul on constants that
  torch's constant folding does not evaluate: recomputed on every call (measured in docs/export.md).
* ``dual`` image: the model's own batched pass (blocks before the first adapted block run once, the
  batch is repeated there, each half goes through its branch's merged weights) and the fusion.
* ``dual`` text: two token inputs, the global caption through the global branch and the fine-grained
  caption through the other, fused (as ``encode_text_dual``); feed the same tokens twice to fuse one
  caption.
"""
import copy
import json
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..contracts import BRANCHES, FINE_GRAINED, FUSION_MODES, GLOBAL
from ..files import atomic_write_json
from ..lora import LoRAAttention, LoRALinear, LoRAUpdate, lora_layers
from ..model import DualLoRAFusion, fuse_features

DUAL = "dual"  # the --branch value for both branches with the fusion folded in
IMAGE_FILE, TEXT_FILE, META_FILE = "image.onnx", "text.onnx", "export.json"
TOLERANCE = 1e-4  # max abs difference onnxruntime vs PyTorch (fp32) that verify_onnx accepts
VERIFY_BATCHES = (1, 3)  # batch sizes checked: 1 and one other than the traced batch (2)


class _ImageGraph(nn.Module):
    def __init__(self, model: DualLoRAFusion, branch: str):
        super().__init__()
        self.model, self.branch = model, branch

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, branch=None if self.branch == DUAL else self.branch)


class _TextGraph(nn.Module):
    def __init__(self, model: DualLoRAFusion, branch: str):
        super().__init__()
        self.model, self.branch = model, branch

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        if self.branch != DUAL:
            return self.model.encode_text(tokens[0], branch=self.branch)
        # two single-branch passes: the inputs differ, so there is nothing to share; it also avoids the
        # batched path's Python size checks, which the tracer cannot evaluate on a dynamic batch
        features = {GLOBAL: self.model.encode_text(tokens[0], branch=GLOBAL),
                    FINE_GRAINED: self.model.encode_text(tokens[1], branch=FINE_GRAINED)}
        return fuse_features(features, self.model.lam, self.model.fusion)


def merged_copy(model: DualLoRAFusion, branch: str) -> DualLoRAFusion:
    """A copy of ``model`` with ``branch`` merged into the base weights and the LoRA layers removed, so
    that the traced graph holds plain weights (the live model's LoRA recomputes ``W + B A`` per call)."""
    merged = copy.deepcopy(model)
    for name, layer in list(lora_layers(merged.base)):
        layer.merge(branch)
        if isinstance(layer, LoRAAttention):
            layer.qkv_update = None
            if isinstance(layer.out_proj, LoRALinear):
                layer.out_proj = _plain_linear(layer.out_proj)
        else:
            parent, _, child = name.rpartition(".")
            setattr(merged.base.get_submodule(parent), child, _plain_linear(layer))
    return merged


class _FoldedUpdate(nn.Module):
    """Stands in for a :class:`LoRAUpdate` at inference: each branch's ``W + delta`` computed once.

    Same call as ``LoRAUpdate.linear`` and the same routing (the wrapped update's router and batch
    split), but the weights are buffers, so a tracer records them as constants. Frozen: a later change
    of the LoRA matrices is not seen, which is why only export copies are folded.
    """

    def __init__(self, update: LoRAUpdate, weight: torch.Tensor):
        super().__init__()
        self.update = update
        self.names = {}
        with torch.no_grad():
            for i, branch in enumerate(update.router.branches):
                self.names[branch] = f"branch_weight_{i}"
                self.register_buffer(self.names[branch], weight + update.delta_weight(branch).to(weight.dtype))

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """As ``LoRAUpdate.linear``; ``weight`` (the bare base weight) is unused: each branch's includes it."""
        weights = {b: getattr(self, name) for b, name in self.names.items()}
        return self.update.per_branch_linear(x, weights, bias)


def folded_copy(model: DualLoRAFusion) -> DualLoRAFusion:
    """A copy of ``model`` whose LoRA layers hold every branch's merged weight ``W + B A`` as a constant.

    The copy keeps the model's routing (the batched two-branch pass, a shared prefix, the fusion), so a
    traced dual graph computes the same as the live model with plain per-branch weights: only the
    adapted layers' weights are duplicated, one per branch, and no LoRA op is left.
    """
    folded = copy.deepcopy(model)
    for module in list(folded.base.modules()):
        if isinstance(module, LoRAAttention) and module.qkv_update is not None:
            module.qkv_update = _FoldedUpdate(module.qkv_update, module.in_proj_weight)
        elif isinstance(module, LoRALinear):
            module.update = _FoldedUpdate(module.update, module.weight)
    return folded


def _plain_linear(layer: LoRALinear) -> nn.Linear:
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain


def _check_branch(model: DualLoRAFusion, branch: str) -> None:
    if branch == DUAL:
        if set(model.branches) != set(BRANCHES):
            raise ValueError(f"--branch {DUAL} needs a model with branches {list(BRANCHES)}, "
                             f"this one has {list(model.branches)}; name one of them")
        if model.fusion not in FUSION_MODES:
            raise ValueError(f"fusion mode {model.fusion!r} unknown; choose from {FUSION_MODES}")
    elif branch not in model.branches:
        raise ValueError(f"unknown branch {branch!r}; choose {DUAL!r} or one of {list(model.branches)}")


def _text_inputs(branch: str):
    return ["global_tokens", "fine_grained_tokens"] if branch == DUAL else ["tokens"]


def example_inputs(model: DualLoRAFusion, batch: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random pixels and token ids (end-of-text = highest id, zero padding) for tracing and checks."""
    g = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    pixels = torch.randn(batch, 3, *size, generator=g)
    length, vocab = model.context_length, model.vocab_size
    tokens = torch.randint(1, vocab - 1, (batch, length), generator=g)
    for i in range(batch):
        end = int(torch.randint(1, length, (1,), generator=g))
        tokens[i, end], tokens[i, end + 1:] = vocab - 1, 0
    return {"pixels": pixels, "tokens": tokens}


def _export_graphs(model, out: Path, branch: str, opset: int, x, text_names, text_args) -> torch.Tensor:
    """Trace and write both graphs; returns one image embedding (for the recorded output shape)."""
    with torch.no_grad():
        image_out = model.encode_image(x["pixels"][:1], branch=None if branch == DUAL else branch)
        for graph, args, names, path in ((_ImageGraph(model, branch), (x["pixels"],), ["pixels"], IMAGE_FILE),
                                         (_TextGraph(model, branch), text_args, text_names, TEXT_FILE)):
            axes = {name: {0: "batch"} for name in names + ["embedding"]}
            with warnings.catch_warnings():
                # benign here: the branch split is even by construction (the batch is repeated), and the
                # only advanced index is the end-of-text gather, whose argmax indices are never negative
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message="Exporting aten::index operator")
                torch.onnx.export(graph, args, str(out / path), input_names=names, output_names=["embedding"],
                                  opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    return image_out


def export_onnx(model: DualLoRAFusion, out_dir, branch: str = DUAL, opset: int = 17) -> Path:
    """Write ``image.onnx``, ``text.onnx`` and ``export.json`` for one branch or the fused dual model.

    Args:
        model: a T-CLIP model (``open_clip.create_model('tclip-...', pretrained=ADAPTERS)``).
        out_dir: output folder (created).
        branch: ``'dual'`` (both branches, the model's ``lam`` and ``fusion`` folded in) or a branch name.
        opset: ONNX opset version.

    Returns:
        ``out_dir`` as a Path.
    """
    _check_branch(model, branch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    traced = folded_copy(model) if branch == DUAL else merged_copy(model, branch)
    x = example_inputs(model, 2)
    text_names = _text_inputs(branch)
    text_args = tuple(x["tokens"] if i == 0 else x["tokens"].flip(0) for i in range(len(text_names)))
    # blocks without LoRA keep the stock nn.MultiheadAttention, whose inference fast path
    # (aten::_native_multi_head_attention) has no ONNX symbolic; the regular path computes the same
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        image_out = _export_graphs(traced, out, branch, opset, x, text_names, text_args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    provenance = getattr(model, "provenance", None)
    atomic_write_json(out / META_FILE, {
        "model": getattr(provenance, "model_name", None), "base_model": getattr(provenance, "base_model", None),
        "branch": branch, "branches": [branch] if branch != DUAL else list(BRANCHES),
        "lam": model.lam if branch == DUAL else None, "fusion": model.fusion if branch == DUAL else None,
        "opset": opset, "exporter": "torch.onnx.export(dynamo=False)", "torch_version": torch.__version__,
        "image": {"file": IMAGE_FILE, "inputs": {"pixels": ["batch", 3, *x["pixels"].shape[2:]]},
                  "outputs": {"embedding": ["batch", image_out.shape[-1]]}},
        "text": {"file": TEXT_FILE, "inputs": {n: ["batch", model.context_length] for n in text_names},
                 "input_dtype": "int64", "outputs": {"embedding": ["batch", image_out.shape[-1]]}},
        "image_size": list(x["pixels"].shape[2:]),
        "mean": list(pre.get("mean", ())), "std": list(pre.get("std", ())),
        "interpolation": pre.get("interpolation"), "resize_mode": pre.get("resize_mode"),
        "normalized": True,
    })
    return out


def verify_onnx(model: DualLoRAFusion, out_dir, branch: Optional[str] = None,
                batches=VERIFY_BATCHES, tolerance: float = TOLERANCE) -> Dict[str, float]:
    """Run the exported graphs with onnxruntime on random inputs and compare with PyTorch.

    Args:
        model: the model that was exported.
        out_dir: the export folder.
        branch: the exported branch (default: read from ``export.json``).
        batches: batch sizes to check (the batch axis is dynamic).
        tolerance: largest accepted max abs difference.

    Returns:
        ``{'image': diff, 'text': diff}``, the max abs differences over all batches.

    Raises:
        ValueError: a difference above ``tolerance``, naming the graph.
    """
    import onnxruntime as ort
    out = Path(out_dir)
    branch = branch or json.loads((out / META_FILE).read_text())["branch"]
    sessions = {k: ort.InferenceSession(str(out / f), providers=["CPUExecutionProvider"])
                for k, f in (("image", IMAGE_FILE), ("text", TEXT_FILE))}
    graphs = {"image": _ImageGraph(model.eval(), branch), "text": _TextGraph(model, branch)}
    diffs = {"image": 0.0, "text": 0.0}
    for batch in batches:
        x = example_inputs(model, batch, seed=batch)
        feeds = {"image": {"pixels": x["pixels"]},
                 "text": {n: x["tokens"] if i == 0 else x["tokens"].flip(0)
                          for i, n in enumerate(_text_inputs(branch))}}
        for kind in diffs:
            got = sessions[kind].run(None, {k: v.numpy() for k, v in feeds[kind].items()})[0]
            with torch.no_grad():
                want = graphs[kind](*feeds[kind].values())
            diffs[kind] = max(diffs[kind], float((torch.from_numpy(got) - want).abs().max()))
    for kind, diff in diffs.items():
        if not diff <= tolerance:
            raise ValueError(f"{out / (IMAGE_FILE if kind == 'image' else TEXT_FILE)}: onnxruntime differs "
                             f"from PyTorch by {diff:.3g} > {tolerance}")
    return diffs


def run(args) -> int:
    """``python -m open_clip_thermal.export onnx``: build the model, export, verify unless --no-verify."""
    from ..registry import create_model
    if args.branch != DUAL and args.branch not in BRANCHES:
        raise ValueError(f"--branch {args.branch!r} unknown; choose {DUAL!r} or one of {list(BRANCHES)}")
    model = create_model(args.model, pretrained=args.pretrained)
    if not isinstance(model, DualLoRAFusion):
        raise ValueError(f"--model {args.model!r} is not a T-CLIP model (tclip-*)")
    out = export_onnx(model, args.out, branch=args.branch, opset=args.opset)
    if not args.no_verify:
        diffs = verify_onnx(model, out, args.branch)
        meta = json.loads((out / META_FILE).read_text())
        meta["verified"] = {"max_abs_diff": diffs, "tolerance": TOLERANCE, "batches": list(VERIFY_BATCHES)}
        atomic_write_json(out / META_FILE, meta)
        print(f"verified: max abs diff image {diffs['image']:.2e}, text {diffs['text']:.2e} (<= {TOLERANCE})")
    print(f"wrote {out / IMAGE_FILE}, {out / TEXT_FILE}, {out / META_FILE}")
    return 0

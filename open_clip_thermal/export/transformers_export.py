"""A merged T-CLIP branch as a Transformers ``CLIPModel`` folder (``export transformers``; docs/export.md).

The branch's LoRA is folded into the base weights (``DualLoRAFusion.merged_state_dict``), and the plain
OpenCLIP ViT state dict is renamed to ``CLIPModel``'s names here, tensor by tensor: the fused
``in_proj_weight`` of each attention is split into q/k/v, the ``(width, embed_dim)`` projection
Parameters become transposed ``Linear`` weights. Every OpenCLIP tensor must be used and every
``CLIPModel`` weight filled, so a base with anything CLIPModel lacks (layer scale, qk-norm, attention
pooling, a projection bias, a timm or HF tower) is refused instead of silently exported wrong.

Two things the weights do not say are set in the config: the MLP activation (``quick_gelu`` for
OpenAI weights, ``gelu`` otherwise, from the model's own modules) and the text pooling: OpenCLIP pools
at the argmax token, i.e. the end-of-text token (the highest id); ``eos_token_id`` = that id makes
CLIPTextModel pool at its first occurrence, which is the same position for OpenCLIP's and Transformers'
tokenizers (the latter pads with end-of-text).

The tokenizer is converted from OpenCLIP's own BPE tables (``vocab.json``/``merges.txt`` as the
``openai/clip-vit-*`` repos hold them), and the image processor from the model's ``preprocess_cfg``.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..base_model import activation_of
from ..model import DualLoRAFusion

TOLERANCE = 1e-4  # max abs difference of normalised embeddings accepted by verify_transformers
EXPORT_RECORD = "tclip_export.json"  # provenance of the folder (model, branch, base), next to config.json


def _single(value, what: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"{what} {tuple(value)} is not square; CLIPModel needs one size")
        value = value[0]
    return int(value)


def clip_config(base: nn.Module):
    """The ``transformers.CLIPConfig`` describing OpenCLIP ViT ``base`` (a plain ``open_clip.CLIP``).

    Raises:
        ValueError: ``base`` is not a ViT CLIP that CLIPModel can express (naming what differs).
    """
    import open_clip
    from transformers import CLIPConfig
    if type(base) is not open_clip.CLIP or not isinstance(base.visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"base {type(base).__name__} with a {type(getattr(base, 'visual', None)).__name__} image "
                         "tower is not an OpenCLIP ViT CLIP; only those export to a Transformers CLIPModel")
    visual = base.visual
    if visual.pool_type != "tok" or visual.attn_pool is not None:
        raise ValueError(f"image tower pools with {visual.pool_type!r}/attention pooling; CLIPModel pools the class token")
    if base.text_pool_type != "argmax":
        raise ValueError(f"text tower pools with {base.text_pool_type!r}; CLIPModel pools the end-of-text (argmax) token")
    if getattr(base, "attn_mask", None) is None:
        raise ValueError("text tower has no causal mask; CLIPModel's text model is causal")
    v_block = visual.transformer.resblocks[0]
    t_block = base.transformer.resblocks[0]
    act = activation_of(base)
    vision_width = visual.transformer.width
    text_width = base.transformer.width
    text = dict(vocab_size=base.vocab_size, hidden_size=text_width,
                intermediate_size=t_block.mlp.c_fc.out_features, num_hidden_layers=len(base.transformer.resblocks),
                num_attention_heads=t_block.attn.num_heads, max_position_embeddings=base.context_length,
                hidden_act=act, layer_norm_eps=t_block.ln_1.eps,
                # OpenCLIP's SimpleTokenizer ids: start/end of text are the last two of the vocabulary
                bos_token_id=base.vocab_size - 2, eos_token_id=base.vocab_size - 1, pad_token_id=base.vocab_size - 1)
    vision = dict(hidden_size=vision_width, intermediate_size=v_block.mlp.c_fc.out_features,
                  num_hidden_layers=len(visual.transformer.resblocks), num_attention_heads=v_block.attn.num_heads,
                  image_size=_single(visual.image_size, "image size"), patch_size=_single(visual.patch_size, "patch size"),
                  hidden_act=act, layer_norm_eps=v_block.ln_1.eps, num_channels=visual.conv1.in_channels)
    projection_dim = visual.output_dim
    # also in each sub-config: CLIPTextModelWithProjection / CLIPVisionModelWithProjection read it there
    text["projection_dim"] = vision["projection_dim"] = projection_dim
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim,
                      logit_scale_init_value=float(base.logit_scale.detach().float()))


def _block_names(src: str, dst: str) -> Dict[str, str]:
    """OpenCLIP residual block ``src`` -> CLIPEncoderLayer ``dst``, for all but the fused in_proj."""
    pairs = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    return {f"{src}.{a}.{p}": f"{dst}.{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}


def to_transformers_state_dict(state: Dict[str, torch.Tensor], vision_layers: int,
                               text_layers: int) -> Dict[str, torch.Tensor]:
    """Rename a plain OpenCLIP ViT CLIP ``state`` to ``CLIPModel``'s names (q/k/v split, projections transposed).

    Raises:
        ValueError: a tensor of ``state`` has no CLIPModel counterpart (named).
    """
    left = dict(state)
    out: Dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in left:
            raise ValueError(f"OpenCLIP state dict lacks {key!r}; not a plain ViT CLIP")
        return left.pop(key)

    renames = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    towers = (("visual.transformer", "vision_model.encoder", vision_layers), ("transformer", "text_model.encoder", text_layers))
    for src_root, dst_root, layers in towers:
        for i in range(layers):
            src, dst = f"{src_root}.resblocks.{i}", f"{dst_root}.layers.{i}"
            renames.update(_block_names(src, dst))
            for part in ("weight", "bias"):
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), take(f"{src}.attn.in_proj_{part}").chunk(3)):
                    out[f"{dst}.self_attn.{name}.{part}"] = chunk.clone()
    for src, dst in renames.items():
        out[dst] = take(src)
    out["logit_scale"] = out["logit_scale"].reshape(())
    out["visual_projection.weight"] = take("visual.proj").t()
    out["text_projection.weight"] = take("text_projection").t()
    if left:
        raise ValueError(f"OpenCLIP tensors without a CLIPModel counterpart: {sorted(left)[:5]}; "
                         "the base is not a plain ViT CLIP")
    return {k: v.contiguous() for k, v in out.items()}


def clip_tokenizer(context_length: int):
    """OpenCLIP's SimpleTokenizer as a ``transformers.CLIPTokenizer`` (same BPE, Transformers' special-token names)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    simple = SimpleTokenizer()
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(token, token): index for token, index in simple.encoder.items()}
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


def clip_image_processor(visual: nn.Module):
    """A ``transformers.CLIPImageProcessor`` doing OpenCLIP's eval preprocessing (resize shortest side, centre crop)."""
    from transformers import CLIPImageProcessor
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    size = _single(cfg.get("size", visual.image_size), "image size")
    resample = {"bicubic": 3, "bilinear": 2}.get(cfg.get("interpolation", "bicubic"), 3)  # PIL's codes
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              resample=resample, image_mean=list(cfg.get("mean", visual.image_mean or (0.48145466, 0.4578275, 0.40821073))),
                              image_std=list(cfg.get("std", visual.image_std or (0.26862954, 0.26130258, 0.27577711))))


def export_transformers(model: DualLoRAFusion, out_dir, branch: Optional[str] = None, tokenizer: bool = True) -> Path:
    """Write ``branch`` of ``model`` merged into its base as a Transformers ``CLIPModel`` folder.

    Args:
        model: a T-CLIP model on an OpenCLIP ViT base.
        out_dir: output folder (config.json, model.safetensors, tokenizer and preprocessor files,
            ``tclip_export.json``).
        branch: the branch to merge; may be omitted for a single-branch model.
        tokenizer: also save the converted tokenizer and the image processor.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: unknown branch, or a base CLIPModel cannot express.
    """
    from transformers import CLIPModel
    if not isinstance(model, DualLoRAFusion):
        raise ValueError(f"{type(model).__name__} is not a T-CLIP LoRA model; export a tclip-* model")
    if branch is not None and branch not in model.branches:
        raise ValueError(f"branch {branch!r} unknown; this model has {list(model.branches)}")
    config = clip_config(model.base)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.merged_state_dict(branch).items()}
    weights = to_transformers_state_dict(state, config.vision_config.num_hidden_layers,
                                         config.text_config.num_hidden_layers)
    hf = CLIPModel(config)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"CLIPModel weights not filled: {missing[:5]}, unexpected: {unexpected[:5]}")
    out = Path(out_dir)
    hf.save_pretrained(out)
    if tokenizer:
        from transformers import CLIPProcessor
        CLIPProcessor(image_processor=clip_image_processor(model.base.visual),
                      tokenizer=clip_tokenizer(config.text_config.max_position_embeddings)).save_pretrained(out)
    provenance = getattr(model, "provenance", None)
    record = {"branch": branch or model.branches[0], "activation": activation_of(model.base),
              "model_name": getattr(provenance, "model_name", None), "base_model": getattr(provenance, "base_model", None),
              "base_pretrained": getattr(provenance, "base_pretrained", None)}
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out


def hf_features(output) -> torch.Tensor:
    """The projected embeddings of ``get_*_features`` (a tensor in Transformers 4, an output object in 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def verify_transformers(model: DualLoRAFusion, out_dir, branch: Optional[str] = None, n: int = 4,
                        seed: int = 0) -> float:
    """Max abs difference between the folder's normalised CLIPModel embeddings and ``model``'s branch
    (random images, captions tokenised by OpenCLIP's tokenizer).

    Raises:
        ValueError: the difference exceeds :data:`TOLERANCE`.
    """
    import open_clip
    from transformers import CLIPModel
    hf = CLIPModel.from_pretrained(str(out_dir)).eval()
    model = model.eval()
    branch = branch or model.branches[0]
    size = hf.config.vision_config.image_size
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    captions = ["a thermal image of a person walking", "a car on a road at night",
                "two cyclists next to a bus stop", "a warm dog"][:n]
    tokens = open_clip.tokenize(captions, context_length=hf.config.text_config.max_position_embeddings)
    device = next(model.parameters()).device
    ours_img = model.encode_image(images.to(device), branch=branch).float().cpu()
    ours_txt = model.encode_text(tokens.to(device), branch=branch).float().cpu()
    theirs_img = nn.functional.normalize(hf_features(hf.get_image_features(pixel_values=images)), dim=-1)
    theirs_txt = nn.functional.normalize(hf_features(hf.get_text_features(input_ids=tokens)), dim=-1)
    diff = max((ours_img - theirs_img).abs().max().item(), (ours_txt - theirs_txt).abs().max().item())
    if diff > TOLERANCE:
        raise ValueError(f"exported CLIPModel in {out_dir} differs from OpenCLIP by {diff:.2e} (> {TOLERANCE})")
    return diff


def run(args: argparse.Namespace) -> int:
    """``export transformers``: build the model, export the branch, check it (unless ``--no-verify``)."""
    import open_clip_thermal
    model = open_clip_thermal.create_model(args.model, pretrained=args.pretrained)
    if not isinstance(model, DualLoRAFusion):
        raise ValueError(f"--model {args.model!r} is not a T-CLIP LoRA model; export a tclip-* model")
    if args.branch not in model.branches:
        raise ValueError(f"--branch {args.branch!r} unknown for {args.model!r}; it has {list(model.branches)}")
    try:
        out = export_transformers(model.eval(), args.out, branch=args.branch)
    except ValueError as error:
        raise ValueError(f"--model {args.model!r}: {error}") from None
    message = f"wrote {out} (branch {args.branch}, {activation_of(model.base)})"
    if not args.no_verify:
        message += f"; CLIPModel embeddings equal OpenCLIP's within {verify_transformers(model, out, args.branch):.1e}"
    print(message)
    return 0

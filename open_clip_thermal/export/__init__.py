"""``python -m open_clip_thermal.export``: T-CLIP for other runtimes (docs/export.md).

``onnx``: the image and text towers of one branch (LoRA merged) or of the fused dual model, for
onnxruntime / TensorRT. ``transformers``: a merged branch as a Transformers ``CLIPModel`` folder (the
format diffusers loads text encoders from). Names are forwarded lazily, so ``--help`` imports no torch.
"""
from ..lazy import forward_attributes

# public name -> submodule
_LAZY = {
    "export_onnx": ".onnx_export", "verify_onnx": ".onnx_export",
    "export_transformers": ".transformers_export",
    "main": ".cli", "build_parser": ".cli",
}

__all__ = list(_LAZY)

__getattr__ = forward_attributes(__name__, _LAZY)

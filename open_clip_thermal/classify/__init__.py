"""``python -m open_clip_thermal.classify``: zero-shot thermal classification (docs/usage.md).

Python API: ``classify(model, tree_or_dataset, classnames, templates, ...)`` returns the metrics dict;
``coco_crops`` / ``synthetic_crops`` cut labelled crops into an ImageFolder tree. Names are forwarded
lazily, so ``--help`` and the crop commands import no torch.
"""
from ..lazy import forward_attributes

# public name -> submodule
_LAZY = {
    "classify": ".zeroshot", "class_embeddings": ".zeroshot", "dual_branches": ".zeroshot",
    "classification_metrics": ".metrics", "confusion_matrix": ".metrics",
    "ThermalImageFolder": ".tree", "scan_tree": ".tree", "TreeError": ".tree",
    "coco_crops": ".crops", "CropError": ".crops", "CropReport": ".crops",
    "synthetic_crops": ".synthetic_tree",
    "load_templates": ".templates", "DEFAULT_TEMPLATES_FILE": ".templates",
    "main": ".cli", "build_parser": ".cli",
}

__all__ = list(_LAZY)

__getattr__ = forward_attributes(__name__, _LAZY)

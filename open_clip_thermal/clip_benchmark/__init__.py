"""``python -m open_clip_thermal.clip_benchmark``: CLIP_benchmark with the T-CLIP plug-in loaded (docs/benchmark.md).

``eval`` / ``build`` run CLIP_benchmark's own CLI after ``import open_clip_thermal``, so the ``tclip-*``
models are known to it; ``export`` writes our shards in CLIP_benchmark's WebDataset layout. Python API:
``export_wds(urls, out, caption, ...)``. Names are forwarded lazily, so ``--help`` imports no torch.
"""
from ..lazy import forward_attributes

# public name -> submodule
_LAZY = {
    "export_wds": ".wds_export", "ExportError": ".wds_export", "ExportReport": ".wds_export",
    "run_clip_benchmark": ".passthrough",
    "main": ".cli", "build_parser": ".cli",
}

__all__ = list(_LAZY)

__getattr__ = forward_attributes(__name__, _LAZY)

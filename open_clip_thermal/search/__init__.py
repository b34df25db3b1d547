"""``python -m open_clip_thermal.search``: text-to-thermal search (docs/usage.md).

Python API: :class:`ThermalIndex` (``open`` / ``load`` / ``add`` / ``query`` / ``save``) embeds thermal
images once and finds them by text or by example image; ``collect_sources`` names folders, file
lists and shards to index. Names are forwarded lazily, so ``--help`` imports no torch.
"""
from ..lazy import forward_attributes

# public name -> submodule
_LAZY = {
    "ThermalIndex": ".index", "Hit": ".index", "QueryResult": ".index", "AddReport": ".index",
    "Embedder": ".embedder", "load_embedder": ".embedder", "from_model": ".embedder",
    "collect_sources": ".sources", "SourceSet": ".sources",
    "exact_top_k": ".backends", "FaissSearch": ".backends", "EXACT_BELOW": ".backends",
    "SearchError": ".errors", "ModelMismatchError": ".errors",
    "format_results": ".report", "write_contact_sheet": ".report", "write_json": ".report",
    "main": ".cli", "build_parser": ".cli",
}

__all__ = list(_LAZY)

__getattr__ = forward_attributes(__name__, _LAZY)

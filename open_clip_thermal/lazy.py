"""Lazy attribute forwarding for the command packages (PEP 562), so that ``--help`` imports nothing heavy.

A command package (``convert/``, ``train/``, ``benchmark/``...) keeps its code in submodules and exposes
their public names at package level; importing the package must not import those submodules, because
``python -m open_clip_thermal.X --help`` imports the package first.
"""
import importlib
from typing import Callable, Mapping, Union


def forward_attributes(package: str, source: Union[str, Mapping[str, str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports names on first use.

    ``source`` is either one relative module name (every attribute is looked up there, e.g. ``".cli"``)
    or a mapping ``public name -> relative module`` (only those names are forwarded).
    """
    def __getattr__(name: str):
        module = source if isinstance(source, str) else source.get(name)
        if module is not None:
            try:
                return getattr(importlib.import_module(module, package), name)
            except AttributeError:
                pass
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__

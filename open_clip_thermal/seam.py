"""The OpenCLIP seam itself, installed when OpenCLIP is there, so ``import open_clip_thermal`` costs no torch.

``import open_clip_thermal`` must make ``open_clip.create_model('tclip-dual', ...)`` work, but the
torch-free commands (``convert --help``, ``ircap``) import the package too and should not pay seconds
for torch and OpenCLIP. So the package does not import OpenCLIP; :func:`arm` installs the seam at the
first moment OpenCLIP is loaded: at once if it already is, else from a one-shot import hook right
after ``import open_clip`` finishes.

The seam (see ``registry.py`` for why it is needed) registers our architecture JSONs with
``open_clip.add_model_config`` and replaces ``open_clip.factory.create_model`` (and the alias
``open_clip.create_model``) by :func:`_routed_create_model`, which imports ``registry`` only when a
model is built. Nothing here imports the rest of the package, so the hook can fire in the middle of
any import without a cycle. Standard library only at import time.
"""
import functools
import importlib.util
import json
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

_original = None  # OpenCLIP's own create_model while the seam is installed
_armed = False


def original_create_model():
    """OpenCLIP's ``create_model`` as it was before the seam wrapped it."""
    if _original is not None:
        return _original
    import open_clip.factory
    return open_clip.factory.create_model


def _routed_create_model(model_name, pretrained=None, **kwargs):
    from .registry import create_model
    return create_model(model_name, pretrained, **kwargs)


_routed_create_model._open_clip_thermal = True


def is_installed() -> bool:
    """Whether OpenCLIP's ``create_model`` currently routes through open_clip_thermal."""
    factory = sys.modules.get("open_clip.factory")
    return bool(factory is not None and getattr(factory.create_model, "_open_clip_thermal", False))


def configs_registered() -> bool:
    """Whether OpenCLIP knows every architecture JSON of :data:`MODEL_CONFIG_DIR`, as we ship it.

    Public API only (``open_clip.get_model_config``): OpenCLIP 3.x has no public way to list the
    folders ``add_model_config`` was given, and its private ``_MODEL_CONFIG_PATHS`` list gains one
    entry per call, so :func:`install` asks whether our names are there instead of reading that list.
    """
    import open_clip
    return all(open_clip.get_model_config(path.stem) == json.loads(path.read_text(encoding="utf-8"))
               for path in sorted(MODEL_CONFIG_DIR.glob("*.json")))


def install() -> None:
    """Register the architecture JSONs and route ``create_model`` through the plug-in (idempotent)."""
    global _original
    import open_clip
    import open_clip.factory as oc_factory
    if not configs_registered():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    if is_installed():
        return
    _original = oc_factory.create_model
    functools.update_wrapper(_routed_create_model, _original)  # OpenCLIP's name, docstring and signature
    oc_factory.create_model = _routed_create_model
    open_clip.create_model = _routed_create_model


def uninstall() -> None:
    """Restore OpenCLIP's own ``create_model`` (the JSON configs stay registered)."""
    global _original
    if not is_installed():
        return
    import open_clip
    import open_clip.factory as oc_factory
    oc_factory.create_model = _original
    open_clip.create_model = _original
    _original = None


class _AfterOpenClipImport(MetaPathFinder):
    """Wraps the loader of ``open_clip`` so :func:`install` runs right after the package executes."""

    def find_spec(self, name, path=None, target=None):
        if name != "open_clip":
            return None
        sys.meta_path.remove(self)  # one shot; lets the other finders find the real package
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            install()
        spec.loader.exec_module = exec_then_install
        return spec


def arm() -> None:
    """Install the seam now if OpenCLIP is loaded, else as soon as it is (idempotent)."""
    global _armed
    if _armed:
        return
    _armed = True
    if "open_clip" in sys.modules:
        install()
    else:
        sys.meta_path.insert(0, _AfterOpenClipImport())

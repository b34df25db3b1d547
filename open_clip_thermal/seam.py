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

Tokenizers: a T-CLIP model's text tower is its base's (``registry`` builds the base by name and adds
LoRA), so its tokenizer must be the base's too. OpenCLIP's ``get_tokenizer`` decides from the name's
JSON or from the name itself: a name without an architecture JSON (any name added at run time with
``register_tclip_model``, e.g. the trainer's ``tclip-custom-ViT-B-16-SigLIP``) silently gets the
CLIP BPE tokenizer with 77 tokens, and a name containing "siglip" without ``hf_tokenizer_name`` gets
SigLIP's sentencepiece tokenizer. So the seam also replaces ``open_clip.factory.get_tokenizer`` (and
the alias ``open_clip.get_tokenizer``) by :func:`_routed_get_tokenizer`, which hands OpenCLIP a T-CLIP
name's base name instead; every other name, and every argument, passes through unchanged. (Modules
that bound ``get_tokenizer`` before the seam was installed keep OpenCLIP's own; for the shipped names
that is the same tokenizer, their JSONs copy the base's ``text_cfg``, tests/test_tokenizers.py.)
"""
import functools
import importlib.util
import json
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

_original = None  # OpenCLIP's own create_model while the seam is installed
_original_tokenizer = None  # OpenCLIP's own get_tokenizer while the seam is installed
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


def original_get_tokenizer():
    """OpenCLIP's ``get_tokenizer`` as it was before the seam wrapped it."""
    if _original_tokenizer is not None:
        return _original_tokenizer
    import open_clip.factory
    return open_clip.factory.get_tokenizer


def tokenizer_model_name(model_name: str) -> str:
    """The name OpenCLIP should pick a tokenizer for: a T-CLIP name's base, any other name itself."""
    from .registry import custom_base, get_tclip_config, list_tclip_models
    if isinstance(model_name, str) and model_name in list_tclip_models():
        return get_tclip_config(model_name)["base_model"]
    return custom_base(model_name) or model_name  # 'tclip-custom-<base>': the trainer's derived name


def _routed_get_tokenizer(model_name="", context_length=None, cache_dir=None, **kwargs):
    return original_get_tokenizer()(tokenizer_model_name(model_name), context_length=context_length,
                                    cache_dir=cache_dir, **kwargs)


_routed_get_tokenizer._open_clip_thermal = True


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


def tokenizer_installed() -> bool:
    """Whether OpenCLIP's ``get_tokenizer`` currently routes T-CLIP names to their base."""
    factory = sys.modules.get("open_clip.factory")
    return bool(factory is not None and getattr(factory.get_tokenizer, "_open_clip_thermal", False))


def install() -> None:
    """Register the architecture JSONs; route ``create_model`` and ``get_tokenizer`` through the
    plug-in (idempotent)."""
    global _original, _original_tokenizer
    import open_clip
    import open_clip.factory as oc_factory
    if not configs_registered():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    if not is_installed():
        _original = oc_factory.create_model
        functools.update_wrapper(_routed_create_model, _original)  # OpenCLIP's name, docstring and signature
        oc_factory.create_model = _routed_create_model
        open_clip.create_model = _routed_create_model
    if not tokenizer_installed():
        _original_tokenizer = oc_factory.get_tokenizer
        functools.update_wrapper(_routed_get_tokenizer, _original_tokenizer)
        oc_factory.get_tokenizer = _routed_get_tokenizer
        open_clip.get_tokenizer = _routed_get_tokenizer


def uninstall() -> None:
    """Restore OpenCLIP's own ``create_model`` and ``get_tokenizer`` (the JSON configs stay registered)."""
    global _original, _original_tokenizer
    import open_clip
    import open_clip.factory as oc_factory
    if is_installed():
        oc_factory.create_model = _original
        open_clip.create_model = _original
        _original = None
    if tokenizer_installed():
        oc_factory.get_tokenizer = _original_tokenizer
        open_clip.get_tokenizer = _original_tokenizer
        _original_tokenizer = None


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

"""``open_clip.get_tokenizer`` on T-CLIP names gives the tokenizer of the model's base (seam.py).

CLIP-BPE tokenizers are compared by their token ids; Hugging Face tokenizers (SigLIP's) would need a
Hub download, so for those the arguments OpenCLIP constructs them with are recorded and compared.
"""
import json
from pathlib import Path

import open_clip
import open_clip.factory as oc_factory
import pytest
import torch

import open_clip_thermal as oct
from open_clip_thermal import registry, seam

TEXTS = ["infrared thermal image of a pedestrian crossing at night",
         "a hot engine; two cold wheels, 3 m away — bright blob (white-hot)",
         "",
         " ".join(["street"] * 120)]  # longer than any context: cut at the context length
CONFIG_DIR = Path(oct.__file__).parent / "model_configs"
TCLIP_NAMES = registry.list_tclip_models()


class _Recorded:
    """Stands in for a tokenizer class that would download files; keeps what it was built with."""

    def __init__(self, *args, **kwargs):
        self.built_with = (type(self).__name__, args, kwargs)


class _HFTokenizer(_Recorded):
    pass


class _SigLipTokenizer(_Recorded):
    pass


@pytest.fixture()
def no_downloads(monkeypatch):
    monkeypatch.setattr(oc_factory, "HFTokenizer", _HFTokenizer)
    monkeypatch.setattr(oc_factory, "SigLipTokenizer", _SigLipTokenizer)


def _same_tokenizer(name: str, base: str, **kwargs) -> None:
    ours, reference = open_clip.get_tokenizer(name, **kwargs), seam.original_get_tokenizer()(base, **kwargs)
    assert type(ours) is type(reference)
    if isinstance(reference, _Recorded):
        assert ours.built_with == reference.built_with
    else:
        assert ours.context_length == reference.context_length
        assert torch.equal(ours(TEXTS), reference(TEXTS))


def test_every_registered_name_has_a_local_or_recorded_tokenizer():
    assert {"tclip-dual", "tclip-global", "tclip-fg", "tclip-siglip-dual", "tclip-siglip-global", "tclip-siglip-fg",
            "tclip-tiny-dual", "tclip-tiny-global", "tclip-tiny-fg", "tclip-tiny-timm-dual"} <= set(TCLIP_NAMES)


@pytest.mark.parametrize("name", TCLIP_NAMES)
def test_tclip_name_tokenizes_as_its_base(name, no_downloads):
    _same_tokenizer(name, registry.get_tclip_config(name)["base_model"])


def test_expected_tokenizers_of_the_shipped_bases(no_downloads):
    clip = open_clip.get_tokenizer("tclip-dual")
    assert isinstance(clip, open_clip.SimpleTokenizer) and clip.context_length == 77
    assert clip(TEXTS).shape == (len(TEXTS), 77)
    siglip = open_clip.get_tokenizer("tclip-siglip-dual")
    name, args, kwargs = siglip.built_with
    assert (name, args, kwargs["context_length"]) == ("_HFTokenizer", ("timm/ViT-B-16-SigLIP",), 64)
    # the tiny timm test tower uses OpenCLIP's default BPE, not SigLIP's sentencepiece
    assert isinstance(open_clip.get_tokenizer("tclip-tiny-timm-dual"), open_clip.SimpleTokenizer)


@pytest.mark.parametrize("name", TCLIP_NAMES)
def test_shipped_json_text_cfg_is_its_base_text_cfg(name):
    """Tools that read the JSON (or bound get_tokenizer before the seam) see the base's text settings."""
    shipped = json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))
    base = open_clip.get_model_config(registry.get_tclip_config(name)["base_model"])
    assert shipped["text_cfg"] == base["text_cfg"]


def test_a_name_registered_at_run_time_tokenizes_as_its_base(no_downloads):
    """Such a name has no JSON: OpenCLIP alone would give CLIP's BPE (77 tokens) to a SigLIP base."""
    name, base = "tclip-custom-test-base", "ViT-B-16-SigLIP"  # the trainer's naming for a stock base
    registry.register_tclip_model(name, {**registry.get_tclip_config("tclip-tiny-global"), "base_model": base})
    try:
        _same_tokenizer(name, base)
        assert open_clip.get_tokenizer(name).built_with[2]["context_length"] == 64
        assert isinstance(seam.original_get_tokenizer()(name), open_clip.SimpleTokenizer)  # what the seam corrects
    finally:
        registry.unregister_tclip_model(name)


def test_arguments_pass_through(no_downloads):
    _same_tokenizer("tclip-tiny-dual", "thermal-vit-tiny", context_length=16)
    assert open_clip.get_tokenizer("tclip-tiny-dual", context_length=16)(TEXTS).shape == (len(TEXTS), 16)
    _same_tokenizer("tclip-siglip-fg", "ViT-B-16-SigLIP", context_length=32, cache_dir="/tmp/x")


def test_other_names_are_left_to_openclip():
    _same_tokenizer("ViT-B-32", "ViT-B-32")


def test_uninstall_restores_openclips_get_tokenizer():
    assert seam.tokenizer_installed() and open_clip.get_tokenizer is oc_factory.get_tokenizer
    oct.uninstall()
    try:
        assert not seam.tokenizer_installed()
        assert not getattr(open_clip.get_tokenizer, "_open_clip_thermal", False)
    finally:
        oct.install()
    assert seam.tokenizer_installed() and getattr(open_clip.get_tokenizer, "_open_clip_thermal", False)


def test_evaluation_tokenizes_with_the_recorded_base_not_the_method_name():
    """benchmark/classify/search pick the text tokenizer from the model's recorded base: a method name
    such as 'clip-adapter' tells OpenCLIP nothing, and it would silently hand out CLIP's 77-token BPE."""
    from open_clip_thermal.base_model import Provenance
    from open_clip_thermal.evaluation.encode import model_tokenizer
    model = torch.nn.Linear(1, 1)
    model.provenance = Provenance(model_name="clip-adapter", base_model="PE-Core-B-16")  # a 32-token BPE base
    tokenizer = model_tokenizer(model, "clip-adapter")
    base = open_clip.get_tokenizer("PE-Core-B-16")
    assert tokenizer.context_length == base.context_length == 32
    assert torch.equal(tokenizer(TEXTS), base(TEXTS))
    with pytest.warns(UserWarning, match="no tokenizer is known for model 'clip-adapter'"):
        assert model_tokenizer(torch.nn.Linear(1, 1), "clip-adapter").context_length == 77

"""Transformers export (issue 16 item 4): a merged branch as a CLIPModel folder with OpenCLIP's embeddings."""
import json
import warnings

import open_clip
import pytest
import torch

import open_clip_thermal as oct

from model_helpers import images, randomise_lora

transformers = pytest.importorskip("transformers", reason="the [transformers] extra is not installed")

from open_clip_thermal.export import export_transformers  # noqa: E402
from open_clip_thermal.export.cli import main  # noqa: E402
from open_clip_thermal.export.transformers_export import (clip_config, hf_features,  # noqa: E402
                                                          to_transformers_state_dict)

CAPTIONS = ["a thermal image of a person walking a dog", "two cars and a bus at night, 3 a.m.!",
            "a cyclist's warm body on a cold road"]


def _trained(name="tclip-tiny-global", seed=3, lora=True, **kwargs):
    """A tiny T-CLIP on the same random base each time (seed 0), with non-zero LoRA B unless ``lora=False``."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name, **kwargs)
    if lora:
        randomise_lora(model, seed=seed)
    return model.eval()


def _hf_embeddings(folder, pixels, tokens):
    hf = transformers.CLIPModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        img = hf_features(hf.get_image_features(pixel_values=pixels))
        txt = hf_features(hf.get_text_features(input_ids=tokens))
    return hf, torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_exported_clipmodel_matches_openclip(tmp_path, quick_gelu):
    model = _trained(force_quick_gelu=quick_gelu)
    folder = export_transformers(model, tmp_path / "hf", branch="global")
    x, t = images(), open_clip.get_tokenizer("tclip-tiny-global")(CAPTIONS)
    hf, img, txt = _hf_embeddings(folder, x, t)
    assert hf.config.text_config.hidden_act == hf.config.vision_config.hidden_act == (
        "quick_gelu" if quick_gelu else "gelu")
    with torch.no_grad():
        ref_img, ref_txt = model.encode_image(x, branch="global"), model.encode_text(t, branch="global")
        base_img = _trained(lora=False, force_quick_gelu=quick_gelu).encode_image(x)  # B = 0: the bare base
    assert (img - ref_img).abs().max() <= 1e-4 and (txt - ref_txt).abs().max() <= 1e-4
    assert (img - base_img).abs().max() > 1e-3  # the LoRA branch is in the weights, not the bare base
    assert torch.allclose(hf.logit_scale, model.logit_scales["global"].detach().reshape(()))
    assert json.loads((folder / "tclip_export.json").read_text())["branch"] == "global"


def test_fine_grained_branch_of_dual_and_converted_tokenizer(tmp_path):
    model = _trained("tclip-tiny-dual")
    folder = export_transformers(model, tmp_path / "hf", branch="fine_grained")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder))
    ours = open_clip.tokenize(CAPTIONS)
    theirs = tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ends = ours.argmax(dim=-1)
    for i, end in enumerate(ends.tolist()):  # same ids up to end-of-text; padding differs (0 vs end-of-text)
        assert torch.equal(theirs[i, :end + 1], ours[i, :end + 1])
    _, _, txt = _hf_embeddings(folder, images(), theirs)
    with torch.no_grad():
        ref = model.encode_text(ours, branch="fine_grained")
        other = model.encode_text(ours, branch="global")
    assert (txt - ref).abs().max() <= 1e-4
    assert (txt - other).abs().max() > 1e-2
    text_encoder = transformers.CLIPTextModelWithProjection.from_pretrained(str(folder)).eval()  # diffusers' way
    with torch.no_grad():
        projected = torch.nn.functional.normalize(text_encoder(input_ids=theirs).text_embeds, dim=-1)
    assert (projected - ref).abs().max() <= 1e-4
    processor = transformers.CLIPImageProcessor.from_pretrained(str(folder))
    assert processor.crop_size == {"height": 64, "width": 64}


def test_cli_writes_folder_and_names_bad_branch(tmp_path, capsys):
    base_ckpt = tmp_path / "base.pt"  # a base checkpoint on disk, so the CLI rebuilds the same base
    torch.save(_trained(lora=False, force_quick_gelu=True).merged_state_dict(), base_ckpt)
    model = _trained("tclip-tiny-global", force_quick_gelu=True, pretrained=str(base_ckpt))
    adapters = oct.save_adapters(model, tmp_path / "adapters")
    out = tmp_path / "hf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["transformers", "--model", "tclip-tiny-global", "--pretrained", str(adapters),
                     "--out", str(out)]) == 0
        assert "within" in capsys.readouterr().out  # verified against OpenCLIP by default
        x = images()
        _, img, _ = _hf_embeddings(out, x, open_clip.tokenize(CAPTIONS))
        with torch.no_grad():
            assert (img - model.encode_image(x, branch="global")).abs().max() <= 1e-4
        assert main(["transformers", "--model", "tclip-tiny-global", "--pretrained", str(adapters),
                     "--branch", "fine_grained", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading bar
    assert err.startswith("error: --branch 'fine_grained'") and "'global'" in err
    assert not (tmp_path / "bad").exists()


def test_non_vit_base_refused():
    resnet = open_clip.CLIP(embed_dim=64, vision_cfg={"layers": [1, 1, 1, 1], "width": 16, "image_size": 64},
                            text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1})
    with pytest.raises(ValueError, match="ModifiedResNet"):
        clip_config(resnet)
    layer_scale = open_clip.CLIP(embed_dim=64, vision_cfg={"layers": 1, "width": 64, "head_width": 16, "patch_size": 8,
                                                           "image_size": 64, "ls_init_value": 0.1},
                                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1})
    with pytest.raises(ValueError, match="ls_1"):
        to_transformers_state_dict(layer_scale.state_dict(), 1, 1)

"""ONNX export (issue 16 item 3): onnxruntime vs PyTorch within 1e-4 (fp32), dynamic batch, the CLI."""
import json
import warnings

import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[onnx]'")
pytest.importorskip("onnx", reason="onnx not installed (torch.onnx.export needs it): pip install -e '.[onnx]'")

import open_clip  # noqa: E402

import open_clip_thermal as oct  # noqa: E402
from open_clip_thermal.contracts import BRANCHES, FINE_GRAINED, FUSION_MODES, FUSION_SCORE, GLOBAL  # noqa: E402
from open_clip_thermal.export import export_onnx, main  # noqa: E402
from model_helpers import TINY, images, randomise_lora, tokens  # noqa: E402


def _dual(fusion, base=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("tclip-tiny-dual", pretrained=base, fusion=fusion)
    randomise_lora(model)  # branches differ from the base and from each other
    return model.eval()


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_dual_export_matches_pytorch_at_batch_1_and_3(tmp_path, fusion):
    model = _dual(fusion)
    out = export_onnx(model, tmp_path / "onnx", branch="dual")
    for n in (1, 3):
        x, g, f = images(n), tokens(n), tokens(n, seed=7)
        with torch.no_grad():
            want_image, want_text = model.encode_image(x), model.encode_text_dual(g, f)
        got_image = _ort(out / "image.onnx", {"pixels": x})
        got_text = _ort(out / "text.onnx", {"global_tokens": g, "fine_grained_tokens": f})
        assert got_image.shape == want_image.shape and got_text.shape == want_text.shape
        assert (got_image - want_image).abs().max() <= 1e-4
        assert (got_text - want_text).abs().max() <= 1e-4
    if fusion == FUSION_SCORE:  # concatenation: twice the embedding size
        assert want_image.shape[-1] == 2 * 64
    meta = json.loads((out / "export.json").read_text())
    assert meta["branch"] == "dual" and meta["fusion"] == fusion and meta["lam"] == model.lam
    assert list(meta["text"]["inputs"]) == ["global_tokens", "fine_grained_tokens"]


@pytest.mark.parametrize("branch", BRANCHES)
def test_one_branch_export_is_the_merged_branch(tmp_path, branch):
    model = _dual("feature")
    out = export_onnx(model, tmp_path / branch, branch=branch)
    import onnx
    ops = {n.op_type for n in onnx.load(str(out / "image.onnx")).graph.node}
    assert "ScatterND" not in ops  # no in-graph LoRA delta: the weights are merged
    # reference: a plain OpenCLIP model carrying the merged weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = open_clip.create_model(TINY)
    plain.load_state_dict(model.merged_state_dict(branch))
    plain.eval()
    for n in (1, 3):
        x, t = images(n), tokens(n)
        with torch.no_grad():
            want_image, want_text = plain.encode_image(x, normalize=True), plain.encode_text(t, normalize=True)
        assert (_ort(out / "image.onnx", {"pixels": x}) - want_image).abs().max() <= 1e-4
        assert (_ort(out / "text.onnx", {"tokens": t}) - want_text).abs().max() <= 1e-4
    other = FINE_GRAINED if branch == GLOBAL else GLOBAL  # the branches really differ
    with torch.no_grad():
        assert (model.encode_image(images(1), branch=other) - _ort(out / "image.onnx", {"pixels": images(1)})).abs().max() > 1e-3


def test_cli_on_an_adapter_folder_writes_graphs_and_export_json(tmp_path, capsys):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = open_clip.create_model(TINY)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    folder = oct.save_adapters(_dual("feature", base=str(tmp_path / "base.pt")), tmp_path / "adapters")
    out = tmp_path / "onnx"
    assert main(["onnx", "--model", "tclip-tiny-dual", "--pretrained", str(folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "image.onnx", "text.onnx"]
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == "tclip-tiny-dual" and meta["opset"] == 17 and meta["image_size"] == [64, 64]
    assert meta["image"]["inputs"] == {"pixels": ["batch", 3, 64, 64]}
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert max(meta["verified"]["max_abs_diff"].values()) <= 1e-4
    # the graph equals the adapters as reloaded by stock create_model
    reloaded = open_clip.create_model("tclip-tiny-dual", pretrained=str(folder)).eval()
    with torch.no_grad():
        assert (_ort(out / "image.onnx", {"pixels": images(3)}) - reloaded.encode_image(images(3))).abs().max() <= 1e-4


def test_unknown_branch_is_named(tmp_path, capsys):
    assert main(["onnx", "--model", "tclip-tiny-dual", "--pretrained", "none", "--branch", "thermal",
                 "--out", str(tmp_path / "x")]) == 2
    assert "'thermal'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'mixed'"):
        export_onnx(_dual("feature"), tmp_path / "y", branch="mixed")


def _graph(path):
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    return ops, [torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer]


def _matmuls(ops):
    return ops.count("MatMul") + ops.count("Gemm")


def _holds(weights, w):
    """How many initialisers equal ``w`` (as stored for Gemm) or its transpose (as folded for MatMul)."""
    return sum(1 for t in weights for ref in (w, w.T)
               if t.shape == ref.shape and (t - ref).abs().max() <= 1e-6)


@pytest.mark.parametrize("lora", [{}, {"last_k_blocks": 2}, {"targets": ["q", "v", "out", "mlp"]}],
                         ids=["qkv", "last-2-blocks", "qv-out-mlp"])
def test_dual_graph_holds_merged_branch_weights_and_no_lora_op(tmp_path, lora):
    """Each adapted layer's W + B A of each branch is one constant of the dual graph: no LoRA matmul,
    no scatter, one extra weight matmul per adapted layer (the second branch's half of the batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("tclip-tiny-dual", lora=lora)
    randomise_lora(model)
    model.eval()
    dual = export_onnx(model, tmp_path / "dual", branch="dual")
    single = export_onnx(model, tmp_path / "single", branch=GLOBAL)
    per_block = 1 if lora.get("targets") is None else 4  # qkv; or qkv + out + c_fc + c_proj
    adapted = per_block * lora.get("last_k_blocks", 4)  # per tower (4 blocks)
    merged = {b: model.merged_state_dict(b) for b in BRANCHES}
    lora_keys = [k[:-len(".lora_A." + GLOBAL)] for k in model.base.state_dict()
                 if k.endswith(".lora_A." + GLOBAL)]
    for kind, tower in (("image", "visual."), ("text", "transformer.")):
        ops, weights = _graph(dual / f"{kind}.onnx")
        single_ops, _ = _graph(single / f"{kind}.onnx")
        assert "NonZero" not in ops and "ScatterND" not in ops
        # image: one batched pass, the adapted layers run twice (a half each); text: two whole passes
        assert _matmuls(ops) == _matmuls(single_ops) + (adapted if kind == "image" else _matmuls(single_ops))
        keys = [k for k in lora_keys if k.startswith(tower)]
        assert len(keys) == adapted
        for key in keys:  # the update's owner -> the weight it adds to
            weight = key[:-len(".qkv_update")] + ".in_proj_weight" if key.endswith("qkv_update") \
                else key[:-len(".update")] + ".weight"
            for b in BRANCHES:
                assert _holds(weights, merged[b][weight]) == 1, (kind, weight, b)
            assert _holds(weights, model.base.state_dict()[weight]) == 0  # the bare base weight is gone
        x = images(3), tokens(3), tokens(3, seed=7)
        with torch.no_grad():
            want = model.encode_image(x[0]) if kind == "image" else model.encode_text_dual(x[1], x[2])
        feeds = {"pixels": x[0]} if kind == "image" else {"global_tokens": x[1], "fine_grained_tokens": x[2]}
        assert (_ort(dual / f"{kind}.onnx", feeds) - want).abs().max() <= 1e-4


def test_dual_export_with_a_shared_prefix(tmp_path):
    """LoRA on the last 2 of 4 blocks: the graph runs the first 2 once and still matches PyTorch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("tclip-tiny-dual", lora={"last_k_blocks": 2})
    randomise_lora(model)
    model.eval()
    out = export_onnx(model, tmp_path / "prefix", branch="dual")
    x = images(3)
    with torch.no_grad():
        assert (_ort(out / "image.onnx", {"pixels": x}) - model.encode_image(x)).abs().max() <= 1e-4

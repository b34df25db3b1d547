"""Trained baselines: full fine-tuning, CLIP-Adapter, DeCLIP - models, training runs, exports, benchmark."""
import json
import warnings

import open_clip
import open_clip_train.main as trainer_main
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import open_clip_thermal as oct
from open_clip_thermal.adapters import AdapterError
from open_clip_thermal.baselines import (ClipAdapterModel, DeclipConfig, DeclipLoss, DeclipModel, FeatureQueue,
                                         MomentumWeights, nearest_neighbour_infonce, read_clip_adapter_config,
                                         save_clip_adapter, save_openclip_weights)
from open_clip_thermal.baselines.export import exported_with_quick_gelu, uses_quick_gelu
from open_clip_thermal.base_model import Provenance, original_create_model
from open_clip_thermal.benchmark import main as benchmark_main
from open_clip_thermal.evaluation.variants import build_model, parse_variant
from open_clip_thermal.train import main as train_main
from open_clip_thermal.training.hooks import TrainerHooks
from open_clip_thermal.training.options import parse_args, plan_steps, train_options

from model_helpers import TINY, images, tiny_clip, tokens
from train_helpers import TRAIN_FLAGS as COMMON



def _train(logs, name, shards, base_checkpoint, *extra):
    """Run a training in this process and return the trained (unwrapped) model and its run folder."""
    argv = ["--model", "tclip-tiny-global", "--pretrained", base_checkpoint, "--train-data", shards,
            "--logs", str(logs), "--name", name, *COMMON, *extra]
    ours, rest = parse_args(argv)
    hooks = TrainerHooks(train_options(ours))
    with hooks.installed():
        trainer_main.main(plan_steps(ours, rest))
    return hooks.model.eval(), logs / name


def _embeddings(model):
    with torch.no_grad():
        return model.encode_image(images(4), normalize=True), model.encode_text(tokens(4), normalize=True)


def _assert_same_embeddings(a, b):
    for x, y in zip(_embeddings(a), _embeddings(b)):
        assert torch.equal(x, y)


def _benchmark(tmp_path, shards, base_pretrained, *variants):
    out = tmp_path / "bench"
    argv = ["--data", shards, "--out", str(out), "--no-plots", "--no-cache", "--recall-k", "1,5",
            "--group-field", "", "--base-model", TINY, "--base-pretrained", base_pretrained]
    argv += [a for v in variants for a in ("--variant", v)]
    assert benchmark_main(argv) == 0
    return json.loads((out / "results.json").read_text())


# --------------------------------------------------------------------------- CLIP-Adapter model
def test_clip_adapter_trains_131072_parameters_on_vit_b16():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = oct.create_model("clip-adapter", base_model="ViT-B-16")
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter.down.weight": 512 * 128, "adapter.up.weight": 128 * 512}
    assert sum(trainable.values()) == 131_072
    assert not model.logit_scale.requires_grad  # CLIP-Adapter keeps the temperature fixed
    assert (model.alpha, model.reduction) == (0.2, 4)


def test_clip_adapter_blends_the_adapter_into_raw_image_features():
    # frozen like the wrapped copy: requires_grad decides whether torch takes MHA's fused fast path
    base = tiny_clip(seed=0).requires_grad_(False).eval()
    model = ClipAdapterModel(tiny_clip(seed=0), alpha=0.2).eval()
    with torch.no_grad():
        raw = base.encode_image(images(3))
        hidden = F.relu(raw @ model.adapter.down.weight.t())
        expected = 0.2 * F.relu(hidden @ model.adapter.up.weight.t()) + 0.8 * raw
        torch.testing.assert_close(model.encode_image(images(3)), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_image(images(3), normalize=True), F.normalize(expected, dim=-1),
                                   rtol=0, atol=1e-6)
        assert torch.equal(model.encode_text(tokens(3)), base.encode_text(tokens(3)))
        out = model(images(3), tokens(3))
        assert set(out) == {"image_features", "text_features", "logit_scale"}
        assert torch.equal(out["logit_scale"], base.logit_scale.exp())
    off = ClipAdapterModel(tiny_clip(seed=0), alpha=0.0).eval()
    with torch.no_grad():
        assert torch.equal(off.encode_image(images(3)), raw)


def test_clip_adapter_folder_round_trip_and_errors(tmp_path, base_checkpoint):
    model = oct.create_model("clip-adapter", base_model=TINY, base_pretrained=base_checkpoint, alpha=0.3)
    with torch.no_grad():
        model.adapter.up.weight.normal_()
    save_clip_adapter(model, tmp_path / "ca")
    config = read_clip_adapter_config(tmp_path / "ca")
    assert (config["base_model"], config["base_pretrained"], config["alpha"], config["reduction"]) == \
        (TINY, base_checkpoint, 0.3, 4)
    loaded = open_clip.create_model("clip-adapter", pretrained=str(tmp_path / "ca")).eval()
    _assert_same_embeddings(model.eval(), loaded)
    assert loaded.provenance == Provenance(model_name="clip-adapter", base_model=TINY, base_pretrained=base_checkpoint)
    assert ClipAdapterModel(tiny_clip(seed=0)).provenance is None  # built by hand: nothing recorded
    with pytest.raises(ValueError, match="is a CLIP-Adapter folder; load it with create_model\\('clip-adapter'"):
        oct.create_model(TINY, pretrained=str(tmp_path / "ca"))
    with pytest.raises(AdapterError, match="not a CLIP-Adapter folder"):
        oct.create_model("clip-adapter", pretrained=str(tmp_path))
    other = tiny_clip(seed=5)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(AdapterError, match="other base weights"):
        oct.create_model("clip-adapter", pretrained=str(tmp_path / "ca"), base_pretrained=str(tmp_path / "other.pt"))


# --------------------------------------------------------------------------- DeCLIP parts
def test_feature_queue_is_fifo_with_exact_counts():
    queue = FeatureQueue(size=10, dim=3)
    rows = torch.arange(36, dtype=torch.float32).reshape(12, 3)  # row i holds 3i, 3i+1, 3i+2
    counts = []
    for batch in rows.split(4):
        queue.push(batch)
        counts.append(int(queue.count))
    assert counts == [4, 8, 10]
    assert torch.equal(queue.ordered(), rows[2:])  # the two oldest rows were dropped
    assert int(queue.pointer) == 2
    queue.push(torch.full((25, 3), -1.0))  # more than fits: only the newest 10 stay
    assert int(queue.count) == 10 and torch.equal(queue.ordered(), torch.full((10, 3), -1.0))


def test_ema_update_formula():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(2.0)
    ema = MomentumWeights(model)
    with torch.no_grad():
        model.weight.fill_(6.0)
        model.bias.fill_(-2.0)
    ema.update(model, decay=0.75)  # powers of two: exact in float32
    assert torch.equal(ema.as_dict()["weight"], torch.full((2, 3), 0.75 * 2 + 0.25 * 6))
    assert torch.equal(ema.as_dict()["bias"], torch.full((2,), 0.75 * 2 + 0.25 * -2))
    previous = {k: v.clone() for k, v in ema.as_dict().items()}
    with torch.no_grad():
        model.weight.normal_()
    ema.update(model, decay=0.995)
    torch.testing.assert_close(ema.as_dict()["weight"], 0.995 * previous["weight"] + 0.005 * model.weight,
                               rtol=0, atol=1e-6)


def test_declip_momentum_encoder_starts_as_the_online_model_and_fills_queues():
    model = DeclipModel(tiny_clip(seed=0), DeclipConfig(queue_size=5))
    assert not any("momentum" in n or "queue" in n for n, _ in model.named_parameters())
    model.train()
    first = model(images(3), tokens(3))
    assert first["image_queue"].shape == (0, 64)  # snapshot taken before the batch is pushed
    # equal up to float rounding (no_grad lets torch take another attention kernel)
    torch.testing.assert_close(first["momentum_image_features"], first["image_features"].detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(first["momentum_text_features"], first["text_features"].detach(), rtol=0, atol=1e-6)
    second = model(images(3, seed=7), tokens(3, seed=8))
    assert second["image_queue"].shape == (3, 64) and int(model.image_queue.count) == 5
    assert torch.equal(second["text_queue"], first["momentum_text_features"])
    model.eval()
    assert set(model(images(2), tokens(2))) == {"image_features", "text_features", "logit_scale"}


def _nn_infonce_by_hand(online, momentum, queue, temperature):
    """Per sample: candidates = queue rows + the other samples' momentum embeddings; the one nearest to
    the sample's momentum embedding is the positive of a softmax over them. Returns (loss, positives)."""
    losses, positives = [], []
    for i in range(online.shape[0]):
        candidates = torch.cat([queue, momentum[:i], momentum[i + 1:]])
        positive = int((candidates @ momentum[i]).argmax())
        losses.append(-torch.log_softmax(candidates @ online[i] / temperature, dim=0)[positive])
        positives.append(positive)
    return torch.stack(losses).mean(), positives


def test_nearest_neighbour_infonce_uses_the_momentum_neighbour_as_positive():
    queue = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]), dim=-1)
    momentum = F.normalize(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.1, 0.95]]), dim=-1)  # nearest: rows 1 and 2
    online = F.normalize(torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), dim=-1).requires_grad_()
    queue_only = nearest_neighbour_infonce(online, momentum, queue, temperature=0.1, include_batch=False)
    expected = F.cross_entropy(online @ queue.t() / 0.1, torch.tensor([1, 2]))
    torch.testing.assert_close(queue_only, expected, rtol=0, atol=0)
    empty = nearest_neighbour_infonce(online[:1], momentum[:1], queue[:0], temperature=0.1)
    assert empty.item() == 0.0 and empty.requires_grad  # nothing to search: no queue, no other sample


def test_nearest_neighbour_in_the_queue():
    queue = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]), dim=-1)
    # the batch's two samples point far apart; each has a queue row close by (rows 0 and 1)
    momentum = F.normalize(torch.tensor([[0.95, 0.1, 0.0, 0.0], [0.0, 0.0, 0.9, -0.2]]), dim=-1)
    online = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(1)), dim=-1).requires_grad_()
    expected, positives = _nn_infonce_by_hand(online, momentum, queue, 0.1)
    assert positives == [0, 1]  # queue rows
    loss = nearest_neighbour_infonce(online, momentum, queue, temperature=0.1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    loss.backward()
    assert online.grad is not None and torch.isfinite(online.grad).all()


def test_nearest_neighbour_in_the_current_batch():
    queue = F.normalize(torch.tensor([[0.0, 0, 1.0, 0], [0, 0, 0, 1.0]]), dim=-1)
    # samples 0 and 1 nearly coincide (each other's nearest neighbour), sample 2 is nearest to queue row 1
    momentum = F.normalize(torch.tensor([[1.0, 0.1, 0, 0], [1.0, 0.0, 0.1, 0], [0.0, 0.1, 0.2, 1.0]]), dim=-1)
    online = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    expected, positives = _nn_infonce_by_hand(online, momentum, queue, 0.1)
    assert positives == [2, 2, 1]  # sample 0 -> sample 1 (after the 2 queue rows), 1 -> 0, 2 -> queue row 1
    torch.testing.assert_close(nearest_neighbour_infonce(online, momentum, queue, temperature=0.1), expected,
                               rtol=0, atol=1e-6)
    # the batch alone (first step, empty queue): still a loss, each sample's own embedding left out
    first, positives = _nn_infonce_by_hand(online, momentum, queue[:0], 0.1)
    assert positives == [0, 0, 1]  # among the other two: sample 0 -> 1, 1 -> 0, 2 -> 1
    got = nearest_neighbour_infonce(online, momentum, queue[:0], temperature=0.1)
    torch.testing.assert_close(got, first, rtol=0, atol=1e-6)
    assert got.item() > 0


def test_declip_loss_is_finite_and_weighted():
    model = DeclipModel(tiny_clip(seed=0), DeclipConfig(queue_size=6)).train()
    loss = DeclipLoss(DeclipConfig(image_nn_weight=0.5, text_nn_weight=0.25))
    model(images(4), tokens(4))  # fills the queues
    out = model(images(4, seed=9), tokens(4, seed=9))
    terms = loss(**out, output_dict=True)
    assert set(terms) == {"contrastive_loss", "image_nn_loss", "text_nn_loss"}
    assert all(torch.isfinite(v) for v in terms.values()) and terms["image_nn_loss"] > 0
    unweighted = nearest_neighbour_infonce(out["text_features"], out["momentum_text_features"], out["text_queue"], 0.1)
    torch.testing.assert_close(terms["text_nn_loss"], 0.25 * unweighted)
    total = loss(**out)
    total.backward()
    assert model.online.visual.proj.grad is not None
    with pytest.raises(ValueError, match="momentum features and queues"):
        loss(out["image_features"], out["text_features"], out["logit_scale"])


# --------------------------------------------------------------------------- exports
def test_export_records_quick_gelu_for_thermal_create_model(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(TINY, force_quick_gelu=True).eval()
    path = save_openclip_weights(model, tmp_path / "model.safetensors")
    assert exported_with_quick_gelu(path)
    loaded = oct.create_model(TINY, pretrained=str(path)).eval()
    assert uses_quick_gelu(loaded)
    _assert_same_embeddings(model, loaded)
    # stock OpenCLIP cannot tell from the weights: that is why the flag is recorded
    assert not uses_quick_gelu(original_create_model()(TINY, pretrained=str(path)))


# --------------------------------------------------------------------------- training runs
RUNS = {
    "full": ["--method", "full"],
    "clip-adapter": ["--method", "clip-adapter"],
    # decay 0: after every optimizer step the momentum encoder must equal the online weights exactly,
    # which shows the EMA hook ran after the last step
    "declip": ["--method", "declip", "--declip-queue-size", "6", "--declip-momentum", "0",
               "--max-steps", "4", "--steps-per-epoch", "2"],  # two epochs: a resume point in between
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards, base_checkpoint):
    """One two-step training per baseline: method -> (trained model in eval mode, run folder)."""
    logs = tmp_path_factory.mktemp("runs")
    return {method: _train(logs, method, shards, base_checkpoint, "--max-steps", "2", *flags)
            for method, flags in RUNS.items()}


def test_full_run_exports_weights_stock_openclip_loads(runs, base_checkpoint):
    model, run = runs["full"]
    export = run / "model.safetensors"
    assert export.is_file() and (run / "checkpoints" / "epoch_1_model.safetensors").is_file()
    # the plain OpenCLIP model carries the trainer's provenance, and the export header records it
    assert model.provenance == Provenance(model_name="full", base_model=TINY, base_pretrained=base_checkpoint)
    with safe_open(str(export), framework="pt") as f:
        header = f.metadata()
    assert (header["method"], header["base_model"]) == ("full", TINY)
    loaded = open_clip.create_model(TINY, pretrained=str(export)).eval()
    _assert_same_embeddings(model, loaded)
    from_checkpoint = open_clip.create_model(TINY, pretrained=str(run / "checkpoints" / "epoch_1.pt")).eval()
    _assert_same_embeddings(model, from_checkpoint)
    base = torch.load(base_checkpoint, weights_only=True)
    assert not torch.equal(base["visual.proj"], model.visual.proj.detach())  # the run really trained


def test_clip_adapter_run_writes_folder_that_reloads(runs, base_checkpoint):
    model, run = runs["clip-adapter"]
    folder = run / "adapters"
    config = read_clip_adapter_config(folder)
    assert (config["base_model"], config["base_pretrained"], config["alpha"], config["reduction"]) == \
        (TINY, base_checkpoint, 0.2, 4)
    assert set(load_file(str(folder / "adapter_model.safetensors"))) == {"adapter.down.weight", "adapter.up.weight"}
    state = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    assert set(state) == {"adapter.down.weight", "adapter.up.weight"}  # never the frozen CLIP
    assert (run / "checkpoints" / "epoch_1_adapters" / "adapter_config.json").is_file()
    base = torch.load(base_checkpoint, weights_only=True)
    assert all(torch.equal(base[k], v) for k, v in model.base.state_dict().items())  # CLIP stayed frozen
    reloaded = oct.create_model("clip-adapter", pretrained=str(folder)).eval()
    _assert_same_embeddings(model, reloaded)


def test_declip_run_completes_and_exports(runs, base_checkpoint):
    model, run = runs["declip"]
    assert int(model.image_queue.count) == 6 and int(model.text_queue.count) == 6  # 4 steps x 4 > 6
    ema = model.momentum.as_dict()
    assert all(torch.equal(ema[n], p.detach()) for n, p in model.online.named_parameters())
    base = torch.load(base_checkpoint, weights_only=True)
    assert not torch.equal(ema["visual.proj"], base["visual.proj"])
    loaded = open_clip.create_model(TINY, pretrained=str(run / "model.safetensors")).eval()
    _assert_same_embeddings(model, loaded)
    checkpoint = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    assert int(checkpoint["image_queue.count"]) == 6 and "momentum.visual__proj" in checkpoint


def test_declip_resume_reaches_the_uninterrupted_state(tmp_path, runs, shards, base_checkpoint):
    model, run = runs["declip"]
    resumed, _ = _train(tmp_path, "resumed", shards, base_checkpoint, "--max-steps", "2", *RUNS["declip"],
                        "--resume", str(run / "checkpoints" / "epoch_1.pt"))
    expected, got = model.state_dict(), resumed.state_dict()  # online, momentum and queues
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


def test_benchmark_evaluates_every_baseline(tmp_path, runs, shards):
    full, adapter, declip = (runs[m][1] for m in ("full", "clip-adapter", "declip"))
    specs = [f"full=thermal-vit-tiny:{full / 'model.safetensors'}",
             f"clip-adapter=clip-adapter:{adapter / 'adapters'}",
             f"declip=thermal-vit-tiny:{declip / 'model.safetensors'}"]
    # the zero-shot rows load the full run's export through stock OpenCLIP: they must score the same
    results = _benchmark(tmp_path, shards, str(full / "model.safetensors"), *specs)
    rows = {r["label"]: r for r in results["rows"]}
    for caption in ("global", "fine-grained"):
        assert rows[f"full ({caption})"]["recall"] == rows[f"zeroshot ({caption})"]["recall"]
        for kind in ("clip-adapter", "declip"):
            assert rows[f"{kind} ({caption})"]["n_seeds"] == 1
    for spec, method in zip(specs, ("full", "clip-adapter", "declip")):
        (parsed,) = parse_variant(spec)
        built = build_model(parsed, parsed.seeds[0])
        _assert_same_embeddings(runs[method][0], built)


def test_baseline_flag_errors(tmp_path, shards, capsys):
    rc = train_main(["--model", "tclip-tiny-dual", "--branch", "both", "--method", "clip-adapter",
                     "--train-data", shards, "--logs", str(tmp_path), *COMMON, "--max-steps", "1"])
    assert rc == 2 and "--branch both needs --method lora" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="queue size must be >= 1"):
        train_main(["--method", "declip", "--declip-queue-size", "0", "--train-data", shards])

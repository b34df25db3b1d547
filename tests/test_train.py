"""Training through open_clip_train: dual-branch step equality, exact resume, guard rails, CLI."""
import os
import subprocess
import sys

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import open_clip_thermal as oct
from open_clip_thermal.train import main as train_main

from model_helpers import randomise_lora
from train_helpers import TRAIN_FLAGS as COMMON, make_shards



@pytest.fixture(scope="module")
def init_adapters(tmp_path_factory, base_checkpoint):
    """A dual adapter folder with non-zero B, so every LoRA matrix gets gradients from step one."""
    folder = tmp_path_factory.mktemp("init") / "adapters"
    torch.manual_seed(0)
    model = open_clip.create_model("tclip-tiny-dual", pretrained=base_checkpoint)
    randomise_lora(model, std=0.05)
    oct.save_adapters(model, folder)
    return str(folder)


@pytest.fixture()
def _train(base_checkpoint):
    def run(logs, name, shards, *extra):
        rc = train_main(["--model", "tclip-tiny-dual", "--pretrained", base_checkpoint, "--train-data", shards,
                         "--logs", str(logs), "--name", name, *COMMON, *extra])
        assert rc == 0
        return logs / name
    return run


def _branch_weights(run_dir, branch, checkpoint="adapters"):
    return load_file(str(run_dir / checkpoint / branch / oct.adapters.WEIGHTS_NAME))


def test_both_branches_step_equals_each_branch_alone(tmp_path, shards, init_adapters, _train):
    # One step at a small lr: Adam's first update is ~lr * sign(grad), so float rounding in near-zero
    # gradient components would otherwise show up at lr scale.
    steps = ["--max-steps", "1", "--lr", "1e-4", "--grad-clip-norm", "0.05", "--init-from", init_adapters]
    both = _train(tmp_path, "both", shards, "--branch", "both", *steps)
    alone = {b: _train(tmp_path, b, shards, "--branch", b, *steps) for b in ("global", "fine_grained")}
    initial = {b: load_file(f"{init_adapters}/{b}/adapter_model.safetensors") for b in alone}
    for branch, run in alone.items():
        together, single = _branch_weights(both, branch), _branch_weights(run, branch)
        assert together.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(together[key], single[key], atol=1e-6, rtol=0)
        moved = max((single[k] - initial[branch][k]).abs().max().item() for k in single)
        assert moved > 5e-5  # the step really changed the branch


def test_resume_reaches_the_uninterrupted_weights(tmp_path, shards, init_adapters, _train):
    args = ["--branch", "both", "--max-steps", "4", "--steps-per-epoch", "2", "--init-from", init_adapters]
    full = _train(tmp_path, "full", shards, *args)
    checkpoint = full / "checkpoints" / "epoch_1.pt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]  # LoRA + temperatures, no backbone
    assert state and all("lora_" in k or k.startswith("logit_scales.") for k in state)
    assert checkpoint.stat().st_size < 1_000_000  # the tiny backbone alone is ~14 MB
    resumed = _train(tmp_path, "resumed", shards, *args, "--resume", str(checkpoint))
    for branch in ("global", "fine_grained"):
        a, b = _branch_weights(full, branch), _branch_weights(resumed, branch)
        for key in a:
            assert torch.equal(a[key], b[key]), key
    mid = _branch_weights(full, "global", "checkpoints/epoch_1_adapters")
    assert any(not torch.equal(mid[k], _branch_weights(full, "global")[k]) for k in mid)


def test_dual_run_folder_loads_in_openclip(tmp_path, shards, _train):
    run = _train(tmp_path, "tiny", shards, "--branch", "both", "--max-steps", "2")
    model = open_clip.create_model("tclip-tiny-dual", pretrained=str(run / "adapters"))
    trained = _branch_weights(run, "fine_grained")
    params = dict(model.base.named_parameters())
    key = next(k for k in trained if "lora_B" in k)
    assert torch.equal(params[key + ".fine_grained"].detach(), trained[key])
    assert trained[key].abs().max() > 0


def test_too_few_shards_is_refused(tmp_path, shards, capsys):
    rc = train_main(["--model", "tclip-tiny-global", "--train-data", shards, "--logs", str(tmp_path),
                     "--name", "few", *COMMON[:2], "--workers", "8", "--max-steps", "2"])
    assert rc == 2
    assert "4 shard(s) cannot feed 8 worker(s)" in capsys.readouterr().err


def test_fine_grained_without_fg_captions_is_refused(tmp_path, capsys):
    no_fg = make_shards(tmp_path / "nofg", count=8, shards=2, with_fg=False)
    rc = train_main(["--model", "tclip-tiny-fg", "--branch", "fine_grained", "--train-data", no_fg,
                     "--logs", str(tmp_path), "--name", "nofg", *COMMON, "--max-steps", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs fine-grained captions (fg.txt)" in err and "thermal-train-000000.tar" in err
    assert not (tmp_path / "nofg" / "checkpoints" / "epoch_1.pt").exists()


def test_non_finite_loss_stops_naming_the_step(tmp_path, shards, capsys):
    rc = train_main(["--model", "tclip-tiny-global", "--train-data", shards, "--logs", str(tmp_path),
                     "--name", "nan", *COMMON[:-6], "--lr", "1e30", "--warmup", "1", "--max-steps", "4",
                     "--steps-per-epoch", "1", "--log-every-n-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss" in err and "at step" in err
    assert (tmp_path / "nan" / "checkpoints" / "epoch_1.pt").exists()  # the checkpoint before stays


def test_help_lists_our_flags_with_defaults():
    out = subprocess.run([sys.executable, "-m", "open_clip_thermal.train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--branch", "--lora-rank", "--lora-alpha", "--lora-dropout", "--lora-targets", "--lora-towers",
                 "--max-steps", "--preset", "--init-from", "Default: 8", "Default: global", "--train-data"):
        assert flag in out, flag


_DDP_SCRIPT = """
import sys
import torch.distributed as dist
import open_clip_train.main as trainer_main
from open_clip_thermal.adapters import save_adapters
from open_clip_thermal.training.hooks import TrainerHooks
from open_clip_thermal.training.options import parse_args, plan_steps, train_options

out, argv = sys.argv[1], sys.argv[2:]
ours, rest = parse_args(argv)
hooks = TrainerHooks(train_options(ours))
with hooks.installed():
    trainer_main.main(plan_steps(ours, rest))
save_adapters(hooks.model, f"{out}/rank{dist.get_rank()}")  # every rank, to compare them
"""


def test_two_processes_end_with_identical_adapters(tmp_path, shards, base_checkpoint, init_adapters):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    # --standalone: rendezvous on a free loopback port; "--" keeps torchrun from reading our --logs as an
    # abbreviation of its own --logs-specs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--", str(script), str(tmp_path),
           "--model", "tclip-tiny-dual", "--pretrained", base_checkpoint, "--train-data", shards,
           "--logs", str(tmp_path / "logs"), "--name", "ddp", "--branch", "both", "--max-steps", "2",
           "--dist-backend", "gloo", "--device", "cpu", "--init-from", init_adapters, *COMMON]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for branch in ("global", "fine_grained"):
        rank0 = load_file(str(tmp_path / "rank0" / branch / oct.adapters.WEIGHTS_NAME))
        rank1 = load_file(str(tmp_path / "rank1" / branch / oct.adapters.WEIGHTS_NAME))
        initial = load_file(f"{init_adapters}/{branch}/adapter_model.safetensors")
        assert rank0.keys() == rank1.keys()
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
        assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)
    assert (tmp_path / "logs" / "ddp" / "adapters" / "adapter_config.json").exists()


_PATCHED = ("create_model_and_transforms", "get_data", "create_loss", "pt_load", "get_latest_checkpoint", "torch")


def _process_state():
    """What TrainerHooks.installed changes process-wide: optimizer hooks, open_clip_train globals, names."""
    import open_clip_train.main as trainer_main
    from torch.optim import optimizer
    return {"pre": len(optimizer._global_optimizer_pre_hooks), "post": len(optimizer._global_optimizer_post_hooks),
            "globals": {name: getattr(trainer_main, name) for name in _PATCHED},
            "names": oct.registry.list_tclip_models()}


def _assert_restored(before):
    import open_clip_train.main as trainer_main
    after = _process_state()
    assert (after["pre"], after["post"]) == (before["pre"], before["post"])
    for name in _PATCHED:
        assert getattr(trainer_main, name) is before["globals"][name], name
    assert after["names"] == before["names"]


def test_a_run_failing_in_setup_leaves_no_hook_patch_or_name(tmp_path, shards):
    before = _process_state()
    argv = ["--model", "thermal-vit-tiny", "--pretrained", str(tmp_path / "missing.pt"), "--train-data", shards,
            "--logs", str(tmp_path), "--name", "bad", "--lora-rank", "4", *COMMON, "--max-steps", "1"]
    try:
        rc = train_main(argv)
    except Exception:  # whichever way open_clip refuses the missing weights
        rc = None
    assert rc != 0
    _assert_restored(before)


def test_an_exception_while_installing_undoes_what_was_installed(monkeypatch):
    from torch.optim import optimizer
    from open_clip_thermal.training.hooks import TrainerHooks, TrainOptions
    before = _process_state()
    calls = []

    def failing_post_hook(hook):  # the pre hook is registered by then
        calls.append(hook)
        raise RuntimeError("no post hooks today")

    monkeypatch.setattr(optimizer, "register_optimizer_step_post_hook", failing_post_hook)
    with pytest.raises(RuntimeError, match="no post hooks today"):
        with TrainerHooks(TrainOptions()).installed():
            pass  # never reached
    assert calls
    _assert_restored(before)


def test_a_custom_lora_run_unregisters_its_model_name(tmp_path, shards, base_checkpoint):
    before = _process_state()
    rc = train_main(["--model", "thermal-vit-tiny", "--pretrained", base_checkpoint, "--train-data", shards,
                     "--logs", str(tmp_path), "--name", "custom", "--lora-rank", "4", *COMMON, "--max-steps", "1"])
    assert rc == 0
    config = oct.adapters.read_adapter_config(tmp_path / "custom" / "adapters")
    assert config["model_name"] == "tclip-custom-thermal-vit-tiny" and config["lora"]["rank"] == 4
    assert "tclip-custom-thermal-vit-tiny" not in oct.registry.list_tclip_models()
    _assert_restored(before)
    # A later process loads the folder under the recorded name (built from the record, never registered),
    # with the trained LoRA values and the base's tokenizer.
    folder = tmp_path / "custom" / "adapters"
    loaded = open_clip.create_model("tclip-custom-thermal-vit-tiny", pretrained=str(folder))
    assert loaded.branches == ("global",) and loaded.lora_config.rank == 4
    saved = load_file(str(folder / "global" / oct.adapters.WEIGHTS_NAME))
    oct.save_adapters(loaded, tmp_path / "resaved")
    again = load_file(str(tmp_path / "resaved" / "global" / oct.adapters.WEIGHTS_NAME))
    assert any(name.endswith("lora_B") and value.abs().sum() > 0 for name, value in saved.items())  # trained
    assert saved.keys() == again.keys() and all(torch.equal(saved[name], again[name]) for name in saved)
    assert "tclip-custom-thermal-vit-tiny" not in oct.registry.list_tclip_models()
    assert torch.equal(open_clip.get_tokenizer("tclip-custom-thermal-vit-tiny")(["a hot engine"]),
                       open_clip.get_tokenizer("thermal-vit-tiny")(["a hot engine"]))
    from open_clip_thermal.benchmark import main as benchmark_main
    assert benchmark_main(["--data", shards, "--variant", f"lora-global=tclip-custom-thermal-vit-tiny:{folder}",
                           "--base-model", "thermal-vit-tiny", "--base-pretrained", "none", "--recall-k", "1", "--no-plots",
                           "--group-field", "", "--out", str(tmp_path / "bench")]) == 0


def test_checkpoints_and_adapters_go_to_the_run_folder_of_the_trainer_args(tmp_path, shards, base_checkpoint):
    import open_clip_train.main as trainer_main
    from open_clip_thermal.training.hooks import TrainerHooks
    from open_clip_thermal.training.options import parse_args, plan_steps, train_options
    ours, rest = parse_args(["--model", "tclip-tiny-global", "--pretrained", base_checkpoint, "--train-data", shards,
                             "--logs", str(tmp_path / "logs"), "--name", "run", *COMMON, "--max-steps", "1"])
    hooks = TrainerHooks(train_options(ours))
    with hooks.installed():
        trainer_main.main(plan_steps(ours, rest))
    assert hooks._run_dir == tmp_path / "logs" / "run"
    assert (hooks._run_dir / "checkpoints" / "epoch_1.pt").exists()
    assert (hooks._run_dir / "adapters" / "adapter_config.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--imagenet-val", "IMAGENET"], "--imagenet-val: ImageNet zero-shot evaluation is part of open_clip_train's own"),
    (["--imagenet-v2", "IMAGENET"], "--imagenet-v2: ImageNet zero-shot evaluation"),
    (["--dataset-type", "csv"], "--dataset-type csv: this trainer reads WebDataset shards"),
    (["--dataset-type=synthetic"], "--dataset-type synthetic: this trainer reads WebDataset shards"),
    (["--dataset-resampled", "--train-data-upsampling-factors", "1::2"], "--train-data-upsampling-factors: the thermal"),
])
def test_flags_only_the_stock_data_loader_reads_are_refused_before_the_run(tmp_path, shards, capsys, extra, message):
    """open_clip_train's get_data is replaced by the thermal loader: these flags would silently do nothing."""
    extra = [str(tmp_path) if a == "IMAGENET" else a for a in extra]
    rc = train_main(["--model", "tclip-tiny-global", "--train-data", shards, "--logs", str(tmp_path / "logs"),
                     "--name", "refused", *COMMON, "--max-steps", "1", *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # refused before open_clip_train made its run folder


def test_csv_training_data_is_refused_naming_the_file(tmp_path, shards, capsys):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("filepath\ttitle\n")
    rc = train_main(["--model", "tclip-tiny-global", "--train-data", f"{shards}::{csv_file}", "--logs", str(tmp_path),
                     "--name", "csv", *COMMON, "--max-steps", "1"])
    assert rc == 2 and f"--train-data {csv_file}: a CSV/TSV file" in capsys.readouterr().err


def test_the_hooks_refuse_stock_loader_flags_for_any_caller():
    import argparse
    from open_clip_thermal.training.hooks import TrainerHooks, TrainOptions
    args = argparse.Namespace(imagenet_val="/data/imagenet/val", train_data=None, val_data=None)
    with pytest.raises(ValueError, match="--imagenet-val: ImageNet zero-shot"):
        TrainerHooks(TrainOptions()).get_data(args, (None, None))

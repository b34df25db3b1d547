"""Training faults: killed or corrupt checkpoint saves, NaN weights, resume on other base weights,
unsafe pickles in a checkpoint, abbreviated flags. Each runs a tiny model for 1-2 steps."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

import open_clip_thermal as oct
from open_clip_thermal.train import main as train_main
from open_clip_thermal.training.hooks import TrainerHooks
from open_clip_thermal.training.options import parse_args

from model_helpers import tiny_clip
from train_helpers import TRAIN_FLAGS as COMMON

MODEL = "tclip-tiny-global"
TWO_EPOCHS = ["--max-steps", "2", "--steps-per-epoch", "1"]


def _argv(logs, name, shards, base, *extra):
    return ["--model", MODEL, "--pretrained", base, "--train-data", shards, "--logs", str(logs), "--name", name,
            *COMMON, *extra]


def _adapters(folder):
    return load_file(str(Path(folder) / "global" / oct.adapters.WEIGHTS_NAME))


def _log(run_dir):
    return (run_dir / "out.log").read_text()


@pytest.mark.parametrize("keep_bytes", [0, 200])  # what an interrupted in-place write leaves
def test_resume_latest_skips_a_truncated_checkpoint(tmp_path, shards, base_checkpoint, keep_bytes):
    argv = _argv(tmp_path, "trunc", shards, base_checkpoint, *TWO_EPOCHS)
    assert train_main(argv) == 0
    run = tmp_path / "trunc"
    uninterrupted = _adapters(run / "adapters")
    newest = run / "checkpoints" / "epoch_2.pt"
    newest.write_bytes(newest.read_bytes()[:keep_bytes])
    assert train_main(argv + ["--resume", "latest"]) == 0
    log = _log(run)
    assert "skipping resume checkpoint" in log and "epoch_2.pt" in log
    assert "resuming checkpoint '" + str(run / "checkpoints" / "epoch_1.pt") in log
    resumed = _adapters(run / "adapters")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


_DIE_IN_SAVE = """
import io, os, signal, sys
import torch
real_save = torch.save

def dying_save(obj, f, *args, **kwargs):
    if "epoch_2" in str(f):  # the second epoch's checkpoint: write some bytes, then die mid-write
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as handle:
            handle.write(buffer.getvalue()[:100])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = dying_save
from open_clip_thermal.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_save_leaves_no_partial_file(tmp_path, shards, base_checkpoint):
    script = tmp_path / "die_in_save.py"
    script.write_text(_DIE_IN_SAVE)
    argv = _argv(tmp_path, "killed", shards, base_checkpoint, *TWO_EPOCHS)
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert (checkpoints / "epoch_1.pt").exists()
    assert not (checkpoints / "epoch_2.pt").exists()  # only a temporary file, never the final name
    assert train_main(argv + ["--resume", "latest"]) == 0
    assert "resuming checkpoint '" + str(checkpoints / "epoch_1.pt") in _log(tmp_path / "killed")


def test_non_finite_weights_are_never_saved(tmp_path, shards, base_checkpoint, monkeypatch, capsys):
    models = []
    create = TrainerHooks.create_model_and_transforms

    def capture(self, *args, **kwargs):
        out = create(self, *args, **kwargs)
        models.append(self.model)
        return out

    monkeypatch.setattr(TrainerHooks, "create_model_and_transforms", capture)
    steps = []
    poisoned = []

    def poison_after_last_step(optimizer, args, kwargs):  # the loss of that step was finite
        steps.append(1)
        if len(steps) == 2:
            name, param = next((n, p) for n, p in models[0].named_parameters() if "lora_B" in n)
            with torch.no_grad():
                param.fill_(float("nan"))
            poisoned.append(name)

    handle = register_optimizer_step_post_hook(poison_after_last_step)
    try:
        rc = train_main(_argv(tmp_path, "nanw", shards, base_checkpoint, *TWO_EPOCHS))
    finally:
        handle.remove()
    err = capsys.readouterr().err
    run = tmp_path / "nanw"
    assert rc == 1 and poisoned
    assert "non-finite weights" in err and poisoned[0] in err and "step 1" in err
    assert "epoch_1.pt" in err and "intact" in err
    assert not (run / "checkpoints" / "epoch_2.pt").exists()
    assert not (run / "checkpoints" / "epoch_2_adapters").exists()
    for folder in (run / "adapters", run / "checkpoints" / "epoch_1_adapters"):
        assert all(torch.isfinite(t).all() for t in _adapters(folder).values())
    state = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())


def test_save_adapters_refuses_non_finite_weights(tmp_path, base_checkpoint):
    import open_clip
    model = open_clip.create_model(MODEL, pretrained=base_checkpoint)
    name, param = next((n, p) for n, p in model.base.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        oct.save_adapters(model, tmp_path / "adapters")
    with pytest.raises(ValueError, match="non-finite"):
        oct.export_merged(model, "global", tmp_path / "merged.safetensors")
    assert not (tmp_path / "adapters" / "global").exists() and not (tmp_path / "merged.safetensors").exists()


def test_resume_on_other_base_weights_is_refused(tmp_path, shards, base_checkpoint, capsys):
    assert train_main(_argv(tmp_path, "first", shards, base_checkpoint, "--max-steps", "1")) == 0
    other = tmp_path / "other_base.pt"
    torch.save(tiny_clip(seed=1).state_dict(), other)
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch_1.pt"
    rc = train_main(_argv(tmp_path, "second", shards, str(other), *TWO_EPOCHS, "--resume", str(checkpoint)))
    err = capsys.readouterr().err
    assert rc == 2
    assert "other base weights" in err and str(checkpoint) in err


class _RunsCode:
    """Unpickling this calls ``open(path, 'w')``: code run by merely loading the checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused(tmp_path, shards, base_checkpoint, monkeypatch, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": {}, "optimizer": {}, "payload": _RunsCode(str(marker))},
               evil)
    # torch before 2.6 loaded with weights_only=False by default; this variable restores that default
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    rc = train_main(_argv(tmp_path, "evil", shards, base_checkpoint, "--max-steps", "1", "--resume", str(evil)))
    err = capsys.readouterr().err
    assert not marker.exists()
    assert rc == 2 and "refusing to load checkpoint" in err and str(evil) in err


@pytest.mark.parametrize("abbreviation", ["--lora-r", "--grad-clip"])  # --grad-clip: open_clip_train's too
def test_abbreviated_flags_are_not_taken(tmp_path, shards, abbreviation):
    with pytest.raises(SystemExit, match=f"{abbreviation} abbreviates"):
        parse_args([abbreviation, "4", "--branch", "global"])
    with pytest.raises(SystemExit, match="write the flag in full"):
        train_main(["--model", MODEL, "--train-data", shards, "--logs", str(tmp_path), "--name", "abbrev",
                    *COMMON, "--max-steps", "1", f"{abbreviation}=4"])
    ours, rest = parse_args(["--lora-rank", "4", "--grad-clip-norm", "0.5", "--lr", "1e-3"])  # full names
    assert ours.lora_rank == 4 and ours.grad_clip_norm == 0.5 and rest == ["--lr", "1e-3"]

"""Run the plan's trainings: skip the finished ones, resume the interrupted ones, mark each that finishes.

Every training is a child process (``python -m open_clip_thermal.train``, or the launcher given, e.g.
``torchrun --nproc_per_node 8``), its output in the run folder's ``console.log`` beside open_clip_train's
``out.log``. ``--resume latest`` is always passed: a run killed mid-way continues from its newest
loadable checkpoint, a fresh one starts from zero. Only after the trainer exits with 0 and its weights
exist is ``reproduce.json`` written, so a run killed at any moment is never taken for finished.
"""
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..files import atomic_write_text
from .plan import MARKER_NAME, Plan, TrainRun, describe, is_finished


class TrainingFailed(RuntimeError):
    """A training run exited with an error; the message names the run and its log."""


def launcher_argv(launcher: Optional[str]) -> List[str]:
    """The command prefix that starts ``-m open_clip_thermal.train``: this Python, or ``launcher`` (shell words)."""
    return shlex.split(launcher) if launcher else [sys.executable]


def train_command(run: TrainRun, out: Path, launcher: Optional[str] = None) -> List[str]:
    """The exact command line of ``run`` (what ``--dry-run`` prints and what is executed)."""
    prefix = launcher_argv(launcher)
    separator = ["--"] if launcher else []  # torchrun passes what follows '--' to the module untouched
    return [*prefix, "-m", "open_clip_thermal.train", *separator, *run.argv,
            "--logs", str(Path(out) / "runs"), "--name", run.name, "--resume", "latest"]


def write_marker(run: TrainRun, out: Path, seconds: float) -> None:
    """Record that ``run`` finished: its hash, configuration, command and wall time."""
    record = {"key": run.key, "name": run.name, "row": run.row, "config": run.config, "seconds": round(seconds, 3),
              "command": run.argv, "output": run.output}
    atomic_write_text(run.folder(out) / MARKER_NAME, json.dumps(record, indent=2) + "\n")


def read_marker(run: TrainRun, out: Path) -> dict:
    """The marker of a finished run."""
    return json.loads((run.folder(out) / MARKER_NAME).read_text())


def execute(plan: Plan, runs: Sequence[TrainRun], launcher: Optional[str] = None,
            say: Callable[[str], None] = print) -> dict:
    """Train every run of ``runs`` that has not finished, in order; returns counts of trained and skipped runs.

    Raises:
        TrainingFailed: a run exited with an error (the runs before it stay finished).
    """
    trained, skipped = [], []
    width = len(str(len(runs)))
    by_name = plan.by_name()  # for the dependency check; the plan does not change while it runs
    for position, run in enumerate(runs, start=1):
        tag = f"[{position:>{width}}/{len(runs)}] {run.name}"
        if is_finished(run, plan.out):
            skipped.append(run.name)
            say(f"{tag} finished earlier, skipped")
            continue
        if run.depends_on is not None and not is_finished(by_name[run.depends_on], plan.out):
            raise TrainingFailed(f"{run.name} is initialised from {run.depends_on}, which has not finished "
                                 "(with --shard, a run travels with the run it starts from)")
        folder = run.folder(plan.out)
        folder.mkdir(parents=True, exist_ok=True)
        resumed = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("epoch_*.pt"))
        say(f"{tag} {'resuming' if resumed else 'training'} ({describe(run)}) ...")
        start = time.perf_counter()
        with open(folder / "console.log", "a") as console:
            console.write(f"\n$ {shlex.join(train_command(run, plan.out, launcher))}\n")
            console.flush()
            code = subprocess.call(train_command(run, plan.out, launcher), stdout=console, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        if code != 0 or not run.weights(plan.out).exists():
            raise TrainingFailed(f"{run.name} failed (exit status {code}"
                                 f"{'' if run.weights(plan.out).exists() else ', no ' + run.output}); "
                                 f"see {folder / 'console.log'} and {folder / 'out.log'}")
        write_marker(run, plan.out, seconds)
        trained.append(run.name)
        say(f"{tag} done in {seconds:.1f} s")
    return {"trained": trained, "skipped": skipped}

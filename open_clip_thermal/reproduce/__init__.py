"""``python -m open_clip_thermal.reproduce``: the paper's tables and figures, one command each (docs/reproduce.md).

Python API: ``build_plan`` (the runs an experiment needs, identified by configuration hashes),
``shard_of`` (one job's share), ``execute`` (train what is missing) and ``assemble`` (benchmark and
write a table). Names are forwarded lazily, so ``--help`` and ``--dry-run`` import no torch.
"""
from ..lazy import forward_attributes

# public name -> submodule
_LAZY = {
    "build_plan": ".plan", "shard_of": ".plan", "load_experiments": ".plan", "PlanError": ".plan",
    "Plan": ".plan", "TrainRun": ".plan", "is_finished": ".plan", "config_hash": ".plan",
    "execute": ".execute", "train_command": ".execute", "TrainingFailed": ".execute",
    "assemble": ".tables", "AssemblyError": ".tables", "trainable_parameters": ".tables",
    "main": ".cli", "build_parser": ".cli",
}

__all__ = list(_LAZY)

__getattr__ = forward_attributes(__name__, _LAZY)

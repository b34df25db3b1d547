"""The plan of a reproduction: which training runs the chosen tables need, each identified by its configuration.

A run's identity is a hash of everything that decides its weights (method, branch, towers, model, base
weights, training shards and their sizes, seed, every trainer flag, and the identity of the run it is
initialised from). Two experiments that need the same run share it; a changed setting gives a new hash
and so a new run folder, never a stale "finished" one. Standard library only: ``--dry-run`` and
``--help`` import no torch.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..contracts import FINE_GRAINED, GLOBAL, MIXED
from ..data.shard_writer import SHARD_NAME

EXPERIMENTS_FILE = Path(__file__).with_name("experiments.json")
MARKER_NAME = "reproduce.json"  # written into a run folder once its training finished
TEST_SPLIT = "test"  # KAIST: test-all-20 (2,252 pairs); FLIR aligned: the validation list; FMB: test
TRAIN_SPLIT = "train"
METHOD_OUTPUTS = {"lora": "adapters", "clip-adapter": "adapters", "full": "model.safetensors",
                  "declip": "model.safetensors"}
BRANCH_KINDS = {GLOBAL: "lora-global", FINE_GRAINED: "lora-fg", MIXED: "lora-mixed"}


class PlanError(ValueError):
    """A reproduction cannot be planned (unknown experiment, missing data set, bad shard folder)."""


def load_experiments(path: Path = EXPERIMENTS_FILE) -> Dict:
    """The experiment definitions (``experiments.json`` beside this module, or another file of that layout)."""
    try:
        definitions = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PlanError(f"cannot read experiment definitions {path}: {error}") from None
    for key in ("scales", "rows", "experiments"):
        if key not in definitions:
            raise PlanError(f"{path}: no {key!r} section")
    for experiment_id, experiment in definitions["experiments"].items():
        unknown = [row for row in experiment["rows"] if row not in definitions["rows"]]
        if unknown:
            raise PlanError(f"{path}: experiment {experiment_id} names unknown rows {unknown}")
    return definitions


@dataclass(frozen=True)
class DatasetShards:
    """One data set's converted shards: the train and test shard lists as brace patterns."""
    name: str
    root: str
    train: Optional[str]
    test: Optional[str]
    fingerprint: Tuple[Tuple[str, int], ...]  # (shard file, size in bytes) of both splits


def _split_pattern(root: Path, split: str) -> Tuple[Optional[str], List[Tuple[str, int]]]:
    """``ROOT/STEM-{000000..000031}.tar`` for the shards of ``split`` in ``root`` (a '::' list if not contiguous)."""
    found: Dict[str, List[int]] = {}
    for entry in sorted(os.listdir(root)):
        match = SHARD_NAME.match(entry)
        if match and match["stem"].endswith(f"-{split}"):
            found.setdefault(match["stem"], []).append(int(match["number"]))
    if not found:
        return None, []
    if len(found) > 1:
        raise PlanError(f"{root}: shards of several conversions for split {split!r} ({', '.join(sorted(found))}); "
                        "keep one per folder")
    stem, numbers = next(iter(found.items()))
    numbers.sort()
    files = [f"{stem}-{n:06d}.tar" for n in numbers]
    sizes = [(name, (root / name).stat().st_size) for name in files]
    if numbers == list(range(len(numbers))):
        last = numbers[-1]
        pattern = str(root / f"{stem}-{{000000..{last:06d}}}.tar") if last else str(root / files[0])
    else:
        pattern = "::".join(str(root / name) for name in files)
    return pattern, sizes


def find_shards(name: str, root: str) -> DatasetShards:
    """The train and test shards the converter wrote into ``root`` (``PREFIX-train-NNNNNN.tar``, ``PREFIX-test-...``)."""
    path = Path(root)
    if not path.is_dir():
        raise PlanError(f"--data {name}={root}: no such folder")
    train, train_sizes = _split_pattern(path, TRAIN_SPLIT)
    test, test_sizes = _split_pattern(path, TEST_SPLIT)
    if train is None and test is None:
        raise PlanError(f"--data {name}={root}: no PREFIX-train-NNNNNN.tar or PREFIX-test-NNNNNN.tar shards "
                        "(convert the data set first: docs/data.md)")
    return DatasetShards(name, str(path), train, test, tuple(train_sizes + test_sizes))


@dataclass
class TrainRun:
    """One training run of the plan."""
    name: str  # folder under OUT/runs
    key: str  # configuration hash
    row: str  # the experiments.json row that defines it
    train_set: Tuple[str, ...]
    seed: int
    method: str
    config: Dict
    argv: List[str]  # open_clip_thermal.train arguments, without --logs/--name/--resume
    output: str  # what the finished run leaves: "adapters" or "model.safetensors"
    depends_on: Optional[str] = None  # name of the run whose adapters initialise this one

    def folder(self, out: Path) -> Path:
        return Path(out) / "runs" / self.name

    def weights(self, out: Path) -> Path:
        return self.folder(out) / self.output


@dataclass
class Plan:
    """The runs of a reproduction in execution order (a run after the run it is initialised from)."""
    out: Path
    scale: str
    base: str
    seeds: Tuple[int, ...]
    experiments: List[str]
    datasets: Dict[str, DatasetShards]
    runs: List[TrainRun] = field(default_factory=list)
    definitions: Dict = field(default_factory=dict)

    def by_name(self) -> Dict[str, TrainRun]:
        return {run.name: run for run in self.runs}

    def run_for(self, row: str, train_set: Sequence[str], seed: int) -> TrainRun:
        for run in self.runs:
            if run.row == row and run.train_set == tuple(train_set) and run.seed == seed:
                return run
        raise KeyError(f"no run for row {row!r}, training set {'+'.join(train_set)}, seed {seed}")


def training_rows(definitions: Mapping, row: str) -> List[str]:
    """The rows whose runs ``row`` needs, dependencies first (a pair row needs both of its rows)."""
    spec = definitions["rows"][row]
    if "pair" in spec:
        needed = [r for part in spec["pair"] for r in training_rows(definitions, part)]
    elif "train" in spec:
        dependency = spec["train"].get("init_from")
        needed = (training_rows(definitions, dependency) if dependency else []) + [row]
    else:
        needed = []
    return list(dict.fromkeys(needed))


def config_hash(config: Mapping) -> str:
    """The run's identity: SHA-256 of its configuration as canonical JSON, first 12 hex digits."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


# The benchmark's --variant syntax splits weight paths at ',' (seeds) and '+' (a T-CLIP pair's two folders),
# so no run path may contain them: folder names replace them, --out is refused with them.
SPEC_SEPARATORS = ",+"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _train_data(datasets: Mapping[str, DatasetShards], train_set: Sequence[str]) -> Tuple[str, list]:
    patterns, fingerprint = [], []
    for name in train_set:
        shards = datasets[name]
        if shards.train is None:
            raise PlanError(f"--data {name}={shards.root}: no train shards (PREFIX-train-NNNNNN.tar)")
        patterns.append(shards.train)
        fingerprint += [list(item) for item in shards.fingerprint if f"-{TRAIN_SPLIT}-" in item[0]]
    return "::".join(patterns), fingerprint


def _make_run(definitions: Mapping, row: str, train_set: Tuple[str, ...], seed: int, scale: str, base: str,
              datasets: Mapping[str, DatasetShards], extra_args: Sequence[str], runs: Mapping[tuple, TrainRun],
              out: Path) -> TrainRun:
    spec = definitions["rows"][row]["train"]
    profile = definitions["scales"][scale]
    method = spec.get("method", "lora")
    branch = spec["branch"]
    models = profile["models"]
    model = models["base"] if method != "lora" else models[GLOBAL if branch in (GLOBAL, MIXED) else FINE_GRAINED]
    train_data, fingerprint = _train_data(datasets, train_set)
    flags = list(profile["train_args"]) + list(profile.get("method_args", {}).get(method, [])) + list(extra_args)
    dependency = runs[(spec["init_from"], train_set, seed)] if spec.get("init_from") else None
    config = {"method": method, "branch": branch, "towers": spec.get("towers", "both"), "model": model,
              "pretrained": base, "train_data": train_data, "train_shards": fingerprint, "seed": seed,
              "flags": flags, "init_from": dependency.key if dependency else None}
    key = config_hash(config)
    argv = ["--method", method, "--branch", branch, "--model", model, "--pretrained", base,
            "--train-data", train_data, *flags, "--seed", str(seed)]
    if spec.get("towers"):
        argv += ["--lora-towers", spec["towers"]]
    if dependency is not None:
        argv += ["--init-from", str(dependency.weights(out))]
    name = f"{_slug('_'.join(train_set))}-{row}-s{seed}-{key[:8]}"  # kaist+flir -> kaist_flir (SPEC_SEPARATORS)
    return TrainRun(name=name, key=key, row=row, train_set=train_set, seed=seed, method=method, config=config,
                    argv=argv, output=METHOD_OUTPUTS[method], depends_on=dependency.name if dependency else None)


def build_plan(experiments: Sequence[str], data: Mapping[str, str], out: Path, base: str = "openai",
               seeds: Sequence[int] = (0, 42, 123), scale: str = "paper", extra_args: Sequence[str] = (),
               definitions: Optional[Mapping] = None) -> Plan:
    """Every training run the experiments need, shared between experiments, dependencies first.

    Args:
        experiments: ids from experiments.json ("1".."8", "fig1", "fig4", "fig7").
        data: data set name -> folder of its converted shards (only the sets the experiments use are read).
        out: the reproduction folder (runs/, results/, tables/ inside).
        base: base weights of every run (``--pretrained``): an OpenCLIP tag or a checkpoint.
        seeds: training seeds; each table reports mean ± std over them.
        scale: a profile of experiments.json ("paper" or "tiny").
        extra_args: trainer flags appended to every run (part of every run's identity).
    """
    definitions = dict(definitions or load_experiments())
    unknown = [e for e in experiments if e not in definitions["experiments"]]
    if unknown:
        raise PlanError(f"unknown --experiment {unknown}; choose from {', '.join(definitions['experiments'])}")
    if scale not in definitions["scales"]:
        raise PlanError(f"unknown --scale {scale!r}; choose from {', '.join(definitions['scales'])}")
    if not seeds:
        raise PlanError("--seeds needs at least one seed")
    if set(str(out)) & set(SPEC_SEPARATORS):
        raise PlanError(f"--out {out}: a path with {' or '.join(repr(c) for c in SPEC_SEPARATORS)} cannot be given to "
                        "the benchmark (its --variant syntax separates seeds and T-CLIP pairs with them); choose another folder")
    if len(set(seeds)) != len(seeds):
        raise PlanError(f"--seeds {' '.join(map(str, seeds))}: a seed is given twice (it would count as two seeds)")
    needed_sets = sorted({name for e in experiments for train_set in definitions["experiments"][e]["train"]
                          for name in train_set} | {definitions["experiments"][e]["test"] for e in experiments})
    missing = [name for name in needed_sets if name not in data]
    if missing:
        raise PlanError(f"experiment(s) {', '.join(experiments)} need --data for {', '.join(missing)} "
                        f"(e.g. --data {missing[0]}=/data/shards/{missing[0]})")
    datasets = {name: find_shards(name, data[name]) for name in needed_sets}
    for e in experiments:
        test = definitions["experiments"][e]["test"]
        if datasets[test].test is None:
            raise PlanError(f"experiment {e} tests on {test}, but --data {test}={datasets[test].root} has no "
                            "PREFIX-test-NNNNNN.tar shards")
    plan = Plan(out=Path(out), scale=scale, base=base, seeds=tuple(seeds), experiments=list(experiments),
                datasets=datasets, definitions=definitions)
    made: Dict[tuple, TrainRun] = {}
    for e in experiments:
        experiment = definitions["experiments"][e]
        for train_set in experiment["train"]:
            for row in experiment["rows"]:
                for needed in training_rows(definitions, row):
                    for seed in seeds:
                        identity = (needed, tuple(train_set), seed)
                        if identity not in made:
                            made[identity] = _make_run(definitions, needed, tuple(train_set), seed, scale, base,
                                                       datasets, extra_args, made, plan.out)
    plan.runs = list(made.values())
    return plan


def shard_of(plan: Plan, index: int, count: int) -> List[TrainRun]:
    """The runs of job ``index`` (1-based) of ``count``: whole dependency chains, dealt round-robin.

    A run initialised from another run goes with it, so each job can finish its share alone.
    """
    if count < 1 or not 1 <= index <= count:
        raise PlanError(f"--shard {index}/{count}: expected I/N with 1 <= I <= N")
    by_name = plan.by_name()

    def root(run: TrainRun) -> str:
        while run.depends_on is not None:
            run = by_name[run.depends_on]
        return run.name
    roots = list(dict.fromkeys(root(run) for run in plan.runs))
    mine = {name for position, name in enumerate(roots) if position % count == index - 1}
    return [run for run in plan.runs if root(run) in mine]


def is_finished(run: TrainRun, out: Path) -> bool:
    """Finished = the marker with this configuration's hash and the run's weights are both there."""
    marker = run.folder(out) / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("key") == run.key and run.weights(out).exists()


def describe(run: TrainRun) -> str:
    """One line: what the run trains."""
    towers = run.config["towers"]
    what = f"{run.method} {run.config['branch']}" + (f", {towers} tower" if towers != "both" else "")
    init = f", initialised from {run.depends_on}" if run.depends_on else ""
    return f"{'+'.join(run.train_set)}: {what}, seed {run.seed}{init}"

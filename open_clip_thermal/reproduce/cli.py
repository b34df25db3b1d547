"""``python -m open_clip_thermal.reproduce``: the paper's tables and figures, one command each.

Plans every training run the chosen experiments need (method x seed x training set x setting), prints
the plan, trains what is missing, skips what finished, resumes what was killed, then benchmarks and
writes each table in the paper's layout. ``--shard I/N`` trains one share of the plan (for N jobs or
GPUs); a call without ``--shard`` trains whatever is still missing and assembles. See docs/reproduce.md.
"""
import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .plan import EXPERIMENTS_FILE, PlanError, build_plan, describe, is_finished, load_experiments, shard_of


def _experiment_list(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _data_entry(text: str) -> List[str]:
    name, sep, root = text.partition("=")
    if not sep or not name.strip() or not root.strip():
        raise argparse.ArgumentTypeError(f"--data expects NAME=FOLDER (e.g. kaist=/data/shards/kaist), got {text!r}")
    return [name.strip().lower(), root.strip()]


def _shard(text: str) -> List[int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects I/N (e.g. 2/4), got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected 1 <= I <= N")
    return [index, count]


def build_parser() -> argparse.ArgumentParser:
    try:
        definitions = load_experiments()
        choices = "; ".join(f"{key} = {value['short']}" for key, value in definitions["experiments"].items())
    except PlanError:
        choices = f"see {EXPERIMENTS_FILE}"
    p = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.reproduce", allow_abbrev=False,
        description="Reproduce the paper's tables and figures: plan every training run they need, train what "
                    "is missing (skipping finished runs, resuming killed ones), then benchmark and write each "
                    "table in the paper's layout (Markdown + JSON, figure PNGs) under --out/tables.",
        epilog="examples:\n"
               "  python -m open_clip_thermal.reproduce --experiment 1 --data kaist=/data/shards/kaist --out repro --dry-run\n"
               "  python -m open_clip_thermal.reproduce --experiment 1,4,5,6,fig1 --data kaist=/data/shards/kaist --out repro\n"
               "  # four GPU jobs, then one call that assembles:\n"
               "  for i in 1 2 3 4; do CUDA_VISIBLE_DEVICES=$((i-1)) python -m open_clip_thermal.reproduce "
               "--experiment 1 --data kaist=... --out repro --shard $i/4 & done; wait\n"
               "  python -m open_clip_thermal.reproduce --experiment 1 --data kaist=... --out repro --assemble-only\n"
               "docs: docs/reproduce.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", "--experiments", dest="experiments", type=_experiment_list, required=True,
                   metavar="ID[,ID...]", help=f"the tables / figures to reproduce: {choices}; 'all' = every one")
    p.add_argument("--data", type=_data_entry, action="append", default=[], metavar="NAME=FOLDER",
                   help="shard folder of a data set as the converter wrote it (PREFIX-train-NNNNNN.tar, "
                        "PREFIX-test-NNNNNN.tar); repeat per set: kaist, flir, fmb. Only the sets the experiments "
                        "use are needed")
    p.add_argument("--out", type=Path, required=True,
                   help="reproduction folder: runs/ (one folder per training run), results/ (benchmark "
                        "output per experiment), tables/ (the tables), embedding_cache/, logs/")
    p.add_argument("--base", default="openai",
                   help="base weights of every run and of the zero-shot rows: an OpenCLIP tag or a checkpoint "
                        "file (default: openai, i.e. OpenAI's ViT-B/16 with QuickGELU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 42, 123],
                   help="training seeds; tables report mean ± std over them (default: 0 42 123, the paper's)")
    p.add_argument("--scale", default="paper", choices=("paper", "tiny"),
                   help="'paper': ViT-B/16 with the paper's recipe (--preset paper, 10,000 steps); 'tiny': the "
                        "tiny test models for a few steps on CPU (needs --base pointing at a thermal-vit-tiny "
                        "checkpoint) - shows the pipeline runs, the numbers mean nothing (default: paper)")
    p.add_argument("--train-args", default="", metavar="'FLAGS'",
                   help="extra open_clip_thermal.train flags for every run, one quoted string "
                        "(e.g. '--batch-size 64 --workers 8'); they are part of each run's identity")
    p.add_argument("--launcher", default=None, metavar="'COMMAND'",
                   help="how to start a training, instead of this Python: e.g. 'torchrun --nproc_per_node 8' "
                        "(the module and its flags follow after '--')")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (every training command, its status, and the benchmark commands) and exit")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="train only share I of N of the missing runs (a run stays with the run it is initialised "
                        "from) and exit without assembling; run N such jobs, then a call without --shard")
    p.add_argument("--assemble-only", action="store_true",
                   help="train nothing: fail naming the missing runs, or benchmark and write the tables")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures (default: write them; needs matplotlib)")
    return p


def _say(log_path: Path):
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)
        with open(log_path, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    return say


def _print_plan(plan, runs, launcher: Optional[str], plots: bool) -> None:
    from .execute import train_command
    from .tables import benchmark_command
    done = sum(is_finished(run, plan.out) for run in runs)
    print(f"# plan: {len(runs)} training runs ({done} finished, {len(runs) - done} to train), "
          f"scale {plan.scale}, base {plan.base}, seeds {' '.join(map(str, plan.seeds))}")
    for run in runs:
        status = "finished" if is_finished(run, plan.out) else "to train"
        print(f"# {run.name}: {describe(run)} [{status}]")
        print(shlex.join(train_command(run, plan.out, launcher)))
    for experiment_id in plan.experiments:
        experiment = plan.definitions["experiments"][experiment_id]
        rows = ", ".join(experiment["rows"])
        print(f"# experiment {experiment_id}: {experiment['title']}; rows: {rows}")
        print(shlex.join(benchmark_command(plan, experiment_id, plots=plots)))


def _plots_available(wanted: bool, say) -> bool:
    if not wanted:
        return False
    if importlib.util.find_spec("matplotlib") is None:
        say("matplotlib is not installed (pip install 'open_clip_thermal[plots]'): tables without figures")
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Plan, train and assemble as the parsed ``args`` say; returns the exit status."""
    definitions = load_experiments()
    experiments = list(definitions["experiments"]) if args.experiments == ["all"] else args.experiments
    data: Dict[str, str] = {}
    for name, root in args.data:
        if name in data:
            raise PlanError(f"--data {name} given twice")
        data[name] = root
    plan = build_plan(experiments, data, args.out, base=args.base, seeds=args.seeds, scale=args.scale,
                      extra_args=shlex.split(args.train_args), definitions=definitions)
    runs = shard_of(plan, *args.shard) if args.shard else plan.runs
    if args.dry_run:
        _print_plan(plan, runs, args.launcher, plots=not args.no_plots)
        return 0
    from .execute import TrainingFailed, execute
    from .tables import AssemblyError, assemble
    say = _say(args.out / "logs" / "reproduce.log")
    (args.out / "plan.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.json").write_text(json.dumps(
        {"experiments": experiments, "scale": plan.scale, "base": plan.base, "seeds": list(plan.seeds),
         "runs": [{"name": r.name, "key": r.key, "row": r.row, "seed": r.seed, "train_set": list(r.train_set),
                   "config": r.config, "depends_on": r.depends_on} for r in plan.runs]}, indent=2) + "\n")
    missing = [run for run in runs if not is_finished(run, plan.out)]
    shard_text = f" (share {args.shard[0]}/{args.shard[1]})" if args.shard else ""
    say(f"plan: {len(runs)} training runs{shard_text}, {len(runs) - len(missing)} finished, {len(missing)} to train")
    if args.assemble_only and missing:
        raise PlanError(f"--assemble-only: {len(missing)} run(s) have not finished: "
                        f"{', '.join(r.name for r in missing[:5])}{' ...' if len(missing) > 5 else ''} "
                        "(train them first: the same command without --assemble-only, or the --shard jobs)")
    try:
        summary = execute(plan, runs, launcher=args.launcher, say=say) if missing else {"trained": [], "skipped": []}
    except TrainingFailed as error:
        say(f"error: {error}")
        return 1
    say(f"trained {len(summary['trained'])} run(s), skipped {len(runs) - len(summary['trained'])} finished")
    if args.shard:
        say("share done; assemble with the same command without --shard once every share has finished")
        return 0
    plots = _plots_available(not args.no_plots, say)
    for experiment_id in experiments:
        start = time.perf_counter()
        try:
            written = assemble(plan, experiment_id, plots=plots)
        except AssemblyError as error:
            say(f"error: {error}")
            return 1
        say(f"experiment {experiment_id}: {written['markdown']} ({time.perf_counter() - start:.1f} s)")
    for experiment_id in experiments:
        print()
        print((args.out / "tables" / f"{experiment_id}.md").read_text().rstrip())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; bad input exits with 2 and a one-line message."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

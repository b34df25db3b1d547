"""From finished runs to the paper's tables: one benchmark per experiment, then the table in the paper's layout.

The benchmark (``open_clip_thermal.benchmark``, run in-process with its output in
``results/<experiment>/benchmark.log``) scores every row of an experiment on its test set with all seeds,
sharing one embedding cache between experiments. This module then picks the rows the table shows, in
the table's order and with the paper's names, and writes ``tables/<experiment>.md`` and ``.json`` (and
the figure PNGs for fig1, fig4 and fig7).
"""
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..console import quiet
from ..contracts import BRANCHES, FINE_GRAINED, FUSION_FEATURE, FUSION_SCORE, GLOBAL, MIXED
from ..files import atomic_write_json, atomic_write_text
from .execute import read_marker
from .plan import BRANCH_KINDS, Plan, TrainRun, training_rows

DIRECTIONS = {"image_to_text": "I→T", "text_to_image": "T→I"}
# Caption type (a benchmark row's "captions" entry) -> how a table names it ("fine-grained captions").
CAPTION_NAMES = {branch: f"{branch.replace('_', '-')} captions" for branch in BRANCHES}
GAIN_REFERENCE_ROW = "lora-global"  # the paper's gain row: T-CLIP (Dual) minus Global LoRA
DUAL_KIND = "tclip-dual"  # the fused row of a T-CLIP pair: the gain rows', the lambda sweep's and Table 7's
# Table 7 reads one benchmark row per method: a single model scored with the captions its run was trained
# on (a baseline scored with both caption types, and Mixed 50:50, by its global-caption row); T-CLIP by DUAL_KIND.
RECALL_CAPTIONS = {GLOBAL: GLOBAL, FINE_GRAINED: FINE_GRAINED, MIXED: GLOBAL}  # training branch -> captions


class AssemblyError(RuntimeError):
    """The tables cannot be assembled (runs missing, the benchmark failed); the message says what to do."""


def _set_name(train_set: Sequence[str]) -> str:
    return "+".join(train_set)


def _tag(row: str, train_set: Sequence[str], several_sets: bool) -> str:
    return f"{row}.{_set_name(train_set)}" if several_sets else row


def _trained_on(label: str, train_set: Optional[Sequence[str]], several_sets: bool) -> str:
    """A row's label, with its training set when the table has several ("... (trained on KAIST + FLIR)")."""
    if several_sets and train_set:
        return f"{label} (trained on {' + '.join(s.upper() for s in train_set)})"
    return label


def _missing_row(experiment_id: str, label: str, row: str, train_set: Optional[Sequence[str]]) -> AssemblyError:
    trained = f", trained on {_set_name(train_set)}" if train_set else ""
    return AssemblyError(f"experiment {experiment_id}: results/{experiment_id}/results.json has no benchmark row "
                         f"{label!r} (needed by table row {row!r}{trained}); the benchmark output does not match "
                         "the variants this table asked for")


def benchmark_rows(variant_spec: str) -> List:
    """The benchmark's rows for one ``--variant`` spec, labelled as the benchmark labels them (one per caption
    type a single model is scored with; the three T-CLIP kinds of a pair). Imports torch (evaluation.variants)."""
    from ..evaluation.variants import parse_variant, rows_for
    return [row for spec in parse_variant(variant_spec) for row in rows_for(spec)]


def _weights(run: TrainRun, plan: Plan) -> str:
    return str(run.weights(plan.out))


def variant_specs(plan: Plan, experiment_id: str) -> List[Tuple[str, str, str, Tuple[str, ...]]]:
    """``(row, benchmark variant spec, benchmark variant name, training set)`` for each trained row."""
    experiment = plan.definitions["experiments"][experiment_id]
    models = plan.definitions["scales"][plan.scale]["models"]
    several = len(experiment["train"]) > 1
    specs = []
    for train_set in experiment["train"]:
        train_set = tuple(train_set)
        for row in experiment["rows"]:
            spec = plan.definitions["rows"][row]
            tag = _tag(row, train_set, several)
            if "pair" in spec:
                first, second = spec["pair"]
                seeds = [f"{_weights(plan.run_for(first, train_set, s), plan)}+"
                         f"{_weights(plan.run_for(second, train_set, s), plan)}" for s in plan.seeds]
                specs.append((row, f"tclip/{tag}={models['dual']}:{','.join(seeds)}", f"tclip/{tag}", train_set))
            elif "train" in spec:
                runs = [plan.run_for(row, train_set, s) for s in plan.seeds]
                method = runs[0].method
                if method == "lora":
                    kind, model = BRANCH_KINDS[runs[0].config["branch"]], runs[0].config["model"]
                elif method == "clip-adapter":
                    kind, model = "clip-adapter", "clip-adapter"
                else:
                    kind, model = method, models["base"]
                weights = ",".join(_weights(r, plan) for r in runs)
                specs.append((row, f"{kind}/{tag}={model}:{weights}", f"{kind}/{tag}", train_set))
    return specs


BENCHMARK_MODULE = ["-m", "open_clip_thermal.benchmark"]


def benchmark_command(plan: Plan, experiment_id: str, plots: bool = True) -> List[str]:
    """The benchmark call that scores every row of ``experiment_id`` (all seeds) on its test set, as a
    command line (what ``--dry-run`` prints; :func:`run_benchmark` runs the same arguments in-process)."""
    experiment = plan.definitions["experiments"][experiment_id]
    models = plan.definitions["scales"][plan.scale]["models"]
    command = [sys.executable, *BENCHMARK_MODULE,
               "--data", plan.datasets[experiment["test"]].test,
               "--out", str(plan.out / "results" / experiment_id), "--cache-dir", str(plan.out / "embedding_cache"),
               "--base-model", models["base"], "--base-pretrained", plan.base]
    for _, spec, _, _ in variant_specs(plan, experiment_id):
        command += ["--variant", spec]
    if "zeroshot" not in experiment["rows"]:
        command.append("--no-zeroshot")
    if not plots:
        command.append("--no-plots")
    return command


def run_benchmark(plan: Plan, experiment_id: str, plots: bool = True) -> Dict:
    """Run the benchmark of one experiment (output in ``results/<id>/``) and return its results.json.

    In this process (the import of torch and OpenCLIP is paid once for all experiments), with its
    console output and logging sent to ``results/<id>/benchmark.log``.
    """
    from ..benchmark.cli import main as benchmark_main
    from ..evaluation.errors import BenchmarkError
    from ..evaluation.report import read_results
    out = plan.out / "results" / experiment_id
    out.mkdir(parents=True, exist_ok=True)
    argv = benchmark_command(plan, experiment_id, plots=plots)[1 + len(BENCHMARK_MODULE):]
    with quiet(out / "benchmark.log"):
        code = benchmark_main(argv)
    if code != 0:
        raise AssemblyError(f"the benchmark of experiment {experiment_id} failed (exit status {code}); "
                            f"see {out / 'benchmark.log'}")
    try:
        return read_results(out)
    except BenchmarkError as error:  # damaged after the benchmark wrote it: name the file
        raise AssemblyError(f"experiment {experiment_id}: {error}") from None


def _cell(cell: Mapping) -> str:
    text = f"{100 * cell['mean']:.2f}"
    return text + (f" ± {100 * cell['std']:.2f}" if cell.get("std") is not None else "")


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cells) + " |" for cells in body]]


def table_rows(plan: Plan, experiment_id: str, results: Mapping) -> List[Dict]:
    """The table's rows, in its order and with its names: ``label``, ``row``, ``train_set``, ``benchmark_label``,
    ``captions``, ``recall`` (direction -> K -> mean/std over seeds, fractions) and ``mean_recall``.

    Every benchmark row a table row needs is looked up by its label; one that results.json lacks raises
    :class:`AssemblyError` naming it (never a shorter table or a row relabelled from another).
    """
    experiment = plan.definitions["experiments"][experiment_id]
    several = len(experiment["train"]) > 1
    by_label = {row["label"]: row for row in results["rows"]}
    variants = {(row, train_set): (spec, name) for row, spec, name, train_set in variant_specs(plan, experiment_id)}
    table: List[Dict] = []

    def add(label: str, row: str, train_set: Optional[Tuple[str, ...]], benchmark_label: str) -> None:
        if benchmark_label not in by_label:
            raise _missing_row(experiment_id, benchmark_label, row, train_set)
        result = by_label[benchmark_label]
        table.append({"label": _trained_on(label, train_set, several), "row": row,
                      "train_set": list(train_set) if train_set else None, "benchmark_label": benchmark_label,
                      "captions": list(result["captions"]), "recall": result["recall"],
                      "mean_recall": result["mean_recall"], "n_seeds": result["n_seeds"]})

    for row in experiment["rows"]:
        spec = plan.definitions["rows"][row]
        if "train" not in spec and "pair" not in spec:  # zero-shot: one set of rows, no training set
            for benchmark_label, label in spec["labels"].items():
                add(label, row, None, benchmark_label)
            continue
        for train_set in experiment["train"]:
            train_set = tuple(train_set)
            variant_spec, name = variants[(row, train_set)]
            if "pair" in spec:
                tag = name.split("/", 1)[1]
                for kind, label in spec["labels"].items():
                    add(label, row, train_set, f"{kind}/{tag}")
            else:
                expected = benchmark_rows(variant_spec)
                for bench in expected:  # one row per caption type the model is scored with
                    caption = f" ({CAPTION_NAMES[bench.captions[0]]})" if len(expected) > 1 else ""
                    add(spec["label"] + caption, row, train_set, bench.label)
    return table


def gain_rows(table: Sequence[Mapping]) -> List[Dict]:
    """Per T-CLIP (Dual) row: its recall minus the Global LoRA row of the same training set, in points."""
    gains = []
    for row in table:
        if not row["benchmark_label"].startswith(DUAL_KIND):
            continue
        reference = next((r for r in table if r["row"] == GAIN_REFERENCE_ROW and r["train_set"] == row["train_set"]), None)
        if reference is None:
            continue
        gains.append({"label": f"Δ {row['label']} − {reference['label']}", "of": row["label"], "reference": reference["label"],
                      "points": {d: {k: 100 * (row["recall"][d][k]["mean"] - reference["recall"][d][k]["mean"])
                                     for k in row["recall"][d]} for d in DIRECTIONS}})
    return gains


def recall_markdown(title: str, table: Sequence[Mapping], gains: Sequence[Mapping], note: str) -> str:
    """The table in the paper's layout: I→T and T→I Recall@K as mean ± std over seeds, then the gain rows."""
    ks = list(table[0]["recall"]["image_to_text"])
    header = ["Method", *[f"{arrow} R@{k}" for arrow in DIRECTIONS.values() for k in ks]]
    body = [[r["label"], *[_cell(r["recall"][d][k]) for d in DIRECTIONS for k in ks]] for r in table]
    body += [[g["label"], *[f"{g['points'][d][k]:+.2f}" for d in DIRECTIONS for k in ks]] for g in gains]
    return "\n".join([f"# {title}", "", note, "", *_markdown_table(header, body), ""])


TEMPERATURE_NAME = "logit_scale"  # the learned InfoNCE temperature, saved with every run's weights


def trainable_parameters(path: Path) -> int:
    """Number of values in the saved trainable weights (every safetensors file of an adapter folder, or the
    model file), without the learned temperature, so that a LoRA branch counts as the paper counts it."""
    from safetensors import safe_open
    path = Path(path)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path] if path.is_file() else []
    if not files:  # a count of 0 would pass for a number in Table 7
        raise AssemblyError(f"{path}: no safetensors weights to count the trainable parameters of")
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as tensors:
            for name in tensors.keys():
                if name.split(".")[-1] == TEMPERATURE_NAME:
                    continue
                count = 1
                for size in tensors.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


def cost_recall_source(plan: Plan, experiment_id: str, row: str, train_set: Sequence[str]) -> str:
    """The label of the benchmark row whose mean recall Table 7 shows for ``row`` trained on ``train_set``:
    a pair's Dual row, else the row scored with the captions the run was trained on (RECALL_CAPTIONS)."""
    train_set = tuple(train_set)
    spec = plan.definitions["rows"][row]
    variant_spec, name = next((spec_text, variant) for r, spec_text, variant, ts in variant_specs(plan, experiment_id)
                              if r == row and ts == train_set)
    if "pair" in spec:
        return f"{DUAL_KIND}/{name.split('/', 1)[1]}"
    captions = (RECALL_CAPTIONS[plan.run_for(row, train_set, plan.seeds[0]).config["branch"]],)
    labels = [bench.label for bench in benchmark_rows(variant_spec) if tuple(bench.captions) == captions]
    if len(labels) != 1:
        raise AssemblyError(f"experiment {experiment_id}: variant {name} has {len(labels)} benchmark rows scored with "
                            f"{CAPTION_NAMES[captions[0]]}, expected one")
    return labels[0]


def recall_captions_text(captions: Sequence[str]) -> str:
    """Which captions a benchmark row was scored with, as Table 7 prints it."""
    if len(captions) == 1:
        return CAPTION_NAMES[captions[0]]
    return "Dual: " + " + ".join(CAPTION_NAMES[c] for c in captions)


def cost_rows(plan: Plan, experiment_id: str, table: Sequence[Mapping]) -> List[Dict]:
    """Table 7: per trained row and training set, the trainable parameters, the training wall time, the encoder
    passes and the mean recall of one benchmark row (:func:`cost_recall_source`), looked up by
    (row, training set, benchmark label); a missing one raises :class:`AssemblyError` naming it."""
    experiment = plan.definitions["experiments"][experiment_id]
    several = len(experiment["train"]) > 1
    recall_of = {(entry["row"], tuple(entry["train_set"] or ()), entry["benchmark_label"]): entry for entry in table}
    rows = []
    for row in experiment["rows"]:
        spec = plan.definitions["rows"][row]
        if "train" not in spec and "pair" not in spec:
            continue
        parts = spec["pair"] if "pair" in spec else [row]
        label = spec["label"] if "label" in spec else spec["labels"][DUAL_KIND]
        for train_set in experiment["train"]:
            train_set = tuple(train_set)
            per_seed = [[plan.run_for(p, train_set, seed) for p in parts] for seed in plan.seeds]
            seconds = [sum(read_marker(r, plan.out)["seconds"] for r in runs) for runs in per_seed]
            mean = sum(seconds) / len(seconds)
            std = (sum((s - mean) ** 2 for s in seconds) / (len(seconds) - 1)) ** 0.5 if len(seconds) > 1 else None
            counts = [sum(trainable_parameters(r.weights(plan.out)) for r in runs) for runs in per_seed]
            if len(set(counts)) > 1:
                raise AssemblyError(f"experiment {experiment_id}: row {row!r} has different trainable parameter counts "
                                    f"per seed ({', '.join(f'seed {s}: {c:,}' for s, c in zip(plan.seeds, counts))})")
            source = cost_recall_source(plan, experiment_id, row, train_set)
            if (row, train_set, source) not in recall_of:
                raise _missing_row(experiment_id, source, row, train_set)
            recall = recall_of[(row, train_set, source)]
            rows.append({"label": _trained_on(label, train_set, several), "row": row, "train_set": list(train_set),
                         "runs_per_seed": len(parts), "trainable_parameters": counts[0],
                         "training_seconds": {"mean": mean, "std": std}, "encoder_passes": len(parts),
                         "mean_recall": recall["mean_recall"], "recall_from": source,
                         "recall_captions": list(recall["captions"])})
    return rows


COST_HEADER = ["Method", "trainable parameters", "training runs", "training wall time per seed (s)",
               "encoder passes per image / caption", "mean recall %", "recall scored with"]


def cost_markdown(title: str, rows: Sequence[Mapping], note: str) -> str:
    """Table 7 in Markdown: one line per :func:`cost_rows` row, the captions of its recall in the last column."""
    body = [[r["label"], f"{r['trainable_parameters']:,}", str(r["runs_per_seed"]),
             f"{r['training_seconds']['mean']:.1f}" + (f" ± {r['training_seconds']['std']:.1f}"
                                                      if r["training_seconds"]["std"] is not None else ""),
             str(r["encoder_passes"]), f"{100 * r['mean_recall']:.2f}", recall_captions_text(r["recall_captions"])]
            for r in rows]
    return "\n".join([f"# {title}", "", note, "", *_markdown_table(COST_HEADER, body), ""])


def cost_note(results: Mapping, test_set: str, seeds: str) -> str:
    """Table 7's note: what each column counts, and which benchmark row each method's mean recall is from."""
    config = results["config"]
    return ("Trainable parameters: values in the saved trainable weights of a row's run(s) (the same for every "
            "seed), without the learned temperature (one more value per trained model). Wall time: the training "
            f"command of each run, summed over the runs a row needs, mean ± std over seeds {seeds} (machine-dependent). "
            f"Mean recall: I→T and T→I Recall@K averaged over all K, mean over the seeds, {config['n_samples']} test "
            f"pairs ({test_set.upper()}, hit rule: {config['protocol']}), from one benchmark row per method, its "
            "captions in the last column: a baseline scored with both caption types (CLIP-Adapter, DeCLIP) by its "
            "global-caption row, a LoRA branch with the captions it was trained on, T-CLIP by its Dual row (global "
            "captions through the global branch, fine-grained through the F-G branch, feature fusion, "
            f"λ = {config['lam']:g}).")


def gap_markdown(title: str, results: Mapping, table: Sequence[Mapping], note: str) -> str:
    gap = results["thermal_gap"]
    names = {r["benchmark_label"]: r["label"] for r in table}
    missing = [r["benchmark_label"] for r in table if r["benchmark_label"] not in gap["per_row"]]
    if missing:  # the row would silently drop out of the figure's table
        raise AssemblyError(f"results.json: thermal_gap.per_row has no entry for benchmark row(s) {missing}")
    body = [[r["label"], f"{cell['mean']:.4f}", "" if cell["std"] is None else f"{cell['std']:.4f}"]
            for r in table for cell in [gap["per_row"][r["benchmark_label"]]]]
    tests = [[names.get(t["model_a"], t["model_a"]), names.get(t["model_b"], t["model_b"]), f"{t['t']:.3f}",
              f"{t['p']:.3g}", f"{t['p_bh']:.3g}", "yes" if t["significant"] else "no"] for t in gap["tests"]]
    lines = [f"# {title}", "", note, "", *_markdown_table(["Method", "matched-pair cosine (mean)", "std over pairs"], body),
             "", f"Welch's t-tests, Benjamini–Hochberg over this family of {len(tests)} (FDR {gap['alpha']}):", ""]
    if gap.get("note"):
        lines += [gap["note"], ""]
    lines += _markdown_table(["A", "B", "t", "p", "p (BH)", "significant"], tests)
    return "\n".join(lines + [""])


def lambda_markdown(title: str, results: Mapping, table: Sequence[Mapping], note: str) -> str:
    names = {r["benchmark_label"]: r["label"] for r in table}
    missing = [r["benchmark_label"] for r in table if r["benchmark_label"].startswith(DUAL_KIND)
               and r["benchmark_label"] not in results["lambda_sweep"]]
    if missing:  # the figure would silently lack the row's sweep
        raise AssemblyError(f"results.json: lambda_sweep has no entry for benchmark row(s) {missing}")
    lines = [f"# {title}", "", note, ""]
    for label, sweep in results["lambda_sweep"].items():
        lines += [f"## {names.get(label, label)}", "",
                  f"best λ: feature fusion {sweep[FUSION_FEATURE]['best_lambda']:g}, "
                  f"score fusion {sweep[FUSION_SCORE]['best_lambda']:g}", ""]
        lines += _markdown_table(["λ", "mean recall %, feature fusion", "mean recall %, score fusion"],
                                 [[f"{lam:g}", f"{100 * f:.2f}", f"{100 * s:.2f}"] for lam, f, s in
                                  zip(sweep["lambdas"], sweep[FUSION_FEATURE]["mean_recall"], sweep[FUSION_SCORE]["mean_recall"])])
        lines.append("")
    return "\n".join(lines)


def variant_labels(plan: Plan, experiment_id: str) -> Dict[str, str]:
    """Benchmark variant name -> the table's name for it (the T-CLIP kinds of a pair row each get theirs)."""
    names = {"zeroshot": "CLIP zero-shot"}
    for row, _, name, _ in variant_specs(plan, experiment_id):
        spec = plan.definitions["rows"][row]
        if "pair" in spec:
            tag = name.split("/", 1)[1]
            for kind in ("tclip-global", "tclip-fg", "tclip-dual"):
                names[f"{kind}/{tag}"] = spec["labels"].get(kind, f"{kind} ({row})")
        else:
            names[name] = spec["label"]
    return names


def geometry_markdown(title: str, results: Mapping, note: str, names: Mapping[str, str]) -> str:
    lines = [f"# {title}", "", note, "", f"Image features grouped by `{results['config']['group_field']}`; rows "
             "whose models share image features (the T-CLIP rows of one pair of runs) are shown once.", ""]
    body = []
    for variants, geometry in results["geometry"].items():
        variant = ", ".join(names.get(v, v) for v in variants.split(", "))
        angle = geometry.get("branch_angle_deg")
        for branch, groups in geometry["branches"].items():
            cells = ", ".join(f"{g}: {v['mean_cosine']:.4f} (n={v['count']})" if v["mean_cosine"] is not None
                              else f"{g}: n/a (n=1)" for g, v in groups.items())
            body.append([variant, branch, cells, f"{angle['mean']:.2f}°" if angle else ""])
    lines += _markdown_table(["Variant", "Branch", "mean intra-group cosine", "angle G↔F"], body)
    return "\n".join(lines + [""])


def plot_geometry(results: Mapping, path: Path) -> Optional[Path]:
    """Bar chart of the mean intra-group cosine per variant/branch and group (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bars = [(f"{variant}\n{branch}", group, cell["mean_cosine"]) for variant, geometry in results["geometry"].items()
            for branch, groups in geometry["branches"].items() for group, cell in groups.items()
            if cell["mean_cosine"] is not None]
    if not bars:
        return None
    groups = list(dict.fromkeys(b[1] for b in bars))
    names = list(dict.fromkeys(b[0] for b in bars))
    figure, axes = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        values = {name: value for name, grp, value in bars if grp == group}
        axes.bar([i + g * width for i in range(len(names))], [values.get(n, 0.0) for n in names], width, label=str(group))
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, fontsize=7)
    axes.set_ylabel("mean intra-group cosine")
    axes.legend(title=results["config"]["group_field"])
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def assemble(plan: Plan, experiment_id: str, plots: bool = True) -> Dict[str, Path]:
    """Benchmark one experiment and write its table (Markdown + JSON) and figures under ``tables/``."""
    experiment = plan.definitions["experiments"][experiment_id]
    results = run_benchmark(plan, experiment_id, plots=plots)
    table = table_rows(plan, experiment_id, results)
    tables = plan.out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    seeds = ", ".join(str(s) for s in plan.seeds)
    note = (f"Recall@K in %, mean ± std over training seeds {seeds}; {results['config']['n_samples']} test pairs "
            f"({experiment['test'].upper()}); scale {plan.scale}, base {plan.base}; hit rule: "
            f"{results['config']['protocol']}. Full benchmark output: results/{experiment_id}/results.md.")
    record = {"experiment": experiment_id, "title": experiment["title"], "scale": plan.scale, "base": plan.base,
              "seeds": list(plan.seeds), "test": experiment["test"], "n_test_pairs": results["config"]["n_samples"],
              "rows": table, "runs": sorted({run.name for row in experiment["rows"] for train_set in experiment["train"]
                                             for part in training_rows(plan.definitions, row) for run in
                                             [plan.run_for(part, tuple(train_set), s) for s in plan.seeds]})}
    written = {}
    output = experiment["output"]
    if output == "recall":
        record["gains"] = gain_rows(table)
        markdown = recall_markdown(experiment["title"], table, record["gains"], note)
    elif output == "cost":
        record["cost"] = cost_rows(plan, experiment_id, table)
        markdown = cost_markdown(experiment["title"], record["cost"], cost_note(results, experiment["test"], seeds))
    elif output == "gap":
        record["thermal_gap"] = results["thermal_gap"]
        markdown = gap_markdown(experiment["title"], results, table, note)
        written.update(_copy_plot(plan, experiment_id, results, "thermal_gap", tables))
    elif output == "lambda":
        record["lambda_sweep"] = results["lambda_sweep"]
        markdown = lambda_markdown(experiment["title"], results, table, note)
        for name in results.get("plots", {}):
            if name.startswith("lambda_sweep"):
                written.update(_copy_plot(plan, experiment_id, results, name, tables))
    elif output == "geometry":
        record["geometry"] = results["geometry"]
        markdown = geometry_markdown(experiment["title"], results, note, variant_labels(plan, experiment_id))
        if plots:
            png = plot_geometry(results, tables / f"{experiment_id}_geometry.png")
            if png is not None:
                written["geometry"] = png
    else:
        raise AssemblyError(f"experiment {experiment_id}: unknown output {output!r}")
    written["markdown"] = atomic_write_text(tables / f"{experiment_id}.md", markdown)
    written["json"] = atomic_write_json(tables / f"{experiment_id}.json", record, indent=2)
    return written


def _copy_plot(plan: Plan, experiment_id: str, results: Mapping, name: str, tables: Path) -> Dict[str, Path]:
    source = results.get("plots", {}).get(name)
    if not source:
        return {}
    target = tables / f"{experiment_id}_{Path(source).name}"
    shutil.copyfile(plan.out / "results" / experiment_id / source, target)
    return {name: target}

"""Write results.json, results.md (laid out like the paper's tables) and PNG plots; read results.json back.

The report is written as one step (:func:`open_clip_thermal.files.atomic_write_all`: every file to a
temporary name first, then the renames, results.json last): a run that fails or is killed while writing
its report leaves the previous run's files as they were, never a cut-short results.json that a later
step would take for real numbers, nor new plots beside old tables.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

from ..contracts import FUSION_FEATURE, FUSION_MODES, FUSION_SCORE
from ..files import atomic_write_all
from .errors import BenchmarkError
from .evaluate import DIRECTIONS

RESULTS_NAME = "results.json"  # what reproduce, quickstart and the Hub card read back
MARKDOWN_NAME = "results.md"
GAP_PLOT_NAME = "thermal_gap.png"
SWEEP_PLOT_PREFIX = "lambda_sweep_"  # + the row label, one PNG per tclip-dual row
RESULT_KEYS = ("config", "rows")  # present in every results.json the benchmark writes

_ARROWS = {"image_to_text": "I→T", "text_to_image": "T→I"}


def _pct(cell: Mapping) -> str:
    text = f"{100 * cell['mean']:.2f}"
    return text + (f" ± {100 * cell['std']:.2f}" if cell.get("std") is not None else "")


def _recall_header(ks: List[int]) -> List[str]:
    return ["Method"] + [f"{_ARROWS[d]} R@{k}" for d in DIRECTIONS for k in ks]


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _gain_cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def render_markdown(results: Mapping) -> str:
    """The results as Markdown tables (recall in %, mean ± std over seeds)."""
    ks = results["config"]["ks"]
    rows = results["rows"]
    out = ["# Thermal retrieval benchmark", "",
           f"{results['config']['n_samples']} test pairs from {len(results['config']['shards'])} shard(s); "
           f"fused rows use λ = {results['config']['lam']} (feature fusion). "
           "I→T: image query, caption gallery; T→I: caption query, image gallery. Recall in %, "
           "mean ± std over seeds (no ± for a single run).", "",
           f"Hits: {results['config']['protocol']} (`--caption-match {results['config']['caption_match']}`), "
           "the same rule for every row. *chance* is the Recall@K of a random ranking under that rule.", "",
           "## Recall@K", ""]
    body = [[r["label"] + (f" (n={r['n_seeds']})" if r["n_seeds"] > 1 else "")]
            + [_pct(r["recall"][d][k]) for d in DIRECTIONS for k in map(str, ks)] for r in rows]
    body.append(["*chance*"] + [_pct(results["chance"][d][k]) for d in DIRECTIONS for k in map(str, ks)])
    gains = results["vs_global_lora"]
    if gains:
        target = next((r for r in reversed(rows) if r["kind"] == "tclip-dual"), rows[-1])
        g = gains["gains"][target["label"]]
        body.append([f"vs. Global LoRA ({target['label']})"] + [_gain_cell(g[d][k]) for d in DIRECTIONS for k in map(str, ks)])
    out += _table(_recall_header(ks), body)
    if results["fusion_modes"]:
        out += ["", "## Fusion modes (dual branches, same λ)", ""]
        body = []
        for entry in results["fusion_modes"]:
            for mode, cell in entry["modes"].items():
                body.append([f"{entry['label']} [{mode}]"] + [_pct(cell["recall"][d][k]) for d in DIRECTIONS for k in map(str, ks)])
        out += _table(_recall_header(ks), body)
    for label, sweep in results["lambda_sweep"].items():
        out += ["", f"## λ sweep: {label}", "",
                "Mean recall over both directions and all K, in %. Best λ: "
                + ", ".join(f"{m} {sweep[m]['best_lambda']:g}" for m in FUSION_MODES), ""]
        body = [[f"{lam:g}", f"{100 * sweep[FUSION_FEATURE]['mean_recall'][i]:.2f}",
                 f"{100 * sweep[FUSION_SCORE]['mean_recall'][i]:.2f}"]
                for i, lam in enumerate(sweep["lambdas"])]
        out += _table(["λ", FUSION_FEATURE, FUSION_SCORE], body)
    gap = results["thermal_gap"]
    out += ["", "## Thermal perception gap (matched-pair image–text cosine)", ""]
    out += _table(["Method", "mean cosine", "std", "n"],
                  [[label, f"{c['mean']:.4f}", f"{c['std']:.4f}" if c["std"] is not None else "", str(c["n"])]
                   for label, c in gap["per_row"].items()])
    if gap.get("note"):
        out += ["", gap["note"]]
    if gap["tests"]:
        family = ("the paper's family (zero-shot, Global LoRA, T-CLIP Dual)" if gap.get("family") == "paper" and not gap.get("note")
                  else "every pair of rows")
        out += ["", f"Welch's t-test over {family}, Benjamini–Hochberg adjusted over those "
                    f"{len(gap['tests'])} comparisons (FDR {gap['alpha']}).", ""]
        out += _table(["A", "B", "mean A", "mean B", "t", "p", "p (BH)", "significant"],
                      [[t["model_a"], t["model_b"], f"{t['mean_a']:.4f}", f"{t['mean_b']:.4f}", f"{t['t']:.3f}",
                        f"{t['p']:.3g}", f"{t['p_bh']:.3g}", "yes" if t["significant"] else "no"] for t in gap["tests"]])
    if results["geometry"]:
        field = results["config"]["group_field"]
        out += ["", f"## Feature geometry (image features, groups = `{field}`)", ""]
        if results["config"].get("group_field_missing"):
            out += [f"{results['config']['group_field_missing']} of {results['config']['n_samples']} samples have no "
                    f"`{field}` and are left out of this section.", ""]
        body = []
        for variant, geo in results["geometry"].items():
            for branch, groups in geo["branches"].items():
                cells = ", ".join(f"{g}: {v['mean_cosine']:.4f} (n={v['count']})" if v["mean_cosine"] is not None
                                  else f"{g}: n/a (n=1)" for g, v in groups.items())
                angle = geo.get("branch_angle_deg")
                body.append([variant, branch, cells, f"{angle['mean']:.2f}°" if angle else ""])
        out += _table(["Variant", "Branch", "mean intra-group cosine", "angle G↔F"], body)
    out += ["", "CLIP_benchmark keys in results.json: `image_retrieval_recall@k` = text→image, "
            "`text_retrieval_recall@k` = image→text.", ""]
    return "\n".join(out)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; no display on GPU nodes
    import matplotlib.pyplot as plt
    return plt


def _save_png(figure, path) -> None:
    # format given: the temporary name ends in .tmp, from which matplotlib cannot tell the format
    try:
        figure.tight_layout()
        figure.savefig(path, dpi=120, format="png")
    finally:
        _pyplot().close(figure)


def _draw_lambda_sweep(sweep: Mapping, label: str, path) -> None:
    figure, axis = _pyplot().subplots(figsize=(5, 3.5))
    for mode, style in ((FUSION_FEATURE, "o-"), (FUSION_SCORE, "s--")):
        values = [100 * v for v in sweep[mode]["mean_recall"]]
        axis.plot(sweep["lambdas"], values, style, label=f"{mode} (best λ={sweep[mode]['best_lambda']:g})")
    axis.set_xlabel("λ (weight of the global branch)")
    axis.set_ylabel("mean Recall@K (%)")
    axis.set_title(label)
    axis.grid(alpha=0.3)
    axis.legend()
    _save_png(figure, path)


def _draw_thermal_gap(gap: Mapping, path) -> None:
    labels = list(gap["per_row"])
    figure, axis = _pyplot().subplots(figsize=(max(4, 0.8 * len(labels) + 1), 3.5))
    axis.bar(range(len(labels)), [gap["per_row"][l]["mean"] for l in labels],
             yerr=[gap["per_row"][l]["std"] or 0 for l in labels], capsize=3)
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("matched-pair cosine")
    _save_png(figure, path)


def _plot_name(label: str) -> str:
    return SWEEP_PLOT_PREFIX + "".join(c if c.isalnum() or c in "-_" else "_" for c in label) + ".png"


def write_report(results: Dict, out_dir: Path, plots: bool = True) -> Dict[str, Path]:
    """Write the PNGs (with ``plots``), results.md and results.json as one step; returns the paths written.

    Every file is drawn or rendered to a temporary file first and renamed only once all of them are
    written (:func:`~open_clip_thermal.files.atomic_write_all`), results.json last: a run that fails or
    is killed while writing its report leaves the previous run's files as they were.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    writes = {}  # name in the returned dict -> (destination, writer of a temporary path)
    if plots:
        results["plots"] = {}
        for label, sweep in results["lambda_sweep"].items():
            writes[label] = (out_dir / _plot_name(label),
                             lambda tmp, sweep=sweep, label=label: _draw_lambda_sweep(sweep, label, tmp))
            results["plots"][f"lambda_sweep:{label}"] = writes[label][0].name
        if results["thermal_gap"]["per_row"]:
            writes["thermal_gap"] = (out_dir / GAP_PLOT_NAME, lambda tmp: _draw_thermal_gap(results["thermal_gap"], tmp))
            results["plots"]["thermal_gap"] = writes["thermal_gap"][0].name
    text = json.dumps(results, indent=2) + "\n"
    # the Markdown is rendered from the JSON as written (string K keys), as a reader of the file sees it
    markdown = render_markdown(json.loads(text))
    writes["md"] = (out_dir / MARKDOWN_NAME, lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"))
    writes["json"] = (out_dir / RESULTS_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written = dict(zip(writes, atomic_write_all(list(writes.values()))))
    # a previous run's plots that this run did not redraw (--no-plots, a row gone) would sit beside
    # the new tables showing old numbers
    for stale in [*out_dir.glob(f"{SWEEP_PLOT_PREFIX}*.png"), out_dir / GAP_PLOT_NAME]:
        if stale not in written.values() and stale.is_file():
            stale.unlink()
    return written


def read_results(path: Union[str, os.PathLike]) -> Dict:
    """Parse a benchmark results.json (the file, or the ``--out`` folder holding it).

    Raises:
        BenchmarkError: naming the file when it is missing, unreadable, not valid JSON (e.g. cut short
            by a crash of a writer that was not atomic) or not a benchmark results file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkError(f"no benchmark results at {path}: run the benchmark first") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BenchmarkError(f"cannot read benchmark results {path}: {error}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as error:
        raise BenchmarkError(f"benchmark results {path} are not valid JSON ({error}); the file is damaged or "
                             "cut short: run the benchmark again") from None
    missing = [key for key in RESULT_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise BenchmarkError(f"{path} is not a benchmark results file: it lacks {', '.join(missing)}")
    return results

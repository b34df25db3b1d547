"""The comparison table, results.json and confusion-matrix PNGs of a classification run (torch-free)."""
import importlib.util
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional

from ..files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

TASK = "zeroshot_classification"  # CLIP_benchmark's task name


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table_rows(results: List[Dict]) -> List[List[str]]:
    """One row per model (and per branch when scored): name, acc1, acc5, mean per-class recall, counts."""
    rows = []
    for entry in results:
        m = entry["metrics"]
        rows.append([entry["name"], _pct(m["acc1"]), _pct(m["acc5"]), _pct(m["mean_per_class_recall"]),
                     str(m["n_samples"]), str(m["n_unreadable"])])
        for branch, b in (entry.get("branches") or {}).items():
            rows.append([f"  {entry['name']} [{branch} branch]", _pct(b["acc1"]), _pct(b["acc5"]),
                         _pct(b["mean_per_class_recall"]), str(b["n_samples"]), str(m["n_unreadable"])])
    return rows


HEADER = ["model", "acc1 %", "acc5 %", "mean per-class recall %", "images", "unreadable"]


def format_table(results: List[Dict]) -> str:
    """Plain-text table for the console."""
    rows = [HEADER] + table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(results: List[Dict], classnames: List[str]) -> str:
    """results.md: the comparison table and per-class top-1 accuracy per model."""
    out = ["# Zero-shot classification", "", "| " + " | ".join(HEADER) + " |",
           "|" + "|".join("---" for _ in HEADER) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    out += ["", "## Per-class top-1 accuracy (%)", "", "| class | images | " + " | ".join(e["name"] for e in results) + " |",
            "|---|---|" + "|".join("---" for _ in results) + "|"]
    for name in classnames:
        n = results[0]["metrics"]["per_class"][name]["n"]
        out.append(f"| {name} | {n} | " + " | ".join(_pct(e["metrics"]["per_class"][name]["acc1"]) for e in results) + " |")
    return "\n".join(out) + "\n"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def plot_confusion(matrix: List[List[int]], classnames: List[str], title: str, path: Path) -> bool:
    """Row-normalised confusion matrix as PNG; False (and a logged note) without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        log.info("matplotlib is not installed (pip install 'open_clip_thermal[plots]'): no confusion-matrix PNG")
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(classnames) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classnames)), classnames, rotation=45, ha="right")
    ax.set_yticks(range(len(classnames)), classnames)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(classnames)):
        for j in range(len(classnames)):
            if counts[i, j]:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(report: Dict, out: Path, plots: bool = True) -> List[Path]:
    """Write results.json, results.md and (with matplotlib) confusion_<model>.png; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_json(out / "results.json", report, indent=2)]
    written.append(atomic_write_text(out / "results.md", format_markdown(report["results"], report["classnames"])))
    if plots:
        for entry in report["results"]:
            path = out / f"confusion_{safe_name(entry['name'])}.png"
            if not plot_confusion(entry["metrics"]["confusion_matrix"], report["classnames"], entry["name"], path):
                break
            entry["confusion_png"] = path.name
            written.append(path)
        atomic_write_json(out / "results.json", report, indent=2)
    return written

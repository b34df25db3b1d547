"""The benchmark's report files: atomic (a failed write keeps the previous run's files), and results.json
read back with one clear error naming a missing, cut-short or foreign file."""
import json
from pathlib import Path

import pytest
import torch

from open_clip_thermal.contracts import FINE_GRAINED, GLOBAL
from open_clip_thermal.evaluation.errors import BenchmarkError
from open_clip_thermal.evaluation.evaluate import evaluate
from open_clip_thermal.evaluation.report import read_results, render_markdown, write_report
from open_clip_thermal.evaluation.variants import rows_for, zeroshot_spec, parse_variant

N = 10


def _unit(generator, n=N, d=8):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=-1)


def benchmark_results(seed):
    """What the runner hands to write_report: evaluate() on random embeddings plus a config."""
    generator = torch.Generator().manual_seed(seed)
    specs = [zeroshot_spec("ViT-B-16", "openai"), *parse_variant("tclip-dual=tclip-dual:g+f")]
    embeddings = {"zeroshot": [{(None, what): _unit(generator) for what in ("image", GLOBAL, FINE_GRAINED)}],
                  "tclip-dual": [{(b, what): _unit(generator) for b in (GLOBAL, FINE_GRAINED)
                                  for what in ("image", GLOBAL, FINE_GRAINED)}]}
    rows = [row for spec in specs for row in rows_for(spec)]
    results = evaluate(rows, embeddings, None, [1, 5], 0.7, [0.0, 0.5, 1.0], ["day", "night"] * (N // 2))
    results["config"] = {"shards": ["test-test-000000.tar"], "n_samples": N, "ks": [1, 5], "lam": 0.7,
                         "caption_match": "pair", "protocol": "paired item only", "group_field": "time_of_day"}
    return results


def _files(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("plots", [False, True])
def test_a_failed_report_write_keeps_the_previous_run_whole(tmp_path, monkeypatch, plots):
    first = benchmark_results(seed=0)
    write_report(first, tmp_path, plots=plots)
    before = _files(tmp_path)
    assert read_results(tmp_path)["rows"] == json.loads(json.dumps(first["rows"]))
    assert (tmp_path / "results.md").read_text() == render_markdown(read_results(tmp_path))

    real_write_text = Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):  # the disk fills up half-way through a file
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_report(benchmark_results(seed=1), tmp_path, plots=plots)
    monkeypatch.undo()
    assert _files(tmp_path) == before  # old results.json/.md (and PNGs) byte for byte, no temporary debris
    assert read_results(tmp_path / "results.json")["rows"] == json.loads(json.dumps(first["rows"]))


def test_a_failed_plot_write_leaves_no_results_json(tmp_path, monkeypatch):
    """results.json is written last: a run that dies on its report never leaves a new results.json."""
    import matplotlib.figure

    def fail(self, *args, **kwargs):
        raise OSError("cannot write the figure")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(OSError, match="cannot write the figure"):
        write_report(benchmark_results(seed=0), tmp_path, plots=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_read_results_names_the_bad_file(tmp_path):
    with pytest.raises(BenchmarkError, match=f"no benchmark results at {tmp_path / 'results.json'}"):
        read_results(tmp_path)
    write_report(benchmark_results(seed=0), tmp_path, plots=False)
    path = tmp_path / "results.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 3])  # what a non-atomic writer killed mid-write leaves
    with pytest.raises(BenchmarkError, match=r"benchmark results .*results.json are not valid JSON .*cut short") as caught:
        read_results(path)
    assert str(path) in str(caught.value)
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(BenchmarkError, match=r"results.json is not a benchmark results file: it lacks config"):
        read_results(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(BenchmarkError, match="it lacks config, rows"):
        read_results(path)


def test_plots_of_a_previous_run_do_not_outlive_it(tmp_path):
    results = benchmark_results(seed=0)
    write_report(results, tmp_path, plots=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lambda_sweep_tclip-dual.png", "results.json", "results.md",
                                                          "thermal_gap.png"]
    (tmp_path / "lambda_sweep_tclip-dual_old_row.png").write_bytes(b"a row of an older run")
    (tmp_path / "notes.png").write_bytes(b"not ours")
    write_report(benchmark_results(seed=1), tmp_path, plots=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lambda_sweep_tclip-dual.png", "notes.png", "results.json",
                                                          "results.md", "thermal_gap.png"]
    write_report(benchmark_results(seed=2), tmp_path, plots=False)  # no plots now: none from before either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png", "results.json", "results.md"]
    assert "plots" not in read_results(tmp_path)

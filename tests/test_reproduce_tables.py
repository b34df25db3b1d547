"""Table 7 (cost) and the figure tables assembled from hand-written run records and a hand-written results.json.

Nothing is trained or encoded: the run folders hold what a finished run leaves (``reproduce.json`` written by
execute.write_marker, adapter folders / ``model.safetensors`` with weights of known shapes), and the benchmark
is replaced by a stub that writes a results.json whose rows are labelled as the benchmark labels them
(evaluation.variants.rows_for on the ``--variant`` specs of the real benchmark command) and whose recall
cells are summarised from given per-seed values by the benchmark's own evaluation.evaluate.summarise.
"""
import copy
import json
import statistics

import numpy as np
import pytest
from safetensors.numpy import save_file

from open_clip_thermal.contracts import DEFAULT_LAM, FINE_GRAINED, GLOBAL
from open_clip_thermal.evaluation.evaluate import mean_recall, summarise
from open_clip_thermal.evaluation.variants import parse_variant, rows_for
from open_clip_thermal.files import CONFIG_NAME, WEIGHTS_NAME
from open_clip_thermal.reproduce.execute import write_marker
from open_clip_thermal.reproduce.plan import build_plan, load_experiments
from open_clip_thermal.reproduce.tables import (COST_HEADER, AssemblyError, assemble, benchmark_command, cost_rows,
                                                gap_markdown, lambda_markdown, trainable_parameters)

SEEDS = (0, 42, 123)
KS = (1, 5, 10)
N_TEST = 40
# Weights each finished run leaves, by (method, branch): tensor name -> shape. The temperature is saved with
# LoRA and DeCLIP weights and must not be counted.
WEIGHTS = {
    ("lora", GLOBAL): {"visual.transformer.resblocks.0.attn.in_proj.lora_A": (24, 64),
                       "visual.transformer.resblocks.0.attn.in_proj.lora_B": (192, 8), "logit_scale": (1,)},
    ("lora", FINE_GRAINED): {"transformer.resblocks.0.attn.in_proj.lora_A": (24, 32),
                             "transformer.resblocks.0.attn.in_proj.lora_B": (96, 8), "logit_scale": (1,)},
    ("clip-adapter", GLOBAL): {"adapter.down.weight": (128, 512), "adapter.up.weight": (512, 128)},
    ("declip", GLOBAL): {"visual.proj": (768, 512), "text_projection": (512, 512), "logit_scale": (1,)},
}
PARAMETERS = {  # the counts of WEIGHTS without logit_scale, by hand
    "clip-adapter": 2 * 128 * 512, "declip": 768 * 512 + 512 * 512,
    "lora-global": 24 * 64 + 192 * 8, "lora-fg": 24 * 32 + 96 * 8,
}
PARAMETERS["tclip"] = PARAMETERS["lora-global"] + PARAMETERS["lora-fg"]
# The benchmark row each Table 7 row reads its recall from, and the captions it was scored with.
RECALL_FROM = {"clip-adapter": ("clip-adapter/clip-adapter (global)", [GLOBAL]),
               "declip": ("declip/declip (global)", [GLOBAL]),
               "lora-global": ("lora-global/lora-global", [GLOBAL]),
               "lora-fg": ("lora-fg/lora-fg", [FINE_GRAINED]),
               "tclip": ("tclip-dual/tclip", [GLOBAL, FINE_GRAINED])}
LABELS = ["CLIP-Adapter", "DeCLIP", "Global LoRA", "F-G LoRA", "T-CLIP (Dual)"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shard folders with the converter's file names (planning reads names and sizes only)."""
    base = tmp_path_factory.mktemp("shards")
    folders = {}
    for name in ("kaist", "flir"):
        (base / name).mkdir()
        for split in ("train", "test"):
            for index in range(2):
                (base / name / f"{name}-{split}-{index:06d}.tar").write_bytes(b"x" * (index + 1))
        folders[name] = str(base / name)
    return folders


def _definitions(train_sets):
    definitions = copy.deepcopy(load_experiments())
    definitions["experiments"]["7"]["train"] = train_sets
    return definitions


def _finish_runs(plan):
    """Weights and reproduce.json for every run; returns run name -> the wall time recorded."""
    seconds = {}
    for number, run in enumerate(plan.runs):
        tensors = {name: np.zeros(shape, dtype=np.float32) for name, shape in WEIGHTS[(run.method, run.config["branch"])].items()}
        if run.method == "lora":  # adapters/<branch>/adapter_model.safetensors + adapter_config.json
            (run.weights(plan.out) / run.config["branch"]).mkdir(parents=True)
            save_file(tensors, str(run.weights(plan.out) / run.config["branch"] / WEIGHTS_NAME))
            (run.weights(plan.out) / CONFIG_NAME).write_text("{}")
        elif run.output == "adapters":  # CLIP-Adapter: adapters/adapter_model.safetensors + adapter_config.json
            run.weights(plan.out).mkdir(parents=True)
            save_file(tensors, str(run.weights(plan.out) / WEIGHTS_NAME))
            (run.weights(plan.out) / CONFIG_NAME).write_text("{}")
        else:  # DeCLIP: model.safetensors
            run.folder(plan.out).mkdir(parents=True)
            save_file(tensors, str(run.weights(plan.out)))
        seconds[run.name] = 100.0 + 37.5 * number + (3.25 if run.seed == 42 else 0.0)
        write_marker(run, plan.out, seconds[run.name])
    return seconds


def _per_seed(number):
    """Distinct per-seed recalls of the benchmark row ``number``: seed -> direction -> K -> fraction."""
    return [{direction: {k: round((7 * number + 3 * s + k + (direction == "text_to_image")) % 40 / 40, 6) for k in KS}
             for direction in ("image_to_text", "text_to_image")} for s in range(len(SEEDS))]


def _results(plan, drop=()):
    """results.json as the benchmark writes it for the experiment's command (rows labelled by rows_for)."""
    command = benchmark_command(plan, "7", plots=False)
    assert "--no-zeroshot" in command  # Table 7 has no zero-shot row
    specs = [command[i + 1] for i, arg in enumerate(command) if arg == "--variant"]
    rows, per_seed = [], {}
    for bench in (r for text in specs for spec in parse_variant(text) for r in rows_for(spec)):
        if bench.label in drop:
            continue
        per_seed[bench.label] = _per_seed(len(rows))
        summary = summarise(per_seed[bench.label])
        rows.append({"label": bench.label, "variant": bench.variant, "kind": bench.kind, "captions": list(bench.captions),
                     "n_seeds": len(SEEDS), "recall": summary, "mean_recall": mean_recall(summary)})
    results = {"rows": rows, "config": {"n_samples": N_TEST, "ks": list(KS), "lam": DEFAULT_LAM, "protocol": "paired item only"}}
    return json.loads(json.dumps(results)), per_seed  # through JSON, as assembly reads it (K keys become strings)


@pytest.fixture
def stub_benchmark(monkeypatch):
    """Replace the benchmark's main by one that writes the given results.json into its --out folder."""
    calls = []

    def install(results):
        def main(argv):
            calls.append(list(argv))
            out = argv[argv.index("--out") + 1]
            with open(f"{out}/results.json", "w") as file:
                json.dump(results, file)
            return 0
        monkeypatch.setattr("open_clip_thermal.benchmark.cli.main", main)
        return calls
    return install


def _markdown_rows(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return header, [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("train_sets", [[["kaist"]], [["kaist"], ["kaist", "flir"]]], ids=["kaist", "two-sets"])
def test_table_7_cells_from_run_records_and_results(train_sets, shards, tmp_path, stub_benchmark):
    plan = build_plan(["7"], shards, tmp_path, seeds=SEEDS, definitions=_definitions(train_sets))
    seconds = _finish_runs(plan)
    results, per_seed = _results(plan)
    calls = stub_benchmark(results)
    written = assemble(plan, "7", plots=False)
    assert len(calls) == 1
    record = json.loads(written["json"].read_text())
    several = len(train_sets) > 1
    expected_labels = [f"{label} (trained on {' + '.join(s.upper() for s in ts)})" if several else label
                       for label in LABELS for ts in train_sets]  # the table's rows, each per training set
    cost = record["cost"]
    assert [r["label"] for r in cost] == expected_labels
    for row in cost:
        name = row["row"]
        train_set = tuple(row["train_set"])
        parts = ["lora-global", "lora-fg"] if name == "tclip" else [name]
        assert row["trainable_parameters"] == PARAMETERS[name]
        assert row["runs_per_seed"] == row["encoder_passes"] == len(parts)
        wall = [sum(seconds[plan.run_for(p, train_set, s).name] for p in parts) for s in SEEDS]
        assert row["training_seconds"]["mean"] == pytest.approx(statistics.mean(wall))
        assert row["training_seconds"]["std"] == pytest.approx(statistics.stdev(wall))
        label, captions = RECALL_FROM[name]
        if several:  # a second training set's variants carry the set in their tag
            label = label.replace(f"/{name}", f"/{name}.{'+'.join(train_set)}")
        assert row["recall_from"] == label and row["recall_captions"] == captions
        values = per_seed[label]  # the mean recall is the mean over directions, K and seeds of the given values
        assert row["mean_recall"] == pytest.approx(np.mean([seed[d][k] for seed in values for d in seed for k in KS]))
    if several:  # the two training sets are different benchmark rows, so different recalls
        assert len({r["mean_recall"] for r in cost}) == len(cost)
    header, body = _markdown_rows(written["markdown"].read_text())
    assert header == COST_HEADER
    assert [cells[0] for cells in body] == [r["label"] for r in cost]
    caption_text = {(GLOBAL,): "global captions", (FINE_GRAINED,): "fine-grained captions",
                    (GLOBAL, FINE_GRAINED): "Dual: global captions + fine-grained captions"}
    for cells, row in zip(body, cost):  # the Markdown says what the JSON says
        mean, std = row["training_seconds"]["mean"], row["training_seconds"]["std"]
        assert cells[1:] == [f"{row['trainable_parameters']:,}", str(row["runs_per_seed"]), f"{mean:.1f} ± {std:.1f}",
                             str(row["encoder_passes"]), f"{100 * row['mean_recall']:.2f}",
                             caption_text[tuple(row["recall_captions"])]]
    assert body[len(train_sets) * LABELS.index("T-CLIP (Dual)")][1] == f"{PARAMETERS['tclip']:,}"
    note = written["markdown"].read_text()
    assert "global-caption row" in note and f"λ = {DEFAULT_LAM:g}" in note and f"{N_TEST} test pairs" in note


@pytest.mark.parametrize("missing, row", [("tclip-dual/tclip", "tclip"),
                                          ("clip-adapter/clip-adapter (fine-grained)", "clip-adapter"),
                                          ("lora-fg/lora-fg", "lora-fg")])
def test_a_missing_benchmark_row_is_a_clear_error(missing, row, shards, tmp_path, stub_benchmark):
    plan = build_plan(["7"], shards, tmp_path, seeds=SEEDS)
    _finish_runs(plan)
    results, _ = _results(plan, drop=(missing,))
    stub_benchmark(results)
    with pytest.raises(AssemblyError) as error:
        assemble(plan, "7", plots=False)
    message = str(error.value)
    assert f"no benchmark row {missing!r}" in message and f"table row {row!r}, trained on kaist" in message
    assert "\n" not in message
    assert not (tmp_path / "tables" / "7.md").exists()


def test_cost_lookup_refuses_a_table_without_the_dual_row(shards, tmp_path):
    """A T-CLIP row whose Dual entry is absent is an error, not the first T-CLIP-ish row or a blank."""
    plan = build_plan(["7"], shards, tmp_path, seeds=SEEDS)
    _finish_runs(plan)
    results, _ = _results(plan)
    table = [{"row": "tclip" if r["variant"].startswith("tclip") else r["variant"].split("/")[1], "train_set": ["kaist"],
              "benchmark_label": r["label"], "captions": r["captions"], "mean_recall": r["mean_recall"]}
             for r in results["rows"] if r["label"] != "tclip-dual/tclip"]
    with pytest.raises(AssemblyError, match="no benchmark row 'tclip-dual/tclip'"):
        cost_rows(plan, "7", table)


def test_parameter_count_needs_weights(tmp_path):
    (tmp_path / "adapters").mkdir()
    with pytest.raises(AssemblyError, match="no safetensors weights"):
        trainable_parameters(tmp_path / "adapters")
    with pytest.raises(AssemblyError, match="no safetensors weights"):
        trainable_parameters(tmp_path / "model.safetensors")
    save_file({"a.lora_A": np.zeros((3, 5), np.float32), "logit_scale": np.zeros(1, np.float32)},
              str(tmp_path / "adapters" / WEIGHTS_NAME))
    assert trainable_parameters(tmp_path / "adapters") == 15


TABLE = [{"label": "Global LoRA", "benchmark_label": "lora-global/lora-global"},
         {"label": "T-CLIP (Dual)", "benchmark_label": "tclip-dual/tclip"}]


def test_gap_table_refuses_a_row_without_its_cosine():
    gap = {"per_row": {"lora-global/lora-global": {"mean": 0.5, "std": 0.1}}, "tests": [], "alpha": 0.05}
    with pytest.raises(AssemblyError, match=r"thermal_gap.per_row has no entry for benchmark row\(s\) \['tclip-dual/tclip'\]"):
        gap_markdown("Figure 1", {"thermal_gap": gap}, TABLE, "note")
    gap["per_row"]["tclip-dual/tclip"] = {"mean": 0.25, "std": None}
    header, body = _markdown_rows(gap_markdown("Figure 1", {"thermal_gap": gap}, TABLE, "note"))
    assert body[:2] == [["Global LoRA", "0.5000", "0.1000"], ["T-CLIP (Dual)", "0.2500", ""]]


def test_lambda_table_refuses_a_dual_row_without_its_sweep():
    with pytest.raises(AssemblyError, match=r"lambda_sweep has no entry for benchmark row\(s\) \['tclip-dual/tclip'\]"):
        lambda_markdown("Figure 7", {"lambda_sweep": {}}, TABLE, "note")

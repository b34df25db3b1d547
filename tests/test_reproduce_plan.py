"""The reproduction plan at paper scale: which runs each table needs, their identities, shards and errors.

Shard folders hold empty files with the converter's names: planning reads names and sizes only.
"""
import json
import shlex

import pytest

from open_clip_thermal.reproduce import cli
from open_clip_thermal.reproduce.plan import (PlanError, build_plan, config_hash, find_shards, load_experiments,
                                              shard_of)

SEEDS = (0, 42, 123)
# Trained rows per experiment (each x 3 seeds); T-CLIP rows reuse the Global / F-G LoRA runs.
EXPECTED_RUNS = {
    "1": 4 * 3,  # CLIP-Adapter, DeCLIP, Global LoRA, F-G LoRA
    "2": 4 * 3, "3": 4 * 3,
    "4": 3 * 3,  # Global, F-G, Mixed 50:50
    "5": 4 * 3,  # Global, F-G, F-G from Global, Global from F-G
    "6": 6 * 3,  # Global and F-G on both towers, on the vision tower, on the text tower
    "7": 4 * 3,  # CLIP-Adapter, DeCLIP, Global, F-G
    "8": 2 * 2 * 3,  # Global and F-G, trained on KAIST and on KAIST + FLIR
    "fig1": 2 * 3, "fig4": 2 * 3, "fig7": 2 * 3,
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    folders = {}
    for name, (train, test) in {"kaist": (32, 4), "flir": (8, 2), "fmb": (4, 1)}.items():
        folder = base / name
        folder.mkdir()
        for split, count in (("train", train), ("test", test)):
            for index in range(count):
                (folder / f"{name}-{split}-{index:06d}.tar").write_bytes(b"x" * (index + 1))
        folders[name] = str(folder)
    return folders


def _data_args(roots):
    return [arg for name, root in roots.items() for arg in ("--data", f"{name}={root}")]


def test_every_experiment_is_defined_with_known_rows():
    definitions = load_experiments()
    assert set(definitions["experiments"]) == set(EXPECTED_RUNS)


@pytest.mark.parametrize("experiment", list(EXPECTED_RUNS))
def test_dry_run_lists_every_run_of_the_experiment(experiment, roots, tmp_path, capsys):
    assert cli.main(["--experiment", experiment, *_data_args(roots), "--out", str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in printed if "open_clip_thermal.train" in line]
    assert len(commands) == EXPECTED_RUNS[experiment]
    assert sorted(int(c[c.index("--seed") + 1]) for c in commands) == sorted(SEEDS * (len(commands) // 3))
    for command in commands:  # paper scale: ViT-B/16 bases with OpenAI weights and the paper's recipe
        assert command[command.index("--pretrained") + 1] == "openai"
        assert command[command.index("--preset") + 1] == "paper"
        assert command[command.index("--resume") + 1] == "latest"
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_table_1_plan_names_every_row_of_the_paper(roots, tmp_path, capsys):
    assert cli.main(["--experiment", "1", *_data_args(roots), "--out", str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    commands = [shlex.split(line) for line in printed.splitlines() if "open_clip_thermal.train" in line]
    kinds = sorted({(c[c.index("--method") + 1], c[c.index("--branch") + 1], c[c.index("--model") + 1]) for c in commands})
    assert kinds == [("clip-adapter", "global", "ViT-B-16"), ("declip", "global", "ViT-B-16"),
                     ("lora", "fine_grained", "tclip-fg"), ("lora", "global", "tclip-global")]
    declip = next(c for c in commands if "declip" in c)
    assert declip[declip.index("--lr") + 1] == "1e-5"  # full fine-tuning needs the smaller rate
    benchmark = shlex.split(next(line for line in printed.splitlines() if "open_clip_thermal.benchmark" in line))
    variants = [benchmark[i + 1] for i, arg in enumerate(benchmark) if arg == "--variant"]
    assert [v.split("=")[0] for v in variants] == ["clip-adapter/clip-adapter", "declip/declip",
                                                   "lora-global/lora-global", "lora-fg/lora-fg", "tclip/tclip"]
    # T-CLIP (Global / F-G / Dual) pairs the Global and F-G runs of each seed; zero-shot rows stay on.
    assert variants[-1].startswith("tclip/tclip=tclip-dual:") and variants[-1].count("+") == 3
    assert "--no-zeroshot" not in benchmark
    assert benchmark[benchmark.index("--base-pretrained") + 1] == "openai"
    assert benchmark[benchmark.index("--data") + 1].endswith("kaist-test-{000000..000003}.tar")


def test_runs_are_shared_between_tables_and_a_changed_setting_is_a_new_run(roots, tmp_path):
    data = dict(roots)
    one = build_plan(["1"], data, tmp_path)
    both = build_plan(["1", "4", "fig1"], data, tmp_path)
    assert {r.name for r in one.runs} <= {r.name for r in both.runs}
    assert len(both.runs) == 12 + 3  # Table 4 adds only Mixed 50:50; Figure 1 adds nothing
    changed = build_plan(["1"], data, tmp_path, extra_args=["--batch-size", "64"])
    assert not {r.key for r in one.runs} & {r.key for r in changed.runs}
    assert {r.key for r in build_plan(["1"], data, tmp_path).runs} == {r.key for r in one.runs}  # stable
    other_base = build_plan(["1"], data, tmp_path, base="laion2b_s34b_b88k")
    assert not {r.key for r in one.runs} & {r.key for r in other_base.runs}


def test_a_changed_training_shard_changes_the_identity(roots, tmp_path):
    before = {r.name: r.key for r in build_plan(["4"], dict(roots), tmp_path).runs}
    shard = tmp_path / "kaist"
    shard.mkdir()
    for path in sorted(__import__("pathlib").Path(roots["kaist"]).iterdir()):
        (shard / path.name).write_bytes(path.read_bytes() + (b"y" if path.name == "kaist-train-000007.tar" else b""))
    after = build_plan(["4"], {**roots, "kaist": str(shard)}, tmp_path).runs
    assert not set(before.values()) & {r.key for r in after}


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_cross_initialised_runs_follow_their_source(roots, tmp_path):
    plan = build_plan(["5"], dict(roots), tmp_path)
    by_name = plan.by_name()
    order = [r.name for r in plan.runs]
    for run in plan.runs:
        if run.depends_on:
            source = by_name[run.depends_on]
            assert order.index(source.name) < order.index(run.name)
            assert run.argv[run.argv.index("--init-from") + 1] == str(source.weights(tmp_path))
            assert run.config["init_from"] == source.key and run.seed == source.seed
    assert sum(1 for r in plan.runs if r.depends_on) == 6


@pytest.mark.parametrize("count", [1, 2, 3, 5, 40])
def test_shards_partition_the_plan_and_keep_chains_together(roots, tmp_path, count):
    plan = build_plan(["5", "6"], dict(roots), tmp_path)
    shares = [shard_of(plan, i, count) for i in range(1, count + 1)]
    names = [r.name for share in shares for r in share]
    assert sorted(names) == sorted(r.name for r in plan.runs) and len(names) == len(set(names))
    for share in shares:
        mine = {r.name for r in share}
        assert all(r.depends_on in mine for r in share if r.depends_on)


def test_kaist_test_split_and_shard_patterns(roots):
    shards = find_shards("kaist", roots["kaist"])
    assert shards.train.endswith("kaist-train-{000000..000031}.tar")
    assert shards.test.endswith("kaist-test-{000000..000003}.tar")
    single = find_shards("fmb", roots["fmb"])
    assert single.test.endswith("fmb-test-000000.tar")


def test_combined_training_set_joins_the_shard_lists(roots, tmp_path):
    plan = build_plan(["8"], dict(roots), tmp_path)
    combined = [r for r in plan.runs if r.train_set == ("kaist", "flir")]
    assert len(combined) == 6
    data = combined[0].argv[combined[0].argv.index("--train-data") + 1]
    assert data.split("::")[0].endswith("kaist-train-{000000..000031}.tar")
    assert data.split("::")[1].endswith("flir-train-{000000..000007}.tar")
    # '+' separates a T-CLIP pair's folders in the benchmark's --variant syntax: never in a run path
    assert all("+" not in r.name and r.name.startswith("kaist_flir-") for r in combined)


@pytest.mark.parametrize("folder", ["repro+v2", "a,b"])
def test_an_out_folder_the_benchmark_cannot_name_is_refused(folder, roots, tmp_path, capsys):
    assert cli.main(["--experiment", "1", "--data", f"kaist={roots['kaist']}", "--out", str(tmp_path / folder),
                     "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --out {tmp_path / folder}: a path with ',' or '+'") and len(error.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--experiment", "9"], "unknown --experiment ['9']"),
    (["--experiment", "2"], "need --data for flir"),
    (["--experiment", "1", "--data", "kaist=/no/such/folder"], "--data kaist=/no/such/folder: no such folder"),
    (["--experiment", "1", "--data", "kaist={empty}"], "no PREFIX-train-NNNNNN.tar or PREFIX-test-NNNNNN.tar"),
    (["--experiment", "1", "--data", "kaist={roots[kaist]}", "--assemble-only"], "have not finished"),
    (["--experiment", "1", "--data", "kaist={roots[kaist]}", "--seeds", "0", "0"], "a seed is given twice"),
])
def test_bad_input_is_one_line_with_exit_2(args, message, roots, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(empty=empty, roots=roots) for a in args]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and error.startswith("error: ")


@pytest.mark.parametrize("argv", [["--shard", "0/4"], ["--shard", "3"], ["--data", "kaist"]])
def test_malformed_flags_are_refused_by_the_parser(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.build_parser().parse_args(["--experiment", "1", "--out", str(tmp_path), *argv])
    assert exit.value.code == 2


def test_plan_file_and_status_after_a_dry_run_of_a_finished_run(roots, tmp_path, capsys):
    plan = build_plan(["fig7"], dict(roots), tmp_path)
    finished = plan.runs[0]
    finished.weights(tmp_path).mkdir(parents=True)
    (finished.folder(tmp_path) / "reproduce.json").write_text(json.dumps({"key": finished.key}))
    stale = plan.runs[1]
    stale.weights(tmp_path).mkdir(parents=True)
    (stale.folder(tmp_path) / "reproduce.json").write_text(json.dumps({"key": "another configuration"}))
    assert cli.main(["--experiment", "fig7", "--data", f"kaist={roots['kaist']}", "--out", str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "(1 finished, 5 to train)" in printed
    assert f"# {finished.name}: " in printed and "[finished]" in printed.split(finished.name)[1].splitlines()[0]
    assert "[to train]" in printed.split(stale.name)[1].splitlines()[0]


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--experiment", "--data", "--out", "--base", "--seeds", "--scale", "--train-args", "--launcher",
                 "--dry-run", "--shard", "--assemble-only", "--no-plots"):
        assert flag in text
    flat = " ".join(text.split())  # argparse wraps the help
    assert "6 = LoRA towers" in flat and "default: 0 42 123" in flat


def test_launcher_puts_the_module_flags_after_a_separator(roots, tmp_path, capsys):
    assert cli.main(["--experiment", "fig1", "--data", f"kaist={roots['kaist']}", "--out", str(tmp_path), "--dry-run",
                     "--launcher", "torchrun --nproc_per_node 8"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "open_clip_thermal.train" in l)
    assert line.startswith("torchrun --nproc_per_node 8 -m open_clip_thermal.train -- --method lora")

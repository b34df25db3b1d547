"""Dress rehearsal of the paper-scale path: ViT-B-16, ``--pretrained openai``, KAIST / FLIR / FMB layouts.

Everything runs as a user runs it — the documented commands as subprocesses — except the world:
OpenCLIP's registry entry for ViT-B-16/openai points at a random-weight checkpoint on a 127.0.0.1
server (fetched and SHA-256-checked by OpenCLIP's own download code), the data sets are tiny fake
trees with the releases' file naming, and the VLM is a loopback chat-completions server. Images are
tiny and batches 2, so the whole file takes a couple of minutes on two cores.

The training commands are read from docs/training.md (the "paper scale (not run here)" lines), so
the test and the docs cannot drift; only the sizes (batch, steps, precision, workers) are overridden.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file

from server_helpers import FileServer
from rehearsal_helpers import (ARCH, URL_ENV, make_fmb_tree, make_flir_tree, make_kaist_tree,
                               openai_checkpoint, sitecustomize_dir)

REPO = Path(__file__).resolve().parents[1]
PAPER_MODEL = "Qwen/Qwen2.5-VL-72B-Instruct"

# KAIST: two training videos (every frame is train) and two test videos of 45 frames each, one by
# day (set06) and one by night (set09): test-all-20 keeps I00019 and I00039 of each.
KAIST_VIDEOS = {"set00/V000": range(0, 6), "set03/V001": range(0, 6), "set06/V000": range(45), "set09/V002": range(45)}
KAIST_TEST = {f"kaist_{v.replace('/', '_')}_I{i:05d}" for v in ("set06/V000", "set09/V002") for i in (19, 39)}
FLIR_TRAIN, FLIR_TEST = [2, 3, 5, 8, 13, 21], [34, 55, 89]
FMB_COUNTS = {"train": 5, "test": 3}
# Sizes for two CPU cores; every other flag is the documented one.
SMALL = ["--batch-size", "2", "--max-steps", "2", "--warmup", "1", "--precision", "fp32", "--workers", "1"]


def paper_scale_commands(doc: Path):
    """Commands under '# paper scale (not run here)' in the bash blocks of ``doc``, continuation lines joined."""
    commands, active = [], False
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                active = "paper scale" in stripped
            elif active and stripped:
                commands.append(stripped)
    return commands


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoint server, child-process environment and the three fake data set trees."""
    root = tmp_path_factory.mktemp("rehearsal")
    served = root / "served"
    checkpoint, digest = openai_checkpoint(served)
    with FileServer(served) as server:
        url = f"{server.url}/{checkpoint.relative_to(served).as_posix()}"
        assert digest in url and "openaipublic" in url  # OpenCLIP verifies the digest of such URLs
        env = dict(os.environ, HOME=str(root / "home"), HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
                   PYTHONPATH=os.pathsep.join([str(sitecustomize_dir(root / "site")), str(REPO / "tests"),
                                               os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        env[URL_ENV] = url
        make_kaist_tree(root / "kaist", KAIST_VIDEOS)
        make_flir_tree(root / "flir", FLIR_TRAIN, FLIR_TEST)
        make_fmb_tree(root / "fmb", FMB_COUNTS)
        yield {"root": root, "env": env, "server": server, "url": url, "checkpoint_path": "/" + url.split("/", 3)[3]}


def run(world, argv, name):
    """Run one command in the rehearsal's working folder; its output goes to ``logs/NAME.log``."""
    logs = world["root"] / "logs"
    logs.mkdir(exist_ok=True)
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=world["root"], env=world["env"], capture_output=True, text=True, timeout=600)
    (logs / f"{name}.log").write_text(proc.stdout + proc.stderr + f"\n[{time.monotonic() - start:.1f} s]\n")
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "QuickGELU mismatch" not in proc.stdout + proc.stderr, f"{name} built a GELU base under OpenAI weights"
    return proc


@pytest.fixture(scope="module")
def shards(world):
    """list_pairs -> IR-Cap captions from a loopback VLM -> shards, for the three data sets (docs/ircap.md)."""
    from open_clip_thermal.testing.mock_vlm import MockChatServer
    counts = {}
    with MockChatServer() as vlm:
        for dataset in ("kaist", "flir", "fmb"):
            data_root = str(world["root"] / dataset)
            proc = run(world, [sys.executable, str(REPO / "tools/list_pairs.py"), "--dataset", dataset,
                               "--root", data_root, "--output", f"{dataset}_pairs.jsonl"], f"list_{dataset}")
            counts[dataset] = {r["split"]: 0 for r in _jsonl(world["root"] / f"{dataset}_pairs.jsonl")}
            for record in _jsonl(world["root"] / f"{dataset}_pairs.jsonl"):
                counts[dataset][record["split"]] += 1
            counts[dataset]["stderr"] = proc.stderr
            run(world, [sys.executable, "-m", "open_clip_thermal.ircap", "caption", "--pairs", f"{dataset}_pairs.jsonl",
                        "--rgb-root", data_root, "--server-url", vlm.url, "--model", PAPER_MODEL,
                        "--out", f"{dataset}_captions.jsonl"], f"ircap_{dataset}")
            run(world, [sys.executable, "-m", "open_clip_thermal.convert", "--annotations", f"{dataset}_captions.jsonl",
                        "--image-root", data_root, "--output-dir", f"shards/{dataset}", "--prefix", dataset,
                        "--min-shards", "2", "--no-progress"], f"convert_{dataset}")
    return counts


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _shard_pattern(world, dataset, split):
    found = sorted((world["root"] / "shards" / dataset).glob(f"{dataset}-{split}-*.tar"))
    assert found, f"no {dataset}-{split}-*.tar"
    return f"shards/{dataset}/{dataset}-{split}-{{000000..{len(found) - 1:06d}}}.tar"


def test_paper_splits_and_shard_names(world, shards):
    assert shards["kaist"]["train"] == 12 and shards["kaist"]["test"] == 4 and shards["kaist"]["all-test"] == 90
    assert "test: 4" in shards["kaist"]["stderr"]
    test_ids = {r["id"] for r in _jsonl(world["root"] / "kaist_pairs.jsonl") if r["split"] == "test"}
    assert test_ids == KAIST_TEST
    assert {k: v for k, v in shards["flir"].items() if k != "stderr"} == {"train": 6, "test": 3}
    assert {k: v for k, v in shards["fmb"].items() if k != "stderr"} == FMB_COUNTS
    for dataset, split, n in (("kaist", "test", 4), ("flir", "test", 3), ("fmb", "test", 3), ("flir", "train", 6)):
        sizes = json.loads((world["root"] / "shards" / dataset / "sizes.json").read_text())
        names = [k for k in sizes if re.fullmatch(rf"{dataset}-{split}-\d{{6}}\.tar", k)]
        assert names and sum(sizes[k] for k in names) == n, (dataset, split, sizes)
    assert not list((world["root"] / "shards" / "flir").glob("flir-val-*"))
    captions = _jsonl(world["root"] / "kaist_captions.jsonl")
    assert all(r["global_caption"].startswith("infrared thermal") and r["fg_caption"] for r in captions)


def test_create_model_and_transforms_tclip_dual_openai_is_quick_gelu(world, monkeypatch):
    """In-process, as the README shows it; OpenCLIP downloads through its own code (cached after the first)."""
    import open_clip
    import open_clip.pretrained as oc_pretrained
    import open_clip_thermal  # noqa: F401
    from open_clip_thermal.base_model import uses_quick_gelu
    entry = dict(oc_pretrained._PRETRAINED[ARCH]["openai"], url=world["url"], hf_hub="")
    monkeypatch.setitem(oc_pretrained._PRETRAINED[ARCH], "openai", entry)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # OpenCLIP's "QuickGELU mismatch" warning would fail here
        model, _, preprocess = open_clip.create_model_and_transforms(
            "tclip-dual", pretrained="openai", cache_dir=str(world["root"] / "home" / ".cache" / "clip"))
    assert uses_quick_gelu(model) and model.provenance.base_pretrained == "openai"
    assert preprocess.transforms[0].size == 224
    assert world["server"].requests[world["checkpoint_path"]] >= 1


@pytest.fixture(scope="module")
def runs(world, shards):
    """The three documented paper-scale trainings (global, fine-grained, both), two steps each."""
    commands = paper_scale_commands(REPO / "docs" / "training.md")
    wanted = {"g_s0": "global", "f_s0": "fine_grained", "dual_s0": "both"}
    chosen = {}
    for command in commands:
        argv = shlex.split(command)
        if argv[:3] == ["python", "-m", "open_clip_thermal.train"] and argv[argv.index("--name") + 1] in wanted:
            chosen[argv[argv.index("--name") + 1]] = argv
    assert sorted(chosen) == sorted(wanted), f"docs/training.md lost a paper-scale command: {sorted(chosen)}"
    train = _shard_pattern(world, "kaist", "train")
    for name, argv in chosen.items():
        assert argv[argv.index("--pretrained") + 1] == "openai" and "--preset" in argv
        argv = [sys.executable if a == "python" else train if a == "$TRAIN" else a for a in argv]
        run(world, argv + SMALL, f"train_{name}")
    return {name: world["root"] / "runs" / name / "adapters" for name in chosen}


def test_training_runs_on_quick_gelu_and_records_it(world, runs):
    for name, branches in (("g_s0", ["global"]), ("f_s0", ["fine_grained"]), ("dual_s0", ["global", "fine_grained"])):
        config = json.loads((runs[name] / "adapter_config.json").read_text())
        assert config["activation"] == "quick_gelu", name
        assert config["base_model"] == ARCH and config["base_pretrained"] == "openai"
        assert config["branches"] == branches
        assert config["lora"] == {"rank": 8, "alpha": 1.0, "dropout": 0.0, "targets": ["q", "k", "v"],
                                  "towers": "both", "last_k_blocks": None}
        for branch in branches:  # the paper's 737,280 trainable parameters per branch
            weights = load_file(str(runs[name] / branch / "adapter_model.safetensors"))
            assert sum(t.numel() for k, t in weights.items() if "lora_" in k) == 737_280, (name, branch)
    # OpenCLIP's download code ran once; every later process found the verified file in its cache
    assert world["server"].requests[world["checkpoint_path"]] == 1


def test_benchmark_with_zero_shot_rows(world, runs):
    test = _shard_pattern(world, "kaist", "test")
    g, f, dual = (str(runs[n].relative_to(world["root"])) for n in ("g_s0", "f_s0", "dual_s0"))
    run(world, [sys.executable, "-m", "open_clip_thermal.benchmark", "--data", test,
                "--base-model", ARCH, "--base-pretrained", "openai",
                "--variant", f"lora-global=tclip-global:{g}", "--variant", f"lora-fg=tclip-fg:{f}",
                "--variant", f"tclip=tclip-dual:{g}+{f}", "--variant", f"tclip-dual/both=tclip-dual:{dual}",
                "--out", "results/kaist"], "benchmark")
    out = world["root"] / "results" / "kaist"
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["n_samples"] == 4
    assert results["config"]["caption_match"] == "pair" and results["config"]["protocol"] == "paired item only"
    assert [r["label"] for r in results["rows"]] == [
        "zeroshot (global)", "zeroshot (fine-grained)", "lora-global", "lora-fg",
        "tclip-global", "tclip-fg", "tclip-dual", "tclip-dual/both"]
    activations = {v["name"]: v["activation"] for v in results["config"]["variants"]}
    assert activations == {"zeroshot": ["quick_gelu"], "lora-global": ["quick_gelu"], "lora-fg": ["quick_gelu"],
                           "tclip-global": ["quick_gelu"], "tclip-fg": ["quick_gelu"], "tclip-dual": ["quick_gelu"],
                           "tclip-dual/both": ["quick_gelu"]}
    assert results["chance"]["image_to_text"]["1"]["mean"] == pytest.approx(1 / 4)
    md = (out / "results.md").read_text()
    assert "Hits: paired item only" in md and "| *chance* |" in md

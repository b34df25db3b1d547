"""CLIP_benchmark integration: the export's layout and pixels, and CLIP_benchmark's recalls == ours.

CLIP_benchmark's retrieval recall (clip_benchmark/metrics/zeroshot_retrieval.py): for each query, the
``torch.topk`` of its scores (K <= gallery size), a hit when the paired item is among them; the mean
over queries in float32. Its positives are the paired items only, which is our default
``--caption-match pair``. The two agree exactly when no score ties the paired item's (``topk`` breaks
ties in no documented order, we by gallery index), so the test checks that there are none, and compares
hit counts (recall x N, an integer) rather than floats (CLIP_benchmark's mean is float32, ours float64),
at every K from 1 to N: the whole distribution of the paired items' ranks, not only R@1/5/10.
"""
import importlib.util
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from open_clip_thermal.benchmark import main as benchmark_main
from open_clip_thermal.clip_benchmark import main
from open_clip_thermal.clip_benchmark.passthrough import prepare_argv
from open_clip_thermal.contracts import FINE_GRAINED, GLOBAL
from open_clip_thermal.data.decode import decode_with, thermal_to_pil
from open_clip_thermal.evaluation.shard_reader import iter_image_batches, read_sample_index

from model_helpers import randomise_lora

HAVE_CLIP_BENCHMARK = importlib.util.find_spec("clip_benchmark") is not None
needs_clip_benchmark = pytest.mark.skipif(
    not HAVE_CLIP_BENCHMARK, reason="clip_benchmark is not installed (pip install -e '.[eval]' or '.[dev]')")

N_SAMPLES = 12  # >= the largest K: CLIP_benchmark's topk needs K <= gallery size
KS = tuple(range(1, N_SAMPLES + 1))  # every K: the whole distribution of the paired items' ranks


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _frame(i, rng):
    """A scene of its own per sample: a warm block whose place and size depend on ``i``, on noise."""
    frame = rng.normal(0.0, 0.05, (40, 48)) + np.linspace(0.0, 0.3 * (i % 4), 48)[None, :]
    top, left, size = 3 * (i % 5), 4 * (i % 7), 8 + 2 * (i % 3)
    frame[top:top + size, left:left + size] += 1.0
    return frame


def write_shards(folder, count=N_SAMPLES):
    """Two shards: even samples 16-bit PNGs with raw counts in the thousands, odd ones 8-bit; distinct captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(folder / "test-test-%06d.tar"), maxcount=count // 2, verbose=0) as sink:
        for i in range(count):
            frame = _frame(i, rng)
            if i % 2 == 0:  # a typical 16-bit LWIR frame: ~300 counts of scene span around 3000
                frame = np.clip(2900 + 250 * frame, 0, 65535).astype(np.uint16)
            else:
                frame = np.clip(40 + 150 * frame, 0, 255).astype(np.uint8)
            sink.write({"__key__": f"s{i:04d}", "png": _png(frame),
                        "txt": f"infrared thermal image of scene {i}",
                        "fg.txt": f"infrared thermal image of scene {i}: a person at {20 + i} degrees",
                        "json": json.dumps({"id": f"s{i}", "split": "test", "kind": ["car", "person", "dog"][i % 3],
                                            "scene": f"scene {i:02d}"})})
    return sorted(str(p) for p in folder.glob("*.tar"))


def make_adapters(name, folder, seed=5):
    """Adapters of ``name`` on the random base the benchmark and CLIP_benchmark both build (seed 0)."""
    import open_clip_thermal
    torch.manual_seed(0)
    model = open_clip_thermal.create_model(name, pretrained=None)
    randomise_lora(model, seed=seed)
    open_clip_thermal.save_adapters(model.eval(), folder)
    return str(folder)


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


def test_export_layout_and_pixels(shards, tmp_path):
    out = tmp_path / "wds" / "tiny_fg"
    assert main(["export", "--data", *shards, "--out", str(out), "--caption", FINE_GRAINED, "--maxcount", "5",
                 "--no-progress"]) == 0
    assert (out / "dataset_type.txt").read_text().strip() == "retrieval"
    assert (out / "test" / "nshards.txt").read_text().strip() == "3"  # 12 samples, 5 a shard
    exported = {}
    for i in range(3):
        exported.update(_members(out / "test" / f"{i}.tar"))
    raw = {}
    for path in shards:
        raw.update(_members(path))
    assert len(exported) == 2 * N_SAMPLES
    for i in range(N_SAMPLES):
        key = f"s{i:04d}"
        assert exported[f"{key}.txt"].decode() == raw[f"{key}.fg.txt"].decode()
        png = Image.open(io.BytesIO(exported[f"{key}.png"]))
        assert png.mode == "RGB"  # 8 bits a channel
        # exactly the benchmark's decoding (percentile stretch of the 16-bit frames), not all white
        expected = np.asarray(thermal_to_pil(decode_with(raw[f"{key}.png"], "png")))
        assert np.array_equal(np.asarray(png), expected)
        assert expected.min() < 50 and expected.max() > 200
    # a second export into the same folder is refused unless --overwrite
    assert main(["export", "--data", *shards, "--out", str(out), "--no-progress"]) == 2
    assert main(["export", "--data", *shards, "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert _members(out / "test" / "0.tar")["s0000.txt"].decode() == "infrared thermal image of scene 0"


def test_export_classification(shards, tmp_path, capsys):
    out = tmp_path / "wds" / "tiny_cls"
    assert main(["export", "--data", *shards, "--out", str(out), "--task", "classification",
                 "--label-field", "kind", "--no-progress"]) == 0
    assert (out / "classnames.txt").read_text().splitlines() == ["car", "dog", "person"]
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates and all(t.count("{c}") == 1 and "{}" not in t for t in templates)
    members = _members(out / "test" / "0.tar")
    assert [members[f"s{i:04d}.cls"].decode() for i in range(3)] == ["0", "2", "1"]  # car, person, dog
    assert main(["export", "--data", *shards, "--out", str(tmp_path / "x"), "--task", "classification",
                 "--label-field", "colour", "--no-progress"]) == 2
    assert "no usable --label-field 'colour'" in capsys.readouterr().err


def test_bad_arguments(shards, tmp_path, capsys):
    assert main(["export", "--data", *shards, "--out", str(tmp_path / "y"), "--label-field", "kind"]) == 2
    assert "only applies to --task classification" in capsys.readouterr().err
    assert main(["export", "--data", str(tmp_path / "missing.tar"), "--out", str(tmp_path / "y")]) == 2
    assert "do not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass --output"):
        prepare_argv(["eval", "--model", "tclip-tiny-global", "--pretrained", str(tmp_path)], cuda_available=False)


def test_precision_defaults():
    base = ["eval", "--model", "m", "--output", "o.json"]
    assert prepare_argv(base, cuda_available=False) == base + ["--no_amp"]  # fp32 on a CPU
    assert prepare_argv(base + ["--amp"], cuda_available=False) == base  # CLIP_benchmark's autocast kept
    assert prepare_argv(base, cuda_available=True) == base  # CUDA: CLIP_benchmark's default, unchanged
    assert prepare_argv(["build", "a.json"], cuda_available=False) == ["build", "a.json"]


def test_eval_without_clip_benchmark_says_how_to_install(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "clip_benchmark" else real_find_spec(name, *a))
    assert main(["eval", "--model", "tclip-tiny-global", "--output", "x.json"]) == 2
    err = capsys.readouterr().err
    assert "clip_benchmark is not installed" in err and "open_clip_thermal[eval]" in err


def test_help_imports_no_torch():
    code = ("import sys\nfrom open_clip_thermal.clip_benchmark import main\n"
            "assert main(['--help']) == 0\n"
            "try:\n    main(['export', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "eval" in done.stdout and "--label-field" in done.stdout


def _no_ties(scores: np.ndarray) -> bool:
    """No query scores another item exactly like its paired one (then topk and a stable sort agree)."""
    paired = np.diag(scores)
    return all(np.sum(row == paired[i]) == 1 for i, row in enumerate(scores))


CASES = [
    # (model, caption exported, benchmark variant kind whose row uses that caption in every branch)
    ("tclip-tiny-global", GLOBAL, "lora-global"),
    ("tclip-tiny-dual", GLOBAL, "tclip-global"),
    ("tclip-tiny-dual", FINE_GRAINED, "tclip-fg"),
]


@needs_clip_benchmark
@pytest.mark.parametrize("model_name,caption,kind", CASES)
def test_clip_benchmark_recalls_equal_ours(shards, tmp_path, model_name, caption, kind):
    adapters = make_adapters(model_name, tmp_path / "adapters")
    name = f"tiny_{caption}"
    assert main(["export", "--data", *shards, "--out", str(tmp_path / "wds" / name), "--caption", caption,
                 "--no-progress"]) == 0
    output = tmp_path / "clip_benchmark.json"
    status = main(["eval", "--model", model_name, "--pretrained", adapters, "--dataset", f"wds/{name}",
                   "--dataset_root", str(tmp_path / "wds" / "{dataset}"), "--task", "zeroshot_retrieval",
                   "--recall_k", *map(str, KS), "--batch_size", "5", "--num_workers", "0",
                   "--output", str(output), "--quiet"])
    assert status == 0
    theirs = json.loads(output.read_text())["metrics"]

    out = tmp_path / "ours"
    assert benchmark_main(["--data", *shards, "--out", str(out), "--no-zeroshot", "--variant",
                           f"{kind}={model_name}:{adapters}", "--recall-k", ",".join(map(str, KS)),
                           "--no-plots", "--group-field", "", "--batch-size", "5", "--no-cache"]) == 0
    results = json.loads((out / "results.json").read_text())
    (row,) = [r for r in results["rows"] if r["label"] == kind]
    ours = row["clip_benchmark"]
    assert results["config"]["caption_match"] == "pair"

    # The scores both sides rank, from the model CLIP_benchmark loads: no ties, so the rules agree.
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=adapters)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    index = read_sample_index(shards)
    with torch.no_grad():
        image = torch.cat([model.encode_image(b, normalize=True) for _, b in iter_image_batches(shards, preprocess, 5)])
        text = model.encode_text(tokenizer(index.captions[caption]), normalize=True)
    assert _no_ties((text @ image.T).numpy()) and _no_ties((image @ text.T).numpy())

    assert set(theirs) == set(ours) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in KS}
    hits = {key: (round(theirs[key] * N_SAMPLES), round(ours[key] * N_SAMPLES)) for key in ours}
    for key, (their_hits, our_hits) in hits.items():
        assert their_hits == our_hits, (key, theirs[key], ours[key])
        assert ours[key] == their_hits / N_SAMPLES
    # not a trivial agreement: some recalls are neither 0 nor 1
    assert any(0 < h < N_SAMPLES for h, _ in hits.values())


@needs_clip_benchmark
@pytest.mark.parametrize("model_name", ["tclip-tiny-global", "tclip-tiny-dual"])
def test_clip_benchmark_classification_equals_our_classifier(shards, tmp_path, model_name):
    """Classification export scored by CLIP_benchmark == our zero-shot classifier on the same frames.

    One class per scene (12 classes, one template): with 3 coarse classes a random tiny model predicts
    one class for every image, and any two classifiers would agree; here it predicts several.
    """
    from open_clip_thermal.classify import classify
    adapters = make_adapters(model_name, tmp_path / "adapters")
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["infrared thermal image of {}"]))
    assert main(["export", "--data", *shards, "--out", str(tmp_path / "wds" / "cls"), "--task", "classification",
                 "--label-field", "scene", "--templates", str(templates), "--no-progress"]) == 0
    output = tmp_path / "clip_benchmark.json"
    assert main(["eval", "--model", model_name, "--pretrained", adapters, "--dataset", "wds/cls",
                 "--dataset_root", str(tmp_path / "wds" / "{dataset}"), "--task", "zeroshot_classification",
                 "--batch_size", "5", "--num_workers", "0", "--output", str(output), "--quiet"]) == 0
    theirs = json.loads(output.read_text())["metrics"]
    # the same raw frames as an ImageFolder tree (ROOT/<class>/<key>.png) for our classifier
    tree = tmp_path / "tree"
    for path in shards:
        members = _members(path)
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[:-len(".json")]
                folder = tree / json.loads(data)["scene"]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{key}.png").write_bytes(members[f"{key}.png"])
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=adapters).eval()
    ours = classify(model, str(tree), templates=str(templates), progress=False, batch_size=5)
    assert ours["classnames"] == [f"scene {i:02d}" for i in range(N_SAMPLES)] and ours["n_samples"] == N_SAMPLES
    for metric in ("acc1", "acc5"):
        assert round(theirs[metric] * N_SAMPLES) == round(ours[metric] * N_SAMPLES), metric
    assert theirs["mean_per_class_recall"] == pytest.approx(ours["mean_per_class_recall"], abs=1e-12)
    predicted = np.asarray(ours["confusion_matrix"]).sum(axis=0)
    assert (predicted > 0).sum() >= 2  # not a constant classifier (two such would agree whatever the pixels)

"""Text-to-thermal search: top-k against brute force, resumable and incremental indexing, model identity,
training-exact decoding of 16-bit frames, the HTML contact sheet and the CLI's errors (tiny models, CPU)."""
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from open_clip_thermal.contracts import FINE_GRAINED, GLOBAL
from open_clip_thermal.search import ModelMismatchError, ThermalIndex, collect_sources, exact_top_k
from open_clip_thermal.search.backends import load_faiss
from open_clip_thermal.search.cli import build_parser, main
from open_clip_thermal.search.embedder import load_embedder
from open_clip_thermal.search.loading import FileImages
from open_clip_thermal.search.sources import scan_folder, shard_sample_id

from data_helpers import write_tar

DUAL = "tclip-tiny-dual"


def unit(rows, dim, seed):
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(stored16, live, queries, k):
    """float32 inner products of the stored float16 values; ties to the lower row (stable sort)."""
    scores = queries.astype(np.float32) @ stored16.astype(np.float32).T
    scores[:, ~live] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


# ----------------------------------------------------------------------------- search against brute force
def test_exact_search_equals_brute_force_with_replaced_rows_and_ties():
    vectors = unit(600, 32, 0)
    vectors[11] = vectors[501]  # exact duplicates: the tie goes to the lower row
    index = ThermalIndex(dim=32)
    index.add_embeddings(vectors, [f"v{i}" for i in range(600)])
    index.add_embeddings(unit(20, 32, 1), [f"v{i}" for i in range(0, 40, 2)])  # 20 replaced: old rows dead
    queries = np.concatenate([unit(15, 32, 2), vectors[[11, 77, 5]]])
    scores, rows, backend = index.search(queries, k=12, backend="exact")
    expected = brute_force(index.matrix, index.live_mask, queries, 12)
    assert backend == "exact" and len(index) == 600 and index.matrix.shape == (620, 32)
    assert np.array_equal(rows, expected)
    assert not set(range(0, 40, 2)) & set(rows.ravel().tolist())  # replaced rows are never returned
    assert rows[15][0] == 11 and rows[15][1] == 501  # the duplicate pair, lower row first
    # the reported similarities are the float32 inner products of the stored values
    assert np.allclose(scores, np.take_along_axis(queries @ index.matrix.astype(np.float32).T, rows, 1), atol=1e-6)


def test_exact_top_k_caps_k_at_live_rows():
    stored = unit(5, 8, 3).astype(np.float16)
    live = np.array([True, False, True, False, True])
    scores, rows = exact_top_k(stored, unit(2, 8, 4), 10, live)
    assert rows.shape == (2, 3) and set(rows[0]) == {0, 2, 4}


@pytest.mark.skipif(load_faiss() is None, reason="faiss not installed (the 'search' extra)")
def test_faiss_search_equals_brute_force_when_every_cell_is_probed_and_follows_updates(tmp_path):
    vectors = unit(3000, 48, 5)
    queries = unit(20, 48, 6)
    index = ThermalIndex(dim=48, exact_below=0)  # faiss from the first row on
    index.add_embeddings(vectors, [f"v{i}" for i in range(3000)])
    assert index.backend_for("auto") == "faiss"
    search = index.faiss_index()
    scores, rows, backend = index.search(queries, k=10, nprobe=search.nlist)
    assert backend == "faiss" and np.array_equal(rows, brute_force(index.matrix, index.live_mask, queries, 10))
    # default nprobe: approximate, still k live rows, best first
    scores, rows, _ = index.search(queries, k=10)
    assert (rows >= 0).all() and (np.diff(scores, axis=1) <= 1e-6).all()
    # an added row is found, a replaced one is gone (the faiss index is updated, not rebuilt)
    index.add_embeddings(queries[:1], ["v7"])
    _, rows, _ = index.search(queries[:1], k=3, nprobe=search.nlist)
    assert rows[0][0] == 3000 and 7 not in rows[0] and index.faiss_index() is search


@pytest.mark.skipif(load_faiss() is None, reason="faiss not installed (the 'search' extra)")
def test_faiss_index_is_saved_with_the_folder_and_reused(tmp_path, tiny_images):
    index = ThermalIndex.open(tmp_path / "idx", DUAL, exact_below=0)
    index.add(tiny_images, progress=False)
    assert index.prepare() == "faiss" and (tmp_path / "idx" / "faiss.index").is_file()
    again = ThermalIndex.load(tmp_path / "idx", exact_below=0)
    search = again.faiss_index()
    assert search.size == len(index) == len(scan_folder(tiny_images))
    probe = index.matrix[:3].astype(np.float32)
    assert np.array_equal(again.search(probe, 4, nprobe=search.nlist)[1], index.search(probe, 4, backend="exact")[1])


def test_without_faiss_a_large_index_is_searched_exactly_and_says_so_once(monkeypatch, capsys):
    from open_clip_thermal.search import backends, index as index_module
    monkeypatch.setattr(index_module, "load_faiss", lambda: None)
    monkeypatch.setattr(backends, "_fallback_reported", False)
    index = ThermalIndex(dim=16, exact_below=10)
    index.add_embeddings(unit(50, 16, 7), [f"v{i}" for i in range(50)])
    queries = unit(3, 16, 8)
    for _ in range(3):
        _, rows, backend = index.search(queries, k=5)
        assert backend == "exact" and np.array_equal(rows, brute_force(index.matrix, index.live_mask, queries, 5))
    err = capsys.readouterr().err
    assert err.count("faiss is not installed") == 1 and "open_clip_thermal[search]" in err


# ----------------------------------------------------------------------------- fixtures: tiny images and model
@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """12 synthetic 16-bit thermal frames (64 px) in a nested folder."""
    from open_clip_thermal.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("search_world")
    generate_dataset(root / "world", num_train=0, num_val=0, num_test=12, size=64, seed=0, bit_depth=16,
                     progress=False)
    return root / "world" / "thermal"


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(DUAL)


def copy_images(source: Path, target: Path, count: int = None) -> Path:
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*.png"))[:count]:
        shutil.copy2(path, target / path.name)
    return target


class Counting:
    """Wraps ``embedder.embed_images``: counts calls and images, raises after ``fail_after`` calls."""

    def __init__(self, embedder, fail_after=None):
        self.embedder, self.real, self.fail_after = embedder, embedder.embed_images, fail_after
        self.calls = self.images = 0
        embedder.embed_images = self

    def __call__(self, images):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.images += len(images)
        return self.real(images)

    def restore(self):
        self.embedder.embed_images = self.real


# ----------------------------------------------------------------------------- resumable, incremental
def test_interrupted_build_resumes_without_re_embedding_committed_files(tmp_path, tiny_images, embedder):
    folder = copy_images(tiny_images, tmp_path / "images")
    counter = Counting(embedder, fail_after=3)
    try:
        index = ThermalIndex.open(tmp_path / "idx", embedder)
        with pytest.raises(KeyboardInterrupt):
            index.add(folder, batch_size=2, commit_every=4, progress=False)
        assert counter.images == 6  # the 4th batch was interrupted
        # reopened from disk: the 4 images of the first commit plus the 2 embedded before the interruption
        resumed = ThermalIndex.open(tmp_path / "idx", embedder)
        assert len(resumed) == 6
        counter.fail_after, counter.calls, counter.images = None, 0, 0
        report = resumed.add(folder, batch_size=2, commit_every=4, progress=False)
    finally:
        counter.restore()
    assert (report.embedded, report.skipped, counter.images, counter.calls) == (6, 6, 6, 3)
    assert sorted(resumed.paths) == sorted(str(p.resolve()) for p in folder.glob("*.png"))  # each stored once
    assert len(resumed) == 12 and resumed.live_mask.all()


def test_incremental_add_skips_unchanged_and_embeds_new_and_changed(tmp_path, tiny_images, embedder):
    folder = copy_images(tiny_images, tmp_path / "images", count=8)
    index = ThermalIndex.open(tmp_path / "idx", embedder)
    assert index.add(folder, progress=False).embedded == 8
    first = sorted(folder.glob("*.png"))
    changed, removed = first[0], first[1]
    before = index.record_of(str(changed.resolve()))
    changed.write_bytes((tiny_images / "test" / "synthetic_test_000011.png").read_bytes())
    os.utime(changed, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    shutil.copy2(tiny_images / "test" / "synthetic_test_000010.png", folder / "new.png")
    removed.unlink()
    counter = Counting(embedder)
    try:
        report = ThermalIndex.open(tmp_path / "idx", embedder).add(folder, progress=False, prune=True)
    finally:
        counter.restore()
    assert (report.embedded, report.skipped, report.removed, counter.images) == (2, 6, 1, 2)
    reopened = ThermalIndex.open(tmp_path / "idx", embedder)
    assert len(reopened) == 8 and reopened.record_of(str(removed.resolve())) is None
    record = reopened.record_of(str(changed.resolve()))
    assert record["mtime_ns"] == before["mtime_ns"] + 10**9
    fresh = embedder.embed_files([changed])[0]
    stored = reopened.matrix[reopened.row_of(str(changed.resolve()))].astype(np.float32)
    assert np.abs(stored - fresh).max() < 2e-3  # float16 storage of the new content's embedding
    # save() compacts: the dead rows (old version, removed file) disappear, the live ones stay
    reopened.save()
    compact = ThermalIndex.open(tmp_path / "idx", embedder)
    assert compact.matrix.shape[0] == 8 and sorted(compact.paths) == sorted(reopened.ids())


def test_python_api_add_query_save_load_round_trip(tmp_path, tiny_images):
    from open_clip_thermal import create_model
    torch.manual_seed(0)
    index = ThermalIndex.from_model(create_model(DUAL), model_name=DUAL)
    report = index.add(tiny_images, progress=False)
    assert report.embedded == 12 and len(index) == 12
    example = sorted(tiny_images.rglob("*.png"))[5]
    before = index.query(["a warm car"], [example], k=3)
    assert [r.kind for r in before] == ["text", "image"] and before[1].hits[0].path == str(example.resolve())
    index.save(tmp_path / "saved")
    loaded = ThermalIndex.load(tmp_path / "saved", index.embedder)
    after = loaded.query(["a warm car"], [example], k=3)
    assert [[(h.path, round(h.similarity, 6)) for h in r.hits] for r in after] == \
        [[(h.path, round(h.similarity, 6)) for h in r.hits] for r in before]
    assert loaded.identity["spec"] is None and loaded.identity["model_name"] == DUAL


def test_a_different_model_or_fusion_is_refused(tmp_path, tiny_images, embedder):
    folder = copy_images(tiny_images, tmp_path / "images", count=2)
    ThermalIndex.open(tmp_path / "idx", embedder).add(folder, progress=False)
    with pytest.raises(ModelMismatchError, match="weights_sha256"):
        ThermalIndex.open(tmp_path / "idx", "thermal-vit-tiny")
    with pytest.raises(ModelMismatchError, match="lam"):
        ThermalIndex.open(tmp_path / "idx", load_embedder(DUAL, lam=0.2))
    status = main(["index", "--index", str(tmp_path / "idx"), "--folder", str(folder), "--model", "thermal-vit-tiny"])
    assert status == 2


def test_shards_are_indexed_with_captions_and_a_read_shard_is_not_opened_again(tmp_path, tiny_images, embedder):
    frames = sorted(tiny_images.rglob("*.png"))[:5]
    samples = [{"__key__": f"s{i:03d}", "png": p.read_bytes(), "txt": f"scene {i}".encode(),
                "fg.txt": f"warm object {i}".encode(), "json": json.dumps({"id": i}).encode()}
               for i, p in enumerate(frames)]
    shard = write_tar(tmp_path / "test-000000.tar", samples)
    index = ThermalIndex.open(tmp_path / "idx", embedder)
    report = index.add(collect_sources(shards=[str(shard)]), batch_size=2, progress=False)
    assert report.embedded == 5 and len(index) == 5
    record = index.record_of(shard_sample_id(str(shard.resolve()), "s003"))
    assert record["captions"] == {GLOBAL: "scene 3", FINE_GRAINED: "warm object 3"} and record["meta"] == {"id": 3}
    counter = Counting(embedder)
    try:
        again = ThermalIndex.open(tmp_path / "idx", embedder).add(collect_sources(shards=[str(shard)]), progress=False)
    finally:
        counter.restore()
    assert (again.embedded, again.skipped, counter.calls) == (0, 5, 0)


def test_worker_processes_give_the_same_index_as_decoding_in_process(tmp_path, tiny_images, embedder):
    folder = copy_images(tiny_images, tmp_path / "images", count=6)
    frames = sorted(folder.glob("*.png"))
    shards = [str(write_tar(tmp_path / f"w-{n:06d}.tar", [{"__key__": f"k{i}", "png": p.read_bytes()}
                                                          for i, p in enumerate(frames[n::2])])) for n in range(2)]
    sources = collect_sources(folders=[folder], shards=["::".join(shards)])
    alone, pooled = ThermalIndex(embedder), ThermalIndex(embedder)
    assert alone.add(sources, batch_size=2, workers=0, progress=False).embedded == 12
    assert pooled.add(sources, batch_size=2, workers=2, progress=False).embedded == 12
    assert sorted(alone.ids()) == sorted(pooled.ids())
    for path in alone.ids():
        assert np.array_equal(alone.matrix[alone.row_of(path)], pooled.matrix[pooled.row_of(path)])


# ----------------------------------------------------------------------------- decoding as in training
def test_16bit_png_decodes_as_in_training(tmp_path, tiny_images, embedder):
    from open_clip_thermal.data.loader import make_thermal_dataset

    frames = sorted(tiny_images.rglob("*.png"))[:3]
    with Image.open(frames[0]) as image:
        assert image.mode.startswith("I") and np.asarray(image).max() > 255  # really 16-bit
    shard = write_tar(tmp_path / "t-000000.tar", [{"__key__": f"k{i}", "png": p.read_bytes(), "txt": b"x"}
                                                 for i, p in enumerate(frames)])
    training = make_thermal_dataset(str(shard), embedder.preprocess, embedder.tokenizer, is_train=False)
    trained_on = torch.stack([item[0] for item in training])
    files = FileImages(scan_folder(copy_images(tiny_images, tmp_path / "f", count=3)), embedder.preprocess, embedder.norm)
    assert torch.equal(torch.stack([files[i][1] for i in range(3)]), trained_on)  # the same pixels
    index = ThermalIndex(embedder)
    index.add(collect_sources(shards=[str(shard)]), progress=False)
    stored = np.stack([index.matrix[index.row_of(shard_sample_id(str(shard.resolve()), f"k{i}"))] for i in range(3)])
    assert np.abs(stored.astype(np.float32) - embedder.embed_images(trained_on)).max() < 2e-3


# ----------------------------------------------------------------------------- the command line
class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.anchors = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.anchors.append(attrs["href"])


@pytest.fixture(scope="module")
def cli_index(tiny_images, tmp_path_factory):
    """The documented sequence: index a synthetic thermal folder with the tiny dual model."""
    out = tmp_path_factory.mktemp("cli")
    assert main(["index", "--index", str(out / "idx"), "--folder", str(tiny_images), "--model", DUAL,
                 "--workers", "0", "--no-progress"]) == 0
    return out


def test_cli_query_prints_table_and_writes_json_and_html_whose_links_exist(cli_index, tiny_images, capsys):
    example = sorted(tiny_images.rglob("*.png"))[3]
    html_path = cli_index / "sheet" / "results.html"
    status = main(["query", "--index", str(cli_index / "idx"), "--text", "a pedestrian at night",
                   "--image", str(example), "--top-k", "4", "--json", str(cli_index / "r.json"),
                   "--html", str(html_path)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "query 1/2 (text): 'a pedestrian at night'" in printed and "similarity" in printed
    results = json.loads((cli_index / "r.json").read_text())
    assert [q["kind"] for q in results["queries"]] == ["text", "image"]
    assert all(len(q["hits"]) == 4 for q in results["queries"])
    assert results["queries"][1]["hits"][0]["path"] == str(example.resolve())  # the example finds itself
    links = Links()
    links.feed(html_path.read_text(encoding="utf-8"))
    assert len(links.images) == 4 + 4 + 1 and len(links.anchors) == len(links.images)
    for target in links.images + links.anchors:
        assert not target.startswith(("/", "file:", "data:")) and (html_path.parent / unquote(target)).is_file()
    assert main(["query", "--index", str(cli_index / "idx"), "--text", "a car", "--html", str(html_path),
                 "--embed-thumbnails"]) == 0
    links = Links()
    links.feed(html_path.read_text(encoding="utf-8"))
    assert links.images and all(src.startswith("data:image/png;base64,") for src in links.images)


def test_cli_index_again_skips_everything(cli_index, tiny_images, capsys):
    assert main(["index", "--index", str(cli_index / "idx"), "--folder", str(tiny_images), "--no-progress"]) == 0
    assert "embedded 0, skipped 12 unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["index", "--index", "IDX2", "--folder", "/nonexistent/folder", "--model", DUAL], "/nonexistent/folder"),
    (["index", "--index", "IDX2", "--folder", "EMPTY", "--model", DUAL], "no images"),
    (["index", "--index", "IDX2", "--folder", "IMAGES"], "give --model"),
    (["index", "--index", "IDX2", "--folder", "IMAGES", "--model", DUAL, "--batch-size", "0"], "--batch-size"),
    (["index", "--index", "NOTINDEX", "--folder", "IMAGES", "--model", DUAL], "neither a search index"),
    (["query", "--index", "IDX", "--text", "a car", "--top-k", "0"], "--top-k"),
    (["query", "--index", "IDX"], "--text"),
    (["query", "--index", "EMPTY", "--text", "a car"], "not a search index"),
    (["query", "--index", "IDX", "--image", "/nonexistent.png"], "/nonexistent.png"),
])
def test_cli_bad_input_is_one_line_exit_2(cli_index, tiny_images, tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notindex").mkdir()
    (tmp_path / "notindex" / "x.txt").write_text("x")
    names = {"IDX": cli_index / "idx", "IDX2": tmp_path / "idx2", "EMPTY": tmp_path / "empty",
             "IMAGES": tiny_images, "NOTINDEX": tmp_path / "notindex"}
    assert main([str(names.get(a, a)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "idx2" / "index.json").exists()


def test_help_explains_every_option_and_imports_no_torch():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings} has no help"
        text = sub.format_help()
        assert all(flag in text for action in sub._actions for flag in action.option_strings)
    code = ("import sys, runpy; sys.argv = ['x', 'index', '--help']\n"
            "try:\n    runpy.run_module('open_clip_thermal.search', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'CLEAN', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().endswith("CLEAN") and "--commit-every" in done.stdout


def test_cli_says_on_the_console_that_the_model_is_untrained(tmp_path, tiny_images, capsys):
    """The log goes to the index folder; a random-weights model's warning must reach the console too."""
    folder = copy_images(tiny_images, tmp_path / "images", count=2)
    assert main(["index", "--index", str(tmp_path / "idx"), "--folder", str(folder), "--model", "thermal-vit-tiny",
                 "--workers", "0", "--no-progress"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "built with random weights" in line]
    assert len(said) == 1 and said[0].startswith("warning: base model 'thermal-vit-tiny'")

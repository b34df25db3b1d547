"""End to end: tiny shards written per docs/contracts.md, tiny random T-CLIP adapters, the CLI."""
import importlib.util
import io
import json
import os
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from open_clip_thermal.benchmark import main
from open_clip_thermal.evaluation.variants import parse_variant

HAVE_MODEL = importlib.util.find_spec("open_clip_thermal.adapters") is not None
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="open_clip_thermal model/adapters module not available")

N_SAMPLES = 12


def write_shards(folder, with_fg=True, count=N_SAMPLES, repeat_fg=False, ungrouped=0):
    """Two shards of 64x64 8-bit thermal PNGs; global captions repeat for samples 10 and 11 (and their
    fine-grained captions too with ``repeat_fg``); the first ``ungrouped`` samples have no time_of_day."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(folder / "test-test-%06d.tar"), maxcount=count // 2 + 1, verbose=0) as sink:
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, format="PNG")
            caption = "infrared thermal image of a hot car" if i >= 10 else f"infrared thermal image of scene {i}"
            sample = {"__key__": f"s{i:04d}", "png": buffer.getvalue(), "txt": caption,
                      "json": json.dumps({"id": f"s{i}", "split": "test",
                                          **({} if i < ungrouped else {"time_of_day": "day" if i % 2 else "night"})})}
            if with_fg:
                sample["fg.txt"] = caption + f", with a warm engine block number {0 if repeat_fg and i >= 10 else i % 5}"
            sink.write(sample)
    return sorted(str(p) for p in folder.glob("*.tar"))


def make_adapter(name, folder, seed):
    """A tiny T-CLIP on a (seeded) random base with random, non-zero LoRA weights, saved as adapters."""
    import open_clip_thermal
    from open_clip_thermal.adapters import save_adapters
    torch.manual_seed(0)  # the same random base the benchmark builds for a 'none' base
    model = open_clip_thermal.create_model(name, pretrained=None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_" in param_name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    save_adapters(model, folder)
    return str(folder)


def test_variant_parsing():
    specs = parse_variant("tclip/r8=tclip-dual:g0+f0,g1+f1")
    assert [s.name for s in specs] == ["tclip-global/r8", "tclip-fg/r8", "tclip-dual/r8"]
    assert specs[2].seeds == (("g0", "f0"), ("g1", "f1"))
    (full,) = parse_variant("full=ViT-B-16:none")
    assert full.seeds == ((None,),) and full.model == "ViT-B-16"


@pytest.mark.parametrize("spec,message", [
    ("lora-global", "expected KIND"),
    ("lora-globl=tclip-global:x", "unknown kind 'lora-globl'"),
    ("lora-global=tclip-global:a+b", "only apply to tclip"),
    ("lora-global=:x", "no model name"),
    ("clip-adapter=clip-adapter-b16:ckpt.pt", "unknown model 'clip-adapter-b16'"),
    ("full=thermal-vit-tiny:missing/epoch_3.pt", "weights 'missing/epoch_3.pt' do not exist"),
    ("lora-global=thermal-vit-tiny:none,none", "variant lora-global: the seeds repeat none; each seed must be its own run"),
    ("tclip=tclip-tiny-dual:g+f,g2+f,g+f", "variant tclip-global: the seeds repeat g+f;"),
])
def test_bad_variant_specs(spec, message, tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", count=4)
    assert main(["--data", *urls, "--out", str(tmp_path / "out"), "--no-zeroshot", "--variant", spec]) == 2
    assert message in capsys.readouterr().err


def test_bad_shards_give_clear_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    zeroshot = ["--base-model", "thermal-vit-tiny", "--base-pretrained", "none"]
    assert main(["--data", str(tmp_path / "missing-{000000..000001}.tar"), "--out", out, *zeroshot]) == 2
    assert "2 of 2 shards do not exist" in capsys.readouterr().err
    assert main(["--data", "::", "--out", out, *zeroshot]) == 2
    assert "shard list is empty" in capsys.readouterr().err
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file" * 50)
    assert main(["--data", str(broken), "--out", out, *zeroshot]) == 2
    assert "cannot read shard" in capsys.readouterr().err
    no_fg = write_shards(tmp_path / "no_fg", with_fg=False, count=4)
    assert main(["--data", *no_fg, "--out", out, *zeroshot]) == 2
    err = capsys.readouterr().err
    assert "needs fine_grained captions" in err and "4 of 4 samples" in err


def test_zeroshot_end_to_end_with_cache(tmp_path):
    urls = write_shards(tmp_path / "shards")
    out = tmp_path / "out"
    argv = ["--data", *urls, "--out", str(out), "--base-model", "thermal-vit-tiny", "--base-pretrained", "none",
            "--batch-size", "5", "--no-plots"]
    with pytest.warns(UserWarning, match="capping K to 12"):
        assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["ks"] == [1, 5, 10, 12]
    assert [r["label"] for r in results["rows"]] == ["zeroshot (global)", "zeroshot (fine-grained)"]
    for row in results["rows"]:
        assert row["recall"]["image_to_text"]["12"]["mean"] == 1.0
        assert row["clip_benchmark"]["image_retrieval_recall@1"] == row["recall"]["text_to_image"]["1"]["mean"]
        assert row["clip_benchmark"]["text_retrieval_recall@5"] == row["recall"]["image_to_text"]["5"]["mean"]
    assert set(results["geometry"]["zeroshot"]["branches"]["model"]) == {"day", "night"}
    cached = sorted(p.name for p in (out / "embedding_cache").glob("*.npy"))
    assert len(cached) == 3  # image, global text, fine-grained text
    # A second run reads the cache: same files, same numbers.
    with pytest.warns(UserWarning):
        assert main(argv) == 0
    assert sorted(p.name for p in (out / "embedding_cache").glob("*.npy")) == cached
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    assert "| zeroshot (global) |" in (out / "results.md").read_text()
    # Rewritten shards are new data: the cache must not be reused.
    for path in urls:
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10 ** 9))
    with pytest.warns(UserWarning):
        assert main(argv) == 0
    assert len(list((out / "embedding_cache").glob("*.npy"))) == 6


def test_one_hit_rule_for_every_row_with_chance_beside_it(tmp_path):
    urls = write_shards(tmp_path / "shards", repeat_fg=True)
    base = ["--data", *urls, "--base-model", "thermal-vit-tiny", "--base-pretrained", "none", "--recall-k", "1,5",
            "--no-plots", "--group-field", ""]
    assert main(base + ["--out", str(tmp_path / "pair")]) == 0  # the default: the paper's protocol
    pair = json.loads((tmp_path / "pair" / "results.json").read_text())
    assert pair["config"]["caption_match"] == "pair" and pair["config"]["protocol"] == "paired item only"
    assert pair["chance"]["image_to_text"]["1"]["mean"] == pytest.approx(1 / 12)
    assert pair["chance"]["text_to_image"]["5"]["mean"] == pytest.approx(5 / 12)
    md = (tmp_path / "pair" / "results.md").read_text()
    assert "Hits: paired item only (`--caption-match pair`)" in md and "| *chance* | 8.33 | 41.67 | 8.33 | 41.67 |" in md
    assert main(base + ["--out", str(tmp_path / "caption"), "--caption-match", "caption"]) == 0
    grouped = json.loads((tmp_path / "caption" / "results.json").read_text())
    assert grouped["config"]["caption_match"] == "caption"
    # samples 10 and 11 share both captions: their queries have two positives, the other ten one
    assert grouped["chance"]["image_to_text"]["1"]["mean"] == pytest.approx((10 * 1 / 12 + 2 * 2 / 12) / 12)
    for p_row, g_row in zip(pair["rows"], grouped["rows"]):  # grouping can only add hits, in every row alike
        for d in ("image_to_text", "text_to_image"):
            assert all(g_row["recall"][d][k]["mean"] >= p_row["recall"][d][k]["mean"] for k in ("1", "5"))


@needs_model
def test_adapter_for_another_base_is_refused(tmp_path, capsys):
    urls = write_shards(tmp_path / "shards", count=4)
    adapter = make_adapter("tclip-tiny-global", tmp_path / "g0", seed=1)
    code = main(["--data", *urls, "--out", str(tmp_path / "out"), "--no-zeroshot",
                 "--variant", f"lora-global=tclip-global:{adapter}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "variant lora-global: cannot load model 'tclip-global'" in err and "thermal-vit-tiny" in err


@needs_model
def test_tclip_variants_end_to_end(tmp_path):
    urls = write_shards(tmp_path / "shards")
    g = [make_adapter("tclip-tiny-global", tmp_path / f"g{s}", seed=s) for s in (1, 2)]
    f = [make_adapter("tclip-tiny-fg", tmp_path / f"f{s}", seed=10 + s) for s in (1, 2)]
    dual = make_adapter("tclip-tiny-dual", tmp_path / "dual", seed=7)
    out = tmp_path / "out"
    argv = ["--data", *urls, "--out", str(out), "--base-model", "thermal-vit-tiny", "--base-pretrained", "none",
            "--recall-k", "1,5", "--lambdas", "0:1:0.25", "--batch-size", "6",
            "--variant", f"lora-global=tclip-tiny-global:{g[0]},{g[1]}",
            "--variant", f"lora-fg=tclip-tiny-fg:{f[0]},{f[1]}",
            "--variant", f"tclip=tclip-tiny-dual:{g[0]}+{f[0]},{g[1]}+{f[1]}",
            "--variant", f"tclip-dual/folder=tclip-tiny-dual:{dual}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in results["rows"]]
    assert labels == ["zeroshot (global)", "zeroshot (fine-grained)", "lora-global", "lora-fg",
                      "tclip-global", "tclip-fg", "tclip-dual", "tclip-dual/folder"]
    by_label = {r["label"]: r for r in results["rows"]}
    assert by_label["lora-global"]["n_seeds"] == 2 and by_label["lora-global"]["recall"]["image_to_text"]["1"]["std"] is not None
    assert by_label["zeroshot (global)"]["recall"]["image_to_text"]["1"]["std"] is None
    assert results["vs_global_lora"]["reference"] == "lora-global"
    assert all(v == 0.0 for d in ("image_to_text", "text_to_image")
               for v in results["vs_global_lora"]["gains"]["lora-global"][d].values())
    sweep = results["lambda_sweep"]["tclip-dual"]
    assert sweep["lambdas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert sweep["feature"]["best_lambda"] in sweep["lambdas"]
    # lambda = 1 in feature mode is the global branch alone, lambda = 0 the fine-grained branch alone.
    assert [m["label"] for m in results["fusion_modes"]] == ["tclip-global", "tclip-fg", "tclip-dual", "tclip-dual/folder"]
    # The paper's family by default: zero-shot vs Global LoRA vs T-CLIP (Dual), three comparisons.
    assert [(t["model_a"], t["model_b"]) for t in results["thermal_gap"]["tests"]] == [
        ("zeroshot (global)", "lora-global"), ("zeroshot (global)", "tclip-dual"), ("lora-global", "tclip-dual")]
    assert results["thermal_gap"]["family"] == "paper"
    assert list(results["geometry"]) == ["zeroshot", "lora-global", "lora-fg", "tclip-global, tclip-fg, tclip-dual",
                                         "tclip-dual/folder"]
    shared = results["geometry"]["tclip-global, tclip-fg, tclip-dual"]
    assert 0.0 < shared["branch_angle_deg"]["mean"] < 180.0
    # The dual model's global branch from folder g_s is the lora-global model of the same seed.
    for group, cell in results["geometry"]["lora-global"]["branches"]["model"].items():
        assert shared["branches"]["global"][group]["mean_cosine"] == pytest.approx(cell["mean_cosine"], abs=1e-6)
    assert (out / "lambda_sweep_tclip-dual.png").stat().st_size > 0
    assert (out / "thermal_gap.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "vs. Global LoRA (tclip-dual/folder)" in md and "## λ sweep: tclip-dual" in md
    # A second run reads every embedding from the disk cache (new tensors per read): same geometry entries.
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["geometry"] == results["geometry"]


def test_part_of_a_split_is_warned_and_recorded(tmp_path):
    """The converter's sizes.json lists every shard of a split; naming only some of them is loud."""
    urls = write_shards(tmp_path / "shards")
    names = [os.path.basename(u) for u in urls]
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps({names[0]: 7, names[1]: 5, "test-train-000000.tar": 9}))
    base = ["--base-model", "thermal-vit-tiny", "--base-pretrained", "none", "--recall-k", "1", "--no-plots",
            "--group-field", ""]
    with pytest.warns(UserWarning, match=r"leaves out 1 shard\(s\) of .*test-test-\* listed in its sizes.json"):
        assert main(["--data", urls[0], "--out", str(tmp_path / "part"), *base]) == 0
    part = json.loads((tmp_path / "part" / "results.json").read_text())
    assert part["config"]["left_out_shards"] == {str(tmp_path / "shards" / "test-test"): [names[1]]}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*leaves out")
        assert main(["--data", *urls, "--out", str(tmp_path / "whole"), *base]) == 0  # another split is no concern
    assert json.loads((tmp_path / "whole" / "results.json").read_text())["config"]["left_out_shards"] == {}



def test_a_damaged_sizes_json_is_warned_not_skipped(tmp_path):
    from open_clip_thermal.evaluation.shard_reader import unlisted_shards
    urls = write_shards(tmp_path / "shards")
    assert unlisted_shards(urls[:1]) == {}  # no sizes.json: nothing to compare with, silently
    (tmp_path / "shards" / "sizes.json").write_text('{"test-test-000000.tar": 7, "test-te')  # cut short
    with pytest.warns(UserWarning, match=r"sizes.json cannot be read .*not checking whether --data names every"):
        assert unlisted_shards(urls[:1]) == {}


ZEROSHOT = ["--base-model", "thermal-vit-tiny", "--base-pretrained", "none", "--recall-k", "1", "--no-plots"]


def test_samples_without_the_group_field_are_counted_warned_and_recorded(tmp_path):
    urls = write_shards(tmp_path / "shards", ungrouped=3)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"3 of 12 samples have no metadata field 'time_of_day': the feature geometry"):
        assert main(["--data", *urls, "--out", str(out), *ZEROSHOT]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["group_field_missing"] == 3
    cells = results["geometry"]["zeroshot"]["branches"]["model"]
    assert {group: cell["count"] for group, cell in cells.items()} == {"day": 5, "night": 4}  # samples 3..11: odd ones are day
    assert "3 of 12 samples have no `time_of_day` and are left out of this section." in (out / "results.md").read_text()


def test_repeated_sample_keys_are_warned(tmp_path):
    urls = write_shards(tmp_path / "shards")
    copy = tmp_path / "shards" / "copy-test-000000.tar"  # the first shard converted twice, under two names
    copy.write_bytes(open(urls[0], "rb").read())
    with pytest.warns(UserWarning, match=r"7 sample key\(s\) occur more than once in the shards \(e.g. 's0000'\)"):
        assert main(["--data", *urls, str(copy), "--out", str(tmp_path / "out"), *ZEROSHOT, "--group-field", ""]) == 0


def test_nan_embeddings_stop_the_benchmark_naming_the_variant(tmp_path, monkeypatch, capsys):
    from open_clip_thermal.benchmark import runner
    build = runner.build_model

    def broken_weights(spec, seed):  # what a diverged run's weights do to every feature
        model = build(spec, seed)
        with torch.no_grad():
            model.visual.proj.fill_(float("nan"))
        return model

    monkeypatch.setattr(runner, "build_model", broken_weights)
    urls = write_shards(tmp_path / "shards", count=4)
    out = tmp_path / "out"
    assert main(["--data", *urls, "--out", str(out), *ZEROSHOT]) == 2
    err = capsys.readouterr().err
    assert "variant zeroshot (model 'thermal-vit-tiny', weights 'none'): the model produced NaN or infinite image " \
           "embeddings for 4 of 4 samples (first: 's0000')" in err
    assert not (out / "results.json").exists() and not list((out / "embedding_cache").glob("*.npy"))


def test_a_shard_yielding_fewer_images_than_indexed_is_an_error(tmp_path, monkeypatch, capsys):
    from open_clip_thermal.evaluation import encode
    read = encode.iter_image_batches

    def cut_after_indexing(*args, **kwargs):  # the last sample is gone by the time the images are read
        batches = list(read(*args, **kwargs))
        keys, images = batches[-1]
        return batches[:-1] + ([(keys[:-1], images[:-1])] if len(keys) > 1 else [])

    monkeypatch.setattr(encode, "iter_image_batches", cut_after_indexing)
    urls = write_shards(tmp_path / "shards")
    assert main(["--data", *urls, "--out", str(tmp_path / "out"), *ZEROSHOT, "--batch-size", "5"]) == 2
    err = capsys.readouterr().err
    assert "variant zeroshot (model 'thermal-vit-tiny', weights 'none'): 11 image embeddings for the 12 samples " \
           "indexed in the shards; did a shard change during the run?" in err

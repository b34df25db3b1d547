"""Streaming loader: remote shards, rank x worker coverage, caption modes, failures, sizing, stock compatibility."""
import argparse
import logging
from collections import Counter

import numpy as np
import pytest
import torch

from data_helpers import TO_TENSOR, make_numbered_set, png_bytes, write_jsonl, write_tar
from open_clip_thermal.convert import main as convert_main
from open_clip_thermal.data import sources
from open_clip_thermal.data.loader import make_thermal_dataloader, make_thermal_dataset, mixed_pick_is_fine_grained
from server_helpers import FileServer

SHARDS = "thermal-train-{000000..000007}.tar"


def _tokenize(text):
    codes = [ord(c) for c in text][:64]
    return torch.tensor([codes + [0] * (64 - len(codes))])


def _text(tokens):
    return "".join(chr(int(c)) for c in tokens if int(c))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """24 samples in 8 shards of 3 (image value = index)."""
    root = tmp_path_factory.mktemp("shards")
    records = make_numbered_set(root, 24)
    annotations = write_jsonl(root / "ann.jsonl", records)
    assert convert_main(["--annotations", str(annotations), "--image-root", str(root), "--output-dir",
                         str(root / "out"), "--min-shards", "8", "--no-progress"]) == 0
    return root / "out"


def _keys(dataset):
    return [meta["key"] for *_, meta in dataset]


@pytest.fixture
def http_root(shard_dir):
    with FileServer(shard_dir) as server:
        yield server.url


@pytest.mark.parametrize("opener", ["curl", "urllib"])
def test_shards_stream_over_http(http_root, opener, monkeypatch):
    if opener == "urllib":  # what happens on machines without curl
        monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    elif sources.shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    dataset = make_thermal_dataset(f"{http_root}/{SHARDS}", TO_TENSOR, _tokenize, is_train=False, with_meta=True)
    items = list(dataset)
    assert sorted(meta["key"] for *_, meta in items) == [f"img{i:04d}" for i in range(24)]
    for image, tokens, meta in items:
        index = int(meta["key"][3:])
        assert _text(tokens) == f"infrared thermal global {index}"
        assert torch.allclose(image, torch.full((3, 6, 6), index / 255.0))
    info = make_thermal_dataloader(f"{http_root}/{SHARDS}", TO_TENSOR, _tokenize, batch_size=4, num_workers=0)
    assert (info.num_samples, info.num_batches) == (24, 6)  # sizes.json read over http


def test_two_workers_times_two_ranks_see_each_sample_once(shard_dir):
    seen = Counter()
    for rank in range(2):
        dataset = make_thermal_dataset(str(shard_dir / SHARDS), TO_TENSOR, _tokenize, rank=rank, world_size=2,
                                       with_meta=True, seed=5, epoch=1, shuffle_buffer=10)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
        seen.update(meta["key"] for *_, meta in loader)
    assert seen == Counter({f"img{i:04d}": 1 for i in range(24)})


def test_local_file_url_pipe_and_joined_patterns_are_equivalent(shard_dir):
    expected = [f"img{i:04d}" for i in range(24)]
    half_a = str(shard_dir / "thermal-train-{000000..000003}.tar")
    half_b = str(shard_dir / "thermal-train-{000004..000007}.tar")
    for urls in (str(shard_dir / SHARDS), f"file://{shard_dir}/{SHARDS}", f"{half_a}::{half_b}",
                 [f"pipe:cat {shard_dir}/thermal-train-{i:06d}.tar" for i in range(8)]):
        dataset = make_thermal_dataset(urls, TO_TENSOR, _tokenize, is_train=False, with_meta=True)
        assert sorted(_keys(dataset)) == expected


def test_training_shuffle_is_seeded_and_changes_with_epoch(shard_dir):
    def order(seed, epoch):
        return _keys(make_thermal_dataset(str(shard_dir / SHARDS), TO_TENSOR, _tokenize, seed=seed, epoch=epoch,
                                          with_meta=True, shuffle_buffer=8))
    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 1)) == sorted(order(1, 0))


def test_caption_modes(shard_dir):
    urls = str(shard_dir / SHARDS)
    both = list(make_thermal_dataset(urls, TO_TENSOR, _tokenize, captions="both", is_train=False, with_meta=True))
    assert all(len(item) == 4 for item in both)
    for _, global_tokens, fg_tokens, meta in both:
        index = int(meta["key"][3:])
        assert (_text(global_tokens), _text(fg_tokens)) == (f"infrared thermal global {index}",
                                                            f"infrared thermal fine {index}")
    fine = {m["key"]: _text(t) for _, t, m in make_thermal_dataset(urls, TO_TENSOR, _tokenize, captions="fine_grained",
                                                                 is_train=False, with_meta=True)}
    assert fine["img0003"] == "infrared thermal fine 3"
    mixed = {m["key"]: _text(t) for _, t, m in make_thermal_dataset(urls, TO_TENSOR, _tokenize, captions="mixed",
                                                                  is_train=False, with_meta=True, seed=3)}
    picked_fine = {k for k, text in mixed.items() if "fine" in text}
    assert 0 < len(picked_fine) < 24  # both kinds occur
    assert picked_fine == {k for k in mixed if mixed_pick_is_fine_grained(3, 0, k)}


def test_fine_grained_needs_fg_txt_and_names_the_shard(tmp_path):
    shard = write_tar(tmp_path / "plain-000000.tar",
                      [{"__key__": "a", "png": png_bytes(np.zeros((4, 4), np.uint8)), "txt": b"infrared thermal"}])
    with pytest.raises(ValueError, match="plain-000000.tar"):
        list(make_thermal_dataset(str(shard), TO_TENSOR, _tokenize, captions="both", is_train=False))
    assert len(list(make_thermal_dataset(str(shard), TO_TENSOR, _tokenize, is_train=False))) == 1


def test_undecodable_sample_is_counted_logged_and_skipped(tmp_path, caplog):
    good = png_bytes(np.full((4, 4), 9, np.uint8))
    shard = write_tar(tmp_path / "mixed-000000.tar", [
        {"__key__": "good1", "png": good, "txt": b"infrared thermal one"},
        {"__key__": "broken", "png": b"\x89PNG not really", "txt": b"infrared thermal two"},
        {"__key__": "good2", "png": good, "txt": b"infrared thermal three"},
    ])
    dataset = make_thermal_dataset(str(shard), TO_TENSOR, _tokenize, is_train=False, with_meta=True)
    with caplog.at_level(logging.WARNING):
        assert _keys(dataset) == ["good1", "good2"]
    assert dataset.decode_failures.count == 1
    assert dataset.decode_failures.recent[0][0] == "broken"
    assert "broken" in caplog.text
    with pytest.raises(ValueError, match="'broken'"):
        list(make_thermal_dataset(str(shard), TO_TENSOR, _tokenize, is_train=False, strict=True))


def test_missing_shard_is_skipped_unless_strict(shard_dir):
    urls = [str(shard_dir / "thermal-train-000000.tar"), str(shard_dir / "no-such-shard.tar")]
    dataset = make_thermal_dataset(urls, TO_TENSOR, _tokenize, is_train=False)
    assert len(list(dataset)) == 3 and dataset.decode_failures.count == 1
    with pytest.raises(FileNotFoundError):
        list(make_thermal_dataset(urls, TO_TENSOR, _tokenize, is_train=False, strict=True))


def test_dataloader_sizes_batches_and_refuses_too_few_shards(shard_dir):
    urls = str(shard_dir / SHARDS)
    with pytest.raises(ValueError, match="8 shard\\(s\\) cannot feed 3 worker\\(s\\) x 3 rank\\(s\\)"):
        make_thermal_dataloader(urls, TO_TENSOR, _tokenize, batch_size=2, num_workers=3, rank=0, world_size=3)
    info = make_thermal_dataloader(urls, TO_TENSOR, _tokenize, batch_size=5, num_workers=2, rank=1, world_size=2,
                                   captions="both", with_meta=True)
    # 24 samples / (5 x 2 ranks) -> 3 batches, rounded up to a multiple of 2 workers
    assert (info.num_batches, info.num_samples) == (4, 40)
    info.set_epoch(3)
    batches = list(info.dataloader)
    assert len(batches) == 4
    images, global_tokens, fg_tokens, metas = batches[0]
    assert images.shape == (5, 3, 6, 6) and global_tokens.shape == (5, 64) and len(metas) == 5


def test_resampled_stream_draws_with_replacement(shard_dir):
    dataset = make_thermal_dataset(str(shard_dir / SHARDS), TO_TENSOR, _tokenize, resampled=True, with_meta=True,
                                   seed=2, rank=0, world_size=4).with_epoch(50)
    keys = _keys(dataset)
    assert len(keys) == 50 and set(keys) <= {f"img{i:04d}" for i in range(24)}
    assert max(Counter(keys).values()) > 1


def test_stock_open_clip_train_pipeline_reads_converted_shards(shard_dir):
    from open_clip_train.data import get_wds_dataset
    args = argparse.Namespace(train_data=str(shard_dir / SHARDS), train_num_samples=None, dataset_resampled=False,
                              train_data_upsampling_factors=None, seed=0, batch_size=4, workers=1, world_size=1,
                              val_data=None, val_num_samples=None)
    info = get_wds_dataset(args, TO_TENSOR, is_train=True, tokenizer=_tokenize)
    assert info.dataloader.num_samples == 24  # our sizes.json
    images, texts = next(iter(info.dataloader))
    assert images.shape == (4, 3, 6, 6) and _text(texts[0]).startswith("infrared thermal global ")

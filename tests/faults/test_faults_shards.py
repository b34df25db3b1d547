"""Shard-level faults: corrupt tar headers, shell-quoting in shard URLs, the same shard given twice.

Both readers are checked: the training loader (``open_clip_thermal.data.loader``) and the benchmark's
own shard reader (``open_clip_thermal.evaluation.shard_reader``).
"""
import logging
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from data_helpers import TO_TENSOR
from open_clip_thermal.evaluation import shard_reader as bench_shards
from open_clip_thermal.evaluation.errors import BenchmarkError
from open_clip_thermal.data.loader import make_thermal_dataloader, make_thermal_dataset
from open_clip_thermal.data.sources import expand_urls
from server_helpers import FileServer
from train_helpers import make_shards

PER_SHARD = 16


def _tokenize(text):
    codes = [ord(c) for c in text][:32]
    return torch.tensor([codes + [0] * (32 - len(codes))])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of 16 samples each (keys s000..s031)."""
    root = tmp_path_factory.mktemp("faults_shards")
    pattern = make_shards(root, count=2 * PER_SHARD, shards=2)
    return sorted(str(p) for p in Path(pattern).parent.glob("*.tar"))


def _corrupt_copy(source: str, target: Path) -> str:
    """Copy a shard and overwrite the header block of the first member of its 9th sample with garbage."""
    shutil.copyfile(source, target)
    with tarfile.open(target) as archive:
        members = archive.getmembers()
    stems = sorted({m.name.split(".", 1)[0] for m in members})
    assert len(stems) == PER_SHARD
    victim = next(m for m in members if m.name.split(".", 1)[0] == stems[PER_SHARD // 2])
    with open(target, "r+b") as f:
        f.seek(victim.offset)
        f.write(bytes((i * 37 + 11) % 251 + 1 for i in range(512)))
    return str(target)


def _keys(dataset):
    return [meta["key"] for *_, meta in dataset]


# ----------------------------------------------------------------------------- 1: corrupt tar header

def test_corrupt_tar_header_is_counted_and_logged_by_the_loader(shards, tmp_path, caplog):
    bad = _corrupt_copy(shards[0], tmp_path / "bad-000000.tar")
    dataset = make_thermal_dataset([bad, shards[1]], TO_TENSOR, _tokenize, is_train=False, with_meta=True)
    with caplog.at_level(logging.WARNING):
        keys = _keys(dataset)
    assert len(keys) == PER_SHARD + PER_SHARD // 2  # the good shard whole, the bad one up to the damage
    assert dataset.decode_failures.count == 1
    what, reason = dataset.decode_failures.recent[0]
    assert "bad-000000.tar" in what and "header" in reason
    assert "bad-000000.tar" in caplog.text and "header" in caplog.text


def test_corrupt_tar_header_is_fatal_in_strict_mode(shards, tmp_path):
    bad = _corrupt_copy(shards[0], tmp_path / "bad-000000.tar")
    with pytest.raises(Exception, match=r"bad-000000\.tar") as info:
        list(make_thermal_dataset([shards[1], bad], TO_TENSOR, _tokenize, is_train=False, strict=True))
    assert "header" in str(info.value)


def test_corrupt_tar_header_fails_the_benchmark_reader_naming_the_shard(shards, tmp_path):
    bad = _corrupt_copy(shards[0], tmp_path / "bad-000000.tar")
    urls = [shards[1], bad]
    with pytest.raises(BenchmarkError, match=r"bad-000000\.tar.*header"):
        bench_shards.read_sample_index(urls)
    with pytest.raises(BenchmarkError, match=r"bad-000000\.tar.*header"):
        list(bench_shards.iter_image_batches(urls, lambda image: torch.zeros(1), batch_size=4))
    assert len(bench_shards.read_sample_index(shards)) == 2 * PER_SHARD  # intact shards still read whole


def test_truncated_shard_is_an_error_not_a_short_shard(shards, tmp_path):
    """A shard cut at a member boundary (no end-of-archive blocks) loses samples silently otherwise."""
    with tarfile.open(shards[0]) as archive:
        members = archive.getmembers()
    cut = members[len(members) // 2].offset
    bad = tmp_path / "cut-000000.tar"
    bad.write_bytes(Path(shards[0]).read_bytes()[:cut])
    with pytest.raises(Exception, match=r"cut-000000\.tar"):
        list(make_thermal_dataset([str(bad)], TO_TENSOR, _tokenize, is_train=False, strict=True))
    with pytest.raises(BenchmarkError, match=r"cut-000000\.tar"):
        bench_shards.read_sample_index([str(bad)])


# ----------------------------------------------------------------------------- 2: no shell for http(s)

@pytest.fixture
def http_root(shards):
    with FileServer(Path(shards[0]).parent) as server:
        yield server.url


def _quoted_url(http_root: str) -> str:
    """The URL of the report: under webdataset's gopen it ran ``touch PWNED`` (in the working directory)."""
    return f"{http_root}/x';touch PWNED;'.tar"


def test_http_shards_stream_without_a_shell(shards, http_root):
    names = [os.path.basename(s) for s in shards]
    urls = [f"{http_root}/{name}" for name in names]
    dataset = make_thermal_dataset(urls, TO_TENSOR, _tokenize, is_train=False, with_meta=True)
    assert sorted(_keys(dataset)) == [f"s{i:03d}" for i in range(2 * PER_SHARD)]
    assert len(bench_shards.read_sample_index(urls)) == 2 * PER_SHARD
    info = make_thermal_dataloader(urls, TO_TENSOR, _tokenize, batch_size=4, num_workers=0, is_train=False)
    assert info.num_samples == 2 * PER_SHARD  # sizes.json read over http too


def test_quoted_http_url_runs_no_command_in_the_loader(http_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    url = _quoted_url(http_root)
    dataset = make_thermal_dataset([url], TO_TENSOR, _tokenize, is_train=False)
    assert list(dataset) == [] and dataset.decode_failures.count == 1
    assert "x';touch" in dataset.decode_failures.recent[0][0]
    with pytest.raises(Exception, match=r"touch"):
        list(make_thermal_dataset([url], TO_TENSOR, _tokenize, is_train=False, strict=True))
    assert not marker.exists()


def test_quoted_http_url_runs_no_command_in_the_benchmark(http_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    url = _quoted_url(http_root)
    with pytest.raises(BenchmarkError, match=r"cannot read shard .*touch"):
        bench_shards.read_sample_index([url])
    with pytest.raises(BenchmarkError, match=r"cannot read shard .*touch"):
        list(bench_shards.iter_image_batches([url], lambda image: torch.zeros(1), batch_size=4))
    assert not marker.exists()


# ----------------------------------------------------------------------------- 3: the same shard twice

def test_benchmark_refuses_a_shard_given_twice(shards):
    with pytest.raises(BenchmarkError, match=r"000000\.tar.*twice"):
        bench_shards.expand_urls(f"{shards[0]}::{shards[0]}")
    relative = os.path.relpath(shards[0])
    with pytest.raises(BenchmarkError, match=r"000000\.tar"):
        bench_shards.expand_urls([shards[0], relative])  # the same file under two spellings
    with pytest.raises(BenchmarkError, match=r"000001\.tar' is given twice"):  # a range covering a listed shard
        bench_shards.expand_urls(shards[0].replace("000000", "{000000..000001}") + "::" + shards[1])
    assert bench_shards.expand_urls(shards) == shards


def test_benchmark_cli_refuses_a_shard_given_twice(shards, tmp_path, capsys):
    from open_clip_thermal.benchmark import main
    code = main(["--data", f"{shards[0]}::{shards[0]}", "--out", str(tmp_path / "out"), "--base-model",
                 "thermal-vit-tiny", "--base-pretrained", "none", "--no-plots", "--no-cache"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "000000.tar" in err and "twice" in err


def test_training_loader_refuses_a_shard_given_twice(shards):
    with pytest.raises(ValueError, match=r"000000\.tar.*twice"):
        expand_urls([shards[0], shards[1], shards[0]])
    for resampled in (False, True):
        with pytest.raises(ValueError, match=r"000000\.tar.*twice"):
            make_thermal_dataset(f"{shards[0]}::{shards[0]}", TO_TENSOR, _tokenize, resampled=resampled)
    with pytest.raises(ValueError, match=r"000000\.tar.*twice"):
        make_thermal_dataloader([shards[0], shards[0]], TO_TENSOR, _tokenize, batch_size=4, num_workers=0)
    assert expand_urls(shards) == shards

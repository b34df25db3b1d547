"""Embedding cache: keys follow weights and data, round trips are exact."""
import os

import torch

from open_clip_thermal.evaluation.cache import EmbeddingCache, cache_key, hash_state_dict
from open_clip_thermal.evaluation.shard_reader import data_fingerprint


def test_weight_hash_changes_with_any_weight():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = hash_state_dict(model.state_dict())
    assert hash_state_dict(model.state_dict()) == before
    with torch.no_grad():
        model[1].bias[0] += 1e-6
    assert hash_state_dict(model.state_dict()) != before
    assert hash_state_dict({"w": torch.zeros(2, 3)}) != hash_state_dict({"w": torch.zeros(3, 2)})
    assert hash_state_dict({"w": torch.zeros(2, dtype=torch.bfloat16)}) != hash_state_dict({"w": torch.zeros(2)})


def test_data_fingerprint_follows_shard_content(tmp_path):
    shard = tmp_path / "a.tar"
    shard.write_bytes(b"x" * 10)
    first = cache_key(shards=data_fingerprint([str(shard)]))
    assert cache_key(shards=data_fingerprint([str(shard)])) == first
    shard.write_bytes(b"y" * 11)
    assert cache_key(shards=data_fingerprint([str(shard)])) != first
    os.utime(shard, ns=(1, 1))
    assert cache_key(shards=data_fingerprint([str(shard)])) != first


def test_round_trip_on_disk_and_in_memory(tmp_path):
    values = torch.randn(7, 5)
    cache = EmbeddingCache(tmp_path / "cache")
    key = cache_key(weights="abc", branch="global", what="image")
    assert cache.load(key) is None
    cache.save(key, values, {"what": "image"})
    assert torch.equal(EmbeddingCache(tmp_path / "cache").load(key), values)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{key}.json", f"{key}.npy"]
    (tmp_path / "cache" / f"{key}.npy").write_bytes(b"truncated")
    assert EmbeddingCache(tmp_path / "cache").load(key) is None  # unreadable -> encode again
    memory_only = EmbeddingCache(None)
    memory_only.save(key, values, {})
    assert torch.equal(memory_only.load(key), values)

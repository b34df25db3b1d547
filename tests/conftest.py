"""Fixtures shared by several test files: training data, base weights, a loopback Hub."""
import pytest
import torch

from model_helpers import tiny_clip
from server_helpers import LoopbackHub, point_hub_client_at
from train_helpers import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), count=16, shards=4)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """Tiny base CLIP weights on disk, standing in for pretrained ones."""
    path = tmp_path_factory.mktemp("base") / "base.pt"
    torch.save(tiny_clip(seed=0).state_dict(), path)
    return str(path)


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """A running LoopbackHub that huggingface_hub (and so OpenCLIP) talks to, with a fresh cache."""
    with LoopbackHub() as server:
        point_hub_client_at(server, tmp_path, monkeypatch)
        yield server

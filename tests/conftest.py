"""Fixtures shared by the training and baseline tests."""
import pytest
import torch

from model_helpers import tiny_clip
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

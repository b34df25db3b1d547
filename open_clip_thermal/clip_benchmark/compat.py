"""A fix for CLIP_benchmark 1.6.2 under NumPy >= 2.4, applied only while our ``eval`` runs.

``clip_benchmark.metrics.zeroshot_classification.accuracy`` (also imported by ``linear_probe``) turns
each top-k count into a float with ``float(tensor.sum(0, keepdim=True).cpu().numpy())``: a 1-element
1-D array, which NumPy 2.4 no longer converts ("only 0-dimensional arrays can be converted to Python
scalars"), so every zero-shot classification run fails after encoding. :func:`patched_accuracy`
swaps in :func:`accuracy`, the same numbers computed from a 0-d count, and puts CLIP_benchmark's own
function back afterwards. Retrieval does not use it. Nothing is patched when NumPy still converts.
"""
import contextlib
from typing import Iterator, List, Sequence

import numpy as np
import torch

PATCHED_MODULES = ("clip_benchmark.metrics.zeroshot_classification", "clip_benchmark.metrics.linear_probe")


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[float]:
    """Top-k accuracies of logits ``output`` (N, C) against class ids ``target`` (N,), CLIP_benchmark's rule."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) / len(target) for k in topk]


def numpy_refuses_1d_scalars() -> bool:
    """Whether ``float(np.zeros(1))`` fails (NumPy >= 2.4), i.e. CLIP_benchmark's ``accuracy`` would."""
    try:
        float(np.zeros(1))
    except TypeError:
        return True
    return False


@contextlib.contextmanager
def patched_accuracy() -> Iterator[None]:
    """Use :func:`accuracy` in CLIP_benchmark's metric modules while the block runs (if NumPy needs it)."""
    import importlib
    saved = []
    try:
        if numpy_refuses_1d_scalars():
            for name in PATCHED_MODULES:
                module = importlib.import_module(name)
                saved.append((module, module.accuracy))
                module.accuracy = accuracy
        yield
    finally:
        for module, original in saved:
            module.accuracy = original

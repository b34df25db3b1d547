"""Caption length statistics in CLIP tokens.

CLIP's text tower reads at most ``context_length`` (77) tokens including the start and end
markers; longer captions are cut. Fine-grained thermal captions often run long, so the converter
and the IR-Cap report both show how many captions are affected.
"""
from typing import Dict, Iterable, List

import numpy as np

_TOKENIZER = None


def _clip_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer
        _TOKENIZER = SimpleTokenizer()
    return _TOKENIZER


def count_clip_tokens(caption: str) -> int:
    """Number of BPE tokens of ``caption`` plus the start and end markers CLIP adds."""
    return len(_clip_tokenizer().encode(caption)) + 2


def caption_token_stats(captions: Iterable[str], context_length: int = 77) -> Dict[str, float]:
    """Summarise caption lengths in CLIP tokens.

    Args:
        captions: caption strings.
        context_length: the text tower's context; longer captions are truncated by the tokenizer.

    Returns:
        dict with ``count``, ``mean``, ``p95``, ``max``, ``over_context`` (number of captions longer
        than the context) and ``share_over_context`` (that number as a fraction of ``count``).
    """
    lengths: List[int] = [count_clip_tokens(c) for c in captions]
    if not lengths:
        return {"count": 0, "mean": 0.0, "p95": 0.0, "max": 0, "over_context": 0,
                "share_over_context": 0.0, "context_length": context_length}
    arr = np.asarray(lengths)
    over = int((arr > context_length).sum())
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "over_context": over,
        "share_over_context": over / arr.size,
        "context_length": context_length,
    }

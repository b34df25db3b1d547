"""IR-Cap: RGB-anchored dual-prompt thermal captions from an OpenAI-compatible VLM server.

``python -m open_clip_thermal.ircap caption ...`` writes caption records the converter reads;
``python -m open_clip_thermal.ircap report captions.jsonl`` checks their quality. See docs/ircap.md.
"""
from .cli import main
from .client import CaptionRequestError, ChatCompletionsClient, RetryPolicy
from .captioner import Captioner
from .pipeline import RunSummary, run_captioning
from .prompts import PromptSet, load_prompt_set
from .quality import CoverageLexicon, RGBHallucinationLint
from .records import read_pairs

__all__ = [
    "main", "ChatCompletionsClient", "RetryPolicy", "CaptionRequestError", "Captioner",
    "RunSummary", "run_captioning", "PromptSet", "load_prompt_set", "RGBHallucinationLint",
    "CoverageLexicon", "read_pairs",
]

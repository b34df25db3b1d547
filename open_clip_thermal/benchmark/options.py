"""The benchmark's command line: flags, defaults and their help, importable without torch.

``python -m open_clip_thermal.benchmark --help`` builds this parser and nothing else; the run itself is
:mod:`.runner`.
"""
import argparse
from pathlib import Path
from typing import List

import numpy as np

from ..contracts import DEFAULT_LAM, DEFAULT_RECALL_KS
from ..data.decode import add_norm_arguments

_EPILOG = """\
variant syntax: KIND[/TAG]=MODEL[:WEIGHTS[,WEIGHTS...]]
  KIND     lora-global | lora-fg | lora-mixed | tclip-global | tclip-fg | tclip-dual |
           tclip (= the three tclip rows) | clip-adapter | full | declip
  MODEL    name for open_clip_thermal.create_model (tclip-global, tclip-dual, ViT-B-16, ...)
  WEIGHTS  one seed: adapter folder or checkpoint, 'none' for random init, or for tclip kinds
           GLOBAL_DIR+FG_DIR (two single-branch adapter folders). Several seeds -> mean +- std.
examples:
  --variant lora-global=tclip-global:runs/g_s0/adapters,runs/g_s42/adapters,runs/g_s123/adapters
  --variant tclip=tclip-dual:runs/g_s0/adapters+runs/f_s0/adapters,runs/g_s42/adapters+runs/f_s42/adapters
  --variant full=ViT-B-16:runs/full/model.safetensors
definitions (ties, repeated captions, which caption is the query): docs/benchmark.md
"""


# --caption-match value -> the hit rule in words (written to results.json and results.md)
CAPTION_MATCH_RULES = {
    "pair": "paired item only",
    "caption": "paired item and every item with an identical caption record (global + fine-grained)",
}


def _ks(text: str) -> List[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--recall-k expects comma-separated integers, got {text!r}") from None


def parse_lambdas(text: str) -> List[float]:
    """``START:STOP:STEP`` (inclusive) or a comma list; every value must lie in [0, 1]."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            values = np.arange(start, stop + step / 2, step)
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambdas expects START:STOP:STEP or a comma list, got {text!r}") from None
    values = [round(float(v), 6) for v in values]
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--lambdas values must lie in [0, 1], got {values}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.benchmark", allow_abbrev=False,
        description="Thermal image-text retrieval benchmark: Recall@K tables (mean +- std over seeds), "
                    "'vs. Global LoRA' gains, lambda sweep, fusion modes, thermal perception gap "
                    "statistics and feature geometry. Writes results.json, results.md and PNG plots.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, nargs="+",
                        help="test shards: brace pattern (test-{000000..000003}.tar), '::'-separated list or several paths")
    parser.add_argument("--variant", "--variants", dest="variants", action="append", default=[], metavar="SPEC",
                        help="a model to evaluate, repeatable; syntax below")
    parser.add_argument("--out", required=True, type=Path, help="output folder for results.json, results.md and plots")
    parser.add_argument("--base-model", default="ViT-B-16", help="OpenCLIP name of the zero-shot base (default: ViT-B-16)")
    parser.add_argument("--base-pretrained", default="openai",
                        help="weights of the zero-shot base: OpenCLIP tag or checkpoint, 'none' = random (default: openai)")
    parser.add_argument("--no-zeroshot", action="store_true", help="skip the zero-shot base rows (default: include them)")
    parser.add_argument("--recall-k", type=_ks, default=list(DEFAULT_RECALL_KS),
                        help="comma-separated K values; K above the test-set size is capped with a warning "
                             "(default: 1,5,10,25,50,100)")
    parser.add_argument("--lam", type=float, default=DEFAULT_LAM,
                        help=f"weight of the global branch in fused rows of the main table (default: {DEFAULT_LAM:g})")
    parser.add_argument("--lambdas", type=parse_lambdas, default=parse_lambdas("0:1:0.1"),
                        help="lambda sweep for tclip-dual rows, START:STOP:STEP inclusive or a comma list (default: 0:1:0.1)")
    parser.add_argument("--caption-match", choices=CAPTION_MATCH_RULES, default="pair",
                        help="what counts as a hit, the same rule for every row: 'pair' = only the paired item (the "
                             "paper's and CLIP_benchmark's protocol); 'caption' = also every item whose caption "
                             "record (global and fine-grained captions) is identical to the pair's (default: pair)")
    parser.add_argument("--group-field", default="time_of_day",
                        help="metadata field (from the shards' .json) grouping images for the geometry analysis; "
                             "'' disables it (default: time_of_day)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false discovery rate of the gap tests (default: 0.05)")
    parser.add_argument("--gap-tests", choices=("paper", "all"), default="paper",
                        help="which rows the Welch t-tests of the matched-pair cosines compare, Benjamini-Hochberg "
                             "adjusted over that family: 'paper' = zero-shot vs Global LoRA vs T-CLIP (Dual), three "
                             "comparisons as in the paper's appendix (every pair when fewer than two of those rows "
                             "are present); 'all' = every pair of rows (default: paper)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: 64)")
    parser.add_argument("--device", default=None,
                        help="device for encoding and retrieval (default: cuda if available, else cpu)")
    parser.add_argument("--memory-budget-mb", type=float, default=256.0,
                        help="working memory of one similarity chunk; lower it for huge test sets (default: 256)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache folder (default: OUT/embedding_cache)")
    parser.add_argument("--no-cache", action="store_true", help="keep embeddings in memory only (default: cache on disk)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (default: write them; needs matplotlib)")
    add_norm_arguments(parser.add_argument_group(  # override of the normalisation each variant recorded
        "thermal decoding", "By default every seed's test images are decoded with the normalisation its adapters "
                            "recorded at training (zero-shot rows and unrecorded weights: percentile); these flags "
                            "override it for every row."), default=None)
    return parser

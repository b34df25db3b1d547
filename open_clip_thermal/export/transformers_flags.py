"""Flags of ``python -m open_clip_thermal.export transformers`` (standard library only: ``--help`` imports no torch)."""
import argparse
from pathlib import Path

from ..contracts import GLOBAL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the Transformers export's flags on ``parser``."""
    parser.add_argument("--model", required=True, help="T-CLIP model name (tclip-global, tclip-dual, ...)")
    parser.add_argument("--pretrained", required=True,
                        help="adapter folder, GLOBAL_DIR+FG_DIR pair, or anything create_model accepts")
    parser.add_argument("--branch", default=GLOBAL,
                        help="the branch to merge into the weights: global or fine_grained (default: global)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: config.json, model.safetensors, tokenizer and preprocessor files")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check that the exported CLIPModel's embeddings equal OpenCLIP's within 1e-4")

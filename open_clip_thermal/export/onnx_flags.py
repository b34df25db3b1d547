"""Flags of ``python -m open_clip_thermal.export onnx`` (standard library only: ``--help`` imports no torch)."""
import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ONNX export's flags on ``parser``."""
    parser.add_argument("--model", required=True, help="T-CLIP model name (tclip-dual, tclip-global, tclip-tiny-dual, ...)")
    parser.add_argument("--pretrained", required=True,
                        help="adapter folder, GLOBAL_DIR+FG_DIR pair, or anything create_model accepts")
    parser.add_argument("--branch", default="dual",
                        help="'dual': both branches with the fusion folded into the graph; or one branch name "
                             "(global, fine_grained), merged into the weights (default: dual)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for image.onnx, text.onnx and export.json")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime-vs-PyTorch check on random inputs (default: check, max abs diff <= 1e-4)")

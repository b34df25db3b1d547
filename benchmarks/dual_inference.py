"""Images/s of T-CLIP's fused two-branch ``encode_image`` against a stock OpenCLIP ``encode_image``.

Three models encode the same random batch, in eval mode under ``torch.no_grad``:

* ``stock``: the plain OpenCLIP base (``--base``, default ViT-B-16);
* ``dual, all blocks``: ``--model`` (default tclip-dual) with LoRA in every block of each tower;
* ``dual, last k``: the same with LoRA only in the last ``--last-k`` blocks, so the unadapted
  prefix runs once for both branches (the batch is forked at the first adapted block).

Repetitions are interleaved (one call of each model per round, in a rotating order) after a
warm-up, so slow phases of a shared machine hit every model alike; each model's time is the median
over rounds. The dual models get the stock model's weights (their LoRA B matrices start at zero),
so their fused output must equal the stock output: that is checked first, to be sure the timed
code is the real encoder. The last two lines are the ratios dual time / stock time next to the
targets (2.05x with all blocks adapted, 1.55x with the shared prefix).

Examples:
    python benchmarks/dual_inference.py                       # ViT-B-16, batch 8, 224 px, CPU fp32
    python benchmarks/dual_inference.py --model tclip-tiny-dual --base thermal-vit-tiny --batch-size 32
    python benchmarks/dual_inference.py --device cuda --precision bf16 --batch-size 128
"""
import argparse
import contextlib
import os
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from _quiet import random_weights_quietly

TARGETS = {"all": 2.05, "prefix": 1.55}  # dual time / stock time we aim to stay under
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tclip-dual", help="two-branch T-CLIP model name")
    parser.add_argument("--base", default=None,
                        help="stock OpenCLIP model to compare with (default: the T-CLIP config's base_model, "
                             "ViT-B-16 for tclip-dual); must have the same architecture as that base")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encode_image call")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the random input images (default: the base model's, 224 for ViT-B-16)")
    parser.add_argument("--last-k", type=int, default=None,
                        help="blocks with LoRA in the shared-prefix configuration (default: half the vision "
                             "tower's blocks, 6 of 12 for ViT-B-16)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds; each model's median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="fp32, or fp16/bf16 autocast (fp16 needs CUDA)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default, usually one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    return parser


def build_models(model_name: str, base_name: str, last_k: int, device: torch.device) -> Dict[str, torch.nn.Module]:
    """The stock base and the two dual configurations, all with the stock base's weights, in eval mode."""
    import open_clip

    import open_clip_thermal  # noqa: F401  (registers the tclip-* names with OpenCLIP)

    with random_weights_quietly():
        stock = open_clip.create_model(base_name)
        models = {"stock": stock,
                  "all": open_clip.create_model(model_name),
                  "prefix": open_clip.create_model(model_name, lora={"last_k_blocks": last_k})}
    for key in ("all", "prefix"):
        if len(models[key].branches) < 2:
            raise SystemExit(f"--model {model_name!r} has branches {list(models[key].branches)}; "
                             "this benchmark needs a two-branch model such as tclip-dual")
        _copy_base_weights(stock, models[key], base_name, model_name)
    return {k: m.to(device).eval() for k, m in models.items()}


def _copy_base_weights(stock: torch.nn.Module, dual: torch.nn.Module, base_name: str, model_name: str) -> None:
    """Load the stock weights into the dual model's frozen base (LoRA keys stay as they are)."""
    dual_state = dual.base.state_dict()
    mismatched = [k for k, v in stock.state_dict().items() if k not in dual_state or dual_state[k].shape != v.shape]
    if mismatched:
        raise SystemExit(f"--base {base_name!r} is not the architecture under --model {model_name!r} "
                         f"(first differing weight: {mismatched[0]}); pass the T-CLIP config's base_model")
    missing, _ = dual.base.load_state_dict(stock.state_dict(), strict=False)
    assert all("lora_" in k for k in missing), missing


def encoders(models: Dict[str, torch.nn.Module]) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """What is timed per model: normalised image embeddings (the dual ones fused over both branches)."""
    return {name: (lambda images, m=model: m.encode_image(images, normalize=True)) for name, model in models.items()}


def check_same_output(runs: Dict[str, Callable], images: torch.Tensor, autocast) -> float:
    """Largest |dual - stock| over both dual configurations; with zero LoRA updates they must agree."""
    with torch.no_grad(), autocast():
        reference = runs["stock"](images).float()
        return max((runs[k](images).float() - reference).abs().max().item() for k in ("all", "prefix"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runs: Dict[str, Callable], images: torch.Tensor, repeats: int, warmup: int,
                     device: torch.device, autocast) -> Dict[str, List[float]]:
    """Seconds per call of each encoder, one call of each per round, the order rotating every round."""
    names = list(runs)
    times: Dict[str, List[float]] = {n: [] for n in names}
    from tqdm import tqdm
    with torch.no_grad(), autocast():
        for round_index in tqdm(range(warmup + repeats), desc="rounds", leave=False):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                _sync(device)
                start = time.perf_counter()
                runs[name](images)
                _sync(device)
                if round_index >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def report(times: Dict[str, List[float]], batch_size: int, last_k: int, depth: int) -> Dict[str, float]:
    """Print the table and, last, the two ratios with their targets; returns the ratios."""
    labels = {"stock": "stock OpenCLIP", "all": f"dual, LoRA in all {depth} blocks",
              "prefix": f"dual, LoRA in last {last_k} of {depth}"}
    median = {n: statistics.median(t) for n, t in times.items()}
    print(f"{'model':<28} {'median ms/batch':>16} {'min':>8} {'max':>8} {'images/s':>10}")
    for name, label in labels.items():
        t = times[name]
        print(f"{label:<28} {1e3 * median[name]:>16.1f} {1e3 * min(t):>8.1f} {1e3 * max(t):>8.1f} "
              f"{batch_size / median[name]:>10.1f}")
    ratios = {k: median[k] / median["stock"] for k in ("all", "prefix")}
    for key in ("all", "prefix"):
        verdict = "ok" if ratios[key] <= TARGETS[key] else "ABOVE TARGET"
        print(f"ratio dual/stock ({labels[key][6:]}): {ratios[key]:.2f}x  (target <= {TARGETS[key]:.2f}x, {verdict})")
    return ratios


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """Run the benchmark; returns the two ratios (all blocks, shared prefix)."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and args.precision == "fp16":
        raise SystemExit("--precision fp16 needs --device cuda (CPU autocast supports bf16 only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from open_clip_thermal import get_tclip_config
    base_name = args.base or get_tclip_config(args.model)["base_model"]

    import open_clip
    vision_cfg = open_clip.get_model_config(base_name)["vision_cfg"]
    depth = vision_cfg["layers"]
    last_k = args.last_k or max(1, depth // 2)
    if not 1 <= last_k < depth:
        raise SystemExit(f"--last-k must be between 1 and {depth - 1} for {base_name!r} ({depth} blocks), got {last_k}")
    size = args.image_size or vision_cfg["image_size"]
    dtype = PRECISIONS[args.precision]

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    models = build_models(args.model, base_name, last_k, device)
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    runs = encoders(models)
    diff = check_same_output(runs, images, autocast)
    tolerance = 1e-4 if dtype is None else 5e-2
    if diff > tolerance:
        raise SystemExit(f"dual encode_image differs from stock by {diff:.2e} (> {tolerance}): not the same encoder")

    load_before = os.getloadavg()
    times = time_interleaved(runs, images, args.repeats, args.warmup, device, autocast)
    load_after = os.getloadavg()
    print(f"{args.model} vs {base_name}: batch {args.batch_size} x {size} px, {device}, {args.precision}, "
          f"{torch.get_num_threads()} thread(s), {args.warmup} warm-up + {args.repeats} timed rounds")
    print(f"fused dual output == stock output (max |diff| {diff:.1e}); "
          f"load average 1/5/15 min: before {_fmt_load(load_before)}, after {_fmt_load(load_after)}")
    return report(times, args.batch_size, last_k, depth)


def _fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()

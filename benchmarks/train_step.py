"""Time of one LoRA training step against a no-grad forward of the same batch on the same model.

A training step here is what open_clip_train does per batch: forward of images and captions,
OpenCLIP's ``ClipLoss`` (one per branch for a two-branch model given ``(B, 2, L)`` captions),
backward, and an AdamW step over the trainable parameters. With LoRA the frozen weights need no
weight gradient, only the activation gradients that flow through them to the adapters, so a step
should cost about two forwards rather than three; a full fine-tuning step of the same base on the
same batch is timed for comparison.

Every (model, method) runs in a fresh subprocess, so the peak resident memory (``ru_maxrss``; on
CUDA ``torch.cuda.max_memory_allocated``) belongs to that configuration alone. Inside it, no-grad
forwards and training steps alternate (rotating order) after a warm-up round, and medians are
reported. The ratios step time / no-grad forward time are printed last.

Examples:
    python benchmarks/train_step.py                                   # tclip-global (ViT-B-16) and the tiny config
    python benchmarks/train_step.py --model tclip-tiny-global --repeats 20
    python benchmarks/train_step.py --model tclip-dual --device cuda --precision bf16 --batch-size 128
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from _quiet import random_weights_quietly

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
METHODS = ("lora", "full")
RESULT_PREFIX = "RESULT "  # marks the worker's JSON line on stdout


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["tclip-global", "tclip-tiny-global"],
                        help="T-CLIP model name(s); 'lora' trains its LoRA branches, 'full' fine-tunes all weights "
                             "of its base (ViT-B-16 for tclip-global). A two-branch model trains both branches "
                             "on (B, 2, L) captions as --branch both does")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="training methods to time per model")
    parser.add_argument("--batch-size", type=int, default=8, help="images (and captions) per step")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds first (the first AdamW step also allocates its state)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="fp32, or fp16/bf16 autocast (fp16, CUDA only, adds a GradScaler as AMP training does)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and batch")
    parser.add_argument("--in-process", action="store_true",
                        help="time the configurations in this process instead of one fresh subprocess each "
                             "(peak memory is then cumulative); the subprocesses run with this flag")
    parser.add_argument("--json", action="store_true",
                        help="also print each configuration's result as a JSON line prefixed with 'RESULT '")
    return parser


def build_model(model_name: str, method: str, device: torch.device) -> torch.nn.Module:
    """The T-CLIP model (LoRA and temperatures trainable) or its base with every weight trainable."""
    import open_clip

    from open_clip_thermal import get_tclip_config

    with random_weights_quietly():
        if method == "lora":
            model = open_clip.create_model(model_name, output_dict=True)
        else:
            model = open_clip.create_model(get_tclip_config(model_name)["base_model"], output_dict=True)
            model.requires_grad_(True)
    return model.to(device).train()


def make_batch(model_name: str, model: torch.nn.Module, batch_size: int, device: torch.device):
    """Random images and IR-Cap-like captions; ``(B, 2, L)`` tokens for a two-branch LoRA model."""
    import open_clip

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch_size, 3, size, size, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    global_captions = [f"infrared thermal image of a street at night with {i} pedestrians" for i in range(batch_size)]
    fg_captions = [f"infrared thermal image: pedestrian {i} glows warmer than the road" for i in range(batch_size)]
    texts = tokenizer(global_captions)
    if len(getattr(model, "branches", ())) == 2:
        texts = torch.stack([texts, tokenizer(fg_captions)], dim=1)
    return images, texts.to(device)


def make_loss(model: torch.nn.Module) -> torch.nn.Module:
    """open_clip_train's loss: ClipLoss, or one per branch for two-branch training."""
    from open_clip.loss import ClipLoss

    from open_clip_thermal.training.losses import DualBranchClipLoss

    return DualBranchClipLoss() if len(getattr(model, "branches", ())) == 2 else ClipLoss()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_configuration(model_name: str, method: str, args: argparse.Namespace) -> Dict[str, object]:
    """Median no-grad forward and training-step times of one (model, method), peak memory, grad counts."""
    device = torch.device(args.device)
    dtype = PRECISIONS[args.precision]
    torch.manual_seed(args.seed)
    model = build_model(model_name, method, device)
    images, texts = make_batch(model_name, model, args.batch_size, device)
    loss_fn = make_loss(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    memory = {"model": peak_memory_mb(device)}

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def forward_no_grad():
        with torch.no_grad(), autocast():
            model(images, texts)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(**model(images, texts))
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    forward_no_grad()  # peak of inference alone, before any gradient or optimizer state exists
    memory["no_grad_forward"] = peak_memory_mb(device)
    runs = {"forward": forward_no_grad, "step": train_step}
    times: Dict[str, List[float]] = {name: [] for name in runs}
    from tqdm import tqdm
    for round_index in tqdm(range(args.warmup + args.repeats), desc=f"{model_name} {method}", leave=False):
        order = list(runs) if round_index % 2 == 0 else list(runs)[::-1]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            runs[name]()
            _sync(device)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    memory["train_step"] = peak_memory_mb(device)
    with_grad = [p for p in model.parameters() if p.grad is not None]
    return {
        "model": model_name, "method": method, "batch_size": args.batch_size, "device": str(device),
        "precision": args.precision, "threads": torch.get_num_threads(),
        "forward_s": statistics.median(times["forward"]), "step_s": statistics.median(times["step"]),
        "forward_all_s": times["forward"], "step_all_s": times["step"],
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable),
        "params_with_grad": sum(p.numel() for p in with_grad),
        "peak_mb": memory,
    }


def run_in_subprocess(model_name: str, method: str, args: argparse.Namespace) -> Dict[str, object]:
    """Time one configuration in a fresh Python process (its own ru_maxrss) and read back its JSON."""
    argv = [sys.executable, os.path.abspath(__file__), "--in-process", "--json", "--model", model_name,
            "--methods", method, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision,
            "--threads", str(args.threads), "--seed", str(args.seed)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"timing {model_name} / {method} failed (exit {done.returncode}); see its messages above")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def report(results: List[Dict[str, object]]) -> None:
    """Print the table, then one ratio line per configuration (step / no-grad forward)."""
    print(f"{'model':<20} {'method':<6} {'trainable':>12} {'no-grad fwd s':>14} {'step s':>9} "
          f"{'peak MB: model':>15} {'fwd':>7} {'step':>7}")
    for r in results:
        mem = r["peak_mb"]
        print(f"{r['model']:<20} {r['method']:<6} {r['params_trainable']:>12,} {r['forward_s']:>14.3f} "
              f"{r['step_s']:>9.3f} {mem['model']:>15.0f} {mem['no_grad_forward']:>7.0f} {mem['train_step']:>7.0f}")
    for r in results:
        frozen_grads = r["params_with_grad"] - r["params_trainable"]
        if r["params_trainable"] == r["params_total"]:
            note = "every weight trained"
        elif frozen_grads == 0:
            note = "no weight gradients for the frozen parameters"
        else:  # would mean the backbone is not frozen after all
            note = f"{frozen_grads:,} gradient elements on frozen parameters!"
        print(f"ratio step / no-grad forward, {r['model']} {r['method']} (batch {r['batch_size']}): "
              f"{r['step_s'] / r['forward_s']:.2f}x  ({note})")


def main(argv: Optional[List[str]] = None) -> List[Dict[str, object]]:
    """Run every (model, method) configuration and print the results; returns them."""
    args = build_parser().parse_args(argv)
    if torch.device(args.device).type == "cpu" and args.precision == "fp16":
        raise SystemExit("--precision fp16 needs --device cuda (CPU autocast supports bf16 only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip_thermal
    unknown = [m for m in args.model if m not in open_clip_thermal.list_tclip_models()]
    if unknown:
        raise SystemExit(f"--model {unknown} unknown; T-CLIP models: {open_clip_thermal.list_tclip_models()}")
    load_before = os.getloadavg()
    results = []
    for model_name in args.model:
        for method in args.methods:
            if args.in_process:
                result = time_configuration(model_name, method, args)
                if args.json:
                    print(RESULT_PREFIX + json.dumps(result), flush=True)
            else:
                result = run_in_subprocess(model_name, method, args)
            results.append(result)
    if not (args.in_process and args.json):
        first = results[0]
        print(f"{args.device}, {args.precision}, {first['threads']} thread(s), {args.warmup} warm-up + "
              f"{args.repeats} timed rounds; load average 1/5/15 min: before "
              f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
        report(results)
    return results


if __name__ == "__main__":
    main()

"""Time and peak memory of chunked Recall@K against a brute-force full similarity matrix.

Each measurement runs in its own subprocess so ``ru_maxrss`` (peak resident memory) belongs to
that computation alone. Random unit-norm 512-d image/text pairs stand in for real embeddings.

    python benchmarks/recall_scale.py                       # N = 2252 (KAIST test), 10k, 50k
    python benchmarks/recall_scale.py --sizes 2252,10000 --brute-max-n 10000
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch

KS = (1, 5, 10, 25, 50, 100)


def _random_pairs(n: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(image + torch.randn(n, dim, generator=generator), dim=-1)
    return image, text


def _brute_force(image: torch.Tensor, text: torch.Tensor):
    """The whole N x N matrix at once; rank = number of items scoring above the true pair."""
    scores = image @ text.T
    positive = scores.diagonal().clone()
    i2t = (scores > positive[:, None]).sum(dim=1)
    t2i = (scores > positive[None, :]).sum(dim=0)
    return {d: {k: float((r < k).double().mean()) for k in KS} for d, r in (("image_to_text", i2t), ("text_to_image", t2i))}


def _worker(n: int, dim: int, mode: str, budget_mb: float) -> dict:
    from open_clip_thermal.evaluation.retrieval import retrieval_recalls
    image, text = _random_pairs(n, dim)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "chunked":
        recalls = retrieval_recalls(image, text, ks=KS, memory_budget_mb=budget_mb)
    else:
        recalls = _brute_force(image, text)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"n": n, "mode": mode, "seconds": seconds, "peak_rss_mb": peak_kb / 1024,
            "compute_rss_mb": (peak_kb - baseline_kb) / 1024, "r1_i2t": recalls["image_to_text"][1]}


def _measure(n: int, dim: int, mode: str, budget_mb: float) -> dict:
    command = [sys.executable, __file__, "--worker", str(n), "--dim", str(dim), "--mode", mode,
               "--memory-budget-mb", str(budget_mb)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2252,10000,50000", help="comma-separated N (default: 2252,10000,50000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default: 512)")
    parser.add_argument("--brute-max-n", type=int, default=10000,
                        help="largest N for the brute-force comparison; its N x N float32 matrix needs 4 N^2 bytes "
                             "(default: 10000, i.e. 400 MB)")
    parser.add_argument("--memory-budget-mb", type=float, default=256.0,
                        help="chunk working memory of the chunked computation (default: 256)")
    parser.add_argument("--limit-mb", type=float, default=2048.0, help="memory limit to check against (default: 2048)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("chunked", "brute"), default="chunked", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.dim, args.mode, args.memory_budget_mb)))
        return 0
    ratios = []
    print(f"{'N':>7} {'mode':>8} {'time s':>9} {'peak RSS MB':>12} {'compute MB':>11} {'R@1 I→T':>8}")
    within = True
    for n in (int(x) for x in args.sizes.split(",")):
        chunked = _measure(n, args.dim, "chunked", args.memory_budget_mb)
        within &= chunked["peak_rss_mb"] <= args.limit_mb
        rows = [chunked]
        if n <= args.brute_max_n:
            brute = _measure(n, args.dim, "brute", args.memory_budget_mb)
            if abs(brute["r1_i2t"] - chunked["r1_i2t"]) > 1e-9:
                print(f"warning: N={n}: chunked R@1 {chunked['r1_i2t']} differs from brute force {brute['r1_i2t']}")
            rows.append(brute)
            ratios.append((n, chunked["seconds"] / brute["seconds"], chunked["compute_rss_mb"] / max(brute["compute_rss_mb"], 1e-9)))
        for r in rows:
            print(f"{r['n']:>7} {r['mode']:>8} {r['seconds']:>9.2f} {r['peak_rss_mb']:>12.0f} {r['compute_rss_mb']:>11.0f} {r['r1_i2t']:>8.4f}")
    print(f"all chunked runs within {args.limit_mb:.0f} MB peak RSS: {'yes' if within else 'NO'}")
    for n, time_ratio, memory_ratio in ratios:
        print(f"ratio chunked/brute-force at N={n}: time {time_ratio:.2f}x, extra memory {memory_ratio:.2f}x")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())

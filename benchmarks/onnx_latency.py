"""onnxruntime vs PyTorch CPU latency of the exported T-CLIP towers, side by side (docs/export.md).

Same model, same inputs; the two runtimes are timed interleaved (PyTorch, onnxruntime, PyTorch, ...)
so that load changes on a shared machine hit both alike; prints the median per call and the ratio.

    python benchmarks/onnx_latency.py --model tclip-tiny-dual --branch dual --batch 8 --repeats 30
"""
import argparse
import statistics
import tempfile
import time
import warnings

import torch


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tclip-tiny-dual", help="T-CLIP model name (default: tclip-tiny-dual)")
    parser.add_argument("--pretrained", default=None, help="adapter folder etc. (default: random base, random LoRA B)")
    parser.add_argument("--branch", default="dual", help="dual or a branch name (default: dual)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per runtime (default: 30)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for both runtimes (default: torch's)")
    args = parser.parse_args()

    import onnxruntime as ort
    import open_clip
    from open_clip_thermal.export import export_onnx
    from open_clip_thermal.export.onnx_export import example_inputs

    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(args.model, pretrained=args.pretrained).eval()
    if args.pretrained is None:
        with torch.no_grad():  # non-zero B so the branches differ, as after training
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    x = example_inputs(model, args.batch)
    texts = (x["tokens"],) if args.branch != "dual" else (x["tokens"], x["tokens"].flip(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, tmp, branch=args.branch)
        sessions = {k: ort.InferenceSession(f"{tmp}/{k}.onnx", options, providers=["CPUExecutionProvider"])
                    for k in ("image", "text")}
        names = {k: [i.name for i in s.get_inputs()] for k, s in sessions.items()}
        feeds = {"image": {names["image"][0]: x["pixels"].numpy()},
                 "text": {n: t.numpy() for n, t in zip(names["text"], texts)}}
        torch_calls = {
            "image": lambda: model.encode_image(x["pixels"], branch=None if args.branch == "dual" else args.branch),
            "text": (lambda: model.encode_text_dual(*texts)) if args.branch == "dual"
            else (lambda: model.encode_text(texts[0], branch=args.branch)),
        }
        print(f"model {args.model}, branch {args.branch}, batch {args.batch}, {args.repeats} repeats, "
              f"{args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}")
        print(f"{'tower':<6} {'pytorch ms':>11} {'onnxruntime ms':>15} {'ratio ort/pt':>13}")
        with torch.no_grad():
            for kind in ("image", "text"):
                pt, rt = [], []
                for i in range(args.repeats + 3):  # 3 warm-up rounds, not counted
                    a = _time(torch_calls[kind])
                    b = _time(lambda: sessions[kind].run(None, feeds[kind]))
                    if i >= 3:
                        pt.append(a)
                        rt.append(b)
                mp, mr = statistics.median(pt) * 1e3, statistics.median(rt) * 1e3
                print(f"{kind:<6} {mp:>11.2f} {mr:>15.2f} {mr / mp:>13.2f}")


if __name__ == "__main__":
    main()

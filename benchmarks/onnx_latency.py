"""onnxruntime vs PyTorch CPU latency and file size of the exported T-CLIP towers (docs/export.md).

Same model, same inputs. For ``--branch dual`` three ways of putting the two branches into one graph
are exported and compared in the same run:

* ``folded``: what ``export onnx`` writes: each adapted layer holds each branch's ``W + B A`` as a
  constant (``folded_copy``), the rest of the weights once, the model's batched pass and fusion;
* ``live``: the live model traced as it is (what ``export onnx`` wrote before the folding): the
  graph recomputes ``B A`` from the constant A, B of every adapted layer on each call;
* ``two-copies``: two merged single-branch models (``merged_copy``) side by side and the fusion: every
  weight twice, no shared prefix.

A single branch (``--branch global``) has one variant, the merged export. ``--compare NAME=DIR`` adds
an export folder written elsewhere (e.g. by an older version, for the same ``--pretrained``) as one
more variant. The runtimes are timed
interleaved (PyTorch, then each onnxruntime session in a rotating order, repeated; sessions do
not spin-wait between calls) so that load changes on a shared machine hit all alike; prints the median per call, the ratio to PyTorch and each graph's max abs
difference from PyTorch.

    python benchmarks/onnx_latency.py --model tclip-tiny-dual --branch dual --batch 8 --repeats 30
"""
import argparse
import os
import statistics
import tempfile
import time
import warnings


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _dual_graphs(model):
    """name -> (image module, text module) of the hand-traced dual variants (``folded`` is export_onnx's)."""
    import torch.nn as nn
    from open_clip_thermal.contracts import FINE_GRAINED, GLOBAL
    from open_clip_thermal.export.onnx_export import merged_copy
    from open_clip_thermal.model import fuse_features

    class Image(nn.Module):
        def __init__(self, g, f):
            super().__init__()
            self.g, self.f = g, f

        def forward(self, pixels):
            if self.g is self.f:  # the live model: its own batched two-branch pass
                return self.g.encode_image(pixels)
            feats = {GLOBAL: self.g.encode_image(pixels, branch=GLOBAL),
                     FINE_GRAINED: self.f.encode_image(pixels, branch=FINE_GRAINED)}
            return fuse_features(feats, model.lam, model.fusion)

    class Text(nn.Module):
        def __init__(self, g, f):
            super().__init__()
            self.g, self.f = g, f

        def forward(self, global_tokens, fine_grained_tokens):
            feats = {GLOBAL: self.g.encode_text(global_tokens, branch=GLOBAL),
                     FINE_GRAINED: self.f.encode_text(fine_grained_tokens, branch=FINE_GRAINED)}
            return fuse_features(feats, model.lam, model.fusion)

    g, f = merged_copy(model, GLOBAL), merged_copy(model, FINE_GRAINED)
    return {"live": (Image(model, model), Text(model, model)), "two-copies": (Image(g, f), Text(g, f))}


def _trace(module, args, names, path) -> None:
    """The same exporter settings as export_onnx (TorchScript exporter, dynamic batch, folding on)."""
    import torch
    axes = {name: {0: "batch"} for name in names + ["embedding"]}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, path, input_names=names, output_names=["embedding"], opset_version=17,
                              dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def main() -> None:
    import torch
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tclip-tiny-dual", help="T-CLIP model name (default: tclip-tiny-dual)")
    parser.add_argument("--pretrained", default=None, help="adapter folder etc. (default: random base, random LoRA B)")
    parser.add_argument("--branch", default="dual", help="dual or a branch name (default: dual)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per runtime and variant (default: 30)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for both runtimes (default: torch's)")
    parser.add_argument("--variants", default="folded,live,two-copies",
                        help="dual only: comma-separated subset of folded, live, two-copies (default: all three)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                        help="also time the image.onnx/text.onnx in DIR under the name NAME (repeatable); the "
                             "folder must come from the same model and --pretrained, or the diffs are meaningless")
    args = parser.parse_args()
    if any("=" not in c for c in args.compare):
        parser.error(f"--compare takes NAME=DIR, got {[c for c in args.compare if '=' not in c]}")

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
    dual = args.branch == "dual"
    x = example_inputs(model, args.batch)
    texts = (x["tokens"], x["tokens"].flip(0)) if dual else (x["tokens"],)
    variants = args.variants.split(",") if dual else ["merged"]
    unknown = [v for v in variants if v not in ("folded", "live", "two-copies", "merged")]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from folded, live, two-copies")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    # an idle session's threads spin for a while after each run by default, taking the cores from
    # whatever is timed next: with several sessions interleaved that would bias the comparison
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    torch_calls = {
        "image": lambda: model.encode_image(x["pixels"], branch=None if dual else args.branch),
        "text": (lambda: model.encode_text_dual(*texts)) if dual else (lambda: model.encode_text(texts[0], branch=args.branch)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {}  # variant -> {tower: path}
        for variant in variants:
            folder = os.path.join(tmp, variant)
            if variant in ("folded", "merged"):
                export_onnx(model, folder, branch=args.branch)
            else:
                os.makedirs(folder)
                image, text = _dual_graphs(model)[variant]
                _trace(image, (x["pixels"],), ["pixels"], os.path.join(folder, "image.onnx"))
                _trace(text, texts, ["global_tokens", "fine_grained_tokens"], os.path.join(folder, "text.onnx"))
            files[variant] = {k: os.path.join(folder, f"{k}.onnx") for k in ("image", "text")}
        for name, folder in (c.split("=", 1) for c in args.compare):
            variants.append(name)
            files[name] = {k: os.path.join(folder, f"{k}.onnx") for k in ("image", "text")}
        sessions = {(v, k): ort.InferenceSession(files[v][k], options, providers=["CPUExecutionProvider"])
                    for v in variants for k in ("image", "text")}
        feeds = {}
        for (v, k), s in sessions.items():
            names = [i.name for i in s.get_inputs()]
            feeds[v, k] = {names[0]: x["pixels"].numpy()} if k == "image" else {n: t.numpy() for n, t in zip(names, texts)}
        print(f"model {args.model}, branch {args.branch}, batch {args.batch}, {args.repeats} repeats, "
              f"{args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}")
        print(f"{'tower':<6} {'variant':<11} {'file MB':>8} {'pytorch ms':>11} {'onnxruntime ms':>15} "
              f"{'ratio ort/pt':>13} {'max abs diff':>13}")
        with torch.no_grad():
            for kind in ("image", "text"):
                want = torch_calls[kind]()
                pt, rt = [], {v: [] for v in variants}
                for i in range(args.repeats + 3):  # 3 warm-up rounds, not counted
                    a = _time(torch_calls[kind])
                    order = variants[i % len(variants):] + variants[:i % len(variants)]  # none always follows PyTorch
                    b = {v: _time(lambda: sessions[v, kind].run(None, feeds[v, kind])) for v in order}
                    if i >= 3:
                        pt.append(a)
                        for v in variants:
                            rt[v].append(b[v])
                mp = statistics.median(pt) * 1e3
                for v in variants:
                    mr = statistics.median(rt[v]) * 1e3
                    diff = float((torch.from_numpy(sessions[v, kind].run(None, feeds[v, kind])[0]) - want).abs().max())
                    size = os.path.getsize(files[v][kind]) / 1e6
                    print(f"{kind:<6} {v:<11} {size:>8.2f} {mp:>11.2f} {mr:>15.2f} {mr / mp:>13.2f} {diff:>13.1e}")


if __name__ == "__main__":
    main()

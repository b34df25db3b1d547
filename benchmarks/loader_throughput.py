"""Throughput of the converter, of open_clip_train's stock WebDataset pipeline and of the thermal loader.

Both loaders read the same 8-bit shards with the same OpenCLIP preprocess, tokenizer, batch size
and worker count, in training mode (shuffled, one epoch of full batches). The last line printed is
the ratio thermal / stock samples per second.

Example:
    python benchmarks/loader_throughput.py --samples 2048 --image-size 512 --workers 4
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Tuple

import numpy as np
from PIL import Image


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=512, help="synthetic samples to generate and convert")
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic 8-bit thermal images")
    parser.add_argument("--shards", type=int, default=4, help="shards to spread the samples over (>= workers)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of both loaders")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders")
    parser.add_argument("--model", default="ViT-B-16", help="OpenCLIP model whose preprocess and tokenizer are used")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per loader (the first warms caches)")
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp folder)")
    return parser


def make_images(root: str, count: int, size: int) -> str:
    """Write ``count`` 8-bit grey PNGs with captions; returns the annotation file."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "thermal"), exist_ok=True)
    path = os.path.join(root, "annotations.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            name = f"thermal/{index:06d}.png"
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(os.path.join(root, name))
            handle.write(json.dumps({"id": f"b{index:06d}", "image": name,
                                     "global_caption": f"infrared thermal image of a road, frame {index}",
                                     "fg_caption": f"infrared thermal image: a warm car engine, frame {index}"}) + "\n")
    return path


def time_loader(make_loader: Callable[[int], object], epochs: int) -> Tuple[float, int]:
    """Best samples/s over ``epochs`` passes (``make_loader(epoch)`` returns a DataInfo)."""
    best, seen = 0.0, 0
    info = make_loader(0)
    for epoch in range(epochs):
        info.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for batch in info.dataloader:
            seen += len(batch[0])
        best = max(best, seen / (time.perf_counter() - start))
    return best, seen


def main(argv=None) -> None:
    """Run the benchmark and print samples/s of each part; the ratio comes last."""
    args = build_parser().parse_args(argv)
    import open_clip
    from open_clip_train.data import get_wds_dataset

    from open_clip_thermal.convert import main as convert_main
    from open_clip_thermal.data.loader import make_thermal_dataloader

    workdir = args.workdir or tempfile.mkdtemp(prefix="tclip-loader-bench-")
    annotations = make_images(workdir, args.samples, args.image_size)
    out = os.path.join(workdir, "shards")
    start = time.perf_counter()
    status = convert_main(["--annotations", annotations, "--image-root", workdir, "--output-dir", out,
                           "--min-shards", str(args.shards), "--no-progress", "--overwrite"])
    if status != 0:
        raise SystemExit(f"conversion failed with status {status}")
    print(f"converter: {args.samples / (time.perf_counter() - start):.1f} samples/s (incl. start-up)")
    urls = os.path.join(out, f"thermal-train-{{000000..{args.shards - 1:06d}}}.tar")

    preprocess = open_clip.image_transform(224, is_train=False)
    tokenizer = open_clip.get_tokenizer(args.model)
    stock_args = argparse.Namespace(train_data=urls, train_num_samples=None, dataset_resampled=False,
                                    train_data_upsampling_factors=None, seed=0, batch_size=args.batch_size,
                                    workers=args.workers, world_size=1, val_data=None, val_num_samples=None)
    stock, stock_seen = time_loader(
        lambda epoch: get_wds_dataset(stock_args, preprocess, is_train=True, epoch=epoch, tokenizer=tokenizer),
        args.epochs)
    print(f"open_clip_train stock loader: {stock:.1f} samples/s ({stock_seen} samples/epoch)")
    thermal, thermal_seen = time_loader(
        lambda epoch: make_thermal_dataloader(urls, preprocess, tokenizer, batch_size=args.batch_size,
                                              num_workers=args.workers, epoch=epoch),
        args.epochs)
    print(f"open_clip_thermal loader: {thermal:.1f} samples/s ({thermal_seen} samples/epoch)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"ratio thermal/stock: {thermal / stock:.2f}")


if __name__ == "__main__":
    main()

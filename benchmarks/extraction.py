"""Overhead of helpers' feature extraction over a bare forward pass of the backbone.

Both sides read and resize the same images with ``helpers.images.load_image``. The bare side runs
``backbone.model(x)`` and throws the result away; the helpers side runs
``helpers.features.extract_maps`` for every conv tap of the backbone (kept as float16 maps) and
``extract_vectors`` for every pooling of the last conv map, including writing the cache. Each side
runs ``--repeats`` times into a fresh temporary cache; the best time of each is compared.

    python benchmarks/extraction.py [--images 24] [--image-size 640] [--backbone efficientnet_lite0]

Last line: ``overhead_ratio=<helpers time / bare time>`` (target: at most 1.10).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from helpers.backbones import load_backbone  # noqa: E402
from helpers.data import RetrievalDataset, load_dataset  # noqa: E402
from helpers.images import load_image  # noqa: E402


def subset(dataset, n):
    names = dataset.imlist[:n]
    return RetrievalDataset(name=f"{dataset.name}-bench{n}", root=dataset.root, imlist=names, qimlist=names[:1],
                            gnd=[{"easy": [], "hard": [], "junk": [], "bbx": None}], protocol="revisited")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    backbone = load_backbone(args.backbone)
    dataset = subset(load_dataset("demo"), args.images)
    conv_taps = list(backbone.layers)
    print(f"{args.images} images at {args.image_size}px, {backbone.name} on {backbone.device.type}, "
          f"taps: {', '.join(conv_taps)}")

    @torch.no_grad()
    def bare():
        for i in range(dataset.n_db):
            img = load_image(dataset.db_path(i), args.image_size)
            backbone.model(backbone.preprocess(img))
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()

    def with_helpers():
        from helpers import features

        with tempfile.TemporaryDirectory() as tmp:
            os.environ["INSTRET_CACHE"] = tmp
            features.extract_maps(dataset, backbone, conv_taps, args.image_size, "db")
            features.extract_vectors(dataset, backbone, backbone.last_conv, args.image_size, "db")
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()

    bare()  # warm-up (allocator, kernels, file cache)
    times = {"bare": [], "helpers": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("helpers", with_helpers)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:8s} best of {args.repeats}: {v:.2f} s ({1000 * v / args.images:.0f} ms/image)")
    print(f"overhead_ratio={best['helpers'] / best['bare']:.3f}")


if __name__ == "__main__":
    main()

"""Overhead of helpers' feature extraction over a bare forward pass of the backbone.

Both sides read and resize the same images with ``helpers.images.load_image``. The bare side runs
``backbone.model(x)`` and throws the result away; the helpers side runs the extraction the suite
does, ``helpers.features.prefetch`` with every conv tap of the backbone as map AND vector tap: all
taps hooked in one pass, every map converted to float16 and kept, every pooling (MAC, SPoC, GeM,
R-MAC, CroW) of every tap computed, and the cache written (atomically) to disk. Reading the cache
back later (``extract_maps`` / ``extract_vectors`` on a warm cache) is not part of either side. Each side
runs ``--repeats`` times into a fresh temporary cache; the best time of each is compared.

    python benchmarks/extraction.py [--images 24] [--image-size 640] [--backbone efficientnet_lite0]

It also times three lighter uses (the last conv map pooled only; every tap pooled but no map kept;
all maps cached but only the last pooled) to show where the overhead comes from.

Last line: ``overhead_ratio=<helpers time / bare time>`` for all taps cached and pooled (target: at most 1.10).
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

    def helpers_run(map_layers, vector_layers):
        from helpers import features

        def run():
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["INSTRET_CACHE"] = tmp
                features.prefetch(dataset, backbone, args.image_size, "db", map_layers=map_layers,
                                  vector_layers=vector_layers)
                if backbone.device.type == "cuda":
                    torch.cuda.synchronize()
        return run

    last = backbone.last_conv
    sides = {
        "bare": bare,
        # what the pooling notebooks and the CLI do: the last conv map pooled, nothing else kept
        "vectors": helpers_run([], [last]),
        # every conv tap pooled by every pooling, only the vectors cached
        "pooled": helpers_run([], conv_taps),
        # every conv tap's map cached as float16 (+ the last conv map pooled)
        "maps": helpers_run(conv_taps, [last]),
        # the target's definition: every tap's map cached AND pooled by every pooling
        "helpers": helpers_run(conv_taps, conv_taps),
    }
    bare()  # warm-up (allocator, kernels, file cache)
    times = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():  # interleaved: every side sees the same machine load
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    labels = {"bare": "bare forward", "vectors": f"helpers: {last} pooled (5 poolings)",
              "pooled": "helpers: all taps pooled (vectors only)",
              "maps": "helpers: all taps' maps cached", "helpers": "helpers: all taps cached + pooled"}
    for k, v in best.items():
        print(f"{labels[k]:40s} best of {args.repeats}: {v:6.2f} s ({1000 * v / args.images:4.0f} ms/image)"
              + ("" if k == "bare" else f"  ratio {v / best['bare']:.3f}"))
    print(f"overhead_ratio={best['helpers'] / best['bare']:.3f}")


if __name__ == "__main__":
    main()

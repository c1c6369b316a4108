"""Overhead of helpers' feature extraction over a bare forward pass of the backbone.

Both sides read and resize the same images with ``helpers.images.load_image``. The bare side runs
``backbone.model(x)`` and throws the result away. The target side runs the extraction of every conv
tap of the backbone pooled by every pooling, ``helpers.features.prefetch(vector_layers=<all conv
taps>)``: all taps hooked in one pass, each map rounded to float16 as the cache stores maps, MAC,
SPoC, GeM, R-MAC and CroW of every tap (``helpers.pooling.pool_all``), the vectors l2-normalised and
written (atomically) to the cache. Reading the cache back later is not part of either side.

    python benchmarks/extraction.py [--images 12] [--repeats 15] [--image-size 640] [--backbone efficientnet_lite0]

It also times two other uses, to show where time goes:
- the last conv map pooled only (what the pooling notebooks and the CLI do);
- every tap's map cached as well (float16, ~10 MB per 640-px image for EfficientNet-Lite0; a tap whose
  maps are cached gets its vectors in the same pass): the difference to the target line is the cost
  of writing the maps to disk.

Timing on a shared machine drifts by +-15% within seconds, so each round runs every side once (in a
rotated order) on the same images, a side's ratio is taken against the bare pass of the same round,
and the median over the rounds is reported with the range of the rounds.

Last line: ``overhead_ratio=<median ratio>`` of the target side, every tap pooled by every pooling
(target: at most 1.10).
"""
from __future__ import annotations

import argparse
import os
import statistics
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
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=15, help="rounds (every side once per round)")
    args = parser.parse_args()
    os.environ["INSTRET_PROGRESS"] = "0"  # no progress bars inside the timings

    backbone = load_backbone(args.backbone)
    dataset = subset(load_dataset("demo"), args.images)
    conv_taps = list(backbone.layers)
    print(f"{args.images} images at {args.image_size}px, {backbone.name} on {backbone.device.type}, "
          f"taps: {', '.join(conv_taps)}; {args.repeats} rounds")

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
        "bare": ("bare forward", bare),
        "last": (f"{last} pooled (5 poolings)", helpers_run([], [last])),
        "target": ("every tap pooled (5 poolings each)", helpers_run([], conv_taps)),
        "maps": ("every tap's map cached and pooled", helpers_run(conv_taps, conv_taps)),
    }
    bare()  # warm-up (allocator, kernels, file cache)
    helpers_run([], conv_taps)()  # and the compiled pooling
    names = list(sides)
    times = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            sides[name][1]()
            times[name].append(time.perf_counter() - start)
    ratios = {k: [t / b for t, b in zip(v, times["bare"])] for k, v in times.items()}
    for k, (label, _) in sides.items():
        line = f"{label:36s} {1000 * statistics.median(times[k]) / args.images:4.0f} ms/image"
        if k != "bare":
            line += (f"  ratio {statistics.median(ratios[k]):.3f} (rounds {min(ratios[k]):.2f}-"
                     f"{max(ratios[k]):.2f})")
        print(line)
    print(f"overhead_ratio={statistics.median(ratios['target']):.3f}")


if __name__ == "__main__":
    main()

"""Time the Normalized Cut clustering of one 32x32 conv map (paper 004), as the method uses it.

The "clusters" method cuts every image's last-conv map into 5 and 20 clusters (Sec. 4.1). This
script builds a real 32 x 32 x 1280 EfficientNet-Lite0 map (a 1024 x 1024 photograph), then times,
on 2 threads (the target machine has 2 CPU cores):

* ``ours``: ``helpers.clusters.activation_clusters(map, (5, 20), C)`` = per-image PCA (scikit-learn's
  ARPACK PCA of the sparse descriptors), eqs. (2)-(3) (torch distances), ONE eigen-decomposition of
  the normalised affinity (ARPACK, 20 vectors, BLAS on one thread) and scikit-learn's Yu-Shi
  ``discretize`` for 5 and for 20 clusters;
* ``sklearn``: the same PCA and affinity, then ``SpectralClustering(affinity="precomputed",
  assign_labels="discretize")`` run twice (5 and 20 clusters), the straightforward implementation;

and reports the agreement of the two (adjusted Rand index) and a breakdown of ours. The colour
clusters (5 more regions per image) are timed separately; they are not part of the target.

Usage: ``PYTHONPATH=. python benchmarks/ncut.py [--repeats 15] [--threads 2] [--components C]``.
Last line: ``ms_per_image=<median ms of ours for both cluster counts>`` (target: <= 50).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _real_map_32x32():
    """A 1280 x 32 x 32 last-conv map of a real photograph (skimage's astronaut at 1024 x 1024)."""
    import skimage.data
    import torch

    from helpers.backbones import load_backbone
    from helpers.images import resize_max_side

    backbone = load_backbone("efficientnet_lite0")
    img = resize_max_side(skimage.data.astronaut(), 1024, upsample=True)  # 512x512 -> 1024x1024
    with torch.no_grad():
        fmap = backbone.forward_taps(backbone.preprocess(img), [backbone.last_conv])[backbone.last_conv][0]
    fmap = fmap.float().cpu().numpy()
    if fmap.shape[1:] != (32, 32):
        raise RuntimeError(f"expected a 32x32 map, got {fmap.shape}")
    return fmap, img


def _timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times), result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", type=int, default=None,
                        help="C, PCA dimensions (Sec. 3.1); default: the method's C for EfficientNet-Lite0")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")

    import torch
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    import helpers.clusters as hc

    torch.set_num_threads(args.threads)
    fmap, img = _real_map_32x32()
    counts = (5, 20)
    C = args.components if args.components is not None else hc.default_n_components("efficientnet_lite0")
    with threadpool_limits(limits=args.threads):
        hc.activation_clusters(fmap, counts, C)  # warm-up (imports, allocations)

        cpu_start = time.process_time()
        ours_ms, ours = _timed(lambda: hc.activation_clusters(fmap, counts, C), args.repeats)
        cpu_ms = (time.process_time() - cpu_start) * 1000 / args.repeats

        def sklearn_both():
            S = hc.feature_similarity(fmap, C)
            return {k: SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="discretize",
                                          random_state=0).fit(S).labels_ for k in counts}

        ref_ms, ref = _timed(sklearn_both, max(3, args.repeats // 3))

        # breakdown of ours
        X = hc.local_descriptors(fmap)
        pca_ms, (F, var) = _timed(lambda: hc.pca_project(X, C), args.repeats)
        aff_ms, S = _timed(lambda: hc.similarity_from_distances(
            hc.weighted_distances(F, hc.variance_weights(var))), args.repeats)
        eig_ms, (_, emb) = _timed(lambda: hc.spectral_embedding(S, max(counts)), args.repeats)
        cut_ms, _ = _timed(lambda: hc.normalized_cut(S, counts), args.repeats)
        thumb = hc.colour_thumbnail(img, (32, 32))
        colour_ms, _ = _timed(lambda: hc.colour_clusters(thumb, 5), args.repeats)

    med = {name: float(np.median(t)) for name, t in
           dict(ours=ours_ms, sklearn=ref_ms, pca=pca_ms, affinity=aff_ms, eigen=eig_ms, cut=cut_ms,
                colour=colour_ms).items()}
    print(f"map {fmap.shape[1]}x{fmap.shape[2]}x{fmap.shape[0]}, C={C}, clusters {counts}, "
          f"{args.threads} threads, {args.repeats} repeats (median ms; min in brackets)")
    print(f"  sklearn SpectralClustering x2 : {med['sklearn']:7.1f} ({ref_ms.min():.1f})")
    print(f"  ours, shared eigenvectors     : {med['ours']:7.1f} ({ours_ms.min():.1f})")
    print(f"    PCA (C components)          : {med['pca']:7.1f}")
    print(f"    eqs. (2)-(3) affinity       : {med['affinity']:7.1f}")
    print(f"    20 eigenvectors             : {med['eigen']:7.1f}")
    print(f"    Ncut 5 + 20 (eigen + discretize, input checks): {med['cut']:7.1f}")
    print(f"  colour clusters (5, not in the target): {med['colour']:7.1f}")
    print(f"  ours, CPU time of this process (all threads): {cpu_ms:7.1f}")
    for k in counts:
        print(f"  agreement with sklearn, {k:2d} clusters: ARI = {adjusted_rand_score(ref[k], ours[k].ravel()):.3f}")
    print(f"speedup_vs_sklearn={med['sklearn'] / med['ours']:.2f} target_ratio={med['ours'] / 50.0:.2f}")
    print(f"ms_per_image={med['ours']:.1f}")


if __name__ == "__main__":
    main()

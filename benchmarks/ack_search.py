"""Benchmark: one ACK query against 100,000 codes (issue 3, paper 000 Table 1).

Builds random ACK codes (n=256 kernel indices out of the 1280 of efficientnet_lite0's ``conv_head``,
uint16) and times one query against all of them:

* the vectorised dosd search of :class:`helpers.ack.ACKIndex` (n table gathers over the whole
  database, exact integer sums),
* Algorithm 2 as printed (:func:`helpers.ack.dosd_reference`, two Python loops) on a subset of the
  database, scaled to the whole database,
* a float32 matrix-vector product over 100,000 vectors of 512 dimensions (the paper's float baseline).

Targets: at least 1000x faster than Algorithm 2; at most 2x the float32 product; codes at most a
quarter of the float vectors' memory. Timings are the best of ``--repeats`` runs (the vectorised
search and the float product are interleaved so that both see the same machine load).

Usage::

    python benchmarks/ack_search.py [--n-db 100000] [--n 256] [--threads 2]

The last lines are ``speedup_vs_algorithm2=<value>`` and ``time_vs_float512=<value>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-db", type=int, default=100_000, help="database codes (default 100,000)")
    parser.add_argument("--n", type=int, default=256, help="code length (default 256)")
    parser.add_argument("--n-kernels", type=int, default=1280, help="kernels of the layer (default 1280)")
    parser.add_argument("--float-dim", type=int, default=512, help="float vector dimension (default 512)")
    parser.add_argument("--reference-pairs", type=int, default=100,
                        help="database codes scored by Algorithm 2 (default 100)")
    parser.add_argument("--repeats", type=int, default=9, help="timing repeats, best kept (default 9)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and BLAS (default 2)")
    args = parser.parse_args(argv)
    if args.n_db < 1 or args.reference_pairs < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--n-db, --reference-pairs, --repeats and --threads must be positive")
    if not 1 <= args.n <= args.n_kernels:
        parser.error(f"need 1 <= --n <= --n-kernels, got n={args.n}, n_kernels={args.n_kernels}")

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from threadpoolctl import threadpool_limits

    from helpers.ack import search_timings

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        t = search_timings(n_db=args.n_db, n=args.n, n_kernels=args.n_kernels, float_dim=args.float_dim,
                           reference_pairs=min(args.reference_pairs, args.n_db), repeats=args.repeats)

    print(f"database: {t['n_db']:,} random codes, n={t['n']} of {t['n_kernels']} kernels (uint16); "
          f"{args.threads} thread(s)")
    print(f"vectorised dosd search:       {t['ack_dosd_ms']:10.2f} ms/query")
    print(f"vectorised Jaccard search:    {t['ack_jaccard_ms']:10.2f} ms/query")
    print(f"float32 {t['float_dim']}-d matrix product: {t['float_matmul_ms']:10.2f} ms/query")
    print(f"Algorithm 2 (Python loops):   {t['algorithm2_ms_per_image']:10.3f} ms/image on {args.reference_pairs} "
          f"images -> {t['algorithm2_ms'] / 1e3:,.1f} s/query (scaled)")
    print(f"paper (Table 1, n=256):            0.81 ms/image -> {0.81e-3 * t['n_db']:,.1f} s/query (scaled)")
    print(f"max |vectorised - Algorithm 2| on those images: {t['max_abs_diff_vs_algorithm2']:.2e}")
    print(f"memory: codes {t['codes_bytes'] / 1e6:.1f} MB, float vectors {t['float_bytes'] / 1e6:.1f} MB")
    print(f"memory_vs_float512={t['codes_bytes'] / t['float_bytes']:.4f}")
    print(f"speedup_vs_algorithm2={t['algorithm2_ms'] / t['ack_dosd_ms']:.1f}")
    print(f"time_vs_float512={t['ack_dosd_ms'] / t['float_matmul_ms']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

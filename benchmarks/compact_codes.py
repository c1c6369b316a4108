"""Benchmark: one query against 1,000,000 compact codes of 512 bytes each, against exact float32 search.

Times ONE query (top-100) over synthetic random codes of every kind of :mod:`helpers.compact`
(:func:`helpers.compact.query_times`): ACK (kernel indices of 1280, dosd, the inverted lists of
:class:`helpers.ack.ACKInvertedIndex`; n = 250 at 1 M items: the longest code whose lists, counts
included, fit 512 bytes per item), PQ (faiss ``IndexPQ``, 512 sub-quantisers of 8
bits over 512 dimensions), binary (faiss ``IndexBinaryFlat``, 4096 bits), float16 (faiss fp16
scalar quantiser, 256 dimensions) and int8 (512 dimensions), beside the exact float32 searches over
512-d vectors (numpy product + ``argpartition``, faiss ``IndexFlatIP``, torch ``mv`` + ``topk``).
Each round times every search once, in turn; a kind's ratio is taken against the fastest float32
search of the same round, and the median over rounds is printed.

Target: ACK at most 0.5x the float time, at a quarter of its memory or less.

Usage::

    python benchmarks/compact_codes.py [--quick] [--size 1000000] [--bytes 512] [--rounds 7] [--threads 2]

The last lines are ``<kind>_vs_float=<time ratio>`` and ``<kind>_bytes_vs_float=<memory ratio>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


#: kernels of EfficientNet-Lite0's last conv map, the layer chapter 02's codes come from
N_KERNELS = 1280


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="database items (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 items, 3 rounds")
    parser.add_argument("--bytes", type=int, default=512, help="bytes per item of the codes (default 512)")
    parser.add_argument("--dim", type=int, default=512, help="float32 dimensions (default 512)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds, median kept (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every library (default 2)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds = min(args.size, 100_000), min(args.rounds, 3)
    if min(args.size, args.bytes, args.dim, args.rounds, args.threads) < 1 or args.bytes % 2:
        parser.error("--size, --bytes, --dim, --rounds and --threads must be positive, --bytes even")

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import faiss
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from helpers.ack import ACKInvertedIndex
    from helpers.compact import FLOAT_REFERENCES, TIMED_KINDS, query_times

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    # ACK's inverted lists store their counts beside the postings: the code that fits the byte budget
    # with them is a few indices shorter than bytes / 2
    ack_n = ACKInvertedIndex.code_length_within(args.bytes, N_KERNELS, args.size)
    with threadpool_limits(limits=args.threads):
        (row,) = query_times(sizes=(args.size,), bytes_per_image=args.bytes, dim=args.dim, rounds=args.rounds,
                             n_kernels=N_KERNELS, ack_n=ack_n)

    ms, memory = row["ms"], row["bytes"]
    fastest = np.min([ms[name] for name in FLOAT_REFERENCES], axis=0)  # per round
    print(f"{args.size:,} items, {args.bytes} bytes per item (float32: {4 * args.dim}), one query, top-100, "
          f"{args.threads} thread(s), median of {args.rounds} rounds; ACK n = {ack_n} of {N_KERNELS} kernels "
          f"(the longest code whose inverted index fits {args.bytes} bytes per item)")
    for name in FLOAT_REFERENCES + TIMED_KINDS:
        ratio = np.median(np.asarray(ms[name]) / fastest)
        print(f"  {name:12s} {np.median(ms[name]):9.1f} ms  {ratio:6.2f}x fastest float32  "
              f"{memory[name] / 1e6:8.1f} MB")
    wins = [FLOAT_REFERENCES[i] for i in np.argmin([ms[name] for name in FLOAT_REFERENCES], axis=0)]
    print(f"fastest float32 per round: {', '.join(wins)}")
    float_bytes = memory[FLOAT_REFERENCES[0]]
    for name in TIMED_KINDS:
        print(f"{name}_vs_float={np.median(np.asarray(ms[name]) / fastest):.3f}")
    for name in TIMED_KINDS:
        print(f"{name}_bytes_vs_float={memory[name] / float_bytes:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

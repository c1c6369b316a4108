"""ACK: aggregating convolution kernels, and the dosd distance between kernel-index sequences.

Wang, Lai, Claesen, Yang, Lei, Liu, "A novel feature representation: Aggregating convolution
kernels for image retrieval", Neural Networks 130 (2020) (paper 000 in ``shared/papers``).

The pieces, in the order of the paper:

* **Brightening** (Sec. 3, Algorithm 1 step 3): every kernel (channel) ``c`` of a conv layer gets a
  brightness, the global pooling of its activation map (MAC, SPoC, R-MAC, CroW or GeM from
  :mod:`helpers.pooling`): :func:`kernel_brightness`.
* **The ACK code** (Algorithm 1 step 4): the indices of the ``n`` brightest kernels, brightest
  first, stored as unsigned 16-bit integers: :func:`ack_codes`. Kernels of equal brightness are
  ordered by a second statistic of their maps (:data:`TIE_BREAK`, the mean activation for all
  but SPoC brightening), then by index: with a bounded activation (ReLU6) many kernels share the
  same MAC, and ordering them by index would make the codes depend on how the kernels are
  numbered. :func:`map_codes` (from conv maps) and :func:`vector_codes` (from pooled vectors)
  apply it.
* **dosd** (Sec. 4, Algorithm 2): a position-sensitive similarity of two codes built from the
  matrices ``K`` (:func:`position_matrix_K`), ``W`` (:func:`rank_weights_W`) and the
  pseudo-Gaussian ``G`` (:func:`pseudo_gaussian_G`). :func:`dosd_reference` is Algorithm 2 as
  printed (two loops), :func:`dosd_closed_form` its simplified step 18, :func:`jaccard_similarity`
  the order-blind baseline of Fig. 5.
* **Search** (not in the paper, which says its "ordered-set operations were not accelerated",
  Sec. 5.4.2): :class:`ACKIndex` scores a batch of query codes against a whole database with one
  table lookup per (database image, position) in a compiled (numba) loop; exactly equal
  to :func:`dosd_reference` (integer arithmetic, one division at the end).
  :class:`ACKInvertedIndex` stores the same codes as inverted lists per (kernel, position) and
  reads only the lists of the query's kernels: faster for one query against a large database.
* :class:`ACKMethod`, registered as ``"ack"`` for ``python -m helpers evaluate --method ack``.

Reading of Algorithm 2 (the converted text is consistent once written out):

* ``k_ij = 1 - |i-j|/n``, ``w_i = 1 - i/n``, ``g_ij = k_ij w_i`` for positions ``i, j = 0..n-1``
  (``i`` indexes code ``A``, ``j`` code ``B``).
* When ``a_i == b_j`` the contribution is ``s = (n - |i-j|) g_ij = n k_ij^2 w_i``; the sum is
  divided by ``Sum_max = n(n+1)/2``, the sum for ``A == B`` (``s = n w_i = n - i`` on the
  diagonal). Hence step 18: ``dosd(A, B) = sum_{i: a_i = b_j} 2 w_i k_ij^2 / (n+1)`` in [0, 1].
* dosd is **not symmetric**: ``w_i`` weights the positions of ``A``. We always put the query in
  ``A`` and the database image in ``B`` ("the front elements of the index sequence should have
  higher weight" is read from the query's point of view).
* Codes are sequences of distinct kernel indices (a top-n of a ranking); every function here
  rejects codes with repeated entries, for which the double loop and step 18 would differ.
* ``n`` in Algorithm 1 step 1 is the number of channels, in Algorithm 2 the code length; we call
  the number of channels ``n_kernels`` (the paper's ``c``) and the code length ``n``.
"""
from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
import torch

from .methods import RetrievalMethod, register_method
from .pooling import POOLINGS, l2n_np, pool_all

__all__ = [
    "ACKIndex", "ACKInvertedIndex", "ACKMethod", "CODE_DTYPE", "DEFAULT_N", "KERNEL_COLORS", "TIE_BREAK", "ack_codes", "ack_scores",
    "maximise_kernel",
    "brightening_comparison", "check_codes", "code_length_sweep", "contribution_table", "dosd_closed_form", "dosd_reference",
    "dosd_scores", "draw_kernel_boxes", "explore_view", "histogram_similarity", "instance_overlap",
    "jaccard_scores", "jaccard_similarity", "kernel_brightness", "kernel_frequencies", "layer_vectors", "map_codes", "pca_scores", "position_matrix_K",
    "pseudo_gaussian_G", "random_codes", "rank_weights_W", "response_box", "search_timings",
    "sum_dtypes", "undefined_reason", "vector_codes", "visible_box",
]

#: dtype of stored codes: kernel indices of layers with up to 65,536 channels
CODE_DTYPE = np.uint16


# ---------------------------------------------------------------------------------- Algorithm 1
#: the statistic that orders kernels of equal brightness, per brightening pooling: the mean
#: activation (SPoC) of the kernel over the map; for SPoC brightening itself, the maximum (MAC)
TIE_BREAK = {"mac": "spoc", "spoc": "mac", "gem": "spoc", "rmac": "spoc", "crow": "spoc"}


def _check_brightening(brightening):
    if brightening not in POOLINGS:
        raise ValueError(f"unknown brightening pooling {brightening!r}; choose one of {', '.join(POOLINGS)}")
    return brightening


def _as_numpy(values):
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def kernel_brightness(fmap: torch.Tensor, pooling: str = "gem", **options) -> torch.Tensor:
    """Brightness of every kernel of a conv map (Algorithm 1 step 3): the global pooling
    ``pooling`` (``"mac"``, ``"spoc"``, ``"gem"``, ``"rmac"``, ``"crow"``) of each channel.

    ``fmap`` is ``[..., C, H, W]``; returns ``[..., C]``. Only the order of the values matters for
    the code, so no normalisation is applied.
    """
    return POOLINGS[_check_brightening(pooling)](fmap, **options)


def ack_codes(brightness, n: int, tie_break=None) -> np.ndarray:
    """ACK codes (Algorithm 1 step 4): indices of the ``n`` brightest kernels, brightest first.

    ``brightness`` is ``C`` values (one image) or ``N x C`` (one row per image), numpy or torch.
    Kernels of equal brightness are ordered by ``tie_break`` (the same shape, higher first; e.g. the
    kernels' mean activation, see :data:`TIE_BREAK`), and kernels equal in both by the lower
    index, so codes are deterministic. Returns ``n`` (or ``N x n``) :data:`CODE_DTYPE` indices.
    """
    b = _as_numpy(brightness)
    if b.ndim not in (1, 2) or b.shape[-1] == 0:
        raise ValueError(f"brightness must be C or N x C values, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.number) or not np.all(np.isfinite(b)):
        raise ValueError("brightness must be finite numbers")
    n_kernels = b.shape[-1]
    if n_kernels > np.iinfo(CODE_DTYPE).max + 1:
        raise ValueError(f"{n_kernels} kernels do not fit {np.dtype(CODE_DTYPE).name} codes")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_kernels:
        raise ValueError(f"n must be an integer in 1..{n_kernels} (the layer's kernels), got {n!r}")
    keys = [-b.astype(np.float64)]
    if tie_break is not None:
        t = _as_numpy(tie_break)
        if t.shape != b.shape:
            raise ValueError(f"tie_break must have the shape of brightness {b.shape}, got {t.shape}")
        if not np.issubdtype(t.dtype, np.number) or not np.all(np.isfinite(t)):
            raise ValueError("tie_break must be finite numbers")
        keys.insert(0, -t.astype(np.float64))
    # lexsort: the last key is the primary one; it is stable, so exact ties of all keys keep index order
    order = np.lexsort(keys, axis=-1)
    return np.ascontiguousarray(order[..., :n]).astype(CODE_DTYPE)


def map_codes(fmap, brightening: str, n: int) -> np.ndarray:
    """ACK codes of conv maps: one map ``C x H x W`` (returns ``n`` indices) or a batch
    ``N x C x H x W`` (``N x n``). Kernels are ranked by the ``brightening`` pooling (default
    parameters) and their ties broken by the :data:`TIE_BREAK` pooling of the same maps (see
    :func:`ack_codes`), both from :func:`helpers.pooling.pool_all`, which the feature cache uses
    too: its per-channel arithmetic does not depend on where a channel sits, so kernels with equal
    maps get exactly equal values (the vectorised sums of the torch R-MAC can differ in the last
    bit between channels, which would split a tie).
    """
    brightening = _check_brightening(brightening)
    fmap = torch.as_tensor(fmap)
    if fmap.ndim not in (3, 4):
        raise ValueError(f"fmap must be one map C x H x W or N x C x H x W maps, got shape {tuple(fmap.shape)}")
    pooled = [pool_all(m) for m in (fmap[None] if fmap.ndim == 3 else fmap)]
    keys = {p: torch.stack([v[p] for v in pooled]) for p in (brightening, TIE_BREAK[brightening])}
    codes = vector_codes(keys, brightening, n)
    return codes[0] if fmap.ndim == 3 else codes


def vector_codes(vectors, brightening: str, n: int) -> np.ndarray:
    """ACK codes from pooled vectors ``{pooling: N x C}`` as
    :func:`helpers.features.extract_vectors` returns them (l2-normalised: the normalisation does
    not reorder the kernels): ``vectors[brightening]`` ranks the kernels,
    ``vectors[TIE_BREAK[brightening]]`` breaks its ties (see :func:`ack_codes`)."""
    brightening = _check_brightening(brightening)
    missing = [p for p in (brightening, TIE_BREAK[brightening]) if p not in vectors]
    if missing:
        raise ValueError(f"vectors lack the pooling(s) {missing}: {brightening} brightening needs "
                         f"{brightening!r} and its tie-break {TIE_BREAK[brightening]!r} "
                         f"(extract_vectors(..., poolings=({brightening!r}, {TIE_BREAK[brightening]!r})))")
    return ack_codes(vectors[brightening], n, tie_break=vectors[TIE_BREAK[brightening]])


def kernel_frequencies(codes, n_kernels: int) -> np.ndarray:
    """How many of the codes contain each kernel index (Fig. 3): ``n_kernels`` counts."""
    codes = check_codes(codes, n_kernels, "codes")
    return np.bincount(codes.ravel().astype(np.int64), minlength=n_kernels)


# ---------------------------------------------------------------------------------- validation
def check_codes(codes, n_kernels: int | None = None, name: str = "codes") -> np.ndarray:
    """Validate codes and return them as a 2-D ``N x n`` :data:`CODE_DTYPE` array.

    A code must hold distinct, non-negative integer kernel indices below ``n_kernels`` (when
    given). A single code (1-D) becomes one row.
    """
    arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be one code (n,) or N codes (N, n) with n >= 1, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer kernel indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(CODE_DTYPE).max):
        raise ValueError(f"{name} must hold kernel indices in 0..{np.iinfo(CODE_DTYPE).max}")
    if n_kernels is not None and arr.size and arr.max() >= n_kernels:
        raise ValueError(f"{name} hold kernel index {int(arr.max())} >= n_kernels={n_kernels}")
    arr = np.ascontiguousarray(arr, dtype=CODE_DTYPE)
    if arr.shape[1] > 1:
        s = np.sort(arr, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if bad.size:
            raise ValueError(f"{name} row {int(bad[0])} repeats a kernel index; ACK codes are distinct indices")
    return arr


def _check_pair(a, b):
    a = check_codes(a, name="A")
    b = check_codes(b, name="B")
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError("dosd_reference / dosd_closed_form / jaccard_similarity compare two single codes")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"codes must have the same length n, got {a.shape[1]} and {b.shape[1]}")
    return a[0].astype(np.int64), b[0].astype(np.int64)


# ---------------------------------------------------------------------------------- Algorithm 2
def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def position_matrix_K(n: int) -> np.ndarray:
    """Algorithm 2 step 3: the symmetric ``n x n`` matrix ``k_ij = 1 - |i-j|/n``."""
    n = _check_n(n)
    i = np.arange(n)
    return 1.0 - np.abs(i[:, None] - i[None, :]) / n


def rank_weights_W(n: int) -> np.ndarray:
    """Algorithm 2 step 3: the weight sequence ``w_i = 1 - i/n = (n-i)/n``."""
    n = _check_n(n)
    return 1.0 - np.arange(n) / n


def pseudo_gaussian_G(n: int) -> np.ndarray:
    """Algorithm 2 step 4 (Fig. 4): ``g_ij = k_ij w_i = (1 - |i-j|/n)(n-i)/n``, row ``i`` of code A."""
    return position_matrix_K(n) * rank_weights_W(n)[:, None]


def dosd_reference(a, b, n_kernels: int | None = None) -> float:
    """dosd(A, B), Algorithm 2 as printed: build K, W, G; for every pair of positions ``(i, j)``
    with ``a_i == b_j`` add ``s = (n - |i-j|) G(i, j)`` (steps 6-16); divide by
    ``Sum_max = n(n+1)/2`` (steps 17-18). ``A`` is the query. O(n^2) Python loops: a reference,
    not a search.
    """
    a, b = _check_pair(a, b)
    if n_kernels is not None:
        check_codes(a, n_kernels, "A")
        check_codes(b, n_kernels, "B")
    n = len(a)
    G = pseudo_gaussian_G(n)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if a[i] == b[j]:
                s = (n - abs(i - j)) * G[i, j]
            else:
                s = 0.0
            total = total + s
    sum_max = n * (n + 1) / 2
    return total / sum_max


def dosd_closed_form(a, b) -> float:
    """dosd(A, B) by the simplified formula of Algorithm 2 step 18:
    ``sum_{i: exists j, a_i = b_j} 2 w_i k_ij^2 / (n + 1)``.
    """
    a, b = _check_pair(a, b)
    n = len(a)
    pos_in_b = {int(k): j for j, k in enumerate(b)}
    w = rank_weights_W(n)
    total = 0.0
    for i, k in enumerate(a):
        j = pos_in_b.get(int(k))
        if j is not None:
            total += 2.0 * w[i] * (1.0 - abs(i - j) / n) ** 2
    return total / (n + 1)


def jaccard_similarity(a, b) -> float:
    """Jaccard similarity ``|A ∩ B| / |A ∪ B|`` of the two codes as sets (positions ignored)."""
    a, b = _check_pair(a, b)
    inter = len(set(a.tolist()) & set(b.tolist()))
    return inter / (len(a) + len(b) - inter)


def contribution_table(n: int) -> np.ndarray:
    """Integer contributions ``S[i, j] = n^2 (n - |i-j|) G(i, j) = (n - |i-j|)^2 (n - i)``
    (int64, ``n x n``) and, by Algorithm 2, ``dosd = sum S / (n^2 Sum_max) = 2 sum S / (n^3 (n+1))``.

    Sums of these integers are exact, so the vectorised search equals the reference. The largest
    entry is ``S[0, 0] = n^3`` and the largest sum (``A == B``) ``n^3 (n+1) / 2``: see
    :func:`sum_dtypes` for the integer widths that hold them.
    """
    n = _check_n(n)
    i = np.arange(n, dtype=np.int64)
    return (n - np.abs(i[:, None] - i[None, :])) ** 2 * (n - i)[:, None]


def sum_dtypes(n: int) -> tuple[type, type]:
    """``(table dtype, accumulator dtype)`` that hold the contributions of codes of length ``n``
    exactly: uint32 while the largest entry ``n^3`` (``n <= 1625``) / the largest sum
    ``n^3 (n+1) / 2`` (``n <= 303``) stays below ``2^32``, else uint64 (exact for every ``n`` up to
    the 65,536 kernels that :data:`CODE_DTYPE` indexes: ``n^3 (n+1) / 2 < 2^64``). The narrow type
    halves the memory that the search streams, so short codes keep it."""
    n = _check_n(n)
    table = np.uint32 if n ** 3 < 2 ** 32 else np.uint64
    acc = np.uint32 if n ** 3 * (n + 1) // 2 < 2 ** 32 else np.uint64
    return table, acc


# ---------------------------------------------------------------------------------- search

#: database codes per block of the search kernel (one block per task; its accumulators stay in cache)
SEARCH_BLOCK = 4096

#: most bytes of query tables built at once (long codes of wide layers: 8 bytes x n x n_kernels each)
TABLE_BYTES = 256 * 2 ** 20


@numba.njit(parallel=True, nogil=True, cache=True)
def _lookup_sums_kernel(codes_by_position, tables, out):  # pragma: no cover - compiled
    """``out[m, d] += sum_j tables[m, j, codes_by_position[j, d]]`` (``out`` zeroed by the caller).

    Blocks of :data:`SEARCH_BLOCK` database codes are dealt out to numba's threads; inside a block
    four positions at a time gather from their table rows (``n_kernels`` entries each, in L1) for a
    contiguous run of codes, so the accumulators are read and written once per four lookups
    (measured: 1.7x faster than one position at a time). Integer sums: exact when ``out``'s dtype
    holds the sums and ``tables``' dtype the entries (:func:`sum_dtypes`; numba adds unsigned
    integers in 64 bits, so the partial sums of four uint32 entries do not wrap); compiled once
    per (table, accumulator) dtype pair.
    """
    n, size = codes_by_position.shape
    n_queries = tables.shape[0]
    n_blocks = (size + SEARCH_BLOCK - 1) // SEARCH_BLOCK
    for block in numba.prange(n_blocks):
        start = block * SEARCH_BLOCK
        stop = min(size, start + SEARCH_BLOCK)
        for m in range(n_queries):
            acc = out[m]
            j = 0
            while j + 4 <= n:
                c0, c1 = codes_by_position[j], codes_by_position[j + 1]
                c2, c3 = codes_by_position[j + 2], codes_by_position[j + 3]
                r0, r1, r2, r3 = tables[m, j], tables[m, j + 1], tables[m, j + 2], tables[m, j + 3]
                for d in range(start, stop):
                    acc[d] += (r0[c0[d]] + r1[c1[d]]) + (r2[c2[d]] + r3[c3[d]])
                j += 4
            while j < n:
                c0, r0 = codes_by_position[j], tables[m, j]
                for d in range(start, stop):
                    acc[d] += r0[c0[d]]
                j += 1


class _DosdSearch:
    """What both database layouts share: query checks, dosd / Jaccard from integer sums, top-k.
    A layout provides ``n``, ``n_kernels``, ``size``, ``_contrib``, ``_table_dtype``,
    ``_acc_dtype`` and ``_lookup_sums(query_codes, S_ext, query_chunk, acc_dtype)``."""

    def _queries(self, query_codes):
        q = check_codes(query_codes, self.n_kernels, "query_codes")
        if q.shape[1] != self.n:
            raise ValueError(f"query codes have length {q.shape[1]} but the database codes {self.n}")
        return q

    def dosd_sums(self, query_codes, query_chunk: int = 8) -> np.ndarray:
        """Integer sums ``n^2 Sum`` of Algorithm 2 for every (database image, query): ``N x Q``."""
        S_ext = np.vstack([self._contrib, np.zeros((1, self.n), self._table_dtype)])
        return self._lookup_sums(query_codes, S_ext, query_chunk, self._acc_dtype)

    def intersections(self, query_codes, query_chunk: int = 8) -> np.ndarray:
        """``|q ∩ d|`` for every (database image, query): ``N x Q`` integers (uint32: at most ``n``)."""
        S_ext = np.vstack([np.ones((self.n, self.n), np.uint32), np.zeros((1, self.n), np.uint32)])
        return self._lookup_sums(query_codes, S_ext, query_chunk, np.uint32)

    def dosd(self, query_codes, query_chunk: int = 8) -> np.ndarray:
        """dosd(query, database image) for every pair: ``N x Q`` float64 in [0, 1]."""
        sums = self.dosd_sums(query_codes, query_chunk)
        n = self.n
        return sums.astype(np.float64) / (n * n * (n * (n + 1) / 2))

    def jaccard(self, query_codes, query_chunk: int = 8) -> np.ndarray:
        """Jaccard similarity ``|q ∩ d| / |q ∪ d|`` of every (database image, query): ``N x Q``
        float64 (the same lookups as :meth:`dosd` with a table of ones)."""
        inter = self.intersections(query_codes, query_chunk).astype(np.float64)
        return inter / (2 * self.n - inter)

    def search(self, query_codes, k: int, query_chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` database images of highest dosd for every query: ``(scores, ids)``, both
        ``Q x k`` (float64 dosd, int64 ids), best first; equal sums in database order. Exact: the
        integer sums are ranked, and the selection (``np.argpartition``) keeps every image tied
        with the k-th before ordering."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.size:
            raise ValueError(f"k must be an integer in 1..{self.size} (the database size), got {k!r}")
        sums = self.dosd_sums(query_codes, query_chunk).T  # Q x N
        ids = _top_k_ids(sums, int(k))
        n = self.n
        return np.take_along_axis(sums, ids, 1).astype(np.float64) / (n * n * (n * (n + 1) / 2)), ids


def _top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` highest values of every row of ``scores`` (``Q x N``), highest first, equal
    values in index order."""
    rows = []
    for row in scores:
        if k < row.shape[0]:
            part = np.argpartition(row, row.shape[0] - k)[row.shape[0] - k:]
            kth = row[part].min()
            cand = np.flatnonzero(row >= kth)  # every image tied with the k-th, in index order
        else:
            cand = np.arange(row.shape[0])
        order = np.argsort(-row[cand].astype(np.float64), kind="stable")[:k]
        rows.append(cand[order])
    return np.asarray(rows, dtype=np.int64).reshape(scores.shape[0], k)


def _check_index_args(db_codes, n_kernels):
    if isinstance(n_kernels, bool) or not isinstance(n_kernels, (int, np.integer)) or n_kernels < 1:
        raise ValueError(f"n_kernels must be a positive integer, got {n_kernels!r}")
    if n_kernels > np.iinfo(CODE_DTYPE).max + 1:
        raise ValueError(f"n_kernels={n_kernels} does not fit {np.dtype(CODE_DTYPE).name} codes")
    return check_codes(db_codes, n_kernels, "db_codes")


def _search_threads():
    """One thread count for torch, BLAS and the compiled searches."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


@contextmanager
def _search_thread_count():
    """numba's threads set to :func:`_search_threads` for the duration, then restored."""
    previous = numba.get_num_threads()
    numba.set_num_threads(_search_threads())
    try:
        yield
    finally:
        numba.set_num_threads(previous)


class ACKIndex(_DosdSearch):
    """A database of ACK codes laid out for fast scoring.

    The codes are stored **position-major**: ``codes_by_position[j, d]`` is the kernel at position
    ``j`` of database code ``d`` (``n x N`` :data:`CODE_DTYPE`, exactly the memory of the codes:
    ``2 n`` bytes per image). For a query ``q`` we build a table ``T[j, k]`` = the integer
    contribution :func:`contribution_table` ``S[i, j]`` if kernel ``k`` sits at position ``i`` of
    ``q``, else 0 (``n x n_kernels``). Then

        ``dosd(q, d) = 2 / (n^3 (n+1)) * sum_j T[j, codes_by_position[j, d]]``

    i.e. one table lookup per (position, database image), done by a compiled loop
    (:func:`_lookup_sums_kernel`, numba, blocks of the database on every core; its speed against the
    float product and the alternatives measured is in ``benchmarks/README.md``). Tables and sums are
    integers of the width :func:`sum_dtypes` picks from ``n`` (uint32 for short codes, uint64 for
    long ones), hence exactly :func:`dosd_reference` for every code length. For one query against a
    large database :class:`ACKInvertedIndex` is faster (it skips the kernels absent from the query).
    """

    def __init__(self, db_codes, n_kernels: int):
        codes = _check_index_args(db_codes, n_kernels)
        self.n_kernels = int(n_kernels)
        self.n = codes.shape[1]
        self.size = codes.shape[0]
        self.codes_by_position = np.ascontiguousarray(codes.T)
        self._table_dtype, self._acc_dtype = sum_dtypes(self.n)
        self._contrib = contribution_table(self.n).astype(self._table_dtype)

    @property
    def nbytes(self) -> int:
        """Memory of the stored codes in bytes (``2 n`` per database image)."""
        return self.codes_by_position.nbytes

    @property
    def codes(self) -> np.ndarray:
        """The database codes, ``N x n``."""
        return self.codes_by_position.T

    def _rank_maps(self, q: np.ndarray) -> np.ndarray:
        """``R[k, m]`` = position of kernel ``k`` in query ``m``, or ``n`` when absent."""
        R = np.full((self.n_kernels, q.shape[0]), self.n, dtype=np.intp)
        R[q.astype(np.intp), np.arange(q.shape[0])[:, None]] = np.arange(self.n)[None, :]
        return R

    def _lookup_sums(self, query_codes, S_ext: np.ndarray, query_chunk: int, acc_dtype) -> np.ndarray:
        """``sum_j S_ext[rank_q(d_j), j]`` for every (database code d, query q), ``N x Q`` of
        ``acc_dtype``, where ``rank_q(k)`` is the position of kernel ``k`` in ``q`` or ``n`` (row
        ``n`` of ``S_ext`` is zero: a kernel absent from the query contributes nothing).

        At most ``query_chunk`` queries share one pass over the database; fewer when their tables
        (``n x n_kernels`` entries each) would exceed :data:`TABLE_BYTES`."""
        q = self._queries(query_codes)
        query_chunk = _check_chunk(query_chunk)
        table_bytes = self.n * self.n_kernels * S_ext.itemsize
        query_chunk = max(1, min(query_chunk, TABLE_BYTES // table_bytes))
        out = np.zeros((q.shape[0], self.size), dtype=acc_dtype)
        with _search_thread_count():
            for start in range(0, q.shape[0], query_chunk):
                chunk = q[start:start + query_chunk]
                # tables[m, j, k] = S_ext[rank of kernel k in query m, j]
                tables = np.ascontiguousarray(S_ext[self._rank_maps(chunk).T].transpose(0, 2, 1))
                _lookup_sums_kernel(self.codes_by_position, tables, out[start:start + chunk.shape[0]])
        return out.T


def _check_chunk(query_chunk):
    if isinstance(query_chunk, bool) or not isinstance(query_chunk, (int, np.integer)) or query_chunk < 1:
        raise ValueError(f"query_chunk must be a positive integer, got {query_chunk!r}")
    return int(query_chunk)


#: database codes per block of :class:`ACKInvertedIndex`: the most whose offsets fit uint16 (the
#: postings and the per-position counts); a block's uint32 sums (256 KB) stay in L2 while its
#: postings are added up
INVERTED_BLOCK = 2 ** 16 - 1


@numba.njit(parallel=True, cache=True)
def _invert_kernel(codes, block, postings, counts, starts):  # pragma: no cover - compiled
    """Fill the inverted lists of :class:`ACKInvertedIndex` (see there) from ``N x n`` codes."""
    size, n = codes.shape
    n_blocks, n_kernels = starts.shape
    for b in numba.prange(n_blocks):
        lo = b * block
        hi = min(size, lo + block)
        count = np.zeros(n_kernels * n, np.int64)
        for d in range(lo, hi):
            for j in range(n):
                count[np.int64(codes[d, j]) * n + j] += 1
        where = np.empty(n_kernels * n, np.int64)
        run = 0
        for k in range(n_kernels):
            starts[b, k] = run
            for j in range(n):
                where[k * n + j] = lo * n + run
                counts[b, k, j] = count[k * n + j]
                run += count[k * n + j]
        for d in range(lo, hi):  # d ascending: every list is in database order
            for j in range(n):
                key = np.int64(codes[d, j]) * n + j
                postings[where[key]] = d - lo
                where[key] += 1


@numba.njit(parallel=True, nogil=True, cache=True)
def _inverted_sums_kernel(postings, counts, starts, block, queries, S, out):  # pragma: no cover - compiled
    """``out[m, d] += S[i, j]`` for every query position ``i`` and database position ``j`` where
    query ``m`` and code ``d`` hold the same kernel (``out`` zeroed by the caller). Blocks of
    :data:`INVERTED_BLOCK` codes are dealt out to numba's threads; a block's sums stay in L2 while
    the lists of the query's kernels are read. Integer sums: exact when ``out``'s dtype holds them
    (:func:`sum_dtypes`)."""
    n_queries, n = queries.shape
    n_blocks = starts.shape[0]
    size = out.shape[1]
    for b in numba.prange(n_blocks):
        lo = b * block
        base = np.int64(lo) * n
        for m in range(n_queries):
            acc = out[m, lo:min(size, lo + block)]
            for i in range(n):
                k = queries[m, i]
                p = base + starts[b, k]
                for j in range(n):
                    c = np.int64(counts[b, k, j])
                    s = S[i, j]
                    for t in range(p, p + c):
                        acc[postings[t]] += s
                    p += c


class ACKInvertedIndex(_DosdSearch):
    """ACK codes stored as inverted lists, for one query (or a few) against a large database.

    Per block of :data:`INVERTED_BLOCK` codes, ``postings`` holds for every (kernel ``k``,
    position ``j``) the codes of the block with ``k`` at position ``j`` (uint16 offsets in the
    block, in database order), ``counts[b, k, j]`` their number (uint16) and ``starts[b, k]``
    where kernel ``k``'s lists begin (uint32). A query with kernel ``k`` at position ``i`` adds
    ``S[i, j]`` (:func:`contribution_table`) to the sums of the codes in list ``(k, j)``:
    the lists of the ``n_kernels - n`` kernels absent from the query are never read, so a query
    reads about ``n / n_kernels`` of the postings (random codes: 256/1280 = 20%) where
    :class:`ACKIndex` makes ``n`` table look-ups per code. The postings take the codes' own
    memory (``2 n`` bytes per image); the counts add ``2 n n_kernels`` bytes per block (10 bytes
    per image for n = 256 of 1280 kernels in full blocks, more for databases much smaller than a
    block). Sums are integers (:func:`sum_dtypes`): exactly :func:`dosd_reference`.
    """

    def __init__(self, db_codes, n_kernels: int):
        codes = _check_index_args(db_codes, n_kernels)
        self.n_kernels = int(n_kernels)
        self.size, self.n = codes.shape
        n_blocks = max(1, -(-self.size // INVERTED_BLOCK))
        self.postings = np.empty(self.size * self.n, dtype=np.uint16)
        self.counts = np.empty((n_blocks, self.n_kernels, self.n), dtype=np.uint16)
        self.starts = np.empty((n_blocks, self.n_kernels), dtype=np.uint32)
        if self.size:
            _invert_kernel(codes, INVERTED_BLOCK, self.postings, self.counts, self.starts)
        self._table_dtype, self._acc_dtype = sum_dtypes(self.n)
        self._contrib = contribution_table(self.n).astype(self._table_dtype)

    @property
    def nbytes(self) -> int:
        """Memory of the stored lists in bytes: postings, counts and list starts."""
        return self.postings.nbytes + self.counts.nbytes + self.starts.nbytes

    @staticmethod
    def stored_bytes(size: int, n: int, n_kernels: int) -> int:
        """:attr:`nbytes` of an index of ``size`` codes of length ``n`` (without building it)."""
        n_blocks = max(1, -(-int(size) // INVERTED_BLOCK))
        return 2 * int(size) * int(n) + n_blocks * int(n_kernels) * (2 * int(n) + 4)

    @classmethod
    def code_length_within(cls, bytes_per_image: int, n_kernels: int, size: int) -> int:
        """The longest code whose index of ``size`` codes stores at most ``bytes_per_image`` bytes per
        code, its list counts and starts included (1 M codes, 1280 kernels, 512 bytes: n = 250)."""
        fits = [n for n in range(1, int(n_kernels) + 1)
                if cls.stored_bytes(size, n, n_kernels) <= int(bytes_per_image) * int(size)]
        if not fits:
            raise ValueError(f"no ACK code of {n_kernels} kernels fits {bytes_per_image} bytes per image in an "
                             f"inverted index of {size} codes")
        return fits[-1]

    @property
    def codes(self) -> np.ndarray:
        """The database codes, ``N x n``, rebuilt from the lists."""
        codes = np.empty((self.size, self.n), dtype=CODE_DTYPE)
        p = 0
        for b in range(self.starts.shape[0]):
            lo = b * INVERTED_BLOCK
            for k in range(self.n_kernels):
                for j in range(self.n):
                    c = int(self.counts[b, k, j])
                    codes[lo + self.postings[p:p + c].astype(np.int64), j] = k
                    p += c
        return codes

    def _lookup_sums(self, query_codes, S_ext: np.ndarray, query_chunk: int, acc_dtype) -> np.ndarray:
        """``N x Q`` sums of ``S_ext[i, j]`` over the matches ``q_i == d_j`` (row ``n`` of
        ``S_ext``, for absent kernels, is not needed here). ``query_chunk`` queries share one pass
        over the blocks."""
        q = self._queries(query_codes)
        query_chunk = _check_chunk(query_chunk)
        S = np.ascontiguousarray(S_ext[:self.n].astype(acc_dtype))
        out = np.zeros((q.shape[0], self.size), dtype=acc_dtype)
        with _search_thread_count():
            for start in range(0, q.shape[0], query_chunk):
                chunk = q[start:start + query_chunk]
                _inverted_sums_kernel(self.postings, self.counts, self.starts, INVERTED_BLOCK, chunk, S,
                                      out[start:start + chunk.shape[0]])
        return out.T


def _infer_kernels(*codes) -> int:
    return int(max(int(np.asarray(c).max()) for c in codes)) + 1


def dosd_scores(query_codes, db_codes, n_kernels: int | None = None) -> np.ndarray:
    """dosd of every query code against every database code, ``N_db x N_q`` (see :class:`ACKIndex`).

    ``n_kernels`` defaults to the largest index present + 1 (it only sizes the lookup tables).
    """
    n_kernels = n_kernels if n_kernels is not None else _infer_kernels(query_codes, db_codes)
    return ACKIndex(db_codes, n_kernels).dosd(query_codes)


def jaccard_scores(query_codes, db_codes, n_kernels: int | None = None) -> np.ndarray:
    """Jaccard similarity of every query code against every database code, ``N_db x N_q``."""
    n_kernels = n_kernels if n_kernels is not None else _infer_kernels(query_codes, db_codes)
    return ACKIndex(db_codes, n_kernels).jaccard(query_codes)


def undefined_reason(metric: str, n: int, n_kernels: int) -> str | None:
    """Why ``metric`` cannot rank codes of length ``n`` of a layer of ``n_kernels`` kernels, or
    ``None`` when it can. Jaccard is undefined at ``n == n_kernels``: every code holds every
    kernel, so every pair scores 1 and a ranking by it is the database order. dosd stays defined
    (the codes still differ in their order)."""
    if metric not in ("dosd", "jaccard"):
        raise ValueError(f"unknown metric {metric!r}; choose 'dosd' or 'jaccard'")
    if metric == "jaccard" and n == n_kernels:
        return "undefined: every code holds every kernel"
    return None


def ack_scores(query_codes, db_codes, n_kernels: int, metric: str = "dosd") -> np.ndarray:
    """Scores ``N_db x N_q`` of ACK codes by ``metric`` (``"dosd"`` or ``"jaccard"``)."""
    if metric not in ("dosd", "jaccard"):
        raise ValueError(f"unknown metric {metric!r}; choose 'dosd' or 'jaccard'")
    index = ACKIndex(db_codes, n_kernels)
    return index.dosd(query_codes) if metric == "dosd" else index.jaccard(query_codes)


# ---------------------------------------------------------------------------------- analysis
def response_box(amap, image_hw, rel_threshold: float = 0.5) -> list[float]:
    """Box ``[x1, y1, x2, y2]`` (image pixels) around a kernel's strongest response (Fig. 1): the
    connected region of map cells holding the maximum where the activation is at least
    ``rel_threshold`` times the maximum, scaled from the ``h x w`` map to the ``H x W`` image."""
    from skimage.measure import label

    a = amap.detach().cpu().numpy() if isinstance(amap, torch.Tensor) else np.asarray(amap, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"amap must be a 2-D activation map, got shape {a.shape}")
    if not 0.0 < rel_threshold <= 1.0:
        raise ValueError(f"rel_threshold must be in (0, 1], got {rel_threshold}")
    H, W = image_hw
    peak = np.unravel_index(int(np.argmax(a)), a.shape)
    top = a[peak]
    mask = a >= rel_threshold * top if top > 0 else a >= top
    regions = label(mask, connectivity=2)
    ys, xs = np.nonzero(regions == regions[peak])
    h, w = a.shape
    return [xs.min() * W / w, ys.min() * H / h, (xs.max() + 1) * W / w, (ys.max() + 1) * H / h]


def visible_box(box, image_hw, inset: float = 4.0) -> list[float]:
    """``box`` clipped to the image and moved ``inset`` pixels inside its frame, so that a box as
    large as the image (a kernel firing everywhere) stays visible when drawn."""
    H, W = image_hw
    if inset < 0 or 2 * inset >= min(H, W):
        raise ValueError(f"inset must lie in [0, {min(H, W) / 2}) for an image of {W} x {H}, got {inset}")
    x1, y1, x2, y2 = (float(v) for v in box)
    return [min(max(x1, inset), W - inset), min(max(y1, inset), H - inset),
            max(min(x2, W - inset), inset), max(min(y2, H - inset), inset)]


#: colours of the boxes of the brightest kernels (Fig. 1, :func:`explore_view`): distinct on photos
KERNEL_COLORS = ("yellow", "magenta", "cyan", "lime", "orange")


def draw_kernel_boxes(ax, boxes, colors, labels, image_hw, inset: float = 4.0):
    """Fig. 1: the response boxes of some kernels on the image ``ax`` shows, each in its colour and
    inset by ``inset`` pixels (:func:`visible_box`), named in a legend (labels written on the boxes
    would cover each other where boxes share a corner). Box ``k`` is shrunk by ``k`` steps of 1.5 %
    of the image side, so that kernels firing on the same region draw nested boxes, none hidden."""
    from matplotlib.patches import Patch

    from .viz import draw_boxes

    step = 0.015 * max(image_hw)
    drawn = []
    for k, (x1, y1, x2, y2) in enumerate(visible_box(b, image_hw, inset) for b in boxes):
        d = min(k * step, (x2 - x1) / 4, (y2 - y1) / 4)
        drawn.append([x1 + d, y1 + d, x2 - d, y2 - d])
    draw_boxes(ax, drawn, list(colors), linewidth=2.5)
    ax.legend(handles=[Patch(facecolor="none", edgecolor=c, linewidth=2.5, label=str(l)) for c, l in zip(colors, labels)],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=len(labels), fontsize=9, frameon=False)
    return ax


def instance_overlap(query_codes, db_codes, gnd, n_kernels: int) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 3 per query: the mean share (percent) of the query's code found in the codes of the
    images of its instance (``gnd[q]`` "easy" and "hard"), and in those of the other database images
    (neither positive nor "junk"). Two arrays of one value per query (NaN where a group is empty)."""
    q = check_codes(query_codes, n_kernels, "query_codes")
    shared = ACKIndex(db_codes, n_kernels).intersections(q).astype(np.float64) * (100.0 / q.shape[1])
    if len(gnd) != q.shape[0]:
        raise ValueError(f"gnd has {len(gnd)} entries for {q.shape[0]} query codes")
    same, other = np.full(q.shape[0], np.nan), np.full(q.shape[0], np.nan)
    for i, entry in enumerate(gnd):
        positive = np.zeros(shared.shape[0], bool)
        positive[list(entry.get("easy", [])) + list(entry.get("hard", []))] = True
        rest = ~positive
        rest[list(entry.get("junk", []))] = False
        if positive.any():
            same[i] = shared[positive, i].mean()
        if rest.any():
            other[i] = shared[rest, i].mean()
    return same, other


def explore_view(dataset, backbone, image_size: int, query: int = 0, layer: str = "last_conv",
                 brightening: str = "gem", n: int | None = None, top: int = 5, box_kernels: int = 3):
    """The chapter's explorer: query ``query`` (as the search sees it) with the boxes of its
    ``box_kernels`` brightest kernels (:func:`draw_kernel_boxes`), then the ``top`` database images
    with the highest dosd (green: positive, red: negative, grey: junk) for codes of ``n`` kernels
    (None: :data:`DEFAULT_N`; at most the layer's kernels). Returns the figure."""
    import matplotlib.pyplot as plt

    from . import features, viz
    from .images import load_image

    layer = backbone.resolve(layer)
    C = backbone.channels(layer)
    n = min(DEFAULT_N if n is None else int(n), C)
    qmap = features.extract_maps(dataset, backbone, [layer], image_size, "query")[layer][query]
    qimg = features.load_split_image(dataset, "query", query, image_size)
    kernels = map_codes(qmap, brightening, box_kernels)
    poolings = (brightening, TIE_BREAK[_check_brightening(brightening)])
    vq = features.extract_vectors(dataset, backbone, layer, image_size, "query", poolings)
    vd = features.extract_vectors(dataset, backbone, layer, image_size, "db", poolings)
    qcode = vector_codes({p: v[query:query + 1] for p, v in vq.items()}, brightening, n)
    scores = ack_scores(qcode, vector_codes(vd, brightening, n), C)[:, 0]
    ranked = np.argsort(-scores, kind="stable")[:top]
    fig, axes = plt.subplots(1, top + 2, figsize=(13, 2.8), gridspec_kw={"width_ratios": [1.2, 0.05] + [1] * top})
    axes[1].axis("off")
    viz.result_strip([axes[0]] + list(axes[2:]), qimg, [load_image(dataset.db_path(d), 256) for d in ranked],
                     [viz.relevance_of(dataset.gnd[query], d) for d in ranked],
                     query_title=f"query {query}: top-{box_kernels} kernels",
                     titles=[f"db {d}, dosd {scores[d]:.3f}" for d in ranked])
    draw_kernel_boxes(axes[0], [response_box(qmap[k], qimg.shape[:2], rel_threshold=0.7) for k in kernels],
                      KERNEL_COLORS[:box_kernels], [f"#{k}" for k in kernels], qimg.shape[:2])
    fig.suptitle(f"{layer}, {brightening} brightening, n={n}: top-{top} by dosd", y=1.02)
    return fig


def histogram_similarity(counts_a, counts_b) -> float:
    """Cosine similarity of two kernel-frequency histograms (Fig. 3): 1 = same kernels, equally often."""
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"histograms must be 1-D of the same length, got {a.shape} and {b.shape}")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def pca_scores(train_vectors, query_vectors, db_vectors, dim: int) -> np.ndarray:
    """The float baseline of Table 2: vectors projected on the first ``dim`` principal components
    learned on ``train_vectors`` (plain PCA, no whitening, Sec. 5.3), l2-normalised, cosine
    similarity ``N_db x N_q``."""
    from sklearn.decomposition import PCA

    train = np.asarray(train_vectors, dtype=np.float64)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if dim > min(train.shape[0] - 1, train.shape[1]):
        raise ValueError(f"PCA to {dim} dimensions needs more than {dim} training vectors of at least "
                         f"{dim} dimensions, got {train.shape}")
    pca = PCA(n_components=dim, svd_solver="full").fit(train)

    def project(X):
        return l2n_np(pca.transform(np.asarray(X, dtype=np.float64)))

    return project(db_vectors) @ project(query_vectors).T


def layer_vectors(dataset, backbone, layers, image_size: int, split: str, poolings=("gem", "spoc")) -> dict:
    """Pooled vectors ``{layer: {pooling: N x C}}`` of several conv layers, as
    :func:`helpers.features.extract_vectors` returns them, with ONE backbone pass for all the layers
    not cached yet (:func:`helpers.features.prefetch`). The default poolings are what
    :func:`vector_codes` needs for GeM brightening."""
    from . import features

    layers = [backbone.resolve(layer) for layer in layers]
    features.prefetch(dataset, backbone, image_size, split, vector_layers=layers)
    return {layer: features.extract_vectors(dataset, backbone, layer, image_size, split, tuple(poolings))
            for layer in layers}


def code_length_sweep(query_vectors, db_vectors, brightening: str, n_values, n_kernels: int, measure,
                      metrics=("dosd", "jaccard")) -> dict:
    """Fig. 5: a retrieval measure of ACK codes for every code length ``n`` and metric.

    ``query_vectors`` / ``db_vectors`` are pooled vectors ``{pooling: N x C}`` (see
    :func:`vector_codes`: ``brightening`` and its :data:`TIE_BREAK` pooling); ``measure(scores)``
    turns an ``N_db x N_q`` score matrix into one number (e.g. the mAP of
    :func:`helpers.evaluate.evaluate_scores`) or one array (e.g. the per-query APs behind it, for
    paired comparisons), kept as an array. Returns ``{"n": [...], metric: [value per n],
    "undefined": {metric: {n: reason}}}``; where :func:`undefined_reason` gives a reason the value
    is NaN and the scores are not computed.
    """
    n_values = [int(n) for n in n_values]
    bad = [n for n in n_values if not 1 <= n <= n_kernels]
    if bad:
        raise ValueError(f"n_values must lie in 1..{n_kernels} (the layer's kernels), got {bad}")
    for metric in metrics:
        undefined_reason(metric, 1, n_kernels)  # validates the metric names
    result = {"n": n_values, "undefined": {metric: {} for metric in metrics}}
    result.update({metric: [] for metric in metrics})
    for n in n_values:
        qc = vector_codes(query_vectors, brightening, n)
        dc = vector_codes(db_vectors, brightening, n)
        index = ACKIndex(dc, n_kernels)
        for metric in metrics:
            reason = undefined_reason(metric, n, n_kernels)
            if reason is not None:
                result["undefined"][metric][n] = reason
                result[metric].append(float("nan"))
            else:
                scores = index.dosd(qc) if metric == "dosd" else index.jaccard(qc)
                value = measure(scores)
                result[metric].append(float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64))
    return result


def brightening_comparison(query_vectors, db_vectors, n: int, n_kernels: int, measure, poolings=POOLINGS) -> dict:
    """Tables 3 and 4: for every pooling, its float vector (cosine) beside the ACK code of length
    ``n`` it brightens (dosd). ``query_vectors`` / ``db_vectors`` and ``measure`` are as for
    :func:`code_length_sweep`. Returns ``{pooling: {"float": value, "ack": value}}``."""
    out = {}
    for pooling in poolings:
        _check_brightening(pooling)
        value = measure(np.asarray(db_vectors[pooling]) @ np.asarray(query_vectors[pooling]).T)
        out[pooling] = {
            "float": float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64),
            "ack": code_length_sweep(query_vectors, db_vectors, pooling, [n], n_kernels, measure,
                                     metrics=("dosd",))["dosd"][0]}
    return out


def random_codes(n_codes: int, n: int, n_kernels: int, seed: int = 0, chunk: int = 8192) -> np.ndarray:
    """``n_codes`` random ACK-like codes (distinct kernel indices in random order), ``N x n`` uint16."""
    if not 1 <= n <= n_kernels:
        raise ValueError(f"need 1 <= n <= n_kernels, got n={n}, n_kernels={n_kernels}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_codes, n), dtype=CODE_DTYPE)
    base = np.arange(n_kernels, dtype=CODE_DTYPE)
    for start in range(0, n_codes, chunk):
        rows = min(chunk, n_codes - start)
        out[start:start + rows] = rng.permuted(np.tile(base, (rows, 1)), axis=1)[:, :n]
    return out


def search_timings(n_db: int = 100_000, n: int = 256, n_kernels: int = 1280, float_dim: int = 512,
                   reference_pairs: int = 50, repeats: int = 5, seed: int = 0) -> dict:
    """Time one query against ``n_db`` random codes (Table 1 and ``benchmarks/ack_search.py``).

    Returns milliseconds per query (best of ``repeats``) for the vectorised dosd search
    (:class:`ACKIndex`, table building included), the Jaccard search, a float32 matrix-vector
    product over ``n_db x float_dim`` vectors, and Algorithm 2 (:func:`dosd_reference`) timed on
    ``reference_pairs`` database codes and scaled to ``n_db``; plus the memory of the codes and of
    the float vectors in bytes. The vectorised scores are checked against Algorithm 2 on those pairs.
    """
    import time

    codes = random_codes(n_db + 1, n, n_kernels, seed)
    query, db = codes[0], codes[1:]
    index = ACKIndex(db, n_kernels)
    rng = np.random.default_rng(seed + 1)
    vectors = rng.standard_normal((n_db, float_dim), dtype=np.float32)
    qvec = rng.standard_normal(float_dim, dtype=np.float32)

    def best(fn, r=repeats):
        # BLAS / OpenMP worker threads keep spinning for a while after their last call and slow down
        # whatever runs next: let the previous side's threads settle so that each side is timed on
        # its own cost.
        time.sleep(0.25)
        fn()
        times = []
        for _ in range(r):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * min(times)

    t_float = best(lambda: vectors @ qvec)
    t_dosd = best(lambda: index.dosd(query))
    t_float = min(t_float, best(lambda: vectors @ qvec))  # interleaved: both see the same load
    t_jacc = best(lambda: index.jaccard(query))
    pairs = np.linspace(0, n_db - 1, reference_pairs).astype(int)
    t0 = time.perf_counter()
    reference = [dosd_reference(query, db[d]) for d in pairs]
    t_ref_per_image = 1e3 * (time.perf_counter() - t0) / len(pairs)
    max_diff = float(np.max(np.abs(index.dosd(query)[pairs, 0] - reference)))
    return {"n_db": n_db, "n": n, "n_kernels": n_kernels, "float_dim": float_dim,
            "ack_dosd_ms": t_dosd, "ack_jaccard_ms": t_jacc, "float_matmul_ms": t_float,
            "algorithm2_ms_per_image": t_ref_per_image, "algorithm2_ms": t_ref_per_image * n_db,
            "codes_bytes": index.nbytes, "float_bytes": vectors.nbytes, "max_abs_diff_vs_algorithm2": max_diff}


# ---------------------------------------------------------------------------------- method
#: default code length for the efficientnet_lite0 ``conv_head`` (1280 kernels); see ACKMethod
DEFAULT_N = 256


@register_method("ack")
class ACKMethod(RetrievalMethod):
    """ACK codes of one conv layer compared with dosd (or Jaccard).

    Options:

    * ``brightening``: the pooling that measures each kernel's brightness, default ``"gem"`` (the
      best in the paper's Table 3); kernels of equal brightness are ordered by the
      :data:`TIE_BREAK` pooling (see :func:`ack_codes`).
    * ``n``: the code length, default :data:`DEFAULT_N` = 256 (or the layer's channels if fewer).
      For efficientnet_lite0's ``conv_head`` (1280 kernels) the demo mAP with dosd rises steeply
      up to n=256 and slowly after it (a few points up to n=1280, Fig. 5 of the notebook) at 2-5x
      the memory and search time; 256 is also the paper's best length (Table 1) and 512 bytes per
      image, a quarter of a 512-d float32 vector.
    * ``layer``: the conv tap whose kernels are ranked (default the last conv map).
    * ``metric``: ``"dosd"`` (Algorithm 2, default) or ``"jaccard"``.

    No whitening, no training (Sec. 5.3).
    """

    def __init__(self, backbone, image_size, brightening: str = "gem", n: int | None = None,
                 layer: str = "last_conv", metric: str = "dosd"):
        super().__init__(backbone, image_size)
        if brightening not in POOLINGS:
            raise ValueError(f"unknown brightening {brightening!r}; choose one of {', '.join(POOLINGS)}")
        if metric not in ("dosd", "jaccard"):
            raise ValueError(f"unknown metric {metric!r}; choose 'dosd' or 'jaccard'")
        self.layer = backbone.resolve(layer)
        if backbone.is_vector(self.layer):
            raise ValueError(f"ACK ranks the kernels of a conv layer; {self.layer!r} is not one "
                             f"(choose one of {backbone.layers})")
        self.layers = (self.layer,)
        self.n_kernels = backbone.channels(self.layer)
        if n is None:
            n = min(DEFAULT_N, self.n_kernels)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if n > self.n_kernels:
            raise ValueError(f"n={n} exceeds the {self.n_kernels} kernels of layer {self.layer!r}")
        reason = undefined_reason(metric, int(n), self.n_kernels)
        if reason is not None:
            raise ValueError(f"metric={metric!r} with n={n} = the {self.n_kernels} kernels of layer "
                             f"{self.layer!r} is {reason}; choose n < {self.n_kernels} or metric='dosd'")
        self.n = int(n)
        self.brightening = brightening
        self.metric = metric

    def brightness(self, dataset, split) -> dict:
        """The kernels' brightness and tie-break statistic, ``{pooling: N x C}`` (the cached
        l2-normalised pooled vectors: the normalisation does not reorder the kernels)."""
        from .features import extract_vectors

        return extract_vectors(dataset, self.backbone, self.layer, self.image_size, split,
                               (self.brightening, TIE_BREAK[self.brightening]))

    def describe(self, dataset, split):
        """ACK codes of the split, ``N x n`` uint16 (:func:`vector_codes`)."""
        return vector_codes(self.brightness(dataset, split), self.brightening, self.n)

    def score(self, query_desc, db_desc):
        return ack_scores(query_desc, db_desc, self.n_kernels, self.metric)


# ------------------------------------------------------------------ Fig. 7: what a kernel responds to


def maximise_kernel(backbone, layer: str, kernel: int, size: int = 96, steps: int = 40, lr: float = 0.05,
                    decay: float = 1e-3, blur_every: int = 4, start: np.ndarray | None = None,
                    seed: int = 0) -> np.ndarray:
    """The input that maximises kernel ``kernel``'s mean activation in ``layer`` (Erhan et al. 2009, the
    paper's Fig. 7): gradient ascent (Adam) on a ``size`` x ``size`` image, with an L2 penalty ``decay``
    and a light blur every ``blur_every`` steps, the two usual regularisers that keep the result from
    turning into high-frequency noise. Returns an RGB uint8 image.

    ``start`` (an RGB uint8 image, resized to ``size``) is where the ascent begins; default faint noise.
    A kernel behind a ReLU that is silent on the start image has no gradient there and stays put:
    start such a kernel from an image it responds to (:func:`helpers.viz.strongest_patches`)."""
    from PIL import Image
    from torchvision.transforms.functional import gaussian_blur

    layer = backbone.resolve(layer)
    channels = backbone.channels(layer)
    if not 0 <= int(kernel) < channels:
        raise ValueError(f"kernel must lie in 0..{channels - 1} for {layer!r}, got {kernel!r}")
    if size < 16 or steps < 1:
        raise ValueError(f"need size >= 16 and steps >= 1, got {size}, {steps}")
    if start is None:
        generator = torch.Generator().manual_seed(seed)
        x = (0.1 * torch.randn(1, 3, size, size, generator=generator)).to(backbone.device)
    else:
        resized = np.asarray(Image.fromarray(np.asarray(start, np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
        x = backbone.preprocess(resized)
    x = x.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    for step in range(steps):
        response = backbone.forward_taps(x, [layer], grad=True)[layer][0, int(kernel)].mean()
        loss = -response + decay * x.pow(2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if blur_every and (step + 1) % blur_every == 0:
            with torch.no_grad():
                x.copy_(gaussian_blur(x, kernel_size=3, sigma=0.5))
    mean = torch.tensor(backbone.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=x.device).view(1, 3, 1, 1)
    image = (x.detach() * std + mean).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    return (255 * image + 0.5).astype(np.uint8)

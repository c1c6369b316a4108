"""Compact codes at equal memory: what a descriptor costs in bytes per image, and what it keeps.

One interface for every kind of code, so that a chapter can plot mAP against bytes per image:
:func:`encode_database(kind, bytes_per_image, train, database) <encode_database>` returns a
:class:`CompactIndex` with ``.scores(queries)`` (``N_db x N_q``, higher = more similar, what
:func:`helpers.evaluate.evaluate_scores` takes), ``.search(queries, k)``, ``.bytes_per_image``
(measured: the stored arrays' bytes over the database size) and ``.nbytes``.

The kinds (:data:`COMPACT_KINDS`), for float descriptors ``N x D`` (l2-normalised, e.g. GeM
vectors) and ``B`` bytes per image:

* ``"pq"``: product quantisation, faiss ``IndexPQ`` with ``M = B`` sub-quantisers of 8 bits (256
  centroids each, k-means on the training descriptors; faiss asks for 39 x 256 = 9,984 training
  vectors for well-trained centroids, and fewer give coarser ones), ranked by the asymmetric (query
  uncompressed) squared distance, score = minus that distance. Where ``D`` is not a multiple of
  ``M`` the vectors are zero-padded to the next multiple and rotated by a random orthogonal matrix
  (distances unchanged), so that every sub-quantiser sees data. Needs at least 256 training vectors.
* ``"sign"``: ``8 B`` bits, the signs of the centred vector (training mean) after a random
  rotation: orthonormal columns when ``8 B <= D``; when ``8 B > D`` the vector is rotated into
  ``8 B`` dimensions (the first ``D`` rows of a random orthogonal ``8B x 8B`` matrix). Ranked by
  Hamming distance (faiss ``IndexBinaryFlat``), score = minus the distance.
* ``"itq"``: ``8 B`` bits by iterative quantisation (Gong & Lazebnik, CVPR 2011): PCA to ``8 B``
  dimensions, then a rotation learned by alternating ``B = sign(V R)`` and the orthogonal
  Procrustes step (:func:`itq_rotation`). ITQ needs ``8 B <= D`` and at least ``8 B`` training
  vectors (a PCA has no more directions); beyond that it raises ``ValueError``.
* ``"float16"``: PCA to ``B / 2`` dimensions (centred on the training mean, l2-normalised), stored
  as float16, ranked by inner product (faiss ``IndexScalarQuantizer`` fp16).
* ``"int8"``: PCA to ``B`` dimensions as for float16, each dimension divided by a scale fitted on
  the training vectors (their largest absolute value over 127), rounded and clipped to int8;
  inner product with the query multiplied by the scales (a compiled product, :func:`_int8_products`).
* ``"ack"``: ACK codes of ``n = B / 2`` kernel indices (uint16, :class:`helpers.ack.ACKIndex`),
  ranked by dosd. ``database`` and the queries are the pooled vectors ``{pooling: N x C}`` that
  :func:`helpers.ack.vector_codes` takes (GeM brightening and its tie-break pooling by default),
  or ready ACK codes (integer ``N x n``, with ``n_kernels=``); no training (the paper's Sec. 5.3).

:func:`query_times` times one query against synthetic codes of every kind at several database
sizes, beside exact float32 search (numpy product + top-k, faiss ``IndexFlatIP``, torch).
"""
from __future__ import annotations

import time

import faiss
import numba
import numpy as np

from .pooling import l2n_np

__all__ = ["BYTES_PER_IMAGE", "COMPACT_KINDS", "CompactIndex", "FLOAT_REFERENCES", "TIMED_KINDS",
           "encode_database", "itq_rotation", "pca_basis", "query_times", "random_rotation"]

#: the kinds of :func:`encode_database`
COMPACT_KINDS = ("pq", "sign", "itq", "float16", "int8", "ack")

#: the memory budgets of the chapter's curves
BYTES_PER_IMAGE = (64, 128, 256, 512, 1024)

#: sub-quantiser bits of ``"pq"`` (one byte per sub-quantiser)
PQ_BITS = 8

#: k-means iterations per sub-quantiser (faiss's default is 25): at 1024 bytes PQ trains 1024
#: k-means, which take over a minute on 2 cores at 25 iterations
PQ_ITERATIONS = 10

#: k-means of a sub-quantiser samples at most this many training vectors per centroid (faiss's
#: default 256 would use every vector; 1,024 vectors per sub-quantiser halve the chapter's PQ time)
PQ_POINTS_PER_CENTROID = 4

#: alternations of :func:`itq_rotation` (the paper's 50)
ITQ_ITERATIONS = 50


# ---------------------------------------------------------------------------------- validation
def _check_kind(kind):
    if kind not in COMPACT_KINDS:
        raise ValueError(f"unknown compact code kind {kind!r}; choose one of {', '.join(COMPACT_KINDS)}")
    return kind


def _check_bytes(bytes_per_image, kind):
    if isinstance(bytes_per_image, bool) or not isinstance(bytes_per_image, (int, np.integer)) or bytes_per_image < 1:
        raise ValueError(f"bytes_per_image must be a positive integer, got {bytes_per_image!r}")
    if kind in ("float16", "ack") and bytes_per_image % 2:
        unit = "float16 values" if kind == "float16" else "uint16 kernel indices"
        raise ValueError(f"{kind} codes are {unit} of 2 bytes: bytes_per_image must be even, got {bytes_per_image}")
    return int(bytes_per_image)


def _as_array(values):
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _check_vectors(values, name, dim=None, min_rows=1):
    """Float descriptors ``N x D`` as float32 (one vector ``D`` becomes one row)."""
    arr = _as_array(values)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be float descriptors, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be N x D descriptors, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} must hold at least {min_rows} vector(s), got {arr.shape[0]}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have {arr.shape[1]} dimensions, the database {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_k(k, size):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= size:
        raise ValueError(f"k must be an integer in 1..{size} (the database size), got {k!r}")
    return int(k)


# ---------------------------------------------------------------------------------- projections
def random_rotation(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A random ``rows x cols`` float64 matrix with orthonormal columns (``rows >= cols``) or
    orthonormal rows (``rows < cols``): a block of a Haar-random orthogonal matrix."""
    # the QR of a tall Gaussian matrix has the distribution of the first columns of a Haar-random
    # orthogonal matrix, at a fraction of the cost of the square one (8192 x 1280, not 8192 x 8192)
    tall, narrow = max(rows, cols), min(rows, cols)
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((tall, narrow)))
    q *= np.sign(np.diag(r))  # Haar measure (QR's sign convention would bias it)
    return q if rows >= cols else q.T


def pca_basis(train: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, P)``: the training mean and the ``D x dims`` principal directions (float64), from
    the SVD of the centred training vectors. Needs ``dims <= min(N_train, D)``."""
    train = np.asarray(train, dtype=np.float64)
    if not 1 <= dims <= min(train.shape):
        raise ValueError(f"a PCA to {dims} dimensions needs at least {dims} training vectors of at least "
                         f"{dims} dimensions, got {train.shape[0]} x {train.shape[1]}")
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return mean, vt[:dims].T.copy()


def itq_rotation(V: np.ndarray, iterations: int = ITQ_ITERATIONS, seed: int = 0) -> tuple[np.ndarray, list]:
    """ITQ (Gong & Lazebnik): the orthogonal ``c x c`` rotation ``R`` minimising the quantisation
    loss ``||B - V R||_F^2`` with ``B = sign(V R)`` over the (PCA-projected, centred) training
    data ``V`` (``n x c``), by alternation from a random rotation: ``B = sign(V R)``, then the
    orthogonal Procrustes solution ``R = U W^T`` of the SVD ``V^T B = U S W^T``. Returns ``R``
    and the loss before each update of ``R`` (non-increasing)."""
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[1] == 0:
        raise ValueError(f"V must be n x c data, got shape {V.shape}")
    R = random_rotation(V.shape[1], V.shape[1], seed)
    losses = []
    for _ in range(int(iterations)):
        B = np.where(V @ R >= 0, 1.0, -1.0)
        losses.append(float(np.sum((B - V @ R) ** 2)))
        U, _, Wt = np.linalg.svd(V.T @ B)
        R = U @ Wt
    return R, losses


# ---------------------------------------------------------------------------------- the index
class CompactIndex:
    """Compact codes of a database (see :func:`encode_database`).

    ``kind``, ``size`` (database images), ``nbytes`` (bytes of the stored codes, measured on the
    stored arrays), ``bytes_per_image`` (``nbytes / size``), ``scores(queries)`` (``N_db x N_q``
    float64, higher = more similar) and ``search(queries, k)`` (``(scores, ids)``, ``Q x k``, best
    first). The query side is not compressed (asymmetric search) except for the binary codes,
    which compare codes with codes."""

    def __init__(self, kind, size, stored, encode_queries, search_fn, scores_fn=None):
        self.kind = kind
        self.size = int(size)
        self._stored = stored
        self._encode = encode_queries
        self._search = search_fn
        self._scores = scores_fn

    @property
    def nbytes(self) -> int:
        """Bytes of the stored codes."""
        return int(self._stored().nbytes)

    @property
    def bytes_per_image(self) -> float:
        """Stored bytes per database image."""
        return self.nbytes / self.size

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best database images of every query: ``(scores, ids)``, ``Q x k`` (float64,
        int64), best first, equal scores in database order."""
        k = _check_k(k, self.size)
        scores = self.scores(queries).T  # Q x N
        ids = _ranked_top_k(scores, k)
        return np.take_along_axis(scores, ids, 1), ids

    def scores(self, queries) -> np.ndarray:
        """Similarities ``N_db x N_q`` (float64, higher = more similar)."""
        q = self._encode(queries)
        if self._scores is not None:
            return self._scores(q)
        values, ids = self._search(q, self.size)
        out = np.empty((q.shape[0], self.size), dtype=np.float64)
        np.put_along_axis(out, ids.astype(np.int64), values.astype(np.float64), 1)
        return out.T

    def search_fast(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The backend's own top-k (faiss or the ACK lists), as :func:`query_times` times it; equal
        scores at the k-th place may be chosen differently from :meth:`search`."""
        k = _check_k(k, self.size)
        values, ids = self._search(self._encode(queries), k)
        return np.asarray(values, dtype=np.float64), np.asarray(ids, dtype=np.int64)


def _ranked_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` highest values of each row, highest first, ties in index order."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def _faiss_search(index, sign):
    """search(q, k) of a faiss index as similarities (``sign = -1`` for distances)."""
    def search(q, k):
        values, ids = index.search(q, k)
        return sign * values.astype(np.float64), ids
    return search


def _codes_view(index):
    """The codes a faiss index stores (binary flat indexes call them ``xb``)."""
    return lambda: faiss.vector_to_array(index.xb if isinstance(index, faiss.IndexBinaryFlat) else index.codes)


def encode_database(kind: str, bytes_per_image: int, train, database, seed: int = 0, **options) -> CompactIndex:
    """Compact codes of ``database`` at ``bytes_per_image`` bytes per image (see the module text
    for the kinds). ``train``: training descriptors ``N_train x D`` (another dataset than the
    evaluated one; ignored by ``"ack"``). ``seed`` fixes the random rotations and the k-means.
    Options: ``brightening`` (``"ack"``, default ``"gem"``), ``n_kernels`` (``"ack"`` with ready codes),
    ``itq_iterations`` (``"itq"``, default 50)."""
    kind = _check_kind(kind)
    nbytes = _check_bytes(bytes_per_image, kind)
    allowed = {"ack": {"brightening", "n_kernels"}, "itq": {"itq_iterations"}}.get(kind, set())
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"{kind} codes take no option(s) {sorted(unknown)}"
                        + (f"; they take {sorted(allowed)}" if allowed else ""))
    if kind == "ack":
        return _encode_ack(nbytes, database, **options)
    db = _check_vectors(database, "database")
    tr = _check_vectors(train, "train", dim=db.shape[1])
    return {"pq": _encode_pq, "sign": _encode_sign, "itq": _encode_itq,
            "float16": _encode_float16, "int8": _encode_int8}[kind](nbytes, tr, db, seed, **options)


def _encode_pq(M, train, db, seed):
    if train.shape[0] < 2 ** PQ_BITS:
        raise ValueError(f"product quantisation with {PQ_BITS}-bit sub-quantisers needs at least "
                         f"{2 ** PQ_BITS} training vectors (256 centroids each), got {train.shape[0]}")
    D = db.shape[1]
    padded = M * -(-D // M)
    rotation = None if padded == D else random_rotation(padded, padded, seed).astype(np.float32)

    def prepare(x):
        if rotation is None:
            return x
        out = np.zeros((x.shape[0], padded), dtype=np.float32)
        out[:, :D] = x
        return np.ascontiguousarray(out @ rotation)

    index = faiss.IndexPQ(padded, M, PQ_BITS)
    index.pq.cp.seed = seed
    # faiss warns below 39 training vectors per centroid on every sub-quantiser; the module text says it once
    index.pq.cp.min_points_per_centroid = 1
    index.pq.cp.niter = PQ_ITERATIONS
    index.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    # M small k-means runs (256 centroids in a few dimensions each): OpenMP's hand-offs between
    # threads cost more than the work, so they train on one thread (4-5x faster on 2 cores)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(prepare(train))
    finally:
        faiss.omp_set_num_threads(threads)
    index.add(prepare(db))
    encode = lambda q: prepare(_check_vectors(q, "queries", dim=D))
    cix = CompactIndex("pq", db.shape[0], _codes_view(index), encode, _faiss_search(index, -1.0))
    cix.faiss_index, cix.prepare = index, prepare
    return cix


def _binary_index(bits_of, db, kind, encode_raw):
    codes = np.packbits(bits_of(db), axis=1)
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    encode = lambda q: np.packbits(bits_of(encode_raw(q)), axis=1)
    cix = CompactIndex(kind, db.shape[0], _codes_view(index), encode, _faiss_search(index, -1.0))
    cix.faiss_index = index
    return cix


def _encode_sign(nbytes, train, db, seed):
    bits, D = 8 * nbytes, db.shape[1]
    mean = train.mean(axis=0, dtype=np.float64)
    rotation = random_rotation(D, bits, seed)  # orthonormal columns, or rows when bits > D
    bits_of = lambda x: (x - mean) @ rotation > 0
    cix = _binary_index(bits_of, db, "sign", lambda q: _check_vectors(q, "queries", dim=D))
    cix.mean, cix.rotation = mean, rotation
    return cix


def _encode_itq(nbytes, train, db, seed, itq_iterations=ITQ_ITERATIONS):
    bits, D = 8 * nbytes, db.shape[1]
    if bits > D:
        raise ValueError(f"ITQ rotates a PCA of the descriptors: {bits} bits ({nbytes} bytes) need at least "
                         f"{bits} dimensions, the descriptors have {D} (use 'sign' codes above {D // 8} bytes)")
    if bits > train.shape[0]:
        raise ValueError(f"ITQ to {bits} bits needs a PCA to {bits} dimensions, hence at least {bits} "
                         f"training vectors, got {train.shape[0]}")
    mean, P = pca_basis(train, bits)
    R, losses = itq_rotation((train - mean) @ P, itq_iterations, seed)
    projection = P @ R
    bits_of = lambda x: (x - mean) @ projection >= 0
    cix = _binary_index(bits_of, db, "itq", lambda q: _check_vectors(q, "queries", dim=D))
    cix.mean, cix.projection, cix.losses = mean, projection, losses
    return cix


def _pca_projector(train, dims, kind, D):
    if dims > D:
        raise ValueError(f"{kind} at {dims} dimensions exceeds the descriptors' {D}: choose fewer bytes per image")
    if dims > train.shape[0]:
        raise ValueError(f"{kind} at {dims} dimensions needs a PCA fitted on at least {dims} training vectors, "
                         f"got {train.shape[0]}")
    mean, P = pca_basis(train, dims)
    return lambda x: l2n_np((np.asarray(x, np.float64) - mean) @ P).astype(np.float32)


def _encode_float16(nbytes, train, db, seed):
    dims, D = nbytes // 2, db.shape[1]
    project = _pca_projector(train, dims, "float16", D)
    index = faiss.IndexScalarQuantizer(dims, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    index.add(project(db))
    encode = lambda q: np.ascontiguousarray(project(_check_vectors(q, "queries", dim=D)))
    cix = CompactIndex("float16", db.shape[0], _codes_view(index), encode, _faiss_search(index, 1.0))
    cix.faiss_index, cix.project = index, project
    return cix


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)  # fastmath: a vectorised sum
def _int8_products(codes, queries, out):  # pragma: no cover - compiled
    """``out[m, d] = sum_j codes[d, j] * queries[m, j]`` (int8 codes, float32 queries, float32 sums)."""
    size, dims = codes.shape
    for d in numba.prange(size):
        for m in range(queries.shape[0]):
            s = np.float32(0.0)
            for j in range(dims):
                s += np.float32(codes[d, j]) * queries[m, j]
            out[m, d] = s


def _int8_search(codes):
    """search(q, k) and scores(q) over int8 codes: a compiled product (faiss 1.15.1's
    ``QT_8bit_direct_signed`` inner products came out 0 for 64-dimensional codes)."""
    def products(q):
        out = np.empty((q.shape[0], codes.shape[0]), dtype=np.float32)
        _int8_products(codes, np.ascontiguousarray(q, dtype=np.float32), out)
        return out

    def search(q, k):
        s = products(q)
        ids = np.stack([_top_k(row, k) for row in s]) if s.shape[0] else np.empty((0, k), np.int64)
        return np.take_along_axis(s, ids, 1).astype(np.float64), ids

    return search, lambda q: products(q).T.astype(np.float64)


def _top_k(row, k):
    """Ids of the ``k`` highest values of ``row``, highest first (faiss-like: ties arbitrary)."""
    top = np.argpartition(row, row.shape[0] - k)[row.shape[0] - k:] if k < row.shape[0] else np.arange(row.shape[0])
    return top[np.argsort(-row[top], kind="stable")]


def _encode_int8(nbytes, train, db, seed):
    dims, D = nbytes, db.shape[1]
    project = _pca_projector(train, dims, "int8", D)
    peak = np.abs(project(train)).max(axis=0).astype(np.float64)
    scale = np.where(peak > 0, peak, 1.0) / 127.0
    codes = np.clip(np.rint(project(db) / scale), -127, 127).astype(np.int8)
    search, scores = _int8_search(codes)
    encode = lambda q: np.ascontiguousarray((project(_check_vectors(q, "queries", dim=D)) * scale).astype(np.float32))
    cix = CompactIndex("int8", db.shape[0], lambda: codes, encode, search, scores_fn=scores)
    cix.project, cix.scale, cix.codes = project, scale, codes
    return cix


def _ack_codes(values, n, brightening, n_kernels, name):
    from .ack import check_codes, vector_codes

    if isinstance(values, dict):
        return vector_codes(values, brightening, n)
    arr = _as_array(values)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ACK {name} must be pooled vectors {{pooling: N x C}} or integer ACK codes, got dtype {arr.dtype}")
    if n_kernels is None:
        raise ValueError(f"ready ACK codes as {name} need n_kernels= (the layer's kernels)")
    codes = check_codes(arr, n_kernels, name)
    if codes.shape[1] != n:
        raise ValueError(f"{name} codes have n={codes.shape[1]} kernel indices, {2 * n} bytes per image needs n={n}")
    return codes


def _encode_ack(nbytes, database, brightening="gem", n_kernels=None):
    from .ack import ACKIndex

    n = nbytes // 2
    if isinstance(database, dict):
        C = _as_array(database.get(brightening, next(iter(database.values())))).shape[-1]
        if n > C:
            raise ValueError(f"ACK codes of {nbytes} bytes hold n={n} kernel indices, the layer has {C} kernels")
        n_kernels = C if n_kernels is None else n_kernels
    codes = _ack_codes(database, n, brightening, n_kernels, "database")
    index = ACKIndex(codes, n_kernels)
    encode = lambda q: _ack_codes(q, n, brightening, n_kernels, "queries")
    cix = CompactIndex("ack", codes.shape[0], lambda: index.codes_by_position, encode,
                       lambda q, k: index.search(q, k), scores_fn=index.dosd)
    cix.ack_index = index
    return cix


# ---------------------------------------------------------------------------------- timing
#: kinds timed by :func:`query_times` (sign and ITQ codes search alike: one ``"binary"``)
TIMED_KINDS = ("ack", "pq", "binary", "float16", "int8")

#: exact float32 searches :func:`query_times` times beside them
FLOAT_REFERENCES = ("float_numpy", "float_faiss", "float_torch")


def _synthetic_indexes(size, bytes_per_image, dim, n_kernels, seed, ack_n=None):
    """One-query search functions over ``size`` random codes of every kind, and their memory."""
    import torch

    from .ack import ACKInvertedIndex, random_codes

    rng = np.random.default_rng(seed)
    searches, memory = {}, {}
    n = bytes_per_image // 2
    ack_codes = random_codes(size + 1, n if ack_n is None else int(ack_n), n_kernels, seed)
    ack = ACKInvertedIndex(ack_codes[1:], n_kernels)
    ack_query = ack_codes[:1].copy()
    searches["ack"] = lambda k: ack.search(ack_query, k)
    memory["ack"] = ack.nbytes

    M = bytes_per_image
    d_pq = M * -(-dim // M)
    pq = faiss.IndexPQ(d_pq, M, PQ_BITS)
    faiss.copy_array_to_vector(rng.standard_normal(M * 2 ** PQ_BITS * (d_pq // M)).astype(np.float32),
                               pq.pq.centroids)
    pq.is_trained = True
    faiss.copy_array_to_vector(rng.integers(0, 256, size * M, dtype=np.uint8), pq.codes)
    pq.ntotal = size
    pq_query = rng.standard_normal((1, d_pq)).astype(np.float32)
    searches["pq"] = lambda k: pq.search(pq_query, k)
    memory["pq"] = pq.codes.size()

    binary = faiss.IndexBinaryFlat(8 * bytes_per_image)
    binary.add(rng.integers(0, 256, (size, bytes_per_image), dtype=np.uint8))
    bin_query = rng.integers(0, 256, (1, bytes_per_image), dtype=np.uint8)
    searches["binary"] = lambda k: binary.search(bin_query, k)
    memory["binary"] = binary.xb.size()

    f16 = faiss.IndexScalarQuantizer(n, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    f16.add(rng.standard_normal((size, n), dtype=np.float32))
    f16_query = rng.standard_normal((1, n), dtype=np.float32)
    searches["float16"] = lambda k: f16.search(f16_query, k)
    memory["float16"] = f16.codes.size()

    i8_codes = rng.integers(-127, 128, (size, bytes_per_image), dtype=np.int8)
    i8_search, _ = _int8_search(i8_codes)
    i8_query = rng.standard_normal((1, bytes_per_image), dtype=np.float32)
    searches["int8"] = lambda k: i8_search(i8_query, k)
    memory["int8"] = i8_codes.nbytes

    X = rng.standard_normal((size, dim), dtype=np.float32)
    xq = rng.standard_normal(dim, dtype=np.float32)
    flat = faiss.IndexFlatIP(dim)
    flat.add(X)
    Xt, xqt = torch.from_numpy(X), torch.from_numpy(xq)

    def numpy_search(k):
        s = X @ xq
        top = np.argpartition(s, size - k)[size - k:] if k < size else np.arange(size)
        return top[np.argsort(-s[top])]

    searches["float_numpy"] = numpy_search
    searches["float_faiss"] = lambda k: flat.search(xq[None], k)
    searches["float_torch"] = lambda k: torch.topk(Xt @ xqt, k)
    for name in FLOAT_REFERENCES:
        memory[name] = X.nbytes
    return searches, memory


def query_times(sizes=(10 ** 3, 10 ** 4, 10 ** 5, 10 ** 6), bytes_per_image: int = 512, dim: int = 512,
                n_kernels: int = 1280, k: int = 100, rounds: int = 5, seed: int = 0, pause: float = 0.1,
                ack_n: int | None = None) -> list[dict]:
    """Time ONE query (top-``k``) against ``size`` synthetic random codes of every kind of
    :data:`TIMED_KINDS` at ``bytes_per_image`` (ACK: n = bytes / 2 indices of ``n_kernels``
    kernels, in the inverted lists of :class:`helpers.ack.ACKInvertedIndex`; PQ: ``M`` = bytes
    sub-quantisers over ``dim`` dimensions; binary: 8 x bytes bits; float16: bytes / 2
    dimensions; int8: bytes dimensions), and the exact float32 searches :data:`FLOAT_REFERENCES`
    over ``size x dim`` vectors.

    Every round times each search once, in turn (after a warm-up call and a ``pause`` that lets the
    previous side's worker threads settle), so that the sides of a round see the same machine load.
    ``ack_n`` overrides ACK's code length (e.g. :meth:`helpers.ack.ACKInvertedIndex.code_length_within`,
    the longest code whose index, list counts included, fits the bytes). Returns one dict per size:
    ``size``, ``ms`` ``{search: [ms per round]}``, ``bytes`` ``{search: stored bytes}``.
    """
    bytes_per_image = _check_bytes(bytes_per_image, "ack")
    rows = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < k:
            raise ValueError(f"database sizes must be integers >= k={k}, got {size!r}")
        searches, memory = _synthetic_indexes(int(size), bytes_per_image, dim, n_kernels, seed, ack_n)
        ms = {name: [] for name in searches}
        for name, fn in searches.items():
            fn(k)
        for _ in range(rounds):
            for name, fn in searches.items():
                time.sleep(pause)
                fn(k)
                t0 = time.perf_counter()
                fn(k)
                ms[name].append(1e3 * (time.perf_counter() - t0))
        rows.append({"size": int(size), "ms": ms, "bytes": memory})
        del searches
    return rows

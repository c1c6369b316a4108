"""Post-processing of global descriptors, after the first ranking: query expansion and diffusion.

Pure functions on l2-normalised ``n_q x D`` query and ``n_db x D`` database descriptors; each returns
new ``n_db x n_q`` scores (higher is more similar), the layout of every method's ``score``.

* :func:`query_expansion` — average query expansion (Chum et al. 2007, ``alpha = 0``) and
  α-weighted query expansion, αQE (Radenović et al. 2018): the new query is the l2-normalised sum of
  the query and its ``k`` best database vectors, each weighted by its similarity to the power
  ``alpha``.
* :func:`diffusion` — diffusion on the database's k-nearest-neighbour graph (Iscen et al. 2017,
  "Efficient diffusion on region manifolds", the global-descriptor version): the query's similarities
  to its nearest database images spread over the graph by solving ``(I - a S) f = y`` with conjugate
  gradients.
* :func:`leading_dimensions` and :func:`largest_values` — two ways to shorten a descriptor to ``d``
  values: its first ``d`` coordinates (of a PCA-whitened descriptor: the leading components), or its
  ``d`` largest values kept in place, every other coordinate set to zero.
"""
from __future__ import annotations

import numpy as np

from .pooling import l2n_np

__all__ = ["diffusion", "largest_values", "leading_dimensions", "query_expansion"]


def _pair(query_vectors, db_vectors):
    Q = np.asarray(query_vectors, dtype=np.float32)
    X = np.asarray(db_vectors, dtype=np.float32)
    if Q.ndim != 2 or X.ndim != 2 or Q.shape[1] != X.shape[1]:
        raise ValueError(f"need n_q x D queries and n_db x D database vectors, got {Q.shape} and {X.shape}")
    if not (np.isfinite(Q).all() and np.isfinite(X).all()):
        raise ValueError("descriptors contain NaN or infinite values")
    return Q, X


def _count(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def query_expansion(query_vectors, db_vectors, scores=None, k: int = 5, alpha: float = 0.0) -> np.ndarray:
    """Query expansion: ``q' = l2n(q + sum_i w_i x_i)`` over the ``k`` best-scored database vectors
    ``x_i``, ``w_i = max(s_i, 0) ** alpha`` (``alpha = 0``: every neighbour weighs 1, average query
    expansion; ``alpha = 3``: αQE as in Radenović et al.). Returns the ``n_db x n_q`` scores of ``q'``.

    ``scores`` (``n_db x n_q``) defaults to ``db_vectors @ query_vectors.T``; ties in the first
    ranking go to the lower database index. ``k = 0`` returns ``scores`` unchanged.
    """
    Q, X = _pair(query_vectors, db_vectors)
    S = X @ Q.T if scores is None else np.asarray(scores, dtype=np.float32)
    if S.shape != (X.shape[0], Q.shape[0]):
        raise ValueError(f"scores must be n_db x n_q = {(X.shape[0], Q.shape[0])}, got {S.shape}")
    k = _count("k", k)
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if k == 0:
        return S
    k = min(k, X.shape[0])
    top = np.argsort(-S, axis=0, kind="stable")[:k]                      # k x n_q
    weights = np.ones_like(S[top, np.arange(Q.shape[0])]) if alpha == 0 else \
        np.maximum(S[top, np.arange(Q.shape[0])], 0) ** alpha           # k x n_q
    expanded = Q + np.einsum("kq,kqd->qd", weights, X[top])
    return X @ l2n_np(expanded).T


def _knn(X: np.ndarray, Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product ``k`` nearest rows of ``X`` for every row of ``Y``: (similarities, indices)."""
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(np.ascontiguousarray(X))
    return index.search(np.ascontiguousarray(Y), k)


def diffusion(query_vectors, db_vectors, k: int = 50, k_query: int = 10, alpha: float = 0.99,
              gamma: float = 3.0, tol: float = 1e-6, max_iterations: int = 20) -> np.ndarray:
    """Diffusion scores ``n_db x n_q`` (Iscen et al. 2017, global descriptors).

    The database graph keeps an edge ``i - j`` when each is among the other's ``k`` nearest
    neighbours (mutual kNN), weighted ``max(x_i . x_j, 0) ** gamma``; ``S = D^-1/2 W D^-1/2``.
    A query starts from ``y_i = max(q . x_i, 0) ** gamma`` on its ``k_query`` nearest database
    images (zero elsewhere) and its scores ``f`` solve ``(I - alpha S) f = y`` (conjugate gradients,
    at most ``max_iterations``, the paper's 20). Images the diffusion reaches rank first, by ``f``;
    the rest (``f = 0``: no path from the query's neighbours) follow in the order of the plain dot
    product. The returned scores encode that order (reached: ``2 + f / max f``; others: their dot
    product), they are not similarities. Defaults: the paper's k = 50, gamma = 3, alpha = 0.99; ``k``
    larger than the database is cut to its size minus one.
    """
    from scipy import sparse
    from scipy.sparse.linalg import cg

    Q, X = _pair(query_vectors, db_vectors)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"diffusion needs at least 2 database vectors, got {n}")
    k = min(_count("k", k, 1), n - 1)
    k_query = min(_count("k_query", k_query, 1), n)
    alpha, gamma = float(alpha), float(gamma)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    sims, idx = _knn(X, X, k + 1)                       # each image finds itself first: dropped below
    rows = np.repeat(np.arange(n), k + 1)
    W = sparse.csr_matrix((np.maximum(sims.ravel(), 0) ** gamma, (rows, idx.ravel())), shape=(n, n))
    W.setdiag(0)
    W.eliminate_zeros()
    W = W.minimum(W.T)                                  # mutual neighbours only, symmetric
    degree = np.asarray(W.sum(axis=1)).ravel()
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    S = sparse.diags(inv_sqrt) @ W @ sparse.diags(inv_sqrt)
    A = (sparse.identity(n) - alpha * S).tocsr()
    q_sims, q_idx = _knn(X, Q, k_query)
    plain = X @ Q.T
    out = np.empty((n, Q.shape[0]), dtype=np.float32)
    for j in range(Q.shape[0]):
        y = np.zeros(n)
        y[q_idx[j]] = np.maximum(q_sims[j], 0) ** gamma
        f, _ = cg(A, y, rtol=tol, maxiter=max_iterations)
        reached = f > 1e-12 * max(f.max(), 1e-30)
        # images the diffusion reaches come first, in the order of f; the others keep the order of
        # the plain product (their f is 0: without this they would tie, ranked by index)
        out[:, j] = np.where(reached, 2.0 + f / max(f.max(), 1e-30), np.clip(plain[:, j], -1.0, 1.0))
    return out


def leading_dimensions(vectors, d: int) -> np.ndarray:
    """The first ``d`` coordinates of each row, l2-normalised: for PCA-whitened descriptors (whose
    coordinates are sorted by decreasing variance) the usual way to a ``d``-dimensional code."""
    V = np.asarray(vectors, dtype=np.float32)
    d = _count("d", d, 1)
    if V.ndim != 2 or d > V.shape[1]:
        raise ValueError(f"cannot keep {d} of the {V.shape[-1]} dimensions of {V.shape} vectors")
    return l2n_np(V[:, :d])


def largest_values(vectors, d: int) -> np.ndarray:
    """Each row's ``d`` largest values kept at their coordinates, the rest set to zero, l2-normalised:
    a ``d``-sparse vector in the original space (compared by the dot product like the full one)."""
    V = np.asarray(vectors, dtype=np.float32)
    d = _count("d", d, 1)
    if V.ndim != 2 or d > V.shape[1]:
        raise ValueError(f"cannot keep {d} of the {V.shape[-1]} values of {V.shape} vectors")
    keep = np.argpartition(-V, d - 1, axis=1)[:, :d]
    out = np.zeros_like(V)
    np.put_along_axis(out, keep, np.take_along_axis(V, keep, axis=1), axis=1)
    return l2n_np(out)

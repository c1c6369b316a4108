"""Aggregated deep feature from activation clusters (paper 004).

Chen, Kuang, Wong, Zhang, "Aggregated Deep Feature from Activation Clusters for Particular Object
Retrieval", ACM MM Thematic Workshops (2017).

Idea. R-MAC max-pools a conv map over a fixed grid of square regions, which cover background
clutter as well as the object. This paper max-pools over *clusters of activations* instead: the
``H x W`` local descriptors of the last conv map are reduced by PCA to ``C`` dimensions, clustered
with the Normalized Cut (Shi & Malik 2000; multiclass discretisation of Yu & Shi 2003) on a
similarity that has **no spatial term**, and every cluster (an arbitrarily shaped, possibly
disconnected region) gives one MAC vector. The per-cluster MAC vectors are post-processed exactly as
R-MAC's regional vectors (l2n, PCA-whitening learned on another dataset, l2n), summed and
l2-normalised.

Equations (numbers as in the paper)

* (1) region precision ``area(rgn ∩ gt) / area(rgn)``: the share of a region's area inside the
  query's ground-truth box (:func:`region_precision`).
* (2) weighted l2 distance between C-dimensional PCA descriptors
  ``d_ij = sqrt(sum_k w_k (f_ik - f_jk)^2)`` with ``w_k = sigma_k / sum_m sigma_m`` and ``sigma_k``
  the variance of PCA dimension ``k`` (:func:`variance_weights`, :func:`weighted_distances`).
* (3) similarity ``S = (exp(-d_ij / z))^2 = exp(-2 d_ij / z)`` with ``z = 0.05 max(d_ij)``
  (:func:`similarity_from_distances`).
* (4) MAC ``f_k = max_{p in Omega} chi_k(p)``; here ``Omega`` is one cluster (:func:`regional_mac`).

Readings of the paper where it is not explicit (also stated in the notebook)

* The PCA of Sec. 3.1 is computed **per image** on that image's ``H*W`` descriptors (the text
  treats "a set of D-dimensional descriptors extracted at H x W locations"; Fig. 5 shows its
  components as maps), so ``sigma_k`` is the k-th eigenvalue of the image's descriptor covariance.
* The colour clusters of Sec. 4.1 ("RGB values of the resized images") use plain Euclidean
  distances between RGB values in ``[0, 1]`` (equal weights: the three channels are commensurate)
  with the same eq. (3) and ``z`` rule.
* The optional spatial term (Fig. 6) is Shi & Malik's: the feature similarity is multiplied by
  ``exp(-||p_i - p_j||^2 / sigma_x^2)`` (map cells), set to 0 beyond a radius if one is given.
* The Normalized Cut is solved as scikit-learn's ``SpectralClustering(affinity="precomputed",
  assign_labels="discretize")`` does it (eigenvectors of the symmetric normalised Laplacian, then
  the Yu-Shi discretisation), but with **one** eigen-decomposition shared by all cluster counts
  (5 and 20 use the leading 5 and 20 eigenvectors of the same matrix); ``eigen_solver="sklearn"``
  runs scikit-learn's estimator itself, once per cluster count, as the reference.
* Query expansion of Table 1 ("R + QE") is reduced to average query expansion (no spatial
  re-ranking): :func:`helpers.postprocess.query_expansion` with ``alpha = 0``.
* C, the number of PCA dimensions, is the paper's for VGG16 (4) and ResNet101 (7) and 8 for other
  backbones, EfficientNet-Lite0 included (:func:`default_n_components` says why).

Pure functions (arrays / tensors in, arrays out) come first; the dataset-level wrappers and the
:class:`ActivationClustersMethod` registered as ``"clusters"`` come last. The colour clusters are
the one place where images are re-read (the paper needs their pixels): :func:`colour_thumbnails`.
"""
from __future__ import annotations

import math
import typing
import warnings
from typing import Literal

import numpy as np
import torch
from scipy.linalg import eigh
from scipy.sparse.linalg import eigsh
from scipy.spatial.distance import cdist

from .options import choice, fraction, parse_bool, positive_int
from .pooling import l2n_np
from .postprocess import query_expansion

try:  # the Yu-Shi discretisation; private in scikit-learn, so keep a public fallback
    from sklearn.cluster._spectral import discretize as _sklearn_discretize
except ImportError:  # pragma: no cover - depends on the installed scikit-learn
    _sklearn_discretize = None

__all__ = [
    "DEFAULT_CLUSTER_COUNTS",
    "DEFAULT_COLOUR_CLUSTERS",
    "DEFAULT_Z_RATIO",
    "EIGEN_SOLVERS",
    "PAPER_N_COMPONENTS",
    "FALLBACK_N_COMPONENTS",
    "default_n_components",
    "local_descriptors",
    "pca_project",
    "variance_weights",
    "weighted_distances",
    "similarity_from_distances",
    "spatial_affinity",
    "feature_similarity",
    "spectral_embedding",
    "normalized_cut",
    "activation_clusters",
    "colour_clusters",
    "masks_from_labels",
    "connected_parts",
    "rmac_region_masks",
    "regional_mac",
    "aggregate_regional_vectors",
    "crop_map",
    "box_cell_coverage",
    "region_precision",
    "region_precision_map",
    "share_at_or_above",
    "colour_thumbnail",
    "cluster_region_masks",
    "colour_thumbnails",
    "query_cells",
    "query_region_precisions",
    "ActivationClustersMethod",
    "evaluate_descriptors",
    "region_table",
    "network_descriptors",
    "fine_tuned_comparison",
]

#: Feature cluster counts of the paper's Sec. 4.1 (a two-level hierarchy: 5 and 20 clusters).
DEFAULT_CLUSTER_COUNTS = (5, 20)
#: Number of colour clusters of Sec. 4.1.
DEFAULT_COLOUR_CLUSTERS = 5
#: ``z = 0.05 max(d)`` of eq. (3).
DEFAULT_Z_RATIO = 0.05
#: C of Sec. 4.1 for the paper's backbones.
PAPER_N_COMPONENTS = {"vgg16": 4, "resnet101": 7}
#: C for every other backbone (EfficientNet-Lite0 included): chosen on demo-train, see
#: :func:`default_n_components`.
FALLBACK_N_COMPONENTS = 8
#: Largest share of non-zero descriptor entries for which :func:`pca_project` uses a sparse matrix.
SPARSE_PCA_DENSITY = 0.25
#: Ways to obtain the Normalized Cut eigenvectors (see :func:`normalized_cut`).
EigenSolver = Literal["arpack", "dense", "sklearn"]
EIGEN_SOLVERS = typing.get_args(EigenSolver)


# --------------------------------------------------------------------------------------------------
# Local descriptors and their PCA (Sec. 3.1)
# --------------------------------------------------------------------------------------------------

def default_n_components(backbone_name: str) -> int:
    """C (PCA dimensions used for clustering) for a backbone's architecture
    (:attr:`helpers.backbones.Backbone.architecture`): the paper's value for VGG16 (4) and
    ResNet101 (7), otherwise :data:`FALLBACK_N_COMPONENTS` (8).

    Why 8 for EfficientNet-Lite0: its last conv map ("conv_head", after ReLU6) is very sparse (about
    97% zeros on the demo images) and its variance is spread over many components: the first 4
    hold only ~40% of an image's descriptor variance and the first 8 ~60% (notebook 06, Fig. 5b),
    against the few dominant components the paper describes for VGG16. mAP cannot decide: swept on
    demo-train (never on the evaluated set; notebook 06, Fig. 3), the differences over C = 1..32 stay
    within the noise of its 12 queries, and the best C depends on the draw of the demo images
    (2, 4, 8 or 16-32 for different draws). So C = 8 keeps more of each descriptor at no extra cost
    worth counting (the per-image PCA and eq. 2 grow slowly with C).
    """
    return PAPER_N_COMPONENTS.get(backbone_name, FALLBACK_N_COMPONENTS)


_BLAS_CONTROLLER = None


def _one_blas_thread():
    """A context in which numpy's and scipy's BLAS run on one thread.

    The iterative solvers used here (PROPACK for the sparse PCA, ARPACK for the Ncut eigenvectors,
    the Yu-Shi discretisation) call BLAS on 1024-long vectors thousands of times: a second BLAS
    thread only adds hand-offs, and it competes with torch's threads that have just run the
    distances. The controller is built once, as building one costs about as much as a small solve.
    (Timings: benchmarks/README.md.)
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _as_numpy_map(feature_map) -> np.ndarray:
    if isinstance(feature_map, torch.Tensor):
        feature_map = feature_map.detach().cpu().numpy()
    fmap = np.asarray(feature_map)
    if fmap.ndim != 3:
        raise ValueError(f"expected one conv map D x H x W, got shape {fmap.shape}")
    if min(fmap.shape) < 1:
        raise ValueError(f"empty conv map of shape {fmap.shape}")
    return fmap.astype(np.float32, copy=False)


def local_descriptors(feature_map) -> np.ndarray:
    """The ``H*W`` local descriptors of a ``D x H x W`` map as rows ``(H*W) x D`` (row-major: cell
    ``(y, x)`` is row ``y * W + x``).

    A transposed view of the map, not a copy (column-major): copying a conv map into row order costs
    more than the PCA that reads it, and the sparse PCA takes the column-major view as it is."""
    fmap = _as_numpy_map(feature_map)
    D = fmap.shape[0]
    return fmap.reshape(D, -1).T


def pca_project(descriptors, n_components: int, random_state: int = 0):
    """PCA of one image's local descriptors (Sec. 3.1): ``(projected N x C, variances C)``.

    ``projected[:, k]`` is the k-th principal coordinate of the centred descriptors and
    ``variances[k]`` its variance (the k-th eigenvalue of the covariance, ``sigma_k`` of eq. 2).
    How, by the shape and sparsity of the descriptors (the first two are what a conv map takes; the
    first and third agree with an exact SVD to float precision, the second within the tolerance
    given for it):

    * a conv map's cells (``min(N, D) >= 200``, few components) that are mostly zeros (after a
      ReLU: EfficientNet-Lite0's ``conv_head`` is ~95% zeros): scipy's ``svds`` (PROPACK) of the
      sparse matrix, centred implicitly (:func:`_sparse_pca`), converged to float32 precision;
    * the same sizes, dense: torch's randomized SVD (``torch.svd_lowrank``, C + 16 vectors, 6
      power iterations, seeded by ``random_state``), measured on real conv_head maps against an
      exact eigen-decomposition (a 1024 x 1024 photograph whose 8th and 9th eigenvalues are 0.8%
      apart): coordinates within 0.2% of their range, variances within 0.1%;
    * small problems or many components: scikit-learn's full-SVD ``PCA``.

    ``n_components`` above ``min(N, D)`` is an error.
    """
    from sklearn.decomposition import PCA

    X = np.asarray(descriptors, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"descriptors must be N x D, got shape {X.shape}")
    N, D = X.shape
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    if n_components > min(N, D):
        raise ValueError(f"cannot keep {n_components} PCA components of {N} descriptors of {D} dimensions")
    if N < 2:  # one cell: nothing varies
        return np.zeros((N, n_components), dtype=np.float32), np.zeros(n_components)
    if 4 * n_components < min(N, D) and min(N, D) >= 200:  # a conv map's cells
        if np.count_nonzero(X) <= SPARSE_PCA_DENSITY * X.size:
            return _sparse_pca(X, int(n_components), random_state)
        centred = torch.from_numpy(X - X.mean(axis=0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_state)
            U, S, _ = torch.svd_lowrank(centred, q=min(int(n_components) + 16, N, D), niter=6)
        projected = (U[:, :n_components] * S[:n_components]).numpy().astype(np.float32)
        variances = (S[:n_components].double() ** 2 / (N - 1)).numpy()
        return projected, variances
    pca = PCA(n_components=int(n_components), svd_solver="full", random_state=random_state)
    projected = pca.fit_transform(X).astype(np.float32)
    variances = np.clip(pca.explained_variance_.astype(np.float64), 0, None)
    return projected, variances


def _sparse(X: np.ndarray):
    """``X`` as a scipy sparse matrix, converted by torch (which does it in a fraction of the time
    of scipy's own conversion of a dense array). A column-major ``X`` (the transposed view of
    :func:`local_descriptors`) becomes a CSC matrix without being copied into row order."""
    from scipy.sparse import csc_matrix, csr_matrix

    column_major = X.flags.f_contiguous and not X.flags.c_contiguous
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        T = torch.from_numpy(X.T if column_major else np.ascontiguousarray(X)).to_sparse_csr()
    parts = (T.values().numpy(), T.col_indices().numpy(), T.crow_indices().numpy())
    return csc_matrix(parts, shape=X.shape) if column_major else csr_matrix(parts, shape=X.shape)


def _sparse_pca(X: np.ndarray, n_components: int, random_state: int):
    """PCA of mostly-zero descriptors: the leading singular triplets of the implicitly centred
    sparse matrix by scipy's ``svds`` with the PROPACK solver (Lanczos bidiagonalisation; the
    centring is a rank-one correction in the matrix products, so the zeros stay zeros). On a
    1024 x 1280 conv_head map it is the fastest of PROPACK, ARPACK on the same operator
    (scikit-learn's sparse ``PCA``) and a randomized SVD of the dense matrix, all three within 1e-5
    of an exact SVD (timings: benchmarks/README.md)."""
    from scipy.sparse.linalg import LinearOperator, svds

    N, D = X.shape
    M = _sparse(X)
    MT = M.T  # CSR <-> CSC: no copy
    mean = np.asarray(M.mean(axis=0), dtype=np.float32).ravel()
    ones = np.ones(N, dtype=np.float32)
    centred = LinearOperator(
        (N, D), dtype=np.float32,
        matvec=lambda v: M @ v.ravel() - mean @ v.ravel(),
        rmatvec=lambda u: MT @ u.ravel() - mean * u.sum(),
        matmat=lambda V: M @ V - np.outer(ones, mean @ V),
        rmatmat=lambda U: MT @ U - np.outer(mean, U.sum(axis=0)))
    with _one_blas_thread():
        try:  # PROPACK's default Krylov size (10 k) is too small for k = 1 or 2 on some maps
            U, S, _ = svds(centred, k=n_components, solver="propack", random_state=random_state,
                           maxiter=min(min(N, D), max(10 * n_components, 100)))
        except np.linalg.LinAlgError:  # did not converge: ARPACK on the same operator
            U, S, _ = svds(centred, k=n_components, solver="arpack", random_state=random_state)
    order = np.argsort(-S, kind="stable")
    projected = (U[:, order] * S[order]).astype(np.float32)
    return projected, S[order].astype(np.float64) ** 2 / (N - 1)


def variance_weights(variances) -> np.ndarray:
    """``w_k = sigma_k / sum_m sigma_m`` of eq. (2); equal weights when every variance is 0."""
    v = np.asarray(variances, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"variances must be a non-empty 1-D array, got shape {v.shape}")
    if np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError("variances must be finite and non-negative")
    total = v.sum()
    return v / total if total > 0 else np.full(v.shape, 1.0 / v.size)


def weighted_distances(features, weights=None) -> np.ndarray:
    """Eq. (2): ``d_ij = sqrt(sum_k w_k (f_ik - f_jk)^2)`` for all pairs of rows of ``features``.

    ``weights=None`` means ``w_k = 1`` (plain Euclidean distance).
    """
    F = np.asarray(features, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"features must be N x C, got shape {F.shape}")
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (F.shape[1],):
            raise ValueError(f"need one weight per feature dimension ({F.shape[1]}), got shape {w.shape}")
        if np.any(w < 0):
            raise ValueError("weights must be non-negative")
        F = F * np.sqrt(w)  # sum_k w_k (f_ik - f_jk)^2 = ||sqrt(w) f_i - sqrt(w) f_j||^2
    T = torch.from_numpy(np.ascontiguousarray(F))
    # exact differences (no ||a||^2 + ||b||^2 - 2ab shortcut, which loses small distances); float64
    return torch.cdist(T, T, compute_mode="donot_use_mm_for_euclid_dist").numpy()


def similarity_from_distances(distances, z_ratio: float = DEFAULT_Z_RATIO) -> np.ndarray:
    """Eq. (3): ``S_ij = (exp(-d_ij / z))^2`` with ``z = z_ratio * max(d)`` (paper: 0.05).

    Computed as ``exp(-2 d / z)`` in float32 (the smallest value, ``exp(-2 / z_ratio)``, is
    ``exp(-40)`` for the paper's ratio, well inside float32's range). When all distances are 0 (a
    constant map) every pair is equally similar: ``S = 1``.
    """
    d = np.asarray(distances)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square matrix, got shape {d.shape}")
    if not z_ratio > 0:
        raise ValueError(f"z_ratio must be > 0, got {z_ratio!r}")
    if np.any(d < 0):
        raise ValueError("distances must be non-negative")
    dmax = float(d.max()) if d.size else 0.0
    if dmax == 0:
        return np.ones(d.shape, dtype=np.float32)
    z = z_ratio * dmax
    S = torch.from_numpy(d.astype(np.float32))
    return torch.exp_(S.mul_(-2.0 / z)).numpy()


def spatial_affinity(height: int, width: int, sigma: float, radius: float | None = None) -> np.ndarray:
    """Shi & Malik's spatial term on an ``height x width`` grid of cells:
    ``exp(-||p_i - p_j||^2 / sigma^2)``, 0 where ``||p_i - p_j|| > radius`` (if given).

    Rows/columns follow :func:`local_descriptors`' order. Multiply a feature similarity by it to
    make clusters spatially coherent (the paper's Fig. 6 compares with and without it).
    """
    if height < 1 or width < 1:
        raise ValueError(f"grid size must be positive, got {height}x{width}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (in map cells), got {sigma!r}")
    if radius is not None and not radius > 0:
        raise ValueError(f"radius must be > 0 or None, got {radius!r}")
    ys, xs = np.mgrid[0:height, 0:width]
    P = np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.float64)
    sq = cdist(P, P, "sqeuclidean")
    A = np.exp(-sq / sigma ** 2)
    if radius is not None:
        A[sq > radius ** 2] = 0.0
    return A


def feature_similarity(feature_map, n_components: int, z_ratio: float = DEFAULT_Z_RATIO,
                       spatial_sigma: float | None = None, spatial_radius: float | None = None,
                       random_state: int = 0) -> np.ndarray:
    """The ``(H*W) x (H*W)`` similarity of a map's cells: per-image PCA to ``n_components``
    (Sec. 3.1), eq. (2) with variance weights, eq. (3); times :func:`spatial_affinity` when
    ``spatial_sigma`` is given (the paper's default has no spatial term)."""
    fmap = _as_numpy_map(feature_map)
    _, H, W = fmap.shape
    X = local_descriptors(fmap)
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    F, variances = pca_project(X, min(int(n_components), *X.shape), random_state=random_state)
    S = similarity_from_distances(weighted_distances(F, variance_weights(variances)), z_ratio)
    if spatial_sigma is not None:
        S = S * spatial_affinity(H, W, spatial_sigma, spatial_radius)
    return S


# --------------------------------------------------------------------------------------------------
# Normalized Cut (Shi & Malik 2000, multiclass discretisation of Yu & Shi 2003)
# --------------------------------------------------------------------------------------------------

def _check_cluster_counts(cluster_counts) -> list[int]:
    if isinstance(cluster_counts, (int, np.integer)) and not isinstance(cluster_counts, bool):
        cluster_counts = [cluster_counts]
    counts = list(cluster_counts)
    if not counts:
        raise ValueError("cluster_counts is empty")
    for k in counts:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"cluster counts must be positive ints, got {k!r}")
    return [int(k) for k in counts]


def _compact(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..n-1 in order of first appearance (discretisation may leave clusters empty)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse.ravel()]


_FALLBACK_WARNED = False


def _sklearn_labels(affinity: np.ndarray, k: int, random_state: int) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    model = SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="discretize",
                               random_state=random_state)
    return model.fit(affinity).labels_


def _check_affinity(affinity) -> np.ndarray:
    A = np.asarray(affinity)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise ValueError(f"affinity must be a non-empty square matrix, got shape {A.shape}")
    if not np.issubdtype(A.dtype, np.floating):
        A = A.astype(np.float64)
    if not np.isfinite(A).all() or (A < 0).any():
        raise ValueError("affinity must be finite and non-negative")
    if np.abs(A - A.T).max() > 1e-5 * max(float(A.max()), 1e-30):
        raise ValueError("affinity must be symmetric")
    return A


def spectral_embedding(affinity, n_vectors: int, random_state: int = 0, eigen_solver: str = "arpack",
                       eigen_tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """The Normalized Cut embedding: ``(eigenvalues, embedding N x n_vectors)``.

    Self-affinities are ignored (as ``scipy.sparse.csgraph.laplacian`` does), ``d = rowsum(A)``
    (isolated nodes get ``d = 1``); the eigenvectors ``x`` of the ``n_vectors`` largest
    eigenvalues of ``D^-1/2 A D^-1/2`` (the smallest of the normalised Laplacian
    ``I - D^-1/2 A D^-1/2``), in decreasing order, give the embedding ``x / sqrt(d)`` (Shi & Malik's
    generalised eigenvectors ``(D - A) y = lambda D y``), as in ``sklearn.manifold.spectral_embedding``.

    ``"arpack"``: Lanczos (``scipy.sparse.linalg.eigsh``, float32, relative tolerance
    ``eigen_tol``, start vector drawn like scikit-learn's from ``random_state``); ``"dense"``:
    ``scipy.linalg.eigh`` (float64, ``subset_by_index``). Small problems always use ``"dense"``.
    """
    if eigen_solver not in ("arpack", "dense"):
        raise ValueError(f"eigen_solver must be 'arpack' or 'dense' here, got {eigen_solver!r}")
    A = _check_affinity(affinity)
    N = A.shape[0]
    if isinstance(n_vectors, bool) or not isinstance(n_vectors, (int, np.integer)) or not 1 <= n_vectors <= N:
        raise ValueError(f"n_vectors must be an int in [1, {N}], got {n_vectors!r}")
    with _one_blas_thread():
        return _embedding(A, int(n_vectors), random_state, eigen_solver, eigen_tol)


def _embedding(A: np.ndarray, n_vectors: int, random_state: int, eigen_solver: str, eigen_tol: float):
    N = A.shape[0]
    use_arpack = eigen_solver == "arpack" and N > 2 * n_vectors + 1
    W = np.array(A, dtype=np.float32 if use_arpack else np.float64)
    np.fill_diagonal(W, 0.0)
    degree = W.sum(axis=1, dtype=np.float64)
    degree[degree == 0] = 1.0  # isolated nodes, as scipy's normed Laplacian treats them
    dd = np.sqrt(degree)
    inv = (1.0 / dd).astype(W.dtype)
    W *= inv[:, None]
    W *= inv[None, :]
    if use_arpack:
        v0 = np.random.RandomState(random_state).uniform(-1, 1, N).astype(np.float32)
        values, vectors = eigsh(W, k=n_vectors, which="LA", v0=v0, tol=eigen_tol)
    else:
        values, vectors = eigh(W, subset_by_index=[N - n_vectors, N - 1])
    order = np.argsort(-values, kind="stable")
    return values[order].astype(np.float64), vectors[:, order].astype(np.float64) / dd[:, None]


def normalized_cut(affinity, cluster_counts=DEFAULT_CLUSTER_COUNTS, random_state: int = 0,
                   eigen_solver: str = "arpack", eigen_tol: float = 1e-4) -> dict[int, np.ndarray]:
    """Normalized Cut of a precomputed affinity into each number of clusters in ``cluster_counts``.

    Returns ``{k: labels}`` (labels ``0..k'-1`` in order of first appearance, ``k' <= k``: the
    discretisation can leave a cluster empty). This is scikit-learn's
    ``SpectralClustering(affinity="precomputed", assign_labels="discretize")`` (Shi & Malik's
    relaxation, Yu & Shi's discretisation, the same random stream for a given ``random_state``)
    except that the eigen-decomposition (:func:`spectral_embedding`) is done **once**, for
    ``max(cluster_counts)`` eigenvectors, and ``k`` clusters use the leading ``k`` of them.

    ``eigen_solver``: ``"arpack"`` (fastest for 20 of 1024), ``"dense"``, or ``"sklearn"``
    (scikit-learn's estimator, once per cluster count: the slower reference). With ``k >= N`` every
    node is its own cluster; ``k = 1`` gives one cluster.
    """
    choice("eigen_solver", eigen_solver, EIGEN_SOLVERS)
    return _normalized_cut(_check_affinity(affinity), _check_cluster_counts(cluster_counts),
                           random_state, eigen_solver, eigen_tol)


def _normalized_cut(A: np.ndarray, counts: list[int], random_state: int, eigen_solver: str,
                    eigen_tol: float) -> dict[int, np.ndarray]:
    """:func:`normalized_cut` on an affinity already known to be valid (built by this module)."""
    global _FALLBACK_WARNED
    N = A.shape[0]
    out: dict[int, np.ndarray] = {}
    todo = []
    for k in counts:
        if k == 1:
            out[k] = np.zeros(N, dtype=np.int64)
        elif k >= N:
            out[k] = np.arange(N, dtype=np.int64)
        else:
            todo.append(k)
    if not todo:
        return out
    if eigen_solver == "sklearn" or _sklearn_discretize is None:
        if _sklearn_discretize is None and eigen_solver != "sklearn" and not _FALLBACK_WARNED:
            warnings.warn("sklearn.cluster._spectral.discretize is not importable in this scikit-learn; "
                          "falling back to SpectralClustering once per cluster count (slower)",
                          RuntimeWarning, stacklevel=2)
            _FALLBACK_WARNED = True
        for k in todo:
            out[k] = _compact(_sklearn_labels(A, k, random_state))
        return out
    with _one_blas_thread():
        _, embedding = _embedding(A, max(todo), random_state, eigen_solver, eigen_tol)
        for k in todo:
            rng = np.random.RandomState(random_state)
            rng.uniform(-1, 1, N)  # scikit-learn draws ARPACK's start vector from this stream first
            out[k] = _compact(_sklearn_discretize(embedding[:, :k].copy(), random_state=rng))
    return out


def activation_clusters(feature_map, cluster_counts=DEFAULT_CLUSTER_COUNTS, n_components: int = 4,
                        z_ratio: float = DEFAULT_Z_RATIO, spatial_sigma: float | None = None,
                        spatial_radius: float | None = None, random_state: int = 0,
                        eigen_solver: str = "arpack") -> dict[int, np.ndarray]:
    """Clusters of a ``D x H x W`` conv map's cells (Sec. 3.1-3.2): ``{k: labels H x W}``.

    Per-image PCA to ``n_components`` (clipped to the number of cells), eqs. (2)-(3), optional
    spatial term, one Normalized Cut per entry of ``cluster_counts`` sharing one eigen-decomposition.
    """
    choice("eigen_solver", eigen_solver, EIGEN_SOLVERS)
    counts = _check_cluster_counts(cluster_counts)
    fmap = _as_numpy_map(feature_map)
    _, H, W = fmap.shape
    S = feature_similarity(fmap, n_components, z_ratio, spatial_sigma, spatial_radius, random_state)
    cuts = _normalized_cut(S, counts, random_state, eigen_solver, 1e-4)
    return {k: labels.reshape(H, W) for k, labels in cuts.items()}


def colour_clusters(thumbnail, n_clusters: int = DEFAULT_COLOUR_CLUSTERS, z_ratio: float = DEFAULT_Z_RATIO,
                    random_state: int = 0, eigen_solver: str = "arpack") -> np.ndarray:
    """Normalized Cut of an image resized to the map (``H x W x 3``, uint8 or floats in [0, 1]) on
    its RGB values (Sec. 4.1): labels ``H x W``. Eq. (3) on plain Euclidean RGB distances."""
    img = np.asarray(thumbnail)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise ValueError(f"thumbnail must be H x W x 3, got shape {img.shape}")
    rgb = img.astype(np.float64) / (255.0 if img.dtype == np.uint8 else 1.0)
    H, W, _ = rgb.shape
    choice("eigen_solver", eigen_solver, EIGEN_SOLVERS)
    (k,) = _check_cluster_counts([n_clusters])
    S = similarity_from_distances(weighted_distances(rgb.reshape(-1, 3)), z_ratio)
    return _normalized_cut(S, [k], random_state, eigen_solver, 1e-4)[k].reshape(H, W)


# --------------------------------------------------------------------------------------------------
# Regions, regional MAC and aggregation (Sec. 3.3, 4.2)
# --------------------------------------------------------------------------------------------------

def masks_from_labels(labels) -> np.ndarray:
    """One boolean ``H x W`` mask per cluster present in ``labels`` (sorted by label): ``R x H x W``."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be an H x W array, got shape {lab.shape}")
    values = np.unique(lab)
    return lab[None, :, :] == values[:, None, None]


def connected_parts(labels) -> np.ndarray:
    """Number of 4-connected pieces of each cluster of an ``H x W`` label map (sorted by label).

    A cluster with more than one piece is a region R-MAC's squares cannot express (Sec. 3.2)."""
    from scipy import ndimage

    masks = masks_from_labels(labels)
    return np.array([ndimage.label(m)[1] for m in masks], dtype=np.int64)


def rmac_region_masks(height: int, width: int, L: int = 3, overlap: float = 0.4) -> np.ndarray:
    """R-MAC's square regions (``helpers.pooling.rmac_regions``) as boolean masks ``R x H x W``."""
    from .pooling import rmac_regions

    regions = rmac_regions(height, width, L, overlap)
    masks = np.zeros((len(regions), height, width), dtype=bool)
    for r, (x, y, w, h) in enumerate(regions):
        masks[r, y:y + h, x:x + w] = True
    return masks


def regional_mac(feature_map, masks) -> np.ndarray:
    """Eq. (4) over each region: ``R x D`` with row ``r`` = ``max_{p in mask_r} chi(p)``.

    ``masks`` is ``R x H x W`` boolean (any shape of region, connected or not). Empty masks are an
    error (a region with no cell has no maximum).
    """
    fmap = _as_numpy_map(feature_map)
    D, H, W = fmap.shape
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (H, W):
        raise ValueError(f"masks must be R x {H} x {W} to match the map, got shape {m.shape}")
    flat = fmap.reshape(D, -1)
    out = np.empty((m.shape[0], D), dtype=np.float32)
    for r, mask in enumerate(m.reshape(m.shape[0], -1)):
        if not mask.any():
            raise ValueError(f"region {r} is empty")
        out[r] = flat[:, mask].max(axis=1)
    return out


def aggregate_regional_vectors(regional_vectors, whitening=None) -> np.ndarray:
    """Sec. 4.2: l2-normalise each regional MAC vector, PCA-whiten it (``whitening.transform``,
    which l2-normalises again), sum over regions and l2-normalise: one vector.

    ``whitening=None`` skips the whitening step (l2n, sum, l2n: R-MAC without PCA).
    """
    V = np.asarray(regional_vectors, dtype=np.float32)
    if V.ndim != 2 or V.shape[0] < 1:
        raise ValueError(f"regional_vectors must be R x D with R >= 1, got shape {V.shape}")
    V = l2n_np(V)
    if whitening is not None:
        V = np.asarray(whitening.transform(V), dtype=np.float32)
    return l2n_np(V.sum(axis=0))


def crop_map(feature_map, cells):
    """"Crop X": the activations inside ``cells = (c1, r1, c2, r2)`` (``c2``/``r2`` exclusive, as
    returned by ``helpers.features.bbx_on_map``). Works on ``... x H x W`` tensors and arrays."""
    c1, r1, c2, r2 = (int(v) for v in cells)
    H, W = feature_map.shape[-2:]
    if not (0 <= c1 < c2 <= W and 0 <= r1 < r2 <= H):
        raise ValueError(f"cells {tuple(cells)} do not lie inside a {H}x{W} map")
    return feature_map[..., r1:r2, c1:c2]


def box_cell_coverage(bbx, image_hw, map_hw) -> np.ndarray:
    """The fraction of each map cell's area that lies inside the box ``[x1, y1, x2, y2]`` (pixels
    of an image of size ``image_hw``), on a map of size ``map_hw``: ``h x w`` in ``[0, 1]``.

    The map is taken to cover the image uniformly (cell ``(y, x)`` spans pixels
    ``[x W/w, (x+1) W/w) x [y H/h, (y+1) H/h)``). The cells with a positive coverage are exactly
    those of ``helpers.features.bbx_on_map``, which rounds outwards.
    """
    from .features import checked_box

    (H, W), (h, w) = image_hw, map_hw
    x1, y1, x2, y2 = checked_box(bbx, image_hw, map_hw)
    # box in map-cell units, clipped to the map
    bx1, bx2 = np.clip([x1 * w / W, x2 * w / W], 0, w)
    by1, by2 = np.clip([y1 * h / H, y2 * h / H], 0, h)
    cx = np.arange(w, dtype=np.float64)
    cy = np.arange(h, dtype=np.float64)
    ox = np.clip(np.minimum(cx + 1, bx2) - np.maximum(cx, bx1), 0, 1)
    oy = np.clip(np.minimum(cy + 1, by2) - np.maximum(cy, by1), 0, 1)
    return oy[:, None] * ox[None, :]


def region_precision(masks, coverage) -> np.ndarray:
    """Eq. (1) for each region: ``area(rgn ∩ gt) / area(rgn)`` with ``coverage`` the per-cell share
    inside the ground-truth box (:func:`box_cell_coverage`; a 0/1 mask also works). ``R`` values."""
    m = np.asarray(masks, dtype=bool)
    cov = np.asarray(coverage, dtype=np.float64)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != cov.shape:
        raise ValueError(f"masks ({m.shape}) and coverage ({cov.shape}) must share H x W")
    area = m.sum(axis=(1, 2))
    if np.any(area == 0):
        raise ValueError("a region is empty: its precision is undefined")
    return (m * cov[None]).sum(axis=(1, 2)) / area


def region_precision_map(masks, coverage) -> np.ndarray:
    """Eq. (1) as a map: each cell gets the precision of the region that holds it (``h x w``; 0 for
    cells in no region, the last region's where regions overlap). ``masks`` ``R x h x w``, e.g. the
    clusters of one partition (:func:`masks_from_labels`); ``coverage`` as in :func:`region_precision`."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    out = np.zeros(m.shape[1:])
    for mask, precision in zip(m, region_precision(m, coverage)):
        out[mask] = precision
    return out


def share_at_or_above(precisions, thresholds) -> np.ndarray:
    """For each threshold, the fraction of regions whose precision is ``>=`` it (the paper's Fig. 4)."""
    p = np.asarray(precisions, dtype=np.float64).ravel()
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("no precisions given")
    return (p[None, :] >= t[:, None] - 1e-12).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# Regions of one image (Sec. 4.1)
# --------------------------------------------------------------------------------------------------

def colour_thumbnail(image, map_hw) -> np.ndarray:
    """The image resized to the map's ``h x w`` cells (area-averaged RGB, uint8): the input of the
    colour clusters of Sec. 4.1."""
    from skimage.transform import resize

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got shape {img.shape}")
    h, w = (int(v) for v in map_hw)
    if h < 1 or w < 1:
        raise ValueError(f"map size must be positive, got {map_hw}")
    small = resize(img, (h, w), anti_aliasing=True, preserve_range=True, order=1)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def cluster_region_masks(feature_map, thumbnail=None, cluster_counts=DEFAULT_CLUSTER_COUNTS,
                         n_colour_clusters: int = DEFAULT_COLOUR_CLUSTERS, n_components: int = 4,
                         z_ratio: float = DEFAULT_Z_RATIO, spatial_sigma: float | None = None,
                         spatial_radius: float | None = None, random_state: int = 0,
                         eigen_solver: str = "arpack") -> np.ndarray:
    """All regions of one image as boolean masks ``R x H x W`` (Sec. 4.1): the clusters of the
    feature map for each count in ``cluster_counts`` (5 and 20 in the paper), then
    ``n_colour_clusters`` clusters of the ``thumbnail``'s colours (skipped when ``thumbnail`` is
    None or ``n_colour_clusters`` is 0). Empty clusters are dropped."""
    fmap = _as_numpy_map(feature_map)
    _, H, W = fmap.shape
    cuts = activation_clusters(fmap, cluster_counts, n_components, z_ratio, spatial_sigma, spatial_radius,
                               random_state, eigen_solver)
    masks = [masks_from_labels(cuts[k]) for k in _check_cluster_counts(cluster_counts)]
    if thumbnail is not None and n_colour_clusters:
        thumb = np.ascontiguousarray(thumbnail)
        if thumb.shape[:2] != (H, W):
            raise ValueError(f"thumbnail must be resized to the map ({H}x{W}), got {thumb.shape}")
        # colour clusters do not depend on the feature parameters: memoise them (sweeps over C, z)
        key = (thumb.shape, thumb.dtype.str, thumb.tobytes(), int(n_colour_clusters), float(z_ratio),
               random_state, eigen_solver)
        labels = _COLOUR_LABELS.get(key)
        if labels is None:
            labels = colour_clusters(thumb, n_colour_clusters, z_ratio, random_state, eigen_solver)
            if len(_COLOUR_LABELS) >= 20_000:
                _COLOUR_LABELS.clear()
            _COLOUR_LABELS[key] = labels
        masks.append(masks_from_labels(labels))
    return np.concatenate(masks)


_COLOUR_LABELS: dict = {}


# --------------------------------------------------------------------------------------------------
# Dataset-level wrappers and the "clusters" method
# --------------------------------------------------------------------------------------------------

#: ``regions`` option of :class:`ActivationClustersMethod`.
RegionKind = Literal["clusters", "rmac"]
REGION_KINDS = typing.get_args(RegionKind)
#: ``query_crop`` option: "image" = crop I (cropped query image), "activations" = crop X.
QueryCrop = Literal["image", "activations"]
QUERY_CROPS = typing.get_args(QueryCrop)

_THUMBNAILS: dict = {}


def query_cells(dataset, backbone, image_size: int, maps) -> list:
    """For "crop X": the map cells ``(c1, r1, c2, r2)`` of each query's box on its uncropped map
    (``helpers.features.bbx_on_map``), or None for a query without a box. ``maps`` are the
    ``"query_full"`` maps."""
    from .features import bbx_on_map, extraction_info

    info = extraction_info(dataset, backbone, image_size, "query_full")
    cells = []
    for i, fmap in enumerate(maps):
        bbx = dataset.gnd[i].get("bbx")
        hw = info["original_hw"][i]
        if bbx is None or min(hw) <= 0:
            cells.append(None)
        else:
            cells.append(bbx_on_map(bbx, hw, tuple(fmap.shape[-2:])))
    return cells


def colour_thumbnails(dataset, split: str, map_shapes) -> list:
    """The image of every entry of ``split`` resized to its map (``split`` as in
    ``helpers.features``: "db", "query" = cropped by the box, "query_full"). The paper's colour
    clusters need the pixels, so this re-reads the images (the only place this module does),
    decoded at a reduced size where possible; cached in memory per dataset, split and map sizes.
    An image that cannot be read gives a grey thumbnail (its features are all zero anyway)."""
    from .features import load_split_image
    from .images import ImageReadError

    shapes = [tuple(int(v) for v in hw) for hw in map_shapes]
    key = (dataset.key, split, tuple(shapes))
    if key in _THUMBNAILS:
        return _THUMBNAILS[key]
    n = dataset.n_db if split == "db" else dataset.n_queries
    if len(shapes) != n:
        raise ValueError(f"need one map size per image of split {split!r} ({n}), got {len(shapes)}")
    out = []
    for i, hw in enumerate(shapes):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = load_split_image(dataset, split, i, max(64, 8 * max(hw)))
            out.append(colour_thumbnail(img, hw))
        except ImageReadError:
            out.append(np.full(hw + (3,), 128, dtype=np.uint8))
    _THUMBNAILS.clear()  # keep one split in memory at a time
    _THUMBNAILS[key] = out
    return out


def query_region_precisions(dataset, backbone, image_size: int, n_components: int | None = None,
                            cluster_counts=DEFAULT_CLUSTER_COUNTS, rmac_levels: int = 3,
                            z_ratio: float = DEFAULT_Z_RATIO, random_state: int = 0,
                            layer: str = "last_conv") -> dict:
    """Eq. (1) for every region of every query that has a box (the paper's Fig. 4).

    Regions live on the uncropped query's map (``"query_full"``): R-MAC's squares (``rmac_levels``)
    and the feature clusters for each count in ``cluster_counts`` (no colour clusters: Fig. 4
    compares feature regions). The ground truth is the query box as a per-cell area share
    (:func:`box_cell_coverage`). Returns ``{"rmac": [...], "clusters": [...]}``, one array of
    precisions per query with a box, and ``"queries"``: their indices.
    """
    from .features import extract_maps, extraction_info

    layer = backbone.resolve(layer)
    if n_components is None:
        n_components = default_n_components(backbone.architecture)
    maps = extract_maps(dataset, backbone, [layer], image_size, "query_full")[layer]
    info = extraction_info(dataset, backbone, image_size, "query_full")
    out = {"rmac": [], "clusters": [], "queries": []}
    for i, fmap in enumerate(maps):
        bbx = dataset.gnd[i].get("bbx")
        if bbx is None or not torch.any(fmap):
            continue
        h, w = fmap.shape[-2:]
        coverage = box_cell_coverage(bbx, info["original_hw"][i], (h, w))
        clusters = cluster_region_masks(fmap, None, cluster_counts, 0, n_components, z_ratio,
                                        random_state=random_state)
        out["rmac"].append(region_precision(rmac_region_masks(h, w, rmac_levels), coverage))
        out["clusters"].append(region_precision(clusters, coverage))
        out["queries"].append(i)
    if not out["queries"]:
        raise ValueError(f"no query of {dataset.name} has a bounding box: region precision needs one")
    return out


from .methods import RetrievalMethod, register_method  # noqa: E402  (core import after the pure part)


@register_method("clusters")
class ActivationClustersMethod(RetrievalMethod):
    """Aggregated per-cluster MAC vectors (paper 004). ``python -m helpers evaluate --method clusters``.

    Options (``--option KEY=VALUE``):
        regions: ``"clusters"`` (the paper's method) or ``"rmac"`` (R-MAC's square regions with the
            same post-processing: the baseline of Table 1). n_components: C of Sec. 3.1 (PCA
            dimensions used for clustering; None = :func:`default_n_components`). cluster_counts:
            feature cluster counts ((5, 20)).
            colour_clusters: number of colour clusters (5; 0 = none). z_ratio: z / max(d) of eq. 3
            (0.05). spatial_sigma / spatial_radius: add Shi & Malik's spatial term (cells; None).
            rmac_levels: L of R-MAC (3). query_crop: ``"image"`` (crop I) or ``"activations"``
            (crop X). qe_k: average query expansion with the top k (0 = none). whiten (True),
            whiten_dim (None = all), whiten_shrinkage (0): PCA-whitening of the regional vectors,
            learned on the training dataset's regional vectors. random_state (0), eigen_solver
            ("arpack").
    """

    layers = ("last_conv",)
    learns = "PCA-whitening of the regional (per-cluster) vectors"

    def __init__(self, backbone, image_size: int, regions: RegionKind = "clusters", n_components: int | None = None,
                 cluster_counts: tuple[int, ...] | int = DEFAULT_CLUSTER_COUNTS,
                 colour_clusters: int = DEFAULT_COLOUR_CLUSTERS, z_ratio: float = DEFAULT_Z_RATIO,
                 spatial_sigma: float | None = None, spatial_radius: float | None = None, rmac_levels: int = 3,
                 query_crop: QueryCrop = "image", qe_k: int = 0, whiten: bool = True, whiten_dim: int | None = None,
                 whiten_shrinkage: float = 0.0, random_state: int = 0, eigen_solver: EigenSolver = "arpack",
                 layer: str = "last_conv"):
        from .whitening import PCAWhitening

        super().__init__(backbone, image_size)
        self.regions = choice("regions", regions, REGION_KINDS)
        self.query_crop = choice("query_crop", query_crop, QUERY_CROPS)
        self.eigen_solver = choice("eigen_solver", eigen_solver, EIGEN_SOLVERS)
        self.n_components = positive_int("n_components", default_n_components(backbone.architecture)
                                         if n_components is None else n_components)
        self.cluster_counts = tuple(_check_cluster_counts(cluster_counts))
        self.colour_clusters = positive_int("colour_clusters", colour_clusters, minimum=0)
        self.z_ratio = fraction("z_ratio", z_ratio, low_open=True, high=math.inf)
        self.spatial_sigma = None if spatial_sigma is None else fraction("spatial_sigma", spatial_sigma,
                                                                         low_open=True, high=math.inf)
        self.spatial_radius = None if spatial_radius is None else float(spatial_radius)
        self.rmac_levels = positive_int("rmac_levels", rmac_levels)
        self.qe_k = positive_int("qe_k", qe_k, minimum=0)
        self.random_state = positive_int("random_state", random_state, minimum=0)
        whiten = parse_bool("whiten", whiten)
        self.layer = backbone.resolve(layer)
        self.layers = (self.layer,)
        self.whitening = PCAWhitening(whiten_dim, whiten_shrinkage) if whiten else None
        self.needs_training = whiten
        self._regional: dict = {}  # (dataset key, split) -> regional vectors; regions do not depend on fit

    # -------------------------------------------------------------- regions of one map
    def region_masks(self, feature_map, thumbnail=None) -> np.ndarray:
        """The regions of one map: clusters (+ colour clusters of ``thumbnail``) or R-MAC squares."""
        _, H, W = feature_map.shape
        if self.regions == "rmac":
            return rmac_region_masks(H, W, self.rmac_levels)
        return cluster_region_masks(feature_map, thumbnail, self.cluster_counts, self.colour_clusters,
                                    self.n_components, self.z_ratio, self.spatial_sigma, self.spatial_radius,
                                    self.random_state, self.eigen_solver)

    def regional_vectors(self, maps, thumbnails=None) -> list:
        """Per-region MAC vectors (``R_i x D``) of every map; None for an all-zero (skipped) map."""
        out = []
        for i, fmap in enumerate(maps):
            fmap = _as_numpy_map(fmap)
            if not np.any(fmap):
                out.append(None)
                continue
            thumb = thumbnails[i] if thumbnails is not None else None
            out.append(regional_mac(fmap, self.region_masks(fmap, thumb)))
        return out

    def _maps_and_thumbnails(self, dataset, split: str, crop_activations: bool = False):
        from .features import extract_maps

        maps = extract_maps(dataset, self.backbone, [self.layer], self.image_size, split)[self.layer]
        need_colour = self.regions == "clusters" and self.colour_clusters > 0
        thumbs = colour_thumbnails(dataset, split, [m.shape[-2:] for m in maps]) if need_colour else None
        if crop_activations:
            cells = query_cells(dataset, self.backbone, self.image_size, maps)
            maps = [m if c is None else crop_map(m, c) for m, c in zip(maps, cells)]
            if thumbs is not None:
                thumbs = [t if c is None else t[c[1]:c[3], c[0]:c[2]] for t, c in zip(thumbs, cells)]
        return maps, thumbs

    def split_regional_vectors(self, dataset, split: str) -> list:
        """Regional MAC vectors of every image of ``split`` ("db", "query" = crop I, "crop_x"),
        kept in memory by this method instance (they do not depend on the whitening)."""
        key = (dataset.key, split)
        if key not in self._regional:
            if split == "crop_x":
                maps, thumbs = self._maps_and_thumbnails(dataset, "query_full", crop_activations=True)
            elif split in ("db", "query"):
                maps, thumbs = self._maps_and_thumbnails(dataset, split)
            else:
                raise ValueError(f"split must be 'db', 'query' or 'crop_x', got {split!r}")
            self._regional[key] = self.regional_vectors(maps, thumbs)
        return self._regional[key]

    def clear_cache(self) -> None:
        """Forget the regional vectors kept by :meth:`split_regional_vectors` (frees memory)."""
        self._regional.clear()

    def aggregate(self, regional) -> np.ndarray:
        """Sec. 4.2 on every image's regional vectors: ``N x D`` (zeros for skipped images)."""
        if self.whitening is not None and self.whitening.projection_ is None:
            raise RuntimeError("the clusters method with whiten=True must be fit on a training dataset first")
        dims = [v.shape[1] for v in regional if v is not None]
        if not dims:
            raise ValueError("no image of the split could be described (all feature maps are empty)")
        out_dim = self.whitening.projection_.shape[1] if self.whitening is not None else dims[0]
        out = np.zeros((len(regional), out_dim), dtype=np.float32)
        for i, v in enumerate(regional):
            if v is not None:
                out[i] = aggregate_regional_vectors(v, self.whitening)
        return out

    # -------------------------------------------------------------- RetrievalMethod interface
    def fit(self, train_dataset) -> "ActivationClustersMethod":
        """Learn the PCA-whitening on the regional MAC vectors of ``train_dataset``'s database."""
        if self.whitening is not None:
            rows = [v for v in self.split_regional_vectors(train_dataset, "db") if v is not None]
            if not rows:
                raise ValueError(f"no image of {train_dataset.name} could be described to learn the whitening")
            self.whitening.fit(l2n_np(np.concatenate(rows)))
        return self

    def describe_queries(self, dataset, query_crop: str | None = None) -> np.ndarray:
        """Query descriptors with "crop I" (``"image"``) or "crop X" (``"activations"``)."""
        crop = self.query_crop if query_crop is None else choice("query_crop", query_crop, QUERY_CROPS)
        return self.aggregate(self.split_regional_vectors(dataset, "query" if crop == "image" else "crop_x"))

    def describe(self, dataset, split: str) -> np.ndarray:
        if split == "query":
            return self.describe_queries(dataset)
        if split != "db":
            raise ValueError(f"split must be 'db' or 'query', got {split!r}")
        return self.aggregate(self.split_regional_vectors(dataset, "db"))

    def score(self, query_desc, db_desc) -> np.ndarray:
        return np.asarray(db_desc) @ np.asarray(query_desc).T

    def search(self, dataset) -> np.ndarray:
        """Cosine scores, then average query expansion when ``qe_k > 0``."""
        queries, db = self.describe(dataset, "query"), self.describe(dataset, "db")
        scores = self.score(queries, db)
        return query_expansion(queries, db, scores, self.qe_k) if self.qe_k else scores


def mean_precision_per_query(precisions) -> np.ndarray:
    """Mean eq.-(1) precision of each query's regions, in points (0-100): one value per query, for a
    paired comparison (:func:`helpers.evaluate.paired_comparison`). It equals the area under the
    query's curve of :func:`share_at_or_above` over thresholds in [0, 1]."""
    if len(precisions) == 0:
        raise ValueError("precisions is empty: give one array of region precisions per query")
    if any(np.size(p) == 0 for p in precisions):
        raise ValueError("every query needs at least one region precision")
    return np.array([100.0 * float(np.mean(p)) for p in precisions])


# --------------------------------------------------------------------------------------------------
# Tables 1-3: the same comparison on any backbone
# --------------------------------------------------------------------------------------------------

def evaluate_descriptors(dataset, queries, db, qe_k: int = 0) -> dict:
    """The protocol's results (:func:`helpers.evaluate.evaluate_scores`) of the cosine scores
    ``db @ queries.T``, after average query expansion with the top ``qe_k`` images (0: none)."""
    from .evaluate import evaluate_scores

    scores = np.asarray(db) @ np.asarray(queries).T
    if qe_k:
        scores = query_expansion(queries, db, scores, qe_k)
    return evaluate_scores(dataset, scores)


def region_table(dataset, described: dict, crops=("image", "activations"), qe_values=(0,)) -> dict:
    """Table 1: ``{(regions, crop, qe): results}`` for fitted methods ``described = {regions:
    (method, its database descriptors)}``. ``crop`` is ``"image"`` (crop I: the query image cut by
    its box) or ``"activations"`` (crop X: the whole query through the network, its map cut by the
    box); ``qe`` the query-expansion depth (0: none)."""
    table = {}
    for regions, (method, db) in described.items():
        for crop in crops:
            queries = method.describe_queries(dataset, crop)
            for qe in qe_values:
                table[(regions, crop, qe)] = evaluate_descriptors(dataset, queries, db, qe)
    return table


def network_descriptors(dataset, backbone, image_size: int, split: str, whitening: str | None = None) -> np.ndarray:
    """A fine-tuned network's own descriptors (its ``"descriptor"`` tap: trained pooling and
    whitening) of a split, ``N x D``; with ``whitening``, the learned whitening its authors ship
    under that name (:attr:`helpers.backbones.Backbone.learned_whitening`, siaMAC's *L_w*) applied as
    ``l2n(P (x - m))``."""
    from .features import extract_maps

    if "descriptor" not in backbone.vector_taps:
        raise ValueError(f"backbone {backbone.name!r} has no descriptor of its own (not a fine-tuned retrieval network)")
    X = np.stack([t.numpy() for t in extract_maps(dataset, backbone, ["descriptor"], image_size, split)["descriptor"]])
    if whitening is None:
        return l2n_np(X)
    learned = backbone.learned_whitening or {}
    if whitening not in learned:
        raise ValueError(f"backbone {backbone.name!r} ships no learned whitening {whitening!r}; it has {sorted(learned)}")
    m, P = learned[whitening]["m"], learned[whitening]["P"]
    return l2n_np((X.astype(np.float64) - m) @ P.T)


def fine_tuned_comparison(dataset, train_dataset, backbone, image_size: int, crops=("image", "activations"),
                          qe_values=(0,), **method_options) -> dict:
    """Tables 2 and 3: on a fine-tuned backbone, R-MAC's squares and the clusters (both with the
    post-processing of Table 1, PCA-whitened on ``train_dataset``: the paper's *PCA_w*) beside the
    network's own descriptor (crop I, rows ``"network"``; ``"network+Lw"`` with its learned
    whitening where it ships one). Returns ``{(row, crop, qe): results}`` as :func:`region_table`."""
    from .methods import make_method

    described = {}
    for regions in ("rmac", "clusters"):
        method = make_method("clusters", backbone, image_size, regions=regions, **method_options).fit(train_dataset)
        described[regions] = (method, method.describe(dataset, "db"))
        method.clear_cache()
    table = region_table(dataset, described, crops, qe_values)
    whitenings = [None] + sorted(backbone.learned_whitening or {})[:1]
    for whitening in whitenings:
        row = "network" if whitening is None else "network+Lw"
        queries = network_descriptors(dataset, backbone, image_size, "query", whitening)
        db = network_descriptors(dataset, backbone, image_size, "db", whitening)
        for qe in qe_values:
            table[(row, "image", qe)] = evaluate_descriptors(dataset, queries, db, qe)
    return table

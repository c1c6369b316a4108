"""PCA-whitening learned on one dataset, applied to another (Jégou & Chum 2012).

``x -> P^T (x - mu)`` with ``P = V diag(lambda + shrinkage * mean(lambda))^(-1/2)`` from the
eigen-decomposition of the training covariance, keeping the ``dim`` leading components, then
l2-normalisation. ``shrinkage`` (default 0) regularises the small eigenvalues, which matters when
the training set is small: with fewer samples than dimensions the trailing components are noise.
"""
from __future__ import annotations

import numpy as np

from .pooling import l2n_np

__all__ = ["PCAWhitening"]


class PCAWhitening:
    """PCA-whitening + l2-normalisation. ``fit`` on training vectors (rows), ``transform`` others."""

    def __init__(self, dim: int | None = None, shrinkage: float = 0.0):
        if dim is not None and dim < 1:
            raise ValueError(f"whitening dimension must be >= 1, got {dim}")
        if shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        self.dim = dim
        self.shrinkage = shrinkage
        self.mean_: np.ndarray | None = None
        self.projection_: np.ndarray | None = None
        self.eigenvalues_: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> "PCAWhitening":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 2:
            raise ValueError(f"PCA-whitening needs at least 2 training vectors as rows, got {X.shape}")
        n, d = X.shape
        rank = min(n - 1, d)
        dim = rank if self.dim is None else self.dim
        if dim > rank:
            raise ValueError(
                f"cannot keep {dim} whitened dimensions: {n} training vectors of {d} dimensions "
                f"span at most {rank}"
            )
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        cov = Xc.T @ Xc / (n - 1)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1][:dim]
        eigval = np.clip(eigval[order], 0, None)
        reg = eigval + self.shrinkage * eigval.mean() + 1e-9
        self.eigenvalues_ = eigval
        self.projection_ = (eigvec[:, order] / np.sqrt(reg)).astype(np.float32)
        self.mean_ = self.mean_.astype(np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.projection_ is None:
            raise RuntimeError("PCAWhitening.transform called before fit")
        X = np.asarray(X, dtype=np.float32)
        if X.shape[-1] != self.mean_.shape[0]:
            raise ValueError(
                f"whitening was learned on {self.mean_.shape[0]}-d vectors, got {X.shape[-1]}-d"
            )
        return l2n_np((X - self.mean_) @ self.projection_)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

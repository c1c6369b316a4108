"""Bags of visual words: a k-means vocabulary, word assignment, word counts, tf-idf, an inverted file.

The one implementation behind the two methods of the suite that use visual words:

* :mod:`helpers.roi` (paper 003, first stage, sec. 3.2.4): SIFT descriptors, a vocabulary learned on
  the training set, an :class:`InvertedFile` over the database whose idf is the database's own;
* :mod:`helpers.multilayer` (paper 002, Sec. 4.1): the cells of a conv map as local features, a
  vocabulary *and* its idf learned on the training set, dense tf-idf vectors compared by cosine.

This module knows vectors and word ids only; what the descriptors are and how many words a
vocabulary has is the method's (each paper's choice stays in its module). Where the two methods
differ in a way that moves their numbers, a parameter says which (``unseen`` of :func:`idf_weights`);
the docstring says why it exists.

Conventions: word counts are ``N x V`` scipy sparse matrices (``N`` images, ``V`` words); tf-idf
vectors are l2-normalised with :func:`helpers.pooling.l2n_np`'s rule (``eps`` added to the norm, so
that an image without words stays a zero vector).
"""
from __future__ import annotations

import warnings
from typing import Literal, Sequence

import numpy as np
import scipy.sparse as sp

from .options import choice, positive_int
from .pooling import L2N_EPS

__all__ = ["IDF_UNSEEN", "InvertedFile", "assign_words", "idf_weights", "learn_vocabulary", "tfidf", "word_counts"]

#: What :func:`idf_weights` gives a word that no counted image contains.
IDF_UNSEEN = ("zero", "rarest")


def learn_vocabulary(descriptors, n_words: int, seed: int = 0, max_descriptors: int | None = None,
                     iterations: int = 20, n_init: int = 1) -> np.ndarray:
    """k-means visual vocabulary, ``n_words x d`` float32 centres (faiss's ``Kmeans``: exact Lloyd
    iterations with BLAS, fast enough for the tens of thousands of words the papers use).

    Learn it on a training set, never on the evaluated one.

    Args:
        descriptors: ``n x d`` local descriptors of the training images.
        n_words: vocabulary size (at most ``n``).
        seed: seeds the subset and the k-means initialisation.
        max_descriptors: at most this many descriptors (a seeded random subset) are clustered; None:
            all of them.
        iterations: Lloyd iterations (the papers' approximate k-means runs a similar number).
        n_init: k-means restarts, the best kept (one, like the papers' single run).
    """
    import faiss

    n_words = positive_int("n_words", n_words)
    n_init = positive_int("n_init", n_init)
    iterations = positive_int("iterations", iterations)
    descriptors = np.ascontiguousarray(np.asarray(descriptors, dtype=np.float32))
    if descriptors.ndim != 2:
        raise ValueError(f"descriptors must be n x d, got shape {descriptors.shape}")
    if not np.isfinite(descriptors).all():
        raise ValueError("descriptors contain NaN or infinite values")
    if descriptors.shape[0] < n_words:
        raise ValueError(f"cannot learn {n_words} visual words from {descriptors.shape[0]} descriptors "
                         "(fewer than n_words); lower the vocabulary size or use a larger training set")
    if max_descriptors is not None and descriptors.shape[0] > positive_int("max_descriptors", max_descriptors):
        rng = np.random.default_rng(seed)
        descriptors = descriptors[np.sort(rng.choice(descriptors.shape[0], max_descriptors, replace=False))]
    # every descriptor takes part (faiss would otherwise subsample to 256 per centroid, silently), and
    # few descriptors per word are the caller's to report (faiss would print a warning of its own)
    kmeans = faiss.Kmeans(descriptors.shape[1], n_words, niter=iterations, nredo=n_init, seed=int(seed) % 2**31,
                          max_points_per_centroid=max(256, -(-descriptors.shape[0] // n_words)),
                          min_points_per_centroid=1, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kmeans.train(descriptors)
    return np.asarray(kmeans.centroids, dtype=np.float32)


def assign_words(descriptors, centers) -> np.ndarray:
    """Index of the nearest visual word (Euclidean, hard assignment) of each descriptor: ``n`` int64
    (faiss exact L2 search; ties go to the lower word index)."""
    import faiss

    descriptors = np.ascontiguousarray(np.asarray(descriptors, dtype=np.float32))
    centers = np.ascontiguousarray(np.asarray(centers, dtype=np.float32))
    if descriptors.ndim != 2 or centers.ndim != 2 or (len(descriptors) and descriptors.shape[1] != centers.shape[1]):
        raise ValueError(f"descriptors n x d and vocabulary V x d must share d: {descriptors.shape}, {centers.shape}")
    if descriptors.shape[0] == 0:
        return np.zeros(0, np.int64)
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(centers)
    return index.search(descriptors, 1)[1][:, 0].astype(np.int64)


def word_counts(word_lists: Sequence, n_words: int) -> sp.csr_matrix:
    """How often each word occurs in each image: ``N x V`` float64 sparse, from one array of word ids
    per image (ids in ``[0, n_words)``)."""
    n_words = positive_int("n_words", n_words)
    rows, cols = [], []
    for j, words in enumerate(word_lists):
        words = np.asarray(words, dtype=np.int64).ravel()
        if words.size and (words.min() < 0 or words.max() >= n_words):
            raise ValueError(f"visual word ids must lie in [0, {n_words}), image {j} has "
                             f"{words.min()}..{words.max()}")
        rows.append(np.full(words.size, j))
        cols.append(words)
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    data = np.ones(rows.size, np.float64)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(word_lists), n_words))  # duplicates are summed


def idf_weights(counts, unseen: Literal["zero", "rarest"] = "zero") -> np.ndarray:
    """Inverse document frequencies ``idf_w = log(N / n_w)`` of the ``N`` images counted in
    ``counts`` (``N x V``, sparse or dense), ``n_w`` of which contain word ``w``.

    ``unseen`` is the weight of a word no counted image contains:

    * ``"zero"`` when the idf is that of the database being searched (the RoI first stage): such a
      word cannot match any database image, and 0 keeps the scores the cosines of the tf-idf
      vectors over the database's words;
    * ``"rarest"`` (``log N``, the weight of a word found in one image) when the idf is learned on a
      training set (the multi-layer BoW): a word missing there can still occur in two evaluated
      images, and it is at least as rare as the rarest word seen, so it keeps its match.
    """
    unseen = choice("unseen", unseen, IDF_UNSEEN)
    counts = sp.csr_matrix(counts)
    n_images = counts.shape[0]
    if n_images == 0:
        raise ValueError("cannot compute inverse document frequencies of zero images")
    doc_freq = np.asarray((counts > 0).sum(axis=0)).ravel()
    idf = np.log(n_images / np.maximum(doc_freq, 1))
    if unseen == "zero":
        idf[doc_freq == 0] = 0.0
    return idf


def tfidf(counts, idf) -> sp.csr_matrix:
    """l2-normalised tf-idf vectors ``N x V`` (sparse) of word counts ``N x V`` and weights ``idf``.

    Term frequency = count / number of words of the image; that division is a per-image scale,
    which the l2-normalisation removes, so the vectors are the normalised ``count * idf``. All
    entries are non-negative, so cosine similarities lie in ``[0, 1]``.
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    idf = np.asarray(idf, dtype=np.float64).ravel()
    if idf.shape != (counts.shape[1],):
        raise ValueError(f"need one idf weight per word: {counts.shape[1]} words, idf of shape {idf.shape}")
    weighted = (counts @ sp.diags(idf)).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    return (sp.diags(1.0 / (norms + L2N_EPS)) @ weighted).tocsr()


class InvertedFile:
    """TF-IDF inverted file over visual words (the RoI method's first stage, sec. 3.2.4).

    Each database image ``j`` is its l2-normalised tf-idf vector (:func:`tfidf`), with the idf of
    the database itself (:func:`idf_weights`, ``unseen="zero"``). The index is a ``V x N`` sparse
    matrix whose rows are the posting lists; a query is scored by walking the posting lists of its
    words (a sparse product), which gives the cosine similarity of the tf-idf vectors.
    """

    def __init__(self, n_words: int):
        self.n_words = positive_int("n_words", n_words)
        self.idf: np.ndarray | None = None
        self.postings: sp.csr_matrix | None = None

    def fit(self, database_words: Sequence) -> "InvertedFile":
        """Index the database: one array of visual word ids per image."""
        if len(database_words) == 0:
            raise ValueError("cannot index an empty database")
        counts = word_counts(database_words, self.n_words)
        self.idf = idf_weights(counts, "zero")
        self.postings = tfidf(counts, self.idf).T.tocsr()       # V x N: row w = posting list of word w
        return self

    def score(self, query_words: Sequence) -> np.ndarray:
        """Cosine tf-idf similarities, ``n_db x n_q`` (higher is better)."""
        if self.postings is None:
            raise RuntimeError("InvertedFile.score called before fit")
        queries = tfidf(word_counts(query_words, self.n_words), self.idf)     # n_q x V
        return np.asarray((queries @ self.postings).T.todense(), dtype=np.float64)

"""Tests of helpers.bow (bags of visual words shared by the roi and multilayer methods), from the definitions."""
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import bow
from helpers.options import OptionError


def _blobs(seed=0, n=150):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return centers, np.concatenate([c + rng.normal(scale=0.1, size=(n, 2)) for c in centers]).astype(np.float32)


def test_learn_vocabulary_recovers_separated_centres_deterministically():
    centers, data = _blobs()
    # random initial centres (as in the papers' approximate k-means) can merge two blobs: the best of
    # five restarts (n_init) finds the four
    vocab = bow.learn_vocabulary(data, 4, seed=0, n_init=5)
    assert vocab.shape == (4, 2) and vocab.dtype == np.float32
    assert np.allclose(np.sort(vocab @ [1, 3]), np.sort(centers @ [1, 3]), atol=0.1)
    np.testing.assert_array_equal(vocab, bow.learn_vocabulary(data, 4, seed=0, n_init=5))
    # a subset of the descriptors: the same clusters, from max_descriptors of them
    sub = bow.learn_vocabulary(data, 4, seed=0, max_descriptors=100, n_init=5)
    assert np.allclose(np.sort(sub @ [1, 3]), np.sort(centers @ [1, 3]), atol=0.2)


def test_learn_vocabulary_uses_every_descriptor_and_many_words():
    # 20,000 descriptors, 4,000 words: faiss would subsample to 256 per centroid by default; here every
    # descriptor is assigned, and the assignment is the exact nearest word
    rng = np.random.default_rng(1)
    data = rng.normal(size=(20_000, 8)).astype(np.float32)
    vocab = bow.learn_vocabulary(data, 4000, seed=0, iterations=3)
    assert vocab.shape == (4000, 8) and np.isfinite(vocab).all()
    words = bow.assign_words(data[:500], vocab)
    exact = np.argmin(((data[:500, None, :] - vocab[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(words, exact)
    with pytest.raises(ValueError, match="NaN"):
        bow.learn_vocabulary(np.full((10, 2), np.nan, np.float32), 2)


def test_learn_vocabulary_rejects_bad_input():
    _, data = _blobs()
    with pytest.raises(ValueError, match="visual words.*fewer than n_words"):
        bow.learn_vocabulary(data[:3], 4)
    with pytest.raises(OptionError, match="n_words"):
        bow.learn_vocabulary(data, 0)
    with pytest.raises(ValueError, match="n x d"):
        bow.learn_vocabulary(data.ravel(), 4)


def test_assign_words_needs_matching_dimensions():
    with pytest.raises(ValueError, match="share d"):
        bow.assign_words(np.zeros((3, 5)), np.zeros((4, 6)))


def test_word_counts_sum_repeated_words_and_check_ids():
    counts = bow.word_counts([np.array([0, 2, 2]), np.array([], np.int64), np.array([3])], 4)
    assert sp.issparse(counts) and counts.shape == (3, 4)
    assert counts.toarray().tolist() == [[1, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        bow.word_counts([np.array([4])], 4)


def test_idf_weights_and_the_weight_of_unseen_words():
    counts = bow.word_counts([[0, 1], [0], [0, 0, 2]], 4)      # word 3 occurs in no image
    zero = bow.idf_weights(counts, "zero")
    np.testing.assert_allclose(zero, [0.0, np.log(3), np.log(3), 0.0])
    rarest = bow.idf_weights(counts.toarray(), "rarest")         # dense counts work too
    np.testing.assert_allclose(rarest, [0.0, np.log(3), np.log(3), np.log(3)])
    with pytest.raises(OptionError, match="unseen.*zero, rarest"):
        bow.idf_weights(counts, "drop")


def test_tfidf_is_the_normalised_tf_times_idf():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4, (6, 10)).astype(float)
    counts[2] = 0                                                # an image without words stays zero
    idf = rng.uniform(0, 2, 10)
    vec = bow.tfidf(counts, idf).toarray()
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    expected = tf * idf
    expected /= np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(vec, expected, rtol=1e-5, atol=1e-12)
    assert not vec[2].any() and np.all(vec >= 0)
    with pytest.raises(ValueError, match="one idf weight per word"):
        bow.tfidf(counts, idf[:3])


def test_inverted_file_indexes_the_database_with_its_own_idf():
    rng = np.random.default_rng(4)
    V = 15
    db = [rng.integers(0, V, rng.integers(1, 25)) for _ in range(10)]
    inv = bow.InvertedFile(V).fit(db)
    counts = bow.word_counts(db, V)
    np.testing.assert_allclose(inv.idf, bow.idf_weights(counts, "zero"))
    assert (inv.postings != bow.tfidf(counts, inv.idf).T).nnz == 0   # posting lists: one row per word
    with pytest.raises(ValueError, match="empty database"):
        bow.InvertedFile(V).fit([])


# ------------------------------------------------------------------ as the RoI first stage uses them

def test_inverted_file_matches_dense_tfidf_cosine():
    rng = np.random.default_rng(0)
    V = 12
    db = [rng.integers(0, V, rng.integers(1, 20)) for _ in range(8)]
    queries = [rng.integers(0, V, 6), np.array([3, 3, 3])]
    inv = bow.InvertedFile(V).fit(db)
    counts = np.stack([np.bincount(w, minlength=V) for w in db]).astype(float)
    idf = np.array([np.log(8 / (counts[:, w] > 0).sum()) if (counts[:, w] > 0).any() else 0.0
                    for w in range(V)])

    def vec(words):
        c = np.bincount(words, minlength=V).astype(float)
        v = c / c.sum() * idf
        return v / max(np.linalg.norm(v), 1e-12)

    expected = np.stack([[vec(d) @ vec(q) for q in queries] for d in db])
    assert np.allclose(inv.score(queries), expected)
    with pytest.raises(ValueError, match="word ids"):
        inv.score([np.array([V])])
    with pytest.raises(RuntimeError):
        bow.InvertedFile(V).score(queries)


def test_assign_words_is_nearest_word():
    rng = np.random.default_rng(0)
    vocab = rng.normal(size=(7, 5)).astype(np.float32)
    desc = rng.normal(size=(30, 5)).astype(np.float32)
    expected = ((desc[:, None, :] - vocab[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(bow.assign_words(desc, vocab), expected)
    assert bow.assign_words(np.zeros((0, 5)), vocab).shape == (0,)


def test_learn_vocabulary_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    data = np.concatenate([c + rng.normal(scale=0.1, size=(200, 2)) for c in centers])
    vocab = bow.learn_vocabulary(data, 3, seed=0)
    assert np.allclose(np.sort(vocab[:, 0] + 2 * vocab[:, 1]), np.sort(centers @ [1, 2]), atol=0.1)
    with pytest.raises(ValueError, match="visual words"):
        bow.learn_vocabulary(data[:2], 3)

import numpy as np
import pytest

from helpers import postprocess as pp
from helpers.pooling import l2n_np


def test_average_query_expansion_by_hand():
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    q = np.array([[0.6, 0.8]], dtype=np.float32)
    scores = pp.query_expansion(q, db, k=1)
    # best match of q is db[1] (0.96): new query = l2n(q + db[1]) = l2n(1.4, 1.4)
    new_q = np.array([1.4, 1.4]) / np.hypot(1.4, 1.4)
    np.testing.assert_allclose(scores[:, 0], db @ new_q, rtol=1e-5)
    np.testing.assert_array_equal(pp.query_expansion(q, db, k=0), db @ q.T)
    with pytest.raises(ValueError, match="int >= 0"):
        pp.query_expansion(q, db, k=-1)
    with pytest.raises(ValueError, match="n_q x D"):
        pp.query_expansion(q, db[:, :1], k=1)
    with pytest.raises(ValueError, match="alpha"):
        pp.query_expansion(q, db, k=1, alpha=-1)


def test_alpha_query_expansion_weights_neighbours_by_similarity_power():
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    q = np.array([[0.6, 0.8]], dtype=np.float32)
    s = db @ q.T                                   # 0.6, 0.96, 0.8
    scores = pp.query_expansion(q, db, k=2, alpha=3)
    new_q = q[0] + 0.96 ** 3 * db[1] + 0.8 ** 3 * db[2]
    np.testing.assert_allclose(scores[:, 0], db @ (new_q / np.linalg.norm(new_q)), rtol=1e-5)
    # negative similarities weigh nothing
    far = np.array([[-1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(pp.query_expansion(q, far, np.array([[-0.6]], np.float32), k=1, alpha=3),
                               far @ q.T, rtol=1e-6)
    assert s.shape == (3, 1)


def test_diffusion_spreads_along_the_manifold():
    # chain A: unit vectors 0.15 rad apart on a great circle through the query's direction (x);
    # group B: a tight chain 0.7 rad from the query in another plane. The plain product ranks B above
    # A's far end (1.5 rad away); diffusion from the query's two nearest images (A's start) reaches
    # A's far end through the chain and never reaches B, which no mutual-kNN edge joins to A
    angles = np.arange(11) * 0.15
    chain_a = np.stack([np.cos(angles), np.sin(angles), np.zeros(11)], 1)
    offsets = np.arange(6) * 0.02
    group_b = np.stack([np.cos(0.7) * np.ones(6), np.sin(offsets) * 0.1, np.sin(0.7) * np.ones(6)], 1)
    db = l2n_np(np.r_[chain_a, group_b].astype(np.float32))
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    plain = (db @ q.T)[:, 0]
    assert plain[10] < plain[11:].min()
    f = pp.diffusion(q, db, k=2, k_query=2, alpha=0.99, gamma=1.0, max_iterations=500)[:, 0]
    assert f.shape == (17,) and f[10] > f[11:].max()
    with pytest.raises(ValueError, match="alpha"):
        pp.diffusion(q, db, alpha=1.0)
    with pytest.raises(ValueError, match="NaN"):
        pp.diffusion(np.full((1, 3), np.nan, np.float32), db)


def test_shortened_descriptors():
    v = np.array([[0.1, 0.5, -0.2, 0.4], [3.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(pp.leading_dimensions(v, 2), l2n_np(v[:, :2]))
    top = pp.largest_values(v, 2)
    np.testing.assert_allclose(top, l2n_np(np.array([[0, 0.5, 0, 0.4], [3.0, 0, 0, 2.0]], np.float32)))
    with pytest.raises(ValueError, match="cannot keep 5"):
        pp.largest_values(v, 5)
    with pytest.raises(ValueError, match="int >= 1"):
        pp.leading_dimensions(v, 0)

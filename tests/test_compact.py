"""Tests of helpers.compact: every kind ranks as a brute-force numpy reference, stores the bytes it
claims, and refuses bad input."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.decomposition import PCA

from helpers.ack import dosd_reference, vector_codes
from helpers.compact import (COMPACT_KINDS, FLOAT_REFERENCES, TIMED_KINDS, encode_database, itq_rotation,
                             query_times, random_rotation)
from helpers.pooling import l2n_np

D = 32


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((D, D)) * np.linspace(2.0, 0.2, D)  # unequal variances, as descriptors
    train = l2n_np(rng.standard_normal((400, D)) @ basis).astype(np.float32)
    db = l2n_np(rng.standard_normal((70, D)) @ basis).astype(np.float32)
    queries = l2n_np(db[:6] + 0.1 * rng.standard_normal((6, D))).astype(np.float32)
    return train, db, queries


def hamming(a_bits, b_bits):
    """Brute-force Hamming distances N_a x N_b of boolean bit arrays."""
    return (a_bits[:, None, :] != b_bits[None, :, :]).sum(axis=2)


def check_search_matches(index, queries, reference, k=5):
    """``index.search`` returns the reference's best scores, best first, and ``scores`` equals it."""
    np.testing.assert_allclose(index.scores(queries), reference, rtol=1e-5, atol=1e-5)
    scores, ids = index.search(queries, k)
    for m in range(reference.shape[1]):
        np.testing.assert_allclose(scores[m], np.sort(reference[:, m])[::-1][:k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(reference[ids[m], m], scores[m], rtol=1e-5, atol=1e-5)
    fast_scores, fast_ids = index.search_fast(queries, k)
    np.testing.assert_allclose(fast_scores, scores, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- PQ
@pytest.mark.parametrize("M", [8, 12])  # 32 dims: 4 per sub-quantiser; 12: padded to 36 and rotated
def test_pq_ranks_by_the_asymmetric_distance_to_the_reconstructions(data, M):
    train, db, queries = data
    index = encode_database("pq", M, train, db)
    pq = index.faiss_index.pq
    dsub = pq.dsub
    centroids = faiss.vector_to_array(pq.centroids).reshape(M, 256, dsub)
    codes = faiss.vector_to_array(index.faiss_index.codes).reshape(len(db), M)
    recon = np.concatenate([centroids[m, codes[:, m]] for m in range(M)], axis=1).astype(np.float64)
    q = index.prepare(queries).astype(np.float64)
    reference = -((q[None, :, :] - recon[:, None, :]) ** 2).sum(axis=2)
    check_search_matches(index, queries, reference)
    assert index.nbytes == len(db) * M and index.bytes_per_image == M
    # the padding rotation keeps distances
    a, b = index.prepare(db[:3]), index.prepare(db[3:6])
    np.testing.assert_allclose(np.linalg.norm(a - b, axis=1), np.linalg.norm(db[:3] - db[3:6], axis=1), rtol=1e-5)
    # a database vector's nearest reconstruction is usually its own
    assert (np.argmax(index.scores(db[:20]), axis=0) == np.arange(20)).mean() >= 0.8


def test_pq_needs_256_training_vectors(data):
    train, db, _ = data
    with pytest.raises(ValueError, match="at least 256 training vectors"):
        encode_database("pq", 8, train[:100], db)


# ---------------------------------------------------------------------------------- binary
@pytest.mark.parametrize("nbytes", [2, 8])  # 16 bits < 32 dims; 64 bits > 32 dims (rotated up)
def test_sign_codes_rank_by_hamming_distance(data, nbytes):
    train, db, queries = data
    index = encode_database("sign", nbytes, train, db)
    bits = 8 * nbytes
    R = index.rotation
    assert R.shape == (D, bits)
    gram = R.T @ R if bits <= D else R @ R.T  # orthonormal columns, or rows when rotated up
    np.testing.assert_allclose(gram, np.eye(min(bits, D)), atol=1e-10)
    mean = train.astype(np.float64).mean(axis=0)
    db_bits = (db - mean) @ R > 0
    q_bits = (queries - mean) @ R > 0
    reference = -hamming(db_bits, q_bits).astype(np.float64)
    check_search_matches(index, queries, reference)
    assert index.nbytes == len(db) * nbytes and index.bytes_per_image == nbytes


def test_itq_learns_a_rotation_that_lowers_the_quantisation_loss(data):
    train, db, queries = data
    index = encode_database("itq", 2, train, db)  # 16 bits
    losses = index.losses
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0]
    # the projection is the PCA (sklearn, independent of the module's SVD) followed by an orthogonal R
    pca = PCA(n_components=16).fit(train.astype(np.float64))
    P = pca.components_.T
    R = P.T @ index.projection
    np.testing.assert_allclose(R @ R.T, np.eye(16), atol=1e-8)
    V = (train - pca.mean_) @ P
    B = np.where(V @ R >= 0, 1.0, -1.0)
    loss = np.sum((B - V @ R) ** 2)
    for seed in range(5):  # Procrustes step: no rotation fits the final codes better
        Q = random_rotation(16, 16, seed + 100)
        assert np.sum((B - V @ Q) ** 2) >= loss - 1e-6
    db_bits = (db - pca.mean_) @ P @ R >= 0
    q_bits = (queries - pca.mean_) @ P @ R >= 0
    check_search_matches(index, queries, -hamming(db_bits, q_bits).astype(np.float64))
    assert index.bytes_per_image == 2


def test_itq_rotation_is_orthogonal_and_its_loss_falls():
    V = np.random.default_rng(3).standard_normal((200, 8)) * np.arange(1, 9)
    R, losses = itq_rotation(V, iterations=20)
    np.testing.assert_allclose(R.T @ R, np.eye(8), atol=1e-10)
    assert losses[-1] < losses[0]


def test_itq_is_limited_to_the_descriptor_dimension_and_training_size(data):
    train, db, _ = data
    with pytest.raises(ValueError, match="at least 40 dimensions"):
        encode_database("itq", 5, train, db)  # 40 bits > 32 dims
    with pytest.raises(ValueError, match="at least 24 training vectors"):
        encode_database("itq", 3, train[:20], db)


# ---------------------------------------------------------------------------------- float16 / int8
def sklearn_projection(train, dims):
    pca = PCA(n_components=dims).fit(train.astype(np.float64))
    return lambda x: l2n_np(pca.transform(np.asarray(x, np.float64)))


def test_float16_is_a_pca_in_half_precision_ranked_by_inner_product(data):
    train, db, queries = data
    index = encode_database("float16", 24, train, db)  # 12 dims
    project = sklearn_projection(train, 12)
    reference = project(db).astype(np.float16).astype(np.float64) @ project(queries).T
    check_search_matches(index, queries, reference)
    assert index.nbytes == len(db) * 24 and index.bytes_per_image == 24


def test_int8_codes_use_per_dimension_training_scales(data):
    train, db, queries = data
    index = encode_database("int8", 16, train, db)
    project = sklearn_projection(train, 16)
    y = project(train)
    scale = np.abs(y).max(axis=0) / 127
    np.testing.assert_allclose(index.scale, scale, rtol=1e-5)
    codes = np.clip(np.rint(project(db) / scale), -127, 127)
    signs = np.sign((codes * index.codes).sum(axis=0))  # a principal direction's sign is arbitrary
    codes *= signs
    assert index.codes.dtype == np.int8
    assert np.abs(index.codes - codes).max() <= 1 and (index.codes == codes).mean() > 0.98
    reference = index.codes.astype(np.float64) @ (project(queries) * signs * scale).T
    check_search_matches(index, queries, reference)
    assert index.nbytes == len(db) * 16 and index.bytes_per_image == 16


def test_pca_kinds_need_enough_dimensions_and_training_vectors(data):
    train, db, _ = data
    with pytest.raises(ValueError, match="exceeds the descriptors' 32"):
        encode_database("int8", 40, train, db)
    with pytest.raises(ValueError, match="at least 16 training vectors"):
        encode_database("float16", 32, train[:10], db)


# ---------------------------------------------------------------------------------- ACK
def test_ack_codes_rank_by_dosd_at_two_bytes_per_index():
    rng = np.random.default_rng(4)
    C = 40
    db_vec = {"gem": rng.random((30, C)), "spoc": rng.random((30, C))}
    q_vec = {p: v[:4] + 0.05 * rng.random((4, C)) for p, v in db_vec.items()}
    index = encode_database("ack", 16, None, db_vec)  # n = 8
    db_codes, q_codes = vector_codes(db_vec, "gem", 8), vector_codes(q_vec, "gem", 8)
    reference = np.array([[dosd_reference(q, d) for q in q_codes] for d in db_codes])
    check_search_matches(index, q_vec, reference)
    assert index.nbytes == 30 * 16 and index.bytes_per_image == 16
    ready = encode_database("ack", 16, None, db_codes, n_kernels=C)
    np.testing.assert_allclose(ready.scores(q_codes), reference, atol=1e-12)
    with pytest.raises(ValueError, match="must be even"):
        encode_database("ack", 15, None, db_vec)
    with pytest.raises(ValueError, match="layer has 40 kernels"):
        encode_database("ack", 100, None, db_vec)
    with pytest.raises(ValueError, match="need n_kernels"):
        encode_database("ack", 16, None, db_codes)
    with pytest.raises(ValueError, match="n=8"):
        ready.scores(q_codes[:, :5])


# ---------------------------------------------------------------------------------- errors
def test_bad_input_is_refused(data):
    train, db, queries = data
    with pytest.raises(ValueError, match="unknown compact code kind"):
        encode_database("lsh", 8, train, db)
    for bad in (0, -8, 8.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            encode_database("sign", bad, train, db)
    with pytest.raises(ValueError, match="must be even"):
        encode_database("float16", 7, train, db)
    with pytest.raises(TypeError, match="float descriptors"):
        encode_database("sign", 4, train, (db * 100).astype(np.int32))
    with pytest.raises(ValueError, match="dimensions, the database"):
        encode_database("sign", 4, train[:, :10], db)
    bad_db = db.copy()
    bad_db[3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        encode_database("int8", 8, train, bad_db)
    with pytest.raises(TypeError, match="no option"):
        encode_database("sign", 4, train, db, brightening="gem")
    index = encode_database("sign", 4, train, db)
    with pytest.raises(ValueError, match="dimensions, the database"):
        index.scores(queries[:, :20])
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, len(db) + 1)
    assert set(COMPACT_KINDS) == {"pq", "sign", "itq", "float16", "int8", "ack"}


# ---------------------------------------------------------------------------------- timing
def test_query_times_reports_every_kind_and_its_memory():
    rows = query_times(sizes=(300,), bytes_per_image=16, dim=16, n_kernels=64, k=10, rounds=2, pause=0.0)
    (row,) = rows
    assert row["size"] == 300
    assert set(row["ms"]) == set(TIMED_KINDS) | set(FLOAT_REFERENCES)
    assert all(len(v) == 2 and min(v) > 0 for v in row["ms"].values())
    for kind in ("pq", "binary", "float16", "int8"):
        assert row["bytes"][kind] == 300 * 16
    assert row["bytes"]["ack"] >= 300 * 16  # the codes plus the inverted lists' counts
    assert row["bytes"]["float_numpy"] == 300 * 16 * 4
    with pytest.raises(ValueError, match="database sizes"):
        query_times(sizes=(5,), k=10)

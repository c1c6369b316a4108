"""Tests of helpers.ack: Algorithm 1 codes, Algorithm 2 (dosd) and its closed form, the fast search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.ack import (TIE_BREAK, ACKIndex, ACKInvertedIndex, ack_codes, ack_scores, check_codes, code_length_sweep,
                         contribution_table, dosd_closed_form, dosd_reference, dosd_scores,
                         draw_kernel_boxes, explore_view, histogram_similarity, instance_overlap, jaccard_scores, jaccard_similarity, kernel_brightness,
                         kernel_frequencies, map_codes, pca_scores, position_matrix_K, pseudo_gaussian_G,
                         random_codes, rank_weights_W, response_box, search_timings, sum_dtypes,
                         undefined_reason, vector_codes, visible_box)
from helpers.pooling import POOLINGS, pool_all


def make_codes(rng, count, n, n_kernels):
    return np.stack([rng.permutation(n_kernels)[:n] for _ in range(count)]).astype(np.uint16)


def related_codes(rng, base, n_kernels, keep):
    """A code sharing ``keep`` kernels with ``base`` at shuffled-nearby positions."""
    n = len(base)
    shared = list(base[:keep])
    others = [k for k in rng.permutation(n_kernels) if k not in set(base.tolist())][: n - keep]
    code = np.array(shared + others)
    swaps = rng.integers(0, n, size=(n // 3, 2))
    for a, b in swaps:
        code[[a, b]] = code[[b, a]]
    return code.astype(np.uint16)


# ---------------------------------------------------------------------------------- K, W, G
def test_matrices_follow_algorithm_2_definitions():
    n = 4
    K = position_matrix_K(n)
    W = rank_weights_W(n)
    G = pseudo_gaussian_G(n)
    assert np.allclose(K, [[1, .75, .5, .25], [.75, 1, .75, .5], [.5, .75, 1, .75], [.25, .5, .75, 1]])
    assert np.allclose(K, K.T)
    assert np.allclose(W, [1, .75, .5, .25])
    for i in range(n):
        for j in range(n):
            assert G[i, j] == pytest.approx((1 - abs(i - j) / n) * (n - i) / n)
    # the pseudo-Gaussian peaks at (0, 0) and decreases along rows and down the diagonal (Fig. 4)
    assert G.argmax() == 0 and np.all(np.diff(np.diag(G)) < 0)


def test_contribution_table_is_n_squared_times_algorithm_2_score():
    n = 7
    G = pseudo_gaussian_G(n)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    assert np.allclose(contribution_table(n), n * n * (n - np.abs(i - j)) * G)
    assert contribution_table(n).dtype == np.int64


# ---------------------------------------------------------------------------------- dosd
def test_dosd_hand_computed_example():
    # n = 3, A = (5, 1, 9), B = (1, 5, 7): matches a_0 = b_1 and a_1 = b_0
    # s(0, 1) = (3 - 1) * (1 - 1/3) * 3/3 = 4/3 ; s(1, 0) = (3 - 1) * (1 - 1/3) * 2/3 = 8/9
    # Sum_max = 3 * 4 / 2 = 6  ->  dosd = (4/3 + 8/9) / 6 = 10/27
    assert dosd_reference([5, 1, 9], [1, 5, 7]) == pytest.approx(10 / 27)
    assert dosd_closed_form([5, 1, 9], [1, 5, 7]) == pytest.approx(10 / 27)
    # w weights the positions of A (the query), so dosd is not symmetric:
    # A = (1, 2, 3), B = (4, 5, 1): s(0, 2) = 1 * 1/3 * 1 -> 1/18; swapped: s(2, 0) = 1 * 1/3 * 1/3 -> 1/54
    assert dosd_reference([1, 2, 3], [4, 5, 1]) == pytest.approx(1 / 18)
    assert dosd_reference([4, 5, 1], [1, 2, 3]) == pytest.approx(1 / 54)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_identical_codes_score_one_and_disjoint_zero(n):
    rng = np.random.default_rng(n)
    a = rng.permutation(100)[:n]
    assert dosd_reference(a, a) == pytest.approx(1.0)
    assert dosd_closed_form(a, a) == pytest.approx(1.0)
    b = np.setdiff1d(np.arange(100), a)[:n]
    assert dosd_reference(a, b) == 0.0 and dosd_closed_form(a, b) == 0.0
    assert jaccard_similarity(a, a) == 1.0 and jaccard_similarity(a, b) == 0.0


def test_reference_and_closed_form_of_step_18_agree():
    rng = np.random.default_rng(0)
    for n, n_kernels in [(3, 5), (8, 10), (20, 64), (33, 40)]:
        for _ in range(20):
            a = rng.permutation(n_kernels)[:n]
            b = rng.permutation(n_kernels)[:n]
            assert dosd_closed_form(a, b) == pytest.approx(dosd_reference(a, b), abs=1e-12)
            assert 0.0 <= dosd_reference(a, b) <= 1.0


def test_dosd_is_position_sensitive_and_jaccard_is_not():
    a = np.arange(10)
    shifted = np.roll(a, 3)
    assert jaccard_similarity(a, shifted) == 1.0
    assert dosd_reference(a, shifted) < 1.0
    # a match at the query's front counts more than one at its back
    front = np.array([0, 20, 21, 22, 23, 24, 25, 26, 27, 28])
    back = np.array([20, 21, 22, 23, 24, 25, 26, 27, 28, 9])
    assert dosd_reference(a, front) > dosd_reference(a, back) > 0


def test_jaccard_definition():
    assert jaccard_similarity([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(2 / 6)


# ---------------------------------------------------------------------------------- search
def test_vectorised_search_equals_reference_random_and_related():
    rng = np.random.default_rng(1)
    n, n_kernels = 24, 60
    db = make_codes(rng, 50, n, n_kernels)
    db[10] = related_codes(rng, db[3], n_kernels, keep=18)
    queries = make_codes(rng, 7, n, n_kernels)
    queries[0] = db[3]
    queries[1] = related_codes(rng, db[3], n_kernels, keep=20)
    reference = np.array([[dosd_reference(q, d) for q in queries] for d in db])
    scores = dosd_scores(queries, db, n_kernels)
    assert scores.shape == (50, 7)
    np.testing.assert_allclose(scores, reference, atol=1e-12)
    assert scores[3, 0] == 1.0
    # chunked multi-query path and the one-query path give the same numbers
    index = ACKIndex(db, n_kernels)
    np.testing.assert_allclose(index.dosd(queries, query_chunk=3), reference, atol=1e-12)
    for m in range(3):
        np.testing.assert_allclose(index.dosd(queries[m])[:, 0], reference[:, m], atol=1e-12)
    jac = np.array([[jaccard_similarity(q, d) for q in queries] for d in db])
    np.testing.assert_allclose(jaccard_scores(queries, db, n_kernels), jac, atol=1e-12)


def test_search_exact_at_benchmark_size_n256_c1280():
    # n = 256 is where n^3 (n+1) / 2 just exceeds the int32 range: the sums must stay exact
    rng = np.random.default_rng(2)
    n, n_kernels = 256, 1280
    db = make_codes(rng, 6, n, n_kernels)
    db[1] = related_codes(rng, db[0], n_kernels, keep=200)
    query = db[0].copy()
    reference = np.array([dosd_reference(query, d) for d in db])
    got = ACKIndex(db, n_kernels).dosd(query)[:, 0]
    np.testing.assert_allclose(got, reference, atol=1e-6)
    assert got[0] == 1.0
    np.testing.assert_allclose(ACKIndex(db, n_kernels).dosd(np.stack([query, db[1]]))[:, 0], reference, atol=1e-6)


def test_search_uint64_sums_for_long_codes():
    rng = np.random.default_rng(3)
    n, n_kernels = 320, 400  # n^3 (n+1) / 2 > 2^32
    db = make_codes(rng, 3, n, n_kernels)
    index = ACKIndex(db, n_kernels)
    assert index.dosd_sums(db[:1]).dtype == np.uint64
    assert index.dosd(db[0])[0, 0] == 1.0
    assert index.dosd(db[0])[1, 0] == pytest.approx(dosd_closed_form(db[0], db[1]), abs=1e-12)


def test_sum_dtypes_hold_the_largest_entry_and_sum():
    for n in (1, 2, 255, 256, 303, 304, 1625, 1626, 2048, 4096, 65536):
        table, acc = sum_dtypes(n)
        assert n ** 3 <= np.iinfo(table).max and n ** 3 * (n + 1) // 2 <= np.iinfo(acc).max
    assert sum_dtypes(256) == (np.uint32, np.uint32)  # the benchmark's n keeps the narrow types
    assert sum_dtypes(303) == (np.uint32, np.uint32) and sum_dtypes(1626) == (np.uint64, np.uint64)


@pytest.mark.parametrize("n, n_kernels", [(2048, 2048), (1700, 4096)])
def test_search_exact_for_codes_as_long_as_resnet_layers(n, n_kernels):
    # contributions reach n^3 >= 2^32 from n = 1626 (ResNet-50/101 have 2048 kernels): the tables
    # must not wrap, or a code scores 0.4993 against itself at n = 2048
    rng = np.random.default_rng(11)
    db = random_codes(5, n, n_kernels, seed=int(rng.integers(1000)))
    db[1] = db[0]
    db[1, n // 2:] = rng.permutation(db[0, n // 2:])  # a related code: same front, shuffled back
    index = ACKIndex(db, n_kernels)
    assert index.dosd_sums(db[0]).dtype == np.uint64
    got = index.dosd(db[:2])
    assert got[0, 0] == 1.0 and got[1, 1] == 1.0
    expected = np.array([[dosd_closed_form(q, d) for q in db[:2]] for d in db])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got[1, 0] == pytest.approx(dosd_reference(db[0], db[1]), abs=1e-12)


def test_search_with_kernel_indices_above_int16():
    rng = np.random.default_rng(4)
    n, n_kernels = 10, 40000  # indices >= 2^15: the uint16 codes must not be read as signed
    db = make_codes(rng, 20, n, n_kernels)
    db[5, :5] = db[0, :5]
    db[5, 5:] = np.arange(39990, 39995)
    index = ACKIndex(db, n_kernels)
    reference = np.array([dosd_reference(db[0], d) for d in db])
    np.testing.assert_allclose(index.dosd(db[0])[:, 0], reference, atol=1e-12)


@pytest.mark.parametrize("n_kernels", [60, 40000])
def test_one_query_search_on_several_threads_equals_reference(n_kernels):
    rng = np.random.default_rng(9)
    db = make_codes(rng, 45, 12, n_kernels)
    db[30, :8] = db[0, :8]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = ACKIndex(db, n_kernels).dosd(db[0])[:, 0]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(got, [dosd_reference(db[0], d) for d in db], atol=1e-12)


def test_search_over_several_blocks_and_a_partial_one():
    # more codes than one block of the compiled search (SEARCH_BLOCK), the last block partial
    from helpers.ack import SEARCH_BLOCK

    rng = np.random.default_rng(10)
    n, n_kernels = 6, 30
    size = 2 * SEARCH_BLOCK + 37
    db = make_codes(rng, size, n, n_kernels)
    queries = db[[0, SEARCH_BLOCK + 5, size - 1]].copy()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = ACKIndex(db, n_kernels).dosd(queries, query_chunk=2)
    finally:
        torch.set_num_threads(threads)
    expected = np.array([[dosd_closed_form(q, d) for q in queries] for d in db])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert (got[[0, SEARCH_BLOCK + 5, size - 1], [0, 1, 2]] == 1.0).all()


@pytest.mark.parametrize("n, n_kernels", [(24, 60), (256, 1280), (320, 400), (10, 40000)])
def test_inverted_index_equals_reference(n, n_kernels):
    # short and benchmark-length codes (uint32 sums), long codes (uint64 sums), indices >= 2^15
    rng = np.random.default_rng(n)
    db = make_codes(rng, 40, n, n_kernels)
    db[7] = related_codes(rng, db[3], n_kernels, keep=max(1, (3 * n) // 4))
    queries = np.stack([db[3], related_codes(rng, db[3], n_kernels, keep=max(n // 2, 2 * n - n_kernels)), make_codes(rng, 1, n, n_kernels)[0]])
    index = ACKInvertedIndex(db, n_kernels)
    reference = np.array([[dosd_reference(q, d) for q in queries] for d in db])
    np.testing.assert_allclose(index.dosd(queries), reference, atol=1e-12)
    np.testing.assert_array_equal(index.dosd_sums(queries), ACKIndex(db, n_kernels).dosd_sums(queries))
    np.testing.assert_allclose(index.jaccard(queries), [[jaccard_similarity(q, d) for q in queries] for d in db], atol=1e-12)
    assert index.dosd(db[3])[3, 0] == 1.0
    np.testing.assert_array_equal(index.codes, db)
    scores, ids = index.search(queries, 5)
    for m in range(len(queries)):
        expected = np.argsort(-reference[:, m], kind="stable")[:5]
        np.testing.assert_allclose(scores[m], reference[expected, m], atol=1e-12)
        np.testing.assert_allclose(reference[ids[m], m], scores[m], atol=1e-12)


def test_inverted_index_over_several_blocks_and_its_memory():
    from helpers.ack import INVERTED_BLOCK

    rng = np.random.default_rng(12)
    n, n_kernels = 4, 9
    size = 2 * INVERTED_BLOCK + 37  # two full blocks and a partial one
    db = random_codes(size, n, n_kernels, seed=3)
    db[INVERTED_BLOCK + 5] = db[0]
    queries = db[[0, size - 1]]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        index = ACKInvertedIndex(db, n_kernels)
        got = index.dosd_sums(queries, query_chunk=1)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(got, ACKIndex(db, n_kernels).dosd_sums(queries))
    picks = rng.choice(size, 30, replace=False)
    np.testing.assert_allclose(got[picks, 0] / (n * n * n * (n + 1) / 2), [dosd_reference(db[0], db[d]) for d in picks], atol=1e-12)
    n_blocks = 3
    assert index.nbytes == size * n * 2 + n_blocks * n_kernels * n * 2 + n_blocks * n_kernels * 4
    assert index.postings.dtype == np.uint16 and index.counts.dtype == np.uint16
    scores, ids = index.search(queries[0], 2)
    same = np.flatnonzero((db == db[0]).all(axis=1))  # short codes of few kernels repeat: ties in database order
    assert ids[0].tolist() == same[:2].tolist() and (scores[0] == 1.0).all()
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries[0], size + 1)


def test_inverted_index_counts_hold_a_kernel_at_one_position_in_every_code():
    # the largest list: every code of a full block has kernel 0 at position 0
    from helpers.ack import INVERTED_BLOCK

    db = np.zeros((INVERTED_BLOCK, 2), np.uint16)
    db[:, 1] = 1
    index = ACKInvertedIndex(db, 3)
    assert int(index.counts[0, 0, 0]) == INVERTED_BLOCK
    assert (index.dosd(db[0])[:, 0] == 1.0).all()


def test_index_memory_is_two_bytes_per_kernel_index():
    db = make_codes(np.random.default_rng(5), 100, 256, 1280)
    index = ACKIndex(db, 1280)
    assert index.nbytes == 100 * 256 * 2
    assert index.codes_by_position.dtype == np.uint16
    np.testing.assert_array_equal(index.codes, db)


def test_search_rejects_bad_codes():
    db = make_codes(np.random.default_rng(6), 5, 8, 20)
    index = ACKIndex(db, 20)
    with pytest.raises(ValueError, match="length"):
        index.dosd(np.arange(7))
    with pytest.raises(ValueError, match="repeats"):
        index.dosd([1, 1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(ValueError, match="n_kernels"):
        index.dosd([1, 2, 3, 4, 5, 6, 7, 25])
    with pytest.raises(ValueError, match="n_kernels"):
        ACKIndex(db, 0)
    with pytest.raises(ValueError, match="integer"):
        check_codes([0.5, 1.0])
    with pytest.raises(ValueError, match="same length"):
        dosd_reference([1, 2], [1, 2, 3])


# ---------------------------------------------------------------------------------- Algorithm 1
def test_ack_codes_rank_kernels_brightest_first():
    b = np.array([0.1, 0.9, 0.3, 0.9, 0.0])
    code = ack_codes(b, 3)
    assert code.dtype == np.uint16
    np.testing.assert_array_equal(code, [1, 3, 2])  # tie 0.9/0.9 broken by the lower index
    batch = ack_codes(torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]), 2)
    np.testing.assert_array_equal(batch, [[2, 1], [0, 2]])
    # scaling (e.g. l2-normalisation) does not change a code
    np.testing.assert_array_equal(ack_codes(b * 7.5, 5), ack_codes(b, 5))


def test_ack_codes_break_ties_by_the_second_statistic_then_index():
    b = np.array([6.0, 6.0, 1.0, 6.0, 6.0])
    t = np.array([0.5, 2.0, 9.0, 2.0, 3.0])
    np.testing.assert_array_equal(ack_codes(b, 5, tie_break=t), [4, 1, 3, 0, 2])
    np.testing.assert_array_equal(ack_codes(b, 5), [0, 1, 3, 4, 2])
    batch = ack_codes(torch.from_numpy(np.stack([b, b[::-1]])), 2, tie_break=torch.from_numpy(np.stack([t, t[::-1]])))
    np.testing.assert_array_equal(batch, [[4, 1], [0, 1]])
    with pytest.raises(ValueError, match="tie_break must have the shape"):
        ack_codes(b, 2, tie_break=t[:4])
    with pytest.raises(ValueError, match="tie_break must be finite"):
        ack_codes(b, 2, tie_break=np.full(5, np.inf))


@pytest.mark.parametrize("brightening", list(POOLINGS))
def test_codes_do_not_depend_on_the_kernel_numbering(brightening):
    # ReLU6 maps: most kernels reach 6.0, so their MAC ties; the ranking must come from the maps,
    # not from the kernel index, for dosd between images to survive a renumbering of the kernels
    g = torch.Generator().manual_seed(12)
    maps = torch.clamp(8 * torch.rand(6, 200, 7, 7, generator=g) - 1, min=0, max=6)
    n, n_kernels = 64, maps.shape[1]
    perm = torch.randperm(n_kernels, generator=g)
    codes = map_codes(maps, brightening, n)
    permuted = map_codes(maps[:, perm], brightening, n)
    np.testing.assert_array_equal(perm.numpy()[permuted], codes)
    np.testing.assert_array_equal(dosd_scores(permuted, permuted, n_kernels), dosd_scores(codes, codes, n_kernels))
    if brightening == "mac":
        mac = kernel_brightness(maps, "mac")
        assert (mac == 6.0).sum(1).min() > n  # the top-n is all ties
        by_index = perm.numpy()[ack_codes(mac[:, perm], n)]
        assert not np.array_equal(by_index, ack_codes(mac, n))  # without the tie-break the codes move
    # the pooled vectors that ACKMethod reads give the same codes
    pooled = [pool_all(m) for m in maps]
    vectors = {p: torch.stack([v[p] for v in pooled]).numpy() for p in (brightening, TIE_BREAK[brightening])}
    np.testing.assert_array_equal(vector_codes(vectors, brightening, n), codes)
    np.testing.assert_array_equal(map_codes(maps[3], brightening, n), codes[3])
    with pytest.raises(ValueError, match="tie-break"):
        vector_codes({brightening: vectors[brightening]}, brightening, n)
    with pytest.raises(ValueError, match="brightening"):
        map_codes(maps, "median", n)


def test_ack_codes_reject_bad_input():
    with pytest.raises(ValueError, match="n must be"):
        ack_codes(np.ones(4), 5)
    with pytest.raises(ValueError, match="n must be"):
        ack_codes(np.ones(4), 0)
    with pytest.raises(ValueError, match="finite"):
        ack_codes(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError, match="shape"):
        ack_codes(np.ones((2, 2, 2)), 1)


def test_kernel_brightness_is_the_global_pooling_of_each_channel():
    x = torch.rand(2, 6, 5, 7)
    for name, fn in POOLINGS.items():
        torch.testing.assert_close(kernel_brightness(x, name), fn(x))
    assert torch.equal(kernel_brightness(x, "mac")[0], x[0].flatten(1).amax(1))
    with pytest.raises(ValueError, match="brightening"):
        kernel_brightness(x, "median")


def test_kernel_frequencies_count_codes_per_kernel():
    counts = kernel_frequencies([[0, 2], [2, 3], [3, 0]], 5)
    np.testing.assert_array_equal(counts, [2, 0, 2, 2, 0])


# ---------------------------------------------------------------------------------- analysis helpers
def test_response_box_surrounds_the_strongest_connected_region():
    amap = np.zeros((10, 20))
    amap[2:4, 5:8] = 1.0       # strongest blob
    amap[3, 6] = 2.0
    amap[8, 15] = 0.9          # a separate weaker blob above 0.5 * max? no: 0.9 < 1.0
    amap[8, 1] = 1.5           # above threshold but not connected to the peak
    box = response_box(amap, (100, 200), rel_threshold=0.5)
    # cells x 5..7, y 2..3 (values >= 1.0), each cell 10 x 10 pixels
    assert box == [50.0, 20.0, 80.0, 40.0]
    assert response_box(torch.ones(4, 4), (8, 8)) == [0.0, 0.0, 8.0, 8.0]
    with pytest.raises(ValueError, match="2-D"):
        response_box(np.ones(3), (4, 4))


def test_histogram_similarity():
    assert histogram_similarity([1, 0, 2], [2, 0, 4]) == pytest.approx(1.0)
    assert histogram_similarity([1, 0], [0, 3]) == 0.0
    assert histogram_similarity([0, 0], [1, 1]) == 0.0


def test_pca_scores_match_a_manual_projection():
    rng = np.random.default_rng(7)
    train, q, db = rng.normal(size=(40, 8)), rng.normal(size=(3, 8)), rng.normal(size=(10, 8))
    got = pca_scores(train, q, db, 3)
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    P = vt[:3].T

    def proj(X):
        Y = (X - mean) @ P
        return Y / np.linalg.norm(Y, axis=1, keepdims=True)

    # signs cancel in the product; the vectors are l2-normalised as float32 rows (pooling.l2n_np)
    np.testing.assert_allclose(got, proj(db) @ proj(q).T, atol=1e-5)
    with pytest.raises(ValueError, match="more than"):
        pca_scores(train[:3], q, db, 3)


def test_random_codes_are_valid_codes():
    codes = random_codes(50, 16, 40, seed=1, chunk=7)
    assert codes.shape == (50, 16) and codes.dtype == np.uint16
    check_codes(codes, 40)
    assert len({tuple(c) for c in codes}) == 50


def test_jaccard_is_undefined_when_codes_hold_every_kernel():
    assert undefined_reason("jaccard", 1280, 1280) == "undefined: every code holds every kernel"
    assert undefined_reason("jaccard", 1024, 1280) is None
    assert undefined_reason("dosd", 1280, 1280) is None
    with pytest.raises(ValueError, match="metric"):
        undefined_reason("cosine", 4, 8)
    # full codes: every pair has Jaccard 1, while dosd still sees the order
    codes = random_codes(4, 8, 8, seed=2)
    assert np.all(jaccard_scores(codes, codes, 8) == 1.0)
    assert len(np.unique(dosd_scores(codes, codes, 8))) > 1


def test_code_length_sweep_gives_nan_where_jaccard_is_undefined():
    rng = np.random.default_rng(13)
    n_kernels = 16
    q = {"gem": rng.random((3, n_kernels)), "spoc": rng.random((3, n_kernels))}
    db = {"gem": rng.random((10, n_kernels)), "spoc": rng.random((10, n_kernels))}
    seen = []
    sweep = code_length_sweep(q, db, "gem", [4, 8, 16], n_kernels, lambda s: seen.append(s) or float(s.sum()))
    assert sweep["n"] == [4, 8, 16]
    assert np.isnan(sweep["jaccard"][2]) and not np.isnan(sweep["jaccard"][1])
    assert sweep["undefined"] == {"dosd": {}, "jaccard": {16: "undefined: every code holds every kernel"}}
    assert len(seen) == 5  # the undefined point is not measured
    qc, dc = vector_codes(q, "gem", 8), vector_codes(db, "gem", 8)
    assert sweep["dosd"][1] == pytest.approx(dosd_scores(qc, dc, n_kernels).sum())
    assert sweep["jaccard"][1] == pytest.approx(jaccard_scores(qc, dc, n_kernels).sum())
    assert sweep["dosd"][2] == pytest.approx(dosd_scores(vector_codes(q, "gem", 16), vector_codes(db, "gem", 16)).sum())
    with pytest.raises(ValueError, match="n_values"):
        code_length_sweep(q, db, "gem", [17], n_kernels, float)
    with pytest.raises(ValueError, match="metric"):
        code_length_sweep(q, db, "gem", [4], n_kernels, float, metrics=("l2",))


def test_code_length_sweep_keeps_per_query_arrays():
    rng = np.random.default_rng(14)
    n_kernels = 16
    q = {"gem": rng.random((3, n_kernels)), "spoc": rng.random((3, n_kernels))}
    db = {"gem": rng.random((10, n_kernels)), "spoc": rng.random((10, n_kernels))}
    sweep = code_length_sweep(q, db, "gem", [4, 16], n_kernels, lambda s: s.max(axis=0))
    qc, dc = vector_codes(q, "gem", 4), vector_codes(db, "gem", 4)
    np.testing.assert_allclose(sweep["dosd"][0], dosd_scores(qc, dc, n_kernels).max(axis=0))
    assert sweep["dosd"][1].shape == (3,) and np.isnan(sweep["jaccard"][1])


def test_visible_box_moves_a_frame_sized_box_inside_the_image():
    assert visible_box([0, 0, 512, 384], (384, 512), inset=4) == [4, 4, 508, 380]
    assert visible_box([10, 20, 100, 200], (384, 512), inset=4) == [10, 20, 100, 200]
    assert visible_box([-5, 0, 600, 50], (384, 512), inset=3) == [3, 3, 509, 50]
    with pytest.raises(ValueError, match="inset"):
        visible_box([0, 0, 10, 10], (8, 8), inset=4)


def test_draw_kernel_boxes_draws_every_box_inside_the_frame_with_a_legend():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.imshow(np.zeros((384, 512, 3)))
    draw_kernel_boxes(ax, [[0, 0, 512, 384], [0, 0, 100, 80]], ["yellow", "cyan"], ["#7", "#9"], (384, 512))
    rects = ax.patches
    assert len(rects) == 2
    x, y = rects[0].get_xy()
    assert (x, y, rects[0].get_width(), rects[0].get_height()) == (4, 4, 504, 376)   # the frame box, inset
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["#7", "#9"]
    assert not ax.texts   # no label written on a box, where it could cover another
    plt.close(fig)
    fig, ax = plt.subplots()
    draw_kernel_boxes(ax, [[0, 0, 512, 384]] * 2, ["yellow", "cyan"], ["#7", "#9"], (384, 512))
    (x0, y0), (x1, y1) = ax.patches[0].get_xy(), ax.patches[1].get_xy()
    assert x1 > x0 + 2 and y1 > y0 + 2 and ax.patches[1].get_width() < ax.patches[0].get_width() - 4  # nested
    plt.close(fig)


def test_instance_overlap_is_the_share_of_the_query_code_per_group():
    q = np.array([[0, 1, 2, 3]])
    db = np.array([[0, 1, 2, 3], [0, 1, 4, 5], [4, 5, 6, 7], [3, 4, 5, 6], [0, 1, 2, 4]])
    gnd = [{"easy": [0], "hard": [1], "junk": [4]}]
    same, other = instance_overlap(q, db, gnd, 8)
    assert same[0] == pytest.approx((100 + 50) / 2)
    assert other[0] == pytest.approx((0 + 25) / 2)   # the junk image (75 %) is left out
    same, other = instance_overlap(q, db, [{"easy": [], "hard": []}], 8)
    assert np.isnan(same[0]) and other[0] == pytest.approx((100 + 50 + 0 + 25 + 75) / 5)
    with pytest.raises(ValueError, match="gnd"):
        instance_overlap(q, db, gnd * 2, 8)


def test_explore_view_shows_the_query_and_its_top_results(photo_folder, isolated_cache, backbone):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.data import load_dataset

    dataset = load_dataset(f"folder:{photo_folder}")
    fig = explore_view(dataset, backbone, 96, query=0, n=64, top=3)
    assert len(fig.axes) == 5 and len(fig.axes[0].patches) >= 3    # query, gap, 3 results; 3 kernel boxes
    assert len(fig.axes[0].get_legend().get_texts()) == 3
    plt.close(fig)


def test_ack_scores_and_search_timings():
    rng = np.random.default_rng(8)
    db = make_codes(rng, 30, 12, 50)
    np.testing.assert_array_equal(ack_scores(db[:2], db, 50), dosd_scores(db[:2], db, 50))
    np.testing.assert_array_equal(ack_scores(db[:2], db, 50, "jaccard"), jaccard_scores(db[:2], db, 50))
    with pytest.raises(ValueError, match="metric"):
        ack_scores(db[:2], db, 50, "l2")
    t = search_timings(n_db=2000, n=32, n_kernels=128, float_dim=64, reference_pairs=5, repeats=1)
    assert t["max_abs_diff_vs_algorithm2"] < 1e-9
    assert t["codes_bytes"] == 2000 * 32 * 2 and t["float_bytes"] == 2000 * 64 * 4
    assert all(t[k] > 0 for k in ("ack_dosd_ms", "float_matmul_ms", "algorithm2_ms_per_image"))


# ---------------------------------------------------------------------------------- method
def test_method_options_are_validated(backbone):
    from helpers.methods import make_method

    method = make_method("ack", backbone, 224)
    assert method.n == 256 and method.brightening == "gem" and method.layer == backbone.last_conv
    assert make_method("ack", backbone, 224, layer="block0").n == backbone.channels("block0")
    with pytest.raises(ValueError, match="brightening"):
        make_method("ack", backbone, 224, brightening="max")
    with pytest.raises(ValueError, match="exceeds"):
        make_method("ack", backbone, 224, n=5000)
    with pytest.raises(ValueError, match="metric"):
        make_method("ack", backbone, 224, metric="cosine")
    with pytest.raises(ValueError, match="conv layer"):
        make_method("ack", backbone, 224, layer="fc")
    with pytest.raises(ValueError, match="every code holds every kernel"):
        make_method("ack", backbone, 224, n=backbone.channels(backbone.last_conv), metric="jaccard")
    assert "best of the five" not in type(method).__doc__  # a claim that one run's numbers decide


def test_method_end_to_end_on_real_photos(photo_folder, isolated_cache, backbone):
    from helpers.data import load_dataset
    from helpers.evaluate import evaluate_scores
    from helpers.methods import make_method

    dataset = load_dataset(f"folder:{photo_folder}")
    method = make_method("ack", backbone, 96, n=64)
    codes = method.describe(dataset, "db")
    assert codes.shape == (dataset.n_db, 64) and codes.dtype == np.uint16
    from helpers.features import extract_vectors
    vectors = extract_vectors(dataset, backbone, method.layer, 96, "db", ("gem", "spoc"))
    np.testing.assert_array_equal(codes, vector_codes(vectors, "gem", 64))  # ties broken by SPoC
    scores = method.search(dataset)
    assert scores.shape == (dataset.n_db, dataset.n_queries)
    assert np.all((scores >= 0) & (scores <= 1))
    # a query that is a database image scores 1 against itself
    for q, name in enumerate(dataset.qimlist):
        if name in dataset.imlist:
            assert scores[dataset.imlist.index(name), q] == pytest.approx(1.0)
    result = evaluate_scores(dataset, scores)
    assert result["mAP"] > 50.0  # crops and flips of 4 distinct photos are easy
    jac = make_method("ack", backbone, 96, n=64, metric="jaccard").search(dataset)
    assert jac.shape == scores.shape


def test_maximised_input_raises_the_kernels_mean_activation(backbone):
    import torch

    from helpers import ack

    import skimage.data
    from PIL import Image

    start = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((64, 64)))

    def response(img, kernel):
        with torch.no_grad():
            return float(backbone.forward_taps(backbone.preprocess(img), ["conv_head"])["conv_head"][0, kernel].mean())

    with torch.no_grad():
        means = backbone.forward_taps(backbone.preprocess(start), ["conv_head"])["conv_head"][0].mean((1, 2))
    # a kernel that responds, far below ReLU6's ceiling of 6
    kernel = int(next(k for k in torch.argsort(means, descending=True) if 0.2 < means[k] < 2))
    assert 0.2 < response(start, kernel) < 2
    image = ack.maximise_kernel(backbone, "conv_head", kernel, size=64, steps=12, start=start)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert response(image, kernel) > 1.5 * response(start, kernel)
    with pytest.raises(ValueError, match="kernel must lie"):
        ack.maximise_kernel(backbone, "conv_head", 5000)


def test_inverted_index_byte_budget_counts_its_lists():
    from helpers import ack

    codes = ack.random_codes(1000, 20, 64, seed=0)
    index = ack.ACKInvertedIndex(codes, 64)
    assert index.nbytes == ack.ACKInvertedIndex.stored_bytes(1000, 20, 64)
    n = ack.ACKInvertedIndex.code_length_within(512, 1280, 10 ** 6)
    assert n == 250 and ack.ACKInvertedIndex.stored_bytes(10 ** 6, n, 1280) <= 512 * 10 ** 6
    assert ack.ACKInvertedIndex.stored_bytes(10 ** 6, n + 1, 1280) > 512 * 10 ** 6
    with pytest.raises(ValueError, match="no ACK code"):
        ack.ACKInvertedIndex.code_length_within(2, 1280, 10)


def test_brightening_comparison_sets_each_float_vector_beside_its_code(photo_folder, isolated_cache, tmp_path,
                                                                       monkeypatch):
    """Tables 3-4 of chapter 02, here on a network in cnnimageretrieval-pytorch's layout (Table 4's path)."""
    from helpers import ack, backbones
    from helpers.data import load_dataset
    from helpers.evaluate import evaluate_scores, per_query_ap
    from helpers.features import extract_vectors
    from helpers.pooling import POOLINGS
    from retrieval_checkpoints import cirtorch_checkpoint, register

    register(monkeypatch, tmp_path / "torch", "test_r18_ack", "resnet18", "cirtorch", cirtorch_checkpoint("resnet18")[0])
    bb = backbones.load_backbone("test_r18_ack", device="cpu")
    ds = load_dataset(f"folder:{photo_folder}")
    v = {s: extract_vectors(ds, bb, bb.last_conv, 160, s) for s in ("query", "db")}
    n_kernels = bb.channels(bb.last_conv)

    def measure(scores):
        return per_query_ap(evaluate_scores(ds, scores))

    out = ack.brightening_comparison(v["query"], v["db"], 64, n_kernels, measure)
    assert list(out) == list(POOLINGS)
    for pooling in POOLINGS:
        np.testing.assert_allclose(out[pooling]["float"], measure(v["db"][pooling] @ v["query"][pooling].T))
        codes_q, codes_db = (ack.vector_codes(v[s], pooling, 64) for s in ("query", "db"))
        np.testing.assert_allclose(out[pooling]["ack"], measure(ack.ack_scores(codes_q, codes_db, n_kernels)))
    with pytest.raises(ValueError, match="unknown brightening"):
        ack.brightening_comparison(v["query"], v["db"], 64, n_kernels, measure, poolings=("max",))
    backbones._LOADED.clear()

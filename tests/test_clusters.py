"""Tests of helpers.clusters (paper 004: activation clusters, Normalized Cut, region precision)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score

import helpers.clusters as hc
from helpers.pooling import l2n, mac, rmac, rmac_regions
from helpers.whitening import PCAWhitening


# ------------------------------------------------------------------ helpers for the tests

def _blobs(n_per=40, n_blobs=3, dim=4, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim)) * 3
    truth = np.repeat(np.arange(n_blobs), n_per)
    X = centres[truth] + rng.normal(scale=spread, size=(truth.size, dim))
    return X, truth


def _blob_affinity(X):
    return hc.similarity_from_distances(hc.weighted_distances(X))


# ------------------------------------------------------------------ local descriptors and PCA

def test_local_descriptors_are_row_major_cells():
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    X = hc.local_descriptors(fmap)
    assert X.shape == (12, 2)
    for y in range(3):
        for x in range(4):
            np.testing.assert_array_equal(X[y * 4 + x], fmap[:, y, x].numpy())
    with pytest.raises(ValueError, match="D x H x W"):
        hc.local_descriptors(np.zeros((3, 4)))


@pytest.mark.parametrize("n_components", [3, 20])  # ARPACK path and full-SVD path
def test_pca_project_matches_covariance_eigendecomposition(n_components):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 30)) @ np.diag(np.linspace(3, 0.1, 30)) + 5.0
    F, var = hc.pca_project(X, n_components)
    cov = np.cov(X, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1][:n_components], evecs[:, ::-1][:, :n_components]
    np.testing.assert_allclose(var, evals, rtol=1e-4)
    # projected coordinates are the centred data on the eigenvectors (up to sign) ...
    expected = (X - X.mean(0)) @ evecs
    signs = np.sign(np.sum(F * expected, axis=0))
    np.testing.assert_allclose(F * signs, expected, rtol=1e-3, atol=1e-3)
    # ... and their variances are the returned sigma_k of eq. (2)
    np.testing.assert_allclose(F.var(axis=0, ddof=1), var, rtol=1e-3)


def test_pca_project_of_a_real_conv_map_is_close_to_exact(backbone):
    # a real 1280 x 32 x 32 last-conv map (1024 cells): the randomized-SVD path
    import skimage.data
    import torch

    from helpers.images import resize_max_side

    img = resize_max_side(skimage.data.astronaut(), 1024, upsample=True)
    with torch.no_grad():
        fmap = backbone.forward_taps(backbone.preprocess(img), [backbone.last_conv])[backbone.last_conv][0]
    X = hc.local_descriptors(fmap.float().cpu()).astype(np.float64)
    assert X.shape == (1024, 1280)
    F, var = hc.pca_project(X, 8)
    Xc = X - X.mean(0)
    evals, evecs = np.linalg.eigh(Xc.T @ Xc / (len(X) - 1))
    evals, evecs = evals[::-1][:8], evecs[:, ::-1][:, :8]
    np.testing.assert_allclose(var, evals, rtol=5e-3)  # measured: 0.2% on the 8th
    expected = Xc @ evecs
    signs = np.sign(np.sum(F * expected, axis=0))
    assert np.abs(F * signs - expected).max() < 0.01 * np.abs(expected).max()
    np.testing.assert_array_equal(F, hc.pca_project(X, 8)[0])  # seeded: the same every time


@pytest.mark.parametrize("zeros, rtol", [(0.9, 1e-4), (0.0, 1e-2)])  # sparse: exact; dense: randomized SVD
def test_pca_project_large_sparse_and_dense_descriptors_match_exact_svd(zeros, rtol):
    rng = np.random.default_rng(7)
    N, D, C = 300, 260, 5
    scales = 0.8 ** np.arange(40)  # a decaying spectrum, like a conv map's (no near-ties among the first C)
    X = np.abs((rng.normal(size=(N, 40)) * scales) @ rng.normal(size=(40, D)) + rng.normal(scale=0.05, size=(N, D)))
    X[rng.random((N, D)) < zeros] = 0.0
    X = X.astype(np.float32)
    Xc = X.astype(np.float64) - X.mean(0, dtype=np.float64)
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    for C, descriptors in [(C, X), (C, np.asfortranarray(X)), (1, X), (2, X)]:  # column-major like local_descriptors
        expected, expected_var = U[:, :C] * s[:C], s[:C] ** 2 / (N - 1)
        F, var = hc.pca_project(descriptors, C)
        np.testing.assert_allclose(var, expected_var, rtol=rtol)
        signs = np.sign(np.sum(F * expected, axis=0))
        assert np.abs(F * signs - expected).max() < 2 * rtol * np.abs(expected).max()


def test_local_descriptors_are_a_view_of_the_map():
    fmap = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    X = hc.local_descriptors(fmap)
    assert np.shares_memory(X, fmap) and X.shape == (12, 2)


def test_pca_project_rejects_bad_sizes():
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="cannot keep 4"):
        hc.pca_project(X, 4)
    with pytest.raises(ValueError, match="positive int"):
        hc.pca_project(X, 0)


# ------------------------------------------------------------------ eqs. (2) and (3)

def test_variance_weights_are_normalised_variances():
    np.testing.assert_allclose(hc.variance_weights([3.0, 1.0]), [0.75, 0.25])
    np.testing.assert_allclose(hc.variance_weights([0.0, 0.0]), [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        hc.variance_weights([1.0, -1.0])


def test_weighted_distances_follow_eq2():
    rng = np.random.default_rng(2)
    F = rng.normal(size=(7, 3))
    w = np.array([0.5, 0.3, 0.2])
    d = hc.weighted_distances(F, w)
    for i in range(7):
        for j in range(7):
            expected = np.sqrt(sum(w[k] * (F[i, k] - F[j, k]) ** 2 for k in range(3)))
            assert d[i, j] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(hc.weighted_distances(F), np.linalg.norm(F[:, None] - F[None], axis=-1))
    with pytest.raises(ValueError, match="one weight per"):
        hc.weighted_distances(F, [1.0, 1.0])


def test_similarity_follows_eq3():
    d = np.array([[0.0, 1.0, 4.0], [1.0, 0.0, 2.0], [4.0, 2.0, 0.0]])
    S = hc.similarity_from_distances(d, z_ratio=0.05)
    z = 0.05 * 4.0
    np.testing.assert_allclose(S, np.exp(-d / z) ** 2, rtol=1e-5)
    np.testing.assert_allclose(np.diag(S), 1.0)
    assert S[0, 2] == pytest.approx(np.exp(-40.0), rel=1e-4)  # the farthest pair: exp(-2 / 0.05)
    np.testing.assert_array_equal(hc.similarity_from_distances(np.zeros((2, 2))), np.ones((2, 2)))
    with pytest.raises(ValueError, match="z_ratio"):
        hc.similarity_from_distances(d, z_ratio=0)


def test_spatial_affinity_gaussian_with_radius():
    A = hc.spatial_affinity(2, 3, sigma=2.0)
    # cell (0,0) is row 0, cell (1,2) is row 5: squared distance 1 + 4 = 5
    assert A[0, 5] == pytest.approx(np.exp(-5 / 4))
    np.testing.assert_allclose(np.diag(A), 1.0)
    A_r = hc.spatial_affinity(2, 3, sigma=2.0, radius=1.5)
    assert A_r[0, 5] == 0 and A_r[0, 1] == pytest.approx(np.exp(-1 / 4))
    with pytest.raises(ValueError, match="sigma"):
        hc.spatial_affinity(2, 3, sigma=0)


# ------------------------------------------------------------------ Normalized Cut

@pytest.mark.parametrize("solver", ["arpack", "dense", "sklearn"])
def test_normalized_cut_recovers_separated_blobs(solver):
    X, truth = _blobs(n_per=40, n_blobs=3)
    labels = hc.normalized_cut(_blob_affinity(X), [3], eigen_solver=solver)[3]
    assert adjusted_rand_score(truth, labels) == 1.0
    assert labels.min() == 0 and labels.max() == 2


def test_shared_eigendecomposition_equals_sklearn_spectral_clustering():
    """Both cluster counts from one eigen-decomposition give scikit-learn's own partitions
    (on a connected graph with clear eigen-gaps after 2 and 4 eigenvalues: 2 pairs of blobs)."""
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0], [0, 3], [10, 0], [10, 3.0]])
    X = centres[np.repeat(np.arange(4), 30)] + rng.normal(scale=0.5, size=(120, 2))
    S = hc.similarity_from_distances(hc.weighted_distances(X), z_ratio=0.2)
    cuts = hc.normalized_cut(S, (2, 4), random_state=0)
    for k in (2, 4):
        ref = SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="discretize",
                                 random_state=0).fit(S).labels_
        assert adjusted_rand_score(ref, cuts[k]) == 1.0
        # and the same as a cut computed for this count alone
        np.testing.assert_array_equal(cuts[k], hc.normalized_cut(S, [k], random_state=0)[k])


def test_normalized_cut_finds_the_weak_link_between_two_cliques():
    """Two dense groups joined by weak edges: the 2-way Ncut separates them (Shi & Malik)."""
    n = 10
    A = np.full((2 * n, 2 * n), 0.01)
    A[:n, :n] = A[n:, n:] = 1.0
    labels = hc.normalized_cut(A, [2])[2]
    assert len(set(labels[:n])) == 1 and len(set(labels[n:])) == 1 and labels[0] != labels[n]


def test_normalized_cut_edge_cases_and_errors():
    S = np.ones((3, 3))
    cuts = hc.normalized_cut(S, (1, 3, 5))
    np.testing.assert_array_equal(cuts[1], [0, 0, 0])
    np.testing.assert_array_equal(cuts[3], [0, 1, 2])
    np.testing.assert_array_equal(cuts[5], [0, 1, 2])
    with pytest.raises(ValueError, match="symmetric"):
        hc.normalized_cut(np.array([[1.0, 0.2], [0.9, 1.0]]), [2])
    with pytest.raises(ValueError, match="non-negative"):
        hc.normalized_cut(-np.ones((3, 3)), [2])
    with pytest.raises(ValueError, match="square"):
        hc.normalized_cut(np.ones((3, 2)), [2])
    with pytest.raises(ValueError, match="positive ints"):
        hc.normalized_cut(S, [0])
    with pytest.raises(ValueError, match="eigen_solver"):
        hc.normalized_cut(S, [2], eigen_solver="magic")


def test_spectral_embedding_is_the_generalised_eigenproblem():
    """x / sqrt(d) solves (D - A) y = lambda' D y with lambda' = 1 - lambda (Shi & Malik eq. 6)."""
    X, _ = _blobs(n_per=15, n_blobs=3, spread=0.8, seed=4)
    A = _blob_affinity(X).astype(np.float64)
    values, Y = hc.spectral_embedding(A, 4, eigen_solver="dense")
    W = A.copy()
    np.fill_diagonal(W, 0)
    Dg = np.diag(W.sum(1))
    for i in range(4):
        np.testing.assert_allclose((Dg - W) @ Y[:, i], (1 - values[i]) * Dg @ Y[:, i], atol=1e-8)
    assert values[0] == pytest.approx(1.0) and np.all(np.diff(values) <= 1e-12)


# ------------------------------------------------------------------ clusters of a conv map

def _repeated_pattern_map():
    """A 6-channel 8x8 map: background, and the same 'window' pattern in two distant corners."""
    rng = np.random.default_rng(5)
    fmap = np.abs(rng.normal(scale=0.05, size=(6, 8, 8))).astype(np.float32)
    fmap[0] += 1.0                      # background
    fmap[3:, 0:2, 0:2] += 3.0           # pattern, top-left
    fmap[3:, 6:8, 6:8] += 3.0           # same pattern, bottom-right
    fmap[1, 3:5, 3:5] += 2.0            # a different object in the middle
    return fmap


def test_activation_clusters_group_repeated_disconnected_patterns():
    """Without a spatial term two distant copies of a pattern form one cluster (Sec. 3.2);
    a strong spatial term splits them (the paper's Fig. 6)."""
    fmap = _repeated_pattern_map()
    labels = hc.activation_clusters(fmap, [3], n_components=3)[3]
    assert labels.shape == (8, 8)
    assert labels[0, 0] == labels[7, 7]
    assert labels[0, 0] != labels[4, 4] and labels[0, 0] != labels[0, 5]
    spatial = hc.activation_clusters(fmap, [3], n_components=3, spatial_sigma=1.0)[3]
    assert spatial[0, 0] != spatial[7, 7]


def test_activation_clusters_clip_components_to_tiny_maps():
    fmap = np.random.default_rng(6).random((16, 2, 2)).astype(np.float32)
    cuts = hc.activation_clusters(fmap, (2, 20), n_components=7)
    assert set(cuts) == {2, 20}
    np.testing.assert_array_equal(np.sort(cuts[20].ravel()), np.arange(4))


def test_colour_clusters_split_flat_colours():
    img = np.zeros((6, 6, 3), dtype=np.uint8)
    img[:, :2] = (255, 0, 0)
    img[:, 2:4] = (0, 255, 0)
    img[:, 4:] = (0, 0, 255)
    labels = hc.colour_clusters(img, 3)
    truth = np.repeat([[0, 0, 1, 1, 2, 2]], 6, axis=0)
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) == 1.0
    with pytest.raises(ValueError, match="H x W x 3"):
        hc.colour_clusters(np.zeros((6, 6)), 3)


# ------------------------------------------------------------------ regions and aggregation

def test_masks_from_labels():
    labels = np.array([[2, 2], [5, 2]])
    masks = hc.masks_from_labels(labels)
    assert masks.shape == (2, 2, 2)
    np.testing.assert_array_equal(masks[0], labels == 2)
    np.testing.assert_array_equal(masks[1], labels == 5)


def test_regional_mac_is_eq4_per_region_and_reproduces_rmac():
    x = torch.rand(5, 7, 9)
    masks = hc.rmac_region_masks(7, 9)
    assert len(masks) == len(rmac_regions(7, 9))
    V = hc.regional_mac(x, masks)
    for r, (rx, ry, rw, rh) in enumerate(rmac_regions(7, 9)):
        np.testing.assert_allclose(V[r], x[:, ry:ry + rh, rx:rx + rw].amax(dim=(-2, -1)).numpy())
    # l2n + sum of the regional vectors is helpers.pooling.rmac
    np.testing.assert_allclose(l2n(torch.from_numpy(V)).sum(0).numpy(), rmac(x).numpy(), rtol=1e-5)
    # one region covering everything is MAC; a disconnected region takes the max over both parts
    np.testing.assert_allclose(hc.regional_mac(x, np.ones((1, 7, 9), bool))[0], mac(x).numpy())
    two = np.zeros((7, 9), bool)
    two[0, 0] = two[6, 8] = True
    np.testing.assert_allclose(hc.regional_mac(x, two)[0], torch.maximum(x[:, 0, 0], x[:, 6, 8]).numpy())
    with pytest.raises(ValueError, match="empty"):
        hc.regional_mac(x, np.zeros((1, 7, 9), bool))
    with pytest.raises(ValueError, match="match the map"):
        hc.regional_mac(x, np.ones((1, 3, 3), bool))


def test_aggregate_regional_vectors():
    rng = np.random.default_rng(7)
    V = rng.random((4, 6)).astype(np.float32) + 0.1
    plain = hc.aggregate_regional_vectors(V)
    expected = (V / np.linalg.norm(V, axis=1, keepdims=True)).sum(0)
    np.testing.assert_allclose(plain, expected / np.linalg.norm(expected), rtol=1e-5)
    whitening = PCAWhitening().fit(rng.random((50, 6)))
    white = hc.aggregate_regional_vectors(V, whitening)
    Vn = V / (np.linalg.norm(V, axis=1, keepdims=True) + 1e-6)
    expected = whitening.transform(Vn).sum(0)
    np.testing.assert_allclose(white, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-6)
    assert np.linalg.norm(white) == pytest.approx(1.0, abs=1e-5)


def test_crop_map():
    x = torch.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(hc.crop_map(x, (1, 0, 3, 2)).numpy(), x[:, 0:2, 1:3].numpy())
    with pytest.raises(ValueError, match="inside"):
        hc.crop_map(x, (0, 0, 5, 2))


# ------------------------------------------------------------------ region precision (eq. 1)

def test_box_cell_coverage_is_area_and_matches_bbx_on_map():
    from helpers.features import bbx_on_map

    image_hw, map_hw = (100, 200), (5, 10)  # 20 px per cell
    bbx = [30, 10, 95, 70]                  # cells 1.5..4.75 wide, 0.5..3.5 high
    cov = hc.box_cell_coverage(bbx, image_hw, map_hw)
    assert cov.sum() == pytest.approx((95 - 30) / 20 * (70 - 10) / 20)
    assert cov[0, 1] == pytest.approx(0.5 * 0.5) and cov[1, 2] == 1.0 and cov[4, 9] == 0
    c1, r1, c2, r2 = bbx_on_map(bbx, image_hw, map_hw)
    inside = np.zeros(map_hw, bool)
    inside[r1:r2, c1:c2] = True
    np.testing.assert_array_equal(cov > 0, inside)
    np.testing.assert_allclose(hc.box_cell_coverage([0, 0, 200, 100], image_hw, map_hw), 1.0)


def test_region_precision_eq1():
    cov = np.zeros((4, 4))
    cov[:2, :2] = 1.0  # ground truth = top-left 2x2 cells
    inside = np.zeros((4, 4), bool)
    inside[0, 0] = True
    half = np.zeros((4, 4), bool)
    half[0, :4] = True                   # 2 of its 4 cells inside
    outside = np.zeros((4, 4), bool)
    outside[3, 3] = True
    np.testing.assert_allclose(hc.region_precision(np.stack([inside, half, outside]), cov), [1.0, 0.5, 0.0])
    # partial cell coverage counts by area
    cov2 = np.full((1, 2), 0.25)
    assert hc.region_precision(np.ones((1, 1, 2), bool), cov2)[0] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="empty"):
        hc.region_precision(np.zeros((1, 4, 4), bool), cov)


def test_share_at_or_above():
    p = [0.0, 0.5, 0.5, 1.0]
    np.testing.assert_allclose(hc.share_at_or_above(p, [0.0, 0.5, 0.75, 1.0]), [1.0, 0.75, 0.25, 0.25])


def test_default_n_components():
    assert hc.default_n_components("vgg16") == 4 and hc.default_n_components("resnet101") == 7
    assert hc.default_n_components("efficientnet_lite0") == hc.FALLBACK_N_COMPONENTS


def test_connected_parts_counts_disconnected_clusters():
    labels = np.array([[0, 1, 0],
                       [1, 1, 1],
                       [0, 1, 2]])
    np.testing.assert_array_equal(hc.connected_parts(labels), [3, 1, 1])


# ------------------------------------------------------------------ the "clusters" method on real photos

def _boxed_folder_dataset(photo_folder):
    """The photo folder as a revisited-style dataset whose queries carry boxes (for crop X)."""
    from helpers.data import RetrievalDataset, load_dataset

    ds = load_dataset(f"folder:{photo_folder}")
    from PIL import Image

    gnd = []
    for q in range(ds.n_queries):
        with Image.open(ds.query_path(q)) as im:
            w, h = im.size
        gnd.append({**ds.gnd[q], "bbx": [0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]})
    return RetrievalDataset(name="boxed", root=ds.root, imlist=ds.imlist, qimlist=ds.qimlist, gnd=gnd,
                            protocol=ds.protocol)


def test_clusters_method_retrieves_real_photos(photo_folder, backbone, isolated_cache):
    from helpers.data import load_dataset
    from helpers.evaluate import evaluate_scores
    from helpers.methods import make_method

    ds = load_dataset(f"folder:{photo_folder}")
    method = make_method("clusters", backbone, 160, whiten=False)
    assert not method.needs_training
    assert method.n_components == hc.default_n_components(backbone.name)
    scores = method.search(ds)
    assert scores.shape == (ds.n_db, ds.n_queries)
    assert evaluate_scores(ds, scores)["mAP"] > 90
    desc = method.describe(ds, "db")
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1, rtol=1e-4)
    # R-MAC regions through the same post-processing are helpers.pooling.rmac, l2-normalised
    from helpers.features import extract_maps

    rmac_method = make_method("clusters", backbone, 160, regions="rmac", whiten=False)
    maps = extract_maps(ds, backbone, [backbone.last_conv], 160, "db")[backbone.last_conv]
    expected = np.stack([l2n(rmac(m)).numpy() for m in maps])
    np.testing.assert_allclose(rmac_method.describe(ds, "db"), expected, rtol=1e-4, atol=1e-5)


def test_clusters_method_options_and_whitening(photo_folder, backbone, isolated_cache):
    from helpers.data import load_dataset
    from helpers.methods import make_method

    with pytest.raises(ValueError, match="regions"):
        make_method("clusters", backbone, 160, regions="squares")
    with pytest.raises(ValueError, match="query_crop"):
        make_method("clusters", backbone, 160, query_crop="pixels")
    with pytest.raises(ValueError, match="n_components"):
        make_method("clusters", backbone, 160, n_components=0)
    ds = load_dataset(f"folder:{photo_folder}")
    method = make_method("clusters", backbone, 160, qe_k=2)
    assert method.needs_training
    with pytest.raises(RuntimeError, match="fit"):
        method.describe(ds, "db")
    method.fit(ds)  # (a test shortcut: the CLI never fits on the evaluated set)
    desc = method.describe(ds, "db")
    assert desc.shape[0] == 12 and np.isfinite(desc).all()
    assert method.search(ds).shape == (12, ds.n_queries)


def test_crop_x_crops_the_uncropped_query_map(photo_folder, backbone, isolated_cache):
    from helpers.features import bbx_on_map, extract_maps, extraction_info
    from helpers.methods import make_method

    ds = _boxed_folder_dataset(photo_folder)
    method = make_method("clusters", backbone, 160, whiten=False, colour_clusters=0, n_components=4)
    crop_x = method.describe_queries(ds, "activations")
    full = extract_maps(ds, backbone, [backbone.last_conv], 160, "query_full")[backbone.last_conv]
    info = extraction_info(ds, backbone, 160, "query_full")
    q = 0
    cells = bbx_on_map(ds.gnd[q]["bbx"], info["original_hw"][q], tuple(full[q].shape[-2:]))
    cropped = hc.crop_map(full[q], cells)
    masks = hc.cluster_region_masks(cropped, None, (5, 20), 0, 4)
    expected = hc.aggregate_regional_vectors(hc.regional_mac(cropped, masks))
    np.testing.assert_allclose(crop_x[q], expected, rtol=1e-5, atol=1e-6)
    crop_i = method.describe_queries(ds, "image")
    assert crop_i.shape == crop_x.shape and not np.allclose(crop_i, crop_x)


def test_query_region_precisions_on_real_photos(photo_folder, backbone, isolated_cache):
    ds = _boxed_folder_dataset(photo_folder)
    result = hc.query_region_precisions(ds, backbone, 160)
    assert result["queries"] == list(range(ds.n_queries))
    for kind in ("rmac", "clusters"):
        values = np.concatenate(result[kind])
        assert values.min() >= 0 and values.max() <= 1 + 1e-9
    # 60% x 70% of the image is inside the box: area-weighted, the regions of one partition
    # (the 5 clusters of query 0) average to exactly that share
    from helpers.features import extract_maps, extraction_info

    full = extract_maps(ds, backbone, [backbone.last_conv], 160, "query_full")[backbone.last_conv][0]
    info = extraction_info(ds, backbone, 160, "query_full")
    cov = hc.box_cell_coverage(ds.gnd[0]["bbx"], info["original_hw"][0], tuple(full.shape[-2:]))
    five = hc.masks_from_labels(hc.activation_clusters(full, [5], 4)[5])
    areas = five.sum(axis=(1, 2))
    assert np.sum(hc.region_precision(five, cov) * areas) / areas.sum() == pytest.approx(cov.mean())


def test_clusters_options_are_declared_with_their_kinds(backbone):
    from helpers.methods import make_method
    from helpers.options import OptionError, option_specs

    specs = option_specs(hc.ActivationClustersMethod)
    assert specs["regions"].choices == hc.REGION_KINDS == ("clusters", "rmac")
    assert specs["query_crop"].choices == hc.QUERY_CROPS and specs["eigen_solver"].choices == hc.EIGEN_SOLVERS
    assert specs["whiten"].kind == "bool" and specs["z_ratio"].kind == "float" and specs["n_components"].optional
    method = make_method("clusters", backbone, 160, whiten="no", qe_k="2", z_ratio="0.1")
    assert (method.whitening, method.qe_k, method.z_ratio) == (None, 2, 0.1)
    with pytest.raises(OptionError, match="z_ratio"):
        make_method("clusters", backbone, 160, z_ratio=0)
    with pytest.raises(OptionError, match="whiten.*true or false"):
        make_method("clusters", backbone, 160, whiten="perhaps")
    with pytest.raises(OptionError, match="colour_clusters.*>= 0"):
        make_method("clusters", backbone, 160, colour_clusters=-1)


def test_region_precision_map_paints_each_cell_with_its_region():
    labels = np.array([[0, 0, 1],
                       [2, 1, 1]])
    coverage = np.array([[1.0, 0.0, 1.0],
                         [0.5, 1.0, 0.0]])
    masks = hc.masks_from_labels(labels)
    expected = np.array([[0.5, 0.5, 2 / 3],
                         [0.5, 2 / 3, 2 / 3]])
    np.testing.assert_allclose(hc.region_precision_map(masks, coverage), expected)
    np.testing.assert_allclose(hc.region_precision_map(masks[0], coverage)[0, :2], 0.5)


def test_regional_vectors_use_the_suite_l2_normalisation():
    from helpers.pooling import l2n_np

    V = np.random.default_rng(0).random((6, 10)).astype(np.float32)
    np.testing.assert_array_equal(hc.aggregate_regional_vectors(V), l2n_np(l2n_np(V).sum(axis=0)))
    assert not hasattr(hc, "_l2n_rows")


def test_mean_precision_per_query_is_area_under_share_curve():
    from helpers.clusters import mean_precision_per_query, share_at_or_above
    per_query = [np.array([0.0, 0.5, 1.0]), np.array([0.2])]
    values = mean_precision_per_query(per_query)
    np.testing.assert_allclose(values, [50.0, 20.0])
    t = np.linspace(0, 1, 100001)
    area = np.trapezoid(share_at_or_above(per_query[0], t), t)
    assert abs(100 * area - values[0]) < 0.1
    with pytest.raises(ValueError, match="empty"):
        mean_precision_per_query([])


def test_tables_2_and_3_compare_regions_and_the_networks_own_descriptor(photo_folder, isolated_cache, tmp_path,
                                                                        monkeypatch):
    """Chapter 06's Tables 2-3 path, on a network in cnnimageretrieval-pytorch's layout (random weights)."""
    import torch

    from helpers import backbones
    from helpers.features import load_split_image
    from helpers.pooling import gem
    from retrieval_checkpoints import cirtorch_checkpoint, register

    checkpoint, features, _ = cirtorch_checkpoint("resnet18")
    register(monkeypatch, tmp_path / "torch", "test_r18_tables", "resnet18", "cirtorch", checkpoint)
    bb = backbones.load_backbone("test_r18_tables", device="cpu")
    assert bb.architecture == "resnet18"
    ds = _boxed_folder_dataset(photo_folder)
    table = hc.fine_tuned_comparison(ds, ds, bb, 160, qe_values=(0, 2), colour_clusters=0, n_components=4)
    expected_keys = {(r, c, q) for r in ("rmac", "clusters") for c in ("image", "activations") for q in (0, 2)}
    expected_keys |= {(r, "image", q) for r in ("network", "network+Lw") for q in (0, 2)}
    assert set(table) == expected_keys
    assert all(0 <= result["mAP"] <= 100 for result in table.values())
    own = hc.network_descriptors(ds, bb, 160, "query")
    with torch.no_grad():
        raw = gem(features.eval()(bb.preprocess(load_split_image(ds, "query", 0, 160))), 2.7)[0].numpy()
    np.testing.assert_allclose(own[0], raw / np.linalg.norm(raw), atol=2e-3)   # cached as float16
    whitened = hc.network_descriptors(ds, bb, 160, "query", "retrieval-SfM-120k")  # P = I, m = 0.01
    shifted = own[0] - 0.01
    np.testing.assert_allclose(whitened[0], shifted / np.linalg.norm(shifted), atol=2e-3)
    with pytest.raises(ValueError, match="no learned whitening 'Landmarks'"):
        hc.network_descriptors(ds, bb, 160, "query", "Landmarks")
    backbones._LOADED.clear()


def test_network_descriptors_need_a_retrieval_network(photo_folder, backbone, isolated_cache):
    from helpers.data import load_dataset

    with pytest.raises(ValueError, match="no descriptor of its own"):
        hc.network_descriptors(load_dataset(f"folder:{photo_folder}"), backbone, 160, "db")

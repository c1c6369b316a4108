"""Tests of helpers.roi (paper 003: RoI-based CNN features), derived from the paper's definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from helpers import roi


def _map_with_blobs():
    """3 channels on a 6 x 8 map: channel 0 a 2x3 blob, channel 1 two separate cells, channel 2 empty."""
    fmap = torch.zeros(3, 6, 8)
    fmap[0, 1:3, 2:5] = 1.0          # rows 1-2, cols 2-4
    fmap[0, 2, 3] = 5.0
    fmap[1, 0, 0] = 2.0
    fmap[1, 4, 6] = 3.0
    fmap[2] = -1.0                   # negative everywhere: no region
    return fmap


# ------------------------------------------------------------------ eq. 1 and base regions

def test_binarize_threshold_zero_is_eq1_positive_cells():
    fmap = _map_with_blobs()
    binary = roi.binarize_feature_maps(fmap, 0.0)
    assert torch.equal(binary, fmap > 0)


def test_binarize_relative_threshold_keeps_strong_cells_only():
    fmap = _map_with_blobs()
    binary = roi.binarize_feature_maps(fmap, 0.5)
    assert binary[0].sum() == 1 and binary[0, 2, 3]          # only the 5.0 > 2.5
    assert binary[1].sum() == 2                              # 2 > 1.5 and 3 > 1.5
    assert not binary[2].any()


def test_base_regions_are_bounding_rectangles_with_exclusive_ends():
    boxes, present = roi.base_regions(roi.binarize_feature_maps(_map_with_blobs(), 0.0))
    assert present.tolist() == [True, True, False]
    assert boxes[0].tolist() == [2, 1, 5, 3]
    assert boxes[1].tolist() == [0, 0, 7, 5]                 # spans both isolated cells
    assert boxes[2].tolist() == [0, 0, 0, 0]


def test_base_regions_match_brute_force_on_random_maps():
    gen = torch.Generator().manual_seed(0)
    binary = torch.rand(20, 7, 9, generator=gen) > 0.93
    boxes, present = roi.base_regions(binary)
    for d in range(20):
        ys, xs = np.nonzero(binary[d].numpy())
        assert bool(present[d]) == (len(ys) > 0)
        if len(ys):
            assert boxes[d].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_region_activation_sums_equal_direct_sums():
    gen = torch.Generator().manual_seed(1)
    fmap = torch.rand(5, 6, 7, generator=gen)
    boxes = torch.tensor([[0, 0, 7, 6], [1, 2, 3, 5], [6, 5, 7, 6], [2, 0, 4, 1], [0, 3, 5, 4]]).float()
    sums = roi.region_activation_sums(fmap, boxes)
    for d, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        assert sums[d].item() == pytest.approx(fmap[d, y1:y2, x1:x2].sum().item(), rel=1e-5)


# ------------------------------------------------------------------ 3.2.2 filtering and selection

def test_region_filter_area_and_aspect():
    boxes = torch.tensor([[0, 0, 10, 10],     # area 1.0, aspect 1     -> kept
                          [0, 0, 1, 1],       # area 0.01 < 0.05       -> dropped
                          [0, 0, 10, 2],      # aspect 5 > 4           -> dropped
                          [0, 0, 8, 2],       # aspect 4 (not > 4)     -> kept
                          [0, 0, 5, 1]]).float()  # area 0.05 (not < 0.05), aspect 5 -> dropped
    mask = roi.region_filter_mask(boxes, (10, 10), t_min=0.05, t_rate=4.0)
    assert mask.tolist() == [True, False, False, True, False]


def test_select_rois_is_nms_by_score_cut_at_k():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9], [5, 5, 9, 9], [0, 0, 2, 2]]).float()
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    # box 1 duplicates box 0 (IoU 1), box 2 has IoU 0.9 with box 0 (< 0.95, kept)
    keep = roi.select_rois(boxes, scores, k=10, t_iou=0.95)
    assert keep.tolist() == [0, 2, 3, 4]
    assert roi.select_rois(boxes, scores, k=2).tolist() == [0, 2]
    ious = box_iou(boxes[keep], boxes[keep]) - torch.eye(len(keep))
    assert ious.max() < 0.95


def test_select_rois_ties_break_by_index():
    boxes = torch.tensor([[0, 0, 2, 2], [4, 4, 6, 6], [2, 2, 4, 4]]).float()
    assert roi.select_rois(boxes, torch.ones(3), k=3).tolist() == [0, 1, 2]


def test_boxes_to_image_scales_by_size_ratio():
    out = roi.boxes_to_image(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), (4, 5), (400, 250))
    assert out.tolist() == [[50.0, 200.0, 150.0, 400.0]]


def test_detect_rois_pipeline_and_fallback():
    fmap = torch.zeros(4, 10, 10)
    fmap[0, 0:6, 0:6] = 1.0                    # 36 % area, strongest: sum 36
    fmap[1, 0:6, 0:6] = 0.5                    # same box: suppressed (IoU 1)
    fmap[2, 5:10, 5:10] = 0.9                  # 25 %
    fmap[3, 0, 0:10] = 3.0                     # 1 x 10: aspect 10 -> filtered
    det = roi.detect_rois(fmap, k=5, threshold=0.0, t_min=0.05, t_rate=4.0)
    assert det.kept.tolist() == [True, True, True, False]
    assert det.selected.tolist() == [0, 2]
    assert det.boxes.tolist() == [[0, 0, 6, 6], [5, 5, 10, 10]]
    assert not det.fallback
    empty = roi.detect_rois(torch.zeros(3, 4, 5), k=5)
    assert empty.fallback and empty.boxes.tolist() == [[0, 0, 5, 4]]


def test_detect_rois_prefix_property():
    gen = torch.Generator().manual_seed(3)
    fmap = torch.relu(torch.randn(64, 12, 12, generator=gen))
    big = roi.detect_rois(fmap, k=20, threshold=0.5)
    small = roi.detect_rois(fmap, k=5, threshold=0.5)
    assert torch.equal(small.selected, big.selected[:5])


@pytest.mark.parametrize("kwargs,error", [
    (dict(threshold=1.0), ValueError), (dict(threshold=-0.1), ValueError),
    (dict(t_min=2.0), ValueError), (dict(t_rate=0.5), ValueError), (dict(k=0), ValueError),
    (dict(t_iou=0.0), ValueError), (dict(threshold="a"), TypeError),
])
def test_detect_rois_rejects_bad_parameters(kwargs, error):
    with pytest.raises(error):
        roi.detect_rois(torch.rand(3, 4, 4), **kwargs)


def test_detect_rois_rejects_bad_map():
    with pytest.raises(ValueError, match="C x H x W"):
        roi.detect_rois(torch.rand(1, 3, 4, 4))
    with pytest.raises(TypeError):
        roi.detect_rois(np.zeros((3, 4, 4)))


# ------------------------------------------------------------------ 3.2.3 features, eq. 2, eq. 3

def test_pool_roi_features_equal_direct_max_and_sum():
    gen = torch.Generator().manual_seed(2)
    fmap = torch.randn(6, 7, 9, generator=gen)
    boxes = torch.tensor([[0, 0, 9, 7], [2, 1, 5, 4], [8, 6, 9, 7], [3, 0, 4, 7]]).float()
    mx = roi.pool_roi_features(fmap, boxes, "max")
    sm = roi.pool_roi_features(fmap, boxes, "sum")
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        region = fmap[:, y1:y2, x1:x2]
        assert torch.allclose(mx[i], region.amax(dim=(1, 2)), atol=1e-6)
        assert torch.allclose(sm[i], region.sum(dim=(1, 2)), atol=1e-4)


def test_pool_roi_features_bad_input():
    with pytest.raises(ValueError, match="pooling"):
        roi.pool_roi_features(torch.rand(2, 3, 3), torch.tensor([[0.0, 0, 1, 1]]), "mean")
    with pytest.raises(ValueError, match="x2 > x1"):
        roi.pool_roi_features(torch.rand(2, 3, 3), torch.tensor([[1.0, 0, 1, 1]]), "max")


def test_binarize_features_eq2():
    f = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    assert roi.binarize_features(f).tolist() == [[0, 0, 0, 1], [0, 0, 0, 0]]   # mean 3: strictly above
    assert roi.binarize_features(torch.tensor([3.0, -1.0])).tolist() == [1, 0]
    rng = np.random.default_rng(0)
    g = rng.normal(size=(5, 32))
    assert np.array_equal(roi.binarize_features(g), roi.binarize_features(g * 7.3))  # scale invariant


def test_roi_similarity_eq3_against_definition():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, (4, 50)).astype(np.uint8)
    b = rng.integers(0, 2, (3, 50)).astype(np.uint8)
    sim = roi.roi_similarity(a, b)
    for i in range(4):
        for j in range(3):
            expected = 1 - np.abs(a[i].astype(int) - b[j].astype(int)).sum() / 50
            assert sim[i, j] == pytest.approx(expected)
    assert roi.roi_similarity(a, a).diagonal().tolist() == [1.0] * 4
    assert roi.image_similarity(a, b) == pytest.approx(sim.max())
    with pytest.raises(ValueError, match="binary"):
        roi.roi_similarity(a * 2.5, b)
    with pytest.raises(ValueError, match="same D"):
        roi.roi_similarity(a, b[:, :10])


# ------------------------------------------------------------------ first stage

def test_sift_descriptors_shape_and_cap():
    from skimage.data import astronaut
    img = astronaut()
    desc = roi.sift_descriptors(img, roi.SiftParams(max_side=160, max_keypoints=40))
    assert desc.shape[1] == 128 and 0 < desc.shape[0] <= 40 and desc.dtype == np.float32
    flat = roi.sift_descriptors(np.full((64, 64, 3), 128, np.uint8), roi.SiftParams(max_side=64))
    assert flat.shape == (0, 128)
    with pytest.raises(ValueError):
        roi.SiftParams(upsampling=3)


def test_top_candidates_order_and_ties():
    scores = np.array([[0.1, 0.5], [0.9, 0.5], [0.5, 0.2]])
    assert roi.top_candidates(scores, 2).tolist() == [[1, 0], [2, 1]]
    assert roi.top_candidates(scores, 10).shape == (3, 2)


# ------------------------------------------------------------------ re-ranking

def _codes(rng, k, d=64):
    return rng.integers(0, 2, (k, d)).astype(np.uint8)


def test_exhaustive_rerank_is_max_over_all_pairs():
    rng = np.random.default_rng(0)
    q = _codes(rng, 5)
    cands = [_codes(rng, int(k)) for k in rng.integers(1, 6, 7)]
    out = roi.rerank_candidates(q, cands)
    assert np.allclose(out.similarities, [roi.roi_similarity(q, c).max() for c in cands])
    assert out.pair_count == sum(5 * len(c) for c in cands)
    for i, c in enumerate(cands):
        qi, ci = out.best_pairs[i]
        assert roi.roi_similarity(q[qi:qi + 1], c[ci:ci + 1])[0, 0] == out.similarities[i]


def test_fast_rerank_votes_and_restricted_matching():
    d = 16
    q = np.zeros((3, d), np.uint8)
    q[0, :8] = 1
    q[1, 8:] = 1
    q[2, ::2] = 1
    # the top 2 candidates only contain RoIs identical to query RoI 1 -> it gets all votes
    cands = [q[[1, 1]], q[[1]], q[[0]], q[[1]]]
    out = roi.rerank_candidates(q, cands, n_exhaustive=2, k_query=1)
    assert out.kept_query_rois.tolist() == [1]
    assert out.similarities[:2].tolist() == [1.0, 1.0]
    # candidate 2 (a copy of query RoI 0) is compared with query RoI 1 only
    assert out.similarities[2] == pytest.approx(roi.roi_similarity(q[[1]], q[[0]])[0, 0])
    assert out.similarities[3] == 1.0
    assert out.pair_count == 3 * 2 + 3 * 1 + 1 * 1 + 1 * 1
    exhaustive = roi.rerank_candidates(q, cands)
    assert exhaustive.similarities[2] == 1.0
    assert (out.similarities <= exhaustive.similarities + 1e-12).all()
    with pytest.raises(ValueError, match="k_query"):
        roi.rerank_candidates(q, cands, n_exhaustive=2)


def test_fast_rerank_matches_a_loop_over_the_definition():
    rng = np.random.default_rng(5)
    q = _codes(rng, 6, 32)
    cands = [_codes(rng, int(k), 32) for k in rng.integers(1, 5, 12)]
    n, k = 4, 2
    votes = np.zeros(6, int)
    expected = []
    for c in cands[:n]:
        s = roi.roi_similarity(q, c)
        expected.append(s.max())
        for j in range(s.shape[1]):
            votes[int(np.argmax(s[:, j]))] += 1
    kept = sorted(sorted(range(6), key=lambda i: (-votes[i], i))[:k])
    expected += [roi.roi_similarity(q[kept], c).max() for c in cands[n:]]
    out = roi.rerank_candidates(q, cands, n_exhaustive=n, k_query=k)
    assert out.kept_query_rois.tolist() == kept
    assert np.allclose(out.similarities, expected)
    for i, c in enumerate(cands):
        qi, ci = out.best_pairs[i]
        assert roi.roi_similarity(q[[qi]], c[[ci]])[0, 0] == pytest.approx(out.similarities[i])
    assert out.pair_count == sum(6 * len(c) for c in cands[:n]) + sum(k * len(c) for c in cands[n:])
    with pytest.raises(ValueError, match="no RoI"):
        roi.rerank_candidates(q, [q, np.zeros((0, 32), np.uint8)])


def test_reranked_scores_put_candidates_first_in_similarity_order():
    first = np.array([[0.9], [0.8], [0.7], [0.1], [0.5]])
    cands = roi.top_candidates(first, 3)                      # 0, 1, 2
    sims = np.array([[0.2], [0.9], [0.2]])
    scores = roi.reranked_scores(first, cands, sims)
    order = np.argsort(-scores[:, 0], kind="stable").tolist()
    assert order == [1, 0, 2, 4, 3]                           # tie 0/2 keeps first-stage order


# ------------------------------------------------------------------ cache and dataset level

def test_cached_arrays_computes_once_and_checks_key(isolated_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3)}

    key = {"dataset": "a", "n": 1}
    assert roi.cached_arrays("unit", key, compute)["x"].tolist() == [0, 1, 2]
    assert roi.cached_arrays("unit", key, compute)["x"].tolist() == [0, 1, 2]
    assert len(calls) == 1
    roi.cached_arrays("unit", {"dataset": "a", "n": 2}, compute)
    assert len(calls) == 2
    files = list((isolated_cache / "roi").iterdir())
    assert len(files) == 2 and not [f for f in files if f.name.endswith(".tmp")]
    files[0].write_bytes(b"garbage")                       # corrupt entry: recomputed with a warning
    with pytest.warns(UserWarning, match="unreadable cache"):
        for key in ({"dataset": "a", "n": 1}, {"dataset": "a", "n": 2}):
            roi.cached_arrays("unit", key, compute)
    assert len(calls) == 3


def test_warp_crops_shape():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 30:50] = 255
    crops = roi.warp_crops(img, np.array([[30, 10, 50, 20], [0, 0, 60, 40]]), 16)
    assert [c.shape for c in crops] == [(16, 16, 3), (16, 16, 3)]
    assert crops[0].min() > 200                             # the white patch fills the first crop


def _second_folder(tmp_path):
    """A small training ``folder:`` dataset (2 instances x 2 views), disjoint from ``photo_folder``."""
    from PIL import Image
    import skimage.data as data

    root = tmp_path / "train_photos"
    for name, img in {"camera": data.camera(), "coins": data.coins()}.items():
        img = np.stack([np.asarray(img)] * 3, -1)
        (root / name).mkdir(parents=True)
        for k, view in enumerate([img, img[:, ::-1]]):
            Image.fromarray(np.ascontiguousarray(view)).save(root / name / f"{name}_{k}.jpg", quality=90)
    return root


@pytest.fixture
def one_torch_thread():
    """Tiny forward passes run much faster on one thread (and 20x faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_roi_method_end_to_end_on_photo_folders(tmp_path, isolated_cache, backbone, photo_folder, monkeypatch,
                                                 one_torch_thread):
    from helpers.data import load_dataset
    from helpers.evaluate import evaluate_scores
    from helpers.methods import make_method

    evaluated = load_dataset(f"folder:{photo_folder}")
    train = load_dataset(f"folder:{_second_folder(tmp_path)}")
    options = dict(k=4, crop_size=48, vocabulary_size=16, shortlist=6, n_exhaustive=2, k_query=2,
                   whiten_dim=8, sift_max_side=128, sift_max_keypoints=60)
    method = make_method("roi", backbone, 128, **options).fit(train)
    scores = method.search(evaluated)
    n = len(evaluated.imlist)
    assert scores.shape == (n, n)
    # the 6 candidates of each query are ranked first, in the order of their RoI similarity
    for q in range(n):
        top = set(np.argsort(-scores[:, q])[:6].tolist())
        assert top == set(method.last_candidates[:, q].tolist())
        assert method.last_outcomes[q].kept_query_rois.size <= 2
    result = evaluate_scores(evaluated, scores)
    assert 0.0 <= result["mAP"] <= 100.0
    # fewer RoIs reuse the cached k=4 entry (prefix) instead of recomputing
    monkeypatch.setattr(roi, "_compute_roi_arrays", lambda *a, **k: pytest.fail("recomputed"))
    small = roi.compute_roi_set(evaluated, backbone, 128, "db", "fc", 2, roi.RoIParams(), 48)
    assert small.k == 2 and all(len(f) <= 3 for f in small.features)
    with pytest.raises(ValueError, match="at most 2"):
        small.rois(3)
    with pytest.raises(ValueError, match="unknown options"):
        make_method("roi", backbone, 128, bogus=1)


def test_roi_method_requires_fit(backbone):
    from helpers.methods import make_method

    method = make_method("roi", backbone, 160)
    with pytest.raises(RuntimeError, match="fit"):
        method.first_stage(None)
    with pytest.raises(ValueError, match="feature"):
        make_method("roi", backbone, 160, feature="avg")


def test_files_fingerprint_changes_when_an_image_is_replaced(photo_folder):
    import os

    from helpers.data import load_dataset

    dataset = load_dataset(f"folder:{photo_folder}")
    before = roi.files_fingerprint(dataset, "db")
    assert roi.files_fingerprint(dataset, "db") == before
    path = dataset.db_path(0)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000))
    assert roi.files_fingerprint(dataset, "db") != before


def test_roi_options_are_declared_and_checked_by_the_shared_validators(backbone):
    from helpers.methods import make_method
    from helpers.options import OptionError, option_specs

    specs = option_specs(roi.RoIMethod)
    assert specs["feature"].choices == roi.ROI_FEATURES == ("fc", "max", "sum")
    assert all(spec.kind != "any" for spec in specs.values())
    method = make_method("roi", backbone, 160, baseline="yes", fast="0", k="4", whiten_dim="none", t_min="0.1")
    assert (method.baseline, method.fast, method.k, method.whiten_dim) == (True, False, 4, None)
    assert method.roi_params.t_min == 0.1 and isinstance(method.roi_params.threshold, float)
    with pytest.raises(OptionError, match="baseline.*true or false"):
        make_method("roi", backbone, 160, baseline="maybe")
    with pytest.raises(OptionError, match="shortlist.*>= 1"):
        make_method("roi", backbone, 160, shortlist=0)
    with pytest.raises(OptionError, match="t_iou"):
        roi.RoIMethod(backbone, 160, t_iou=0.0)


def test_first_stage_words_are_assigned_by_helpers_bow():
    assert not hasattr(roi, "quantize") and not hasattr(roi, "InvertedFile") and not hasattr(roi, "learn_vocabulary")
    from helpers import features

    assert roi.load_split_image is features.load_split_image  # the one way to read a split's image


# ------------------------------------------------------------------ coverage and margin claims

def test_box_coverage_counts_the_union_of_overlapping_boxes_once():
    boxes = np.array([[0, 0, 5, 10], [3, 0, 8, 10]])         # overlap of columns 3-4 counted once
    assert roi.box_coverage(boxes, (10, 10)) == pytest.approx(0.8)
    assert roi.box_coverage(np.zeros((0, 4)), (10, 10)) == 0.0
    assert roi.box_coverage([[-5, -5, 50, 50]], (10, 20)) == 1.0    # clipped to the image


def test_box_coverage_rejects_an_empty_image():
    with pytest.raises(ValueError, match="image height"):
        roi.box_coverage([[0, 0, 1, 1]], (0, 10))


def test_mean_roi_coverage_averages_the_top_k_boxes_of_each_image():
    boxes = [np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 5, 10, 10]]),   # row 0: whole image
             np.array([[0, 0, 10, 10], [0, 0, 5, 10], [5, 0, 10, 10]])]
    feats = [np.zeros((3, 4)), np.zeros((3, 4))]
    roi_set = roi.RoISet(boxes, feats, [(10, 10), (10, 10)], "max", 2)
    assert roi.mean_roi_coverage(roi_set, 1) == pytest.approx(0.5)
    assert roi.mean_roi_coverage(roi_set, 2) == pytest.approx(1.0)


def test_within_margin_decides_on_the_interval_against_minus_margin():
    from helpers.evaluate import CONTRADICTED, NOT_SEPARABLE, REPRODUCED, PairedComparison

    def comp(low, high):
        return PairedComparison(diff=(low + high) / 2, ci=(low, high), p=0.5, n_queries=70, n_groups=14,
                                verdict="tie", claim=None)
    assert roi.within_margin(comp(-0.8, 0.3), 1.0)["claim"] == REPRODUCED
    assert roi.within_margin(comp(-3.0, -1.5), 1.0)["claim"] == CONTRADICTED
    assert roi.within_margin(comp(-1.5, 0.2), 1.0)["claim"] == NOT_SEPARABLE
    original = comp(-0.8, 0.3)
    assert "reproduced" in roi.within_margin(original).claim_line("fast matching")
    assert original["claim"] is None                                   # the input is left as it is
    with pytest.raises(ValueError, match="margin"):
        roi.within_margin(original, 0)

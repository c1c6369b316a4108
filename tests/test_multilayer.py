"""Tests for helpers.multilayer (paper 002, multi-layer similarity fusion), from the definitions."""
import numpy as np
import pytest

from helpers import multilayer as ml
from helpers.evaluate import evaluate_scores, per_query_ap, ranks_from_scores
from helpers.pooling import l2n_np


def _random_similarities(n_db=40, n_q=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n_db, n_q)), rng.uniform(0, 1, (n_db, n_q))


# ---------------------------------------------------------------------------- eq. (3) mapping

def test_mapping_function_matches_formula_pointwise():
    s = np.array([-0.3, 0.0, 0.1, 0.2, 0.3, 0.6, 0.95, 1.0])
    t, p = 0.2, 0.45
    expected = np.array([v if v <= t else t + (1 - t) * ((v - t) / (1 - t)) ** p for v in s])
    np.testing.assert_allclose(ml.mapping_function(s, t, p), expected, rtol=0, atol=1e-12)


def test_mapping_function_properties():
    s = np.linspace(0, 1, 1001)
    for t in (0.0, 0.2, 0.5, 0.9):
        for p in (0.1, 0.45, 0.9):
            f = ml.mapping_function(s, t, p)
            assert np.all(np.diff(f) >= -1e-15), "f must be non-decreasing"
            assert np.all(f >= s - 1e-12), "f(S) >= S for p <= 1"
            assert f[-1] == pytest.approx(1.0)
            np.testing.assert_allclose(f[s <= t], s[s <= t])
            # continuity at t: f(t + eps) -> t (slowly for small p: the gap is ~ eps ** p)
            gaps = [ml.mapping_function(np.array([t + eps]), t, p)[0] - t for eps in (1e-3, 1e-6, 1e-12)]
            assert gaps[0] > gaps[1] > gaps[2] > 0 and gaps[2] <= 1.000001 * 1e-12 ** p
            # compresses differences above t: the range [t, 1] of S maps into a narrower spread
            above = s > t + 0.05
            assert np.ptp(f[above]) < np.ptp(s[above])


def test_mapping_identity_cases_and_p_zero():
    s = np.linspace(-0.2, 1, 50)
    np.testing.assert_allclose(ml.mapping_function(s, 0.3, 1.0), s, atol=1e-12)
    np.testing.assert_array_equal(ml.mapping_function(s, 1.0, 0.45), s)
    f0 = ml.mapping_function(s, 0.3, 0.0)
    np.testing.assert_array_equal(f0[s > 0.3], 1.0)
    np.testing.assert_array_equal(f0[s <= 0.3], s[s <= 0.3])


@pytest.mark.parametrize("t,p", [(-0.1, 0.5), (1.5, 0.5), (0.2, -1.0), (float("nan"), 0.5),
                                 (0.2, float("inf"))])
def test_mapping_rejects_bad_parameters(t, p):
    with pytest.raises(ValueError):
        ml.mapping_function(np.zeros(3), t, p)


# ------------------------------------------------------------------ eq. (1) and (2)

def test_concatenation_equals_cosine_of_concatenated_normalised_descriptors():
    rng = np.random.default_rng(1)
    db_a, q_a = rng.random((12, 7)), rng.random((3, 7))
    db_b, q_b = rng.random((12, 4)), rng.random((3, 4))
    l2 = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    concat_db = np.hstack([l2(db_a), l2(db_b)])
    concat_q = np.hstack([l2(q_a), l2(q_b)])
    s = ml.concatenation_similarity([l2(db_a) @ l2(q_a).T, l2(db_b) @ l2(q_b).T])
    np.testing.assert_allclose(s, concat_db @ concat_q.T, atol=1e-12)
    assert s.shape == (12, 3)


@pytest.mark.parametrize("case", ["p=1", "t=1"])
def test_fusion_reduces_to_direct_concatenation(case):
    high, low = _random_similarities()
    mid = np.random.default_rng(5).uniform(0, 1, high.shape)
    sims = [high, mid, low]
    if case == "p=1":
        fused = ml.fused_similarity(sims, thresholds=(0.2, 0.4, 1.0), exponents=(1.0, 1.0, 1.0))
    else:
        fused = ml.fused_similarity(sims, thresholds=(1.0, 1.0, 1.0), exponents=(0.45, 0.45, 0.45))
    concat = ml.concatenation_similarity(sims)
    np.testing.assert_allclose(fused, concat, atol=1e-12)
    np.testing.assert_array_equal(ranks_from_scores(fused), ranks_from_scores(concat))


def test_fusion_with_default_parameters_changes_the_ranking():
    high, low = _random_similarities(seed=3)
    t, p = ml.paper_parameters(2)
    fused = ml.fused_similarity([high, low], t, p)
    concat = ml.concatenation_similarity([high, low])
    assert not np.array_equal(ranks_from_scores(fused), ranks_from_scores(concat))
    np.testing.assert_allclose(fused, ml.mapping_function(high, 0.2, 0.45) + low)


def test_p_to_zero_is_reranking_of_the_high_layer_list_by_the_low_layer():
    # Constructed case (n_db = 8, one query). High layer: images 0..3 above t = 0.2 (short list),
    # 4..7 below. Low layer orders the short list differently from the high layer, and is 0 off
    # the list, so the fused score is 1 + S_low >= 1 > S_high on the list and S_high off it.
    high = np.array([[0.9], [0.7], [0.5], [0.3], [0.15], [0.1], [0.05], [0.01]])
    low = np.array([[0.1], [0.8], [0.3], [0.6], [0.0], [0.0], [0.0], [0.0]])
    expected = [1, 3, 2, 0, 4, 5, 6, 7]  # short list by low similarity, then the high layer's order
    rerank = ml.rerank_by_low_layer(high, low, threshold=0.2)
    assert rerank[:, 0].tolist() == expected
    for p in (1e-3, 1e-6, 0.0):
        fused = ml.fused_similarity([high, low], thresholds=(0.2, 1.0), exponents=(p, 1.0))
        assert ranks_from_scores(fused)[:, 0].tolist() == expected, p
    # the high layer alone and the direct concatenation give different lists
    assert ranks_from_scores(high)[:, 0].tolist() == list(range(8))
    concat = ml.concatenation_similarity([high, low])
    assert ranks_from_scores(concat)[:, 0].tolist() != expected
    # and the paper's p = 0.45 lies in between: not yet the full re-ranking here
    fused_paper = ml.fused_similarity([high, low], (0.2, 1.0), (0.45, 1.0))
    assert ranks_from_scores(fused_paper)[:, 0].tolist() != expected


def test_small_p_reranks_random_short_lists():
    rng = np.random.default_rng(7)
    t = 0.5
    high = rng.uniform(0, 1, (60, 4))
    low = np.where(high > t, rng.uniform(0, 1, high.shape), 0.0)  # low layer silent off the list
    fused = ml.fused_similarity([high, low], (t, 1.0), (1e-6, 1.0))
    np.testing.assert_array_equal(ranks_from_scores(fused), ml.rerank_by_low_layer(high, low, t))


def test_fused_similarity_validates_input():
    high, low = _random_similarities()
    with pytest.raises(ValueError, match="non-decreasing"):
        ml.fused_similarity([high, low], (1.0, 0.2), (0.45, 1.0))
    ml.fused_similarity([high, low], (1.0, 0.2), (0.45, 1.0), check_order=False)
    with pytest.raises(ValueError, match="one threshold"):
        ml.fused_similarity([high, low], (0.2,), (0.45, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        ml.fused_similarity([high, low[:3]], (0.2, 1.0), (0.45, 1.0))
    with pytest.raises(ValueError, match="empty"):
        ml.concatenation_similarity([])


def test_paper_parameters():
    assert ml.paper_parameters(1) == ((1.0,), (1.0,))
    assert ml.paper_parameters(2) == ((0.2, 1.0), (0.45, 1.0))
    assert ml.paper_parameters(3)[0] == (0.2, 0.4, 1.0)
    with pytest.raises(ValueError, match="1 to 3"):
        ml.paper_parameters(4)


# ------------------------------------------------------------------------------ BoW

def _toy_maps(n_images, seed):
    """Maps whose local features come from 3 well separated prototypes in C = 6 dimensions."""
    rng = np.random.default_rng(seed)
    protos = np.eye(6)[:3] * 5.0
    maps, mixes = [], []
    for _ in range(n_images):
        mix = rng.dirichlet(np.ones(3))
        labels = rng.choice(3, size=16, p=mix)
        local = protos[labels] + 0.05 * rng.standard_normal((16, 6))
        maps.append(local.T.reshape(6, 4, 4).astype(np.float32))
        mixes.append(np.bincount(labels, minlength=3))
    return maps, np.array(mixes)


def test_bow_vocabulary_recovers_prototypes_and_counts():
    train_maps, _ = _toy_maps(30, seed=0)
    vocab = ml.learn_layer_vocabulary(train_maps, n_words=3, n_per_image=16, seed=0)
    assert vocab.size == 3
    test_maps, true_counts = _toy_maps(5, seed=1)
    counts = ml.bow_histograms(test_maps, vocab)
    assert counts.shape == (5, 3)
    np.testing.assert_array_equal(counts.sum(axis=1), 16)
    # same counts as the true prototype labels, up to a permutation of the words
    perm = [int(np.argmax(vocab.centers @ np.eye(6)[k])) for k in range(3)]
    np.testing.assert_array_equal(counts[:, perm], true_counts)
    desc = ml.bow_encode(test_maps, vocab)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    assert np.all(desc >= 0)


def test_bow_idf_down_weights_words_present_everywhere():
    rng = np.random.default_rng(0)
    maps = []
    for i in range(20):
        local = np.zeros((8, 4), dtype=np.float32)
        local[:4, 0] = 1.0                    # word A in every image
        local[4:, 1 + (i % 3)] = 1.0          # one of three rarer words
        local += 0.01 * rng.standard_normal(local.shape).astype(np.float32)
        maps.append(local.T.reshape(4, 2, 4))
    vocab = ml.learn_layer_vocabulary(maps, n_words=4, n_per_image=8, seed=0)
    common = int(np.argmax(vocab.centers[:, 0]))
    assert vocab.idf[common] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.delete(vocab.idf, common) > 0)


def test_learn_vocabulary_errors():
    maps, _ = _toy_maps(2, seed=0)
    with pytest.raises(ValueError, match="fewer than n_words"):
        ml.learn_layer_vocabulary(maps, n_words=100, n_per_image=16)
    with pytest.raises(ValueError, match="C x H x W"):
        ml.sample_local_features([np.zeros((3, 4))])


# ---------------------------------------------------------------- layer tables on backbones

def _wired_backbone(name, model, wiring):
    import torch

    from helpers import backbones as B

    layers, last_conv, taps = wiring(model.eval())
    return B.Backbone(name=name, model=model, device=torch.device("cpu"), weights_id="random",
                      mean=B.IMAGENET_MEAN, std=B.IMAGENET_STD, layers=layers, last_conv=last_conv,
                      tap_modules=taps)


def test_paper_layers_table_follows_the_stage_rule_on_efficientnet_lite0(backbone):
    bb = backbone
    conv3, conv4, conv5 = ml.stage_first_taps(bb, 3)
    table = ml.PAPER_LAYERS["efficientnet_lite0"]
    assert (table["conv3_1"], table["conv4_1"], table["conv5_1"]) == (conv3, conv4, conv5)
    assert [bb.stride(t) for t in (conv3, conv4, conv5)] == [8, 16, 32]
    assert table["fc1"] is None and table["fc2"] == "fc"
    assert ml.paper_layer_map(bb) == {"fc2": "fc", "conv5_1": "block5", "conv4_1": "block3",
                                      "conv3_1": "block2"}
    with pytest.raises(ValueError, match="one fully-connected layer"):
        ml.MultiLayerFusion(bb, 64, layers=("fc1", "conv5_1"))


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_paper_layers_table_follows_the_stage_rule_on_torchvision_backbones(name):
    import torchvision

    from helpers import backbones as B

    wiring = {"mobilenet_v2": B._mobilenet_v2, "resnet50": B._resnet}[name]
    bb = _wired_backbone(name, getattr(torchvision.models, name)(weights=None), wiring)
    conv3, conv4, conv5 = ml.stage_first_taps(bb, 3)
    table = ml.PAPER_LAYERS[name]
    assert (table["conv3_1"], table["conv4_1"], table["conv5_1"]) == (conv3, conv4, conv5)
    assert [bb.stride(t) for t in (conv3, conv4, conv5)] == [8, 16, 32]
    assert set(ml.paper_layer_map(bb)) == {"fc2", "conv5_1", "conv4_1", "conv3_1"}


# ------------------------------------------------------- the method, on a tiny net and dataset

def _tiny_backbone():
    import torch
    from torch import nn

    from helpers import backbones as B

    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 12, 3, 2, 1),
             nn.Conv2d(12, 16, 3, 2, 1)]
    relus = [nn.ReLU() for _ in convs]
    body = [m for pair in zip(convs, relus) for m in pair]
    head = nn.Linear(16, 5)
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    names = ["c1", "c2", "c3", "c4"]
    taps = {n: (r, "output") for n, r in zip(names, relus)}
    taps["fc"] = (head, "input")
    taps["logits"] = (head, "output")
    return B.Backbone(name="tinynet", model=model, device=torch.device("cpu"), weights_id="seed0",
                      mean=B.IMAGENET_MEAN, std=B.IMAGENET_STD, layers=names, last_conv="c4",
                      tap_modules=taps)


def _tiny_dataset(folder, name, seed):
    """3 instances (colour + stripe pattern) x 3 database images + 1 query each, 64 x 64 PNGs."""
    from PIL import Image

    from helpers.data import RetrievalDataset

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    imlist, qimlist, gnd = [], [], []
    for k in range(3):
        base = np.zeros((64, 64, 3))
        base[..., k] = 200
        base[:, (8 * (k + 1)) % 64::16, (k + 1) % 3] = 255
        for j in range(4):
            img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            fname = f"{name}_{k}_{j}.png"
            Image.fromarray(img).save(folder / fname)
            (qimlist if j == 3 else imlist).append(fname)
        gnd.append({"easy": [3 * k, 3 * k + 1], "hard": [3 * k + 2], "junk": [], "bbx": None})
    return RetrievalDataset(name=name, root=folder, imlist=imlist, qimlist=qimlist, gnd=gnd,
                            protocol="revisited")


@pytest.fixture()
def tiny(tmp_path, isolated_cache):
    return (_tiny_backbone(), _tiny_dataset(tmp_path / "img", "tiny", 0),
            _tiny_dataset(tmp_path / "img_train", "tinytrain", 1))


def test_method_scores_are_eq2_of_per_layer_cosines(tiny):
    from helpers.features import extract_maps
    from helpers.methods import make_method
    from helpers.pooling import l2n, rmac

    bb, ds, _ = tiny
    method = make_method("multilayer", bb, 64)
    assert method.roles == ("fc2", "conv5_1") and method.taps == ("fc", "c4")
    assert method.thresholds == (0.2, 1.0) and method.exponents == (0.45, 1.0)
    scores = method.search(ds)
    assert scores.shape == (ds.n_db, ds.n_queries)

    def vectors(split, tap):
        maps = extract_maps(ds, bb, [tap], 64, split)[tap]
        if tap == "fc":
            return np.stack([m.numpy() for m in maps])
        return np.stack([l2n(rmac(m)).numpy() for m in maps])

    s_fc = l2n_np(vectors("db", "fc")) @ l2n_np(vectors("query", "fc")).T
    s_c4 = l2n_np(vectors("db", "c4")) @ l2n_np(vectors("query", "c4")).T
    expected = ml.mapping_function(s_fc, 0.2, 0.45) + s_c4
    np.testing.assert_allclose(scores, expected, atol=2e-3)  # cached maps are float16
    sims = method.similarities(ds)
    np.testing.assert_allclose(sims["fc2"], s_fc, atol=2e-3)

    concat = make_method("multilayer", bb, 64, fusion="concat").search(ds)
    t_one = make_method("multilayer", bb, 64, t=1.0).search(ds)
    np.testing.assert_allclose(concat, t_one, atol=1e-12)
    np.testing.assert_allclose(concat, s_fc + s_c4, atol=2e-3)


def test_method_options_and_errors(tiny):
    from helpers.methods import make_method

    bb, _, _ = tiny
    m = make_method("multilayer", bb, 64, layers="fc2,conv5_1,conv3_1")
    assert m.taps == ("fc", "c4", "c2") and m.thresholds == (0.2, 0.4, 1.0)
    m = make_method("multilayer", bb, 64, layers=["logits", "c3"], t=0.3, p=0.6)
    assert m.thresholds == (0.3, 1.0) and m.exponents == (0.6, 1.0)
    with pytest.raises(ValueError, match="highest to the lowest"):
        make_method("multilayer", bb, 64, layers=("conv5_1", "fc2"))
    with pytest.raises(ValueError, match="unknown layer"):
        make_method("multilayer", bb, 64, layers=("fc2", "conv9"))
    with pytest.raises(ValueError, match="distinct"):
        make_method("multilayer", bb, 64, layers=("fc2", "fc2"))
    with pytest.raises(ValueError, match="non-decreasing"):
        make_method("multilayer", bb, 64, thresholds=(0.5, 0.2))
    with pytest.raises(ValueError, match="one threshold"):
        make_method("multilayer", bb, 64, thresholds=(0.2, 0.4, 1.0))
    with pytest.raises(ValueError, match="fusion"):
        make_method("multilayer", bb, 64, fusion="sum")
    with pytest.raises(ValueError, match="pooling"):
        make_method("multilayer", bb, 64, pooling="median")
    with pytest.raises(ValueError, match="unknown options"):
        make_method("multilayer", bb, 64, whiten=True)


def test_bow_encoding_learns_on_training_set(tiny):
    from helpers.methods import make_method

    bb, ds, train = tiny
    m = make_method("multilayer", bb, 64, layers=("fc2", "conv4_1"), conv_encoding="bow",
                    n_words=8, n_per_image=16)
    assert m.needs_training
    with pytest.raises(RuntimeError, match="fit"):
        m.search(ds)
    m.fit(train)
    vocab = m.vocabularies["c3"]
    assert vocab.size == 8 and vocab.centers.shape == (8, bb.channels("c3"))
    desc = m.describe(ds, "db")
    assert desc["c3"].shape == (ds.n_db, 8)
    assert np.all(desc["c3"] >= 0)
    np.testing.assert_allclose(np.linalg.norm(desc["c3"], axis=1), 1.0, rtol=1e-5)
    assert m.search(ds).shape == (ds.n_db, ds.n_queries)
    # the vocabulary depends on the training set only: refitting on the same set gives the same words
    m2 = make_method("multilayer", bb, 64, layers=("fc2", "conv4_1"), conv_encoding="bow",
                     n_words=8, n_per_image=16).fit(train)
    np.testing.assert_array_equal(m2.vocabularies["c3"].centers, vocab.centers)
    # pooled encoding needs no training
    assert not make_method("multilayer", bb, 64).needs_training


def test_prefetch_gives_the_same_features_as_one_pass_per_tap(tiny, tmp_path, monkeypatch):
    from helpers.methods import make_method

    bb, ds, _ = tiny
    layers = ("fc2", "conv5_1", "conv4_1", "conv3_1")
    m = make_method("multilayer", bb, 64, layers=layers, thresholds=(0.2, 0.4, 0.6, 1.0),
                    exponents=(0.45, 0.45, 0.45, 1.0))
    with_prefetch = m.describe(ds, "db")
    monkeypatch.setenv("INSTRET_CACHE", str(tmp_path / "cache_without_prefetch"))
    monkeypatch.setattr("helpers.features.prefetch", lambda *a, **k: None)
    without = m.describe(ds, "db")
    for tap in m.taps:
        np.testing.assert_allclose(with_prefetch[tap], without[tap], atol=1e-6)


def test_fusion_grid_corner_is_direct_concatenation(tiny):
    bb, ds, _ = tiny
    sims = ml.MultiLayerFusion(bb, 64, layers=("fc2", "conv3_1")).similarities(ds)
    grid = ml.fusion_grid(ds, sims["fc2"], sims["conv3_1"], [0.2, 1.0], [0.45, 1.0])
    assert set(grid) == {"mAP_E", "mAP_M", "mAP_H"} and grid["mAP_E"].shape == (2, 2)
    concat_results = evaluate_scores(ds, sims["fc2"] + sims["conv3_1"])
    concat = {name: concat_results[name] for name in ("mAP_E", "mAP_M", "mAP_H")}
    for name, value in concat.items():
        assert np.isfinite(value)
        assert grid[name][1, 0] == pytest.approx(value) and grid[name][0, 1] == pytest.approx(value)


def test_per_query_aps_of_grid_and_combinations_match_the_tables(tiny):
    bb, ds, _ = tiny
    sims = ml.MultiLayerFusion(bb, 64, layers=("fc2", "conv5_1", "conv3_1"), thresholds=(1, 1, 1),
                               exponents=(1, 1, 1)).similarities(ds)
    grid = ml.fusion_grid(ds, sims["fc2"], sims["conv3_1"], [0.2, 1.0], [0.45, 1.0])
    aps = ml.fusion_grid_aps(ds, sims["fc2"], sims["conv3_1"], [0.2, 1.0], [0.45, 1.0])
    assert aps.shape == (2, 2, ds.n_queries)
    np.testing.assert_allclose(np.nanmean(aps, axis=2), grid["mAP_M"])
    concat = per_query_ap(evaluate_scores(ds, sims["fc2"] + sims["conv3_1"]))
    np.testing.assert_allclose(aps[1, 0], concat) and np.testing.assert_allclose(aps[0, 1], concat)
    combos = ml.combination_aps(ds, sims, [("fc2", "conv3_1"), ("fc2", "conv5_1", "conv3_1")])
    rows = ml.combination_rows(ds, sims, [("fc2", "conv3_1"), ("fc2", "conv5_1", "conv3_1")])
    assert list(combos) == [r["layers"] for r in rows]
    for row in rows:
        for kind in ("concat", "fused"):
            assert np.nanmean(combos[row["layers"]][kind]) == pytest.approx(row[f"{kind} mAP_M"])
    np.testing.assert_allclose(combos["fc2+conv3_1"]["fused"], aps[0, 0])


def test_tables_helpers(tiny):
    bb, ds, _ = tiny
    roles = ("fc2", "conv5_1", "conv4_1", "conv3_1")
    assert ml.two_layer_combinations(roles) == [("fc2", "conv5_1"), ("fc2", "conv4_1"), ("fc2", "conv3_1")]
    assert ml.two_layer_combinations(("fc1",) + roles)[:3] == [("fc1", "conv5_1"), ("fc1", "conv4_1"),
                                                              ("fc1", "conv3_1")]
    assert ml.three_layer_combinations("fc2", roles) == [("fc2", "conv5_1", "conv4_1"),
                                                         ("fc2", "conv5_1", "conv3_1"),
                                                         ("fc2", "conv4_1", "conv3_1")]
    assert ml.conv_pairs(roles) == [("conv5_1", "conv4_1"), ("conv5_1", "conv3_1"), ("conv4_1", "conv3_1")]
    sims = ml.MultiLayerFusion(bb, 64, layers=roles, thresholds=(1, 1, 1, 1),
                               exponents=(1, 1, 1, 1)).similarities(ds)
    rows = ml.combination_rows(ds, sims, [("fc2", "conv4_1"), ("fc2", "conv5_1", "conv3_1")])
    assert [r["layers"] for r in rows] == ["fc2+conv4_1", "fc2+conv5_1+conv3_1"]
    fused3 = ml.fused_similarity([sims["fc2"], sims["conv5_1"], sims["conv3_1"]], (0.2, 0.4, 1.0),
                                 (0.45, 0.45, 1.0))
    assert rows[1]["fused mAP_M"] == pytest.approx(evaluate_scores(ds, fused3)["mAP_M"])
    assert rows[0]["concat mAP_E"] == pytest.approx(
        evaluate_scores(ds, sims["fc2"] + sims["conv4_1"])["mAP_E"])
    single = ml.single_layer_rows(ds, sims)
    assert [r["layer"] for r in single] == list(roles)
    q, gain = ml.most_changed_query(ds, sims["fc2"], sims["conv3_1"])
    aps = per_query_ap(evaluate_scores(ds, sims["conv3_1"])) - per_query_ap(evaluate_scores(ds, sims["fc2"]))
    assert gain == pytest.approx(aps[q]) and (gain == aps.max() or aps.max() <= 0)


def test_layer_similarities_are_cosines_of_the_described_vectors(tiny):
    from helpers.methods import make_method

    bb, _, _ = tiny
    method = make_method("multilayer", bb, 64)
    rng = np.random.default_rng(2)
    db = {tap: l2n_np(rng.random((9, 5))) for tap in method.taps}
    q = {tap: l2n_np(rng.random((2, 5))) for tap in method.taps}
    for s in method.layer_similarities(q, db):
        assert s.shape == (9, 2) and s.dtype == np.float64
        assert np.all(s >= 0) and np.all(s <= 1 + 1e-12)  # non-negative features: [0, 1] (Sec. 3)
    for s in method.layer_similarities(q, q):
        np.testing.assert_allclose(s.diagonal(), 1.0, rtol=1e-5)  # l2n_np adds 1e-6 to the norm
    with pytest.raises(ValueError, match="mismatch"):
        method.layer_similarities({tap: v[:, :3] for tap, v in q.items()}, db)


def test_paper_layer_roles_are_paper_names_mapped_by_the_layer_table(backbone):
    assert ml.paper_layer_roles("vgg16") == ("fc1", "conv5_1")
    assert ml.paper_layer_roles("alexnet") == ("fc2", "conv4_1")
    assert ml.paper_layer_roles(backbone.name) == ml.ONE_FC_LAYER_PAIR
    assert set(ml.paper_layer_roles(backbone.name)) <= set(ml.paper_layer_map(backbone))
    assert not hasattr(ml, "default_layers")  # actnet.default_layers means taps, not paper roles


def test_every_option_is_declared_with_its_kind():
    import typing

    from helpers.options import option_specs
    from helpers.pooling import POOLINGS

    specs = option_specs(ml.MultiLayerFusion)
    assert list(specs) == ["layers", "thresholds", "exponents", "t", "p", "fusion", "conv_encoding", "pooling",
                           "n_words", "n_per_image", "seed"]
    assert specs["fusion"].choices == ("mapping", "concat") and specs["conv_encoding"].choices == ("pooled", "bow")
    assert set(specs["pooling"].choices) == set(POOLINGS) == set(typing.get_args(ml.PoolingName))
    assert specs["t"].kind == "float" and specs["t"].optional and specs["n_words"].kind == "int"


def test_options_from_text_reach_the_method(tiny):
    from helpers.methods import make_method
    from helpers.options import OptionError

    bb, _, _ = tiny
    m = make_method("multilayer", bb, 64, layers="fc2,conv4_1", t="0.3", n_words="16", pooling="gem")
    assert m.taps == ("fc", "c3") and m.thresholds == (0.3, 1.0) and m.n_words == 16 and m.pooling == "gem"
    with pytest.raises(OptionError, match="n_words.*>= 2"):
        make_method("multilayer", bb, 64, n_words=1)
    with pytest.raises(OptionError, match="conv_encoding.*pooled, bow"):
        make_method("multilayer", bb, 64, conv_encoding="vlad")


def test_layer_bow_is_helpers_bow_on_the_map_cells():
    from helpers import bow

    train_maps, _ = _toy_maps(30, seed=0)
    vocab = ml.learn_layer_vocabulary(train_maps, n_words=3, n_per_image=16, seed=0)
    local = ml.sample_local_features(train_maps, n_per_image=16, seed=0)
    np.testing.assert_array_equal(vocab.centers, bow.learn_vocabulary(local, 3, seed=0))
    test_maps, _ = _toy_maps(4, seed=1)
    words = [vocab.words(m) for m in test_maps]
    counts = bow.word_counts(words, 3)
    np.testing.assert_array_equal(ml.bow_histograms(test_maps, vocab), counts.toarray())
    np.testing.assert_allclose(ml.bow_encode(test_maps, vocab), bow.tfidf(counts, vocab.idf).toarray(), rtol=1e-6)
    # the idf is the training maps' own, and a word no training map holds keeps the rarest weight
    np.testing.assert_allclose(vocab.idf, bow.idf_weights(bow.word_counts([vocab.words(m) for m in train_maps], 3),
                                                          unseen="rarest"))

"""Tests for helpers.evaluate, derived from the definitions (hand-computed values, a naive reference)."""
from types import SimpleNamespace

import numpy as np
import pytest

from helpers.evaluate import (
    compute_ap,
    compute_map,
    evaluate_classic,
    evaluate_holidays,
    evaluate_revisited,
    evaluate_scores,
    evaluate_ukbench,
    format_result,
    ranks_from_scores,
    revisited_gnd,
    ukbench_score,
)


def _column(*db_indices):
    """A single-query ranking n_db x 1."""
    return np.array(db_indices, dtype=np.int64)[:, None]


# ------------------------------------------------------------------------------- compute_ap

def test_ap_by_hand_positives_at_0_and_2():
    # positive 0 at rank 0: p0 = 1, p1 = 1/1      -> (1 + 1) / 2 / 2       = 1/2
    # positive 1 at rank 2: p0 = 1/2, p1 = 2/3    -> (1/2 + 2/3) / 2 / 2   = 7/24
    assert compute_ap([0, 2], 2) == pytest.approx(19 / 24)


def test_ap_perfect_and_missing_positives():
    assert compute_ap([0, 1, 2], 3) == pytest.approx(1.0)
    # only the first of two positives retrieved: the second contributes nothing
    assert compute_ap([0], 2) == pytest.approx(0.5)
    assert compute_ap([], 3) == 0.0
    # a single positive at rank 3: (p0 = 0/3 + p1 = 1/4) / 2
    assert compute_ap([3], 1) == pytest.approx(1 / 8)


@pytest.mark.parametrize("ranks, nres", [([2, 1], 2), ([0, 0], 2), ([-1], 1), ([0, 1], 1), ([0], 0)])
def test_ap_rejects_bad_input(ranks, nres):
    with pytest.raises(ValueError):
        compute_ap(ranks, nres)


# ------------------------------------------------------------------------------ compute_map

def test_junk_ranked_first_does_not_change_ap():
    gnd = [{"ok": [1, 3], "junk": [7]}]
    without_junk = compute_map(_column(1, 0, 3, 2, 4, 5, 6, 7), gnd)[0]
    junk_first = compute_map(_column(7, 1, 0, 3, 2, 4, 5, 6), gnd)[0]
    junk_between = compute_map(_column(1, 7, 0, 3, 2, 4, 5, 6), gnd)[0]
    assert without_junk == pytest.approx(19 / 24)
    assert junk_first == pytest.approx(19 / 24)
    assert junk_between == pytest.approx(19 / 24)
    # the same image counted as a negative lowers the AP
    assert compute_map(_column(7, 1, 0, 3, 2, 4, 5, 6), [{"ok": [1, 3], "junk": []}])[0] < 19 / 24


def test_query_without_positives_is_nan_and_excluded():
    ranks = np.stack([np.arange(6), np.arange(6)[::-1]], axis=1)
    gnd = [{"ok": [0, 1], "junk": []}, {"ok": [], "junk": [3]}]
    mean_ap, aps, pr, prs = compute_map(ranks, gnd, kappas=[1, 5])
    assert aps[0] == pytest.approx(1.0) and np.isnan(aps[1])
    assert mean_ap == pytest.approx(1.0)  # the mean is over 1 query, not 2
    assert np.isnan(prs[1]).all()
    np.testing.assert_allclose(pr, [1.0, 1.0])


def test_all_queries_without_positives_gives_nan():
    mean_ap, aps, pr, _ = compute_map(np.arange(4)[:, None], [{"ok": []}], kappas=[1])
    assert np.isnan(mean_ap) and np.isnan(aps).all() and np.isnan(pr).all()


def test_precision_at_k_revisitop_definition():
    # after junk removal the positives are at 1-based positions 1, 3, 4
    ranks = _column(10, 99, 11, 12, 13, 14, 15, 16, 17, 18)
    gnd = [{"ok": [10, 12, 13], "junk": [99]}]
    _, _, pr, prs = compute_map(ranks, gnd, kappas=[1, 2, 3, 10])
    # k'=min(4, k): P@1 = 1/1; P@2 = 1/2; P@3 = 2/3; P@10: k' = 4 -> 3/4 (not 3/10)
    np.testing.assert_allclose(prs[0], [1.0, 0.5, 2 / 3, 0.75])
    np.testing.assert_allclose(pr, prs[0])


def test_overlapping_ok_and_junk_is_rejected():
    with pytest.raises(ValueError, match="both positive and junk"):
        compute_map(_column(0, 1, 2), [{"ok": [1], "junk": [1, 2]}])


def test_ranks_shape_is_checked():
    with pytest.raises(ValueError, match="transposed"):
        compute_map(np.zeros((1, 5), dtype=int), [{"ok": [0]}])
    with pytest.raises(TypeError):
        compute_map(np.zeros((5, 1)), [{"ok": [0]}])


def _reference_map(ranks, gnd, kappas):
    """The definitions written out naively: drop junk from each ranked list, then walk it."""
    aps, prs = [], []
    for q, entry in enumerate(gnd):
        ok, junk = set(entry["ok"]), set(entry["junk"])
        if not ok:
            continue
        kept = [int(d) for d in ranks[:, q] if int(d) not in junk]
        hits = [r for r, d in enumerate(kept) if d in ok]  # 0-based positions of positives
        ap = 0.0
        for j, r in enumerate(hits):
            precision_before = 1.0 if r == 0 else j / r
            precision_at = (j + 1) / (r + 1)
            ap += (precision_before + precision_at) / 2 / len(ok)
        aps.append(ap)
        last = hits[-1] + 1
        prs.append([sum(1 for r in hits if r + 1 <= min(last, k)) / min(last, k) for k in kappas])
    return np.mean(aps), np.mean(prs, axis=0)


def test_matches_naive_reference_on_random_data():
    rng = np.random.default_rng(0)
    n_db, n_q, kappas = 60, 25, [1, 5, 10]
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
    gnd = []
    for _ in range(n_q):
        chosen = rng.permutation(n_db)
        n_ok, n_junk = rng.integers(0, 8), rng.integers(0, 6)
        gnd.append({"ok": chosen[:n_ok].tolist(), "junk": chosen[n_ok:n_ok + n_junk].tolist()})
    gnd[0]["ok"] = [int(ranks[0, 0])]  # make sure at least one query is non-empty
    mean_ap, aps, pr, _ = compute_map(ranks, gnd, kappas)
    ref_map, ref_pr = _reference_map(ranks, gnd, kappas)
    assert mean_ap == pytest.approx(ref_map, abs=1e-12)
    np.testing.assert_allclose(pr, ref_pr, atol=1e-12)
    assert np.isnan(aps).sum() == sum(1 for g in gnd if not g["ok"])


def test_truncated_ranking_counts_missing_positives_as_not_found():
    gnd = [{"ok": [0, 5], "junk": []}]
    assert compute_map(_column(0, 1, 2), gnd)[0] == pytest.approx(0.5)


# ------------------------------------------------------------------------------ protocols

GND_EHJ = [{"easy": [0, 1], "hard": [2], "junk": [3], "bbx": None},
           {"easy": [], "hard": [4], "junk": [], "bbx": [0, 0, 10, 10]}]


def test_revisited_gnd_construction():
    easy, medium, hard = (revisited_gnd(GND_EHJ, s) for s in ("easy", "medium", "hard"))
    assert easy[0]["ok"].tolist() == [0, 1] and sorted(easy[0]["junk"].tolist()) == [2, 3]
    assert medium[0]["ok"].tolist() == [0, 1, 2] and medium[0]["junk"].tolist() == [3]
    assert hard[0]["ok"].tolist() == [2] and sorted(hard[0]["junk"].tolist()) == [0, 1, 3]
    assert easy[1]["ok"].size == 0 and easy[1]["junk"].tolist() == [4]
    with pytest.raises(ValueError):
        revisited_gnd(GND_EHJ, "extreme")


def test_revisited_perfect_ranking_is_100_and_hard_is_unaffected_by_easy():
    # query 0: hard image 2 ranked after the easy ones and the junk; query 1: only a hard positive
    ranks = np.array([[0, 4], [1, 0], [3, 1], [2, 2], [4, 3], [5, 5]])
    results = evaluate_revisited(ranks, GND_EHJ, kappas=(1, 5))
    assert results["mAP_E"] == pytest.approx(100.0)   # query 1 has no easy positive: excluded
    assert results["mAP_M"] == pytest.approx(100.0)
    assert results["mAP_H"] == pytest.approx(100.0)   # easy and junk ranked before hard are junk
    assert np.isnan(results["AP_per_query_E"][1])
    assert results["mP@1_H"] == pytest.approx(100.0)
    # medium, query 0: positives at positions 0, 1, 3 (junk 3 removed -> 0, 1, 2): AP 1
    np.testing.assert_allclose(results["AP_per_query_M"], [100.0, 100.0])


def test_classic_and_holidays_protocols():
    gnd = [{"easy": [1], "hard": [2], "junk": [0]}]         # db image 0 is the query itself
    ranks = _column(0, 1, 3, 2)                              # query first, then 1, a negative, 2
    expected = 100 * compute_ap([0, 2], 2)                   # after dropping the query: 0 and 2
    assert evaluate_classic(ranks, gnd)["mAP"] == pytest.approx(expected)
    assert evaluate_holidays(ranks, gnd)["mAP"] == pytest.approx(expected)
    assert expected == pytest.approx(100 * 19 / 24)


def test_ukbench_ns_score_by_hand():
    # two groups {0,1,2,3} and {4,5,6,7}; queries are db images 0 and 4
    gnd = [{"easy": [1, 2, 3], "hard": [], "junk": [0]},
           {"easy": [5, 6, 7], "hard": [], "junk": [4]}]
    ranks = np.array([
        [0, 4],   # each query is its own top match (counts as 1)
        [1, 5],
        [4, 0],   # a wrong image in 3rd place for query 0; query 1 too
        [2, 1],
        [3, 6],
        [5, 7],
        [6, 2],
        [7, 3],
    ])
    # query 0: top 4 = {0, 1, 4, 2} -> 3 relevant; query 1: {4, 5, 0, 1} -> 2 relevant
    assert ukbench_score(ranks, gnd) == pytest.approx(2.5)
    perfect = np.array([[0, 4], [1, 5], [2, 6], [3, 7], [4, 0], [5, 1], [6, 2], [7, 3]])
    assert ukbench_score(perfect, gnd) == pytest.approx(4.0)
    results = evaluate_ukbench(perfect, gnd)
    assert results["NS_score"] == pytest.approx(4.0) and results["mAP"] == pytest.approx(100.0)
    # query 0 without itself: positives at 0, 2, 3 of {1, 4, 2, 3, ...}
    assert evaluate_ukbench(ranks, gnd)["AP_per_query"][0] == pytest.approx(100 * compute_ap([0, 2, 3], 3))


def test_ukbench_rejects_groups_larger_than_four():
    with pytest.raises(ValueError, match="UKBench"):
        ukbench_score(np.arange(8)[:, None], [{"easy": [1, 2, 3, 4], "junk": [0]}])


# ------------------------------------------------------------------------- scores, dispatch

def test_ranks_from_scores_descending_and_stable_on_ties():
    scores = np.array([[0.5, 1.0], [0.9, 1.0], [0.5, 2.0], [0.1, 1.0]])
    ranks = ranks_from_scores(scores)
    assert ranks[:, 0].tolist() == [1, 0, 2, 3]   # tie 0 vs 2 keeps database order
    assert ranks[:, 1].tolist() == [2, 0, 1, 3]   # three-way tie keeps database order
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(np.array([[np.nan], [1.0]]))
    with pytest.raises(ValueError):
        ranks_from_scores(np.zeros(3))


def _dataset(protocol, gnd, n_db):
    return SimpleNamespace(name="toy", protocol=protocol, gnd=gnd,
                           imlist=[f"{i}.jpg" for i in range(n_db)],
                           qimlist=[f"q{i}.jpg" for i in range(len(gnd))])


def test_evaluate_scores_dispatch_and_format():
    gnd = [{"easy": [1], "hard": [2], "junk": [0], "bbx": None}]
    scores = np.array([[0.99], [0.9], [0.1], [0.5]])  # ranking 0, 1, 3, 2
    classic = evaluate_scores(_dataset("classic", gnd, 4), scores)
    assert classic["mAP"] == pytest.approx(100 * 19 / 24)
    assert format_result(classic) == "mAP=79.17"
    revisited = evaluate_scores(_dataset("revisited", gnd, 4), scores)
    assert format_result(revisited) == "mAP_E=100.00 mAP_M=79.17 mAP_H=25.00"
    ukb = evaluate_scores(_dataset("ukbench", [{"easy": [1, 2, 3], "junk": [0]}], 4),
                          np.array([[4.0], [3.0], [2.0], [1.0]]))
    line = format_result(ukb)
    assert line == "NS=4.00 mAP=100.00" and line.split()[-1].startswith("mAP=")
    assert format_result(evaluate_scores(_dataset("holidays", gnd, 4), scores)) == "mAP=79.17"


def test_evaluate_scores_checks_shape_and_protocol():
    gnd = [{"easy": [1], "hard": [], "junk": []}] * 2
    with pytest.raises(ValueError, match="transposed"):
        evaluate_scores(_dataset("classic", gnd, 5), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="protocol"):
        evaluate_scores(_dataset("trec", gnd, 5), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        format_result({"accuracy": 1.0})

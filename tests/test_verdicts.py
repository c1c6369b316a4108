"""The paired comparison that decides every verdict of the suite."""
import numpy as np
import pytest

from helpers.evaluate import (CONTRADICTED, NOT_SEPARABLE, REPRODUCED, headline, paired_comparison, per_query_ap,
                              trend_comparison)


def test_a_clear_gain_is_better_and_reproduces_a_claim_in_its_direction():
    rng = np.random.default_rng(1)
    a = rng.uniform(20, 80, 70)
    b = a + rng.normal(5, 2, 70)
    up = paired_comparison(a, b, expected=+1)
    assert up.verdict == "better" and up.claim == REPRODUCED
    assert up.ci[0] > 0 and abs(up.diff - (b - a).mean()) < 1e-12 and up.p < 0.001 and up.n_queries == 70
    assert paired_comparison(a, b, expected=-1).claim == CONTRADICTED
    down = paired_comparison(b, a, expected=+1)
    assert down.verdict == "worse" and down.claim == CONTRADICTED and down.ci[1] < 0


def test_noise_is_not_separable_and_identical_scores_are_a_tie():
    rng = np.random.default_rng(2)
    a = rng.uniform(20, 80, 14)
    b = a + rng.normal(0, 10, 14)
    c = paired_comparison(a, b, expected=+1)
    if c.ci[0] <= 0 <= c.ci[1]:
        assert c.verdict == "tie" and c.claim == NOT_SEPARABLE
    same = paired_comparison(a, a.copy(), expected=+1)
    assert same.verdict == "tie" and same.claim == NOT_SEPARABLE and same.diff == 0 and same.p == 1.0


def test_interval_matches_a_hand_computed_bootstrap_and_is_reproducible():
    a = np.array([10.0, 20, 30, 40, 50, 60])
    b = a + np.array([1.0, 2, 3, 4, 5, 6])
    c1, c2 = paired_comparison(a, b), paired_comparison(a, b)
    assert c1 == c2
    # percentile bootstrap of the mean of (1..6): within [min, max] of the diffs, around 3.5
    assert 1 <= c1.ci[0] < 3.5 < c1.ci[1] <= 6
    # the exact sign-flip test: of 64 patterns only all-positive and all-negative reach |mean| 3.5
    assert c1.p == pytest.approx(2 / 64)


def test_queries_either_method_cannot_evaluate_are_left_out():
    a = np.array([10.0, np.nan, 30, 40])
    b = np.array([12.0, 99, np.nan, 44])
    c = paired_comparison(a, b)
    assert c.n_queries == 2 and c.diff == pytest.approx(3.0)
    with pytest.raises(ValueError, match="same queries"):
        paired_comparison(a, b[:3])


def test_printed_line_has_the_documented_form():
    a = np.linspace(10, 90, 40)
    line = paired_comparison(a, a - 3 + np.sin(np.arange(40))).line("b", "a")
    import re

    assert re.fullmatch(r"b vs a: diff=[+-]\d+\.\d\d ci=\[[+-]\d+\.\d\d,[+-]\d+\.\d\d\] p=\d\.\d{3} verdict=(better|worse|tie)",
                        line), line


def test_a_rising_trend_is_detected_and_a_flat_one_is_not():
    rng = np.random.default_rng(3)
    base = rng.uniform(20, 70, 60)
    rising = [base + 3 * k + rng.normal(0, 1, 60) for k in range(5)]
    t = trend_comparison(rising, xs=[5, 10, 15, 20, 25], expected=+1)
    assert t.claim == REPRODUCED and t.verdict == "rising" and t.diff == pytest.approx(1.0)
    assert len(t.steps) == 4 and all(s.verdict == "better" for s in t.steps)
    flat = [base + rng.normal(0, 8, 60) for _ in range(4)]
    flat_t = trend_comparison(flat, expected=+1, n_resamples=2000)
    assert flat_t.ci[0] < 0 < flat_t.ci[1] and flat_t.claim == NOT_SEPARABLE and flat_t.verdict == "no trend"


def test_headline_is_medium_on_revisited_data():
    assert headline({"mAP_E": 1.0, "mAP_M": 2.0, "mAP_H": 3.0}) == ("mAP_M", 2.0)
    assert headline({"mAP": 4.0}) == ("mAP", 4.0)
    assert per_query_ap({"AP_per_query_M": [1, 2], "AP_per_query_E": [3, 4]}).tolist() == [1, 2]
    with pytest.raises(ValueError):
        headline({"NS_score": 3})


def test_queries_of_one_instance_are_resampled_together():
    """Five queries of one instance are one piece of evidence: the cluster interval is wider, and
    the sign-flip test counts instances, not queries."""
    rng = np.random.default_rng(4)
    instance_effect = np.repeat(rng.normal(2, 4, 14), 5)        # 14 instances x 5 queries
    a = rng.uniform(30, 70, 70)
    b = a + instance_effect + rng.normal(0, 0.5, 70)
    labels = np.repeat([f"obj{k}" for k in range(14)], 5)
    plain, grouped = paired_comparison(a, b), paired_comparison(a, b, groups=labels)
    assert plain.diff == grouped.diff and grouped.n_groups == 14 and plain.n_groups == 70
    assert grouped.ci[1] - grouped.ci[0] > 1.8 * (plain.ci[1] - plain.ci[0])
    # 3 instances: 2^3 sign patterns, only the two all-same ones reach the observed |sum|
    three = paired_comparison([10, 10, 10, 20, 20, 20], [11, 12, 13, 21, 22, 23], groups=list("aabbcc"))
    assert three.p == pytest.approx(2 / 8)


def test_trend_intervals_follow_the_groups():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(10), 5)
    base = rng.uniform(20, 70, 50)
    points = [base + k * np.repeat(rng.normal(1, 3, 10), 5) for k in range(4)]
    plain, grouped = trend_comparison(points, n_resamples=3000), trend_comparison(points, groups=labels, n_resamples=3000)
    assert grouped.diff == plain.diff
    assert grouped.ci[0] <= plain.ci[0]

"""Retrieval evaluation: mean average precision and friends, with the revisitop semantics.

Protocols (chosen by ``dataset.protocol``; ground truth entries have int lists "easy", "hard", "junk"):

* ``"revisited"`` -- revisited Oxford / Paris (Radenovic et al., CVPR 2018, Sec. 4):
  Easy: positives = easy, junk = junk + hard; Medium: positives = easy + hard, junk = junk;
  Hard: positives = hard, junk = junk + easy. Reported: mAP and mP@k per setting, in percent.
* ``"classic"`` -- original Oxford 5k / Paris 6k (Philbin et al., CVPR 2007): positives = "good" +
  "ok" (stored as easy + hard by our loaders), junk = junk; reported: mAP in percent.
* ``"holidays"`` -- INRIA Holidays (Jegou et al., ECCV 2008): positives = the other images of the
  query's group (easy + hard); the query image itself is in the database and is listed in "junk",
  so it is ignored wherever it is ranked (as ``holidays_map.py`` skips it); mAP in percent.
* ``"ukbench"`` -- UKBench (Nister & Stewenius, CVPR 2006): the N-S score (see :func:`ukbench_score`)
  and mAP with positives = the other 3 images of the group, junk = the query itself.

Average precision is the area under the precision-recall curve integrated with the trapezoidal
rule, exactly as in revisitop's ``compute_ap`` (inherited from Jegou's Holidays evaluation code).
This is *not* the step-wise "non-interpolated" AP of scikit-learn.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

#: Ground-truth settings of the revisited protocol: (suffix, positive keys, junk keys).
REVISITED_SETTINGS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
SETTING_SUFFIX = {"easy": "E", "medium": "M", "hard": "H"}
DEFAULT_KAPPAS = (1, 5, 10)
PROTOCOLS = ("revisited", "classic", "holidays", "ukbench")
#: Number of top results the UKBench N-S score looks at (= the group size).
UKBENCH_GROUP_SIZE = 4


# ---------------------------------------------------------------------------------------- core


def compute_ap(ranks, nres: int) -> float:
    """Average precision from the 0-based ranks of the positives (junk already removed).

    Trapezoidal integration of the precision-recall curve: the ``j``-th positive (0-based) found at
    rank ``r`` adds a recall step ``1/nres`` times the mean of the precision just before it,
    ``j / r`` (``1`` when ``r = 0``), and just at it, ``(j + 1) / (r + 1)``::

        AP = sum_j (1 / nres) * (p0_j + p1_j) / 2

    Positives that never appear in ``ranks`` (e.g. a truncated ranking) contribute nothing, which is
    why ``nres`` (the number of positives) is passed separately.

    Args:
        ranks: strictly increasing non-negative ints, the positions of the positives.
        nres: total number of positives (> 0, at least ``len(ranks)``).
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {ranks.shape}")
    if ranks.size and not np.issubdtype(ranks.dtype, np.integer):
        raise TypeError(f"ranks must be integers, got dtype {ranks.dtype}")
    if nres <= 0:
        raise ValueError(f"nres (number of positives) must be positive, got {nres}")
    if ranks.size > nres:
        raise ValueError(f"{ranks.size} ranks given but only nres={nres} positives")
    if ranks.size == 0:
        return 0.0
    if ranks[0] < 0 or np.any(np.diff(ranks) <= 0):
        raise ValueError("ranks must be non-negative and strictly increasing")
    found_before = np.arange(ranks.size, dtype=np.float64)           # j
    ranks = ranks.astype(np.float64)
    precision_before = np.where(ranks == 0, 1.0, found_before / np.maximum(ranks, 1.0))
    precision_at = (found_before + 1.0) / (ranks + 1.0)
    return float(np.sum(precision_before + precision_at) / (2.0 * nres))


def _as_index_array(values) -> np.ndarray:
    return np.asarray(values if values is not None else [], dtype=np.int64).ravel()


def _check_ranks(ranks, n_queries: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be a 2-D array n_db x n_queries, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise TypeError(f"ranks must hold integer database indices, got dtype {ranks.dtype}")
    if ranks.shape[1] != n_queries:
        raise ValueError(f"ranks has {ranks.shape[1]} columns (queries) but the ground truth has "
                         f"{n_queries} queries; ranks must be n_db x n_queries (transposed?)")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks contains negative database indices")
    return ranks


def positive_positions(ranking, ok, junk) -> np.ndarray:
    """0-based positions of the positives in ``ranking`` once the junk images are taken out.

    Each positive's position is decreased by the number of junk images ranked before it (what
    revisitop's loop computes). ``ok`` and ``junk`` are expected to be disjoint.
    """
    ranking = np.asarray(ranking)
    positions = np.flatnonzero(np.isin(ranking, ok))
    junk_positions = np.flatnonzero(np.isin(ranking, junk))
    return positions - np.searchsorted(junk_positions, positions, side="left")


def precision_at_kappas(positions_1based: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
    """Revisitop's precision at k: ``|{p <= k'}| / k'`` with ``k' = min(max(p), k)``.

    With ``k' = min(max position, k)`` a query whose positives are all ranked above ``k`` is not
    penalised for the empty slots after its last positive: two positives at ranks 1 and 2 give
    P@10 = 2/2 = 1. (This is the definition used for the published mP@k numbers.) A query none of
    whose positives appear in the ranking (only possible with truncated rankings) gets 0.
    """
    out = np.zeros(len(kappas))
    if positions_1based.size == 0:
        return out
    last = int(positions_1based.max())
    for j, kappa in enumerate(kappas):
        k_eff = min(last, int(kappa))
        out[j] = np.count_nonzero(positions_1based <= k_eff) / k_eff
    return out


def compute_map(ranks, gnd: Sequence[Mapping], kappas: Sequence[int] = ()):
    """Mean average precision and mean precision at ``kappas`` (revisitop semantics).

    Args:
        ranks: ``n_db x n_q`` int array; column ``j`` lists database indices from most to least
            similar to query ``j`` (0-based). A truncated ranking (fewer rows) is allowed: positives
            missing from it count as not retrieved.
        gnd: per query a mapping with "ok" (positive database indices) and optionally "junk"
            (indices ignored wherever they are ranked, e.g. the query itself or hard images).
        kappas: the k's of precision at k (e.g. ``(1, 5, 10)``).

    Returns:
        ``(map, aps, pr, prs)``: mAP as a fraction; ``aps`` per-query AP (n_q,) with ``nan`` for
        queries without positives; ``pr`` mean precision at each kappa; ``prs`` (n_q, len(kappas))
        per query, rows ``nan`` for queries without positives. Queries without positives are
        excluded from both means (if every query is empty, ``map`` and ``pr`` are ``nan``).
    """
    ranks = _check_ranks(ranks, len(gnd))
    kappas = tuple(int(k) for k in kappas)
    if any(k < 1 for k in kappas):
        raise ValueError(f"kappas must be positive, got {kappas}")
    n_queries = len(gnd)
    aps = np.zeros(n_queries)
    prs = np.zeros((n_queries, len(kappas)))
    n_empty = 0
    for i, entry in enumerate(gnd):
        ok = _as_index_array(entry["ok"])
        if ok.size == 0:
            aps[i] = np.nan
            prs[i, :] = np.nan
            n_empty += 1
            continue
        junk = _as_index_array(entry.get("junk", ()))
        both = np.intersect1d(ok, junk)
        if both.size:
            raise ValueError(f"query {i}: database indices {both[:10].tolist()} are both positive "
                             "and junk; the ground truth lists must be disjoint")
        positions = positive_positions(ranks[:, i], ok, junk)
        aps[i] = compute_ap(positions, ok.size)
        prs[i, :] = precision_at_kappas(positions + 1, kappas)
    n_valid = n_queries - n_empty
    if n_valid == 0:
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    valid = ~np.isnan(aps)
    mean_ap = float(aps[valid].sum() / n_valid)
    mean_pr = prs[valid].sum(axis=0) / n_valid
    return mean_ap, aps, mean_pr, prs


def ranks_from_scores(scores) -> np.ndarray:
    """``n_db x n_q`` similarities (higher = more similar) -> ``n_db x n_q`` 0-based rankings.

    Stable sort of ``-scores`` along the database axis: ties keep database order (lower index first),
    so results are reproducible. NaN scores are rejected.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D array n_db x n_queries, got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        bad = np.unique(np.nonzero(np.isnan(scores))[1])
        raise ValueError(f"scores contain NaN (queries {bad[:10].tolist()}...): check the descriptors")
    if np.issubdtype(scores.dtype, np.unsignedinteger):
        scores = scores.astype(np.int64)
    return np.argsort(-scores, axis=0, kind="stable")


# ---------------------------------------------------------------------------------- protocols


def _indices(entry: Mapping, key: str) -> list:
    values = entry.get(key)
    return [] if values is None else list(np.asarray(values, dtype=np.int64).ravel())


def revisited_gnd(gnd: Sequence[Mapping], setting: str) -> list[dict]:
    """Ok/junk lists of one revisited setting ("easy", "medium" or "hard") from easy/hard/junk.

    easy: ok = easy, junk = junk + hard; medium: ok = easy + hard, junk = junk;
    hard: ok = hard, junk = junk + easy (Radenovic et al., CVPR 2018).
    """
    if setting not in REVISITED_SETTINGS:
        raise ValueError(f"setting must be one of {list(REVISITED_SETTINGS)}, got {setting!r}")
    ok_keys, junk_keys = REVISITED_SETTINGS[setting]
    return [
        {
            "ok": np.array([i for key in ok_keys for i in _indices(entry, key)], dtype=np.int64),
            "junk": np.array([i for key in junk_keys for i in _indices(entry, key)], dtype=np.int64),
        }
        for entry in gnd
    ]


def _positives_and_junk(gnd: Sequence[Mapping]) -> list[dict]:
    """Classic / Holidays / UKBench: ok = easy + hard, junk = junk."""
    return revisited_gnd(gnd, "medium")


def evaluate_revisited(ranks, gnd: Sequence[Mapping], kappas: Iterable[int] = DEFAULT_KAPPAS) -> dict:
    """Revisited Oxford/Paris: mAP and mP@k for Easy, Medium, Hard (percent).

    Keys: "mAP_E", "mAP_M", "mAP_H", "mP@<k>_E" ... for each k, "AP_per_query_E"/"_M"/"_H"
    (arrays, percent, nan for queries without positives in that setting), "protocol".
    """
    kappas = tuple(kappas)
    results: dict = {"protocol": "revisited"}
    for setting, suffix in SETTING_SUFFIX.items():
        mean_ap, aps, mean_pr, _ = compute_map(ranks, revisited_gnd(gnd, setting), kappas)
        results[f"mAP_{suffix}"] = 100.0 * mean_ap
        for kappa, value in zip(kappas, mean_pr):
            results[f"mP@{kappa}_{suffix}"] = 100.0 * float(value)
        results[f"AP_per_query_{suffix}"] = 100.0 * aps
    return results


def evaluate_classic(ranks, gnd: Sequence[Mapping]) -> dict:
    """Original Oxford 5k / Paris 6k: positives = good + ok (easy + hard), junk = junk. mAP in percent."""
    mean_ap, aps, _, _ = compute_map(ranks, _positives_and_junk(gnd))
    return {"protocol": "classic", "mAP": 100.0 * mean_ap, "AP_per_query": 100.0 * aps}


def evaluate_holidays(ranks, gnd: Sequence[Mapping]) -> dict:
    """INRIA Holidays: positives = easy + hard, the query itself (listed in junk) ignored. mAP in percent."""
    mean_ap, aps, _, _ = compute_map(ranks, _positives_and_junk(gnd))
    return {"protocol": "holidays", "mAP": 100.0 * mean_ap, "AP_per_query": 100.0 * aps}


def ukbench_score(ranks, gnd: Sequence[Mapping]) -> float:
    """The Nister-Stewenius score: mean number of the query's group found in the top 4 (0..4).

    UKBench has groups of 4 images of one object; every image is a query and is also in the
    database. The N-S score counts how many of the 4 images of the group -- the query itself
    included -- are among the first 4 results. In our ground-truth format a UKBench query has
    easy (+ hard) = the other 3 images of its group and junk = [the query's own database index], so
    the relevant set here is easy + hard + junk. Junk is *not* removed from the ranking: the query
    normally is its own top match and scores 1 for being there.
    """
    ranks = _check_ranks(ranks, len(gnd))
    if len(gnd) == 0:
        raise ValueError("no queries")
    top = ranks[:UKBENCH_GROUP_SIZE]
    counts = np.empty(len(gnd))
    for i, entry in enumerate(gnd):
        relevant = np.unique(np.concatenate(
            [np.asarray(_indices(entry, key), dtype=np.int64) for key in ("easy", "hard", "junk")]))
        if relevant.size > UKBENCH_GROUP_SIZE:
            raise ValueError(f"query {i}: {relevant.size} relevant images; a UKBench group has "
                             f"{UKBENCH_GROUP_SIZE} (easy + hard + junk, junk = the query itself)")
        counts[i] = np.count_nonzero(np.isin(top[:, i], relevant))
    return float(counts.mean())


def evaluate_ukbench(ranks, gnd: Sequence[Mapping]) -> dict:
    """UKBench: "NS_score" (0..4, see :func:`ukbench_score`) and "mAP" (percent; query as junk)."""
    mean_ap, aps, _, _ = compute_map(ranks, _positives_and_junk(gnd))
    return {"protocol": "ukbench", "NS_score": ukbench_score(ranks, gnd), "mAP": 100.0 * mean_ap,
            "AP_per_query": 100.0 * aps}


def evaluate_ranks(protocol: str, ranks, gnd: Sequence[Mapping],
                   kappas: Iterable[int] = DEFAULT_KAPPAS) -> dict:
    """Dispatch on the protocol name (see module docstring)."""
    if protocol == "revisited":
        return evaluate_revisited(ranks, gnd, kappas)
    if protocol == "classic":
        return evaluate_classic(ranks, gnd)
    if protocol == "holidays":
        return evaluate_holidays(ranks, gnd)
    if protocol == "ukbench":
        return evaluate_ukbench(ranks, gnd)
    raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {PROTOCOLS}")


def _without_unreadable(dataset, scores: np.ndarray, gnd: list):
    """Scores and ground truth with the dataset's unreadable images taken out: their database rows
    removed (and from every positive / junk list), their queries dropped. Returns (scores, gnd, kept
    query indices, list of {"path", "reason"})."""
    unreadable = getattr(dataset, "unreadable", None)
    kept_q = list(range(len(gnd)))
    if not unreadable:
        return scores, gnd, kept_q, []
    bad_db, bad_q = dataset.unreadable_indices()
    if not bad_db and not bad_q:
        return scores, gnd, kept_q, []
    keep_db = np.setdiff1d(np.arange(scores.shape[0]), bad_db)
    new_index = {int(old): new for new, old in enumerate(keep_db)}
    kept_q = [q for q in kept_q if q not in set(bad_q)]
    new_gnd = [{**{key: [new_index[i] for i in _indices(gnd[q], key) if int(i) in new_index]
                   for key in ("easy", "hard", "junk")}, "bbx": gnd[q].get("bbx")} for q in kept_q]
    listed = [{"path": p, "reason": r} for p, r in sorted(unreadable.items())]
    return scores[keep_db][:, kept_q], new_gnd, kept_q, listed


def evaluate_scores(dataset, scores, kappas: Iterable[int] = DEFAULT_KAPPAS) -> dict:
    """Evaluate a similarity matrix ``n_db x n_q`` (higher = more similar) on ``dataset``.

    ``dataset`` needs ``.protocol``, ``.gnd`` and, for the shape check, ``.imlist`` / ``.qimlist``
    (a :class:`helpers.data.RetrievalDataset`). Images the feature extraction could not read
    (``dataset.unreadable``) are left out of the ground truth, as database images and as queries, so
    the result equals that of the same dataset without those files; their per-query APs are NaN and
    they are listed under "unreadable". Returns the protocol's result dict, plus "dataset" (its
    name, if any), "n_queries" (queries evaluated) and "unreadable".
    """
    scores = np.asarray(scores)
    gnd = dataset.gnd
    n_queries = len(gnd)
    n_db = len(dataset.imlist) if hasattr(dataset, "imlist") else None
    if scores.ndim != 2:
        raise ValueError(f"scores must be n_db x n_queries, got shape {scores.shape}")
    expected = (n_db if n_db is not None else scores.shape[0], n_queries)
    if scores.shape != expected:
        hint = " (transposed? expected database along axis 0)" if scores.shape == expected[::-1] else ""
        raise ValueError(f"scores shape {scores.shape} does not match dataset "
                         f"{getattr(dataset, 'name', '')!r}: expected {expected}{hint}")
    scores, gnd, kept_q, unreadable = _without_unreadable(dataset, scores, list(gnd))
    if not kept_q:
        raise ValueError(f"no query of {getattr(dataset, 'name', '')!r} could be read: nothing to evaluate")
    results = evaluate_ranks(dataset.protocol, ranks_from_scores(scores), gnd, kappas)
    if len(kept_q) < n_queries:  # per-query APs stay aligned with the dataset's queries
        for key, value in list(results.items()):
            if key.startswith("AP_per_query"):
                full = np.full(n_queries, np.nan)
                full[kept_q] = value
                results[key] = full
    results["dataset"] = getattr(dataset, "name", None)
    results["query_labels"] = getattr(dataset, "query_labels", None)  # instances, for paired comparisons
    results["n_queries"] = len(kept_q)
    results["unreadable"] = unreadable
    return results


def format_result(results: Mapping) -> str:
    """One line: "mAP_E=65.12 mAP_M=50.01 mAP_H=30.00" (revisited), "NS=3.12 mAP=80.00" (UKBench),
    "mAP=80.00" (classic, Holidays). Values in percent with two decimals (N-S score 0..4)."""
    if all(f"mAP_{s}" in results for s in "EMH"):
        return " ".join(f"mAP_{s}={results[f'mAP_{s}']:.2f}" for s in "EMH")
    if "mAP" not in results:
        raise ValueError(f"not an evaluation result (no mAP): keys {sorted(results)}")
    parts = []
    if "NS_score" in results:
        parts.append(f"NS={results['NS_score']:.2f}")
    parts.append(f"mAP={results['mAP']:.2f}")
    return " ".join(parts)


# ------------------------------------------------------------------------ headlines and verdicts

#: How many times the queries are resampled for a bootstrap interval, and the seed that makes every
#: interval of the suite reproducible.
N_RESAMPLES = 10_000
SEED = 0
#: The three verdicts on a paper's claim.
REPRODUCED, CONTRADICTED, NOT_SEPARABLE = "reproduced", "contradicted", "not separable on this data"


def headline(results: Mapping) -> tuple[str, float]:
    """The one number a result is ranked by: ``("mAP_M", value)`` on the revisited protocol (the
    medium setting, as the revisitop papers rank), ``("mAP", value)`` otherwise."""
    key = "mAP_M" if "mAP_M" in results else "mAP"
    if key not in results:
        raise ValueError(f"not an evaluation result (no mAP): keys {sorted(results)}")
    return key, float(results[key])


def per_query_ap(results: Mapping, setting: str = "M") -> np.ndarray:
    """Per-query APs (percent, NaN where a query has no positive) behind :func:`headline`, or behind
    the given revisited setting ``"E"``, ``"M"`` or ``"H"``."""
    key = f"AP_per_query_{setting}" if f"AP_per_query_{setting}" in results else "AP_per_query"
    if key not in results:
        raise ValueError(f"the result holds no per-query APs (keys {sorted(results)})")
    return np.asarray(results[key], dtype=np.float64)


def _paired_rows(*aps, groups=None):
    """Rows of per-query values (one row per method or point) over the queries every row evaluates,
    and the group of each kept query (instance labels, or one group per query)."""
    if len({len(np.ravel(a)) for a in aps}) != 1:
        raise ValueError(f"per-query APs must cover the same queries, got lengths {[len(np.ravel(a)) for a in aps]}")
    rows = np.vstack([np.asarray(a, dtype=np.float64).ravel() for a in aps])
    if groups is None:
        groups = np.arange(rows.shape[1])
    groups = np.asarray(groups)
    if groups.shape != (rows.shape[1],):
        raise ValueError(f"groups must give one label per query ({rows.shape[1]}), got shape {groups.shape}")
    keep = np.isfinite(rows).all(axis=0)   # queries every method could evaluate
    rows, groups = rows[:, keep], groups[keep]
    if rows.shape[1] < 2:
        raise ValueError("a paired comparison needs at least 2 queries that every method evaluates")
    _, group_index = np.unique(groups, return_inverse=True)
    return rows, group_index


def _group_sums(values: np.ndarray, group_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of ``values`` (last axis = queries) and the group sizes."""
    n_groups = int(group_index.max()) + 1
    sums = np.zeros(values.shape[:-1] + (n_groups,))
    np.add.at(sums, (..., group_index), values)
    return sums, np.bincount(group_index, minlength=n_groups).astype(np.float64)


def _bootstrap_means(values: np.ndarray, group_index: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means over queries of ``n_resamples`` bootstrap resamples (last axis = queries): the groups are
    resampled with replacement and bring all their queries (a cluster bootstrap; one group per query
    is the ordinary bootstrap)."""
    sums, sizes = _group_sums(values, group_index)
    picks = np.random.default_rng(seed).integers(0, len(sizes), size=(n_resamples, len(sizes)))
    return sums[..., picks].sum(axis=-1) / sizes[picks].sum(axis=-1)


def mean_interval(ap, groups=None, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                  confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-query values (e.g. :func:`per_query_ap`) and its bootstrap interval, ``(mean, low,
    high)``: the same cluster bootstrap as :func:`paired_comparison` (queries of one instance,
    ``groups``, resampled together), so a method's mAP and its paired differences share one machinery.
    Queries with NaN are left out."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    (values,), group_index = _paired_rows(ap, groups=groups)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(_bootstrap_means(values, group_index, int(n_resamples), seed), [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def _sign_flip_p(diffs: np.ndarray, group_index: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided p-value of the paired permutation (sign-flip) test of a zero mean difference, the
    signs flipped per group: exact over all 2^g sign patterns for g <= 16 groups, else from
    ``n_resamples`` random ones."""
    sums, _ = _group_sums(diffs, group_index)
    observed = abs(sums.sum())
    n = len(sums)
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ sums) >= observed - 1e-9))
    signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=(n_resamples, n))
    hits = np.count_nonzero(np.abs(signs @ sums) >= observed - 1e-9)
    return float((hits + 1) / (n_resamples + 1))


class PairedComparison(dict):
    """The result of :func:`paired_comparison`, a dict with attribute access: ``diff`` (mean of
    b - a over queries, AP points), ``ci`` (95% bootstrap interval of it), ``p`` (sign-flip test),
    ``n_queries``, ``verdict`` (``"better"``, ``"worse"`` or ``"tie"`` for b against a) and, where a
    claim's direction was given, ``claim`` (:data:`REPRODUCED`, :data:`CONTRADICTED` or
    :data:`NOT_SEPARABLE`)."""

    __getattr__ = dict.__getitem__

    def line(self, name_b: str = "b", name_a: str = "a") -> str:
        """``b vs a: diff=-3.21 ci=[-6.10,-0.40] p=0.031 verdict=worse``"""
        return (f"{name_b} vs {name_a}: diff={self['diff']:+.2f} ci=[{self['ci'][0]:+.2f},{self['ci'][1]:+.2f}] "
                f"p={self['p']:.3f} verdict={self['verdict']}")

    def claim_line(self, claim: str) -> str:
        """``<claim>: reproduced (diff=+2.10, 95% CI [+0.40, +3.90], p=0.012, 70 queries, 14 instances)``
        (``rho=`` for a trend). The README's table of verdicts is collected from these lines
        (``scripts/claims_table.py``), so every chapter prints its claims this way."""
        if self.get("claim") is None:
            raise ValueError("this comparison was made without a claimed direction (expected=+1 or -1)")
        stat = "rho" if "steps" in self else "diff"
        groups = f", {self['n_groups']} instances" if self["n_groups"] < self["n_queries"] else ""
        return (f"{claim}: {self['claim']} ({stat}={self['diff']:+.2f}, 95% CI [{self['ci'][0]:+.2f}, "
                f"{self['ci'][1]:+.2f}], p={self['p']:.3f}, {self['n_queries']} queries{groups})")


def _decide(low: float, high: float, expected: int | None) -> tuple[str, str | None]:
    verdict = "better" if low > 0 else "worse" if high < 0 else "tie"
    if expected is None:
        return verdict, None
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 (b above a), -1 (b below a) or None, got {expected!r}")
    if low > 0 or high < 0:
        return verdict, REPRODUCED if (low > 0) == (expected > 0) else CONTRADICTED
    return verdict, NOT_SEPARABLE


def paired_comparison(ap_a, ap_b, expected: int | None = None, groups=None, n_resamples: int = N_RESAMPLES,
                      seed: int = SEED, confidence: float = 0.95) -> PairedComparison:
    """Compare method b with method a on the same queries (per-query APs, e.g. :func:`per_query_ap`).

    The mean difference b - a, its paired bootstrap interval (``n_resamples`` resamples with a fixed
    ``seed``, percentile interval at ``confidence``) and the two-sided p-value of a paired sign-flip
    test. ``groups`` (e.g. ``dataset.query_labels``) names the instance of each query: queries of one
    instance are not independent evidence, so the groups are resampled and sign-flipped whole (a
    cluster bootstrap); None treats every query as its own group. Queries that either method could
    not evaluate (NaN) are left out of both. ``verdict`` is "better" / "worse" when the interval
    excludes zero, "tie" otherwise; identical APs are a tie. ``expected`` is the direction a paper
    claims (+1: b above a, -1: b below a): the claim is then reproduced when the interval lies on that
    side of zero, contradicted when it lies on the other, and not separable on this data otherwise.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    (a, b), group_index = _paired_rows(ap_a, ap_b, groups=groups)
    diffs = b - a
    tail = 100 * (1 - confidence) / 2
    if diffs.any():
        means = _bootstrap_means(diffs, group_index, int(n_resamples), seed)
        low, high = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
        verdict, claim = _decide(low, high, expected)
    else:
        low = high = 0.0
        verdict, claim = "tie", (None if expected is None else NOT_SEPARABLE)
    return PairedComparison(diff=float(diffs.mean()), ci=(low, high),
                            p=_sign_flip_p(diffs, group_index, int(n_resamples), seed), n_queries=int(len(diffs)),
                            n_groups=int(group_index.max()) + 1, verdict=verdict, claim=claim)


def _spearman_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``x`` with every row of ``ys`` (average ranks for ties; 0 for a
    constant row)."""
    from scipy.stats import rankdata

    rx = rankdata(x) - (len(x) + 1) / 2
    ry = rankdata(ys, axis=-1) - (ys.shape[-1] + 1) / 2
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum(axis=-1))
    return np.divide(ry @ rx, denom, out=np.zeros(ys.shape[:-1]), where=denom > 0)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(_spearman_rows(np.asarray(x, float), np.asarray(y, float)[None, :])[0])


def trend_comparison(aps_by_point: Sequence, xs: Sequence[float] | None = None, expected: int | None = None,
                     groups=None, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                     confidence: float = 0.95) -> PairedComparison:
    """Is there a trend along a sweep (mAP against K, against depth, ...)? The rank correlation
    (Spearman) between the points' ``xs`` and their mAPs, with a bootstrap interval over queries
    (the same resampled queries, or instance ``groups``, at every point, so the points stay paired)
    and a permutation p-value (the points' order shuffled per query). ``expected`` +1 claims a rising
    trend, -1 a falling one. Returns a :class:`PairedComparison` whose ``diff`` is the correlation
    (-1..1), ``verdict`` "rising", "falling" or "no trend", and ``steps`` the paired comparison of
    each point with the one before."""
    rows, group_index = _paired_rows(*aps_by_point, groups=groups)     # points x queries
    n_points, n_queries = rows.shape
    if n_points < 3:
        raise ValueError("a trend needs at least 3 points; compare two with paired_comparison")
    xs = np.arange(n_points, dtype=float) if xs is None else np.asarray(xs, dtype=float)
    rho = _spearman(xs, rows.mean(axis=1))
    boot_maps = _bootstrap_means(rows, group_index, int(n_resamples), seed)      # points x resamples
    boot = _spearman_rows(xs, boot_maps.T)
    tail = 100 * (1 - confidence) / 2
    low, high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    rng = np.random.default_rng(seed + 1)
    n_perm = min(int(n_resamples), 2000)
    shuffled = np.stack([np.take_along_axis(rows, np.argsort(rng.random(rows.shape), axis=0), axis=0).mean(axis=1)
                         for _ in range(n_perm)])
    perm = _spearman_rows(xs, shuffled)
    p = float((np.count_nonzero(np.abs(perm) >= abs(rho) - 1e-12) + 1) / (n_perm + 1))
    verdict, claim = _decide(low, high, expected)
    verdict = {"better": "rising", "worse": "falling", "tie": "no trend"}[verdict]
    steps = [paired_comparison(rows[i - 1], rows[i], groups=group_index, n_resamples=n_resamples, seed=seed)
             for i in range(1, n_points)]
    return PairedComparison(diff=rho, ci=(low, high), p=p, n_queries=int(n_queries),
                            n_groups=int(group_index.max()) + 1, verdict=verdict, claim=claim, steps=steps)

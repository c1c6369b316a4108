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


def evaluate_scores(dataset, scores, kappas: Iterable[int] = DEFAULT_KAPPAS) -> dict:
    """Evaluate a similarity matrix ``n_db x n_q`` (higher = more similar) on ``dataset``.

    ``dataset`` needs ``.protocol``, ``.gnd`` and, for the shape check, ``.imlist`` / ``.qimlist``
    (a :class:`helpers.data.RetrievalDataset`). Returns the protocol's result dict, plus
    "dataset" (its name, if any) and "n_queries".
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
    results = evaluate_ranks(dataset.protocol, ranks_from_scores(scores), gnd, kappas)
    results["dataset"] = getattr(dataset, "name", None)
    results["n_queries"] = n_queries
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

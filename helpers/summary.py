"""Every method side by side on one dataset, backbone and protocol (chapter 07).

One row per label of :data:`helpers.methods.STANDARD_ROWS` (a registered method at its documented
default, or a pooling baseline with ``+whiten``), each with: the protocol's mAP and the bootstrap
interval of the headline mAP (:func:`helpers.evaluate.mean_interval`), the per-query APs (for paired
comparisons between rows), the bytes its descriptors take per database image, the time to describe
one image (cold: on a few images, with an empty temporary feature cache), the time to search one
query against the database, and what it learns on which training set.

Timings are wall-clock on the machine that runs them: read them as orders of magnitude, not as
benchmarks (``benchmarks/`` holds those).
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SummaryRow", "descriptor_bytes", "evaluate_row", "one_query", "paired_matrix", "summary_rows",
           "timing_subset"]


@dataclass
class SummaryRow:
    """One method's line of the summary table."""

    label: str
    method: str
    options: dict
    results: dict
    #: per-query AP of the headline setting (medium on revisited data), in points
    ap: np.ndarray
    #: (mean, low, high) of ``ap``: mAP and its 95% bootstrap interval (queries of an instance together)
    interval: tuple
    bytes_per_image: float
    seconds_per_image: float
    seconds_per_query: float
    learns: str
    train_dataset: str | None
    notes: list = field(default_factory=list)


def descriptor_bytes(desc) -> int:
    """Bytes held by a method's descriptors: the arrays (numpy or torch) inside ``desc``, which may be
    an array, a dict of arrays (one per layer) or a list of arrays (one per image)."""
    if isinstance(desc, np.ndarray):
        return int(desc.nbytes)
    if hasattr(desc, "element_size") and hasattr(desc, "nelement"):  # a torch tensor
        return int(desc.element_size() * desc.nelement())
    if isinstance(desc, dict):
        return sum(descriptor_bytes(v) for v in desc.values())
    if isinstance(desc, (list, tuple)):
        return sum(descriptor_bytes(v) for v in desc)
    raise TypeError(f"cannot measure the size of a descriptor of type {type(desc).__name__}")


def timing_subset(dataset, n_db: int = 4, n_queries: int = 2):
    """The first ``n_db`` database images and ``n_queries`` queries of ``dataset`` as a dataset of its
    own (another cache key, so that nothing computed for the full set is reused), for timing."""
    from .data import RetrievalDataset

    if n_db < 1 or n_queries < 1:
        raise ValueError(f"a timing subset needs at least one image of each split, got {n_db}, {n_queries}")
    n_db, n_queries = min(n_db, dataset.n_db), min(n_queries, dataset.n_queries)
    gnd = [{"easy": [], "hard": [], "junk": [], "bbx": dataset.gnd[q]["bbx"]} for q in range(n_queries)]
    return RetrievalDataset(
        name=f"{dataset.name}-timing", root=dataset.root, imlist=dataset.imlist[:n_db],
        qimlist=dataset.qimlist[:n_queries], gnd=gnd, protocol=dataset.protocol,
        instance_labels=None if dataset.instance_labels is None else dataset.instance_labels[:n_db],
        query_labels=None if dataset.query_labels is None else dataset.query_labels[:n_queries],
        content_id=f"timing:{dataset.key}")


@contextmanager
def _empty_cache():
    """Point the feature cache at an empty temporary directory for the duration."""
    before = os.environ.get("INSTRET_CACHE")
    with tempfile.TemporaryDirectory(prefix="instret-timing-") as tmp:
        os.environ["INSTRET_CACHE"] = tmp
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("INSTRET_CACHE", None)
            else:
                os.environ["INSTRET_CACHE"] = before


def _seconds_per_image(method, dataset, n_db: int, n_queries: int) -> float:
    """Wall time of a whole search (description of every image, the method's first stage if any, and
    the scoring) on a small subset with an empty cache, per image: what one new image costs."""
    subset = timing_subset(dataset, n_db, n_queries)
    with _empty_cache():
        start = time.perf_counter()
        method.search(subset)
        elapsed = time.perf_counter() - start
    return elapsed / (subset.n_db + subset.n_queries)


def one_query(desc, q: int = 0):
    """Query ``q``'s descriptor in the container the method uses (array rows, dict of arrays, list)."""
    if isinstance(desc, dict):
        return {key: one_query(value, q) for key, value in desc.items()}
    if isinstance(desc, list):
        return [desc[q]]
    return desc[q:q + 1]


def _seconds_per_query(method, dataset, queries, db, repeats: int = 5) -> float:
    """Search time of one query against the whole database from computed descriptors (best of
    ``repeats``). A method that re-ranks (its own ``search``: a first stage, then re-ranking) is
    timed on its whole search with a warm cache, less the time to read its descriptors, per query."""
    from .methods import RetrievalMethod

    if type(method).search is RetrievalMethod.search:
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            method.score(one_query(queries), db)
            best = min(best, time.perf_counter() - start)
        return best
    start = time.perf_counter()
    method.describe(dataset, "query"), method.describe(dataset, "db")
    reading = time.perf_counter() - start
    start = time.perf_counter()
    method.search(dataset)
    return max(time.perf_counter() - start - reading, 0.0) / dataset.n_queries


def evaluate_row(label: str, dataset, backbone, image_size: int, train=None, timing: bool = True,
                 timing_images: tuple[int, int] = (4, 2), spec: tuple[str, dict] | None = None) -> SummaryRow:
    """Fit (on ``train`` where the method learns something), search and evaluate one row: the method
    ``label`` names (:func:`helpers.methods.resolve_method_label`), or ``spec = (method, options)``
    under the display name ``label``."""
    from .data import check_training_set
    from .evaluate import evaluate_scores, mean_interval, per_query_ap
    from .methods import make_method, resolve_method_label

    name, options = spec if spec is not None else resolve_method_label(label)
    method = make_method(name, backbone, image_size, **options)
    train_name = None
    if method.needs_training:
        if train is None:
            raise ValueError(f"{label} learns on a training set: pass train=")
        check_training_set(train, dataset)
        method.fit(train)
        train_name = train.name
    scores = method.search(dataset)
    results = evaluate_scores(dataset, scores)
    ap = per_query_ap(results)
    queries, db = method.describe(dataset, "query"), method.describe(dataset, "db")
    row = SummaryRow(label=label, method=name, options=options, results=results, ap=ap,
                     interval=mean_interval(ap, dataset.query_labels),
                     bytes_per_image=descriptor_bytes(db) / dataset.n_db,
                     seconds_per_image=np.nan, seconds_per_query=np.nan,
                     learns=method.learns if method.needs_training else "nothing", train_dataset=train_name)
    if timing:
        row.seconds_per_image = _seconds_per_image(method, dataset, *timing_images)
        row.seconds_per_query = _seconds_per_query(method, dataset, queries, db)
    return row


def summary_rows(labels, dataset, backbone, image_size: int, train=None, timing: bool = True,
                 progress=None, row_options: dict[str, dict] | None = None) -> dict[str, SummaryRow]:
    """:func:`evaluate_row` for every label, ``{label: row}``; ``progress(label, seconds)`` is called
    after each row. ``row_options`` maps a method name to options that override its defaults in every
    row of that method (e.g. ``{"roi": {"crop_size": 128}}``, chapter 05's demo setting); an option
    the method does not declare is refused."""
    from .methods import method_class, resolve_method_label
    from .options import validate_options

    row_options = dict(row_options or {})
    for name, options in row_options.items():
        validate_options(method_class(name), dict(options))
    rows = {}
    for label in labels:
        start = time.perf_counter()
        name, options = resolve_method_label(label)
        spec = (name, {**options, **row_options.get(name, {})})
        rows[label] = evaluate_row(label, dataset, backbone, image_size, train, timing, spec=spec)
        if progress is not None:
            progress(label, time.perf_counter() - start)
    return rows


def paired_matrix(rows: dict[str, SummaryRow], groups=None):
    """Paired comparisons between every two rows: ``(labels, diff, low, high)``, ``diff[i, j]`` the
    mean per-query AP difference row j - row i and ``[low, high]`` its 95% interval
    (:func:`helpers.evaluate.paired_comparison`); a cell whose interval contains zero is not separable
    on this data."""
    from .evaluate import paired_comparison

    labels = list(rows)
    n = len(labels)
    diff, low, high = (np.zeros((n, n)) for _ in range(3))
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            if i < j:
                c = paired_comparison(rows[a].ap, rows[b].ap, groups=groups)
                diff[i, j], (low[i, j], high[i, j]) = c["diff"], c["ci"]
                diff[j, i], low[j, i], high[j, i] = -c["diff"], -c["ci"][1], -c["ci"][0]
    return labels, diff, low, high


def summary_table(rows: dict[str, SummaryRow]):
    """The summary table as a pandas DataFrame, one row per label: the protocol's mAP columns (E/M/H
    on revisited data), the headline mAP's 95% interval, bytes per database image, milliseconds to
    describe one image and to search one query, and what the method learns on which set."""
    import pandas as pd

    from .evaluate import headline

    records = []
    for label, row in rows.items():
        keys = [k for k in ("mAP_E", "mAP_M", "mAP_H") if k in row.results] or [headline(row.results)[0]]
        mean, low, high = row.interval
        records.append({"method": label, **{k: row.results[k] for k in keys},
                        f"{headline(row.results)[0]} 95% CI": f"[{low:.1f}, {high:.1f}]",
                        "bytes/image": row.bytes_per_image, "ms/image": 1e3 * row.seconds_per_image,
                        "ms/query": 1e3 * row.seconds_per_query,
                        "learns": row.learns + (f" (on {row.train_dataset})" if row.train_dataset else "")})
    return pd.DataFrame.from_records(records).set_index("method")


def paired_matrix_figure(labels, diff, low, high, title: str = "mAP difference, row j minus row i"):
    """Heat map of :func:`paired_matrix` (column method minus row method, AP points): every cell
    carries its difference; cells whose 95% interval contains zero (not separable on this data) are
    hatched and their number greyed; a colour bar gives the scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    n = len(labels)
    limit = max(float(np.abs(diff).max()), 1e-9)
    fig, ax = plt.subplots(figsize=(0.62 * n + 2.6, 0.55 * n + 1.6))
    image = ax.imshow(diff, cmap="RdBu", norm=TwoSlopeNorm(0, -limit, limit))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            separable = low[i, j] > 0 or high[i, j] < 0
            if not separable:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                           edgecolor="0.55", linewidth=0))
            strong = abs(diff[i, j]) > 0.6 * limit
            ax.text(j, i, f"{diff[i, j]:+.0f}", ha="center", va="center", fontsize=7.5,
                    color=("white" if strong else "black") if separable else "0.45")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8.5)
    ax.set_yticks(range(n), labels, fontsize=8.5)
    ax.set_xlabel("column method j")
    ax.set_ylabel("row method i")
    ax.set_title(f"{title}\n(hatched, grey: 95% interval contains 0, not separable)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="AP points")
    fig.tight_layout()
    return fig


def claim_comparisons(rows: dict[str, SummaryRow], pairs, groups=None) -> dict:
    """``{(a, b): (claim verdict, evidence line)}`` for the ``(a, b, expected)`` triples ``pairs``:
    row b against row a in the claimed direction (what :func:`helpers.papers.ledger_rows` takes)."""
    from .evaluate import paired_comparison

    out = {}
    for a, b, expected in pairs:
        c = paired_comparison(rows[a].ap, rows[b].ap, expected=expected, groups=groups)
        out[(a, b)] = (c["claim"], c.line(b, a))
    return out


def regional_training_vectors(maps, pooling_name: str = "gem", levels: int = 3) -> np.ndarray:
    """l2-normalised vectors of the R-MAC regions (``levels`` scales) of every map, pooled with
    ``pooling_name``: several training vectors per training image, for the compact codes (a PCA to
    512 or 1024 dimensions, or 256 centroids per product-quantiser, need more training vectors than
    a demo training set has images)."""
    import torch

    from .pooling import l2n_np, pool, rmac_regions

    vectors = []
    for fmap in maps:
        fmap = torch.as_tensor(fmap).float()
        H, W = fmap.shape[-2:]
        for x, y, w, h in rmac_regions(H, W, levels):
            vectors.append(pool(fmap[None, :, y:y + h, x:x + w], pooling_name)[0].numpy())
    if not vectors:
        raise ValueError("no maps given")
    return l2n_np(np.stack(vectors))


def compact_curves(dataset, train_vectors, db_vectors, query_vectors, db_pooled, query_pooled,
                   budgets, kinds=None) -> dict:
    """mAP of every compact code kind (:data:`helpers.compact.COMPACT_KINDS`) at each bytes-per-image
    budget: ``{kind: {bytes: (results, per-query AP) or the reason it cannot be built}}``.
    ``*_vectors`` are the float descriptors (``N x D``) the quantisers encode; ``*_pooled`` the
    ``{pooling: N x C}`` vectors ACK ranks kernels by."""
    from .compact import COMPACT_KINDS, encode_database
    from .evaluate import evaluate_scores, per_query_ap

    budgets = list(budgets) if not isinstance(budgets, (str, bytes)) else budgets
    if isinstance(budgets, (str, bytes)) or not all(isinstance(b, (int, np.integer)) and b > 0 for b in budgets):
        raise ValueError(f"budgets must be positive integers (bytes per image), got {budgets!r}")
    curves = {}
    for kind in kinds or COMPACT_KINDS:
        curves[kind] = {}
        for nbytes in budgets:
            try:
                index = encode_database(kind, int(nbytes), train_vectors,
                                        db_pooled if kind == "ack" else db_vectors)
                results = evaluate_scores(dataset, index.scores(query_pooled if kind == "ack" else query_vectors))
                curves[kind][int(nbytes)] = (results, per_query_ap(results))
            except ValueError as exc:  # e.g. ITQ beyond the descriptor's dimension, ACK beyond its kernels
                curves[kind][int(nbytes)] = str(exc)
    return curves


def compact_curves_figure(curves: dict, metric: str, reference: tuple[float, float], title: str = ""):
    """mAP (``metric``) against bytes per image, one curve per code kind of :func:`compact_curves`
    (budgets a kind cannot be built at are left out), ACK drawn bold, and a dashed line at the
    uncompressed reference ``(bytes, mAP)``."""
    import matplotlib.pyplot as plt

    markers = dict(pq="o", sign="v", itq="^", float16="s", int8="D", ack="*")
    budgets = sorted({b for by_bytes in curves.values() for b in by_bytes})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, by_bytes in curves.items():
        points = [(b, v[0][metric]) for b, v in sorted(by_bytes.items()) if isinstance(v, tuple)]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=markers.get(kind, "o"), markersize=9 if kind == "ack" else 6,
                    linewidth=2.4 if kind == "ack" else 1.4, label=kind)
    ref_bytes, ref_map = reference
    ax.axhline(ref_map, color="0.3", linestyle="--", linewidth=1)
    ax.text(budgets[0], ref_map + 0.6, f"float32, {ref_bytes:.0f} bytes", fontsize=9, color="0.3")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("bytes per database image")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def query_times_figure(times: list[dict], float_references, title: str = ""):
    """Milliseconds per query (median over rounds) against database size, log-log, one line per
    search of :func:`helpers.compact.query_times`; the exact float32 references dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in times[0]["ms"]:
        ms = [float(np.median(t["ms"][name])) for t in times]
        ax.plot([t["size"] for t in times], ms, marker="o", linewidth=2.4 if name == "ack" else 1.4,
                linestyle="--" if name in float_references else "-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("database size (codes)")
    ax.set_ylabel("ms per query (median over rounds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8.5, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig

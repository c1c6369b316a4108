import numpy as np
import pytest
import torch

from helpers import summary
from helpers.data import load_dataset
from helpers.evaluate import mean_interval, paired_comparison
from helpers.methods import STANDARD_ROWS, available_methods, compare_methods, resolve_method_label


def test_standard_rows_cover_every_registered_method_and_the_whitened_poolings():
    names = {resolve_method_label(label)[0] for label in STANDARD_ROWS}
    assert names == set(available_methods())
    assert resolve_method_label("crow+whiten") == ("crow", {"whiten": True})
    assert resolve_method_label("ack") == ("ack", {})


@pytest.mark.parametrize("label", ["ack+whiten", "gem+pca", "nonsense"])
def test_unknown_labels_are_refused(label):
    with pytest.raises(ValueError, match="unknown method"):
        resolve_method_label(label)


def test_descriptor_bytes_counts_arrays_in_every_container():
    a = np.zeros((10, 4), np.float32)          # 160 bytes
    codes = np.zeros((10, 256), np.uint16)     # 5120 bytes
    assert summary.descriptor_bytes(a) == 160
    assert summary.descriptor_bytes({"fc": a, "conv": codes}) == 5280
    assert summary.descriptor_bytes([a[:5], a[5:]]) == 160
    assert summary.descriptor_bytes(torch.zeros(3, 2, dtype=torch.float16)) == 12
    with pytest.raises(TypeError, match="str"):
        summary.descriptor_bytes("abc")


def test_mean_interval_brackets_the_mean_and_resamples_instances_together():
    rng = np.random.default_rng(1)
    ap = rng.uniform(0, 100, 40)
    mean, low, high = mean_interval(ap)
    assert mean == pytest.approx(ap.mean()) and low < mean < high
    # four instances of 10 identical queries each: the interval is that of 4 values, much wider
    # than the one that counts 40 independent queries
    grouped = np.repeat(rng.uniform(0, 100, 4), 10)
    labels = np.repeat(list("abcd"), 10)
    _, gl, gh = mean_interval(grouped, labels)
    _, il, ih = mean_interval(grouped)
    assert (gh - gl) > 2.5 * (ih - il)
    with pytest.raises(ValueError):
        mean_interval(ap, confidence=1.5)


def test_paired_matrix_is_antisymmetric_and_matches_paired_comparison():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, 30)

    def row(label, ap):
        return summary.SummaryRow(label, label, {}, {}, ap, mean_interval(ap), 0, 0, 0, "nothing", None)

    rows = {"a": row("a", base), "b": row("b", base + 5 + rng.normal(0, 1, 30)), "c": row("c", base)}
    labels, diff, low, high = summary.paired_matrix(rows)
    assert labels == ["a", "b", "c"]
    np.testing.assert_allclose(diff, -diff.T)
    reference = paired_comparison(rows["a"].ap, rows["b"].ap)
    assert diff[0, 1] == pytest.approx(reference["diff"])
    assert (low[0, 1], high[0, 1]) == pytest.approx(reference["ci"])
    assert low[0, 1] > 0                      # b is clearly better than a
    assert low[0, 2] == high[0, 2] == 0       # identical rows: a tie
    assert (low[1, 0], high[1, 0]) == pytest.approx((-high[0, 1], -low[0, 1]))


def test_timing_subset_is_a_separate_small_dataset(photo_folder):
    ds = load_dataset(f"folder:{photo_folder}")
    sub = summary.timing_subset(ds, 3, 2)
    assert (sub.n_db, sub.n_queries) == (3, 2)
    assert sub.key != ds.key
    assert sub.db_path(0) == ds.db_path(0)
    with pytest.raises(ValueError, match="at least one"):
        summary.timing_subset(ds, 0, 1)


def test_evaluate_row_measures_size_time_and_interval(photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    row = summary.evaluate_row("ack", ds, backbone, 160, timing=True, timing_images=(2, 1))
    # ACK's default code: 256 kernel indices of 2 bytes each
    assert row.bytes_per_image == 512
    assert row.learns == "nothing" and row.train_dataset is None
    assert row.seconds_per_image > 0 and row.seconds_per_query >= 0
    mean, low, high = row.interval
    assert low <= mean <= high and mean == pytest.approx(np.nanmean(row.ap))
    with pytest.raises(ValueError, match="train"):
        summary.evaluate_row("gem+whiten", ds, backbone, 160)
    # the temporary timing cache is gone, the configured one untouched by the timing subset
    assert not any("timing" in p.name for p in isolated_cache.rglob("*"))


def test_compare_accepts_row_labels(photo_folder, realsmoke, isolated_cache):
    out = compare_methods(f"folder:{photo_folder}", ["gem", "gem+whiten"], image_size=128,
                          train_dataset=f"folder:{realsmoke}")
    assert set(out["results"]) == {"gem", "gem+whiten"}
    assert set(out["comparisons"]) == {"gem+whiten"}


def test_compact_curves_figure_draws_one_line_per_buildable_kind():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {"pq": {64: ({"mAP_M": 50.0}, None), 128: ({"mAP_M": 55.0}, None)},
              "itq": {64: ({"mAP_M": 45.0}, None), 128: "ITQ needs more dimensions"},
              "ack": {64: "n too large", 128: "n too large"}}
    fig = summary.compact_curves_figure(curves, "mAP_M", (5120, 59.6))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"pq", "itq"}          # ack could not be built at any budget
    assert list(lines["itq"].get_xdata()) == [64]
    assert any(abs(line.get_ydata()[0] - 59.6) < 1e-9 for line in ax.get_lines())  # the reference
    plt.close(fig)


def test_query_times_figure_dashes_the_float_references():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [{"size": s, "ms": {"ack": [1.0, 2.0], "float_numpy": [s / 1e3]}} for s in (1000, 10000)]
    fig = summary.query_times_figure(times, ("float_numpy",))
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles == {"ack": "-", "float_numpy": "--"}
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [1.5, 1.5]   # medians over rounds
    plt.close(fig)


def test_summary_rows_apply_row_options_to_that_method_only(photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    rows = summary.summary_rows(["ack", "gem"], ds, backbone, 160, timing=False, row_options={"ack": {"n": 64}})
    assert rows["ack"].options == {"n": 64}
    assert rows["ack"].bytes_per_image == 128        # 64 kernel indices of 2 bytes
    assert rows["gem"].options == {}
    with pytest.raises(ValueError, match="crop_sise"):
        summary.summary_rows(["gem"], ds, backbone, 160, timing=False, row_options={"roi": {"crop_sise": 128}})


def test_book_taps_name_the_taps_the_chapters_read(backbone):
    from helpers.actnet import default_layers
    from helpers.chapter import book_taps

    maps, vectors = book_taps(backbone)
    assert backbone.last_conv in maps and "fc" in maps and set(default_layers(backbone)) <= set(maps)
    assert vectors[-1] == backbone.last_conv and "fc" not in vectors

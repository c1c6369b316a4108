import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import viz  # noqa: E402


def test_save_figure_writes_png(tmp_path):
    fig, ax = plt.subplots()
    viz.show_boxes(ax, np.zeros((40, 60, 3), np.uint8), [[5, 5, 20, 30]], "yellow", labels=["a"])
    path = viz.save_figure(fig, "boxes", tmp_path / "figs" / "nb")
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        viz.save_figure(fig, "../escape", tmp_path)


def test_relevance_of():
    g = {"easy": [1], "hard": [2], "junk": [3]}
    assert [viz.relevance_of(g, i) for i in range(5)] == ["negative", "positive", "positive", "junk", "negative"]


def test_result_strip_borders():
    fig, axes = plt.subplots(1, 3)
    img = np.zeros((10, 10, 3), np.uint8)
    viz.result_strip(axes, img, [img, img], ["positive", "negative"], query_box=[1, 1, 5, 5])
    assert axes[1].spines["left"].get_edgecolor()[:3] == matplotlib.colors.to_rgb(viz.RESULT_COLORS["positive"])
    assert axes[2].spines["left"].get_edgecolor()[:3] == matplotlib.colors.to_rgb(viz.RESULT_COLORS["negative"])
    assert len(axes[0].patches) == 1  # the query box
    plt.close(fig)


def test_interactive_view_draws_only_when_a_control_moves():
    import ipywidgets as widgets

    from helpers.viz import interactive_view

    calls = []
    slider = widgets.IntSlider(value=3, min=0, max=10)
    box = interactive_view(lambda q, pooling: calls.append((q, pooling)), q=slider,
                           pooling=widgets.Dropdown(options=["mac", "gem"], value="gem"))
    assert calls == []  # nothing runs at creation (jupyter/nbclient#312)
    assert slider.description == "q"
    slider.value = 5
    assert calls == [(5, "gem")]
    assert isinstance(box, widgets.VBox)
    with pytest.raises(TypeError, match="not an ipywidgets"):
        interactive_view(print, q=3)
    with pytest.raises(ValueError):
        interactive_view(print)


def test_draw_boxes_adds_one_patch_per_box_and_labels():
    fig, ax = plt.subplots()
    viz.show_image(ax, np.zeros((40, 60, 3), np.uint8))
    viz.draw_boxes(ax, [[1, 2, 10, 20], [5, 5, 30, 30]], ["red", "blue"], labels=[1, 2], alpha=0.5)
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.texts] == ["1", "2"]
    assert ax.patches[0].get_width() == 9 and ax.patches[0].get_alpha() == 0.5
    with pytest.raises(ValueError, match="colours"):
        viz.draw_boxes(ax, [[1, 2, 10, 20], [5, 5, 30, 30]], ["red"])
    plt.close(fig)


def test_mosaic_tiles_maps_with_nan_gaps():
    maps = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    out = viz.mosaic(maps, cols=2, gap=1)
    assert out.shape == (3 * 2 + 2, 2 * 3 + 1)
    np.testing.assert_array_equal(out[0:2, 0:3], maps[0])
    np.testing.assert_array_equal(out[3:5, 4:7], maps[3])
    np.testing.assert_array_equal(out[6:8, 0:3], maps[4])
    assert np.isnan(out[2]).all() and np.isnan(out[:, 3]).all() and np.isnan(out[6:8, 4:7]).all()
    with pytest.raises(ValueError):
        viz.mosaic(maps[0])


def test_show_labels_colours_each_cluster_over_the_image():
    fig, ax = plt.subplots()
    labels = np.array([[0, 0, 1], [2, 1, 1]])
    viz.show_labels(ax, np.zeros((20, 30, 3), np.uint8), labels, "clusters")
    overlay = ax.images[-1]
    assert overlay.get_extent() == [0, 30, 20, 0]
    rgb = overlay.get_array()
    colours = viz.label_colors([0, 1, 2])
    assert np.allclose(rgb[1, 0], colours[2][:3]) and np.allclose(rgb[0, 2], rgb[1, 1])
    with pytest.raises(ValueError, match="h x w"):
        viz.show_labels(ax, np.zeros((20, 30, 3), np.uint8), labels.ravel())
    plt.close(fig)


def test_heatmap_over_image_colour_scale_and_interpolation():
    fig, ax = plt.subplots()
    viz.heatmap_over_image(ax, np.zeros((20, 30, 3), np.uint8), np.array([[0.2, 0.4]]), cmap="viridis",
                           interpolation="nearest", vmin=0, vmax=1)
    assert ax.images[-1].get_clim() == (0, 1) and ax.images[-1].get_interpolation() == "nearest"
    plt.close(fig)


def test_mapping_over_histogram_draws_the_mapping_and_the_identity():
    fig, ax = plt.subplots()
    x = np.linspace(0, 1, 11)
    twin = viz.mapping_over_histogram(ax, np.random.default_rng(0).random(200), x, x ** 0.5, "S", "f(S)", "S",
                                      title="t", mapped_ylabel="f(S)", identity_label="identity (concatenation)")
    assert len(ax.patches) == 40                                   # the histogram's bars
    (curve, identity) = twin.lines
    np.testing.assert_allclose(curve.get_ydata(), x ** 0.5)
    np.testing.assert_allclose(identity.get_ydata(), x)
    assert [t.get_text() for t in twin.get_legend().get_texts()] == ["S", "f(S)", "identity (concatenation)"]
    with pytest.raises(ValueError, match="same shape"):
        viz.mapping_over_histogram(ax, x, x, x[:3], "S", "f", "S")
    plt.close(fig)

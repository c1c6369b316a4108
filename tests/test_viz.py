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
    assert ax.patches[0].get_path_effects()                           # the dark outline
    assert [t.get_color() for t in ax.texts] == ["black", "white"]    # the better contrast on red, on blue
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


def test_text_color_for_follows_the_luminance():
    assert viz.text_color_for("yellow") == "black" and viz.text_color_for("white") == "black"
    assert viz.text_color_for("navy") == "white" and viz.text_color_for("black") == "white"


def _label_boxes(ax):
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in ax.texts]


def test_draw_boxes_stacks_labels_of_boxes_sharing_a_corner():
    fig, ax = plt.subplots(figsize=(4, 3))
    viz.show_image(ax, np.zeros((300, 400, 3), np.uint8))
    viz.draw_boxes(ax, [[0, 0, 400, 300], [0, 0, 200, 150], [2, 1, 100, 80], [300, 200, 390, 290]],
                   ["yellow", "navy", "cyan", "lime"], labels=["#1042", "#1262", "#872", "4"])
    extents = _label_boxes(ax)
    assert len(extents) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not extents[i].overlaps(extents[j]), (i, j)
    assert [t.get_color() for t in ax.texts] == ["black", "white", "black", "black"]
    plt.close(fig)


def test_ranked_boxes_draws_few_distinct_labelled_boxes():
    fig, ax = plt.subplots()
    boxes = [[i, i, 50 + i, 40 + i] for i in range(0, 50, 2)]   # 25 nested boxes
    drawn = viz.ranked_boxes(ax, np.zeros((100, 120, 3), np.uint8), boxes, "RoIs")
    assert len(drawn) == 5 and len(ax.patches) == 5
    colours = {matplotlib.colors.to_hex(p.get_edgecolor()) for p in ax.patches}
    assert len(colours) == 5 and viz.QUERY_BOX_COLOR not in colours
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3", "4", "5"]
    extents = _label_boxes(ax)
    assert not any(extents[i].overlaps(extents[j]) for i in range(5) for j in range(i + 1, 5))
    with pytest.raises(ValueError, match="distinct colours"):
        viz.ranked_boxes(ax, np.zeros((10, 10, 3), np.uint8), boxes, max_boxes=20)
    plt.close(fig)


def test_show_labels_uses_tab10_and_draws_borders_between_clusters():
    fig, ax = plt.subplots()
    labels = np.array([[0, 0, 1], [2, 1, 1]])
    viz.show_labels(ax, np.zeros((20, 30, 3), np.uint8), labels)
    colours = viz.label_colors([0, 1, 2])
    assert colours[1] == plt.get_cmap("tab10")(1)
    (borders,) = ax.collections
    # vertical: (0,1)|(0,2), (1,0)|(1,1); horizontal: (0,0)/(1,0), (0,1)/(1,1)
    assert len(borders.get_segments()) == 4
    assert len(set(viz.label_colors(range(10)).values())) == 10
    assert len(set(viz.label_colors(range(15)).values())) == 15
    plt.close(fig)


def test_heatmap_over_image_adds_a_labelled_colour_bar():
    fig, ax = plt.subplots()
    viz.heatmap_over_image(ax, np.zeros((20, 30, 3), np.uint8), np.array([[0.2, 0.4]]), colorbar="activation")
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "activation"
    plt.close(fig)


def test_annotated_grid_writes_readable_numbers_and_marks_the_cell_beside_its_value():
    fig, ax = plt.subplots(figsize=(6, 5))
    values = np.array([[40.0, 50.0, 60.0], [45.0, 50.0, 55.0]])
    viz.annotated_grid(ax, values, [0.1, 0.2], [0.25, 0.45, 1.0], center=50.0, marked=(0.2, 0.45),
                       colorbar="mAP (%)")
    texts = {t.get_text(): t for t in ax.texts}
    assert len(ax.texts) == 6
    assert texts["40.0"].get_color() == "white" and texts["60.0"].get_color() == "white"   # dark ends of RdBu
    assert texts["45.0"].get_color() == "black"                                           # a light cell
    assert not ax.lines                                                                   # nothing over a number
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.1", "★ 0.2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.25", "0.45\n★", "1"]
    (frame,) = ax.patches
    assert frame.get_xy() == (0.5, 0.5) and len(fig.axes) == 2                           # framed cell, colour bar
    with pytest.raises(ValueError):
        viz.annotated_grid(ax, values.T, [0.1, 0.2], [0.25, 0.45, 1.0], center=50.0)
    plt.close(fig)


def test_smallest_displayed_font_shrinks_with_wide_figures():
    fig = plt.figure(figsize=(6, 2), dpi=72)
    fig.text(0.5, 0.5, "x", fontsize=10)
    assert viz.smallest_displayed_font(fig) == pytest.approx(10)
    fig.set_size_inches(2 * viz.OUTPUT_COLUMN_PX / 72, 2)
    assert viz.smallest_displayed_font(fig) == pytest.approx(5)
    plt.close(fig)

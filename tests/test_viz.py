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

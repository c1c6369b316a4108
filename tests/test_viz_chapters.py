"""The chapter figures of helpers.viz (ground truth, one channel, the pooling panels, result strips)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import viz  # noqa: E402


class TinyDataset:
    """Three database images and two queries written to ``root``."""

    def __init__(self, root):
        rng = np.random.default_rng(0)
        self.paths = []
        for i in range(5):
            path = root / f"im{i}.png"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
            self.paths.append(path)
        self.gnd = [{"easy": [0], "hard": [1], "junk": [2], "bbx": [2, 2, 30, 30]},
                    {"easy": [2], "hard": [], "junk": [], "bbx": None}]
        self.query_labels = ["a", "b"]
        self.n_db, self.n_queries = 3, 2

    def db_path(self, i):
        return self.paths[i]

    def query_path(self, q):
        return self.paths[3 + q]


class TinyBackbone:
    """A 'network' whose layer 'x' has channel 2 peaking highest, then channel 0."""

    def preprocess(self, img):
        return torch.zeros(1, 3, *img.shape[:2])

    def forward_taps(self, x, layers):
        fmap = torch.zeros(1, 3, 4, 5)
        fmap[0, 0, 1, 1], fmap[0, 2, 3, 4] = 1.0, 5.0
        return {layers[0]: fmap}


def test_ground_truth_figure_shows_query_and_each_kind(tmp_path):
    fig = viz.ground_truth_figure(TinyDataset(tmp_path), 0, 64)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert titles == ["query:\na", "easy", "hard", "junk"]


def test_channel_figure_ranks_channels_by_peak():
    img = np.zeros((20, 25, 3), np.uint8)
    fig, c0 = viz.channel_figure(TinyBackbone(), img, "x", rank=0)
    plt.close(fig)
    fig, c1 = viz.channel_figure(TinyBackbone(), img, "x", rank=1)
    plt.close(fig)
    assert (c0, c1) == (2, 0)
    with pytest.raises(ValueError, match="rank must lie in"):
        viz.channel_figure(TinyBackbone(), img, "x", rank=3)


def test_pooling_panels_figure_one_rmac_level_per_panel_and_colour_bars():
    from helpers import pooling

    fmap = torch.rand(16, 6, 8)
    plt.rcParams["figure.dpi"] = 72
    fig = viz.pooling_panels_figure(np.zeros((60, 80, 3), np.uint8), fmap, L=3)
    panels = fig.axes[:10]                            # 2 x 5 panels, then the 4 colour bars
    assert len(fig.axes) == 14
    levels = [ax for ax in panels[5:] if ax.patches]
    regions = pooling.rmac_regions(6, 8, L=3)
    sides = sorted({r[2] for r in regions}, reverse=True)
    assert [len(ax.patches) for ax in levels] == [sum(r[2] == s for r in regions) for s in sides]
    for ax in levels:                                 # the squares of one level in distinct colours
        colours = [tuple(p.get_edgecolor()) for p in ax.patches]
        assert len(set(colours)) == min(len(colours), 10)
    assert viz.smallest_displayed_font(fig) >= viz.MIN_FONT_PX
    plt.close(fig)
    fig = viz.pooling_panels_figure(np.zeros((60, 80, 3), np.uint8), fmap, L=1)
    assert sum(bool(ax.patches) for ax in fig.axes) == 1
    plt.close(fig)


def test_result_strips_orders_by_score_and_checks_shape(tmp_path):
    dataset = TinyDataset(tmp_path)
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    fig = viz.result_strips(dataset, scores, [0, 1], top_k=2, title="GeM")
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert titles == ["a", "#1 (0.80)", "#2 (0.50)", "b", "#1 (0.90)", "#2 (0.50)"]
    with pytest.raises(ValueError, match="n_db x n_queries"):
        viz.result_strips(dataset, scores.T, [0], top_k=2)


class TinyRevisited(TinyDataset):
    protocol = "revisited"
    imlist = ["im0", "im1", "im2"]
    unreadable = {}

    def unreadable_indices(self):
        return []


def test_method_strips_one_row_per_method_with_its_ap(tmp_path):
    dataset = TinyRevisited(tmp_path)
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    bad = good[::-1].copy()
    fig = viz.method_strips(dataset, {"good": good, "bad": bad}, 0, top_k=2)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert len(titles) == 6 and titles[0].startswith("good\nAP 100") and titles[3].startswith("bad\nAP")
    assert titles[1] == "#1 (0.90)"
    fig = viz.method_strips(dataset, {"good": good, "bad": bad}, [0, 1], top_k=2)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert len(titles) == 12 and titles[0].startswith("query 0: good\nAP") and titles[9].startswith("query 1: bad")


def test_clusters_figure_three_rows_per_image():
    imgs = [np.zeros((40, 50, 3), np.uint8)] * 2
    labels = [np.array([[0, 1], [1, 2]])] * 2
    fig = viz.clusters_figure(imgs, [np.ones((2, 2))] * 2, labels, ["db 0", "db 5"], 3, "Fig. 7")
    assert len(fig.axes) == 6 + 2                     # 3 x 2 panels and a colour bar per norm map
    assert [fig.axes[0].get_title(), fig.axes[1].get_title()] == ["db 0", "db 5"]
    assert all(len(ax.collections) == 1 for ax in fig.axes[4:6])   # cluster borders
    plt.close(fig)
    with pytest.raises(ValueError, match="one entry per image"):
        viz.clusters_figure(imgs, [np.ones((2, 2))], labels, ["a", "b"], 3)


def test_ground_truth_and_strips_fit_the_output_column(tmp_path):
    plt.rcParams["figure.dpi"] = 72
    dataset = TinyDataset(tmp_path)
    for fig in (viz.ground_truth_figure(dataset, 0, 64),
                viz.result_strips(dataset, np.random.default_rng(0).random((3, 2)), [0, 1], top_k=3, title="x")):
        assert fig.get_figwidth() <= viz.MAX_FIGURE_WIDTH + 1e-9
        plt.close(fig)


def test_figure_style_one_inline_format_and_resolution_and_readable_text():
    from helpers.chapter import FIGURE_STYLE, INLINE_FORMAT, use_figure_style

    use_figure_style()
    assert INLINE_FORMAT == "png" and plt.rcParams["figure.dpi"] == 72
    assert min(v for k, v in FIGURE_STYLE.items() if k.endswith("size")) >= viz.MIN_FONT_PX


def test_strongest_patches_and_cell_patch():
    import torch

    from helpers import viz

    maps = [torch.zeros(3, 4, 5) for _ in range(4)]
    maps[2][1, 3, 4] = 5.0                     # one strong cell in a corner: neighbourhood mean 5/9
    maps[0][1, 1, 1] = 6.0                     # the same peak as image 3's (mean 6/9) ...
    maps[3][1, 1:3, 1:3] = 6.0                 # ... but image 3 responds over a whole region (24/9)
    assert viz.strongest_patches(maps, 1, 3) == [(3, 1, 1), (0, 0, 0), (2, 2, 3)]
    image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    # cells of 10 x 10 pixels: a 2 x 2-cell patch around the bottom-right cell is clipped at the border
    np.testing.assert_array_equal(viz.cell_patch(image, (4, 5), 3, 4, cells=2), image[25:40, 35:50])
    np.testing.assert_array_equal(viz.cell_patch(image, (4, 5), 1, 1, cells=2), image[5:25, 5:25])

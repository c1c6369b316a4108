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
    assert titles == ["query: a", "easy", "hard", "junk"]


def test_channel_figure_ranks_channels_by_peak():
    img = np.zeros((20, 25, 3), np.uint8)
    fig, c0 = viz.channel_figure(TinyBackbone(), img, "x", rank=0)
    plt.close(fig)
    fig, c1 = viz.channel_figure(TinyBackbone(), img, "x", rank=1)
    plt.close(fig)
    assert (c0, c1) == (2, 0)
    with pytest.raises(ValueError, match="rank must lie in"):
        viz.channel_figure(TinyBackbone(), img, "x", rank=3)


def test_pooling_panels_figure_draws_six_panels_and_every_rmac_region():
    from helpers import pooling

    fmap = torch.rand(16, 6, 8)
    fig = viz.pooling_panels_figure(np.zeros((60, 80, 3), np.uint8), fmap)
    n_boxes = len(fig.axes[5].patches)
    plt.close(fig)
    assert len(fig.axes) == 6
    assert n_boxes == len(pooling.rmac_regions(6, 8, L=3))


def test_result_strips_orders_by_score_and_checks_shape(tmp_path):
    dataset = TinyDataset(tmp_path)
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    fig = viz.result_strips(dataset, scores, [0, 1], top_k=2, title="GeM")
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert titles == ["a", "#1 (0.80)", "#2 (0.50)", "b", "#1 (0.90)", "#2 (0.50)"]
    with pytest.raises(ValueError, match="n_db x n_queries"):
        viz.result_strips(dataset, scores.T, [0], top_k=2)

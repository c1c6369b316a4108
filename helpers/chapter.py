"""The set-up every chapter starts with, in one call: the figure style, the seeds, the dataset, the
backbone, the training set and the figure folder named by the chapter's parameters cell.

    from helpers.chapter import setup
    ch = setup(DATASET, BACKBONE, IMAGE_SIZE, FIGURE_DIR)          # prints one summary line
    ch.dataset, ch.backbone, ch.train_name, ch.figure_dir, ch.device
    ch.warm_cache()       # chapter 00: one network pass per split caches every tap the book reads
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Chapter", "FIGURE_STYLE", "INLINE_FORMAT", "book_taps", "setup", "use_figure_style"]

#: One look across the series: inline figures as PNG at 72 dpi (a point is a pixel, so 9-pt text
#: shows 9 px high in a figure no wider than ``helpers.viz.MAX_FIGURE_WIDTH``; PNG keeps thin lines
#: and small numbers sharp where JPEG smears them), saved figures as PNG at 100 dpi
#: (:func:`helpers.viz.save_figure`), text at least 9 pt.
INLINE_FORMAT = "png"
FIGURE_STYLE = {"figure.dpi": 72, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
                "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 11}


def use_figure_style() -> None:
    """Apply :data:`FIGURE_STYLE` and inline :data:`INLINE_FORMAT` output (when running inside IPython;
    the same as ``%config InlineBackend.figure_formats = ['png']``)."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(FIGURE_STYLE)
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats(INLINE_FORMAT)
    except Exception:  # outside a notebook kernel: nothing to configure
        pass


def book_taps(backbone) -> tuple[list[str], list[str]]:
    """``(map taps, vector taps)`` that the chapters read at their defaults: the maps of the last conv
    map (chapters 02, 05, 06), of ACTNET's streams (03, :func:`helpers.actnet.default_layers`), of the
    paper's multi-layer pair (04, :func:`helpers.multilayer.paper_layer_roles`) and of ``fc``; the
    pooled vectors of every conv tap (02's layer comparison, 04's pooled layers)."""
    from .actnet import default_layers
    from .multilayer import paper_layer_map, paper_layer_roles

    roles = paper_layer_map(backbone)
    maps = [backbone.last_conv, *default_layers(backbone),
            *(roles[r] for r in paper_layer_roles(backbone.name) if r in roles), "fc"]
    return list(dict.fromkeys(backbone.resolve(t) for t in maps)), backbone.conv_layers


@dataclass
class Chapter:
    """What a chapter works on (see :func:`setup`)."""

    dataset: object
    backbone: object
    image_size: int
    figure_dir: Path
    train_name: str | None
    device: torch.device

    def train_dataset(self):
        """The disjoint training dataset (loaded on first use)."""
        from .data import check_training_set, load_dataset

        train = load_dataset(self.train_name)
        check_training_set(train, self.dataset)
        return train

    def warm_cache(self) -> dict[str, float]:
        """Fill the feature cache with every tap of :func:`book_taps`, in one pass of the network per
        split: the dataset's database and queries (cropped and whole) and the training set's database
        and queries. Each chapter computes what it misses on its own, so this only saves time:
        run separately, the chapters would pass over the same images once per tap. Returns the
        seconds spent per split (0 where everything was cached already)."""
        import time

        from .features import prefetch

        map_taps, vector_taps = book_taps(self.backbone)
        last = [self.backbone.last_conv]
        plan = [(self.dataset, "db", map_taps, vector_taps), (self.dataset, "query", map_taps, vector_taps),
                (self.dataset, "query_full", last, last)]
        if self.train_name is not None:
            train = self.train_dataset()
            plan += [(train, "db", map_taps, vector_taps), (train, "query", last, last)]
        seconds = {}
        for dataset, split, maps, vectors in plan:
            start = time.perf_counter()
            prefetch(dataset, self.backbone, self.image_size, split, map_layers=maps, vector_layers=vectors)
            seconds[f"{dataset.name} {split}"] = time.perf_counter() - start
        return seconds


def setup(dataset_name: str, backbone_name: str, image_size: int, figure_dir, train_dataset: str | None = None,
          seed: int = 0, verbose: bool = True) -> Chapter:
    """Load the chapter's dataset and backbone by name, fix the seeds, apply the figure style.

    ``train_dataset`` None picks the default disjoint training set
    (:func:`helpers.data.default_train_dataset`); the training set is checked not to be the
    evaluated one (:func:`helpers.data.check_training_set`) when it is loaded.
    """
    from .backbones import load_backbone
    from .data import default_train_dataset, load_dataset
    from .images import check_image_size

    use_figure_style()
    torch.manual_seed(seed)
    np.random.seed(seed)
    dataset = load_dataset(dataset_name)
    backbone = load_backbone(backbone_name)
    image_size = check_image_size(image_size)
    train_name = train_dataset or default_train_dataset(dataset_name)
    chapter = Chapter(dataset, backbone, image_size, Path(figure_dir), train_name, backbone.device)
    if verbose:
        print(f"{dataset.summary().split(', images in')[0]}\nbackbone {backbone.name} on {backbone.device.type}, "
              f"images at {image_size} px, training set {train_name}")
    return chapter

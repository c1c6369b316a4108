"""The set-up every chapter starts with, in one call: the figure style, the seeds, the dataset, the
backbone, the training set and the figure folder named by the chapter's parameters cell.

    from helpers.chapter import setup
    ch = setup(DATASET, BACKBONE, IMAGE_SIZE, FIGURE_DIR)          # prints one summary line
    ch.dataset, ch.backbone, ch.train_name, ch.figure_dir, ch.device
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Chapter", "FIGURE_STYLE", "INLINE_FORMAT", "setup", "use_figure_style"]

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

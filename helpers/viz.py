"""Figures that several notebooks share: saving, boxes on images, heat maps, result strips."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

__all__ = ["heatmap_over_image", "interactive_view", "label_colors", "query_thumbnail", "relevance_of", "result_strip", "save_figure",
           "show_boxes", "show_image"]

#: border colours of a result strip
RESULT_COLORS = {"positive": "#1a9850", "negative": "#d73027", "junk": "#969696", "query": "#4575b4"}


def save_figure(fig, name: str, figure_dir, dpi: int = 100) -> Path:
    """Save ``fig`` as ``<figure_dir>/<name>.png`` (folders created) and return the path."""
    if not name or os.sep in name or "/" in name:
        raise ValueError(f"figure name must be a plain file name, got {name!r}")
    folder = Path(figure_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def show_image(ax, img, title: str | None = None, fontsize: int = 9):
    """Show an RGB image without axes ticks."""
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)
    return ax


def show_boxes(ax, img, boxes, colors="yellow", labels=None, linewidth: float = 2.0, title=None):
    """Draw ``img`` and boxes ``[x1, y1, x2, y2]`` (pixels) on ``ax``."""
    show_image(ax, img, title)
    boxes = [] if boxes is None else list(boxes)
    if isinstance(colors, str):
        colors = [colors] * len(boxes)
    for k, (box, color) in enumerate(zip(boxes, colors)):
        x1, y1, x2, y2 = [float(v) for v in box]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth))
        if labels is not None:
            ax.text(x1 + 2, y1 + 2, str(labels[k]), color="white", fontsize=7, va="top",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1, alpha=0.8))
    return ax


def heatmap_over_image(ax, img, amap, alpha: float = 0.5, cmap: str = "jet", title=None):
    """An activation map (any ``h x w``) stretched over the image it came from."""
    show_image(ax, img, title)
    H, W = img.shape[:2]
    amap = np.asarray(amap, dtype=np.float32)
    ax.imshow(amap, cmap=cmap, alpha=alpha, extent=(0, W, H, 0), interpolation="bilinear")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    return ax


def label_colors(labels, palette: str = "tab20"):
    """One colour per distinct label, stable for a given label set."""
    cmap = plt.get_cmap(palette)
    distinct = sorted(set(labels))
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(distinct)}


def _border(ax, color, width=4):
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)
        spine.set_visible(True)


def relevance_of(gnd_entry, index: int) -> str:
    """``"positive"`` (easy or hard), ``"junk"`` or ``"negative"`` for database image ``index``."""
    if index in gnd_entry.get("easy", []) or index in gnd_entry.get("hard", []):
        return "positive"
    if index in gnd_entry.get("junk", []):
        return "junk"
    return "negative"


def query_thumbnail(dataset, q: int, max_side: int = 256):
    """The whole query image ``q`` resized to ``max_side`` and its box scaled to it (or None)."""
    from .images import displayed_size, load_image

    img = load_image(dataset.query_path(q), max_side=max_side)
    bbx = dataset.gnd[q].get("bbx")
    if bbx is None:
        return img, None
    full_h, _ = displayed_size(dataset.query_path(q))
    return img, [float(v) * img.shape[0] / full_h for v in bbx]


def result_strip(axes, query_img, ranked_imgs, relevances, query_title="query", titles=None, query_box=None):
    """One row: the query (blue border, its box in yellow) then the top results with green (right),
    red (wrong) or grey (junk, ignored by the protocol) borders. ``axes`` has ``1 + len(ranked_imgs)``
    axes."""
    show_boxes(axes[0], query_img, [query_box] if query_box is not None else [], "yellow", title=query_title)
    _border(axes[0], RESULT_COLORS["query"])
    for k, (ax, img, rel) in enumerate(zip(axes[1:], ranked_imgs, relevances)):
        show_image(ax, img, titles[k] if titles else f"#{k + 1}")
        _border(ax, RESULT_COLORS[rel])
    return axes


def interactive_view(function, **controls):
    """Widgets that redraw ``function(**their values)`` below them whenever one of them moves.

    ``controls`` maps ``function``'s keyword arguments to ipywidgets controls (sliders, dropdowns…).
    Unlike ``ipywidgets.interact`` nothing is drawn at creation, so draw the default view in the cell
    before (it is then also in the committed notebook and its figure file). ``interact`` runs the
    function inside an Output widget as it is created, a known cause of intermittent hangs of
    headless execution (jupyter/nbclient#312: the run_suite/run_tests commands). Returns the widget
    box: make it the cell's last expression to show it.
    """
    import ipywidgets as widgets

    if not controls:
        raise ValueError("interactive_view needs at least one control")
    for name, control in controls.items():
        if not hasattr(control, "observe") or not hasattr(control, "value"):
            raise TypeError(f"control {name!r} is not an ipywidgets value widget: {control!r}")
        if not getattr(control, "description", ""):
            control.description = name
    view = widgets.Output()

    def redraw(change=None):
        with view:
            view.clear_output(wait=True)
            function(**{name: control.value for name, control in controls.items()})

    for control in controls.values():
        control.observe(redraw, names="value")
    items = list(controls.values())
    rows = [widgets.HBox(items[i:i + 3]) for i in range(0, len(items), 3)]
    return widgets.VBox(rows + [widgets.Label("move a control: the view is redrawn below"), view])

"""Figures that the notebooks share: saving, boxes on images, heat maps and label maps over images,
map mosaics, result strips, a mapping over a histogram, interactive views."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

__all__ = ["draw_boxes", "heatmap_over_image", "interactive_view", "label_colors", "mapping_over_histogram", "mosaic",
           "query_thumbnail", "relevance_of", "result_strip", "save_figure", "show_boxes", "show_image", "show_labels"]

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


def draw_boxes(ax, boxes, colors="yellow", labels=None, linewidth: float = 2.0, alpha: float = 1.0,
               fontsize: float = 7):
    """Boxes ``[x1, y1, x2, y2]`` (pixels) on what ``ax`` shows, box ``k`` in ``colors[k]`` (or all in
    one colour), with ``labels[k]`` written in its corner when labels are given."""
    boxes = [] if boxes is None else list(boxes)
    if isinstance(colors, str):
        colors = [colors] * len(boxes)
    if len(colors) < len(boxes):
        raise ValueError(f"{len(boxes)} boxes but only {len(colors)} colours")
    labels = None if labels is None else list(labels)
    for k, (box, color) in enumerate(zip(boxes, colors)):
        x1, y1, x2, y2 = [float(v) for v in box]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth,
                               alpha=alpha))
        if labels is not None:
            ax.text(x1 + 2, y1 + 2, str(labels[k]), color="white", fontsize=fontsize, va="top",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1, alpha=0.8))
    return ax


def show_boxes(ax, img, boxes, colors="yellow", labels=None, linewidth: float = 2.0, title=None):
    """Draw ``img`` and boxes ``[x1, y1, x2, y2]`` (pixels) on ``ax``."""
    show_image(ax, img, title)
    return draw_boxes(ax, boxes, colors, labels, linewidth)


def mosaic(maps, cols: int = 4, gap: int = 1) -> np.ndarray:
    """Tile ``n`` maps ``h x w`` into one array, ``cols`` per row, with NaN gaps (drawn blank by
    ``imshow``) between the tiles and after the last one."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"maps must be n x h x w with n >= 1, got shape {maps.shape}")
    if cols < 1 or gap < 0:
        raise ValueError(f"need cols >= 1 and gap >= 0, got cols={cols}, gap={gap}")
    n, h, w = maps.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = maps[i]
    return out


def heatmap_over_image(ax, img, amap, alpha: float = 0.5, cmap: str = "jet", title=None,
                       interpolation: str = "bilinear", vmin=None, vmax=None):
    """An activation map (any ``h x w``) stretched over the image it came from (``vmin`` / ``vmax``
    fix the colour scale; ``ax.images[-1]`` is the map, e.g. for a colour bar)."""
    show_image(ax, img, title)
    H, W = img.shape[:2]
    amap = np.asarray(amap, dtype=np.float32)
    ax.imshow(amap, cmap=cmap, alpha=alpha, extent=(0, W, H, 0), interpolation=interpolation, vmin=vmin, vmax=vmax)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    return ax


def show_labels(ax, img, labels, title=None, alpha: float = 0.6):
    """A label map (``h x w`` cells, e.g. clusters) stretched over the image, one colour per label
    (:func:`label_colors`)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an h x w array, got shape {labels.shape}")
    show_image(ax, img, title)
    H, W = img.shape[:2]
    colours = label_colors(np.unique(labels).tolist())
    rgb = np.array([colours[v][:3] for v in labels.ravel()]).reshape(labels.shape + (3,))
    ax.imshow(rgb, alpha=alpha, extent=(0, W, H, 0), interpolation="nearest")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    return ax


def mapping_over_histogram(ax, values, x, mapped, values_label: str, mapping_label: str, xlabel: str,
                           title=None, mapped_ylabel: str = "mapped value", identity_label: str = "identity",
                           bins: int = 40, value_range=(0.0, 1.0)):
    """The density histogram of ``values`` (grey) and, on a twin axis, a mapping of them ``mapped(x)``
    (red) with the identity (dashed) for reference. Returns the twin axis."""
    x, mapped = np.asarray(x), np.asarray(mapped)
    if x.shape != mapped.shape:
        raise ValueError(f"x and mapped must have the same shape, got {x.shape} and {mapped.shape}")
    ax.hist(np.ravel(values), bins=bins, range=value_range, density=True, color="#cccccc", label=values_label)
    twin = ax.twinx()
    twin.plot(x, mapped, color="C3", lw=2, label=mapping_label)
    twin.plot(x, x, color="k", lw=0.8, ls="--", label=identity_label)
    twin.set_ylim(value_range[0], value_range[1] * 1.02)
    twin.set_ylabel(mapped_ylabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=9)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    twin.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    return twin


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


def ground_truth_figure(dataset, q: int, image_size: int, n_each: int = 3):
    """Query ``q`` (its box in yellow) and its first ``n_each`` easy, hard and junk database images,
    bordered green, orange and grey."""
    from .images import load_image

    groups = [("easy", "#1a9850"), ("hard", "#fc8d59"), ("junk", "#969696")]
    picks = [(i, kind, color) for kind, color in groups for i in dataset.gnd[q].get(kind, [])[:n_each]]
    fig, axes = plt.subplots(1, 1 + len(picks), figsize=(2.1 * (1 + len(picks)), 2.6), squeeze=False)
    query, box = query_thumbnail(dataset, q, image_size)
    label = dataset.query_labels[q] if dataset.query_labels else f"query {q}"
    show_boxes(axes[0, 0], query, [box] if box is not None else [], "yellow", title=f"query: {label}")
    for ax, (i, kind, color) in zip(axes[0, 1:], picks):
        show_image(ax, load_image(dataset.db_path(i), max_side=image_size // 2), kind)
        _border(ax, color)
    fig.suptitle("borders: green = easy, orange = hard, grey = junk (ignored by the protocol)", fontsize=9, y=0.02)
    fig.tight_layout()
    return fig


__all__ += ["ground_truth_figure"]


def channel_figure(backbone, image, layer: str, rank: int = 0):
    """The image and one channel of ``layer`` over it: the channel with the ``rank``-th strongest
    peak response on this image (rank 0 = the most active). Returns ``(figure, channel index)``."""
    fmap = backbone.forward_taps(backbone.preprocess(image), [layer])[layer][0]
    order = fmap.amax(dim=(1, 2)).argsort(descending=True)
    if not 0 <= rank < len(order):
        raise ValueError(f"rank must lie in [0, {len(order) - 1}] (the channels of {layer}), got {rank}")
    c = int(order[rank])
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    show_image(axes[0], image, "image")
    heatmap_over_image(axes[1], image, fmap[c].float().cpu().numpy(), title=f"{layer}, channel {c} (rank {rank})")
    fig.tight_layout()
    return fig, c


__all__ += ["channel_figure"]


def pooling_panels_figure(image, fmap, p: float = 3.0, L: int = 3):
    """Where each pooling takes its information from on one ``C x h x w`` map of ``image``: MAC (log
    count of channels peaking per cell), SPoC (mean activation), GeM (each cell's share of the sum of
    x^p), CroW (spatial weights) and the R-MAC regions (one colour per scale)."""
    import torch

    from . import pooling

    fmap = torch.as_tensor(fmap, dtype=torch.float32)
    C, h, w = fmap.shape
    mac_counts = torch.bincount(fmap.reshape(C, -1).argmax(dim=1), minlength=h * w).reshape(h, w).float()
    gem_mass = fmap.clamp(min=1e-6).pow(p).sum(0)
    panels = [("MAC: where channels peak (log count)", torch.log1p(mac_counts)), ("SPoC: mean activation", fmap.mean(0)),
              (f"GeM p={p:g}: share of sum x^p", gem_mass / gem_mass.sum()),
              ("CroW: spatial weights s", pooling.crow_spatial_weights(fmap))]
    fig, axes = plt.subplots(1, 6, figsize=(19, 2.9))
    show_image(axes[0], image, "image")
    for ax, (title, amap) in zip(axes[1:5], panels):
        heatmap_over_image(ax, image, amap.numpy(), alpha=0.55, title=title)
    sx, sy = image.shape[1] / w, image.shape[0] / h
    regions = pooling.rmac_regions(h, w, L=L)
    sides = sorted({r[2] for r in regions}, reverse=True)  # one region side per scale; insets keep nested edges apart
    colors = dict(zip(sides, ["#e41a1c", "#ffd700", "#00bfff", "#984ea3", "#ff7f00"]))
    boxes = [[x * sx + 2 * k, y * sy + 2 * k, (x + rw) * sx - 2 * k, (y + rh) * sy - 2 * k]
             for x, y, rw, rh in regions for k in [sides.index(rw)]]
    show_boxes(axes[5], image, boxes, [colors[r[2]] for r in regions], linewidth=1.2,
               title=f"R-MAC: {len(regions)} regions (red/yellow/blue: l=1/2/3)")
    fig.tight_layout()
    return fig


__all__ += ["pooling_panels_figure"]


def result_strips(dataset, scores, queries, top_k: int = 8, title: str = "", max_side: int = 256):
    """One :func:`result_strip` row per query of ``queries``: the query then its ``top_k`` results
    under ``scores`` (n_db x n_q similarities), each titled with its rank and score."""
    from .evaluate import ranks_from_scores
    from .images import load_image

    scores = np.asarray(scores)
    if scores.shape != (dataset.n_db, dataset.n_queries):
        raise ValueError(f"scores must be n_db x n_queries = {(dataset.n_db, dataset.n_queries)}, got {scores.shape}")
    ranks = ranks_from_scores(scores)
    fig, axes = plt.subplots(len(queries), 1 + top_k, figsize=(1.9 * (1 + top_k), 1.9 * len(queries)), squeeze=False)
    for row, q in zip(axes, queries):
        query_img, query_box = query_thumbnail(dataset, q, max_side)
        top = ranks[:top_k, q]
        label = dataset.query_labels[q] if dataset.query_labels else f"query {q}"
        result_strip(row, query_img, [load_image(dataset.db_path(i), max_side=max_side) for i in top],
                     [relevance_of(dataset.gnd[q], int(i)) for i in top], query_title=label, query_box=query_box,
                     titles=[f"#{k + 1} ({scores[i, q]:.2f})" for k, i in enumerate(top)])
    fig.suptitle(f"{title}: top {top_k} (green right, red wrong, grey junk)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ += ["result_strips"]

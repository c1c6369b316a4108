"""Figures that the notebooks share: saving, boxes on images, heat maps and label maps over images,
map mosaics, result strips, a mapping over a histogram, interactive views."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.patheffects as path_effects
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

__all__ = ["QUERY_BOX_COLOR", "draw_boxes", "heatmap_over_image", "interactive_view", "label_colors", "mapping_over_histogram", "mosaic",
           "query_thumbnail", "relevance_of", "result_strip", "save_figure", "show_boxes", "show_image", "show_labels"]

#: border colours of a result strip
RESULT_COLORS = {"positive": "#1a9850", "negative": "#d73027", "junk": "#969696", "query": "#4575b4"}

#: the colour of a query's bounding box, in every figure of the series
QUERY_BOX_COLOR = "yellow"

#: the smallest text, in pixels as the notebook displays it (:func:`smallest_displayed_font`)
MIN_FONT_PX = 9.0

#: the width (pixels) of a notebook's output column: wider figures are shrunk to it, and their text with them
OUTPUT_COLUMN_PX = 940

#: the widest figure (inches) shown at full size in the output column at the series' 72 dpi
MAX_FIGURE_WIDTH = 13.0


def text_color_for(color) -> str:
    """``"black"`` or ``"white"``, whichever reads better on ``color`` (its relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def smallest_displayed_font(fig, column_px: float = OUTPUT_COLUMN_PX) -> float:
    """The size in pixels of the smallest visible text of ``fig`` as a notebook shows it inline: points
    are pixels at the series' 72 dpi, and a figure wider than the output column is shrunk to fit it."""
    fig.canvas.draw()
    width_px = fig.get_figwidth() * fig.dpi
    shrink = min(1.0, column_px / width_px)
    sizes = [t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * fig.dpi / 72 * shrink if sizes else float("inf")


__all__ += ["MIN_FONT_PX", "smallest_displayed_font", "text_color_for"]


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
               fontsize: float = 10, outline: bool = True):
    """Boxes ``[x1, y1, x2, y2]`` (pixels) on what ``ax`` shows, box ``k`` in ``colors[k]`` (or all in
    one colour), with ``labels[k]`` written in its top-left corner when labels are given.

    ``outline`` draws a dark edge around each line, so that a yellow or cyan box stays visible on a
    light image. A label is written in black or white, whichever reads on its box's colour; labels
    whose corners fall close together are stacked downwards instead of covering each other."""
    boxes = [] if boxes is None else list(boxes)
    if isinstance(colors, str):
        colors = [colors] * len(boxes)
    if len(colors) < len(boxes):
        raise ValueError(f"{len(boxes)} boxes but only {len(colors)} colours")
    labels = None if labels is None else list(labels)
    stroke = [path_effects.Stroke(linewidth=linewidth + 2, foreground="black"), path_effects.Normal()]
    placed = []  # (x, y) in points of the labels written so far
    for k, (box, color) in enumerate(zip(boxes, colors)):
        x1, y1, x2, y2 = [float(v) for v in box]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth,
                               alpha=alpha, path_effects=stroke if outline else None))
        if labels is not None:
            text = str(labels[k])
            anchor = ax.transData.transform((x1, y1)) * 72 / ax.figure.dpi
            size = (0.62 * fontsize * len(text) + 6, 1.5 * fontsize)  # the label's box in points
            dy = 0.0
            while any(abs(anchor[0] - px) < size[0] and abs(anchor[1] - dy - py) < size[1] for px, py in placed):
                dy += size[1]
            placed.append((anchor[0], anchor[1] - dy))
            ax.annotate(text, (x1, y1), xytext=(3, -3 - dy), textcoords="offset points", color=text_color_for(color),
                        fontsize=fontsize, va="top", ha="left", annotation_clip=False,
                        bbox=dict(facecolor=color, edgecolor="black", linewidth=0.8, pad=1.5, alpha=0.9))
    return ax


def show_boxes(ax, img, boxes, colors=QUERY_BOX_COLOR, labels=None, linewidth: float = 2.0, title=None):
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
                       interpolation: str = "bilinear", vmin=None, vmax=None, colorbar=None):
    """An activation map (any ``h x w``) stretched over the image it came from (``vmin`` / ``vmax``
    fix the colour scale; ``ax.images[-1]`` is the map). ``colorbar``: a label (or True) adds a
    colour bar beside the axes, so that a colour reads as a value."""
    show_image(ax, img, title)
    H, W = img.shape[:2]
    amap = np.asarray(amap, dtype=np.float32)
    shown = ax.imshow(amap, cmap=cmap, alpha=alpha, extent=(0, W, H, 0), interpolation=interpolation, vmin=vmin,
                      vmax=vmax)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    if colorbar is not None and colorbar is not False:
        bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.solids.set_alpha(1.0)
        if isinstance(colorbar, str):
            bar.set_label(colorbar)
    return ax


def show_labels(ax, img, labels, title=None, alpha: float = 0.6, borders: bool = True):
    """A label map (``h x w`` cells, e.g. clusters) stretched over the image, one colour per label
    (:func:`label_colors`: tab10 up to 10 labels), with dark lines between cells of different labels
    (``borders``) so that neighbouring regions stay apart where their colours mix with the photo."""
    from matplotlib.collections import LineCollection

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an h x w array, got shape {labels.shape}")
    show_image(ax, img, title)
    H, W = img.shape[:2]
    colours = label_colors(np.unique(labels).tolist())
    rgb = np.array([colours[v][:3] for v in labels.ravel()]).reshape(labels.shape + (3,))
    ax.imshow(rgb, alpha=alpha, extent=(0, W, H, 0), interpolation="nearest")
    if borders:
        h, w = labels.shape
        sx, sy = W / w, H / h
        rows, cols = np.nonzero(labels[:, 1:] != labels[:, :-1])
        segments = [[((c + 1) * sx, r * sy), ((c + 1) * sx, (r + 1) * sy)] for r, c in zip(rows, cols)]
        rows, cols = np.nonzero(labels[1:, :] != labels[:-1, :])
        segments += [[(c * sx, (r + 1) * sy), ((c + 1) * sx, (r + 1) * sy)] for r, c in zip(rows, cols)]
        ax.add_collection(LineCollection(segments, colors="black", linewidths=1.2))
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
    twin.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=9)
    return twin


def label_colors(labels, palette: str | None = None):
    """One colour per distinct label, stable for a given label set: ``palette`` None takes tab10 for
    up to 10 labels (the most distinct qualitative colours), tab20 for more."""
    distinct = sorted(set(labels))
    cmap = plt.get_cmap(palette or ("tab10" if len(distinct) <= 10 else "tab20"))
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
    """One row: the query (blue border, its box in :data:`QUERY_BOX_COLOR`) then the top results with green (right),
    red (wrong) or grey (junk, ignored by the protocol) borders. ``axes`` has ``1 + len(ranked_imgs)``
    axes."""
    show_boxes(axes[0], query_img, [query_box] if query_box is not None else [], QUERY_BOX_COLOR, title=query_title)
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
    side = min(2.1, MAX_FIGURE_WIDTH / (1 + len(picks)))  # the whole row within the output column
    fig, axes = plt.subplots(1, 1 + len(picks), figsize=(side * (1 + len(picks)), side + 1.0), squeeze=False)
    query, box = query_thumbnail(dataset, q, image_size)
    label = dataset.query_labels[q] if dataset.query_labels else f"query {q}"
    show_boxes(axes[0, 0], query, [box] if box is not None else [], QUERY_BOX_COLOR, title=f"query:\n{label}")
    for ax, (i, kind, color) in zip(axes[0, 1:], picks):
        show_image(ax, load_image(dataset.db_path(i), max_side=image_size // 2), kind)
        _border(ax, color)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.text(0.5, 0.01, "borders: green = easy, orange = hard, grey = junk (ignored by the protocol)", ha="center",
             va="bottom", fontsize=10)
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
    fig, axes = plt.subplots(1, 2, figsize=(7.4, 2.9))
    show_image(axes[0], image, "image")
    heatmap_over_image(axes[1], image, fmap[c].float().cpu().numpy(), title=f"{layer}, channel {c} (rank {rank})",
                       colorbar="activation")
    fig.tight_layout()
    return fig, c


__all__ += ["channel_figure"]


def pooling_panels_figure(image, fmap, p: float = 3.0, L: int = 3):
    """Where each pooling takes its information from on one ``C x h x w`` map of ``image``. Upper
    row: the image, MAC (log count of channels peaking per cell), SPoC (mean activation), GeM (each
    cell's share of the sum of x^p), CroW (spatial weights), each with its colour bar. Lower row: the
    R-MAC regions, one level ``l = 1..L`` per panel, each square in its own colour."""
    import torch

    from . import pooling

    fmap = torch.as_tensor(fmap, dtype=torch.float32)
    C, h, w = fmap.shape
    mac_counts = torch.bincount(fmap.reshape(C, -1).argmax(dim=1), minlength=h * w).reshape(h, w).float()
    gem_mass = fmap.clamp(min=1e-6).pow(p).sum(0)
    panels = [("MAC: where channels\npeak", torch.log1p(mac_counts), "log(1 + channels)"),
              ("SPoC: mean activation", fmap.mean(0), "mean over channels"),
              (f"GeM p={p:g}: each cell's\nshare of the sum of x^p", gem_mass / gem_mass.sum(), "share"),
              ("CroW: spatial\nweights s", pooling.crow_spatial_weights(fmap), "weight")]
    regions = pooling.rmac_regions(h, w, L=L)
    sides = sorted({r[2] for r in regions}, reverse=True)  # one square side per level, largest first
    cols = max(5, len(sides))
    fig, axes = plt.subplots(2, cols, figsize=(MAX_FIGURE_WIDTH, 5.8), squeeze=False)
    show_image(axes[0, 0], image, "image")
    for ax, (title, amap, label) in zip(axes[0, 1:5], panels):
        heatmap_over_image(ax, image, amap.numpy(), alpha=0.55, title=title, colorbar=label)
    sx, sy = image.shape[1] / w, image.shape[0] / h
    palette = [plt.cm.tab10(i) for i in range(10)]
    for ax, side in zip(axes[1], sides):
        level = [r for r in regions if r[2] == side]
        boxes = [[x * sx + 3, y * sy + 3, (x + rw) * sx - 3, (y + rh) * sy - 3] for x, y, rw, rh in level]
        show_boxes(ax, image, boxes, [palette[k % 10] for k in range(len(level))], linewidth=2.0,
                   title=f"R-MAC level l={sides.index(side) + 1}:\n{len(level)} squares of {side}x{side} cells")
    for ax in list(axes[0, 5:]) + list(axes[1, len(sides):]):
        ax.axis("off")
    fig.suptitle(f"What each pooling keeps of one {h}x{w} map ({len(regions)} R-MAC regions for L={L})")
    fig.tight_layout()
    return fig


__all__ += ["pooling_panels_figure"]


def _ranked_row(row, dataset, scores, q, top_k, ranks, query_title, max_side):
    from .images import load_image

    query_img, query_box = query_thumbnail(dataset, q, max_side)
    top = ranks[:top_k, q]
    result_strip(row, query_img, [load_image(dataset.db_path(i), max_side=max_side) for i in top],
                 [relevance_of(dataset.gnd[q], int(i)) for i in top], query_title=query_title, query_box=query_box,
                 titles=[f"#{k + 1} ({scores[i, q]:.2f})" for k, i in enumerate(top)])


def _checked_scores(dataset, scores):
    scores = np.asarray(scores)
    if scores.shape != (dataset.n_db, dataset.n_queries):
        raise ValueError(f"scores must be n_db x n_queries = {(dataset.n_db, dataset.n_queries)}, got {scores.shape}")
    return scores


def result_strips(dataset, scores, queries, top_k: int = 8, title: str = "", max_side: int = 256):
    """One :func:`result_strip` row per query of ``queries``: the query then its ``top_k`` results
    under ``scores`` (n_db x n_q similarities), each titled with its rank and score."""
    from .evaluate import ranks_from_scores

    scores = _checked_scores(dataset, scores)
    ranks = ranks_from_scores(scores)
    side = min(1.9, MAX_FIGURE_WIDTH / (1 + top_k))
    fig, axes = plt.subplots(len(queries), 1 + top_k, figsize=(side * (1 + top_k), (side + 0.25) * len(queries) + 0.4),
                             squeeze=False)
    for row, q in zip(axes, queries):
        label = dataset.query_labels[q] if dataset.query_labels else f"query {q}"
        _ranked_row(row, dataset, scores, q, top_k, ranks, label, max_side)
    fig.suptitle(f"{title}: top {top_k} (green right, red wrong, grey junk)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ += ["result_strips"]


def method_strips(dataset, scores_by_method: dict, query, top_k: int = 6, max_side: int = 256):
    """The top ``top_k`` of one query (an int) or of several (a list) under several methods: one row
    per query and method (``{name: n_db x n_q scores}``), each row titled with the method's name and
    the query's AP under it; borders green (right), red (wrong) or grey (junk)."""
    from .evaluate import evaluate_scores, per_query_ap, ranks_from_scores

    queries = [int(query)] if np.ndim(query) == 0 else [int(q) for q in query]
    checked = {name: _checked_scores(dataset, scores) for name, scores in scores_by_method.items()}
    ranks = {name: ranks_from_scores(scores) for name, scores in checked.items()}
    aps = {name: per_query_ap(evaluate_scores(dataset, scores)) for name, scores in checked.items()}
    n_rows = len(queries) * len(checked)
    side = min(1.9, MAX_FIGURE_WIDTH / (1 + top_k))
    fig, axes = plt.subplots(n_rows, 1 + top_k, figsize=(side * (1 + top_k), (side + 0.45) * n_rows + 0.4),
                             squeeze=False)
    rows = iter(axes)
    for q in queries:
        for name, scores in checked.items():
            title = f"{name}\nAP {aps[name][q]:.1f}" if len(queries) == 1 else f"query {q}: {name}\nAP {aps[name][q]:.1f}"
            _ranked_row(next(rows), dataset, scores, q, top_k, ranks[name], title, max_side)
    if len(queries) == 1:
        label = dataset.query_labels[queries[0]] if dataset.query_labels else f"query {queries[0]}"
        fig.suptitle(f"query {queries[0]} ({label}): top {top_k} (green right, red wrong, grey junk)", fontsize=10)
    else:
        fig.suptitle(f"top {top_k} of queries {', '.join(map(str, queries))} (green right, red wrong, grey junk)",
                     fontsize=10)
    fig.tight_layout()
    return fig


__all__ += ["method_strips"]


#: colours of ranked boxes (Set1 without its yellow, the query box's colour): distinct on photos
BOX_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")


def ranked_boxes(ax, img, boxes, title=None, max_boxes: int = 5, labels=None, fontsize: float = 10):
    """The first ``max_boxes`` of ``boxes`` (``[x1, y1, x2, y2]`` pixels, best first) on ``img``, each
    in its own colour of :data:`BOX_COLORS` with a dark outline, labelled with its rank (or
    ``labels``): few boxes, so that each can be followed. Returns the boxes drawn."""
    if max_boxes > len(BOX_COLORS):
        raise ValueError(f"at most {len(BOX_COLORS)} boxes can get distinct colours, got max_boxes={max_boxes}")
    H, W = img.shape[:2]
    m = 2.0  # a box along the image frame is drawn just inside it, not half hidden by the frame
    boxes = [[min(max(float(x1), m), W - m), min(max(float(y1), m), H - m), max(min(float(x2), W - m), m),
              max(min(float(y2), H - m), m)] for x1, y1, x2, y2 in list(boxes)[:max_boxes]]
    show_image(ax, img, title)
    labels = list(range(1, len(boxes) + 1)) if labels is None else list(labels)[:len(boxes)]
    draw_boxes(ax, boxes, list(BOX_COLORS[:len(boxes)]), labels=labels, linewidth=2.5, fontsize=fontsize)
    return boxes


def annotated_grid(ax, values, row_values, col_values, center: float, marked=None,
                   cmap: str = "RdBu_r", colorbar: str | None = None, fontsize: float = 9):
    """A table of numbers as a heat map (rows ``row_values`` bottom to top, columns ``col_values``),
    its colours diverging around ``center``, every cell's value written in black or white from the
    cell's own colour. ``marked`` = ``(row value, column value)`` frames that cell and stars its row
    and column on the axes (in bold), so that nothing is drawn over its number. Returns the image."""
    from matplotlib.colors import TwoSlopeNorm

    values = np.asarray(values, dtype=float)
    if values.shape != (len(row_values), len(col_values)):
        raise ValueError(f"values must be {len(row_values)} x {len(col_values)}, got {values.shape}")
    span = max(np.nanmax(np.abs(values - center)) if np.isfinite(values).any() else 0.0, 0.5)
    norm = TwoSlopeNorm(vcenter=center, vmin=center - span, vmax=center + span)
    im = ax.imshow(values, origin="lower", cmap=cmap, aspect="auto", norm=norm)
    colormap = plt.get_cmap(cmap)
    mark = None
    if marked is not None and marked[0] in list(row_values) and marked[1] in list(col_values):
        mark = (list(row_values).index(marked[0]), list(col_values).index(marked[1]))
    for a in range(values.shape[0]):
        for b in range(values.shape[1]):
            v = values[a, b]
            color = text_color_for(colormap(norm(v))) if np.isfinite(v) else "black"
            ax.text(b, a, "–" if not np.isfinite(v) else f"{v:.1f}", ha="center", va="center", fontsize=fontsize,
                    color=color)
    cols = [f"{v:g}" for v in col_values]
    rows = [f"{v:g}" for v in row_values]
    if mark is not None:
        a, b = mark
        ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, ec="black", lw=2.2))
        rows[a], cols[b] = f"★ {rows[a]}", f"{cols[b]}\n★"
    ax.set_xticks(range(len(col_values)), cols)
    ax.set_yticks(range(len(row_values)), rows)
    if mark is not None:
        ax.get_xticklabels()[mark[1]].set_fontweight("bold")
        ax.get_yticklabels()[mark[0]].set_fontweight("bold")
    if colorbar is not None:
        ax.figure.colorbar(im, ax=ax, shrink=0.85, label=colorbar)
    return im


def clusters_figure(images, norm_maps, label_maps, titles, n_clusters: int, title: str = ""):
    """Fig. 7 of the clusters chapter: per image (one column each) the image, the l2 norm of its local
    descriptors over it (with a colour bar) and its clusters (:func:`show_labels`)."""
    if not len(images) == len(norm_maps) == len(label_maps) == len(titles):
        raise ValueError("images, norm_maps, label_maps and titles must have one entry per image")
    n = len(images)
    side = min(3.0, MAX_FIGURE_WIDTH / n)
    fig, axes = plt.subplots(3, n, figsize=(side * n + 0.6, 3 * side + 0.4), squeeze=False)
    for col, (img, norms, labels, name) in enumerate(zip(images, norm_maps, label_maps, titles)):
        show_image(axes[0, col], img, name)
        heatmap_over_image(axes[1, col], img, np.asarray(norms), alpha=0.6, colorbar="l2 norm" if col == n - 1 else True)
        show_labels(axes[2, col], img, labels)
    axes[1, 0].set_ylabel("l2 norm of\nthe descriptors")
    axes[2, 0].set_ylabel(f"{n_clusters} clusters")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ += ["BOX_COLORS", "annotated_grid", "clusters_figure", "ranked_boxes"]


def strongest_patches(maps, channel: int, n: int = 3) -> list[tuple[int, int, int]]:
    """Where channel ``channel`` responds most over a list of ``C x h x w`` maps: the ``n`` images whose
    3 x 3 neighbourhood of cells has the largest mean response, as ``(image index, row, column)`` of
    that neighbourhood's centre. The neighbourhood, not the single cell: behind a ReLU6 many images
    reach the ceiling of 6 in one cell, and ranking them by one cell would rank them by index."""
    import torch
    import torch.nn.functional as F

    peaks = []
    for i, fmap in enumerate(maps):
        values = torch.as_tensor(fmap[int(channel)]).float()[None, None]
        local = F.avg_pool2d(values, 3, stride=1, padding=1)[0, 0]   # zero padding: no border bias
        flat = int(torch.argmax(local))
        peaks.append((float(local.reshape(-1)[flat]), i, flat // local.shape[1], flat % local.shape[1]))
    peaks.sort(key=lambda p: (-p[0], p[1]))
    return [(i, r, c) for _, i, r, c in peaks[:n]]


def cell_patch(image: np.ndarray, map_hw, row: int, col: int, cells: float = 4.0) -> np.ndarray:
    """The square of ``cells`` x ``cells`` map cells centred on cell ``(row, col)``, cut from the image
    the map was computed on (clipped to the image): what a cell of that map looks at, roughly (its
    receptive field is larger)."""
    H, W = image.shape[:2]
    h, w = map_hw
    cy, cx = (row + 0.5) * H / h, (col + 0.5) * W / w
    half_y, half_x = cells * H / h / 2, cells * W / w / 2
    y0, y1 = int(max(0, cy - half_y)), int(min(H, cy + half_y))
    x0, x1 = int(max(0, cx - half_x)), int(min(W, cx + half_x))
    return image[y0:y1, x0:x1]


def strongest_patches_figure(dataset, maps_by_layer: dict, channels_by_layer: dict, image_size: int,
                             n: int = 4, cells: float = 4.0, title: str = ""):
    """One row per (layer, channel): the database patches where that channel responds most
    (:func:`strongest_patches`, :func:`cell_patch`). ``maps_by_layer``: ``{layer: [C x h x w per db
    image]}``; ``channels_by_layer``: ``{layer: [channel, ...]}``."""
    from .features import load_split_image

    rows = [(layer, c) for layer, chans in channels_by_layer.items() for c in chans]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.7 * n + 1.2, 1.75 * len(rows)), squeeze=False)
    for ax_row, (layer, c) in zip(axes, rows):
        maps = maps_by_layer[layer]
        for ax, (i, r, col) in zip(ax_row, strongest_patches(maps, c, n)):
            patch = cell_patch(load_split_image(dataset, "db", i, image_size), maps[i].shape[1:], r, col, cells)
            show_image(ax, patch, f"db {i}")
        ax_row[0].set_ylabel(f"{layer}\nch {c}", fontsize=9)
        ax_row[0].yaxis.label.set_visible(True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ += ["cell_patch", "strongest_patches", "strongest_patches_figure"]

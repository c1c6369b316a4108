"""Feature extraction with a progress bar and an on-disk cache.

Every consumer (notebooks, the CLI, benchmarks, tests) gets conv maps and pooled vectors from here,
so a dataset goes through the backbone once per (backbone, weights, image size, split).

Splits
------
``"db"``          the database images (``dataset.imlist``), resized to ``image_size`` on the long side;
``"query"``       the query images cropped by their ``bbx`` first, then resized ("crop I", as
                  cnnimageretrieval-pytorch does); queries without a box are used whole;
``"query_full"``  the query images uncropped (for methods that crop activations, "crop X").

When a query is a database image used whole (Holidays, UKBench, ``folder:``), its features are
taken from the ``"db"`` split instead of being computed twice.

Cache layout (``$INSTRET_CACHE`` or ``<repo>/cache``)::

    features/<dataset.key>/<backbone>-<weights_id>/<split>-<image_size>-v<CACHE_FORMAT>/
        meta.json                 image sizes, skipped files
        <layer>.maps.f16          the float16 C x h x w maps of all images, one after the other
        <layer>.maps.json         their shapes (written last: a maps entry exists when this does)
        <layer>.vectors.npz       one N x C float32 array per pooling (l2-normalised)

Every key (dataset identity, backbone, weights, layer, image size, split, cache format ``v<N>``) is part
of the path, so a change of any of them is a different entry. Files are written through
:func:`helpers.cache.atomic_write`, so an interrupted run never leaves a half-written entry. Delete the
folder to clear the cache.

Maps are streamed to disk image by image, not held in memory, so extracting the maps of a large
dataset needs the memory of one image's maps; the five poolings of a vector tap are computed in one
pass (:func:`helpers.pooling.pool_all`). ``benchmarks/extraction.py`` measures what this costs over a
bare forward pass.

Files that cannot be read (:class:`helpers.images.ImageReadError`) are skipped with a warning naming
the file and the reason; they keep their index with an all-zero feature, the run completes, and a
summary warning lists them. Every ``extract_*`` call (cold or warm) tells the dataset which images
were skipped (``dataset.mark_unreadable``), and :func:`helpers.evaluate.evaluate_scores` leaves them
out of the ground truth, as queries and as database images, so an unreadable file never counts.
:func:`extraction_info` returns the same list.

Damaged cache files (a truncated archive, bad JSON, maps whose size does not match their index) are
reported with a :class:`helpers.cache.DamagedCacheWarning` naming the file, deleted and rebuilt.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from .backbones import Backbone
from .cache import DamagedCacheError, atomic_path, atomic_write, cache_root, read_entry, safe_name
from .images import ImageReadError, check_image_size, displayed_size, load_image, load_query
from .pooling import POOLINGS, l2n_np, pool_all

__all__ = [
    "SPLITS", "atomic_path", "atomic_write", "bbx_on_map", "cache_root", "checked_box", "db_alias", "extract_maps",
    "extract_vectors", "extraction_info", "load_split_image", "prefetch", "split_images"]

SPLITS = ("db", "query", "query_full")


class SkippedImageWarning(UserWarning):
    """An image could not be read and was skipped (its features are all zero)."""


def progress_enabled() -> bool:
    """Progress bars are on unless ``INSTRET_PROGRESS=0`` (the test command sets it, so that the
    notebooks' checked outputs do not depend on whether the cache was warm)."""
    return os.environ.get("INSTRET_PROGRESS", "1") != "0"


#: Part of every entry's path: bump it whenever cached maps or vectors would come out differently.
CACHE_FORMAT = 3


def _entry_dir(dataset, backbone: Backbone, image_size: int, split: str) -> Path:
    return (cache_root() / "features" / safe_name(dataset.key)
            / f"{safe_name(backbone.name)}-{safe_name(backbone.weights_id)}" / f"{split}-{int(image_size)}-v{CACHE_FORMAT}")


def _maps_files(entry: Path, layer: str) -> tuple[Path, Path]:
    """The raw float16 data and the shape index of a layer's cached maps."""
    return entry / f"{layer}.maps.f16", entry / f"{layer}.maps.json"


def _maps_shapes(index_path: Path, data_path: Path) -> list[tuple]:
    shapes = [tuple(s) for s in json.loads(index_path.read_text())["shapes"]]
    stored = data_path.stat().st_size // 2
    expected = sum(int(np.prod(s)) for s in shapes)
    if stored != expected:
        raise DamagedCacheError(f"{data_path.name} holds {stored} values where its index says {expected}")
    return shapes


def _cached_map_shapes(entry: Path, layer: str) -> list[tuple] | None:
    """The shapes of a layer's cached maps, or None when they are missing or damaged (a damaged
    entry is reported and deleted, so it is rebuilt)."""
    data, index = _maps_files(entry, layer)
    if not data.is_file():
        return None
    return read_entry(index, lambda p: _maps_shapes(p, data), "cached maps index", remove=(data,))


def _read_maps(entry: Path, layer: str, shapes: list[tuple]) -> list[torch.Tensor]:
    """The cached maps of a layer as float32 tensors (``C x h x w``, or ``D`` for fc/logits)."""
    data_path = _maps_files(entry, layer)[0]
    sizes = [int(np.prod(s)) for s in shapes]
    if not sum(sizes):
        return [torch.zeros(shape) for shape in shapes]
    # mapped, not read: only the float32 copies returned take memory (mode "c": private, never written back)
    tensor = torch.from_numpy(np.memmap(data_path, dtype=np.float16, mode="c"))
    offsets = np.cumsum([0, *sizes])
    return [tensor[a:b].view(shape).float() for a, b, shape in zip(offsets, offsets[1:], shapes)]


def _vectors_file(entry: Path, layer: str) -> Path:
    return entry / f"{layer}.vectors.npz"


def _read_vectors(path: Path, poolings) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in poolings}


def _has_vectors(entry: Path, layer: str) -> bool:
    """Whether a layer's vectors are cached with every pooling (reads the archive's directory only,
    which a truncated archive lacks)."""
    def complete(path):
        with np.load(path, allow_pickle=False) as data:
            missing = set(POOLINGS) - set(data.files)
        if missing:
            raise DamagedCacheError(f"it lacks the poolings {sorted(missing)}")
        return True

    return bool(read_entry(_vectors_file(entry, layer), complete, "cached vectors"))


def _read_meta(entry: Path) -> dict | None:
    return read_entry(entry / "meta.json", lambda p: json.loads(p.read_text()), "cache metadata")


def _note_unreadable(dataset, entry: Path, split: str) -> None:
    """Tell ``dataset`` which of its images the extraction of this entry could not read, so that
    the evaluation leaves them out of the ground truth (:func:`helpers.evaluate.evaluate_scores`)."""
    meta = _read_meta(entry)
    if not meta or not meta.get("skipped") or not hasattr(dataset, "mark_unreadable"):
        return
    paths = split_images(dataset, split)
    for record in meta["skipped"]:
        dataset.mark_unreadable(paths[int(record["index"])][0], record["reason"])


def _check_args(image_size, split):
    _check_split(split)
    check_image_size(image_size)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def _split_item(dataset, split, i):
    """``(path, bbx)`` of image ``i`` of a split (see :func:`split_images`)."""
    if split == "db":
        return dataset.db_path(i), None
    return dataset.query_path(i), dataset.gnd[i].get("bbx") if split == "query" else None


def split_images(dataset, split):
    """``(path, bbx)`` for every image of a split: ``bbx`` is the query box for ``"query"`` (the
    image is cropped by it), ``None`` for ``"db"`` and ``"query_full"`` (the whole image)."""
    _check_split(split)
    n = dataset.n_db if split == "db" else dataset.n_queries
    return [_split_item(dataset, split, i) for i in range(n)]


def db_alias(dataset, split):
    """Database index of every query of ``split`` when all of them are database images used whole
    (no box): their features are then read from the ``"db"`` split. Otherwise None."""
    if split == "db":
        return None
    index = {p: i for i, p in enumerate(dataset.imlist)}
    alias = []
    for i, name in enumerate(dataset.qimlist):
        bbx = dataset.gnd[i].get("bbx") if split == "query" else None
        if name not in index or bbx is not None or dataset.query_path(i) != dataset.db_path(index[name]):
            return None
        alias.append(index[name])
    return alias


def load_split_image(dataset, split: str, index: int, max_side: int | None = None) -> np.ndarray:
    """Image ``index`` of a split as the extraction sees it (a query cropped by its box for
    ``split="query"``), resized to ``max_side`` on the long side: the one way to read a split's image."""
    _check_split(split)
    return _load(*_split_item(dataset, split, index), max_side)


def _load(path, bbx, max_side):
    return load_image(path, max_side) if bbx is None else load_query(path, bbx, max_side)


def _run_extraction(dataset, backbone, image_size, split, map_layers, vector_layers, desc) -> None:
    """One pass of the backbone over the split, writing the requested cache files: the maps of
    ``map_layers`` streamed to disk as float16 image by image, and the five poolings of
    ``vector_layers`` pooled from the float32 maps of the network. A conv tap whose maps are written
    gets its vectors in the same pass, so vectors always come from the float32 maps, never from
    the float16 copies in the cache: one answer whichever was asked for first."""
    from tqdm.auto import tqdm

    entry = _entry_dir(dataset, backbone, image_size, split)
    vector_layers = list(dict.fromkeys([*vector_layers, *(
        t for t in map_layers if not backbone.is_vector(t) and not _has_vectors(entry, t))]))
    layers = list(dict.fromkeys([*map_layers, *vector_layers]))
    jobs = split_images(dataset, split)
    shapes = {layer: [] for layer in map_layers}
    vectors = {layer: [] for layer in vector_layers}  # per image a 5 x C array, rows in POOLINGS order
    image_hw, original_hw, skipped = [], [], []
    with ExitStack() as files:  # each layer's maps go straight to a temporary file, renamed at the end
        streams = {}
        for layer in map_layers:
            tmp = files.enter_context(atomic_path(_maps_files(entry, layer)[0]))
            streams[layer] = files.enter_context(open(tmp, "wb"))
        progress = tqdm(jobs, desc=desc, unit="img", leave=False, mininterval=1.0, disable=not progress_enabled())
        for index, (path, bbx) in enumerate(progress):
            try:
                img = _load(path, bbx, image_size)
                orig = displayed_size(path)
            except (ImageReadError, ValueError, OSError) as exc:
                reason = getattr(exc, "reason", str(exc))
                warnings.warn(f"skipping {path}: {reason}", SkippedImageWarning, stacklevel=2)
                skipped.append({"index": index, "path": str(Path(path).name), "reason": str(reason)})
                img = None
                orig = (0, 0)
            if img is not None:
                taps = backbone.forward_taps(backbone.preprocess(img), layers)
                image_hw.append(list(img.shape[:2]))
            else:
                taps = {layer: torch.zeros((1, backbone.channels(layer)) + (() if backbone.is_vector(layer) else (1, 1)),
                                           device=backbone.device) for layer in layers}
                image_hw.append([0, 0])
            original_hw.append(list(orig))
            for layer in layers:
                tap = taps[layer][0]
                if layer in streams:
                    streams[layer].write(_as_float16(tap, layer, backbone, path).numpy().data)
                    shapes[layer].append(list(tap.shape))
                if layer in vectors:  # a skipped image is never retrieved: zero vectors
                    pooled = (torch.stack(list(pool_all(tap).values())).cpu().numpy() if img is not None
                              else np.zeros((len(POOLINGS), tap.shape[0]), dtype=np.float32))
                    vectors[layer].append(pooled)
    # the maps' data files are in place; their indexes, written last, make them valid entries
    for layer in map_layers:
        index = {"format": CACHE_FORMAT, "dtype": "float16", "shapes": shapes[layer]}
        atomic_write(_maps_files(entry, layer)[1], lambda tmp, i=index: Path(tmp).write_text(json.dumps(i)))
    if skipped:
        listing = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped)
        warnings.warn(f"{len(skipped)} of {len(jobs)} {split} images of {dataset.name} were skipped: "
                      f"{listing}", SkippedImageWarning, stacklevel=2)
    meta = {"image_hw": image_hw, "original_hw": original_hw, "skipped": skipped,
            "dataset": dataset.name, "backbone": backbone.name, "weights_id": backbone.weights_id,
            "image_size": int(image_size), "split": split}
    atomic_write(entry / "meta.json", lambda tmp: Path(tmp).write_text(json.dumps(meta)))
    for layer in vector_layers:
        pooled = np.stack(vectors[layer], axis=1)  # 5 x N x C
        arrays = {name: l2n_np(rows) for name, rows in zip(POOLINGS, pooled)}
        atomic_write(_vectors_file(entry, layer), lambda tmp, a=arrays: _save_npz(tmp, a))


#: The largest magnitude the float16 map cache can hold.
FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def _as_float16(tap: torch.Tensor, layer: str, backbone: Backbone, path) -> torch.Tensor:
    """A map as the cache stores it; a map beyond float16's range would turn into infinities, so it
    stops the extraction with what overflowed instead."""
    peak = float(tap.detach().abs().max()) if tap.numel() else 0.0
    if not peak <= FLOAT16_MAX:  # also catches NaN
        raise ValueError(f"tap {layer!r} of {backbone.name} ({backbone.weights_id}) reaches {peak:.4g} on {path}: "
                         f"beyond float16's range (±{FLOAT16_MAX:.0f}), in which the feature cache stores maps. "
                         f"The weights are probably not the ones this backbone expects (or its input is not "
                         f"normalised as {backbone.mean}, {backbone.std}).")
    return tap.detach().to(torch.float16).cpu()


def _save_npz(tmp, arrays):
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def prefetch(dataset, backbone: Backbone, image_size: int, split: str = "db", map_layers=(), vector_layers=()) -> None:
    """Fill the cache for several taps in ONE pass of the backbone over the split.

    :func:`extract_maps` and :func:`extract_vectors` run one pass per call; a method that needs
    several taps calls this first, so a cold cache costs one pass instead of one per tap.
    ``map_layers`` get cached maps, ``vector_layers`` cached pooled vectors (every conv tap whose maps
    are cached gets its vectors in the same pass too). Taps already cached are skipped; the results
    of the later ``extract_*`` calls are the same either way.
    """
    _check_args(image_size, split)
    if db_alias(dataset, split) is not None:
        split = "db"  # queries are database images used whole: read from the db split
    entry = _entry_dir(dataset, backbone, image_size, split)
    map_layers = list(dict.fromkeys(backbone.resolve(t) for t in map_layers))
    vector_layers = list(dict.fromkeys(backbone.resolve(t) for t in vector_layers))
    bad = [t for t in vector_layers if backbone.is_vector(t)]
    if bad:
        raise ValueError(f"{bad} are already vectors; pass them as map_layers")
    missing_maps = [t for t in map_layers if _cached_map_shapes(entry, t) is None]
    missing_vectors = [t for t in vector_layers if not _has_vectors(entry, t)]
    if missing_maps or missing_vectors or _read_meta(entry) is None:
        _run_extraction(dataset, backbone, image_size, split, missing_maps, missing_vectors,
                        desc=f"{dataset.name} {split} {','.join(missing_maps + missing_vectors)}")
    _note_unreadable(dataset, entry, split)


def extract_maps(dataset, backbone: Backbone, layers, image_size: int, split: str = "db"):
    """Feature maps of ``layers`` for every image of ``split``: ``{layer: [C x h x w float32]}``.

    Vector taps (:meth:`Backbone.is_vector`: ``"fc"``, ``"logits"``, ``"descriptor"``) come back as
    1-D tensors. Cached on disk as float16.
    """
    _check_args(image_size, split)
    if isinstance(layers, str):
        layers = [layers]
    layers = [backbone.resolve(layer) for layer in layers]
    alias = db_alias(dataset, split)
    if alias is not None:
        db = extract_maps(dataset, backbone, layers, image_size, "db")
        return {layer: [db[layer][j] for j in alias] for layer in layers}
    entry = _entry_dir(dataset, backbone, image_size, split)
    shapes = {layer: _cached_map_shapes(entry, layer) for layer in layers}
    missing = [layer for layer in layers if shapes[layer] is None]
    if missing or _read_meta(entry) is None:
        _run_extraction(dataset, backbone, image_size, split, missing, [] if missing else [backbone.last_conv],
                        desc=f"{dataset.name} {split} {','.join(missing or layers)}")
        shapes.update({layer: _cached_map_shapes(entry, layer) for layer in missing})
    _note_unreadable(dataset, entry, split)
    return {layer: _read_maps(entry, layer, shapes[layer]) for layer in layers}


def extract_vectors(dataset, backbone: Backbone, layer: str, image_size: int, split: str = "db",
                    poolings=tuple(POOLINGS)):
    """l2-normalised pooled vectors ``{pooling: N x C float32}`` of one conv layer.

    Computed during the forward pass from the network's float32 maps, without keeping them (so it
    scales to Oxford/Paris); extracting a tap's maps caches its vectors too. Poolings use their
    default parameters (GeM p=3, R-MAC L=3); for other parameters pool the maps from
    :func:`extract_maps` yourself.
    """
    _check_args(image_size, split)
    layer = backbone.resolve(layer)
    if isinstance(poolings, str):
        poolings = (poolings,)
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise ValueError(f"unknown pooling(s) {unknown}; choose from {list(POOLINGS)}")
    if backbone.is_vector(layer):
        raise ValueError(f"{layer!r} is already a vector; use extract_maps(..., [{layer!r}])")
    alias = db_alias(dataset, split)
    if alias is not None:
        db = extract_vectors(dataset, backbone, layer, image_size, "db", poolings)
        return {name: db[name][alias] for name in poolings}
    entry = _entry_dir(dataset, backbone, image_size, split)
    path = _vectors_file(entry, layer)
    vectors = read_entry(path, lambda p: _read_vectors(p, poolings), "cached vectors")
    if vectors is None or _read_meta(entry) is None:
        _run_extraction(dataset, backbone, image_size, split, [], [layer], desc=f"{dataset.name} {split} {layer}")
        vectors = _read_vectors(path, poolings)
    _note_unreadable(dataset, entry, split)
    return vectors


def extraction_info(dataset, backbone: Backbone, image_size: int, split: str = "db") -> dict:
    """What the extraction recorded: ``image_hw`` (processed size per image), ``original_hw``
    (size of the file as displayed), ``skipped`` (list of ``{"path", "reason"}``). Runs the
    extraction of the last conv map if nothing is cached yet."""
    _check_args(image_size, split)
    alias = db_alias(dataset, split)
    if alias is not None:
        db = extraction_info(dataset, backbone, image_size, "db")
        return {**db, "image_hw": [db["image_hw"][j] for j in alias],
                "original_hw": [db["original_hw"][j] for j in alias]}
    entry = _entry_dir(dataset, backbone, image_size, split)
    meta = _read_meta(entry)
    if meta is None:
        _run_extraction(dataset, backbone, image_size, split, [], [backbone.last_conv],
                        desc=f"{dataset.name} {split} {backbone.last_conv}")
        meta = _read_meta(entry)
    _note_unreadable(dataset, entry, split)
    return meta


def checked_box(bbx, image_hw, map_hw) -> tuple[float, float, float, float]:
    """``bbx`` as four floats, after checking that the image and map sizes are positive and the box
    is not empty or inverted (shared by everything that maps a query box onto a feature map)."""
    (H, W), (h, w) = image_hw, map_hw
    if min(H, W, h, w) <= 0:
        raise ValueError(f"sizes must be positive, got image {image_hw} and map {map_hw}")
    x1, y1, x2, y2 = (float(v) for v in bbx)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"bbx {list(bbx)} is empty or inverted")
    return x1, y1, x2, y2


def bbx_on_map(bbx, image_hw, map_hw) -> tuple[int, int, int, int]:
    """A box ``[x1, y1, x2, y2]`` in an image of size ``image_hw`` mapped to the cells of a map of size
    ``map_hw``: ``(c1, r1, c2, r2)`` with ``c2``/``r2`` exclusive, at least one cell, clipped.

    Used to crop a query's activations by its box ("crop X") and to measure region precision.
    """
    (H, W), (h, w) = image_hw, map_hw
    x1, y1, x2, y2 = checked_box(bbx, image_hw, map_hw)
    c1 = int(np.clip(np.floor(x1 * w / W), 0, w - 1))
    r1 = int(np.clip(np.floor(y1 * h / H), 0, h - 1))
    c2 = int(np.clip(np.ceil(x2 * w / W), c1 + 1, w))
    r2 = int(np.clip(np.ceil(y2 * h / H), r1 + 1, h))
    return c1, r1, c2, r2


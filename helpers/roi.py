"""RoI-based CNN features for instance retrieval (paper 003).

Chen, Zhou, Pan, Yang, "Instance retrieval using region of interest based CNN features".
The method has two stages:

1. **First stage (sec. 3.2.4)**: a bag of visual words on local descriptors (the paper uses SURF,
   which scikit-image does not offer; we use scikit-image's SIFT), a k-means vocabulary and a TF-IDF
   inverted file (:mod:`helpers.bow`) return the top ``N`` database images for a query.
2. **Re-ranking (sec. 3.2.1-3.2.4)**: each image is described by a small set of *regions of
   interest* (RoIs) found in its last convolutional feature maps (CFMs):

   * every channel ``d`` of the map is binarised (eq. 1) and the bounding rectangle of its non-zero
     cells is one *base region* ``R'_d`` (sec. 3.2.1);
   * base regions that are too small (area ratio ``< T_min``) or too elongated
     (aspect ratio ``> T_rate``) are dropped, the rest are ranked by their summed activation and the
     top ``K`` whose mutual IoU stays below ``T_IOU = 0.95`` are kept (sec. 3.2.2);
   * each RoI is described by the classifier's penultimate ("fc") layer on the cropped RoI, or by
     max-/sum-pooling the CFMs inside the RoI (sec. 3.2.3), and binarised by eq. 2;
   * RoIs are compared by eq. 3 (``1 - L1 / D`` on the binary codes), two images by their best
     matching RoI pair, and the ``N`` candidates are re-ranked by that similarity, with the paper's
     *fast matching*: exhaustive RoI matching only on the top ``n`` candidates, then only the ``k``
     query RoIs matched most often are compared with the remaining ``N - n`` candidates.

Pure algorithm functions (tensors / arrays in, tensors / arrays out) come first; the cached
dataset-level wrappers and the :class:`RoIMethod` registered as ``"roi"`` come last.

Readings of the paper that are ours (it leaves them open); each is repeated where it is used:

* *threshold* of eq. 1: the paper binarises "by a defined threshold" without a value. We keep a
  cell of channel ``d`` when its activation exceeds ``threshold * max(channel d)``;
  ``threshold = 0`` is eq. 1 literally (``f > 0``).
* *summed activation* of a base region: the sum of channel ``d``'s activations inside ``R'_d``.
* *matching frequency* of a query RoI (fast matching): each RoI of each of the top ``n`` candidates
  votes for its most similar query RoI; the ``k`` query RoIs with most votes are kept.
* an image in which every base region is filtered out is described by one RoI: the whole image.
* *baseline* (tables 1-2): the same first stage re-ranked by the same binarised feature computed on
  the whole image (a single "RoI" covering everything).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
import typing
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torchvision.ops import nms, roi_align, roi_pool

from helpers import bow
from helpers.cache import atomic_write, cache_root, read_entry
from helpers.features import db_alias, load_split_image, split_images
from helpers.methods import RetrievalMethod, register_method
from helpers.options import choice, fraction, parse_bool, positive_int
from helpers.pooling import l2n_np

#: Base-region IoU above which the lower-ranked region is dropped (sec. 3.2.2: "T_IOU is set to 95%").
T_IOU = 0.95
#: Features a RoI can be described by: classifier penultimate layer on the crop, or pooled CFMs.
RoIFeature = Literal["fc", "max", "sum"]
ROI_FEATURES = typing.get_args(RoIFeature)

#: Table 3 of the paper: mAP of CNN-based methods on Paris6k and Oxford5k, as published ("-": not given).
PAPER_TABLE3 = (
    {"method": "Mohedano et al. (2016)", "network": "VGG16", "layer": "conv", "paris6k": "84.8", "oxford5k": "78.8"},
    {"method": "Razavian et al. (2014)", "network": "OverFeat", "layer": "fc", "paris6k": "67.6", "oxford5k": "52.0"},
    {"method": "Ng, Yang and Davis (2015)", "network": "VGG16", "layer": "conv", "paris6k": "69.4", "oxford5k": "64.9"},
    {"method": "Mopuri and Babu (2015)", "network": "AlexNet", "layer": "fc", "paris6k": "71.47", "oxford5k": "60.71"},
    {"method": "Babenko and Lempitsky (2015)", "network": "VGG16", "layer": "conv", "paris6k": "-", "oxford5k": "65.7"},
    {"method": "Fc7 RoIs (the paper)", "network": "AlexNet", "layer": "fc", "paris6k": "86.78", "oxford5k": "72.86"},
)
#: RoIs per training image (plus the whole image) on which the PCA-whitening is learned.
WHITENING_ROIS = 20


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _check_map(fmap) -> torch.Tensor:
    if not isinstance(fmap, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor feature map C x H x W, got {type(fmap).__name__}")
    if fmap.ndim != 3:
        raise ValueError(f"expected a feature map of shape C x H x W, got shape {tuple(fmap.shape)}")
    if min(fmap.shape) < 1:
        raise ValueError(f"feature map has an empty dimension: shape {tuple(fmap.shape)}")
    return fmap


def _check_boxes(boxes, allow_empty_boxes: bool = False) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape K x 4 ([x1, y1, x2, y2]), got {tuple(boxes.shape)}")
    if not allow_empty_boxes and not bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()):
        raise ValueError("every box needs x2 > x1 and y2 > y1")
    return boxes


# ---------------------------------------------------------------------------------------------
# 3.2.1 Base regions from binarised CFMs
# ---------------------------------------------------------------------------------------------

def binarize_feature_maps(fmap: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Binarise each channel of a ``C x H x W`` map (eq. 1 of sec. 3.2.1).

    Eq. 1 keeps the locations ``P`` of channel ``d`` with ``f(P) > 0`` after "binarisation by a
    defined threshold"; the paper gives no value. We read the threshold as relative to each
    channel's maximum: cell ``P`` is kept when ``f_d(P) > threshold * max_P' f_d(P')`` and
    ``f_d(P) > 0``. ``threshold = 0`` is eq. 1 literally; larger values shrink the regions to the
    strongest responses. Returns a bool tensor ``C x H x W``.
    """
    fmap = _check_map(fmap)
    threshold = fraction("threshold", threshold, high=1.0)
    if threshold >= 1.0:
        raise ValueError("threshold must be below 1 (no cell is strictly above its channel's maximum)")
    fmap = fmap.float()
    channel_max = fmap.amax(dim=(1, 2), keepdim=True)
    return (fmap > threshold * channel_max) & (fmap > 0)


def base_regions(binary_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding rectangles ``R'_d`` of the non-zero cells of each binarised channel (sec. 3.2.1).

    Args:
        binary_maps: bool ``C x H x W`` (from :func:`binarize_feature_maps`).

    Returns:
        ``(boxes, present)``: ``boxes`` float ``C x 4`` as ``[x1, y1, x2, y2]`` in map cells with
        ``x2``/``y2`` exclusive (a single cell ``(r, c)`` is ``[c, r, c + 1, r + 1]``; this is the
        convention of ``torchvision.ops`` for areas and IoU), and ``present`` bool ``C``, False for
        channels without any non-zero cell (their box is all zeros and must be ignored).
    """
    binary_maps = _check_map(binary_maps).bool()
    _, height, width = binary_maps.shape
    rows = binary_maps.any(dim=2)                # C x H: row holds a kept cell
    cols = binary_maps.any(dim=1)                # C x W
    present = rows.any(dim=1)
    # argmax returns the first maximal index: first True from the start / from the end.
    y1 = rows.to(torch.uint8).argmax(dim=1)
    y2 = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x1 = cols.to(torch.uint8).argmax(dim=1)
    x2 = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    boxes[~present] = 0.0
    return boxes, present


def _cell_aligned(boxes: torch.Tensor) -> torch.Tensor:
    """Round boxes given in map cells to whole cells (RoIs from base regions already are)."""
    boxes = boxes.float()
    rounded = torch.stack([boxes[:, 0].floor(), boxes[:, 1].floor(),
                           boxes[:, 2].ceil(), boxes[:, 3].ceil()], dim=1)
    return rounded


def region_activation_sums(fmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Sum of channel ``d``'s activations inside box ``d`` (the ranking score of sec. 3.2.2).

    The paper ranks base regions by "the sum of the activation values" of each region; as each
    base region comes from one channel, we sum that channel inside its rectangle. ``boxes`` is
    ``C x 4`` in map cells (exclusive ends, whole cells), one box per channel of ``fmap``; an empty
    box (e.g. the all-zero box of a channel without region) sums to 0.
    Computed exactly with a summed-area table.
    """
    fmap = _check_map(fmap).float()
    boxes = _check_boxes(boxes, allow_empty_boxes=True)
    if boxes.shape[0] != fmap.shape[0]:
        raise ValueError(f"need one box per channel: {boxes.shape[0]} boxes for {fmap.shape[0]} channels")
    table = torch.nn.functional.pad(fmap.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # C x H+1 x W+1
    b = _cell_aligned(boxes).long()
    _, height, width = fmap.shape
    x1, y1 = b[:, 0].clamp(0, width), b[:, 1].clamp(0, height)
    x2, y2 = b[:, 2].clamp(0, width), b[:, 3].clamp(0, height)
    idx = torch.arange(fmap.shape[0])
    total = table[idx, y2, x2] - table[idx, y1, x2] - table[idx, y2, x1] + table[idx, y1, x1]
    return total.float()


# ---------------------------------------------------------------------------------------------
# 3.2.2 RoI detection
# ---------------------------------------------------------------------------------------------

def region_filter_mask(boxes: torch.Tensor, map_hw: tuple[int, int], t_min: float,
                       t_rate: float) -> torch.Tensor:
    """Which base regions survive the size and shape tests of sec. 3.2.2.

    A region is dropped when ``area(R) / area(image) < T_min`` or when its aspect ratio
    ``max(W_r, H_r) / min(W_r, H_r) > T_rate``. Areas are measured on the map (the ratio is the same
    on the image). Returns bool ``K``.
    """
    boxes = _check_boxes(boxes)
    t_min = fraction("t_min", t_min, high=1.0)
    try:
        t_rate = float(t_rate)
    except (TypeError, ValueError):
        raise TypeError(f"t_rate must be a number, got {t_rate!r}") from None
    if not t_rate >= 1.0:
        raise ValueError(f"t_rate must be >= 1 (an aspect ratio max/min is at least 1), got {t_rate}")
    height, width = (int(v) for v in map_hw)
    if height < 1 or width < 1:
        raise ValueError(f"map_hw must be positive, got {map_hw}")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    area_ratio = widths * heights / float(height * width)
    aspect = torch.maximum(widths, heights) / torch.minimum(widths, heights).clamp_min(1e-12)
    return (area_ratio >= t_min) & (aspect <= t_rate)


def select_rois(boxes: torch.Tensor, scores: torch.Tensor, k: int, t_iou: float = T_IOU) -> torch.Tensor:
    """Greedy selection of the ``k`` best-scoring boxes with mutual IoU below ``t_iou`` (sec. 3.2.2).

    "We iteratively filter the base regions until we select K regions with higher activations,
    meanwhile we guarantee that the IoU between regions are less than T_IOU": this is non-maximum
    suppression (``torchvision.ops.nms``, which drops a box whose IoU with a better one exceeds
    ``t_iou``) cut after ``k`` boxes. Returns the indices into ``boxes``, best first; the selection
    for a smaller ``k`` is a prefix of the one for a larger ``k``.
    """
    boxes = _check_boxes(boxes)
    k = positive_int("k", k)
    t_iou = fraction("t_iou", t_iou, low_open=True)
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"need one score per box: scores {tuple(scores.shape)}, boxes {tuple(boxes.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    # nms sorts by score; make ties deterministic (lower index first) with a tiny index penalty.
    order = torch.arange(boxes.shape[0], dtype=torch.float64)
    tie_broken = scores.double() - order * 1e-9 * (1.0 + scores.double().abs().max())
    keep = nms(boxes.double(), tie_broken, t_iou)
    return keep[:k]


def boxes_to_image(boxes: torch.Tensor, map_hw: tuple[int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """Map boxes from map cells to image pixels ("according to the relationship between the sizes
    of the image and its CFMs", sec. 3.2.2): ``x * W_image / W_map``, ``y * H_image / H_map``."""
    boxes = _check_boxes(boxes)
    (mh, mw), (ih, iw) = map_hw, image_hw
    if min(mh, mw, ih, iw) < 1:
        raise ValueError(f"sizes must be positive: map {map_hw}, image {image_hw}")
    scale = torch.tensor([iw / mw, ih / mh, iw / mw, ih / mh], dtype=torch.float32)
    return boxes.float() * scale


@dataclass
class RoIDetection:
    """Every intermediate step of the RoI detection of one map (fig. 5 (b)-(f)).

    Attributes:
        binary_maps: bool ``C x H x W`` (fig. 5c).
        base_boxes: ``C x 4`` base region per channel in map cells (fig. 5d); ``present`` says which
            channels have one.
        kept: bool ``C``, base regions that pass the area / aspect tests (fig. 5e).
        scores: ``C`` summed activation of each base region.
        selected: channel indices of the RoIs, best first (``len <= K``).
        boxes: ``len(selected) x 4`` RoIs in map cells (fig. 5f before mapping to pixels).
        map_hw: ``(H, W)`` of the map.
        fallback: True when no base region survived and the whole map was used as the only RoI.
    """
    binary_maps: torch.Tensor
    base_boxes: torch.Tensor
    present: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor
    selected: torch.Tensor
    boxes: torch.Tensor
    map_hw: tuple[int, int]
    fallback: bool = False


def detect_rois(fmap: torch.Tensor, k: int = 10, threshold: float = 0.0, t_min: float = 0.05,
                t_rate: float = 4.0, t_iou: float = T_IOU) -> RoIDetection:
    """Detect up to ``k`` RoIs in a ``C x H x W`` map (sec. 3.2.1-3.2.2, fig. 5).

    Binarise (eq. 1, :func:`binarize_feature_maps`), take one bounding rectangle per channel
    (:func:`base_regions`), drop small / elongated ones (:func:`region_filter_mask`), rank the rest
    by summed activation (:func:`region_activation_sums`) and keep the top ``k`` with IoU below
    ``t_iou`` (:func:`select_rois`). When nothing survives, the whole map is the single RoI
    (``fallback=True``) so that every image keeps a description.
    """
    fmap = _check_map(fmap).float()
    binary = binarize_feature_maps(fmap, threshold)
    base, present = base_regions(binary)
    map_hw = (int(fmap.shape[1]), int(fmap.shape[2]))
    kept = present.clone()
    if present.any():
        kept[present] = region_filter_mask(base[present], map_hw, t_min, t_rate)
    scores = region_activation_sums(fmap, base)
    candidates = torch.nonzero(kept).flatten()
    chosen = candidates[select_rois(base[candidates], scores[candidates], k, t_iou)]
    fallback = chosen.numel() == 0
    if fallback:
        boxes = torch.tensor([[0.0, 0.0, float(map_hw[1]), float(map_hw[0])]])
    else:
        boxes = base[chosen]
    return RoIDetection(binary, base, present, kept, scores, chosen, boxes, map_hw, fallback)


# ---------------------------------------------------------------------------------------------
# 3.2.3 RoI features, eq. 2 and eq. 3
# ---------------------------------------------------------------------------------------------

def pool_roi_features(fmap: torch.Tensor, boxes: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    """Max- or sum-pool a ``C x H x W`` map inside each box (sec. 3.2.3, conv features of a RoI).

    ``boxes`` are ``K x 4`` in map cells, exclusive ends (as from :func:`detect_rois`); fractional
    boxes are first widened to whole cells. Max pooling is ``torchvision.ops.roi_pool`` (which takes
    inclusive ends), sum pooling is ``torchvision.ops.roi_align`` with ``aligned=True`` and one
    output bin, whose adaptive sampling grid then samples exactly every cell centre, times the
    number of cells. Returns ``K x C`` float32.
    """
    fmap = _check_map(fmap).float()
    if pooling not in ("max", "sum"):
        raise ValueError(f"pooling must be 'max' or 'sum', got {pooling!r}")
    boxes = _check_boxes(boxes)
    if boxes.shape[0] == 0:
        return torch.zeros(0, fmap.shape[0])
    _, height, width = fmap.shape
    b = _cell_aligned(boxes)
    b = torch.stack([b[:, 0].clamp(0, width - 1), b[:, 1].clamp(0, height - 1),
                     b[:, 2].clamp(1, width), b[:, 3].clamp(1, height)], dim=1)
    rois = torch.cat([torch.zeros(b.shape[0], 1), b], dim=1).to(fmap.device)
    batch = fmap.unsqueeze(0)
    if pooling == "max":
        inclusive = rois.clone()
        inclusive[:, 3:5] -= 1.0
        return roi_pool(batch, inclusive, output_size=1, spatial_scale=1.0).flatten(1).cpu()
    means = roi_align(batch, rois, output_size=1, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    cells = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).to(means.device)
    return (means.flatten(1) * cells[:, None]).cpu()


def binarize_features(features) -> np.ndarray:
    """Eq. 2: ``f_i = 1`` where ``f_i > mean(f)`` (mean over the feature's own dimensions), else 0.

    Works on one vector ``D`` or row-wise on ``K x D``; returns ``uint8`` of the same shape.
    Scaling a feature by a positive number (e.g. l2-normalisation) does not change its code.
    """
    features = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if features.ndim not in (1, 2) or features.shape[-1] < 1:
        raise ValueError(f"expected a feature vector D or a matrix K x D, got shape {features.shape}")
    features = features.astype(np.float64)
    return (features > features.mean(axis=-1, keepdims=True)).astype(np.uint8)


def roi_similarity(codes_a, codes_b) -> np.ndarray:
    """Eq. 3 between every pair of rows: ``Sim(f1, f2) = 1 - sum(|f1 - f2|) / D``.

    ``codes_a`` ``Ka x D`` and ``codes_b`` ``Kb x D`` are binary (eq. 2), so the L1 distance is the
    Hamming distance ``|a| + |b| - 2 a.b``, computed with one matrix product. Returns ``Ka x Kb``
    float64 in ``[0, 1]``.
    """
    a = np.atleast_2d(np.asarray(codes_a))
    b = np.atleast_2d(np.asarray(codes_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"codes must be Ka x D and Kb x D with the same D, got {a.shape} and {b.shape}")
    for codes in (a, b):
        binary = (codes.dtype == bool or (codes.size and codes.min() >= 0 and codes.max() <= 1
                                           and np.array_equal(codes, codes.astype(np.uint8))))
        if codes.size and not binary:
            raise ValueError("roi_similarity expects binary codes (0/1), e.g. from binarize_features")
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    hamming = a.sum(1)[:, None] + b.sum(1)[None, :] - 2.0 * (a @ b.T)
    return 1.0 - hamming.astype(np.float64) / a.shape[1]


def image_similarity(codes_a, codes_b) -> float:
    """Similarity of two images = that of their best matching RoI pair (sec. 3.2.4)."""
    return float(roi_similarity(codes_a, codes_b).max())


# ---------------------------------------------------------------------------------------------
# 3.2.4 First stage: SIFT descriptors; their bag of visual words is helpers.bow's (a k-means
# vocabulary and a TF-IDF inverted file)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SiftParams:
    """Local descriptors of the first stage (scikit-image SIFT; the paper uses SURF).

    ``max_side``: images are shrunk so that the longer side is this many pixels before SIFT
    (scikit-image's SIFT is pure Python and slow); ``max_keypoints``: at most this many keypoints per
    image, the ones of largest scale; ``upsampling``: SIFT's initial upsampling (1 = none).
    """
    max_side: int = 320
    max_keypoints: int = 300
    upsampling: int = 1
    n_octaves: int = 4
    c_dog: float = 0.04 / 3

    def __post_init__(self):
        positive_int("max_side", self.max_side)
        positive_int("max_keypoints", self.max_keypoints)
        if self.upsampling not in (1, 2, 4):
            raise ValueError(f"upsampling must be 1, 2 or 4, got {self.upsampling!r}")
        positive_int("n_octaves", self.n_octaves)


def sift_descriptors(image: np.ndarray, params: SiftParams = SiftParams()) -> np.ndarray:
    """SIFT descriptors (``n x 128`` float32, ``n <= params.max_keypoints``) of one RGB/gray image.

    The image is shrunk to ``params.max_side`` first; keypoints are capped to the ones of largest
    scale (ties kept in detection order). An image without any keypoint gives a ``0 x 128`` array.
    """
    from skimage.color import rgb2gray
    from skimage.feature import SIFT

    from helpers.images import resize_max_side

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image H x W or H x W x 3, got {image.dtype} {image.shape}")
    image = resize_max_side(image, params.max_side)
    gray = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / 255.0
    # skimage's SIFT needs room for its octaves: fewer octaves for small images.
    n_octaves = max(1, min(params.n_octaves,
                           int(math.floor(math.log2(min(gray.shape) * params.upsampling / 12))) + 1))
    detector = SIFT(upsampling=params.upsampling, n_octaves=n_octaves, c_dog=params.c_dog)
    try:
        detector.detect_and_extract(gray)
    except RuntimeError:          # "SIFT found no features" on flat images
        return np.zeros((0, 128), np.float32)
    desc = np.asarray(detector.descriptors, dtype=np.float32)
    if desc.shape[0] > params.max_keypoints:
        order = np.argsort(-np.asarray(detector.sigmas), kind="stable")[: params.max_keypoints]
        desc = desc[np.sort(order)]
    return desc


def top_candidates(scores: np.ndarray, n_candidates: int) -> np.ndarray:
    """Indices of the ``n_candidates`` best database images per query, best first (``N x n_q``).

    Ties are broken by database index (stable sort), so the result is deterministic.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be n_db x n_q, got shape {scores.shape}")
    n_candidates = min(positive_int("n_candidates", n_candidates), scores.shape[0])
    return np.argsort(-scores, axis=0, kind="stable")[:n_candidates]


# ---------------------------------------------------------------------------------------------
# 3.2.4 Re-ranking: exhaustive and fast RoI matching
# ---------------------------------------------------------------------------------------------

@dataclass
class RerankOutcome:
    """RoI similarities of the candidates of one query, in first-stage order.

    ``similarities``: ``N`` image similarities (best RoI pair). ``pair_count``: number of RoI pairs
    compared (the cost measure). ``kept_query_rois``: query RoIs used for candidates ``n..N-1``
    (all of them for exhaustive matching). ``best_pairs``: ``N x 2`` (query RoI, candidate RoI) of
    the best matching pair of each candidate.
    """
    similarities: np.ndarray
    pair_count: int
    kept_query_rois: np.ndarray
    best_pairs: np.ndarray


def _match_block(query_codes: np.ndarray, candidate_codes: Sequence[np.ndarray]):
    """Eq. 3 between the query RoIs and the RoIs of several candidates, in one matrix product.

    Returns per candidate its best similarity and best (query RoI, candidate RoI) pair, the number
    of RoI pairs compared, and for every candidate RoI the index of its most similar query RoI.
    """
    counts = np.array([len(c) for c in candidate_codes], np.int64)
    if (counts == 0).any():
        raise ValueError(f"candidate {int(np.argmin(counts))} has no RoI codes")
    sim = roi_similarity(query_codes, np.concatenate(candidate_codes))        # Kq x sum(Kc)
    nearest_query = sim.argmax(axis=0)                                        # per candidate RoI
    column_best = sim[nearest_query, np.arange(sim.shape[1])]
    segment = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # first column of each candidate after sorting by (candidate, -similarity): its best RoI
    # (lexsort is stable, so ties go to the better ranked RoI)
    best_column = np.lexsort((-column_best, segment))[starts]
    pairs = np.stack([nearest_query[best_column], best_column - starts], axis=1)
    return column_best[best_column], pairs, int(sim.size), nearest_query


def rerank_candidates(query_codes: np.ndarray, candidate_codes: Sequence[np.ndarray],
                      n_exhaustive: int | None = None, k_query: int | None = None) -> RerankOutcome:
    """RoI matching of one query with its ``N`` first-stage candidates (sec. 3.2.4).

    With ``n_exhaustive=None`` (or ``>= N``) every query RoI is compared with every RoI of every
    candidate (exhaustive matching). Otherwise the paper's fast matching: exhaustive matching on
    the top ``n`` candidates, during which each candidate RoI votes for its most similar query RoI
    (our reading of "matching frequency"); the ``k_query`` most voted query RoIs (ties: the better
    ranked RoI) are then the only ones compared with the remaining ``N - n`` candidates.
    Each of the two blocks is one matrix product (:func:`roi_similarity`), so the time follows the
    number of RoI pairs compared.

    Args:
        query_codes: binary ``Kq x D`` (eq. 2) codes of the query RoIs, best RoI first.
        candidate_codes: list of binary ``Kc_i x D`` codes (``Kc_i >= 1``), candidates in
            first-stage order.
    """
    query_codes = np.atleast_2d(np.asarray(query_codes))
    n_query = query_codes.shape[0]
    n_cand = len(candidate_codes)
    if n_query == 0 or query_codes.size == 0:
        raise ValueError("the query has no RoI codes")
    if n_cand == 0:
        raise ValueError("no candidates to re-rank")
    if n_exhaustive is None or n_exhaustive >= n_cand:
        n_exhaustive = n_cand
    else:
        n_exhaustive = positive_int("n_exhaustive", n_exhaustive)
        if k_query is None:
            raise ValueError("fast matching needs k_query (how many query RoIs to keep)")
    if k_query is not None:
        k_query = min(positive_int("k_query", k_query), n_query)
    sims, best, pairs, nearest = _match_block(query_codes, candidate_codes[:n_exhaustive])
    if n_exhaustive == n_cand:
        return RerankOutcome(sims, pairs, np.arange(n_query), best)
    votes = np.bincount(nearest, minlength=n_query)
    kept = np.sort(np.argsort(-votes, kind="stable")[:k_query])
    rest_sims, rest_best, rest_pairs, _ = _match_block(query_codes[kept], candidate_codes[n_exhaustive:])
    rest_best[:, 0] = kept[rest_best[:, 0]]
    return RerankOutcome(np.concatenate([sims, rest_sims]), pairs + rest_pairs, kept,
                         np.concatenate([best, rest_best]))


def reranked_scores(first_stage_scores: np.ndarray, candidates: np.ndarray,
                    candidate_similarities: np.ndarray) -> np.ndarray:
    """Final ``n_db x n_q`` scores: the ``N`` candidates of each query ordered by their RoI
    similarity (in ``[0, 1]``) above all other images, which keep their first-stage order.

    ``candidates`` ``N x n_q`` (from :func:`top_candidates`), ``candidate_similarities`` ``N x n_q``.
    Candidates get ``2 + similarity`` (equal similarities keep the first-stage order through a
    ``1e-6``-sized tie-break, far below the ``1 / D`` resolution of eq. 3); the rest get their
    first-stage rank squashed into ``(0, 1)``, so that the order among them is the first stage's.
    """
    first = np.asarray(first_stage_scores, dtype=np.float64)
    candidates = np.asarray(candidates)
    sims = np.asarray(candidate_similarities, dtype=np.float64)
    if candidates.shape != sims.shape or candidates.shape[1] != first.shape[1]:
        raise ValueError(f"shapes disagree: scores {first.shape}, candidates {candidates.shape}, "
                         f"similarities {sims.shape}")
    n_db = first.shape[0]
    order = np.argsort(-first, axis=0, kind="stable")
    out = np.empty_like(first)
    cols = np.arange(first.shape[1])[None, :]
    out[order, cols] = 1.0 - (np.arange(n_db)[:, None] + 1.0) / (n_db + 1.0)
    tie_break = 1e-6 * np.arange(candidates.shape[0])[:, None] / max(candidates.shape[0], 1)
    out[candidates, cols] = 2.0 + sims - tie_break
    return out


# ---------------------------------------------------------------------------------------------
# On-disk cache of this module (SIFT descriptors, vocabularies, RoI boxes and features)
# ---------------------------------------------------------------------------------------------

def _cache_path(kind: str, key: dict) -> Path:
    """``<cache_root>/roi/<kind>-<hash of key>.npz``; the key is also stored inside the file."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "roi" / f"{kind}-{digest}.npz"


def _read_npz(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data["__key__"])) != key:
            return None  # a hash collision of keys: not this entry
        return {name: data[name] for name in data.files if name != "__key__"}


def _read_cache(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    return read_entry(path, lambda p: _read_npz(p, key), "RoI cache entry")


def _write_cache(path: Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, __key__=np.array(json.dumps(key, sort_keys=True)), **arrays)

    atomic_write(path, write)


def cached_arrays(kind: str, key: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from the cache entry ``(kind, key)``, computed by ``compute()`` and stored when missing.

    ``key`` must be JSON-serialisable and name everything the result depends on.
    """
    path = _cache_path(kind, key)
    arrays = _read_cache(path, key)
    if arrays is None:
        arrays = compute()
        _write_cache(path, key, arrays)
    return arrays


def files_fingerprint(dataset, split: str) -> str:
    """Hash of the names, sizes and modification times of the image files of a split.

    Part of this module's cache keys next to ``dataset.key`` (which covers the image lists and
    boxes, not the pixels), so that regenerated or replaced images are never served stale
    descriptors. Costs one ``stat`` per file.
    """
    digest = hashlib.sha1()
    for path, _ in split_images(dataset, split):
        try:
            st = os.stat(path)
            digest.update(f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            digest.update(f"{Path(path).name}:missing;".encode())
    return digest.hexdigest()[:16]


def _pack(rows: Sequence[np.ndarray], width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(r) for r in rows], np.int64)
    flat = np.concatenate([np.asarray(r, dtype).reshape(-1, width) for r in rows]) if rows else np.zeros((0, width), dtype)
    return flat, counts


def _unpack(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def _progress(items, desc: str):
    from tqdm.auto import tqdm

    from .features import progress_enabled

    return tqdm(items, desc=desc, unit="img", leave=False, mininterval=1.0, disable=not progress_enabled())


# ---------------------------------------------------------------------------------------------
# First stage on a dataset (cached)
# ---------------------------------------------------------------------------------------------

def dataset_sift_descriptors(dataset, split: str = "db", params: SiftParams = SiftParams()) -> list[np.ndarray]:
    """SIFT descriptors of every image of a split (list of ``n_i x 128``), cached on disk under
    ``(dataset.key, split, SIFT parameters)``. Unreadable images get no descriptor (with a warning).
    Queries that are database images used whole (Holidays, UKBench, ``folder:``) reuse the database's."""
    from helpers.images import ImageReadError

    alias = db_alias(dataset, split)
    if alias is not None:
        db = dataset_sift_descriptors(dataset, "db", params)
        return [db[j] for j in alias]
    key = {"dataset": dataset.key, "files": files_fingerprint(dataset, split), "split": split,
           "sift": vars(params), "version": 1}

    def compute():
        rows = []
        for i, (path, _) in enumerate(_progress(split_images(dataset, split), f"SIFT {dataset.name} {split}")):
            try:
                img = load_split_image(dataset, split, i, params.max_side)
            except (ImageReadError, ValueError, OSError) as exc:
                warnings.warn(f"SIFT: skipping {Path(path).name}: {getattr(exc, 'reason', exc)}", stacklevel=2)
                rows.append(np.zeros((0, 128), np.float32))
                continue
            rows.append(sift_descriptors(img, params))
        flat, counts = _pack(rows, 128, np.float16)        # float16 halves the cache; SIFT values are < 1
        return {"descriptors": flat, "counts": counts}

    arrays = cached_arrays("sift", key, compute)
    return [d.astype(np.float32) for d in _unpack(arrays["descriptors"], arrays["counts"])]


def dataset_vocabulary(train_dataset, n_words: int, params: SiftParams = SiftParams(), seed: int = 0,
                       max_descriptors: int = 100_000) -> np.ndarray:
    """Visual vocabulary (``n_words x 128``) learned (and cached) on the SIFT descriptors of the
    database images of ``train_dataset`` by :func:`helpers.bow.learn_vocabulary`, on at most
    ``max_descriptors`` of them."""
    key = {"dataset": train_dataset.key, "files": files_fingerprint(train_dataset, "db"), "sift": vars(params),
           "n_words": int(n_words), "seed": int(seed),
           "max_descriptors": int(max_descriptors), "version": 2}

    def compute():
        descriptors = np.concatenate(dataset_sift_descriptors(train_dataset, "db", params))
        return {"vocabulary": bow.learn_vocabulary(descriptors, n_words, seed, max_descriptors)}

    return cached_arrays("vocabulary", key, compute)["vocabulary"]


def bow_scores(dataset, vocabulary: np.ndarray, params: SiftParams = SiftParams()) -> np.ndarray:
    """First stage (sec. 3.2.4): TF-IDF scores ``n_db x n_q`` of the queries (cropped by their
    box) against the database, through a :class:`helpers.bow.InvertedFile` of the SIFT descriptors'
    visual words."""
    db_words = [bow.assign_words(d, vocabulary) for d in dataset_sift_descriptors(dataset, "db", params)]
    q_words = [bow.assign_words(d, vocabulary) for d in dataset_sift_descriptors(dataset, "query", params)]
    return bow.InvertedFile(len(vocabulary)).fit(db_words).score(q_words)


# ---------------------------------------------------------------------------------------------
# RoIs and RoI features on a dataset (cached)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RoIParams:
    """Parameters of the RoI detection (sec. 3.2.1-3.2.2); see :func:`detect_rois`."""
    threshold: float = 0.0
    t_min: float = 0.05
    t_rate: float = 4.0
    t_iou: float = T_IOU

    def __post_init__(self):
        detect_rois(torch.ones(1, 2, 2), k=1, **vars(self))        # validates every value


@dataclass
class RoISet:
    """RoIs and their raw (not yet binarised) features for every image of a split.

    Row 0 of each image is the whole image (used for the baseline); rows ``1..k_i`` are the RoIs,
    best first (``k_i <= k``; an image whose base regions were all filtered out has one RoI, the
    whole image). ``boxes`` are in pixels of the image as the backbone saw it (``image_hw``).
    """
    boxes: list[np.ndarray]
    features: list[np.ndarray]
    image_hw: list[tuple[int, int]]
    feature: str
    k: int

    def rois(self, k: int | None = None) -> list[np.ndarray]:
        """Feature rows of the top ``k`` RoIs of each image (all stored RoIs when ``k`` is None)."""
        k = self.k if k is None else positive_int("k", k)
        if k > self.k:
            raise ValueError(f"this RoISet holds at most {self.k} RoIs per image, asked for {k}")
        return [f[1:1 + k] for f in self.features]

    def whole_images(self) -> list[np.ndarray]:
        """Feature row of the whole image (``1 x D``) of each image: the global baseline."""
        return [f[:1] for f in self.features]

    def roi_boxes(self, k: int | None = None) -> list[np.ndarray]:
        k = self.k if k is None else k
        return [b[1:1 + k] for b in self.boxes]


def box_coverage(boxes, image_hw: tuple[int, int]) -> float:
    """Share (0..1) of an ``H x W`` image's pixels inside at least one of ``boxes``
    (``[x1, y1, x2, y2]`` in pixels, exclusive ends): how much of the image a set of RoIs describes."""
    height, width = (positive_int("image height", image_hw[0]), positive_int("image width", image_hw[1]))
    covered = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        covered[max(int(y1), 0):math.ceil(y2), max(int(x1), 0):math.ceil(x2)] = True
    return float(covered.mean())


def mean_roi_coverage(roi_set: "RoISet", k: int) -> float:
    """Mean over the images of ``roi_set`` of the :func:`box_coverage` of their top ``k`` RoIs."""
    return float(np.mean([box_coverage(b, hw) for b, hw in zip(roi_set.roi_boxes(k), roi_set.image_hw)]))


def within_margin(comparison: dict, margin: float = 1.0) -> dict:
    """The claim "b loses at most ``margin`` AP points against a" on a paired comparison made
    without a direction (:func:`helpers.evaluate.paired_comparison`, ``expected=None``): reproduced
    when the whole 95% interval lies above ``-margin``, contradicted when it lies below, not
    separable otherwise. Returns a copy with ``claim`` set, so that ``claim_line`` prints it."""
    from helpers.evaluate import CONTRADICTED, NOT_SEPARABLE, REPRODUCED

    if not margin > 0:
        raise ValueError(f"margin must be positive (AP points), got {margin}")
    low, high = comparison["ci"]
    result = type(comparison)(comparison)
    result["claim"] = REPRODUCED if low > -margin else CONTRADICTED if high < -margin else NOT_SEPARABLE
    return result


def warp_crops(image: np.ndarray, boxes_px: np.ndarray, crop_size: int) -> list[np.ndarray]:
    """Crop each box out of ``image`` and warp it to ``crop_size x crop_size`` (bicubic), as the
    RoI is "fed directly into" a network with a fixed input size (sec. 3.2.3; R-CNN-style warp)."""
    from PIL import Image

    from helpers.images import crop_box

    crop_size = positive_int("crop_size", crop_size)
    crops = []
    for box in np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4):
        crop = Image.fromarray(crop_box(image, box))
        crops.append(np.asarray(crop.resize((crop_size, crop_size), Image.Resampling.BICUBIC), np.uint8))
    return crops


def crop_fc_features(backbone, image: np.ndarray, boxes_px: np.ndarray, crop_size: int = 224,
                     batch_size: int = 32) -> np.ndarray:
    """Penultimate-layer ("fc") features of the cropped, warped RoIs (sec. 3.2.3): ``K x D`` float32.

    Runs ``backbone.forward_taps(backbone.preprocess(crop), ["fc"])`` on batches of crops.
    """
    crops = warp_crops(image, boxes_px, crop_size)
    out = []
    for start in range(0, len(crops), batch_size):
        batch = torch.cat([backbone.preprocess(c) for c in crops[start:start + batch_size]])
        out.append(backbone.forward_taps(batch, ["fc"])["fc"].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.channels("fc")), np.float32)


def compute_roi_set(dataset, backbone, image_size: int, split: str, feature: str = "fc", k: int = 20,
                    params: RoIParams = RoIParams(), crop_size: int = 224) -> RoISet:
    """RoIs (sec. 3.2.2) and their features (sec. 3.2.3) for every image of a split, cached.

    ``feature``: ``"fc"`` (classifier penultimate layer on each warped crop, ``crop_size`` pixels),
    ``"max"`` / ``"sum"`` (pooling of the last conv map inside each RoI, :func:`pool_roi_features`).
    The cache entry holds RoIs for the largest ``k`` computed so far: a smaller ``k`` reuses it (the
    RoIs for ``k`` are a prefix of those for a larger ``k``, see :func:`select_rois`).
    """
    feature = choice("feature", feature, ROI_FEATURES)
    k = positive_int("k", k)
    crop_size = positive_int("crop_size", crop_size)
    alias = db_alias(dataset, split)
    if alias is not None:                      # queries are database images used whole: reuse those
        db = compute_roi_set(dataset, backbone, image_size, "db", feature, k, params, crop_size)
        return RoISet([db.boxes[j] for j in alias], [db.features[j] for j in alias],
                      [db.image_hw[j] for j in alias], feature, db.k)
    key = {"dataset": dataset.key, "files": files_fingerprint(dataset, split), "split": split,
           "backbone": backbone.name, "weights": backbone.weights_id,
           "layer": backbone.last_conv, "image_size": int(image_size), "feature": feature,
           "roi": vars(params), "crop_size": crop_size if feature == "fc" else None, "version": 1}
    path = _cache_path("roiset", key)
    cached = _read_cache(path, key)
    if cached is None or int(cached["k"]) < k:
        cached = _compute_roi_arrays(dataset, backbone, image_size, split, feature, k, params, crop_size)
        _write_cache(path, key, cached)
    k_stored = int(cached["k"])
    boxes = _unpack(cached["boxes"], cached["counts"])
    features = [f.astype(np.float32) for f in _unpack(cached["features"], cached["counts"])]
    image_hw = [tuple(int(v) for v in hw) for hw in cached["image_hw"]]
    roi_set = RoISet(boxes, features, image_hw, feature, k_stored)
    if k < k_stored:
        roi_set = RoISet([b[:1 + k] for b in boxes], [f[:1 + k] for f in features], image_hw, feature, k)
    return roi_set


def _compute_roi_arrays(dataset, backbone, image_size, split, feature, k, params, crop_size):
    from helpers.features import extract_maps, extraction_info

    maps = extract_maps(dataset, backbone, [backbone.last_conv], image_size, split)[backbone.last_conv]
    image_hw = [tuple(hw) for hw in extraction_info(dataset, backbone, image_size, split)["image_hw"]]
    all_boxes, all_features = [], []
    for i, fmap in enumerate(_progress(maps, f"RoI {feature} {dataset.name} {split}")):
        map_hw = (int(fmap.shape[1]), int(fmap.shape[2]))
        det = detect_rois(fmap, k=k, **vars(params))
        cells = torch.cat([torch.tensor([[0.0, 0.0, map_hw[1], map_hw[0]]]), det.boxes])  # row 0: whole image
        hw = image_hw[i] if min(image_hw[i]) > 0 else map_hw        # skipped image: zero map anyway
        pixels = boxes_to_image(cells, map_hw, hw).numpy()
        if feature == "fc":
            if min(image_hw[i]) > 0:
                image = load_split_image(dataset, split, i, image_size)
                scale = np.array([image.shape[1] / hw[1], image.shape[0] / hw[0]] * 2)
                feats = crop_fc_features(backbone, image, pixels * scale, crop_size)
            else:
                feats = np.zeros((len(pixels), backbone.channels("fc")), np.float32)
        else:
            feats = pool_roi_features(fmap, cells, feature).numpy()
        all_boxes.append(pixels)
        all_features.append(feats)
    boxes, counts = _pack(all_boxes, 4, np.float32)
    dim = all_features[0].shape[1] if all_features else 1
    features, _ = _pack(all_features, dim, np.float16)
    return {"boxes": boxes, "features": features, "counts": counts,
            "image_hw": np.array(image_hw, np.int64).reshape(-1, 2), "k": np.array(k)}


# ---------------------------------------------------------------------------------------------
# Encoding and re-ranking a whole dataset
# ---------------------------------------------------------------------------------------------

def encode_features(rows: Sequence[np.ndarray], whitening=None) -> list[np.ndarray]:
    """Binary codes (eq. 2) of per-image feature rows, after PCA-whitening + l2 (sec. 3.2.3, for fc
    features) when a fitted :class:`helpers.whitening.PCAWhitening` is given."""
    codes = []
    for r in rows:
        r = np.asarray(r, np.float32)
        if whitening is not None:
            r = whitening.transform(l2n_np(r))
        codes.append(binarize_features(r))
    return codes


def roi_codes(roi_set: RoISet, k: int | None = None, whitening=None) -> list[np.ndarray]:
    """Binary codes of every image of a :class:`RoISet`: its top ``k`` RoIs, or with ``k=None`` the
    whole image only (the global baseline of tables 1-2)."""
    rows = roi_set.whole_images() if k is None else roi_set.rois(k)
    return encode_features(rows, whitening)


def fit_roi_whitening(train_set: RoISet, dim: int | None = 256):
    """PCA-whitening (sec. 3.2.3) learned on every l2-normalised feature row (whole image + stored
    RoIs) of a *training* :class:`RoISet`; the method uses :data:`WHITENING_ROIS` RoIs per image."""
    from helpers.whitening import PCAWhitening

    rows = np.concatenate(train_set.features)
    if dim is not None and dim > min(rows.shape[0] - 1, rows.shape[1]):
        raise ValueError(f"cannot learn a {dim}-d whitening from {rows.shape[0]} training rows of "
                         f"{rows.shape[1]} dimensions; lower whiten_dim")
    return PCAWhitening(dim).fit(l2n_np(rows))


def rerank_dataset(first_stage_scores: np.ndarray, query_codes: Sequence[np.ndarray],
                   db_codes: Sequence[np.ndarray], shortlist: int, n_exhaustive: int | None = None,
                   k_query: int | None = None) -> tuple[np.ndarray, list[RerankOutcome], np.ndarray]:
    """Re-rank the top ``shortlist`` (= N) first-stage results of every query by RoI matching.

    ``n_exhaustive=None`` matches exhaustively; otherwise fast matching (:func:`rerank_candidates`).
    Returns the final ``n_db x n_q`` scores (:func:`reranked_scores`), the per-query outcomes and the
    ``N x n_q`` candidate indices.
    """
    first = np.asarray(first_stage_scores)
    if first.shape != (len(db_codes), len(query_codes)):
        raise ValueError(f"first-stage scores {first.shape} do not match {len(db_codes)} database and "
                         f"{len(query_codes)} query descriptions")
    candidates = top_candidates(first, shortlist)
    outcomes = []
    sims = np.zeros(candidates.shape)
    for q in range(first.shape[1]):
        out = rerank_candidates(query_codes[q], [db_codes[j] for j in candidates[:, q]], n_exhaustive, k_query)
        outcomes.append(out)
        sims[:, q] = out.similarities
    return reranked_scores(first, candidates, sims), outcomes, candidates


# ---------------------------------------------------------------------------------------------
# The method behind ``python -m helpers evaluate --method roi``
# ---------------------------------------------------------------------------------------------

@register_method("roi")
class RoIMethod(RetrievalMethod):
    """BoW first stage + RoI re-ranking (paper 003). ``python -m helpers evaluate --method roi``.

    Options (``--option KEY=VALUE``):
        feature: ``"fc"`` (default; RoI crops through the network), ``"max"`` or ``"sum"`` (pooled
            last-conv map). k: RoIs per image (10). baseline: describe each image by the whole image
            only (tables 1-2 "Baseline"). threshold, t_min, t_rate, t_iou: RoI detection
            (:class:`RoIParams`). shortlist: N first-stage candidates re-ranked (100).
            n_exhaustive / k_query: fast matching with exhaustive matching on the top n and the k
            most matched query RoIs for the rest (10 / 5); ``fast=False`` matches exhaustively.
            whiten: PCA-whiten before binarising (default: True for fc as in sec. 3.2.3, False for the
            pooled conv features), whiten_dim (256), learned on the training set's features (whole
            image + :data:`WHITENING_ROIS` RoIs per image, whatever ``k`` and ``baseline``).
            crop_size: side of the warped RoI crops for fc (224). vocabulary_size (1000),
            sift_max_side (320), sift_max_keypoints (300): first stage.
    """

    needs_training = True
    learns = "the first stage's SIFT vocabulary and the RoI features' PCA-whitening"
    layers = ("last_conv",)

    def __init__(self, backbone, image_size: int, feature: RoIFeature = "fc", k: int = 10, baseline: bool = False,
                 threshold: float = RoIParams.threshold, t_min: float = RoIParams.t_min,
                 t_rate: float = RoIParams.t_rate, t_iou: float = T_IOU, shortlist: int = 100,
                 fast: bool = True, n_exhaustive: int = 10, k_query: int = 5, whiten: bool | None = None,
                 whiten_dim: int | None = 256, crop_size: int = 224, vocabulary_size: int = 1000,
                 sift_max_side: int = SiftParams.max_side, sift_max_keypoints: int = SiftParams.max_keypoints):
        super().__init__(backbone, image_size)
        self.feature = choice("feature", feature, ROI_FEATURES)
        self.k = positive_int("k", k)
        self.baseline = parse_bool("baseline", baseline)
        # floats, so that the cache keys (which hold these values) do not depend on how they were typed
        self.roi_params = RoIParams(fraction("threshold", threshold), fraction("t_min", t_min), float(t_rate),
                                    fraction("t_iou", t_iou, low_open=True))
        self.shortlist = positive_int("shortlist", shortlist)
        self.fast = parse_bool("fast", fast)
        self.n_exhaustive = positive_int("n_exhaustive", n_exhaustive)
        self.k_query = positive_int("k_query", k_query)
        self.whiten = (feature == "fc") if whiten is None else parse_bool("whiten", whiten)
        self.whiten_dim = None if whiten_dim is None else positive_int("whiten_dim", whiten_dim)
        self.crop_size = positive_int("crop_size", crop_size)
        self.vocabulary_size = positive_int("vocabulary_size", vocabulary_size)
        self.sift_params = SiftParams(max_side=positive_int("sift_max_side", sift_max_side),
                                      max_keypoints=positive_int("sift_max_keypoints", sift_max_keypoints))
        self.layers = (backbone.last_conv,)
        self.vocabulary: np.ndarray | None = None
        self.whitening = None

    # -------------------------------------------------------------- pieces
    def roi_set(self, dataset, split: str) -> RoISet:
        return compute_roi_set(dataset, self.backbone, self.image_size, split, self.feature, self.k,
                               self.roi_params, self.crop_size)

    def fit(self, train_dataset) -> "RoIMethod":
        """Learn the visual vocabulary and (if ``whiten``) the PCA-whitening on ``train_dataset``."""
        self.vocabulary = dataset_vocabulary(train_dataset, self.vocabulary_size, self.sift_params)
        if self.whiten:
            train_set = compute_roi_set(train_dataset, self.backbone, self.image_size, "db", self.feature,
                                        WHITENING_ROIS, self.roi_params, self.crop_size)
            self.whitening = fit_roi_whitening(train_set, self.whiten_dim)
        return self

    def _check_fitted(self):
        if self.vocabulary is None or (self.whiten and self.whitening is None):
            raise RuntimeError("the roi method must be fit on a training dataset first (method.fit(train))")

    def describe(self, dataset, split: str) -> list[np.ndarray]:
        """Binary RoI codes (eq. 2) of every image of a split (``"db"`` or ``"query"``)."""
        if self.whiten and self.whitening is None:
            raise RuntimeError("the roi method must be fit on a training dataset first (method.fit(train))")
        return roi_codes(self.roi_set(dataset, split), None if self.baseline else self.k, self.whitening)

    def score(self, query_desc, db_desc) -> np.ndarray:
        """Exhaustive RoI matching of every query with every database image (no first stage)."""
        return np.array([[image_similarity(q, d) for q in query_desc] for d in db_desc])

    def first_stage(self, dataset) -> np.ndarray:
        """BoW TF-IDF scores ``n_db x n_q`` (sec. 3.2.4)."""
        self._check_fitted()
        return bow_scores(dataset, self.vocabulary, self.sift_params)

    def search(self, dataset) -> np.ndarray:
        """First stage, then RoI re-ranking of the top ``shortlist`` candidates of each query."""
        self._check_fitted()
        first = self.first_stage(dataset)
        scores, self.last_outcomes, self.last_candidates = rerank_dataset(
            first, self.describe(dataset, "query"), self.describe(dataset, "db"), self.shortlist,
            self.n_exhaustive if self.fast else None, self.k_query if self.fast else None)
        return scores


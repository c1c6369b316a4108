"""Multi-layer similarity fusion (paper 002).

Yu, Yang, Yao, Sun, Xu, "Exploiting the complementary strengths of multi-layer CNN features for
image retrieval", Neurocomputing (2017).

Idea. A high ("fc") layer measures *semantic* similarity, a low (conv) layer *fine-grained*
similarity. Instead of concatenating the per-layer descriptors (which adds the per-layer cosine
similarities, eq. 1) the paper passes each layer's similarity through a mapping function that
compresses the differences between similarities above a threshold ``t`` (eq. 3) before adding
them (eq. 2). Images that the high layer already finds "semantically similar" (``S > t``) then look
almost equally similar to it, and the low layer decides their order: the low layer *re-ranks* the
high layer's short list.

Equations (numbers as in the paper)

* (1) direct concatenation ``S = sum_i S_i`` (cosine similarities of l2-normalised per-layer
  descriptors; the dot product of the concatenated l2-normalised descriptors is exactly this sum).
* (2) fused similarity ``S = sum_i f_i(S_i)``.
* (3) ``f_i(S) = t_i + (1 - t_i) * ((S - t_i) / (1 - t_i)) ** p_i`` if ``S > t_i`` else ``S``,
  with thresholds ordered from the highest to the lowest selected layer ``t_1 <= ... <= t_C`` and
  ``t_C = 1`` for the lowest layer (its similarity is used as is). The paper's defaults are
  ``t = 0.2, p = 0.45`` for the high layer of a two-layer pair (Sec. 3.2, 5.2) and
  ``t = (0.2, 0.4, 1), p = (0.45, 0.45, -)`` for three layers (Sec. 5.3).

Limits (Sec. 3.2): ``p = 1`` or ``t = 1`` gives direct concatenation; ``p -> 0`` maps every
similarity above ``t`` to 1, i.e. the low layer re-ranks the high layer's list of images with
``S_high > t`` (:func:`rerank_by_low_layer`).

Conv-layer encodings (Sec. 4.1). The paper encodes a conv map as a bag of words (BoW) of its
local ``C``-dimensional activation vectors over a vocabulary learned with approximate k-means on
4 M local features (50 K - 100 K words). Here :func:`learn_layer_vocabulary` learns the words
(k-means of :mod:`helpers.bow`) and their idf on local features of the *training* dataset
(``default_train_dataset``), never on the evaluated one, with a vocabulary sized for the small demo
sets; :func:`bow_encode` builds the tf-idf vectors. The lighter default is a pooled vector
(``helpers.pooling``, R-MAC by default).

Similarities are cosines: every layer's descriptors are l2-normalised (:func:`helpers.pooling.l2n_np`),
so a layer's similarity matrix is ``db @ q.T``. Evaluation and rankings are the core's
(:func:`helpers.evaluate.evaluate_scores`, :func:`helpers.evaluate.ranks_from_scores`).
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np

from . import bow
from .evaluate import evaluate_scores, per_query_ap
from .methods import RetrievalMethod, register_method
from .options import choice, positive_int
from .pooling import POOLINGS, l2n_np

__all__ = [
    "PAPER_LAYERS",
    "PAPER_LAYER_ORDER",
    "PAPER_TWO_LAYER_THRESHOLD",
    "PAPER_TWO_LAYER_EXPONENT",
    "PAPER_THREE_LAYER_THRESHOLDS",
    "PAPER_THREE_LAYER_EXPONENTS",
    "PAPER_LAYER_PAIRS",
    "ONE_FC_LAYER_PAIR",
    "FUSIONS",
    "CONV_ENCODINGS",
    "mapping_function",
    "concatenation_similarity",
    "fused_similarity",
    "paper_parameters",
    "rerank_by_low_layer",
    "sample_local_features",
    "learn_layer_vocabulary",
    "BowVocabulary",
    "bow_histograms",
    "bow_encode",
    "stage_first_taps",
    "paper_layer_map",
    "paper_layer_roles",
    "fusion_grid",
    "most_changed_query",
    "two_layer_combinations",
    "three_layer_combinations",
    "conv_pairs",
    "single_layer_rows",
    "combination_rows",
    "MultiLayerFusion",
]

# --------------------------------------------------------------------------------------------------
# The paper's layer choices mapped onto each backbone.
# --------------------------------------------------------------------------------------------------

#: The paper's five layers, from high to low (Sec. 4.1 for AlexNet, Sec. 5.4 for VGG16).
PAPER_LAYER_ORDER = ("fc1", "fc2", "conv5_1", "conv4_1", "conv3_1")

#: For each backbone, the tap (``Backbone.forward_taps`` name) that plays the role of each of the
#: paper's layers, or ``None`` where the backbone has no such layer.
#:
#: * vgg16: the paper's own choice (Sec. 5.4): fc1 (= fc6), fc2 (= fc7, the penultimate vector),
#:   conv3_1, conv4_1, conv5_1 = the first conv of each of the last three conv stages
#:   (output strides 4, 8, 16).
#: * alexnet: Sec. 4.1 uses conv3, conv4, conv5 (AlexNet has one conv per stage, so "convN_1" is
#:   convN) and fc1, fc2.
#: * efficientnet_lite0, mobilenet_v2, resnet50/101 have ONE fully-connected layer, the classifier.
#:   Their "fc" tap is the globally average-pooled last conv map, the vector the classifier reads,
#:   i.e. the same role as VGG16's fc2 (the penultimate vector); there is no fc1.
#:   The three conv roles follow the VGG16 rule "first block of each of the last three resolution
#:   stages": for efficientnet_lite0 the strides of block0..block6 are 2, 4, 8, 16, 16, 32, 32, so
#:   conv3_1 -> block2 (stride 8), conv4_1 -> block3 (stride 16), conv5_1 -> block5 (stride 32);
#:   mobilenet_v2: block4, block7, block14 (strides 8, 16, 32); resnets: layer2, layer3, layer4.
#:   (:func:`paper_layer_map` checks the table against the backbone's taps.)
PAPER_LAYERS: dict[str, dict[str, str | None]] = {
    "vgg16": {"fc1": "fc6", "fc2": "fc7", "conv5_1": "conv5_1", "conv4_1": "conv4_1",
              "conv3_1": "conv3_1"},
    "alexnet": {"fc1": "fc6", "fc2": "fc7", "conv5_1": "conv5", "conv4_1": "conv4",
                "conv3_1": "conv3"},
    "efficientnet_lite0": {"fc1": None, "fc2": "fc", "conv5_1": "block5", "conv4_1": "block3",
                           "conv3_1": "block2"},
    "mobilenet_v2": {"fc1": None, "fc2": "fc", "conv5_1": "block14", "conv4_1": "block7",
                     "conv3_1": "block4"},
    "resnet50": {"fc1": None, "fc2": "fc", "conv5_1": "layer4", "conv4_1": "layer3",
                 "conv3_1": "layer2"},
    "resnet101": {"fc1": None, "fc2": "fc", "conv5_1": "layer4", "conv4_1": "layer3",
                  "conv3_1": "layer2"},
}

#: Sec. 3.2 / 5.2: two layers, the high layer's threshold and exponent (the low layer has t = 1).
PAPER_TWO_LAYER_THRESHOLD = 0.2
PAPER_TWO_LAYER_EXPONENT = 0.45
#: Sec. 5.3: three layers, thresholds and exponents from the highest to the lowest layer.
#: The lowest layer's exponent is irrelevant because its threshold is 1.
PAPER_THREE_LAYER_THRESHOLDS = (0.2, 0.4, 1.0)
PAPER_THREE_LAYER_EXPONENTS = (0.45, 0.45, 1.0)


def paper_parameters(n_layers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The paper's ``(thresholds, exponents)`` for ``n_layers`` layers ordered high to low.

    One layer: ``t = 1`` (the similarity itself). Two layers: ``t = (0.2, 1), p = (0.45, 1)``
    (Sec. 5.2). Three layers: ``t = (0.2, 0.4, 1), p = (0.45, 0.45, 1)`` (Sec. 5.3). The paper gives
    no setting for more layers; we raise rather than invent one.
    """
    if n_layers == 1:
        return (1.0,), (1.0,)
    if n_layers == 2:
        return (PAPER_TWO_LAYER_THRESHOLD, 1.0), (PAPER_TWO_LAYER_EXPONENT, 1.0)
    if n_layers == 3:
        return PAPER_THREE_LAYER_THRESHOLDS, PAPER_THREE_LAYER_EXPONENTS
    raise ValueError(f"the paper gives default thresholds for 1 to 3 layers only, got {n_layers} "
                     "layers; pass thresholds=... and exponents=... explicitly")


# --------------------------------------------------------------------------------------------------
# Similarities: eq. (1), (2), (3).
# --------------------------------------------------------------------------------------------------

def _check_threshold_exponent(threshold: float, exponent: float) -> None:
    if not (isinstance(threshold, (int, float, np.floating, np.integer)) and math.isfinite(threshold)):
        raise ValueError(f"threshold t must be a finite number, got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold t must lie in [0, 1] (cosine similarity range of the paper), "
                         f"got {threshold}")
    if not (isinstance(exponent, (int, float, np.floating, np.integer)) and math.isfinite(exponent)):
        raise ValueError(f"exponent p must be a finite number, got {exponent!r}")
    if exponent < 0.0:
        raise ValueError(f"exponent p must be >= 0 (the paper uses p in (0, 1); p = 0 is the "
                         f"re-ranking limit), got {exponent}")


def mapping_function(similarity, threshold: float, exponent: float) -> np.ndarray:
    """Eq. (3): ``f(S) = t + (1 - t) ((S - t) / (1 - t))^p`` for ``S > t``, ``S`` otherwise.

    Parameters
    ----------
    similarity : array_like
        Cosine similarities (any shape). The paper's similarities lie in ``[0, 1]`` (non-negative
        features); values below ``t``, including negative ones, pass unchanged.
    threshold : float
        ``t`` in ``[0, 1]``. ``t = 1`` returns ``S`` unchanged (direct use of the layer).
    exponent : float
        ``p >= 0``; the paper uses ``p`` in ``(0, 1)``, which compresses the differences between
        similarities in ``[t, 1]``. ``p = 1`` is the identity; ``p = 0`` maps every ``S > t`` to 1.

    The function is continuous (``f(t) = t``), non-decreasing, fixes ``f(1) = 1`` and, for
    ``p <= 1``, satisfies ``f(S) >= S``. Similarities above 1 by rounding error are handled by the
    same formula (they map slightly above 1).
    """
    _check_threshold_exponent(threshold, exponent)
    s = np.asarray(similarity, dtype=np.float64)
    if threshold >= 1.0 or exponent == 1.0:
        return s.copy()
    out = s.copy()
    above = s > threshold
    scaled = (s[above] - threshold) / (1.0 - threshold)
    out[above] = threshold + (1.0 - threshold) * np.power(scaled, exponent)
    return out


def _as_similarity_list(layer_similarities) -> list[np.ndarray]:
    """The per-layer similarity arrays as float64 arrays, checked to be one or more of one shape."""
    if isinstance(layer_similarities, np.ndarray) and layer_similarities.ndim < 1:
        raise ValueError("layer_similarities must hold one similarity array per layer")
    sims = [np.asarray(s, dtype=np.float64) for s in layer_similarities]
    if len(sims) == 0:
        raise ValueError("layer_similarities is empty: give one similarity array per layer")
    shape = sims[0].shape
    for i, s in enumerate(sims):
        if s.shape != shape:
            raise ValueError(f"all layers must have similarity arrays of the same shape; layer 0 has "
                             f"{shape}, layer {i} has {s.shape}")
    return sims


def concatenation_similarity(layer_similarities: Sequence) -> np.ndarray:
    """Eq. (1): ``S = sum_i S_i``, the similarity of directly concatenated l2-normalised layers.

    ``layer_similarities`` is a sequence of ``C`` arrays of equal shape (e.g. ``n_db x n_q``).
    """
    sims = _as_similarity_list(layer_similarities)
    return np.sum(np.stack(sims, axis=0), axis=0)


def fused_similarity(layer_similarities: Sequence, thresholds: Sequence[float],
                     exponents: Sequence[float], check_order: bool = True) -> np.ndarray:
    """Eq. (2): ``S = sum_i f_i(S_i)`` with ``f_i`` the mapping function of eq. (3).

    Parameters
    ----------
    layer_similarities : sequence of C arrays of equal shape
        Per-layer similarities ordered from the HIGHEST selected layer (``i = 1``) to the LOWEST
        (``i = C``), as in the paper.
    thresholds, exponents : sequences of C numbers
        ``t_i`` and ``p_i``. The paper orders the thresholds ``t_1 <= ... <= t_C`` (higher layers
        use lower thresholds) and sets ``t_C = 1``; with ``check_order`` (default) a violated order
        raises ``ValueError``. ``t_C`` is not forced to 1, so that eq. (2) stays general.
    """
    sims = _as_similarity_list(layer_similarities)
    thresholds = [float(t) for t in thresholds]
    exponents = [float(p) for p in exponents]
    if len(thresholds) != len(sims) or len(exponents) != len(sims):
        raise ValueError(f"need one threshold and one exponent per layer: {len(sims)} layers, "
                         f"{len(thresholds)} thresholds, {len(exponents)} exponents")
    for t, p in zip(thresholds, exponents):
        _check_threshold_exponent(t, p)
    if check_order and any(a > b for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"thresholds must be non-decreasing from the highest to the lowest layer "
                         f"(t_1 <= ... <= t_C, Sec. 3.1), got {thresholds}; pass layers high to low")
    return np.sum(np.stack([mapping_function(s, t, p)
                            for s, t, p in zip(sims, thresholds, exponents)], axis=0), axis=0)


def rerank_by_low_layer(high_similarity, low_similarity, threshold: float) -> np.ndarray:
    """The ``p -> 0`` limit of eq. (2)-(3) for two layers, written as an explicit re-ranking.

    For each query, the high layer's short list (database images with ``S_high > t``) is sorted by
    the low layer's similarity ``S_low`` (ties by ``S_high``) and put first; the remaining images
    follow in the high layer's order. Returns ranks ``n_db x n_q``.

    Eq. (3) with ``p = 0`` maps every ``S_high > t`` to 1, so the fused score is ``1 + S_low`` on
    the short list and ``S_high + S_low`` elsewhere. The two orders agree whenever the short list
    stays ahead (e.g. ``S_low`` in ``[0, 1 - t]`` off the list) and the low layer does not reorder
    the rest; Sec. 3.2 calls this limit "re-ranking high-layer ranking results using low-layer
    similarity".
    """
    high = np.asarray(high_similarity, dtype=np.float64)
    low = np.asarray(low_similarity, dtype=np.float64)
    if high.shape != low.shape or high.ndim != 2:
        raise ValueError(f"expected two n_db x n_q arrays of equal shape, got {high.shape} and "
                         f"{low.shape}")
    _check_threshold_exponent(threshold, 0.0)
    n_db, n_q = high.shape
    ranks = np.empty((n_db, n_q), dtype=np.int64)
    for j in range(n_q):
        on_list = high[:, j] > threshold
        short = np.flatnonzero(on_list)
        rest = np.flatnonzero(~on_list)
        short = short[np.lexsort((-high[short, j], -low[short, j]))]
        rest = rest[np.argsort(-high[rest, j], kind="stable")]
        ranks[:, j] = np.concatenate([short, rest])
    return ranks


# --------------------------------------------------------------------------------------------------
# Bag of words over conv-layer local features (Sec. 4.1).
# --------------------------------------------------------------------------------------------------

def _local_features(feature_map, normalize: bool) -> np.ndarray:
    """``C x H x W`` map (tensor or array) -> ``(H*W) x C`` float32 local features."""
    fmap = feature_map.detach().cpu().numpy() if hasattr(feature_map, "detach") else np.asarray(feature_map)
    if fmap.ndim != 3:
        raise ValueError(f"expected a C x H x W conv map, got shape {fmap.shape}")
    local = fmap.reshape(fmap.shape[0], -1).T.astype(np.float32)
    return l2n_np(local) if normalize else local


def sample_local_features(feature_maps: Iterable, n_per_image: int = 200, seed: int = 0,
                          normalize: bool = True) -> np.ndarray:
    """Sample up to ``n_per_image`` local ``C``-dim activation vectors from each ``C x H x W`` map.

    The paper trains its vocabulary on "over 4 M" such local features (Sec. 4.1). Each spatial cell
    of a conv map is one local feature; with ``normalize`` each is l2-normalised first (so that the
    k-means distance compares activation patterns, not magnitudes). Deterministic for a ``seed``.
    """
    n_per_image = positive_int("n_per_image", n_per_image)
    rng = np.random.default_rng(seed)
    samples = []
    for fmap in feature_maps:
        local = _local_features(fmap, normalize)
        if len(local) > n_per_image:
            local = local[np.sort(rng.choice(len(local), n_per_image, replace=False))]
        samples.append(local)
    if not samples:
        raise ValueError("no feature maps given to sample local features from")
    return np.concatenate(samples, axis=0)


@dataclass
class BowVocabulary:
    """A conv layer's visual vocabulary: ``centers`` (``K x C``), ``idf`` weights (``K``, learned on the
    training maps) and whether local features are l2-normalised before assignment (``normalize``)."""

    centers: np.ndarray
    idf: np.ndarray
    normalize: bool = True

    @property
    def size(self) -> int:
        return int(self.centers.shape[0])

    def words(self, feature_map) -> np.ndarray:
        """Visual word of each cell of a ``C x H x W`` map (hard assignment), row-major: ``H*W``."""
        return bow.assign_words(_local_features(feature_map, self.normalize), self.centers)


def learn_layer_vocabulary(train_maps: Sequence, n_words: int = 512, n_per_image: int = 200,
                           seed: int = 0, normalize: bool = True, n_init: int = 1) -> BowVocabulary:
    """Learn a conv layer's visual vocabulary and its idf weights on TRAINING maps only (Sec. 4.1).

    ``train_maps``: ``C x H x W`` conv maps of the training images (``default_train_dataset``).
    Words: k-means (:func:`helpers.bow.learn_vocabulary`) of
    ``n_per_image`` local features sampled per map (:func:`sample_local_features`). idf: of the
    training maps, with ``unseen="rarest"`` (:func:`helpers.bow.idf_weights` says why; the paper
    only says "BoW"). ``n_init`` k-means restarts.
    """
    train_maps = list(train_maps)
    n_words = positive_int("n_words", n_words, minimum=2)
    local = sample_local_features(train_maps, n_per_image=n_per_image, seed=seed, normalize=normalize)
    if len(local) < n_words:
        raise ValueError(f"only {len(local)} local features sampled from {len(train_maps)} training "
                         f"maps, fewer than n_words={n_words}; lower n_words or raise n_per_image")
    centers = bow.learn_vocabulary(local, n_words, seed=seed, n_init=n_init)
    vocab = BowVocabulary(centers=centers, idf=np.ones(n_words), normalize=normalize)
    vocab.idf = bow.idf_weights(_word_counts(train_maps, vocab), unseen="rarest")
    return vocab


def _word_counts(feature_maps: Iterable, vocabulary: BowVocabulary):
    return bow.word_counts([vocabulary.words(fmap) for fmap in feature_maps], vocabulary.size)


def bow_histograms(feature_maps: Iterable, vocabulary: BowVocabulary) -> np.ndarray:
    """Raw word counts ``N x K`` (float64) of each map's local features (hard assignment)."""
    return _word_counts(feature_maps, vocabulary).toarray()


def bow_encode(feature_maps: Iterable, vocabulary: BowVocabulary) -> np.ndarray:
    """BoW descriptors ``N x K`` (float32): l2-normalised tf-idf vectors (Sec. 4.1, :func:`helpers.bow.tfidf`).

    All entries are non-negative, so cosine similarities lie in ``[0, 1]`` as the paper assumes.
    """
    return bow.tfidf(_word_counts(feature_maps, vocabulary), vocabulary.idf).toarray().astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Layer choice on a backbone.
# --------------------------------------------------------------------------------------------------

def _depth(backbone, tap: str) -> int:
    """Position of a tap from low (0) to high, "fc" and "logits" last."""
    return backbone.all_taps.index(backbone.resolve(tap))


def stage_first_taps(backbone, n_stages: int = 3) -> list[str]:
    """The first conv tap of each of the last ``n_stages`` resolution stages, low to high.

    This is the rule behind the paper's VGG16 choice (conv3_1, conv4_1, conv5_1 are the first convs
    of the stages at output strides 4, 8, 16) and behind :data:`PAPER_LAYERS` for backbones the paper
    did not use (for VGG16 it gives exactly conv3_1, conv4_1, conv5_1).
    """
    conv = [tap for tap in backbone.layers if not backbone.is_vector(tap)]
    first_at_stride: dict[int, str] = {}
    for tap in conv:
        first_at_stride.setdefault(backbone.stride(tap), tap)
    strides = sorted(first_at_stride)
    if len(strides) < n_stages:
        raise ValueError(f"backbone {backbone.name!r} has only {len(strides)} conv stages, "
                         f"fewer than {n_stages}")
    return [first_at_stride[s] for s in strides[-n_stages:]]


def paper_layer_map(backbone) -> dict[str, str]:
    """The paper's layer names (:data:`PAPER_LAYER_ORDER`) -> this backbone's taps, high to low.

    Roles without a counterpart (``fc1`` on one-FC networks) are left out. For a backbone missing
    from :data:`PAPER_LAYERS` the conv roles follow :func:`stage_first_taps` and ``fc2`` is "fc".
    """
    table = PAPER_LAYERS.get(backbone.name)
    if table is None:
        conv3, conv4, conv5 = stage_first_taps(backbone, 3)
        table = {"fc1": None, "fc2": "fc", "conv5_1": conv5, "conv4_1": conv4, "conv3_1": conv3}
    out = {}
    for role in PAPER_LAYER_ORDER:
        tap = table.get(role)
        if tap is None:
            continue
        if tap not in backbone.all_taps:
            raise ValueError(f"PAPER_LAYERS[{backbone.name!r}][{role!r}] = {tap!r} is not a tap of the "
                             f"backbone; its taps are {backbone.all_taps}")
        out[role] = tap
    return out


#: The paper's two-layer choice per backbone (Table 8), as paper layer names (roles): fc2 + conv4
#: for AlexNet, fc1 + c5_1 for VGG16.
PAPER_LAYER_PAIRS = {"alexnet": ("fc2", "conv4_1"), "vgg16": ("fc1", "conv5_1")}
#: The pair for backbones with one fully-connected layer (no fc1): fc2 + conv5_1, following VGG16.
ONE_FC_LAYER_PAIR = ("fc2", "conv5_1")


#: Table 8 of the paper: mAP on Oxford 5K and Holidays, N-S score on UKB, as published ("-": not given).
PAPER_TABLE8 = (
    ("Sparse-coded features", "-", "0.727", "3.67"), ("Triangulation embedding", "0.433", "0.617", "3.40"),
    ("BoW-200 K", "0.364", "0.540", "2.81"), ("VLAD", "0.304", "0.556", "3.28"), ("Multi-VLAD", "0.558", "0.653", "-"),
    ("CVLAD", "0.514", "0.827", "3.62"), ("Improved FV", "0.414", "0.626", "3.44"), ("Fisher+color", "-", "0.723", "3.08"),
    ("Neural Codes", "0.545", "0.793", "3.29"), ("MOP-CNN", "-", "0.802", "-"), ("CNNaug-ss", "0.680", "0.843", "-"),
    ("Multi-resolution Spatial Search", "0.844", "0.897", "-"), ("Features from OxfordNet", "0.649", "0.838", "-"),
    ("Features from GoogLeNet", "0.581", "0.840", "-"),
    ("the paper: two layers, AlexNet", "0.611", "0.880", "3.65"), ("the paper: three layers, AlexNet", "0.612", "0.889", "3.69"),
    ("the paper: two layers, VGG-16", "0.608", "0.904", "3.65"), ("the paper: three layers, VGG-16", "0.615", "0.914", "3.68"),
)


def paper_layer_roles(backbone_name: str) -> tuple[str, ...]:
    """The paper's two-layer combination for a backbone as paper layer names (roles, mapped to taps
    by :func:`paper_layer_map`), high layer first: the method's default ``layers``."""
    return PAPER_LAYER_PAIRS.get(backbone_name, ONE_FC_LAYER_PAIR)


# --------------------------------------------------------------------------------------------------
# Evaluation helpers for the notebook (grids of t and p, per-metric summaries).
# --------------------------------------------------------------------------------------------------

def _table_metrics(results: dict) -> dict[str, float]:
    """The columns of this module's tables, from :func:`helpers.evaluate.evaluate_scores`'s results:
    ``mAP_E``, ``mAP_M``, ``mAP_H`` (revisited protocol), else ``mAP`` (and ``NS`` for UKBench)."""
    if all(f"mAP_{s}" in results for s in "EMH"):
        return {f"mAP_{s}": float(results[f"mAP_{s}"]) for s in "EMH"}
    out = {"mAP": float(results["mAP"])}
    if "NS_score" in results:
        out["NS"] = float(results["NS_score"])
    return out


def _table_row(dataset, similarity) -> dict[str, float]:
    return _table_metrics(evaluate_scores(dataset, similarity))


def most_changed_query(dataset, reference_similarity, new_similarity) -> tuple[int, float]:
    """Query whose AP gains most from ``reference`` to ``new`` (the largest loss if none gains):
    ``(query index, AP difference)``. Ties go to the lowest index; queries without AP are skipped."""
    gain = (per_query_ap(evaluate_scores(dataset, new_similarity))
            - per_query_ap(evaluate_scores(dataset, reference_similarity)))
    gain = np.where(np.isfinite(gain), gain, np.nan)
    if np.all(np.isnan(gain)):
        raise ValueError("no query has an average precision (no positives)")
    if np.nanmax(gain) > 0:
        index = int(np.nanargmax(gain))
    else:
        index = int(np.nanargmin(gain))
    return index, float(gain[index])


def fusion_grid(dataset, high_similarity, low_similarity, thresholds: Sequence[float],
                exponents: Sequence[float]) -> dict[str, np.ndarray]:
    """Fig. 3(b)-(d): metrics of the two-layer fusion (eq. 2) over a grid of the high layer's ``t``
    (rows) and ``p`` (columns); the low layer keeps ``t = 1``. Returns ``{metric: len(t) x len(p)}``.
    Row ``t = 1`` (or column ``p = 1``) is direct concatenation (eq. 1)."""
    thresholds, exponents = list(thresholds), list(exponents)
    if not thresholds or not exponents:
        raise ValueError("fusion_grid needs at least one threshold and one exponent")
    grid: dict[str, np.ndarray] = {}
    for a, t in enumerate(thresholds):
        for b, p in enumerate(exponents):
            fused = fused_similarity([high_similarity, low_similarity], (t, 1.0), (p, 1.0))
            for name, value in _table_row(dataset, fused).items():
                grid.setdefault(name, np.full((len(thresholds), len(exponents)), np.nan))[a, b] = value
    return grid


def fusion_grid_aps(dataset, high_similarity, low_similarity, thresholds: Sequence[float],
                    exponents: Sequence[float]) -> np.ndarray:
    """Per-query APs (:func:`helpers.evaluate.per_query_ap`, the headline setting) of the two-layer
    fusion over the grid of :func:`fusion_grid`: an array ``len(t) x len(p) x n_queries``, so that
    every cell can be compared with concatenation query by query."""
    return np.array([[per_query_ap(evaluate_scores(dataset, fused_similarity([high_similarity, low_similarity],
                                                                             (t, 1.0), (p, 1.0))))
                      for p in exponents] for t in thresholds])


def combination_aps(dataset, similarities: dict[str, np.ndarray],
                    combinations: Iterable[Sequence[str]]) -> dict[str, dict[str, np.ndarray]]:
    """Per-query APs behind :func:`combination_rows`: ``{"fc2+conv5_1": {"concat": aps, "fused": aps}}``
    with the paper's parameters for the number of layers, for paired comparisons."""
    out = {}
    for combo in combinations:
        sims = [similarities[name] for name in combo]
        thresholds, exponents = paper_parameters(len(combo))
        out["+".join(combo)] = {
            "concat": per_query_ap(evaluate_scores(dataset, concatenation_similarity(sims))),
            "fused": per_query_ap(evaluate_scores(dataset, fused_similarity(sims, thresholds, exponents)))}
    return out


def two_layer_combinations(roles: Sequence[str]) -> list[tuple[str, str]]:
    """Table 2 / 6: every (fc layer, conv layer) pair among ``roles`` (paper names), high first."""
    fcs = [r for r in PAPER_LAYER_ORDER if r in roles and r.startswith("fc")]
    convs = [r for r in PAPER_LAYER_ORDER if r in roles and r.startswith("conv")]
    return [(f, c) for f in fcs for c in convs]


def three_layer_combinations(high: str, roles: Sequence[str]) -> list[tuple[str, str, str]]:
    """Table 3 / 7: ``high`` (an fc layer) with every pair of conv layers, ordered high to low."""
    convs = [r for r in PAPER_LAYER_ORDER if r in roles and r.startswith("conv")]
    return [(high, a, b) for i, a in enumerate(convs) for b in convs[i + 1:]]


def conv_pairs(roles: Sequence[str]) -> list[tuple[str, str]]:
    """Table 4: every pair of conv layers, higher first."""
    convs = [r for r in PAPER_LAYER_ORDER if r in roles and r.startswith("conv")]
    return [(a, b) for i, a in enumerate(convs) for b in convs[i + 1:]]


def single_layer_rows(dataset, similarities: dict[str, np.ndarray]) -> list[dict]:
    """Table 1 / 5: one row per layer, ``{"layer": name, metric: value, ...}``."""
    return [{"layer": name, **_table_row(dataset, sim)}
            for name, sim in similarities.items()]


def combination_rows(dataset, similarities: dict[str, np.ndarray],
                     combinations: Iterable[Sequence[str]]) -> list[dict]:
    """Tables 2-4 / 6-7: direct concatenation (eq. 1) against the fusion (eq. 2-3) with the
    paper's parameters for the number of layers (:func:`paper_parameters`).

    Each row: ``{"layers": "fc2+conv5_1", "concat <metric>": ..., "fused <metric>": ...}``.
    """
    rows = []
    for combo in combinations:
        sims = [similarities[name] for name in combo]
        thresholds, exponents = paper_parameters(len(combo))
        concat = _table_row(dataset, concatenation_similarity(sims))
        fused = _table_row(dataset, fused_similarity(sims, thresholds, exponents))
        row = {"layers": "+".join(combo)}
        row.update({f"concat {k}": v for k, v in concat.items()})
        row.update({f"fused {k}": v for k, v in fused.items()})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# The retrieval method.
# --------------------------------------------------------------------------------------------------

def _parse_layers(layers) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.replace("+", ",").split(",") if part.strip()]
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct, got {layers}")
    return layers


def _as_tuple(values, what):
    if isinstance(values, (int, float)):
        return (float(values),)
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number or a sequence of numbers, got {values!r}") from exc


def _role_taps(backbone, roles: Sequence[str]) -> tuple[str, ...]:
    """The backbone taps of ``roles`` (paper layer names or tap names), checked to go high to low."""
    table = paper_layer_map(backbone)
    taps = []
    for role in roles:
        if role in table:
            taps.append(table[role])
        elif role in backbone.all_taps or role == "last_conv":
            taps.append(backbone.resolve(role))
        else:
            missing = (PAPER_LAYERS.get(backbone.name, {}).get(role, "?") is None)
            hint = (f" ({backbone.name} has no {role}: it has one fully-connected layer)"
                    if missing else "")
            raise ValueError(f"unknown layer {role!r} for backbone {backbone.name!r}{hint}; use one "
                             f"of the paper's names {list(table)} or a tap {backbone.all_taps}")
    depths = [_depth(backbone, tap) for tap in taps]
    if any(a <= b for a, b in zip(depths, depths[1:])):
        order = [r for _, r in sorted(zip(depths, roles), reverse=True)]
        raise ValueError(f"layers must go from the highest to the lowest (the thresholds t_1 <= ... "
                         f"<= t_C follow that order, Sec. 3.1): got {list(roles)}, use {order}")
    return tuple(taps)


def _layer_parameters(n_layers: int, thresholds, exponents, t, p) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(thresholds, exponents)`` of ``n_layers`` layers: the given ones, else the paper's
    (:func:`paper_parameters`, 1 to 3 layers), with the highest layer's replaced by ``t`` / ``p``.
    Checked here, so that a bad value stops the method's creation rather than its search."""
    if thresholds is None or exponents is None:
        if n_layers > 3:
            missing = "thresholds" if thresholds is None else "exponents"
            raise ValueError(f"give {missing}=... for {n_layers} layers (the paper sets 1 to 3)")
        default_t, default_p = paper_parameters(n_layers)
        thresholds = default_t if thresholds is None else thresholds
        exponents = default_p if exponents is None else exponents
    thresholds, exponents = list(_as_tuple(thresholds, "thresholds")), list(_as_tuple(exponents, "exponents"))
    if t is not None:
        thresholds[0] = float(t)
    if p is not None:
        exponents[0] = float(p)
    if len(thresholds) != n_layers or len(exponents) != n_layers:
        raise ValueError(f"need one threshold and one exponent per layer: {n_layers} layers, "
                         f"thresholds {thresholds}, exponents {exponents}")
    fused_similarity([np.zeros(1)] * n_layers, thresholds, exponents)  # raises with the reason
    return tuple(thresholds), tuple(exponents)


#: ``fusion`` option: eq. (2)-(3) or direct concatenation, eq. (1).
Fusion = Literal["mapping", "concat"]
FUSIONS = typing.get_args(Fusion)
#: ``conv_encoding`` option: a pooled vector (light) or the paper's bag of words (Sec. 4.1).
ConvEncoding = Literal["pooled", "bow"]
CONV_ENCODINGS = typing.get_args(ConvEncoding)
#: ``pooling`` option: a name of ``helpers.pooling.POOLINGS`` (tests check that the two agree).
PoolingName = Literal["mac", "spoc", "gem", "rmac", "crow"]


@register_method("multilayer")
class MultiLayerFusion(RetrievalMethod):
    """Multi-layer similarity fusion, registered as ``"multilayer"`` (paper 002).

    Options
    -------
    layers : sequence of str or "a,b,..."
        Layers from HIGH to LOW, as the paper's names (``fc1``, ``fc2``, ``conv5_1``, ``conv4_1``,
        ``conv3_1``, mapped by :func:`paper_layer_map`) or raw tap names of the backbone. Default:
        the paper's two-layer choice (:func:`paper_layer_roles`).
    thresholds, exponents : sequences (one per layer)
        ``t_i`` and ``p_i`` of eq. (3). Default: :func:`paper_parameters` (``t = 0.2, p = 0.45`` on
        the high layer of a pair, ``t = 1`` on the lowest layer).
    t, p : float
        Shortcut: the HIGHEST layer's threshold / exponent (the paper's Fig. 3 knobs).
    fusion : "mapping" (eq. 2 + 3, default) or "concat" (direct concatenation, eq. 1).
    conv_encoding : "pooled" (default, light: ``helpers.pooling``) or "bow" (paper, Sec. 4.1:
        tf-idf bag of words over a k-means vocabulary learned on the training dataset).
    pooling : name in ``helpers.pooling.POOLINGS`` for ``conv_encoding="pooled"``; default "rmac",
        chosen among MAC, GeM and R-MAC by single-layer mAP of the three conv roles on demo-train
        (never on the evaluated set). EfficientNet/MobileNet block outputs are signed (linear
        bottlenecks), so their pooled similarities can leave the paper's ``[0, 1]``; eq. (3) leaves
        values below ``t`` unchanged, so this is harmless. (CroW gives NaN on signed maps.)
    n_words, n_per_image, seed : vocabulary size, local features sampled per training image, seed
        (``conv_encoding="bow"``).

    fc layers are used directly (l2-normalised); similarities are cosine similarities per layer.
    """

    learns = "a visual vocabulary per conv layer (conv_encoding='bow')"

    def __init__(self, backbone, image_size, layers: str | tuple[str, ...] | None = None,
                 thresholds: tuple[float, ...] | None = None, exponents: tuple[float, ...] | None = None,
                 t: float | None = None, p: float | None = None, fusion: Fusion = "mapping",
                 conv_encoding: ConvEncoding = "pooled", pooling: PoolingName = "rmac", n_words: int = 512,
                 n_per_image: int = 200, seed: int = 0):
        super().__init__(backbone, image_size)
        self.roles = _parse_layers(layers if layers is not None else paper_layer_roles(backbone.name))
        self.taps = _role_taps(backbone, self.roles)
        self.layers = self.taps
        self.thresholds, self.exponents = _layer_parameters(len(self.roles), thresholds, exponents, t, p)
        self.fusion = choice("fusion", fusion, FUSIONS)
        self.conv_encoding = choice("conv_encoding", conv_encoding, CONV_ENCODINGS)
        self.pooling = choice("pooling", pooling, tuple(POOLINGS))
        self.n_words = positive_int("n_words", n_words, minimum=2)
        self.n_per_image = positive_int("n_per_image", n_per_image)
        self.seed = positive_int("seed", seed, minimum=0)
        self.vocabularies: dict[str, BowVocabulary] = {}
        self.needs_training = self.conv_encoding == "bow" and any(
            not backbone.is_vector(tap) for tap in self.taps)

    # ------------------------------------------------------------------ training (BoW only)
    def fit(self, train_dataset):
        """Learn one visual vocabulary per conv layer on ``train_dataset`` (BoW encoding only)."""
        if not self.needs_training:
            return self
        from .features import extract_maps, prefetch

        todo = [tap for tap in self.taps
                if not self.backbone.is_vector(tap) and tap not in self.vocabularies]
        prefetch(train_dataset, self.backbone, self.image_size, "db", map_layers=todo)
        for tap in todo:
            maps = extract_maps(train_dataset, self.backbone, [tap], self.image_size, "db")[tap]
            self.vocabularies[tap] = learn_layer_vocabulary(maps, n_words=self.n_words,
                                                            n_per_image=self.n_per_image, seed=self.seed)
        return self

    # ------------------------------------------------------------------ descriptors
    def layer_vectors(self, dataset, split: str, tap: str) -> np.ndarray:
        """l2-normalised descriptors ``N x D`` of one tap: fc output directly, conv map encoded."""
        from .features import extract_maps, extract_vectors

        if self.backbone.is_vector(tap):
            vectors = extract_maps(dataset, self.backbone, [tap], self.image_size, split)[tap]
            return l2n_np(np.stack([v.numpy() for v in vectors]))
        if self.conv_encoding == "pooled":
            return extract_vectors(dataset, self.backbone, tap, self.image_size, split,
                                   (self.pooling,))[self.pooling]
        if tap not in self.vocabularies:
            raise RuntimeError("multilayer with conv_encoding='bow' must be fit on a training dataset "
                               "first (method.fit(load_dataset(default_train_dataset(name))))")
        maps = extract_maps(dataset, self.backbone, [tap], self.image_size, split)[tap]
        return bow_encode(maps, self.vocabularies[tap])

    def describe(self, dataset, split: str) -> dict[str, np.ndarray]:
        """``{tap: N x D}`` for every selected layer (split "db" or "query")."""
        from .features import prefetch

        vector_taps = [tap for tap in self.taps if self.backbone.is_vector(tap)]
        conv_taps = [tap for tap in self.taps if tap not in vector_taps]
        if self.conv_encoding == "bow":
            vector_taps, conv_taps = vector_taps + conv_taps, []
        prefetch(dataset, self.backbone, self.image_size, split, map_layers=vector_taps, vector_layers=conv_taps)
        return {tap: self.layer_vectors(dataset, split, tap) for tap in self.taps}

    # ------------------------------------------------------------------ scoring
    def layer_similarities(self, query_desc, db_desc) -> list[np.ndarray]:
        """Per-layer cosine similarities ``n_db x n_q``, highest layer first: ``db @ q.T`` of the
        l2-normalised descriptors of :meth:`describe`, in float64 like the fusion's arithmetic (eq. 3
        compresses the similarities above ``t``, where float32 rounding would tie more of them)."""
        return [np.asarray(db_desc[tap], np.float64) @ np.asarray(query_desc[tap], np.float64).T
                for tap in self.taps]

    def fuse(self, layer_similarities) -> np.ndarray:
        """Eq. (2)-(3) (``fusion="mapping"``) or eq. (1) (``fusion="concat"``)."""
        if self.fusion == "concat":
            return concatenation_similarity(layer_similarities)
        return fused_similarity(layer_similarities, self.thresholds, self.exponents)

    def score(self, query_desc, db_desc) -> np.ndarray:
        return self.fuse(self.layer_similarities(query_desc, db_desc))

    def similarities(self, dataset) -> dict[str, np.ndarray]:
        """``{paper layer name: n_db x n_q cosine similarity}`` of every selected layer on ``dataset``
        (so that a notebook can fuse subsets with many ``t``, ``p`` without re-describing)."""
        sims = self.layer_similarities(self.describe(dataset, "query"), self.describe(dataset, "db"))
        return dict(zip(self.roles, sims))

    def __repr__(self) -> str:
        return (f"MultiLayerFusion(backbone={self.backbone.name!r}, layers={list(self.roles)} -> "
                f"{list(self.taps)}, thresholds={list(self.thresholds)}, "
                f"exponents={list(self.exponents)}, fusion={self.fusion!r}, "
                f"conv_encoding={self.conv_encoding!r})")


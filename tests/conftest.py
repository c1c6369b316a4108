"""Shared fixtures: small real-image datasets and an isolated feature cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REALSMOKE = SHARED / "realsmoke"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh, empty feature cache for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("INSTRET_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def backbone():
    from helpers.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


def _skimage_photos():
    import skimage.data as d

    return {"cat": d.chelsea(), "coffee": d.coffee(), "rocket": d.rocket(), "astronaut": d.astronaut()}


@pytest.fixture
def photo_folder(tmp_path):
    """A ``folder:`` dataset of real photographs: 4 instances x 3 views (crops/flips) as JPEG."""
    from PIL import Image

    root = tmp_path / "photos"
    for name, img in _skimage_photos().items():
        (root / name).mkdir(parents=True)
        h, w = img.shape[:2]
        views = [img, img[h // 8:, : w - w // 8], img[:, ::-1]]
        for k, view in enumerate(views):
            Image.fromarray(np.ascontiguousarray(view)).save(root / name / f"{name}_{k}.jpg", quality=90)
    return root


@pytest.fixture
def realsmoke():
    if not REALSMOKE.is_dir():
        pytest.skip(f"{REALSMOKE} is not available")
    return REALSMOKE


def pytest_addoption(parser):
    parser.addoption("--browser", action="store_true", default=False,
                     help="also run the tests marked 'browser' (JupyterLab in headless Chromium; run_tests.sh "
                          "runs them after nbval)")


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in a headless Chromium; runs only with --browser")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--browser"):
        return
    deselected = [item for item in items if item.get_closest_marker("browser")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]

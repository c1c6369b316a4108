"""Global pooling of conv feature maps: pure tensor functions.

Every function takes a map ``x`` of shape ``[..., C, H, W]`` (one map ``C x H x W`` or a batch
``N x C x H x W``) and returns a vector ``[..., C]``; none of them normalises its output unless its
definition says so (R-MAC normalises its regions). Use :func:`l2n` afterwards.

* MAC: max over locations (Tolias et al. 2016).
* SPoC: sum (here: mean; the same direction) over locations (Babenko & Lempitsky 2015).
* GeM: generalised mean ``(mean x^p)^(1/p)`` (Radenović et al. 2018): p=1 is SPoC, p -> inf is MAC.
* R-MAC: MAC of Tolias' multi-scale square regions, each l2-normalised, summed.
* CroW: cross-dimensional weighting (Kalantidis et al. 2016): spatial weights from the aggregated
  response, channel weights from the sparsity of each channel; defined on non-negative activations,
  so a map with negative values is rectified first.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "POOLINGS", "crow", "crow_channel_weights", "crow_spatial_weights", "gem", "l2n", "mac",
    "pool", "rmac", "rmac_regions", "spoc",
]


def _check_map(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise ValueError(f"expected a feature map [..., C, H, W], got {getattr(x, 'shape', type(x))}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"empty feature map of shape {tuple(x.shape)}")


def l2n(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """l2-normalise along the last dimension (a zero vector stays zero)."""
    return v / (v.norm(p=2, dim=-1, keepdim=True) + eps)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: ``max_{h,w} x[c, h, w]``."""
    _check_map(x)
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features, as the mean over locations."""
    _check_map(x)
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean pooling ``(1/|X| sum x^p)^(1/p)`` of the activations clamped at ``eps``."""
    _check_map(x)
    if not p > 0:
        raise ValueError(f"GeM needs p > 0, got {p}")
    y = x.clamp(min=eps)  # the one temporary; the rest is done in place on it
    # scaled by the maximum so that large p neither overflows nor underflows in float32
    peak = y.amax(dim=(-2, -1), keepdim=True)
    return peak[..., 0, 0] * y.div_(peak).pow_(p).mean(dim=(-2, -1)).pow(1.0 / p)


def rmac_regions(H: int, W: int, L: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int, int]]:
    """Tolias et al.'s R-MAC region grid on an ``H x W`` map, as ``(x, y, w, h)`` in map cells.

    Level ``l = 1..L`` uses square regions of side ``floor(2 min(H, W) / (l + 1))``, laid out with
    ``l`` regions along the short side and ``l + extra`` along the long side, where ``extra`` (0..5)
    makes consecutive regions at level 1 overlap by about ``overlap`` (the original Matlab code,
    also used by cnnimageretrieval-pytorch). When the map is too small for a level the level is
    skipped; when no level fits the whole map is the single region.
    """
    if H < 1 or W < 1:
        raise ValueError(f"map size must be positive, got {H}x{W}")
    if L < 1:
        raise ValueError(f"R-MAC needs L >= 1, got {L}")
    w = min(W, H)
    steps = torch.tensor([2, 3, 4, 5, 6, 7], dtype=torch.float64)
    b = (max(H, W) - w) / (steps - 1)
    idx = int(torch.argmin(torch.abs(((w ** 2 - w * b) / w ** 2) - overlap)))
    Wd = idx + 1 if H < W else 0
    Hd = idx + 1 if H > W else 0
    regions = []
    for level in range(1, L + 1):
        wl = math.floor(2 * w / (level + 1))
        if wl == 0:
            continue
        wl2 = math.floor(wl / 2 - 1)
        bW = (W - wl) / (level + Wd - 1) if level + Wd > 1 else 0.0
        bH = (H - wl) / (level + Hd - 1) if level + Hd > 1 else 0.0
        xs = [math.floor(wl2 + i * bW) - wl2 for i in range(level + Wd)]
        ys = [math.floor(wl2 + i * bH) - wl2 for i in range(level + Hd)]
        for y in ys:
            for x in xs:
                regions.append((int(x), int(y), wl, wl))
    return regions or [(0, 0, W, H)]


def rmac(x: torch.Tensor, L: int = 3, overlap: float = 0.4, eps: float = 1e-6) -> torch.Tensor:
    """Regional MAC: the sum of the l2-normalised MAC vectors of :func:`rmac_regions`."""
    _check_map(x)
    H, W = x.shape[-2:]
    bands, region_macs = {}, []
    for (rx, ry, rw, rh) in rmac_regions(H, W, L, overlap):
        # max over the region = max over its columns of the max over its rows; regions of one row
        # share the row maxima, so each map cell is read about once per level, not once per region
        if (ry, rh) not in bands:
            bands[(ry, rh)] = x[..., ry:ry + rh, :].amax(dim=-2)
        region_macs.append(bands[(ry, rh)][..., rx:rx + rw].amax(dim=-1))
    return l2n(torch.stack(region_macs, dim=-2), eps).sum(dim=-2)


def _rectified(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``; ``x`` itself (no copy) when it has no negative value."""
    return x.clamp(min=0) if bool(x.amin() < 0) else x


def crow_spatial_weights(x: torch.Tensor, a: float = 2.0, b: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """CroW spatial weights ``(S / ||S||_a)^(1/b)`` with ``S = sum_c max(x[c], 0)``; shape ``[..., H, W]``.

    CroW is defined on non-negative (post-ReLU) activations; a map with negative values (a linear
    bottleneck such as EfficientNet's block outputs) is rectified first, else ``S^(1/b)`` of a
    negative sum would be NaN."""
    _check_map(x)
    S = _rectified(x).sum(dim=-3)
    norm = S.pow(a).sum(dim=(-2, -1), keepdim=True).pow(1.0 / a)
    return (S / (norm + eps)).pow(1.0 / b)


def crow_channel_weights(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """CroW channel weights ``log(sum_k Q_k / Q_c)`` with ``Q_c`` the share of non-zero locations of
    channel ``c`` (0 for a channel that is zero everywhere); shape ``[..., C]``."""
    _check_map(x)
    Q = (x > 0).to(x.dtype).mean(dim=(-2, -1))
    total = Q.sum(dim=-1, keepdim=True)
    weights = torch.log(total / Q.clamp(min=eps))
    return torch.where(Q > 0, weights, torch.zeros_like(weights))


def crow(x: torch.Tensor, a: float = 2.0, b: float = 2.0) -> torch.Tensor:
    """CroW: spatially weighted sum pooling times the channel weights, on the rectified map
    ``max(x, 0)`` (the definition assumes post-ReLU activations; see :func:`crow_spatial_weights`)."""
    _check_map(x)
    x = _rectified(x)
    S = crow_spatial_weights(x, a, b)
    pooled = (x * S.unsqueeze(-3)).sum(dim=(-2, -1))
    return pooled * crow_channel_weights(x)


POOLINGS = {"mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac, "crow": crow}


def pool(x: torch.Tensor, name: str, **options) -> torch.Tensor:
    """Apply the pooling ``name`` (one of :data:`POOLINGS`) with its options."""
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}")
    return POOLINGS[name](x, **options)

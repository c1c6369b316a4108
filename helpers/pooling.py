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

:func:`pool_all` computes all five with their default parameters at once; it is what the feature
extraction calls for every tap of every image. On a CPU it is one compiled (numba) pass over the
map instead of the ~15 passes and temporaries of the five functions, and its results equal
theirs (tests).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
import torch

__all__ = [
    "POOLINGS", "crow", "crow_channel_weights", "crow_spatial_weights", "gem", "l2n", "mac",
    "pool", "pool_all", "rmac", "rmac_regions", "spoc",
]


def _check_map(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise ValueError(f"expected a feature map [..., C, H, W], got {getattr(x, 'shape', type(x))}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"empty feature map of shape {tuple(x.shape)}")


#: Added to the norm by :func:`l2n` and :func:`l2n_np`, so that a zero vector stays zero.
L2N_EPS = 1e-6


def l2n(v: torch.Tensor, eps: float = L2N_EPS) -> torch.Tensor:
    """l2-normalise along the last dimension (a zero vector stays zero). The suite's one
    l2-normalisation; :func:`l2n_np` is its numpy face."""
    return v / (v.norm(p=2, dim=-1, keepdim=True) + eps)


def l2n_np(X, eps: float = L2N_EPS) -> np.ndarray:
    """:func:`l2n` for numpy arrays (float32 rows)."""
    X = np.asarray(X, dtype=np.float32)
    return X / (np.linalg.norm(X, axis=-1, keepdims=True) + eps)


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


# ---------------------------------------------------------------------- all five at once
# The kernels below need fastmath (reassociation) for LLVM to vectorise their reductions, which lets
# LLVM assume there is no NaN or inf: pool_all uses their results only for finite maps and falls
# back to the definitions above otherwise. The loops over 8 consecutive values are written out so
# that LLVM's SLP vectoriser emits vector max/add instructions (a plain elementwise loop over two
# arrays stayed scalar: LLVM cannot rule out that they overlap).
_JIT = dict(nogil=True, cache=True, fastmath=True)
_CHUNK = 1024  # float32 partial sums over at most this many values, then float64


@numba.njit(**_JIT)
def _max_into(acc, row):
    """``acc = maximum(acc, row)`` elementwise."""
    n8 = row.size - row.size % 8
    for w in range(0, n8, 8):
        for k in range(8):
            a = acc[w + k]
            b = row[w + k]
            acc[w + k] = b if b > a else a
    for w in range(n8, row.size):
        a = acc[w]
        b = row[w]
        acc[w] = b if b > a else a


@numba.njit(**_JIT)
def _relu_add_into(acc, row):
    """``acc += maximum(row, 0)`` elementwise."""
    zero = np.float32(0.0)
    n8 = row.size - row.size % 8
    for w in range(0, n8, 8):
        for k in range(8):
            b = row[w + k]
            acc[w + k] += b if b > zero else zero
    for w in range(n8, row.size):
        b = row[w]
        acc[w] += b if b > zero else zero


@numba.njit(**_JIT)
def _moments(flat, eps):
    """``(sum x, sum max(x, eps)^3, #(x > 0))`` of a 1-D array."""
    total = 0.0
    cubes = 0.0
    positive = 0.0
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for start in range(0, flat.size, _CHUNK):
        s = zero
        g = zero
        n = zero
        for i in range(start, min(start + _CHUNK, flat.size)):
            v = flat[i]
            s += v
            y = v if v > eps else eps
            g += y * y * y
            n += one if v > zero else zero
        total += s
        cubes += g
        positive += n
    return total, cubes, positive


@numba.njit(**_JIT)
def _weighted_relu_sum(flat, weights):
    """``sum maximum(x, 0) * weights`` of two 1-D arrays."""
    total = 0.0
    zero = np.float32(0.0)
    for start in range(0, flat.size, _CHUNK):
        s = zero
        for i in range(start, min(start + _CHUNK, flat.size)):
            v = flat[i]
            s += (v if v > zero else zero) * weights[i]
        total += s
    return total


@numba.njit(**_JIT)
def _pool_all_kernel(x, ybounds, xbounds, region_blocks, gem_eps):
    """One pass over a float32 ``C x H x W`` map: per channel the sum, the sum of cubes (GeM p=3),
    the count of positive cells (CroW's sparsity), the maxima of the blocks between consecutive
    region edges (``ybounds`` x ``xbounds``: a region's max is the max of its blocks, so every cell
    is read once, not once per region), and the channel sum of the rectified map (CroW's spatial
    weights); then a second pass for CroW's weighted sum. Returns the five vectors as the rows of
    a ``5 x C`` array (MAC, SPoC, GeM, R-MAC, CroW)."""
    C, H, W = x.shape
    nby = ybounds.size - 1
    nbx = xbounds.size - 1
    total = np.empty(C, np.float64)
    cubes = np.empty(C, np.float64)
    positive = np.empty(C, np.float64)
    blocks = np.empty((nby, nbx, C), np.float32)  # channels last: the region maxima vectorise over C
    S = np.zeros(H * W, np.float32)
    band = np.empty(W, np.float32)
    eps = np.float32(gem_eps)
    for c in range(C):
        flat = x[c].reshape(H * W)
        total[c], cubes[c], positive[c] = _moments(flat, eps)
        _relu_add_into(S, flat)
        for by in range(nby):
            band[:] = x[c, ybounds[by]]
            for h in range(ybounds[by] + 1, ybounds[by + 1]):
                _max_into(band, x[c, h])
            for bx in range(nbx):
                m = band[xbounds[bx]]
                for w in range(xbounds[bx] + 1, xbounds[bx + 1]):
                    m = band[w] if band[w] > m else m
                blocks[by, bx, c] = m
    whole = blocks[0, 0].copy()
    for by in range(nby):
        for bx in range(nbx):
            _max_into(whole, blocks[by, bx])
    region_max = np.empty((region_blocks.shape[0], C), np.float32)
    for r in range(region_blocks.shape[0]):
        y0, y1, x0, x1 = region_blocks[r, 0], region_blocks[r, 1], region_blocks[r, 2], region_blocks[r, 3]
        region_max[r] = blocks[y0, x0]
        for by in range(y0, y1):
            for bx in range(x0, x1):
                _max_into(region_max[r], blocks[by, bx])
    # CroW spatial weights with a = b = 2: sqrt(S / ||S||_2)
    norm = 0.0
    for i in range(H * W):
        norm += np.float64(S[i]) * S[i]
    scale = np.float32(1.0 / (np.sqrt(norm) + 1e-12))
    for i in range(H * W):
        S[i] = np.sqrt(S[i] * scale)
    weighted = np.empty(C, np.float64)
    for c in range(C):
        weighted[c] = _weighted_relu_sum(x[c].reshape(H * W), S)
    # CroW channel weights log(sum Q / Q_c), Q_c the share of non-zero cells (0 where Q_c = 0)
    share = positive / (H * W)
    share_sum = share.sum()
    out = np.empty((5, C), np.float32)  # mac, spoc, gem, rmac, crow
    out[0] = whole
    for c in range(C):
        out[1, c] = total[c] / (H * W)
        out[2, c] = (cubes[c] / (H * W)) ** (1.0 / 3.0)
        out[3, c] = 0.0
        out[4, c] = weighted[c] * (np.log(share_sum / share[c]) if share[c] > 0 else 0.0)
    for r in range(region_max.shape[0]):  # R-MAC: the l2-normalised region vectors, summed
        norm = 0.0
        for c in range(C):
            norm += np.float64(region_max[r, c]) * region_max[r, c]
        scale = np.float32(1.0 / (np.sqrt(norm) + 1e-6))
        for c in range(C):
            out[3, c] += region_max[r, c] * scale
    return out


@lru_cache(maxsize=256)
def _region_layout(H: int, W: int):
    """The R-MAC regions of an ``H x W`` map as ranges of the blocks between their edges."""
    regions = rmac_regions(H, W)
    xs = sorted({0, W} | {x for x, _, w, _ in regions} | {x + w for x, _, w, _ in regions})
    ys = sorted({0, H} | {y for _, y, _, h in regions} | {y + h for _, y, _, h in regions})
    blocks = np.array([[ys.index(y), ys.index(y + h), xs.index(x), xs.index(x + w)] for x, y, w, h in regions],
                      dtype=np.int64)
    return np.array(ys, dtype=np.int64), np.array(xs, dtype=np.int64), blocks


def pool_all(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """All five poolings of one map ``C x H x W`` with their default parameters (GeM p=3, R-MAC L=3,
    CroW a=b=2), as ``{name: vector [C]}`` in the order of :data:`POOLINGS`, not normalised:
    the same as ``{name: fn(x) for name, fn in POOLINGS.items()}``.

    A CPU map goes through one compiled pass (:func:`_pool_all_kernel`, ~6x faster than the five
    functions on EfficientNet-Lite0's taps); a map on another device (where the five functions
    run in parallel anyway), or one with NaN or infinite values, through the functions themselves.
    """
    _check_map(x)
    if x.ndim != 3:
        raise ValueError(f"pool_all takes one map C x H x W, got shape {tuple(x.shape)}")
    if x.device.type != "cpu" or not x.is_floating_point():
        return {name: fn(x) for name, fn in POOLINGS.items()}
    a = x.detach().float().contiguous().numpy()
    ybounds, xbounds, region_blocks = _region_layout(*a.shape[1:])
    out = _pool_all_kernel(a, ybounds, xbounds, region_blocks, 1e-6)
    # NaN or inf in the map make its sums (the SPoC row) non-finite; checked here, not in the
    # kernel, whose fastmath may assume finite values
    if not np.isfinite(out[1]).all():
        return {name: fn(x.detach().float()) for name, fn in POOLINGS.items()}
    vectors = torch.from_numpy(out)
    return dict(zip(POOLINGS, vectors))

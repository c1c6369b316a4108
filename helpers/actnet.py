"""ACTNET: learnable feature activations and multi-stream aggregation.

Husain, Ong, Bober, "ACTNET: end-to-end learning of feature activations and multi-stream
aggregation for effective instance image retrieval" (paper 001 in ``shared/papers``).

The pieces, in the order of the paper:

* element-wise parametric activations theta_phi (eq. 1): Sine-Hyperbolic (eq. 2), Exponential
  (eq. 6) and modified Weibull (eq. 10), as ``torch.nn.Module`` s with learnable parameters, plus
  their closed-form partial derivatives (eqs. 3-5, 7-9, 12-17) and the Weibull peak (eq. 11);
* the aggregation stream Phi(X) = psi(P(phi(X))) (eqs. 18-21): activation, global average
  pooling, learnable power normalisation psi(z) = lambda * z**p;
* the multi-stream head: one stream per tapped layer, concatenated (b = [Phi_1, ..., Phi_K]),
  a PCA-whitening layer implemented as a linear layer initialised from PCA, l2-normalisation;
* training with the triplet loss of eq. 23 and hard negatives mined with the current model,
  refreshed every epoch (Sec. 4.1);
* the aggregation methods the paper compares (Sec. 3.2, Fig. 5), named as there, in
  :data:`AGGREGATIONS`: direct aggregation (DA, plain average pooling: no activation, no power
  normalisation), SinHA, ExpA and WBA;
* the class-separability analysis of Sec. 3.2 / Fig. 3 (KL divergence KL(P(s|m) || P(s|n)) between
  the histograms of matching and non-matching descriptor distances).

Corrections to the converted paper text (checked by derivation and by autograd in
``tests/test_actnet.py``, where every formula is also checked against values computed
independently with sympy at fixed points):

* eq. 9 is labelled d theta / d x^2 in the text; it is the derivative with respect to beta:
  d/d beta [alpha (exp(beta x) - 1)] = alpha x exp(beta x).
* eq. 17 reads (x/alpha)^(beta-1) (-x/gamma)^zeta log(x/zeta) exp(-(x/gamma)^zeta); the correct
  derivative is  d theta / d zeta = -(x/alpha)^(beta-1) (x/gamma)^zeta log(x/gamma) exp(-(x/gamma)^zeta)
  (the minus sign belongs outside the power, and the logarithm is of x/gamma, not x/zeta).
* eqs. 12-13 are one formula split over two labels:
  d theta / d x = ((beta-1)/alpha) (x/alpha)^(beta-2) E - (zeta/gamma^zeta) (x/alpha)^(beta-1) x^(zeta-1) E,
  with E = exp(-(x/gamma)^zeta). Eqs. 3-5, 7-8, 11, 14-16 are correct as printed.

Constraints (our choices; the paper does not state them). The activations receive conv outputs,
which the paper assumes non-negative. Taps behind a linear bottleneck (e.g. EfficientNet's /
MobileNetV2's last block) are signed, so each stream first rectifies its input (max(x, 0)) and
divides it by a fixed per-stream ``input_scale`` (a buffer estimated on the training maps: the
99th percentile of the positive values) so that the same initial parameters make sense for any
layer and backbone; dividing by a constant is a re-parametrisation (e.g. beta -> beta / scale).
All parameters are kept in their valid range by a softplus parametrisation:
alpha, beta (SinH, Exp), alpha, gamma, zeta (Weibull), p and lambda (power normalisation) are
softplus(raw) > 0; the Weibull shape is beta = 1 + softplus(raw) > 1, so that (x/alpha)^(beta-1)
is bounded and continuous at x = 0 and the peak x0 of eq. 11 exists. The Weibull is 0 at x <= 0
(the limit of eq. 10 at 0 for beta > 1), exactly: most cells of a rectified map are 0, so any
constant there would be added to every channel's average. Its log(x/alpha) (in d/d beta) and
(x/alpha)^(beta-2) (in d/d x for beta < 2) are infinite at 0, so it is evaluated on a safe input
(1 where x <= 0) and the result replaced by 0 there (:func:`weibull_activation`): no NaN or inf
reaches the backward pass, and the gradients at x <= 0 are 0. The power normalisation
(:class:`PowerNormalisation`) treats z <= 0 the same way (psi(0) = 0).

Training (Sec. 3.4, 4.1), as done here. The backbone is frozen: the head (activation, power
normalisation and whitening parameters) is trained on the cached maps of the training dataset's
database images (:func:`fit_actnet_head`; the demo's "demo-train", whose instances are disjoint
from "demo"'s, :func:`check_disjoint_instances`), with the triplet loss (eq. 23, margin 0.1), hard
negatives re-mined with the current model every epoch (matches are easy or hard views of the
query's instance; its junk views are neither matches nor non-matches, :func:`training_junk`), SGD
lr 1e-3, weight decay 5e-4, momentum 0.9 (the paper's settings; options of :class:`TrainingConfig`).
The trained head is cached with its training history under the feature cache
(:func:`head_cache_path`), so ``python -m helpers evaluate --method actnet`` and the notebook train
it once. The paper's end-to-end fine-tuning of the backbone is not implemented (it needs a GPU and
the images; see the notebook). The head runs on the backbone's device (CUDA when present). Because the activations are element-wise on max(x, 0),
the streams only evaluate the positive cells of a map (:class:`SparseMap`) and count the others,
which is exact and several times faster on ReLU maps.

Command line: ``python -m helpers evaluate --dataset demo --method actnet [--option activation=sinh]
[--option whiten=false] [--option lr=0.01] ...`` (see :class:`ACTNetMethod`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import read_entry
from .methods import RetrievalMethod, register_method

ACTIVATIONS = ("identity", "sinh", "exp", "weibull")
#: Initial (constrained) parameter values per activation, for an input normalised to ~[0, 1].
DEFAULT_ACTIVATION_INIT = {
    "identity": {},
    "sinh": {"alpha": 1.0, "beta": 3.0},
    "exp": {"alpha": 1.0, "beta": 3.0},
    "weibull": {"alpha": 1.0, "beta": 3.0, "gamma": 1.0, "zeta": 2.0},
}
#: Largest argument passed to exp / sinh (e^60 ~ 1e26 is still finite in float32).
MAX_EXP_ARGUMENT = 60.0
#: The aggregation methods the paper compares (Sec. 3.2, Fig. 3, Fig. 5), by their names there, as the
#: options of a head (:class:`ACTNetHead`, :func:`fit_actnet_head`, :class:`ACTNetMethod`). This is
#: the one definition of what each name means. "DA", direct aggregation, is "the features [...]
#: aggregated using average pooling": no activation and no power normalisation (eq. 20), so that
#: without the whitening layer its descriptor is the l2-normalised average pooling of the maps.
#: The others are one activation stream each (eq. 21), with the power normalisation.
AGGREGATIONS = {
    "DA": {"activation": "identity", "power_norm": False},
    "SinHA": {"activation": "sinh", "power_norm": True},
    "ExpA": {"activation": "exp", "power_norm": True},
    "WBA": {"activation": "weibull", "power_norm": True},
}


def default_power_norm(activation: str) -> bool:
    """Whether the paper's method with ``activation`` has the power normalisation (:data:`AGGREGATIONS`):
    False for "identity" (DA), True for the three activations."""
    for options in AGGREGATIONS.values():
        if options["activation"] == activation:
            return bool(options["power_norm"])
    raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


# ------------------------------------------------------------------------ parametrisation


def inverse_softplus(value: float) -> float:
    """``r`` with ``softplus(r) == value`` (value > 0), used to initialise raw parameters."""
    if not value > 0:
        raise ValueError(f"softplus-parametrised values must be > 0, got {value}")
    return float(value + math.log(-math.expm1(-value)))  # = log(expm1(value)), stable for large values


def _raw_parameter(value: float, offset: float = 0.0, name: str = "parameter") -> nn.Parameter:
    if not value > offset:
        raise ValueError(f"{name} must be > {offset}, got {value}")
    return nn.Parameter(torch.tensor(inverse_softplus(value - offset), dtype=torch.float32))


# ------------------------------------------------------------------ activation functions (pure)


def sinh_activation(x: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Sine-Hyperbolic activation, eq. 2: theta(x) = alpha * sinh(beta * x)."""
    return alpha * torch.sinh(torch.clamp(beta * x, max=MAX_EXP_ARGUMENT))


def exp_activation(x: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Exponential activation, eq. 6: theta(x) = alpha * (exp(beta * x) - 1)."""
    return alpha * torch.expm1(torch.clamp(beta * x, max=MAX_EXP_ARGUMENT))


def weibull_activation(x: torch.Tensor, alpha, beta, gamma, zeta) -> torch.Tensor:
    """Modified Weibull activation, eq. 10: theta(x) = (x/alpha)^(beta-1) * exp(-(x/gamma)^zeta).

    theta(x) = 0 exactly for x <= 0 (the limit at 0 for beta > 1). The formula is evaluated on a
    safe input (1 where x <= 0, where log(x) and x^(beta-2) would be infinite) and its value
    replaced there by 0, so the gradients with respect to x and every parameter are finite
    everywhere (0 at x <= 0). With beta > 1 the function rises polynomially, peaks at x0 (eq. 11,
    :func:`weibull_peak`) and then decays exponentially.
    """
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    value = torch.exp((beta - 1) * torch.log(safe / alpha) - (safe / gamma) ** zeta)
    return torch.where(positive, value, torch.zeros_like(value))


def weibull_peak(beta, gamma, zeta):
    """Weibull peak, eq. 11: x0 = gamma * ((beta - 1) / zeta)^(1/zeta) (solves d theta/dx = 0; beta > 1)."""
    return gamma * ((beta - 1) / zeta) ** (1.0 / zeta)


# ------------------------------------------------------- closed-form partial derivatives (pure)


def sinh_partials(x, alpha, beta) -> Dict[str, torch.Tensor]:
    """Partial derivatives of eq. 2: eqs. 3 (d/dx), 4 (d/d alpha), 5 (d/d beta)."""
    return {
        "x": alpha * beta * torch.cosh(beta * x),  # eq. 3
        "alpha": torch.sinh(beta * x),  # eq. 4
        "beta": alpha * x * torch.cosh(beta * x),  # eq. 5
    }


def exp_partials(x, alpha, beta) -> Dict[str, torch.Tensor]:
    """Partial derivatives of eq. 6: eqs. 7 (d/dx), 8 (d/d alpha), 9 (d/d beta).

    The converted text labels eq. 9 as d theta/d x^2; its right-hand side alpha x exp(beta x) is
    the derivative with respect to beta.
    """
    return {
        "x": alpha * beta * torch.exp(beta * x),  # eq. 7
        "alpha": torch.expm1(beta * x),  # eq. 8
        "beta": alpha * x * torch.exp(beta * x),  # eq. 9 (corrected label)
    }


def weibull_partials(x, alpha, beta, gamma, zeta) -> Dict[str, torch.Tensor]:
    """Partial derivatives of eq. 10 for x > 0: eqs. 12-13 (d/dx), 14 (beta), 15 (alpha), 16 (gamma), 17 (zeta).

    Eq. 17 is corrected: d theta/d zeta = -(x/alpha)^(beta-1) (x/gamma)^zeta log(x/gamma) E,
    with E = exp(-(x/gamma)^zeta) (the text has (-x/gamma)^zeta and log(x/zeta)).
    """
    decay = torch.exp(-((x / gamma) ** zeta))
    poly = (x / alpha) ** (beta - 1)
    return {
        "x": ((beta - 1) / alpha) * (x / alpha) ** (beta - 2) * decay  # eq. 12
        - (zeta / gamma**zeta) * poly * x ** (zeta - 1) * decay,  # eq. 13
        "beta": torch.log(x / alpha) * poly * decay,  # eq. 14
        "alpha": (1 - beta) * (x ** (beta - 1) / alpha**beta) * decay,  # eq. 15
        "gamma": zeta * (x ** (beta + zeta - 1) / (alpha ** (beta - 1) * gamma ** (zeta + 1))) * decay,  # eq. 16
        "zeta": -poly * (x / gamma) ** zeta * torch.log(x / gamma) * decay,  # eq. 17 (corrected)
    }


def weibull_partials_as_printed(x, alpha, beta, gamma, zeta) -> Dict[str, torch.Tensor]:
    """Eq. 17 exactly as the converted text prints it, kept only to show (notebook, tests) that it is wrong.

    (x/alpha)^(beta-1) (-x/gamma)^zeta log(x/zeta) exp(-(x/gamma)^zeta); (-x/gamma)^zeta is NaN for
    non-integer zeta, so the printed form is evaluated with integer zeta only.
    """
    decay = torch.exp(-((x / gamma) ** zeta))
    return {"zeta": (x / alpha) ** (beta - 1) * (-x / gamma) ** zeta * torch.log(x / zeta) * decay}


def autograd_partials(theta, x: torch.Tensor, params: Mapping[str, float]) -> Dict[str, torch.Tensor]:
    """Element-wise partial derivatives of ``theta(x, **params)`` w.r.t. x and each scalar parameter, by autograd.

    Forward-mode (``torch.func.jvp``) with a unit tangent: since theta is element-wise, the
    directional derivative along ones(x) is d theta_i / d x_i, and along a parameter it is
    d theta_i / d param. Computed in float64; used to check the closed forms of eqs. 3-17.
    """
    import warnings

    x = torch.as_tensor(x, dtype=torch.float64)
    values = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in params.items()}
    with warnings.catch_warnings():  # torch.func's first use warns about torch.jit.script internally
        warnings.simplefilter("ignore", FutureWarning)
        from torch.func import jvp

        out = {"x": jvp(lambda x_: theta(x_, **values), (x,), (torch.ones_like(x),))[1]}
        for name in values:
            def along(p, name=name):
                return theta(x, **{**values, name: p})
            out[name] = jvp(along, (values[name],), (torch.ones_like(values[name]),))[1]
    return out


#: activation name -> (theta(x, **params), closed-form partials(x, **params)), for the derivative checks
CLOSED_FORMS = {
    "sinh": (sinh_activation, sinh_partials),
    "exp": (exp_activation, exp_partials),
    "weibull": (weibull_activation, weibull_partials),
}


# ----------------------------------------------------------------------- activation modules


class ParametricActivation(nn.Module):
    """Element-wise activation theta_phi(x; w_theta) applied to a tensor (eq. 1)."""

    kind = "base"
    #: names of the (constrained) parameters, in the order of the paper's w_theta
    parameter_names: Sequence[str] = ()

    def values(self) -> Dict[str, torch.Tensor]:
        """The constrained parameter values (tensors, differentiable)."""
        raise NotImplementedError

    def values_dict(self) -> Dict[str, float]:
        """The constrained parameter values as floats (for printing and plotting)."""
        return {k: float(v.detach()) for k, v in self.values().items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in self.values_dict().items())


class IdentityActivation(ParametricActivation):
    """theta(x) = x: "direct aggregation" (DA, :data:`AGGREGATIONS`) when followed by average pooling
    without power normalisation."""

    kind = "identity"

    def values(self):
        return {}

    def forward(self, x):
        return x


class _AlphaBetaActivation(ParametricActivation):
    """An activation alpha * f(beta x) with alpha, beta = softplus(raw) > 0 (SinH and Exp)."""

    parameter_names = ("alpha", "beta")
    function = None  # (x, alpha, beta) -> tensor

    def __init__(self, alpha: float = 1.0, beta: float = 3.0):
        super().__init__()
        self.raw_alpha = _raw_parameter(alpha, name="alpha")
        self.raw_beta = _raw_parameter(beta, name="beta")

    def values(self):
        return {"alpha": F.softplus(self.raw_alpha), "beta": F.softplus(self.raw_beta)}

    def forward(self, x):
        v = self.values()
        return type(self).function(x, v["alpha"], v["beta"])


class SinHActivation(_AlphaBetaActivation):
    """Learnable Sine-Hyperbolic activation alpha * sinh(beta x) (eq. 2); alpha, beta = softplus(raw) > 0."""

    kind = "sinh"
    function = staticmethod(sinh_activation)


class ExpActivation(_AlphaBetaActivation):
    """Learnable Exponential activation alpha (exp(beta x) - 1) (eq. 6); alpha, beta = softplus(raw) > 0."""

    kind = "exp"
    function = staticmethod(exp_activation)


class WeibullActivation(ParametricActivation):
    """Learnable modified Weibull activation (eq. 10).

    alpha, gamma, zeta = softplus(raw) > 0 and beta = 1 + softplus(raw) > 1 (peak of eq. 11 exists,
    function bounded at 0); theta(x <= 0) = 0 (see :func:`weibull_activation`).
    """

    kind = "weibull"
    parameter_names = ("beta", "alpha", "gamma", "zeta")

    def __init__(self, alpha: float = 1.0, beta: float = 3.0, gamma: float = 1.0, zeta: float = 2.0):
        super().__init__()
        self.raw_alpha = _raw_parameter(alpha, name="alpha")
        self.raw_beta = _raw_parameter(beta, offset=1.0, name="beta")
        self.raw_gamma = _raw_parameter(gamma, name="gamma")
        self.raw_zeta = _raw_parameter(zeta, name="zeta")

    def values(self):
        return {
            "alpha": F.softplus(self.raw_alpha),
            "beta": 1.0 + F.softplus(self.raw_beta),
            "gamma": F.softplus(self.raw_gamma),
            "zeta": F.softplus(self.raw_zeta),
        }

    def peak(self) -> float:
        """x0 of eq. 11 for the current parameters (in the stream's normalised input units)."""
        v = self.values_dict()
        return float(weibull_peak(v["beta"], v["gamma"], v["zeta"]))

    def forward(self, x):
        v = self.values()
        return weibull_activation(x, v["alpha"], v["beta"], v["gamma"], v["zeta"])


_ACTIVATION_CLASSES = {c.kind: c for c in (IdentityActivation, SinHActivation, ExpActivation, WeibullActivation)}


def make_activation(kind: str, **init) -> ParametricActivation:
    """Activation module by name ("identity", "sinh", "exp", "weibull"), with optional initial values."""
    if kind not in _ACTIVATION_CLASSES:
        raise ValueError(f"unknown activation {kind!r}; choose one of {ACTIVATIONS}")
    params = dict(DEFAULT_ACTIVATION_INIT[kind])
    unknown = set(init) - set(params)
    if unknown:
        raise ValueError(f"activation {kind!r} has no parameter(s) {sorted(unknown)}; it has {sorted(params)}")
    params.update(init)
    return _ACTIVATION_CLASSES[kind](**params)


# --------------------------------------------------------------------- aggregation stream


class PowerNormalisation(nn.Module):
    """Learnable power normalisation psi(z) = lambda * z^p, element-wise (eq. 20); p, lambda = softplus(raw) > 0.

    psi(z) = 0 exactly for z <= 0 (the limit of z^p at 0; a channel with no positive cell pools to 0).
    z^p is evaluated on a safe input (1 where z <= 0: its slope is infinite at 0 for p < 1, and
    log z, in d/dp, is -inf) and replaced there by 0, so every gradient is finite (0 at z <= 0).
    ``learnable=False`` makes psi the identity (p = lambda = 1 fixed), for plain direct aggregation.
    """

    def __init__(self, p: float = 0.5, lam: float = 1.0, learnable: bool = True):
        super().__init__()
        self.learnable = bool(learnable)
        if self.learnable:
            self.raw_p = _raw_parameter(p, name="p")
            self.raw_lam = _raw_parameter(lam, name="lambda")

    def values(self) -> Dict[str, torch.Tensor]:
        if not self.learnable:
            return {"p": torch.tensor(1.0), "lam": torch.tensor(1.0)}
        return {"p": F.softplus(self.raw_p), "lam": F.softplus(self.raw_lam)}

    def forward(self, z):
        if not self.learnable:
            return z
        v = self.values()
        positive = z > 0
        safe = torch.where(positive, z, torch.ones_like(z))
        return torch.where(positive, v["lam"] * safe ** v["p"], torch.zeros_like(z))


@dataclass
class SparseMap:
    """The positive cells of one rectified C x H x W map: ``values`` (1-D) and their ``channel`` indices.

    Every activation here is element-wise and applied to max(x, 0), so the (many) non-positive cells
    all map to the same value theta(0) (0 for every activation here): storing only
    the positive cells and their count per channel gives the exact average pooling at a fraction of
    the cost (a last conv map behind ReLU6 is ~90% zeros).
    """

    values: torch.Tensor
    channel: torch.Tensor
    channels: int
    cells: int

    @classmethod
    def from_map(cls, fmap: torch.Tensor) -> "SparseMap":
        if fmap.dim() != 3:
            raise ValueError(f"expected a C x H x W map, got shape {tuple(fmap.shape)}")
        flat = fmap.reshape(fmap.shape[0], -1)
        if flat.shape[1] == 0:
            raise ValueError("a map has no spatial cell (H * W == 0)")
        channel, cell = torch.nonzero(flat > 0, as_tuple=True)
        return cls(flat[channel, cell].float(), channel, int(flat.shape[0]), int(flat.shape[1]))


@dataclass
class PackedMaps:
    """Several maps of one layer (same C, any H x W) packed for one activation call and one ``index_add_``.

    ``values``: the positive cells of all maps (1-D); ``index``: image * C + channel of each value;
    ``cells``: H_i * W_i per image; ``channels``: C.
    """

    values: torch.Tensor
    index: torch.Tensor
    cells: torch.Tensor
    channels: int

    @property
    def num_images(self) -> int:
        return int(self.cells.numel())

    def to(self, device) -> "PackedMaps":
        return PackedMaps(self.values.to(device), self.index.to(device), self.cells.to(device), self.channels)


def pack_sparse(sparse_maps: Sequence[SparseMap], indices: Optional[Sequence[int]] = None) -> PackedMaps:
    """Pack the :class:`SparseMap` s ``sparse_maps[i]`` for i in ``indices`` (default: all), in that order."""
    chosen = list(sparse_maps) if indices is None else [sparse_maps[int(i)] for i in indices]
    if len(chosen) == 0:
        raise ValueError("need at least one map to pack")
    channels = {m.channels for m in chosen}
    if len(channels) != 1:
        raise ValueError(f"maps must all have the same C; got {sorted(channels)}")
    c = channels.pop()
    index = torch.cat([m.channel + k * c for k, m in enumerate(chosen)])
    return PackedMaps(torch.cat([m.values for m in chosen]), index,
                      torch.tensor([m.cells for m in chosen], dtype=torch.long), c)


def pack_maps(maps: Sequence[torch.Tensor]) -> PackedMaps:
    """Pack a list of C x H_i x W_i maps (one layer, same C) into a :class:`PackedMaps` (positive cells only)."""
    if len(maps) == 0:
        raise ValueError("pack_maps needs at least one map")
    channels = {int(m.shape[0]) for m in maps}
    if any(m.dim() != 3 for m in maps) or len(channels) != 1:
        raise ValueError(f"maps must all be C x H x W with the same C; got shapes {[tuple(m.shape) for m in maps[:5]]}")
    return pack_sparse([SparseMap.from_map(m) for m in maps])


def average_pool_packed(theta, packed: PackedMaps) -> torch.Tensor:
    """Global average pooling P(theta(max(X, 0))) of eq. 19 for packed maps: returns N x C.

    ``theta`` is the element-wise function (applied to the positive cells and once to 0, whose
    value every non-positive cell takes).
    """
    n, c = packed.num_images, packed.channels
    activated = theta(packed.values)
    sums = activated.new_zeros(n * c).index_add_(0, packed.index, activated)
    zero_cells = packed.cells.repeat_interleave(c) - torch.bincount(packed.index, minlength=n * c)
    sums = sums + zero_cells.to(activated.dtype) * theta(activated.new_zeros(1))
    return sums.view(n, c) / packed.cells.to(activated.dtype).unsqueeze(1)


class AggregationStream(nn.Module):
    """One aggregation stream Phi(X) = psi(P(phi(X))) (eq. 21 = eqs. 18, 19, 20 chained).

    The input is first rectified and divided by the fixed buffer ``input_scale`` (see module
    docstring), then passed through the activation phi (eq. 18), average-pooled (eq. 19) and
    power-normalised (eq. 20).
    """

    def __init__(self, activation: ParametricActivation, power_norm: Optional[PowerNormalisation] = None,
                 input_scale: float = 1.0):
        super().__init__()
        self.activation = activation
        self.power_norm = power_norm if power_norm is not None else PowerNormalisation()
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """phi(max(x, 0) / input_scale), element-wise (eq. 18), for a tensor of any shape."""
        return self.activation(torch.relu(x) / self.input_scale)

    def forward_packed(self, packed: PackedMaps) -> torch.Tensor:
        """Phi for packed (rectified) maps; same result as :meth:`forward` on the dense maps."""
        theta = lambda v: self.activation(v / self.input_scale)  # noqa: E731 (values are already > 0)
        return self.power_norm(average_pool_packed(theta, packed))

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``maps``: list of C x H_i x W_i tensors (or one N x C x H x W tensor); returns N x C."""
        if isinstance(maps, torch.Tensor) and maps.dim() == 4:
            return self.power_norm(self.activate(maps).mean(dim=(2, 3)))
        return self.forward_packed(pack_maps(list(maps)).to(self.input_scale.device))


def estimate_input_scale(maps: Sequence[torch.Tensor], quantile: float = 0.99, max_values: int = 2_000_000,
                         seed: int = 0) -> float:
    """99th percentile (``quantile``) of the positive values of ``maps``: the stream's ``input_scale``."""
    if len(maps) == 0:
        raise ValueError("estimate_input_scale needs at least one map")
    values = torch.cat([m[m > 0].float() for m in maps])  # positives only, in order, without a full copy
    if values.numel() == 0:
        raise ValueError("all map values are <= 0; cannot estimate an input scale")
    if values.numel() > max_values:
        g = torch.Generator().manual_seed(seed)
        values = values[torch.randint(values.numel(), (max_values,), generator=g)]
    return float(torch.quantile(values, quantile))


# ------------------------------------------------------------------------ multi-stream head


def pca_whitening_parameters(descriptors: np.ndarray, dim: Optional[int] = None, shrinkage: float = 0.0):
    """Weight (dim x D) and bias (dim) of the linear layer x -> W x + b = P^T (x - mean) PCA-whitening ``descriptors``.

    Sec. 3.4: "The PCA+Whitening projection is implemented as a Fully Connected layer (for the
    projection with whitened eigenvectors) with bias (for mean subtraction)". The projection is the
    suite's :class:`helpers.whitening.PCAWhitening` (``dim`` defaults to min(D, N - 1);
    ``shrinkage`` regularises the small eigenvalues, useful with few training images).
    """
    from .whitening import PCAWhitening

    pca = PCAWhitening(dim, shrinkage).fit(np.asarray(descriptors, dtype=np.float64))
    weight = pca.projection_.T.astype(np.float64)
    bias = -weight @ pca.mean_.astype(np.float64)
    return weight.astype(np.float32), bias.astype(np.float32)


class ACTNetHead(nn.Module):
    """The trainable part of ACTNET above the backbone (Fig. 1a, Sec. 3.3).

    One :class:`AggregationStream` per tapped layer; their outputs concatenated
    (b = [Phi_1(f_1(x)), ..., Phi_K(f_K(x))]); a PCA-whitening linear layer (initialise it with
    :meth:`init_whitening`); l2-normalisation.

    Args:
        layers: tap names, one stream each (the paper: the last two conv blocks).
        channels: channel count of each layer.
        activation: "identity" (direct aggregation), "sinh", "exp" or "weibull".
        activation_init: initial activation parameter values (defaults: ``DEFAULT_ACTIVATION_INIT``).
        power_norm: learnable power normalisation (eq. 20); False = identity; None (default): as in
            the paper's method for ``activation`` (:func:`default_power_norm`: none for DA).
        p_init: initial exponent p of eq. 20.
        whiten: with the PCA-whitening linear layer (the paper); False: b is only l2-normalised.
    """

    def __init__(self, layers: Sequence[str], channels: Sequence[int], activation: str = "weibull",
                 activation_init: Optional[Mapping[str, float]] = None, power_norm: Optional[bool] = None,
                 p_init: float = 0.5, whiten: bool = True):
        super().__init__()
        power_norm = default_power_norm(activation) if power_norm is None else bool(power_norm)
        layers, channels = list(layers), [int(c) for c in channels]
        if len(layers) == 0 or len(layers) != len(channels):
            raise ValueError(f"need one channel count per layer, got layers={layers}, channels={channels}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct, got {layers}")
        self.layers = layers
        self.channels = channels
        self.activation_kind = activation
        self.streams = nn.ModuleList([
            AggregationStream(make_activation(activation, **dict(activation_init or {})),
                              PowerNormalisation(p=p_init, learnable=power_norm))
            for _ in layers
        ])
        self.whiten = bool(whiten)
        in_dim = sum(channels)
        if self.whiten:
            self.whitening = nn.Linear(in_dim, in_dim)
            with torch.no_grad():  # identity until init_whitening is called
                self.whitening.weight.copy_(torch.eye(in_dim))
                self.whitening.bias.zero_()
        else:
            self.whitening = nn.Identity()

    @property
    def out_dim(self) -> int:
        return self.whitening.out_features if self.whiten else sum(self.channels)

    def stream(self, layer: str) -> AggregationStream:
        return self.streams[self.layers.index(layer)]

    def aggregate(self, maps_by_layer: Mapping[str, object]) -> torch.Tensor:
        """b = concatenation of the stream outputs, N x sum(C). Values: lists of C x H x W maps or PackedMaps."""
        missing = [l for l in self.layers if l not in maps_by_layer]
        if missing:
            raise KeyError(f"maps for layer(s) {missing} missing; the head needs {self.layers}")
        outs = []
        for layer, stream, c in zip(self.layers, self.streams, self.channels):
            maps = maps_by_layer[layer]
            out = stream.forward_packed(maps) if isinstance(maps, PackedMaps) else stream(maps)
            if out.shape[1] != c:
                raise ValueError(f"layer {layer!r}: expected {c} channels, got {out.shape[1]}")
            outs.append(out)
        if len({o.shape[0] for o in outs}) != 1:
            raise ValueError(f"layers have different image counts: {[o.shape[0] for o in outs]}")
        return torch.cat(outs, dim=1)

    def forward(self, maps_by_layer: Mapping[str, object]) -> torch.Tensor:
        """Final l2-normalised descriptors, N x out_dim."""
        return F.normalize(self.whitening(self.aggregate(maps_by_layer)), dim=1)

    @torch.no_grad()
    def init_input_scales(self, maps_by_layer: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Set each stream's ``input_scale`` from training maps (:func:`estimate_input_scale`).

        Identity streams keep the scale 1: they have no parameter for the scale to serve, and
        dividing each layer by its own scale would re-weight the layers of a DA descriptor.
        """
        for layer, stream in zip(self.layers, self.streams):
            if isinstance(stream.activation, IdentityActivation):
                continue
            stream.input_scale.fill_(estimate_input_scale(maps_by_layer[layer]))

    @torch.no_grad()
    def init_stream_balance(self, maps_by_layer: Mapping[str, object]) -> None:
        """Set each stream's lambda (eq. 20) so that its output has mean l2 norm 1 on the training maps.

        The paper learns lambda to weight the streams but does not say how it starts; starting from
        equal norms keeps a wide layer (or one with large values) from drowning the others in b.
        No-op for streams without learnable power normalisation.
        """
        for layer, stream in zip(self.layers, self.streams):
            if not stream.power_norm.learnable:
                continue
            maps = maps_by_layer[layer]
            out = stream.forward_packed(maps) if isinstance(maps, PackedMaps) else stream(maps)
            lam = float(stream.power_norm.values()["lam"]) / float(out.norm(dim=1).mean().clamp(min=1e-12))
            stream.power_norm.raw_lam.fill_(inverse_softplus(lam))

    @torch.no_grad()
    def init_whitening(self, maps_by_layer: Mapping[str, object], dim: Optional[int] = None, shrinkage: float = 0.0):
        """Re-create the whitening layer from PCA of the current concatenated descriptors b (Sec. 3.4)."""
        if not self.whiten:
            raise ValueError("this head was built with whiten=False: it has no whitening layer")
        b = self.aggregate(maps_by_layer).double().numpy()
        weight, bias = pca_whitening_parameters(b, dim=dim, shrinkage=shrinkage)
        self.whitening = nn.Linear(weight.shape[1], weight.shape[0])
        self.whitening.weight.copy_(torch.from_numpy(weight))
        self.whitening.bias.copy_(torch.from_numpy(bias))

    def parameter_summary(self) -> Dict[str, Dict[str, float]]:
        """Constrained activation and power-normalisation parameters per layer (floats)."""
        out = {}
        for layer, stream in zip(self.layers, self.streams):
            vals = stream.activation.values_dict()
            vals.update({k: float(v.detach()) for k, v in stream.power_norm.values().items()})
            vals["input_scale"] = float(stream.input_scale)
            out[layer] = vals
        return out


# ------------------------------------------------------------------------------- training


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.1):
    """Triplet loss of eq. 23, averaged over triplets: 1/2 max(0, t + ||a^q - a^m||^2 - ||a^q - a^n||^2)."""
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError(f"anchor/positive/negative shapes differ: {anchor.shape}, {positive.shape}, {negative.shape}")
    d_pos = ((anchor - positive) ** 2).sum(dim=1)
    d_neg = ((anchor - negative) ** 2).sum(dim=1)
    return 0.5 * torch.clamp(margin + d_pos - d_neg, min=0).mean()


def junk_mask(labels: Sequence, junk: Optional[Sequence] = None) -> np.ndarray:
    """N x N booleans: ``[i, j]`` is True when image i is junk for the class of image j (``labels[j]``).

    ``junk[i]``: the class labels for which image i is neither a match nor a non-match
    (:func:`training_junk`); None: no junk.
    """
    labels = np.asarray(labels)
    mask = np.zeros((len(labels), len(labels)), dtype=bool)
    if junk is None:
        return mask
    if len(junk) != len(labels):
        raise ValueError(f"need one junk entry per image: {len(junk)} junk entries for {len(labels)} labels")
    for i, classes in enumerate(junk):
        for c in classes:
            mask[i] |= labels == c
    return mask


def mine_hard_triplets(descriptors, labels: Sequence, margin: float = 0.1, rng: Optional[np.random.Generator] = None,
                       keep_all: bool = False, junk: Optional[Sequence] = None) -> np.ndarray:
    """Triplets (query, match, hardest non-match) from descriptors computed with the current model (Sec. 4.1).

    Every image with at least one other image of its instance is a query; its match is drawn at
    random among those; its negative is the nearest image (Euclidean) of another instance. Only
    triplets that incur a loss, ||q - n||^2 - ||q - m||^2 < margin, are kept (unless ``keep_all``).
    ``junk[i]`` (optional, :func:`training_junk`): the classes for which image i is junk, i.e. neither
    a match nor a non-match: it is then never the query, the match or the negative of a triplet of
    such a class (it stays a negative of every other class).
    Returns an int array T x 3 of image indices.
    """
    desc = torch.as_tensor(np.asarray(descriptors), dtype=torch.float64)
    labels = np.asarray(labels)
    if desc.dim() != 2 or desc.shape[0] != len(labels):
        raise ValueError(f"need N x D descriptors and N labels, got {tuple(desc.shape)} and {len(labels)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    sq = torch.cdist(desc, desc).pow(2).numpy()
    same = labels[:, None] == labels[None, :]
    neutral = junk_mask(labels, junk)  # neutral[:, q]: the junk images of q's class
    triplets = []
    for q in range(len(labels)):
        if neutral[q, q]:  # a junk view of its own instance
            continue
        matches = np.flatnonzero(same[q] & ~neutral[:, q])
        matches = matches[matches != q]
        others = np.flatnonzero(~same[q] & ~neutral[:, q])
        if len(matches) == 0 or len(others) == 0:
            continue
        m = int(rng.choice(matches))
        n = int(others[np.argmin(sq[q, others])])
        if keep_all or sq[q, n] - sq[q, m] < margin:
            triplets.append((q, m, n))
    return np.asarray(triplets, dtype=np.int64).reshape(-1, 3)


@dataclass
class TrainingConfig:
    """Hyper-parameters of the triplet training (Sec. 4.1 defaults: SGD lr 1e-3, wd 5e-4, momentum 0.9, margin 0.1)."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    margin: float = 0.1
    triplets_per_batch: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 0 or self.triplets_per_batch < 1:
            raise ValueError(f"epochs must be >= 0 and triplets_per_batch >= 1, "
                             f"got {self.epochs}, {self.triplets_per_batch}")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.momentum < 1 and self.margin > 0):
            raise ValueError(f"invalid optimiser settings: {self}")


def sparsify(maps_by_layer: Mapping[str, Sequence[torch.Tensor]], layers: Sequence[str]) -> Dict[str, List[SparseMap]]:
    """:class:`SparseMap` s of the maps of ``layers`` (done once; training then packs subsets of them)."""
    missing = [l for l in layers if l not in maps_by_layer]
    if missing:
        raise KeyError(f"maps for layer(s) {missing} missing; the head needs {list(layers)}")
    return {l: [SparseMap.from_map(m) for m in maps_by_layer[l]] for l in layers}


def _is_sparse(maps_by_layer, layers) -> bool:
    first = maps_by_layer[layers[0]] if layers[0] in maps_by_layer else None
    return bool(first) and isinstance(first[0], SparseMap)


def head_device(head: nn.Module) -> torch.device:
    """The device the head's tensors live on."""
    return next(iter(head.buffers())).device


@torch.no_grad()
def describe_maps(head: ACTNetHead, maps_by_layer: Mapping[str, Sequence[torch.Tensor]],
                  batch_size: int = 64) -> torch.Tensor:
    """Descriptors (N x out_dim, on the CPU) of a list of images given their maps (per layer: lists of
    C x H x W tensors or of :class:`SparseMap`), in batches of ``batch_size`` images, on the head's device."""
    device = head_device(head)
    sparse = maps_by_layer if _is_sparse(maps_by_layer, head.layers) else sparsify(maps_by_layer, head.layers)
    n = len(sparse[head.layers[0]])
    out = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        out.append(head({l: pack_sparse(sparse[l], idx).to(device) for l in head.layers}).cpu())
    return torch.cat(out) if out else torch.zeros(0, head.out_dim)


def train_head(head: ACTNetHead, maps_by_layer: Mapping[str, Sequence[torch.Tensor]], labels: Sequence,
               config: Optional[TrainingConfig] = None, progress: bool = False,
               junk: Optional[Sequence] = None) -> Dict[str, list]:
    """Train the head's activation, power-normalisation and whitening parameters with the triplet loss (eq. 23).

    The backbone is frozen: ``maps_by_layer`` holds the cached maps of the training images (lists of
    C x H x W per layer, same image order as ``labels``). Each epoch re-mines hard triplets with the
    current model (:func:`mine_hard_triplets`, with ``junk``: per image, the classes it is junk for,
    :func:`training_junk`), then runs SGD over them in mini-batches of ``triplets_per_batch``. Runs
    on the head's device (move the head first, e.g. to :func:`helpers.backbones.try_gpu`); the maps
    stay on the CPU and go over in mini-batches.

    Returns the history: per epoch (index 0 = before training) the objective (mean triplet loss over
    one mined triplet per query image, active or not), the mean mini-batch loss, the activation /
    power parameters; and the number of active (loss-incurring) triplets mined for each epoch (plus
    one entry after the last). A head without trainable parameters (DA without the whitening layer)
    has nothing to train: its history holds epoch 0 only.
    """
    config = config if config is not None else TrainingConfig()
    device = head_device(head)
    labels = np.asarray(labels)
    sparse = sparsify(maps_by_layer, head.layers)
    if any(len(f) != len(labels) for f in sparse.values()):
        raise ValueError(f"maps and labels disagree: {[len(f) for f in sparse.values()]} maps, {len(labels)} labels")
    return _triplet_training(
        head, [p for p in head.parameters() if p.requires_grad], labels, config, junk, progress,
        describe=lambda: describe_maps(head, sparse),
        forward=lambda images: head({l: pack_sparse(sparse[l], images).to(device) for l in head.layers}),
        device=device)


def _triplet_training(head: ACTNetHead, trainable, labels: np.ndarray, config: TrainingConfig, junk, progress: bool,
                      describe, forward, device=None, extra=None) -> Dict[str, list]:
    """The training loop of :func:`train_head` and :func:`train_end_to_end` (Sec. 4.1): per epoch,
    hard triplets re-mined from ``describe()`` (descriptors of every training image with the model as
    it is), then SGD over mini-batches of them, ``forward(image indices)`` giving the batch's
    descriptors with the graph recorded. ``extra`` (optional): ``{history key: function()}`` recorded
    after each epoch beside the head's parameters. No trainable parameter: epoch 0 only."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimiser = (torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay) if trainable else None)
    extra = dict(extra or {})
    history = {"epoch": [], "objective": [], "active_triplets": [], "batch_loss": [], "parameters": [],
               **{key: [] for key in extra}}

    def record(epoch, batch_losses):
        head.eval()
        desc = describe()
        all_triplets = mine_hard_triplets(desc.numpy(), labels, config.margin, np.random.default_rng(config.seed),
                                          keep_all=True, junk=junk)
        if len(all_triplets) == 0:
            raise ValueError("no training triplet: every instance needs at least two images and there must be "
                             "at least two instances")
        t = torch.as_tensor(all_triplets)
        objective = float(triplet_loss(desc[t[:, 0]], desc[t[:, 1]], desc[t[:, 2]], config.margin))
        history["epoch"].append(epoch)
        history["objective"].append(objective)
        history["batch_loss"].append(float(np.mean(batch_losses)) if batch_losses else float("nan"))
        history["parameters"].append(head.parameter_summary())
        for key, value in extra.items():
            history[key].append(value())
        return desc

    desc = record(0, [])
    epochs = config.epochs if optimiser is not None else 0
    for epoch in range(1, epochs + 1):
        triplets = mine_hard_triplets(desc.numpy(), labels, config.margin, rng, junk=junk)
        history["active_triplets"].append(int(len(triplets)))
        rng.shuffle(triplets)
        head.train()
        batch_losses = []
        for start in range(0, len(triplets), config.triplets_per_batch):
            batch = triplets[start:start + config.triplets_per_batch]
            images, local = np.unique(batch.reshape(-1), return_inverse=True)
            local = torch.as_tensor(local.reshape(-1, 3), device=device)
            out = forward(images)
            loss = triplet_loss(out[local[:, 0]], out[local[:, 1]], out[local[:, 2]], config.margin)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            batch_losses.append(float(loss.detach()))
        desc = record(epoch, batch_losses)
        if progress:
            print(f"epoch {epoch}/{epochs}: {len(triplets)} active triplets, "
                  f"objective {history['objective'][-1]:.4f}")
    history["active_triplets"].append(int(len(mine_hard_triplets(desc.numpy(), labels, config.margin,
                                                                   np.random.default_rng(config.seed), junk=junk))))
    head.eval()
    return history


# ------------------------------------------------------------------ separability (Fig. 3)


def pair_distances(query_desc: np.ndarray, db_desc: np.ndarray, gnd: Sequence[Mapping]):
    """Euclidean distances of matching (easy + hard) and non-matching (not positive, not junk) query-db pairs.

    ``query_desc``: n_q x d, ``db_desc``: n_db x d, ``gnd``: ground truth per query (int lists
    "easy", "hard", "junk"). Returns (matching distances, non-matching distances), 1-D arrays.
    """
    query_desc, db_desc = np.asarray(query_desc, np.float64), np.asarray(db_desc, np.float64)
    if len(gnd) != len(query_desc):
        raise ValueError(f"{len(query_desc)} query descriptors but {len(gnd)} ground-truth entries")
    dist = np.sqrt(np.maximum(((query_desc[:, None, :] - db_desc[None, :, :]) ** 2).sum(-1), 0))
    matching, nonmatching = [], []
    for q, g in enumerate(gnd):
        pos = np.asarray(list(g.get("easy", [])) + list(g.get("hard", [])), dtype=int)
        ignore = np.zeros(len(db_desc), bool)
        ignore[pos] = True
        ignore[np.asarray(list(g.get("junk", [])), dtype=int)] = True
        matching.append(dist[q, pos])
        nonmatching.append(dist[q, ~ignore])
    return np.concatenate(matching), np.concatenate(nonmatching)


def histogram_kl_divergence(matching: np.ndarray, nonmatching: np.ndarray, bins: int = 40,
                            value_range=(0.0, 2.0), smoothing: float = 1e-3) -> float:
    """KL(P(s|m) || P(s|n)) = sum_s P(s|m) log(P(s|m) / P(s|n)) of the distance histograms (Sec. 3.2, Fig. 3).

    P(s|m), P(s|n): the histograms of the ``matching`` and ``nonmatching`` distances. The paper
    computes "the separability between P(s/m) and P(s/n) [...] using KL-Divergence" without
    printing the formula; we read it in the order it names them, KL of the matching distribution
    from the non-matching one. Nor does it give the binning: ``bins`` equal bins over ``value_range``
    (l2-normalised descriptors have distances in [0, 2]), with ``smoothing`` added to each bin's
    probability before renormalising so that empty bins do not give an infinite divergence.
    Larger = better separated.
    """
    from scipy.stats import entropy

    if len(matching) == 0 or len(nonmatching) == 0:
        raise ValueError("need at least one matching and one non-matching distance")
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    p = np.histogram(np.clip(matching, *value_range), edges)[0].astype(np.float64)
    q = np.histogram(np.clip(nonmatching, *value_range), edges)[0].astype(np.float64)
    p = p / p.sum() + smoothing
    q = q / q.sum() + smoothing
    return float(entropy(p / p.sum(), q / q.sum()))


def per_query_separation(query_desc: np.ndarray, db_desc: np.ndarray, gnd: Sequence[Mapping]) -> np.ndarray:
    """Per query, how far its non-matching images lie beyond its matching ones: the mean Euclidean
    distance to its non-matches (not positive, not junk) minus the mean distance to its matches (easy
    + hard), times 100 (so that l2-normalised descriptors give 0..200 "distance points").

    The per-query counterpart of the histograms of Fig. 3 (which pool every query's pairs), so that
    methods can be compared query by query (:func:`helpers.evaluate.paired_comparison`). Larger =
    better separated; NaN for a query without a match or without a non-match.
    """
    query_desc, db_desc = np.asarray(query_desc, np.float64), np.asarray(db_desc, np.float64)
    if len(gnd) != len(query_desc):
        raise ValueError(f"{len(query_desc)} query descriptors but {len(gnd)} ground-truth entries")
    dist = np.sqrt(np.maximum(((query_desc[:, None, :] - db_desc[None, :, :]) ** 2).sum(-1), 0))
    out = np.full(len(gnd), np.nan)
    for q, g in enumerate(gnd):
        pos = np.asarray(list(g.get("easy", [])) + list(g.get("hard", [])), dtype=int)
        neg = np.ones(len(db_desc), bool)
        neg[pos] = False
        neg[np.asarray(list(g.get("junk", [])), dtype=int)] = False
        if len(pos) and neg.any():
            out[q] = 100 * (dist[q, neg].mean() - dist[q, pos].mean())
    return out


# ------------------------------------------------------------- strongest responses (Fig. 4)


@torch.no_grad()
def response_map(fmap: torch.Tensor, stream: Optional[AggregationStream] = None) -> torch.Tensor:
    """H x W map of the summed channel responses of a C x H x W map, after the stream's activation if given.

    Without a stream: the rectified raw responses (what max / average pooling see); with a stream:
    phi(max(x, 0) / input_scale) (eq. 18), what the stream's average pooling sees.
    """
    if fmap.dim() != 3:
        raise ValueError(f"expected a C x H x W map, got shape {tuple(fmap.shape)}")
    values = torch.relu(fmap.float()) if stream is None else stream.activate(fmap.float())
    return values.sum(dim=0)


def strongest_cells(response: torch.Tensor, k: int = 3) -> List[tuple]:
    """(row, col) of the ``k`` largest cells of an H x W response map, strongest first."""
    flat = response.reshape(-1)
    k = min(int(k), flat.numel())
    idx = torch.topk(flat, k).indices.tolist()
    return [(i // response.shape[1], i % response.shape[1]) for i in idx]


@torch.no_grad()
def pooling_distances(query_map: torch.Tensor, match_map: torch.Tensor,
                      streams: Mapping[str, AggregationStream]) -> Dict[str, float]:
    """Euclidean distances between the l2-normalised descriptors of two C x H x W maps (Fig. 4).

    "max" = MAC (max pooling), "average" = SPoC (average pooling) of the rectified maps, and for each
    named stream the stream output Phi(X) (activation, average pooling, power normalisation,
    eq. 21), l2-normalised; no whitening, so only the pooling differs.
    """
    from .pooling import l2n, mac, spoc

    q, m = torch.relu(query_map.float()), torch.relu(match_map.float())
    out = {"max": float((l2n(mac(q)) - l2n(mac(m))).norm()),
           "average": float((l2n(spoc(q)) - l2n(spoc(m))).norm())}
    for name, stream in streams.items():
        a, b = F.normalize(stream([q, m]), dim=1)
        out[name] = float((a - b).norm())
    return out


# ------------------------------------------------------------- training history, profiles


def parameter_changes(history: Mapping) -> Dict[str, Dict[str, tuple]]:
    """``{layer: {parameter: (initial, final)}}`` of the activation / power parameters recorded in a
    training history (:func:`train_head`; the fixed ``input_scale`` is left out)."""
    first, final = history["parameters"][0], history["parameters"][-1]
    return {layer: {k: (first[layer][k], final[layer][k]) for k in final[layer] if k != "input_scale"}
            for layer in final}


def max_relative_change(history: Mapping) -> float:
    """The largest |final / initial - 1| over the activation / power parameters of a training history."""
    return max(abs(b / a - 1) for params in parameter_changes(history).values() for a, b in params.values())


def draw_profiles(axes, sinh_alpha=1.0, sinh_beta=3.0, exp_alpha=1.0, exp_beta=3.0,
                  wb_alpha=1.0, wb_beta=3.0, wb_gamma=1.0, wb_zeta=2.0, x_max=1.5) -> None:
    """Fig. 2b on two matplotlib axes: SinH and Exp against the identity (left), the Weibull with
    its peak x0 of eq. 11 marked when it lies in [0, ``x_max``] (right)."""
    x = torch.linspace(0, x_max, 400)
    left, right = axes
    left.plot(x, x, "k:", label="identity")
    left.plot(x, sinh_activation(x, sinh_alpha, sinh_beta), "C0",
              label=rf"SinH (eq. 2): {sinh_alpha:.2g} sinh({sinh_beta:.2g}x)")
    left.plot(x, exp_activation(x, exp_alpha, exp_beta), "C1",
              label=rf"Exp (eq. 6): {exp_alpha:.2g} (exp({exp_beta:.2g}x) - 1)")
    left.set_title("SinH and Exp: amplify strong inputs")
    right.plot(x, weibull_activation(x, wb_alpha, wb_beta, wb_gamma, wb_zeta), "C2",
               label=rf"Weibull (eq. 10): $\alpha$={wb_alpha:.2g}, $\beta$={wb_beta:.2g}, "
               rf"$\gamma$={wb_gamma:.2g}, $\zeta$={wb_zeta:.2g}")
    x0 = weibull_peak(wb_beta, wb_gamma, wb_zeta)
    if x0 <= x_max:
        y0 = float(weibull_activation(torch.tensor([x0]), wb_alpha, wb_beta, wb_gamma, wb_zeta))
        right.plot([x0], [y0], "C2o", ms=8)
        right.annotate(f"peak $x_0$ = {x0:.2f} (eq. 11)", (x0, y0), xytext=(8, -14), textcoords="offset points",
                       color="C2")
    right.set_title("Weibull: attenuate weak, equalise strong inputs")
    for ax, loc in zip(axes, ("upper left", "lower right")):
        ax.set_xlabel("input value (normalised: 1 = 99th pct. of positive values)")
        ax.set_ylabel(r"output $\theta_\phi(x)$")
        ax.legend(fontsize=8, loc=loc)


# ---------------------------------------------------------------- datasets, cache, method

#: Label the demo / folder sets give to images of no instance; each becomes its own singleton class.
DISTRACTOR_LABEL = "distractor"
HEAD_FORMAT_VERSION = 3
#: Shrinkage of the PCA-whitening initialisation (see :func:`fit_actnet_head`).
DEFAULT_WHITEN_SHRINKAGE = 1.0


def training_labels(dataset) -> List[str]:
    """One class label per database image of a training dataset, for triplet mining.

    Uses ``dataset.instance_labels`` when present ("distractor" images become singletons: they are
    negatives only). Otherwise (public benchmarks) images are grouped through the ground truth: the
    positives (easy + hard) of a query form a class, queries sharing positives are merged (connected
    components, scipy), and images positive for no query are singletons.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = dataset.n_db
    if dataset.instance_labels is not None:
        return [f"{DISTRACTOR_LABEL}#{i}" if lab == DISTRACTOR_LABEL else str(lab)
                for i, lab in enumerate(dataset.instance_labels)]
    rows, cols = [], []
    for g in dataset.gnd:  # link every positive of a query to its first positive
        pos = [int(j) for j in list(g.get("easy", [])) + list(g.get("hard", []))]
        rows += pos[:1] * max(len(pos) - 1, 0)
        cols += pos[1:]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return [f"group{c}" for c in component]


def training_junk(dataset, labels: Optional[Sequence[str]] = None) -> List[frozenset]:
    """Per database image of a training dataset, the classes (of :func:`training_labels`) it is junk for.

    A junk view of a query's instance (the ground truth's "junk" list: in the demo sets, a view
    with under 10% of the object visible) is neither a match nor a non-match of that instance in
    triplet mining (:func:`mine_hard_triplets`). The class of query q is its instance
    (``query_labels[q]``) when the dataset has instance labels, else the class of its positives. A
    junk entry that is the query image itself (the holidays / ukbench / folder protocols list the
    query among the database images as junk, so that it is not counted) is not a junk view.
    """
    labels = training_labels(dataset) if labels is None else list(labels)
    if len(labels) != dataset.n_db:
        raise ValueError(f"need one label per database image: {len(labels)} labels, {dataset.n_db} images")
    query_labels = getattr(dataset, "query_labels", None) if dataset.instance_labels is not None else None
    junk = [set() for _ in labels]
    for q, g in enumerate(dataset.gnd):
        positives = [int(j) for j in list(g.get("easy", [])) + list(g.get("hard", []))]
        if query_labels is not None:
            cls = str(query_labels[q])
        elif positives:
            cls = labels[positives[0]]
        else:
            continue  # a query without positives has no class to keep its junk out of
        for j in g.get("junk", []):
            if dataset.imlist[int(j)] != dataset.qimlist[q]:
                junk[int(j)].add(cls)
    return [frozenset(c) for c in junk]


def check_disjoint_instances(train_dataset, eval_dataset) -> None:
    """Raise ValueError if a training instance (other than distractors) is among the evaluated set's instances/queries.

    Needs instance labels on both sides (demo / folder sets); otherwise only the dataset identities
    are compared (the CLI's cross-dataset protocol: roxford5k <-> rparis6k).
    """
    if train_dataset.key == eval_dataset.key:
        raise ValueError(f"the head was trained on {train_dataset.name!r}, the dataset being evaluated")
    if train_dataset.instance_labels is None:
        return
    trained = set(train_dataset.instance_labels) - {DISTRACTOR_LABEL}
    evaluated = set(eval_dataset.query_labels or []) | set(eval_dataset.instance_labels or [])
    overlap = sorted(trained & (evaluated - {DISTRACTOR_LABEL}))
    if overlap:
        raise ValueError(f"training instances appear in {eval_dataset.name!r}: {overlap[:5]}; "
                         "train the head on a dataset with disjoint instances")


def default_layers(backbone, count: int = 2) -> List[str]:
    """The last ``count`` conv taps of the backbone (the paper: the last two conv blocks).

    The conv taps are ``backbone.layers`` up to ``backbone.last_conv``: VGG16 and AlexNet list their
    fully connected taps ("fc6", "fc7") after it.
    """
    layers = list(backbone.layers)
    if backbone.last_conv not in layers:
        raise ValueError(f"backbone {backbone.name!r}: last_conv {backbone.last_conv!r} is not among its "
                         f"layers {layers}")
    conv = layers[:layers.index(backbone.last_conv) + 1]
    if not 1 <= count <= len(conv):
        raise ValueError(f"need 1 <= count <= {len(conv)} conv taps of {backbone.name!r}, got {count}")
    return conv[-count:]


def head_config(train_dataset, backbone, layers, image_size, activation, activation_init, power_norm, p_init,
                whiten, whiten_dim, whiten_shrinkage, training: TrainingConfig) -> dict:
    """Everything a trained head depends on (its cache key)."""
    return {
        "version": HEAD_FORMAT_VERSION, "train_dataset": train_dataset.key, "backbone": backbone.name,
        "weights_id": backbone.weights_id, "layers": list(layers), "image_size": int(image_size),
        "activation": activation, "activation_init": dict(sorted((activation_init or {}).items())),
        "power_norm": bool(power_norm), "p_init": float(p_init), "whiten": bool(whiten),
        "whiten_dim": whiten_dim if whiten else None, "whiten_shrinkage": float(whiten_shrinkage) if whiten else None,
        "training": dict(vars(training)),
    }


def head_cache_path(config: Mapping):
    """``<cache>/actnet/<train dataset key>/<backbone>-<weights>/<activation>-<hash of config>.pt`` (a Path)."""
    import hashlib
    import json

    from .cache import cache_root, safe_name as safe

    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return (cache_root() / "actnet" / safe(config["train_dataset"]) / f"{safe(config['backbone'])}-"
            f"{safe(config['weights_id'])}" / f"{safe(config['activation'])}-{'+'.join(map(safe, config['layers']))}-"
            f"{config['image_size']}-{'pcaw' if config['whiten'] else 'l2'}-{digest}.pt")


def _build_head(config: Mapping, channels: Sequence[int]) -> ACTNetHead:
    return ACTNetHead(config["layers"], channels, activation=config["activation"],
                      activation_init=config["activation_init"], power_norm=config["power_norm"],
                      p_init=config["p_init"], whiten=config["whiten"])


def _initialised_head(config: Mapping, maps: Mapping[str, Sequence[torch.Tensor]]) -> ACTNetHead:
    """A head of ``config`` started on the training maps: input scales, stream balance and (if it
    whitens) the PCA-whitening layer, as Sec. 3.4 and :func:`fit_actnet_head` describe."""
    head = _build_head(config, [int(maps[l][0].shape[0]) for l in config["layers"]])
    head.init_input_scales(maps)
    head.init_stream_balance(maps)
    if config["whiten"]:
        head.init_whitening(maps, dim=config["whiten_dim"], shrinkage=config["whiten_shrinkage"])
    return head


def save_head(path, head: ACTNetHead, config: Mapping, history: Mapping, blocks=None) -> None:
    """Write {config, channels, state_dict, history} to ``path`` atomically (:func:`helpers.cache.atomic_write`);
    ``blocks``: the trainable backbone modules of an end-to-end run, stored as their own parameters."""
    from .cache import atomic_write

    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    blob = {"config": dict(config), "channels": list(head.channels), "out_dim": head.out_dim,
            "state_dict": state, "history": dict(history)}
    if blocks is not None:
        blob["blocks"] = [{n: p.detach().cpu() for n, p in m.named_parameters(recurse=False)} for m in blocks]
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_head(path):
    """Inverse of :func:`save_head`: returns (head, config, history)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers, strings, lists, dicts
    head = _build_head(blob["config"], blob["channels"])
    if head.whiten:
        head.whitening = nn.Linear(sum(blob["channels"]), blob["out_dim"])
    head.load_state_dict(blob["state_dict"])
    head.eval()
    return head, blob["config"], blob["history"]


def fit_actnet_head(train_dataset, backbone, layers, image_size: int, activation: str = "weibull",
                    activation_init: Optional[Mapping[str, float]] = None, power_norm: Optional[bool] = None,
                    p_init: float = 0.5, whiten: bool = True, whiten_dim: Optional[int] = None,
                    whiten_shrinkage: float = DEFAULT_WHITEN_SHRINKAGE, training: Optional[TrainingConfig] = None,
                    use_cache: bool = True, progress: bool = False, device=None):
    """Train (or load from the cache) an ACTNET head on the cached maps of ``train_dataset``'s database images.

    The backbone is frozen (its maps come from :func:`helpers.features.extract_maps`); the input
    scales, the stream weights lambda (:meth:`ACTNetHead.init_stream_balance`) and the PCA-whitening
    layer are initialised on the training maps, then :func:`train_head` runs.
    Returns (head on ``device`` (default: the CPU), history, cache path). ``power_norm`` None: as in
    the paper's method for ``activation`` (:func:`default_power_norm`; DA has none). Triplets never
    use junk views as matches or non-matches of their instance (:func:`training_junk`).

    Why ``whiten_shrinkage`` defaults to 1 (eigenvalues regularised by their mean): whitening N
    training vectors in their N - 1 principal directions maps them onto a regular simplex, so every
    pairwise distance of the training set is equal, the triplet loss is exactly t/2 for every triplet
    and training has nothing to learn from. The paper has ~200K training images for a 4096-D
    descriptor and does not meet this; a small training set (the demo's 120 images) does.

    The head is cached (``use_cache``) under :func:`head_cache_path` of everything it depends on, with
    its training history, so a later call (the CLI, the notebook) loads it instead of training.
    """
    from .features import extract_maps

    training = training if training is not None else TrainingConfig()
    power_norm = default_power_norm(activation) if power_norm is None else bool(power_norm)
    layers = [backbone.resolve(l) for l in layers]
    config = head_config(train_dataset, backbone, layers, image_size, activation, activation_init, power_norm,
                         p_init, whiten, whiten_dim, whiten_shrinkage, training)
    path = head_cache_path(config)
    device = torch.device(device) if device is not None else torch.device("cpu")
    cached = read_entry(path, load_head, "trained ACTNET head") if use_cache else None
    if cached is not None:
        head, _, history = cached
        return head.to(device), history, path
    maps = extract_maps(train_dataset, backbone, layers, image_size, "db")
    labels = training_labels(train_dataset)
    junk = training_junk(train_dataset, labels)
    head = _initialised_head(config, maps)
    history = train_head(head.to(device), maps, labels, training, progress=progress, junk=junk)
    if use_cache:
        save_head(path, head, config, history)
    return head, history, path


# ------------------------------------------------------------------ end to end (Sec. 3.4: the CNN trained too)


def _forward_order(backbone) -> tuple[list, dict]:
    """The modules that own parameters, in the order a forward pass runs them, and for each conv tap
    how many of them have run when it fires (one probe pass on a small input)."""
    order, fired, handles = [], {}, []

    def ran(module, inputs, output):  # a forward hook that returns a value would replace the output
        order.append(module)

    def tap_fired(name):
        def hook(module, inputs, output):
            fired.setdefault(name, len(order))
        return hook

    for module in backbone.model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(ran))
    for name in backbone.conv_layers:
        module, _ = backbone.tap_modules[name]
        handles.append(module.register_forward_hook(tap_fired(name)))
    device = next(backbone.model.parameters()).device  # "meta" for a shapes-only model: the probe runs there too
    try:
        with torch.no_grad():
            backbone.model(torch.zeros(1, 3, 64, 64, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order)), fired


def default_train_blocks(backbone) -> int:
    """The default of ``train_blocks``: the whole convolutional part, as the paper trains it, where a
    GPU is present (the backbone is on CUDA); 0, the frozen backbone, on a CPU, where fine-tuning the
    whole network takes hours (chapter 03 runs a short schedule of a few blocks instead)."""
    device = getattr(backbone, "device", None)
    return len(backbone.conv_layers) if device is not None and torch.device(device).type == "cuda" else 0


def trainable_blocks(backbone, train_blocks: int) -> list:
    """The modules of the last ``train_blocks`` conv blocks: every module with parameters that runs
    after the tap ``conv_layers[-train_blocks - 1]`` and up to :attr:`last_conv` (``0``: none, the
    frozen backbone; ``len(conv_layers)``: the whole convolutional part, as the paper trains it).
    For EfficientNet-Lite0, ``1`` is its 1x1 ``conv_head`` (with its batch norm), ``2`` adds ``block6``."""
    conv = backbone.conv_layers
    if isinstance(train_blocks, bool) or not isinstance(train_blocks, (int, np.integer)) or \
            not 0 <= train_blocks <= len(conv):
        raise ValueError(f"train_blocks must be an int in 0..{len(conv)} (the conv taps of {backbone.name!r}: "
                         f"{conv}), got {train_blocks!r}")
    if train_blocks == 0:
        return []
    order, fired = _forward_order(backbone)
    start = 0 if train_blocks == len(conv) else fired[conv[-train_blocks - 1]]
    return order[start:fired[backbone.last_conv]]


def tuned_copy(backbone, train_blocks: int, tag: str):
    """A copy of ``backbone`` whose last ``train_blocks`` blocks (:func:`trainable_blocks`) require
    gradients, under the weights id ``<weights_id>-<tag>`` (the feature cache keeps its maps apart).
    The original backbone is left untouched. Returns (copy, its trainable modules)."""
    import copy
    import dataclasses

    memo: dict = {}
    model = copy.deepcopy(backbone.model, memo)
    taps = {name: (memo[id(module)], kind) for name, (module, kind) in backbone.tap_modules.items()}
    tuned = dataclasses.replace(backbone, model=model, tap_modules=taps, weights_id=f"{backbone.weights_id}-{tag}",
                                _shapes={})
    modules = [memo[id(m)] for m in trainable_blocks(backbone, train_blocks)]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in modules:
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)
    model.eval()  # batch norms keep their ImageNet statistics: mini-batches of one image cannot estimate them
    return tuned, modules


def _image_maps(network, layers, images, grad: bool = False) -> Dict[str, list]:
    """``{layer: [C x h x w map per image]}`` of preprocessed images (the graph recorded if ``grad``)."""
    taps = [network.forward_taps(x, layers, grad=grad) for x in images]
    return {layer: [t[layer][0] for t in taps] for layer in layers}


def _describe_images(tuned, head: ACTNetHead, images, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([head(_image_maps(tuned, head.layers, images[s:s + batch])).cpu()
                          for s in range(0, len(images), batch)])


def block_changes(initial: Mapping[str, torch.Tensor], modules) -> Dict[str, float]:
    """Relative change ``||w - w0|| / ||w0||`` of each trainable backbone module's parameters, in %."""
    out = {}
    for i, module in enumerate(modules):
        for name, p in module.named_parameters(recurse=False):
            key = f"{i}:{type(module).__name__}.{name}"
            w0 = initial[key]
            out[key] = float(100 * (p.detach().cpu() - w0).norm() / w0.norm().clamp(min=1e-12))
    return out


def train_end_to_end(head: ACTNetHead, tuned, modules, images, labels: Sequence, config: TrainingConfig,
                     junk: Optional[Sequence] = None, progress: bool = False) -> Dict[str, list]:
    """Train the head *and* the backbone's trainable blocks with the triplet loss (eq. 23).

    ``images``: the training images, preprocessed (``1 x 3 x H x W`` each, :meth:`Backbone.preprocess`),
    in the order of ``labels``. Each epoch re-mines the hard triplets from the descriptors of the
    network as it is then (:func:`mine_hard_triplets`), then runs SGD over them; every image of a
    mini-batch goes through the network with the graph recorded, so the gradients reach the
    trainable blocks. Returns the history of :func:`train_head` plus, per epoch, ``"blocks"``: the
    relative change (%) of each trainable module's parameters (:func:`block_changes`).
    """
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images for {len(labels)} labels")
    initial = {f"{i}:{type(m).__name__}.{n}": p.detach().cpu().clone()
               for i, m in enumerate(modules) for n, p in m.named_parameters(recurse=False)}
    trainable = [p for p in head.parameters() if p.requires_grad] + [p for m in modules for p in m.parameters(recurse=False)]
    return _triplet_training(
        head, trainable, labels, config, junk, progress,
        describe=lambda: _describe_images(tuned, head, images),
        forward=lambda chosen: head(_image_maps(tuned, head.layers, [images[i] for i in chosen], grad=True)),
        extra={"blocks": lambda: block_changes(initial, modules)})


def fit_actnet_end_to_end(train_dataset, backbone, layers, image_size: int, train_blocks: int,
                          activation: str = "weibull", activation_init: Optional[Mapping[str, float]] = None,
                          power_norm: Optional[bool] = None, p_init: float = 0.5, whiten: bool = True,
                          whiten_dim: Optional[int] = None, whiten_shrinkage: float = DEFAULT_WHITEN_SHRINKAGE,
                          training: Optional[TrainingConfig] = None, use_cache: bool = True, progress: bool = False):
    """ACTNET trained end to end: the head of :func:`fit_actnet_head` and the backbone's last
    ``train_blocks`` blocks (:func:`trainable_blocks`) learned together by the triplet loss, hard
    negatives re-mined every epoch with the fine-tuned network (:func:`train_end_to_end`), on the
    training dataset's database images at ``image_size``.

    The head starts as the frozen path's does (input scales, stream balance and PCA-whitening from
    the maps of the pretrained network). Returns (fine-tuned backbone copy, head, history, cache
    path); both are cached under :func:`head_cache_path` of the configuration (which holds
    ``train_blocks``), the backbone as the state of its trainable modules only. ``train_blocks = 0``
    is the frozen path: use :func:`fit_actnet_head`.
    """
    import hashlib
    import json

    from .features import _load, split_images

    training = training if training is not None else TrainingConfig()
    if train_blocks == 0:
        raise ValueError("train_blocks=0 is the frozen backbone: use fit_actnet_head")
    trainable_blocks(backbone, train_blocks)  # validates train_blocks
    power_norm = default_power_norm(activation) if power_norm is None else bool(power_norm)
    layers = [backbone.resolve(l) for l in layers]
    config = head_config(train_dataset, backbone, layers, image_size, activation, activation_init, power_norm,
                         p_init, whiten, whiten_dim, whiten_shrinkage, training)
    config["train_blocks"] = int(train_blocks)
    path = head_cache_path(config)
    tag = "actnet-" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    tuned, modules = tuned_copy(backbone, train_blocks, tag)
    if use_cache:
        cached = read_entry(path, _load_end_to_end, "trained ACTNET network")
        if cached is not None:
            head, blocks_state, history = cached
            for module, state in zip(modules, blocks_state):
                module.load_state_dict(state, strict=False)
            for p in tuned.model.parameters():
                p.requires_grad_(False)
            return tuned, head.to(backbone.device), history, path
    images = [backbone.preprocess(_load(p, bbx, image_size)).cpu() for p, bbx in split_images(train_dataset, "db")]
    labels = training_labels(train_dataset)
    junk = training_junk(train_dataset, labels)
    with torch.no_grad():
        maps = _image_maps(backbone, layers, images)
    head = _initialised_head(config, maps)
    del maps
    history = train_end_to_end(head.to(backbone.device), tuned, modules, images, labels, training, junk, progress)
    for p in tuned.model.parameters():
        p.requires_grad_(False)
    if use_cache:
        save_head(path, head, config, history, blocks=modules)
    return tuned, head, history, path


def _load_end_to_end(path):
    head, config, history = load_head(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return head, blob["blocks"], history


def _as_layer_list(layers) -> Optional[List[str]]:
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [l.strip() for l in layers.split(",") if l.strip()]
    return list(layers)


@register_method("actnet")
class ACTNetMethod(RetrievalMethod):
    """ACTNET head (activation streams + power normalisation + PCA-whitening layer, l2n) on backbone maps,
    the backbone frozen or its last blocks trained with the head (``train_blocks``).

    Options (``--option KEY=VALUE`` on the command line):
        activation: "weibull" (default), "sinh", "exp" or "identity" (direct aggregation, DA:
            plain average pooling, :data:`AGGREGATIONS`).
        layers: taps, e.g. "block6,conv_head" (default: the last two conv taps).
        epochs, lr, weight_decay, momentum, margin, triplets_per_batch, seed: :class:`TrainingConfig`
            (defaults: the paper's SGD lr 1e-3, wd 5e-4, momentum 0.9, margin 0.1).
        whiten (bool, default True as in the paper), whiten_dim, whiten_shrinkage: the PCA-whitening layer.
        power_norm (bool; default: none for DA, learnable for the activations, :func:`default_power_norm`),
            p_init: eq. 20. use_cache (bool): reuse / store the trained head.
        train_blocks: how many of the backbone's last conv blocks learn with the head, end to end
            (:func:`fit_actnet_end_to_end`); 0 is the frozen backbone. Default
            (:func:`default_train_blocks`): all of them, as the paper, where a GPU is present; 0 on a CPU.
    Similarity: dot product of the l2-normalised descriptors (ranking = Euclidean distance ranking).
    Further keyword options are the activation's initial values (``alpha``, ``beta``, ...,
    :data:`DEFAULT_ACTIVATION_INIT`), checked here against the chosen activation.
    """

    needs_training = True
    learns = "activation, power-normalisation and PCA-whitening layers by the triplet loss (frozen backbone)"
    #: the activation's initial values come as further keyword options (see the class docstring)
    extra_options = True

    def __init__(self, backbone, image_size, activation: Literal["identity", "sinh", "exp", "weibull"] = "weibull",
                 layers=None,
                 epochs: int = TrainingConfig.epochs, lr: float = TrainingConfig.lr,
                 weight_decay: float = TrainingConfig.weight_decay, momentum: float = TrainingConfig.momentum,
                 margin: float = TrainingConfig.margin, triplets_per_batch: int = TrainingConfig.triplets_per_batch,
                 seed: int = 0, whiten: bool = True, whiten_dim: Optional[int] = None,
                 whiten_shrinkage: float = DEFAULT_WHITEN_SHRINKAGE,
                 power_norm: Optional[bool] = None, p_init: float = 0.5, use_cache: bool = True,
                 progress: bool = False, train_blocks: Optional[int] = None, **activation_init):
        from .options import OptionError, choice

        super().__init__(backbone, image_size)
        choice("activation", activation, ACTIVATIONS)
        unknown = set(activation_init) - set(DEFAULT_ACTIVATION_INIT[activation])
        if unknown:
            raise OptionError(f"unknown options {sorted(unknown)} for method 'actnet' with activation "
                              f"{activation!r}: its initial values are {sorted(DEFAULT_ACTIVATION_INIT[activation])}")
        try:
            activation_init = {k: float(v) for k, v in activation_init.items()}
        except (TypeError, ValueError):
            raise OptionError(f"initial activation values must be numbers, got {activation_init}") from None
        make_activation(activation, **activation_init)  # validates the initial values early
        self.activation = activation
        self.activation_init = dict(activation_init)
        self.layers = tuple(backbone.resolve(l) for l in (_as_layer_list(layers) or default_layers(backbone)))
        self.training = TrainingConfig(epochs=int(epochs), lr=float(lr), weight_decay=float(weight_decay),
                                       momentum=float(momentum), margin=float(margin),
                                       triplets_per_batch=int(triplets_per_batch), seed=int(seed))
        self.whiten, self.whiten_dim, self.whiten_shrinkage = bool(whiten), whiten_dim, float(whiten_shrinkage)
        self.power_norm = default_power_norm(activation) if power_norm is None else bool(power_norm)
        self.p_init = float(p_init)
        self.use_cache, self.progress = bool(use_cache), bool(progress)
        self.train_blocks = default_train_blocks(backbone) if train_blocks is None else int(train_blocks)
        trainable_blocks(backbone, self.train_blocks) if self.train_blocks else None  # validates it early
        if self.train_blocks:
            self.learns = (f"activation, power-normalisation and PCA-whitening layers and the backbone's last "
                           f"{self.train_blocks} conv blocks, end to end by the triplet loss")
        self.network = backbone  # the backbone the descriptors come from (a fine-tuned copy once fit)
        self.head: Optional[ACTNetHead] = None
        self.history: Optional[dict] = None
        self.head_path = None
        self.train_dataset = None

    def fit(self, train_dataset):
        options = (self.activation, self.activation_init, self.power_norm, self.p_init, self.whiten, self.whiten_dim,
                   self.whiten_shrinkage, self.training)
        if self.train_blocks:
            self.network, self.head, self.history, self.head_path = fit_actnet_end_to_end(
                train_dataset, self.backbone, self.layers, self.image_size, self.train_blocks, *options,
                use_cache=self.use_cache, progress=self.progress)
        else:
            self.head, self.history, self.head_path = fit_actnet_head(
                train_dataset, self.backbone, self.layers, self.image_size, *options,
                use_cache=self.use_cache, progress=self.progress, device=self.backbone.device)
        self.train_dataset = train_dataset
        return self

    def describe(self, dataset, split):
        from .features import extract_maps

        if self.head is None:
            raise RuntimeError("actnet must be fit on a training dataset first (method.fit(load_dataset(...)))")
        check_disjoint_instances(self.train_dataset, dataset)
        maps = extract_maps(dataset, self.network, list(self.layers), self.image_size, split)
        return describe_maps(self.head, maps).numpy()

    def score(self, query_desc, db_desc):
        return np.asarray(db_desc) @ np.asarray(query_desc).T

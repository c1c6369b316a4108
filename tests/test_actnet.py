"""Tests of helpers.actnet (ACTNET, paper 001): activations against the paper's derivatives, streams, head, training."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import actnet
from helpers.actnet import (
    ACTNetHead, AggregationStream, ExpActivation, PowerNormalisation, SinHActivation, TrainingConfig,
    WeibullActivation, average_pool_packed, exp_activation, exp_partials, histogram_kl_divergence,
    inverse_softplus, make_activation, mine_hard_triplets, pack_maps, pair_distances, pca_whitening_parameters,
    sinh_activation, sinh_partials, train_head, triplet_loss, weibull_activation, weibull_partials,
    weibull_partials_as_printed, weibull_peak,
)

torch.set_num_threads(1)


def _autograd_partials(fn, x, params):
    """Element-wise partial derivatives by reverse-mode autograd, one element at a time (independent of
    helpers.actnet.autograd_partials, which is checked against this)."""
    x = x.clone().requires_grad_(True)
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    out = {}
    (gx,) = torch.autograd.grad(fn(x, **leaves).sum(), x)  # element-wise function: diagonal Jacobian
    out["x"] = gx
    for name in params:
        out[name] = torch.stack([torch.autograd.grad(fn(x, **leaves)[i], leaves[name])[0] for i in range(x.numel())])
    return out


X_POS = torch.tensor([0.05, 0.3, 0.7, 1.0, 1.6, 2.5], dtype=torch.float64)


# ------------------------------------------------ the paper's formulas against independent values
# Reference values of each function and of its partial derivatives at fixed points, computed with
# sympy (17 digits) from the paper's definitions, eqs. 2, 6, 10 and 20, and symbolic
# differentiation: independent of helpers.actnet and of the paper's printed derivatives (eqs. 3-17,
# two of which are misprinted). E.g. for Exp:
#   x, a, b = sympy.symbols("x alpha beta"); f = a * (sympy.exp(b * x) - 1)
#   sympy.N(sympy.diff(f, b).subs({x: 0.7, a: 1.3, b: 0.8}), 17)
SINH_EXP_PARAMS = {"alpha": 1.3, "beta": 0.8}
SINH_REFERENCE = {  # theta = alpha sinh(beta x), eq. 2; partials: eqs. 3 (x), 4 (alpha), 5 (beta)
    0.7: {"theta": 0.76665123369073603, "x": 1.2073784133553563, "alpha": 0.58973171822364310,
          "beta": 1.0564561116859368},
    1.9: {"theta": 2.8297836503234639, "x": 2.4912872826890745, "alpha": 2.1767566540949722,
          "beta": 5.9168072963865519},
}
EXP_REFERENCE = {  # theta = alpha (exp(beta x) - 1), eq. 6; partials: eqs. 7 (x), 8 (alpha), 9 (beta)
    0.7: {"theta": 0.97587425038493141, "x": 1.8206994003079451, "alpha": 0.75067250029610108,
          "beta": 1.5931119752694520},
    1.9: {"theta": 4.6438927536848070, "x": 4.7551142029478456, "alpha": 3.5722251951421592,
          "beta": 11.293396232001133},
}
WEIBULL_PARAMS = {"alpha": 0.9, "beta": 2.4, "gamma": 1.2, "zeta": 1.6}
WEIBULL_REFERENCE = {  # theta = (x/alpha)^(beta-1) exp(-(x/gamma)^zeta), eq. 10; partials: eqs. 12-17
    0.7: {"theta": 0.46116920043327296, "x": 0.47734957261005064, "alpha": -0.71737431178509127,
          "beta": -0.11589847394765058, "gamma": 0.25957681648295558, "zeta": 0.10493324681673294},
    1.9: {"theta": 0.35348760137653097, "x": -0.36048502782330942, "alpha": -0.54986960214127040,
          "beta": 0.26413102661696423, "gamma": 0.98317016232619272, "zeta": -0.33884885615185084},
}
WEIBULL_PEAK_REFERENCE = 1.1039166385052051  # root of d theta / dx = 0 solved by sympy (eq. 11)


@pytest.mark.parametrize("theta,partials,params,reference", [
    (sinh_activation, sinh_partials, SINH_EXP_PARAMS, SINH_REFERENCE),
    (exp_activation, exp_partials, SINH_EXP_PARAMS, EXP_REFERENCE),
    (weibull_activation, weibull_partials, WEIBULL_PARAMS, WEIBULL_REFERENCE),
], ids=["sinh_eqs_2_to_5", "exp_eqs_6_to_9", "weibull_eqs_10_to_17"])
def test_activation_and_partials_match_independent_reference_values(theta, partials, params, reference):
    for x, expected in reference.items():
        xt = torch.tensor([x], dtype=torch.float64)
        assert theta(xt, **params).item() == pytest.approx(expected["theta"], rel=1e-12)
        closed = partials(xt, **params)
        assert set(closed) == set(expected) - {"theta"}
        for name, value in closed.items():
            assert value.item() == pytest.approx(expected[name], rel=1e-12), name


def test_activation_modules_match_independent_reference_values():
    for module, reference in ((SinHActivation(**SINH_EXP_PARAMS), SINH_REFERENCE),
                              (ExpActivation(**SINH_EXP_PARAMS), EXP_REFERENCE),
                              (WeibullActivation(**WEIBULL_PARAMS), WEIBULL_REFERENCE)):
        x = torch.tensor(sorted(reference), dtype=torch.float64)
        expected = [reference[v]["theta"] for v in sorted(reference)]
        np.testing.assert_allclose(module.double()(x).detach().numpy(), expected, rtol=1e-6)


def test_weibull_peak_eq11_matches_independent_reference_value():
    p = WEIBULL_PARAMS
    assert weibull_peak(p["beta"], p["gamma"], p["zeta"]) == pytest.approx(WEIBULL_PEAK_REFERENCE, rel=1e-12)


# ------------------------------------------------------------------ closed forms vs autograd


def test_inverse_softplus_roundtrip():
    for v in (1e-3, 0.5, 1.0, 3.0, 40.0):
        assert F.softplus(torch.tensor(inverse_softplus(v), dtype=torch.float64)).item() == pytest.approx(v, rel=1e-9)
    with pytest.raises(ValueError):
        inverse_softplus(0.0)


def test_sinh_derivatives_eqs_3_to_5():
    params = {"alpha": 0.7, "beta": 1.9}
    auto = _autograd_partials(sinh_activation, X_POS, params)
    closed = sinh_partials(X_POS, **params)
    for k in ("x", "alpha", "beta"):
        torch.testing.assert_close(auto[k], closed[k], rtol=1e-10, atol=1e-12)
    # eq. 2 itself, from the definition of sinh
    expected = 0.7 * (np.exp(1.9 * X_POS.numpy()) - np.exp(-1.9 * X_POS.numpy())) / 2
    np.testing.assert_allclose(sinh_activation(X_POS, 0.7, 1.9).numpy(), expected, rtol=1e-12)


def test_exp_derivatives_eqs_7_to_9_with_eq9_as_beta_derivative():
    params = {"alpha": 1.3, "beta": 0.8}
    auto = _autograd_partials(exp_activation, X_POS, params)
    closed = exp_partials(X_POS, **params)
    for k in ("x", "alpha", "beta"):
        torch.testing.assert_close(auto[k], closed[k], rtol=1e-10, atol=1e-12)
    # eq. 9's right-hand side alpha x exp(beta x) is d/d beta; it is not the second x-derivative (its label)
    second_x = 1.3 * 0.8**2 * torch.exp(0.8 * X_POS)
    assert not torch.allclose(closed["beta"], second_x)


@pytest.mark.parametrize("beta,zeta", [(3.0, 2.0), (1.5, 0.7), (2.4, 3.3)])
def test_weibull_derivatives_eqs_12_to_17(beta, zeta):
    params = {"alpha": 0.9, "beta": beta, "gamma": 1.2, "zeta": zeta}
    auto = _autograd_partials(weibull_activation, X_POS, params)
    closed = weibull_partials(X_POS, **params)
    for k in ("x", "alpha", "beta", "gamma", "zeta"):
        torch.testing.assert_close(auto[k], closed[k], rtol=1e-9, atol=1e-12)


def test_printed_eq17_is_wrong_and_corrected_form_matches_finite_differences():
    params = {"alpha": 0.9, "beta": 3.0, "gamma": 1.2, "zeta": 2.0}  # integer zeta so the printed form is real
    printed = weibull_partials_as_printed(X_POS, **params)["zeta"]
    corrected = weibull_partials(X_POS, **params)["zeta"]
    h = 1e-6
    up = weibull_activation(X_POS, 0.9, 3.0, 1.2, 2.0 + h)
    down = weibull_activation(X_POS, 0.9, 3.0, 1.2, 2.0 - h)
    numeric = (up - down) / (2 * h)
    torch.testing.assert_close(corrected, numeric, rtol=1e-6, atol=1e-9)
    assert (printed - numeric).abs().max() > 1e-2


def test_gradcheck_activation_modules_float64():
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 4, dtype=torch.float64) * 2 + 0.01).requires_grad_(True)
    for module in (SinHActivation(0.8, 1.5), ExpActivation(1.2, 0.9), WeibullActivation(0.9, 2.5, 1.1, 1.7)):
        module = module.double()
        params = tuple(module.parameters())

        def fn(x_, *raw, module=module, params=params):
            saved = [p.data.clone() for p in params]
            for p, r in zip(params, raw):
                p.data = r.data
            # functional call so gradcheck sees the raw parameters as inputs
            out = torch.func.functional_call(module, {n: r for (n, _), r in zip(module.named_parameters(), raw)}, (x_,))
            for p, s in zip(params, saved):
                p.data = s
            return out

        raw = tuple(p.detach().clone().requires_grad_(True) for p in params)
        assert torch.autograd.gradcheck(fn, (x,) + raw, eps=1e-6, atol=1e-5)


def test_weibull_peak_eq11():
    for beta, gamma, zeta in [(3.0, 1.0, 2.0), (1.8, 0.6, 1.3), (4.0, 2.0, 0.9)]:
        x = torch.linspace(1e-4, 8, 200001, dtype=torch.float64)
        y = weibull_activation(x, 1.0, beta, gamma, zeta)
        x0 = weibull_peak(beta, gamma, zeta)
        assert x[int(torch.argmax(y))].item() == pytest.approx(x0, abs=1e-3)
        dx = weibull_partials(torch.tensor([x0], dtype=torch.float64), 1.0, beta, gamma, zeta)["x"]
        assert abs(dx.item()) < 1e-10
    m = WeibullActivation(alpha=1.0, beta=3.0, gamma=1.0, zeta=2.0)
    assert m.peak() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("beta", [1.05, 1.1, 1.3, 3.0])
def test_weibull_is_zero_at_non_positive_inputs_with_finite_gradients(beta):
    m = WeibullActivation(alpha=0.8, beta=beta, gamma=1.0, zeta=2.0)
    x = torch.tensor([-2.0, 0.0, 0.0, 1e-30, 0.5, 3.0], requires_grad=True)
    y = m(x)
    assert torch.equal(y[:3], torch.zeros(3))  # theta(x <= 0) = 0 exactly, not (eps / alpha)^(beta - 1)
    assert y[3] >= 0 and torch.all(y[4:] > 0)  # (1e-30)^(beta - 1) underflows float32 for beta = 3
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[:3], torch.zeros(3))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    # the functional form, with parameters as tensors: finite gradients w.r.t. alpha, beta, gamma, zeta too
    params = {k: torch.tensor(v, requires_grad=True) for k, v in
              {"alpha": 0.8, "beta": beta, "gamma": 1.0, "zeta": 2.0}.items()}
    weibull_activation(torch.tensor([-1.0, 0.0, 0.4]), **params).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params.values())


def test_constraints_keep_parameters_in_range():
    m = WeibullActivation()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(-10.0)
    v = m.values_dict()
    assert v["beta"] > 1.0 and v["alpha"] > 0 and v["gamma"] > 0 and v["zeta"] > 0
    with torch.no_grad():
        m.raw_beta.fill_(-100.0)  # float32 rounds 1 + softplus(-100) to exactly 1: still finite at 0
    y = m(torch.tensor([0.0, 0.5]))
    assert torch.isfinite(y).all() and m.values_dict()["beta"] >= 1.0
    s = SinHActivation()
    with torch.no_grad():
        s.raw_beta.fill_(-30.0)
    assert s.values_dict()["beta"] > 0
    with pytest.raises(ValueError, match="beta must be > 1"):
        WeibullActivation(beta=0.5)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        SinHActivation(alpha=-1.0)


def test_make_activation_and_errors():
    assert isinstance(make_activation("exp", beta=2.0), ExpActivation)
    assert make_activation("exp", beta=2.0).values_dict()["beta"] == pytest.approx(2.0, rel=1e-5)
    x = torch.rand(5)
    assert torch.equal(make_activation("identity")(x), x)
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("relu")
    with pytest.raises(ValueError, match="no parameter"):
        make_activation("sinh", gamma=1.0)


def test_exp_activation_does_not_overflow():
    y = exp_activation(torch.tensor([1e4]), 1.0, 5.0)
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- streams, head


def test_power_normalisation_eq20():
    pn = PowerNormalisation(p=0.5, lam=2.0)
    z = torch.tensor([[0.25, 4.0, 9.0]])
    torch.testing.assert_close(pn(z), torch.tensor([[1.0, 4.0, 6.0]]), rtol=1e-5, atol=1e-6)
    # 1.5 * 0.36^0.7, by sympy: 0.73367379864533047
    assert PowerNormalisation(p=0.7, lam=1.5).double()(torch.tensor([0.36], dtype=torch.float64)).item() \
        == pytest.approx(0.73367379864533047, rel=1e-6)
    fixed = PowerNormalisation(learnable=False)
    assert torch.equal(fixed(z), z) and len(list(fixed.parameters())) == 0


def test_power_normalisation_is_zero_at_zero_with_finite_gradients():
    pn = PowerNormalisation(p=0.5, lam=2.0)
    z = torch.tensor([[0.0, 0.0, 1e-30, 4.0]], requires_grad=True)
    out = pn(z)
    assert torch.equal(out[0, :2], torch.zeros(2))  # psi(0) = lambda 0^p = 0, not lambda eps^p
    out.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.equal(z.grad[0, :2], torch.zeros(2))
    assert torch.isfinite(pn.raw_p.grad) and torch.isfinite(pn.raw_lam.grad)


def test_packed_average_pooling_eq19_and_stream_eq21():
    torch.manual_seed(0)
    maps = [torch.randn(4, 3, 5), torch.randn(4, 2, 2), torch.randn(4, 6, 1)]
    packed = pack_maps(maps)
    # identity theta: the mean of the rectified maps
    torch.testing.assert_close(average_pool_packed(lambda v: v, packed),
                               torch.stack([torch.relu(m).mean(dim=(1, 2)) for m in maps]))
    act = SinHActivation(alpha=0.5, beta=2.0)
    stream = AggregationStream(act, PowerNormalisation(p=0.7, lam=1.5), input_scale=2.0)
    expected = torch.stack([1.5 * (0.5 * torch.sinh(2.0 * torch.relu(m) / 2.0)).mean(dim=(1, 2)) ** 0.7
                            for m in maps])
    torch.testing.assert_close(stream(maps), expected, rtol=1e-5, atol=1e-6)
    # N x C x H x W input (dense path) gives the same as a list of maps (sparse path)
    batch = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(stream(batch), stream(list(batch)))
    with pytest.raises(ValueError, match="same C"):
        pack_maps([torch.randn(3, 2, 2), torch.randn(4, 2, 2)])


@pytest.mark.parametrize("kind", ["identity", "sinh", "exp", "weibull"])
def test_sparse_packing_equals_dense_pooling_including_theta_of_zero(kind):
    torch.manual_seed(1)
    maps = [torch.randn(6, 4, 3), torch.randn(6, 5, 5)]
    stream = AggregationStream(make_activation(kind), PowerNormalisation(p=0.6, lam=1.2), input_scale=1.5)
    dense = torch.stack([stream.power_norm(stream.activate(m).mean(dim=(1, 2))) for m in maps])
    torch.testing.assert_close(stream(maps), dense, rtol=1e-5, atol=1e-6)
    assert stream.activation(torch.zeros(1)).item() == 0.0  # theta(0) = 0: non-positive cells add nothing


def test_pca_whitening_layer_whitens_training_descriptors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8)) + 3.0
    w, b = pca_whitening_parameters(x, dim=6)
    y = x @ w.T + b
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-3)
    with pytest.raises(ValueError, match="cannot keep 6 whitened dimensions"):
        pca_whitening_parameters(x[:5], dim=6)


def _toy_maps(n_instances=6, per_instance=3, channels=(5, 7), seed=0):
    """Random non-negative maps where images of one instance share a sparse strong pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    maps = {f"l{k}": [] for k in range(len(channels))}
    labels = []
    for inst in range(n_instances):
        protos = [torch.rand(c, 1, 1, generator=g) for c in channels]
        for _ in range(per_instance):
            h, w = int(torch.randint(3, 6, (1,), generator=g)), int(torch.randint(3, 6, (1,), generator=g))
            for k, c in enumerate(channels):
                noise = torch.rand(c, h, w, generator=g) * 1.5
                peak = (torch.rand(1, h, w, generator=g) > 0.8).float() * protos[k] * 3
                maps[f"l{k}"].append(noise + peak)
            labels.append(inst)
    return maps, labels


def test_head_outputs_unit_vectors_and_checks_inputs():
    maps, labels = _toy_maps()
    head = ACTNetHead(["l0", "l1"], [5, 7], activation="weibull")
    head.init_input_scales(maps)
    head.init_whitening(maps, dim=6)
    out = head(maps)
    assert out.shape == (len(labels), 6)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(labels)))
    with pytest.raises(KeyError, match="missing"):
        head({"l0": maps["l0"]})
    with pytest.raises(ValueError, match="one channel count per layer"):
        ACTNetHead(["a", "b"], [3])


def test_triplet_loss_eq23():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # squared distances 2 and 0
    n = torch.tensor([[-1.0, 0.0], [0.6, 0.8]])  # squared distances 4 and 0.4
    # 1/2 max(0, 0.1 + 2 - 4) = 0 ; 1/2 max(0, 0.1 + 0 - 0.4) = 0 ; margin 2.5: 0.25 and 1.05
    assert triplet_loss(a, p, n, 0.1).item() == pytest.approx(0.0)
    assert triplet_loss(a, p, n, 2.5).item() == pytest.approx((0.25 + 1.05) / 2)


def test_mine_hard_triplets_picks_nearest_non_match():
    desc = np.array([[0.0, 0.0], [0.1, 0.0], [0.05, 0.2], [3.0, 0.0], [3.1, 0.0]])
    labels = [0, 0, 1, 2, 2]
    triplets = mine_hard_triplets(desc, labels, margin=0.1, rng=np.random.default_rng(0))
    as_dict = {int(q): (int(m), int(n)) for q, m, n in triplets}
    assert as_dict[0] == (1, 2) and as_dict[1] == (0, 2)  # image 2 (other instance) is the hardest negative
    assert 3 not in as_dict and 4 not in as_dict  # far from every negative: no loss, not kept
    assert 2 not in as_dict  # instance with a single image: no match
    everything = mine_hard_triplets(desc, labels, margin=0.1, keep_all=True)
    assert sorted(everything[:, 0].tolist()) == [0, 1, 3, 4]


def test_training_decreases_loss_on_random_tensors():
    maps, labels = _toy_maps(seed=1)
    head = ACTNetHead(["l0", "l1"], [5, 7], activation="weibull")
    head.init_input_scales(maps)
    head.init_whitening(maps, dim=8)
    before = {k: v.detach().clone() for k, v in head.state_dict().items()}
    history = train_head(head, maps, labels, TrainingConfig(epochs=6, lr=0.05, triplets_per_batch=4, seed=0))
    assert len(history["objective"]) == 7
    assert history["objective"][-1] < history["objective"][0]
    changed = [k for k, v in head.state_dict().items() if not torch.equal(v, before[k])]
    assert any("activation" in k for k in changed) and any("power_norm" in k for k in changed)
    assert any("whitening" in k for k in changed)
    assert not any("input_scale" in k for k in changed)  # fixed buffer


def test_kl_divergence_value_and_direction():
    matching = np.array([0.5, 0.5, 0.5, 1.5])  # two bins on [0, 2]: P(s|m) = (3/4, 1/4)
    nonmatching = np.array([0.5, 1.5])  # P(s|n) = (1/2, 1/2)
    # KL(P(s|m) || P(s|n)) = 3/4 ln(3/2) + 1/4 ln(1/2); the reverse, 1/2 ln(2/3) + 1/2 ln(2), is 0.1438...
    kl = histogram_kl_divergence(matching, nonmatching, bins=2, smoothing=0.0)
    assert kl == pytest.approx(0.13081203594113697, rel=1e-12)
    assert histogram_kl_divergence(nonmatching, matching, bins=2, smoothing=0.0) == pytest.approx(
        0.14384103622589042, rel=1e-12)
    # smoothing 0.1 on P(s|m) = (1, 0): (1.1, 0.1) / 1.2 against (0.6, 0.6) / 1.2
    smoothed = histogram_kl_divergence(np.array([0.2, 0.4]), nonmatching, bins=2, smoothing=0.1)
    assert smoothed == pytest.approx(0.4063111975037847, rel=1e-12)


def test_pair_distances_and_kl_divergence():
    q = np.array([[1.0, 0.0]])
    db = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]])
    gnd = [{"easy": [0], "hard": [3], "junk": [1]}]
    m, n = pair_distances(q, db, gnd)
    np.testing.assert_allclose(sorted(m), sorted([0.0, math.sqrt(0.04 + 0.36)]))
    np.testing.assert_allclose(n, [2.0])
    rng = np.random.default_rng(0)
    same = histogram_kl_divergence(rng.uniform(0.5, 1.5, 5000), rng.uniform(0.5, 1.5, 5000))
    apart = histogram_kl_divergence(rng.uniform(0.2, 0.6, 5000), rng.uniform(1.2, 1.6, 5000))
    assert same < 0.05 < 1.0 < apart
    with pytest.raises(ValueError):
        histogram_kl_divergence(np.array([]), np.array([1.0]))


def test_direct_aggregation_is_plain_average_pooling():
    maps, labels = _toy_maps()  # non-negative maps
    head = ACTNetHead(["l0", "l1"], [5, 7], whiten=False, **actnet.AGGREGATIONS["DA"])
    head.init_input_scales(maps)
    head.init_stream_balance(maps)
    pooled = [torch.stack([m.mean(dim=(1, 2)) for m in maps[layer]]) for layer in ("l0", "l1")]
    torch.testing.assert_close(head(maps), F.normalize(torch.cat(pooled, dim=1), dim=1))
    assert list(head.parameters()) == []  # nothing to learn without the whitening layer
    history = train_head(head, maps, labels, TrainingConfig(epochs=3))
    assert history["epoch"] == [0] and len(history["objective"]) == 1
    # "identity" is DA wherever the power normalisation is not asked for explicitly
    assert not ACTNetHead(["l0"], [5], activation="identity").streams[0].power_norm.learnable
    for name, options in actnet.AGGREGATIONS.items():
        assert actnet.default_power_norm(options["activation"]) == options["power_norm"], name
        assert ACTNetHead(["l0"], [5], activation=options["activation"]).streams[0].power_norm.learnable \
            == options["power_norm"]
    method = actnet.ACTNetMethod(_FakeBackbone(), 64, activation="identity", layers="l0,l1")
    assert method.power_norm is False
    assert actnet.ACTNetMethod(_FakeBackbone(), 64, activation="identity", layers="l0", power_norm=True).power_norm
    with pytest.raises(ValueError, match="unknown activation"):
        actnet.default_power_norm("relu")


def test_head_without_whitening_and_stream_balance():
    maps, labels = _toy_maps()
    head = ACTNetHead(["l0", "l1"], [5, 7], activation="exp", whiten=False)
    head.init_input_scales(maps)
    head.init_stream_balance(maps)
    for layer in ("l0", "l1"):
        assert head.stream(layer)(maps[layer]).norm(dim=1).mean().item() == pytest.approx(1.0, rel=1e-4)
    out = head(maps)
    assert out.shape == (len(labels), 12) and head.out_dim == 12
    torch.testing.assert_close(out, F.normalize(head.aggregate(maps), dim=1))
    with pytest.raises(ValueError, match="whiten=False"):
        head.init_whitening(maps)


def test_response_map_strongest_cells_and_pooling_distances():
    fmap = torch.zeros(3, 4, 5)
    fmap[0, 1, 2], fmap[1, 3, 4], fmap[2, 0, 0] = 5.0, 2.0, -7.0
    r = actnet.response_map(fmap)
    assert r[1, 2] == 5.0 and r[0, 0] == 0.0  # rectified
    assert actnet.strongest_cells(r, 2) == [(1, 2), (3, 4)]
    stream = AggregationStream(make_activation("weibull"), input_scale=5.0)
    assert actnet.response_map(fmap, stream).shape == (4, 5)
    same = actnet.pooling_distances(fmap, fmap.clone(), {"weibull": stream})
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in same.values())
    other = torch.rand(3, 4, 5)
    d = actnet.pooling_distances(fmap, other, {"weibull": stream})
    assert set(d) == {"max", "average", "weibull"} and all(0 < v <= 2 for v in d.values())


class _FakeDataset:
    def __init__(self, name, instance_labels=None, query_labels=None, gnd=None, n_db=None, imlist=None,
                 qimlist=None):
        self.name, self.key = name, name + "-key"
        self.instance_labels, self.query_labels = instance_labels, query_labels
        self.gnd = gnd or []
        self.n_db = n_db if n_db is not None else len(instance_labels or [])
        self.imlist = imlist if imlist is not None else [f"db{i}.jpg" for i in range(self.n_db)]
        self.qimlist = qimlist if qimlist is not None else [f"query{q}.jpg" for q in range(len(self.gnd))]


def test_training_labels_from_instances_and_from_ground_truth():
    ds = _FakeDataset("a", ["x", "distractor", "x", "distractor"])
    labels = actnet.training_labels(ds)
    assert labels[0] == labels[2] and labels[1] != labels[3] and labels[1] != labels[0]
    gnd = [{"easy": [0, 1], "hard": [], "junk": [5]}, {"easy": [1], "hard": [2], "junk": []},
           {"easy": [3], "hard": [4], "junk": []}]
    labels = actnet.training_labels(_FakeDataset("b", gnd=gnd, n_db=6))
    assert labels[0] == labels[1] == labels[2]  # queries 0 and 1 share image 1: merged
    assert labels[3] == labels[4] != labels[0] and labels[5] not in labels[:5]


def _junk_dataset():
    """Instance a: views 0, 1 and the junk view 2; b: 3, 4 and the junk view 5; 6 a distractor."""
    return _FakeDataset("junk", ["a", "a", "a", "b", "b", "b", "distractor"], ["a", "b"],
                        gnd=[{"easy": [0], "hard": [1], "junk": [2]}, {"easy": [3, 4], "hard": [], "junk": [5]}])


def test_training_junk_from_the_ground_truth():
    ds = _junk_dataset()
    labels = actnet.training_labels(ds)
    assert actnet.training_junk(ds, labels) == [set(), set(), {"a"}, set(), set(), {"b"}, set()]
    # without instance labels: the junk of a query belongs to the class of its positives
    gnd = [{"easy": [0, 1], "hard": [], "junk": [5]}, {"easy": [3], "hard": [4], "junk": []}]
    ds = _FakeDataset("b", gnd=gnd, n_db=6)
    labels = actnet.training_labels(ds)
    assert actnet.training_junk(ds, labels) == [set()] * 5 + [{labels[0]}]
    # holidays / folder protocols list the query itself as junk: not a junk view
    folder = _FakeDataset("f", ["x", "x", "y", "y"], ["x", "x", "y", "y"], imlist=list("abcd"), qimlist=list("abcd"),
                          gnd=[{"easy": [1], "hard": [], "junk": [0]}, {"easy": [0], "hard": [], "junk": [1]},
                               {"easy": [3], "hard": [], "junk": [2]}, {"easy": [2], "hard": [], "junk": [3]}])
    assert actnet.training_junk(folder) == [set()] * 4


def test_mining_never_uses_junk_views_as_matches_or_non_matches_of_their_instance():
    ds = _junk_dataset()
    labels = actnet.training_labels(ds)
    junk = actnet.training_junk(ds, labels)
    desc = np.array([[0.0, 0.0], [0.3, 0.0], [0.05, 0.0],  # a, a, junk a (nearest to 0)
                     [2.0, 0.0], [2.3, 0.0], [0.1, 0.05],  # b, b, junk b (among a's views)
                     [1.0, 0.0]])  # distractor
    seen = set()
    for seed in range(20):
        triplets = mine_hard_triplets(desc, labels, margin=0.1, rng=np.random.default_rng(seed), keep_all=True,
                                      junk=junk)
        for q, m, n in triplets.tolist():
            assert labels[q] not in junk[q] and labels[q] not in junk[m] and labels[q] not in junk[n]
            seen.add((q, m, n))
    assert {q for q, _, _ in seen} == {0, 1, 3, 4}  # the junk views 2 and 5 are no queries
    assert {m for q, m, _ in seen if q == 0} == {1}  # never the junk view 2 of a
    assert {n for q, _, n in seen if q in (3, 4)} == {6}  # the junk view 5 of b is no negative of b ...
    assert {n for q, _, n in seen if q == 0} == {5}  # ... but it is one of a (it does not show a)
    without = mine_hard_triplets(desc, labels, margin=0.1, keep_all=True)
    assert 5 in without[:, 0]  # without the junk: the junk view of b is a query of b


def test_fit_actnet_head_mines_without_the_junk_views(monkeypatch):
    import helpers.features

    maps, _ = _toy_maps(n_instances=2, per_instance=3, seed=3)
    maps = {l: v + v[:1] for l, v in maps.items()}  # 7 images, as in _junk_dataset
    monkeypatch.setattr(helpers.features, "extract_maps", lambda dataset, backbone, layers, size, split: maps)
    seen = {}

    def spy(head, maps_, labels, config, progress=False, junk=None):
        seen["labels"], seen["junk"] = list(labels), junk
        return {"epoch": [0]}

    monkeypatch.setattr(actnet, "train_head", spy)
    actnet.fit_actnet_head(_junk_dataset(), _FakeBackbone(), ["l0", "l1"], 64, "sinh", whiten=False,
                           use_cache=False)
    assert seen["junk"] == actnet.training_junk(_junk_dataset())


def test_check_disjoint_instances():
    train = _FakeDataset("train", ["a", "a", "distractor"])
    actnet.check_disjoint_instances(train, _FakeDataset("eval", ["b", "distractor"], ["b"]))
    with pytest.raises(ValueError, match="training instances appear"):
        actnet.check_disjoint_instances(train, _FakeDataset("eval", ["b", "c"], ["a"]))
    with pytest.raises(ValueError, match="trained on"):
        actnet.check_disjoint_instances(train, train)


class _FakeBackbone:
    name, weights_id = "fake", "w0"
    layers, last_conv = ["l0", "l1"], "l1"

    def resolve(self, layer):
        return layer


def test_fit_actnet_head_caches_head_and_history(tmp_path, monkeypatch):
    import helpers.features

    maps, labels = _toy_maps(seed=2)
    calls = []

    def fake_extract_maps(dataset, backbone, layers, image_size, split="db"):
        calls.append(split)
        return {l: maps[l] for l in layers}

    monkeypatch.setenv("INSTRET_CACHE", str(tmp_path))
    monkeypatch.setattr(helpers.features, "extract_maps", fake_extract_maps)
    ds = _FakeDataset("toy", [str(l) for l in labels])
    cfg = TrainingConfig(epochs=2, lr=0.01, triplets_per_batch=4)
    head, history, path = actnet.fit_actnet_head(ds, _FakeBackbone(), ["l0", "l1"], 64, "sinh", whiten_dim=8,
                                                 training=cfg)
    assert path.is_file() and str(path).startswith(str(tmp_path)) and calls == ["db"]
    assert not list(path.parent.glob("*.tmp"))
    again, history2, path2 = actnet.fit_actnet_head(ds, _FakeBackbone(), ["l0", "l1"], 64, "sinh", whiten_dim=8,
                                                    training=cfg)
    assert path2 == path and calls == ["db"]  # loaded, not retrained
    assert history2["objective"] == history["objective"]
    torch.testing.assert_close(again(maps), head(maps))
    _, _, other = actnet.fit_actnet_head(ds, _FakeBackbone(), ["l0", "l1"], 64, "sinh", whiten=False, training=cfg)
    assert other != path  # the configuration is part of the key


def test_forward_mode_autograd_partials_helper_matches_reverse_mode():
    params = {"alpha": 0.9, "beta": 2.2, "gamma": 1.1, "zeta": 1.6}
    theta = actnet.CLOSED_FORMS["weibull"][0]
    fwd = actnet.autograd_partials(theta, X_POS, params)
    rev = _autograd_partials(theta, X_POS, params)
    for k in rev:
        torch.testing.assert_close(fwd[k], rev[k], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- default streams


def _backbone_without_weights(name, monkeypatch):
    """A :class:`helpers.backbones.Backbone` whose taps are wired by helpers.backbones exactly as
    :func:`load_backbone` wires them, on a network with random weights (none is read or downloaded)."""
    import torchvision

    from helpers import backbones

    device = torch.device("cpu")
    if name == "efficientnet_lite0":
        import timm

        random_state = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
        monkeypatch.setattr(backbones.torch, "load", lambda *args, **kwargs: random_state)
        model, _, layers, last_conv, taps = backbones._efficientnet_lite0(device)
    elif name in backbones.FINE_TUNED:
        model, layers, last_conv, taps = backbones._retrieval_net(backbones.FINE_TUNED[name].architecture, "gem",
                                                                  None, True)
        return backbones.Backbone(name=name, model=model, device=device, weights_id="random",
                                  mean=backbones.IMAGENET_MEAN, std=backbones.IMAGENET_STD, layers=layers,
                                  last_conv=last_conv, tap_modules=taps, vector_taps=("descriptor",))
    else:
        with torch.device("meta"):  # shapes only, no memory
            model = getattr(torchvision.models, name)()
        wiring = {"vgg16": backbones._vgg16, "alexnet": backbones._alexnet, "resnet50": backbones._resnet,
                  "resnet101": backbones._resnet, "mobilenet_v2": backbones._mobilenet_v2}[name]
        layers, last_conv, taps = wiring(model)
    return backbones.Backbone(name=name, model=model, device=device, weights_id="random", mean=backbones.IMAGENET_MEAN,
                              std=backbones.IMAGENET_STD, layers=layers, last_conv=last_conv, tap_modules=taps)


DEFAULT_STREAMS = {  # the last two conv taps of each backbone (the paper: the last two conv blocks)
    "efficientnet_lite0": ["block6", "conv_head"], "vgg16": ["conv5_2", "conv5_3"], "resnet50": ["layer3", "layer4"],
    "resnet101": ["layer3", "layer4"], "alexnet": ["conv4", "conv5"], "mobilenet_v2": ["block17", "conv_head"],
    "vgg16_gem_sfm120k": ["conv5_2", "conv5_3"], "resnet101_gem_sfm120k": ["layer3", "layer4"],
    "resnet101_tl_mac_dir": ["layer3", "layer4"],
}


@pytest.mark.parametrize("name", __import__("helpers.backbones", fromlist=["KNOWN_BACKBONES"]).KNOWN_BACKBONES)
def test_default_layers_are_the_last_two_conv_taps_of_every_backbone(name, monkeypatch):
    backbone = _backbone_without_weights(name, monkeypatch)
    layers = actnet.default_layers(backbone)
    assert layers == DEFAULT_STREAMS[name]
    assert layers[-1] == backbone.last_conv and not any(l.startswith("fc") for l in layers)
    conv_taps = backbone.layers[:backbone.layers.index(backbone.last_conv) + 1]
    assert actnet.default_layers(backbone, len(conv_taps)) == conv_taps
    with pytest.raises(ValueError, match="conv taps"):
        actnet.default_layers(backbone, len(conv_taps) + 1)


def test_a_damaged_head_in_the_cache_is_reported_and_deleted(tmp_path):
    from helpers import actnet
    from helpers.cache import DamagedCacheWarning, read_entry

    path = tmp_path / "head.pt"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.warns(DamagedCacheWarning, match="head.pt"):
        assert read_entry(path, actnet.load_head, "trained ACTNET head") is None
    assert not path.exists()


def test_per_query_separation_is_mean_non_match_minus_mean_match_distance():
    db = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    gnd = [{"easy": [0], "hard": [3], "junk": [1]}, {"easy": [], "hard": [], "junk": []}]
    sep = actnet.per_query_separation(q, db, gnd)
    match = np.mean([0.0, np.linalg.norm(db[3] - q[0])])
    assert sep[0] == pytest.approx(100 * (2.0 - match))  # the only non-match is db 2, at distance 2
    assert np.isnan(sep[1])  # no match: nothing to separate
    with pytest.raises(ValueError, match="ground-truth"):
        actnet.per_query_separation(q, db, gnd[:1])


def test_parameter_changes_and_max_relative_change():
    history = {"parameters": [{"a": {"alpha": 1.0, "p": 0.5, "input_scale": 3.0}},
                              {"a": {"alpha": 1.1, "p": 0.4, "input_scale": 9.0}}]}
    assert actnet.parameter_changes(history) == {"a": {"alpha": (1.0, 1.1), "p": (0.5, 0.4)}}
    assert actnet.max_relative_change(history) == pytest.approx(0.2)  # p: 0.4 / 0.5 - 1, input_scale left out


def test_draw_profiles_marks_the_weibull_peak_only_inside_the_plotted_range():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    actnet.draw_profiles(axes)
    assert len(axes[0].lines) == 3 and len(axes[1].lines) == 2  # identity, SinH, Exp | Weibull, its peak
    x0 = axes[1].lines[1].get_xdata()[0]
    assert x0 == pytest.approx(actnet.weibull_peak(3.0, 1.0, 2.0))
    plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    actnet.draw_profiles(axes, wb_gamma=3.0)  # x0 = 3 > x_max = 1.5: no marker
    assert len(axes[1].lines) == 1
    plt.close(fig)


# ------------------------------------------------------------------ end to end (train_blocks)

def test_trainable_blocks_of_efficientnet(backbone):
    assert actnet.trainable_blocks(backbone, 0) == []
    last = actnet.trainable_blocks(backbone, 1)
    model = backbone.model
    assert last == [model.conv_head, model.bn2]            # the 1x1 conv head and its batch norm
    two = actnet.trainable_blocks(backbone, 2)
    assert two[-2:] == last and all(any(m is x for x in model.blocks[6].modules()) for m in two[:-2])
    everything = actnet.trainable_blocks(backbone, len(backbone.conv_layers))
    assert everything[0] is model.conv_stem and model.classifier not in everything
    for bad in (-1, len(backbone.conv_layers) + 1, 1.5, True):
        with pytest.raises(ValueError, match="train_blocks"):
            actnet.trainable_blocks(backbone, bad)


def test_tuned_copy_trains_its_own_blocks_only(backbone):
    tuned, modules = actnet.tuned_copy(backbone, 1, "test")
    assert tuned.weights_id == backbone.weights_id + "-test" and tuned.model is not backbone.model
    assert tuned.tap_modules["conv_head"][0] is modules[-1] and modules[-1] is not backbone.model.bn2
    before = backbone.model.conv_head.weight.detach().clone()
    x = backbone.preprocess(np.full((64, 64, 3), 128, np.uint8))
    out = tuned.forward_taps(x, ["conv_head"], grad=True)["conv_head"]
    out.sum().backward()
    assert modules[0].weight.grad is not None and tuned.model.blocks[0][0].conv_dw.weight.grad is None
    with torch.no_grad():
        modules[0].weight.add_(1.0)
    torch.testing.assert_close(backbone.model.conv_head.weight, before)
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_end_to_end_training_moves_the_blocks_and_is_cached(photo_folder, realsmoke, backbone, isolated_cache):
    from helpers.data import load_dataset
    from helpers.methods import make_method

    train = load_dataset(f"folder:{photo_folder}")
    # four photos whose views are easy to match: a margin of 1 keeps every triplet active
    cfg = TrainingConfig(epochs=2, lr=0.05, triplets_per_batch=4, margin=1.0)
    tuned, head, history, path = actnet.fit_actnet_end_to_end(train, backbone, ["block6", "conv_head"], 96, 1,
                                                              whiten=False, training=cfg)
    assert path.is_file() and history["epoch"] == [0, 1, 2]
    moved = history["blocks"][-1]
    assert history["blocks"][0] and all(v == 0 for v in history["blocks"][0].values())
    assert min(history["active_triplets"]) > 0 and max(moved.values()) > 0   # the conv head learned
    x = backbone.preprocess(np.asarray(photo_folder_image(photo_folder)))
    with torch.no_grad():
        tuned_map = tuned.forward_taps(x, ["conv_head"])["conv_head"]
        frozen_map = backbone.forward_taps(x, ["conv_head"])["conv_head"]
    assert not torch.allclose(tuned_map, frozen_map)
    again, head2, history2, path2 = actnet.fit_actnet_end_to_end(train, backbone, ["block6", "conv_head"], 96, 1,
                                                                 whiten=False, training=cfg)
    assert path2 == path and history2["objective"] == history["objective"]
    with torch.no_grad():
        torch.testing.assert_close(again.forward_taps(x, ["conv_head"])["conv_head"], tuned_map)
    method = make_method("actnet", backbone, 96, train_blocks=1, epochs=2, lr=0.05, triplets_per_batch=4,
                         margin=1.0, whiten=False, layers="block6,conv_head").fit(train)
    assert method.network.weights_id != backbone.weights_id and "end to end" in method.learns
    evaluated = load_dataset(f"folder:{realsmoke}")
    assert method.search(evaluated).shape == (evaluated.n_db, evaluated.n_queries)
    with pytest.raises(ValueError, match="frozen"):
        actnet.fit_actnet_end_to_end(train, backbone, ["conv_head"], 96, 0)


def photo_folder_image(folder):
    from PIL import Image

    first = sorted(p for p in folder.rglob("*.jpg"))[0]
    return Image.open(first).convert("RGB").resize((96, 72))


@pytest.mark.parametrize("name", __import__("helpers.backbones", fromlist=["KNOWN_BACKBONES"]).KNOWN_BACKBONES)
def test_trainable_blocks_of_every_backbone_end_at_its_last_conv(name, monkeypatch):
    backbone = _backbone_without_weights(name, monkeypatch)
    conv = backbone.conv_layers
    one, two = actnet.trainable_blocks(backbone, 1), actnet.trainable_blocks(backbone, 2)
    assert one and two[-len(one):] == one and len(two) > len(one)
    head_params = {id(p) for m in actnet.trainable_blocks(backbone, len(conv)) for p in m.parameters(recurse=False)}
    classifier = backbone.tap_modules[backbone.vector_taps[-1]][0]        # logits, or a retrieval net's own head
    assert not any(id(p) in head_params for p in classifier.parameters())   # the classifier never trains


def test_mobile_actnet_row_runs_on_a_mobilenet(photo_folder, realsmoke, isolated_cache):
    """Chapter 03's Fig. 8 / Table 2 cell, on MobileNet-V2 with random weights (its ImageNet file is not here)."""
    from helpers import summary
    from helpers.data import load_dataset

    import torchvision

    from helpers import backbones

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()            # random weights, on the CPU; one calibration pass
    for module in model.modules():                       # sets the batch norms' statistics, so that the
        if isinstance(module, torch.nn.BatchNorm2d):     # activations keep their scale (randomly initialised
            module.momentum = 1.0                        # ones shrink to ~1e-8, below float16's range)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 96, 96))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layers, last_conv, taps = backbones._mobilenet_v2(model)
    mobile = backbones.Backbone(name="mobilenet_v2", model=model, device=torch.device("cpu"), weights_id="random",
                                mean=backbones.IMAGENET_MEAN, std=backbones.IMAGENET_STD, layers=layers,
                                last_conv=last_conv, tap_modules=taps)
    train, evaluated = load_dataset(f"folder:{photo_folder}"), load_dataset(f"folder:{realsmoke}")
    row = summary.evaluate_row("ACTNET on mobilenet_v2", evaluated, mobile, 96, train,
                               spec=("actnet", {"epochs": 1}), timing_images=(2, 1))
    assert row.method == "actnet" and np.isfinite(row.results["mAP"]) and row.seconds_per_image > 0

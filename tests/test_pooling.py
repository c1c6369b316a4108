import math

import pytest
import torch

from helpers.pooling import (POOLINGS, crow, crow_channel_weights, crow_spatial_weights, gem, l2n, mac,
                             pool, pool_all, rmac, rmac_regions, spoc)


@pytest.fixture
def fmap():
    g = torch.Generator().manual_seed(0)
    return torch.relu(torch.randn(16, 7, 9, generator=g))


def test_mac_spoc_by_definition(fmap):
    assert torch.equal(mac(fmap), fmap.reshape(16, -1).max(dim=1).values)
    torch.testing.assert_close(spoc(fmap), fmap.reshape(16, -1).sum(dim=1) / 63)


def test_gem_p1_is_spoc_and_large_p_tends_to_mac(fmap):
    torch.testing.assert_close(gem(fmap, p=1.0), spoc(fmap.clamp(min=1e-6)))
    gaps = [float((gem(fmap, p=p) - mac(fmap)).abs().max()) for p in (3.0, 10.0, 50.0, 200.0)]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    # mean of x^p over N cells is at least max^p / N, so MAC - GeM <= MAC * (1 - N^(-1/p))
    assert gaps[-1] <= float(mac(fmap).max()) * (1 - 63 ** (-1 / 200)) + 1e-5
    assert gaps[-1] < 0.03 * float(mac(fmap).max())


def test_batched_equals_single(fmap):
    batch = torch.stack([fmap, 2 * fmap])
    for name, fn in POOLINGS.items():
        out = fn(batch)
        torch.testing.assert_close(out[0], fn(fmap), msg=name)


def test_rmac_regions_square_map():
    # 3 levels on a square map: 1 + 4 + 9 squares of sides floor(2w/(l+1))
    regions = rmac_regions(12, 12, L=3)
    assert len(regions) == 14
    assert regions[0] == (0, 0, 12, 12)
    assert sorted({r[2] for r in regions}, reverse=True) == [12, 8, 6]
    for x, y, w, h in regions:
        assert 0 <= x and 0 <= y and x + w <= 12 and y + h <= 12


def test_rmac_regions_landscape_map_follows_tolias():
    # Tolias et al.'s grid for W > H adds regions along the long side: for 30x40 the overlap rule
    # picks one extra column, so levels have 2, 6 and 12 regions (cnnimageretrieval-pytorch too).
    regions = rmac_regions(30, 40, L=3)
    assert len(regions) == 2 + 6 + 12
    level1 = regions[:2]
    assert level1 == [(0, 0, 30, 30), (10, 0, 30, 30)]
    for x, y, w, h in regions:
        assert x + w <= 40 and y + h <= 30
    # a portrait map mirrors it
    assert len(rmac_regions(40, 30, L=3)) == 20


def test_rmac_tiny_map_falls_back_to_whole_map():
    assert rmac_regions(1, 1, L=3)[0] == (0, 0, 1, 1)


def test_rmac_is_sum_of_normalised_region_macs(fmap):
    H, W = fmap.shape[-2:]
    expected = sum(l2n(fmap[:, y:y + h, x:x + w].amax(dim=(-2, -1))) for x, y, w, h in rmac_regions(H, W))
    torch.testing.assert_close(rmac(fmap), expected)


def test_crow_weights_on_hand_made_map():
    x = torch.zeros(2, 2, 2)
    x[0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # channel 0: one of 4 locations non-zero
    x[1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # channel 1: all 4 non-zero
    S = crow_spatial_weights(x)  # S' = [[2,1],[1,1]], ||S'||_2 = sqrt(7), weights = sqrt(S'/sqrt 7)
    expected = torch.sqrt(torch.tensor([[2.0, 1.0], [1.0, 1.0]]) / math.sqrt(7))
    torch.testing.assert_close(S, expected)
    C = crow_channel_weights(x)  # Q = [0.25, 1]; log(1.25/0.25), log(1.25/1)
    torch.testing.assert_close(C, torch.tensor([math.log(5.0), math.log(1.25)]))
    pooled = crow(x)
    torch.testing.assert_close(pooled, torch.stack([(x[c] * S).sum() for c in range(2)]) * C)


def test_crow_rectifies_maps_with_negative_values():
    # a linear bottleneck (EfficientNet's block outputs) has negative activations: CroW's S^(1/b)
    # of a negative channel sum was NaN; CroW is defined on post-ReLU maps, so it rectifies
    torch.manual_seed(0)
    x = torch.randn(6, 5, 7)
    x[:, 2, :] = -1.0  # a row whose channel sum is negative everywhere
    got = crow(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, crow(x.clamp(min=0)))
    assert torch.isfinite(crow_spatial_weights(x)).all()
    torch.testing.assert_close(crow_spatial_weights(x), crow_spatial_weights(x.clamp(min=0)))
    y = torch.rand(3, 4, 4)  # non-negative maps are used as they are
    torch.testing.assert_close(crow(y), crow(y.clamp(min=0)))


def test_crow_dead_channel_gets_zero_weight():
    x = torch.zeros(3, 4, 4)
    x[0, 1, 1] = 1.0
    assert crow_channel_weights(x)[1] == 0


def test_bad_input():
    with pytest.raises(ValueError, match="feature map"):
        mac(torch.zeros(5))
    with pytest.raises(ValueError, match="p > 0"):
        gem(torch.ones(2, 3, 3), p=0)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.ones(2, 3, 3), "avg")
    with pytest.raises(ValueError, match="empty"):
        spoc(torch.ones(2, 0, 3))


@pytest.mark.parametrize("shape", [(16, 7, 9), (3, 1, 1), (5, 1, 7), (4, 30, 40), (4, 40, 30), (64, 13, 13),
                                   (7, 3, 50), (2, 100, 3), (24, 61, 83)])
@pytest.mark.parametrize("kind", ["relu", "signed", "sparse"])
def test_pool_all_equals_the_five_definitions(shape, kind):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    if kind == "relu":
        x = torch.relu(x)
    elif kind == "sparse":  # mostly zeros, one channel all zero (CroW's Q = 0), some tiny values
        x = torch.relu(x - 1.5) + 1e-7 * (torch.rand(*shape, generator=g) > 0.9)
        x[0] = 0
    pooled = pool_all(x)
    assert list(pooled) == list(POOLINGS)
    for name, fn in POOLINGS.items():
        expected = fn(x)
        assert pooled[name].shape == expected.shape and pooled[name].dtype == torch.float32
        torch.testing.assert_close(pooled[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_pool_all_of_a_float16_map_pools_its_values():
    x = torch.relu(torch.randn(8, 11, 17, generator=torch.Generator().manual_seed(1))).half()
    pooled = pool_all(x)
    for name, fn in POOLINGS.items():
        torch.testing.assert_close(pooled[name], fn(x.float()), rtol=1e-5, atol=1e-6, msg=name)


def test_pool_all_propagates_nan_and_inf_like_the_definitions():
    x = torch.relu(torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(2)))
    x[1, 2, 3] = float("nan")
    x[2, 0, 0] = float("inf")
    pooled = pool_all(x)
    for name, fn in POOLINGS.items():
        torch.testing.assert_close(pooled[name], fn(x), equal_nan=True, msg=name)
    assert torch.isnan(pooled["spoc"][1]) and torch.isinf(pooled["mac"][2])


def test_pool_all_takes_one_map():
    with pytest.raises(ValueError, match="one map"):
        pool_all(torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match="empty feature map"):
        pool_all(torch.ones(3, 0, 4))

import numpy as np
import pytest

from helpers.whitening import PCAWhitening


def test_whitened_training_data_has_identity_covariance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0
    w = PCAWhitening().fit(X)
    Z = (X - w.mean_) @ w.projection_
    np.testing.assert_allclose(np.cov(Z.T), np.eye(6), atol=1e-4)


def test_transform_is_l2_normalised_and_reduces_dim():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(50, 10)), rng.normal(size=(7, 10))
    out = PCAWhitening(dim=4).fit(train).transform(test)
    assert out.shape == (7, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_learned_on_one_set_applied_to_another_removes_a_dominant_direction():
    # A direction with huge variance but no identity information dominates cosine similarity;
    # whitening learned on other data with the same nuisance removes it.
    rng = np.random.default_rng(2)
    nuisance = np.zeros(8)
    nuisance[0] = 1.0
    def sample(n, identity):
        return identity + rng.normal(size=(n, 8)) * 0.1 + np.outer(rng.normal(size=n) * 20, nuisance)
    train = np.vstack([sample(20, rng.normal(size=8)) for _ in range(10)])
    a, b = rng.normal(size=8), rng.normal(size=8)
    qa, da, db = sample(1, a), sample(1, a), sample(1, b)
    w = PCAWhitening().fit(train)
    za, zda, zdb = w.transform(qa), w.transform(da), w.transform(db)
    assert (za @ zda.T).item() > (za @ zdb.T).item()


def test_errors():
    with pytest.raises(ValueError, match="at most"):
        PCAWhitening(dim=10).fit(np.ones((5, 20)))
    with pytest.raises(RuntimeError, match="before fit"):
        PCAWhitening().transform(np.ones((2, 3)))
    w = PCAWhitening().fit(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(ValueError, match="3-d"):
        w.transform(np.ones((2, 4)))

"""Kernel of nilearn's voxel-wise regression attributes, against hand-written oracles."""

from __future__ import annotations

import numpy as np
import pytest

from daskglm.kernels.voxelwise import voxelwise_block


@pytest.fixture
def block():
    rng = np.random.default_rng(3)
    n, p, v = 40, 4, 7
    X = np.column_stack([rng.standard_normal((n, p - 1)), np.ones(n)])
    Y = (100 + rng.standard_normal((n, v)) * 3).astype(np.float32)
    return X, Y


def test_ols_residuals_and_r_square_equal_lstsq(block):
    X, Y = block
    Ys = 100 * (Y.astype(np.float64) / Y.mean(axis=0, dtype=np.float64) - 1)
    beta = np.linalg.lstsq(X, Ys, rcond=None)[0]
    labels, values = np.zeros(Y.shape[1], int), np.zeros((1, 0))
    res = voxelwise_block(Y, X, beta, labels, values, "residuals")
    np.testing.assert_allclose(res, Ys - X @ beta, atol=1e-4)
    r2 = voxelwise_block(Y, X, beta, labels, values, "r_square")
    assert r2.shape == (1, Y.shape[1])
    np.testing.assert_allclose(r2[0], (X @ beta).var(0) / Ys.var(0), rtol=1e-4)


def test_ar1_uses_each_voxels_label_to_whiten(block):
    X, Y = block
    beta = np.random.default_rng(0).standard_normal((X.shape[1], Y.shape[1]))
    values = np.array([[-0.2], [0.0], [0.35]])
    labels = np.array([0, 2, 2, 1, 0, 2, 1])
    pred = voxelwise_block(Y, X, beta, labels, values, "predicted", signal_scaling=False)
    for v, label in enumerate(labels):
        rho = values[label, 0]
        wx = X.copy()
        wx[1:] -= rho * X[:-1]  # row 0 unchanged, as nilearn's ARModel.whiten
        np.testing.assert_allclose(pred[:, v], wx @ beta[:, v], rtol=1e-12)
        y = Y[:, v].astype(np.float64)
        wy = y.copy()
        wy[1:] -= rho * y[:-1]
        r2 = voxelwise_block(Y[:, [v]], X, beta[:, [v]], np.array([label]), values, "r_square",
                             signal_scaling=False)
        np.testing.assert_allclose(r2[0, 0], (wx @ beta[:, v]).var() / wy.var(), rtol=1e-10)


def test_bad_arguments_are_named(block):
    X, Y = block
    beta = np.zeros((X.shape[1], Y.shape[1]))
    labels = np.zeros(Y.shape[1], int)
    with pytest.raises(ValueError, match="'mse'"):
        voxelwise_block(Y, X, beta, labels, np.zeros((1, 0)), "mse")
    with pytest.raises(ValueError, match=r"beta \(4, 7\)"):
        voxelwise_block(Y, X, beta[:, :3], labels, np.zeros((1, 0)), "predicted")


def test_attributes_of_a_run_shorter_than_its_design(block):
    """n <= p: nilearn's predicted values equal the data (the fit is exact), residuals ~0."""
    from nilearn.glm.first_level import run_glm

    from daskglm.kernels import regression as K

    X, Y = block
    X = np.column_stack([X[:3], np.eye(3)[:, :2]])  # 3 scans, 6 columns
    Y = Y[:3]
    _, results = run_glm(Y.astype(np.float64), X, noise_model="ols")
    fit = K.fit_block(Y, X, "ols", signal_scaling=False)
    labels, values = np.zeros(Y.shape[1], int), np.zeros((1, 0))
    predicted = voxelwise_block(Y, X, fit.beta, labels, values, "predicted", signal_scaling=False)
    np.testing.assert_allclose(predicted, results[0.0].predicted, rtol=1e-10)
    np.testing.assert_allclose(predicted, Y, rtol=1e-10)
    residuals = voxelwise_block(Y, X, fit.beta, labels, values, "residuals", signal_scaling=False)
    np.testing.assert_allclose(residuals, 0.0, atol=1e-10)

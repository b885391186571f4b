"""Tests of daskglm.kernels.whitening against nilearn 0.14's ``ARModel.whiten``."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import N, assert_close, dataset  # the kernels' simulated blocks
from nilearn.glm.regression import ARModel

from daskglm.kernels import whitening as Wh


def test_whiten_matches_armodel():
    _, X = dataset()
    rng = np.random.default_rng(3)
    for order in (1, 2, 3):
        rho = rng.uniform(-0.5, 0.5, order)
        assert_close(Wh.whiten(X, rho), ARModel(X, rho).whiten(X))
    A = rng.standard_normal((N, 8))
    coeffs = rng.uniform(-0.5, 0.5, (2, 8))
    per_voxel = Wh.whiten(A, coeffs)
    for j in range(8):
        np.testing.assert_array_equal(per_voxel[:, j], Wh.whiten(A[:, j], coeffs[:, j]))
    np.testing.assert_array_equal(per_voxel[0], A[0])
    np.testing.assert_allclose(per_voxel[1], A[1] - coeffs[0] * A[0])


@pytest.mark.parametrize("order, n", [(1, 2), (1, 130), (2, 3), (2, 200), (3, 70)])
def test_whiten_inplace_equals_whiten(order, n):
    """The cache-blocked in-place whitening used by the fit equals `whiten` (per-column coefficients)."""
    rng = np.random.default_rng(order * 1000 + n)
    A = rng.standard_normal((n, 7))
    coeffs = rng.uniform(-0.6, 0.6, (order, 7))
    expected = Wh.whiten(A, coeffs)
    out = A.copy()
    Wh.whiten_inplace(out, coeffs, rows=16)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


def test_orders_beyond_the_scans_whiten_the_lags_there_are():
    """nilearn's ``ARModel.whiten`` with order >= n scans: the missing lags change nothing."""
    rng = np.random.default_rng(4)
    for n, order in ((1, 1), (1, 3), (2, 2), (2, 5), (3, 4)):
        A = rng.standard_normal((n, 3))
        rho = rng.uniform(-0.9, 0.9, order)
        np.testing.assert_allclose(Wh.whiten(A, rho), ARModel(A, rho).whiten(A), rtol=1e-15)
        out = A.copy()
        Wh.whiten_inplace(out, np.repeat(rho[:, None], 3, axis=1))
        np.testing.assert_allclose(out, ARModel(A, rho).whiten(A), rtol=1e-15)

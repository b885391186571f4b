"""The ARMA(1,1) kernels against dense-matrix oracles and a direct REML optimisation (scipy).

Oracles: the exact covariance ``R`` of an ARMA(1,1) (Toeplitz of its autocovariance, written here
from the process's definition, not from the kernel), ``np.linalg`` inverses, determinants and
``lstsq`` on Cholesky-whitened data, and scipy's optimiser on the exact restricted likelihood.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st

from daskglm.kernels import arma


def _acov(a: float, b: float, n: int) -> np.ndarray:
    """Autocovariance of y_t = a y_{t-1} + e_t + b e_{t-1}, unit innovations: from its MA(inf) weights."""
    psi = np.empty(4000)  # psi_0 = 1, psi_j = (a + b) a^(j-1)
    psi[0] = 1.0
    psi[1:] = (a + b) * a ** np.arange(3999)
    return np.array([psi[: 4000 - k] @ psi[k:] for k in range(n)])


def _R(a: float, b: float, n: int) -> np.ndarray:
    return scipy.linalg.toeplitz(_acov(a, b, n))


def _design(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    return np.column_stack([((t // 12) % 2).astype(float), np.cos(np.pi * t / n), np.cos(2 * np.pi * t / n),
                            rng.standard_normal(n), np.ones(n)])


def _simulate(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([np.linalg.cholesky(_R(ai, bi, n)) @ rng.standard_normal(n) for ai, bi in zip(a, b)])


def _reml(params: np.ndarray, y: np.ndarray, X: np.ndarray) -> float:
    """-2 log restricted likelihood (dispersion profiled out), from dense matrices."""
    n = len(y)
    Ri = np.linalg.inv(_R(params[0], params[1], n))
    A = X.T @ Ri @ X
    P = Ri - Ri @ X @ np.linalg.solve(A, X.T @ Ri)
    nu = n - np.linalg.matrix_rank(X)
    return np.linalg.slogdet(_R(params[0], params[1], n))[1] + np.linalg.slogdet(A)[1] + nu * np.log(y @ P @ y)


@pytest.mark.parametrize(("a", "b"), [(0.0, 0.0), (0.6, -0.4), (0.9, -0.75), (0.3, 0.5), (0.95, 0.8)])
def test_whitening_is_the_inverse_covariance(a: float, b: float) -> None:
    n = 120
    R = _R(a, b, n)
    Y = np.random.default_rng(0).standard_normal((n, 4))
    W = arma.whiten(np.eye(n), a, b)
    np.testing.assert_allclose(W.T @ W, np.linalg.inv(R), atol=1e-9 * np.abs(np.linalg.inv(R)).max())
    np.testing.assert_allclose(arma.whiten(Y, a, b), W @ Y, atol=1e-12)
    np.testing.assert_allclose(arma.factor(np.array([[a, b]]), n)[2], np.linalg.slogdet(R)[1], rtol=1e-10)
    np.testing.assert_allclose(arma.autocovariance(a, b, 5)[0], _acov(a, b, 6), rtol=1e-10)


def test_expected_quadratic_form_is_the_trace() -> None:
    """tau = tr(Pi M R M) of the module notes, against the dense product."""
    n = 90
    X = _design(n, np.random.default_rng(1))
    params = arma.grid()[[0, 77, 333, 500, len(arma.grid()) - 1]]
    pi = arma.inverse_autocovariance(params, arma.N_LAGS)
    tau = arma._expected_quadratic(X, params, pi, X.shape[1])
    M = np.eye(n) - X @ np.linalg.pinv(X)
    for (a, b), value, band in zip(params, tau, pi):
        column = np.zeros(n)
        column[: arma.N_LAGS + 1] = band
        expected = np.trace(scipy.linalg.toeplitz(column) @ M @ _R(a, b, n) @ M)
        np.testing.assert_allclose(value, expected, rtol=1e-9)


@pytest.mark.slow
def test_reml_choice_against_a_direct_optimisation() -> None:
    """Each voxel's grid point against scipy's optimum of the exact restricted likelihood.

    The grid point chosen from the lag sums must lie inside the exact REML's 95 % likelihood
    region (-2 log-likelihood within 3.84 of the optimum) for every voxel, and close to it for most;
    the AR parameter within a grid step or two of the optimum where the autocorrelation is strong.
    """
    rng = np.random.default_rng(3)
    n, v = 150, 24
    X = _design(n, rng)
    a = rng.uniform(0.3, 0.9, v)
    white = rng.uniform(0.3, 0.7, v)  # AR(1) + white noise is an ARMA(1,1) with b < 0
    noise = np.empty((n, v))
    for j in range(v):
        ar = np.linalg.cholesky(scipy.linalg.toeplitz(a[j] ** np.arange(n) / (1 - a[j] ** 2))) @ rng.standard_normal(n)
        noise[:, j] = np.sqrt(1 - white[j]) * ar * np.sqrt(1 - a[j] ** 2) + np.sqrt(white[j]) * rng.standard_normal(n)
    Y = 100 + X[:, :4] @ rng.standard_normal((4, v)) + noise
    Ys = 100 * (Y / Y.mean(axis=0) - 1)
    fit = arma.fit_block(Y, X)
    chosen = arma.grid()[fit.label.astype(int)]
    loss, a_err = [], []
    for j in range(v):
        starts = [chosen[j], (0.5, -0.2), (0.2, 0.0), (0.85, -0.6)]
        best = min((scipy.optimize.minimize(_reml, s, args=(Ys[:, j], X), method="L-BFGS-B",
                                            bounds=[(0.0, 0.95), (-0.8, 0.8)]) for s in starts),
                   key=lambda r: r.fun)
        loss.append(_reml(chosen[j], Ys[:, j], X) - best.fun)
        if best.x[0] > 0.6:
            a_err.append(abs(chosen[j, 0] - best.x[0]))
    loss = np.array(loss)
    assert loss.min() > -1e-6  # scipy found the optimum (no grid point is better)
    assert loss.max() < 3.84, loss
    assert np.median(loss) < 0.5, loss
    assert len(a_err) >= 5 and np.median(a_err) <= 0.05 and max(a_err) <= 0.15, a_err


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
@pytest.mark.parametrize("scaling", [0, (0, 1), False])
def test_refit_against_whitened_least_squares(dtype: type, scaling) -> None:
    """Each voxel scaled as nilearn does (in float32 for float32 data), whitened by its label's
    Cholesky factor and fitted by lstsq; labels shared by several voxels, fitted in batches of 3."""
    rng = np.random.default_rng(4)
    n, v = 80, 30
    X = _design(n, rng)
    Y = (100 + 10 * rng.standard_normal((n, v))).astype(dtype)
    label = rng.integers(0, len(arma.grid()), v)
    label[::3] = label[0]
    fit = arma.refit_block(Y, X, label, signal_scaling=scaling, batch=3)
    ftype = np.float32 if dtype == np.float32 else np.float64
    Yf = Y.astype(ftype)
    if scaling is False:
        Ys = Y.astype(np.float64)
    else:
        mean = Yf.mean(axis=0, dtype=ftype) if scaling == 0 else Yf.mean(dtype=ftype)
        Ys = ((Yf / mean - ftype(1)) * ftype(100)).astype(np.float64)
    cov = arma.label_covariances(X)
    for j in range(v):
        a, b = arma.grid()[label[j]]
        L = np.linalg.cholesky(_R(a, b, n))
        wx, wy = np.linalg.solve(L, X), np.linalg.solve(L, Ys[:, j])
        beta, rss = np.linalg.lstsq(wx, wy, rcond=None)[:2]
        np.testing.assert_allclose(fit.beta[:, j], beta, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.sigma2[j], rss[0] / (n - X.shape[1]), rtol=1e-7)
        pinv = np.linalg.pinv(wx)
        np.testing.assert_allclose(cov[label[j]], pinv @ pinv.T, rtol=1e-7, atol=1e-12)
    np.testing.assert_array_equal(fit.label, label)
    assert fit.dof == n - X.shape[1]


@given(st.integers(1, 40), st.integers(0, 2**16))
def test_labels_do_not_depend_on_the_block(split: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    X = _design(n, rng)
    Y = 100 + rng.standard_normal((n, 41)).cumsum(axis=0) * 0.3 + rng.standard_normal((n, 41))
    whole = arma.fit_block(Y, X)
    parts = [arma.fit_block(Y[:, :split], X), arma.fit_block(Y[:, split:], X)]
    np.testing.assert_array_equal(whole.label, np.concatenate([p.label for p in parts]))
    # BLAS rounds a GEMM of other widths differently: equal to rounding
    np.testing.assert_allclose(whole.beta, np.concatenate([p.beta for p in parts], axis=1), rtol=1e-9, atol=1e-12)


def test_constant_voxels_and_designs_without_dof_are_white() -> None:
    n = 40
    rng = np.random.default_rng(5)
    X = _design(n, rng)
    Y = np.column_stack([np.full(n, 7.0), 100 + rng.standard_normal(n)])
    fit = arma.fit_block(Y, X)
    assert fit.label[0] == arma.white_label() and fit.sigma2[0] == 0.0
    np.testing.assert_array_equal(fit.beta[:, 0], [0, 0, 0, 0, 0.0])  # scaled to 0: the exact fit
    square = arma.fit_block(100 + rng.standard_normal((6, 3)), rng.standard_normal((6, 6)))
    np.testing.assert_array_equal(square.label, arma.white_label())
    assert square.dof == 0


def test_smoothing_is_a_masked_gaussian_average() -> None:
    """Against a hand-built separable kernel (scipy's discretisation: exp(-x^2 / 2 s^2) up to 3 s, normalised)."""
    rng = np.random.default_rng(7)
    shape = (7, 6, 5)
    inside = rng.random(shape) < 0.6
    ijk = np.array(np.nonzero(inside))
    r = rng.standard_normal((arma.N_LAGS + 1, ijk.shape[1]))
    r[0] = 1.0
    r[:, 3] = 0.0  # zero residuals: left out, and stays 0
    sigma = np.array([1.0, 0.7, 1.3])
    out = arma.smooth_lag_correlations(r, ijk, shape, sigma)

    def kernel(s: float) -> np.ndarray:
        radius = int(3.0 * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        return w / w.sum()

    used = np.ones(ijk.shape[1], bool)
    used[3] = False
    for voxel in (0, 10, ijk.shape[1] - 1):
        weights = np.ones(ijk.shape[1])
        for axis in range(3):
            w = kernel(sigma[axis])
            radius = len(w) // 2
            offset = ijk[axis] - ijk[axis, voxel]
            weights *= np.where(np.abs(offset) <= radius, w[np.clip(offset + radius, 0, len(w) - 1)], 0.0)
        weights *= used
        np.testing.assert_allclose(out[:, voxel], weights @ r.T / weights.sum(), rtol=1e-5, atol=1e-6)  # float32
    np.testing.assert_array_equal(out[:, 3], 0.0)


def test_whitening_by_a_grid_label_uses_the_designs_factors() -> None:
    """``whiten_label`` (the cached factors of the run's design) is the dense inverse-covariance whitening."""
    n = 70
    X = _design(n, np.random.default_rng(8))
    A = np.random.default_rng(9).standard_normal((n, 3))
    for label in (0, arma.white_label(), 333, len(arma.grid()) - 1):
        a, b = arma.grid()[label]
        L = np.linalg.cholesky(_R(a, b, n))
        out = arma.whiten_label(A, X, label)
        np.testing.assert_allclose(out.T @ out, A.T @ np.linalg.solve(_R(a, b, n), A), rtol=1e-9)
        np.testing.assert_allclose(out, np.linalg.solve(L, A), rtol=1e-8, atol=1e-10)  # W = chol(R)^-1


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
@pytest.mark.parametrize("scaling", [0, (0, 1), False])
def test_compiled_scaling_is_scale_signal_bit_for_bit(dtype: type, scaling) -> None:
    """The refit's compiled read-scale-whiten pass, with the identity whitening (a = 0, m = 0,
    scale = 1), gives daskglm.kernels.scaling.scale_signal's values exactly, columns in any order."""
    from daskglm.kernels.scaling import scale_signal, scaling_mean

    rng = np.random.default_rng(7)
    Y = (1000 + 50 * rng.standard_normal((40, 25))).astype(dtype)
    cols = rng.permutation(25)[:17]
    expected = np.asarray(scale_signal(Y, scaling)[0], dtype=np.float64)[:, cols]
    mean = scaling_mean(np.asarray(Y, dtype=np.float32 if dtype == np.float32 else np.float64), scaling)
    if mean is not None:
        mean = mean[cols] if mean.ndim else np.full(cols.size, mean, dtype=mean.dtype)
    got = arma._whiten_label(Y, 0.0, np.zeros(1), np.ones(1), cols, mean)
    np.testing.assert_array_equal(got, expected)

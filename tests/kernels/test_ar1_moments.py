"""The AR(1) fit from a block's moments against the exact path and per-voxel oracles.

The exact path (:func:`daskglm.kernels.regression._ar1_exact`: OLS, residuals, Yule-Walker,
one whitened lstsq per label) is itself tested against nilearn's ``run_glm`` in
tests/kernels/test_kernels.py; here the moment fit must give the same labels and the
same betas and dispersions to ~1e-10, flag every voxel it cannot fit to that
precision, and refuse designs it cannot handle.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from daskglm.kernels import ar1_moments as M
from daskglm.kernels import regression as K
from daskglm.kernels import scaling as Sc


def drift_design(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """Event regressors, cosine drifts and an intercept, columns on very different scales (as nilearn's)."""
    t = np.arange(n)
    hrf = np.exp(-0.5 * ((np.arange(8) - 3) / 1.5) ** 2)
    cols = [np.ones(n)]
    for k in range(1, p):
        if k % 2:
            onsets = (rng.random(n) < 0.2).astype(float)
            cols.append(np.convolve(onsets, hrf)[:n] * rng.uniform(0.1, 10))
        else:
            cols.append(np.sqrt(2 / n) * np.cos(np.pi * (t + 0.5) * (k // 2) / n))
    return np.column_stack(cols[::-1])


def nilearn_design(n: int = 400, t_r: float = 2.0) -> np.ndarray:
    """A design as users have them: nilearn's, 4 conditions, cosine drifts, intercept."""
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    rng = np.random.default_rng(0)
    onsets = np.sort(rng.uniform(0, n * t_r - 20, 40))
    events = pd.DataFrame({"onset": onsets, "duration": 10.0, "trial_type": [f"c{i % 4}" for i in range(40)]})
    return make_first_level_design_matrix(np.arange(n) * t_r, events, drift_model="cosine").to_numpy()


def ar1_data(rng: np.random.Generator, X: np.ndarray, v: int, rho_range=(-0.4, 0.8)) -> np.ndarray:
    n, p = X.shape
    rho = rng.uniform(*rho_range, size=v)
    e = rng.standard_normal((n, v))
    for t in range(1, n):
        e[t] += rho * e[t - 1]
    return (1000 + X @ rng.normal(0, 20, (p, v)) + 15 * e).astype(np.float32)


def scaled(Y: np.ndarray) -> np.ndarray:
    return np.asarray(Sc.scale_signal(Y, 0)[0], dtype=np.float64)


def near_edge(label_a: np.ndarray, Ys: np.ndarray, X: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Voxels whose rho (computed by hand) lies within ``tol`` of a bin edge."""
    beta = np.linalg.lstsq(X, Ys, rcond=None)[0]
    e = Ys - X @ beta
    rho = (np.sum(e[1:] * e[:-1], axis=0) / (len(e) - 1)) / (np.sum(e * e, axis=0) / len(e))
    x = rho * 100
    return np.abs(x - np.round(x)) < tol


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(12, 300), p=st.integers(1, 14), v=st.integers(1, 60))
def test_moment_fit_equals_exact_path(seed, n, p, v):
    assume(n >= p + 8)
    rng = np.random.default_rng(seed)
    X = drift_design(rng, n, p)
    Ys = scaled(ar1_data(rng, X, v))
    design = M.prepare(X, 100)
    assume(design is not None)  # a random design may be ill-conditioned: tested below
    fast = M.ar1_fit_moments(Ys, design)
    beta, sigma2, label = K._ar1_exact(Ys, X, 100)
    ok = ~fast.redo
    keep = ok & ~near_edge(label, Ys, X)
    np.testing.assert_array_equal(fast.label[keep], label[keep])
    keep &= fast.label == label
    # |d beta_j| against |beta_j| + |y| / |x_j|: a beta that is itself rounding (an
    # intercept of scaled data) is compared at the scale of the data
    scale = np.abs(beta) + np.linalg.norm(Ys, axis=0)[None] / np.linalg.norm(X, axis=0)[:, None]
    error = (np.abs(fast.beta - beta) / scale)[:, keep]
    assert error.size == 0 or error.max() < 1e-9, error.max()
    np.testing.assert_allclose(fast.sigma2[keep], sigma2[keep], rtol=1e-9)


def test_typical_data_take_the_fast_path_everywhere():
    """Scaled data with noise: no voxel needs the exact refit (or the fast path would buy nothing)."""
    rng = np.random.default_rng(3)
    X = nilearn_design()
    assert X.shape[1] >= 10
    fast = M.ar1_fit_moments(scaled(ar1_data(rng, X, 500)), M.prepare(X, 100))
    assert not fast.redo.any()


def test_degenerate_voxels_are_flagged_and_fit_block_refits_them_exactly():
    rng = np.random.default_rng(4)
    X = drift_design(rng, 200, 9)
    Y = ar1_data(rng, X, 40).astype(np.float64)
    Y[:, 0] = 750.0                                    # constant: scales to ~0, zero residuals
    Y[:, 1] = 1000 + X @ rng.normal(0, 5, X.shape[1])  # in the span of X: residuals are rounding
    Y[:, 2] = 0.0                                      # all zero (nilearn's mean floor)
    with pytest.warns(UserWarning, match="Mean values of 0"):
        Ys = np.asarray(Sc.scale_signal(Y, 0)[0], dtype=np.float64)
    fast = M.ar1_fit_moments(Ys, M.prepare(X, 100))
    assert fast.redo[:3].all()
    assert not fast.redo[3:].any()
    with pytest.warns(UserWarning, match="Mean values of 0"):
        fit = K.fit_block(Y, X, "ar1")
    beta, sigma2, label = K._ar1_exact(np.ascontiguousarray(Ys[:, :3]), X, 100)
    np.testing.assert_array_equal(fit.beta[:, 1], beta[:, 1])   # the exact path itself, on voxel 1
    np.testing.assert_array_equal(fit.sigma2[1], sigma2[1])
    np.testing.assert_array_equal(fit.label[1], label[1])
    # Voxels 0 and 2 scale to exactly constant signals (0 and nilearn's floor, -100): their exact
    # fit, by hand (the constant column's beta is the value, the others 0, no residual), not the
    # exact path's rounding noise (a deliberate difference from nilearn, see README).
    constant = int(np.flatnonzero(np.all(X == X[0], axis=0))[0])
    for voxel in (0, 2):
        expected = np.zeros(X.shape[1])
        expected[constant] = Ys[0, voxel] / X[0, constant]
        np.testing.assert_array_equal(fit.beta[:, voxel], expected)
        assert fit.sigma2[voxel] == 0 and fit.label[voxel] == 0
    beta, sigma2, label = K._ar1_exact(Ys, X, 100)
    np.testing.assert_allclose(fit.beta[:, 3:], beta[:, 3:], rtol=1e-9, atol=1e-9 * np.abs(beta).max())
    np.testing.assert_allclose(fit.sigma2[3:], sigma2[3:], rtol=1e-9)


def test_non_finite_voxels_are_flagged():
    rng = np.random.default_rng(5)
    X = drift_design(rng, 100, 5)
    Ys = scaled(ar1_data(rng, X, 6))
    Ys[10, 2] = np.nan
    Ys[20, 4] = np.inf
    fast = M.ar1_fit_moments(Ys, M.prepare(X, 100))
    assert fast.redo[2] and fast.redo[4]
    assert not fast.redo[[0, 1, 3, 5]].any()


def test_fit_block_sends_only_flagged_voxels_to_the_exact_path(monkeypatch):
    rng = np.random.default_rng(6)
    X = drift_design(rng, 150, 8)
    Y = ar1_data(rng, X, 30).astype(np.float64)
    Y[:, 7] = 500.0
    seen = []
    exact = K._ar1_exact
    monkeypatch.setattr(K, "_ar1_exact", lambda Ys, *a, **k: seen.append(Ys.shape[1]) or exact(Ys, *a, **k))
    K.fit_block(Y, X, "ar1")
    assert seen == [1]


@pytest.mark.parametrize("case", ["zero column", "duplicate column", "too few scans", "ill-conditioned"])
def test_designs_the_moments_cannot_fit_are_refused(case):
    rng = np.random.default_rng(7)
    X = drift_design(rng, 60, 5)
    if case == "zero column":
        X[:, 1] = 0.0
    elif case == "duplicate column":
        X[:, 2] = X[:, 3]
    elif case == "too few scans":
        X = X[:6]
    else:
        X[:, 2] = X[:, 3] + 1e-5 * rng.standard_normal(len(X))
    assert M.prepare(X, 100) is None
    # fit_block then takes the exact path for the whole block, as before
    Y = ar1_data(rng, X, 10)
    fit = K.fit_block(Y, X, "ar1")
    beta, sigma2, label = K._ar1_exact(scaled(Y), X, 100)
    np.testing.assert_array_equal(fit.beta, beta)
    np.testing.assert_array_equal(fit.sigma2, sigma2)


def test_design_cache_is_keyed_by_design_and_bins():
    rng = np.random.default_rng(8)
    X = drift_design(rng, 80, 4)
    a, b = M.prepare(X, 100), M.prepare(X.copy(), 100)
    assert a is b
    assert M.prepare(X, 10).label_inv.shape[0] == 21
    assert M.prepare(X[:70], 100) is not a


def test_label_inverses_are_whitened_covariances():
    """The table of inv(X' W' W X) equals pinv(WX) pinv(WX)' (nilearn's normalised covariance)."""
    rng = np.random.default_rng(9)
    X = drift_design(rng, 90, 6)
    design = M.prepare(X, 100)
    half = M.ar1_half_width(100, 90)
    assert half == 101 and design.label_inv.shape[0] == 2 * half + 1  # |rho| <= 90 / 89 here
    for k in (-101, -100, -37, 0, 55, 100, 101):
        wx = K.whiten(X, k / 100)
        pinv = np.linalg.pinv(wx)
        cov = np.diag(1 / design.scale) @ design.label_inv[k + half] @ np.diag(1 / design.scale)
        np.testing.assert_allclose(cov, pinv @ pinv.T, rtol=1e-9, atol=1e-12 * np.abs(pinv @ pinv.T).max())


def _extended_inverses(Xs: np.ndarray, rho: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """Oracle: inv((W Xs)'(W Xs)) per label in long double, by a Newton step from ``approx``.

    The whitened Gram matrix is summed in long double (64-bit mantissa on x86) and one step
    ``Z + Z (I - C Z)`` leaves an error ~cond * eps_long + (cond * err(approx))^2."""
    Xl = Xs.astype(np.longdouble)
    out = np.empty(approx.shape, dtype=np.longdouble)
    eye = np.eye(Xs.shape[1], dtype=np.longdouble)
    for k, value in enumerate(rho.astype(np.longdouble)):
        wx = Xl.copy()
        wx[1:] = Xl[1:] - value * Xl[:-1]
        gram = wx.T @ wx
        z = approx[k].astype(np.longdouble)
        out[k] = z + z @ (eye - gram @ z)
    return out


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= 1e-18, reason="long double is no wider than double here")
@pytest.mark.parametrize("n, p, bins, seed", [(191, 13, 100, 3), (60, 4, 7, 4), (1200, 13, 100, 5), (400, 9, 100, 6)])
def test_label_error_bounds_the_actual_rounding(n, p, bins, seed):
    """Each label's ``label_error`` is a bound: the inverse is that close (spectral norm, relative)
    to the inverse computed in extended precision, labels next to rho = 1 and long runs included
    (the identity G - 2 l K + l^2 T lost 37 times its bound there at n = 1200)."""
    rng = np.random.default_rng(seed)
    X = drift_design(rng, n, p)
    design = M.prepare(X, bins)
    assert design is not None
    Xs = X / design.scale
    rho = M.ar1_grid(bins)
    oracle = _extended_inverses(Xs, rho, design.label_inv)
    for k in range(rho.size):
        diff = (design.label_inv[k].astype(np.longdouble) - oracle[k]).astype(np.float64)
        actual = np.linalg.norm(diff, 2) / np.linalg.norm(oracle[k].astype(np.float64), 2)
        assert actual <= design.label_error[k], (rho[k], actual, design.label_error[k])


@given(seed=st.integers(0, 2**32 - 1), labels=st.integers(1, 9), p=st.integers(1, 6), v=st.integers(0, 60))
def test_solve_by_label_equals_one_product_per_voxel(seed, labels, p, v):
    """Oracle: each voxel's own matrix-vector product (any label order, repeats, absent labels)."""
    rng = np.random.default_rng(seed)
    inverses = rng.normal(size=(labels, p, p))
    index = rng.integers(0, labels, size=v)
    rhs = rng.normal(size=(p, v))
    expected = np.zeros((p, v))
    for j in range(v):
        expected[:, j] = inverses[index[j]] @ rhs[:, j]
    np.testing.assert_allclose(M._solve_by_label(inverses, index, rhs), expected, rtol=1e-12, atol=1e-12)


def test_ar1_grid_is_the_label_table():
    """``ar1_grid`` by hand, and every AR(1) label is its grid value, bit for bit, at row
    ``rint(label * bins) + bins`` (the row fit_run's ``label_index`` and the moment fit use)."""
    np.testing.assert_array_equal(M.ar1_grid(2), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(M.ar1_grid(1), [-1.0, 0.0, 1.0])
    assert M.ar1_grid(100).shape == (201,) and M.ar1_grid(100).dtype == np.float64
    rng = np.random.default_rng(0)
    for bins in (1, 2, 7, 22, 100, 1000):
        grid = M.ar1_grid(bins)
        label = K.ar1_labels(rng.uniform(-1, 1, 5000), bins)
        np.testing.assert_array_equal(grid[np.rint(label * bins).astype(np.intp) + bins], label)
    for bins in (1, 2, 10):  # each grid value is its own label
        np.testing.assert_array_equal(K.ar1_labels(M.ar1_grid(bins), bins), M.ar1_grid(bins))
    # ...but not always: (k / bins) * bins can round to just below k, which truncates to k - 1
    # (nilearn's int cast does the same), e.g. 0.58 * 100 = 57.99999999999999 -> label 0.57.
    grid = M.ar1_grid(100)
    moved = np.flatnonzero(K.ar1_labels(grid, 100) != grid) - 100
    np.testing.assert_array_equal(moved, [-58, -57, -29, 29, 57, 58])
    np.testing.assert_array_equal(K.ar1_labels(grid, 100)[moved + 100], (moved - np.sign(moved)) / 100)


def test_grid_of_short_runs_covers_nilearns_unclipped_labels():
    """|rho| <= n / (n - 1) (Cauchy-Schwarz on nilearn's (n - k) n normalisation): runs of at most
    bins + 1 scans get the grid |k| <= floor(bins n / (n - 1)), longer ones [-1, 1] as before. The
    largest |rho| of n scans, n / (n - 1) cos(pi / (n + 1)) (the lag-1 extreme of a sine), is on it."""
    assert [M.ar1_half_width(100, n) for n in (None, 0, 1, 2, 3, 8, 51, 101, 102, 1200)] == \
        [100, 100, 100, 200, 150, 114, 102, 101, 100, 100]
    np.testing.assert_array_equal(M.ar1_grid(100, 8), np.arange(-114, 115) / 100)
    np.testing.assert_array_equal(M.ar1_grid(2, 3), [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    for n in (2, 3, 4, 5, 8, 20, 101, 300):
        t = np.arange(1, n + 1)
        extremes = np.column_stack([np.sin(np.pi * t / (n + 1)), np.sin(np.pi * n * t / (n + 1))])
        rho = K.yule_walker(extremes, 1)[0]
        bound = n / (n - 1) * np.cos(np.pi / (n + 1))
        np.testing.assert_allclose(np.abs(rho), bound, rtol=1e-12)
        for bins in (1, 7, 100, 1000):
            label = K.ar1_labels(rho, bins)
            index = M.ar1_label_index(label, bins, n)
            np.testing.assert_array_equal(M.ar1_grid(bins, n)[index], label)
    with pytest.raises(ValueError, match=r"\|k\| <= 100 \(1200 scans\)"):
        M.ar1_label_index(np.array([0.5, -1.01]), 100, 1200)
    with pytest.raises(ValueError, match="grid"):
        M.ar1_label_index(np.array([np.nan]), 100, 8)


def test_moment_fit_of_a_short_run_uses_labels_beyond_one():
    """A design the moments accept on a short run: labels below -1 come from the moment path
    (rows of the wider label_inv), equal to the exact path's."""
    rng = np.random.default_rng(12)
    n = 10
    X = drift_design(rng, n, 3)
    Y = (1000 + 30 * (-1.0) ** np.arange(n)[:, None] * (1 + 0.2 * rng.standard_normal((n, 200)))
         + 3 * rng.standard_normal((n, 200)))
    design = M.prepare(X, 100)
    assert design is not None and design.label_inv.shape[0] == 2 * M.ar1_half_width(100, n) + 1
    fast = M.ar1_fit_moments(scaled(Y), design)
    used = ~fast.redo & (fast.label < -1)
    assert used.sum() > 20
    beta, sigma2, label = K._ar1_exact(scaled(Y), X, 100)
    np.testing.assert_array_equal(fast.label[~fast.redo], label[~fast.redo])
    np.testing.assert_allclose(fast.beta[:, used], beta[:, used], rtol=1e-9, atol=1e-9 * np.abs(beta).max())
    np.testing.assert_allclose(fast.sigma2[used], sigma2[used], rtol=1e-9)


@pytest.mark.parametrize("step", [1, 7, 99, 100, 128, 1000])
def test_block_moments_streamed_equal_the_whole_block_products(step):
    """The moments summed over row steps (with the lag-1 product across each step's boundary)
    equal the products of the whole scaled block, computed directly."""
    rng = np.random.default_rng(10)
    X = drift_design(rng, 100, 6)
    Y = ar1_data(rng, X, 23)
    Ys = scaled(Y)
    design = M.prepare(X, 100)
    mean = Sc.scaling_mean(Y, 0)
    moments, s0, s1, last = M.block_moments(lambda a, b, out: Sc.scaled_rows(Y, mean, a, b, out),
                                            *Y.shape, design.stacked, step=step)
    expected = design.stacked.T @ Ys
    np.testing.assert_allclose(moments, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(s0, np.sum(Ys * Ys, axis=0), rtol=1e-12)
    lag = np.array([sum(Ys[t, j] * Ys[t - 1, j] for t in range(1, len(Ys))) for j in range(Ys.shape[1])])
    np.testing.assert_allclose(s1, lag, rtol=1e-12, atol=1e-12 * np.abs(lag).max())
    np.testing.assert_array_equal(last, Ys[-1])


def test_fit_block_refits_flagged_voxels_from_their_own_scaling_under_a_grand_mean():
    """With ``signal_scaling=(0, 1)`` the exact refit of a flagged voxel uses the run's grand mean
    (a scalar), not the voxel's: the same numbers as the exact path on the whole scaled block."""
    rng = np.random.default_rng(11)
    X = drift_design(rng, 120, 7)
    Y = ar1_data(rng, X, 12).astype(np.float64)
    Y[:, 3] = 990.0  # constant: zero residuals, flagged
    grand = float(Y.mean()) * 1.01
    fit = K.fit_block(Y, X, "ar1", signal_scaling=(0, 1), scaling_mean=grand)
    Ys = np.asarray(Sc.scale_signal(Y, (0, 1), grand)[0], dtype=np.float64)
    # The constant voxel's exact fit, by hand: its value scaled by the grand mean (not its own
    # mean, which would give 0) on the constant column, zero elsewhere, no residual.
    constant = int(np.flatnonzero(np.all(X == X[0], axis=0))[0])
    expected = np.zeros(X.shape[1])
    expected[constant] = (990.0 / grand - 1) * 100 / X[0, constant]
    np.testing.assert_allclose(fit.beta[:, 3], expected, rtol=1e-12, atol=0)
    assert Ys[0, 3] != 0 and fit.sigma2[3] == 0 and fit.label[3] == 0
    others = np.arange(12) != 3  # the constant voxel's residuals are rounding: its label differs by block
    beta, sigma2, label = K._ar1_exact(np.ascontiguousarray(Ys[:, others]), X, 100)
    np.testing.assert_array_equal(fit.label[others], label)
    np.testing.assert_allclose(fit.beta[:, others], beta, rtol=1e-9, atol=1e-9 * np.abs(beta).max())

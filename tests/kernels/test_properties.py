"""Property-based tests (hypothesis) of the numpy kernels against independent
oracles: per-voxel ``np.linalg.lstsq`` fits written out by hand, hand-computed
contrast statistics, and (for a few random cases) nilearn's ``run_glm`` +
``compute_contrast``.

tests/kernels/test_kernels.py already checks voxel-partition invariance and fixed
nilearn fixtures; here the designs, block shapes, scales and contrasts are
random.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, reject, settings
from hypothesis import strategies as st
from scipy import stats as sps

from daskglm.kernels import covariances as C
from daskglm.kernels import regression as K
from daskglm.kernels import stats as S

seeds = st.integers(0, 2**32 - 1)
# 1 voxel, small primes, and arbitrary sizes
block_sizes = st.one_of(st.sampled_from([1, 7, 13]), st.integers(1, 40))
scales = st.sampled_from([1.0, 1e6, 1e-6])


# ----------------------------------------------------------------------------- oracles
def random_design(rng: np.random.Generator, n: int, p: int, intercept: bool) -> np.ndarray:
    X = rng.standard_normal((n, p))
    if intercept:
        X[:, 0] = 1.0
    return X


def oracle_scale(Y: np.ndarray) -> np.ndarray:
    """Percent signal change with the mean floored at 1, written independently."""
    Y = np.asarray(Y, dtype=np.float64)
    out = np.empty_like(Y)
    for j in range(Y.shape[1]):
        m = max(Y[:, j].sum() / Y.shape[0], 1.0)
        out[:, j] = 100.0 * (Y[:, j] / m - 1.0)
    return out


def oracle_lstsq(y: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    return beta, y - X @ beta


def oracle_rho(e: np.ndarray) -> float:
    n = e.size
    r0 = float(e @ e) / n / n
    r1 = float(e[:-1] @ e[1:]) / (n - 1) / n
    return 0.0 if r0 == 0 else r1 / r0


def oracle_whiten(a: np.ndarray, rho: float) -> np.ndarray:
    out = np.array(a, dtype=np.float64, copy=True)
    out[1:] = a[1:] - rho * a[:-1]
    return out


def oracle_fit(Ys: np.ndarray, X: np.ndarray, noise_model: str):
    """Per-voxel (beta, sigma2, label, fitted, rho): one lstsq per voxel, a loop."""
    n, p = X.shape
    v = Ys.shape[1]
    beta, sigma2, label, fitted, rho = (np.zeros((p, v)), np.zeros(v), np.zeros(v), np.zeros((n, v)), np.zeros(v))
    ols_rms = np.zeros(v)
    for j in range(v):
        y = Ys[:, j]
        b, e = oracle_lstsq(y, X)
        ols_rms[j] = np.linalg.norm(e) / np.sqrt(n)
        if noise_model == "ar1":
            rho[j] = oracle_rho(e)
            lab = np.trunc(rho[j] * 100) / 100 + 0.0
            wx, wy = oracle_whiten(X, lab), oracle_whiten(y, lab)
            b, e = oracle_lstsq(wy, wx)
            label[j] = lab
            fitted[:, j] = wx @ b
        else:
            fitted[:, j] = X @ b
        beta[:, j] = b
        sigma2[j] = e @ e / (n - p)
    return beta, sigma2, label, fitted, rho, ols_rms


def degenerate(ols_rms: np.ndarray, ynorm: np.ndarray, rel: float) -> np.ndarray:
    """Voxels whose OLS residuals are pure rounding error (constant voxels once
    scaled, or fitted exactly by an intercept). Their AR(1) rho is a ratio of
    rounding errors, so their label is arbitrary in any implementation
    (nilearn included) and is not compared; beta and sigma2 still are."""
    return ols_rms <= rel * ynorm + 1e-12


def near_bin_edge(rho: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Voxels whose rho lies within ``tol`` of a label boundary: truncation may
    legitimately differ between two correct implementations (rounding)."""
    x = rho * 100
    return np.abs(x - np.round(x)) < tol


def assert_voxels_close(actual: np.ndarray, desired: np.ndarray, ref_scale: np.ndarray, rtol: float) -> None:
    """Per voxel (last axis): |a - d| <= rtol * (|d| + ref_scale_j)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    tol = rtol * (np.abs(desired) + ref_scale)
    bad = ~(np.abs(actual - desired) <= tol)
    assert not bad.any(), (
        f"{bad.sum()} mismatches; worst at {np.unravel_index(np.argmax(np.abs(actual - desired) - tol), bad.shape)}: "
        f"{actual[bad][:5]} vs {desired[bad][:5]}"
    )


def make_block(rng, X, v, scale, n_constant):
    n, p = X.shape
    Y = scale * (1000.0 + X @ rng.normal(0, 8, (p, v)) + 5 * rng.standard_normal((n, v)))
    for j in rng.choice(v, size=min(n_constant, v), replace=False):
        Y[:, j] = scale * rng.uniform(-10, 1000)
    return Y


# ----------------------------------------------------------------------------- fits vs lstsq
@given(
    seed=seeds,
    n=st.integers(8, 60),
    p=st.integers(1, 6),
    v=block_sizes,
    scale=scales,
    intercept=st.booleans(),
    n_constant=st.integers(0, 3),
    noise_model=st.sampled_from(["ols", "ar1"]),
    scaling=st.sampled_from([0, False]),
)
def test_fit_block_equals_per_voxel_lstsq(seed, n, p, v, scale, intercept, n_constant, noise_model, scaling):
    assume(n >= p + 3)
    rng = np.random.default_rng(seed)
    X = random_design(rng, n, p, intercept)
    Y = make_block(rng, X, v, scale, n_constant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Mean values of 0" for zero constant voxels
        fit = K.fit_block(Y, X, noise_model, signal_scaling=scaling)
    Ys = Y if scaling is False else oracle_scale(Y)  # False == 0 in Python
    beta, sigma2, label, fitted, rho, ols_rms = oracle_fit(Ys, X, noise_model)

    for arr in fit:
        assert np.all(np.isfinite(arr))
    assert fit.beta.shape == (p, v) and fit.sigma2.shape == (v,) and fit.label.shape == (v,)
    assert fit.dof == n - p
    # per-voxel magnitude of the data; + 1e-4 percent with scaling: the rounding
    # of the scaling itself (a constant voxel scales to ~1e-14, not exactly 0, in
    # one of the two), i.e. an absolute tolerance of ~1e-12 percent
    ynorm = np.linalg.norm(Ys, axis=0) / np.sqrt(n) + (1e-4 if scaling is not False else 0.0)
    if noise_model == "ar1":
        keep = ~near_bin_edge(rho) & ~degenerate(ols_rms, ynorm, 1e-9)
    else:
        keep = np.ones(v, bool)
    np.testing.assert_array_equal(fit.label[keep], label[keep])
    # a fully conditioned Gaussian design: betas agree to ~cond * eps
    assert_voxels_close(fit.beta[:, keep], beta[:, keep], ynorm[keep], rtol=1e-8)
    assert_voxels_close(fit.sigma2[keep], sigma2[keep], ynorm[keep] ** 2, rtol=1e-8)
    assert np.all(fit.sigma2 >= 0)


@given(
    seed=seeds,
    n=st.integers(10, 60),
    p=st.integers(2, 6),
    v=block_sizes,
    scale=scales,
    noise_model=st.sampled_from(["ols", "ar1"]),
    eps=st.sampled_from([1e-8, 1e-10]),
)
def test_near_collinear_design_finite_and_same_fitted_values(seed, n, p, v, scale, noise_model, eps):
    """A column equal to another + tiny noise: betas are ill-determined (not
    compared), but the outputs are finite and the fitted values (a projection,
    well defined) equal lstsq's."""
    assume(n >= p + 4)
    rng = np.random.default_rng(seed)
    X = random_design(rng, n, p, intercept=True)
    a, b = rng.choice(p, 2, replace=False)
    X = np.column_stack([X, X[:, a] + eps * rng.standard_normal(n)])
    del b
    Y = make_block(rng, X[:, :p], v, scale, n_constant=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit = K.fit_block(Y, X, noise_model, signal_scaling=False)
    for arr in fit:
        assert np.all(np.isfinite(arr))
    _, sigma2, label, fitted, rho, ols_rms = oracle_fit(Y, X, noise_model)
    ynorm = np.linalg.norm(Y, axis=0) / np.sqrt(n)
    # residuals are only accurate to ~eps * cond(X) * |y| here, so rho to about
    # that / |residuals|: skip labels within (a margin of) that of a bin edge,
    # and voxels whose residuals are rounding
    keep = np.ones(v, bool)
    if noise_model == "ar1":
        rho_err = np.finfo(float).eps * np.linalg.cond(X) * ynorm / np.maximum(ols_rms, 1e-300)
        keep = ~near_bin_edge(rho, tol=np.maximum(1e4 * rho_err, 1e-6)) & ~degenerate(ols_rms, ynorm, 1e-6)
    np.testing.assert_array_equal(fit.label[keep], label[keep])
    ours = np.stack([
        (oracle_whiten(X, fit.label[j]) if noise_model == "ar1" else X) @ fit.beta[:, j] for j in range(v)
    ], axis=1)
    # both solvers are backward stable: fitted values agree to ~eps * cond(X)
    # (1e-8 -> ~1e-7, 1e-10 -> ~1e-5), not to a fixed tolerance
    rtol = max(1e-7, 100 * np.finfo(float).eps * np.linalg.cond(X))
    assert_voxels_close(ours[:, keep], fitted[:, keep], ynorm[keep], rtol=rtol)
    assert_voxels_close(fit.sigma2[keep], sigma2[keep], ynorm[keep] ** 2, rtol=rtol)
    # the contrast statistics of such a fit are finite too
    covs, index = np.unique(fit.label, return_inverse=True)
    covs = np.stack([C.label_covariance(X, val).cov for val in covs])
    c = rng.standard_normal(p + 1)
    t = S.t_contrast(c, fit.beta, fit.sigma2, covs, index, fit.dof)
    for arr in (t.effect, t.variance, t.stat, t.p_value, t.z_score):
        assert np.all(np.isfinite(arr))


# ----------------------------------------------------------------------------- at most as many scans as columns
@given(
    seed=seeds,
    n=st.integers(1, 8),
    extra=st.integers(0, 4),
    v=block_sizes,
    noise_model=st.sampled_from(["ols", "ar1"]),
    scaling=st.sampled_from([0, False]),
)
def test_fit_block_with_at_most_as_many_scans_as_columns(seed, n, extra, v, noise_model, scaling):
    """Oracle: per-voxel minimum-norm ``lstsq`` (a Gaussian design of n <= p has rank n). dof 0,
    AR(1) labels 0 (zero residuals in exact arithmetic), dispersion RSS / (n - p): inf (n == p)
    or <= 0 and ~0 (n < p); t contrasts: the effect, and NaN statistics (dof 0)."""
    p = n + extra
    rng = np.random.default_rng(seed)
    X = random_design(rng, n, p, intercept=True)
    Y = make_block(rng, X, v, 1.0, n_constant=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # n == p: numpy's division by 0, as nilearn
        fit = K.fit_block(Y, X, noise_model, signal_scaling=scaling)
    Ys = Y if scaling is False else oracle_scale(Y)
    beta = np.linalg.lstsq(X, Ys, rcond=None)[0]
    assert fit.dof == 0
    np.testing.assert_array_equal(fit.label, 0.0)
    assert_voxels_close(fit.beta, beta, np.abs(beta).max(axis=0), rtol=1e-8)
    if n == p:
        assert np.all(np.isposinf(fit.sigma2) | np.isnan(fit.sigma2))
    else:
        assert np.all(fit.sigma2 <= 0)
        assert np.all(-fit.sigma2 <= 1e-20 * (np.abs(Ys).max(axis=0) ** 2 + 1))
    c = rng.standard_normal(p)
    res = S.t_contrast(c, fit.beta, fit.sigma2, C.label_covariance(X).cov, None, fit.dof)
    assert_voxels_close(res.effect[0], c @ beta, np.abs(c) @ np.abs(beta), rtol=1e-8)
    assert np.all(np.isnan(res.p_value)) and np.all(np.isnan(res.z_score))
    if n < p:
        assert np.all(np.isnan(res.variance) | (res.variance == 0))


@given(seed=seeds, n=st.integers(2, 40), v=st.integers(1, 30), alternation=st.floats(0, 1),
       bins=st.sampled_from([1, 10, 100, 1000]))
def test_ar1_labels_of_short_runs_lie_on_their_grid(seed, n, v, alternation, bins):
    """|rho| <= n / (n - 1): every label of a run of n scans is a value of ar1_grid(bins, n), at the
    row ar1_label_index gives, on both the moment and the exact path; the covariance table has a
    row per grid value."""
    from daskglm.kernels import ar1_moments as M

    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), np.linspace(-1, 1, n)])
    sign = (-1.0) ** np.arange(n)[:, None]
    Y = 100 + 10 * (alternation * sign * (1 + 0.2 * rng.standard_normal((n, v)))
                    + (1 - alternation) * rng.standard_normal((n, v)))
    rho = K.yule_walker(Y - Y.mean(axis=0), 1)[0]
    assert np.all(np.abs(rho) <= n / (n - 1) * (1 + 1e-12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = K.fit_block(Y, X, "ar1", bins=bins, signal_scaling=False)
    index = M.ar1_label_index(fit.label, bins, n)
    grid = M.ar1_grid(bins, n)
    np.testing.assert_array_equal(grid[index], fit.label)
    assert grid.size == 2 * M.ar1_half_width(bins, n) + 1 and M.ar1_half_width(bins, n) >= bins
    if n > bins + 1:
        assert M.ar1_half_width(bins, n) == bins
    if n <= 12:
        assert C.ar1_label_covariances(X, bins).shape == (grid.size, 2, 2)


# ----------------------------------------------------------------------------- contrasts by hand
def random_stats(rng, p, v, n_labels, n=40):
    X = random_design(rng, n, p, intercept=True)
    rhos = rng.uniform(-0.5, 0.9, n_labels)
    covs = np.stack([C.label_covariance(X, r).cov for r in rhos])
    beta = rng.normal(0, 3, (p, v))
    sigma2 = rng.uniform(0.1, 10, v)
    index = rng.integers(0, n_labels, v)
    return beta, sigma2, covs, index, K.residual_dof(X)


@given(seed=seeds, p=st.integers(1, 7), v=block_sizes, n_labels=st.integers(1, 4))
def test_t_contrast_equals_hand_computation(seed, p, v, n_labels):
    rng = np.random.default_rng(seed)
    beta, sigma2, covs, index, dof = random_stats(rng, p, v, n_labels)
    c = rng.standard_normal(p)
    res = S.t_contrast(c, beta, sigma2, covs, index, dof)
    for j in range(v):
        effect = c @ beta[:, j]
        variance = sigma2[j] * (c @ covs[index[j]] @ c)
        t = effect / np.sqrt(variance)
        np.testing.assert_allclose(res.effect[0, j], effect, rtol=1e-12, atol=1e-12 * np.abs(beta).max())
        np.testing.assert_allclose(res.variance[j], variance, rtol=1e-12)
        np.testing.assert_allclose(res.stat[j], t, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.p_value[j], sps.t.sf(t, dof), rtol=1e-8, atol=1e-300)
    assert res.dof == dof and res.stat_type == "t"
    assert np.all(np.isfinite(res.z_score))
    # z has the sign of t and is monotone in it
    assert np.all(np.sign(res.z_score) == np.sign(np.round(res.stat, 12)))


@given(seed=seeds, p=st.integers(1, 7), v=block_sizes, n_labels=st.integers(1, 4), data=st.data())
def test_f_contrast_equals_hand_computation(seed, p, v, n_labels, data):
    rng = np.random.default_rng(seed)
    q = data.draw(st.integers(1, p), label="q")
    beta, sigma2, covs, index, dof = random_stats(rng, p, v, n_labels)
    C = rng.standard_normal((q, p))  # full row rank almost surely
    res = S.f_contrast(C, beta, sigma2, covs, index, dof)
    for j in range(v):
        cb = C @ beta[:, j]
        ccc = C @ covs[index[j]] @ C.T
        F = cb @ np.linalg.solve(ccc, cb) / q / sigma2[j]
        np.testing.assert_allclose(res.stat[j], F, rtol=1e-7)
        np.testing.assert_allclose(res.variance[j], sigma2[j], rtol=1e-15)
        np.testing.assert_allclose(res.p_value[j], sps.f.sf(F, q, dof), rtol=1e-6, atol=1e-300)
    assert np.all(np.isfinite(res.z_score))
    if q == 1:  # F of a single row is t squared
        t = S.t_contrast(C[0], beta, sigma2, covs, index, dof)
        np.testing.assert_allclose(res.stat, t.stat**2, rtol=1e-9)


# ----------------------------------------------------------------------------- one run
@given(seed=seeds, p=st.integers(2, 6), v=block_sizes, stat_type=st.sampled_from(["t", "F"]))
def test_combine_runs_of_one_run_is_that_run(seed, p, v, stat_type):
    rng = np.random.default_rng(seed)
    beta, sigma2, covs, index, dof = random_stats(rng, p, v, 2)
    if stat_type == "t":
        run = S.t_contrast(rng.standard_normal(p), beta, sigma2, covs, index, dof)
    else:
        run = S.f_contrast(rng.standard_normal((2, p)), beta, sigma2, covs, index, dof)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "approximate fixed effects" warning for one run
        out = S.combine_runs([run])
    for name in ("effect", "variance", "stat", "p_value", "z_score"):
        np.testing.assert_array_equal(getattr(out, name), getattr(run, name), err_msg=name)
    assert out.dof == run.dof and out.stat_type == run.stat_type


@given(seed=seeds, v=block_sizes, q=st.integers(1, 3), weighted=st.booleans(), dof=st.integers(5, 300))
def test_fixed_effects_of_one_run_is_that_run(seed, v, q, weighted, dof):
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 5, (q, v)) if q > 1 else rng.normal(0, 5, v)
    variance = rng.uniform(0.01, 10, v)
    out = S.fixed_effects(effect[None], variance[None], [dof], precision_weighted=weighted)
    np.testing.assert_allclose(out.effect, effect, rtol=1e-14)
    np.testing.assert_allclose(out.variance, variance, rtol=1e-14)
    ref = S.contrast_stats(effect, variance, dof, "t" if q == 1 else "F")
    np.testing.assert_allclose(out.stat, ref.stat, rtol=1e-13)
    np.testing.assert_allclose(out.z_score, ref.z_score, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- nilearn as oracle
nilearn = pytest.importorskip("nilearn")
from nilearn.glm.contrasts import compute_contrast  # noqa: E402
from nilearn.glm.first_level import mean_scaling, run_glm  # noqa: E402


@settings(max_examples=12)
@given(
    seed=seeds,
    n=st.integers(20, 60),
    p=st.integers(2, 5),
    v=st.sampled_from([7, 13, 30]),
    scale=scales,
    n_constant=st.integers(0, 2),
    noise_model=st.sampled_from(["ols", "ar1"]),
    stat_type=st.sampled_from(["t", "F"]),
)
def test_finite_and_equal_where_nilearn_is(seed, n, p, v, scale, n_constant, noise_model, stat_type):
    """Designs with an intercept (nilearn's global-mean AR centring is then
    negligible, see daskglm.kernels.regression). Constant voxels are allowed; for them
    nilearn labels AR(1) as 1.0 and we label 0.0, but beta = sigma2 = 0 in
    both, so the statistics agree."""
    rng = np.random.default_rng(seed)
    X = random_design(rng, n, p, intercept=True)
    Y = make_block(rng, X, v, scale, n_constant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            labels, results = run_glm(mean_scaling(Y, 0)[0], X, noise_model=noise_model)
        except np.linalg.LinAlgError:  # nilearn's Yule-Walker solve fails (seed=521, n=22, p=2,
            reject()                   # v=13, n_constant=2, ar1): no oracle for this block
        fit = K.fit_block(Y, X, noise_model)
    con = rng.standard_normal(p) if stat_type == "t" else rng.standard_normal((min(2, p), p))
    values, index = np.unique(fit.label, return_inverse=True)
    covs = np.stack([C.label_covariance(X, val).cov for val in values])
    func = S.t_contrast if stat_type == "t" else S.f_contrast
    ours = func(con, fit.beta, fit.sigma2, covs, index, fit.dof)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = compute_contrast(labels, results, con, stat_type)
    Ys = oracle_scale(Y)
    _, _, _, _, rho, ols_rms = oracle_fit(Ys, X, "ar1")
    # values are compared except: labels at a bin edge (see near_bin_edge) and
    # constant voxels, whose statistics are ratios of rounding errors (~1e-14 /
    # ~1e-28) in both implementations; for those only finiteness is required
    keep = ~degenerate(ols_rms, np.linalg.norm(Ys, axis=0) / np.sqrt(n), 1e-9)
    if noise_model == "ar1":
        keep &= ~near_bin_edge(rho, 1e-6)
    pairs = [
        ("effect", ours.effect, np.atleast_2d(ref.effect_size())),
        ("stat", ours.stat, ref.stat()),
        ("p_value", ours.p_value, ref.p_value()),
        ("z_score", ours.z_score, ref.z_score()),
    ]
    for name, a, b in pairs:
        a, b = np.asarray(a, float), np.asarray(b, float)
        finite = np.isfinite(b)
        assert np.all(np.isfinite(a[..., finite])), f"{name}: non-finite where nilearn is finite"
        sel = finite & keep
        np.testing.assert_allclose(
            a[..., sel], b[..., sel], rtol=1e-6, atol=1e-9 * max(np.abs(b[..., sel]).max(initial=0), 1.0),
            err_msg=name,
        )

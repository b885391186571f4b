"""Tests of daskglm.kernels.regression / daskglm.kernels.stats against nilearn 0.14 and
independent per-voxel least-squares oracles (the label covariances of
daskglm.kernels.covariances are checked here against nilearn's fits too; their own
tests are in tests/kernels/test_covariances.py)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from helpers import RTOL, N, P, V, assert_close, dataset, simulate
from hypothesis import given, settings
from hypothesis import strategies as st

from daskglm.kernels import covariances as C
from daskglm.kernels import regression as K
from daskglm.kernels import scaling as Sc
from daskglm.kernels import stats as S

nilearn = pytest.importorskip("nilearn")
from nilearn.glm.contrasts import (  # noqa: E402
    Contrast,
    _compute_fixed_effects_params,
    compute_contrast,
    compute_fixed_effect_contrast,
)
from nilearn.glm.first_level import mean_scaling, run_glm  # noqa: E402
from nilearn.glm.first_level.first_level import _yule_walker  # noqa: E402
from nilearn.glm.regression import ARModel  # noqa: E402

from daskglm.kernels import ar1_moments as M  # noqa: E402


# ----------------------------------------------------------------------------- data
# The simulated block (``dataset``: AR(1) noise on a 6-column design, N scans x V voxels) is in
# tests/helpers.py, shared with the other kernels' tests.
@functools.cache
def nilearn_fit(seed: int, noise_model: str) -> tuple[np.ndarray, dict]:
    Y, X = dataset(seed)
    return run_glm(mean_scaling(Y, 0)[0], X, noise_model=noise_model)


def assemble(labels: np.ndarray, results: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel beta (p, v) and dispersion (v,) from nilearn's per-label results."""
    first = next(iter(results.values()))
    beta = np.zeros((first.theta.shape[0], labels.size))
    sigma2 = np.zeros(labels.size)
    for key, res in results.items():
        mask = labels == key
        beta[:, mask] = res.theta
        sigma2[mask] = res.dispersion
    return beta, sigma2


def covariance_stack(X: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Client-side: one normalised covariance per distinct AR(1) label."""
    values, index = np.unique(label, return_inverse=True)
    covs = np.stack([C.label_covariance(X, val).cov for val in values])
    return covs, index


# ----------------------------------------------------------------------------- fits vs nilearn
@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_fit_block_matches_run_glm(noise_model):
    Y, X = dataset()
    labels, results = nilearn_fit(1, noise_model)
    fit = K.fit_block(Y, X, noise_model)
    np.testing.assert_array_equal(fit.label, labels.astype(float))
    if noise_model == "ar1":
        assert len(results) > 20  # many distinct labels: a real test of the grouping
    for key, res in results.items():
        mask = labels == key
        assert_close(fit.beta[:, mask], res.theta)
        assert_close(fit.sigma2[mask], res.dispersion)
        cov = C.label_covariance(X, float(key))
        assert_close(cov.cov, res.model.normalized_cov_beta)
        assert cov.dof == res.df_residuals == fit.dof
    beta, sigma2 = assemble(labels, results)
    assert_close(fit.beta, beta)
    assert_close(fit.sigma2, sigma2)


def test_ols_matches_per_voxel_lstsq():
    Y, X = dataset()
    Ys, _ = Sc.scale_signal(Y, 0)
    fit = K.ols(Ys, X)
    for j in range(0, V, 37):
        b, rss, rank, _ = np.linalg.lstsq(X, Ys[:, j], rcond=None)
        assert_close(fit.beta[:, j], b)
        assert_close(fit.sigma2[j], rss[0] / (N - P))
        assert_close(fit.residuals[:, j], Ys[:, j] - X @ b)
    assert fit.dof == N - P


def test_ar1_matches_hand_whitened_lstsq():
    Y, X = dataset()
    Ys, _ = Sc.scale_signal(Y, 0)
    fit = K.fit_block(Y, X, "ar1")
    for j in range(0, V, 23):
        rho = fit.label[j]
        W = np.eye(N) - rho * np.eye(N, k=-1)  # row 0 left unchanged
        b, rss, _, _ = np.linalg.lstsq(W @ X, W @ Ys[:, j], rcond=None)
        assert_close(fit.beta[:, j], b)
        assert_close(fit.sigma2[j], rss[0] / (N - P))


def test_ar1_labels_grid():
    rho = np.array([-0.239, -0.004, 0.0, 0.004, 0.5, 0.999, 0.12])
    expected = np.array([(r * 100).astype(int) * 1.0 / 100 for r in rho])
    got = K.ar1_labels(rho, 100)
    np.testing.assert_array_equal(got, expected)
    assert not np.signbit(got).any() or np.all(got[np.signbit(got)] < 0)
    assert not np.signbit(got[1])  # trunc(-0.4) / 100 is +0.0, as nilearn's int cast
    np.testing.assert_array_equal(K.ar1_labels(rho, 10), np.trunc(rho * 10) / 10 + 0.0)


# ----------------------------------------------------------------------------- Yule-Walker
def test_yule_walker_global_mean_negligible_with_intercept():
    Y, X = dataset()
    resid = K.ols(Sc.scale_signal(Y, 0)[0], X).residuals
    assert abs(resid.mean()) < 1e-12
    for order in (1, 2, 3):
        ref = _yule_walker(resid.T, order).T
        ours = K.yule_walker(resid, order)  # no centring
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
        exact = K.yule_walker(resid, order, center=resid.mean())
        np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-13)
    rho = K.yule_walker(resid, 1)[0]
    np.testing.assert_array_equal(K.ar1_labels(rho), K.ar1_labels(_yule_walker(resid.T, 1)[:, 0]))


def test_yule_walker_global_mean_is_block_dependent_without_intercept():
    Y, X = simulate(seed=4, intercept=False)
    resid = K.ols(Y, X).residuals  # no scaling, no intercept: residual means far from 0
    whole = _yule_walker(resid.T, 1)[:, 0]
    halves = np.concatenate([_yule_walker(resid[:, :150].T, 1)[:, 0], _yule_walker(resid[:, 150:].T, 1)[:, 0]])
    assert np.abs(whole - halves).max() > 1e-4  # nilearn's own numbers depend on the voxel partition
    assert np.any(K.ar1_labels(whole) != K.ar1_labels(halves))  # ... down to the AR(1) labels
    center = resid.mean()
    ours = np.hstack([K.yule_walker(resid[:, s], 1, center) for s in (slice(0, 150), slice(150, None))])
    assert_close(ours[0], whole, rtol=1e-12)  # a global centre passed to every block reproduces nilearn
    assert np.abs(K.yule_walker(resid, 1)[0] - whole).max() > 1e-4  # and is needed here


def test_yule_walker_zero_residuals_give_zero_coefficients():
    resid = np.zeros((N, 3))
    resid[:, 1] = np.random.default_rng(0).standard_normal(N)
    for order in (1, 2):
        coef = K.yule_walker(resid, order)
        assert np.all(np.isfinite(coef))
        np.testing.assert_array_equal(coef[:, [0, 2]], 0.0)
    with pytest.raises(np.linalg.LinAlgError):
        _yule_walker(np.zeros((1, N)), 1)  # nilearn fails on such a voxel alone


# ----------------------------------------------------------------------------- block independence
def fit_partition(Y: np.ndarray, X: np.ndarray, blocks: list[np.ndarray], noise_model: str) -> K.BlockFit:
    beta = np.full((X.shape[1], Y.shape[1]), np.nan)
    sigma2 = np.full(Y.shape[1], np.nan)
    label = np.full(Y.shape[1], np.nan)
    for cols in blocks:
        fit = K.fit_block(Y[:, cols], X, noise_model)
        beta[:, cols], sigma2[cols], label[cols] = fit.beta, fit.sigma2, fit.label
    return K.BlockFit(beta, sigma2, label, fit.dof)


def assert_same_fit(a: K.BlockFit, b: K.BlockFit) -> None:
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-12, atol=1e-12 * np.abs(b.beta).max())
    np.testing.assert_allclose(a.sigma2, b.sigma2, rtol=1e-12)
    assert a.dof == b.dof


@functools.cache
def whole_fit(noise_model: str) -> K.BlockFit:
    Y, X = dataset()
    return K.fit_block(Y, X, noise_model)


@settings(max_examples=25)
@given(
    noise_model=st.sampled_from(["ols", "ar1"]),
    cuts=st.sets(st.integers(1, V - 1), max_size=12),
    permute=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_voxel_partition_gives_the_same_fit(noise_model, cuts, permute, seed):
    Y, X = dataset()
    order = np.random.default_rng(seed).permutation(V) if permute else np.arange(V)
    blocks = np.split(order, sorted(cuts))
    assert_same_fit(fit_partition(Y, X, blocks, noise_model), whole_fit(noise_model))


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_single_voxel_blocks_and_single_label_block(noise_model):
    Y, X = dataset()
    whole = whole_fit(noise_model)
    singles = [np.array([j]) for j in range(V)]
    assert_same_fit(fit_partition(Y, X, singles, noise_model), whole)
    values, counts = np.unique(whole.label, return_counts=True)
    shared = np.flatnonzero(whole.label == values[counts.argmax()])
    assert shared.size > 5
    rest = np.setdiff1d(np.arange(V), shared)
    assert_same_fit(fit_partition(Y, X, [shared, rest], noise_model), whole)


# ----------------------------------------------------------------------------- contrasts
def our_contrast(fit: K.BlockFit, X: np.ndarray, con: np.ndarray, stat_type: str) -> S.ContrastStats:
    covs, index = covariance_stack(X, fit.label)
    func = S.t_contrast if stat_type == "t" else S.f_contrast
    return func(con, fit.beta, fit.sigma2, covs, index, fit.dof)


def assert_contrast_equal(ours: S.ContrastStats, ref: Contrast, rtol: float = RTOL) -> None:
    assert_close(ours.effect, np.atleast_2d(ref.effect_size()), rtol)
    assert_close(ours.variance, ref.effect_variance(), rtol)
    assert_close(ours.stat, ref.stat(), rtol)
    assert_close(ours.p_value, ref.p_value(), rtol)
    assert_close(ours.z_score, ref.z_score(), rtol)
    assert ours.dof == ref.dof
    assert ours.stat_type == ref.stat_type


CONTRASTS = {
    "t": [np.eye(P)[1], np.array([0, 1, -1, 0, 0, 0.0]), np.array([0, 0.5, 0.5, 1, 0, 0.0])],
    "F": [np.eye(P)[[2]], np.eye(P)[1:4], np.eye(P)[1:6], np.array([[0, 1, -1, 0, 0, 0], [0, 0, 1, -1, 0, 0.0]])],
}


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
@pytest.mark.parametrize("stat_type", ["t", "F"])
def test_contrasts_match_compute_contrast(noise_model, stat_type):
    Y, X = dataset()
    labels, results = nilearn_fit(1, noise_model)
    fit = K.fit_block(Y, X, noise_model)
    for con in CONTRASTS[stat_type]:
        ref = compute_contrast(labels, results, con, stat_type)
        ours = our_contrast(fit, X, con, stat_type)
        assert ours.effect.shape == (1 if stat_type == "t" else con.shape[0], V)
        assert_contrast_equal(ours, ref)


def test_short_contrasts_padded_with_nilearn_warning_and_long_rejected():
    Y, X = dataset()
    fit = whole_fit("ar1")
    labels, results = nilearn_fit(1, "ar1")
    msg = f"t contrasts should be of length P={P}, but it has length 4. The rest of the contrast was padded with zeros."
    with pytest.warns(UserWarning) as rec:
        ours = our_contrast(fit, X, np.array([0, 1, 0, -1.0]), "t")
    assert str(rec[0].message) == msg
    with pytest.warns(UserWarning, match="padded with zeros"):
        ref = compute_contrast(labels, results, np.array([0, 1, 0, -1.0]), "t")
    assert_contrast_equal(ours, ref)
    with pytest.warns(UserWarning) as rec:
        ours = our_contrast(fit, X, np.eye(4)[1:3], "F")
    assert str(rec[0].message) == (
        f"F contrasts should have {P} columns, but it has only 4. The rest of the contrast was padded with zeros."
    )
    with pytest.warns(UserWarning, match="padded with zeros"):
        ref = compute_contrast(labels, results, np.eye(4)[1:3], "F")
    assert_contrast_equal(ours, ref)
    with pytest.warns(UserWarning, match="padded"):
        np.testing.assert_array_equal(S.pad_contrast([1, 2], 4), [1, 2, 0, 0])
    np.testing.assert_array_equal(S.pad_contrast(np.ones((2, 4)), 4), np.ones((2, 4)))
    with pytest.raises(ValueError, match=rf"t contrasts should be of length P={P}, but it has length 8\."):
        our_contrast(fit, X, np.ones(8), "t")
    with pytest.raises(ValueError, match=rf"F contrasts should have {P} columns, but it has 8\."):
        our_contrast(fit, X, np.ones((2, 8)), "F")
    with pytest.raises(ValueError, match="only one row"):
        our_contrast(fit, X, np.ones((2, P)), "t")


@pytest.mark.parametrize("stat_type", ["t", "F"])
def test_combine_runs_matches_fixed_effect_contrast(stat_type):
    runs = [(dataset(1), nilearn_fit(1, "ar1")), (dataset(2), nilearn_fit(2, "ar1"))]
    con = CONTRASTS[stat_type][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = compute_fixed_effect_contrast([r[1][0] for r in runs], [r[1][1] for r in runs], [con, con], stat_type)
    per_run = [our_contrast(K.fit_block(Y, X, "ar1"), X, con, stat_type) for (Y, X), _ in runs]
    if stat_type == "F":
        with pytest.warns(UserWarning, match="approximate fixed effects on F"):
            ours = S.combine_runs(per_run)
    else:
        ours = S.combine_runs(per_run)
    assert ours.dof == 2 * per_run[0].dof
    assert_contrast_equal(ours, ref)
    other = "F" if stat_type == "t" else "t"
    mismatched = our_contrast(whole_fit("ar1"), dataset()[1], CONTRASTS[other][0], other)
    with pytest.raises(ValueError, match="consistent type"):
        S.combine_runs([per_run[0], mismatched])


@pytest.mark.parametrize("precision_weighted", [False, True])
@pytest.mark.parametrize("dofs", [None, [80, 95, 120]])
def test_fixed_effects_matches_nilearn(precision_weighted, dofs):
    rng = np.random.default_rng(5)
    effects = rng.normal(0, 2, (3, V))
    variances = rng.uniform(0.1, 3, (3, V))
    variances[:, :3] = [[0.0], [1e-20], [2.0]]  # floored at 1e-16
    ref = _compute_fixed_effects_params(effects, variances, precision_weighted, [100] * 3 if dofs is None else dofs)
    ours = S.fixed_effects(effects, variances, dofs, precision_weighted)
    for a, b in zip(ours, ref, strict=True):
        assert_close(a, b)


def test_fixed_effects_default_dofs_through_compute_fixed_effects():
    nib = pytest.importorskip("nibabel")
    from nilearn.glm.contrasts import compute_fixed_effects

    rng = np.random.default_rng(6)
    shape = (5, 6, 10)
    effects, variances = rng.normal(0, 2, (2, V)), rng.uniform(0.1, 3, (2, V))
    mask = nib.Nifti1Image(np.ones(shape, np.int8), np.eye(4))

    def img(a):
        return nib.Nifti1Image(a.reshape(shape), np.eye(4))

    ref = compute_fixed_effects([img(e) for e in effects], [img(v) for v in variances], mask=mask)
    ours = S.fixed_effects(effects, variances)
    for a, b in zip(ours, ref, strict=True):
        assert_close(a, b.get_fdata().ravel())


def test_fixed_effects_f_statistic():
    rng = np.random.default_rng(7)
    effects, variances = rng.normal(0, 2, (2, 3, 40)), rng.uniform(0.1, 3, (2, 40))
    ref = _compute_fixed_effects_params(effects, variances, False, [90, 90])
    ours = S.fixed_effects(effects, variances, [90, 90])
    for a, b in zip(ours, ref, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize(
    ("effect", "variance", "dof", "stat_type"),
    [(40.0, 1.0, 180, "t"), (-40.0, 1.0, 180, "t"), (1e4, 1.0, 180, "t"), (-1e4, 1.0, 180, "t"),
     (3.0, 1.0, 1e12, "t"), (0.0, 0.0, 50, "t"), (60.0, 1.0, 180, "F"), (0.0, 0.0, 180, "F")],
)
def test_extreme_statistics_z_finite_and_equal_to_nilearn(effect, variance, dof, stat_type):
    e, v = np.array([[effect]]), np.array([variance])
    ref = Contrast(effect=e if stat_type == "F" else e[0], variance=v, dof=dof, stat_type=stat_type)
    ours = S.contrast_stats(e, v, dof, stat_type)
    assert np.all(np.isfinite(ours.z_score))
    assert_close(ours.z_score, ref.z_score(), rtol=1e-12)
    assert_close(ours.p_value, ref.p_value(), rtol=1e-12)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_constant_and_zero_voxels_have_no_nan():
    Y, X = dataset()
    Y = Y[:, :40].copy()
    Y[:, 0] = 750.0  # constant: scaled to exactly 0, residuals exactly 0
    Y[:, 1] = 0.0  # all zero: mean floored at 1, scaled to -100
    for noise_model in ("ols", "ar1"):
        with pytest.warns(UserWarning, match="Mean values of 0"):
            Ys, _ = mean_scaling(Y, 0)
        labels, results = run_glm(Ys, X, noise_model=noise_model)
        with pytest.warns(UserWarning, match="Mean values of 0"):
            fit = K.fit_block(Y, X, noise_model)
        for arr in fit:
            assert np.all(np.isfinite(arr))
        assert fit.label[0] == 0.0  # nilearn: 1.0, an artefact of its global-mean centring
        if noise_model == "ar1":
            assert labels[0] == "1.0"
        np.testing.assert_array_equal(fit.beta[:, 0], 0.0)
        assert fit.sigma2[0] == 0.0
        beta, sigma2 = assemble(labels, results)
        assert_close(fit.beta[:, 2:], beta[:, 2:])
        assert_close(fit.beta[0, 1], -100.0, rtol=1e-12)
        assert_close(fit.sigma2[2:], sigma2[2:])
        for stat_type in ("t", "F"):
            for con in CONTRASTS[stat_type]:
                ours = our_contrast(fit, X, con, stat_type)
                for arr in ours[:5]:
                    assert np.all(np.isfinite(arr))
                ref = compute_contrast(labels, results, con, stat_type)
                sub = slice(2, None)
                assert_close(ours.stat[sub], ref.stat()[sub])
                assert_close(ours.z_score[sub], ref.z_score()[sub])
                assert np.all(np.isfinite(ref.z_score()[:1]))
                assert_close(ours.z_score[0], ref.z_score()[0])  # constant voxel: same z as nilearn


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_singular_design_fits_with_pinv(noise_model):
    Y, X = dataset()
    Xs = np.column_stack([X, X[:, 2]])  # duplicate column
    Ys = mean_scaling(Y, 0)[0]
    labels, results = run_glm(Ys, Xs, noise_model=noise_model)
    fit = K.fit_block(Y, Xs, noise_model)
    np.testing.assert_array_equal(fit.label, labels.astype(float))
    beta, sigma2 = assemble(labels, results)
    assert_close(fit.beta, beta)
    assert_close(fit.sigma2, sigma2)  # nilearn divides by n - n_columns, not n - rank
    assert fit.dof == N - P == next(iter(results.values())).df_residuals
    assert_close(fit.beta[2], fit.beta[-1])  # minimum-norm split between the copies
    covs, index = covariance_stack(Xs, fit.label)
    diff = np.zeros(P + 1)
    diff[2], diff[-1] = 1, -1
    res = S.t_contrast(diff, fit.beta, fit.sigma2, covs, index, fit.dof)
    assert all(np.all(np.isfinite(a)) for a in res[:5])
    f = S.f_contrast(np.eye(P + 1)[[2, P]], fit.beta, fit.sigma2, covs, index, fit.dof)
    assert all(np.all(np.isfinite(a)) for a in f[:5])  # singular c cov c': nilearn's inv fails


def test_float32_block_close_to_float64():
    Y, X = dataset()
    f64 = K.fit_block(Y, X, "ar1")
    f32 = K.fit_block(Y.astype(np.float32), X.astype(np.float32), "ar1")
    assert f32.beta.dtype == np.float64 and f32.sigma2.dtype == np.float64
    same = f32.label == f64.label
    assert same.mean() > 0.95
    np.testing.assert_allclose(f32.sigma2[same], f64.sigma2[same], rtol=1e-4)


def test_two_pass_path_with_ar1_labels_equals_fit_block_and_inputs_untouched():
    Y, X = dataset()
    Y0, X0 = Y.copy(), X.copy()
    fit = whole_fit("ar1")
    coeffs = K.ar_coefficients_block(Y, X, 1)
    np.testing.assert_array_equal(K.ar1_labels(coeffs[0]), fit.label)
    values, index = np.unique(fit.label, return_inverse=True)
    refit = K.refit_block(Y, X, index, values[:, None], signal_scaling=0)
    assert_close(refit.beta, fit.beta, rtol=1e-12)
    assert_close(refit.sigma2, fit.sigma2, rtol=1e-12)
    np.testing.assert_array_equal(refit.label, index)
    K.fit_block(Y, X, "ols", signal_scaling=False)
    np.testing.assert_array_equal(Y, Y0)
    np.testing.assert_array_equal(X, X0)


def test_errors_quote_values():
    Y, X = dataset()
    with pytest.raises(ValueError, match="ar_coefficients_block"):
        K.fit_block(Y, X, "ar2")
    with pytest.raises(ValueError, match="You provided arx"):
        K.fit_block(Y, X, "arx")
    with pytest.raises(ValueError, match="noise_model=wls"):
        K.fit_block(Y, X, "wls")
    with pytest.raises(ValueError, match=r"Y \(100, 300\) and X \(99, 6\)"):
        K.ols(Y, X[:99])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        S.t_contrast(np.eye(P)[1], np.zeros((P, 2)), np.ones(2), np.zeros((3, P, P)), np.array([0, 3]), 10)


# ----------------------------------------------------------------------------- AR(2): two passes
def test_ar2_two_pass_matches_run_glm():
    from sklearn.cluster import KMeans

    Y, X = dataset()
    bins = 10
    labels, results = run_glm(mean_scaling(Y, 0)[0], X, noise_model="ar2", bins=bins, random_state=0)
    blocks = [slice(0, 120), slice(120, None)]
    coeffs = np.hstack([K.ar_coefficients_block(Y[:, s], X, 2) for s in blocks])  # pass 1
    kmeans = KMeans(n_clusters=min(bins, V), n_init=10, random_state=0).fit(coeffs.T)  # client
    index, coeffs_per_label, names = C.merge_ar_clusters(kmeans.cluster_centers_, kmeans.labels_)
    fits = [K.refit_block(Y[:, s], X, index[s], coeffs_per_label, signal_scaling=0) for s in blocks]  # pass 2
    np.testing.assert_array_equal(names[index], labels)
    np.testing.assert_array_equal(names, sorted(results))
    beta, sigma2 = assemble(labels, results)
    assert_close(np.hstack([f.beta for f in fits]), beta)
    assert_close(np.hstack([f.sigma2 for f in fits]), sigma2)
    for i, name in enumerate(names):
        assert_close(C.label_covariance(X, coeffs_per_label[i]).cov, results[name].model.normalized_cov_beta)


# ----------------------------------------------------------------------------- at most as many scans as columns
def short_design(n: int, p: int, rank: int | None = None, seed: int = 0) -> np.ndarray:
    """An intercept and Gaussian columns; ``rank < min(n, p)``: the last columns repeat the first ones."""
    rng = np.random.default_rng(seed)
    rank = min(n, p) if rank is None else rank
    base = rng.standard_normal((n, rank))
    base[:, 0] = 1.0
    return np.column_stack([base, base[:, : p - rank] * 2.0])


def short_data(n: int, v: int = 9, seed: int = 1) -> np.ndarray:
    """Random voxels and an all-zero one (column 0: a zero residual in both implementations)."""
    Y = np.random.default_rng(seed).standard_normal((n, v)) * 10.0
    Y[:, 0] = 0.0
    return Y


def nilearn_run(Y: np.ndarray, X: np.ndarray, noise_model: str) -> tuple[np.ndarray, dict, list[str]]:
    """nilearn's run_glm, with the messages of the RuntimeWarnings it gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels, results = run_glm(Y, X, noise_model=noise_model)
    return labels, results, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def assert_same_nonfinite_and_close(ours: np.ndarray, ref: np.ndarray, rtol: float, name: str) -> None:
    """NaN and +-inf where nilearn has them; the finite values close."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{name}: NaN")
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref), err_msg=f"{name}: +inf")
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref), err_msg=f"{name}: -inf")
    finite = np.isfinite(ref)
    assert_close(ours[finite], ref[finite], rtol)


SHORT_CASES = [(5, 7, None), (7, 7, None), (6, 6, None), (1, 2, None), (5, 6, 3), (6, 8, 4)]


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
@pytest.mark.parametrize("n, p, rank", SHORT_CASES)
def test_fewer_scans_than_columns_fit_as_run_glm(n, p, rank, noise_model):
    """nilearn fits designs with n <= p: the minimum-norm beta, df_residuals n - rank, the
    dispersion RSS / (n - p): inf (nan for the zero voxel) for n == p with numpy's RuntimeWarning,
    <= 0 for n < p (rounding, ~1e-28, when rank == n; a genuine negative value otherwise)."""
    X, Y = short_design(n, p, rank), short_data(n)
    labels, results, their_warnings = nilearn_run(Y, X, noise_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = K.fit_block(Y, X, noise_model, signal_scaling=False)
    ours_warned = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    divide = "divide by zero encountered in divide"
    assert (divide in ours_warned) == (divide in their_warnings) == (n == p)
    dof = n - np.linalg.matrix_rank(X)
    assert fit.dof == dof == next(iter(results.values())).df_residuals
    assert fit.label[0] == 0.0  # the zero voxel: nilearn labels it from its global mean, we do not
    nilearn_label = np.array([float(lab) for lab in labels])
    if noise_model == "ar1" and dof == 0:
        # residuals zero in exact arithmetic: nilearn's labels come from their rounding, ours are 0
        np.testing.assert_array_equal(fit.label, 0.0)
    else:
        np.testing.assert_array_equal(fit.label[1:], nilearn_label[1:])
    beta, sigma2 = assemble(labels, results)
    # with rank == n the minimum-norm solution is the same for every whitening: nilearn's beta
    assert_close(fit.beta, beta, rtol=1e-9)
    if n == p:
        assert np.isnan(fit.sigma2[0]) and np.all(np.isposinf(fit.sigma2[1:]))
        assert_same_nonfinite_and_close(fit.sigma2, sigma2, 1e-9, "sigma2")
    elif dof == 0:
        scale = np.abs(Y).max() ** 2
        assert np.all(fit.sigma2 <= 0) and np.all(sigma2 <= 0)
        assert np.all(np.abs(fit.sigma2) < 1e-20 * scale) and np.all(np.abs(sigma2) < 1e-20 * scale)
    else:
        assert np.all(fit.sigma2[1:] < 0)
        assert_close(fit.sigma2, sigma2, rtol=1e-9)


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
@pytest.mark.parametrize("stat_type", ["t", "F"])
@pytest.mark.parametrize("n, p, rank", SHORT_CASES)
def test_fewer_scans_than_columns_contrasts_as_compute_contrast(n, p, rank, noise_model, stat_type):
    """The effect of nilearn (the minimum-norm solution's), and its NaN: t variance NaN (the sqrt
    of a negative variance) or inf (n == p), stat NaN or 0, p-value and z NaN with dof 0; F
    variance = the dispersion, F stat = |effect|^2 / q / 1e-50 for n < p."""
    X, Y = short_design(n, p, rank), short_data(n)
    labels, results, _ = nilearn_run(Y, X, noise_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = K.fit_block(Y, X, noise_model, signal_scaling=False)
    dof = fit.dof
    con = np.eye(p)[1] if stat_type == "t" else np.eye(p)[[1, min(2, p - 1)]] if min(n, p) > 2 else np.eye(p)[[1]]
    ours = our_contrast(fit, X, con, stat_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = compute_contrast(labels, results, con, stat_type)
        stat, p_value, z = ref.stat(), ref.p_value(), ref.z_score()
        if stat_type == "F" and noise_model == "ar1" and dof == 0:
            # an F effect depends on the label's covariance: our labels are 0 (an AR(1) of label 0
            # is OLS), nilearn's come from the rounding of its residuals; so does the F stat
            # |effect|^2 / q / 1e-50; the p-values and z (NaN) do not
            ols_ref = compute_contrast(*run_glm(Y, X, noise_model="ols"), con, stat_type)
            np.testing.assert_array_equal(np.isnan(stat), np.isnan(ols_ref.stat()))
            ref.effect, stat = ols_ref.effect_size(), ols_ref.stat()
    assert_close(ours.effect, np.atleast_2d(ref.effect_size()), rtol=1e-9)
    keep = slice(1, None)  # the zero voxel: 0 / 0 in both, nilearn's sd**2 of -0.0 is +0.0
    variance = ref.effect_variance()
    if dof == 0 and n < p:
        if stat_type == "t":
            assert np.all(np.isnan(ours.variance[keep])) and np.all(np.isnan(variance[keep]))
        else:  # the dispersion: rounding
            assert np.all(ours.variance <= 0) and np.all(variance <= 0)
    elif noise_model == "ols" or dof > 0:
        assert_same_nonfinite_and_close(ours.variance[keep], variance[keep], 1e-9, "variance")
    assert_same_nonfinite_and_close(ours.stat[keep], stat[keep], 1e-8, "stat")
    assert_same_nonfinite_and_close(ours.p_value, p_value, 1e-8, "p_value")
    assert_same_nonfinite_and_close(ours.z_score, z, 1e-8, "z_score")
    if dof == 0:
        assert np.all(np.isnan(ours.p_value)) and np.all(np.isnan(ours.z_score))
    assert ours.dof == ref.dof == dof


@pytest.mark.parametrize("stat_type", ["t", "F"])
@pytest.mark.parametrize("short", [(5, 7), (7, 7)])
def test_fixed_effects_over_a_short_run_and_a_long_one(short, stat_type):
    """nilearn's multi-run sum with a run of dof 0: t variances NaN + v = NaN (n < p), inf + v =
    inf (n == p: stat 0, p 0.5, z 0 with the other run's dof); F variances are dispersions."""
    n, p = short
    Y_long, X_long = simulate(seed=3, n=60, v=9)
    X_long = np.column_stack([X_long, np.random.default_rng(5).standard_normal((60, p - X_long.shape[1]))])
    runs = [(short_data(n), short_design(n, p)), (Y_long - Y_long.mean(axis=0), X_long)]
    con = np.eye(p)[1] if stat_type == "t" else np.eye(p)[1:3]
    fitted = [nilearn_run(Y, X, "ols")[:2] for Y, X in runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = compute_fixed_effect_contrast([f[0] for f in fitted], [f[1] for f in fitted], [con, con], stat_type)
        per_run = [our_contrast(K.fit_block(Y, X, "ols", signal_scaling=False), X, con, stat_type) for Y, X in runs]
        ours = S.combine_runs(per_run)
        stat, p_value, z = ref.stat(), ref.p_value(), ref.z_score()
    assert ours.dof == ref.dof == 60 - p
    keep = slice(1, None)
    assert_close(ours.effect, np.atleast_2d(ref.effect_size()), rtol=1e-9)
    if stat_type == "t" or n == p:
        assert_same_nonfinite_and_close(ours.variance[keep], ref.effect_variance()[keep], 1e-9, "variance")
    for name, a, b in (("stat", ours.stat, stat), ("p", ours.p_value, p_value), ("z", ours.z_score, z)):
        assert_same_nonfinite_and_close(a[keep], b[keep], 1e-8, name)
    if stat_type == "t":
        assert np.all(np.isnan(ours.z_score[keep])) if n < p else np.all(ours.z_score[keep] == 0)
    else:  # the short run's dispersion (~0, or inf for n == p) plus the long run's
        assert np.all(np.isfinite(ours.z_score[keep]))


def test_yule_walker_with_at_most_order_scans_gives_nilearns_nan():
    """nilearn's lag-n autocovariance of n scans is 0 / 0: NaN coefficients (for AR(1) of one scan
    its label is then the integer cast of NaN, for AR(p > 1) its KMeans fails)."""
    rng = np.random.default_rng(0)
    for n, order in ((1, 1), (1, 2), (2, 2), (2, 3), (3, 3)):
        resid = rng.standard_normal((n, 5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = _yule_walker(resid.T, order).T
        ours = K.yule_walker(resid, order, center=resid.mean())
        assert np.all(np.isnan(ref)) and np.all(np.isnan(ours)), (n, order)
    np.testing.assert_array_equal(K.yule_walker(np.zeros((1, 3)), 1), 0.0)  # zero residuals: 0


def test_ar1_of_one_scan_is_its_ols_fit():
    """One scan: nilearn's AR(1) label is int64-min / bins (NaN cast), whitening one row changes
    nothing, so the fit is OLS's; ours has label 0 and the same numbers."""
    X, Y = short_design(1, 2), short_data(1)[:, 1:]
    labels, results, _ = nilearn_run(Y, X, "ar1")
    assert float(labels[0]) < -1e15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = K.fit_block(Y, X, "ar1", signal_scaling=False)
    np.testing.assert_array_equal(fit.label, 0.0)
    beta, sigma2 = assemble(labels, results)
    assert_close(fit.beta, beta, rtol=1e-12)
    assert np.all(fit.sigma2 <= 0) and fit.dof == 0
    np.testing.assert_array_equal(K.whiten(X, [0.5, 0.2]), X)  # orders beyond the scans whiten nothing
    np.testing.assert_array_equal(ARModel(X, 0.5).whiten(X), X)


# ----------------------------------------------------------------------------- AR(1) labels beyond +-1
def short_run(n: int = 8, v: int = 400, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A short run with strongly alternating noise: nilearn's rho reaches below -1 (|rho| <= n / (n - 1))."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), np.linspace(-1, 1, n)])
    alternating = (-1.0) ** np.arange(n)[:, None]
    Y = 1000 + 20 * alternating * (1 + 0.3 * rng.standard_normal((n, v))) + 4 * rng.standard_normal((n, v))
    return Y, X


@pytest.mark.parametrize("n", [5, 8, 12])
def test_ar1_labels_beyond_one_as_run_glm(n):
    """Short runs: nilearn's labels go beyond -1 (unclipped, e.g. '-1.2'); the labels, fits and
    contrasts (covariances on the grid of ar1_half_width rows) equal nilearn's."""
    Y, X = short_run(n)
    labels, results = run_glm(mean_scaling(Y, 0)[0], X, noise_model="ar1")
    values = labels.astype(float)
    assert values.min() < -1 and values.min() >= -n / (n - 1)
    fit = K.fit_block(Y, X, "ar1")
    np.testing.assert_array_equal(fit.label, values)
    beta, sigma2 = assemble(labels, results)
    assert_close(fit.beta, beta, rtol=1e-9)
    assert_close(fit.sigma2, sigma2, rtol=1e-9)
    half = M.ar1_half_width(100, n)
    assert half == (100 * n) // (n - 1) > 100
    covs = C.ar1_label_covariances(X, 100)
    index = M.ar1_label_index(fit.label, 100, n)
    assert covs.shape == (2 * half + 1, 2, 2) and index.min() >= 0 and index.max() < covs.shape[0]
    np.testing.assert_array_equal(M.ar1_grid(100, n)[index], fit.label)
    for key, res in results.items():
        assert_close(covs[index[labels == key][0]], res.model.normalized_cov_beta, rtol=1e-9)
    for con, stat_type in ((np.array([0.0, 1.0]), "t"), (np.eye(2), "F")):
        func = S.t_contrast if stat_type == "t" else S.f_contrast
        ours = func(con, fit.beta, fit.sigma2, covs, index, fit.dof)
        assert_contrast_equal(ours, compute_contrast(labels, results, con, stat_type), rtol=1e-8)

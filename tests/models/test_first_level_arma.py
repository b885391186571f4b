"""FirstLevelModel(noise_model="arma11") end to end, against a dense GLS oracle per voxel.

The oracle takes each voxel's grid point as the model reports it (``voxelwise("noise_parameters")``,
whose choice the kernel tests check against scipy's REML optimum), whitens with the Cholesky factor
of the exact ARMA(1,1) covariance, and computes t and z with numpy/scipy.
"""

from __future__ import annotations

import dask
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.stats

import daskglm
from daskglm.kernels import arma

N_SCANS, SHAPE = 90, (6, 5, 4)


@pytest.fixture(scope="module")
def run() -> tuple[nib.Nifti1Image, nib.Nifti1Image, pd.DataFrame]:
    rng = np.random.default_rng(0)
    V = int(np.prod(SHAPE))
    phi = np.linspace(0.2, 0.85, V)
    noise = np.zeros((N_SCANS, V))
    noise[0] = rng.standard_normal(V)
    for t in range(1, N_SCANS):
        noise[t] = phi * noise[t - 1] + rng.standard_normal(V) * np.sqrt(1 - phi**2)
    noise += rng.standard_normal((N_SCANS, V))
    events = pd.DataFrame({"onset": np.arange(0, N_SCANS * 2.0, 30.0), "duration": 15.0, "trial_type": "task"})
    data = 100 + noise
    img = nib.Nifti1Image(data.T.reshape(*SHAPE, N_SCANS).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    mask = nib.Nifti1Image(np.ones(SHAPE, np.uint8), img.affine)
    return img, mask, events


def _oracle_z(model: daskglm.FirstLevelModel, img: nib.Nifti1Image, params: np.ndarray) -> np.ndarray:
    X = model.design_matrices_[0]
    c = (X.columns == "task").astype(float)
    X = X.to_numpy()
    Y = img.get_fdata().reshape(-1, N_SCANS).T
    Y = 100 * (Y / Y.mean(axis=0) - 1)
    n, p = X.shape
    z = np.empty(Y.shape[1])
    for j, (a, b) in enumerate(params.T):
        acov = arma.autocovariance(a, b, n - 1)[0]
        L = np.linalg.cholesky(scipy.linalg.toeplitz(acov))
        wx, wy = np.linalg.solve(L, X), np.linalg.solve(L, Y[:, j])
        beta, rss = np.linalg.lstsq(wx, wy, rcond=None)[:2]
        t = c @ beta / np.sqrt(rss[0] / (n - p) * c @ np.linalg.inv(wx.T @ wx) @ c)
        z[j] = scipy.stats.norm.isf(scipy.stats.t.sf(t, n - p))
    return z


@pytest.mark.parametrize("fwhm", [0.0, 5.0])
def test_z_against_dense_gls(run, fwhm: float, tmp_path) -> None:
    img, mask, events = run
    with dask.config.set({"daskglm.arma-smoothing-fwhm": fwhm}):
        model = daskglm.FirstLevelModel(t_r=2.0, mask_img=mask, noise_model="arma11", store=tmp_path,
                                        client="sync").fit(img, events=events)
    params = model.voxelwise("noise_parameters")[0]
    assert list(params["parameter"].values) == ["a", "b"]
    order = np.ravel_multi_index([params[k].values for k in "ijk"], SHAPE)
    values = np.empty((2, order.size))
    values[:, order] = params.values
    assert set(map(tuple, values.T)) <= set(map(tuple, arma.grid()))
    z = model.compute_contrast("task", output_type="z_score").get_fdata().ravel()
    # float32 data: the scaling 100 (y / mean - 1) of values ~100 +- 2 keeps ~1e-5 of the mean's rounding
    np.testing.assert_allclose(z, _oracle_z(model, img, values), rtol=1e-5, atol=5e-5)
    # the AR parameter follows the simulated gradient (90 scans: noisy without the spatial regularisation)
    assert np.corrcoef(values[0], np.linspace(0.2, 0.85, order.size))[0, 1] > (0.3 if fwhm == 0 else 0.8)


def test_smoothing_is_the_masked_average_of_the_lag_correlations(run, tmp_path) -> None:
    """With spatial regularisation, the labels are the REML choice on the smoothed lag correlations."""
    img, mask, events = run
    model = daskglm.FirstLevelModel(t_r=2.0, mask_img=mask, noise_model="arma11", store=tmp_path,
                                    client="sync").fit(img, events=events)
    X = model.design_matrices_[0].to_numpy()
    Y = img.get_fdata().reshape(-1, N_SCANS).T
    r = arma.lag_correlations(Y, X)
    ijk = np.array(np.unravel_index(np.arange(Y.shape[1]), SHAPE))
    sigma = np.full(3, 5.0 / np.sqrt(8 * np.log(2)) / 2.0)  # 5 mm on 2 mm voxels
    labels = arma.reml_labels(arma.smooth_lag_correlations(r, ijk, SHAPE, sigma), arma.prepare(X))
    params = model.voxelwise("noise_parameters")[0]
    order = np.ravel_multi_index([params[k].values for k in "ijk"], SHAPE)
    np.testing.assert_array_equal(params.values.T, arma.grid()[labels[order]])


def test_two_runs_fixed_effects_and_voxelwise(run, tmp_path) -> None:
    img, mask, events = run
    model = daskglm.FirstLevelModel(t_r=2.0, mask_img=mask, noise_model="arma11", store=tmp_path,
                                    client="sync", minimize_memory=False).fit([img, img], events=[events, events])
    single = daskglm.FirstLevelModel(t_r=2.0, mask_img=mask, noise_model="arma11", store=tmp_path,
                                     client="sync").fit(img, events=events)
    effect = model.compute_contrast("task", output_type="effect_size").get_fdata()
    np.testing.assert_allclose(effect, single.compute_contrast("task", output_type="effect_size").get_fdata(),
                               rtol=1e-10)
    variance2 = model.compute_contrast("task", output_type="effect_variance").get_fdata()
    variance1 = single.compute_contrast("task", output_type="effect_variance").get_fdata()
    np.testing.assert_allclose(variance2, variance1 / 2, rtol=1e-10)  # the same run twice: half the variance
    r2 = model.r_square_[0].get_fdata()
    assert np.all((r2 >= 0) & (r2 <= 1))


def test_noise_parameters_of_ar1_are_the_labels(run, tmp_path) -> None:
    img, mask, events = run
    model = daskglm.FirstLevelModel(t_r=2.0, mask_img=mask, store=tmp_path, client="sync").fit(img, events=events)
    params = model.voxelwise("noise_parameters")[0]
    assert list(params["parameter"].values) == ["rho_1"]
    fit = model.results_[0]
    np.testing.assert_array_equal(params.values[0], fit["label_value"].values[fit["label_index"].values, 0])


def test_bad_smoothing_setting_is_refused_before_work(run, tmp_path) -> None:
    img, mask, events = run
    with dask.config.set({"daskglm.arma-smoothing-fwhm": -1}), pytest.raises(ValueError, match="arma-smoothing"):
        daskglm.FirstLevelModel(t_r=2.0, mask_img=mask, noise_model="arma11", store=tmp_path,
                                client="sync").fit(img, events=events)
    assert not any(tmp_path.iterdir())

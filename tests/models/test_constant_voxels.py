"""Voxels whose signal is exactly constant: their fit is computed exactly (see
daskglm.kernels.regression's notes), not from pinv's rounding as nilearn does."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel as NilearnModel

from daskglm import FirstLevelModel
from daskglm.kernels import regression as _regression

CONSTANT = [(2, 3, 2), (4, 4, 3), (5, 2, 1)]
N = 40


def _run(root, constant_value):
    rng = np.random.default_rng(1)
    block = ((np.arange(N) // 5) % 2).astype(float)
    data = (1000 + rng.normal(0, 20, size=(8, 9, 6, N)) + 5 * block).astype(np.float32)
    for voxel in CONSTANT:
        data[voxel] = constant_value
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((3.0, 3.0, 3.5, 2.0))
    mask = np.zeros((8, 9, 6), np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    path = root / f"run{constant_value:g}.nii"
    nib.save(img, path)
    nib.save(nib.Nifti1Image(mask, affine), root / "mask.nii")
    design = pd.DataFrame({"a": block, "b": rng.normal(size=N), "constant": np.ones(N)})
    return str(path), str(root / "mask.nii"), design


def _maps(model, run, design, contrast):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.fit(run, design_matrices=design).compute_contrast(contrast, output_type="all")
    return {key: img.get_fdata() for key, img in out.items()}


@pytest.mark.parametrize("scaling", [0, False])
@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_constant_voxels_have_no_effect_and_zero_variance(tmp_path, noise_model, scaling):
    """A constant voxel's contrast without the constant column is exactly what nilearn gives for an
    all-zero signal (effect 0, variance 0, z 0, p 0.5); nilearn gives that for signal_scaling=0 (the
    scaled signal is exactly 0) but rounding noise for signal_scaling=False (e.g. z = -1.2 for OLS,
    5.0 for AR(1) here). Every other voxel matches nilearn."""
    run, mask, design = _run(tmp_path, 100.0)
    # the oracle: nilearn with the same voxels at exactly 0, unscaled (pinv @ 0 is exactly 0)
    zero_run = _run(tmp_path, 0.0)[0]
    kwargs = dict(mask_img=mask, smoothing_fwhm=None, noise_model=noise_model, signal_scaling=scaling)
    ours = _maps(FirstLevelModel(store=tmp_path / "stores", client="threads", **kwargs), run, design, "a")
    theirs = _maps(NilearnModel(**kwargs), run, design, "a")
    oracle = _maps(NilearnModel(**{**kwargs, "signal_scaling": False}), zero_run, design, "a")
    constant = np.zeros((8, 9, 6), bool)
    for voxel in CONSTANT:
        constant[voxel] = True
    inside = nib.load(mask).get_fdata() > 0
    for key, expected in (("effect_size", 0.0), ("effect_variance", 0.0), ("stat", 0.0), ("z_score", 0.0),
                          ("p_value", 0.5)):
        np.testing.assert_array_equal(ours[key][constant], expected, err_msg=key)
        np.testing.assert_array_equal(oracle[key][constant], expected, err_msg=key)
        np.testing.assert_allclose(ours[key][inside & ~constant], theirs[key][inside & ~constant],
                                   rtol=1e-5, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_constant_column_contrast_of_a_constant_voxel_is_its_value(tmp_path, noise_model):
    """The constant column's effect is the voxel's value (nilearn: the same up to ~1e-13) with
    variance exactly 0."""
    run, mask, design = _run(tmp_path, 100.0)
    kwargs = dict(mask_img=mask, smoothing_fwhm=None, noise_model=noise_model, signal_scaling=False)
    ours = _maps(FirstLevelModel(store=tmp_path / "stores", client="threads", **kwargs), run, design, "constant")
    theirs = _maps(NilearnModel(**kwargs), run, design, "constant")
    for voxel in CONSTANT:
        assert ours["effect_size"][voxel] == 100.0
        assert ours["effect_variance"][voxel] == 0.0
        assert abs(theirs["effect_size"][voxel] - 100.0) < 1e-9
        assert ours["z_score"][voxel] >= theirs["z_score"][voxel] > 5  # nilearn's z of a zero variance


def _block(rng, n=60, v=50):
    X = np.column_stack([rng.normal(size=(n, 3)), np.full(n, 2.0)])  # a constant column of 2
    Y = (1000 + rng.normal(0, 10, size=(n, v))).astype(np.float32)
    Y[:, [3, 17, 40]] = np.float32(123.25)
    return Y, X


@pytest.mark.parametrize("scaling", [0, False])
@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_fit_block_gives_constant_voxels_their_exact_fit(noise_model, scaling):
    """beta = (y / c) e_j and sigma2 = 0 (AR(1) label 0), on the moments path and the exact path."""
    rng = np.random.default_rng(0)
    Y, X = _block(rng)
    fit = _regression.fit_block(Y, X, noise_model, signal_scaling=scaling)
    value = 123.25 / 2.0 if scaling is False else 0.0
    expected = np.zeros((4, 3))
    expected[3] = value
    np.testing.assert_array_equal(fit.beta[:, [3, 17, 40]], expected)
    np.testing.assert_array_equal(fit.sigma2[[3, 17, 40]], 0.0)
    np.testing.assert_array_equal(fit.label[[3, 17, 40]], 0.0)
    assert (fit.sigma2[np.setdiff1d(np.arange(50), [3, 17, 40])] > 0).all()
    refit = _regression.refit_block(Y, X, np.arange(50) % 2, np.array([[0.0, 0.0], [0.3, -0.1]]),
                                    signal_scaling=scaling)
    np.testing.assert_array_equal(refit.beta[:, [3, 17, 40]], expected)
    np.testing.assert_array_equal(refit.sigma2[[3, 17, 40]], 0.0)


def test_no_constant_column_leaves_the_fit_alone():
    """Without a constant column a constant signal has real residuals: nothing is changed."""
    rng = np.random.default_rng(0)
    Y, X = _block(rng)
    assert _regression.constant_column(X[:, :3]) is None
    assert _regression.constant_column(np.column_stack([X, X[:, 3]])) is None  # rank deficient
    fit = _regression.fit_block(Y, X[:, :3], "ols", signal_scaling=False)
    assert (fit.sigma2 > 0).all()
    np.testing.assert_array_equal(_regression.constant_voxels(Y), [3, 17, 40])

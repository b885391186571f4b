"""Smoothing and masking of volume blocks against nilearn's smooth_array."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nilearn.image.image import smooth_array

from daskglm.kernels import smoothing as _smoothing
from daskglm.kernels import volume as _volume


def _affine(sizes):
    affine = np.diag(list(sizes) + [1.0])
    affine[:3, 3] = -10
    return affine


def test_sigma_matches_nilearn_formula():
    affine = _affine((2.0, 3.0, 4.0))
    # An oblique affine: nilearn takes column norms.
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine[:3, :3] = rot @ affine[:3, :3]
    sigma = _volume.fwhm_to_sigma(5.0, affine)
    expected = 5.0 / (np.sqrt(8 * np.log(2)) * np.array([2.0, 3.0, 4.0]))
    np.testing.assert_allclose(sigma, expected, rtol=1e-12)
    np.testing.assert_array_equal(_volume.fwhm_to_sigma(None, affine), np.zeros(3))
    np.testing.assert_array_equal(_volume.fwhm_to_sigma(0, affine), np.zeros(3))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), [1.0, 2.0]])
def test_bad_fwhm_is_named(bad):
    with pytest.raises(ValueError, match="smoothing_fwhm"):
        _volume.fwhm_to_sigma(bad, np.eye(4))


# The numba kernels (compiled=True) compile on their first call with each dtype: slow.
COMPILED = [False, pytest.param(True, marks=[pytest.mark.skipif(not _smoothing.AVAILABLE, reason="numba missing"),
                                             pytest.mark.slow])]


@pytest.mark.parametrize("compiled", COMPILED)
@given(
    shape=st.tuples(st.integers(1, 14), st.integers(1, 14), st.integers(1, 9)),
    fwhm=st.one_of(st.none(), st.floats(0.5, 12.0)),
    sizes=st.tuples(st.floats(1.0, 4.0), st.floats(1.0, 4.0), st.floats(1.0, 4.0)),
    seed=st.integers(0, 2**16),
    density=st.floats(0.01, 1.0),
    dtype=st.sampled_from(["int16", "uint8", "float32", "float64"]),
)
def test_cropped_smoothing_equals_whole_volume_nilearn(compiled, shape, fwhm, sizes, seed, density, dtype):
    """Smoothing only bbox(mask) +/- radius gives nilearn's values on every mask voxel, bit for bit
    (lines shorter than the kernel included: scipy's reflection is applied repeatedly)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    if not mask.any():
        mask[tuple(s // 2 for s in shape)] = True
    if dtype in ("int16", "uint8"):
        volumes = rng.integers(0 if dtype == "uint8" else -500, 255 if dtype == "uint8" else 3000,
                               size=shape + (3,)).astype(dtype)
    else:
        volumes = (rng.normal(size=shape + (3,)) * 10 ** rng.uniform(-3, 6)).astype(dtype)
    volumes = np.asfortranarray(volumes)  # as nibabel reads NIfTI blocks
    affine = _affine(sizes)
    expected = smooth_array(volumes, affine, fwhm=fwhm)[mask].T  # (t, n_voxels)
    sigma = _volume.fwhm_to_sigma(fwhm, affine)
    got = _volume.smooth_and_mask(volumes, _volume.smoothing_crop(mask, sigma), sigma, compiled=compiled)
    assert got.dtype == np.float32
    assert got.shape == (3, int(mask.sum()))
    if dtype == "float64":
        # nilearn smooths float64 data in float64; daskglm's stores are float32 and it
        # smooths the float32 cast (as nilearn does for float32 and integer data)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        expected = smooth_array(volumes.astype(np.float32), affine, fwhm=fwhm)[mask].T
    np.testing.assert_array_equal(got, expected)


def test_crop_is_bbox_plus_scipy_radius():
    mask = np.zeros((30, 30, 30), bool)
    mask[10:15, 12, 20:29] = True
    crop = _volume.smoothing_crop(mask, np.array([1.0, 0.0, 1.3]))
    # radius int(4 * sigma + 0.5): 4 on axis 0, 0 on axis 1, 5 on axis 2 (clipped at 30)
    assert crop.slices == (slice(6, 19), slice(12, 13), slice(15, 30))
    assert crop.mask.sum() == mask.sum()


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_become_zero_like_nilearn(compiled, dtype):
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(6, 7, 5, 2)).astype(dtype)
    volumes[2, 3, 1, 0] = np.nan
    volumes[4, 4, 4, 1] = np.inf
    volumes[0, 0, 0, 1] = 1e300 if dtype == np.float64 else -np.inf  # inf once cast to float32
    mask = np.ones((6, 7, 5), bool)
    affine = _affine((2.0, 2.0, 2.0))
    sigma = _volume.fwhm_to_sigma(4.0, affine)
    got = _volume.smooth_and_mask(volumes, _volume.smoothing_crop(mask, sigma), sigma, compiled=compiled)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, smooth_array(volumes.astype(np.float32), affine, fwhm=4.0)[mask].T)


def test_empty_mask_and_wrong_ndim_are_refused():
    with pytest.raises(ValueError, match="no voxel"):
        _volume.smoothing_crop(np.zeros((3, 3, 3), bool), np.zeros(3))
    crop = _volume.smoothing_crop(np.ones((3, 3, 3), bool), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(3, 3, 3\)"):
        _volume.smooth_and_mask(np.zeros((3, 3, 3)), crop, np.zeros(3))


@pytest.mark.skipif(not _smoothing.AVAILABLE, reason="numba is a dependency; this checks the compiled path")
def test_compiled_smoothing_refuses_an_out_it_would_overrun():
    """The compiled loop has no bounds checks: rows for fewer volumes than given (or of another
    dtype, or strided) are refused before it runs, with both shapes in the message."""
    mask = np.ones((6, 5, 4), bool)
    sigma = np.array([1.0, 1.0, 1.0])
    crop = _volume.smoothing_crop(mask, sigma)
    volumes = np.random.default_rng(0).normal(size=(6, 5, 4, 3)).astype(np.float32)
    good = _volume.smooth_and_mask(volumes, crop, sigma, compiled=True)
    for out in (np.zeros((2, 120), np.float32), np.zeros((3, 120), np.float64), np.zeros((3, 240), np.float32)[:, ::2]):
        with pytest.raises(ValueError, match=r"\(3, 120\)"):
            _volume.smooth_and_mask(volumes, crop, sigma, out=out, compiled=True)
    rows = np.zeros((4, 120), np.float32)
    _volume.smooth_and_mask(volumes, crop, sigma, out=rows[1:], compiled=True)  # a slice of whole rows: fine
    np.testing.assert_array_equal(rows[1:], good)
    assert not rows[0].any()


def test_gaussian_weights_are_scipys():
    from scipy.ndimage._filters import _gaussian_kernel1d  # what gaussian_filter1d uses

    for sigma in (0.3, 1.0616522503600239, 2.5, 7.0):
        radius = int(4.0 * sigma + 0.5)
        np.testing.assert_array_equal(_smoothing.gaussian_weights(sigma), _gaussian_kernel1d(sigma, 0, radius))
    np.testing.assert_array_equal(_smoothing.gaussian_weights(0.0), [1.0])


def test_mask_plan_is_cached_by_value_and_read_only():
    """Every ingestion task of a run asks for the same plan: one computation per process, keyed by
    the mask's and sigma's values (an equal copy hits, a changed voxel or sigma does not)."""
    mask = np.zeros((9, 8, 7), bool)
    mask[2:6, 3:5, 1:4] = True
    sigma = np.array([1.0, 0.8, 1.2])
    crop = _volume.smoothing_crop(mask, sigma)
    plan = _volume.mask_plan(crop, sigma)
    assert _volume.mask_plan(_volume.Crop(crop.slices, crop.mask.copy()), sigma.copy()) is plan
    assert not plan.index.flags.writeable and not plan.weights[0].flags.writeable
    other = crop.mask.copy()
    other[other.nonzero()[0][0], other.nonzero()[1][0], other.nonzero()[2][0]] = False
    changed = _volume.mask_plan(_volume.Crop(crop.slices, other), sigma)
    assert changed.index.size == plan.index.size - 1
    assert _volume.mask_plan(crop, sigma * 2) is not plan
    np.testing.assert_array_equal(_smoothing.plan_smoothing(crop.mask, sigma).index, plan.index)


# --- FWHM at the extremes: no smoothing below a radius of 0, refused above the field of view ---

TINY_FWHMS = [1e-3, 1e-20, 1e-155, 1e-300, 5e-324]


def _nilearn_kernel_is_finite(fwhm, affine):
    """Whether scipy's own weights for this FWHM are finite (they are NaN for sigma ~1e-320..5e-155)."""
    from scipy.ndimage._filters import _gaussian_kernel1d

    with np.errstate(all="ignore"):
        return all(not s > 0 or np.isfinite(_gaussian_kernel1d(s, 0, int(4 * s + 0.5))).all()
                   for s in _volume.fwhm_to_sigma(fwhm, affine))


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("fwhm", TINY_FWHMS)
def test_tiny_fwhm_is_no_smoothing(compiled, fwhm):
    """A kernel radius of 0 is scipy's kernel [1.0]: the volumes unchanged, for every tiny FWHM
    (scipy's own formula overflows to NaN weights below ~1e-154 mm, or divides by 0)."""
    rng = np.random.default_rng(3)
    volumes = np.asfortranarray(rng.normal(size=(6, 7, 5, 2)).astype(np.float32) * 100)
    mask = rng.random((6, 7, 5)) < 0.6
    affine = _affine((3.0, 3.0, 3.5))
    sigma = _volume.fwhm_to_sigma(fwhm, affine)
    got = _volume.smooth_and_mask(volumes, _volume.smoothing_crop(mask, sigma), sigma, compiled=compiled)
    np.testing.assert_array_equal(got, smooth_array(volumes, affine, fwhm=None)[mask].T)
    if _nilearn_kernel_is_finite(fwhm, affine):  # 1e-3, 1e-20, 5e-324: nilearn's own result
        np.testing.assert_array_equal(got, smooth_array(volumes, affine, fwhm=fwhm)[mask].T)


@pytest.mark.parametrize("sigma", [1e-3, 1e-60, 4e-155, 1e-160, 1e-300, 5e-324, 0.1249])
def test_gaussian_weights_of_a_zero_radius_are_the_identity(sigma):
    np.testing.assert_array_equal(_smoothing.gaussian_weights(sigma), [1.0])
    assert _smoothing.kernel_radius(sigma) == 0


def test_fwhm_larger_than_the_field_of_view_is_refused():
    affine = _affine((3.0, 3.0, 3.5))
    shape = (24, 24, 12, 60)  # 72 x 72 x 42 mm
    for bad in (1e6, 72.001, [5.0, 5.0, 100.0], np.float32(1e30)):
        with pytest.raises(ValueError, match=r"smoothing_fwhm=.* mm is larger than the field of view "
                                             r"\(72 x 72 x 42 mm"):
            _volume.check_smoothing_fwhm(bad, affine, shape)
    # up to the largest side: a 6 mm FWHM on a single 3.5 mm slice is nilearn's usual smoothing
    np.testing.assert_array_equal(_volume.check_smoothing_fwhm(72.0, affine, shape),
                                  _volume.fwhm_to_sigma(72.0, affine))
    _volume.check_smoothing_fwhm(6.0, affine, (64, 64, 1))
    assert not _volume.check_smoothing_fwhm(None, affine, shape).any()
    with pytest.raises(ValueError, match="smoothing_fwhm"):
        _volume.check_smoothing_fwhm(-1.0, affine, shape)


@pytest.mark.parametrize("compiled", COMPILED)
def test_kernels_longer_than_the_volume_match_nilearn(compiled):
    """At the bound the kernel spans the line many times over (reflected periodically): scipy's
    numbers, bit for bit, including along a single slice."""
    rng = np.random.default_rng(5)
    volumes = np.asfortranarray(rng.normal(size=(9, 4, 1, 2)).astype(np.float32))
    affine = _affine((2.0, 3.0, 3.0))
    fwhm = 18.0  # the largest side: sigma 3.8 voxels along x, 2.5 along y and z
    sigma = _volume.check_smoothing_fwhm(fwhm, affine, volumes.shape)
    mask = np.ones((9, 4, 1), bool)
    got = _volume.smooth_and_mask(volumes, _volume.smoothing_crop(mask, sigma), sigma, compiled=compiled)
    np.testing.assert_array_equal(got, smooth_array(volumes, affine, fwhm=fwhm)[mask].T)


# --- the same through the models, against nilearn's FirstLevelModel ---

def _tiny_run(root):
    import nibabel as nib
    import pandas as pd

    rng = np.random.default_rng(1)
    n = 40
    block = ((np.arange(n) // 5) % 2).astype(float)
    data = (1000 + rng.normal(0, 20, size=(8, 9, 6, n)) + 5 * block).astype(np.float32)
    affine = _affine((3.0, 3.0, 3.5))
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((3.0, 3.0, 3.5, 2.0))
    mask = np.zeros((8, 9, 6), np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    nib.save(img, root / "run.nii")
    nib.save(nib.Nifti1Image(mask, affine), root / "mask.nii")
    design = pd.DataFrame({"a": block, "b": rng.normal(size=n), "constant": np.ones(n)})
    return str(root / "run.nii"), str(root / "mask.nii"), design


@pytest.mark.parametrize("fwhm", TINY_FWHMS)
def test_model_with_a_tiny_fwhm_is_unsmoothed_nilearn(tmp_path, fwhm):
    import warnings

    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    from daskglm import FirstLevelModel

    run, mask, design = _tiny_run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = FirstLevelModel(store=tmp_path / "stores", client="threads", mask_img=mask, smoothing_fwhm=fwhm
                               ).fit(run, design_matrices=design).compute_contrast("a", output_type="all")
        unsmoothed = NilearnModel(mask_img=mask, smoothing_fwhm=None).fit(run, design_matrices=design
                                                                          ).compute_contrast("a", output_type="all")
        same_fwhm = NilearnModel(mask_img=mask, smoothing_fwhm=fwhm).fit(run, design_matrices=design
                                                                         ).compute_contrast("a", output_type="all")
    references = [unsmoothed]
    if _nilearn_kernel_is_finite(fwhm, _affine((3.0, 3.0, 3.5))):
        references.append(same_fwhm)  # else nilearn's maps are those of all-zero signals (see README)
    for theirs in references:
        for key in ("z_score", "effect_size", "effect_variance"):
            a, b = ours[key].get_fdata(), theirs[key].get_fdata()
            assert np.isfinite(a).all(), key
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-10, err_msg=key)


def test_model_refuses_a_fwhm_wider_than_the_run_before_writing(tmp_path):
    from daskglm import FirstLevelModel

    run, mask, design = _tiny_run(tmp_path)  # 24 x 27 x 21 mm
    model = FirstLevelModel(store=tmp_path / "stores", client="threads", mask_img=mask, smoothing_fwhm=100.0)
    with pytest.raises(ValueError, match=r"smoothing_fwhm=100.0 mm is larger than the field of view "
                                         r"\(24 x 27 x 21 mm"):
        model.fit(run, design_matrices=design)
    assert not (tmp_path / "stores").exists() or not any((tmp_path / "stores").rglob("*"))

"""Unmasking voxel vectors back to volumes, against nilearn's masker."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from nilearn.maskers import NiftiMasker

from daskglm.io.maps import to_nifti, to_volume
from daskglm.store.ingest import ingest_run


@pytest.fixture(scope="module")
def run_ds(small_run, tmp_path_factory):
    return ingest_run(small_run["nii"], tmp_path_factory.mktemp("maps") / "s.zarr",
                      mask_img=small_run["mask_path"], smoothing_fwhm=4.0, client="threads",
                      v_chunk=300)


def test_to_nifti_equals_nilearn_inverse_transform(run_ds, small_run):
    mean = run_ds["bold"].mean("time")  # lazy (voxel,) with i, j, k coordinates
    img = to_nifti(mean, like=run_ds, descrip="mean bold")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiMasker(mask_img=str(small_run["mask_path"])).fit()
    expected = masker.inverse_transform(mean.values)
    assert img.shape == (20, 22, 14)
    np.testing.assert_array_equal(img.affine, small_run["affine"])
    np.testing.assert_allclose(img.get_fdata(), expected.get_fdata(), rtol=1e-6)
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"mean bold"


def test_time_series_unmask_to_4d(run_ds, small_run):
    img = to_nifti(run_ds["bold"].isel(time=slice(0, 3)), like=run_ds)
    assert img.shape == (20, 22, 14, 3)
    mask = small_run["mask"]
    np.testing.assert_array_equal(img.get_fdata()[mask].T, run_ds["bold"].values[:3])
    assert (img.get_fdata()[~mask] == 0).all()


def test_to_volume_stays_lazy_until_computed(run_ds):
    volume = to_volume(run_ds["bold"].std("time"), like=run_ds)
    assert isinstance(volume.data, da.Array)
    assert volume.dims == ("x", "y", "z") and volume.shape == (20, 22, 14)
    computed = volume.values
    i, j, k = (run_ds[n].values for n in "ijk")
    np.testing.assert_allclose(computed[i, j, k], run_ds["bold"].std("time").values, rtol=1e-6)


def test_missing_geometry_is_explained(run_ds):
    with pytest.raises(ValueError, match="like="):
        to_volume(run_ds["bold"].mean("time"))
    with pytest.raises(ValueError, match="no 'i' voxel coordinate"):
        to_volume(run_ds["bold"].mean("time").drop_vars("i"), like=run_ds)

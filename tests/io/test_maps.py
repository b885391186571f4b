"""Unmasking voxel vectors back to volumes, against nilearn's masker."""

from __future__ import annotations

import warnings

import dask
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


# ---------------------------------------------------------------- maps read by slabs of x-planes (io.slabs)


def _slab_maps(tmp_path):
    """A 3D .nii, a 4D .nii.gz of 3 volumes, their arrays and an affine."""
    import nibabel as nib

    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    three = rng.standard_normal((6, 5, 4)).astype(np.float32)
    four = rng.standard_normal((6, 5, 4, 3))
    three[1, 2, 3] = np.nan
    paths = [str(tmp_path / "three.nii"), str(tmp_path / "four.nii.gz")]
    nib.save(nib.Nifti1Image(three, affine), paths[0])
    nib.save(nib.Nifti1Image(four, affine), paths[1])
    return paths, three, four, affine


def test_read_planes_of_files_arrays_and_voxels(tmp_path):
    import nibabel as nib

    from daskglm.io.slabs import open_map, read_planes, voxel_map

    paths, three, four, affine = _slab_maps(tmp_path)
    masks: dict = {}
    src3, src4 = open_map(paths[0], "a"), open_map(paths[1], "b")
    assert src3.shape == (6, 5, 4) and src3.dtype == np.float32 and src3.name == f"a ({paths[0]!r})"
    assert src4.shape == (6, 5, 4, 3) and src4.q == 3
    np.testing.assert_array_equal(read_planes(src3.planes(2, 5, masks), 2, 5, (5, 4), {}), three[2:5])
    np.testing.assert_array_equal(read_planes(src4.planes(2, 5, masks), 2, 5, (5, 4), {}), four[2:5])
    cache: dict = {}  # one volume of a 4D file: the file is read once per task for all its volumes
    for volume in range(3):
        planes = type(src4.planes(0, 1, masks))(paths[1], volume)
        np.testing.assert_array_equal(read_planes(planes, 1, 4, (5, 4), cache), four[1:4, ..., volume])
    assert list(cache) == [paths[1]]
    one = open_map(nib.Nifti1Image(four[..., :1], affine), "c")  # 4D of one volume: 3D
    assert one.shape == (6, 5, 4) and one.name == "c (in-memory Nifti1Image)"
    np.testing.assert_array_equal(read_planes(one.planes(0, 6, masks), 0, 6, (5, 4), {}), four[..., 0])
    # a vector of voxel values in any order, lazy: zeros elsewhere
    where = np.zeros((6, 5, 4), bool)
    where[1:4, 1:3] = True
    ijk = [c[::-1] for c in np.nonzero(where)]
    vec = voxel_map("v", da.from_array(four[..., 0][tuple(ijk)], chunks=7), ijk, (6, 5, 4), affine)
    for a, b in ((0, 2), (2, 6), (0, 6)):  # in a task: the graph computes the planes' Delayed chunks and where
        got = dask.delayed(read_planes)(vec.planes(a, b, masks), a, b, (5, 4), {}).compute(scheduler="sync")
        np.testing.assert_array_equal(got, np.where(where, four[..., 0], 0)[a:b])


def test_mean_of_maps_is_nilearns_mean_img_and_grids_are_checked(tmp_path):
    import nibabel as nib
    from nilearn.image import mean_img

    from daskglm.io.slabs import check_grid, mean_of_maps, open_map

    paths, three, four, affine = _slab_maps(tmp_path)
    maps = [open_map(paths[1], "b"), open_map(nib.Nifti1Image(three, affine), "a")]
    ours = mean_of_maps(maps, "sync", v_chunk=40)
    volumes = np.concatenate([four, three[..., None].astype(np.float64)], axis=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = mean_img(nib.Nifti1Image(volumes, affine), copy_header=True)
    np.testing.assert_allclose(ours.get_fdata(), expected.get_fdata(), rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(ours.affine, affine)
    other = open_map(nib.Nifti1Image(three[:5], affine), "other")
    with pytest.raises(ValueError, match=r"other \(in-memory Nifti1Image\) is on another grid than b"):
        check_grid(maps + [other])

"""Fixed effects out of core, against nilearn 0.14's compute_fixed_effects."""

from __future__ import annotations

import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from helpers import TaskCounter
from nilearn.glm.contrasts import compute_fixed_effects as nilearn_fixed_effects
from nilearn.maskers import NiftiMasker

from daskglm.glm.fixed_effects import compute_fixed_effects, fixed_effects_dataset
from daskglm.io.slabs import plane_blocks

SHAPE = (12, 14, 9)
N_RUNS = 3


def _nilearn(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's own deprecation noise
        return nilearn_fixed_effects(*args, **kwargs)


def _assert_same(ours, theirs, rtol=1e-10, atol=0.0):
    assert len(ours) == len(theirs) == 4
    for mine, ref in zip(ours, theirs):
        assert isinstance(mine, nib.Nifti1Image)
        assert mine.shape == ref.shape
        assert mine.get_data_dtype() == ref.get_data_dtype()
        np.testing.assert_array_equal(mine.affine, ref.affine)
        np.testing.assert_allclose(mine.get_fdata(), ref.get_fdata(), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """Three runs of effect (.nii) and variance (.nii.gz) maps, a mask, all on disk."""
    root = tmp_path_factory.mktemp("fixed_effects")
    rng = np.random.default_rng(7)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    affine[:3, 3] = [-18.0, -21.0, -14.0]
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:10, 3:12, 2:7] = 1
    mask[0, 0, 0] = 1  # a corner voxel: on the border, outside nilearn's background mask
    inside = mask.astype(bool)
    brain = np.zeros(SHAPE, bool)
    brain[1:11, 2:13, 1:8] = True
    paths = {"con": [], "var": []}
    for r in range(N_RUNS):
        con = np.where(brain, rng.normal(0.5, 1.0, SHAPE), 0.0)
        var = np.where(brain, rng.uniform(0.2, 3.0, SHAPE), 0.0)
        for kind, data, ext in (("con", con, "nii"), ("var", var, "nii.gz")):
            path = root / f"{kind}{r}.{ext}"
            nib.save(nib.Nifti1Image(data, affine), str(path))
            paths[kind].append(str(path))
    mask_path = root / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), str(mask_path))
    return {"root": root, "affine": affine, "mask": inside, "mask_path": str(mask_path), **paths}


def _images(paths):
    return [nib.Nifti1Image(np.asanyarray(nib.load(p).dataobj), nib.load(p).affine) for p in paths]


@pytest.mark.parametrize(("inputs", "dofs"), [("paths", None), ("images", [12, 30.5, 80])])
@pytest.mark.parametrize("mask_kind", ["path", "image", None])
@pytest.mark.parametrize("precision_weighted", [False, True])
def test_equals_nilearn(maps, inputs, mask_kind, precision_weighted, dofs):
    con, var = maps["con"], maps["var"]
    if inputs == "images":
        con, var = _images(con), _images(var)
    mask = {"path": maps["mask_path"], "image": nib.load(maps["mask_path"]), None: None}[mask_kind]
    expected = _nilearn(con, var, mask, precision_weighted, dofs)
    ours = compute_fixed_effects(con, var, mask, precision_weighted, dofs, client="threads", v_chunk=90)
    _assert_same(ours, expected)
    if mask_kind is None:  # nilearn's background mask, not the given one
        assert np.count_nonzero(ours[3].get_fdata()) == np.count_nonzero(expected[3].get_fdata()) > 0


def test_blocks_are_whole_planes(maps):
    ds = fixed_effects_dataset(maps["con"], maps["var"], maps["mask_path"], v_chunk=90)
    assert all(isinstance(ds[n].data, da.Array) for n in ("effect", "variance", "stat", "z_score"))
    assert ds.sizes["voxel"] == maps["mask"].sum() and len(ds.effect.data.chunks[0]) > 3
    i = ds.coords["i"].values
    bounds = np.cumsum((0,) + ds.effect.data.chunks[0])
    for _start, stop in zip(bounds[:-1], bounds[1:]):  # no x-plane is split between two blocks
        assert stop == len(i) or i[stop - 1] != i[stop]
    mask = np.zeros((6, 4, 4), bool)
    mask[0, 0, :2] = mask[2] = mask[3, :1] = mask[5, 1, 1] = True  # 2, 16, 4, 1 voxels per plane
    assert plane_blocks(mask, 5) == [(0, 1, 0, 2), (2, 3, 2, 18), (3, 6, 18, 23)]
    assert plane_blocks(mask, 10**6) == [(0, 6, 0, 23)]
    # planes larger than v_chunk, then empty planes at the end: no empty block
    mask = np.zeros((5, 3, 3), bool)
    mask[1:4] = True  # 0, 9, 9, 9, 0 voxels per plane
    assert plane_blocks(mask, 5) == [(1, 2, 0, 9), (2, 3, 9, 18), (3, 4, 18, 27)]


def test_f_contrast_from_4d_effects(maps):
    con = [nib.Nifti1Image(np.stack([img.get_fdata(), -2 * img.get_fdata() + 1], -1), img.affine)
           for img in _images(maps["con"])]
    var = _images(maps["var"])
    for mask in (maps["mask_path"], None):
        ours = compute_fixed_effects(con, var, mask, client="threads", v_chunk=90)
        _assert_same(ours, _nilearn(con, var, mask))
        assert ours[0].shape == SHAPE + (2,)
    assert fixed_effects_dataset(con, var, maps["mask_path"]).attrs["stat_type"] == "F"


@pytest.mark.parametrize("precision_weighted", [False, True])
def test_float32_inputs_keep_nilearn_dtypes(maps, precision_weighted):
    con = [nib.Nifti1Image(img.get_fdata().astype(np.float32), img.affine) for img in _images(maps["con"])]
    var = [nib.Nifti1Image(img.get_fdata().astype(np.float32), img.affine) for img in _images(maps["var"])]
    ours = compute_fixed_effects(con, var, maps["mask_path"], precision_weighted, client="threads")
    # nilearn computes in float32, daskglm in float64: equal to float32 precision
    _assert_same(ours, _nilearn(con, var, maps["mask_path"], precision_weighted), rtol=1e-5, atol=1e-5)


def test_non_finite_inputs_and_bad_variances_as_nilearn(maps):
    con, var = _images(maps["con"]), _images(maps["var"])
    data = con[0].get_fdata()
    data[4, 5, 3], data[5, 5, 3] = np.nan, np.inf
    con[0] = nib.Nifti1Image(data, maps["affine"])
    for value, where in ((0.0, (6, 6, 3)), (np.nan, (8, 6, 3))):
        data = var[1].get_fdata()
        data[where] = value
        var[1] = nib.Nifti1Image(data, maps["affine"])
    for pw in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nilearn floors and zero-fills silently: so do we
            ours = compute_fixed_effects(con, var, maps["mask_path"], pw, client="threads")
        _assert_same(ours, _nilearn(con, var, maps["mask_path"], pw))
        assert all(np.isfinite(img.get_fdata()).all() for img in ours)
    # A negative variance is a wrong input (nilearn floors it silently): an error naming the map.
    data = var[1].get_fdata()
    data[7, 6, 3] = -1.5
    var[1] = nib.Nifti1Image(data, maps["affine"])
    negative = r"variance_imgs\[1\] \(in-memory Nifti1Image\) has 1 negative value.*-1\.5"
    with pytest.raises(ValueError, match=negative):
        compute_fixed_effects(con, var, maps["mask_path"], client="threads")
    # Rounding noise around 0 is not refused.
    data[7, 6, 3] = -1e-14
    var[1] = nib.Nifti1Image(data, maps["affine"])
    compute_fixed_effects(con, var, maps["mask_path"], client="threads")


def test_niftimasker_mask(maps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = nilearn_fixed_effects(maps["con"], maps["var"], NiftiMasker(mask_img=maps["mask_path"]))
    ours = compute_fixed_effects(maps["con"], maps["var"], NiftiMasker(mask_img=maps["mask_path"]),
                                 client="threads")
    _assert_same(ours, expected)
    with pytest.raises(ValueError, match="smoothing_fwhm"):
        compute_fixed_effects(maps["con"], maps["var"], NiftiMasker(maps["mask_path"], smoothing_fwhm=6.0),
                              client="threads")


def test_dataarray_inputs(maps):
    mask = maps["mask"]
    idx = np.nonzero(mask)
    geometry = xr.Dataset(attrs={"affine": maps["affine"].tolist(), "volume_shape": list(SHAPE)})

    def voxels(img):  # lazy (voxel,) with i, j, k, as a fitted run gives
        return xr.DataArray(da.from_array(img.get_fdata()[mask], chunks=70), dims=("voxel",),
                            coords={n: ("voxel", c) for n, c in zip("ijk", idx)})

    def volume(img):
        return xr.DataArray(da.from_array(img.get_fdata(), chunks=5), dims=("x", "y", "z"),
                            attrs={"affine": maps["affine"]})

    con, var = _images(maps["con"]), _images(maps["var"])
    expected = _nilearn(con, var, maps["mask_path"], True)
    ours = compute_fixed_effects([voxels(c) for c in con], [volume(v) for v in var], maps["mask_path"], True,
                                 client="threads", like=geometry)
    _assert_same(ours, expected)
    # mask=None: voxels outside a DataArray count as zeros, as in its unmasked image
    mixed = compute_fixed_effects([voxels(c) for c in con], var, client="threads", like=geometry)
    _assert_same(mixed, _nilearn([nib.Nifti1Image(np.where(mask, c.get_fdata(), 0), maps["affine"])
                                  for c in con], var))
    with pytest.raises(ValueError, match="'affine'"):
        compute_fixed_effects([voxels(c) for c in con], var, maps["mask_path"])
    partial = voxels(con[0]).isel(voxel=slice(10, None))
    with pytest.raises(ValueError, match=r"contrast_imgs\[0\].*misses 10 of the"):
        compute_fixed_effects([partial] + con[1:], var, maps["mask_path"], like=geometry)


def test_dataset_is_lazy_and_reads_files_when_computed(maps, tmp_path):
    paths = []
    for n, src in enumerate(maps["con"]):
        paths.append(str(tmp_path / f"con{n}.nii"))
        nib.save(nib.load(src), paths[-1])
    with TaskCounter() as counter:
        ds = fixed_effects_dataset(paths, maps["var"], maps["mask_path"], v_chunk=90)
    assert counter.started == 0
    assert isinstance(ds.effect.data, da.Array) and ds.attrs["dof"] == 300.0
    # The files are read at compute time: a map changed after the graph was built counts.
    changed = nib.load(paths[1]).get_fdata() * 3 - 1
    nib.save(nib.Nifti1Image(changed, maps["affine"]), paths[1])
    with TaskCounter() as counter:
        effect = ds.effect.compute(scheduler="threads")
    assert counter.started > 0
    expected = _nilearn([paths[0], nib.Nifti1Image(changed, maps["affine"]), paths[2]], maps["var"],
                        maps["mask_path"])[0]
    np.testing.assert_allclose(effect.values, expected.get_fdata()[maps["mask"]], rtol=1e-10)
    (tmp_path / "con2.nii").unlink()
    with pytest.raises(FileNotFoundError, match="con2.nii"):
        ds.stat.compute(scheduler="threads")


@pytest.mark.slow
def test_cluster_gives_identical_results(maps, cluster_client):
    local = compute_fixed_effects(maps["con"], maps["var"], None, True, [20, 40, 60], client="threads",
                                  v_chunk=90)
    remote = compute_fixed_effects(maps["con"], maps["var"], None, True, [20, 40, 60], client=cluster_client,
                                   v_chunk=90)
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    in_memory = compute_fixed_effects(_images(maps["con"]), _images(maps["var"]), maps["mask_path"],
                                      client=cluster_client, v_chunk=90)
    _assert_same(in_memory, _nilearn(maps["con"], maps["var"], maps["mask_path"]))


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def test_bad_inputs_are_named(maps, tmp_path):
    con, var, mask, affine = maps["con"], maps["var"], maps["mask_path"], maps["affine"]

    def run(c=con, v=var, m=mask, **kw):
        return compute_fixed_effects(c, v, m, client="threads", **kw)

    with pytest.raises(ValueError, match=r"number of contrast images \(3\) differs .* variance images \(2\)"):
        run(v=var[:2])
    with pytest.raises(ValueError, match=r"degrees of freedom \(2\) differs .* contrast images \(3\)"):
        run(dofs=[10, 10])
    with pytest.raises(ValueError, match="empty"):
        run([], [])
    with pytest.raises(TypeError, match="list of images; got str"):
        run(c=con[0])
    with pytest.raises(FileNotFoundError, match=r"variance_imgs\[1\] not found: .*nope.nii"):
        run(v=[var[0], str(tmp_path / "nope.nii"), var[2]])
    other = _save(tmp_path / "other_shape.nii", np.zeros(SHAPE[:2] + (10,)), affine)
    with pytest.raises(ValueError,
                       match=r"contrast_imgs\[2\] \(.*other_shape.nii'\) is on another grid.*\(12, 14, 10\)"):
        run(c=con[:2] + [other])
    shifted = _save(tmp_path / "shifted.nii", np.ones(SHAPE), affine + _shift(2.0))
    with pytest.raises(ValueError, match=r"variance_imgs\[0\] \(.*shifted.nii'\) is on another grid"):
        run(v=[shifted] + var[1:])
    four_d = _save(tmp_path / "var4d.nii", np.ones(SHAPE + (2,)), affine)
    with pytest.raises(ValueError, match=r"variance_imgs\[1\] .*var4d.nii.* is 4D with 2 volumes"):
        run(v=[var[0], four_d, var[2]])
    with pytest.raises(ValueError, match=r"contrast_imgs\[1\] .*con1.nii.* has 1 volumes "
                                         r"but contrast_imgs\[0\] .*var4d.nii.* has 2"):
        run(c=[four_d] + con[1:])
    five_d = _save(tmp_path / "five.nii", np.ones(SHAPE + (2, 2)), affine)
    with pytest.raises(ValueError, match=r"five.nii.*must be a 3D image.*\(12, 14, 9, 2, 2\)"):
        run(c=[five_d] + con[1:])
    empty = _save(tmp_path / "empty_mask.nii", np.zeros(SHAPE, np.uint8), affine)
    with pytest.raises(ValueError, match=r"mask .*empty_mask.nii.* is invalid.*empty"):
        run(m=empty)
    coarse = _save(tmp_path / "coarse_mask.nii", np.ones((6, 7, 5), np.uint8), affine * [[2], [2], [2], [1]])
    with pytest.raises(ValueError, match=r"mask .*coarse_mask.nii.* \(shape \(6, 7, 5\).*not on the grid"):
        run(m=coarse)
    with pytest.raises(ValueError, match=r"v_chunk must be a positive integer.*0"):
        run(v_chunk=0)
    blank = [_save(tmp_path / f"blank{r}.nii", np.full(SHAPE, 2.0), affine) for r in range(3)]
    with pytest.raises(ValueError, match="mask computed from the mean of the 3 contrast images"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(c=blank, m=None)


def _shift(dx: float) -> np.ndarray:
    out = np.zeros((4, 4))
    out[0, 3] = dx
    return out

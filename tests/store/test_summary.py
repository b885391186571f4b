"""``daskglm.store.summary``: a run's mean image and value range in one pass of block tasks.

Oracles: nilearn's ``mean_img`` and numpy over the whole array in memory.
"""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import mean_img

import daskglm.runtime.plan
from daskglm.io.nifti import inspect_run
from daskglm.store import summary as _summary

SHAPE = (10, 9, 8, 23)


def _run(dtype: str, non_finite: bool = False) -> nib.Nifti1Image:
    rng = np.random.default_rng(7)
    data = rng.normal(100.0, 20.0, size=SHAPE).astype(dtype)
    if non_finite:
        data[1, 2, 3, 4] = np.nan
        data[5, 5, 5, :] = np.nan  # a voxel NaN throughout
        data[0, 0, 0, 22] = -np.inf
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    affine[:3, 3] = (-12.0, 4.0, 9.0)
    return nib.Nifti1Image(data, affine)


@pytest.fixture(params=["nii", "nii.gz", "memory"])
def run(request, tmp_path):
    img = _run("float32")
    if request.param == "memory":
        return img, img
    path = tmp_path / f"run.{request.param}"
    nib.save(img, path)
    return str(path), img


@pytest.fixture(params=[None, 7], ids=["one-block", "blocks-of-7"])
def t_chunk(request, monkeypatch):
    """Either the planned blocks (one, for data this small) or blocks of 7 scans (ragged last)."""
    if request.param is not None:
        monkeypatch.setattr(daskglm.runtime.plan, "plan_chunks",
                            functools.partial(daskglm.runtime.plan.plan_chunks, t_chunk=request.param))
    return request.param


def test_mean_image_is_nilearns_mean_img(run, t_chunk):
    source, img = run
    ours = _summary.mean_image(source, client="sync")
    # nilearn averages float32 data in float32; daskglm sums in float64
    np.testing.assert_allclose(ours.get_fdata(), mean_img(img).get_fdata(), rtol=1e-6)
    data = np.asanyarray(img.dataobj).astype(np.float64)
    np.testing.assert_allclose(ours.get_fdata(), data.mean(axis=3), rtol=1e-13)
    np.testing.assert_array_equal(ours.affine, img.affine)
    assert ours.shape == SHAPE[:3]


def test_value_range_and_non_finite_values(tmp_path, t_chunk):
    img = _run("float64", non_finite=True)
    path = tmp_path / "run.nii"
    nib.save(img, path)
    data = np.asanyarray(img.dataobj)
    info = inspect_run(str(path))
    mean, low, high = _summary.run_summary(str(path), info, None, "sync")
    # non-finite values count as 0 in the mean; the range is nanmin / nanmax of the whole run
    np.testing.assert_allclose(mean, np.where(np.isfinite(data), data, 0.0).sum(axis=3) / SHAPE[3],
                               rtol=1e-12)
    assert (low, high) == (np.nanmin(data), np.nanmax(data))
    assert low == -np.inf
    none, low_only, high_only = _summary.run_summary(str(path), info, None, "sync", want_mean=False)
    assert none is None and (low_only, high_only) == (low, high)


def test_in_memory_blocks_cover_the_run_in_order():
    img = _run("float32")
    bounds = daskglm.runtime.plan.block_bounds(SHAPE[3], 7)
    blocks = _summary.in_memory_blocks(img, bounds)
    assert [b.shape[3] for b in blocks] == [7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=3), np.asanyarray(img.dataobj))


def test_graph_constant_is_one_key_or_none():
    assert _summary.graph_constant(None) is None
    value = np.arange(5)
    key = _summary.graph_constant(value)
    np.testing.assert_array_equal(key.compute(), value)
    assert len(key.__dask_graph__()) == 1


def test_gzip_index_only_for_compressed_files(tmp_path):
    img = _run("float32")
    plain, packed = tmp_path / "run.nii", tmp_path / "run.nii.gz"
    nib.save(img, plain)
    nib.save(img, packed)
    assert _summary.gzip_index_task(inspect_run(str(plain)), None) is None
    assert _summary.gzip_index_task(inspect_run(img), None) is None
    index = _summary.gzip_index_task(inspect_run(str(packed)), None).compute(scheduler="sync")
    assert isinstance(index, bytes) and len(index) > 0

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


@pytest.mark.parametrize("dtype, non_finite", [("int16", False), ("float64", True)])
@pytest.mark.parametrize("client, n_runs", [("threads", 1), ("sync", 2)], ids=["indexed", "sequential"])
def test_mean_images_of_gz_runs_by_index_or_read_through(tmp_path, t_chunk, dtype, non_finite, client, n_runs,
                                                         monkeypatch):
    """mean_images of .nii.gz runs: fewer runs than threads get seek indexes, kept for their ingestion (not
    built again); as many runs as threads are each read from start to end by one task, with no index. Either
    way each mean is numpy's over the run in memory (the oracle), and bit for bit the block tasks' through a
    separately built index."""
    imgs, paths = [], []
    for r in range(n_runs):
        img = _run(dtype, non_finite)
        data = np.asanyarray(img.dataobj)[..., ::-1] if r else np.asanyarray(img.dataobj)
        imgs.append(nib.Nifti1Image((data * 10).astype(dtype) if dtype == "int16" else data, img.affine))
        paths.append(str(tmp_path / f"run-{r}.nii.gz"))
        nib.save(imgs[-1], paths[-1])
    infos = [inspect_run(path) for path in paths]
    assert _summary.indexes_pay(infos, client) is (client == "threads")
    means = _summary.mean_images(paths, client=client)

    def no_compute(*args, **kwargs):
        raise AssertionError("a seek index was built again")

    with monkeypatch.context() as patch:
        patch.setattr(_summary, "compute", no_compute)
        kept = _summary.gzip_indexes(infos, "sync", build=False)
    assert all(index is not None for index in kept) if client == "threads" else kept == [None] * n_runs
    from daskglm.io.nifti import build_gzip_index, read_volumes

    for img, path, info, mean, index in zip(imgs, paths, infos, means, kept):
        data = np.asanyarray(img.dataobj).astype(np.float64)
        np.testing.assert_allclose(mean.get_fdata(), np.where(np.isfinite(data), data, 0).mean(axis=3),
                                   rtol=1e-12)
        separate = build_gzip_index(path, info.data_bytes)
        np.testing.assert_array_equal(mean.get_fdata(), _summary.run_summary(path, info, separate, "sync")[0])
        for a, b in ((0, 5), (17, 23)):
            np.testing.assert_array_equal(read_volumes(path, a, b, index or separate),
                                          np.asanyarray(img.dataobj)[..., a:b])

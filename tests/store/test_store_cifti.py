"""CIFTI dense time series go into stores in blocks of columns (the file's own order), resumably."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import zarr
from nibabel.cifti2 import cifti2_axes as ax

from daskglm.io.cifti import GRID_AFFINE, read_cifti_columns
from daskglm.store import ingest as _ingest
from daskglm.store.ingest import ingest_run, ingest_runs

N_SCANS = 30


@pytest.fixture
def dtseries(tmp_path):
    """A dense time series of 61 left-cortex grayordinates and 30 scans, and its matrix (float32)."""
    models = ax.BrainModelAxis.from_surface(np.arange(0, 122, 2), 130, "CortexLeft")
    data = np.random.default_rng(3).normal(1000, 20, size=(N_SCANS, len(models))).astype(np.float32)
    img = nib.Cifti2Image(data, header=(ax.SeriesAxis(0, 2.0, N_SCANS, unit="SECOND"), models))
    img.nifti_header.set_intent("ConnDenseSeries")
    path = tmp_path / "run.dtseries.nii"
    nib.save(img, path)
    return str(path), data


def ones_mask(n: int, keep: np.ndarray | None = None) -> nib.Nifti1Image:
    mask = np.zeros((n, 1, 1), np.int8)
    mask[keep if keep is not None else slice(None)] = 1
    return nib.Nifti1Image(mask, GRID_AFFINE)


class ColumnReads:
    """Count (and optionally fail) the column reads of the ingestion tasks, by first grayordinate."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None):
        self.calls: list[int] = []

        def counted(path, grayordinates):
            if fail_on_call is not None and len(self.calls) == fail_on_call:
                raise OSError("simulated crash")
            self.calls.append(int(grayordinates[0]))
            return read_cifti_columns(path, grayordinates)

        monkeypatch.setattr(_ingest, "read_cifti_columns", counted)


def test_a_dense_time_series_is_ingested_in_blocks_of_columns(dtseries, tmp_path, monkeypatch):
    path, data = dtseries
    reads = ColumnReads(monkeypatch)
    ds = ingest_run(path, tmp_path / "s.zarr", mask_img=ones_mask(data.shape[1]), t_chunk=7, v_chunk=16,
                    client="sync")
    assert sorted(reads.calls) == [0, 16, 32, 48]  # 61 columns: 4 blocks, the last of 13
    np.testing.assert_array_equal(ds.bold.values, data)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert group["bold"].chunks == (7, 16) and group["ingest_done"][:].tolist() == [1, 1, 1, 1]
    assert json.loads(group.attrs["fingerprint"])["blocks"] == "columns"


def test_a_mask_with_gaps_keeps_its_grayordinates_in_order(dtseries, tmp_path):
    path, data = dtseries
    keep = np.sort(np.random.default_rng(0).choice(data.shape[1], 40, replace=False))
    ds = ingest_run(path, tmp_path / "s.zarr", mask_img=ones_mask(data.shape[1], keep), v_chunk=9, client="sync")
    np.testing.assert_array_equal(ds["i"].values, keep)
    np.testing.assert_array_equal(ds.bold.values, data[:, keep])


def test_an_interrupted_column_ingestion_resumes_the_missing_blocks(dtseries, tmp_path, monkeypatch):
    path, data = dtseries
    kwargs = dict(mask_img=ones_mask(data.shape[1]), v_chunk=16, client="sync")
    ColumnReads(monkeypatch, fail_on_call=2)
    with pytest.raises(ValueError, match="simulated crash"):
        ingest_run(path, tmp_path / "s.zarr", **kwargs)
    done = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["ingest_done"][:].astype(bool)
    assert done.sum() == 2
    monkeypatch.undo()
    reads = ColumnReads(monkeypatch)
    resumed = ingest_run(path, tmp_path / "s.zarr", **kwargs)
    assert sorted(reads.calls) == [16 * b for b in np.flatnonzero(~done)]  # only the missing blocks
    np.testing.assert_array_equal(resumed.bold.values, data)


def test_non_finite_values_are_zero_as_in_volume_stores(dtseries, tmp_path):
    path, data = dtseries
    data = data.copy()
    data[3, 5], data[7, 40] = np.nan, np.inf
    img = nib.load(path)
    nib.save(nib.Cifti2Image(data, header=img.header, nifti_header=img.nifti_header), path)
    ds = ingest_run(path, tmp_path / "s.zarr", mask_img=ones_mask(data.shape[1]), client="sync")
    expected = np.where(np.isfinite(data), data, 0)
    np.testing.assert_array_equal(ds.bold.values, expected)


def test_volume_runs_keep_their_fingerprints_and_row_blocks(small_run, tmp_path):
    """Only CIFTI runs changed: a volume store's fingerprint has no ``blocks`` key (existing stores reused)."""
    ingest_runs([small_run["nii"]], [tmp_path / "v.zarr"], mask_img=small_run["mask_path"], t_chunk=15,
                client="sync")
    group = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    assert "blocks" not in json.loads(group.attrs["fingerprint"])
    assert group["ingest_done"].shape == (2,)  # 30 volumes in blocks of 15


def test_without_a_mask_every_grayordinate_is_stored(dtseries, tmp_path):
    """(nilearn's compute_epi_mask of a dense time series' "mean volume" was empty: ingest_run and
    daskglm convert failed with no way to give a mask)."""
    path, data = dtseries
    ds = ingest_run(path, tmp_path / "s.zarr", client="sync")
    np.testing.assert_array_equal(ds["bold"].values, data)
    assert ds.attrs["mask"]["source"] == "every grayordinate"

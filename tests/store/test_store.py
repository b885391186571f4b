"""Ingestion into zarr stores: parity with nilearn's masker, store hygiene, bad input."""

from __future__ import annotations

import gzip
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import zarr
from nilearn.maskers import NiftiMasker
from nilearn.masking import compute_epi_mask

from daskglm.store import ingest as store_mod
from daskglm.store import summary as _summary_mod
from daskglm.store.ingest import ingest_run
from daskglm.store.zarrio import StoreIncompleteError, open_run


def masker_reference(run, mask, fwhm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NiftiMasker(mask_img=str(mask), smoothing_fwhm=fwhm).fit_transform(str(run))


@pytest.mark.parametrize("kind", ["nii", "nii.gz"])
@pytest.mark.parametrize("fwhm", [None, 5.0])
def test_ingested_bold_equals_nilearn_masker(small_run, tmp_path, kind, fwhm, cluster_client):
    """On a real two-process cluster, bold equals NiftiMasker(mask, fwhm).fit_transform."""
    ds = ingest_run(
        small_run[kind], tmp_path / "run.zarr", mask_img=small_run["mask_path"],
        smoothing_fwhm=fwhm, t_chunk=7, v_chunk=500, client=cluster_client,
    )
    expected = masker_reference(small_run[kind], small_run["mask_path"], fwhm)
    assert ds["bold"].dims == ("time", "voxel")
    assert ds["bold"].dtype == np.float32
    assert ds["bold"].data.chunksize == (7, 500)
    np.testing.assert_allclose(ds["bold"].values, expected, rtol=1e-6, atol=1e-4)


def test_store_metadata_and_coordinates(small_run, tmp_path):
    path = small_run["nii.gz"]
    ds = ingest_run(path, tmp_path / "s.zarr", mask_img=small_run["mask_path"],
                    smoothing_fwhm=6.0, client="threads")
    assert ds.attrs["t_r"] == 2.0
    np.testing.assert_array_equal(np.asarray(ds.attrs["affine"]), small_run["affine"])
    assert ds.attrs["volume_shape"] == [20, 22, 14]
    assert ds.attrs["n_scans"] == 30
    assert ds.attrs["smoothing_fwhm"] == 6.0
    assert ds.attrs["source"]["path"] == str(path.resolve())
    assert ds.attrs["source"]["size"] == path.stat().st_size
    # Voxel coordinates follow nilearn's (C) order of the mask voxels.
    i, j, k = np.nonzero(small_run["mask"])
    np.testing.assert_array_equal(ds["i"].values, i)
    np.testing.assert_array_equal(ds["j"].values, j)
    np.testing.assert_array_equal(ds["k"].values, k)
    assert isinstance(ds, xr.Dataset) and set(ds.data_vars) == {"bold"}


@pytest.mark.parametrize("kind", ["nii", "nii.gz"])
@pytest.mark.parametrize("fwhm", [None, 5.0])
def test_a_small_mask_is_read_within_its_box_and_equals_nilearn_masker(small_run, tmp_path, kind, fwhm,
                                                                        monkeypatch):
    """A region of interest off the volume's centre: each task reads only the mask's box grown by the
    kernel radius, and the store still equals NiftiMasker(mask, fwhm).fit_transform."""
    x, y, z = np.indices(small_run["mask"].shape)
    roi = ((x - 14) ** 2 + (y - 6) ** 2 + (z - 9) ** 2 <= 5).astype(np.uint8)
    mask_path = tmp_path / "roi.nii"
    nib.save(nib.Nifti1Image(roi, small_run["affine"]), str(mask_path))
    boxes = []

    def read_volumes(path, start, stop, *args, box=None, **kwargs):
        boxes.append(tuple((part.start, part.stop) for part in box))
        return real(path, start, stop, *args, box=box, **kwargs)

    real = store_mod.read_volumes
    monkeypatch.setattr(store_mod, "read_volumes", read_volumes)
    ds = ingest_run(small_run[kind], tmp_path / "run.zarr", mask_img=str(mask_path), smoothing_fwhm=fwhm,
                    t_chunk=7, client="sync")
    np.testing.assert_allclose(ds["bold"].values, masker_reference(small_run[kind], mask_path, fwhm),
                               rtol=1e-6, atol=1e-4)
    # the sphere's bounding box, grown by scipy's radius int(4 sigma + 0.5) with sigma = 5 / 2.3548 / voxel size:
    # 3 voxels along x and y (3 mm), 2 along z (3.5 mm)
    rx, rz = (0, 0) if fwhm is None else (3, 2)
    assert set(boxes) == {((12 - rx, 17 + rx), (4 - rx, 9 + rx), (7 - rz, 12 + rz))}


def test_read_bytes_is_the_crop_of_an_uncompressed_run_else_the_whole_run(small_run, tmp_path):
    """What sizes the embedded cluster: the mask's box (grown by the kernel radius) of a .nii on the mask's
    grid; the whole run for a .nii.gz, no mask, a target grid or a mask on another grid."""
    from daskglm.io.nifti import inspect_run
    from daskglm.store.ingest import read_bytes

    x, y, z = np.indices(small_run["mask"].shape)
    roi = tmp_path / "roi.nii"
    nib.save(nib.Nifti1Image(((x - 14) ** 2 + (y - 6) ** 2 + (z - 9) ** 2 <= 5).astype(np.uint8),
                             small_run["affine"]), str(roi))
    nii, gz = inspect_run(str(small_run["nii"])), inspect_run(str(small_run["nii.gz"]))
    # boxes as in the test above: x 9..19, y 1..11, z 5..13 of a 20 x 22 x 14 volume
    assert read_bytes([nii], str(roi), 5.0) == nii.data_bytes * (11 * 11 * 9) // (20 * 22 * 14)
    assert read_bytes([nii], str(roi), None) == nii.data_bytes * (5 * 5 * 5) // (20 * 22 * 14)
    whole = nii.data_bytes
    assert read_bytes([gz], str(roi), 5.0) == gz.data_bytes == whole
    assert read_bytes([nii], None, 5.0) == whole
    assert read_bytes([nii], str(roi), 5.0, target_affine=np.diag([3.0, 3.0, 3.5])) == whole
    assert read_bytes([nii], str(small_run["fine_mask_path"]), 5.0) == whole
    # several runs: the sum of each run's bytes
    assert read_bytes([nii, gz, nii], str(roi), 5.0) == 2 * (whole * (11 * 11 * 9) // (20 * 22 * 14)) + whole


def test_default_chunks_follow_the_plan(small_run, tmp_path):
    ds = ingest_run(small_run["nii"], tmp_path / "s.zarr", mask_img=small_run["mask_path"],
                    client="sync")
    n_vox = int(small_run["mask"].sum())
    assert ds.attrs["chunks"] == {"time": 8, "voxel": min(n_vox, 1024)}
    assert ds["bold"].data.chunksize == (8, min(n_vox, 1024))


def test_in_memory_image_is_ingested(small_run, tmp_path):
    img = nib.Nifti1Image(small_run["data"], small_run["affine"])
    img.header.set_zooms((3.0, 3.0, 3.5, 2.0))
    ds = ingest_run(img, tmp_path / "mem.zarr", mask_img=small_run["mask_path"],
                    smoothing_fwhm=5.0, client="threads", t_chunk=11)
    expected = masker_reference(small_run["nii"], small_run["mask_path"], 5.0)
    np.testing.assert_allclose(ds["bold"].values, expected, rtol=1e-6, atol=1e-4)
    assert "sha1" in ds.attrs["source"]


def test_epi_mask_is_computed_when_none_given(small_run, tmp_path):
    ds = ingest_run(small_run["nii.gz"], tmp_path / "s.zarr", client="threads")
    expected = np.asarray(compute_epi_mask(str(small_run["nii.gz"])).dataobj) > 0
    got = np.zeros(expected.shape, bool)
    got[ds["i"].values, ds["j"].values, ds["k"].values] = True
    assert expected.sum() > 100
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fwhm", [None, 5.0])
def test_mask_on_another_grid_resamples_the_run_as_nilearn(small_run, tmp_path, fwhm):
    """nilearn's masker: the run goes onto the mask's cropped grid; maps stay on the mask's grid."""
    from nilearn.maskers import NiftiMasker

    with pytest.warns(UserWarning, match="imgs are being resampled to the mask_img resolution"):
        ds = ingest_run(small_run["nii"], tmp_path / "s.zarr", mask_img=small_run["fine_mask_path"],
                        smoothing_fwhm=fwhm, client="sync")
    fine = nib.load(small_run["fine_mask_path"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = NiftiMasker(small_run["fine_mask_path"], smoothing_fwhm=fwhm).fit_transform(
            str(small_run["nii"]))
    np.testing.assert_allclose(ds["bold"].values, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ds.attrs["affine"], fine.affine)
    assert tuple(ds.attrs["volume_shape"]) == fine.shape
    i, j, k = np.nonzero(np.asarray(fine.dataobj) > 0)
    np.testing.assert_array_equal(ds["i"].values, i)
    np.testing.assert_array_equal(ds["k"].values, k)


@pytest.mark.parametrize("with_mask", [True, False])
def test_target_affine_and_shape_as_nilearn(small_run, tmp_path, with_mask):
    from nilearn.maskers import NiftiMasker

    target_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    target_affine[:3, 3] = [-30.0, -33.0, -24.0]
    target_shape = (15, 17, 13)
    mask = small_run["mask_path"] if with_mask else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ingest_run(small_run["nii"], tmp_path / "t.zarr", mask_img=mask, smoothing_fwhm=5.0,
                        target_affine=target_affine, target_shape=target_shape, client="sync")
        if mask is None:  # as FirstLevelModel's masker: the EPI mask of the mean resampled to the target
            mask = compute_epi_mask(str(small_run["nii"]), target_affine=target_affine,
                                    target_shape=target_shape)
        masker = NiftiMasker(mask, target_affine=target_affine, target_shape=target_shape,
                             smoothing_fwhm=5.0)
        expected = masker.fit_transform(str(small_run["nii"]))
    np.testing.assert_allclose(ds["bold"].values, expected, rtol=1e-5, atol=1e-3)
    assert tuple(ds.attrs["volume_shape"]) == target_shape
    np.testing.assert_allclose(ds.attrs["affine"], target_affine)
    got = np.zeros(target_shape, bool)
    got[ds["i"].values, ds["j"].values, ds["k"].values] = True
    np.testing.assert_array_equal(got, np.asarray(masker.mask_img_.dataobj) > 0)
    # Another target is another store: rebuilt, not reused.
    with pytest.warns(UserWarning, match="rebuilding"):
        other = ingest_run(small_run["nii"], tmp_path / "t.zarr", mask_img=mask, smoothing_fwhm=5.0,
                           target_affine=np.diag([5.0, 5.0, 5.0, 1.0]), client="sync")
    assert tuple(other.attrs["volume_shape"]) != target_shape


def test_bad_target_is_named(small_run, tmp_path):
    with pytest.raises(ValueError, match="target_shape needs a 4x4 target_affine"):
        ingest_run(small_run["nii"], tmp_path / "a.zarr", target_shape=(10, 10, 10), client="sync")
    with pytest.raises(ValueError, match="target_affine must be a finite 3x3 or 4x4"):
        ingest_run(small_run["nii"], tmp_path / "b.zarr", target_affine=np.eye(2), client="sync")
    with pytest.raises(ValueError, match=r"target_shape must be 3 positive integers; got \(10, 0, 10\)"):
        ingest_run(small_run["nii"], tmp_path / "c.zarr", target_affine=np.eye(4),
                   target_shape=(10, 0, 10), client="sync")
    assert not any((tmp_path / n).exists() for n in ("a.zarr", "b.zarr", "c.zarr"))


# --------------------------------------------------------------------------- hygiene


class ReadCounter:
    """Counts calls to read_volumes (wrapping the real one)."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None, t_chunk: int = 1):
        self.calls: list[int] = []
        self.real = store_mod.read_volumes
        self.fail_on_call = fail_on_call
        self.t_chunk = t_chunk
        monkeypatch.setattr(store_mod, "read_volumes", self)

    def __call__(self, path, start, stop, gzip_index=None, **kwargs):
        block = start // self.t_chunk
        if len(self.calls) == self.fail_on_call:
            raise OSError(f"simulated crash while reading block {block}")
        self.calls.append(block)
        return self.real(path, start, stop, gzip_index, **kwargs)


def test_complete_store_is_reused_without_reading(small_run, tmp_path, monkeypatch):
    kwargs = dict(mask_img=small_run["mask_path"], smoothing_fwhm=5.0, t_chunk=10, client="sync")
    first = ingest_run(small_run["nii.gz"], tmp_path / "s.zarr", **kwargs).bold.values
    counter = ReadCounter(monkeypatch, t_chunk=10)
    again = ingest_run(small_run["nii.gz"], tmp_path / "s.zarr", **kwargs)
    assert counter.calls == []
    np.testing.assert_array_equal(again.bold.values, first)


def test_changed_parameters_or_source_rebuild_the_store(small_run, tmp_path):
    run = tmp_path / "run.nii"
    shutil.copy(small_run["nii"], run)
    kwargs = dict(mask_img=small_run["mask_path"], client="sync", t_chunk=10)
    ingest_run(run, tmp_path / "s.zarr", smoothing_fwhm=None, **kwargs)
    with pytest.warns(UserWarning, match="rebuilding"):
        smoothed = ingest_run(run, tmp_path / "s.zarr", smoothing_fwhm=5.0, **kwargs)
    np.testing.assert_allclose(
        smoothed.bold.values, masker_reference(run, small_run["mask_path"], 5.0), rtol=1e-6, atol=1e-4)
    # Same path, new content: provenance (size/mtime) differs, the store is rebuilt.
    data = small_run["data"].copy()
    data[..., 0] += 7
    img = nib.Nifti1Image(data, small_run["affine"])
    nib.save(img, str(run))
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = ingest_run(run, tmp_path / "s.zarr", smoothing_fwhm=5.0, **kwargs)
    np.testing.assert_allclose(
        rebuilt.bold.values, masker_reference(run, small_run["mask_path"], 5.0), rtol=1e-6, atol=1e-4)


def test_interrupted_ingestion_is_never_complete_and_resumes(small_run, tmp_path, monkeypatch):
    kwargs = dict(mask_img=small_run["mask_path"], smoothing_fwhm=5.0, t_chunk=5, client="sync")
    reference = ingest_run(small_run["nii.gz"], tmp_path / "clean.zarr", **kwargs).bold.values
    target = tmp_path / "s.zarr"
    crash = ReadCounter(monkeypatch, fail_on_call=3, t_chunk=5)  # the 4th block read fails
    with pytest.raises(OSError, match="simulated crash"):
        ingest_run(small_run["nii.gz"], target, **kwargs)
    with pytest.raises(StoreIncompleteError, match="incomplete"):
        open_run(target)
    done = zarr.open_group(str(target), mode="r")["ingest_done"][:].astype(bool)
    # The sync scheduler runs one task at a time: the three blocks read before
    # the crash were written and flagged, the others were not.
    assert sorted(np.flatnonzero(done).tolist()) == sorted(crash.calls)
    assert done.sum() == 3
    monkeypatch.undo()
    counter = ReadCounter(monkeypatch, t_chunk=5)
    resumed = ingest_run(small_run["nii.gz"], target, **kwargs)
    assert sorted(counter.calls) == np.flatnonzero(~done).tolist()  # only missing blocks read
    np.testing.assert_array_equal(resumed.bold.values, reference)


def test_overwrite_forces_a_rebuild(small_run, tmp_path, monkeypatch):
    kwargs = dict(mask_img=small_run["mask_path"], client="sync", t_chunk=15)
    ingest_run(small_run["nii"], tmp_path / "s.zarr", **kwargs)
    counter = ReadCounter(monkeypatch, t_chunk=15)
    ingest_run(small_run["nii"], tmp_path / "s.zarr", overwrite=True, **kwargs)
    assert sorted(counter.calls) == [0, 1]


def test_open_run_refuses_foreign_or_missing_stores(tmp_path):
    with pytest.raises(FileNotFoundError, match="no daskglm store"):
        open_run(tmp_path / "nothing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", attributes={"x": 1})
    with pytest.raises(ValueError, match="not a daskglm run store"):
        open_run(tmp_path / "other.zarr")


# --------------------------------------------------------------------------- bad input


def _bad_files(small_run, tmp_path):
    data, affine = small_run["data"], small_run["affine"]
    three_d = tmp_path / "three_d.nii.gz"
    nib.save(nib.Nifti1Image(data[..., 0], affine), str(three_d))
    five_d = tmp_path / "five_d.nii.gz"
    nib.save(nib.Nifti1Image(data[..., None], affine), str(five_d))
    text = tmp_path / "not_nifti.nii.gz"
    with gzip.open(text, "wb") as f:
        f.write(b"this is not a NIfTI file at all\n" * 20)
    raw = small_run["nii.gz"].read_bytes()
    truncated_gz = tmp_path / "truncated.nii.gz"
    truncated_gz.write_bytes(raw[: len(raw) // 2])
    corrupt_gz = tmp_path / "corrupt.nii.gz"
    corrupt = bytearray(raw)
    for pos in range(len(raw) // 2, len(raw) // 2 + 400):
        corrupt[pos] ^= 0x5A
    corrupt_gz.write_bytes(bytes(corrupt))
    truncated_nii = tmp_path / "truncated.nii"
    truncated_nii.write_bytes(small_run["nii"].read_bytes()[:-1000])
    return {
        "missing": (tmp_path / "missing.nii.gz", FileNotFoundError, "not found.*missing.nii.gz"),
        "directory": (tmp_path, IsADirectoryError, "is a directory"),
        "3D": (three_d, ValueError, r"three_d.nii.gz.*must be 4D.*3D shape \(20, 22, 14\)"),
        "5D": (five_d, ValueError, r"five_d.nii.gz.*must be 4D.*5D"),
        "not NIfTI": (text, ValueError, "not_nifti.nii.gz.*not a readable NIfTI"),
        "truncated gz": (truncated_gz, ValueError, "truncated.nii.gz.*(truncated|corrupt)"),
        "corrupt gz": (corrupt_gz, ValueError, "corrupt.nii.gz.*(corrupt|truncated)"),
        "truncated nii": (truncated_nii, ValueError, "truncated.nii.*truncated"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "directory", "3D", "5D", "not NIfTI", "truncated gz", "corrupt gz", "truncated nii"]
)
def test_bad_runs_get_clear_errors_and_no_complete_store(small_run, tmp_path, case):
    path, exc, pattern = _bad_files(small_run, tmp_path)[case]
    target = tmp_path / "out.zarr"
    with pytest.raises(exc, match=pattern):
        ingest_run(path, target, mask_img=small_run["mask_path"], client="sync")
    with pytest.raises((FileNotFoundError, StoreIncompleteError)):
        open_run(target)


def test_bad_masks_get_clear_errors(small_run, tmp_path):
    affine = small_run["affine"]
    empty = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 22, 14), np.uint8), affine), str(empty))
    with pytest.raises(ValueError, match="empty_mask.nii.gz.*(empty|masks all data)"):
        ingest_run(small_run["nii"], tmp_path / "a.zarr", mask_img=empty, client="sync")
    labels = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image((np.arange(20 * 22 * 14).reshape(20, 22, 14) % 3).astype(np.int16), affine), str(labels))
    with pytest.raises(ValueError, match="labels.nii.gz.*(2 values|binary)"):
        ingest_run(small_run["nii"], tmp_path / "b.zarr", mask_img=labels, client="sync")
    far = affine.copy()
    far[:3, 3] += 1000  # a mask entirely outside the run's field of view
    outside = tmp_path / "outside.nii.gz"
    nib.save(nib.Nifti1Image(small_run["mask"].astype(np.uint8), far), str(outside))
    with pytest.raises(ValueError, match="outside.nii.gz.*no voxel inside the field of view"):
        ingest_run(small_run["nii"], tmp_path / "c.zarr", mask_img=outside, client="sync")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        ingest_run(small_run["nii"], tmp_path / "d.zarr", mask_img=tmp_path / "nope.nii.gz",
                   client="sync")
    for name in "abcd":
        assert not (tmp_path / f"{name}.zarr").exists()


def test_unwritable_store_is_named(small_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="a_file/run.zarr"):
        ingest_run(small_run["nii"], blocker / "run.zarr", mask_img=small_run["mask_path"],
                   client="sync")


def test_a_location_holding_other_files_is_never_deleted(small_run, tmp_path):
    kwargs = dict(mask_img=small_run["mask_path"], client="sync")
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"results' is a folder holding \['notes.txt'\], not a daskglm store"):
            ingest_run(small_run["nii"], folder, overwrite=overwrite, **kwargs)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "data.zarr"
    a_file.write_text("not a store")
    with pytest.raises(FileExistsError, match="data.zarr' is a file"):
        ingest_run(small_run["nii"], a_file, **kwargs)
    assert a_file.read_text() == "not a store"
    # A store is recognised by the attribute daskglm writes first, never by member names:
    # another zarr group with a 'bold' array, a folder of hidden files, of entries named like a
    # store's members or of '.partial' files are the user's, and refused untouched.
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("bold", shape=(2, 2), dtype="float32")
    lookalikes = {"hidden": [".git/", ".env"], "members": ["glm/", "bold", "i"], "partials": ["a.partial"]}
    for name, entries in lookalikes.items():
        for entry in entries:
            path = tmp_path / name / entry.rstrip("/")
            path.parent.mkdir(exist_ok=True)
            path.mkdir() if entry.endswith("/") else path.write_text("mine")
    for folder in [foreign, *(tmp_path / name for name in lookalikes)]:
        before = sorted((str(p.relative_to(folder)), p.is_file() and p.read_bytes()) for p in folder.rglob("*"))
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match="not a daskglm store: refusing to delete it"):
                ingest_run(small_run["nii"], folder, overwrite=overwrite, **kwargs)
        assert sorted((str(p.relative_to(folder)), p.is_file() and p.read_bytes())
                      for p in folder.rglob("*")) == before
    # An empty folder is used, as is one holding only the debris of a first metadata write
    # killed before its rename (zarr.<uuid>.partial), which is swept.
    (tmp_path / "empty.zarr").mkdir()
    assert ingest_run(small_run["nii"], tmp_path / "empty.zarr", **kwargs).sizes["time"] == 30
    debris = tmp_path / "debris.zarr"
    debris.mkdir()
    (debris / f"zarr.{'0' * 32}.partial").write_text("{")
    assert ingest_run(small_run["nii"], debris, **kwargs).sizes["time"] == 30
    assert not list(debris.glob("*.partial"))


def test_stores_of_another_format_are_rebuilt_and_bad_urls_refused(small_run, tmp_path):
    kwargs = dict(mask_img=small_run["mask_path"], client="sync")
    first = ingest_run(small_run["nii"], tmp_path / "s.zarr", **kwargs).bold.values
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs["daskglm_store_format"] = 0  # as an older daskglm wrote it
    group["bold"][:] = 0.0
    with pytest.warns(UserWarning, match="has daskglm store format 0 while this daskglm writes format 2: rebuilding"):
        again = ingest_run(small_run["nii"], tmp_path / "s.zarr", **kwargs)
    np.testing.assert_array_equal(again.bold.values, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any work: no "rebuilding" warning
        with pytest.raises(ValueError, match="store 'nosuch://b/s.zarr': unknown protocol 'nosuch'"):
            ingest_run(small_run["nii"], "nosuch://b/s.zarr", **kwargs)
        with pytest.raises(ValueError, match="v_chunk must be a positive integer or None; got 0"):
            ingest_run(small_run["nii"], tmp_path / "s.zarr", v_chunk=0, **kwargs)


def test_bad_chunk_and_compressor_are_named(small_run, tmp_path):
    with pytest.raises(ValueError, match="t_chunk.*0"):
        ingest_run(small_run["nii"], tmp_path / "s.zarr", mask_img=small_run["mask_path"],
                   t_chunk=0, client="sync")
    with pytest.raises(ValueError, match="compressor.*'brotli'"):
        ingest_run(small_run["nii"], tmp_path / "s.zarr", mask_img=small_run["mask_path"],
                   compressor="brotli", client="sync")


def test_several_runs_in_one_computation_equal_one_at_a_time(small_run, tmp_path, cluster_client):
    """ingest_runs (one computation for every run's blocks) writes what ingest_run writes run by run,
    reuses a complete store, and resumes an interrupted one."""
    from daskglm.store.ingest import ingest_runs

    kwargs = dict(mask_img=small_run["mask_path"], smoothing_fwhm=5.0, t_chunk=7)
    runs = [small_run["nii"], small_run["nii.gz"]]
    alone = [ingest_run(run, tmp_path / f"alone{i}.zarr", client="sync", **kwargs).bold.values
             for i, run in enumerate(runs)]
    stores = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    together = ingest_runs(runs, stores, client=cluster_client, **kwargs)
    for ds, expected in zip(together, alone):
        np.testing.assert_array_equal(ds.bold.values, expected)
    # interrupt the second store: flag one block undone, zero its rows
    group = zarr.open_group(str(stores[1]), mode="r+")
    group.attrs["complete"] = False
    group["ingest_done"][1] = 0
    group["bold"][7:14, :] = 0
    again = ingest_runs(runs, stores, client=cluster_client, **kwargs)
    np.testing.assert_array_equal(again[1].bold.values, alone[1])
    np.testing.assert_array_equal(again[0].bold.values, alone[0])


def test_compressed_runs_as_many_as_threads_are_read_through_by_one_task_each(small_run, tmp_path, monkeypatch):
    """With no fewer .nii.gz runs than threads, no seek index is built: each run's blocks are one task reading
    the run from start to end; the stores equal NiftiMasker's output and hold no index."""
    from daskglm.store.ingest import ingest_runs

    runs = [small_run["nii.gz"], tmp_path / "copy.nii.gz"]
    shutil.copy(runs[0], runs[1])
    tasks = []
    real = store_mod._ingest_block

    def counted(work, crop, gzip_index, source, blocks):
        tasks.append((gzip_index, [block for block, _, _ in blocks]))
        return real(work, crop, gzip_index, source, blocks)

    monkeypatch.setattr(store_mod, "_ingest_block", counted)
    _summary_mod._GZIP_INDEXES.clear()  # an index this session built before would be used: it is free
    monkeypatch.setattr(_summary_mod, "gzip_index_task", lambda *args: pytest.fail("a seek index was built"))
    opened = ingest_runs(runs, [tmp_path / "a.zarr", tmp_path / "b.zarr"], mask_img=small_run["mask_path"],
                         smoothing_fwhm=5.0, t_chunk=7, client="sync")
    assert tasks == [(None, [0, 1, 2, 3, 4])] * 2  # 30 volumes in blocks of 7
    expected = masker_reference(small_run["nii.gz"], small_run["mask_path"], 5.0)
    for ds, store in zip(opened, ("a.zarr", "b.zarr")):
        np.testing.assert_allclose(ds["bold"].values, expected, rtol=1e-6, atol=1e-4)
        assert zarr.open_group(str(tmp_path / store), mode="r")["gzip_index"].shape == (0,)


def test_runs_cannot_share_a_store(small_run, tmp_path):
    from daskglm.store.ingest import ingest_runs

    with pytest.raises(ValueError, match="share a store.*same.zarr"):
        ingest_runs([small_run["nii"], small_run["nii.gz"]], [tmp_path / "same.zarr"] * 2, client="sync")
    with pytest.raises(ValueError, match="2 runs but 1 stores"):
        ingest_runs([small_run["nii"], small_run["nii.gz"]], [tmp_path / "x.zarr"], client="sync")
    assert not (tmp_path / "same.zarr").exists()

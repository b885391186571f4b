"""CIFTI-2 dense time series in, dense scalars out (daskglm.io.cifti), against nibabel's own reading."""

from __future__ import annotations

import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes as ax

from daskglm.io.cifti import check_same_brain_models, structure_of, to_dscalar
from daskglm.io.nifti import inspect_run, read_volumes


def brain_models(n_vertices: int = 40, subcortical: bool = True, structure: str = "thalamus_left"):
    """Left cortex (every other vertex of a mesh of 2 n + 10) and, optionally, a small voxel structure."""
    models = ax.BrainModelAxis.from_surface(np.arange(0, 2 * n_vertices, 2), 2 * n_vertices + 10, "CortexLeft")
    if subcortical:
        mask = np.zeros((5, 5, 5), bool)
        mask[1:4, 1:4, 1:3] = True
        models = models + ax.BrainModelAxis.from_mask(mask, affine=np.diag([2.0, 2.0, 2.0, 1.0]), name=structure)
    return models


def dtseries(path, data: np.ndarray, models, t_r: float = 2.0):
    img = nib.Cifti2Image(data.astype(np.float32), header=(ax.SeriesAxis(0, t_r, data.shape[0], unit="SECOND"),
                                                          models))
    img.nifti_header.set_intent("ConnDenseSeries")
    nib.save(img, path)
    return path


def test_a_dense_time_series_is_a_run_of_grayordinate_columns(tmp_path):
    models = brain_models()
    data = np.random.default_rng(0).normal(size=(25, len(models))).astype(np.float32)
    path = dtseries(tmp_path / "run.dtseries.nii", data, models, t_r=0.72)
    info = inspect_run(str(path))
    assert info.shape == (len(models), 1, 1, 25)
    assert info.t_r == pytest.approx(0.72)
    np.testing.assert_array_equal(info.affine, np.eye(4))
    rows = read_volumes(str(info.path), 5, 12)
    assert rows.shape == (len(models), 1, 1, 7)
    np.testing.assert_array_equal(rows[:, 0, 0, :], data[5:12].T)


def test_rows_are_read_from_the_file_not_the_whole_matrix(tmp_path):
    """Only the scans asked for are kept: memory is that of the rows plus one read window, not of the run."""
    models = brain_models(n_vertices=10_000, subcortical=False)
    data = np.ones((1500, len(models)), np.float32)  # 60 MB on disk
    path = dtseries(tmp_path / "big.dtseries.nii", data, models)
    del data
    tracemalloc.start()
    rows = read_volumes(str(path), 100, 110)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows.shape == (len(models), 1, 1, 10)
    assert peak < 8 * 2**20, peak  # 10 rows are 0.4 MB (and nibabel parses the header's XML); the run is 60 MB


@pytest.mark.parametrize("window_rows", [1, 3, 7, 1000])
def test_scans_are_gathered_across_read_windows_as_nibabel_reads_them(tmp_path, monkeypatch, window_rows):
    """The file is streamed a window of whole time series at a time (last window partial or not):
    every range of scans equals nibabel's proxy, scaled int16 (slope, intercept) included."""
    from daskglm.io import cifti

    models = brain_models()  # 58 grayordinates
    data = np.random.default_rng(1).normal(100, 10, size=(25, len(models))).astype(np.float32)
    plain = dtseries(tmp_path / "f32.dtseries.nii", data, models)
    scaled = nib.Cifti2Image(data, header=(ax.SeriesAxis(0, 2.0, 25, unit="SECOND"), models))
    scaled.set_data_dtype(np.int16)  # nibabel writes scl_slope / scl_inter
    nib.save(scaled, tmp_path / "i16.dtseries.nii")
    monkeypatch.setattr(cifti, "READ_WINDOW_BYTES", window_rows * 25 * 4)
    for path in (plain, tmp_path / "i16.dtseries.nii"):
        proxy = nib.load(path).dataobj
        for start, stop in ((0, 25), (5, 12), (24, 25), (3, 3)):
            rows = read_volumes(str(path), start, stop)
            expected = np.asarray(proxy[start:stop]).T
            assert rows.shape == (len(models), 1, 1, stop - start) and rows.dtype == expected.dtype
            np.testing.assert_array_equal(rows[:, 0, 0, :], expected)


def test_a_truncated_dense_time_series_is_named_with_the_grayordinate_cut_short(tmp_path):
    models = brain_models()
    path = dtseries(tmp_path / "cut.dtseries.nii", np.ones((25, len(models)), np.float32), models)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 10 * 25 * 4 - 8)  # the last 10 grayordinates' series and a bit of one more
    with pytest.raises(ValueError, match=r"cut\.dtseries\.nii.*ends before its data do: grayordinate 47 of 58"):
        read_volumes(str(path), 0, 5)


def test_other_cifti_kinds_are_refused_naming_their_axes(tmp_path):
    models = brain_models()
    scalars = nib.Cifti2Image(np.zeros((2, len(models)), np.float32), header=(ax.ScalarAxis(["a", "b"]), models))
    path = tmp_path / "maps.dtseries.nii"
    nib.save(scalars, path)
    with pytest.raises(ValueError, match=r"maps\.dtseries\.nii.*dense time series.*ScalarAxis"):
        inspect_run(str(path))


def test_runs_whose_brain_models_differ_are_named_with_the_structure():
    same = brain_models()
    check_same_brain_models([same, brain_models()], ["a", "b"])  # equal: no error
    with pytest.raises(ValueError, match=r"THALAMUS_LEFT only in a"):
        check_same_brain_models([same, brain_models(subcortical=False)], ["a", "b"])
    with pytest.raises(ValueError, match=r"CORTEX_LEFT: 40 surface grayordinates in a, 30 in b"):
        check_same_brain_models([same, brain_models(n_vertices=30)], ["a", "b"])
    with pytest.raises(ValueError, match=r"THALAMUS_RIGHT only in b"):
        check_same_brain_models([same, brain_models(structure="thalamus_right")], ["a", "b"])
    shifted = ax.BrainModelAxis.from_surface(np.arange(1, 81, 2), 90, "CortexLeft") + brain_models()[40:]
    with pytest.raises(ValueError, match=r"CORTEX_LEFT: other vertices"):
        check_same_brain_models([same, shifted], ["a", "b"])


def test_maps_are_written_as_dense_scalars_on_the_input_brain_models(tmp_path):
    models = brain_models()
    z = np.arange(len(models), dtype=float)
    effect = np.vstack([z, -z])  # an F contrast's effect: one row per contrast row
    img = to_dscalar({"z_score": z, "effect_size": effect}, models, "z of a contrast")
    nib.save(img, tmp_path / "maps.dscalar.nii")
    back = nib.load(tmp_path / "maps.dscalar.nii")
    scalars, grayordinates = back.header.get_axis(0), back.header.get_axis(1)
    assert isinstance(scalars, ax.ScalarAxis)
    assert list(scalars.name) == ["z_score", "effect_size_0", "effect_size_1"]
    assert scalars.meta[0]["Description"] == "z of a contrast"
    assert grayordinates == models
    assert back.nifti_header.get_intent()[0] == "ConnDenseScalar"
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.vstack([z, effect]).astype(np.float32))
    assert list(np.unique(structure_of(models))) == ["CORTEX_LEFT", "THALAMUS_LEFT"]


def test_images_are_the_bytes_nibabel_writes_from_the_axes_whatever_the_order_of_the_models(tmp_path):
    """The brain models' mapping is built once per axis object and reused: the files are those of
    ``Cifti2Image(data, header=axes)``, also when images on two brain models alternate."""
    from daskglm.io.cifti import to_dtseries

    first, second = brain_models(), brain_models(n_vertices=30, structure="thalamus_right")
    for step, models in enumerate([first, second, first, first]):
        z = np.arange(len(models), dtype=np.float32) + step
        ours = to_dscalar({"z": z}, models, "z of a contrast")
        theirs = nib.Cifti2Image(z[None], header=(ax.ScalarAxis(["z"], meta=[{"Description": "z of a contrast"}]),
                                                  models))
        theirs.nifti_header.set_intent("ConnDenseScalar")
        nib.save(ours, tmp_path / "ours.dscalar.nii")
        nib.save(theirs, tmp_path / "theirs.dscalar.nii")
        assert (tmp_path / "ours.dscalar.nii").read_bytes() == (tmp_path / "theirs.dscalar.nii").read_bytes()
        assert nib.load(tmp_path / "ours.dscalar.nii").header.get_axis(1) == models
        structures = structure_of(models)  # made once per axis too, read-only
        assert list(np.unique(structures)) == ["CORTEX_LEFT", "THALAMUS_LEFT" if models is first else "THALAMUS_RIGHT"]
        assert not structures.flags.writeable
    series = to_dtseries(np.ones((4, len(second)), np.float32), second, 0.72)
    nib.save(series, tmp_path / "res.dtseries.nii")
    back = nib.load(tmp_path / "res.dtseries.nii")
    assert back.header.get_axis(1) == second and back.header.get_axis(0).step == pytest.approx(0.72)

"""Tests for daskglm.datasets.simulate_cifti (daskglm/datasets/cifti.py), read back with nibabel's CIFTI-2 reader."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.cifti2.cifti2_axes import BrainModelAxis, SeriesAxis

from daskglm.datasets import CONDITIONS, fiac_design_matrix, fiac_events, simulate_cifti
from daskglm.datasets.cifti import (
    cifti_brain_model_axis,
    cifti_ground_truth,
    cifti_run_blocks,
    dtseries_header,
    write_dtseries,
)

L, R = "CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT"
SMALL_COUNTS = {L: 9361, R: 9367, "CIFTI_STRUCTURE_THALAMUS_LEFT": 220, "CIFTI_STRUCTURE_THALAMUS_RIGHT": 210}
N_SCANS, T_R = 100, 2.0


def _counts(axis: BrainModelAxis) -> dict[str, int]:
    names, counts = np.unique(axis.name, return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def _files(folder: str | Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return simulate_cifti(tmp_path_factory.mktemp("cifti"), n_scans=N_SCANS, t_r=T_R)


def test_bunch_keys_and_files(small):
    assert set(small) == {"func1", "func2", "events1", "events2", "truth", "description"}
    assert Path(small.func2).name == "run-2_bold.dtseries.nii" and small.truth.endswith("truth.npz")
    assert all(isinstance(small[k], str) for k in small)
    for run in (1, 2):  # the events of simulate_fiac's runs
        events = pd.read_csv(small[f"events{run}"], sep="\t")
        pd.testing.assert_frame_equal(events, fiac_events(N_SCANS, T_R, 0, run))
    assert "19158 grayordinates" in small.description


@pytest.mark.parametrize("run", [1, 2])
def test_runs_reload_with_nibabel(small, run):
    img = nib.load(small[f"func{run}"])
    assert isinstance(img, nib.Cifti2Image)
    assert img.nifti_header.get_intent()[0] == "ConnDenseSeries"
    assert img.nifti_header.get_data_dtype() == np.float32
    series, models = img.header.get_axis(0), img.header.get_axis(1)
    assert isinstance(series, SeriesAxis) and isinstance(models, BrainModelAxis)
    assert (series.size, series.step, series.start, series.unit) == (N_SCANS, T_R, 0.0, "SECOND")
    assert img.shape == (N_SCANS, 19158) == (N_SCANS, models.size)
    assert _counts(models) == SMALL_COUNTS
    assert models.nvertices == {L: 10242, R: 10242}  # fsaverage5
    assert models.volume_shape == (24, 12, 12) and np.allclose(np.abs(np.diag(models.affine))[:3], 2)
    assert [name for name, _, _ in models.iter_structures()] == list(SMALL_COUNTS)
    assert models == cifti_brain_model_axis("small")
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and np.isfinite(data).all() and 600 < data.mean() < 1400


def test_medial_wall_is_one_patch_near_the_midline():
    from nilearn.datasets import load_fsaverage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    axis, mesh = cifti_brain_model_axis("small"), load_fsaverage("fsaverage5")["pial"]
    for name, hemi, sign in ((L, "left", -1), (R, "right", 1)):
        gone = np.setdiff1d(np.arange(10242), axis.vertex[axis.name == name])
        faces = mesh.parts[hemi].faces
        inner = faces[np.isin(faces, gone).all(axis=1)]
        index = np.searchsorted(gone, inner)
        edges = np.concatenate([index[:, [0, 1]], index[:, [1, 2]], index[:, [0, 2]]])
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(gone.size,) * 2)
        assert connected_components(graph, directed=False)[0] == 1
        x = mesh.parts[hemi].coordinates[:, 0]
        assert abs(x[gone].mean()) < abs(x.mean()) and sign * x.mean() > 0  # medial side


def test_file_is_what_nibabel_writes_and_what_was_generated(small, tmp_path):
    """The streamed file equals nibabel.save of the whole matrix, and the matrix is the generator's blocks."""
    img = nib.load(small.func1)
    axes = (img.header.get_axis(0), img.header.get_axis(1))
    truth = cifti_ground_truth("small", 0)
    design = fiac_design_matrix(fiac_events(N_SCANS, T_R, 0, 1), N_SCANS, T_R)
    blocks = list(cifti_run_blocks(truth, design[list(CONDITIONS)].to_numpy(), 0, 1))
    assert len(blocks) > 1 and all(b.shape[0] == N_SCANS for b in blocks)
    data = np.concatenate(blocks, axis=1)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    whole = nib.Cifti2Image(data, header=axes)
    whole.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES", name="ConnDenseSeries")
    nib.save(whole, tmp_path / "whole.dtseries.nii")
    assert (tmp_path / "whole.dtseries.nii").read_bytes() == Path(small.func1).read_bytes()
    assert len(dtseries_header(axes[1], N_SCANS, T_R)) == img.dataobj.offset  # where the data start


def test_truth(small):
    with np.load(small.truth) as npz:
        truth = {k: npz[k] for k in npz.files}
    axis = cifti_brain_model_axis("small")
    n = axis.size
    assert truth["effects"].shape == (2, n) and truth["effects"].dtype == np.float32
    assert truth["effect_names"].tolist() == ["sentence", "speaker"]
    assert truth["contrasts"].tolist() == [[-1, -1, 1, 1, 0], [-1, 1, -1, 1, 0]]
    assert truth["structures"].tolist() == list(axis.name)
    assert truth["blob_names"].tolist() == ["sentence", "speaker", "sentence_subcortical", "all"]
    centres = truth["blob_centers"]
    assert truth["structures"][centres].tolist() == [L, R, "CIFTI_STRUCTURE_THALAMUS_LEFT",
                                                     "CIFTI_STRUCTURE_THALAMUS_RIGHT"]
    assert np.array_equal(truth["blob_maps"][np.arange(4), centres], np.ones(4))
    sentence, speaker = truth["effects"]
    assert sentence[centres[0]] > 30 and sentence[centres[2]] > 30 and speaker[centres[1]] > 30
    assert sentence[centres[1]] == sentence[centres[3]] == speaker[centres[0]] == speaker[centres[3]] == 0
    assert (sentence > 0).sum() < 0.05 * n and (truth["effects"] >= 0).all()
    assert (truth["vertex"] >= 0).sum() == 9361 + 9367 and (truth["voxel"][:, 0] >= 0).sum() == 430


def test_ols_recovers_the_sentence_effect(small):
    """Per-grayordinate OLS on fiac_design_matrix: DSt - SSt is found at the sentence blobs, ~0 elsewhere."""
    with np.load(small.truth) as npz:
        effects, maps, centres = npz["effects"], npz["blob_maps"], npz["blob_centers"]
    weights = np.array([-1.0, -1.0, 1.0, 1.0, 0.0])
    estimates = []
    for run in (1, 2):
        design = fiac_design_matrix(pd.read_csv(small[f"events{run}"], sep="\t"), N_SCANS, T_R).to_numpy()
        data = np.asarray(nib.load(small[f"func{run}"]).dataobj, dtype=np.float64)
        beta = np.linalg.lstsq(design, data, rcond=None)[0]
        estimates.append(weights @ beta[:5])
    estimate = np.mean(estimates, axis=0)
    truth = effects[0]
    cortex_core = maps[0] > 0.5
    assert cortex_core.sum() > 20
    assert estimate[centres[0]] > 20  # noise SD of one grayordinate's estimate ~ 9
    assert 0.8 < estimate[cortex_core].mean() / truth[cortex_core].mean() < 1.2
    sub_core = maps[2] > 0.5
    assert 0.7 < estimate[sub_core].mean() / truth[sub_core].mean() < 1.3
    away = maps.sum(axis=0) == 0
    assert abs(estimate[away].mean()) < 0.5 and estimate[away].std() < 15
    for other in (1, 3):  # the speaker blob and the "all" blob carry no sentence effect
        core = maps[other] > 0.5
        assert abs(estimate[core].mean()) < 5
    assert np.corrcoef(estimate, truth)[0, 1] > 0.2


def test_same_parameters_same_bytes_and_reuse(tmp_path):
    kwargs = {"n_scans": 20, "n_runs": 1, "seed": 3}
    first = simulate_cifti(tmp_path / "a", **kwargs)
    second = simulate_cifti(tmp_path / "b", **kwargs)
    folder_a, folder_b = Path(first.func1).parent, Path(second.func1).parent
    assert folder_a.name == folder_b.name
    assert _files(folder_a) == _files(folder_b)
    other = simulate_cifti(tmp_path / "a", **{**kwargs, "seed": 4})
    assert Path(other.func1).read_bytes() != Path(first.func1).read_bytes()
    mtime = os.stat(first.func1).st_mtime_ns
    assert simulate_cifti(tmp_path / "a", **kwargs) == first  # reused, not rewritten
    assert os.stat(first.func1).st_mtime_ns == mtime
    os.utime(first.func1, ns=(1, 1))
    again = simulate_cifti(tmp_path / "a", **kwargs, overwrite=True)
    assert os.stat(again.func1).st_mtime_ns != 1 and _files(folder_a) == _files(folder_b)
    assert not list(folder_a.glob(".*.tmp"))


def test_91k_layout(tmp_path):
    axis = cifti_brain_model_axis("91k")
    counts = _counts(axis)
    assert axis.size == 91282
    assert counts[L] == 29696 and counts[R] == 29716
    assert axis.nvertices == {L: 32492, R: 32492}
    assert axis.volume_shape == (91, 109, 91) and sum(axis.volume_mask) == 31870
    assert len(counts) == 21 and counts["CIFTI_STRUCTURE_CEREBELLUM_RIGHT"] == 9144
    assert cifti_brain_model_axis("91k", seed=1) != axis  # the present vertices depend on the seed
    data = simulate_cifti(tmp_path, layout="91k", n_runs=1, n_scans=20, t_r=0.72)
    img = nib.load(data.func1)
    assert img.shape == (20, 91282) and img.header.get_axis(1) == axis
    assert img.header.get_axis(0).step == pytest.approx(0.72)
    assert os.path.getsize(data.func1) == len(dtseries_header(axis, 20, 0.72)) + 20 * 91282 * 4


def test_writer_memory_stays_bounded(tmp_path):
    """A run of 1000 scans (a 77 MB file) is written with a small fraction of its size in memory."""
    fiac_design_matrix(fiac_events(100, T_R), 100, T_R)  # imports and caches outside the measurement
    cifti_ground_truth("small")
    tracemalloc.start()
    try:
        data = simulate_cifti(tmp_path, n_runs=1, n_scans=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = os.path.getsize(data.func1)
    assert size > 70e6
    assert peak < size / 4, (peak, size)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        simulate_cifti(tmp_path, layout="32k")
    with pytest.raises(ValueError, match="n_scans"):
        simulate_cifti(tmp_path, n_scans=5)
    with pytest.raises(ValueError, match="ar_rho"):
        simulate_cifti(tmp_path, ar_rho=(0.5, 0.1))
    axis = cifti_brain_model_axis("small")
    target = tmp_path / "short.dtseries.nii"
    with pytest.raises(ValueError, match="cover"):
        write_dtseries(target, axis, T_R, 20, [np.zeros((20, 100), np.float32)])
    with pytest.raises(ValueError, match="block of shape"):
        write_dtseries(target, axis, T_R, 20, [np.zeros((21, 100), np.float32)])
    assert not list(tmp_path.iterdir())  # nothing left behind

"""simulate_bids(space="fsaverage5" | "fsLR"): fMRIPrep-style surface derivatives, read back by nibabel and nilearn."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import bids_validator
from nibabel.cifti2 import cifti2_axes
from nilearn.datasets import load_fsaverage
from nilearn.glm.first_level import first_level_from_bids
from nilearn.surface import SurfaceImage
from scipy import stats

from daskglm.datasets.bids_sim import simulate_bids
from daskglm.datasets.cifti import cifti_brain_model_axis
from daskglm.datasets.fiac import fiac_design_matrix

SMALL = {"shape": (10, 12, 8), "n_scans": 60, "n_subjects": 2, "n_runs": 1, "group_effect": 0.1}
DERIV = "derivatives/fmriprep"
SENTENCE = "DStDSp + DStSSp - SStDSp - SStSSp"  # DSt > SSt: the left-cortex blob
SPEAKER = "DStDSp - DStSSp + SStDSp - SStSSp"  # DSp > SSp: the right-cortex blob


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory):
    return simulate_bids(tmp_path_factory.mktemp("vol") / "ds", **SMALL)


@pytest.fixture(scope="module")
def fsaverage5(tmp_path_factory: pytest.TempPathFactory):
    return simulate_bids(tmp_path_factory.mktemp("fs5") / "ds", space="fsaverage5", **SMALL)


@pytest.fixture(scope="module")
def fslr(tmp_path_factory: pytest.TempPathFactory):
    return simulate_bids(tmp_path_factory.mktemp("fslr") / "ds", space="fsLR", cifti_layout="small", **SMALL)


def test_fsaverage5_gifti_runs(fsaverage5, volume) -> None:
    root = Path(fsaverage5.root)
    assert fsaverage5.space == "fsaverage5" and fsaverage5.brain_mask is None
    mesh = load_fsaverage("fsaverage5")["pial"]
    for s, label in enumerate(fsaverage5.subjects):
        stem = f"sub-{label}_task-language_run-1"
        run = fsaverage5.preproc_bold[s][0]
        assert set(run) == {"left", "right"}
        for hemi, part, structure in (("L", "left", "CortexLeft"), ("R", "right", "CortexRight")):
            path = Path(run[part])
            assert path == root / DERIV / f"sub-{label}" / "func" / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.func.gii"
            img = nib.load(path)
            assert isinstance(img, nib.GiftiImage) and img.meta["AnatomicalStructurePrimary"] == structure
            assert len(img.darrays) == SMALL["n_scans"]
            for array in img.darrays[:3]:
                assert array.data.dtype == np.float32 and array.data.shape == (mesh.parts[part].n_vertices,)
                assert nib.nifti1.intent_codes.label[array.intent] == "time series"
                assert array.meta["TimeStep"] == "2000.000000"  # ms, as FreeSurfer writes it
            data = img.agg_data()
            assert data.shape == (10242, SMALL["n_scans"]) and np.all(np.isfinite(data))
            assert 500 < data.mean() < 1500 and np.all(data.std(axis=1) > 0)  # no constant vertex
            sidecar = json.loads(path.with_name(path.name.replace(".func.gii", ".json")).read_text())
            assert sidecar == {"RepetitionTime": 2.0, "TaskName": "language"}
        assert not list((root / DERIV / f"sub-{label}" / "func").glob("*.nii*"))  # no volume runs, no masks
        # raw runs, events and confounds: the volume dataset's, byte for byte
        for key in ("bold", "events", "confounds"):
            assert Path(fsaverage5[key][s][0]).read_bytes() == Path(volume[key][s][0]).read_bytes(), key
        assert list(pd.read_csv(fsaverage5.events[s][0], sep="\t").columns) == ["onset", "duration", "trial_type"]
    truth = np.load(fsaverage5.truth)
    assert str(truth["space"]) == "fsaverage5" and truth["activation_pattern"].shape == (5, 20484)
    np.testing.assert_array_equal(truth["subject_effect_sizes"], np.load(volume.truth)["subject_effect_sizes"])
    assert list(truth["blob_names"]) == ["sentence", "speaker"]
    assert [str(truth["hemisphere"][c]) for c in truth["blob_centers"]] == ["left", "right"]


def test_fsaverage5_medial_wall_repeats_its_nearest_vertex(fsaverage5) -> None:
    left = nib.load(fsaverage5.preproc_bold[0][0]["left"]).agg_data()
    series, counts = np.unique(left, axis=0, return_counts=True)
    assert len(series) == 9361 and counts.sum() == 10242  # the medial-wall cap copies present vertices


def test_fslr_cifti_runs(fslr, fsaverage5) -> None:
    root = Path(fslr.root)
    axis = cifti_brain_model_axis("small", 0)
    for s, label in enumerate(fslr.subjects):
        path = Path(fslr.preproc_bold[s][0])
        name = f"sub-{label}_task-language_run-1_space-fsLR_den-19k_bold.dtseries.nii"
        assert path == root / DERIV / f"sub-{label}" / "func" / name
        img = nib.load(path)
        series, models = (img.header.get_axis(i) for i in range(2))
        assert isinstance(series, cifti2_axes.SeriesAxis) and series.step == 2.0 and series.size == SMALL["n_scans"]
        assert models == axis and img.shape == (SMALL["n_scans"], 19158)
        assert img.get_fdata(dtype=np.float32).std(axis=0).min() > 0
        sidecar = json.loads(path.with_name(path.name.replace(".dtseries.nii", ".json")).read_text())
        assert sidecar["RepetitionTime"] == 2.0 and "19158 grayordinates" in sidecar["Density"]
        for key in ("events", "confounds", "bold"):
            assert Path(fslr[key][s][0]).read_bytes() == Path(fsaverage5[key][s][0]).read_bytes(), key
    truth = np.load(fslr.truth)
    assert truth["activation_pattern"].shape == (5, 19158) and truth["structures"].shape == (19158,)
    assert len(truth["blob_names"]) == 4


def test_fslr_91k_layout(tmp_path: Path) -> None:
    data = simulate_bids(tmp_path / "ds", space="fsLR", **{**SMALL, "n_subjects": 1, "n_scans": 20})
    path = Path(data.preproc_bold[0][0])
    assert path.name == "sub-01_task-language_run-1_space-fsLR_den-91k_bold.dtseries.nii"
    img = nib.load(path)
    assert img.shape == (20, 91282) and img.header.get_axis(1) == cifti_brain_model_axis("91k", 0)


def test_nilearn_fits_the_fsaverage5_runs(fsaverage5) -> None:
    """nilearn's own first_level_from_bids and FirstLevelModel find each blob where the truth put it."""
    truth = np.load(fsaverage5.truth)
    with warnings.catch_warnings():  # no StartTime in the sidecars: nilearn assumes slice_time_ref=0
        warnings.filterwarnings("ignore", message=".*slice_time_ref.*")
        warnings.filterwarnings("ignore", message=".*StartTime.*")
        models, imgs, events, confounds = first_level_from_bids(
            fsaverage5.root, "language", space_label="fsaverage5", derivatives_folder=DERIV, confounds_strategy=None)
    assert [m.t_r for m in models] == [2.0, 2.0] and imgs[0][0].shape == (20484, SMALL["n_scans"])
    null = truth["blob_maps"].sum(axis=0) == 0
    for model, runs, evts in zip(models, imgs, events):
        model.fit(runs, events=evts)
        for k, contrast in enumerate((SENTENCE, SPEAKER)):
            z = model.compute_contrast(contrast)
            z = np.concatenate([z.data.parts["left"], z.data.parts["right"]])
            assert z[truth["blob_centers"][k]] > 4
            assert abs(z[null].mean()) < 0.1


@pytest.mark.parametrize("space", ["fsaverage5", "fsLR"])
def test_group_effect_is_found(tmp_path: Path, space: str) -> None:
    """A one-sample t test over 3 subjects' OLS effect maps (the default, group-sized effect) finds the blob."""
    data = simulate_bids(tmp_path / "ds", space=space, cifti_layout="small", n_subjects=3, n_runs=1,
                         shape=(8, 8, 6), n_scans=100)
    truth = np.load(data.truth)
    weights = truth["contrasts"][0]  # "sentence": DSt > SSt
    maps = []
    for s in range(3):
        run = data.preproc_bold[s][0]
        if space == "fsaverage5":
            Y = np.concatenate([nib.load(run[part]).agg_data() for part in ("left", "right")]).T
        else:
            Y = nib.load(run).get_fdata(dtype=np.float32)
        X = fiac_design_matrix(pd.read_csv(data.events[s][0], sep="\t"), 100, 2.0).to_numpy()
        beta = np.linalg.lstsq(X, 100 * (Y / Y.mean(axis=0) - 1), rcond=None)[0]
        maps.append(weights @ beta[:5])
    t = stats.ttest_1samp(np.array(maps), 0.0, axis=0).statistic
    null = truth["blob_maps"].sum(axis=0) == 0
    centre = truth["blob_centers"][0]
    assert t[centre] > 6 and t[centre] > 1.5 * np.percentile(np.abs(t[null]), 95), t[centre]
    assert abs(np.mean(t[null])) < 0.2


def test_deterministic(tmp_path: Path, fsaverage5) -> None:
    again = simulate_bids(tmp_path / "again", space="fsaverage5", **SMALL)
    for s in range(2):
        for part in ("left", "right"):
            assert Path(again.preproc_bold[s][0][part]).read_bytes() == \
                Path(fsaverage5.preproc_bold[s][0][part]).read_bytes()
    a, b = (nib.load(fsaverage5.preproc_bold[s][0]["left"]).agg_data() for s in (0, 1))
    assert np.mean(a != b) > 0.9  # subjects have their own noise
    nilearn_img = SurfaceImage(mesh=load_fsaverage()["pial"], data=fsaverage5.preproc_bold[0][0])
    assert nilearn_img.shape == (20484, SMALL["n_scans"])


@pytest.mark.parametrize(("kwargs", "match"), [({"space": "fsaverage6"}, "fsaverage6"),
                                               ({"space": "fsLR", "cifti_layout": "32k"}, "32k")])
def test_validation(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate_bids(tmp_path / "ds", **{**SMALL, **kwargs})
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(bids_validator() is None,
                    reason="the BIDS validator (pip install bids-validator-deno) is not installed")
@pytest.mark.parametrize("name", ["fsaverage5", "fslr"])
def test_bids_validator_reports_no_error(name: str, request: pytest.FixtureRequest) -> None:
    data = request.getfixturevalue(name)
    for folder in ("", DERIV, "derivatives/simulation"):
        out = subprocess.run([*bids_validator(), "--format", "json", os.path.join(data.root, folder)],
                             capture_output=True, text=True, timeout=300, check=False)
        issues = json.loads(out.stdout)["issues"]["issues"]
        errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
        assert errors == [], folder

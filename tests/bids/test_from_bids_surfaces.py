"""daskglm.first_level_from_bids on surface derivatives: fsLR dense time series (daskglm finds them), fsaverage5."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import first_level_from_bids as nilearn_from_bids
from nilearn.surface import SurfaceImage

from daskglm.bids.from_bids import first_level_from_bids, run_kind
from daskglm.models.first_level import FirstLevelModel

DERIV = "derivatives/fmriprep"
SENTENCE = "DStDSp + DStSSp - SStDSp - SStSSp"  # DSt > SSt: the left-cortex blob
PARAMS = {"n_subjects": 2, "n_runs": 2, "shape": (10, 12, 8), "n_scans": 60, "group_effect": 0.1}
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


@pytest.fixture(scope="module")
def fslr(bids_data):
    return bids_data(space="fsLR", cifti_layout="small", **PARAMS)


@pytest.fixture(scope="module")
def volume(bids_data):
    return bids_data(**PARAMS)


def test_nilearn_does_not_find_dtseries_runs(fslr) -> None:
    """What nilearn 0.14 does with CIFTI derivatives (why daskglm looks for them itself)."""
    with pytest.raises(ValueError, match="No BOLD files found"):
        nilearn_from_bids(fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV)
    assert run_kind(Path(fslr.root) / DERIV, "language", "fsLR") == "cifti"
    assert run_kind(Path(fslr.root) / DERIV, "language", None) == "volume"
    assert run_kind(Path(fslr.root) / DERIV, "language", "fsaverage5") == "gifti"


def test_finds_dtseries_runs_events_confounds_and_t_r(fslr, volume) -> None:
    models, imgs, events, confounds = first_level_from_bids(fslr.root, "language", space_label="fsLR",
                                                            derivatives_folder=DERIV, store="/tmp/unused")
    assert [type(m) for m in models] == [FirstLevelModel] * 2
    assert [m.subject_label for m in models] == ["01", "02"]
    assert all(m.t_r == 2.0 and m.slice_time_ref == 0.0 and m.store == "/tmp/unused" for m in models)
    assert imgs == fslr.preproc_bold
    # the events and confounds of the volume dataset (the same files), as nilearn reads them there
    _, _, nl_events, nl_confounds = nilearn_from_bids(volume.root, "language", derivatives_folder=DERIV)
    for ours, theirs in ((events, nl_events), (confounds, nl_confounds)):
        for subject_ours, subject_theirs in zip(ours, theirs):
            assert len(subject_ours) == 2
            for a, b in zip(subject_ours, subject_theirs):
                pd.testing.assert_frame_equal(a, b)
    assert confounds[0][0].shape == (60, 29) and not confounds[0][0].iloc[0].isna().any()


@pytest.mark.parametrize("options", [{"confounds_strategy": None},
                                     {"confounds_strategy": ("motion", "wm_csf"), "confounds_motion": "basic"}])
def test_confounds_options_as_nilearn(fslr, volume, options: dict) -> None:
    _, _, _, ours = first_level_from_bids(fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV,
                                          **options)
    _, _, _, theirs = nilearn_from_bids(volume.root, "language", derivatives_folder=DERIV, **options)
    if options["confounds_strategy"] is None:
        assert ours == theirs == [None, None]
        return
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            pd.testing.assert_frame_equal(x, y)


def test_selections_and_model_parameters(fslr) -> None:
    with pytest.warns(UserWarning, match="'09' is not present"):
        models, imgs, _, _ = first_level_from_bids(
            fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV, sub_labels=["02", "09"],
            img_filters=[("run", "2"), ("den", "19k")], t_r=2.0, hrf_model="spm", drift_model="polynomial",
            drift_order=3, noise_model="ols", mask_img="derivatives", minimize_memory=False, n_jobs=2)
    assert [m.subject_label for m in models] == ["02"] and imgs == [[fslr.preproc_bold[1][1]]]
    model = models[0]
    assert (model.hrf_model, model.drift_model, model.drift_order, model.noise_model) == ("spm", "polynomial", 3,
                                                                                          "ols")
    assert model.mask_img is None and model.minimize_memory is False and model.n_jobs == 2
    models, _, _, _ = first_level_from_bids(fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV,
                                            exclude_subjects=["01"])
    assert [m.subject_label for m in models] == ["02"]
    with pytest.warns(RuntimeWarning, match=r"'t_r' provided \(1.5\) is different"):
        models, _, _, _ = first_level_from_bids(fslr.root, "language", space_label="fsLR",
                                                derivatives_folder=DERIV, t_r=1.5)
    assert models[0].t_r == 1.5


def test_errors(fslr, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(fslr.root, root)
    func = root / DERIV / "sub-01" / "func"
    run = func / "sub-01_task-language_run-1_space-fsLR_den-19k_bold.dtseries.nii"
    shutil.copyfile(run, func / run.name.replace("den-19k", "den-91k"))
    with pytest.raises(ValueError, match=r"Too many images(.|\n)*den-19k(.|\n)*den-91k(.|\n)*\('den', '91k'\)"):
        first_level_from_bids(root, "language", space_label="fsLR", derivatives_folder=DERIV)
    models, imgs, _, _ = first_level_from_bids(root, "language", space_label="fsLR", derivatives_folder=DERIV,
                                               img_filters=[("den", "19k")])
    assert [len(runs) for runs in imgs] == [2, 2]
    (root / "sub-02" / "func" / "sub-02_task-language_run-2_events.tsv").unlink()
    with pytest.raises(ValueError, match="No events.tsv files found for subject 02"):
        first_level_from_bids(root, "language", space_label="fsLR", derivatives_folder=DERIV,
                              img_filters=[("den", "19k")])
    (root / DERIV / "sub-01" / "func" / "sub-01_task-language_run-2_desc-confounds_timeseries.tsv").unlink()
    with pytest.raises(ValueError, match="1 confounds.tsv files found for 2 bold files"):
        first_level_from_bids(root, "language", space_label="fsLR", derivatives_folder=DERIV,
                              img_filters=[("den", "19k")], sub_labels=["01"])
    with pytest.raises(ValueError, match=r"(.|\n)*spaces \['fsLR'\]"):  # an unknown space: what there is
        first_level_from_bids(fslr.root, "language", space_label="T1w", derivatives_folder=DERIV)
    with pytest.raises(ValueError, match="alphanumeric"):
        first_level_from_bids(fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV,
                              img_filters=[("den", "19-k")])
    with pytest.raises(RuntimeError, match=r"\['stores'\]"):
        first_level_from_bids(fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV, stores="/tmp")


def test_fsaverage5_runs_are_nilearns_surface_images(bids_data) -> None:
    data = bids_data(space="fsaverage5", **{**PARAMS, "n_runs": 1})
    models, imgs, _, _ = first_level_from_bids(data.root, "language", space_label="fsaverage5",
                                               derivatives_folder=DERIV)
    assert [type(m) for m in models] == [FirstLevelModel] * 2 and models[0].t_r == 2.0
    assert all(isinstance(run, SurfaceImage) and run.shape == (20484, 60) for runs in imgs for run in runs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fMRIPrep writes no surface masks: none looked for, no warning
        warnings.filterwarnings("ignore", message=".*(StartTime|slice_time_ref).*")
        models, _, _, _ = first_level_from_bids(data.root, "language", space_label="fsaverage5",
                                                derivatives_folder=DERIV, mask_img="derivatives")
    assert [m.mask_img for m in models] == [None, None]


def test_fitted_fslr_model_finds_the_effect(fslr, tmp_path: Path) -> None:
    truth = np.load(fslr.truth)
    models, imgs, events, confounds = first_level_from_bids(
        fslr.root, "language", space_label="fsLR", derivatives_folder=DERIV, store=tmp_path, client="sync",
        sub_labels=["01"], confounds_strategy=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no smoothing asked: no warning
        models[0].fit(imgs[0], events=events[0], confounds=confounds[0])
    z = models[0].compute_contrast(SENTENCE).get_fdata()[0]
    centre = truth["blob_centers"][list(truth["blob_names"]).index("sentence")]
    null = truth["blob_maps"].sum(axis=0) == 0
    assert z[centre] > 5 and abs(z[null].mean()) < 0.1


def test_fsaverage5_confounds_are_per_run_where_nilearn_gives_one_table(bids_data) -> None:
    """nilearn 0.14 gives a subject of two surface runs one run's confounds table (the fit then fails on the
    count); daskglm gives each run the table nilearn's load_confounds reads from that run's hemisphere pair."""
    from nilearn.interfaces.fmriprep import load_confounds

    data = bids_data(space="fsaverage5", **PARAMS)
    options = {"confounds_strategy": ("motion",), "confounds_motion": "basic"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, _, theirs = nilearn_from_bids(data.root, "language", space_label="fsaverage5", derivatives_folder=DERIV,
                                            **options)
        models, imgs, events, ours = first_level_from_bids(data.root, "language", space_label="fsaverage5",
                                                           derivatives_folder=DERIV, **options)
    assert isinstance(theirs[0], pd.DataFrame)  # nilearn's: when this fails, nilearn has fixed it
    func = Path(data.root) / DERIV / "sub-01" / "func"
    for run, table in enumerate(ours[0], start=1):
        pair = [str(func / f"sub-01_task-language_run-{run}_hemi-{h}_space-fsaverage5_bold.func.gii") for h in "LR"]
        pd.testing.assert_frame_equal(table, load_confounds(pair, strategy=("motion",), motion="basic")[0])
    motion = sorted(f"{m}_{a}" for m in ("trans", "rot") for a in "xyz")
    assert len(ours[0]) == 2 and sorted(ours[0][0].columns) == motion
    model = models[0].set_params(store=None)
    model.fit(imgs[0], events=events[0], confounds=ours[0])
    assert "trans_x" in model.design_matrices_[1].columns

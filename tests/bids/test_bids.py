"""daskglm.first_level_from_bids against nilearn 0.14's, on a simulated BIDS dataset."""

from __future__ import annotations

import inspect
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import assert_maps_match
from nilearn.glm.first_level import FirstLevelModel as NilearnModel
from nilearn.glm.first_level import first_level_from_bids as nilearn_from_bids
from scipy import ndimage

import daskglm
from daskglm.bids.from_bids import first_level_from_bids
from daskglm.datasets.bids_sim import simulate_bids
from daskglm.models.first_level import FirstLevelModel

DERIV = "derivatives/fmriprep"
# nilearn warns on every call that the sidecars have no StartTime (no slice timing is simulated).
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


@pytest.fixture(scope="module")
def bids(bids_data):
    return bids_data(n_subjects=3, n_runs=2, shape=(14, 16, 10), n_scans=80)


def _shared_params() -> list[str]:
    ours = inspect.signature(FirstLevelModel.__init__).parameters
    return [name for name in inspect.signature(NilearnModel.__init__).parameters if name in ours and name != "self"]


def _same(a, b) -> bool:
    if isinstance(a, nib.Nifti1Image) or isinstance(b, nib.Nifti1Image):
        return (np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
                and np.allclose(a.affine, b.affine))
    if hasattr(a, "location") and hasattr(b, "location"):  # joblib.Memory: equal by where it caches
        return a.location == b.location
    return a == b



OPTIONS = {
    "defaults": {},
    "derivatives_mask": {"mask_img": "derivatives", "smoothing_fwhm": 5.0},
    "motion_wm_csf": {"confounds_strategy": ("motion", "wm_csf"), "confounds_motion": "basic"},
    "no_confounds": {"confounds_strategy": None, "noise_model": "ols", "signal_scaling": (0, 1)},
    "subset": {"sub_labels": ["02", "03"], "exclude_subjects": ["03"], "img_filters": [("desc", "preproc")],
               "t_r": 2.0, "slice_time_ref": 0.0, "hrf_model": "spm", "drift_model": "polynomial",
               "drift_order": 3, "minimize_memory": False},
    "one_run": {"img_filters": [("run", "2")], "high_pass": 0.02, "min_onset": -10},
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_same_as_nilearn(bids, tmp_path: Path, option: str) -> None:
    kwargs = OPTIONS[option]
    extra = {"store": tmp_path / "stores", "client": "threads", "t_chunk": 16, "v_chunk": 256,
             "storage_options": {"anon": True}, "random_state": 3}
    theirs = nilearn_from_bids(bids.root, "language", derivatives_folder=DERIV, **kwargs)
    ours = first_level_from_bids(bids.root, "language", derivatives_folder=DERIV, **kwargs, **extra)
    assert len(ours) == 4 and len(ours[0]) == len(theirs[0]) > 0
    for model, imgs, events, confounds, reference, ref_imgs, ref_events, ref_confounds in zip(*ours, *theirs):
        assert type(model) is FirstLevelModel
        for name in _shared_params():
            if name == "n_jobs":  # daskglm's default: one worker per core
                assert model.n_jobs == -1
            elif name != "random_state":
                assert _same(getattr(model, name), getattr(reference, name)), (option, name)
        assert {name: getattr(model, name) for name in extra} == extra
        assert imgs == ref_imgs and all(isinstance(p, str) for p in imgs)
        assert len(events) == len(ref_events) == len(imgs)
        for a, b in zip(events, ref_events):
            pd.testing.assert_frame_equal(a, b)
        if ref_confounds is None:
            assert confounds is None
        else:
            for a, b in zip(confounds, ref_confounds):
                pd.testing.assert_frame_equal(a, b)
    labels = [m.subject_label for m in ours[0]]
    assert labels == {"subset": ["02"]}.get(option, bids.subjects)
    assert ours[1][0] == {"one_run": [bids.preproc_bold[0][1]], "subset": bids.preproc_bold[1]}.get(
        option, bids.preproc_bold[0])
    if option == "no_confounds":
        assert ours[3] == [None] * 3
    elif option == "motion_wm_csf":
        assert ours[3][0][0].shape == (80, 8)
    else:
        assert ours[3][0][0].shape == (80, 29) and not ours[3][0][0].isna().any().any()


@pytest.mark.filterwarnings("ignore:.*Generation of a mask has been requested")
@pytest.mark.parametrize(("noise_model", "options"), [
    ("ar1", {"mask_img": "derivatives"}),  # every confounds column
    ("ols", {"confounds_strategy": ("motion", "wm_csf")}),  # the EPI mask of the first run
])
def test_fit_matches_nilearn(bids, tmp_path: Path, noise_model: str, options: dict) -> None:
    """One subject, both runs, from each package's first_level_from_bids: the maps are nilearn's."""
    common = {"derivatives_folder": DERIV, "smoothing_fwhm": 5.0, "noise_model": noise_model, **options}
    models, imgs, events, confounds = first_level_from_bids(
        bids.root, "language", sub_labels=["02"], store=tmp_path / "stores", client="threads", **common)
    ref_models, ref_imgs, ref_events, ref_confounds = nilearn_from_bids(
        bids.root, "language", sub_labels=["02"], **common)
    ours, theirs = models[0], ref_models[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(imgs[0], events=events[0], confounds=confounds[0])
        theirs.fit(ref_imgs[0], events=ref_events[0], confounds=ref_confounds[0])
    for a, b in zip(ours.design_matrices_, theirs.design_matrices_):
        pd.testing.assert_frame_equal(a, b)
    f_test = np.eye(ours.design_matrices_[0].shape[1])[:4]  # 4 of the 5 conditions
    peaks = []
    for contrast in ("DStDSp + DStSSp - SStDSp - SStSSp", "SStSSp + SStDSp + DStSSp + DStDSp - 4 * FirstSt", f_test):
        with warnings.catch_warnings():  # nilearn's (and daskglm's) notes on multi-run F tests
            warnings.simplefilter("ignore")
            a = ours.compute_contrast(contrast, output_type="all")
            b = theirs.compute_contrast(contrast, output_type="all")
        for key in b:
            assert_maps_match(a[key], b[key], noise_model, f"{contrast} {key}")
        peaks.append(np.abs(b["z_score"].get_fdata()).max())
    assert max(peaks) > 3, peaks  # maps with signal, not only noise


def test_derivatives_mask_is_per_subject(bids, tmp_path: Path) -> None:
    """Each subject gets the intersection of its own runs' masks (nilearn 0.14.1 reuses the first subject's)."""
    root = tmp_path / "ds"
    shutil.copytree(bids.root, root)
    truth = np.load(bids.truth)["mask"].astype(bool)
    eroded = ndimage.binary_erosion(truth)
    for run, keep in ((1, eroded), (2, truth)):  # sub-02: one eroded mask -> intersection is the eroded one
        path = root / DERIV / "sub-02" / "func" / (
            f"sub-02_task-language_run-{run}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
        img = nib.load(path)
        nib.save(nib.Nifti1Image(keep.astype(np.uint8), img.affine), path)
    (root / DERIV / "sub-03" / "func"
     / "sub-03_task-language_run-2_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz").unlink()
    with pytest.warns(UserWarning, match="1 mask files found for 2 bold files"):
        models, *_ = first_level_from_bids(root, "language", derivatives_folder=DERIV, mask_img="derivatives")
    masks = [np.asanyarray(m.mask_img.dataobj).astype(bool) for m in models]
    np.testing.assert_array_equal(masks[0], truth)
    np.testing.assert_array_equal(masks[1], eroded)
    np.testing.assert_array_equal(masks[2], truth)


@pytest.mark.filterwarnings(r"ignore:\s*'t_r' not provided")
def test_errors_are_clear(bids, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'dataset_path' does not exist"):
        first_level_from_bids(tmp_path / "missing", "language")
    with pytest.raises(ValueError, match="derivatives folder not found"):
        first_level_from_bids(bids.root, "language", derivatives_folder="derivatives/nope")
    # nilearn's default derivatives_folder: the subjects are one level down
    with pytest.raises(RuntimeError, match=r"No subject found(.|\n)*derivatives_folder='derivatives/fmriprep'"):
        first_level_from_bids(bids.root, "language")
    with pytest.raises(ValueError, match=r"No BOLD files found(.|\n)*task_label='rest'(.|\n)*tasks \['language'\]"):
        first_level_from_bids(bids.root, "rest", derivatives_folder=DERIV)
    with pytest.raises(ValueError, match=r"(.|\n)*spaces \['MNI152NLin2009cAsym'\]"):
        first_level_from_bids(bids.root, "language", space_label="T1w", derivatives_folder=DERIV)
    with pytest.raises(RuntimeError, match=r"\['stores'\](.|\n)*store"):
        first_level_from_bids(bids.root, "language", derivatives_folder=DERIV, stores="/tmp")
    # nilearn's system parameters reach the models (n_jobs: workers of the embedded cluster)
    models, *_ = first_level_from_bids(bids.root, "language", derivatives_folder=DERIV, n_jobs=2,
                                       memory_level=2, memory=str(tmp_path / "cache"))
    assert len(models) == 3
    assert all(m.n_jobs == 2 and m.memory_level == 2
               and str(getattr(m.memory, "location", m.memory)) == str(tmp_path / "cache") for m in models)


def test_signature_mirrors_nilearn() -> None:
    """Every nilearn parameter, in nilearn's order and with nilearn's default; daskglm's are keyword-only."""
    theirs = inspect.signature(nilearn_from_bids).parameters
    ours = inspect.signature(first_level_from_bids).parameters
    assert list(ours)[:len(theirs) - 1] == list(theirs)[:-1]  # all but **kwargs
    for name, parameter in theirs.items():
        # n_jobs: workers of the embedded cluster, all cores by default (nilearn: one process)
        default = -1 if name == "n_jobs" else parameter.default
        assert ours[name].kind == parameter.kind and ours[name].default == default, name
    own = [name for name in ours if name not in theirs]
    assert own == ["random_state", "store", "storage_options", "t_chunk", "v_chunk", "client"]
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in own)


def test_lazy_exports() -> None:
    assert daskglm.first_level_from_bids is first_level_from_bids
    assert daskglm.simulate_bids is simulate_bids
    assert {"first_level_from_bids", "simulate_bids"} <= set(daskglm.__all__)

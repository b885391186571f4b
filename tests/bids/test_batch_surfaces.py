"""run_batch on surface spaces: fsLR dense time series (.dscalar.nii maps), fsaverage5 GIFTI (.gii per hemisphere)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.glm.first_level import first_level_from_bids as nilearn_from_bids
from nilearn.reporting.get_clusters_table import clustering_params_to_dataframe

from daskglm.bids.batch import run_batch
from daskglm.bids.subject import MARKER
from daskglm.io.outputs import MANIFEST

DERIV = "derivatives/fmriprep"
SENTENCE = "DStDSp + DStSSp - SStDSp - SStSSp"  # DSt > SSt: the left-cortex blob
SPEAKER = "DStDSp - DStSSp + SStDSp - SStSSp"  # DSp > SSp: the right-cortex blob
CONTRASTS = {"sentence": SENTENCE, "speaker": SPEAKER}
PARAMS = {"n_subjects": 2, "n_runs": 1, "shape": (10, 12, 8), "n_scans": 60, "group_effect": 0.1}
MAPS = ("effect", "t", "variance", "z", "p")
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


@pytest.fixture(scope="module")
def fslr(bids_data):
    return bids_data(space="fsLR", cifti_layout="small", **PARAMS)


@pytest.fixture(scope="module")
def fsaverage5(bids_data):
    return bids_data(space="fsaverage5", **PARAMS)


def _batch(data, out: Path, space: str, **kwargs):
    options = {"derivatives_folder": DERIV, "client": "sync", "verbose": 0, "figures": False,
               "confounds_strategy": None, "store": out.parent / "stores", **kwargs}
    return run_batch(data.root, "language", CONTRASTS, out, space_label=space, **options)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}


def _effect_checks(z: np.ndarray, truth, k: int) -> None:
    """The contrast's z map is high at its blob's centre and null away from every blob."""
    null = truth["blob_maps"].sum(axis=0) == 0
    assert z[truth["blob_centers"][k]] > 5, z[truth["blob_centers"][k]]
    assert abs(z[null].mean()) < 0.1 and np.percentile(np.abs(z[null]), 99) < 4.5


def test_fslr_batch(fslr, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _batch(fslr, out, "fsLR")
    assert result.done == ["01", "02"] and result.ok
    truth = np.load(fslr.truth)
    names = {"dataset_description.json"}
    for label in ("01", "02"):
        run = f"sub-{label}/sub-{label}_task-language_run-1_space-fsLR_den-19k"
        model = f"sub-{label}/sub-{label}_task-language_space-fsLR"  # nilearn keeps sub, ses, task, space
        names |= {f"sub-{label}/{MARKER}", f"sub-{label}/statmap.json", f"{model}_mask.dscalar.nii",
                  f"{run}_design.tsv", f"{run}_design.json"}
        names |= {f"{model}_contrast-{c}_stat-{m}_statmap.dscalar.nii" for c in CONTRASTS for m in MAPS}
    assert _files(out) == names
    axis = nib.load(fslr.preproc_bold[0][0]).header.get_axis(1)
    for label in ("01", "02"):
        for k, contrast in enumerate(CONTRASTS):
            img = nib.load(out / f"sub-{label}" / f"sub-{label}_task-language_space-fsLR_contrast-{contrast}"
                                                  "_stat-z_statmap.dscalar.nii")
            assert img.header.get_axis(1) == axis and img.shape == (1, 19158)
            _effect_checks(img.get_fdata()[0], truth, k)
    again = _batch(fslr, out, "fsLR")  # a rerun skips complete subjects
    assert again.skipped == ["01", "02"]


def test_fsaverage5_batch_matches_nilearn(fsaverage5, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _batch(fsaverage5, out, "fsaverage5", minimize_memory=False)
    assert result.done == ["01", "02"] and result.ok
    truth = np.load(fsaverage5.truth)
    names = {"dataset_description.json"}
    for label in ("01", "02"):
        run, model = (f"sub-{label}/sub-{label}_task-language_run-1", f"sub-{label}/sub-{label}_task-language")
        names |= {f"sub-{label}/{MARKER}", f"sub-{label}/statmap.json", f"{run}_space-fsaverage5_design.tsv",
                  f"{run}_space-fsaverage5_design.json"}
        for hemi in "LR":
            names.add(f"{model}_hemi-{hemi}_space-fsaverage5_den-10242_mask.gii")
            names |= {f"{model}_hemi-{hemi}_space-fsaverage5_den-10242_contrast-{c}_stat-{m}_statmap.gii"
                      for c in CONTRASTS for m in MAPS}
            names |= {f"{run}_hemi-{hemi}_space-fsaverage5_den-10242_stat-{s}_statmap.gii"
                      for s in ("errorts", "rsquared")}
        names |= {f"{model}_space-fsaverage5_contrast-{c}_clusters.{e}" for c in CONTRASTS for e in ("tsv", "json")}
    assert _files(out) == names
    metadata = json.loads((out / "sub-01" / "statmap.json").read_text())
    assert metadata["Density"] == {"10242": "10242 vertices per hemisphere"}
    # nilearn's own model on nilearn's own SurfaceImage runs of the same dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, imgs, events, _ = nilearn_from_bids(fsaverage5.root, "language", space_label="fsaverage5",
                                                    derivatives_folder=DERIV, confounds_strategy=None)
    for model, runs, evts, label in zip(models, imgs, events, ("01", "02")):
        model.fit(runs, events=evts)
        for k, (name, contrast) in enumerate(CONTRASTS.items()):
            expected = model.compute_contrast(contrast, output_type="all")
            for stat, key in zip(MAPS, ("effect_size", "stat", "effect_variance", "z_score", "p_value")):
                ours = []
                for hemi, part in (("L", "left"), ("R", "right")):
                    path = out / f"sub-{label}" / (f"sub-{label}_task-language_hemi-{hemi}_space-fsaverage5_den-10242"
                                                   f"_contrast-{name}_stat-{stat}_statmap.gii")
                    img = nib.load(path)
                    assert len(img.darrays) == 1 and img.darrays[0].data.dtype == np.float32
                    np.testing.assert_allclose(img.darrays[0].data, expected[key].data.parts[part],
                                               rtol=1e-4, atol=1e-4 * np.abs(expected[key].data.parts[part]).max())
                    ours.append(img.darrays[0].data)
                if stat == "z":
                    _effect_checks(np.concatenate(ours), truth, k)
        mask = nib.load(out / f"sub-{label}" / f"sub-{label}_task-language_hemi-L_space-fsaverage5_den-10242_mask.gii")
        assert mask.darrays[0].data.dtype == np.uint8 and mask.darrays[0].data.all()
        errorts = nib.load(out / f"sub-{label}" / (f"sub-{label}_task-language_run-1_hemi-R_space-fsaverage5_den-10242"
                                                   "_stat-errorts_statmap.gii"))
        assert errorts.darrays[0].data.shape == (10242, PARAMS["n_scans"])
    clusters = json.loads((out / "sub-01" / "sub-01_task-language_space-fsaverage5_contrast-sentence_clusters.json")
                          .read_text())
    assert clusters == clustering_params_to_dataframe(3.291, 0, 8.0, "fpr", 0.001, is_volume_glm=False).to_dict()[0]


def test_reports_and_errors_before_any_work(fslr, fsaverage5, tmp_path: Path) -> None:
    for data, space in ((fslr, "fsLR"), (fsaverage5, "fsaverage5")):
        out = tmp_path / space
        with pytest.raises(ValueError, match=f"report=True .*space '{space}'"):
            _batch(data, out, space, report=True)
        assert not out.exists()
    with pytest.raises(ValueError, match=r"No BOLD files found(.|\n)*spaces \['fsLR'\]"):
        _batch(fslr, tmp_path / "x", "fsaverage5")
    assert not (tmp_path / "x").exists()

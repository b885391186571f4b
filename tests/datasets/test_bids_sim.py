"""Tests for daskglm.datasets.simulate_bids (daskglm/datasets/bids_sim.py), read with nilearn's BIDS readers."""

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
from nilearn.glm.first_level import first_level_from_bids
from nilearn.interfaces.bids import get_bids_files, parse_bids_filename
from scipy import stats

from daskglm.datasets import fiac as datasets  # its run generator, interrupted below
from daskglm.datasets.bids_sim import simulate_bids
from daskglm.datasets.fiac import CONDITIONS, fiac_design_matrix

SMALL = {"shape": (12, 14, 10), "n_scans": 100}
SPACE = "MNI152NLin2009cAsym"
DERIV = "derivatives/fmriprep"
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


def _tree(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _nilearn_from_bids(root: str, **kwargs):
    with warnings.catch_warnings():  # no StartTime in the sidecars: nilearn assumes slice_time_ref=0
        warnings.filterwarnings("ignore", message=".*StartTime.*")
        warnings.filterwarnings("ignore", message=".*slice_time_ref.*")
        return first_level_from_bids(root, "language", space_label=SPACE, derivatives_folder=DERIV, **kwargs)


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> datasets.Bunch:
    return simulate_bids(tmp_path_factory.mktemp("bids") / "ds", **SMALL)


def test_layout_sidecars_and_descriptions(bids: datasets.Bunch) -> None:
    root = Path(bids.root)
    assert bids.subjects == ["01", "02", "03"] and bids.derivatives_folder == DERIV
    raw = json.loads((root / "dataset_description.json").read_text())
    assert raw["DatasetType"] == "raw" and raw["BIDSVersion"] and raw["Name"]
    deriv = json.loads((root / DERIV / "dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative" and deriv["GeneratedBy"][0]["Name"] == "daskglm"
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    assert list(participants.participant_id) == ["sub-01", "sub-02", "sub-03"]
    for key in ("bold", "events", "preproc_bold", "brain_mask", "confounds"):
        assert [len(runs) for runs in bids[key]] == [2, 2, 2], key
        assert all(Path(p).is_file() for runs in bids[key] for p in runs), key
    truth = np.load(bids.truth)
    for s, label in enumerate(bids.subjects):
        for r in range(2):
            stem = f"sub-{label}_task-language_run-{r + 1}"
            raw_bold, preproc = Path(bids.bold[s][r]), Path(bids.preproc_bold[s][r])
            assert raw_bold == root / f"sub-{label}" / "func" / f"{stem}_bold.nii.gz"
            assert preproc == root / DERIV / f"sub-{label}" / "func" / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"
            for path in (raw_bold, preproc):
                sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
                assert sidecar["RepetitionTime"] == 2.0 and sidecar["TaskName"] == "language"
                assert not {"SliceTiming", "StartTime", "SliceTimingRef"} & set(sidecar)
            assert raw_bold.read_bytes() == preproc.read_bytes()
            img = nib.load(preproc)
            assert img.shape == (*SMALL["shape"], SMALL["n_scans"]) and img.header.get_zooms()[3] == 2.0
            mask = nib.load(bids.brain_mask[s][r])
            np.testing.assert_array_equal(np.asanyarray(mask.dataobj), truth["mask"])
            np.testing.assert_allclose(mask.affine, img.affine)
            events = pd.read_csv(bids.events[s][r], sep="\t")
            assert list(events.columns) == ["onset", "duration", "trial_type"]
            assert set(events.trial_type) == set(CONDITIONS)
            confounds = pd.read_csv(bids.confounds[s][r], sep="\t")
            assert len(confounds) == SMALL["n_scans"]
            for column in [*MOTION, "framewise_displacement", "csf", "white_matter", "global_signal", "std_dvars"]:
                assert column in confounds, column
            first = confounds.iloc[0]
            assert np.isnan(first["framewise_displacement"]) and np.isnan(first["trans_x_derivative1"])
            assert not confounds.iloc[1:].isna().any().any()
            assert 700 < confounds.global_signal.mean() < 1300 and (confounds.framewise_displacement[1:] > 0).all()
    assert "n/a" in Path(bids.confounds[0][0]).read_text().splitlines()[1]


def test_nilearn_bids_queries_find_the_files(bids: datasets.Bunch) -> None:
    found = get_bids_files(Path(bids.root) / DERIV, file_tag="bold", file_type="nii*", modality_folder="func",
                           filters=[("task", "language"), ("space", SPACE)])
    assert found == sorted(p for runs in bids.preproc_bold for p in runs)
    ref = parse_bids_filename(found[0])
    assert ref["suffix"] == "bold" and ref["extension"] == "nii.gz"
    assert ref["entities"] == {"sub": "01", "task": "language", "run": "1", "space": SPACE, "desc": "preproc"}
    events = get_bids_files(bids.root, file_tag="events", file_type="tsv", modality_folder="func",
                            sub_label="02", filters=[("task", "language")])
    assert events == bids.events[1]
    masks = get_bids_files(Path(bids.root) / DERIV, file_tag="mask", file_type="nii*", modality_folder="func",
                           filters=[("task", "language"), ("space", SPACE)])
    assert masks == sorted(p for runs in bids.brain_mask for p in runs)
    assert parse_bids_filename(bids.confounds[0][1])["entities"]["desc"] == "confounds"


def test_nilearn_first_level_from_bids_accepts_it(bids: datasets.Bunch) -> None:
    models, imgs, events, confounds = _nilearn_from_bids(bids.root, mask_img="derivatives")
    assert [m.subject_label for m in models] == bids.subjects
    assert all(m.t_r == 2.0 and m.slice_time_ref == 0.0 for m in models)
    assert imgs == bids.preproc_bold
    for s in range(3):
        for r in range(2):
            pd.testing.assert_frame_equal(events[s][r], pd.read_csv(bids.events[s][r], sep="\t"))
            expected = pd.read_csv(bids.confounds[s][r], sep="\t")
            expected.iloc[0] = expected.iloc[0].fillna(0.0)
            pd.testing.assert_frame_equal(confounds[s][r], expected)
    np.testing.assert_array_equal(np.asanyarray(models[0].mask_img.dataobj), np.load(bids.truth)["mask"])
    # nilearn's load_confounds strategies find the columns they need
    *_, loaded = _nilearn_from_bids(bids.root, confounds_strategy=("motion", "wm_csf", "global_signal", "scrub"),
                                    confounds_motion="full")
    assert loaded[0][0].shape == (SMALL["n_scans"], 24 + 3)
    assert {"trans_x_derivative1_power2", "csf", "white_matter", "global_signal"} <= set(loaded[0][0])
    *_, none = _nilearn_from_bids(bids.root, confounds_strategy=None)
    assert none == [None, None, None]


def _effect_maps(data: datasets.Bunch, mask: np.ndarray, n_scans: int) -> np.ndarray:
    """Each subject's OLS estimate (% signal change) of SStSSp + SStDSp + DStSSp + DStDSp, mean over runs.

    Returns
    -------
    ndarray, shape (n_subjects, n_voxels in mask)
    """
    contrast = np.r_[1, 1, 1, 1, 0, np.zeros(8)]
    maps = []
    for bold, events in zip(data.preproc_bold, data.events):
        runs = []
        for run, tsv in zip(bold, events):
            Y = np.asanyarray(nib.load(run).dataobj).astype(float)[mask].T
            X = fiac_design_matrix(pd.read_csv(tsv, sep="\t"), n_scans, 2.0).to_numpy()  # the generator's design
            runs.append(contrast @ np.linalg.lstsq(X, 100 * (Y / Y.mean(axis=0) - 1), rcond=None)[0])
        maps.append(np.mean(runs, axis=0))
    return np.array(maps)


def test_truth_is_what_the_data_hold(tmp_path: Path) -> None:
    """Without noise and drift, OLS recovers each subject's effect size * pattern from the runs."""
    data = simulate_bids(tmp_path / "ds", noise_sd=0.0, drift_size=0.0, subject_sd=0.01, **SMALL)
    truth = np.load(data.truth)
    pattern, group = truth["activation_pattern"], float(truth["group_effect"])
    np.testing.assert_allclose(truth["group_activation"], group * pattern, rtol=1e-6)
    assert group == 0.03 and list(truth["subject_labels"]) == data.subjects
    effects = truth["subject_effect_sizes"]
    for index, (seed, effect) in enumerate(zip(truth["subject_seeds"], effects), start=1):
        # the documented draw: seed, then effect = group + sd * N(0, 1)
        rng = np.random.default_rng(np.random.SeedSequence([0, 10, index]))
        assert rng.integers(0, 2**31 - 1) == seed and effect == group + 0.01 * rng.standard_normal()
    mask = truth["mask"].astype(bool)
    unit = pattern[:4].sum(axis=0)[mask]  # the contrast's true effect for an effect size of 1
    support = unit > 0.05 * unit.max()
    maps = _effect_maps(data, mask, SMALL["n_scans"])
    fitted = maps[:, support] @ unit[support] / (unit[support] @ unit[support]) / 100
    np.testing.assert_allclose(fitted, effects, rtol=0.02)
    assert np.abs(maps[:, unit == 0]).max() < 0.1


def test_group_effect_is_found(bids: datasets.Bunch) -> None:
    """A one-sample t test over the subjects' effect maps finds the group effect."""
    truth = np.load(bids.truth)
    mask, pattern = truth["mask"].astype(bool), truth["activation_pattern"]
    effects = truth["subject_effect_sizes"]
    assert effects.shape == (3,) and np.all(np.abs(effects - 0.03) < 5 * 0.005) and len(set(effects)) == 3
    maps = _effect_maps(bids, mask, SMALL["n_scans"])
    t = stats.ttest_1samp(maps, 0.0, axis=0).statistic
    blob = list(truth["blob_names"]).index("all")
    at = np.searchsorted(np.flatnonzero(mask), np.ravel_multi_index(tuple(truth["blob_centers"][blob]), mask.shape))
    null = (np.abs(pattern).max(axis=0) == 0)[mask]
    assert t[at] > 6 and t[at] > 1.5 * np.percentile(np.abs(t[null]), 95), t[at]
    assert abs(np.mean(t[null])) < 1


def test_deterministic_and_subjects_independent(tmp_path: Path, bids: datasets.Bunch) -> None:
    again = simulate_bids(tmp_path / "again", **SMALL)
    assert _tree(again.root) == _tree(bids.root)
    one = simulate_bids(tmp_path / "one", n_subjects=1, **SMALL)
    first = {k: v for k, v in _tree(bids.root).items() if "sub-01" in k}
    assert {k: v for k, v in _tree(one.root).items() if "sub-01" in k} == first
    other = simulate_bids(tmp_path / "other", seed=1, **SMALL)
    assert Path(other.preproc_bold[0][0]).read_bytes() != Path(bids.preproc_bold[0][0]).read_bytes()
    a, b = (np.asanyarray(nib.load(bids.preproc_bold[s][0]).dataobj) for s in (0, 1))
    assert np.mean(a != b) > 0.5  # subjects differ


def test_cache_overwrite_and_replacement(tmp_path: Path) -> None:
    kwargs = {"shape": (6, 7, 5), "n_scans": 20, "n_subjects": 2, "n_runs": 1}
    root = tmp_path / "ds"
    first = simulate_bids(root, **kwargs)
    marker = root / "derivatives" / "simulation" / "simulate_bids_complete.json"
    assert json.loads(marker.read_text())["n_subjects"] == 2
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert simulate_bids(root, **kwargs) == first
    assert mtimes == {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    Path(first.events[1][0]).unlink()  # a file gone: regenerated
    simulate_bids(root, **kwargs)
    assert Path(first.events[1][0]).is_file()
    simulate_bids(root, overwrite=True, **kwargs)
    assert Path(first.preproc_bold[0][0]).stat().st_mtime_ns != mtimes[Path(first.preproc_bold[0][0])]
    # other parameters replace the previous simulation (no stale subject left)
    smaller = simulate_bids(root, **{**kwargs, "n_subjects": 1})
    assert sorted(p.name for p in root.glob("sub-*")) == ["sub-01"] and smaller.subjects == ["01"]
    assert json.loads(marker.read_text())["n_subjects"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folder left
    # a folder that is not a simulation is never touched; an empty one is used
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="foreign"):
        simulate_bids(foreign, **kwargs)
    assert [p.name for p in foreign.iterdir()] == ["data.txt"]
    (tmp_path / "empty").mkdir()
    assert simulate_bids(tmp_path / "empty", **kwargs).subjects == ["01", "02"]


def test_interrupted_run_leaves_nothing_or_the_previous_dataset(tmp_path: Path, monkeypatch) -> None:
    kwargs = {"shape": (6, 7, 5), "n_scans": 20, "n_subjects": 2, "n_runs": 1}
    real = datasets.run_volumes
    calls = []

    def broken(*args, **kw):
        calls.append(1)
        for t, vol in enumerate(real(*args, **kw)):
            if len(calls) == 2 and t == 5:  # the second subject's run
                raise KeyboardInterrupt
            yield vol

    monkeypatch.setattr(datasets, "run_volumes", broken)
    with pytest.raises(KeyboardInterrupt):
        simulate_bids(tmp_path / "ds", **kwargs)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(datasets, "run_volumes", real)
    before = _tree(simulate_bids(tmp_path / "ds", **kwargs).root)
    calls.clear()
    monkeypatch.setattr(datasets, "run_volumes", broken)
    with pytest.raises(KeyboardInterrupt):
        simulate_bids(tmp_path / "ds", **{**kwargs, "seed": 4})
    assert _tree(tmp_path / "ds") == before and [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"task": "lang_1"}, "'lang_1'"), ({"task": ""}, "''"), ({"n_subjects": 0}, "got 0"),
     ({"n_runs": 0}, "got 0"), ({"group_effect": "big"}, "'big'"), ({"group_effect": np.nan}, "nan"),
     ({"subject_sd": -0.1}, r"-0\.1"), ({"shape": (6, 0, 5)}, r"\(6, 0, 5\)"), ({"n_scans": 10}, "got 10"),
     ({"ar_rho": (0.5, 0.1)}, r"\(0\.5, 0\.1\)"), ({"motion_size": -1}, "-1"), ({"compresslevel": 10}, "10")],
)
def test_validation(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate_bids(tmp_path / "ds", **{**SMALL, **kwargs})
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(bids_validator() is None,
                    reason="the BIDS validator (pip install bids-validator-deno) is not installed")
@pytest.mark.parametrize("folder", ["", DERIV, "derivatives/simulation"])
def test_bids_validator_reports_no_error(bids: datasets.Bunch, folder: str) -> None:
    out = subprocess.run([*bids_validator(), "--format", "json", os.path.join(bids.root, folder)],
                         capture_output=True, text=True, timeout=300, check=False)
    issues = json.loads(out.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []

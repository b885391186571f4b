"""daskglm.bids.batch: many subjects, nilearn's BIDS names and numbers, resume, failure isolation, concurrency."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import assert_same_statistical_maps, parse_report
from nilearn.glm import save_glm_to_bids
from nilearn.glm.first_level import first_level_from_bids as nilearn_from_bids

from daskglm.bids.batch import BatchResult, _prepare_contrasts, run_batch
from daskglm.bids.subject import MARKER
from daskglm.cli.bids import add_bids_parser
from daskglm.glm.design import contrast_dict, contrast_matrices
from daskglm.io.outputs import MANIFEST

DERIV = "derivatives/fmriprep"
TASK = "language"
LANGUAGE = "DStDSp + DStSSp - SStDSp - SStSSp"
CONTRASTS = {"DSt - SSt": LANGUAGE, "effects_of_interest": np.eye(5)}  # a t and an F contrast
CONFOUNDS = {"confounds_strategy": ("motion",), "confounds_motion": "basic"}
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


@pytest.fixture(scope="module")
def bids(bids_data):
    return bids_data(n_subjects=3, n_runs=2, task=TASK, shape=(16, 18, 10), n_scans=40)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run stores shared by the tests (ingestion is cached per source file)."""
    return tmp_path_factory.mktemp("stores")


def _batch(bids, out: Path, stores: Path, contrasts: dict = CONTRASTS, **kwargs) -> BatchResult:
    options = {"derivatives_folder": DERIV, "client": "sync", "verbose": 0, "figures": False,
               "store": stores, **CONFOUNDS, **kwargs}
    return run_batch(bids.root, TASK, contrasts, out, **options)


def _files(root: Path) -> set[str]:
    """The files under ``root``, without daskglm's manifests (tests/io/test_output_safety.py checks them)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _statuses(result: BatchResult) -> dict[str, str]:
    return {label: r.status for label, r in result.subjects.items()}


@pytest.mark.slow
def test_outputs_match_nilearn(bids, tmp_path: Path, stores: Path) -> None:
    """One subject: nilearn's file names (save_glm_to_bids) and nilearn's maps."""
    common = {"derivatives_folder": DERIV, "smoothing_fwhm": 5.0, "minimize_memory": False, **CONFOUNDS}
    ours = run_batch(bids.root, TASK, CONTRASTS, tmp_path / "ours", sub_labels=["02"], client="sync",
                     verbose=0, report=True, store=stores, **common)
    assert ours.ok and _statuses(ours) == {"02": "done"}
    models, imgs, events, confounds = nilearn_from_bids(bids.root, TASK, sub_labels=["02"], **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = models[0].fit(imgs[0], events=events[0], confounds=confounds[0])
        save_glm_to_bids(reference, CONTRASTS, out_dir=tmp_path / "nilearn")
    names = _files(tmp_path / "ours")
    assert names - {f"sub-02/{MARKER}"} == _files(tmp_path / "nilearn")
    assert set(ours.subjects["02"].files) == names - {"dataset_description.json", f"sub-02/{MARKER}"}
    sub_ours, sub_nilearn = tmp_path / "ours" / "sub-02", tmp_path / "nilearn" / "sub-02"
    stem = f"sub-02_task-{TASK}_space-MNI152NLin2009cAsym"
    peaks = []
    for contrast, stat in (("dstMinusSst", "t"), ("effectsOfInterest", "F")):
        for kind in ("effect", "variance", stat, "p", "z"):
            name = f"{stem}_contrast-{contrast}_stat-{kind}_statmap.nii.gz"
            a, b = nib.load(sub_ours / name).get_fdata(), nib.load(sub_nilearn / name).get_fdata()
            diff = np.abs(a - b)  # AR(1): voxels whose rho falls on a bin edge may differ (as tests/bids/test_bids.py)
            assert (diff <= 1e-4).mean() >= 0.999 and diff.max() <= 1e-2, name
            if kind == "z":
                peaks.append(np.abs(b).max())
    assert max(peaks) > 3, peaks  # maps with signal
    mask = f"{stem}_mask.nii.gz"
    np.testing.assert_array_equal(nib.load(sub_ours / mask).get_fdata() > 0,
                                  nib.load(sub_nilearn / mask).get_fdata() > 0)
    for run in (1, 2):
        design = f"sub-02_task-{TASK}_run-{run}_space-MNI152NLin2009cAsym_design"
        pd.testing.assert_frame_equal(pd.read_csv(sub_ours / f"{design}.tsv", sep="\t"),
                                      pd.read_csv(sub_nilearn / f"{design}.tsv", sep="\t"), rtol=1e-6)
        assert json.loads((sub_ours / f"{design}.json").read_text()) == {"RepetitionTime": 2.0}
    assert json.loads((sub_ours / "statmap.json").read_text()) == json.loads((sub_nilearn / "statmap.json").read_text())
    description = json.loads((tmp_path / "ours" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "daskglm"
    # nilearn's report, saved as nilearn saves it: the tables of save_glm_to_bids's own report (same defaults).
    report = (sub_ours / "report.html").read_text(encoding="utf-8")
    assert report.startswith("<iframe srcdoc=")
    ours_page, nilearn_page = (parse_report((sub / "report.html").read_text(encoding="utf-8"))
                               for sub in (sub_ours, sub_nilearn))
    assert ours_page.names == list(CONTRASTS)
    assert_same_statistical_maps(ours_page, nilearn_page, peak_atol=0.02)
    assert all(img["src"].startswith("data:image/png;base64,") for img in ours_page.images)  # self-contained
    lean = _batch(bids, tmp_path / "lean", stores, sub_labels=["02"], smoothing_fwhm=5.0)  # defaults
    optional = ("report.html", ".png", "stat-errorts_statmap.nii.gz", "stat-rsquared_statmap.nii.gz")
    assert _files(tmp_path / "lean") == {n for n in names if not n.endswith(optional)}
    assert lean.subjects["02"].files == tuple(sorted(n for n in names if n.startswith("sub-02/") and not
                                                     n.endswith((*optional, MARKER))))


@pytest.mark.slow
def test_resume(bids, tmp_path: Path, stores: Path, capfd: pytest.CaptureFixture) -> None:
    """Complete subjects are skipped (files untouched); missing, stale or changed ones are redone."""
    out = tmp_path / "out"
    first = _batch(bids, out, stores)
    assert _statuses(first) == {"01": "done", "02": "done", "03": "done"} and first.ok
    before = _mtimes(out)
    assert all(f"sub-{s}/{MARKER}" in before for s in ("01", "02", "03"))

    shutil.rmtree(out / "sub-02")  # lost outputs
    second = _batch(bids, out, stores)
    assert _statuses(second) == {"01": "skipped", "02": "done", "03": "skipped"}
    after = _mtimes(out)
    for name, mtime in before.items():
        if name.startswith(("sub-01/", "sub-03/")):
            assert after[name] == mtime, name
    assert set(after) == set(before)

    marker = out / "sub-03" / MARKER  # another job's marker
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "stale"}))
    (out / "sub-01" / MARKER).unlink()  # interrupted before the marker
    third = _batch(bids, out, stores)
    assert _statuses(third) == {"01": "done", "02": "skipped", "03": "done"}

    events = Path(bids.events[1][0])  # an input changed
    events.touch()
    fourth = _batch(bids, out, stores, contrasts={"DSt - SSt": LANGUAGE})  # and one contrast fewer
    assert _statuses(fourth) == {"01": "done", "02": "done", "03": "done"}
    left = _files(out)
    assert not any("effectsOfInterest" in name for name in left)  # previous outputs no longer produced
    for label in ("01", "02", "03"):
        outputs = json.loads((out / f"sub-{label}" / MARKER).read_text())["outputs"]
        assert {n for n in left if n.startswith(f"sub-{label}/") and not n.endswith(MARKER)} == set(outputs)
    assert _statuses(_batch(bids, out, stores, contrasts={"DSt - SSt": LANGUAGE})) == dict.fromkeys(
        ("01", "02", "03"), "skipped")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # verbose=0 prints nothing


def _bids_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="daskglm")
    add_bids_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bids", *argv])


def test_cli_confounds_motion_is_load_confounds_motion(bids, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--confounds-motion basic: the 6 motion parameters in the design (nilearn's load_confounds(motion="basic")
    is the oracle); without a motion strategy it is refused, before any work."""
    from nilearn.interfaces.fmriprep import load_confounds

    out = tmp_path / "out"
    common = ("--task", TASK, "--contrast", f"language={LANGUAGE}", "--derivatives-folder", DERIV, "--scheduler",
              "sync", "--sub", "01", "--store", str(tmp_path / "stores"), "--no-figures")
    refused = _bids_args(bids.root, *common, "--out", str(out), "--confounds-motion", "basic")
    assert refused.func(refused) == 2
    assert capsys.readouterr().err.strip() == ("daskglm: error: --confounds-motion needs a --confounds-strategy "
                                                "that includes motion")
    assert not out.exists()
    args = _bids_args(bids.root, *common, "--out", str(out), "--confounds-strategy", "motion",
                      "--confounds-motion", "basic")
    assert args.func(args) == 0
    design = pd.read_csv(out / "sub-01" / f"sub-01_task-{TASK}_run-1_space-MNI152NLin2009cAsym_design.tsv", sep="\t")
    expected, _ = load_confounds(bids.preproc_bold[0][0], strategy=("motion",), motion="basic")
    assert set(expected.columns) == {"trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"}
    assert set(expected.columns) <= set(design.columns)
    assert not any(column.endswith(("_power2", "_derivative1")) for column in design.columns)
    np.testing.assert_allclose(design[list(expected.columns)].to_numpy(), expected.to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_failure_is_isolated(bids, tmp_path: Path, stores: Path, capsys: pytest.CaptureFixture) -> None:
    """A truncated run fails its subject only; the command exits 1 and lists it on stderr."""
    root = tmp_path / "ds"
    shutil.copytree(bids.root, root)
    bad = Path(bids.preproc_bold[1][1].replace(bids.root, str(root)))
    with bad.open("r+b") as fh:
        fh.truncate(bad.stat().st_size // 2)
    out = tmp_path / "out"
    args = _bids_args(str(root), "--task", TASK, "--contrast", f"language={LANGUAGE}", "--contrast", "FirstSt",
                      "--out", str(out), "--derivatives-folder", DERIV, "--scheduler", "sync",
                      "--confounds-strategy", "motion", "--store", str(tmp_path / "stores"), "--no-figures")
    assert args.func(args) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith("daskglm bids: 1 of 3 subjects failed")
    assert errors[1].startswith("sub-02: ") and bad.name in errors[1] and "truncated" in errors[1]
    lines = captured.out.splitlines()
    assert any("1/3 sub-01 done" in line for line in lines) and any("sub-02 FAILED" in line for line in lines)
    assert (out / "sub-01" / MARKER).is_file() and (out / "sub-03" / MARKER).is_file()
    assert not (out / "sub-02" / MARKER).exists()
    assert any(f.endswith("contrast-firstst_stat-z_statmap.nii.gz") for f in _files(out / "sub-03"))

    result = run_batch(root, TASK, {"language": LANGUAGE, "FirstSt": "FirstSt"}, out, derivatives_folder=DERIV,
                       client="sync", verbose=0, figures=False, store=tmp_path / "stores",
                       confounds_strategy=("motion",))
    assert _statuses(result) == {"01": "skipped", "02": "failed", "03": "skipped"}
    assert not result.ok and list(result.failures) == ["02"] and bad.name in result.failures["02"]
    assert "Traceback" in result.subjects["02"].traceback


@pytest.mark.slow
def test_concurrent_on_local_cluster(bids, tmp_path: Path, stores: Path) -> None:
    """Subjects run on both worker processes, at most max_concurrent_subjects at a time; each worker
    imports a subject's modules in a task of its own before its first subject."""
    from distributed import Client, LocalCluster, get_task_stream

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            result = _batch(bids, tmp_path / "out", stores, client=client)
        assert _statuses(result) == dict.fromkeys(("01", "02", "03"), "done"), result.failures
        workers = {r.worker for r in result.subjects.values()}
        assert workers == set(client.nthreads())  # both workers ran subjects
        first = {}  # worker -> key prefix of its first task
        for task in sorted(stream.data, key=lambda t: min(s["start"] for s in t["startstops"])):
            first.setdefault(task["worker"], str(task["key"]).rsplit("-", 1)[0])
        assert first == dict.fromkeys(workers, "daskglm-bids-warm-up")
        one = _batch(bids, tmp_path / "one", stores, client=client, max_concurrent_subjects=1)
        spans = sorted((r.started, r.finished) for r in one.subjects.values())
        assert len(spans) == 3 and all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    for label in ("01", "02", "03"):  # same outputs as the local run
        assert (tmp_path / "out" / f"sub-{label}" / MARKER).is_file()


def test_errors_before_any_work(bids, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"No BOLD files found(.|\n)*tasks \['language'\]"):
        run_batch(bids.root, "rest", "FirstSt", out, derivatives_folder=DERIV)
    with pytest.raises(ValueError, match="derivatives folder not found"):
        run_batch(bids.root, TASK, "FirstSt", out, derivatives_folder="derivatives/nope")
    with pytest.raises(RuntimeError, match="No subject found"):
        run_batch(bids.root, TASK, "FirstSt", out, derivatives_folder=DERIV, sub_labels=["01"],
                  exclude_subjects=["01"])
    with pytest.raises(TypeError, match="stores"):
        run_batch(bids.root, TASK, "FirstSt", out, derivatives_folder=DERIV, stores="/tmp")
    with pytest.raises(ValueError, match="contrast"):
        run_batch(bids.root, TASK, {"a": object()}, out, derivatives_folder=DERIV, client="sync")
    assert not out.exists()
    args = _bids_args(bids.root, "--task", "rest", "--contrast", "FirstSt", "--out", str(out),
                      "--derivatives-folder", DERIV, "--scheduler", "sync")
    assert args.func(args) == 2


def test_contrast_names() -> None:
    defs, types = _prepare_contrasts(["a - b", "c"], None)
    assert list(defs) == ["a - b", "c"] and types == {"a - b": "t", "c": "t"}
    defs, types = _prepare_contrasts({"v": [1, 0, -1], "m": np.eye(2), "r": np.array([[1, 0]])}, {"v": "F"})
    assert types == {"v": "F", "m": "F", "r": "F"}  # nilearn names 2D arrays F
    with pytest.raises(ValueError, match="would both be written as contrast-aMinusB"):
        _prepare_contrasts({"a - b": "a - b", "a_minus_b": "a - b"}, None)
    with pytest.raises(ValueError, match="unknown names"):
        _prepare_contrasts("a", {"b": "t"})
    per_run = {"runs": [np.array([1.0, 0]), np.array([0.0, 1])]}
    assert _prepare_contrasts(per_run, None)[1] == {"runs": "t"}
    with pytest.raises(ValueError, match=r"report=True(.|\n)*\['runs'\]"):  # nilearn's report takes no per-run list
        _prepare_contrasts(per_run, None, report=True)


def test_contrast_forms_as_nilearn() -> None:
    """str, list of str, list of weights and arrays are named by str(value), as nilearn's coerce_to_dict."""
    vector = np.array([1, 0, 0, -1])
    assert list(contrast_dict("DStDSp - SStSSp")) == ["DStDSp - SStSSp"]
    assert list(contrast_dict(vector)) == [str(vector)]
    forms = contrast_dict(["DStDSp", vector, [[1, 0], [0, 1]]])
    assert list(forms) == ["DStDSp", str(vector), "[[1, 0], [0, 1]]"]
    np.testing.assert_array_equal(forms["[[1, 0], [0, 1]]"], np.eye(2))
    (name, weights), = contrast_dict([1, 0, 0, -1]).items()  # one weight vector, not one per run
    assert name == "[1, 0, 0, -1]" and isinstance(weights, np.ndarray)
    per_run = [np.ones(4), np.zeros(4)]
    assert contrast_dict({"a": per_run})["a"] is per_run  # dict values: compute_contrast definitions
    assert contrast_dict(None) == {}
    for bad, message in ((5, "contrasts must be.*got 5"), ([], r"got \[\]"), ({1: "a"}, r"names.*\[1\]"),
                         (["a", {"b": 1}], r"a contrast must be.*\{'b': 1\}")):
        with pytest.raises(ValueError, match=message):
            contrast_dict(bad)


def test_contrast_matrices_are_compute_contrasts() -> None:
    """Per run, each contrast as the padded (q, p) matrix compute_contrast uses; errors name the contrast."""
    designs = [pd.DataFrame(np.ones((3, 3)), columns=["a", "b", "c"]),
               pd.DataFrame(np.ones((3, 4)), columns=["b", "a", "c", "d"])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matrices = contrast_matrices({"e": "a - b", "w": np.array([1.0, 2]), "r": [np.array([1.0]), "d"]}, designs)
    assert not caught  # compute_contrast warns, once
    np.testing.assert_array_equal(matrices["e"][0], [[1, -1, 0]])
    np.testing.assert_array_equal(matrices["e"][1], [[-1, 1, 0, 0]])
    np.testing.assert_array_equal(matrices["w"][1], [[1, 2, 0, 0]])
    np.testing.assert_array_equal(matrices["r"][0], [[1, 0, 0]])
    np.testing.assert_array_equal(matrices["r"][1], [[0, 0, 0, 1]])
    with pytest.raises(ValueError, match="contrast 'x'.*nope"):
        contrast_matrices({"x": "a - nope"}, designs)
    with pytest.raises(ValueError, match="contrast 'y'.*3 contrasts given, while there are 2 runs"):
        contrast_matrices({"y": [np.ones(3)] * 3}, designs)


def _daskglm(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "DASKGLM_DEBUG")}
    return subprocess.run([sys.executable, "-m", "daskglm", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)


@pytest.mark.slow
def test_contrast_typo_is_one_message_before_any_subject(bids, tmp_path: Path) -> None:
    """A contrast naming no design column: one error line naming every subject, nothing fitted or written
    (before: each subject failed on its own, the 40-column message twice per subject)."""
    out = tmp_path / "out"
    proc = _daskglm("bids", bids.root, "--task", TASK, "--contrast", f"language={LANGUAGE}",
                    "--contrast", "typo=DStDSp - SStSSs", "--out", str(out), "--derivatives-folder", DERIV,
                    "--scheduler", "sync", "--store", str(tmp_path / "stores"), "--verbose", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("daskglm: error:")]
    assert len(errors) == 1, proc.stderr
    assert "contrast 'typo'" in errors[0] and "[sub-01, sub-02, sub-03]" in errors[0]
    assert "Did you mean 'SStSSp'?" in errors[0]
    assert proc.stderr.count("Available matrix columns") == 1 and "language" not in errors[0].split("typo")[0][-40:]
    assert not out.exists() and not (tmp_path / "stores").exists()
    assert "sub-01" not in proc.stdout  # no subject started


@pytest.mark.slow
def test_events_warning_is_shown_once_for_the_subjects_it_concerns(bids, tmp_path: Path) -> None:
    """Events without a trial_type column: nilearn's warning, once, with the subjects, before the contrast error."""
    root = tmp_path / "ds"
    shutil.copytree(bids.root, root)
    for path in root.glob("sub-*/func/*_events.tsv"):
        frame = pd.read_csv(path, sep="\t").rename(columns={"trial_type": "condition"})
        frame.to_csv(path, sep="\t", index=False)
    proc = _daskglm("bids", str(root), "--task", TASK, "--contrast", f"language={LANGUAGE}", "--out",
                    str(tmp_path / "out"), "--scheduler", "sync", "--store", str(tmp_path / "stores"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    trial_type = [line for line in lines if "'trial_type' column not found" in line]
    assert trial_type == ["daskglm: warning: sub-01, sub-02, sub-03: 'trial_type' column not found in the given "
                          "events data."], proc.stderr
    assert lines[-1].startswith("daskglm: error: 1 of 1 contrasts do not fit") and "'dummy'" in lines[-1]


def test_derivatives_folder_is_found_or_explained(bids, tmp_path: Path) -> None:
    """The default finds derivatives/fmriprep (nilearn's 'derivatives' holds no subject); two candidates are an
    error listing both; a wrong folder's error says which folder holds subjects."""
    from daskglm.bids.batch import _derivatives_folder

    root = Path(bids.root)
    assert _derivatives_folder(root, None, TASK) == DERIV
    assert _derivatives_folder(root, "derivatives", TASK) == "derivatives"
    with pytest.raises(RuntimeError, match=r"pass derivatives_folder='derivatives/fmriprep'"):
        run_batch(root, TASK, "FirstSt", tmp_path / "out", derivatives_folder="derivatives", client="sync")
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    shutil.copytree(copy / DERIV, copy / "derivatives" / "other")
    with pytest.raises(ValueError, match=r"several derivatives folders.*'derivatives/fmriprep', 'derivatives/other'"):
        run_batch(copy, TASK, "FirstSt", tmp_path / "out", client="sync")
    assert not (tmp_path / "out").exists()

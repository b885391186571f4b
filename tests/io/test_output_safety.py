"""Outputs never replace the user's files: ``daskglm fit`` and ``daskglm bids`` write only into a folder that is
new, empty, holds no file of an output's name, or is daskglm's own (its ``.daskglm-outputs.json`` manifests),
and never over an input of the same call; refusals are one line, before any run is read or fitted.

The command line runs in this process (``daskglm.cli.main.main``) on tiny simulated data, sync scheduler.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daskglm.cli.main import main
from daskglm.datasets.fiac import load_fiac_design_matrix

LANGUAGE = "DStDSp + DStSSp - SStDSp - SStSSp"
MANIFEST = ".daskglm-outputs.json"  # daskglm.io.outputs.MANIFEST
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


@pytest.fixture(scope="module")
def fiac(tmp_path_factory, fiac_data):
    """One small simulated run, its design matrix (.tsv) and a mask."""
    root = tmp_path_factory.mktemp("safety")
    data = fiac_data(shape=(10, 12, 6), n_scans=40, n_runs=1)
    design = root / "run1_design.tsv"
    load_fiac_design_matrix(data["design_matrix1"]).to_csv(design, sep="\t", index=False)
    return {"run": data["func1"], "design": str(design), "mask": data["mask"]}


def _fit(capsys, *argv) -> tuple[int, list[str]]:
    scheduler = [] if "--scheduler" in argv else ["--scheduler", "sync"]
    code = main(["fit", *map(str, argv), *scheduler, "--verbose", "0", "--noise-model", "ols"])
    return code, capsys.readouterr().err.splitlines()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_one_error(code: int, err: list[str], *named: str) -> None:
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("daskglm: error:"), err[0]
    for text in named:
        assert text in err[0], err[0]


def _manifest(folder: Path) -> dict:
    doc = json.loads((folder / MANIFEST).read_text())
    assert doc["tool"] == "daskglm"
    return doc["files"]


# ------------------------------------------------------------------ daskglm fit


@pytest.mark.parametrize("collision", ["mask", "design"])
def test_fit_into_the_folder_of_its_inputs_is_refused(fiac, tmp_path, capsys, collision):
    """--out = the folder holding the inputs: mask.nii.gz or design.tsv would be replaced by outputs of the same
    names. Refused before any work (no store), naming the output and the input; every file byte-identical."""
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(fiac["run"], study / "run.nii.gz")
    shutil.copy(fiac["mask"], study / "mask.nii.gz" if collision == "mask" else study / "brain.nii.gz")
    shutil.copy(fiac["design"], study / "design.tsv" if collision == "design" else study / "dm.tsv")
    (study / "design.json").write_text(json.dumps({"owner": "me", "notes": "my design parameters"}))
    (study / "contrast-language_stat-z_statmap.nii.gz").write_bytes(b"my own z map")
    before = _snapshot(study)
    mask = study / ("mask.nii.gz" if collision == "mask" else "brain.nii.gz")
    design = study / ("design.tsv" if collision == "design" else "dm.tsv")
    code, err = _fit(capsys, study / "run.nii.gz", "--design-matrix", design, "--mask", mask,
                     "--contrast", f"language={LANGUAGE}", "--out", study, "--store", tmp_path / "stores")
    name = "mask.nii.gz" if collision == "mask" else "design.tsv"
    _assert_one_error(code, err, "input", "--out")
    assert err[0].count(name) == 2, err[0]  # the output and the input
    assert _snapshot(study) == before
    assert not (tmp_path / "stores").exists()


@pytest.mark.parametrize("foreign", ["design.json", "contrast-language_stat-z_statmap.nii.gz", "mask.nii.gz"])
def test_fit_refuses_to_replace_a_file_it_did_not_write(fiac, tmp_path, capsys, foreign):
    """--out holding someone's file with an output's name: refused, one line naming it, nothing written."""
    out = tmp_path / "results"
    out.mkdir()
    (out / foreign).write_bytes(b'{"keys": "the user wrote"}')
    (out / "notes.txt").write_text("unrelated")
    before = _snapshot(out)
    code, err = _fit(capsys, fiac["run"], "--design-matrix", fiac["design"], "--mask", fiac["mask"],
                     "--contrast", f"language={LANGUAGE}", "--out", out, "--store", tmp_path / "stores")
    _assert_one_error(code, err, str(out / foreign), "not written by daskglm", "another --out")
    assert _snapshot(out) == before
    assert not (tmp_path / "stores").exists()


def test_fit_reruns_into_its_own_folder_and_keeps_other_files(fiac, tmp_path, capsys):
    """daskglm's own output folder: a rerun replaces its files (the manifest says so); an unrelated file beside
    them is untouched; an output changed since is refused; a previous output given as an input is refused."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("unrelated")
    argv = [fiac["run"], "--design-matrix", fiac["design"], "--mask", fiac["mask"], "--out", out]
    code, err = _fit(capsys, *argv, "--contrast", f"language={LANGUAGE}", "--store", tmp_path / "stores1")
    assert code == 0, err
    listed = _manifest(out)
    written = {p.name for p in out.iterdir()} - {"notes.txt", MANIFEST}
    assert set(listed) == written and "design.json" in written and "mask.nii.gz" in written
    assert all(entry["size"] > 0 and len(entry["sha256"]) == 64 for entry in listed.values())
    z = out / "contrast-language_stat-z_statmap.nii.gz"
    first = nib.load(z).get_fdata()

    # Another definition, the same names (fresh stores: these tests are about the output folder).
    code, err = _fit(capsys, *argv, "--contrast", "language=SStSSp + SStDSp - DStSSp - DStDSp",
                     "--store", tmp_path / "stores2")
    assert code == 0, err
    np.testing.assert_allclose(nib.load(z).get_fdata(), -first, rtol=1e-6, atol=1e-6)  # replaced
    assert (out / "notes.txt").read_text() == "unrelated"
    assert set(_manifest(out)) == written
    description = json.loads((out / "dataset_description.json").read_text())  # daskglm's own: its entry once
    assert [entry["Name"] for entry in description["GeneratedBy"]] == ["daskglm"]

    (out / "design.json").write_text('{"RepetitionTime": 2.5, "edited": "by the user"}')
    code, err = _fit(capsys, *argv, "--contrast", f"language={LANGUAGE}", "--store", tmp_path / "stores3")
    _assert_one_error(code, err, str(out / "design.json"), "changed since")
    assert "edited" in (out / "design.json").read_text()

    (out / "design.json").unlink()  # as the message says
    code, err = _fit(capsys, fiac["run"], "--design-matrix", fiac["design"], "--mask", out / "mask.nii.gz",
                     "--out", out, "--store", tmp_path / "stores", "--contrast", f"language={LANGUAGE}")
    _assert_one_error(code, err, "would overwrite the input --mask", "mask.nii.gz")


def test_fit_output_folder_that_cannot_be_created_fails_before_the_work(fiac, tmp_path, capsys):
    """Checked up front (no store); a folder created up front is removed if the command fails before writing."""
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    code, err = _fit(capsys, fiac["run"], "--design-matrix", fiac["design"], "--mask", fiac["mask"],
                     "--contrast", f"language={LANGUAGE}", "--out", blocker / "out", "--store", tmp_path / "stores")
    _assert_one_error(code, err, str(blocker / "out"), "cannot create")
    assert not (tmp_path / "stores").exists()
    assert blocker.read_text() == "a file where a folder should be"

    code, err = _fit(capsys, fiac["run"], "--design-matrix", fiac["design"], "--mask", fiac["mask"],
                     "--contrast", f"language={LANGUAGE}", "--out", tmp_path / "new" / "out",
                     "--store", tmp_path / "stores", "--scheduler", "nosuchscheduler")
    _assert_one_error(code, err, "nosuchscheduler")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ daskglm bids


@pytest.fixture(scope="module")
def bids(bids_data):
    return bids_data(n_subjects=1, n_runs=1, shape=(10, 12, 8), n_scans=30)


def _bids(capsys, bids, out, *extra, contrast: str = f"language={LANGUAGE}") -> tuple[int, list[str]]:
    from daskglm.cli.main import build_parser

    args = build_parser().parse_args(
        ["bids", str(bids.root), "--task", "language", "--contrast", contrast, "--out", str(out),
         "--derivatives-folder", bids.derivatives_folder, "--scheduler", "sync", "--verbose", "0",
         "--no-figures", "--confounds-strategy", "none", "--noise-model", "ols", *map(str, extra)])
    code = args.func(args)
    return code, capsys.readouterr().err.splitlines()


def test_bids_into_the_derivatives_folder_is_refused(bids, tmp_path, capsys):
    """--out = the fMRIPrep folder (the runs' folder, with its dataset_description.json): refused, untouched."""
    root = Path(bids.root)
    before = _snapshot(root)
    for out in (root / bids.derivatives_folder, root):
        code, err = _bids(capsys, bids, out, "--store", tmp_path / "stores")
        _assert_one_error(code, err, str(out), "another --out")
    assert _snapshot(root) == before
    assert not (tmp_path / "stores").exists()


def test_bids_refuses_to_replace_a_file_it_did_not_write(bids, tmp_path, capsys):
    out = tmp_path / "glm"
    sub = out / "sub-01"
    sub.mkdir(parents=True)
    foreign = sub / "sub-01_task-language_space-MNI152NLin2009cAsym_mask.nii.gz"
    foreign.write_bytes(b"my mask")
    (sub / "notes.txt").write_text("unrelated")
    before = _snapshot(out)
    code, err = _bids(capsys, bids, out, "--store", tmp_path / "stores")
    _assert_one_error(code, err, str(foreign), "not written by daskglm")
    assert _snapshot(out) == before
    assert not (tmp_path / "stores").exists()


def test_bids_reruns_into_its_own_folder(bids, tmp_path, capsys):
    """daskglm's own folder: a rerun with other contrasts replaces its files and deletes its stale ones only;
    another tool's dataset_description.json and an unrelated file stay as they are."""
    out = tmp_path / "glm"
    out.mkdir()
    description = json.dumps({"Name": "my derivatives", "BIDSVersion": "1.9.0"})
    (out / "dataset_description.json").write_text(description)
    stores = tmp_path / "stores"
    code, err = _bids(capsys, bids, out, "--store", stores, "--contrast", "FirstSt")
    assert code == 0, err
    sub = out / "sub-01"
    first = set(_manifest(sub))
    assert any("contrast-firstst" in name for name in first)
    assert first == {p.name for p in sub.iterdir()} - {MANIFEST, ".daskglm-complete.json"}
    (sub / "notes.txt").write_text("unrelated")

    code, err = _bids(capsys, bids, out, "--store", tmp_path / "stores2", contrast=f"language={LANGUAGE}")
    assert code == 0, err
    second = set(_manifest(sub))
    assert any("contrast-language" in name for name in second)
    assert not any("contrast-firstst" in p.name for p in sub.iterdir())  # daskglm's stale outputs deleted
    assert second == {p.name for p in sub.iterdir()} - {MANIFEST, ".daskglm-complete.json", "notes.txt"}
    assert (sub / "notes.txt").read_text() == "unrelated"
    assert (out / "dataset_description.json").read_text() == description  # another tool's: left as it is

    mask = next(sub.glob("*_mask.nii.gz"))  # a previous output given as the mask of a rerun
    code, err = _bids(capsys, bids, out, "--store", stores, "--mask", mask, contrast=f"language={LANGUAGE}")
    _assert_one_error(code, err, "would overwrite the input mask", mask.name)

"""``daskglm simulate-bids --space`` and ``daskglm bids --space fsLR | fsaverage5``, run as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SCRIPT = shutil.which("daskglm", path=os.path.dirname(sys.executable)) or shutil.which("daskglm")
SENTENCE = "DStDSp + DStSSp - SStDSp - SStSSp"  # DSt > SSt: the left-cortex blob
SIMULATION = ["--n-subjects", "2", "--n-runs", "1", "--n-scans", "60", "--shape", "8x8x6"]
pytestmark = pytest.mark.slow  # subprocesses


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    assert SCRIPT, f"the daskglm console script is not installed next to {sys.executable}"
    environment = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "DASKGLM_DEBUG")}
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=environment)


def _bids(root: Path, space: str, out: Path, *more: str) -> subprocess.CompletedProcess:
    return run_cli("bids", root, "--task", "language", "--space", space, "--contrast", f"sentence={SENTENCE}",
                   "--out", out, "--scheduler", "sync", "--confounds-strategy", "none", "--no-figures",
                   "--store", out.parent / "stores", *more)


def _check_z(z: np.ndarray, truth) -> None:
    centre = truth["blob_centers"][list(truth["blob_names"]).index("sentence")]
    null = truth["blob_maps"].sum(axis=0) == 0
    assert z[centre] > 5 and abs(z[null].mean()) < 0.1


@pytest.mark.parametrize("space", ["fsLR", "fsaverage5"])
def test_simulate_then_bids(space: str, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    layout = ["--cifti-layout", "small"] if space == "fsLR" else []
    done = run_cli("simulate-bids", root, "--space", space, *layout, *SIMULATION)
    assert done.returncode == 0, done.stderr
    assert f"--space {space}" in done.stdout  # the command it suggests
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    runs = sorted(p.name for p in func.glob("*_bold.*") if not p.name.endswith(".json"))
    expected = {"fsLR": ["sub-01_task-language_run-1_space-fsLR_den-19k_bold.dtseries.nii"],
                "fsaverage5": [f"sub-01_task-language_run-1_hemi-{h}_space-fsaverage5_bold.func.gii" for h in "LR"]}
    assert runs == expected[space]

    out = tmp_path / "out"
    refused = _bids(root, space, tmp_path / "refused", "--report")
    assert refused.returncode == 2 and not (tmp_path / "refused").exists()
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("daskglm: error: report=True")

    done = _bids(root, space, out)
    assert done.returncode == 0, done.stderr
    truth = np.load(root / "derivatives" / "simulation" / "truth.npz")
    for label in ("01", "02"):
        folder = out / f"sub-{label}"
        if space == "fsLR":
            name = f"sub-{label}_task-language_space-fsLR_contrast-sentence_stat-z_statmap.dscalar.nii"
            img = nib.load(folder / name)
            assert isinstance(img, nib.Cifti2Image) and img.shape == (1, 19158)
            _check_z(img.get_fdata()[0], truth)
            assert len(list(folder.glob("*.dscalar.nii"))) == 6  # five maps and the mask
            if label == "01":  # daskglm fit on the subject's run: the batch's files, named and computed alike
                run = root / "derivatives" / "fmriprep" / "sub-01" / "func" / expected["fsLR"][0]
                events = root / "sub-01" / "func" / "sub-01_task-language_run-1_events.tsv"
                fitted = run_cli("fit", run, "--events", events, "--contrast", f"sentence={SENTENCE}", "--out",
                                 tmp_path / "fit", "--scheduler", "sync", "--store", tmp_path / "stores")
                assert fitted.returncode == 0, fitted.stderr
                again = nib.load(tmp_path / "fit" / "sub-01" / name)
                np.testing.assert_allclose(again.get_fdata(), img.get_fdata(), rtol=1e-5, atol=1e-5)
        else:
            z = [nib.load(folder / (f"sub-{label}_task-language_hemi-{h}_space-fsaverage5_den-10242_contrast-sentence"
                                    "_stat-z_statmap.gii")).darrays[0].data for h in "LR"]
            _check_z(np.concatenate(z), truth)
            assert len(list(folder.glob("*.gii"))) == 12  # five maps and the mask, per hemisphere
            assert len(list(folder.glob("*_clusters.tsv"))) == 1


def test_fit_refuses_gifti_runs_in_one_line(tmp_path: Path) -> None:
    run = tmp_path / "sub-01_task-language_run-1_hemi-L_space-fsaverage5_bold.func.gii"
    run.write_bytes(b"")
    done = run_cli("fit", run, "--t-r", "2", "--contrast", "a=a", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    assert "GIFTI surface file" in done.stderr and "daskglm bids --space fsaverage5" in done.stderr

"""README's ``daskglm fit`` example, run as written (file names swapped for simulated ones), computes what its
contrasts' names say; and weights that do not match the design are refused, listing its columns.

The simulated FIAC data (``daskglm.datasets.fiac.simulate_fiac``) have a "sentence" blob (DSt > SSt) and a
"speaker" blob (DSp > SSp); each named contrast must be positive, and large, at its own blob.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow


def _readme_fit_command() -> list[str]:
    """The ``daskglm fit ...`` command of README's command-line block, continuation lines joined."""
    text = README.read_text()
    match = re.search(r"^daskglm fit .*?(?<!\\)\n", text, flags=re.S | re.M)
    assert match, "README has no daskglm fit example"
    return shlex.split(match.group(0).replace("\\\n", " "))


@pytest.fixture(scope="module")
def fiac(tmp_path_factory):
    from daskglm.datasets.fiac import simulate_fiac

    root = tmp_path_factory.mktemp("readme")
    data = simulate_fiac(data_dir=root / "data", shape=(16, 16, 10), n_scans=191, effect_size=0.06)
    return data, root


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "daskglm", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)


def test_readme_fit_example_maps_show_their_contrasts(fiac):
    data, root = fiac
    argv = _readme_fit_command()[1:]  # after "daskglm"
    names = {"run1.nii.gz": data["func1"], "run2.nii.gz": data["func2"], "mask.nii.gz": data["mask"],
             "run1_events.tsv": data["events1"], "run2_events.tsv": data["events2"]}
    assert set(names) <= set(argv), argv  # the example's inputs are those of the simulated dataset
    argv = [str(names.get(arg, arg)) for arg in argv]
    proc = _run(argv, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    truth = np.load(data["truth"])
    blobs = dict(zip(truth["blob_names"].tolist(), truth["blob_centers"].tolist()))
    contrasts = dict(arg.split("=", 1) for arg in argv[argv.index("--contrast") + 1:] if "=" in arg)
    expected = {"language": "sentence", "DSp_minus_SSp": "speaker"}
    assert set(contrasts) == set(expected), contrasts
    for name, blob in expected.items():
        key = re.sub(r"[^a-z]", "", name.lower())  # nilearn camel-cases the names of the files
        (path,) = [p for p in (root / "results").glob("contrast-*_stat-z_statmap.nii.gz")
                   if re.sub(r"[^a-z]", "", p.name.split("_stat-")[0][len("contrast-"):].lower()) == key]
        z = np.asarray(nib.load(path).dataobj)
        assert z[tuple(blobs[blob])] > 3, (name, z[tuple(blobs[blob])])
        other = "speaker" if blob == "sentence" else "sentence"
        assert z[tuple(blobs[blob])] > z[tuple(blobs[other])] + 2, name  # the blob of its own effect
    assert (root / "results" / "report.html").is_file()


def test_weights_that_do_not_match_the_design_list_its_columns(fiac):
    """Four weights against the events' design (5 conditions, drifts, constant): one line, the columns in
    order, before any work (before: the map was another contrast, with only a 'padded' warning)."""
    data, root = fiac
    out = root / "short"
    proc = _run(["fit", str(data["func1"]), "--events", str(data["events1"]), "--t-r", "2.5",
                 "--mask", str(data["mask"]), "--contrast", "DSt_minus_SSt=-1,-1,1,1", "--out", str(out), "--store", str(root / "stores-short"),
                 "--scheduler", "sync"], root)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskglm: error: contrast 'DSt_minus_SSt' has 4 weights but "
                                                   "the design has"), proc.stderr
    assert "columns, in this order: DStDSp, DStSSp, FirstSt, SStDSp, SStSSp," in lines[0]
    assert not (root / "stores-short").exists() and not list(out.glob("*.nii.gz"))

"""``daskglm fit`` and ``run_batch`` write one subject's outputs through one writer (:mod:`daskglm.bids.outputs`).

The same subject, fitted once by each (the batch finds its runs and events in the BIDS dataset; ``fit`` is given
the same runs and events files): the same file names, and the same ``dataset_description.json``,
``statmap.json`` and design sidecars. (Before the one writer, ``fit`` wrote neither ``statmap.json`` nor the
cluster tables, its ``dataset_description.json`` lacked the batch's ``CodeURL``, and its model had no
``subject_label``.) The maps themselves differ only by the mask (the batch takes fMRIPrep's; ``fit`` computes one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daskglm.bids.batch import run_batch
from daskglm.cli.main import main

LANGUAGE = "DStDSp + DStSSp - SStDSp - SStSSp"
CONTRASTS = {"DSt - SSt": LANGUAGE, "speaker": "DStDSp - SStSSp"}
STATE = {".daskglm-outputs.json", ".daskglm-complete.json"}  # daskglm's own bookkeeping, not outputs
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name not in STATE}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_fit_and_batch_write_the_same_outputs(tmp_path: Path, capsys: pytest.CaptureFixture, bids_data) -> None:
    bids = bids_data(n_subjects=1, n_runs=2, shape=(10, 12, 8), n_scans=30)
    batch = tmp_path / "batch"
    result = run_batch(bids.root, "language", CONTRASTS, batch, derivatives_folder=bids.derivatives_folder,
                       client="sync", verbose=0, figures=False, confounds_strategy=None, noise_model="ols",
                       store=tmp_path / "stores")
    assert result.ok, result.failures
    fit = tmp_path / "fit"
    runs, events = bids.preproc_bold[0], bids.events[0]
    contrasts = [arg for name, expr in CONTRASTS.items() for arg in ("--contrast", f"{name}={expr}")]
    code = main(["fit", *runs, *(arg for path in events for arg in ("--events", path)), *contrasts,
                 "--noise-model", "ols", "--out", str(fit), "--store", str(tmp_path / "stores"),
                 "--scheduler", "sync", "--verbose", "0"])
    assert code == 0, capsys.readouterr().err

    names = _files(batch)
    assert names == _files(fit)
    assert "sub-01/statmap.json" in names
    stem = "sub-01/sub-01_task-language_space-MNI152NLin2009cAsym_contrast-dstMinusSst"
    assert {f"{stem}_clusters.tsv", f"{stem}_clusters.json", f"{stem}_stat-z_statmap.nii.gz"} <= names
    for name in sorted(names):
        if name.endswith(".json"):
            assert _json(batch / name) == _json(fit / name), name
    description = _json(fit / "dataset_description.json")
    assert [entry["Name"] for entry in description["GeneratedBy"]] == ["daskglm"]
    assert "CodeURL" in description["GeneratedBy"][0]
    sidecar = "sub-01/sub-01_task-language_run-1_space-MNI152NLin2009cAsym_design.json"
    assert _json(fit / sidecar) == {"RepetitionTime": 2.0}
    parameters = _json(fit / "sub-01/statmap.json")["ModelParameters"]
    assert parameters["subject_label"] == "01" and parameters["t_r"] == 2.0


def test_dataset_description_is_merged_once() -> None:
    """A new description is nilearn's, with daskglm's entry; daskglm's own gains its entry once, others kept."""
    from daskglm import __version__
    from daskglm.bids.outputs import dataset_description

    new = json.loads(dataset_description())
    assert new["BIDSVersion"] == "1.9.0" and new["DatasetType"] == "derivative"
    (entry,) = new["GeneratedBy"]
    assert entry["Name"] == "daskglm" and entry["Version"] == __version__ and entry["CodeURL"]
    older = {**new, "GeneratedBy": [{"Name": "daskglm", "Version": "0.0.1"}]}
    merged = json.loads(dataset_description(json.dumps(older).encode()))
    assert merged["GeneratedBy"] == [{"Name": "daskglm", "Version": "0.0.1"}, entry]
    assert dataset_description(json.dumps(merged).encode()) == json.dumps(merged, indent=4, sort_keys=True).encode()


def test_contrast_labels_refuse_two_names_of_one_file() -> None:
    from daskglm.bids.outputs import contrast_labels

    assert contrast_labels(["DSt - SSt", "speaker"]) == {"DSt - SSt": "dstMinusSst", "speaker": "speaker"}
    with pytest.raises(ValueError, match="'a - b' and 'a_minus_b' would both be written as contrast-aMinusB"):
        contrast_labels(["a - b", "a_minus_b"])

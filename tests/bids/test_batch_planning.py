"""run_batch's planning pass: subjects are found a group at a time, not by one ``first_level_from_bids`` each.

nilearn's ``first_level_from_bids`` reads the whole dataset's sidecars whatever
subjects it is asked for, so one call per subject made the planning pass grow
with the square of the subjects (BENCHMARKS.md, "Scale model: 1,000 subjects").
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

from daskglm.bids import batch
from daskglm.bids.subject import Job, SubjectResult

DERIV = "derivatives/fmriprep"
TASK = "language"
CONTRASTS = {"language": "DStDSp + DStSSp - SStDSp - SStSSp"}
CONFOUNDS = {"confounds_strategy": ("motion",), "confounds_motion": "basic"}
LABELS = ["01", "02", "03", "04", "05"]
pytestmark = [pytest.mark.filterwarnings("ignore:.*StartTime.*"),
              pytest.mark.filterwarnings("ignore:.*slice_time_ref.*")]


@pytest.fixture(scope="module")
def bids(bids_data):
    return bids_data(n_subjects=5, n_runs=2, task=TASK, shape=(16, 18, 10), n_scans=40)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ``sub_labels`` of every ``first_level_from_bids`` call the batch module makes."""
    seen: list[list[str]] = []
    real = batch.first_level_from_bids

    @functools.wraps(real)
    def counted(*args, **kwargs):
        seen.append(list(kwargs["sub_labels"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "first_level_from_bids", counted)
    return seen


def _jobs(root: Path, labels: list[str]) -> list[Job]:
    defs, stat_types = batch._prepare_contrasts(CONTRASTS, None)
    return [Job(label, str(root), TASK, None, DERIV, "/nonexistent-out", defs, stat_types, "fingerprint", {},
                False, False, dict(CONFOUNDS)) for label in labels]


def test_planning_finds_the_subjects_a_group_at_a_time(bids, tmp_path: Path, calls: list[list[str]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """5 subjects in groups of 2: 3 discovery calls in the planning pass, not 5; every subject then runs."""
    monkeypatch.setattr(batch, "_DISCOVERY_GROUP", 2)
    monkeypatch.setattr(batch, "run_subject", lambda job, scheduler: SubjectResult(job.label, "done"))
    result = batch.run_batch(bids.root, TASK, CONTRASTS, tmp_path / "out", derivatives_folder=DERIV,
                             client="sync", verbose=0, figures=False, **CONFOUNDS)
    assert result.ok and list(result.subjects) == LABELS and result.done == LABELS
    assert calls == [["01", "02"], ["03", "04"], ["05"]]


def test_a_group_finds_what_each_subject_alone_finds(bids, calls: list[list[str]]) -> None:
    """Runs, files, design columns and the designs' warnings are those of one call per subject; the
    designs are kept without their rows (their columns are what the contrasts are checked against)."""
    jobs = _jobs(bids.root, LABELS)
    grouped = list(batch._designs_of(jobs))
    assert calls == [LABELS]
    assert [job.label for job, _ in grouped] == LABELS
    for job, (design, notes) in grouped:
        alone, alone_notes = batch._designs(job)
        assert design is not None and alone is not None
        assert (design.run_names, design.run_files, design.surface) == (alone.run_names, alone.run_files,
                                                                        alone.surface)
        assert notes == alone_notes
        assert len(design.design_matrices) == 2
        for ours, theirs in zip(design.design_matrices, alone.design_matrices):
            assert list(ours.columns) == list(theirs.columns) and len(ours) == 0
    assert calls[1:] == [[label] for label in LABELS]


def test_a_failing_group_is_found_again_one_subject_at_a_time(bids, tmp_path: Path,
                                                              calls: list[list[str]]) -> None:
    """A subject without events fails the group's call: each subject is then found alone, and only
    that subject has no design (its own task reports why)."""
    root = tmp_path / "ds"
    shutil.copytree(bids.root, root)
    for events in (root / "sub-03").rglob("*_events.tsv"):
        events.unlink()
    designs = {job.label: design for job, (design, _) in batch._designs_of(_jobs(root, LABELS))}
    assert calls == [LABELS, *[[label] for label in LABELS]]
    assert [label for label, design in designs.items() if design is None] == ["03"]

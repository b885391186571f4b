"""One subject of :func:`daskglm.bids.batch.run_batch`: discover, fit, compute, write, mark complete.

:func:`run_subject` is the body of a subject's task (run inside a Dask worker,
or in this process for a local scheduler). It never raises for the subject's
own errors: they come back in the :class:`SubjectResult`. The subject's
outputs are named, planned and written by :mod:`daskglm.bids.outputs` (as
``daskglm fit`` writes them); files are written under a temporary name and
renamed into place, the marker :data:`MARKER` last (see
:mod:`daskglm.bids.batch`).
"""

from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import __version__
from ..io.maps import write_bytes
from ..io.outputs import OutputConflict, OutputPlan
from ..runtime.cluster import get_client
from .from_bids import first_level_from_bids, surface_run_files
from .outputs import ModelOutputs, Writer, model_outputs, write_model

__all__ = [
    "BATCH_FORMAT",
    "MARKER",
    "Job",
    "SubjectResult",
    "input_files",
    "is_complete",
    "output_plan",
    "run_files",
    "run_subject",
    "subject_inputs",
    "subject_outputs",
    "write_json",
]

#: Per-subject completion marker, written last.
MARKER = ".daskglm-complete.json"
#: Bumped when the outputs for given parameters change.
BATCH_FORMAT = 1


@dataclass(frozen=True)
class SubjectResult:
    """Outcome for one subject: ``done``, ``skipped`` (already complete) or ``failed``.

    Parameters
    ----------
    label : str
        The subject's label (without ``sub-``).
    status : {"done", "skipped", "failed"}
        ``"skipped"``: its outputs were already complete, nothing was run.
    error : str or None, default=None
        For a failure, ``"<exception type>: <message>"`` (followed by the
        step that failed when the subject's own work raised it).
    traceback : str or None, default=None
        For a failure, the formatted traceback.
    files : tuple of str, default=()
        The files written, relative to the output folder.
    worker : str or None, default=None
        Address of the distributed worker that ran the subject (None: this
        process).
    started, finished : float or None, default=None
        ``time.time()`` at the start and the end of the subject's task
        (None when skipped).
    warnings : tuple of str, default=()
        The distinct warning messages raised for the subject.
    """

    label: str
    status: Literal["done", "skipped", "failed"]
    error: str | None = None
    traceback: str | None = None
    files: tuple[str, ...] = ()  # written, relative to the output folder
    worker: str | None = None  # distributed worker address (None: this process)
    started: float | None = None  # time.time() at the start / end of the subject's task
    finished: float | None = None
    warnings: tuple[str, ...] = ()  # distinct warning messages raised for the subject

    @property
    def seconds(self) -> float | None:
        """Wall time of the subject's task (None when skipped)."""
        return None if self.started is None or self.finished is None else self.finished - self.started


def _write_bytes(path: Path, data: bytes) -> None:

    write_bytes(path, data)


def write_json(path: Path, obj: Any, **kwargs: Any) -> None:
    _write_bytes(path, json.dumps(obj, **kwargs).encode())


def input_files(dataset: Path, derivatives: Path, label: str, task: str) -> dict[str, list[int]]:
    """Size and mtime (ns) of the subject's files of the task, and of dataset-level task sidecars."""
    tag = f"task-{task}"
    paths: set[Path] = set()
    for root in (dataset, derivatives):
        paths.update(p for p in root.glob(f"*{tag}*") if p.is_file())
        paths.update(p for p in (root / f"sub-{label}").rglob(f"*{tag}*") if p.is_file())
    found = {}
    for path in sorted(paths):
        stat = path.stat()
        key = path.relative_to(dataset).as_posix() if path.is_relative_to(dataset) else str(path)
        found[key] = [stat.st_size, stat.st_mtime_ns]
    return found


def is_complete(sub_dir: Path, fingerprint: str, inputs: dict[str, list[int]]) -> bool:
    """Whether the marker in ``sub_dir`` matches the job, the inputs and the files on disk."""
    try:
        marker = json.loads((sub_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("fingerprint") == fingerprint
            and marker.get("inputs") == inputs
            and all((sub_dir.parent / name).is_file() for name in marker.get("outputs", [None])))


def subject_outputs(job: Job, run_names: list, minimize_memory: bool, surface: dict[str, int] | None = None
                    ) -> ModelOutputs:
    """The subject's files under nilearn's names (:func:`daskglm.bids.outputs.model_outputs`)."""
    return model_outputs(job.output_dir, run_names, job.contrasts, job.stat_types, figures=job.figures,
                         residuals=not minimize_memory, report=job.report, surface=surface)


def run_files(job: Job, run_imgs: list) -> tuple[list[str], list[str], dict[str, int] | None]:
    """What a subject's runs are named after, their files, and a surface model's vertices per hemisphere.

    Runs given as paths (NIfTI, CIFTI) name the outputs themselves. nilearn
    gives fsaverage5 runs as ``SurfaceImage`` objects, without their file
    names: the outputs are named after each run's left-hemisphere GIFTI file
    (nilearn drops ``hemi`` from output names), and both hemispheres' files
    are the run's inputs.

    Returns
    -------
    names : list of str
        One per run.
    files : list of str
        Every file of the runs.
    surface : dict of {"L", "R"} to int, or None
        The vertices of each hemisphere's mesh, for surface runs.

    Raises
    ------
    RuntimeError
        The GIFTI files found do not pair with the runs.
    """
    from nilearn.surface import SurfaceImage

    if not any(isinstance(run, SurfaceImage) for run in run_imgs):
        names = [os.fspath(run) for run in run_imgs]
        return names, names, None
    pairs = surface_run_files(Path(job.dataset) / job.derivatives_folder, job.label, job.task_label,
                              job.space_label, job.kwargs.get("img_filters"))
    if len(pairs) != len(run_imgs):
        raise RuntimeError(f"sub-{job.label}: {len(pairs)} pairs of GIFTI files for {len(run_imgs)} surface runs")
    parts = run_imgs[0].mesh.parts
    surface = {"L": int(parts["left"].n_vertices), "R": int(parts["right"].n_vertices)}
    return [left for left, _ in pairs], [path for pair in pairs for path in pair], surface


def output_plan(job: Job, run_names: list, minimize_memory: bool, inputs: list[tuple[str, Any]],
                surface: dict[str, int] | None = None) -> Any:
    """Every file one subject writes, checked against its folder's manifest and its inputs; and its marker.

    See :mod:`daskglm.io.outputs`: an existing output daskglm cannot prove it
    wrote, or one that is an input (``inputs``: ``(what, path)`` pairs), is
    refused, before any work. The completion marker (:data:`MARKER`) is
    daskglm's state, not an output: an existing one must parse as a marker.

    Returns
    -------
    daskglm.io.outputs.OutputPlan
        Checked.

    Raises
    ------
    daskglm.io.outputs.OutputConflict
        One line naming the file (and the input).
    """

    plan = OutputPlan(subject_outputs(job, run_names, minimize_memory, surface).paths(), what="--out (output_dir)")
    plan.check_inputs(inputs)
    plan.check()
    marker = Path(job.output_dir) / f"sub-{job.label}" / MARKER  # daskglm's state, rewritten if it is a marker
    if marker.exists() or marker.is_symlink():
        try:
            ok = marker.is_file() and not marker.is_symlink() and {"format", "subject"} <= set(
                json.loads(marker.read_text()))
        except (OSError, ValueError, TypeError):
            ok = False
        if not ok:
            raise OutputConflict(f"{marker} exists and is not a daskglm completion marker: choose another "
                                 "--out (or remove the file)")
    return plan


def subject_inputs(dataset: Path, inputs: dict[str, list[int]], run_imgs: list, mask_img: Any
                   ) -> list[tuple[str, Any]]:
    """``(what, path)`` of a subject's input files: runs, task files of :func:`input_files`, mask, descriptions."""
    found: list[tuple[str, Any]] = [("run", p) for p in run_imgs]
    found += [("dataset file", p if os.path.isabs(p) else dataset / p) for p in inputs]
    if isinstance(mask_img, (str, os.PathLike)) and os.fspath(mask_img) != "derivatives":
        found.append(("mask", mask_img))
    found.append(("dataset file", dataset / "dataset_description.json"))
    return found


# ------------------------------------------------------------------ one subject


@dataclass(frozen=True)
class Job:
    label: str
    dataset: str
    task_label: str
    space_label: str | None
    derivatives_folder: str
    output_dir: str
    contrasts: dict[str, Any]
    stat_types: dict[str, str]
    fingerprint: str
    parameters: dict
    report: bool
    figures: bool
    kwargs: dict


def _local_scheduler() -> tuple[str, int]:
    """The scheduler for a subject's own graph inside a distributed worker (else ``sync``)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return "sync", 1
    threads = worker.state.nthreads
    return ("threads" if threads > 1 else "sync"), threads


def run_subject(job: Job, scheduler: str | None = None) -> SubjectResult:
    """Task body: one subject's whole pipeline; never raises for the subject's own errors."""
    import dask

    worker = None
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        pass
    threads = 1
    if scheduler is None:
        scheduler, threads = _local_scheduler()
    started, stage = time.time(), ["finding the subject's files"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with dask.config.set(num_workers=threads):
                files = _fit_and_write(job, scheduler, stage)
            status, error, tb = "done", None, None
        except Exception as exc:  # noqa: BLE001 - reported, not raised: isolates the subject
            files, status = (), "failed"
            error, tb = f"{type(exc).__name__}: {exc} [while {stage[0]}]", traceback.format_exc()
    messages = tuple(dict.fromkeys(str(w.message) for w in caught))
    return SubjectResult(job.label, status, error, tb, tuple(files), worker, started, time.time(), messages)


def _fit_and_write(job: Job, scheduler: str, stage: list[str]) -> list[str]:
    """Discover, check the outputs, fit, compute and write one subject; returns the files written (marker last).

    ``stage[0]`` says what is being done, for the error message of a failure.
    """

    dataset = Path(job.dataset)
    derivatives = dataset / job.derivatives_folder
    if not (isinstance(job.label, str) and job.label.isalnum()):  # a BIDS label: no separator, no ".."
        raise ValueError(f"subject label must be alphanumeric (BIDS); got {job.label!r}")
    inputs = input_files(dataset, derivatives, job.label, job.task_label)  # before reading them
    models, imgs, events, confounds = first_level_from_bids(
        job.dataset, job.task_label, space_label=job.space_label, sub_labels=[job.label],
        derivatives_folder=job.derivatives_folder, client=scheduler, **job.kwargs)
    if not models:
        raise RuntimeError(f"first_level_from_bids found no model for subject {job.label!r}")
    model, run_imgs = models[0], imgs[0]
    stage[0] = "checking the output folder"
    names, files, surface = run_files(job, run_imgs)
    plan = output_plan(job, names, model.minimize_memory,
                       subject_inputs(dataset, inputs, files, job.kwargs.get("mask_img")), surface)
    with plan.writing():
        return _write_subject(job, scheduler, stage, plan, model, run_imgs, events[0], confounds[0], inputs,
                              names, surface)


def _write_subject(job: Job, scheduler: str, stage: list[str], plan: Any, model: Any, run_imgs: list,
                   events: Any, confounds: Any, inputs: dict[str, list[int]], names: list[str],
                   surface: dict[str, int] | None) -> list[str]:
    """Fit one subject and write the files of ``plan``; returns the files written (marker last)."""

    out = Path(job.output_dir)
    sub_dir = out / f"sub-{job.label}"
    try:
        previous = json.loads((sub_dir / MARKER).read_text()).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        previous = []
    (sub_dir / MARKER).unlink(missing_ok=True)  # daskglm's (checked); incomplete from here until the new marker
    for leftover in sub_dir.glob(f"{MARKER}.tmp-*"):  # left by a killed write of the marker
        leftover.unlink(missing_ok=True)
    stage[0] = f"fitting runs {[Path(p).name for p in names]}"
    with get_client(scheduler):
        model.fit(run_imgs, events=events, confounds=confounds)
        stage[0] = "writing the outputs"
        plan.claim()  # checked again: nothing of another's appeared during the fit
        writer = Writer(plan)

        def step(text: str) -> None:
            stage[0] = text

        write_model(model, subject_outputs(job, names, model.minimize_memory, surface), job.contrasts,
                    job.stat_types, writer, names, label=f"sub-{job.label}: ", client=scheduler, on_step=step)
    outputs = sorted(Path(p).relative_to(out).as_posix() for p in writer.written)
    for stale in sorted(set(previous) - set(outputs)):
        if isinstance(stale, str) and not stale.startswith(("/", "..")) and "/.." not in stale:
            plan.remove(out / stale)  # only if the manifest proves it daskglm's, unchanged
    import nilearn


    write_json(sub_dir / MARKER, {
        "format": BATCH_FORMAT, "subject": job.label, "fingerprint": job.fingerprint,
        "parameters": job.parameters, "inputs": inputs, "outputs": outputs,
        "daskglm_version": __version__, "nilearn_version": nilearn.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2, sort_keys=True)
    return outputs

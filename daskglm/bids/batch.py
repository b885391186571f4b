"""Many subjects of a BIDS dataset: fit, contrasts and BIDS-derivatives outputs, resumable.

:func:`run_batch` fits every subject's first-level model (found by
:func:`daskglm.first_level_from_bids`), computes a list of contrasts and writes
each subject's outputs under the names nilearn 0.14's
:func:`nilearn.glm.save_glm_to_bids` gives them; ``daskglm bids`` is its
command line (:mod:`daskglm.cli.bids`). One subject's work is in
:mod:`daskglm.bids.subject`.

Execution: one task per subject. On a ``distributed`` client each subject is a
``client.submit`` task (unique non-pure key) whose body runs the subject's whole
pipeline in the worker: BIDS discovery (its events and confounds are read
there, never gathered on the client), ingestion, fit, contrasts, writing, with
the subject's block graph on the worker's local scheduler (``"sync"`` for a
one-thread worker, else ``"threads"`` with the worker's thread count). Subjects
run concurrently across workers and memory stays bounded: at most
``max_concurrent_subjects`` (default: the number of workers) subjects are in
flight, the next submitted as one finishes (:class:`distributed.as_completed`),
and each subject streams its runs block by block. The price: one subject's
blocks do not spread over several workers. With a local scheduler name as
``client`` (``"sync"``, ``"threads"``) subjects run one after the other here.
A subject's errors come back as its ``failed`` status (error text and
traceback) and stop nothing else; a worker lost mid-task is retried by the
scheduler (``distributed.scheduler.allowed-failures``), then reported failed.

Resumption: files are written under a temporary name and renamed into place;
``sub-<label>/.daskglm-complete.json`` is written last. It holds a fingerprint
of the job (dataset, task, space, derivatives folder, contrasts, model
parameters and options; not ``store`` or chunk sizes), the size and mtime of
the subject's inputs (its files of the task in the raw and derivatives
folders, and dataset-level sidecars of the task) and the files written. A
subject is skipped when its marker has the same fingerprint, unchanged inputs
and all its outputs; otherwise its marker is removed first, its outputs
rewritten, previous outputs no longer produced deleted, a new marker written.
One batch at a time per output folder.

Output safety (:mod:`daskglm.io.outputs`): daskglm replaces or deletes only
files it wrote itself. Each folder it writes into (the output root, each
``sub-<label>/``) holds a manifest, ``.daskglm-outputs.json``, of the files it
wrote there (size and SHA-256). Before any subject is fitted, every file the
batch would write is checked: an existing one must be in its manifest and
unchanged, and none may be an input of the batch (runs, events, confounds,
mask, dataset files), else :class:`daskglm.io.outputs.OutputConflict` (a
``ValueError``, one line naming the file) is raised. The output folder may
not be the dataset or its derivatives folder (outputs would be read back as
inputs). A ``dataset_description.json`` daskglm did not write is left as it
is. Each subject checks its own files again before its fit (its error then
fails that subject only).

Each subject's outputs are named and written by :mod:`daskglm.bids.outputs`,
as ``daskglm fit`` writes a model's (its docstring compares them with nilearn
0.14's ``save_glm_to_bids``): nilearn's names and the same set of files as
``save_glm_to_bids``, except ``report.html`` (only with ``report=True``), the
PNG figures (skipped with ``figures=False``) and the per-run ``stat-errorts`` /
``stat-rsquared`` maps (only with ``minimize_memory=False``; nilearn 0.14
cannot save a model without them). ``dataset_description.json`` names daskglm
in ``GeneratedBy``.

Surface spaces: with ``space_label="fsaverage5"`` each subject's runs are
nilearn's ``SurfaceImage`` objects (both hemispheres' GIFTI files) and its
maps are written one GIFTI file per hemisphere (``..._hemi-L_space-fsaverage5_den-10242_..._statmap.gii``,
as nilearn's ``save_glm_to_bids``); with a space of CIFTI-2 dense time series
(fMRIPrep's ``fsLR``) the runs are the ``.dtseries.nii`` files and the maps
dense scalars (``.dscalar.nii``). Neither gets ``report.html``: ``report=True``
is refused before any work.

Modules that import nilearn (``glm.design``, ``models.nilearn_compat``,
``nilearn.interfaces``) are imported where they are used: ``daskglm --help``
and the CLI's first checks start without loading nilearn.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np

from ..io.outputs import OutputConflict, OutputPlan
from ..runtime.cluster import get_client, wait_first
from .from_bids import (
    RUN_TYPES,
    bold_entities,
    dataset_hint,
    first_level_from_bids,
    pipeline_folders,
    run_kind,
)
from .outputs import DESCRIPTION, Writer, contrast_labels, write_dataset_description
from .subject import (
    BATCH_FORMAT,
    MARKER,
    Job,
    SubjectResult,
    input_files,
    is_complete,
    output_plan,
    run_files,
    run_subject,
    subject_inputs,
)

__all__ = ["BATCH_FORMAT", "MARKER", "BatchResult", "SubjectResult", "run_batch"]

#: ``first_level_kwargs`` that only say how or where to compute: not in the fingerprint.
_EXECUTION = frozenset({"store", "storage_options", "t_chunk", "v_chunk", "n_jobs", "memory", "memory_level"})
_PREFIX = "[daskglm bids]"
#: Why a space's runs get no report.html.
_NO_REPORT = {"cifti": "its runs are CIFTI dense time series, and nilearn's report draws volumes or surfaces",
              "gifti": "nilearn 0.14.1's surface report fails (a matplotlib colorbar error) on any contrast with no "
                       "vertex above its threshold, which would fail subjects after their fit"}


@dataclass
class BatchResult:
    """Per-subject outcomes of :func:`run_batch`, in subject order.

    Parameters
    ----------
    output_dir : str
        The absolute path of the batch's output folder.
    subjects : dict of str to SubjectResult, default={}
        Each subject's outcome by label.
    """

    output_dir: str
    subjects: dict[str, SubjectResult] = field(default_factory=dict)

    def _with(self, status: str) -> list[str]:
        return [label for label, r in self.subjects.items() if r.status == status]

    @property
    def done(self) -> list[str]:
        """Labels of the subjects computed by this run."""
        return self._with("done")

    @property
    def skipped(self) -> list[str]:
        """Labels of the subjects whose outputs were already complete."""
        return self._with("skipped")

    @property
    def failures(self) -> dict[str, str]:
        """``{label: error text}`` of the failed subjects."""
        return {label: r.error or "" for label, r in self.subjects.items() if r.status == "failed"}

    @property
    def ok(self) -> bool:
        """True when no subject failed."""
        return not self.failures

    def __str__(self) -> str:
        return (f"BatchResult({len(self.done)} done, {len(self.skipped)} skipped, "
                f"{len(self.failures)} failed; outputs in {self.output_dir})")


# ------------------------------------------------------------------ contrasts and fingerprint


def _prepare_contrasts(contrasts: Any, contrast_types: dict[str, str] | None, report: bool = False
                       ) -> tuple[dict[str, Any], dict[str, str]]:
    """Contrasts as ``{name: definition}`` (nilearn's rules) and the stat type of each file name.

    With ``report``, every definition must be one a nilearn report can show:
    ``generate_report`` plots each contrast against each run's design, so it
    takes a ``str`` or an array, not a list of one definition per run.
    """
    from ..glm.design import contrast_dict

    defs = contrast_dict(contrasts)
    for name, value in defs.items():
        runs = value if isinstance(value, (list, tuple)) else [value]
        for run in runs or [None]:
            try:
                ok = isinstance(run, str) or np.asarray(run, dtype=float).ndim in (1, 2)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"contrast {name!r}: a definition is a str, a 1D or 2D array of weights, "
                                 f"or a list of them (one per run); got {value!r}")
    per_run = [name for name, value in defs.items() if isinstance(value, (list, tuple))]
    if report and per_run:
        raise ValueError(f"report=True: nilearn's generate_report takes one definition per contrast (a str or "
                         f"an array), not a list of one per run; contrasts {per_run} are lists "
                         f"({defs[per_run[0]]!r}): give one definition, or report=False")
    types = dict(contrast_types or {})
    unknown = sorted(set(types) - set(defs))
    bad = {k: v for k, v in types.items() if v not in ("t", "F")}
    if unknown or bad:
        raise ValueError(f"contrast_types must map contrast names {sorted(defs)} to 't' or 'F'; "
                         f"unknown names {unknown}, bad types {bad}")
    stat_types = {}
    for name, value in defs.items():
        first = value[0] if isinstance(value, (list, tuple)) else value  # per-run list
        default = "t" if isinstance(first, str) or np.asarray(first).ndim <= 1 else "F"
        stat_types[name] = types.get(name, default)  # nilearn's rule for file names
    contrast_labels(defs)  # two names written as one contrast-<label>: ValueError
    return defs, stat_types


def _canonical(value: Any) -> Any:
    """A JSON-able, stable form of a parameter value (for fingerprints and markers)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "affine") and hasattr(value, "dataobj"):  # an in-memory image
        digest = hashlib.sha1(np.ascontiguousarray(np.asanyarray(value.dataobj)).tobytes())
        digest.update(np.asarray(value.affine, dtype=float).tobytes())
        return {"image_sha1": digest.hexdigest()}
    return repr(value)


def _fingerprint(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ output checks


def _check_output_dir(out: Path, dataset: Path, derivatives: Path) -> None:
    """The output folder may not be the dataset, its derivatives folder, or inside their subject folders."""

    real = Path(os.path.realpath(out))
    for what, root in (("the dataset", dataset), ("the derivatives folder", derivatives)):
        root = Path(os.path.realpath(root))
        inside = real.is_relative_to(root) and any(part.startswith("sub-") for part in real.relative_to(root).parts)
        if real == root or inside:
            raise OutputConflict(f"output folder {str(out)!r} is {what} {str(root)!r} (or one of its subject "
                                 "folders): outputs would be mixed with the inputs; choose another --out "
                                 "(e.g. a folder under derivatives/)")


class _Design(NamedTuple):
    """One subject's runs and design matrices, found before any subject is fitted."""

    run_names: list[str]  # what the outputs are named after
    run_files: list[str]  # every file of the runs
    surface: dict[str, int] | None  # a surface model's vertices per hemisphere
    design_matrices: list[Any]


#: Subjects found by one ``first_level_from_bids`` call of the planning pass (:func:`_designs_of`).
_DISCOVERY_GROUP = 128


def _designs(job: Job, found: tuple | None = None) -> tuple[_Design | None, list[str]]:
    """A subject's runs (their names and files) and designs as its task will build them, and the warnings
    building the designs gave.

    ``found``: the subject's ``(model, run_imgs, events, confounds)`` from a
    ``first_level_from_bids`` call of several subjects (:func:`_designs_of`);
    None: discovered here alone. The designs are kept without their rows
    (their columns are what the contrasts are checked against), so that the
    planning pass does not hold every subject's design matrices.

    ``None`` when discovery or the design fails: the subject's own task then
    reports why, as that subject's failure (one bad subject stops no other).
    """

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # discovery's notes: the subject's task reports them (verbose 2)
            model, run_imgs, run_events, run_confounds = found or _discover([job])[job.label]
            names, files, surface = run_files(job, run_imgs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            designs = model.make_design_matrices(run_imgs, run_events, run_confounds)
    except Exception:  # noqa: BLE001 - the subject's task reports it
        return None, []
    return (_Design(names, files, surface, [design.iloc[:0] for design in designs]),
            list(dict.fromkeys(str(w.message) for w in caught)))


def _designs_of(jobs: list[Job]) -> Iterator[tuple[Job, tuple[_Design | None, list[str]]]]:
    """Each job with its :func:`_designs` (jobs of one batch: they differ only by subject), in order.

    The subjects are found by one ``first_level_from_bids`` call per group of
    :data:`_DISCOVERY_GROUP`: each call reads every subject's sidecars (to
    infer ``t_r`` and the slice timing) and lists every run (the space
    checks), whichever subjects it is asked for, so one call per subject
    repeated those scans of the whole dataset for each subject (BENCHMARKS.md,
    "Scale model: 1,000 subjects"; nilearn's own lookups of one subject's
    files still list every subject folder, which this does not change). A
    group holds its subjects' events and confounds until their designs are
    made. A group whose call fails, or that misses a subject, is found again
    one subject at a time: a subject's own problem stays that subject's
    failure.
    """

    for begin in range(0, len(jobs), _DISCOVERY_GROUP):
        group = jobs[begin:begin + _DISCOVERY_GROUP]
        found: dict[str, tuple] = {}
        if len(group) > 1:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = _discover(group)
            except Exception:  # noqa: BLE001 - one subject at a time below
                found = {}
        for job in group:
            yield job, _designs(job, found.pop(job.label, None))


def _discover(jobs: list[Job]) -> dict[str, tuple]:
    """The jobs' subjects (jobs of one batch) found by one ``first_level_from_bids`` call: subject label
    -> ``(model, run_imgs, events, confounds)``."""
    first = jobs[0]
    models, imgs, events, confounds = first_level_from_bids(
        first.dataset, first.task_label, space_label=first.space_label, sub_labels=[job.label for job in jobs],
        derivatives_folder=first.derivatives_folder, client="sync", **first.kwargs)
    return {model.subject_label: (model, run_imgs, run_events, run_confounds)
            for model, run_imgs, run_events, run_confounds in zip(models, imgs, events, confounds)}


def _check_designs(designs: dict[str, _Design | None], notes: dict[str, list[str]], contrasts: dict[str, Any]
                   ) -> None:
    """Every contrast against every subject's design, once, before any subject is fitted.

    nilearn's warnings about the events (no ``trial_type`` column...) are
    warned once per text with the subjects they concern.

    Raises
    ------
    ValueError
        One message for all the contrasts that do not fit some subject's
        design, each with its subjects and the first subject's reason
        (e.g. the columns an expression may name).
    """
    from ..glm.design import contrast_matrices

    by_text: dict[str, list[str]] = {}
    for label, texts in notes.items():
        for text in texts:
            by_text.setdefault(text, []).append(label)
    for text, labels in by_text.items():
        warnings.warn(f"{_subject_list(labels)}: {text}", UserWarning, stacklevel=3)
    failed: dict[str, tuple[list[str], str]] = {}
    for label, design in designs.items():
        if design is None:
            continue
        for name, definition in contrasts.items():
            try:
                contrast_matrices({name: definition}, design.design_matrices)
            except ValueError as exc:
                failed.setdefault(name, ([], " ".join(str(exc).split())))[0].append(label)
    if failed:
        checked = sum(design is not None for design in designs.values())
        parts = [f"{reason} [{_subject_list(labels)}"
                 f"{'' if len(labels) == checked else f'; {len(labels)} of {checked} subjects'}]"
                 for name, (labels, reason) in failed.items()]
        raise ValueError(f"{len(failed)} of {len(contrasts)} contrasts do not fit the subjects' designs; "
                         f"nothing was fitted: {'; '.join(parts)}")


def _subject_list(labels: list[str]) -> str:
    shown = ", ".join(f"sub-{label}" for label in labels[:5])
    return shown + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")


# ------------------------------------------------------------------ the batch


def _derivatives_folder(dataset: Path, given: str | None, task_label: str) -> str:
    """``given``, or the folder of preprocessed runs (see ``derivatives_folder`` of :func:`run_batch`)."""
    if given is not None:
        return given
    found = pipeline_folders(dataset)
    if not found or "derivatives" in found:
        return "derivatives"  # nilearn's default (if nothing holds subjects, the error says what there is)
    with_runs = [folder for folder in found if task_label in bold_entities(dataset / folder)["task"]]
    if len(with_runs) == 1:
        return with_runs[0]
    if len(with_runs) > 1:
        raise ValueError(f"several derivatives folders hold runs of task {task_label!r}: {with_runs}; "
                         "choose one with derivatives_folder= (--derivatives-folder)")
    return "derivatives"


def _subjects(dataset: Path, derivatives: Path, task_label: str, space_label: str | None,
              sub_labels: Sequence[str] | None, exclude: Sequence[str]) -> list[str]:
    """Subject labels to run, with nilearn's checks made once, up front (not once per subject)."""
    from nilearn.interfaces.bids import get_bids_files

    if not isinstance(task_label, str) or not task_label.isalnum():
        raise ValueError(f"task_label must be an alphanumeric str; got {task_label!r}")
    if not dataset.is_dir():
        raise ValueError(f"'dataset_path' does not exist: {str(dataset)!r}")
    if not derivatives.is_dir():
        raise ValueError(f"derivatives folder not found: {str(derivatives)!r}; folders with subject "
                         f"folders: {pipeline_folders(dataset)}")
    found = sorted(p.name[len("sub-"):] for p in derivatives.glob("sub-*") if p.is_dir())
    labels = found if sub_labels is None else [s for s in dict.fromkeys(sub_labels) if s in found]
    missing = [] if sub_labels is None else [s for s in sub_labels if s not in found]
    if missing:
        warnings.warn(f"subjects {missing} not found in {str(derivatives)!r}", UserWarning, stacklevel=3)
    labels = [s for s in labels if s not in set(exclude)]
    if not labels:
        message = (f"No subject found in {str(derivatives)!r} (sub_labels={sub_labels!r}, "
                   f"exclude_subjects={list(exclude)!r}; present: {found})")
        hint = None if found else dataset_hint(message, dataset, derivatives.relative_to(dataset), task_label,
                                               space_label)
        raise RuntimeError(message + (f"; {hint}" if hint else ""))
    space = space_label or "MNI152NLin2009cAsym"
    file_type = RUN_TYPES[run_kind(derivatives, task_label, space_label)]
    if not get_bids_files(derivatives, file_tag="bold", file_type=file_type, modality_folder="func",
                          filters=[("task", task_label), ("space", space)]):
        held = bold_entities(derivatives)
        raise ValueError(f"No BOLD files found for task_label={task_label!r}, space_label={space!r} in "
                         f"{str(derivatives)!r}: its runs have tasks {held['task']} and spaces {held['space']}")
    return labels


def run_batch(
    dataset_path: str | os.PathLike,
    task_label: str,
    contrasts: Any,
    output_dir: str | os.PathLike,
    space_label: str | None = None,
    sub_labels: Sequence[str] | None = None,
    derivatives_folder: str | None = None,
    max_concurrent_subjects: int | None = None,
    client: Any = None,
    verbose: int = 1,
    report: bool = False,
    figures: bool = True,
    contrast_types: dict[str, str] | None = None,
    **first_level_kwargs: Any,
) -> BatchResult:
    """Fit every subject's first-level model and write its contrasts as BIDS derivatives.

    See the module docstring for the execution, memory bound, file names and
    resumption.

    Parameters
    ----------
    dataset_path : str or os.PathLike
        Root of the BIDS dataset.
    task_label : str
        ``task-<task_label>`` of the runs to model.
    contrasts : str, array, list of them, or dict of name to definition
        As nilearn's ``save_glm_to_bids(contrasts=...)``; definitions as
        :meth:`daskglm.FirstLevelModel.compute_contrast` reads them.
    output_dir : str or os.PathLike
        Output root: ``dataset_description.json`` and ``sub-<label>/`` folders.
    space_label, sub_labels
        As :func:`daskglm.first_level_from_bids` (default: every subject).
    derivatives_folder : str, optional
        The preprocessed runs' folder, relative to the dataset. Default:
        ``derivatives`` when it holds subject folders (nilearn's default), else
        the one folder under ``derivatives/`` whose subject folders hold runs of
        the task (``derivatives/fmriprep``, as fMRIPrep is often run); several
        such folders are an error that lists them.
    max_concurrent_subjects : int, optional
        Subjects in flight on a distributed client (default: its number of workers).
    client : distributed.Client, address, local scheduler name or None
        See :func:`daskglm.runtime.cluster.get_client`; a local scheduler name runs
        the subjects one after the other in this process.
    verbose : int
        0: silent; 1: a line per subject (``k/n``) and a summary; 2: also
        the warnings raised for each subject.
    report : bool
        Also write each subject's HTML report, ``report.html``: nilearn's
        ``generate_report`` with its defaults (``height_control="fpr"``,
        ``alpha=0.001``), saved as its ``save_as_html`` saves it. Each
        contrast must then be a ``str`` or an array (not a list per run).
        Volumes only: refused for CIFTI and surface spaces.
    figures : bool
        Write nilearn's PNG figures of the design and contrast matrices
        (a few tenths of a second each; False skips them).
    contrast_types : dict of str to {"t", "F"}, optional
        As nilearn's ``save_glm_to_bids``: statistic of some contrasts.
    **first_level_kwargs
        Passed to :func:`daskglm.first_level_from_bids` (``smoothing_fwhm``,
        ``mask_img``, ``img_filters``, ``confounds_*``, ``store``, ...).

    Returns
    -------
    BatchResult
        ``.subjects[label].status`` is ``"done"``, ``"skipped"`` or ``"failed"``
        (``.error`` holds the error text); ``.failures``, ``.ok``.

    Raises
    ------
    ValueError, RuntimeError, NotImplementedError, TypeError
        Problems shared by all subjects (no dataset, no subject, unknown
        task or space, invalid contrasts or keywords), before any work.
    """

    accepted = set(inspect.signature(first_level_from_bids).parameters)
    unknown = sorted(k for k in first_level_kwargs
                     if (k not in accepted and not k.startswith("confounds_")) or k in
                     {"dataset_path", "task_label", "space_label", "sub_labels", "derivatives_folder", "client"})
    if unknown:
        raise TypeError(f"run_batch got keyword arguments {unknown} that first_level_from_bids does not take "
                        "(or that run_batch sets itself)")
    if max_concurrent_subjects is not None and (not isinstance(max_concurrent_subjects, int)
                                                or max_concurrent_subjects < 1):
        raise ValueError(f"max_concurrent_subjects must be a positive int; got {max_concurrent_subjects!r}")
    start = time.perf_counter()
    _warm_up(client)
    dataset = Path(dataset_path).absolute()
    derivatives_folder = _derivatives_folder(dataset, derivatives_folder, task_label)
    derivatives = dataset / derivatives_folder
    out = Path(output_dir).absolute()
    kwargs = dict(first_level_kwargs)
    exclude = list(kwargs.pop("exclude_subjects", None) or [])
    labels = _subjects(dataset, derivatives, task_label, space_label, sub_labels, exclude)
    kind = run_kind(derivatives, task_label, space_label, kwargs.get("img_filters"))
    if report and kind != "volume":
        raise ValueError(f"report=True (--report) is not available for space {space_label!r}: {_NO_REPORT[kind]}; "
                         "leave out the report")
    defs, stat_types = _prepare_contrasts(contrasts, contrast_types, bool(report))
    parameters = _canonical({
        "format": BATCH_FORMAT, "dataset": str(dataset), "task_label": task_label,
        "space_label": space_label, "derivatives_folder": derivatives_folder, "contrasts": defs,
        "stat_types": stat_types, "report": bool(report), "figures": bool(figures),
        "first_level": {k: v for k, v in kwargs.items() if k not in _EXECUTION},
    })
    fingerprint = _fingerprint(parameters)
    # Outputs checked before any work: against the inputs, and against files daskglm did not write.

    _check_output_dir(out, dataset, derivatives)
    description = out / DESCRIPTION
    root_plan = OutputPlan([description], optional=[description], what="--out (output_dir)")
    root_plan.check()
    complete, todo, designs, notes, inputs = [], [], {}, {}, {}
    for label in labels:
        inputs[label] = input_files(dataset, derivatives, label, task_label)
        if is_complete(out / f"sub-{label}", fingerprint, inputs[label]):
            complete.append(label)
            continue
        todo.append(Job(label, str(dataset), task_label, space_label, derivatives_folder, str(out),
                        defs, stat_types, fingerprint, parameters, bool(report), bool(figures), kwargs))
    for job, (design, job_notes) in _designs_of(todo):  # a group of subjects at a time
        designs[job.label], notes[job.label] = design, job_notes
        if design is not None:
            output_plan(job, design.run_names, bool(kwargs.get("minimize_memory", True)),
                        subject_inputs(dataset, inputs[job.label], design.run_files, kwargs.get("mask_img")),
                        design.surface)
    _check_designs(designs, notes, defs)
    root_plan.create_folders()
    root_plan.claim()
    write_dataset_description(Writer(root_plan), out)  # unless another tool's
    root_plan.commit()

    result = BatchResult(str(out))
    progress = _Progress(len(labels), verbose)
    for label in complete:
        result.subjects[label] = SubjectResult(label, "skipped")
        progress(result.subjects[label])
    if todo:
        with get_client(client) as resolved:
            if resolved is None:  # a local scheduler: one subject after the other, here
                scheduler = client if isinstance(client, str) else dask.config.get("scheduler", "sync")
                for job in todo:
                    result.subjects[job.label] = progress(run_subject(job, scheduler))
            else:
                limit = max_concurrent_subjects or max(1, len(resolved.nthreads()))
                progress.note(f"{len(todo)} subjects to compute, up to {limit} at a time on {resolved}")
                for outcome in _run_distributed(resolved, todo, limit):
                    result.subjects[outcome.label] = progress(outcome)
    result.subjects = {label: result.subjects[label] for label in labels}
    progress.note(f"{len(result.done)} done, {len(result.skipped)} skipped, {len(result.failures)} failed "
                  f"in {time.perf_counter() - start:.1f} s; outputs in {out}")
    return result


def _import_subject_modules() -> None:
    """Worker task: import what a subject's task runs (daskglm's and nilearn's modules, 2-3 s)."""
    import nilearn.glm.first_level  # noqa: F401
    import nilearn.plotting  # noqa: F401

    from ..models import first_level  # noqa: F401
    from . import subject  # noqa: F401


def _warm_up(client: Any) -> None:
    """On a running distributed client, each worker imports a subject's modules while this process
    finds the subjects and builds their designs, instead of when its first subject arrives."""
    from distributed import Client, fire_and_forget

    if not isinstance(client, Client) or client.status != "running":
        return
    for address in client.nthreads():
        fire_and_forget(client.submit(_import_subject_modules, workers=[address], pure=False,
                                      key=f"daskglm-bids-warm-up-{uuid.uuid4().hex[:8]}"))


def _run_distributed(client: Any, jobs: list[Job], limit: int) -> Any:
    """Yield each job's :class:`SubjectResult` as it finishes, at most ``limit`` in flight.

    Raises
    ------
    daskglm.runtime.cluster.ClusterLostError
        The cluster lost every worker for ``daskglm.no-workers-timeout``, or its scheduler.
    """

    pending = iter(jobs)
    flying: dict[str, tuple[Any, Job]] = {}

    def submit() -> Any:
        job = next(pending, None)
        if job is None:
            return None
        future = client.submit(run_subject, job, key=f"daskglm-bids-sub-{job.label}-{uuid.uuid4().hex[:8]}",
                               pure=False)
        flying[future.key] = (future, job)
        return future

    for _ in range(limit):
        submit()
    try:
        while flying:
            done = wait_first(client, [future for future, _ in flying.values()])
            for future in sorted(done, key=lambda f: str(f.key)):
                _, job = flying.pop(future.key)
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the worker died, not the code
                    outcome = SubjectResult(job.label, "failed", f"{type(exc).__name__}: {exc}",
                                            traceback.format_exc())
                future.release()
                submit()
                yield outcome
    finally:  # interrupted (Ctrl-C, an error here): do not leave subjects running
        if flying:
            client.cancel([f for f, _ in flying.values()])


class _Progress:
    """``k/n sub-XX status`` lines on stdout when ``verbose``."""

    def __init__(self, total: int, verbose: int) -> None:
        self.total, self.count, self.verbose = total, 0, verbose

    def note(self, text: str) -> None:
        if self.verbose:
            print(f"{_PREFIX} {text}", flush=True)

    def __call__(self, outcome: SubjectResult) -> SubjectResult:
        self.count += 1
        if not self.verbose:
            return outcome
        where = f" on {outcome.worker}" if outcome.worker else ""
        text = {"skipped": "skipped (complete)",
                "done": f"done in {outcome.seconds or 0:.1f} s{where}",
                "failed": f"FAILED{where}: {outcome.error}"}[outcome.status]
        print(f"{_PREFIX} {self.count}/{self.total} sub-{outcome.label} {text}", flush=True)
        if self.verbose >= 2:
            for message in outcome.warnings:
                print(f"{_PREFIX}   warning: {message}", flush=True)
        return outcome

"""One subject of :func:`daskglm.bids.batch.run_batch`: discover, fit, compute, write, mark complete.

:func:`run_subject` is the body of a subject's task (run inside a Dask worker,
or in this process for a local scheduler). It never raises for the subject's
own errors: they come back in the :class:`SubjectResult`. File names are
nilearn's (``BaseGLM._generate_filenames_output`` called on a small stand-in
for the model, :func:`nilearn_view`); files are written under a temporary
name and renamed into place, the marker :data:`MARKER` last (see
:mod:`daskglm.bids.batch`).
"""

from __future__ import annotations

import io
import json
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "BATCH_FORMAT",
    "MARKER",
    "Job",
    "SubjectResult",
    "input_files",
    "is_complete",
    "output_plan",
    "report_contrasts",
    "report_html",
    "run_subject",
    "subject_inputs",
    "write_json",
]

#: Per-subject completion marker, written last.
MARKER = ".daskglm-complete.json"
#: Bumped when the outputs for given parameters change.
BATCH_FORMAT = 1


@dataclass(frozen=True)
class SubjectResult:
    """Outcome for one subject: ``done``, ``skipped`` (already complete) or ``failed``."""

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
    from ..io.maps import write_bytes  # atomic: temporary name renamed over ``path``

    write_bytes(path, data)


def write_json(path: Path, obj: Any, **kwargs: Any) -> None:
    _write_bytes(path, json.dumps(obj, **kwargs).encode())


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas, outside pyplot (no backend change, no open-figure list).

    Parameters
    ----------
    figsize : (float, float)
        Width and height in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def report_contrasts(contrasts: dict[str, Any]) -> dict[str, Any]:
    """The contrasts as ``generate_report`` can draw them: weight vectors as one-row matrices.

    nilearn 0.14's report fails to draw a weight vector shorter than the
    design (its ``pad_contrast_matrix`` pads a 1D array as if it were 2D); a
    one-row matrix is the same t contrast, and is padded correctly.

    Parameters
    ----------
    contrasts : dict of str to str or array
        The contrast definitions by name.

    Returns
    -------
    dict of str to str or ndarray
        The same definitions, 1D arrays (and lists of numbers) as ``(1, k)`` arrays.
    """
    return {name: value if isinstance(value, str) else np.atleast_2d(np.asarray(value, dtype=float))
            for name, value in contrasts.items()}


def report_html(report: Any) -> bytes:
    """The bytes nilearn's ``HTMLReport.save_as_html`` writes, to be written atomically elsewhere.

    nilearn 0.14 saves the page wrapped in an inline frame
    (``report.get_iframe()``, UTF-8), also for ``save_glm_to_bids``'s
    ``report.html``; this gives the same bytes.

    Parameters
    ----------
    report : nilearn.reporting.HTMLReport
        What ``generate_report`` returned.

    Returns
    -------
    bytes
    """
    return report.get_iframe().encode("utf-8")


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


def nilearn_view(design_matrices: list, run_imgs: list, model: Any = None) -> Any:
    """A stand-in with what nilearn's naming and metadata code reads from a fitted model.

    nilearn's ``BaseGLM._generate_filenames_output`` (BIDS-derivatives names)
    and ``_attributes_to_dict`` (``statmap.json``) run on it; ``model`` supplies
    the parameters the latter reads (optional when only names are wanted).
    """
    from nilearn.interfaces.bids import parse_bids_filename
    from sklearn.base import BaseEstimator

    from ..models.nilearn_compat import BaseGLM

    class _View(BaseEstimator):
        _generate_filenames_output = BaseGLM._generate_filenames_output
        _attributes_to_dict = BaseGLM._attributes_to_dict

        def fit(self) -> None:  # pragma: no cover - sklearn's check_is_fitted wants one
            raise NotImplementedError

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def _is_volume_glm(self) -> bool:
            return True

        def __str__(self) -> str:
            return "First Level Model"

    view = _View()
    if model is not None:
        for name in ("subject_label", "drift_model", "hrf_model", "noise_model", "t_r", "signal_scaling",
                     "smoothing_fwhm", "slice_time_ref", "target_shape", "target_affine", "fir_delays",
                     "high_pass", "drift_order"):
            setattr(view, name, getattr(model, name))
        view.standardize = False  # daskglm never standardizes (nilearn's default)
    view.design_matrices_ = design_matrices
    view._reporting_data = {"run_imgs": {i: parse_bids_filename(os.fspath(p)) for i, p in enumerate(run_imgs)}}
    return view


def output_plan(out: Path, label: str, run_imgs: list, contrasts: dict[str, Any], stat_types: dict[str, str],
                report: bool, figures: bool, minimize_memory: bool, inputs: list[tuple[str, Any]]) -> Any:
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
    from ..io.outputs import OutputConflict, OutputPlan

    view = nilearn_view([None] * len(run_imgs), run_imgs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's renaming notes: the subject's own naming shows them
        view._generate_filenames_output(None, {n: "c" for n in contrasts}, stat_types, out)
    names = view._reporting_data["filenames"]
    files = [names["mask"], "statmap.json"]
    for index in range(len(run_imgs)):
        design = names["design_matrices_dict"][index]
        files += [design["design_matrix_tsv"], str(Path(design["design_matrix_tsv"]).with_suffix(".json"))]
        if figures:
            files += [design["design_matrix_png"], design["correlation_matrix_png"],
                      *(names["contrasts_dict"][index][name] for name in contrasts)]
    for name in contrasts:
        maps = names["statistical_maps"][name]
        files += [maps[key] for key in ("effect_size", "stat", "effect_variance", "z_score", "p_value",
                                        "clusters_tsv", "metadata")]
    if not minimize_memory:
        files += [names["model_level_mapping"][index][key] for index in range(len(run_imgs))
                  for key in ("residuals", "r_square")]
    if report:
        files.append("report.html")
    folder = Path(names["dir"])
    plan = OutputPlan([folder / f for f in files], what="--out (output_dir)")
    plan.check_inputs(inputs)
    plan.check()
    marker = out / f"sub-{label}" / MARKER  # daskglm's state, rewritten whatever its content: if it is a marker
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
    from .from_bids import first_level_from_bids

    out = Path(job.output_dir)
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
    plan = output_plan(out, job.label, run_imgs, job.contrasts, job.stat_types, job.report, job.figures,
                       model.minimize_memory, subject_inputs(dataset, inputs, run_imgs, job.kwargs.get("mask_img")))
    plan.create_folders()
    try:
        return _write_subject(job, scheduler, stage, plan, model, run_imgs, events[0], confounds[0], inputs)
    finally:
        if plan.claimed:
            plan.commit()  # what was written, recorded (on failure too)
        else:
            plan.remove_created_folders()


def _write_subject(job: Job, scheduler: str, stage: list[str], plan: Any, model: Any, run_imgs: list,
                   events: Any, confounds: Any, inputs: dict[str, list[int]]) -> list[str]:
    """Fit one subject and write the files of ``plan``; returns the files written (marker last)."""
    from ..io.maps import save_nifti, scatter_to_volume
    from ..runtime.cluster import compute, get_client, phase

    out = Path(job.output_dir)
    sub_dir = out / f"sub-{job.label}"
    try:
        previous = json.loads((sub_dir / MARKER).read_text()).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        previous = []
    (sub_dir / MARKER).unlink(missing_ok=True)  # daskglm's (checked); incomplete from here until the new marker
    for leftover in sub_dir.glob(f"{MARKER}.tmp-*"):  # left by a killed write of the marker
        leftover.unlink(missing_ok=True)
    stage[0] = f"fitting runs {[Path(p).name for p in run_imgs]}"
    with get_client(scheduler):
        model.fit(run_imgs, events=events, confounds=confounds)
        stage[0] = "writing the design and model files"
        plan.claim()  # checked again: nothing of another's appeared during the fit
        view = nilearn_view(model.design_matrices_, run_imgs, model)
        view._generate_filenames_output(None, {n: "c" for n in job.contrasts}, job.stat_types, out)
        names = view._reporting_data["filenames"]
        folder: Path = names["dir"]
        written: list[Path] = []

        def put(name: str, data: bytes | Any) -> None:
            path = folder / name
            if isinstance(data, bytes):
                _write_bytes(path, data)
            else:
                save_nifti(data, path)
            plan.record(path)
            written.append(path)

        put(names["mask"], model.mask_img_)
        _write_design_files(model, job, names, put, job.figures)
        put("statmap.json", json.dumps({"Description": "A statistical map generated by Nilearn.",
                                        "ModelParameters": view._attributes_to_dict()},
                                       indent=4, sort_keys=True).encode())
        for name, definition in job.contrasts.items():
            stage[0] = f"computing contrast {name!r}"
            with phase(f"sub-{job.label}: contrast {name}"):
                maps = model.compute_contrast(definition, stat_type=job.stat_types[name], output_type="all")
            stat_names = names["statistical_maps"][name]
            for key, img in maps.items():
                put(stat_names[key], img)
            table, details = _clusters(maps["z_score"])
            put(stat_names["clusters_tsv"], table.to_csv(sep="\t", index=False).encode())
            put(stat_names["metadata"], json.dumps(details).encode())
        stage[0] = "writing residuals, r_square and the report"
        if not model.minimize_memory:
            for attribute in ("residuals", "r_square"):
                for index, array in enumerate(model.voxelwise(attribute)):
                    with phase(f"sub-{job.label}: writing the {attribute} of run {index + 1}"):
                        values = np.atleast_2d(compute(array.data, client=scheduler)[0])
                    volume = scatter_to_volume(values, *(array[n].values for n in "ijk"),
                                               tuple(array.attrs["volume_shape"]))
                    img = type(model.mask_img_)(volume, np.asarray(array.attrs["affine"]))
                    put(names["model_level_mapping"][index][attribute], img)
        if job.report:
            put("report.html", report_html(model.generate_report(report_contrasts(job.contrasts))))
    outputs = sorted(p.relative_to(out).as_posix() for p in written)
    for stale in sorted(set(previous) - set(outputs)):
        if isinstance(stale, str) and not stale.startswith(("/", "..")) and "/.." not in stale:
            plan.remove(out / stale)  # only if the manifest proves it daskglm's, unchanged
    import nilearn

    from .. import __version__

    write_json(sub_dir / MARKER, {
        "format": BATCH_FORMAT, "subject": job.label, "fingerprint": job.fingerprint,
        "parameters": job.parameters, "inputs": inputs, "outputs": outputs,
        "daskglm_version": __version__, "nilearn_version": nilearn.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2, sort_keys=True)
    return outputs


def _write_design_files(model: Any, job: Job, names: dict, put: Any, figures: bool) -> None:
    """Per run: design TSV and JSON; with ``figures``, design, correlation and contrast PNGs (Agg, no pyplot)."""
    from nilearn.plotting import (
        plot_contrast_matrix,
        plot_design_matrix,
        plot_design_matrix_correlation,
    )

    from ..glm.design import contrast_matrices

    matrices = contrast_matrices(dict(job.contrasts), model.design_matrices_)
    t_r = model.t_r if model.t_r is not None else model.t_r_
    for index, dm in enumerate(model.design_matrices_):
        files = names["design_matrices_dict"][index]
        put(files["design_matrix_tsv"], dm.to_csv(sep="\t", index=False).encode())
        put(str(Path(files["design_matrix_tsv"]).with_suffix(".json")),
            json.dumps({"RepetitionTime": t_r}, indent=4, sort_keys=True).encode())
        if not figures:
            continue
        fig = _figure((max(4.0, 0.35 * dm.shape[1] + 1.5), 5.3))
        plot_design_matrix(dm, axes=fig.add_subplot())
        put(files["design_matrix_png"], _png(fig))
        fig = _figure((max(5.0, 0.4 * dm.shape[1]), max(4.0, 0.4 * dm.shape[1])))
        plot_design_matrix_correlation(dm, axes=fig.add_subplot())
        put(files["correlation_matrix_png"], _png(fig))
        for name, per_run in matrices.items():
            fig = _figure((max(5.0, 0.4 * dm.shape[1]), 2.0))
            axes = plot_contrast_matrix(per_run[index], dm, colorbar=True, axes=fig.add_subplot())
            axes.set_xlabel(name)
            put(names["contrasts_dict"][index][name], _png(fig))


def _clusters(z_map: Any) -> tuple[Any, dict]:
    """Cluster table and its parameters, with nilearn's ``save_glm_to_bids`` defaults (fpr, 0.001)."""
    from nilearn.glm import threshold_stats_img
    from nilearn.reporting import get_clusters_table
    from nilearn.reporting.get_clusters_table import clustering_params_to_dataframe

    thresholded, threshold = threshold_stats_img(z_map, threshold=None, alpha=0.001, cluster_threshold=0,
                                                 height_control="fpr")
    details = clustering_params_to_dataframe(threshold, 0, 8.0, "fpr", 0.001, is_volume_glm=True)
    table = get_clusters_table(thresholded, stat_threshold=threshold, cluster_threshold=0,
                               min_distance=8.0, two_sided=False)
    return table, details.to_dict()[0]

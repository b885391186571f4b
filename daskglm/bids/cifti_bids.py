"""CIFTI-2 runs of a BIDS dataset: ``first_level_from_bids`` for ``.dtseries.nii`` derivatives (fsLR).

nilearn 0.14's :func:`nilearn.glm.first_level.first_level_from_bids` looks for
preprocessed runs named ``*_bold.nii*`` (volumes), or ``*_bold.func.gii``
pairs for ``space_label="fsaverage5"``: fMRIPrep's CIFTI-2 outputs,
``sub-<label>_[...]_space-fsLR_den-91k_bold.dtseries.nii``, are never found
(it raises "No BOLD files found"). :func:`cifti_first_level_from_bids` finds
them, following nilearn's rules with its public BIDS helpers
(:func:`nilearn.interfaces.bids.get_bids_files` and
:func:`nilearn.interfaces.bids.parse_bids_filename`):

* runs: the subject's ``*_bold.dtseries.nii`` files in ``func/`` (and
  ``ses-*/func/``) of the derivatives folder with ``task-<task_label>``,
  ``space-<space_label>`` and the ``img_filters`` entities; one file per
  session and run (else nilearn's "Too many images found" error);
* ``t_r``: ``RepetitionTime`` of the first ``bold.json`` sidecar with the same
  entities in the derivatives folder, else of the raw dataset's for the task
  (nilearn's order; nilearn's warnings when it is missing or differs from
  ``t_r``); ``slice_time_ref``: ``StartTime / t_r`` of that derivatives
  sidecar, else 0 (with nilearn's warning when not given);
* events: for each run, the raw dataset's ``events.tsv`` with the run's raw
  entities (``ses``, ``task``, ``acq``, ``run``...), or the one
  ``task-<label>_events.tsv`` at the dataset's root;
* confounds: for each run, the derivatives' ``desc-confounds*.tsv`` with the
  run's raw entities (none for every run: no confounds); read as nilearn reads
  them (every column, NaNs of the first row set to 0; ``confounds_strategy=None``:
  none; ``confounds_*`` options: nilearn's
  :func:`~nilearn.interfaces.fmriprep.load_confounds` on the dense time series,
  whose confounds files it finds itself);
* ``mask_img="derivatives"``: no mask (fMRIPrep writes no CIFTI masks; nilearn
  does the same for fsaverage5): every grayordinate is fitted.

The runs are returned as paths: :class:`daskglm.FirstLevelModel` reads dense
time series natively (a grayordinate is a column of its store).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from ..models.nilearn_compat import check_first_level_from_bids_args

__all__ = ["DTSERIES", "cifti_first_level_from_bids", "dtseries_runs", "is_cifti_space"]

#: nilearn's ``file_type`` of CIFTI-2 dense time series runs.
DTSERIES = "dtseries.nii"


def _raw_entities() -> list[str]:
    from nilearn.interfaces.bids.utils import bids_entities

    return bids_entities()["raw"]


def _filters(task_label: str, space_label: str | None, img_filters: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("task", task_label), *([("space", space_label)] if space_label else []), *img_filters]


def dtseries_runs(derivatives_path: Path, task_label: str, space_label: str, img_filters: list[tuple[str, str]],
                  sub_label: str = "*") -> list[str]:
    """The preprocessed dense time series of a subject (or of every subject) for the task and space.

    Parameters
    ----------
    derivatives_path : pathlib.Path
        The derivatives folder.
    task_label, space_label : str
        ``task-<label>`` and ``space-<label>`` of the runs.
    img_filters : list of (str, str)
        More entities the runs must have.
    sub_label : str
        A subject label, or ``"*"`` for every subject.

    Returns
    -------
    list of str
        Sorted paths.
    """
    from nilearn.interfaces.bids import get_bids_files

    return get_bids_files(derivatives_path, file_tag="bold", file_type=DTSERIES, sub_label=sub_label,
                          modality_folder="func", filters=_filters(task_label, space_label, img_filters))


def is_cifti_space(derivatives_path: Path, task_label: str, space_label: str,
                   img_filters: list[tuple[str, str]]) -> bool:
    """Whether the runs of this task and space are dense time series: some, and no NIfTI runs.

    Parameters
    ----------
    derivatives_path : pathlib.Path
        The derivatives folder.
    task_label, space_label : str
        ``task-<label>`` and ``space-<label>`` of the runs.
    img_filters : list of (str, str)
        More entities the runs must have.

    Returns
    -------
    bool
    """
    from nilearn.interfaces.bids import get_bids_files

    if not derivatives_path.is_dir():
        return False
    filters = _filters(task_label, space_label, img_filters)
    volumes = get_bids_files(derivatives_path, file_tag="bold", file_type="nii*", modality_folder="func",
                             filters=filters)
    return not volumes and bool(dtseries_runs(derivatives_path, task_label, space_label, img_filters))


def _sidecar_value(root: Path, field: str, filters: list[tuple[str, str]]) -> Any:
    """``field`` of the first ``bold.json`` under ``root``'s subjects with these entities (None if absent)."""
    from nilearn.interfaces.bids import get_bids_files

    files = get_bids_files(root, file_tag="bold", file_type="json", modality_folder="func", filters=filters)
    if not files:
        return None
    with open(files[0]) as fh:
        return json.load(fh).get(field)


def _timing(dataset: Path, derivatives: Path, task_label: str, space_label: str, img_filters: list,
            t_r: float | None, slice_time_ref: float | None) -> tuple[float | None, float | None]:
    """``t_r`` and ``slice_time_ref`` as nilearn infers them from the sidecars, with its warnings."""
    filters = _filters(task_label, space_label, img_filters)
    inferred = _sidecar_value(derivatives, "RepetitionTime", filters)
    if inferred is None:
        raw = [("task", task_label), *[f for f in img_filters if f[0] in _raw_entities()]]
        inferred = _sidecar_value(dataset, "RepetitionTime", raw)
    if t_r is None:
        t_r = inferred
    elif inferred is not None and t_r != inferred:
        warnings.warn(f"\n't_r' provided ({t_r}) is different from the value found in the BIDS dataset "
                      f"({inferred}).\nNote this may lead to the wrong model specification.", RuntimeWarning,
                      stacklevel=4)
    if t_r is None:
        warnings.warn("\n't_r' not provided and cannot be inferred from BIDS metadata.\nIt will need to be set "
                      "manually in the list of models, otherwise their fit will throw an exception.",
                      RuntimeWarning, stacklevel=4)
    start = _sidecar_value(derivatives, "StartTime", filters)
    inferred_ref = start / t_r if start is not None and t_r else None
    if inferred_ref is None:
        if slice_time_ref is None:
            warnings.warn("'slice_time_ref' not provided and cannot be inferred from metadata.\nIt will be "
                          "assumed that the slice timing reference is 0.0 percent of the repetition time.\n"
                          "If it is not the case it will need to be set manually in the generated list of "
                          "models.", UserWarning, stacklevel=4)
        inferred_ref = 0.0
    if slice_time_ref is None:
        slice_time_ref = inferred_ref
    elif slice_time_ref != inferred_ref:
        warnings.warn(f"'slice_time_ref' provided ({slice_time_ref}) is different from the value found in the "
                      f"BIDS dataset ({inferred_ref}).\nNote this may lead to the wrong model specification.",
                      UserWarning, stacklevel=4)
    return t_r, slice_time_ref


def _subjects(derivatives: Path, sub_labels: list[str], exclude: list[str]) -> list[str]:
    """nilearn's subject list: the given labels present in the derivatives (or all), less the excluded."""
    labels = sub_labels or [p.name.split("-", 1)[1] for p in derivatives.glob("sub-*") if p.is_dir()]
    present = []
    for label in labels:
        if (derivatives / f"sub-{label}").exists():
            present.append(label)
        else:
            warnings.warn(f"\nSubject label '{label}' is not present in the following dataset and cannot be "
                          f"processed:\n {derivatives}", UserWarning, stacklevel=4)
    if not present:
        raise RuntimeError(f"\nNo subject found in:\n {derivatives}")
    return sorted(set(present) - set(exclude))


def _check_runs(runs: list[str], sub_label: str, filters: list[tuple[str, str]]) -> None:
    """Some runs, one per session and run (nilearn's ``_check_bids_image_list``)."""
    from nilearn.interfaces.bids import parse_bids_filename

    if not runs:
        raise ValueError(f"No BOLD files found for subject {sub_label} for filter: {filters}")
    seen: dict[tuple, str] = {}
    for run in runs:
        entities = parse_bids_filename(run)["entities"]
        key = (entities.get("ses"), entities.get("run"))
        if key in seen:
            raise ValueError(f"Too many images found\n for subject: '{sub_label}'\nfor filters: {filters}\n"
                             f"for the same run {key[1]} and session {key[0]}: {Path(seen[key]).name} and "
                             f"{Path(run).name}. Please specify it further by setting, for example, some "
                             "required task_label, space_label or img_filters (e.g. ('den', '91k'))")
        seen[key] = run


def _run_filters(run: str, img_filters: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The run's raw entities (but ``sub``), and the raw entities of ``img_filters``."""
    from nilearn.interfaces.bids import parse_bids_filename

    entities = parse_bids_filename(run)["entities"]
    raw = _raw_entities()
    found = {k: entities[k] for k in raw if k != "sub" and k in entities}
    found.update({k: v for k, v in img_filters if k in raw and k not in found})
    return list(found.items())


def _events(dataset: Path, sub_label: str, task_label: str, runs: list[str],
            img_filters: list[tuple[str, str]]) -> list[pd.DataFrame]:
    """Each run's events: its ``events.tsv``, or the dataset's root ``task-<label>_events.tsv``."""
    from nilearn.interfaces.bids import get_bids_files

    root_files = get_bids_files(dataset, file_tag="events", file_type="tsv", sub_folder=False,
                                filters=[("task", task_label)])
    out = []
    for run in runs:
        filters = _run_filters(run, img_filters)
        found = get_bids_files(dataset, modality_folder="func", file_tag="events", file_type="tsv",
                               sub_label=sub_label, filters=filters)
        if not found and len(root_files) == 1:
            found = root_files
        if len(found) != 1:
            what = "No events.tsv files found" if not found else f"{len(found)} events.tsv files found"
            raise ValueError(f"{what} for subject {sub_label} for filter: {filters} (run {Path(run).name}); "
                             "one per run is expected")
        out.append(pd.read_csv(found[0], sep="\t", index_col=None))
    return out


def _confounds(derivatives: Path, sub_label: str, runs: list[str], img_filters: list[tuple[str, str]],
               options: dict | None) -> list[pd.DataFrame] | None:
    """Each run's confounds, as nilearn reads them (see the module docstring); None without confounds files."""
    from nilearn.interfaces.bids import get_bids_files

    files = []
    for run in runs:
        found = get_bids_files(derivatives, modality_folder="func", file_tag="desc-confounds*", file_type="tsv",
                               sub_label=sub_label, filters=_run_filters(run, img_filters))
        files.append(found)
    if not any(files):
        return None
    if any(len(found) != 1 for found in files):
        counts = [len(found) for found in files]
        raise ValueError(f"{sum(counts)} confounds.tsv files found for {len(runs)} bold files (subject "
                         f"{sub_label}; per run: {counts}). Same number of confound files as the number of "
                         "runs is expected")
    if options is None:
        return None
    if not options:
        tables = [pd.read_csv(found[0], sep="\t", index_col=None) for found in files]
        for table in tables:
            table.iloc[0] = table.iloc[0].fillna(0.0)  # nilearn's rule: fMRIPrep's n/a of the first row
        return tables
    from nilearn.interfaces.fmriprep import load_confounds

    confounds, _ = load_confounds(runs, **options)
    return confounds if isinstance(confounds, list) else [confounds]


def confounds_options(kwargs: dict) -> dict | None:
    """nilearn's reading of the ``confounds_*`` keywords: None (no confounds), {} (every column) or
    ``load_confounds``' keywords (those given; ``load_confounds``' own defaults for the others)."""
    if "confounds_strategy" not in kwargs:
        return {}
    if kwargs["confounds_strategy"] is None:
        return None
    return {key.removeprefix("confounds_"): value for key, value in kwargs.items()}


def cifti_first_level_from_bids(dataset_path: Any, task_label: str, space_label: str, sub_labels: list | None,
                                exclude_subjects: list | None, img_filters: list | None, t_r: float | None,
                                slice_time_ref: float | None, derivatives_folder: str, model_params: dict,
                                confounds_kwargs: dict) -> tuple[list[dict], list[list[str]],
                                                                 list[list[pd.DataFrame]], list[Any]]:
    """The subjects' dense time series runs, events, confounds, and their models' parameters.

    Parameters
    ----------
    dataset_path, task_label, space_label, sub_labels, exclude_subjects, img_filters
        As :func:`daskglm.first_level_from_bids`.
    t_r, slice_time_ref : float or None
        None: inferred from the sidecars (see the module docstring).
    derivatives_folder : str
        Relative to ``dataset_path``.
    model_params : dict
        Every model's parameters (but ``t_r``, ``slice_time_ref`` and ``subject_label``,
        set here).
    confounds_kwargs : dict
        The ``confounds_*`` keywords given.

    Returns
    -------
    params : list of dict
        One model's parameters per subject (``subject_label`` set), in subject order.
    run_imgs : list of list of str
        Each subject's runs.
    events : list of list of pandas.DataFrame
    confounds : list of (list of pandas.DataFrame or None)
    """
    sub_labels, exclude_subjects, img_filters = list(sub_labels or []), list(exclude_subjects or []), \
        list(img_filters or [])
    check_first_level_from_bids_args(dataset_path=dataset_path, task_label=task_label, space_label=space_label,
                                     sub_labels=sub_labels, exclude_subjects=exclude_subjects,
                                     img_filters=img_filters, derivatives_folder=derivatives_folder)
    dataset = Path(dataset_path).absolute()
    derivatives = dataset / derivatives_folder
    options = confounds_options(confounds_kwargs)
    t_r, slice_time_ref = _timing(dataset, derivatives, task_label, space_label, img_filters, t_r, slice_time_ref)
    params, run_imgs, events, confounds = [], [], [], []
    filters = _filters(task_label, space_label, img_filters)
    for label in _subjects(derivatives, sub_labels, exclude_subjects):
        runs = dtseries_runs(derivatives, task_label, space_label, img_filters, label)
        _check_runs(runs, label, filters)
        params.append({**model_params, "t_r": t_r, "slice_time_ref": slice_time_ref, "subject_label": label})
        run_imgs.append(runs)
        events.append(_events(dataset, label, task_label, runs, img_filters))
        confounds.append(_confounds(derivatives, label, runs, img_filters, options))
    return params, run_imgs, events, confounds

"""``first_level_from_bids``: nilearn's BIDS entry point, returning daskglm models.

nilearn does the BIDS work: :func:`nilearn.glm.first_level.first_level_from_bids`
finds the subjects, their preprocessed runs, events and confounds, and infers
``t_r`` and ``slice_time_ref`` from the sidecars. Each nilearn model it returns
is turned into a :class:`daskglm.FirstLevelModel` with the same parameters
(those daskglm's model has) plus daskglm's own (``store``, ``client``, ...).
nilearn users switch by changing the import.

Differences from nilearn 0.14.1:

* ``mask_img="derivatives"`` gives *each* subject the intersection of its own
  runs' brain masks (nilearn 0.14.1 gives every subject after the first the
  first subject's mask).
* Errors nilearn raises for a wrong ``derivatives_folder``, task or space
  label also list what the dataset holds.
* CIFTI-2 dense time series (fMRIPrep's ``space-fsLR_den-91k_bold.dtseries.nii``),
  which nilearn does not find, are found by :mod:`daskglm.bids.cifti_bids`
  when the space has no NIfTI runs.

``space_label="fsaverage5"`` is nilearn's own: its runs are
:class:`nilearn.surface.SurfaceImage` objects (both hemispheres' GIFTI files on
nilearn's fsaverage5 pial mesh), which daskglm's model fits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from ..models.nilearn_compat import check_first_level_from_bids_args
from .cifti_bids import DTSERIES, cifti_first_level_from_bids, confounds_options, is_cifti_space

__all__ = ["RUN_TYPES", "first_level_from_bids", "bold_entities", "dataset_hint", "is_surface_space",
           "pipeline_folders", "run_kind", "surface_run_files"]

#: nilearn's ``file_type`` of each kind of run: volumes, fsaverage5 GIFTI pairs, CIFTI-2 dense time series.
RUN_TYPES = {"volume": "nii*", "gifti": "func.gii", "cifti": DTSERIES}


def is_surface_space(space_label: Any) -> bool:
    """Whether nilearn reads ``space_label``'s runs as GIFTI pairs (fsaverage5).

    nilearn's test: ``space_label not in ("fsaverage5")`` is a substring test;
    nilearn validates the type.
    """
    return isinstance(space_label, str) and space_label != "" and space_label in "fsaverage5"


def run_kind(derivatives_path: Path, task_label: str, space_label: str | None,
             img_filters: list[tuple[str, str]] | None = None) -> str:
    """How the runs of this task and space are stored: ``"volume"``, ``"gifti"`` (fsaverage5) or ``"cifti"``.

    Parameters
    ----------
    derivatives_path : pathlib.Path
        The derivatives folder.
    task_label : str
        The task.
    space_label : str or None
        None: nilearn's default, ``MNI152NLin2009cAsym``.
    img_filters : list of (str, str), optional
        More entities the runs must have.

    Returns
    -------
    str
        ``"gifti"`` for the spaces nilearn reads as GIFTI pairs; ``"cifti"`` when the
        space has dense time series and no NIfTI runs; else ``"volume"``.
    """
    if is_surface_space(space_label):
        return "gifti"
    space = "MNI152NLin2009cAsym" if space_label is None else space_label
    if isinstance(space, str) and isinstance(task_label, str) and is_cifti_space(
            Path(derivatives_path), task_label, space, list(img_filters or [])):
        return "cifti"
    return "volume"


def surface_run_files(derivatives_path: Path, sub_label: str, task_label: str, space_label: str,
                      img_filters: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """A subject's GIFTI runs as nilearn pairs them for ``space_label="fsaverage5"``: ``(left, right)`` paths.

    nilearn's ``first_level_from_bids`` returns these runs as ``SurfaceImage``
    objects, without their file names; the outputs are named after them.

    Parameters
    ----------
    derivatives_path : pathlib.Path
        The derivatives folder.
    sub_label, task_label, space_label : str
        The subject, task and space of the runs.
    img_filters : list of (str, str), optional
        More entities the runs must have.

    Returns
    -------
    list of (str, str)
        In nilearn's run order.
    """
    from nilearn.interfaces.bids import get_bids_files

    filters = [("task", task_label), ("space", space_label), *(img_filters or [])]
    left, right = (get_bids_files(derivatives_path, modality_folder="func", file_tag="bold", file_type="func.gii",
                                  sub_label=sub_label, filters=[*filters, ("hemi", hemi)]) for hemi in "LR")
    return list(zip(left, right))


def _per_run_surface_confounds(confounds: list, models: list, derivatives_path: Path, task_label: str,
                               space_label: str, img_filters: Any, kwargs: dict) -> list:
    """Each surface run's own confounds where nilearn 0.14 gives one table for a subject of two runs.

    With ``confounds_strategy``, nilearn passes a subject's left-hemisphere files to
    ``load_confounds``, which takes exactly two of them for the hemispheres of one run: the
    subject gets the first run's table alone, and the model's fit then fails on the count.
    Each run's table is read from its own hemisphere pair, with the same options.
    """
    from nilearn.interfaces.fmriprep import load_confounds

    options = confounds_options(kwargs)
    fixed = []
    for model, tables in zip(models, confounds):
        if isinstance(tables, pd.DataFrame) and options:
            pairs = surface_run_files(derivatives_path, model.subject_label, task_label, space_label, img_filters)
            tables = [load_confounds(list(pair), **options)[0] for pair in pairs]
        fixed.append(tables)
    return fixed


def _check_supported(space_label: Any, kwargs: dict) -> None:
    unknown = sorted(k for k in kwargs if not k.startswith("confounds_"))
    if unknown:
        raise RuntimeError(
            f"Unknown keyword arguments {unknown}: keyword arguments should start with the "
            "`confounds_` prefix (nilearn's load_confounds options), or be one of daskglm's "
            "random_state, store, storage_options, t_chunk, v_chunk, client"
        )


def bold_entities(derivatives_path: Path) -> dict[str, list[str]]:
    """Task and space labels of the preprocessed runs found under ``derivatives_path``."""
    from nilearn.interfaces.bids import get_bids_files, parse_bids_filename

    found: dict[str, set[str]] = {"task": set(), "space": set()}
    if derivatives_path.is_dir():
        for file_type in RUN_TYPES.values():
            for path in get_bids_files(derivatives_path, file_tag="bold", file_type=file_type,
                                       modality_folder="func"):
                entities = parse_bids_filename(path)["entities"]
                for key, labels in found.items():
                    if entities.get(key):
                        labels.add(entities[key])
    return {key: sorted(labels) for key, labels in found.items()}


def pipeline_folders(dataset_path: Path) -> list[str]:
    """Folders (relative to the dataset) under ``derivatives/`` that hold ``sub-*`` folders."""
    root = dataset_path / "derivatives"
    candidates = [root, *sorted(p for p in root.glob("*") if p.is_dir())] if root.is_dir() else []
    return [p.relative_to(dataset_path).as_posix() for p in candidates
            if any(s.is_dir() for s in p.glob("sub-*"))]


def dataset_hint(message: str, dataset_path: Any, derivatives_folder: Any, task_label: Any,
          space_label: str | None) -> str | None:
    """What the dataset holds, for nilearn's errors about missing folders or runs (else None)."""
    try:
        root = Path(dataset_path)
        derivatives = root / str(derivatives_folder)
        if "derivatives folder not found" in message or "No subject found" in message:
            found = pipeline_folders(root)
            if found:
                return f"folders with subject folders: {found}; pass derivatives_folder={found[0]!r}"
            return f"no folder under {str(root / 'derivatives')!r} holds sub-* folders"
        if "No BOLD files found" in message:
            entities = bold_entities(derivatives)
            return (f"task_label={task_label!r}, space_label={space_label!r}; the preprocessed runs "
                    f"in {str(derivatives)!r} have tasks {entities['task']} and spaces "
                    f"{entities['space']}")
    except (OSError, TypeError, ValueError):
        return None
    return None


@contextmanager
def _explained(dataset_path: Any, derivatives_folder: Any, task_label: Any,
               space_label: str | None) -> Iterator[None]:
    """Re-raise nilearn's errors about missing folders or runs with what the dataset holds."""
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        hint = dataset_hint(str(exc), dataset_path, derivatives_folder, task_label, space_label)
        if hint is None:
            raise
        raise type(exc)(f"{exc}\n(daskglm) {hint}") from exc


def _derivatives_mask(derivatives_path: Path, sub_label: str, task_label: str, space_label: str,
                      img_filters: list[tuple[str, str]], n_runs: int) -> Any:
    """Intersection of one subject's brain masks, as nilearn's ``mask_img="derivatives"``.

    Returns
    -------
    Nifti1Image or None
        ``None`` when the subject has no mask file.
    """
    from nilearn.interfaces.bids import get_bids_files
    from nilearn.masking import intersect_masks

    filters = [("task", task_label), ("space", space_label),
               *[f for f in img_filters if f[0] != "desc"]]
    masks = get_bids_files(derivatives_path, modality_folder="func", file_tag="mask",
                           file_type="nii*", sub_label=sub_label, filters=filters)
    if len(masks) != n_runs:
        warnings.warn(f"{len(masks)} mask files found for {n_runs} bold files (subject "
                      f"{sub_label!r}, filters {filters})", UserWarning, stacklevel=3)
    return intersect_masks(masks, threshold=0.5, connected=False) if masks else None


def _to_daskglm(model: Any, daskglm_params: dict) -> Any:
    """A daskglm ``FirstLevelModel`` with the nilearn model's parameters, plus ``daskglm_params``."""
    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    from ..models.first_level import FirstLevelModel

    # daskglm's model takes every parameter of nilearn's (it is a subclass), plus its own.
    params = NilearnModel.get_params(model, deep=False)
    return FirstLevelModel(**{**params, **daskglm_params})


def first_level_from_bids(
    dataset_path: str | os.PathLike,
    task_label: str,
    space_label: str | None = None,
    sub_labels: list[str] | None = None,
    exclude_subjects: list[str] | None = None,
    img_filters: list[tuple[str, str]] | None = None,
    t_r: float | None = None,
    slice_time_ref: float | None = None,
    hrf_model: str | None = "glover",
    drift_model: str | None = "cosine",
    high_pass: float = 0.01,
    drift_order: int = 1,
    fir_delays: Any = None,
    min_onset: float = -24,
    mask_img: Any = None,
    target_affine: Any = None,
    target_shape: Any = None,
    smoothing_fwhm: float | None = None,
    memory: Any = None,
    memory_level: int = 1,
    standardize: Any = False,
    signal_scaling: Any = 0,
    noise_model: str = "ar1",
    verbose: int = 0,
    n_jobs: int = -1,
    minimize_memory: bool = True,
    derivatives_folder: str = "derivatives",
    *,
    random_state: Any = None,
    store: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    t_chunk: int | None = None,
    v_chunk: int | None = None,
    client: Any = None,
    **kwargs: Any,
) -> tuple[list[Any], list[list[str]], list[list[pd.DataFrame]], list[list[pd.DataFrame] | None]]:
    """Create daskglm ``FirstLevelModel`` objects and their fit arguments from a BIDS dataset.

    nilearn 0.14's :func:`~nilearn.glm.first_level.first_level_from_bids`, with
    :class:`daskglm.FirstLevelModel` models: nilearn finds the files and infers
    ``t_r`` (``RepetitionTime`` of the ``bold.json`` sidecars, derivatives
    first) and ``slice_time_ref`` (``StartTime``), with its warnings; see its
    documentation for every parameter not described here.

    Parameters
    ----------
    dataset_path : str or os.PathLike
        Root of the BIDS dataset.
    task_label : str
        ``task-<task_label>`` of the runs to model.
    space_label : str, optional
        ``space-<space_label>`` of the preprocessed runs (nilearn's default
        ``"MNI152NLin2009cAsym"``). ``"fsaverage5"``: nilearn's surface runs
        (``SurfaceImage`` of the GIFTI hemispheres), fitted as nilearn does.
        A space whose runs are CIFTI-2 dense time series
        (``*_bold.dtseries.nii``, such as fMRIPrep's ``space-fsLR_den-91k``)
        and that has no NIfTI runs: daskglm finds them (nilearn 0.14 does
        not), with their events, confounds and sidecar ``t_r``, and returns
        their paths (see :mod:`daskglm.bids.cifti_bids`); give
        ``img_filters=[("den", "91k")]`` if several densities are there.
    sub_labels, exclude_subjects : list of str, optional
        Subjects to model / to skip (default: all in the derivatives).
    img_filters : list of (str, str), optional
        Extra entity filters such as ``[("desc", "preproc")]``.
    t_r, slice_time_ref : float, optional
        ``None``: read from the sidecars (``slice_time_ref`` defaults to 0
        with a warning when they do not say).
    hrf_model, drift_model, high_pass, drift_order, fir_delays, min_onset
        Design matrix parameters given to every model, as
        :class:`daskglm.FirstLevelModel`.
    mask_img : path, image, ``"derivatives"`` or None
        ``"derivatives"``: each subject's model gets the intersection of its
        runs' ``*_desc-brain_mask`` images (threshold 0.5), as nilearn; no
        mask for surface and CIFTI runs (fMRIPrep writes none).
    target_affine, target_shape, smoothing_fwhm
        Resampling grid and smoothing given to every model, as
        :class:`daskglm.FirstLevelModel`.
    memory, memory_level, standardize
        As :class:`daskglm.FirstLevelModel`.
    signal_scaling, noise_model
        Scaling of the signal and temporal noise model given to every model,
        as :class:`daskglm.FirstLevelModel`.
    verbose : int
        As :class:`daskglm.FirstLevelModel`; also the verbosity of nilearn's
        file search.
    n_jobs : int
        Workers of the embedded Dask cluster, as :class:`daskglm.FirstLevelModel`
        (default -1: one per core; nilearn's default is 1).
    minimize_memory : bool
        As :class:`daskglm.FirstLevelModel`.
    derivatives_folder : str
        Folder of the preprocessed runs, relative to ``dataset_path``, e.g.
        ``"derivatives/fmriprep"``.
    random_state, store, storage_options, t_chunk, v_chunk, client
        daskglm's own model parameters, given to every model.
    **kwargs
        ``confounds_*`` options of nilearn's
        :func:`~nilearn.interfaces.fmriprep.load_confounds` (e.g.
        ``confounds_strategy=("motion", "wm_csf")``); without
        ``confounds_strategy`` every confounds column is returned (NaNs of
        the first row set to 0); ``confounds_strategy=None``: no confounds.

    Returns
    -------
    models : list of daskglm.FirstLevelModel
        One per subject, ``subject_label`` set, in nilearn's order.
    models_run_imgs : list of list of str or nilearn.surface.SurfaceImage
        ``models_run_imgs[i][j]``: path of subject i's run j (a NIfTI or
        ``.dtseries.nii`` file), or for fsaverage5 its ``SurfaceImage``.
    models_events : list of list of pandas.DataFrame
        Events of each run, shape (n_events, >= 3).
    models_confounds : list of (list of pandas.DataFrame, shape (n_scans, n_confounds)) or None
        Confounds of each run, ``None`` for a subject without confounds files
        or with ``confounds_strategy=None``.

    Raises
    ------
    ValueError, RuntimeError
        nilearn's, for a missing dataset / derivatives folder, an unknown task
        or space, mismatched events or confounds; daskglm adds what the
        dataset holds.
    """
    from nilearn.glm.first_level import (
        first_level_from_bids as nilearn_first_level_from_bids,
    )

    _check_supported(space_label, kwargs)
    from_derivatives = isinstance(mask_img, str) and mask_img == "derivatives"
    daskglm_params = {"random_state": random_state, "store": store, "storage_options": storage_options,
                      "t_chunk": t_chunk, "v_chunk": v_chunk, "client": client}
    with _explained(dataset_path, derivatives_folder, task_label, space_label):  # before looking at any file
        check_first_level_from_bids_args(dataset_path=dataset_path, task_label=task_label, space_label=space_label,
                                         sub_labels=sub_labels or [], exclude_subjects=exclude_subjects or [],
                                         img_filters=img_filters or [], derivatives_folder=derivatives_folder)
    derivatives_path = (Path(dataset_path) / derivatives_folder).absolute()
    if run_kind(derivatives_path, task_label, space_label, img_filters) == "cifti":
        from ..models.first_level import FirstLevelModel

        params = {"hrf_model": hrf_model, "drift_model": drift_model, "high_pass": high_pass,
                  "drift_order": drift_order, "fir_delays": fir_delays, "min_onset": min_onset,
                  "mask_img": None if from_derivatives else mask_img, "target_affine": target_affine,
                  "target_shape": target_shape, "smoothing_fwhm": smoothing_fwhm, "memory": memory,
                  "memory_level": memory_level, "standardize": standardize, "signal_scaling": signal_scaling,
                  "noise_model": noise_model, "verbose": verbose, "n_jobs": n_jobs,
                  "minimize_memory": minimize_memory, **daskglm_params}
        with _explained(dataset_path, derivatives_folder, task_label, space_label):
            subjects, run_imgs, events, confounds = cifti_first_level_from_bids(
                dataset_path, task_label, space_label, sub_labels, exclude_subjects, img_filters, t_r,
                slice_time_ref, derivatives_folder, params, kwargs)
        return [FirstLevelModel(**p) for p in subjects], run_imgs, events, confounds
    with _explained(dataset_path, derivatives_folder, task_label, space_label):
        models, run_imgs, events, confounds = nilearn_first_level_from_bids(
            dataset_path, task_label, space_label=space_label, sub_labels=sub_labels,
            exclude_subjects=exclude_subjects, img_filters=img_filters, t_r=t_r,
            slice_time_ref=slice_time_ref, hrf_model=hrf_model, drift_model=drift_model,
            high_pass=high_pass, drift_order=drift_order, fir_delays=fir_delays, min_onset=min_onset,
            mask_img=None if from_derivatives else mask_img, target_affine=target_affine,
            target_shape=target_shape, smoothing_fwhm=smoothing_fwhm, memory=memory,
            memory_level=memory_level, standardize=standardize, signal_scaling=signal_scaling,
            noise_model=noise_model, verbose=verbose, n_jobs=1, minimize_memory=minimize_memory,
            derivatives_folder=derivatives_folder, **kwargs,
        )
    space = "MNI152NLin2009cAsym" if space_label is None else space_label  # nilearn's default
    if confounds is not None and is_surface_space(space_label):
        confounds = _per_run_surface_confounds(confounds, models, derivatives_path, task_label, space,
                                               img_filters, kwargs)
    ours = []
    for model, imgs in zip(models, run_imgs):
        extra = dict(daskglm_params)
        if from_derivatives and not is_surface_space(space_label):  # fMRIPrep writes no surface masks: none
            extra["mask_img"] = _derivatives_mask(derivatives_path, model.subject_label, task_label,
                                                  space, list(img_filters or []), len(imgs))
        extra["n_jobs"] = n_jobs  # nilearn's models got its default: daskglm's n_jobs means workers
        ours.append(_to_daskglm(model, extra))
    return ours, run_imgs, events, confounds

"""A small simulated BIDS dataset with fMRIPrep-style derivatives and a known group effect.

:func:`simulate_bids` writes, for ``n_subjects`` subjects of ``n_runs`` runs
each, the raw BIDS files (``bold`` runs with JSON sidecars, ``events.tsv``)
and fMRIPrep-style derivatives (preprocessed runs, brain masks, confounds) that
:func:`nilearn.glm.first_level.first_level_from_bids` reads. Every run comes
from the generator of :func:`daskglm.datasets.fiac.simulate_fiac` (its ground
truth, events, design and volume stream), so the first-level model is the
FIAC one. Each subject's activation is the group effect plus a subject
deviation: a one-sample test over the subjects' effect maps finds the group
effect, and the truth is saved next to the data.

With ``space="fsaverage5"`` or ``"fsLR"`` the preprocessed runs are fMRIPrep's
surface derivatives instead (GIFTI per hemisphere, or CIFTI-2 dense time
series), simulated by :mod:`daskglm.datasets.bids_surfaces` with the same
events, confounds and subject effect sizes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from .. import __version__
from . import fiac
from .bids_surfaces import (
    CIFTI_DENSITY,
    HEMISPHERES,
    SURFACE_SPACES,
    surface_geometry,
    surface_truth,
    write_surface_run,
)
from .cifti import LAYOUTS
from .confounds import CONFOUNDS_DOC, confounds_table, tissue_regions, watch_signals
from .files import nifti_header, write_nifti, write_npz, write_text
from .params import check_float, check_int, check_timing, check_tuple, stream_rng

__all__ = ["PIPELINE_FOLDER", "SPACE", "SPACES", "TRUTH_FOLDER", "simulate_bids"]

#: Space label of the derivative runs and masks (the default).
SPACE = "MNI152NLin2009cAsym"
#: The spaces :func:`simulate_bids` writes: the volume space, fsaverage5 (GIFTI), fsLR (CIFTI).
SPACES: tuple[str, ...] = (SPACE, *SURFACE_SPACES)
#: Derivatives folder, relative to the dataset root (``derivatives_folder=`` of nilearn).
PIPELINE_FOLDER = "derivatives/fmriprep"
#: Folder of the ground truth and of the completion marker, relative to the root.
TRUTH_FOLDER = "derivatives/simulation"
_LAYOUT_VERSION = 1  # bump when the output for given parameters changes
_MARKER = "simulate_bids_complete.json"
_BIDS_VERSION = "1.10.0"
# RNG stream of the subject draws, beyond simulate_fiac's (0-3) (motion traces: .confounds).
_STREAM_SUBJECT = 10
_LABEL = re.compile(r"[A-Za-z0-9]+")
#: Per-run files, as keys of the returned Bunch.
_FILE_KEYS = ("bold", "events", "preproc_bold", "brain_mask", "confounds")
#: ``Density`` of the fsLR runs' sidecars, by cifti layout (fMRIPrep describes its grayordinates there).
_DENSITY_TEXT = {
    "91k": "91282 grayordinates: fsLR-91k sizes (29696 + 29716 cortical vertices of 32492 per hemisphere, "
           "31870 subcortical voxels of a 2 mm grid), simulated (daskglm.datasets.cifti, layout '91k')",
    "small": "19158 grayordinates: fsaverage5-sized cortex (9361 + 9367 of 10242 vertices per hemisphere) "
             "and two thalami (430 voxels of a 2 mm grid), simulated (daskglm.datasets.cifti, layout "
             "'small'); not a real fsLR density",
}


# --- small helpers ---
def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _subject_draw(seed: int, index: int, group_effect: float, subject_sd: float) -> tuple[int, float]:
    """Seed of the subject's data and its effect size; independent of ``n_subjects``."""

    rng = stream_rng(seed, _STREAM_SUBJECT, index)
    sub_seed = int(rng.integers(0, 2**31 - 1))
    return sub_seed, float(group_effect + subject_sd * rng.standard_normal())


def _sidecar(path: Path) -> Path:
    """``x_bold.nii.gz`` -> ``x_bold.json``, ``x_timeseries.tsv`` -> ``x_timeseries.json``."""
    return path.with_name(path.name.split(".", 1)[0] + ".json")


def _tsv(frame: pd.DataFrame) -> str:
    return frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.8g", lineterminator="\n")


# --- file layout ---
def _preproc_name(stem: str, space: str, density: str | None) -> str | dict[str, str]:
    """fMRIPrep's name of a preprocessed run (a dict of the two hemispheres' names for fsaverage5)."""
    if space == "fsaverage5":
        return {part: f"{stem}_hemi-{label}_space-{space}_bold.func.gii" for label, part, _ in HEMISPHERES}
    if space == "fsLR":
        return f"{stem}_space-{space}_den-{density}_bold.dtseries.nii"
    return f"{stem}_space-{space}_desc-preproc_bold.nii.gz"


def _layout(root: Path, task: str, labels: list[str], n_runs: int, space: str = SPACE,
            density: str | None = None) -> Bunch:
    """Paths of every generated file, per subject and run (lists of lists of str; fsaverage5's
    ``preproc_bold`` entries are ``{"left": path, "right": path}``; surface spaces have no brain masks)."""
    deriv, out = root / PIPELINE_FOLDER, {key: [] for key in _FILE_KEYS}
    for label in labels:
        raw_dir, der_dir = root / f"sub-{label}" / "func", deriv / f"sub-{label}" / "func"
        runs = [f"sub-{label}_task-{task}_run-{r}" for r in range(1, n_runs + 1)]
        out["bold"].append([str(raw_dir / f"{s}_bold.nii.gz") for s in runs])
        out["events"].append([str(raw_dir / f"{s}_events.tsv") for s in runs])
        names = [_preproc_name(s, space, density) for s in runs]
        out["preproc_bold"].append([{k: str(der_dir / v) for k, v in n.items()} if isinstance(n, dict)
                                    else str(der_dir / n) for n in names])
        if space == SPACE:
            out["brain_mask"].append([str(der_dir / f"{s}_space-{SPACE}_desc-brain_mask.nii.gz")
                                      for s in runs])
        out["confounds"].append([str(der_dir / f"{s}_desc-confounds_timeseries.tsv") for s in runs])
    if space != SPACE:
        out["brain_mask"] = None
    return Bunch(**out)


def _all_files(layout: Bunch) -> list[Path]:
    files = []
    for key in _FILE_KEYS:
        for runs in layout[key] or []:
            for p in runs:
                files += [Path(v) for v in p.values()] if isinstance(p, dict) else [Path(p)]
    return files


def _is_ours(root: Path) -> bool:
    return (root / TRUTH_FOLDER / _MARKER).is_file()


def _space_text(p: dict) -> str:
    if p["space"] == "fsaverage5":
        return "fsaverage5 surfaces (GIFTI, one file per hemisphere)"
    if p["space"] == "fsLR":
        return f"fsLR grayordinates (CIFTI-2 dense time series, den-{CIFTI_DENSITY[p['cifti_layout']]})"
    return f"{SPACE} space"


def _dataset_descriptions(params: dict, task: str) -> dict[str, dict]:

    generated_by = {"Name": "daskglm", "Version": __version__,
                    "Description": "daskglm.datasets.simulate_bids (simulate_fiac's generator)"}
    return {
        "": {"Name": f"daskglm simulated FIAC-like dataset, task {task}", "BIDSVersion": _BIDS_VERSION,
             "DatasetType": "raw", "License": "CC0", "Authors": ["daskglm (simulated data)"],
             "GeneratedBy": [generated_by]},
        PIPELINE_FOLDER: {"Name": "fMRIPrep-style derivatives (simulated)", "BIDSVersion": _BIDS_VERSION,
                          "DatasetType": "derivative",
                          "GeneratedBy": [{**generated_by, "Description": (
                              f"Simulated in place of fMRIPrep: runs on {_space_text(params)}"
                              f"{', brain masks' if params['space'] == SPACE else ''}, confounds")}]},
        TRUTH_FOLDER: {"Name": "Ground truth of the simulation", "BIDSVersion": _BIDS_VERSION,
                       "DatasetType": "derivative", "GeneratedBy": [generated_by]},
    }


def _readme(params: dict, labels: list[str]) -> str:
    if params["space"] == SPACE:
        runs = f"Raw runs equal the 'preprocessed' runs in {PIPELINE_FOLDER}."
    else:
        runs = (f"The preprocessed runs in {PIPELINE_FOLDER} are on {_space_text(params)}, simulated with "
                "the same design and subject effects (daskglm.datasets.bids_surfaces); the raw runs and "
                "confounds are those of the volume simulation.")
    return (
        "Simulated fMRI dataset written by daskglm.datasets.simulate_bids.\n\n"
        f"{len(labels)} subject(s) x {params['n_runs']} run(s) of task '{params['task']}': "
        f"{params['n_scans']} volumes of {params['shape']} voxels, TR {params['t_r']} s, "
        f"seed {params['seed']}. FIAC-like block design (simulate_fiac); each subject's "
        f"activation is group_effect ({params['group_effect']}) plus a subject deviation "
        f"(SD {params['subject_sd']}). {runs} "
        f"Ground truth: {TRUTH_FOLDER}/truth.npz (see its README).\n"
    )


_TRUTH_README = """\
truth.npz (numpy, arrays; load with numpy.load):
  mask                  uint8 (x, y, z)       brain mask, the same for every subject
  affine                float64 (4, 4)
  conditions            str (5,)              trial types, in activation order
  activation_pattern    float32 (5, x, y, z)  signal change per unit regressor for an effect size of 1
  group_effect          float64 ()            the group effect size
  group_activation      float32 (5, x, y, z)  group_effect * activation_pattern
  subject_labels        str (n_subjects,)
  subject_effect_sizes  float64 (n_subjects,) group_effect + subject deviation
  subject_seeds         int64 (n_subjects,)   seed of simulate_fiac's generator for each subject
  blob_maps, blob_names, blob_betas, blob_centers: the activation blobs (see fiac_ground_truth)
Subject s's activation is subject_effect_sizes[s] * activation_pattern: volume t of a run is
baseline * (1 + activation @ X[t, :5] + drift) + AR(1) noise, X being fiac_design_matrix(events).
"""

_SURFACE_TRUTH_README = """\
truth.npz (numpy, arrays; load with numpy.load), for the {space} runs. n elements: {elements}.
  space                 str ()                "{space}"
  conditions            str (5,)              trial types, in activation order
  activation_pattern    float32 (5, n)        signal change per unit regressor for an effect size of 1
  baseline              float32 (n,)          the runs' baseline (shared by the subjects)
  effects               float32 (2, n)        "sentence" (DSt > SSt) and "speaker" (DSp > SSp) contrasts
                                              (effect_names, weights contrasts on conditions) in data
                                              units, for an effect size of 1
  group_effect          float64 ()            the group effect size
  group_activation      float32 (5, n)        group_effect * activation_pattern
  subject_labels        str (n_subjects,)
  subject_effect_sizes  float64 (n_subjects,) group_effect + subject deviation
  subject_seeds         int64 (n_subjects,)   seeds of the subjects' events (and raw volume runs)
  blob_maps, blob_names, blob_betas, blob_centers (element indices), ar_rho{extra}
Subject s's activation is subject_effect_sizes[s] * activation_pattern: element g at scan t is
baseline * (1 + drift_t) + baseline * activation[:, g] @ X[t, :5] + AR(1) noise (cifti_run_blocks),
X being fiac_design_matrix(events). The raw volume runs and the confounds are the volume simulation's.
"""


# --- generation ---
def _write_subject(tmp: Path, final: Path, layout: Bunch, index: int, label: str, task: str,
                   p: dict, affine: np.ndarray, verbose: int, geometry: Bunch | None = None
                   ) -> tuple[int, float, Bunch]:
    """Write all files of subject ``index`` (1-based) under ``tmp`` (``layout``'s paths are under ``final``).

    Returns
    -------
    sub_seed : int
        Seed of the subject's data.
    effect : float
        The subject's effect size.
    truth : sklearn.utils.Bunch
        The subject's :func:`~daskglm.datasets.fiac.fiac_ground_truth` (activation
        scaled by ``effect``) plus ``pattern``, the activation for an effect
        size of 1 (float32, (5, x, y, z)).

    With ``geometry`` (:func:`~daskglm.datasets.bids_surfaces.surface_geometry`)
    the preprocessed runs are surface runs; the raw runs and confounds are the
    volume ones all the same.
    """

    def here(path: str) -> Path:
        return tmp / Path(path).relative_to(final)

    def preproc(path: str | dict[str, str]) -> dict[str, Path]:
        """Where the run's preprocessed files go, keyed as write_surface_run wants them."""
        if isinstance(path, dict):
            return {label: here(path[part]) for label, part, _ in HEMISPHERES}
        return {"dtseries" if geometry is not None else "volume": here(path)}

    sub_seed, effect = _subject_draw(p["seed"], index, p["group_effect"], p["subject_sd"])
    truth = fiac.fiac_ground_truth(tuple(p["shape"]), sub_seed, 1.0, tuple(p["ar_rho"]), p["noise_sd"])
    pattern = truth.activation
    truth.activation = (effect * pattern).astype(np.float32)
    csf, wm = tissue_regions(truth.mask, pattern.any(axis=0))
    shape, n_scans, t_r, level = tuple(p["shape"]), p["n_scans"], p["t_r"], p["compresslevel"]
    i = index - 1
    for r in range(1, p["n_runs"] + 1):
        if verbose:
            print(f"[simulate_bids] sub-{label} run {r}/{p['n_runs']}")
        paths = {key: here(layout[key][i][r - 1]) for key in ("bold", "events", "confounds")}
        runs = preproc(layout.preproc_bold[i][r - 1])
        for path in [*paths.values(), *runs.values()]:
            path.parent.mkdir(parents=True, exist_ok=True)
        events = fiac.fiac_events(n_scans, t_r, sub_seed, r)
        design = fiac.fiac_design_matrix(events, n_scans, t_r)
        regressors = design[list(fiac.CONDITIONS)].to_numpy()
        signals: list[tuple[float, float, float, float]] = []
        volumes = watch_signals(fiac.run_volumes(truth, regressors, sub_seed, r, p["noise_smoothing"],
                                                 p["drift_size"]),
                                truth.mask, csf, wm, signals)
        header = nifti_header(shape + (n_scans,), np.int16, affine, t_r)
        sidecar = {"RepetitionTime": t_r, "TaskName": task}
        if geometry is None:
            write_nifti(runs["volume"], header, volumes, level)
            shutil.copyfile(runs["volume"], paths["bold"])  # raw run = "preprocessed" run
            mask = here(layout.brain_mask[i][r - 1])
            write_nifti(mask, nifti_header(shape, np.uint8, affine), [truth.mask], level)
            write_text(_sidecar(runs["volume"]), _json({**sidecar, "SkullStripped": False}))
            write_text(_sidecar(mask), _json({"Type": "Brain"}))
        else:
            write_nifti(paths["bold"], header, volumes, level)  # the raw run, and the confounds' signals
            write_surface_run(runs, geometry, effect, regressors, index, r, t_r, p["drift_size"])
            extra = {"Density": _DENSITY_TEXT[p["cifti_layout"]]} if "dtseries" in runs else {}
            for path in runs.values():
                write_text(_sidecar(path), _json({**sidecar, **extra}))
        write_text(paths["events"], _tsv(events))
        confounds = confounds_table(signals, sub_seed, r, p["motion_size"])
        write_text(paths["confounds"], _tsv(confounds))
        write_text(_sidecar(paths["bold"]), _json(sidecar))
        write_text(_sidecar(paths["confounds"]),
                         _json({name: {"Description": text} for name, text in CONFOUNDS_DOC.items()}))
    truth.pattern = pattern
    return sub_seed, effect, truth


def _generate(tmp: Path, final: Path, layout: Bunch, labels: list[str], p: dict, text: str,
              verbose: int) -> None:
    vs = np.asarray(p["voxel_size"])
    affine = np.diag([*vs, 1.0])
    affine[:3, 3] = -vs * (np.asarray(p["shape"]) - 1) / 2
    for folder, description in _dataset_descriptions(p, p["task"]).items():
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        write_text(tmp / folder / "dataset_description.json", _json(description))
    write_text(tmp / "README", _readme(p, labels))
    write_text(tmp / PIPELINE_FOLDER / "README", _readme(p, labels))
    # fMRIPrep's confounds files (which nilearn reads) and the truth are not (yet) in the
    # BIDS specification: list them so that the validator accepts the derivative datasets.
    # Surface runs (GIFTI, CIFTI) are fMRIPrep's, not yet the specification's either.
    # (With no volume runs here, every bold.json is a surface run's sidecar.)
    surfaces = {"fsaverage5": "*_bold.func.gii\n*_bold.json\n",
                "fsLR": "*_bold.dtseries.nii\n*_bold.json\n"}.get(p["space"], "")
    write_text(tmp / PIPELINE_FOLDER / ".bidsignore", "*_desc-confounds_timeseries.*\n" + surfaces)
    write_text(tmp / TRUTH_FOLDER / ".bidsignore", f"truth.npz\n{_MARKER}\n")
    write_text(tmp / "participants.tsv",
                     _tsv(pd.DataFrame({"participant_id": [f"sub-{s}" for s in labels]})))
    geometry = None
    if p["space"] != SPACE:
        geometry = surface_geometry(p["space"], p.get("cifti_layout", "small"), p["seed"], tuple(p["ar_rho"]),
                                    p["noise_sd"])
    seeds, effects, t = [], [], None
    for index, label in enumerate(labels, start=1):
        sub_seed, effect, truth = _write_subject(tmp, final, layout, index, label, p["task"], p, affine, verbose,
                                                 geometry)
        seeds.append(sub_seed)
        effects.append(effect)
        t = truth if t is None else t  # mask, pattern and blobs are the same for every subject
    subjects = {"group_effect": np.float64(p["group_effect"]), "subject_labels": np.array(labels),
                "subject_effect_sizes": np.array(effects, dtype=np.float64),
                "subject_seeds": np.array(seeds, dtype=np.int64)}
    if geometry is None:
        write_npz(tmp / TRUTH_FOLDER / "truth.npz", {
            "mask": t.mask, "affine": affine, "conditions": t.conditions,
            "activation_pattern": t.pattern, "group_effect": subjects["group_effect"],
            "group_activation": (p["group_effect"] * t.pattern).astype(np.float32),
            "subject_labels": subjects["subject_labels"], "subject_effect_sizes": subjects["subject_effect_sizes"],
            "subject_seeds": subjects["subject_seeds"], "blob_maps": t.blob_maps,
            "blob_names": t.blob_names, "blob_betas": t.blob_betas, "blob_centers": t.blob_centers,
        })
        write_text(tmp / TRUTH_FOLDER / "README", _TRUTH_README)
    else:
        arrays = surface_truth(geometry)
        write_npz(tmp / TRUTH_FOLDER / "truth.npz", {
            "space": np.array(p["space"]), "conditions": t.conditions, **arrays, **subjects,
            "group_activation": (p["group_effect"] * arrays["activation_pattern"]).astype(np.float32),
        })
        extra = ("\n  hemisphere, vertex    (n,)                  each element's hemisphere and fsaverage5 vertex"
                 if p["space"] == "fsaverage5" else
                 "\n  structures, vertex, voxel                   each grayordinate's CIFTI structure, vertex or voxel")
        elements = ("10242 left vertices, then 10242 right vertices" if p["space"] == "fsaverage5"
                    else "the grayordinates, in the dense time series' brain-model order")
        write_text(tmp / TRUTH_FOLDER / "README",
                   _SURFACE_TRUTH_README.format(space=p["space"], elements=elements, extra=extra))
    write_text(tmp / TRUTH_FOLDER / _MARKER, text)  # last: marks the dataset complete


def _sibling(root: Path, kind: str) -> Path:
    """A new hidden name next to ``root`` (mkdtemp would make the dataset private: mode 0700)."""
    return root.with_name(f".{root.name}.{uuid.uuid4().hex[:12]}.{kind}")


def _complete(root: Path, files: list[Path], text: str) -> bool:
    """Whether ``root`` holds the simulation of these parameters (``text``), with all its files."""
    marker = root / TRUTH_FOLDER / _MARKER
    try:
        return marker.is_file() and all(f.is_file() for f in files) and marker.read_text() == text
    except OSError:
        return False


def _install(tmp: Path, root: Path) -> None:
    """Move the finished ``tmp`` tree to ``root`` (replacing a previous simulation there)."""
    if root.exists():
        if _is_ours(root):
            old = _sibling(root, "old")
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
            return
        if not root.is_dir() or any(root.iterdir()):
            shutil.rmtree(tmp)
            raise FileExistsError(f"{str(root)!r} appeared while simulating and is not a simulate_bids dataset")
        root.rmdir()
    os.replace(tmp, root)


def _validate(n_subjects: Any, n_runs: Any, task: Any, shape: Any, n_scans: Any, t_r: Any,
              group_effect: Any, subject_sd: Any, seed: Any, voxel_size: Any, ar_rho: Any, noise_sd: Any,
              drift_size: Any, noise_smoothing: Any, motion_size: Any, compresslevel: Any, space: Any = SPACE,
              cifti_layout: Any = "91k") -> dict:

    if not isinstance(task, str) or not _LABEL.fullmatch(task):
        raise ValueError(f"task must be a BIDS label (letters and digits only), got {task!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if cifti_layout not in LAYOUTS:
        raise ValueError(f"cifti_layout must be one of {LAYOUTS}, got {cifti_layout!r}")
    if space != SPACE and check_int("n_runs", n_runs, 1) >= 1000:
        raise ValueError(f"n_runs must be < 1000 for surface spaces, got {n_runs!r}")
    shape = check_tuple("shape", shape, 3, "int")
    n_scans, t_r = check_timing(n_scans, t_r)
    vs = check_tuple("voxel_size", voxel_size, 3, "float")
    if min(vs) <= 0:
        raise ValueError(f"voxel_size entries must be positive, got {voxel_size!r}")
    try:
        effect = float(group_effect)
    except (TypeError, ValueError):
        raise ValueError(f"group_effect must be a number, got {group_effect!r}") from None
    if not np.isfinite(effect):
        raise ValueError(f"group_effect must be finite, got {group_effect!r}")
    level = check_int("compresslevel", compresslevel, 1)
    if level > 9:
        raise ValueError(f"compresslevel must be in 1..9, got {compresslevel!r}")
    seed = check_int("seed", seed, 0)
    fiac.fiac_ground_truth((2, 2, 2), seed, 1.0, ar_rho, noise_sd)  # validates ar_rho, noise_sd
    return {
        "layout_version": _LAYOUT_VERSION, "generator_version": fiac.GENERATOR_VERSION,
        "n_subjects": check_int("n_subjects", n_subjects, 1),
        "n_runs": check_int("n_runs", n_runs, 1), "task": task, "shape": list(shape),
        "n_scans": n_scans, "t_r": t_r, "group_effect": effect,
        "subject_sd": check_float("subject_sd", subject_sd), "seed": seed,
        "voxel_size": list(vs), "ar_rho": [float(r) for r in ar_rho], "noise_sd": float(noise_sd),
        "drift_size": check_float("drift_size", drift_size),
        "noise_smoothing": check_float("noise_smoothing", noise_smoothing),
        "motion_size": check_float("motion_size", motion_size), "compresslevel": level,
        "design": fiac.DESIGN_PARAMS, "space": space,
        **({"cifti_layout": cifti_layout} if space == "fsLR" else {}),
    }


def simulate_bids(
    root: str | os.PathLike, n_subjects: int = 3, n_runs: int = 2, task: str = "language",
    shape: tuple[int, int, int] = (24, 28, 16), n_scans: int = 80, t_r: float = 2.0,
    group_effect: float = 0.03, subject_sd: float = 0.005, seed: int = 0,
    voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0), ar_rho: tuple[float, float] = (0.1, 0.5),
    noise_sd: float = 15.0, drift_size: float = 0.01, noise_smoothing: float = 1.0,
    motion_size: float = 0.03, compresslevel: int = 1, overwrite: bool = False, verbose: int = 0,
    space: str = SPACE, cifti_layout: str = "91k",
) -> Bunch:
    """Write a small valid BIDS dataset with fMRIPrep-style derivatives and a known group effect.

    Layout (``<s>`` = ``sub-<label>_task-<task>_run-<r>``, labels ``01, 02, ...``)::

        root/dataset_description.json, README, participants.tsv
        root/sub-<label>/func/<s>_bold.nii.gz, <s>_bold.json (RepetitionTime, TaskName), <s>_events.tsv
        root/derivatives/fmriprep/dataset_description.json       (DatasetType: derivative)
        root/derivatives/fmriprep/sub-<label>/func/
            <s>_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz (+ .json with RepetitionTime)
            <s>_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz   (+ .json)
            <s>_desc-confounds_timeseries.tsv                      (+ .json)
        root/derivatives/simulation/truth.npz, README, simulate_bids_complete.json
        (and dataset_description.json in both derivatives folders, .bidsignore files
        for the confounds and the truth, which the BIDS specification does not cover)

    Each run is one run of :func:`daskglm.datasets.fiac.simulate_fiac`'s generator
    (its ground truth, block-design events, design matrix and volume stream),
    seeded per subject, so subjects differ in baseline, AR(1) field, block
    order, noise and drift; the brain mask and activation blobs are shared
    (the data are "in MNI space"). Subject ``s`` has effect size ``e_s =
    group_effect + subject_sd * N(0, 1)`` and activation ``e_s *
    activation_pattern``, where ``activation_pattern`` is the FIAC blob pattern
    for an effect size of 1. No slice timing is simulated, so the sidecars
    carry no ``SliceTiming`` / ``StartTime`` (nilearn then assumes
    ``slice_time_ref=0``, which matches the data). The raw runs are copies of
    the derivative runs. Confounds (29 columns): ``global_signal``, ``csf``,
    ``white_matter`` (means of the data over the brain, its outer shell and
    its deep non-active part), ``std_dvars``, ``framewise_displacement``, and
    the six motion parameters with their ``_derivative1``, ``_power2``,
    ``_derivative1_power2`` expansions (``n/a`` in the first row where
    fMRIPrep has it); the motion traces are random walks that the data do
    not contain.

    nilearn reads it with ``first_level_from_bids(root, task,
    space_label="MNI152NLin2009cAsym", derivatives_folder="derivatives/fmriprep")``.

    Surface spaces (``space``): the preprocessed runs are fMRIPrep's surface
    derivatives in place of the volume runs and brain masks (the raw runs,
    events and confounds are the volume dataset's, byte for byte)::

        space="fsaverage5":  <s>_hemi-L_space-fsaverage5_bold.func.gii, <s>_hemi-R_... (+ a .json each)
        space="fsLR":        <s>_space-fsLR_den-91k_bold.dtseries.nii (+ .json)

    Each GIFTI holds one float32 data array of 10242 vertices per scan (intent
    ``NIFTI_INTENT_TIME_SERIES``, ``TimeStep`` the TR in ms, as FreeSurfer
    writes them for fMRIPrep); the CIFTI-2 file is a dense time series whose
    series axis step is the TR. The sidecars carry ``RepetitionTime`` and
    ``TaskName``. The data come from :mod:`daskglm.datasets.bids_surfaces`:
    the grayordinate generator of :func:`~daskglm.datasets.simulate_cifti`
    (same design, blob responses and noise model; geometry, baseline and AR
    fields from ``seed``, shared by the subjects), with subject ``s``'s
    activation ``e_s`` times the blob pattern. The "sentence" blob is on the
    left cortex, the "speaker" blob on the right. ``truth.npz`` then holds the
    pattern per vertex or grayordinate (its README lists the arrays). nilearn
    reads fsaverage5 runs with ``first_level_from_bids(...,
    space_label="fsaverage5")``; nilearn 0.14 does not find ``.dtseries.nii``
    runs, :func:`daskglm.first_level_from_bids` does
    (``space_label="fsLR"``).

    Caching and atomicity: the whole tree is written into a hidden sibling
    folder and renamed to ``root`` when complete, the marker (the parameters
    as JSON) written last. When ``root`` holds a marker with the same
    parameters it is returned as it is (unless ``overwrite``); a previous
    simulation with other parameters is replaced; any other non-empty
    ``root`` is an error. Same parameters, byte-identical files. Subject
    ``k``'s files do not depend on ``n_subjects``.

    Parameters
    ----------
    root : str or os.PathLike
        The dataset's root folder (created).
    n_subjects, n_runs : int
        Subjects (>= 1) and runs per subject (>= 1).
    task : str
        Task label (letters and digits).
    shape : tuple of 3 int
        Volume shape ``(nx, ny, nz)``.
    n_scans : int
        Volumes per run (>= 20).
    t_r : float
        Repetition time (s), in the NIfTI header and the sidecars.
    group_effect : float
        Group effect size: peak fractional signal change of a blob per unit
        regressor (``effect_size`` of :func:`~daskglm.datasets.fiac.simulate_fiac`).
    subject_sd : float
        SD of the subjects' effect sizes around ``group_effect``.
    seed : int
        Random seed (>= 0).
    voxel_size, ar_rho, noise_sd, drift_size, noise_smoothing
        As :func:`~daskglm.datasets.fiac.simulate_fiac`.
    motion_size : float
        SD (mm) of the per-volume translation steps of the simulated motion
        traces (rotation steps: ``motion_size / 50`` rad).
    compresslevel : int
        gzip level (1-9) of the ``.nii.gz`` files, as
        :func:`~daskglm.datasets.fiac.simulate_fiac`.
    overwrite : bool
        Regenerate even when ``root`` holds this simulation.
    verbose : int
        Print progress when > 0.
    space : {"MNI152NLin2009cAsym", "fsaverage5", "fsLR"}
        Space of the preprocessed runs: volumes (the default), fsaverage5
        GIFTI (one file per hemisphere, every vertex of nilearn's bundled
        meshes) or fsLR CIFTI-2 dense time series.
    cifti_layout : {"91k", "small"}
        Grayordinates of the ``"fsLR"`` runs (see
        ``daskglm.datasets.cifti.cifti_brain_model_axis``): ``"91k"``, the
        fsLR-91k sizes (91,282 grayordinates, ``den-91k``); ``"small"``,
        fsaverage5-sized cortex and two thalami (19,158 grayordinates,
        ``den-19k``; not a real fsLR density, for quick tests).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``root`` (str), ``derivatives_folder`` (``"derivatives/fmriprep"``,
        relative to root, for ``first_level_from_bids``), ``task``,
        ``space``, ``t_r``, ``subjects`` (labels, list of str), ``bold``,
        ``events``, ``preproc_bold``, ``brain_mask``, ``confounds`` (paths,
        list of n_subjects lists of n_runs str; for fsaverage5 each
        ``preproc_bold`` entry is ``{"left": path, "right": path}``, nilearn's
        ``SurfaceImage`` data; ``brain_mask`` is None for surface spaces),
        ``truth`` (path of
        ``truth.npz``: ``mask``, ``affine``, ``conditions``,
        ``activation_pattern`` (float32, (5, x, y, z)), ``group_effect``,
        ``group_activation`` (float32, (5, x, y, z)), ``subject_labels``,
        ``subject_effect_sizes`` (float64, (n_subjects,)), ``subject_seeds``
        and the blob arrays of :func:`~daskglm.datasets.fiac.fiac_ground_truth`;
        described in ``derivatives/simulation/README``), ``description``.
    """
    p = _validate(n_subjects, n_runs, task, shape, n_scans, t_r, group_effect, subject_sd, seed,
                  voxel_size, ar_rho, noise_sd, drift_size, noise_smoothing, motion_size, compresslevel,
                  space, cifti_layout)
    text = _json(p)
    root = Path(root).absolute()
    width = max(2, len(str(p["n_subjects"])))
    labels = [f"{s:0{width}d}" for s in range(1, p["n_subjects"] + 1)]
    layout = _layout(root, task, labels, p["n_runs"], space, CIFTI_DENSITY[cifti_layout])
    result = Bunch(root=str(root), derivatives_folder=PIPELINE_FOLDER, task=task, space=space,
                   t_r=p["t_r"], subjects=labels, **layout,
                   truth=str(root / TRUTH_FOLDER / "truth.npz"), description=_readme(p, labels))
    files = [*_all_files(layout), Path(result.truth)]
    if not overwrite and _complete(root, files, text):
        if verbose:
            print(f"[simulate_bids] using the dataset in {root}")
        return result
    if root.exists() and not _is_ours(root) and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{str(root)!r} exists and is not a dataset written by simulate_bids (no "
            f"{TRUTH_FOLDER}/{_MARKER}): give an empty or new folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(root, "tmp")
    tmp.mkdir()
    try:
        _generate(tmp, root, layout, labels, p, text, verbose)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not overwrite and _complete(root, files, text):
        shutil.rmtree(tmp)  # another process finished the same dataset meanwhile
    else:
        _install(tmp, root)
    return result

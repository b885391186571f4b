"""Simulated FIAC-like first-level fMRI data, generated out of core.

:func:`simulate_fiac` writes a dataset shaped like the one of
:func:`nilearn.datasets.fetch_fiac_first_level` (FIAC experiment 2,
Dehaene-Lambertz et al. 2006) to disk one volume at a time, and returns a
:class:`sklearn.utils.Bunch` with the same keys as the nilearn fetcher.  The
ground truth (brain mask, activation maps, AR(1) coefficients) is saved too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.utils import Bunch

from .files import data_root, is_complete, nifti_header, parameters_folder, write_nifti, write_npz, write_text
from .params import check_float, check_int, check_timing, check_tuple, stream_rng

__all__ = ["CONDITIONS", "DESIGN_PARAMS", "fiac_design_matrix", "fiac_events",
           "fiac_ground_truth", "load_fiac_design_matrix", "run_volumes", "simulate_fiac",
           "GENERATOR_VERSION"]

#: Condition names, in design-matrix column order.
CONDITIONS: tuple[str, ...] = ("SStSSp", "SStDSp", "DStSSp", "DStDSp", "FirstSt")
#: Keyword arguments of ``make_first_level_design_matrix`` used to build X.
DESIGN_PARAMS: dict[str, Any] = {"hrf_model": "spm", "drift_model": "polynomial",
                                 "drift_order": 7}
#: Activation blobs: name -> (centre as a fraction of the brain semi-axes,
#: response to each condition, in CONDITIONS order).
_BLOBS: dict[str, tuple[tuple[float, float, float], tuple[float, ...]]] = {
    "sentence": ((-0.45, -0.1, 0.0), (0.25, 0.25, 1.0, 1.0, 1.0)),  # DSt > SSt
    "speaker": ((0.45, -0.1, 0.0), (0.25, 1.0, 0.25, 1.0, 1.0)),  # DSp > SSp
    "all": ((0.0, 0.45, 0.25), (1.0, 1.0, 1.0, 1.0, 1.0)),  # any sentence
}
GENERATOR_VERSION = 2  # bump when the output for given parameters changes
_MARKER = "fiac_complete.json"
_SENTENCES_PER_BLOCK = 6
_NOMINAL_CYCLE = 30.0  # seconds of block + rest, as in the FIAC protocol
_STREAM_SPACE, _STREAM_EVENTS, _STREAM_NOISE, _STREAM_DRIFT = range(4)  # RNG streams


# --- design ---
def fiac_events(n_scans: int = 191, t_r: float = 2.5, seed: int = 0, run: int = 1) -> pd.DataFrame:
    """Block-design events of one simulated FIAC run.

    Each block holds 6 sentences: the first is a ``FirstSt`` event (duration
    0.7 sentence onset asynchrony), the other 5 form one event of the block's
    condition.  Blocks (2 units) alternate with rest (1 unit), with rest first
    and last.  A run holds ``4 * k`` blocks, ``k = max(1, round(n_scans * t_r /
    120 s))``, stretched to fill the run exactly (FIAC defaults: 16 blocks of
    19.5 s, a sentence every 3.25 s).  The block order, a sequence of random
    permutations of the 4 conditions, is drawn from ``(seed, run)``.

    Parameters
    ----------
    n_scans, t_r : int, float
        Number of volumes (>= 20) and repetition time (s).
    seed, run : int
        Random seed and 1-based run index (runs get different block orders).

    Returns
    -------
    events : pandas.DataFrame, shape (n_events, 3)
        Columns ``onset``, ``duration`` (s, rounded to ms) and ``trial_type``,
        sorted by onset; every event ends by ``n_scans * t_r``.
    """
    n_scans, t_r = check_timing(n_scans, t_r)
    seed, run = check_int("seed", seed, 0), check_int("run", run, 1)
    run_length = n_scans * t_r
    n_per_condition = max(1, round(run_length / (4 * _NOMINAL_CYCLE)))
    unit = run_length / (3 * 4 * n_per_condition + 1)  # rest = 1 unit, block = 2 units
    soa = 2 * unit / _SENTENCES_PER_BLOCK
    rng = stream_rng(seed, _STREAM_EVENTS, run)
    order = np.concatenate([rng.permutation(4) for _ in range(n_per_condition)])
    rows = []
    for i, cond in enumerate(order):
        start = unit + 3 * unit * i
        rows.append((round(start, 3), round(0.7 * soa, 3), CONDITIONS[4]))
        rows.append((round(start + soa, 3), round(2 * unit - soa, 3), CONDITIONS[cond]))
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def fiac_design_matrix(events: pd.DataFrame, n_scans: int, t_r: float) -> pd.DataFrame:
    """13-column design matrix of one run, built with nilearn.

    Calls ``make_first_level_design_matrix(np.arange(n_scans) * t_r, events,
    **DESIGN_PARAMS)`` and reorders its columns (nilearn sorts conditions
    alphabetically) to ``CONDITIONS + drift_1..drift_7 + constant``.

    Parameters
    ----------
    events : pandas.DataFrame
        Columns onset, duration, trial_type.
    n_scans, t_r : int, float
        Number of volumes and repetition time (s).

    Returns
    -------
    design : pandas.DataFrame, shape (n_scans, 13)
        Float64 design matrix indexed by frame time.
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    n_scans, t_r = check_timing(n_scans, t_r)
    design = make_first_level_design_matrix(np.arange(n_scans) * t_r, events, **DESIGN_PARAMS)
    drifts = [f"drift_{k}" for k in range(1, DESIGN_PARAMS["drift_order"] + 1)]
    columns = [*CONDITIONS, *drifts, "constant"]
    missing = sorted(set(columns) - set(design.columns))
    if missing:
        raise ValueError(f"design matrix lacks columns {missing}; got {list(design.columns)}")
    return design[columns].astype(np.float64)


def load_fiac_design_matrix(path: str | os.PathLike) -> pd.DataFrame:
    """Load a design ``.npz`` (keys ``X``, ``conditions``) as a DataFrame.

    Does what :func:`nilearn.datasets.fetch_fiac_first_level` does with the
    real FIAC ``run*_design.npz`` files.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file, e.g. one of the ``design_matrix1..N`` files of
        :func:`simulate_fiac` or a FIAC ``run*_design.npz``.

    Returns
    -------
    design : pandas.DataFrame, shape (n_scans, n_columns)
        ``X``, its columns named by ``conditions`` (13 columns for FIAC's
        designs).
    """
    with np.load(path) as npz:
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in npz["conditions"]]
        return pd.DataFrame(npz["X"], columns=names)


# --- spatial ground truth ---
def _axis(values: np.ndarray, axis: int) -> np.ndarray:
    return values.reshape([-1 if a == axis else 1 for a in range(3)])


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Random low-frequency field (sum of 8 plane waves), float32, rescaled to [0, 1]."""
    x, y, z = (_axis((np.arange(n) + 0.5) / n, i) for i, n in enumerate(shape))
    field = np.zeros(shape)
    for _ in range(8):
        fx, fy, fz = rng.uniform(-1.5, 1.5, 3)
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0)
        field += amp * np.cos(2 * np.pi * (fx * x + fy * y + fz * z) + phase)
    field -= field.min()
    top = field.max()
    return (field / top if top > 0 else field).astype(np.float32)


def fiac_ground_truth(shape: tuple[int, int, int] = (64, 64, 30), seed: int = 0,
                      effect_size: float = 0.03, ar_rho: tuple[float, float] = (0.1, 0.5),
                      noise_sd: float = 15.0) -> Bunch:
    """Spatial ground truth used by :func:`simulate_fiac`.

    The brain is an ellipsoid centred in the field of view (semi-axes 0.40,
    0.46, 0.44 of the extent), baseline 800-1200 (smooth), 20-50 outside.
    Three Gaussian blobs (sigma 6 % of the smallest extent, >= 0.8 voxel,
    zero beyond 4 sigma) respond to the conditions: ``"sentence"`` (left,
    DSt > SSt: responses 0.25, 0.25, 1, 1, 1), ``"speaker"`` (right, DSp >
    SSp: 0.25, 1, 0.25, 1, 1) and ``"all"`` (any sentence: 1, 1, 1, 1, 1).

    Parameters
    ----------
    shape : tuple of 3 int
        Volume shape ``(nx, ny, nz)``.
    seed : int
        Seed of the baseline and AR-coefficient fields (blob positions depend
        on ``shape`` only).
    effect_size : float
        Peak fractional signal change per unit regressor for a response of 1.
    ar_rho : tuple of 2 float
        Range ``(low, high)`` of the AR(1) coefficient, ``0 <= low <= high < 1``.
    noise_sd : float
        Stationary noise SD inside the brain; ``0.2 * noise_sd`` outside.

    Returns
    -------
    truth : sklearn.utils.Bunch
        ``mask`` (uint8, shape), ``baseline``, ``ar_rho``, ``noise_sd``
        (float32, shape), ``activation`` (float32, (5,) + shape: fractional
        signal change per unit of each condition regressor), ``blob_maps``
        (float32, (3,) + shape, peak 1), ``blob_names`` (3,), ``blob_betas``
        (3, 5), ``blob_centers`` (int, (3, 3) voxel indices), ``conditions`` (5,).
    """
    shape = check_tuple("shape", shape, 3, "int")
    seed = check_int("seed", seed, 0)
    effect_size = check_float("effect_size", effect_size)
    noise_sd = check_float("noise_sd", noise_sd)
    lo, hi = check_tuple("ar_rho", ar_rho, 2, "float")
    if not 0 <= lo <= hi < 1:
        raise ValueError(f"ar_rho must satisfy 0 <= low <= high < 1, got {ar_rho!r}")
    n = np.asarray(shape, dtype=float)
    centre, semi = (n - 1) / 2, np.array([0.40, 0.46, 0.44]) * n
    idx = [_axis(np.arange(s), i) for i, s in enumerate(shape)]
    r2 = sum(((idx[i] - centre[i]) / semi[i]) ** 2 for i in range(3))
    mask = (r2 <= 1).astype(np.uint8)
    rng = stream_rng(seed, _STREAM_SPACE)
    inside = 800 + 400 * _smooth_field(shape, rng) * (1 - 0.3 * r2)
    outside = 20 + 30 * _smooth_field(shape, rng)
    baseline = np.where(mask, inside, outside).astype(np.float32)
    rho = (lo + (hi - lo) * _smooth_field(shape, rng)).astype(np.float32)
    sd = np.where(mask, noise_sd, 0.2 * noise_sd).astype(np.float32)
    sigma = max(0.8, 0.06 * min(shape))
    blob_maps = np.empty((len(_BLOBS),) + shape, dtype=np.float32)
    centres = np.empty((len(_BLOBS), 3), dtype=int)
    for k, (position, _) in enumerate(_BLOBS.values()):
        centres[k] = np.clip(np.rint(centre + np.array(position) * semi), 0, n - 1)
        d2 = sum((idx[i] - centres[k, i]) ** 2 for i in range(3))
        blob_maps[k] = np.where(d2 <= (4 * sigma) ** 2, np.exp(-d2 / (2 * sigma**2)), 0) * mask
    betas = np.array([response for _, response in _BLOBS.values()])
    activation = effect_size * np.tensordot(betas.T, blob_maps, axes=1).astype(np.float32)
    return Bunch(mask=mask, baseline=baseline, ar_rho=rho, noise_sd=sd, activation=activation,
                 blob_maps=blob_maps, blob_names=np.array(list(_BLOBS)), blob_betas=betas,
                 blob_centers=centres, conditions=np.array(CONDITIONS))


# --- time series ---
def run_volumes(truth: Bunch, regressors: np.ndarray, seed: int, run: int,
                 smoothing: float, drift_size: float) -> Iterator[np.ndarray]:
    """Yield the int16 volumes, shape ``truth.mask.shape``, of one run, one at a time.

    ``regressors`` has shape (n_scans, 5).  Volume t is ``baseline * (1 +
    activation @ x_t + drift_t) + noise_sd * e_t``, rounded and clipped to
    [0, 32767], where ``e_t = rho * e_{t-1} + sqrt(1 - rho**2) * z_t`` and
    ``z_t`` is unit-variance white noise smoothed in space (Gaussian sigma
    ``smoothing`` voxels).  The drift is a Legendre P1 + P2 trend in time
    with smooth random spatial weights of amplitude ``drift_size``.
    """
    shape = truth.mask.shape
    rng = stream_rng(seed, _STREAM_NOISE, run)
    drift_rng = stream_rng(seed, _STREAM_DRIFT, run)
    weights = [truth.baseline * drift_size * (2 * _smooth_field(shape, drift_rng) - 1)
               for _ in range(2)]
    tau = np.linspace(-1, 1, len(regressors))
    legendre = np.stack([tau, 1.5 * tau**2 - 0.5], axis=1).astype(np.float32)
    scale = 1.0
    if smoothing > 0:  # SD of a smoothed unit white-noise field (separable 3-D kernel)
        delta = np.zeros(2 * int(3 * smoothing + 0.5) + 3)
        delta[len(delta) // 2] = 1
        kernel = ndimage.gaussian_filter1d(delta, smoothing, truncate=3.0)
        scale = float(np.sqrt((kernel**2).sum())) ** 3
    rho = truth.ar_rho
    first = (truth.noise_sd / scale).astype(np.float32)
    innov = (np.sqrt(1 - rho**2) * first).astype(np.float32)
    # The activation is exactly zero outside the blobs: compute the signal there only.
    support = np.flatnonzero(truth.activation.any(axis=0))
    act = truth.activation.reshape(len(CONDITIONS), -1)[:, support].T.copy()
    act *= truth.baseline.reshape(-1)[support, None]  # (n_support, 5)
    vol, tmp, noise = (np.empty(shape, dtype=np.float32) for _ in range(3))
    flat = vol.reshape(-1)
    for t, x_t in enumerate(regressors.astype(np.float32)):
        z = rng.standard_normal(shape, dtype=np.float32)
        if smoothing > 0:
            ndimage.gaussian_filter(z, smoothing, output=z, mode="reflect", truncate=3.0)
        if t == 0:
            np.multiply(z, first, out=noise)
        else:
            noise *= rho
            np.multiply(z, innov, out=z)
            noise += z
        np.multiply(weights[0], legendre[t, 0], out=vol)
        np.multiply(weights[1], legendre[t, 1], out=tmp)
        vol += tmp
        vol += truth.baseline
        flat[support] += act @ x_t
        vol += noise
        np.rint(vol, out=vol)
        np.clip(vol, 0, np.iinfo(np.int16).max, out=vol)
        yield vol.astype(np.int16)


# --- public entry point ---
def simulate_fiac(
    data_dir: str | os.PathLike | None = None, shape: tuple[int, int, int] = (64, 64, 30),
    n_scans: int = 191, t_r: float = 2.5, n_runs: int = 2, seed: int = 0,
    compress: bool = True, voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0),
    ar_rho: tuple[float, float] = (0.1, 0.5), noise_sd: float = 15.0,
    effect_size: float = 0.03, drift_size: float = 0.01, noise_smoothing: float = 1.0,
    compresslevel: int = 1, overwrite: bool = False, verbose: int = 0,
) -> Bunch:
    """Simulate a FIAC-like first-level dataset on disk, with known ground truth.

    Mimics :func:`nilearn.datasets.fetch_fiac_first_level` (FIAC experiment
    2: 2×2 same/different sentence × speaker block design, 2 runs of 64×64×30
    voxels at 3 mm, 191 scans, TR 2.5 s).  Volumes are generated and written
    one at a time, so memory stays at a few volumes whatever ``n_scans`` is.

    Files go to ``data_dir/fiac_<shape>_<n_scans>_seed<seed>_<gz|nii>_<hash of
    all parameters>``; ``data_dir`` defaults to ``$DASKGLM_DATA`` or
    ``~/.cache/daskglm``.  A marker file holding the parameters as JSON is
    written last; when it is there with identical parameters the existing
    files are returned as they are.  Each file is written under a temporary
    name and renamed when complete.  Same parameters, byte-identical files.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Root cache directory.
    shape : tuple of 3 int
        Volume shape ``(nx, ny, nz)``.
    n_scans : int
        Volumes per run (>= 20, so that the 13-column design is estimable).
    t_r : float
        Repetition time in seconds (stored as the 4th pixdim).
    n_runs : int
        Number of runs (>= 1); runs differ in block order, noise and drift.
    seed : int
        Random seed (>= 0).
    compress : bool
        Write runs as ``.nii.gz`` (gzip level ``compresslevel``), else ``.nii``.
    voxel_size : tuple of 3 float
        Voxel size in mm; the affine is diagonal and centres the volume on 0.
    ar_rho : tuple of 2 float
        Range of the spatially smooth voxel-wise AR(1) coefficient.
    noise_sd : float
        Stationary noise SD inside the brain (the baseline is 800-1200).
    effect_size : float
        Fractional signal change of a blob peak per unit regressor.
    drift_size : float
        Amplitude of the slow (linear + quadratic) drift, as a fraction of baseline.
    noise_smoothing : float
        Sigma, in voxels, of the Gaussian filter applied to the noise innovations.
    compresslevel : int
        gzip level, 1-9.
    overwrite : bool
        Regenerate even when a matching cache exists.
    verbose : int
        Print progress when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``func1..funcN``: 4-D int16 NIfTI, shape + (n_scans,).
        ``design_matrix1..N``: ``.npz`` with ``X`` (float64, (n_scans, 13))
        and ``conditions`` (column names as bytes, like nipy's FIAC files;
        see :func:`load_fiac_design_matrix`).  nilearn's fetcher returns
        DataFrames here; these are paths.
        ``events1..N``: BIDS-style TSV (onset, duration, trial_type).
        ``mask``: 3-D uint8 NIfTI brain mask.
        ``truth``: ``.npz`` with the arrays of :func:`fiac_ground_truth` and ``affine``.
        ``description``: str.  All paths are ``str``.

    Notes
    -----
    X is ``fiac_design_matrix(events, n_scans, t_r)``: nilearn's
    ``make_first_level_design_matrix(np.arange(n_scans) * t_r, events,
    hrf_model="spm", drift_model="polynomial", drift_order=7)`` with columns
    reordered to ``SStSSp, SStDSp, DStSSp, DStDSp, FirstSt, drift_1..7,
    constant``.  A model fitted from the events TSV reproduces X exactly
    only with those same design parameters and frame times.  The simulated
    signal is ``baseline * (1 + truth.activation @ X[t, :5])``.
    """
    shape = check_tuple("shape", shape, 3, "int")
    n_scans, t_r = check_timing(n_scans, t_r)
    n_runs = check_int("n_runs", n_runs, 1)
    compresslevel = check_int("compresslevel", compresslevel, 1)
    if compresslevel > 9:
        raise ValueError(f"compresslevel must be in 1..9, got {compresslevel!r}")
    vs = check_tuple("voxel_size", voxel_size, 3, "float")
    if min(vs) <= 0:
        raise ValueError(f"voxel_size entries must be positive, got {voxel_size!r}")
    smoothing = check_float("noise_smoothing", noise_smoothing)
    drift_size = check_float("drift_size", drift_size)
    truth = fiac_ground_truth(shape, seed, effect_size, ar_rho, noise_sd)  # validates these

    params = {
        "generator_version": GENERATOR_VERSION, "shape": list(shape), "n_scans": n_scans,
        "t_r": t_r, "n_runs": n_runs, "seed": int(seed), "compress": bool(compress),
        "compresslevel": compresslevel if compress else None, "voxel_size": list(vs),
        "ar_rho": [float(r) for r in ar_rho], "noise_sd": float(noise_sd),
        "effect_size": float(effect_size), "drift_size": drift_size,
        "noise_smoothing": smoothing, "design": DESIGN_PARAMS,
    }
    stem = f"fiac_{'x'.join(map(str, shape))}_{n_scans}_seed{seed}_{'gz' if compress else 'nii'}"
    folder, text = parameters_folder(data_root(data_dir), stem, params)
    paths: dict[str, Path] = {}
    for r in range(1, n_runs + 1):
        paths[f"func{r}"] = folder / f"run{r}.{'nii.gz' if compress else 'nii'}"
        paths[f"design_matrix{r}"] = folder / f"run{r}_design.npz"
        paths[f"events{r}"] = folder / f"run{r}_events.tsv"
    paths["mask"], paths["truth"] = folder / "mask.nii.gz", folder / "truth.npz"
    result = Bunch(**{k: str(p) for k, p in paths.items()}, description=_description(params))

    marker = folder / _MARKER
    if not overwrite and is_complete(marker, text, paths.values()):
        if verbose:
            print(f"[simulate_fiac] using cached data in {folder}")
        return result

    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    affine = np.diag([*vs, 1.0])
    affine[:3, 3] = -np.asarray(vs) * (np.asarray(shape) - 1) / 2
    write_nifti(paths["mask"], nifti_header(shape, np.uint8, affine), [truth.mask],
                 compresslevel)
    write_npz(paths["truth"], {**truth, "affine": affine})
    for r in range(1, n_runs + 1):
        if verbose:
            print(f"[simulate_fiac] run {r}/{n_runs} -> {paths[f'func{r}']}")
        events = fiac_events(n_scans, t_r, seed, r)
        design = fiac_design_matrix(events, n_scans, t_r)
        write_text(paths[f"events{r}"], events.to_csv(sep="\t", index=False))
        write_npz(paths[f"design_matrix{r}"], {
            "X": design.to_numpy(np.float64),
            "conditions": np.array([c.encode() for c in design.columns]),
        })
        volumes = run_volumes(truth, design[list(CONDITIONS)].to_numpy(), seed, r,
                               smoothing, drift_size)
        write_nifti(paths[f"func{r}"], nifti_header(shape + (n_scans,), np.int16, affine, t_r),
                     volumes, compresslevel if compress else None)
    write_text(marker, text)  # last: marks the folder complete
    return result


def _description(p: dict[str, Any]) -> str:
    return (
        "Simulated FIAC-like data (daskglm), after nilearn's fetch_fiac_first_level (FIAC "
        "experiment 2, Dehaene-Lambertz et al. 2006): Sentence (same SSt / different DSt) x "
        "Speaker (same SSp / different DSp) block design plus FirstSt (first sentence of each "
        f"block). {p['n_runs']} run(s) of {p['n_scans']} volumes of {p['shape']} voxels, TR "
        f"{p['t_r']} s, seed {p['seed']}. Data = baseline * (1 + activation @ X[:, :5] + "
        "drift) + AR(1) noise, int16; ground truth in 'truth'. See simulate_fiac."
    )

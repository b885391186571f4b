"""fMRIPrep-style confounds of the simulated BIDS runs (:mod:`daskglm.datasets.bids_sim`).

Stand-in tissue regions (:func:`tissue_regions`), the per-volume signals taken as the
volumes stream to disk (:func:`watch_signals`), and the confounds table of a run with
its simulated motion traces (:func:`confounds_table`): the columns that nilearn's
``load_confounds`` strategies read. Pure numpy/pandas, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy import ndimage

from .params import stream_rng

__all__ = ["CONFOUNDS_DOC", "confounds_table", "tissue_regions", "watch_signals"]

# RNG stream of the motion traces, beyond simulate_fiac's (0-3) and the subject draws (10).
_STREAM_MOTION = 11
_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def tissue_regions(mask: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for fMRIPrep's CSF and white-matter masks.

    ``csf``: the outer shell of the brain mask; ``white_matter``: the deep
    interior outside the activation support (each falls back to a larger
    region when the volume is too small to have one).

    Returns
    -------
    csf, white_matter : ndarray of bool, shape mask.shape
    """
    brain = mask.astype(bool)
    csf = brain & ~ndimage.binary_erosion(brain)
    if not csf.any():
        csf = brain
    depth = max(1, min(mask.shape) // 8)
    for iterations in (depth, 1, 0):
        core = ndimage.binary_erosion(brain, iterations=iterations) if iterations else brain
        wm = core & ~support
        if wm.any():
            return csf, wm
    return csf, brain


def watch_signals(volumes: Iterator[np.ndarray], mask: np.ndarray, csf: np.ndarray, wm: np.ndarray,
           out: list[tuple[float, float, float, float]]) -> Iterator[np.ndarray]:
    """Pass volumes through, appending the confound signals of each to ``out``.

    Parameters
    ----------
    volumes : iterator of ndarray, each of shape (x, y, z)
    mask, csf, wm : ndarray of bool, shape (x, y, z)
        Brain and stand-in tissue regions (``csf``, ``wm`` inside ``mask``).
    out : list
        Receives ``(global mean, csf mean, white-matter mean, DVARS)`` per
        volume; DVARS (RMS over the brain of the change from the previous
        volume) is NaN for the first.

    Yields
    ------
    ndarray, shape (x, y, z)
        The volumes, unchanged.
    """
    brain = mask.astype(bool)
    csf_in, wm_in = csf[brain], wm[brain]
    previous = None
    for vol in volumes:
        values = vol[brain].astype(np.float64)
        dvars = np.nan if previous is None else float(np.sqrt(np.mean((values - previous) ** 2)))
        out.append((float(values.mean()), float(values[csf_in].mean()), float(values[wm_in].mean()),
                    dvars))
        previous = values
        yield vol


def confounds_table(signals: list[tuple[float, float, float, float]], sub_seed: int, run: int,
               motion_size: float) -> pd.DataFrame:
    """fMRIPrep-style confounds of one run.

    Parameters
    ----------
    signals : list of (float, float, float, float), length n_scans
        Per-volume global, CSF, white-matter means and DVARS, from :func:`watch_signals`.
    sub_seed, run : int
        Seed of the subject and 1-based run index (seed the motion traces).
    motion_size : float
        SD of the translation steps (mm).

    Returns
    -------
    confounds : pandas.DataFrame, shape (n_scans, 29)
        ``global_signal, csf, white_matter`` (means of the simulated data over
        the brain and the two stand-in regions), ``std_dvars`` (DVARS over its
        median), ``framewise_displacement`` (Power et al.: summed absolute
        translation steps plus 50 mm times rotation steps), and the 6 motion
        parameters with their ``_derivative1``, ``_power2`` and
        ``_derivative1_power2`` expansions. Derivative-like columns are NaN in
        the first row, as in fMRIPrep. The motion traces are random walks
        (translation step SD ``motion_size`` mm, rotation ``motion_size / 50``
        rad) that the simulated data do not contain.
    """

    values = np.asarray(signals, dtype=np.float64)
    n_scans = len(values)
    rng = stream_rng(sub_seed, _STREAM_MOTION, run)
    steps = rng.standard_normal((n_scans, 6)) * np.repeat([motion_size, motion_size / 50], 3)
    steps[0] = 0.0
    motion = np.cumsum(steps, axis=0)
    diff = np.vstack([np.full((1, 6), np.nan), np.diff(motion, axis=0)])
    fd = np.abs(diff[:, :3]).sum(axis=1) + 50 * np.abs(diff[:, 3:]).sum(axis=1)
    dvars = values[:, 3]
    columns: dict[str, np.ndarray] = {
        "global_signal": values[:, 0], "csf": values[:, 1], "white_matter": values[:, 2],
        "std_dvars": dvars / np.nanmedian(dvars) if n_scans > 1 else dvars,
        "framewise_displacement": fd,
    }
    for k, name in enumerate(_MOTION):
        columns[name] = motion[:, k]
        columns[f"{name}_derivative1"] = diff[:, k]
        columns[f"{name}_power2"] = motion[:, k] ** 2
        columns[f"{name}_derivative1_power2"] = diff[:, k] ** 2
    return pd.DataFrame(columns)


CONFOUNDS_DOC = {
    "global_signal": "Mean of the run over the brain mask.",
    "csf": "Mean over the outer shell of the brain mask (a stand-in for CSF).",
    "white_matter": "Mean over the deep brain outside the activations (a stand-in for white matter).",
    "std_dvars": "DVARS (RMS over the brain of the volume-to-volume change) divided by its median.",
    "framewise_displacement": "Power et al. FD from the simulated motion traces (50 mm head radius).",
    **{name: "Simulated motion trace (random walk; not applied to the data), mm or rad."
       for name in _MOTION},
}

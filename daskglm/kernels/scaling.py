"""nilearn's percent-signal-change scaling of a voxel block (``signal_scaling``, ``mean_scaling``).

Every fit kernel (:mod:`daskglm.kernels.regression`, :mod:`daskglm.kernels.voxelwise`) starts
with :func:`scale_signal`. A per-voxel mean needs only the block; a grand mean
of the whole run is reduced over blocks first (a float64 dask sum, in
:mod:`daskglm.glm.fit`) and passed in as ``mean``.
Pure numpy, no I/O.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["ScalingMode", "scale_signal", "scaling_mean", "scaled_rows"]

#: ``signal_scaling`` as nilearn takes it: 0 (per voxel), (0, 1) (grand mean) or False.
ScalingMode = bool | int | tuple[int, int]

_ZERO_MEAN_WARNING = (
    "Mean values of 0 observed. The data have probably been centered. Scaling might not work as expected."
)


def scaling_mean(
    Y: np.ndarray, mode: ScalingMode = 0, mean: float | np.ndarray | None = None
) -> np.ndarray | None:
    """The floored mean :func:`scale_signal` divides ``Y`` by (None for mode False).

    Parameters and exceptions as :func:`scale_signal`.

    Returns
    -------
    ndarray, shape (v,) or (), of float32 for float32 ``Y`` (float64 otherwise), or None
    """
    if mode is False:
        return None
    if isinstance(mode, list):
        mode = tuple(mode)
    if mode == 0 and not isinstance(mode, tuple):
        axis: int | None = 0
    elif mode == (0, 1):
        axis = None
    else:
        raise ValueError(
            f"signal_scaling must be 0, (0, 1) or False; got {mode!r} (mode 1, a per-scan mean "
            "over voxels, fails in nilearn 0.14 with a broadcasting error)"
        )
    Y = np.asarray(Y)
    dtype = _dtype(Y)
    if mean is None:
        mean = Y.mean(axis=axis, dtype=dtype)
    mean = np.asarray(mean, dtype=dtype)
    if axis is None and mean.ndim != 0:
        raise ValueError(f"a grand mean must be a scalar; got an array of shape {mean.shape}")
    if axis == 0 and mean.shape not in ((), (np.shape(Y)[1],)):
        raise ValueError(f"mean must have shape ({np.shape(Y)[1]},); got {mean.shape}")
    if np.any(mean == 0):
        warnings.warn(_ZERO_MEAN_WARNING, UserWarning, stacklevel=3)
    return np.maximum(mean, dtype(1.0))


def _dtype(Y: np.ndarray) -> type:
    """The scaling's arithmetic type: float32 for float32 data (as nilearn), float64 otherwise."""
    return np.float32 if Y.dtype == np.float32 else np.float64


def _scaled(Y: np.ndarray, mean: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``100 * (Y / mean - 1)`` in the scaling's arithmetic type, into ``out`` if given."""
    dtype = _dtype(Y)
    out = np.divide(Y, mean, dtype=dtype, out=out)
    out -= dtype(1.0)
    out *= dtype(100.0)
    return out


def scaled_rows(Y: np.ndarray, mean: np.ndarray | None, start: int, stop: int, out: np.ndarray) -> None:
    """Rows ``start:stop`` of ``scale_signal(Y, mode, mean)[0]`` as float64, into ``out``.

    The same values as the whole block's scaling, computed a few rows at a time
    so that a caller streaming over rows never holds the whole scaled block.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
    mean : ndarray or None
        From :func:`scaling_mean` (None: no scaling).
    start, stop : int
    out : ndarray of float64, shape (stop - start, v)
    """
    rows = Y[start:stop]
    if mean is None:
        out[...] = rows
    elif _dtype(Y) is np.float64:
        _scaled(rows, mean, out=out)
    else:
        out[...] = _scaled(rows, mean)


def scale_signal(
    Y: np.ndarray, mode: ScalingMode = 0, mean: float | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | float | None]:
    """Percent-signal-change scaling (nilearn ``signal_scaling`` / ``mean_scaling``).

    ``Y = 100 * (Y / max(mean, 1) - 1)``; means below 1 (including 0 and
    negative means) are replaced by 1, and an exact 0 mean warns, as nilearn.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
    mode : {0, (0, 1), False}
        0: per-voxel mean over time. (0, 1): grand mean of the whole run (pass
        the run's value as ``mean`` when ``Y`` is one block). False: no scaling. Mode 1 (per-scan mean over
        voxels) is rejected: nilearn 0.14 cannot broadcast it either.
    mean : float or ndarray, shape (v,), optional
        Precomputed mean (before the floor at 1); default: computed from ``Y``.

    Returns
    -------
    Y_scaled : ndarray, shape (n, v)
        float32 for float32 input (nilearn scales the masker's float32 output
        in float32, and matching its rounding is what makes the statistics
        agree to ~1e-7), float64 otherwise. Fits cast it to float64.
    mean : ndarray (v,), float or None
        The floored mean used (None for mode False).
    """
    floored = scaling_mean(Y, mode, mean)
    if floored is None:
        return np.asarray(Y, dtype=np.float64), None
    out = _scaled(np.asarray(Y), floored)
    return out, (float(floored) if floored.ndim == 0 else floored)

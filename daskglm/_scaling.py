"""nilearn's signal scaling of a voxel block: ``signal_scaling`` (``mean_scaling``) and the
masker's ``standardize`` (``nilearn.signal.standardize_signal``).

Every fit kernel (:mod:`daskglm._kernels`, :mod:`daskglm._voxelwise`) starts
with :func:`scale_signal`, or streams the same rows from :func:`scaled_rows`
with the per-voxel parameters of :func:`row_parameters`. A per-voxel mean,
standard deviation or percent-signal-change base needs only the block (a
block holds every scan of its voxels); a grand mean of the whole run is
reduced over blocks from :func:`grand_mean_parts` first. Pure numpy, no I/O.

``standardize`` is what nilearn's masker applies before the GLM when
``FirstLevelModel(signal_scaling=False)`` (its ``standardize_``; nilearn
0.14.1 sets it to None whatever the arguments, since ``False in [0, 1, (0,
1)]`` holds). nilearn 0.14 accepts ``"zscore_sample"``, ``"psc"``, ``True``
(``"zscore_sample"``, with a FutureWarning), ``False`` (None, with a
FutureWarning) and None; ``"zscore"`` is refused as by nilearn. The
statistics are computed in the data's float type and in numpy's order (each
column summed over the rows in sequence, as numpy reduces a C-ordered
``(n_scans, n_voxels)`` matrix along its first axis), so that the
standardized values equal nilearn's bit for bit.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["ScalingMode", "StandardizeMode", "Standardization", "ONE_SCAN_WARNING", "check_scaling_options",
           "check_standardize", "grand_mean_parts", "row_parameters", "scale_signal", "scaling_mean",
           "scaled_rows", "select_columns", "standardization"]

#: ``signal_scaling`` as nilearn takes it: 0 (per voxel), (0, 1) (grand mean) or False.
ScalingMode = bool | int | tuple[int, int]
#: ``standardize`` as nilearn 0.14's ``signal.clean`` takes it.
StandardizeMode = str | bool | None

_STANDARDIZE_VALUES = ("zscore_sample", "psc", True, False, None)
_BOOLEAN_WARNING = ("boolean values for 'standardize' will be deprecated in nilearn 0.15.0.\n"
                    "Use 'zscore_sample' instead of 'True' or use 'None' instead of 'False'.")
#: nilearn's warning when a single scan is to be standardized (it is left as is).
ONE_SCAN_WARNING = ("Standardization of 3D signal has been requested but would lead to zero values. "
                    "Skipping.")
_PSC_ZERO_WARNING = ("psc standardization strategy is meaningless for features that have a mean of 0. "
                     "These time series are set to 0.")
#: Rows per step of the streamed column sums (a step of a block's columns stays in cache).
SUM_ROWS = 128

_ZERO_MEAN_WARNING = (
    "Mean values of 0 observed. The data have probably been centered. Scaling might not work as expected."
)


def grand_mean_parts(Y: np.ndarray) -> tuple[float, int]:
    """Sum and count of a block, to reduce a grand mean over blocks.

    Parameters
    ----------
    Y : ndarray, shape (n, v)

    Returns
    -------
    total : float
        Float64 sum of all values.
    count : int
        ``n * v``. The grand mean is ``sum(totals) / sum(counts)``.
    """
    Y = np.asarray(Y)
    return float(Y.sum(dtype=np.float64)), int(Y.size)


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


def scaled_rows(Y: np.ndarray, mean: np.ndarray | Standardization | None, start: int, stop: int,
                out: np.ndarray) -> None:
    """Rows ``start:stop`` of ``scale_signal(Y, ...)[0]`` as float64, into ``out``.

    The same values as the whole block's scaling, computed a few rows at a time
    so that a caller streaming over rows never holds the whole scaled block.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
    mean : ndarray, Standardization or None
        From :func:`scaling_mean` (mean scaling), :func:`standardization`
        (``standardize``), or None (no scaling); :func:`row_parameters`
        gives the right one.
    start, stop : int
    out : ndarray of float64, shape (stop - start, v)
    """
    rows = Y[start:stop]
    if mean is None:
        out[...] = rows
    elif isinstance(mean, Standardization):
        out[...] = _standardized(rows, mean)
    elif _dtype(Y) is np.float64:
        _scaled(rows, mean, out=out)
    else:
        out[...] = _scaled(rows, mean)


class Standardization(NamedTuple):
    """Per-voxel parameters of nilearn's ``standardize_signal`` for a block.

    Attributes
    ----------
    kind : {"zscore_sample", "psc"}
    center : ndarray, shape (v,)
        The voxel's mean over the scans, in the data's float type.
    divisor : ndarray, shape (v,)
        ``zscore_sample``: the standard deviation (ddof=1) of the centred
        signal, 1 where below float64's eps; ``psc``: ``|center|``.
    zero : ndarray of bool, shape (v,)
        Voxels set to 0 (``psc`` with ``|center| < eps``); all False for
        ``zscore_sample``.

    The standardized rows are ``(Y - center) / divisor`` (``zscore_sample``)
    or ``100 * (Y - center) / divisor`` with the ``zero`` voxels set to 0
    (``psc``), in the data's float type.
    """

    kind: str
    center: np.ndarray
    divisor: np.ndarray
    zero: np.ndarray


def check_standardize(standardize: StandardizeMode) -> str | None:
    """nilearn 0.14's ``standardize`` normalised: ``"zscore_sample"``, ``"psc"`` or None.

    ``True`` is ``"zscore_sample"`` and ``False`` is None, each with nilearn's
    FutureWarning (as ``nilearn.signal.clean`` gives it).

    Raises
    ------
    ValueError
        Anything else, ``"zscore"`` included (nilearn 0.14 refuses it), with
        nilearn's message.
    """
    if isinstance(standardize, (bool, np.bool_)):
        warnings.warn(_BOOLEAN_WARNING, FutureWarning, stacklevel=3)
        return "zscore_sample" if standardize else None
    if standardize is None:
        return None
    if isinstance(standardize, str) and standardize in ("zscore_sample", "psc"):
        return standardize
    raise ValueError(f"'standardize' must be one of {_STANDARDIZE_VALUES}.\n{standardize!r} was provided.")


def _column_sums(n: int, v: int, dtype: type, fill, step: int = SUM_ROWS) -> np.ndarray:
    """Column sums of a block given by row steps, in numpy's order for a C-ordered block.

    ``fill(start, stop, out)`` writes rows ``start:stop`` of the block into
    ``out``, shape (stop - start, v), of ``dtype``. numpy sums a C-ordered
    ``(n, v)`` array along axis 0 one row after the other (``((r0 + r1) + r2)
    + ...``, for v > 1): each step is summed below the running total, which
    adds in that same order, so the sums are nilearn's bit for bit whatever
    the step and the block width (one column, which numpy would sum pairwise,
    is summed in sequence too).
    """
    buffer = np.empty((min(step, n) + 1, v), dtype)
    total = np.zeros(v, dtype)
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = buffer[: stop - start + 1]
        fill(start, stop, rows[1:])
        if start:
            rows[0] = total
            if v > 1:
                np.add.reduce(rows, axis=0, out=total)
            else:
                total[...] = np.cumsum(rows, axis=0)[-1]
        elif v > 1:
            np.add.reduce(rows[1:], axis=0, out=total)
        else:
            total[...] = np.cumsum(rows[1:], axis=0)[-1]
    return total


def _divide_by_count(total: np.ndarray, count: int) -> np.ndarray:
    """``total / count`` as numpy's mean and var divide a reduction (in place, by an intp)."""
    return np.true_divide(total, np.intp(count), out=total, casting="unsafe")


def standardization(Y: np.ndarray, standardize: StandardizeMode) -> Standardization | None:
    """The per-voxel parameters of nilearn's ``standardize_signal(Y, standardize=...)``.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Every scan of the block's voxels.
    standardize : {"zscore_sample", "psc", True, False, None}
        See :func:`check_standardize`.

    Returns
    -------
    Standardization or None
        None when nothing is done: ``standardize`` None or False, or a single
        scan (nilearn then warns and skips).

    ``zscore_sample`` takes three passes over the block, in row steps (the
    mean; the mean of the centred signal, which numpy's ``std`` subtracts
    again; the squared deviations), ``psc`` one; nothing of the block's size
    is allocated. A ``psc`` voxel of mean 0 warns as nilearn (per block).
    """
    kind = check_standardize(standardize)
    if kind is None:
        return None
    Y = np.asarray(Y)
    n, v = Y.shape
    if n == 1:
        warnings.warn(ONE_SCAN_WARNING, UserWarning, stacklevel=2)
        return None
    dtype = _dtype(Y)
    eps = np.finfo(np.float64).eps

    def copy(a: int, b: int, out: np.ndarray) -> None:
        out[...] = Y[a:b]

    center = _divide_by_count(_column_sums(n, v, dtype, copy), n) if n else np.zeros(v, dtype)
    if kind == "psc":
        zero = np.abs(center) < eps
        if zero.any():
            warnings.warn(_PSC_ZERO_WARNING, UserWarning, stacklevel=2)
        return Standardization(kind, center, np.abs(center), zero)

    def centred(a: int, b: int, out: np.ndarray) -> None:
        np.subtract(Y[a:b], center, out=out, dtype=dtype)

    # numpy's std(ddof=1) of the centred signal: it subtracts that signal's own mean again
    offset = _divide_by_count(_column_sums(n, v, dtype, centred), n)

    def squares(a: int, b: int, out: np.ndarray) -> None:
        centred(a, b, out)
        out -= offset
        np.square(out, out=out)

    std = np.sqrt(_divide_by_count(_column_sums(n, v, dtype, squares), n - 1))
    std[std < eps] = 1.0
    return Standardization(kind, center, std, np.zeros(v, bool))


def _standardized(rows: np.ndarray, params: Standardization) -> np.ndarray:
    """Rows standardized as nilearn's ``standardize_signal``, in the parameters' float type."""
    out = np.subtract(rows, params.center, dtype=params.center.dtype)
    if params.kind == "zscore_sample":
        out /= params.divisor
        return out
    with np.errstate(divide="ignore", invalid="ignore"):  # zero-mean voxels: set to 0 below
        out /= params.divisor
    out *= params.center.dtype.type(100)
    out[:, params.zero] = 0
    return out


def row_parameters(
    Y: np.ndarray, mode: ScalingMode = 0, mean: float | np.ndarray | None = None,
    standardize: StandardizeMode = None,
) -> np.ndarray | Standardization | None:
    """What :func:`scaled_rows` needs to give the rows of ``scale_signal(Y, mode, mean, standardize)``.

    Parameters and exceptions as :func:`scale_signal`.

    Returns
    -------
    ndarray, Standardization or None
        :func:`standardization` when ``standardize`` is set, else
        :func:`scaling_mean` (None for mode False).
    """
    kind = check_standardize(standardize)
    if kind is None:
        return scaling_mean(Y, mode, mean)
    check_scaling_options(mode, kind)
    return standardization(Y, kind)


def check_scaling_options(mode: ScalingMode, standardize: str | None) -> None:
    """Refuse ``standardize`` with a signal scaling.

    Parameters
    ----------
    mode : {0, (0, 1), False}
    standardize : {"zscore_sample", "psc", None}
        As :func:`check_standardize` gives it.

    Raises
    ------
    ValueError
        ``standardize`` set and ``mode`` not False: nilearn's
        ``FirstLevelModel`` standardizes only without signal scaling (its
        ``standardize_`` is None otherwise).
    """
    if standardize is not None and not (mode is False or mode is None):
        raise ValueError(
            f"standardize={standardize!r} needs signal_scaling=False; got signal_scaling={mode!r} (nilearn's "
            "FirstLevelModel standardizes only without signal scaling: standardize_ is None otherwise)"
        )


def select_columns(params: np.ndarray | Standardization | None, columns: np.ndarray
                   ) -> np.ndarray | Standardization | None:
    """The :func:`row_parameters` of a block's columns ``columns`` (index array).

    Parameters
    ----------
    params : ndarray of shape (v,) or (), Standardization, or None
    columns : ndarray of int, shape (k,)

    Returns
    -------
    The same kind of parameters, for ``Y[:, columns]``.
    """
    if params is None or (not isinstance(params, Standardization) and np.ndim(params) == 0):
        return params  # no scaling, or a grand mean
    if isinstance(params, Standardization):
        return Standardization(params.kind, params.center[columns], params.divisor[columns], params.zero[columns])
    return params[columns]


def scale_signal(
    Y: np.ndarray, mode: ScalingMode = 0, mean: float | np.ndarray | None = None,
    standardize: StandardizeMode = None,
) -> tuple[np.ndarray, np.ndarray | float | None]:
    """Percent-signal-change scaling (nilearn ``signal_scaling`` / ``mean_scaling``), or nilearn's
    masker ``standardize``.

    ``Y = 100 * (Y / max(mean, 1) - 1)``; means below 1 (including 0 and
    negative means) are replaced by 1, and an exact 0 mean warns, as nilearn.
    With ``standardize`` (and ``mode`` False), nilearn's
    ``signal.standardize_signal`` instead (see :func:`standardization`).

    Parameters
    ----------
    Y : ndarray, shape (n, v)
    mode : {0, (0, 1), False}
        0: per-voxel mean over time. (0, 1): grand mean of the whole run (pass
        the global value as ``mean`` when ``Y`` is one block; see
        `grand_mean_parts`). False: no scaling. Mode 1 (per-scan mean over
        voxels) is rejected: nilearn 0.14 cannot broadcast it either.
    mean : float or ndarray, shape (v,), optional
        Precomputed mean (before the floor at 1); default: computed from ``Y``.
    standardize : {"zscore_sample", "psc", True, False, None}, default None
        nilearn's masker standardization (see :func:`check_standardize`);
        needs ``mode`` False (ValueError otherwise).

    Returns
    -------
    Y_scaled : ndarray, shape (n, v)
        float32 for float32 input (nilearn scales the masker's float32 output
        in float32, and matching its rounding is what makes the statistics
        agree to ~1e-7), float64 otherwise. Fits cast it to float64.
    mean : ndarray (v,), float or None
        The floored mean used (None for mode False and with ``standardize``).
    """
    kind = check_standardize(standardize)
    if kind is not None:
        params = row_parameters(Y, mode, mean, kind)
        if params is None:  # a single scan: nothing done, as nilearn
            return np.asarray(Y, dtype=np.float64), None
        return _standardized(np.asarray(Y), params), None
    floored = scaling_mean(Y, mode, mean)
    if floored is None:
        return np.asarray(Y, dtype=np.float64), None
    out = _scaled(np.asarray(Y), floored)
    return out, (float(floored) if floored.ndim == 0 else floored)

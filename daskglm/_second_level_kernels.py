"""Numpy kernels of the second-level (group) GLM on one voxel block.

A block is ``Y (n, v)``: one row per effect map (subject), one column per
voxel. nilearn 0.14's ``SecondLevelModel`` fits OLS (``run_glm(...,
noise_model="ols")``) with no signal scaling and a single noise label, then
computes t or F contrasts; these functions do the same with daskglm's kernels
(:func:`daskglm._kernels.ols`, :func:`daskglm._stats.t_contrast` /
``f_contrast``), so the statistics are defined once.
"""

from __future__ import annotations

import numpy as np

from . import _covariances, _kernels, _stats
from ._smoothing import kernel_radius
from ._volume import fwhm_to_sigma

__all__ = ["ols_contrast", "smoothing_halo"]


def smoothing_halo(fwhm: float | None, affine: np.ndarray) -> int:
    """x-planes on each side of a slab that its smoothing depends on.

    scipy's ``gaussian_filter1d`` truncates the kernel at ``int(4 sigma + 0.5)``
    samples, so smoothing the planes ``[i0 - h, i1 + h)`` (clipped to the
    volume) gives planes ``[i0, i1)`` exactly as smoothing the whole volume.

    Parameters
    ----------
    fwhm : float, sequence of 3 floats, or None
    affine : ndarray, shape (4, 4)

    Returns
    -------
    int
        0 without smoothing.
    """
    return kernel_radius(float(fwhm_to_sigma(fwhm, affine)[0]))


def ols_contrast(
    Y: np.ndarray, X: np.ndarray, con: np.ndarray, stat_type: str, cov: np.ndarray | None = None
) -> np.ndarray:
    """OLS fit of a block and one contrast, packed.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Masked effect maps, one row per design row.
    X : ndarray, shape (n, p)
        Design matrix.
    con : ndarray, shape (p,) or (q, p)
        Contrast, already padded to p columns.
    stat_type : {"t", "F"}
    cov : ndarray, shape (p, p), optional
        ``pinv(X) pinv(X).T`` (computed here when not given).

    Returns
    -------
    ndarray, shape (q + 4, v), float64
        Rows: effect (q rows; q = 1 for t), variance, stat, p_value, z_score.
    """
    X = np.asarray(X, dtype=np.float64)
    if cov is None:
        cov = _covariances.label_covariance(X).cov
    fit = _kernels.ols(np.asarray(Y, dtype=np.float64), X)
    con = np.asarray(con, dtype=np.float64)
    if stat_type == "t":
        res = _stats.t_contrast(con.ravel(), fit.beta, fit.sigma2, cov, None, fit.dof)
    elif stat_type == "F":
        res = _stats.f_contrast(np.atleast_2d(con), fit.beta, fit.sigma2, cov, None, fit.dof)
    else:
        raise ValueError(f"stat_type must be 't' or 'F'; got {stat_type!r}")
    return np.vstack([np.atleast_2d(res.effect), res.variance, res.stat, res.p_value, res.z_score])


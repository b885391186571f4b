"""Numpy kernels of the second-level (group) GLM on one voxel block.

A block is ``Y (n, v)``: one row per effect map (subject), one column per
voxel. nilearn 0.14's ``SecondLevelModel`` fits OLS (``run_glm(...,
noise_model="ols")``) with no signal scaling and a single noise label, then
computes t or F contrasts; :func:`ols_contrasts` does the same with daskglm's
kernels (:func:`daskglm.kernels.regression.ols`, :func:`daskglm.kernels.stats.t_contrast` /
``f_contrast``), so the statistics are defined once.

The geometry helpers say which x-planes a block task must read:
:func:`smoothing_halo` (smoothing a slab of x-planes) and
:func:`source_planes` (resampling a slab of the analysis grid from the maps'
grid, nilearn's cubic-spline ``resample_img``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import covariances as _covariances
from . import regression as _regression
from . import stats as _stats
from .packing import group_contrast, group_rows, pack_contrast
from .smoothing import kernel_radius
from .volume import fwhm_to_sigma

__all__ = ["SPLINE_MARGIN", "ols_contrasts", "smoothing_halo", "source_planes"]

#: Extra source planes read on each side of a slab resampled with cubic splines. scipy's spline
#: prefilter is a recursive filter along each axis with pole sqrt(3) - 2 (|z| ~ 0.268): cutting
#: the volume ``m`` planes away from the samples used changes them by ~|z|**m of the data's scale,
#: ~2e-14 for 24 planes, so a slab gives the values of nilearn's whole-volume resampling.
SPLINE_MARGIN = 24


def smoothing_halo(fwhm: float | Sequence[float] | None, affine: np.ndarray) -> int:
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


def source_planes(transform: np.ndarray, a: int, b: int, yz: tuple[int, int], n_source: int,
                  margin: int = SPLINE_MARGIN) -> tuple[int, int]:
    """The source x-planes ``[sa, sb)`` that resampling target planes ``[a, b)`` depends on.

    Parameters
    ----------
    transform : ndarray, shape (4, 4)
        Target voxel -> source voxel (``inv(source_affine) @ target_affine``).
    a, b : int
        Target x-planes, ``a < b``.
    yz : tuple of 2 int
        The target grid's extent along y and z (the slab holds whole planes).
    n_source : int
        Source planes along x.
    margin : int
        Planes added on each side beyond the cubic spline's support (see
        :data:`SPLINE_MARGIN`).

    Returns
    -------
    tuple of 2 int
        ``0 <= sa < sb <= n_source``. When the target planes fall outside the
        source volume the range is the source planes nearest to them: their
        samples are outside the volume on the same side, as in the whole volume.
    """
    corners = np.array([[i, j, k, 1.0] for i in (a, b - 1) for j in (0, yz[0] - 1) for k in (0, yz[1] - 1)])
    x = (corners @ np.asarray(transform, dtype=np.float64).T)[:, 0]
    lo = math.floor(float(x.min())) - 1 - margin  # cubic B-spline: floor(x) - 1 ... floor(x) + 2
    hi = math.floor(float(x.max())) + 3 + margin
    sa, sb = max(0, lo), min(n_source, hi)
    if sa >= sb:  # entirely outside: the nearest planes
        sa, sb = (0, min(n_source, 1 + margin)) if hi <= 0 else (max(0, n_source - 1 - margin), n_source)
    return sa, sb


def ols_contrasts(
    Y: np.ndarray, X: np.ndarray, contrasts: Sequence[tuple[np.ndarray, str]], cov: np.ndarray | None = None
) -> np.ndarray:
    """OLS fit of a block and some contrasts, packed in one array.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Masked effect maps, one row per design row.
    X : ndarray, shape (n, p)
        Design matrix.
    contrasts : sequence of (con, stat_type)
        ``con`` of shape (p,) for ``"t"``, (q, p) for ``"F"``, already
        padded to p columns.
    cov : ndarray, shape (p, p), optional
        ``pinv(X) pinv(X).T`` (computed here when not given).

    Returns
    -------
    ndarray, shape (p + 1 + sum(q_i + 4), v), float64
        Rows as :func:`daskglm.kernels.packing.group_rows`: theta (p rows,
        ``pinv(X) Y``), the dispersion (RSS / (n - p)), then for each contrast
        its effect (q rows; q = 1 for t), variance, stat, p_value and z_score.
    """
    X = np.asarray(X, dtype=np.float64)
    if cov is None:
        cov = _covariances.label_covariance(X).cov
    fit = _regression.ols(np.asarray(Y, dtype=np.float64), X)
    packed, qs = {}, []
    for n, (con, stat_type) in enumerate(contrasts):
        con = np.asarray(con, dtype=np.float64)
        if stat_type == "t":
            res = _stats.t_contrast(con.ravel(), fit.beta, fit.sigma2, cov, None, fit.dof)
        elif stat_type == "F":
            res = _stats.f_contrast(np.atleast_2d(con), fit.beta, fit.sigma2, cov, None, fit.dof)
        else:
            raise ValueError(f"stat_type must be 't' or 'F'; got {stat_type!r}")
        packed[group_contrast(n)] = pack_contrast(res)
        qs.append(np.atleast_2d(res.effect).shape[0])
    return group_rows(X.shape[1], qs).pack(theta=fit.beta, dispersion=fit.sigma2, **packed)

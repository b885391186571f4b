"""nilearn's AR(p) pre-whitening of a block or a design (numpy and scipy only).

``ARModel.whiten`` of nilearn 0.14: ``a'_t = a_t - sum_{k<=min(t,p)} rho_k
a_{t-k}``, the first rows using only the lags they have. The exact AR fit
(:mod:`daskglm.kernels.regression`), the label covariances (:mod:`daskglm.kernels.covariances`),
the voxelwise outputs (:mod:`daskglm.kernels.voxelwise`) and the moment design's
whitened Gram matrices (:mod:`daskglm.kernels.ar1_moments`) all whiten with these.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["whiten", "whiten_inplace", "whitened_pinv"]


def whiten(A: np.ndarray, coeffs: np.ndarray | float) -> np.ndarray:
    """AR(p) pre-whitening ``a'_t = a_t - sum_{k<=min(t,p)} rho_k a_{t-k}``.

    The first rows only use the lags available (row 0 is unchanged), as
    nilearn's ``ARModel.whiten``; an order of at least ``n`` is allowed (its
    lags beyond the last row change nothing, as in nilearn).

    Parameters
    ----------
    A : ndarray, shape (n,) or (n, m)
        Data (m voxels) or design (m regressors).
    coeffs : float or ndarray, shape (order,) or (order, m)
        One coefficient vector for all columns, or one per column.

    Returns
    -------
    ndarray, same shape as A, float64
    """
    A = np.asarray(A, dtype=np.float64)
    c = np.atleast_1d(np.asarray(coeffs, dtype=np.float64))
    if c.ndim == 2 and (A.ndim != 2 or c.shape[1] != A.shape[1]):
        raise ValueError(f"per-column coeffs {c.shape} need A of shape (n, {c.shape[1]}); got {A.shape}")
    if c.ndim > 2:
        raise ValueError(f"coeffs must be (order,) or (order, m); got {c.shape}")
    out = A.copy()
    for k in range(1, min(c.shape[0], A.shape[0] - 1) + 1):  # lags beyond the first row: no row to whiten
        out[k:] -= c[k - 1] * A[:-k]
    return out


def whiten_inplace(A: np.ndarray, coeffs: np.ndarray, rows: int = 64) -> None:
    """`whiten` of ``A (n, m)`` in place with per-column ``coeffs (order, m)``.

    Rows are processed bottom-up in slabs of ``rows`` (cache-sized), each slab
    reading only rows above it that are still unmodified, so no array of
    ``A``'s size is allocated.
    """
    n = A.shape[0]
    order = coeffs.shape[0]
    for hi in range(n, order, -rows):
        lo = max(hi - rows, order)
        lagged = coeffs[0] * A[lo - 1:hi - 1]
        for k in range(2, order + 1):
            lagged += coeffs[k - 1] * A[lo - k:hi - k]
        A[lo:hi] -= lagged
    for t in range(min(order, n) - 1, 0, -1):  # the first rows use the lags they have
        A[t] -= sum(coeffs[k - 1] * A[t - k] for k in range(1, t + 1))


def whitened_pinv(X: np.ndarray, coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whitened design and its pseudo-inverse (scipy's default cutoff, as nilearn).

    Also the definition of :func:`daskglm.kernels.covariances.label_covariance`.
    """
    wx = whiten(X, coeffs) if np.size(coeffs) else np.asarray(X, dtype=np.float64)
    return wx, scipy.linalg.pinv(wx)

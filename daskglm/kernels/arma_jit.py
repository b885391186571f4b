"""The compiled loops of :mod:`daskglm.kernels.arma` (numba; imported on first use).

See :mod:`daskglm.kernels.arma` for what is computed. Functions are module-level
so that numba caches them on disk.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["whiten_columns", "lag_sums"]

_njit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@_njit
def whiten_columns(A, a, m, scale, label, out):  # pragma: no cover - compiled
    """``out[:, c]`` = ARMA(1,1) whitening of ``A[:, c]`` with the parameters of label ``label[c]``.

    ``z_t = A_t - a A_{t-1}`` (``z_0 = A_0``), ``x_t = z_t - m_t x_{t-1}``, ``out_t = x_t scale_t``
    with ``a (L,)``, ``m (n, L)`` and ``scale (n, L)`` the tables of
    :func:`daskglm.kernels.arma.factor`. Rows outer, columns inner: both arrays are C-ordered.
    """
    n, c = A.shape
    x = np.zeros(c)
    for j in range(c):
        x[j] = A[0, j]
        out[0, j] = x[j] * scale[0, label[j]]
    for t in range(1, n):
        for j in range(c):
            lab = label[j]
            x[j] = A[t, j] - a[lab] * A[t - 1, j] - m[t, lab] * x[j]
            out[t, j] = x[j] * scale[t, lab]


@_njit
def lag_sums(E, n_lags, out):  # pragma: no cover - compiled
    """``out[k, v] = sum_t E[t, v] E[t + k, v]`` for ``k = 0 .. n_lags``, ``E (n, v)`` C-ordered.

    Columns in blocks of 256 so that the ``n_lags + 1`` rows read and the sums
    updated stay in cache.
    """
    n, v = E.shape
    out[:, :] = 0.0
    for lo in range(0, v, 256):
        hi = min(lo + 256, v)
        for t in range(n):
            for k in range(min(n_lags, n - 1 - t) + 1):
                for j in range(lo, hi):
                    out[k, j] += E[t, j] * E[t + k, j]

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
    with ``a (L,)``, ``m (T, L)`` and ``scale (T, L)`` the tables of
    :func:`daskglm.kernels.arma.factor` (row ``T - 1`` for every later scan). Rows outer, columns
    inner: both arrays are C-ordered.
    ``out`` may be ``A`` (in place: each column's previous input value is kept aside).
    """
    n, c = A.shape
    last = m.shape[0] - 1
    x = np.zeros(c)
    previous = np.empty(c)
    for j in range(c):
        previous[j] = A[0, j]
        x[j] = A[0, j]
        out[0, j] = x[j] * scale[0, label[j]]
    for t in range(1, n):
        row = min(t, last)
        for j in range(c):
            lab = label[j]
            value = A[t, j]
            x[j] = value - a[lab] * previous[j] - m[row, lab] * x[j]
            previous[j] = value
            out[t, j] = x[j] * scale[row, lab]


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def lag_sums(E, n_lags, out):  # pragma: no cover - compiled
    """``out[k, v] = sum_t E[t, v] E[t + k, v]`` for ``k = 0 .. n_lags``, ``E (n, v)`` C-ordered.

    32 columns at a time are copied into rows of a buffer, so that each sum is a dot product of
    two contiguous vectors, which ``fastmath`` lets numba vectorise (a column's sums do not depend
    on the other columns: the result is the same whatever the block).
    """
    n, v = E.shape
    buffer = np.empty((32, n))
    for lo in range(0, v, 32):
        width = min(lo + 32, v) - lo
        for t in range(n):
            for j in range(width):
                buffer[j, t] = E[t, lo + j]
        for j in range(width):
            series = buffer[j]
            for k in range(n_lags + 1):
                total = 0.0
                for t in range(n - k):
                    total += series[t] * series[t + k]
                out[k, lo + j] = total

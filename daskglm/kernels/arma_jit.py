"""The compiled loops of :mod:`daskglm.kernels.arma` (numba; imported on first use).

See :mod:`daskglm.kernels.arma` for what is computed. Functions are module-level
so that numba caches them on disk.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["whiten_gathered", "lag_sums"]

_njit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@_njit
def whiten_gathered(A, cols, mean, one, hundred, a, m, scale, out):  # pragma: no cover - compiled
    """``out[:, j]`` = ARMA(1,1) whitening, with one label's parameters, of column ``cols[j]`` of ``A``.

    The column is first scaled as :func:`daskglm.kernels.scaling.scale_signal` does,
    ``(A / mean[j] - one) * hundred`` in the type of ``mean`` (float32 for float32 data),
    unless ``mean`` is empty (no scaling). Then ``z_t = y_t - a y_{t-1}`` (``z_0 = y_0``),
    ``x_t = z_t - m_t x_{t-1}``, ``out_t = x_t scale_t`` with ``m (T,)`` and ``scale (T,)``
    the label's columns of :func:`daskglm.kernels.arma.factor` (row ``T - 1`` for every
    later scan). Rows outer, columns inner: ``A`` and ``out`` (float64, ``(n, len(cols))``)
    are C-ordered. Reading the columns here (not first copying them out) and scaling
    them on the way is one pass over the block instead of three.
    """
    n = A.shape[0]
    c = cols.size
    last = m.shape[0] - 1
    scaled = mean.size > 0
    x = np.zeros(c)
    previous = np.empty(c)
    for t in range(n):
        row = min(t, last)
        for j in range(c):
            if scaled:
                value = (A[t, cols[j]] / mean[j] - one) * hundred
            else:
                value = A[t, cols[j]]
            if t == 0:
                x[j] = value
            else:
                x[j] = value - a * previous[j] - m[row] * x[j]
            previous[j] = value
            out[t, j] = x[j] * scale[row]


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

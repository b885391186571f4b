"""The compiled loops of :mod:`daskglm.kernels.smoothing` (numba; imported on first use).

See :mod:`daskglm.kernels.smoothing` for what is computed and why each value equals
scipy's. Functions are module-level so that numba caches them on disk.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["smooth_volumes"]

_njit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@_njit
def _reflect(i, n):  # pragma: no cover - compiled
    """scipy's ``mode="reflect"`` index (d c b a | a b c d | d c b a): periodic with period
    ``2 n``, so one floor modulo (numba keeps Python's sign rule) whatever ``|i|`` is, where
    reflecting once per period cost O(radius / n) for kernels longer than the line."""
    i = i % (2 * n)
    if i >= n:
        i = 2 * n - 1 - i
    return i


# Offsets are unsigned so that numba emits no negative-index wraparound, which
# keeps these loops vectorised.
@_njit
def _start(acc, src, i, w, n):  # pragma: no cover - compiled
    i = np.uint64(i)
    for x in range(np.uint64(n)):
        acc[x] = np.float64(src[i + x]) * w


@_njit
def _add(acc, src, a, b, w, n):  # pragma: no cover - compiled
    a, b = np.uint64(a), np.uint64(b)
    for x in range(np.uint64(n)):
        acc[x] += (np.float64(src[a + x]) + np.float64(src[b + x])) * w


@_njit
def _load(line, i, row, n):  # pragma: no cover - compiled
    """line[i:i+n] = row as float32, non-finite values as 0 (nilearn's cast, then its fix)."""
    i = np.uint64(i)
    for x in range(np.uint64(n)):
        value = np.float32(row[x])
        line[i + x] = value if np.isfinite(value) else np.float32(0.0)


@_njit
def _store(dst, i, acc, n):  # pragma: no cover - compiled
    i = np.uint64(i)
    for x in range(np.uint64(n)):
        dst[i + x] = acc[x]


@_njit
def smooth_volumes(
    volumes, wx, wy, wz, lo, hi, index, out
):  # pragma: no cover - compiled
    T, Z, Y, X = volumes.shape
    rx, ry, rz = wx.size // 2, wy.size // 2, wz.size // 2
    z0, y0, x0 = lo[0], lo[1], lo[2]
    nx, ny, nz = hi[2] - x0, hi[1] - y0, hi[0] - z0
    line = np.empty(X + 2 * rx, dtype=np.float32)  # a line extended by reflection
    acc = np.empty(nx)
    tmp1 = np.empty(Z * Y * nx, dtype=np.float32)  # after the x pass: (Z, Y, nx)
    tmp2 = np.empty(Z * ny * nx, dtype=np.float32)  # after the y pass: (Z, ny, nx)
    tmp3 = np.empty(nz * ny * nx, dtype=np.float32)  # after the z pass: (nz, ny, nx)
    c = x0 + rx
    for t in range(T):
        for z in range(Z):  # x pass, on every (z, y) line
            for y in range(Y):
                _load(line, rx, volumes[t, z, y], X)
                for e in range(rx):
                    line[e] = line[rx + _reflect(e - rx, X)]
                    line[X + rx + e] = line[rx + _reflect(X + e, X)]
                _start(acc, line, c, wx[rx], nx)
                for k in range(rx, 0, -1):
                    _add(acc, line, c - k, c + k, wx[rx - k], nx)
                _store(tmp1, (z * Y + y) * nx, acc, nx)
        for z in range(Z):  # y pass, inside the bounding box along x and y
            for y in range(ny):
                yc = y0 + y
                _start(acc, tmp1, (z * Y + yc) * nx, wy[ry], nx)
                for k in range(ry, 0, -1):
                    _add(
                        acc,
                        tmp1,
                        (z * Y + _reflect(yc - k, Y)) * nx,
                        (z * Y + _reflect(yc + k, Y)) * nx,
                        wy[ry - k],
                        nx,
                    )
                _store(tmp2, (z * ny + y) * nx, acc, nx)
        plane = ny * nx
        for z in range(nz):  # z pass, inside the bounding box
            zc = z0 + z
            for y in range(ny):
                _start(acc, tmp2, zc * plane + y * nx, wz[rz], nx)
                for k in range(rz, 0, -1):
                    _add(
                        acc,
                        tmp2,
                        _reflect(zc - k, Z) * plane + y * nx,
                        _reflect(zc + k, Z) * plane + y * nx,
                        wz[rz - k],
                        nx,
                    )
                _store(tmp3, (z * ny + y) * nx, acc, nx)
        for i in range(index.size):
            out[t, i] = tmp3[index[i]]
    return out

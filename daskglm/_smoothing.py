"""nilearn's separable Gaussian smoothing of a crop, fused with masking, compiled with numba.

:func:`daskglm._volume.smooth_and_mask` filters a box of volumes with
``scipy.ndimage.gaussian_filter1d`` along x, then y, then z (float32 between
passes, as nilearn's ``smooth_array``), then takes the mask voxels. scipy's
line filter spends ~6 ns per voxel and axis copying lines through buffers;
this module computes the same numbers with loops that stay in cache and that
LLVM vectorises, and computes each pass only where a later one reads it:

* the x pass at every (z, y) row of the crop, for x inside ``bbox(mask)``;
* the y pass for (x, y) inside the bounding box, at every z of the crop;
* the z pass inside the bounding box, then the mask voxels are gathered.

Each output value is computed with scipy's arithmetic for a symmetric kernel
(``NI_Correlate1D``): in float64, ``w0 * x[i]`` then ``+= (x[i-k] + x[i+k]) *
w_k`` for ``k = r .. 1``, with the line extended by reflection (scipy's
default ``mode="reflect"``), and rounded to float32 once per pass. The
weights are scipy's (``exp(-x^2 / (2 sigma^2))`` normalised, radius
``int(4 sigma + 0.5)``). tests/test_volume.py checks the result against
``gaussian_filter1d`` bit for bit.

numba is optional: :data:`AVAILABLE` is False when it cannot be imported, and
:mod:`daskglm._volume` then uses scipy. Compiled code is cached on disk
(numba's ``cache=True``), so a process compiles it at most once per install.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

try:  # pragma: no cover - exercised by whichever is installed
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover
    numba = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "SmoothingPlan", "gaussian_weights", "plan_smoothing", "smooth_masked"]

#: scipy's default truncation of the Gaussian kernel, in standard deviations.
TRUNCATE = 4.0


class SmoothingPlan(NamedTuple):
    """Where each pass is computed, for a box ``(z, y, x)`` of a crop.

    Attributes
    ----------
    weights : tuple of 3 ndarray
        Gaussian weights along x, y and z (length ``2 r + 1``; ``[1.0]`` for
        no smoothing along that axis).
    lo, hi : ndarray of int64, shape (3,)
        Bounding box of the mask in box coordinates, ordered (z, y, x).
    index : ndarray of int64, shape (n_voxels,)
        Flat index of each mask voxel (nilearn's C order over x, y, z) into
        the bounding box ``(hi - lo)`` in (z, y, x) order.
    box_index : ndarray of int64, shape (n_voxels,)
        The same voxels' flat index into the whole box ``(z, y, x)``.
    """

    weights: tuple[np.ndarray, np.ndarray, np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    index: np.ndarray
    box_index: np.ndarray


def gaussian_weights(sigma: float) -> np.ndarray:
    """scipy's ``gaussian_filter1d`` weights for ``sigma`` (``[1.0]`` for sigma 0).

    Parameters
    ----------
    sigma : float

    Returns
    -------
    ndarray of float64, shape (2 r + 1,), ``r = int(4 sigma + 0.5)``
    """
    if not sigma > 0:
        return np.ones(1)
    radius = int(TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    return phi / phi.sum()


def plan_smoothing(mask: np.ndarray, sigma: np.ndarray) -> SmoothingPlan:
    """The plan of :func:`smooth_masked` for a crop's mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (bx, by, bz)
        The mask inside the crop (``Crop.mask``), with at least one voxel.
    sigma : ndarray, shape (3,)
        Gaussian standard deviation in voxels along x, y, z.

    Returns
    -------
    SmoothingPlan
    """
    i, j, k = np.nonzero(mask)
    lo = np.array([k.min(), j.min(), i.min()], dtype=np.int64)
    hi = np.array([k.max(), j.max(), i.max()], dtype=np.int64) + 1
    shape = hi - lo
    index = np.ravel_multi_index((k - lo[0], j - lo[1], i - lo[2]), tuple(shape)).astype(np.int64)
    box_index = np.ravel_multi_index((k, j, i), mask.shape[::-1]).astype(np.int64)
    weights = tuple(gaussian_weights(float(s)) for s in sigma)
    return SmoothingPlan((weights[0], weights[1], weights[2]), lo, hi, index, box_index)


def smooth_masked(box: np.ndarray, plan: SmoothingPlan, out: np.ndarray) -> np.ndarray:
    """Smooth each volume of a box along x, y, z and write its mask voxels into ``out``.

    Parameters
    ----------
    box : ndarray, shape (t, z, y, x)
        The crop of ``t`` volumes, any real dtype and strides (e.g. the
        transpose of a Fortran-ordered ``(x, y, z, t)`` block as read):
        values are cast to float32 and non-finite ones set to 0 first, as
        nilearn does.
    plan : SmoothingPlan
        From :func:`plan_smoothing` with the crop's mask.
    out : ndarray of float32, shape (t, n_voxels)
        Rows to fill (C-contiguous rows).

    Returns
    -------
    ndarray
        ``out``.
    """
    wx, wy, wz = plan.weights
    _kernel()(box, wx, wy, wz, plan.lo, plan.hi, plan.index, out)
    return out


def _kernel():
    if not AVAILABLE:  # pragma: no cover
        raise RuntimeError("numba is not installed: use daskglm._volume.smooth_and_mask(compiled=False)")
    return _smooth_volumes


if AVAILABLE:  # module-level functions, so that numba can cache them on disk
    _njit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @_njit
    def _reflect(i, n):  # pragma: no cover - compiled
        while i < 0 or i >= n:
            if i < 0:
                i = -i - 1
            if i >= n:
                i = 2 * n - i - 1
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
    def _smooth_volumes(volumes, wx, wy, wz, lo, hi, index, out):  # pragma: no cover - compiled
        T, Z, Y, X = volumes.shape
        rx, ry, rz = wx.size // 2, wy.size // 2, wz.size // 2
        z0, y0, x0 = lo[0], lo[1], lo[2]
        nx, ny, nz = hi[2] - x0, hi[1] - y0, hi[0] - z0
        line = np.empty(X + 2 * rx, dtype=np.float32)  # a line extended by reflection
        acc = np.empty(nx)
        tmp1 = np.empty(Z * Y * nx, dtype=np.float32)   # after the x pass: (Z, Y, nx)
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
                        _add(acc, tmp1, (z * Y + _reflect(yc - k, Y)) * nx, (z * Y + _reflect(yc + k, Y)) * nx,
                             wy[ry - k], nx)
                    _store(tmp2, (z * ny + y) * nx, acc, nx)
            plane = ny * nx
            for z in range(nz):  # z pass, inside the bounding box
                zc = z0 + z
                for y in range(ny):
                    _start(acc, tmp2, zc * plane + y * nx, wz[rz], nx)
                    for k in range(rz, 0, -1):
                        _add(acc, tmp2, _reflect(zc - k, Z) * plane + y * nx, _reflect(zc + k, Z) * plane + y * nx,
                             wz[rz - k], nx)
                    _store(tmp3, (z * ny + y) * nx, acc, nx)
            for i in range(index.size):
                out[t, i] = tmp3[index[i]]
        return out

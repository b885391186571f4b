"""nilearn's separable Gaussian smoothing of a crop, fused with masking, compiled with numba.

:func:`daskglm.kernels.volume.smooth_and_mask` filters a box of volumes with
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
``int(4 sigma + 0.5)``). tests/kernels/test_volume.py checks the result against
``gaussian_filter1d`` bit for bit.

numba is optional: :data:`AVAILABLE` is False when it is not installed, and
:mod:`daskglm.kernels.volume` then uses scipy. The compiled loops are in
:mod:`daskglm.kernels.smoothing_jit`, imported on first use and cached on disk
(numba's ``cache=True``), so they are compiled at most once per install.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import numpy as np

#: Whether numba is installed (checked without importing it: the client process
#: of a small analysis never pays numba's import).
AVAILABLE = importlib.util.find_spec("numba") is not None

__all__ = ["AVAILABLE", "SmoothingPlan", "gaussian_weights", "plan_smoothing", "smooth_masked"]

#: scipy's default truncation of the Gaussian kernel, in standard deviations.
TRUNCATE = 4.0


def kernel_radius(sigma: float) -> int:
    """scipy's ``gaussian_filter1d`` radius ``int(4 sigma + 0.5)`` (0 for no smoothing)."""
    return int(TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


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
    """scipy's ``gaussian_filter1d`` weights for ``sigma`` (``[1.0]`` when the radius is 0).

    A radius of 0 (``sigma < 0.125``) is the identity: scipy's formula
    ``exp(-0.5 / sigma**2 * x**2)`` gives ``[1.0]`` at ``x = 0`` for every
    sigma whose square does not underflow, and ``0 * inf`` = NaN below
    ~5e-155 (or a ZeroDivisionError on Python floats): the limit, not the
    rounding accident, is returned for every such sigma.

    Parameters
    ----------
    sigma : float

    Returns
    -------
    ndarray of float64, shape (2 r + 1,), ``r = int(4 sigma + 0.5)``
    """
    radius = kernel_radius(sigma)
    if radius == 0:
        return np.ones(1)
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

    Raises
    ------
    ValueError
        ``out`` is not float32 rows of this shape: the compiled loop does no
        bounds checks, so a short ``out`` would be written past its end.
    """
    want = (box.shape[0], plan.index.size)
    if out.shape != want or out.dtype != np.float32 or out.strides[1] != 4:
        raise ValueError(f"out must be float32 rows (C-contiguous rows) of shape {want} for {box.shape[0]} "
                         f"volumes; got {out.dtype} of shape {out.shape} and strides {out.strides}")
    wx, wy, wz = plan.weights
    _kernel()(box, wx, wy, wz, plan.lo, plan.hi, plan.index, out)
    return out


def _kernel():
    if not AVAILABLE:  # pragma: no cover
        raise RuntimeError("numba is not installed: use daskglm.kernels.volume.smooth_and_mask(compiled=False)")
    from .smoothing_jit import (
        smooth_volumes,  # numba's import and cache load, once per process
    )

    return smooth_volumes

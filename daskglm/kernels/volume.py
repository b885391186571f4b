"""Numpy-only maths on blocks of volumes: smoothing and masking.

Nothing here does I/O or imports dask: the functions take plain arrays and are
called by :mod:`daskglm.store.ingest` on each block of volumes read from a run.

Smoothing follows nilearn's ``smooth_array`` (0.14): a separable Gaussian,
``scipy.ndimage.gaussian_filter1d`` along axes 0, 1 and 2 in turn, in float32,
with ``sigma = fwhm / (sqrt(8 ln 2) * voxel_size)`` and the voxel size read from
the columns of the affine; non-finite values are set to 0 first.

Only the crop ``bbox(mask) +/- radius`` is filtered (see :func:`smoothing_crop`):
a 1D Gaussian truncated at ``radius`` makes each output value depend on inputs
within ``radius`` along that axis only, so every voxel inside the bounding box
gets exactly the numbers a whole-volume filter gives. The filter itself is
:mod:`daskglm.kernels.smoothing`'s compiled one (scipy's arithmetic, faster: BENCHMARKS.md,
"First round") when numba is installed, else scipy's.

Differences with nilearn: float64 runs are cast to float32 before
smoothing (nilearn smooths them in float64); the stores hold float32 either
way, and the two agree to ~1e-7 relative. An FWHM whose kernel radius is 0
(``sigma < 0.125`` voxel) is no smoothing along that axis, as scipy's kernel
``[1.0]`` is, also below ~1e-154 mm where scipy's weights overflow to NaN
(nilearn's masker then zeroes every voxel). An FWHM larger than the field of
view is refused (:func:`check_smoothing_fwhm`), where nilearn filters with a
kernel of ``8 sigma`` samples per voxel.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter1d

from . import smoothing as _smoothing
from .lru import LRUCache

__all__ = [
    "Crop",
    "check_smoothing_fwhm",
    "field_of_view",
    "fwhm_to_sigma",
    "mask_plan",
    "smooth_and_mask",
    "smoothing_crop",
    "voxel_sizes",
]

FWHM_OVER_SIGMA = float(np.sqrt(8 * np.log(2)))


class Crop(NamedTuple):
    """A box inside a volume and the mask restricted to it.

    Attributes
    ----------
    slices : tuple of 3 slice
        Where the box lies in the volume.
    mask : ndarray of bool, shape (bx, by, bz)
        The mask inside the box.
    """

    slices: tuple[slice, slice, slice]
    mask: np.ndarray


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes as nilearn computes them: norms of the affine's columns.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)

    Returns
    -------
    ndarray, shape (3,)
    """
    affine = np.asarray(affine, dtype=float)
    return np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))


def fwhm_to_sigma(fwhm: float | None, affine: np.ndarray) -> np.ndarray:
    """Gaussian standard deviation in voxels per axis, as nilearn's ``smooth_array``.

    Parameters
    ----------
    fwhm : float or None
        Full width at half maximum in millimetres. ``None`` or 0: no smoothing.
    affine : ndarray, shape (4, 4)

    Returns
    -------
    ndarray, shape (3,)
        Zeros when there is no smoothing.
    """
    if fwhm is None:
        return np.zeros(3)
    if isinstance(fwhm, (str, bytes, bool, np.bool_)) or np.asarray(fwhm).dtype.kind not in "iuf":
        # nilearn's type check: np.asarray("5", dtype=float) would silently accept a string
        raise TypeError(f"smoothing_fwhm must be None or a number (or 3 of them); got {fwhm!r} "
                        f"of type {type(fwhm).__name__}")
    if np.ndim(fwhm) == 0 and fwhm == 0:
        return np.zeros(3)
    fwhm_arr = np.asarray(fwhm, dtype=float).ravel()
    if fwhm_arr.size not in (1, 3) or np.any(~np.isfinite(fwhm_arr)) or np.any(fwhm_arr < 0):
        raise ValueError(
            f"smoothing_fwhm must be None or a non-negative number (or 3 of them); got {fwhm!r}"
        )
    return fwhm_arr / (FWHM_OVER_SIGMA * voxel_sizes(affine))


def field_of_view(affine: np.ndarray, volume_shape: tuple[int, ...]) -> np.ndarray:
    """The extent of a volume in millimetres along each axis: voxels times voxel size.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
    volume_shape : tuple of int
        At least 3 (a 4D shape's time axis is ignored).

    Returns
    -------
    ndarray, shape (3,)
    """
    return np.asarray(volume_shape[:3], dtype=float) * voxel_sizes(affine)


def check_smoothing_fwhm(fwhm: float | None, affine: np.ndarray,
                         volume_shape: tuple[int, ...]) -> np.ndarray:
    """Validate ``smoothing_fwhm`` for a run, before any work: :func:`fwhm_to_sigma`'s checks,
    and no FWHM larger than the field of view.

    A Gaussian wider than the whole field of view is no longer smoothing (every
    voxel becomes nearly the mean of the volume), and its cost grows with it:
    scipy's kernel holds ``2 int(4 sigma + 0.5) + 1`` weights, each applied
    to every voxel, so ``smoothing_fwhm=1e6`` on a 3 mm grid is ~1.1 million
    multiply-adds per voxel and axis (seconds per small volume, in nilearn too). The bound is
    the largest side of the field of view, ``max(shape * voxel size)``, so
    that an FWHM above a thin slab's thickness (a single-slice run, say)
    remains valid; then ``sigma <= 0.43 * side / voxel size`` and the kernel
    radius is at most ~1.7 times the voxels along the largest side.

    Parameters
    ----------
    fwhm : float, sequence of 3 floats, or None
        Millimetres, as nilearn's ``smoothing_fwhm``.
    affine : ndarray, shape (4, 4)
        The run's affine.
    volume_shape : tuple of int
        The run's shape (3 or 4 values).

    Returns
    -------
    ndarray, shape (3,)
        ``fwhm_to_sigma(fwhm, affine)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fwhm_to_sigma`; ValueError naming ``smoothing_fwhm``, its value and the
        field of view in mm when an FWHM exceeds the largest side.
    """
    sigma = fwhm_to_sigma(fwhm, affine)
    if fwhm is None:
        return sigma
    fov = field_of_view(affine, volume_shape)
    widest = float(np.max(fwhm))
    if widest > fov.max():
        sides = " x ".join(f"{side:g}" for side in fov)
        raise ValueError(
            f"smoothing_fwhm={fwhm!r} mm is larger than the field of view ({sides} mm, voxels times "
            f"voxel size): a Gaussian that wide averages the whole volume and its kernel would hold "
            f"~{2 * _smoothing.kernel_radius(float(sigma.max())) + 1:.3g} weights per voxel; "
            f"use at most {fov.max():g} mm (nilearn's examples use 4-8 mm)"
        )
    return sigma


def smoothing_crop(mask: np.ndarray, sigma: np.ndarray) -> Crop:
    """The smallest box whose smoothing gives exact values on every mask voxel.

    Parameters
    ----------
    mask : ndarray of bool, shape (x, y, z)
        Must hold at least one True.
    sigma : ndarray, shape (3,)
        Gaussian standard deviation in voxels per axis (0: no smoothing).

    Returns
    -------
    Crop
        ``bbox(mask)`` grown by scipy's kernel radius ``int(4 sigma + 0.5)`` on
        each side and clipped to the volume, with the mask cut to that box.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask has no voxel: cannot plan a smoothing crop")
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        radius = _smoothing.kernel_radius(float(sigma[axis]))
        lo = max(int(present[0]) - radius, 0)
        hi = min(int(present[-1]) + 1 + radius, mask.shape[axis])
        slices.append(slice(lo, hi))
    box = (slices[0], slices[1], slices[2])
    return Crop(box, mask[box])


def smooth_and_mask(volumes: np.ndarray, crop: Crop, sigma: np.ndarray,
                    out: np.ndarray | None = None, plan: _smoothing.SmoothingPlan | None = None,
                    compiled: bool | None = None) -> np.ndarray:
    """Smooth each volume of a block inside the crop, then take the mask voxels.

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t)
        A block of ``t`` volumes as read from the run (any numeric dtype).
    crop : Crop
        From :func:`smoothing_crop`.
    sigma : ndarray, shape (3,)
        Gaussian standard deviation in voxels per axis (0: no smoothing).
    out : ndarray of float32, shape (t, n_voxels), optional
        Where to write the rows (e.g. a slice of a larger row buffer).
    plan : SmoothingPlan, optional
        ``mask_plan(crop, sigma)``, computed once by callers that smooth many
        blocks with one crop.
    compiled : bool, optional
        Use the compiled filter of :mod:`daskglm.kernels.smoothing` (default: when
        numba is installed) or scipy's ``gaussian_filter1d``: the same numbers.

    Returns
    -------
    ndarray of float32, shape (t, n_voxels)
        Mask voxels in C order over (x, y, z), as nilearn's maskers order them.
    """
    if volumes.ndim != 4:
        raise ValueError(f"expected a block of volumes (x, y, z, t); got shape {volumes.shape}")
    plan = plan if plan is not None else mask_plan(crop, sigma)
    if out is None:
        out = np.empty((volumes.shape[3], plan.index.size), dtype=np.float32)
    # NIfTI data come in Fortran order: (x, y, z, t) Fortran is (t, z, y, x) in
    # C order, so transposing is free and each volume is one contiguous block.
    view = volumes[crop.slices].T  # (t, z, y, x)
    # a radius of 0 (sigma < 0.125) is scipy's kernel [1.0]: no smoothing along that axis
    radii = [_smoothing.kernel_radius(float(s)) for s in np.asarray(sigma, dtype=float)]
    smooth = any(r > 0 for r in radii)
    if smooth and (compiled if compiled is not None else _smoothing.AVAILABLE):
        return _smoothing.smooth_masked(view, plan, out)  # casts and zeroes non-finite values itself
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, then 0 below
        box = np.array(view, dtype=np.float32, order="C")  # the float32 working copy, of the crop only
    if volumes.dtype.kind not in "iub" and not np.isfinite(box).all():
        box[~np.isfinite(box)] = 0
    # nilearn filters along x, then y, then z: axes 3, 2, 1 here.
    for axis in range(3):
        if radii[axis] > 0:
            gaussian_filter1d(box, float(sigma[axis]), axis=3 - axis, output=box)
    np.take(box.reshape(box.shape[0], -1), plan.box_index, axis=1, out=out)
    return out


def mask_plan(crop: Crop, sigma: np.ndarray) -> _smoothing.SmoothingPlan:
    """What :func:`smooth_and_mask` precomputes for a crop: mask indexes and filter weights.

    Cached per process (the last few crops and sigmas, keyed by their values):
    every ingestion task of a run asks for the same plan (BENCHMARKS.md, "Sixth round").

    Parameters
    ----------
    crop : Crop
    sigma : ndarray, shape (3,)

    Returns
    -------
    SmoothingPlan
        Shared between callers: read-only arrays.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    mask = np.ascontiguousarray(crop.mask, dtype=bool)
    key = hashlib.sha1(repr((mask.shape, sigma.tolist())).encode() + mask.tobytes()).digest()

    def plan() -> _smoothing.SmoothingPlan:
        made = _smoothing.plan_smoothing(mask, sigma)
        for array in (*made.weights, *made[1:]):
            array.setflags(write=False)
        return made

    return _PLANS.get(key, plan)


#: :func:`mask_plan`'s cache: digest of (mask, sigma) -> plan, the last four used.
_PLANS: LRUCache[_smoothing.SmoothingPlan] = LRUCache(4)

"""The voxel grid an analysis runs on, by nilearn's masker rules.

nilearn's ``FirstLevelModel`` hands the mask, ``target_affine`` and
``target_shape`` to a ``NiftiMasker``, which decides the grid:

1. the mask (given, or ``compute_epi_mask`` of the run on the run's grid) is
   resampled to ``target_affine`` / ``target_shape`` when either is given
   (nearest neighbour);
2. if the run is on that grid, nothing else happens;
3. otherwise the mask is cropped to its bounding box (``crop_img``, one voxel
   of padding) and every volume of the run is resampled onto the cropped grid
   (``resample_img``, continuous interpolation) before smoothing and masking,
   with nilearn's warning.

:func:`analysis_grid` makes that decision once, from headers and the mask
only; :func:`resample_volumes` applies step 3 to one block of volumes inside
an ingestion task. Both call nilearn's own functions, so the numbers are
nilearn's.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

from .nifti import nifti_image

__all__ = ["Grid", "check_target", "analysis_grid", "resample_volumes", "same_grid"]

#: nilearn's warning when runs are resampled to the mask's grid.
RESAMPLING_WARNING = (
    "imgs are being resampled to the mask_img resolution. This process is memory intensive. "
    "You might want to provide a target_affine that is equal to the affine of the imgs or "
    "resample the mask beforehand to save memory and computation time."
)


class Grid(NamedTuple):
    """Where the analysis happens.

    Attributes
    ----------
    affine : ndarray, shape (4, 4)
        The output grid: maps are written on it (nilearn's ``masker_.mask_img_``).
    shape : tuple of 3 int
    mask : ndarray of bool, shape ``shape``
    crop : tuple of 3 slices, or None
        ``None``: the run is on this grid. Otherwise the run's volumes are
        resampled onto ``affine``/``shape`` cut to these slices (the mask's
        bounding box plus one voxel, nilearn's ``crop_img``) and smoothed
        there; the mask voxels keep their order.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    mask: np.ndarray
    crop: tuple[slice, slice, slice] | None

    @property
    def resample(self) -> bool:
        """Whether the run's volumes are resampled."""
        return self.crop is not None

    def working_grid(self) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
        """Affine, shape and mask of the grid volumes are smoothed on."""
        if self.crop is None:
            return self.affine, self.shape, self.mask
        start = np.array([sl.start for sl in self.crop] + [1.0])
        affine = self.affine.copy()
        affine[:, 3] = self.affine @ start
        shape = tuple(sl.stop - sl.start for sl in self.crop)
        return affine, shape, self.mask[self.crop]


def check_target(target_affine: Any, target_shape: Any) -> tuple[np.ndarray | None, tuple | None]:
    """Validate ``target_affine`` / ``target_shape`` as nilearn's ``resample_img`` takes them.

    Returns
    -------
    target_affine : ndarray, shape (3, 3) or (4, 4), or None
    target_shape : tuple of 3 int, or None

    Raises
    ------
    ValueError
        Naming the parameter and the value.
    """
    affine = None
    if target_affine is not None:
        affine = np.asarray(target_affine, dtype=np.float64)
        if affine.shape not in ((3, 3), (4, 4)) or not np.isfinite(affine).all():
            raise ValueError(f"target_affine must be a finite 3x3 or 4x4 matrix; got {target_affine!r}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"target_affine is singular: {affine.tolist()}")
    shape = None
    if target_shape is not None:
        try:
            shape = tuple(int(s) for s in target_shape)
        except (TypeError, ValueError):
            raise ValueError(f"target_shape must be 3 positive integers; got {target_shape!r}") from None
        if len(shape) != 3 or min(shape) < 1 or any(float(s) != int(s) for s in target_shape):
            raise ValueError(f"target_shape must be 3 positive integers; got {target_shape!r}")
        if affine is None or affine.shape != (4, 4):
            raise ValueError(
                "target_shape needs a 4x4 target_affine (as nilearn's resample_img); "
                f"got target_shape={shape} with target_affine={target_affine!r}"
            )
    return affine, shape


def same_grid(affine_a: np.ndarray, shape_a: tuple, affine_b: np.ndarray, shape_b: tuple) -> bool:
    """nilearn's ``check_same_fov``: same shape and ``np.allclose`` affines."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b)


def _check_overlap(mask: np.ndarray, affine: np.ndarray, run_affine: np.ndarray,
                   run_shape: tuple, name: str) -> None:
    """Refuse a mask none of whose voxels falls inside the run's field of view.

    nilearn would go on and fit zeros (the resampled run is 0 outside its
    field of view); an error that names the mask is more useful.
    """
    ijk = np.argwhere(mask)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    run_ijk = (world - run_affine[:3, 3]) @ np.linalg.inv(run_affine[:3, :3]).T
    inside = np.all((run_ijk > -0.5) & (run_ijk < np.asarray(run_shape) - 0.5), axis=1)
    if not inside.any():
        raise ValueError(
            f"{name} has no voxel inside the field of view of the run (shape {tuple(run_shape)})"
        )


def analysis_grid(
    mask: np.ndarray,
    mask_affine: np.ndarray,
    run_affine: np.ndarray,
    run_shape: tuple[int, int, int],
    target_affine: Any = None,
    target_shape: Any = None,
    name: str = "mask",
) -> Grid:
    """Decide the analysis grid from the mask and the run's header, as nilearn's masker.

    Parameters
    ----------
    mask : ndarray of bool, shape (x, y, z)
        The mask on its own grid.
    mask_affine : ndarray, shape (4, 4)
    run_affine : ndarray, shape (4, 4)
    run_shape : tuple of 3 int
    target_affine, target_shape
        As nilearn's ``FirstLevelModel`` (see :func:`check_target`).
    name : str
        How errors and warnings name the mask.

    Returns
    -------
    Grid
    """
    from nilearn.image import crop_img, resample_img

    target_affine, target_shape = check_target(target_affine, target_shape)
    img = nifti_image(np.asarray(mask, dtype=np.int8), np.asarray(mask_affine, dtype=np.float64))
    if target_affine is not None:
        img = resample_img(img, target_affine=target_affine, target_shape=target_shape,
                           interpolation="nearest", copy_header=True)
    mask_on_grid = np.asarray(img.dataobj) > 0
    affine, shape = np.asarray(img.affine, dtype=np.float64), tuple(int(n) for n in img.shape[:3])
    if not mask_on_grid.any():
        raise ValueError(f"{name} has no voxel on the analysis grid (shape {shape})")
    if same_grid(affine, shape, run_affine, run_shape):
        return Grid(np.asarray(run_affine, dtype=np.float64), tuple(int(n) for n in run_shape),
                    mask_on_grid, None)
    _, offset = crop_img(img, copy=False, return_offset=True)
    grid = Grid(affine, shape, mask_on_grid, tuple(offset))
    work_affine, _, work_mask = grid.working_grid()
    _check_overlap(work_mask, work_affine, run_affine, run_shape, name)
    warnings.warn(RESAMPLING_WARNING, UserWarning, stacklevel=3)
    return grid


def resample_volumes(volumes: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                     target_shape: tuple[int, int, int], vmin: float, vmax: float) -> np.ndarray:
    """Resample a block of volumes onto a grid (nilearn's continuous ``resample_img``).

    nilearn resamples the whole run and clips the result to the range of the
    whole run (and 0); a block is resampled unclipped and clipped to the
    run's range, which gives the same values.

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t)
    affine : ndarray, shape (4, 4)
        The run's affine.
    target_affine : ndarray, shape (4, 4)
    target_shape : tuple of 3 int
        The working grid (:meth:`Grid.working_grid`).
    vmin, vmax : float
        ``nanmin`` and ``nanmax`` of the whole run.

    Returns
    -------
    ndarray, shape ``target_shape + (t,)``
        What nilearn's masker smooths and masks for these volumes.
    """
    from nilearn.image import resample_img

    with warnings.catch_warnings():  # "Casting data from int16 to float32": stored as float32 anyway
        warnings.filterwarnings("ignore", message="Casting data from", category=UserWarning)
        img = resample_img(nib.Nifti1Image(volumes, np.asarray(affine, dtype=np.float64)),
                           target_affine=np.asarray(target_affine, dtype=np.float64),
                           target_shape=tuple(target_shape), interpolation="continuous",
                           copy_header=True, clip=False)
    data = np.asarray(img.dataobj)
    return np.clip(data, min(vmin, 0), max(vmax, 0), out=data)

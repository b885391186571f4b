"""Voxel vectors back to volumes: ``(voxel,)`` DataArrays to ``(x, y, z)`` and NIfTI.

The geometry comes from a run store (or any object with ``affine`` and
``volume_shape`` attributes) and the ``i, j, k`` voxel coordinates that travel
with every DataArray derived from ``bold``.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

__all__ = ["to_volume", "to_nifti", "scatter_to_volume"]


def scatter_to_volume(
    values: np.ndarray, i: np.ndarray, j: np.ndarray, k: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Place voxel values into a zero volume.

    Parameters
    ----------
    values : ndarray, shape (..., n_voxels)
    i, j, k : ndarray of int, shape (n_voxels,)
    shape : tuple of 3 int

    Returns
    -------
    ndarray, shape (x, y, z, ...)
        Leading dimensions of ``values`` go last (NIfTI order: a 4D image for
        a ``(time, voxel)`` input).
    """
    values = np.asarray(values)
    lead = values.shape[:-1]
    out = np.zeros(tuple(shape) + lead, dtype=values.dtype)
    out[i, j, k] = np.moveaxis(values, -1, 0)
    return out


def _geometry(values: xr.DataArray, like: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
    attrs = like.attrs if like is not None else values.attrs
    if "affine" not in attrs or "volume_shape" not in attrs:
        raise ValueError(
            "cannot place voxels in a volume: pass like= a run Dataset (or an object "
            "whose .attrs hold 'affine' and 'volume_shape')"
        )
    for name in "ijk":
        if name not in values.coords:
            raise ValueError(
                f"the DataArray has no {name!r} voxel coordinate; coords are {list(values.coords)}"
            )
    return np.asarray(attrs["affine"], dtype=float), tuple(int(s) for s in attrs["volume_shape"])


def to_volume(values: xr.DataArray, like: Any = None) -> xr.DataArray:
    """Unmask a ``(..., voxel)`` DataArray into an ``(x, y, z, ...)`` DataArray.

    Lazy in, lazy out: a dask-backed input gives a dask-backed volume that is
    computed only on demand.

    Parameters
    ----------
    values : xarray.DataArray, dims (..., "voxel")
        With ``i, j, k`` coordinates on ``voxel``.
    like : xarray.Dataset, optional
        Where ``affine`` and ``volume_shape`` attributes are read (default:
        ``values.attrs``).

    Returns
    -------
    xarray.DataArray, dims ("x", "y", "z", ...)
        Zero outside the mask; ``affine`` in attrs.
    """
    if values.dims[-1] != "voxel":
        values = values.transpose(..., "voxel")
    affine, shape = _geometry(values, like)
    coords = [np.asarray(values.coords[n].values) for n in "ijk"]
    lead_dims = values.dims[:-1]
    out_shape = shape + values.shape[:-1]
    if isinstance(values.data, da.Array):
        data = da.from_delayed(
            dask.delayed(scatter_to_volume)(values.data, *coords, shape),
            shape=out_shape,
            dtype=values.dtype,
        )
    else:
        data = scatter_to_volume(values.values, *coords, shape)
    return xr.DataArray(
        data,
        dims=("x", "y", "z") + lead_dims,
        name=values.name,
        attrs={**values.attrs, "affine": affine.tolist(), "volume_shape": list(shape)},
    )


def to_nifti(values: xr.DataArray, like: Any = None, descrip: str | None = None) -> nib.Nifti1Image:
    """Unmask a ``(voxel,)`` (or ``(n, voxel)``) DataArray into a NIfTI image.

    Parameters
    ----------
    values : xarray.DataArray, dims (..., "voxel")
    like : xarray.Dataset, optional
        See :func:`to_volume`.
    descrip : str, optional
        Written to the header's ``descrip`` field (at most 80 characters).

    Returns
    -------
    nibabel.Nifti1Image
        3D for a ``(voxel,)`` input, 4D for ``(n, voxel)``; computed (eager).
    """
    volume = to_volume(values, like)
    img = nib.Nifti1Image(np.asarray(volume.values), np.asarray(volume.attrs["affine"]))
    if descrip:
        img.header["descrip"] = descrip[:80].encode()
    return img

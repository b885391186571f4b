"""Voxel vectors back to volumes: ``(voxel,)`` DataArrays to ``(x, y, z)`` and NIfTI.

The geometry comes from a run store (or any object with ``affine`` and
``volume_shape`` attributes) and the ``i, j, k`` voxel coordinates that travel
with every DataArray derived from ``bold``.

:func:`save_nifti` / :func:`load_nifti` write and read maps at a local path or
an fsspec URL (``s3://bucket/maps/z.nii.gz``), so outputs can live next to
remote run stores.
"""

from __future__ import annotations

import gzip
import os
import uuid
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from .nifti import load_url_image, nifti_image
from .remote import is_url, url_to_fs

__all__ = ["to_volume", "to_nifti", "scatter_to_volume", "write_bytes", "save_nifti", "load_nifti"]


def scatter_to_volume(
    values: np.ndarray, i: np.ndarray, j: np.ndarray, k: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Place voxel values into a zero volume.

    Parameters
    ----------
    values : ndarray, shape (..., n_voxels)
        The voxels' values, voxels last (e.g. ``(n_voxels,)`` or
        ``(n_scans, n_voxels)``); the volume has their dtype.
    i, j, k : ndarray of int, shape (n_voxels,)
        The voxels' indices along the volume's three axes, in the order of
        the last axis of ``values``.
    shape : tuple of 3 int
        Shape ``(x, y, z)`` of the volume; voxels not listed are 0.

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
        With ``i, j, k`` coordinates on ``voxel``; a dask-backed array is
        computed here.
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
    img = nifti_image(np.asarray(volume.values), np.asarray(volume.attrs["affine"]))
    if descrip:
        img.header["descrip"] = descrip[:80].encode()
    return img


def write_bytes(url: str | os.PathLike, data: bytes, storage_options: dict | None = None) -> str:
    """Write a small file all at once: one upload, or a local temporary name renamed into place.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL; local parent folders are created.
    data : bytes
    storage_options : dict, optional
        fsspec options for a URL (ignored for a local path).

    Returns
    -------
    str
        ``url`` as a string.
    """

    url = os.fspath(url)
    if is_url(url):  # object stores have no folders to create; one upload is all or nothing
        fs, path = url_to_fs(url, storage_options)
        fs.pipe_file(path, data)
        return url
    path = os.path.abspath(url.removeprefix("file://"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return url


def save_nifti(img: nib.Nifti1Image, url: str | os.PathLike, storage_options: dict | None = None) -> str:
    """Write a NIfTI image to a local path or an fsspec URL, all or nothing.

    The file is serialised in memory (gzip-compressed for a ``.gz`` name, as
    nibabel's ``to_filename`` does) and written in one go: on an object store
    as a single upload (an object appears whole or not at all); on a local
    filesystem to a temporary name in the same folder, then renamed over the
    target. Readers never see a half-written map.

    Parameters
    ----------
    img : nibabel.Nifti1Image (or Nifti2Image)
        A single-file image (maps are small: a few MB).
    url : str or path
        ``maps/z.nii.gz``, ``s3://bucket/maps/z.nii.gz``...; parent folders are
        created as needed.
    storage_options : dict, optional
        fsspec options for a URL (ignored for a local path).

    Returns
    -------
    str
        ``url`` as a string.
    """
    url = os.fspath(url)
    data = img.to_bytes()
    if url.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)  # nibabel's level; reproducible bytes
    return write_bytes(url, data, storage_options)


def load_nifti(url: str | os.PathLike, storage_options: dict | None = None) -> nib.Nifti1Image:
    """Read a NIfTI image (``.nii`` / ``.nii.gz``) whole from a local path or an fsspec URL.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL (``s3://bucket/maps/z.nii.gz``) of the image.
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    nibabel.Nifti1Image (or Nifti2Image)
        With its data in memory (meant for maps, not 4D runs).
    """

    url = os.fspath(url)
    if is_url(url):
        return load_url_image(url, storage_options)
    img = nib.load(url)
    return img.__class__(np.asanyarray(img.dataobj), img.affine, img.header)

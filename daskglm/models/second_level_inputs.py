"""The inputs of :class:`daskglm.models.second_level.SecondLevelModel`: effect maps and how block tasks read them.

``second_level_input`` (3D images or paths, a 4D image or path, a Series of
them, fitted first-level models, or a DataFrame) is checked by nilearn's own
functions; :func:`header_standins` lets them check paths from their headers
(nilearn reads every 3D file whole to check it). The maps become
:class:`_Map` records, one per effect map: a file (or a volume of a 4D
file), an array in memory, or the lazy effect of a daskglm first-level model.
A block task gets from :meth:`_Map.item` what it needs to rebuild some
x-planes of a map, and :func:`_slab` rebuilds them.

Two passes over all maps, each per x-slab and never holding every map:
:func:`mean_image` (nilearn's sample map for ``mask_img=None``: the mean of
the maps) and :func:`value_range` (the range of all maps, to which nilearn's
``resample_img`` clips resampled maps).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np

from ..glm.fixed_effects import _read
from ..io.nifti import _load_image
from ..runtime import plan as _plan
from ..runtime.cluster import compute, phase

__all__ = ["header_standins", "image_maps", "is_surface", "list_maps", "mean_image", "model_map",
           "value_range"]


@dataclass
class _Map:
    """One effect map as the block tasks see it (exactly one of path, array, voxels)."""

    name: str  # for messages
    shape: tuple[int, ...]  # (x, y, z)
    affine: np.ndarray
    dtype: np.dtype  # of the data as nibabel gives it
    path: str | None = None  # read from this file...
    volume: int | None = None  # ...this volume of a 4D file (None: a 3D file)
    array: np.ndarray | None = None  # in memory, (x, y, z)
    voxels: Any = None  # lazy (v,) effect of a daskglm FirstLevelModel, voxels in C order
    starts: np.ndarray | None = None  # offset in ``voxels`` of each x-plane, (x + 1,)
    vmask: Any = None  # (mask volume, its token): where ``voxels`` lie

    def item(self, a: int, b: int, masks: dict) -> tuple:
        """What a block task needs to rebuild planes ``[a, b)`` of the map.

        ``masks`` is shared by the items of one graph, so that each block of
        a first-level mask becomes one graph node.
        """
        if self.path is not None:
            return ("file", self.path, self.volume)
        if self.array is not None:
            return ("array", self.array[a:b])
        volume, token = self.vmask
        if (token, a, b) not in masks:
            masks[token, a, b] = dask.delayed(volume[a:b].copy(), pure=True)
        # Delayed chunks, not a dask array: dask 2026.8 reorders a list mixing both in a delayed call;
        # unoptimised, so that blocks share the first-level chunks instead of recomputing them
        chunks = list(self.voxels[self.starts[a]:self.starts[b]].to_delayed(optimize_graph=False).ravel())
        return ("voxels", chunks, masks[token, a, b])


def is_surface(obj: Any) -> bool:
    """Whether ``obj`` is surface data (a ``SurfaceImage``/``SurfaceMasker``, or a list of them)."""
    from nilearn.maskers import SurfaceMasker
    from nilearn.surface import SurfaceImage

    if isinstance(obj, (list, tuple)) and obj:
        obj = obj[0]
    return isinstance(obj, (SurfaceImage, SurfaceMasker))


def _open(obj: Any, role: str) -> tuple[Any, str | None]:
    """An image and its path: a local path's header only, nilearn's message for a missing file."""
    if isinstance(obj, (str, os.PathLike)) and not Path(obj).expanduser().exists():
        raise ValueError(f"File not found: {os.fspath(obj)!r} ({role})")
    return _load_image(obj, role)


def header_standins(second_level_input: Any) -> Any:
    """``second_level_input`` with each path replaced by an image of the file's header and no data.

    nilearn's input checks load each 3D file whole (``check_niimg(...,
    atleast_4d=True)``); given these stand-ins (zero-stride arrays of the
    file's shape, affine and dtype) they check the same things from the
    headers. Images, models and DataFrames are returned as they are.

    Parameters
    ----------
    second_level_input : any
        As given to ``fit`` (a Series is turned into a list).

    Returns
    -------
    any
    """
    import pandas as pd

    def standin(obj: Any, role: str) -> Any:
        if not isinstance(obj, (str, os.PathLike)):
            return obj
        img, _ = _open(obj, role)
        empty = np.broadcast_to(np.zeros((), dtype=img.get_data_dtype()), img.shape)
        return nib.Nifti1Image(empty, img.affine, img.header)

    if isinstance(second_level_input, pd.Series):
        second_level_input = second_level_input.to_list()
    if isinstance(second_level_input, list):
        return [standin(obj, f"second_level_input[{n}]") for n, obj in enumerate(second_level_input)]
    return standin(second_level_input, "second_level_input")


def image_maps(obj: Any, role: str) -> list[_Map]:
    """Maps of a path or image: one per volume (a 3D image, or 4D with one volume, gives one).

    Parameters
    ----------
    obj : str, path or nibabel image
    role : str
        How messages name it.

    Returns
    -------
    list of _Map
    """
    img, path = _open(obj, role)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"{role} ({path or 'in-memory image'}) must be 3D or 4D; got shape {shape}")
    affine = np.asarray(img.affine, dtype=float)
    if path is not None:
        dtype = np.asanyarray(img.dataobj[(slice(0, 1),) * len(shape)]).dtype
        if len(shape) == 3 or shape[3] == 1:
            return [_Map(f"{role} ({path!r})", shape[:3], affine, dtype, path=path)]
        return [_Map(f"{role} ({path!r}) volume {s}", shape[:3], affine, dtype, path=path, volume=s)
                for s in range(shape[3])]
    data = np.asanyarray(img.dataobj)
    volumes = [data] if data.ndim == 3 else [data[..., s] for s in range(shape[3])]
    where = [""] if data.ndim == 3 else [f" volume {s}" for s in range(shape[3])]
    return [_Map(f"{role} (in-memory){w}", shape[:3], affine, data.dtype, array=v) for w, v in zip(where, volumes)]


def list_maps(imgs: list, role: str) -> list[_Map]:
    """One 3D map per element, as nilearn requires of a list of images.

    Parameters
    ----------
    imgs : list of paths or images
    role : str
        How messages name the list.

    Returns
    -------
    list of _Map
    """
    maps = []
    for n, obj in enumerate(imgs):
        found = image_maps(obj, f"{role}[{n}]")
        if len(found) != 1:
            raise ValueError("When passing a list of Nifti image, each image must be 3D, or 4D with single "
                             f"volume. Got '{role}[{n}]' with {len(found)} volumes ({found[0].name}).")
        maps += found
    return maps


def model_map(model: Any, contrast: Any, index: int) -> _Map:
    """The first-level effect of ``contrast``: lazy for daskglm models, computed for nilearn's.

    Parameters
    ----------
    model : FirstLevelModel (daskglm's or nilearn's), fitted
    contrast : str or array
        A t contrast of the model.
    index : int
        Its position in ``second_level_input``.

    Returns
    -------
    _Map
    """
    name = f"second_level_input[{index}] (subject_label={model.subject_label!r})"
    if not hasattr(model, "contrast_dataset"):  # a nilearn FirstLevelModel: its image, computed now
        img = model.compute_contrast(contrast, output_type="effect_size")
        if len(img.shape) != 3:
            raise ValueError(f"{name}: first_level_contrast {contrast!r} gives a {len(img.shape)}D effect map "
                             f"{img.shape}; the second level needs one 3D map per model (a t contrast)")
        return _Map(name, img.shape, np.asarray(img.affine, float), np.asanyarray(img.dataobj).dtype,
                    array=np.asanyarray(img.dataobj))
    ds = model.contrast_dataset(contrast)
    effect = ds["effect_size"]
    if effect.dims != ("voxel",):
        raise ValueError(f"{name}: first_level_contrast {contrast!r} is an F contrast (effect dims "
                         f"{effect.dims}); the second level needs one 3D effect map per model (a t contrast)")
    shape = tuple(int(s) for s in ds.attrs["volume_shape"])
    affine = np.asarray(ds.attrs["affine"], dtype=float)
    ijk = tuple(np.asarray(effect[n].values) for n in "ijk")
    values = da.asarray(effect.data)
    order = np.argsort(np.ravel_multi_index(ijk, shape), kind="stable")
    if np.any(order != np.arange(order.size)):
        values, ijk = values[order], tuple(c[order] for c in ijk)
    volume = np.zeros(shape, dtype=bool)
    volume[ijk] = True
    starts = np.searchsorted(ijk[0], np.arange(shape[0] + 1))
    return _Map(name, shape, affine, np.dtype(np.float64), voxels=values, starts=starts,
                vmask=(volume, dask.base.tokenize(volume)))


# ---------------------------------------------------------------- reading maps (in the block tasks)


def _slab(item: tuple, a: int, b: int, yz: tuple[int, int], cache: dict) -> np.ndarray:
    """Planes ``[a, b)`` of one map, shape (b - a, y, z)."""
    kind = item[0]
    if kind == "file":
        _, path, volume = item
        if volume is None:
            data = _read(path, a, b)
            return data[..., 0] if data.ndim == 4 else data
        if path not in cache:  # a 4D file: read once per block, for all its volumes
            cache[path] = _read(path, a, b)
        return cache[path][..., volume]
    if kind == "array":
        return item[1]
    _, chunks, where = item
    out = np.zeros((b - a, *yz), dtype=np.float64)
    out[where] = np.concatenate(chunks) if chunks else []
    return out


def _planes_per_task(maps: list[_Map], v_chunk: int | None, rows: int) -> int:
    """x-planes per task of a pass that reads every map (``rows`` plane-sized arrays held per map)."""
    shape = maps[0].shape
    plane = shape[1] * shape[2]
    # volumes of the largest 4D file: a task reads all of them at once
    per_file = max(Counter(m.path for m in maps if m.volume is not None).values(), default=1)
    budget = v_chunk // plane if v_chunk else _plan.DEFAULT_TASK_BYTES // (8 * plane * (per_file + rows))
    return max(1, min(budget, math.ceil(shape[0] / 2)))


def _mean_task(items: list, a: int, b: int, yz: tuple[int, int]) -> np.ndarray:
    """Mean of planes ``[a, b)`` over the maps, float64, NaN kept (nilearn's ``mean_img``)."""
    total = np.zeros((b - a, *yz))
    cache: dict = {}
    for item in items:
        total += _slab(item, a, b, yz, cache)
    return total / len(items)


def mean_image(maps: list[_Map], client: Any, v_chunk: int | None, verbose: int = 0) -> nib.Nifti1Image:
    """Mean of all maps (nilearn's ``mean_img``), computed per x-slab: no task holds every map.

    Parameters
    ----------
    maps : list of _Map
        On one grid.
    client : see :func:`daskglm.runtime.cluster.get_client`
    v_chunk : int, optional
        Voxels per task (whole x-planes).
    verbose : int

    Returns
    -------
    Nifti1Image, shape (x, y, z), float64
    """
    shape = maps[0].shape
    per_task = _planes_per_task(maps, v_chunk, 2)
    masks: dict = {}
    slabs = []
    for a in range(0, shape[0], per_task):
        b = min(a + per_task, shape[0])
        task = dask.delayed(_mean_task, pure=False)([m.item(a, b, masks) for m in maps], a, b, shape[1:])
        slabs.append(da.from_delayed(task, (b - a, *shape[1:]), np.float64))
    with phase(f"mean of {len(maps)} maps", default=True):
        (mean,) = compute(da.concatenate(slabs, axis=0), client=client, verbose=verbose)
    return nib.Nifti1Image(np.asarray(mean), maps[0].affine)


def _range_task(items: list, a: int, b: int, yz: tuple[int, int], dtype: np.dtype) -> tuple[float, float]:
    """``nanmin`` and ``nanmax`` of planes ``[a, b)`` of the maps, cast to ``dtype``."""
    lo, hi = np.inf, -np.inf
    cache: dict = {}
    for item in items:
        slab = np.asarray(_slab(item, a, b, yz, cache)).astype(dtype, copy=False)
        if slab.size and not np.isnan(slab).all():
            lo, hi = min(lo, float(np.nanmin(slab))), max(hi, float(np.nanmax(slab)))
    return lo, hi


def _combine_ranges(parts: list[tuple[float, float]]) -> tuple[float, float]:
    lo, hi = min(p[0] for p in parts), max(p[1] for p in parts)
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def value_range(maps: list[_Map], dtype: np.dtype, v_chunk: int | None, masks: dict) -> Any:
    """Delayed ``(nanmin, nanmax)`` of all maps (whole volumes), read per x-slab.

    nilearn resamples the 4D concatenation of the maps and clips the result
    to its range (and 0): block tasks that resample need that range.

    Parameters
    ----------
    maps : list of _Map
    dtype : numpy dtype
        The maps' common dtype (nilearn's concatenation casts to it).
    v_chunk : int, optional
    masks : dict
        Shared with the graph's other items (see :meth:`_Map.item`).

    Returns
    -------
    dask.delayed
        Of a tuple of 2 floats.
    """
    shape = maps[0].shape
    per_task = _planes_per_task(maps, v_chunk, 1)
    parts = []
    for a in range(0, shape[0], per_task):
        b = min(a + per_task, shape[0])
        parts.append(dask.delayed(_range_task, pure=False)([m.item(a, b, masks) for m in maps], a, b,
                                                             shape[1:], dtype))
    return dask.delayed(_combine_ranges, pure=False)(parts)

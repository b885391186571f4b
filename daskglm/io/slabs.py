"""Maps read by slabs of x-planes: the one reader of fixed effects and the second level.

A map (an effect or variance image on a grid) is a :class:`MapSource`: a NIfTI
file (all its volumes, or one volume of a 4D file), an array in memory, or a
lazy vector of voxel values (a first-level contrast, a ``(voxel,)`` DataArray)
with the voxels' place in the volume. Graphs built over the maps give each block
task, per map, the :class:`FilePlanes`, :class:`ArrayPlanes` or
:class:`VoxelPlanes` of :meth:`MapSource.planes`, and the task rebuilds those
planes with :func:`read_planes`: a task holds slabs, never a whole map.

Also here, what both callers plan and check with: :func:`plane_blocks` (blocks of
whole x-planes of a mask), :func:`check_grid` (all maps on one grid),
:func:`planes_per_task` (slabs of a pass over every map) and that pass itself for
the mean of the maps (:func:`mean_of_maps`, nilearn's ``mean_img``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np

from ..runtime import plan as _plan
from ..runtime.cluster import compute, phase
from .nifti import nifti_image, open_image

__all__ = ["ArrayPlanes", "FilePlanes", "MapSource", "VoxelPlanes", "check_grid", "mean_of_maps", "open_map",
           "plane_blocks", "planes_per_task", "read_file", "read_planes", "voxel_map"]


# ---------------------------------------------------------------- what a block task reads


@dataclass(frozen=True)
class FilePlanes:
    """Planes of a NIfTI file: one volume of a 4D file, or (``volume`` None) all of them."""

    path: str
    volume: int | None = None


@dataclass(frozen=True)
class ArrayPlanes:
    """Planes held in the graph: numpy, or a dask array that the task's graph computes."""

    values: Any


@dataclass(frozen=True)
class VoxelPlanes:
    """Voxel values of some planes in C order (Delayed chunks) and where they lie in the planes
    (a Delayed bool array); the other voxels are 0."""

    chunks: list
    where: Any


def read_file(path: str, i0: int | None = None, i1: int | None = None) -> np.ndarray:
    """x-planes ``i0:i1`` of a NIfTI file (the whole image by default), as nibabel scales them.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file and the planes.
    """
    try:
        return np.asanyarray(nib.load(path).dataobj[i0:i1])
    except Exception as exc:
        what = "the image" if i0 is None else f"x-planes {i0}..{i1 - 1}"
        msg = f"{path!r}: cannot read {what}: {exc}"
        raise (FileNotFoundError(msg) if isinstance(exc, FileNotFoundError) else ValueError(msg)) from exc


def read_planes(planes: FilePlanes | ArrayPlanes | VoxelPlanes, a: int, b: int, yz: tuple[int, int],
                cache: dict) -> np.ndarray:
    """Planes ``[a, b)`` of one map: shape ``(b - a, y, z)``, or ``(b - a, y, z, q)`` for all the
    volumes of a file of q > 1 volumes (a file of one volume gives 3D planes).

    ``cache`` lives as long as one task: the planes of a 4D file read for one of its
    volumes serve its other volumes.
    """
    if isinstance(planes, FilePlanes):
        if planes.volume is None:
            data = read_file(planes.path, a, b)
            return data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
        if planes.path not in cache:  # a 4D file: read once per task, for all its volumes
            cache[planes.path] = read_file(planes.path, a, b)
        return cache[planes.path][..., planes.volume]
    if isinstance(planes, ArrayPlanes):
        return np.asanyarray(planes.values)
    out = np.zeros((b - a, *yz), dtype=np.float64)
    out[planes.where] = np.concatenate(planes.chunks) if planes.chunks else []
    return out


# ---------------------------------------------------------------- the maps


@dataclass
class MapSource:
    """One map on a grid and where its planes come from (exactly one of path, array, voxels).

    Attributes
    ----------
    name : str
        How messages name it.
    shape : tuple of int
        ``(x, y, z)``, or ``(x, y, z, q)`` for all the volumes of a 4D image (q > 1).
    affine : ndarray, shape (4, 4)
    dtype : numpy dtype
        Of the data as nibabel (or the array) gives it.
    path : str, optional
        A NIfTI file...
    volume : int, optional
        ...its volume ``volume`` (None: all of them).
    array : ndarray or dask array, optional
        In memory (or lazy), of shape ``shape``.
    voxels : dask array, optional
        Values of the voxels, shape (v,), in C order...
    starts : ndarray, shape (x + 1,), optional
        ...the offset in ``voxels`` of each x-plane...
    where : ndarray of bool, shape (x, y, z), optional
        ...and where they lie, with ``where_token`` its dask token.
    """

    name: str
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: np.dtype
    path: str | None = None
    volume: int | None = None
    array: Any = None
    voxels: Any = None
    starts: np.ndarray | None = None
    where: np.ndarray | None = None
    where_token: str | None = None

    @property
    def q(self) -> int:
        """Volumes of the map (1 but for a 4D image read whole)."""
        return self.shape[3] if len(self.shape) == 4 else 1

    def planes(self, a: int, b: int, masks: dict) -> FilePlanes | ArrayPlanes | VoxelPlanes:
        """What a block task needs to rebuild planes ``[a, b)`` with :func:`read_planes`.

        ``masks`` is shared by the maps of one graph, so that each slab of a
        voxel vector's ``where`` becomes one graph node.
        """
        if self.path is not None:
            return FilePlanes(self.path, self.volume)
        if self.array is not None:
            return ArrayPlanes(self.array[a:b])
        if (self.where_token, a, b) not in masks:
            masks[self.where_token, a, b] = dask.delayed(self.where[a:b].copy(), pure=True)
        # Delayed chunks, not a dask array: dask 2026.8 reorders a list mixing both in a delayed call;
        # unoptimised, so that blocks share the chunks' graph instead of recomputing it
        chunks = list(self.voxels[self.starts[a]:self.starts[b]].to_delayed(optimize_graph=False).ravel())
        return VoxelPlanes(chunks, masks[self.where_token, a, b])


def open_map(obj: Any, role: str) -> MapSource:
    """A path (its header only) or nibabel image as one map of all its volumes.

    A 4D image of one volume counts as 3D. The dtype of a file's data is that of
    a one-voxel read (nibabel's scaling included). Messages name the map
    ``role (path)`` or ``role (in-memory Nifti1Image)``.
    """
    img, path = open_image(obj, role)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    affine = np.asarray(img.affine, dtype=float)
    if path is not None:
        dtype = np.asanyarray(img.dataobj[(slice(0, 1),) * len(img.shape)]).dtype
        return MapSource(f"{role} ({path!r})", shape, affine, dtype, path=path)
    data = np.asanyarray(img.dataobj)
    return MapSource(f"{role} (in-memory {type(img).__name__})", shape, affine, data.dtype, array=data.reshape(shape))


def voxel_map(name: str, values: Any, ijk: Sequence[np.ndarray], shape: Sequence[int],
              affine: np.ndarray) -> MapSource:
    """A map of voxel values (numpy or dask, shape (v,)) at voxels ``i, j, k`` of a volume of
    ``shape``; the others are 0."""
    shape = tuple(int(s) for s in shape)
    ijk = tuple(np.asarray(c) for c in ijk)
    values = da.asarray(values)
    order = np.argsort(np.ravel_multi_index(ijk, shape), kind="stable")
    if np.any(order != np.arange(order.size)):
        values, ijk = values[order], tuple(c[order] for c in ijk)
    where = np.zeros(shape, dtype=bool)
    where[ijk] = True
    starts = np.searchsorted(ijk[0], np.arange(shape[0] + 1))
    return MapSource(name, shape, np.asarray(affine, dtype=float), np.dtype(values.dtype), voxels=values,
                     starts=starts, where=where, where_token=dask.base.tokenize(where))


def check_grid(maps: Sequence[MapSource]) -> None:
    """Refuse maps on different grids (shape and affine of the first map), naming both."""
    ref = maps[0]
    for src in maps[1:]:
        if src.shape[:3] != ref.shape[:3] or not np.allclose(src.affine, ref.affine):
            raise ValueError(
                f"{src.name} is on another grid than {ref.name}: shape {src.shape[:3]} vs "
                f"{ref.shape[:3]}, affine {src.affine.round(4).tolist()} vs "
                f"{ref.affine.round(4).tolist()}; all images must share one grid"
            )


# ---------------------------------------------------------------- planning over planes


def plane_blocks(mask: np.ndarray, v_chunk: int) -> list[tuple[int, int, int, int]]:
    """Blocks ``(i0, i1, v0, v1)`` of whole x-planes with at most ``v_chunk`` voxels of ``mask``
    (at least one plane), trimmed to planes holding voxels; ``v0:v1`` are their voxels in C order."""
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    groups, start, n = [], 0, 0
    for i, c in enumerate(counts):
        if c and n and n + c > v_chunk:  # an empty plane never starts a block
            groups.append((start, i))
            start, n = i, 0
        n += int(c)
    groups.append((start, mask.shape[0]))
    blocks, v0 = [], 0
    for i0, i1 in groups:
        planes = np.flatnonzero(counts[i0:i1])
        if planes.size == 0:  # only empty planes (the last group of a mask ending in them)
            continue
        n = int(counts[i0:i1].sum())
        blocks.append((i0 + int(planes[0]), i0 + int(planes[-1]) + 1, v0, v0 + n))
        v0 += n
    return blocks


def planes_per_task(maps: Sequence[MapSource], v_chunk: int | None, rows: int) -> int:
    """x-planes per task of a pass that reads every map (``rows`` plane-sized float64 arrays held
    besides the planes read), at least one and at most half the planes."""
    shape = maps[0].shape
    plane = shape[1] * shape[2]
    # volumes of the largest 4D file: a task reads all of them at once
    per_file = max(max(Counter(m.path for m in maps if m.volume is not None).values(), default=1),
                   max(m.q for m in maps))
    budget = v_chunk // plane if v_chunk else _plan.DEFAULT_TASK_BYTES // (8 * plane * (per_file + rows))
    return max(1, min(budget, math.ceil(shape[0] / 2)))


def _mean_task(items: list, a: int, b: int, yz: tuple[int, int], n_volumes: int) -> np.ndarray:
    """Mean of planes ``[a, b)`` over the maps' volumes, float64, NaN kept (nilearn's ``mean_img``)."""
    total = np.zeros((b - a, *yz))
    cache: dict = {}
    for item in items:
        slab = read_planes(item, a, b, yz, cache)
        total += np.asarray(slab, dtype=np.float64).sum(axis=3) if slab.ndim == 4 else slab
    return total / n_volumes


def mean_of_maps(maps: Sequence[MapSource], client: Any, v_chunk: int | None = None, verbose: int = 0,
                 label: str | None = None) -> nib.Nifti1Image:
    """Mean of all volumes of all maps (nilearn's ``mean_img``), per x-slab: no task holds every map.

    Parameters
    ----------
    maps : sequence of MapSource
        On one grid.
    client : see :func:`daskglm.runtime.cluster.get_client`
    v_chunk : int, optional
        Voxels per task (whole x-planes); default: a task budget.
    verbose : int
    label : str, optional
        The progress phase's label; default ``mean of <n> maps``.

    Returns
    -------
    Nifti1Image, shape (x, y, z), float64, with the first map's affine
    """
    shape = maps[0].shape
    per_task = planes_per_task(maps, v_chunk, 2)
    n_volumes = sum(m.q for m in maps)
    masks: dict = {}
    slabs = []
    for a in range(0, shape[0], per_task):
        b = min(a + per_task, shape[0])
        task = dask.delayed(_mean_task, pure=False)([m.planes(a, b, masks) for m in maps], a, b, shape[1:3],
                                                    n_volumes)
        slabs.append(da.from_delayed(task, (b - a, *shape[1:3]), np.float64))
    with phase(label or f"mean of {len(maps)} maps", default=True):
        (mean,) = compute(da.concatenate(slabs, axis=0), client=client, verbose=verbose)
    return nifti_image(np.asarray(mean), maps[0].affine)

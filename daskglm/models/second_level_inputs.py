"""The inputs of :class:`daskglm.models.second_level.SecondLevelModel`: effect maps and how block tasks read them.

``second_level_input`` (3D images or paths, a 4D image or path, a Series of
them, fitted first-level models, or a DataFrame) is checked by nilearn's own
functions; :func:`header_standins` lets them check paths from their headers
(nilearn reads every 3D file whole to check it). The maps become
:class:`daskglm.io.slabs.MapSource` records, one per effect map: a file (or a
volume of a 4D file), an array in memory, or the lazy effect of a daskglm
first-level model. Block tasks read their x-planes with
:func:`daskglm.io.slabs.read_planes` (the reader fixed effects use too).

Two passes over all maps, each per x-slab and never holding every map:
:func:`daskglm.io.slabs.mean_of_maps` (nilearn's sample map for
``mask_img=None``: the mean of the maps) and :func:`value_range` (the range of
all maps, to which nilearn's ``resample_img`` clips resampled maps).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import nibabel as nib
import numpy as np

from ..io.cifti import grid_image, grid_mask
from ..io.nifti import open_image
from ..io.slabs import MapSource, open_map, planes_per_task, read_planes, voxel_map
from ..io.surface import is_surface as is_surface_data

__all__ = ["grid_masker", "header_standins", "image_maps", "is_surface", "list_maps", "model_map", "element_maps",
           "value_range"]


def is_surface(obj: Any) -> bool:
    """Whether ``obj`` is surface data (a ``SurfaceImage``/``SurfaceMasker``, or a list of them)."""
    if isinstance(obj, (list, tuple)) and obj:
        obj = obj[0]
    return is_surface_data(obj)


def _check_found(obj: Any, role: str) -> None:
    """nilearn's message for a missing file."""
    if isinstance(obj, (str, os.PathLike)) and not Path(obj).expanduser().exists():
        raise ValueError(f"File not found: {os.fspath(obj)!r} ({role})")


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
        _check_found(obj, role)
        img, _ = open_image(obj, role)
        empty = np.broadcast_to(np.zeros((), dtype=img.get_data_dtype()), img.shape)
        return nib.Nifti1Image(empty, img.affine, img.header)

    if isinstance(second_level_input, pd.Series):
        second_level_input = second_level_input.to_list()
    if isinstance(second_level_input, list):
        return [standin(obj, f"second_level_input[{n}]") for n, obj in enumerate(second_level_input)]
    return standin(second_level_input, "second_level_input")


def image_maps(obj: Any, role: str) -> list[MapSource]:
    """Maps of a path or image: one per volume (a 3D image, or 4D with one volume, gives one).

    Parameters
    ----------
    obj : str, path or nibabel image
    role : str
        How messages name it.

    Returns
    -------
    list of MapSource
    """
    _check_found(obj, role)
    src = open_map(obj, role)
    if len(src.shape) not in (3, 4):
        raise ValueError(f"{role} ({src.path or 'in-memory image'}) must be 3D or 4D; got shape {src.shape}")
    if src.q == 1:
        return [src]
    return [replace(src, name=f"{src.name} volume {s}", shape=src.shape[:3],
                    **({"volume": s} if src.path is not None else {"array": src.array[..., s]}))
            for s in range(src.q)]


def list_maps(imgs: list, role: str) -> list[MapSource]:
    """One 3D map per element, as nilearn requires of a list of images.

    Parameters
    ----------
    imgs : list of paths or images
    role : str
        How messages name the list.

    Returns
    -------
    list of MapSource
    """
    maps = []
    for n, obj in enumerate(imgs):
        found = image_maps(obj, f"{role}[{n}]")
        if len(found) != 1:
            raise ValueError("When passing a list of Nifti image, each image must be 3D, or 4D with single "
                             f"volume. Got '{role}[{n}]' with {len(found)} volumes ({found[0].name}).")
        maps += found
    return maps


def model_map(model: Any, contrast: Any, index: int) -> MapSource:
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
    MapSource
    """
    name = f"second_level_input[{index}] (subject_label={model.subject_label!r})"
    if not hasattr(model, "contrast_dataset"):  # a nilearn FirstLevelModel: its image, computed now
        img = model.compute_contrast(contrast, output_type="effect_size")
        if len(img.shape) != 3:
            raise ValueError(f"{name}: first_level_contrast {contrast!r} gives a {len(img.shape)}D effect map "
                             f"{img.shape}; the second level needs one 3D map per model (a t contrast)")
        return MapSource(name, img.shape, np.asarray(img.affine, float), np.asanyarray(img.dataobj).dtype,
                         array=np.asanyarray(img.dataobj))
    ds = model.contrast_dataset(contrast)
    effect = ds["effect_size"]
    if effect.dims != ("voxel",):
        raise ValueError(f"{name}: first_level_contrast {contrast!r} is an F contrast (effect dims "
                         f"{effect.dims}); the second level needs one 3D effect map per model (a t contrast)")
    return voxel_map(name, effect.data, [effect[n].values for n in "ijk"], ds.attrs["volume_shape"],
                     ds.attrs["affine"])


def element_maps(masker: Any, inputs: Any) -> list[MapSource]:
    """Surface or CIFTI effect maps as maps of the identity grid (:func:`daskglm.io.cifti.grid_image`).

    Parameters
    ----------
    masker : nilearn.maskers.SurfaceMasker or daskglm.io.cifti.CiftiMasker
        The model's fitted ``masker_``.
    inputs : SurfaceImage, CIFTI-2 image or path, or a list of them
        One image of ``k`` samples (``k`` maps), or one map per image (a surface image of
        several samples counts as their mean, as nilearn's ``mean_img``).

    Returns
    -------
    list of MapSource
        Shape ``(n_elements, 1, 1)`` each, in memory.
    """
    from nilearn.image import mean_img

    if not isinstance(inputs, (list, tuple)):
        return image_maps(grid_image(np.asarray(masker.transform(inputs), np.float64)), "second_level_input")
    if is_surface(inputs):
        inputs = [mean_img(img) for img in inputs]  # nilearn's: one map per image
    return list_maps([grid_image(np.asarray(masker.transform(img), np.float64)) for img in inputs],
                     "second_level_input")


def grid_masker(n_elements: int) -> Any:
    """A fitted ``NiftiMasker`` keeping every voxel of the ``(n_elements, 1, 1)`` identity grid.

    What the volume machinery masks surface maps with: the surface masker has kept the
    vertices already.
    """
    from nilearn.maskers import NiftiMasker

    return NiftiMasker(mask_img=grid_mask(n_elements), standardize=None).fit()


# ---------------------------------------------------------------- the range of the maps (for resampling)


def _range_task(items: list, a: int, b: int, yz: tuple[int, int], dtype: np.dtype) -> tuple[float, float]:
    """``nanmin`` and ``nanmax`` of planes ``[a, b)`` of the maps, cast to ``dtype``."""
    lo, hi = np.inf, -np.inf
    cache: dict = {}
    for item in items:
        slab = np.asarray(read_planes(item, a, b, yz, cache)).astype(dtype, copy=False)
        if slab.size and not np.isnan(slab).all():
            lo, hi = min(lo, float(np.nanmin(slab))), max(hi, float(np.nanmax(slab)))
    return lo, hi


def _combine_ranges(parts: list[tuple[float, float]]) -> tuple[float, float]:
    lo, hi = min(p[0] for p in parts), max(p[1] for p in parts)
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def value_range(maps: list[MapSource], dtype: np.dtype, v_chunk: int | None, masks: dict) -> Any:
    """Delayed ``(nanmin, nanmax)`` of all maps (whole volumes), read per x-slab.

    nilearn resamples the 4D concatenation of the maps and clips the result
    to its range (and 0): block tasks that resample need that range.

    Parameters
    ----------
    maps : list of MapSource
    dtype : numpy dtype
        The maps' common dtype (nilearn's concatenation casts to it).
    v_chunk : int, optional
    masks : dict
        Shared with the graph's other items (see :meth:`daskglm.io.slabs.MapSource.planes`).

    Returns
    -------
    dask.delayed
        Of a tuple of 2 floats.
    """
    shape = maps[0].shape
    per_task = planes_per_task(maps, v_chunk, 1)
    parts = []
    for a in range(0, shape[0], per_task):
        b = min(a + per_task, shape[0])
        parts.append(dask.delayed(_range_task, pure=False)([m.planes(a, b, masks) for m in maps], a, b,
                                                             shape[1:], dtype))
    return dask.delayed(_combine_ranges, pure=False)(parts)

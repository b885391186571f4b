"""The inputs of :class:`daskglm.second_level.SecondLevelModel`: effect maps, their grid, the mask.

``second_level_input`` (3D images or paths, a 4D image or path, a Series of
them, fitted first-level models, or a DataFrame) is checked with nilearn's
messages (:func:`_input_kind`, :func:`_check_models`) and turned into
:class:`_Map` records, one per effect map: a file (or a volume of a 4D file),
an array in memory, or the lazy effect of a daskglm first-level model. A block
task gets from :meth:`_Map.item` what it needs to rebuild some x-planes of a
map, and :func:`_slab` rebuilds them. :func:`_grid_reference` is the map whose
grid the mask and all maps must share; :func:`_background_mask` is nilearn's
mask for ``mask_img=None`` (for images, of the mean of the maps, computed per
x-slab by :func:`_mean_volume`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd

# nilearn's own check, which does not depend on nilearn's FirstLevelModel class (present since 0.12)
from nilearn.glm.second_level.second_level import _check_input_as_dataframe

from . import _plan
from .cluster import compute
from .fixed_effects import _read
from .nifti import _load_image

_INPUT_TYPES = ("a pandas DataFrame", "a 4D Niimg-like object", "a pandas Series of Niimg-like objects",
                "a list of Niimg-like objects", "a list of FirstLevelModel objects")


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
        """What a block task needs to rebuild planes ``[a, b)`` of the map."""
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


def _image_maps(obj: Any, role: str) -> list[_Map]:
    """Maps of a path or image: one per volume (a 3D image, or 4D with one volume, gives one)."""
    img, path = _load_image(obj, role)
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


def _list_maps(imgs: list, role: str) -> list[_Map]:
    """One 3D map per element, as nilearn requires of a list of images."""
    maps = []
    for n, obj in enumerate(imgs):
        found = _image_maps(obj, f"{role}[{n}]")
        if len(found) != 1:
            raise ValueError("When passing a list of Nifti image, each image must be 3D, or 4D with single "
                             f"volume. Got '{role}[{n}]' with {len(found)} volumes ({found[0].name}).")
        maps += found
    return maps


def _model_map(model: Any, contrast: Any, index: int) -> _Map:
    """The first-level effect of ``contrast``: lazy for daskglm models, computed for nilearn's."""
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


def _mean_task(items: list, a: int, b: int, yz: tuple[int, int]) -> np.ndarray:
    """Mean of planes ``[a, b)`` over the maps, float64, NaN kept (nilearn's ``mean_img``)."""
    total = np.zeros((b - a, *yz))
    cache: dict = {}
    for item in items:
        total += _slab(item, a, b, yz, cache)
    return total / len(items)


def _mean_volume(maps: list[_Map], client: Any, v_chunk: int | None) -> np.ndarray:
    """Mean of all maps, shape (x, y, z), computed per x-slab: no task holds every map."""
    shape = maps[0].shape
    plane = shape[1] * shape[2]
    # volumes of the largest 4D file: a task reads all of them at once
    per_file = max(Counter(m.path for m in maps if m.volume is not None).values(), default=1)
    budget = v_chunk // plane if v_chunk else _plan.DEFAULT_TASK_BYTES // (8 * plane * (per_file + 2))
    per_task = max(1, min(budget, math.ceil(shape[0] / 2)))
    masks: dict = {}
    slabs = []
    for a in range(0, shape[0], per_task):
        b = min(a + per_task, shape[0])
        task = dask.delayed(_mean_task, pure=False)([m.item(a, b, masks) for m in maps], a, b, shape[1:])
        slabs.append(da.from_delayed(task, (b - a, *shape[1:]), np.float64))
    (mean,) = compute(da.concatenate(slabs, axis=0), client=client)
    return np.asarray(mean)


# ---------------------------------------------------------------- input checks (nilearn's messages)


def _is_model(obj: Any) -> bool:
    """Whether ``obj`` is a daskglm or nilearn ``FirstLevelModel``."""
    from nilearn.glm.first_level import FirstLevelModel as NilearnFirstLevelModel

    from .model import FirstLevelModel

    return isinstance(obj, (FirstLevelModel, NilearnFirstLevelModel))


def _input_kind(second_level_input: Any) -> tuple[str, Any]:
    """``("df", DataFrame)``, ``("models", list)`` or ``("images", list of maps or a 4D input)``."""
    if isinstance(second_level_input, pd.DataFrame):
        _check_input_as_dataframe(second_level_input)
        return "df", second_level_input
    if isinstance(second_level_input, pd.Series):
        second_level_input = second_level_input.to_list()
    if isinstance(second_level_input, (str, Path, nib.spatialimages.SpatialImage)):
        return "images", second_level_input
    if isinstance(second_level_input, list):
        if len(second_level_input) < 2:
            raise TypeError("A second level model requires a list with at least two first level models or "
                            f"niimgs or surface images; got {len(second_level_input)}.")
        models = [_is_model(x) for x in second_level_input]
        images = [isinstance(x, (str, Path, nib.spatialimages.SpatialImage)) for x in second_level_input]
        if all(models) or all(images):
            return ("models" if all(models) else "images"), second_level_input
        bad = next(i for i, (m, im) in enumerate(zip(models, images))
                   if (m, im) != (models[0], images[0]) or not (m or im))
        raise TypeError("Elements of 'second_level_input' must be of the same type (all images or all "
                        f"FirstLevelModel). Got object type {type(second_level_input[bad])} at idx {bad}.")
    raise TypeError(f"'second_level_input' must be one of: {', '.join(_INPUT_TYPES)}. "
                    f"Got {type(second_level_input)} instead.")


def _check_models(models: list, none_confounds: bool) -> None:
    """nilearn's checks of first-level models (daskglm's have no ``__sklearn_is_fitted__``)."""
    for idx, model in enumerate(models):
        fitted = (model.__sklearn_is_fitted__() if hasattr(model, "__sklearn_is_fitted__")
                  else getattr(model, "results_", None) is not None)
        if not fitted:
            raise ValueError(f"Model {model.subject_label} at index {idx} has not been fit yet.")
        if not none_confounds and model.subject_label is None:
            raise ValueError("In case confounds are provided, first level objects need to provide the "
                             "attribute 'subject_label' to match rows appropriately.\nModel at idx "
                             f"{idx} does not provide it. To set it, you can do first_level.subject_label = '01'")


def _model_grid(model: Any) -> nib.Nifti1Image:
    """The mask image of a fitted first-level model (daskglm's ``mask_img_``, else its masker's)."""
    mask = getattr(model, "mask_img_", None)
    return mask if mask is not None else model.masker_.mask_img_


def _grid_reference(kind: str, inputs: Any, maps: list[_Map]) -> _Map:
    """The map whose grid the mask and all maps must share (checks the models' grids)."""
    if kind == "images":
        return maps[0]
    if kind == "df":
        return _image_maps(inputs["effects_map_path"][0], "second_level_input['effects_map_path'][0]")[0]
    grid = _model_grid(inputs[0])
    ref = _Map("second_level_input[0]", tuple(grid.shape[:3]), np.asarray(grid.affine, float), np.dtype(np.float64))
    for idx, model in enumerate(inputs[1:], start=1):
        other = _model_grid(model)
        if tuple(other.shape[:3]) != ref.shape or not np.allclose(other.affine, ref.affine):
            raise ValueError(f"All first level models must have the same affine and shape.\nModel "
                             f"{model.subject_label} at index {idx} has shape {other.shape[:3]}, affine "
                             f"{np.round(other.affine, 4).tolist()}; model 0 has {ref.shape}, "
                             f"{np.round(ref.affine, 4).tolist()}")
    return ref


def _background_mask(kind: str, inputs: Any, maps: list[_Map], ref: _Map, client: Any,
                     v_chunk: int | None) -> np.ndarray:
    """nilearn's mask for ``mask_img=None``: ``compute_background_mask`` of its sample map, shape (x, y, z)."""
    from nilearn.masking import compute_background_mask, load_mask_img

    if kind == "images":  # the mean of all maps
        sample = _mean_volume(maps, client, v_chunk)
    elif kind == "df":  # the first map of the sorted DataFrame
        sample = np.asanyarray(nib.load(ref.path).dataobj) if ref.path else ref.array
    else:  # the effect of the first model's first design column
        first = inputs[0]
        img = first.compute_contrast(first.design_matrices_[0].columns[0], output_type="effect_size")
        sample = np.asanyarray(img.dataobj)
    try:
        mask, _ = load_mask_img(compute_background_mask(nib.Nifti1Image(sample, ref.affine)))
    except ValueError as exc:
        raise ValueError(f"the mask computed from the input maps (mask_img=None) is invalid: {exc}") from exc
    return np.asarray(mask, dtype=bool)


"""Fixed effects of per-run contrast maps, out of core over voxel blocks.

:func:`compute_fixed_effects` is nilearn 0.14's
``nilearn.glm.contrasts.compute_fixed_effects`` (same parameters, same four
returned images) run on Dask; :func:`fixed_effects_dataset` is its lazy core,
an :class:`xarray.Dataset` over the masked voxels.

Masked voxels are taken in C order (nilearn's) and grouped into blocks of
whole x-planes ``i0 <= i < i1`` of about ``v_chunk`` voxels
(:func:`daskglm.io.slabs.plane_blocks`). The maps are
:class:`daskglm.io.slabs.MapSource` records, read by slabs of x-planes as the
second level reads its maps: for each input file (or lazy ``xarray.DataArray``)
and block, one task rebuilds the planes ``i0:i1`` (:func:`daskglm.io.slabs.read_planes`:
``dataobj[i0:i1]`` of a file, a ``.nii`` with strided reads, a ``.nii.gz``
decompressed by the task; the slab of a lazy volume; a vector's voxels in those
planes) and keeps its masked voxels; one task per block stacks the R runs and calls
:func:`daskglm.kernels.stats.fixed_effects`. A task thus holds at most R slabs,
never R whole maps. In-memory images are masked eagerly (they are in memory
already).

nilearn behaviours reproduced: the mask is an image or path (nilearn's
``load_mask_img`` checks: binary, non-empty), a ``NiftiMasker`` (fitted as
nilearn does) or ``None``: nilearn's ``compute_background_mask`` of the mean
of all contrast volumes (the mean computed out of core). Non-finite inputs
become 0 and variances are floored at 1e-16, silently (zero variances, e.g.
of constant voxels, included). 4D contrast maps of
q > 1 volumes give an F statistic and a 4D effect image; a 4D map of one
volume counts as 3D. Output dtypes are nilearn's (float32 effect, variance
and stat for float32 inputs; float64 z), values are computed in float64.

Deliberate differences: all maps and the mask must share one grid (nilearn
resamples the maps to the mask), ``NiftiMasker`` options that transform
the maps (smoothing, filtering, standardising...) are refused, and a
variance map with negative values inside the mask is an error when the
block holding them is computed (nilearn floors them at 1e-16: most often
the effect maps were given as ``variance_imgs``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from ..io.cifti import CiftiMasker, grid_image, grid_mask, is_cifti_map
from ..io.maps import scatter_to_volume
from ..io.nifti import nifti_image, open_image
from ..io.slabs import ArrayPlanes, MapSource, check_grid, mean_of_maps, open_map, plane_blocks, read_planes, voxel_map
from ..io.surface import fixed_effects_masker, is_surface
from ..kernels.packing import fixed_effects_rows
from ..kernels.stats import DEFAULT_RUN_DOF, fixed_effects
from ..runtime import plan as _plan
from ..runtime.cluster import compute, phase

__all__ = ["compute_fixed_effects", "fixed_effects_dataset"]

#: NiftiMasker options that would transform the signal, with their neutral values.
_NEUTRAL_MASKER = {"smoothing_fwhm": None, "detrend": False, "high_variance_confounds": False,
                   "low_pass": None, "high_pass": None, "dtype": None}


def _masked_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    values[~np.isfinite(values)] = 0.0
    return values


def _open_source(obj: Any, role: str, like: Any) -> MapSource:
    if isinstance(obj, xr.DataArray):
        label = f"{role} (DataArray {obj.name!r})"
        attrs = {**(like.attrs if like is not None else {}), **obj.attrs}
        if "affine" not in attrs:
            raise ValueError(f"{label} carries no 'affine' attribute; pass like= a run Dataset")
        affine = np.asarray(attrs["affine"], dtype=float)
        if obj.dims == ("voxel",):
            missing = [n for n in "ijk" if n not in obj.coords]
            if missing or "volume_shape" not in attrs:
                raise ValueError(f"{label} needs i, j, k voxel coordinates and a 'volume_shape' "
                                 f"attribute (or like=); missing coordinates {missing}")
            return voxel_map(label, obj.data, [obj.coords[n].values for n in "ijk"], attrs["volume_shape"], affine)
        if obj.dims == ("x", "y", "z"):
            return MapSource(label, tuple(int(s) for s in obj.shape), affine, np.dtype(obj.dtype), array=obj.data)
        raise ValueError(f"{label} must have dims ('voxel',) or ('x', 'y', 'z'); got {obj.dims}")
    src = open_map(obj, role)
    if len(src.shape) not in (3, 4):
        raise ValueError(f"{src.name} must be a 3D image (or 4D for an F contrast); got shape {src.shape}")
    return src


def _check_covered(src: MapSource, mask: np.ndarray) -> None:
    """Refuse a map of voxel values that lacks voxels of the mask."""
    if src.where is not None:
        missing = int((mask & ~src.where).sum())
        if missing:
            raise ValueError(f"{src.name} has {src.voxels.shape[0]} voxels and misses {missing} "
                             f"of the {int(mask.sum())} voxels of the mask")


def _masked_block(planes: Any, i0: int, i1: int, yz: tuple[int, int], mask_slab: np.ndarray) -> np.ndarray:
    """Masked voxels of x-planes ``i0:i1`` of a map, shape (q, v_block), float64, non-finite as 0."""
    values = read_planes(planes, i0, i1, yz, {})[mask_slab]  # (v_block,) or (v_block, q)
    return _finite(values.reshape(values.shape[0], -1).T)


def _source_blocks(src: MapSource, mask: np.ndarray, blocks: list[tuple[int, int, int, int]],
                   slab_keys: list[Any], masks: dict) -> list[Any]:
    """One (q, v_block) float64 piece per block: Delayed reads, or arrays for maps in memory."""
    _check_covered(src, mask)
    read = dask.delayed(_masked_block, pure=False)
    pieces = []
    for (i0, i1, _, _), key in zip(blocks, slab_keys):
        planes = src.planes(i0, i1, masks)
        if isinstance(planes, ArrayPlanes) and not isinstance(planes.values, da.Array):  # masked now
            pieces.append(_masked_block(planes, i0, i1, src.shape[1:3], mask[i0:i1]))
        else:
            pieces.append(read(planes, i0, i1, src.shape[1:3], key))
    return pieces


def _background_mask(contrasts: list[MapSource], client: Any, v_chunk: int | None) -> np.ndarray:
    """nilearn's ``NiftiMasker().fit(contrast_imgs)`` mask, from an out-of-core mean."""
    from nilearn.masking import compute_background_mask, load_mask_img

    mean = mean_of_maps(contrasts, client, v_chunk,
                        label=f"fixed effects: mask (mean of {len(contrasts)} contrast images)")
    mask_img = compute_background_mask(mean)
    try:
        mask, _ = load_mask_img(mask_img)
    except ValueError as exc:
        raise ValueError(f"the mask computed from the mean of the {len(contrasts)} contrast images "
                         f"(mask=None) is invalid: {exc}") from exc
    return np.asarray(mask, dtype=bool)


def _given_mask(mask: Any, ref: MapSource) -> np.ndarray:
    from nilearn.maskers import NiftiMasker
    from nilearn.masking import load_mask_img

    if isinstance(mask, NiftiMasker):
        changed = {k: getattr(mask, k) for k, v in _NEUTRAL_MASKER.items() if getattr(mask, k) != v}
        if mask.standardize not in (False, None):
            changed["standardize"] = mask.standardize
        if changed:
            raise ValueError(f"NiftiMasker options that transform the maps are not supported: {changed}")
        with warnings.catch_warnings():  # as nilearn: the masker may hold a mask image
            warnings.filterwarnings("ignore", message=r".*Generation of a mask.*")
            img, name = mask.fit().mask_img_, "of the NiftiMasker"
    else:
        img, path = open_image(mask, "mask")
        name = repr(path) if path else f"(in-memory {type(img).__name__})"
    try:
        data, _ = load_mask_img(img)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"mask {name} is invalid: {exc}") from exc
    data = np.asarray(data, dtype=bool)
    affine = np.asarray(img.affine, dtype=float)
    if data.shape != ref.shape[:3] or not np.allclose(affine, ref.affine):
        raise ValueError(
            f"mask {name} (shape {data.shape}, affine {affine.round(4).tolist()}) is not on the grid "
            f"of {ref.name} (shape {ref.shape[:3]}, affine {ref.affine.round(4).tolist()}): resample "
            "it first, e.g. nilearn.image.resample_to_img(mask, img, interpolation='nearest')"
        )
    return data


def _check_variances(variances: list[np.ndarray], names: list[str]) -> None:
    """Refuse clearly negative variances (nilearn floors them silently at 1e-16).

    A variance map is never negative: negative values mean a wrong input,
    most often the effect maps given as ``variance_imgs``. Rounding noise
    around 0 (above ``-1e-10`` times the largest magnitude) is let through.
    """
    for values, name in zip(variances, names):
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            continue
        bad = finite < -1e-10 * max(1.0, float(np.abs(finite).max()))
        if bad.any():
            raise ValueError(
                f"{name} has {int(bad.sum())} negative value(s) inside the mask in this block (min "
                f"{finite.min():.6g}): a variance cannot be negative (were contrast_imgs and "
                "variance_imgs swapped?)")


def _combine_block(effects: list[np.ndarray], variances: list[np.ndarray], dofs: list[float],
                   precision_weighted: bool, names: list[str] | None = None) -> np.ndarray:
    """Fixed effects of one block, packed as :func:`~daskglm.kernels.packing.fixed_effects_rows`."""
    _check_variances(variances, names or [f"variance_imgs[{n}]" for n in range(len(variances))])
    eff = np.stack(effects)  # (R, q, v_block)
    res = fixed_effects(eff[:, 0] if eff.shape[1] == 1 else eff,
                        np.stack([v[0] for v in variances]), dofs, precision_weighted)
    return fixed_effects_rows(eff.shape[1]).pack(**res._asdict())


def _check_inputs(contrast_imgs: Any, variance_imgs: Any, dofs: Any) -> list[float]:
    for role, imgs in (("contrast_imgs", contrast_imgs), ("variance_imgs", variance_imgs)):
        if isinstance(imgs, (str, bytes)) or not isinstance(imgs, Sequence):
            raise TypeError(f"{role} must be a list of images; got {type(imgs).__name__}: {imgs!r:.80}")
    n_runs = len(contrast_imgs)
    if n_runs != len(variance_imgs):
        raise ValueError(f"The number of contrast images ({n_runs}) differs from the number of "
                         f"variance images ({len(variance_imgs)}).")
    if n_runs == 0:
        raise ValueError("contrast_imgs and variance_imgs are empty: at least one run is needed")
    if dofs is None:
        return [float(DEFAULT_RUN_DOF)] * n_runs
    if np.ndim(dofs) != 1:
        raise ValueError(f"dofs must be a sequence of {n_runs} numbers; got {dofs!r}")
    if len(dofs) != n_runs:
        raise ValueError(f"The number of degrees of freedom ({len(dofs)}) differs from the number "
                         f"of contrast images ({n_runs}).")
    return [float(d) for d in dofs]


def fixed_effects_dataset(
    contrast_imgs: Sequence[Any],
    variance_imgs: Sequence[Any],
    mask: Any = None,
    precision_weighted: bool = False,
    dofs: Sequence[float] | np.ndarray | None = None,
    *,
    client: Any = None,
    v_chunk: int | None = None,
    like: Any = None,
) -> xr.Dataset:
    """Lazy fixed effects of R runs over the masked voxels.

    Parameters
    ----------
    contrast_imgs : list of R paths, nibabel images or xarray.DataArray
        Effect maps: 3D, or 4D of q volumes (an F contrast). A DataArray has
        dims ``("voxel",)`` with ``i, j, k`` coordinates or ``("x", "y", "z")``,
        and its geometry (``affine``, ``volume_shape``) in attrs or ``like``.
    variance_imgs : list of R paths, nibabel images or xarray.DataArray
        Variance maps (3D), on the grid of the contrasts.
    mask : path, Nifti1Image, NiftiMasker or None
        None: nilearn's background mask of the mean contrast (computed now,
        on ``client``).
    precision_weighted : bool, default False
        Weight the runs by their inverse variance.
    dofs : sequence of R floats, optional
        Degrees of freedom of each run (default 100 each).
    client : see :func:`daskglm.runtime.cluster.get_client`
        Used only to compute the mask when ``mask`` is None.
    v_chunk : int, optional
        Voxels per block (blocks are whole x-planes: at least one plane).
        Default: a 128 MiB working set per block task.
    like : xarray.Dataset, optional
        Geometry of DataArray inputs lacking ``affine``/``volume_shape`` attrs.

    Returns
    -------
    xarray.Dataset
        Dask-backed ``effect`` (voxel,) (``(row, voxel)`` for q > 1),
        ``variance``, ``stat`` and ``z_score`` (voxel,), with ``i, j, k``
        coordinates and attrs ``affine``, ``volume_shape``, ``stat_type``,
        ``dof`` (sum of dofs), ``n_runs``, ``precision_weighted``.
    """
    dofs = _check_inputs(contrast_imgs, variance_imgs, dofs)
    _plan.check_positive("v_chunk", v_chunk)
    contrasts = [_open_source(img, f"contrast_imgs[{n}]", like) for n, img in enumerate(contrast_imgs)]
    variances = [_open_source(img, f"variance_imgs[{n}]", like) for n, img in enumerate(variance_imgs)]
    for src in variances:
        if src.q != 1:
            raise ValueError(f"{src.name} is 4D with {src.q} volumes (shape {src.shape}); "
                             "variance images must be 3D")
    q = contrasts[0].q
    for src in contrasts[1:]:
        if src.q != q:
            raise ValueError(f"{src.name} has {src.q} volumes but {contrasts[0].name} has {q}")
    check_grid(contrasts + variances)
    ref = contrasts[0]
    mask_arr = _background_mask(contrasts, client, v_chunk) if mask is None else _given_mask(mask, ref)
    n_runs, n_vox = len(contrasts), int(mask_arr.sum())
    if v_chunk is None:
        by_budget = max(_plan.MIN_V_CHUNK, _plan.DEFAULT_TASK_BYTES // (24 * n_runs * (q + 1)))
        v_chunk = int(min(by_budget, max(_plan.MIN_V_CHUNK, math.ceil(n_vox / 2))))
    blocks = plane_blocks(mask_arr, int(v_chunk))
    slab_keys = [dask.delayed(mask_arr[i0:i1].copy(), pure=True) for i0, i1, _, _ in blocks]
    masks: dict = {}
    eff_parts = [_source_blocks(src, mask_arr, blocks, slab_keys, masks) for src in contrasts]
    var_parts = [_source_blocks(src, mask_arr, blocks, slab_keys, masks) for src in variances]
    combine = dask.delayed(_combine_block, pure=True)
    layout = fixed_effects_rows(q)
    packed = da.concatenate([
        da.from_delayed(combine([p[b] for p in eff_parts], [p[b] for p in var_parts], dofs,
                                bool(precision_weighted), [src.name for src in variances]),
                        (layout.rows, v1 - v0), np.float64)
        for b, (_, _, v0, v1) in enumerate(blocks)
    ], axis=1)
    # dtypes of nilearn's outputs: numpy's promotion of the masked input dtypes
    con_dt = np.result_type(*[_masked_dtype(s.dtype) for s in contrasts])
    var_dt = np.result_type(*[_masked_dtype(s.dtype) for s in variances])
    eff_dt = np.result_type(con_dt, var_dt) if precision_weighted else con_dt
    rows = layout.unpack(packed)
    effect = ((("voxel",), packed[layout.slice("effect").start].astype(eff_dt)) if q == 1
              else (("row", "voxel"), rows["effect"].astype(eff_dt)))
    ijk = np.nonzero(mask_arr)
    return xr.Dataset(
        {
            "effect": effect,
            "variance": (("voxel",), rows["variance"].astype(var_dt)),
            "stat": (("voxel",), rows["stat"].astype(np.result_type(eff_dt, var_dt))),
            "z_score": (("voxel",), rows["z_score"]),
        },
        coords={n: ("voxel", c.astype(np.int64)) for n, c in zip("ijk", ijk)},
        attrs={
            "affine": ref.affine.tolist(),
            "volume_shape": list(ref.shape[:3]),
            "stat_type": "F" if q > 1 else "t",
            "dof": float(np.sum(dofs)),
            "n_runs": n_runs,
            "precision_weighted": bool(precision_weighted),
        },
    )


def compute_fixed_effects(
    contrast_imgs: Sequence[Any],
    variance_imgs: Sequence[Any],
    mask: Any = None,
    precision_weighted: bool = False,
    dofs: Sequence[float] | np.ndarray | None = None,
    *,
    client: Any = None,
    v_chunk: int | None = None,
    like: Any = None,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image]:
    """Fixed effects of runs, as nilearn 0.14's ``compute_fixed_effects``, on Dask.

    Parameters
    ----------
    contrast_imgs, variance_imgs, mask, precision_weighted, dofs
        As nilearn (see :func:`fixed_effects_dataset` for the accepted inputs).
    client : distributed.Client, str or None, optional
        Where the mask (when ``mask`` is None) and the maps are computed,
        resolved by :func:`daskglm.runtime.cluster.get_client`: a client, a
        local scheduler name, a scheduler address or file, or ``None`` for
        the active client, ``DASK_SCHEDULER_ADDRESS`` or an embedded
        ``LocalCluster``.
    v_chunk : int, optional
        Voxels per block task (see :func:`fixed_effects_dataset`).
    like : xarray.Dataset, optional
        Geometry of DataArray inputs.

    Returns
    -------
    fixed_fx_contrast_img : Nifti1Image, shape (x, y, z) or (x, y, z, q)
        The runs' mean effect, or their inverse-variance weighted mean when
        ``precision_weighted``.
    fixed_fx_variance_img : Nifti1Image, shape (x, y, z)
        Its variance: the runs' mean variance divided by their number, or
        ``1 / sum(1 / variances)`` when ``precision_weighted``.
    fixed_fx_stat_img : Nifti1Image, shape (x, y, z)
        t (F for q > 1) with ``sum(dofs)`` degrees of freedom.
    fixed_fx_z_score_img : Nifti1Image, shape (x, y, z)
        All zero outside the mask.
    """
    masker = _element_masker(contrast_imgs, variance_imgs, mask)
    if masker is not None:
        return _masked_fixed_effects(masker, contrast_imgs, variance_imgs, precision_weighted, dofs,
                                     client=client, v_chunk=v_chunk)
    ds = fixed_effects_dataset(contrast_imgs, variance_imgs, mask, precision_weighted, dofs,
                               client=client, v_chunk=v_chunk, like=like)
    names = ("effect", "variance", "stat", "z_score")
    with phase("fixed effects", default=True):
        values = compute(*[ds[n].data for n in names], client=client)
    ijk = [ds.coords[n].values for n in "ijk"]
    shape, affine = tuple(ds.attrs["volume_shape"]), np.asarray(ds.attrs["affine"])
    return tuple(nifti_image(scatter_to_volume(np.asarray(v), *ijk, shape), affine)
                 for v in values)  # type: ignore[return-value]


def _element_masker(contrast_imgs: Sequence[Any], variance_imgs: Sequence[Any], mask: Any) -> Any:
    """For surface or CIFTI maps, the masker that turns them into rows of elements; None for volumes."""
    if any(is_surface(obj) for obj in (mask, *contrast_imgs, *variance_imgs)):
        return fixed_effects_masker(mask, contrast_imgs[0])  # nilearn's choice of SurfaceMasker
    if contrast_imgs and any(is_cifti_map(obj) for obj in (*contrast_imgs, *variance_imgs)):
        if mask is not None:
            raise ValueError("mask must be None for CIFTI maps: every grayordinate of their brain models is "
                             f"kept; got {type(mask).__name__}")
        return CiftiMasker.of(contrast_imgs[0], "contrast_imgs[0]")
    return None


def _masked_fixed_effects(masker: Any, contrast_imgs: Sequence[Any], variance_imgs: Sequence[Any],
                          precision_weighted: bool, dofs: Any, **kwargs: Any) -> tuple[Any, Any, Any, Any]:
    """:func:`compute_fixed_effects` of surface or CIFTI maps, through the volume path.

    The maps are masked into rows of elements (nilearn's ``SurfaceMasker``, or a
    :class:`daskglm.io.cifti.CiftiMasker`), taken as images of the identity grid all of whose
    voxels are the mask (:func:`daskglm.io.cifti.grid_image`), and the four outputs go back
    through the masker's ``inverse_transform``.
    """
    contrasts = [grid_image(np.asarray(masker.transform(img), np.float64)) for img in contrast_imgs]
    variances = [grid_image(np.asarray(masker.transform(img), np.float64)) for img in variance_imgs]
    inside = grid_mask(contrasts[0].shape[0])
    outputs = compute_fixed_effects(contrasts, variances, inside, precision_weighted, dofs, **kwargs)
    values = [np.asarray(img.dataobj).reshape(img.shape[0], -1) for img in outputs]  # (n_elements, q)
    return tuple(masker.inverse_transform(v[:, 0] if v.shape[1] == 1 else v.T) for v in values)  # type: ignore

"""``SecondLevelModel``: nilearn 0.14's group GLM, fitted out of core over voxel blocks.

Inputs are what nilearn accepts: a list of 3D effect maps (paths or images)
or a 4D image (both with a design matrix), fitted first-level models (daskglm
or nilearn), or a DataFrame with ``subject_label``, ``map_name`` and
``effects_map_path`` columns. ``fit`` checks them, builds the design matrix
(nilearn's ``make_second_level_design_matrix``) and the mask; the maps are
only read by ``compute_contrast`` (as in nilearn, which defers first-level
contrasts to that call). The inputs, their grid and the mask come from
:mod:`daskglm._second_level_inputs`.

Out of core: masked voxels are taken in C order (nilearn's) and grouped in
blocks of whole x-planes ``[i0, i1)`` of about ``v_chunk`` voxels
(:func:`daskglm.fixed_effects._plane_blocks`). One Dask task per block reads
planes ``[i0 - h, i1 + h)`` (``h`` the smoothing kernel radius, 0 without
smoothing) of every map, one map at a time (``nibabel`` ``dataobj`` slicing
for files; a 4D file is read once per block), smooths them with nilearn's
``smooth_array``, masks them into ``Y (n_maps, v_block)``, fits OLS and
computes the contrast (:mod:`daskglm._second_level_kernels`). A task holds
``Y``, its residuals and one slab: never all maps' voxels. The effect of a
daskglm ``FirstLevelModel`` is its lazy ``contrast_dataset`` sliced per block,
so first-level contrasts of all subjects are computed inside the same graph.
With ``mask_img=None`` the mask is nilearn's: ``compute_background_mask`` of
the mean of the maps (computed per x-slab out of core), of the first
DataFrame map, or of the first model's first-column effect.

Differences from nilearn: all maps and the mask must share one grid
(nilearn resamples; ``target_affine`` / ``target_shape`` are refused), a 4D
NIfTI *path* is accepted (nilearn fails on it), and the per-voxel regression
results (``results_``, ``minimize_memory=False``) are never gathered.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr

# nilearn's own checks, where they do not depend on nilearn's FirstLevelModel class (all present since 0.12)
from nilearn._utils.glm import check_and_load_tables
from nilearn.glm.second_level.second_level import (
    _check_confounds,
    _check_design_matrix,
    _check_n_rows_desmat_vs_n_effect_maps,
    _get_con_val,
    _sort_input_dataframe,
)

from . import _plan
from ._covariances import label_covariance
from ._kernels import residual_dof
from ._second_level_inputs import (
    _background_mask,
    _check_models,
    _grid_reference,
    _image_maps,
    _input_kind,
    _list_maps,
    _Map,
    _model_map,
    _slab,
)
from ._second_level_kernels import ols_contrast, smoothing_halo
from ._volume import fwhm_to_sigma
from .cluster import compute
from .contrasts import OUTPUT_TYPES
from .design import parse_contrast
from .fixed_effects import _check_grid, _given_mask, _plane_blocks
from .maps import scatter_to_volume

__all__ = ["SecondLevelModel"]


# ---------------------------------------------------------------- block tasks


def _prepare(slab: np.ndarray, dtype: np.dtype, fwhm: Any, affine: np.ndarray) -> np.ndarray:
    """nilearn's masker steps: cast to the first map's dtype (its concatenation of the maps), then
    ``smooth_array``: integers to float, non-finite values to 0 (also without smoothing), smoothing."""
    from nilearn.image.image import smooth_array

    return smooth_array(np.asarray(slab).astype(dtype, copy=False), affine, fwhm, ensure_finite=True, copy=True)


def _block_task(items: list, a: int, b: int, lo: int, mask_slab: np.ndarray, dtype: np.dtype,
                fwhm: Any, affine: np.ndarray, X: np.ndarray, con: np.ndarray, stat_type: str,
                cov: np.ndarray) -> np.ndarray:
    """Read, smooth and mask planes of every map, fit OLS, compute the contrast: (q + 4, v_block)."""
    Y = np.empty((len(items), int(mask_slab.sum())))
    cache: dict = {}
    hi = lo + mask_slab.shape[0]
    for row, item in enumerate(items):
        Y[row] = _prepare(_slab(item, a, b, mask_slab.shape[1:], cache), dtype, fwhm, affine)[lo:hi][mask_slab]
    cache.clear()
    return ols_contrast(Y, X, con, stat_type, cov)


# ---------------------------------------------------------------- the model


class SecondLevelModel:
    """nilearn-compatible second-level (group) GLM, fitted out of core on Dask.

    Parameters
    ----------
    mask_img : path, Nifti1Image, NiftiMasker or None
        Group mask on the grid of the maps. ``None``: nilearn's background
        mask of the mean map (see the module docstring). A ``NiftiMasker``
        brings its mask and its ``smoothing_fwhm`` (as nilearn).
    target_affine, target_shape
        Not supported (must be ``None``): resample the maps beforehand.
    smoothing_fwhm : float, optional
        Smoothing of each map (nilearn's ``smooth_array``) before masking.
    memory, memory_level, n_jobs, reports
        Accepted and ignored: nothing is cached with joblib, parallelism is
        the Dask client's, and there is no report yet.
    verbose : int
        > 0: dask's progress bar for contrasts lasting more than about a
        second (see :func:`daskglm.cluster.compute`); 0 (nilearn's default): silent.
    minimize_memory : bool
        Must be ``True``: per-voxel regression results are never gathered.
    client : distributed.Client, address, local scheduler name, or None
        Where the graphs run (see :func:`daskglm.cluster.get_client`).
    v_chunk : int, optional
        Voxels per block task (blocks are whole x-planes, at least one).
        Default: a 128 MiB working set per task, and at least two blocks.

    Attributes
    ----------
    design_matrix_ : DataFrame, shape (n_maps, p)
    mask_img_ : Nifti1Image
    masker_ : NiftiMasker
        Fitted on ``mask_img_`` (with ``smoothing_fwhm``), for
        ``inverse_transform`` and friends.
    n_elements_ : int
        Voxels in the mask.
    second_level_input_, confounds_
        As given (a DataFrame sorted by ``subject_label``, as nilearn).
    labels_, results_ : None
        nilearn's per-voxel fit results are not kept.
    """

    def __init__(
        self,
        mask_img: Any = None,
        target_affine: Any = None,
        target_shape: Any = None,
        smoothing_fwhm: float | None = None,
        memory: Any = None,
        memory_level: int = 1,
        verbose: int = 0,
        n_jobs: int = 1,
        minimize_memory: bool = True,
        reports: bool = True,
        *,
        client: Any = None,
        v_chunk: int | None = None,
    ) -> None:
        self.mask_img = mask_img
        self.target_affine = target_affine
        self.target_shape = target_shape
        self.smoothing_fwhm = smoothing_fwhm
        self.memory = memory
        self.memory_level = memory_level
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.minimize_memory = minimize_memory
        self.reports = reports
        self.client = client
        self.v_chunk = v_chunk

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, "second_level_input_", None) is not None

    def _check_params(self) -> None:
        if self.target_affine is not None or self.target_shape is not None:
            raise NotImplementedError(
                "target_affine/target_shape are not supported: resample the maps beforehand (got "
                f"target_affine={self.target_affine!r}, target_shape={self.target_shape!r})")
        if not self.minimize_memory:
            raise NotImplementedError(
                "minimize_memory=False is not supported: daskglm's SecondLevelModel computes the contrast "
                "maps per voxel block and never gathers per-voxel regression results")
        _plan._check_positive("v_chunk", self.v_chunk)

    # ------------------------------------------------------------------ fit

    def fit(self, second_level_input: Any, confounds: pd.DataFrame | None = None,
            design_matrix: Any = None) -> SecondLevelModel:
        """Check the inputs, build the design matrix and the mask (no map is read but for the mask).

        Parameters
        ----------
        second_level_input : list of paths/images, 4D image or path, Series, list of FirstLevelModel, DataFrame
            As nilearn's ``SecondLevelModel.fit``.
        confounds : DataFrame, optional
            ``subject_label`` and confound columns (models and DataFrame inputs).
        design_matrix : DataFrame, or path of a .tsv / .csv, shape (n_maps, p)
            Required for images.

        Returns
        -------
        self
        """
        from nilearn.glm.second_level import make_second_level_design_matrix
        from nilearn.maskers import NiftiMasker

        self._check_params()
        self.second_level_input_ = self.confounds_ = self.labels_ = self.results_ = None
        _check_design_matrix(design_matrix)
        kind, inputs = _input_kind(second_level_input)
        maps: list[_Map] = []
        if kind == "models":
            _check_models(inputs, confounds is None)
        elif kind == "images":
            if isinstance(inputs, list):
                maps = _list_maps(inputs, "second_level_input")
            else:
                maps = _image_maps(inputs, "second_level_input")
                if len(maps) == 1:
                    raise ValueError("A single image as 'second_level_input' must be 4D (one volume per "
                                     f"map); {maps[0].name} is 3D")
            _check_grid(maps)
            if design_matrix is None:
                raise ValueError("List of niimgs as 'second_level_input' require a design matrix to be provided.")
        _check_confounds(confounds)
        if kind == "df":
            inputs = _sort_input_dataframe(inputs)

        if design_matrix is None:
            labels = (inputs["subject_label"].tolist() if kind == "df"
                      else [m.subject_label for m in inputs])
            design = make_second_level_design_matrix(labels, confounds)
        else:
            design = check_and_load_tables(design_matrix, "design_matrix")[0]
        if kind in ("images", "models"):
            _check_n_rows_desmat_vs_n_effect_maps(maps if kind == "images" else inputs, design)

        # the grid of the maps and the mask (nilearn: its masker fitted on one sample map)
        ref = _grid_reference(kind, inputs, maps)
        masker = self.mask_img if isinstance(self.mask_img, NiftiMasker) else None
        fwhm = masker.smoothing_fwhm if masker else self.smoothing_fwhm  # as nilearn: a masker's parameters win
        fwhm_to_sigma(fwhm, ref.affine)  # validates smoothing_fwhm
        if masker is not None:
            mask = _given_mask(NiftiMasker(**{**masker.get_params(), "smoothing_fwhm": None}), ref)
        elif self.mask_img is not None:
            mask = _given_mask(self.mask_img, ref)
        else:
            mask = _background_mask(kind, inputs, maps, ref, self.client, self.v_chunk)
        self._kind, self._maps, self._fwhm, self._mask, self._grid = kind, maps, fwhm, mask, (ref.shape, ref.affine)
        self.second_level_input_, self.confounds_, self.design_matrix_ = inputs, confounds, design
        self.mask_img_ = nib.Nifti1Image(mask.astype(np.int8), ref.affine)
        self.n_elements_ = int(mask.sum())
        self.masker_ = NiftiMasker(mask_img=self.mask_img_, smoothing_fwhm=fwhm).fit()
        return self

    # ------------------------------------------------------------------ contrasts

    def _effect_maps(self, first_level_contrast: Any) -> list[_Map]:
        kind, inputs = self._kind, self.second_level_input_
        if kind == "images":
            return self._maps
        if kind == "df":
            rows = inputs[inputs["map_name"] == first_level_contrast]["effects_map_path"].tolist()
            return _list_maps(rows, f"effects_map_path (map_name={first_level_contrast!r})") if rows else []
        if first_level_contrast is None:
            raise ValueError("If 'second_level_input' was a list of FirstLevelModel, then first_level_contrast "
                             "is mandatory. It corresponds to the second_level_contrast argument of the "
                             "compute_contrast method of FirstLevelModel.")
        return [_model_map(model, first_level_contrast, n) for n, model in enumerate(inputs)]

    def contrast_dataset(self, second_level_contrast: Any = None, first_level_contrast: Any = None,
                         second_level_stat_type: str | None = None) -> xr.Dataset:
        """The maps of a contrast as a lazy xarray Dataset over the masked voxels.

        Building it reads no map (but for nilearn ``FirstLevelModel`` inputs,
        whose effect maps are computed now).

        Parameters
        ----------
        second_level_contrast, first_level_contrast, second_level_stat_type
            As :meth:`compute_contrast`.

        Returns
        -------
        xarray.Dataset
            Dask-backed ``effect_size`` (voxel,) (``(contrast_row, voxel)`` for
            F), ``effect_variance``, ``stat``, ``p_value``, ``z_score``
            (voxel,); ``i, j, k`` coordinates; attrs ``affine``,
            ``volume_shape``, ``dof``, ``stat_type``, ``contrast``.
        """
        if not self.__sklearn_is_fitted__():
            raise ValueError("This SecondLevelModel instance is not fitted yet. Call 'fit' with appropriate "
                             "arguments before using this estimator.")
        design = self.design_matrix_
        con_val = _get_con_val(second_level_contrast, design)
        columns = [str(c) for c in design.columns]
        con, stat_type = parse_contrast(con_val, columns, second_level_stat_type)
        maps = self._effect_maps(first_level_contrast)
        _check_n_rows_desmat_vs_n_effect_maps(maps, design)
        _check_grid(maps)
        shape, affine = self._grid
        if maps[0].shape != shape or not np.allclose(maps[0].affine, affine):
            raise ValueError(f"{maps[0].name} is on another grid than the mask: shape {maps[0].shape} vs "
                             f"{shape}, affine {np.round(maps[0].affine, 4).tolist()} vs "
                             f"{np.round(affine, 4).tolist()}")
        try:
            X = design.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the design matrix must be numeric; columns {columns}: {exc}") from exc
        n, p = X.shape
        if n <= p:
            raise ValueError(f"the design matrix has {n} rows and {p} columns: at least {p + 1} maps are needed "
                             "to estimate the residual variance")
        q = 1 if stat_type == "t" else con.shape[0]
        mask, fwhm = self._mask, self._fwhm
        n_vox = int(mask.sum())
        v_chunk = self.v_chunk
        if v_chunk is None:
            by_budget = max(_plan.MIN_V_CHUNK, _plan.DEFAULT_TASK_BYTES // (8 * (3 * n + p + q + 4)))
            v_chunk = int(min(by_budget, max(_plan.MIN_V_CHUNK, math.ceil(n_vox / 2))))
        halo = smoothing_halo(fwhm, affine)
        cov = label_covariance(X).cov
        kwargs = {"dtype": maps[0].dtype, "fwhm": fwhm, "affine": affine, "X": X,
                  "con": con[0] if stat_type == "t" else con, "stat_type": stat_type, "cov": cov}
        task = dask.delayed(_block_task, pure=False)
        masks: dict = {}
        blocks = []
        for i0, i1, v0, v1 in _plane_blocks(mask, int(v_chunk)):
            a, b = max(0, i0 - halo), min(shape[0], i1 + halo)
            items = [m.item(a, b, masks) for m in maps]
            packed = task(items, a, b, i0 - a, mask[i0:i1].copy(), **kwargs)
            blocks.append(da.from_delayed(packed, (q + 4, v1 - v0), np.float64))
        packed = da.concatenate(blocks, axis=1)
        effect = (("voxel",), packed[0]) if stat_type == "t" else (("contrast_row", "voxel"), packed[:q])
        return xr.Dataset(
            {"effect_size": effect, "effect_variance": (("voxel",), packed[q]), "stat": (("voxel",), packed[q + 1]),
             "p_value": (("voxel",), packed[q + 2]), "z_score": (("voxel",), packed[q + 3])},
            coords={name: ("voxel", c.astype(np.int64)) for name, c in zip("ijk", np.nonzero(mask))},
            attrs={"affine": affine.tolist(), "volume_shape": list(shape), "dof": float(residual_dof(X)),
                   "stat_type": stat_type, "contrast": str(con_val), "n_maps": n},
        )

    def compute_contrast(
        self,
        second_level_contrast: Any = None,
        first_level_contrast: Any = None,
        second_level_stat_type: str | None = None,
        output_type: str = "z_score",
    ) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """Maps of a second-level contrast as NIfTI images, as nilearn's ``compute_contrast``.

        Parameters
        ----------
        second_level_contrast : str, array of shape (p,) or (q, p), or None
            A column name or expression (``"group_a - group_b"``), weights, or
            ``None`` for a one-column design.
        first_level_contrast : str or array, optional
            The first-level contrast (FirstLevelModel inputs, mandatory) or the
            ``map_name`` to select (DataFrame inputs).
        second_level_stat_type : {"t", "F"}, optional
            Default: t for a vector, F for a matrix of several rows.
        output_type : {"z_score", "stat", "p_value", "effect_size", "effect_variance", "all"}

        Returns
        -------
        Nifti1Image, shape (x, y, z) (``effect_size`` of an F contrast: (x, y, z, q)),
        or a dict of them keyed by output type for ``"all"``.
        """
        valid = (*OUTPUT_TYPES, "all")
        if output_type not in valid:
            raise ValueError(f"'output_type' must be one of {list(valid)}; got {output_type!r}")
        ds = self.contrast_dataset(second_level_contrast, first_level_contrast, second_level_stat_type)
        names = list(OUTPUT_TYPES) if output_type == "all" else [output_type]
        values = compute(*[ds[name].data for name in names], client=self.client, verbose=self.verbose)
        ijk = [ds[n].values for n in "ijk"]
        shape, affine = tuple(ds.attrs["volume_shape"]), np.asarray(ds.attrs["affine"])
        outputs = {}
        for name, value in zip(names, values):
            img = nib.Nifti1Image(scatter_to_volume(np.asarray(value, dtype=np.float64), *ijk, shape), affine)
            img.header["descrip"] = f"{output_type} of contrast {ds.attrs['contrast']}"[:80]
            outputs[name] = img
        return outputs if output_type == "all" else outputs[output_type]

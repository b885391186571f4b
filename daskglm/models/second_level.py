"""``SecondLevelModel``: nilearn 0.14's group GLM, fitted out of core over voxel blocks.

daskglm's ``SecondLevelModel`` *is* a nilearn ``SecondLevelModel`` (a
subclass) with nilearn's parameters, so nilearn's own code works on it:
``generate_report``, ``nilearn.glm.save_glm_to_bids``, scikit-learn's
``get_params`` / ``clone``. Inputs are nilearn's: a list of 3D effect maps
(paths or images) or a 4D image, with a design matrix; fitted first-level
models (daskglm's or nilearn's); or a DataFrame with ``subject_label``,
``map_name`` and ``effects_map_path`` columns. ``fit`` checks them with
nilearn's functions, builds the design matrix (nilearn's
``make_second_level_design_matrix``; paths are checked from their headers)
and fits ``masker_``, a nilearn
``NiftiMasker`` made by nilearn's ``check_embedded_masker`` (so the mask,
its ``target_affine`` / ``target_shape`` grid, a given ``NiftiMasker``'s
parameters and the warnings are nilearn's). As in nilearn the maps are only
read by ``compute_contrast`` (for ``mask_img=None``, ``fit`` also reads them
once for their mean, nilearn's sample map).

Out of core: masked voxels are taken in C order (nilearn's) and grouped in
blocks of whole x-planes ``[i0, i1)`` of about ``v_chunk`` voxels
(:func:`daskglm.io.slabs.plane_blocks`). One Dask task per block reads
the planes of every map it needs, one map at a time (:func:`daskglm.io.slabs.read_planes`:
``nibabel`` ``dataobj`` slicing for files; a 4D file is read once per block), applies nilearn's
masker steps to them — ``resample_img`` onto the mask's grid when the maps
are on another one (see below), ``smooth_array`` — masks them into
``Y (n_maps, v_block)``, fits OLS and computes the contrasts
(:mod:`daskglm.kernels.group`). A task holds ``Y``, its residuals and
one slab: never all maps' voxels. The effect of a daskglm ``FirstLevelModel``
is its lazy ``contrast_dataset`` sliced per block, so first-level contrasts
of all subjects are computed inside the same graph. The contrasts of one
report or ``save_glm_to_bids`` call (``_make_stat_maps``) share one pass over
the maps, which also gives ``results_[0.0]``'s theta and dispersion.

Resampling (``target_affine`` / ``target_shape``, or a mask on another grid
than the maps) follows nilearn's masker: the mask is resampled onto the
target grid (nearest) by ``masker_.fit``; the maps are resampled onto the
mask's cropped grid with nilearn's ``resample_img`` (cubic splines) per slab
— the source planes under the slab, plus
:data:`~daskglm.kernels.group.SPLINE_MARGIN` planes on each side for
the spline prefilter, give nilearn's whole-volume values to ~1e-13 — and
clipped to the range of all maps, which a first pass over the maps computes
in the same graph.

``minimize_memory=False``: ``residuals_``, ``predicted_`` and ``r_square_``
are nilearn's images (4D; ``r_square_`` one volume), computed per voxel block
with nilearn's ``OLSModel`` on first access (:meth:`SecondLevelModel.voxelwise`
gives them lazily).

Surface maps (nilearn ``SurfaceImage``, or first-level models fitted on them)
are masked by nilearn's ``SurfaceMasker`` (``masker_``) and CIFTI-2 dense
scalar maps (images, ``.dscalar.nii`` paths, or models fitted on dense time
series) by a :class:`daskglm.io.cifti.CiftiMasker` (every grayordinate; no
``mask_img``); either way the masked values are fitted as voxels of an
``n x 1 x 1`` identity grid and the maps come back in the inputs' kind.

Differences from nilearn: a 4D NIfTI *path* is accepted (nilearn fails on
it); CIFTI maps are accepted (nilearn has no CIFTI type); ``NiftiMasker``
options that clean the maps (detrending, filtering, standardizing) are
refused; a design with no residual degree of freedom is an error; ``n_jobs``
and ``memory`` do not change the computation (parallelism is the Dask
client's, nothing is cached with joblib); with a mask given, ``masker_`` is
fitted without a sample image (its own report shows the mask only).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr
from nilearn.glm.model import LikelihoodModelResults
from nilearn.glm.regression import OLSModel, RegressionResults
from nilearn.glm.second_level import SecondLevelModel as _NilearnSecondLevelModel
from sklearn.utils.validation import check_is_fitted

from ..glm.contrasts import OUTPUT_TYPES, contrast_variables
from ..io.cifti import CiftiMasker, is_cifti_map
from ..io.grid import analysis_grid, resample_volumes
from ..io.slabs import MapSource, check_grid, mean_of_maps, plane_blocks, read_planes
from ..kernels.covariances import label_covariance
from ..kernels.group import ols_contrasts, smoothing_halo, source_planes
from ..kernels.packing import group_contrast, group_rows
from ..kernels.regression import residual_dof
from ..runtime import plan as _plan
from ..runtime.cluster import compute, get_client, phase
from .estimator import EstimatorMixin
from .nilearn_compat import (
    BoundingBoxError,
    check_and_load_tables,
    check_compatibility_mask_and_images,
    check_confounds,
    check_design_matrix,
    check_embedded_masker,
    check_first_level_contrast,
    check_input_as_type,
    check_input_type,
    check_n_rows_desmat_vs_n_effect_maps,
    check_parameter_in_allowed,
    check_params,
    check_volume_for_fit,
    get_con_val,
    log,
    second_level_sample,
    smooth_array,
    sort_input_dataframe,
)
from .second_level_inputs import (
    element_maps,
    grid_masker,
    header_standins,
    image_maps,
    is_surface,
    list_maps,
    model_map,
    value_range,
)

__all__ = ["SecondLevelModel"]

#: What ``second_level_input`` was: effect maps (images or paths), nilearn's DataFrame, or first-level models.
InputKind = Literal["images", "df", "models"]

#: nilearn's element-wise attributes of a fit (its ``RegressionResults`` properties).
ELEMENT_WISE = tuple(name for name in vars(RegressionResults) if "__" not in name)
#: Those with a value per map (the others have one per voxel).
_PER_MAP = ("residuals", "normalized_residuals", "predicted")
#: NiftiMasker parameters that would clean the maps beyond masking, smoothing and resampling,
#: with the values that leave them alone.
_MASKER_NEUTRAL = {"detrend": (False,), "high_variance_confounds": (False,), "low_pass": (None,),
                   "high_pass": (None,), "standardize": (False, None), "runs": (None,), "dtype": (None,),
                   "clean_args": (None, {})}


# ---------------------------------------------------------------- block tasks


@dataclass(frozen=True)
class _Reader:
    """How a block task turns planes of the maps into masked rows (nilearn's masker steps).

    Attributes
    ----------
    dtype : numpy dtype
        nilearn concatenates the maps: all are cast to the first map's dtype.
    fwhm : float, sequence of 3 floats or None
        ``smoothing_fwhm`` of ``masker_``.
    affine : ndarray, shape (4, 4)
        The working grid: the maps' grid, or the mask's cropped grid when resampling.
    shape : tuple of 3 int
        Of the working grid.
    map_affine : ndarray, shape (4, 4)
    map_shape : tuple of 3 int
        The maps' grid.
    resample : bool
    """

    dtype: np.dtype
    fwhm: Any
    affine: np.ndarray
    shape: tuple[int, int, int]
    map_affine: np.ndarray
    map_shape: tuple[int, int, int]
    resample: bool


def _shifted(affine: np.ndarray, planes: int) -> np.ndarray:
    """The affine of a slab starting at x-plane ``planes``."""
    out = np.array(affine, dtype=np.float64)
    out[:, 3] = affine @ np.array([planes, 0.0, 0.0, 1.0])
    return out


def _resample_slab(slab: np.ndarray, reader: _Reader, sa: int, a: int, b: int,
                   vrange: tuple[float, float]) -> np.ndarray:
    """Source planes ``[sa, sb)`` of a map resampled onto working planes ``[a, b)``, clipped to ``vrange``."""
    shape = (b - a, *reader.shape[1:])
    with warnings.catch_warnings():  # a slab of zeros and ones is not a binary map
        warnings.filterwarnings("ignore", message="Resampling binary images", category=UserWarning)
        try:
            return resample_volumes(slab, _shifted(reader.map_affine, sa), _shifted(reader.affine, a), shape,
                                    *vrange)
        except BoundingBoxError:  # no source voxel under these planes: nilearn's fill value
            return np.zeros(shape, dtype=slab.dtype if slab.dtype.kind == "f" else np.float32)


class _Block(NamedTuple):
    """One block task's share of the maps: which planes it reads and which voxels it gives."""

    #: Each map's planes ``source`` (an :mod:`daskglm.io.slabs` plane source per map).
    items: list
    #: The maps' planes read, ``[sa, sb)``.
    source: tuple[int, int]
    #: The working-grid planes they give, ``[a, b)``: the block's planes plus the smoothing halo.
    work: tuple[int, int]
    #: The block's own planes, ``[i0, i1)``.
    planes: tuple[int, int]
    #: The mask on the block's planes, shape (i1 - i0, ny, nz).
    mask_slab: np.ndarray
    #: Voxels of the mask in the block.
    size: int


def _block_rows(block: _Block, reader: _Reader, vrange: Any = None) -> np.ndarray:
    """Read, resample, smooth and mask the planes of every map a block needs: ``Y (n, v_block)``."""
    items, (sa, sb), (a, b), (i0, i1), mask_slab = block.items, block.source, block.work, block.planes, block.mask_slab
    Y = np.empty((len(items), int(mask_slab.sum())))
    cache: dict = {}
    for row, item in enumerate(items):
        slab = np.asarray(read_planes(item, sa, sb, reader.map_shape[1:], cache)).astype(reader.dtype, copy=False)
        if reader.resample:
            slab = _resample_slab(slab, reader, sa, a, b, vrange)
        slab = smooth_array(slab, reader.affine, reader.fwhm, ensure_finite=True, copy=True)
        Y[row] = slab[i0 - a:i1 - a][mask_slab]
    cache.clear()
    return Y


def _contrast_task(block: _Block, reader: _Reader, vrange: Any, X: np.ndarray, contrasts: list,
                   cov: np.ndarray) -> np.ndarray:
    """One block's fit and contrasts, packed as :func:`~daskglm.kernels.group.ols_contrasts`."""
    return ols_contrasts(_block_rows(block, reader, vrange), X, contrasts, cov)


def _voxelwise_task(block: _Block, reader: _Reader, vrange: Any, X: np.ndarray, attribute: str) -> np.ndarray:
    """One block's ``attribute`` of nilearn's OLS fit: (n, v_block), or (1, v_block) for per-voxel ones."""
    fit = OLSModel(X).fit(_block_rows(block, reader, vrange))
    value = np.asarray(getattr(fit, attribute), dtype=np.float64)
    return value if value.ndim == 2 else value[None]


# ---------------------------------------------------------------- results


class GroupOLSResults(LikelihoodModelResults):
    """The group fit, as nilearn's ``results_[0.0]`` (a ``LikelihoodModelResults``).

    ``theta`` and ``dispersion`` are arrays (computed with the contrast), so
    nilearn's ``Tcontrast`` / ``Fcontrast`` and
    ``nilearn.glm.contrasts.compute_contrast(model.labels_, model.results_, ...)``
    work on them. With ``minimize_memory=False`` the element-wise attributes of
    nilearn's ``RegressionResults`` (``residuals``, ``predicted``, ``r_square``,
    ``normalized_residuals``, ``SSE``, ``MSE``) are computed out of core on
    first access (one pass over the maps each) and kept.

    Parameters
    ----------
    theta : ndarray, shape (p, v)
    dispersion : ndarray, shape (v,)
    X : ndarray, shape (n, p)
        The design matrix.
    voxelwise : callable, optional
        ``voxelwise(attribute) -> ndarray``; None (``minimize_memory=True``):
        the element-wise attributes are not available.
    """

    def __init__(self, theta: np.ndarray, dispersion: np.ndarray, X: np.ndarray,
                 voxelwise: Any = None) -> None:
        self.model = OLSModel(X)  # not LikelihoodModelResults.__init__: it wants the data Y
        self.theta = theta
        self.cov = self.model.normalized_cov_beta
        self.dispersion = dispersion
        self.nuisance = None
        self.df_total = self.model.df_total
        self.df_model = self.model.df_model
        self.df_residuals = self.model.df_residuals
        self.whitened_design = self.model.whitened_design
        self._voxelwise = voxelwise

    def __getattr__(self, name: str) -> Any:
        compute_values = self.__dict__.get("_voxelwise")
        if name in ELEMENT_WISE:
            if compute_values is None:
                raise AttributeError(f"{name!r} is not kept with minimize_memory=True: set minimize_memory=False "
                                     "to compute element-wise attributes of the second-level fit")
            value = compute_values(name)
            self.__dict__[name] = value
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ---------------------------------------------------------------- the model


class SecondLevelModel(EstimatorMixin, _NilearnSecondLevelModel):
    """nilearn's ``SecondLevelModel``, fitted out of core on Dask.

    Parameters
    ----------
    mask_img : path, Nifti1Image, NiftiMasker or None
        As nilearn: the group mask, or a ``NiftiMasker`` whose parameters
        override the estimator's (with nilearn's warning); ``None``: nilearn's
        background mask of the mean of the maps (computed out of core), of
        the first DataFrame map, or of the first model's first-column effect.
    target_affine : ndarray, shape (3, 3) or (4, 4), optional
        As nilearn: the mask goes onto this grid (nearest) and the maps are
        resampled onto the mask's cropped grid, per slab (see the module docstring).
    target_shape : tuple of 3 int, optional
        As nilearn (with a 4x4 ``target_affine``).
    smoothing_fwhm : float, optional
        Smoothing of each map (nilearn's ``smooth_array``) before masking.
    memory : str, path or joblib.Memory, optional
        Given to ``masker_`` as nilearn does; nothing of the fit is cached.
    memory_level : int, default=1
        As nilearn (``masker_``'s is one less).
    verbose : int, default=0
        0: silent. 1: nilearn's messages of ``fit``, and dask's progress bar
        for work lasting more than about a second (see
        :func:`daskglm.runtime.cluster.compute`). 2: also ``masker_``'s messages.
    n_jobs : int, default=1
        Accepted for compatibility; parallelism is the Dask client's.
    minimize_memory : bool, default=True
        As nilearn: ``False`` makes ``residuals_``, ``predicted_`` and
        ``r_square_`` available after ``compute_contrast``, computed per voxel
        block when first read.
    reports : bool, default=True
        As nilearn: keep what ``generate_report`` needs.
    client : distributed.Client, address, local scheduler name, or None
        Keyword only. Where the graphs run (see :func:`daskglm.runtime.cluster.get_client`).
    v_chunk : int, optional
        Keyword only. Voxels per block task (blocks are whole x-planes, at
        least one). Default: a 128 MiB working set per task, and at least two blocks.

    Attributes
    ----------
    confounds_ : pandas.DataFrame or None
        As given.
    design_matrix_ : pandas.DataFrame, shape (n_maps, p)
    labels_ : ndarray, shape (n_elements,), or None
        After ``compute_contrast``: nilearn's OLS labels (all 0.0).
    masker_ : nilearn.maskers.NiftiMasker, SurfaceMasker or daskglm.io.cifti.CiftiMasker
        Fitted (nilearn's ``check_embedded_masker``); ``mask_img_`` is its mask (volumes).
    memory_ : joblib.Memory
    n_elements_ : int
        Voxels in the mask.
    results_ : dict or None
        After ``compute_contrast``: ``{0.0: GroupOLSResults}``, the group fit
        of the last contrast's maps (theta (p, n_elements), dispersion).
    second_level_input_ : list, pandas.DataFrame, pandas.Series or str
        As nilearn: the input (a DataFrame sorted by ``subject_label``; a 4D
        image split into 3D images).
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
        super().__init__(mask_img=mask_img, target_affine=target_affine, target_shape=target_shape,
                         smoothing_fwhm=smoothing_fwhm, memory=memory, memory_level=memory_level,
                         verbose=verbose, n_jobs=n_jobs, minimize_memory=minimize_memory, reports=reports)
        self.client = client
        self.v_chunk = v_chunk

    # ------------------------------------------------------------------ fit

    def fit(self, second_level_input: Any, confounds: pd.DataFrame | None = None,
            design_matrix: Any = None) -> SecondLevelModel:
        """Check the inputs, build the design matrix and fit ``masker_`` (maps are read only for a mask).

        Parameters
        ----------
        second_level_input : list of paths/images, 4D image or path, Series, list of FirstLevelModel, DataFrame
            As nilearn's ``SecondLevelModel.fit``.
        confounds : pandas.DataFrame, optional
            ``subject_label`` and confound columns (models and DataFrame inputs).
        design_matrix : pandas.DataFrame, or path of a .tsv / .csv, shape (n_maps, p)
            Required for images.

        Returns
        -------
        SecondLevelModel
            This model, with ``design_matrix_`` and ``masker_`` set; the maps
            themselves are read and fitted by :meth:`compute_contrast`.
        """
        check_params(self.__dict__)
        _plan.check_positive("v_chunk", self.v_chunk)
        self.second_level_input_ = None
        self.confounds_ = None
        self._set_results(None, None)
        self._fit_cache()

        # nilearn's checks, on header stand-ins of paths (nilearn would read each file whole)
        check_design_matrix(design_matrix)
        cifti = _check_cifti_input(second_level_input, self.mask_img, design_matrix)
        input_type = "cifti" if cifti == "images" else _check_input_type_with_count(second_level_input)
        if input_type != "cifti":
            # (a Series comes back from header_standins as a list)
            standins = header_standins(second_level_input)
            check_input_as_type(standins, "nii_object" if input_type == "pd_series" else input_type,
                                confounds is None, design_matrix is None)
        check_confounds(confounds)
        surface = input_type == "surf_img_object" or (
            input_type == "flm_object" and any(is_surface(getattr(m, "masker_", None)) for m in second_level_input))
        if not cifti:
            check_compatibility_mask_and_images(
                self.mask_img, second_level_input if surface else nib.Nifti1Image(np.zeros((1, 1, 1)), np.eye(4)))
        self._elements = "surface" if surface else "cifti" if cifti else None
        self._reset_report()

        kind: InputKind = {"df_object": "df", "flm_object": "models"}.get(input_type, "images")
        if isinstance(second_level_input, pd.DataFrame):
            second_level_input = sort_input_dataframe(second_level_input)
        if isinstance(second_level_input, nib.Nifti1Image):
            from nibabel.funcs import four_to_three
            from nilearn.image import check_niimg

            check_niimg(second_level_input, ensure_ndim=4)
            second_level_input = four_to_three(second_level_input)
        maps: list[MapSource] = []
        if self._elements:  # the masker first: the maps are what the masker keeps
            self.masker_ = (self._surface_masker(second_level_input) if surface
                            else _cifti_masker(second_level_input, kind))
            if kind == "images":
                maps = element_maps(self.masker_, second_level_input)
        elif kind == "images":
            if isinstance(second_level_input, (list, pd.Series)):
                maps = list_maps(list(second_level_input), "second_level_input")
            else:  # a 4D path
                maps = image_maps(second_level_input, "second_level_input")
                if len(maps) == 1:
                    raise ValueError("A single image as 'second_level_input' must be 4D (one volume per "
                                     f"map); {maps[0].name} is 3D")
            check_grid(maps)
        self.second_level_input_ = second_level_input
        self.confounds_ = confounds
        self._kind, self._maps = kind, maps

        start = time.time()
        log("Fitting second level model. Take a deep breath.\r", verbose=self.verbose)
        if design_matrix is None:
            from nilearn.glm.second_level import make_second_level_design_matrix

            labels = (second_level_input["subject_label"].to_list() if kind == "df"
                      else [m.subject_label for m in second_level_input])
            design_matrix = make_second_level_design_matrix(labels, confounds)
        else:
            design_matrix = check_and_load_tables(design_matrix, "design_matrix")[0]
        self.design_matrix_ = design_matrix
        if kind == "images":  # nilearn checks lists now, other inputs at compute_contrast
            check_n_rows_desmat_vs_n_effect_maps(maps, design_matrix)
        elif isinstance(second_level_input, list):
            check_n_rows_desmat_vs_n_effect_maps(second_level_input, design_matrix)

        if self._elements:
            self._grid_masker = grid_masker(self.masker_.n_elements_)
        else:
            if kind == "images":  # nilearn's masker refuses empty images (here from the headers)
                check_volume_for_fit(standins)
            self.masker_ = check_embedded_masker(self, "nii")
            _check_masker(self.masker_)
            self.masker_.memory_level = self.memory_level
            # nilearn fits the masker on a sample map: needed here only to compute the mask
            sample = self._sample_map(kind, second_level_input, maps) if self.masker_.mask_img is None else None
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*Generation of a mask.*")
                self.masker_.fit(sample)
            self._grid_masker = self.masker_
        self.n_elements_ = self.masker_.n_elements_
        log(f"\nComputation of second level model done in {time.time() - start:.2f} seconds.\n",
            verbose=self.verbose)

        self._report_content["reports_at_fit_time"] = self.reports
        if self.reports:
            self._reporting_data = {}
        return self

    def _surface_masker(self, inputs: Any) -> Any:
        """nilearn's fitted ``SurfaceMasker`` for surface inputs (its sample map, its checks and warnings)."""
        from nilearn.surface.surface import check_surf_img

        if not isinstance(inputs, (pd.DataFrame, pd.Series)) and not hasattr(inputs[0] if isinstance(
                inputs, list) else inputs, "design_matrices_"):
            check_surf_img(inputs)  # nilearn's "The image is empty."
        sample = second_level_sample(inputs)
        masker = check_embedded_masker(self, "surface")
        masker.memory_level = self.memory_level
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*Generation of a mask.*")
            return masker.fit(sample)

    def _sample_map(self, kind: InputKind, inputs: Any, maps: list[MapSource]) -> nib.Nifti1Image:
        """nilearn's sample map: the mean of the maps, the first DataFrame map, or the first model's effect."""
        if kind == "images":
            with self._session(maps) as client:
                return mean_of_maps(maps, client, self.v_chunk, self.verbose)
        if kind == "df":
            found = image_maps(inputs["effects_map_path"][0], "second_level_input['effects_map_path'][0]")
            if len(found) != 1:
                raise ValueError(f"{found[0].name} must be a 3D map; it has {len(found)} volumes")
            first = found[0]
            return nib.load(first.path) if first.path else nib.Nifti1Image(first.array, first.affine)
        model = inputs[0]
        return model.compute_contrast(model.design_matrices_[0].columns[0], output_type="effect_size")

    @contextmanager
    def _session(self, maps: Sequence[MapSource]) -> Iterator[Any]:
        """The client for one public call (an embedded cluster sized for the maps lives this long)."""
        shape = maps[0].shape if maps else (1, 1, 1)
        with get_client(self.client, work_bytes=8 * len(maps) * int(np.prod(shape))) as client:
            yield client

    def _set_results(self, labels: np.ndarray | None, results: dict | None) -> None:
        """Set ``labels_`` / ``results_`` and drop images nilearn's base class cached from older ones."""
        self.labels_, self.results_ = labels, results
        self._forget_computed()

    # ------------------------------------------------------------------ maps and graphs

    def _effect_maps(self, first_level_contrast: Any) -> list[MapSource]:
        """The maps of ``first_level_contrast`` (nilearn's ``_infer_effect_maps``), on one grid."""
        inputs = self.second_level_input_
        if self._kind == "df":
            rows = inputs[inputs["map_name"] == first_level_contrast]["effects_map_path"].tolist()
            maps = list_maps(rows, f"effects_map_path (map_name={first_level_contrast!r})") if rows else []
        elif self._kind == "models" and self._elements:
            maps = element_maps(self.masker_, [model.compute_contrast(first_level_contrast, output_type="effect_size")
                                               for model in inputs])
        elif self._kind == "models":
            maps = [model_map(model, first_level_contrast, n) for n, model in enumerate(inputs)]
        else:
            maps = self._maps
        check_n_rows_desmat_vs_n_effect_maps(maps, self.design_matrix_)
        check_grid(maps)
        return maps

    def _design(self) -> np.ndarray:
        """The design matrix as floats, shape (n, p), with a residual degree of freedom."""
        design = self.design_matrix_
        try:
            X = design.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the design matrix must be numeric; columns {list(design.columns)}: {exc}") from exc
        n, p = X.shape
        if n <= p:
            raise ValueError(f"the design matrix has {n} rows and {p} columns: at least {p + 1} maps are needed "
                             "to estimate the residual variance")
        return X

    def _plan_blocks(self, maps: list[MapSource], rows: int, quiet: bool = False
                     ) -> tuple[_Reader, list[_Block], Any]:
        """How block tasks read the maps, the blocks, and (when resampling) the delayed range of the maps.

        Parameters
        ----------
        maps : list of MapSource
        rows : int
            Rows of ``n_elements_`` floats a block task holds besides the
            maps' rows and their residuals (for the default ``v_chunk``).
        quiet : bool
            Without nilearn's resampling warning (already given for these maps).

        Returns
        -------
        reader : _Reader
        blocks : list of _Block
        vrange : dask.delayed or None
        """
        mask_img = self._grid_masker.mask_img_
        mask = np.asarray(mask_img.dataobj) > 0
        ref = maps[0]
        with warnings.catch_warnings():
            if quiet:
                warnings.filterwarnings("ignore", message="imgs are being resampled", category=UserWarning)
            grid = analysis_grid(mask, np.asarray(mask_img.affine, np.float64), ref.affine, ref.shape,
                                 name="the mask of masker_")
        affine, shape, work_mask = grid.working_grid()
        reader = _Reader(ref.dtype, self._grid_masker.smoothing_fwhm, np.asarray(affine, np.float64),
                         tuple(int(s) for s in shape), np.asarray(ref.affine, np.float64),
                         tuple(int(s) for s in ref.shape), grid.resample)
        v_chunk = self.v_chunk
        if v_chunk is None:
            by_budget = max(_plan.MIN_V_CHUNK, _plan.DEFAULT_TASK_BYTES // (8 * (3 * len(maps) + rows)))
            v_chunk = int(min(by_budget, max(_plan.MIN_V_CHUNK, -(-self.n_elements_ // 2))))
        halo = smoothing_halo(reader.fwhm, reader.affine)
        transform = np.linalg.inv(reader.map_affine) @ reader.affine
        masks: dict = {}
        vrange = value_range(maps, reader.dtype, self.v_chunk, masks) if reader.resample else None
        blocks = []
        for i0, i1, v0, v1 in plane_blocks(work_mask, int(v_chunk)):
            a, b = max(0, i0 - halo), min(shape[0], i1 + halo)
            source = source_planes(transform, a, b, shape[1:], ref.shape[0]) if reader.resample else (a, b)
            items = [m.planes(*source, masks) for m in maps]
            blocks.append(_Block(items, source, (a, b), (i0, i1), work_mask[i0:i1].copy(), v1 - v0))
        return reader, blocks, vrange

    def _output_coords(self) -> dict:
        """``i, j, k`` of the mask voxels on ``mask_img_``'s grid, in nilearn's (C) order."""
        mask = np.asarray(self._grid_masker.mask_img_.dataobj) > 0
        return {name: ("voxel", c.astype(np.int64)) for name, c in zip("ijk", np.nonzero(mask))}

    def _checked_contrast(self, con_val: Any, stat_type: str | None, X: np.ndarray) -> tuple[np.ndarray, str]:
        """nilearn's checks of a contrast (``compute_contrast`` on a one-voxel fit), and the padded contrast."""
        from nilearn.glm.contrasts import compute_contrast as nilearn_contrast
        from nilearn.glm.first_level import run_glm

        probe = (np.arange(X.shape[0], dtype=np.float64) ** 2)[:, None]
        labels, results = run_glm(probe, X, noise_model="ols")
        stat_type = nilearn_contrast(labels, results, con_val, stat_type).stat_type
        con = np.atleast_2d(np.asarray(con_val, dtype=np.float64))
        con = np.hstack([con, np.zeros((con.shape[0], X.shape[1] - con.shape[1]))])
        return (con[0] if stat_type == "t" else con), stat_type

    def _contrast_graph(self, contrasts: Sequence[tuple[Any, str | None]], maps: list[MapSource]
                        ) -> tuple[list[xr.Dataset], da.Array, da.Array]:
        """Lazy datasets of some contrasts of the same maps (one read of the maps), and theta, dispersion."""
        X = self._design()
        checked = [self._checked_contrast(con_val, stat_type, X) for con_val, stat_type in contrasts]
        qs = [1 if st == "t" else con.shape[0] for con, st in checked]
        layout = group_rows(X.shape[1], qs)
        reader, blocks, vrange = self._plan_blocks(maps, layout.rows)
        cov = label_covariance(X).cov
        task = dask.delayed(_contrast_task, pure=False)
        columns = []
        for block in blocks:
            packed = task(block, reader, vrange, X, checked, cov)
            columns.append(da.from_delayed(packed, (layout.rows, block.size), np.float64))
        rows = layout.unpack(da.concatenate(columns, axis=1))
        coords = self._output_coords()
        attrs = {"affine": np.asarray(self._grid_masker.mask_img_.affine).tolist(),
                 "volume_shape": list(self._grid_masker.mask_img_.shape[:3]), "dof": float(residual_dof(X)),
                 "n_maps": len(maps)}
        datasets = []
        for n, ((con_val, _), (_, stat_type), q) in enumerate(zip(contrasts, checked, qs)):
            datasets.append(xr.Dataset(contrast_variables(rows[group_contrast(n)], q, stat_type), coords=coords,
                                       attrs={**attrs, "stat_type": stat_type, "contrast": str(con_val)}))
        return datasets, rows["theta"], rows["dispersion"]

    def _contrast_values(self, contrast: Any, first_level_contrast: Any) -> Any:
        """nilearn's checks of ``compute_contrast`` before the maps are read; its ``con_val``."""
        check_is_fitted(self)
        check_first_level_contrast(self.second_level_input_, first_level_contrast)
        return get_con_val(contrast, self.design_matrix_)

    # ------------------------------------------------------------------ public API

    def contrast_dataset(self, second_level_contrast: Any = None, first_level_contrast: Any = None,
                         second_level_stat_type: str | None = None) -> xr.Dataset:
        """The maps of a contrast as a lazy xarray Dataset over the masked voxels.

        Building it reads no map (but for nilearn ``FirstLevelModel`` inputs,
        whose effect maps are computed now) and computes nothing.

        Parameters
        ----------
        second_level_contrast, first_level_contrast, second_level_stat_type
            As :meth:`compute_contrast`.

        Returns
        -------
        xarray.Dataset
            Dask-backed ``effect_size`` (voxel,) (``(contrast_row, voxel)`` for
            F), ``effect_variance``, ``stat``, ``p_value``, ``z_score``
            (voxel,); ``i, j, k`` coordinates on ``mask_img_``'s grid; attrs
            ``affine``, ``volume_shape``, ``dof``, ``stat_type``, ``contrast``, ``n_maps``.
        """
        con_val = self._contrast_values(second_level_contrast, first_level_contrast)
        maps = self._effect_maps(first_level_contrast)
        (ds,), _, _ = self._contrast_graph([(con_val, second_level_stat_type)], maps)
        return ds

    def voxelwise(self, attribute: str, first_level_contrast: Any = None) -> xr.DataArray:
        """An element-wise attribute of the group OLS fit, lazy (whatever ``minimize_memory``).

        Parameters
        ----------
        attribute : {"residuals", "normalized_residuals", "predicted", "SSE", "r_square", "MSE"}
            nilearn's ``RegressionResults`` attribute, computed per voxel block
            with nilearn's ``OLSModel``.
        first_level_contrast : str or array, optional
            Which maps (first-level models and DataFrame inputs), as
            :meth:`compute_contrast`.

        Returns
        -------
        xarray.DataArray
            ``(map, voxel)`` float64 for residuals, normalized residuals and
            predicted values, ``(voxel,)`` otherwise; ``i, j, k`` coordinates
            on ``mask_img_``'s grid. Turn it into an image with
            ``model.masker_.inverse_transform(values)``.
        """
        check_is_fitted(self)
        check_parameter_in_allowed(attribute, ELEMENT_WISE, "attribute")
        check_first_level_contrast(self.second_level_input_, first_level_contrast)
        return self._voxelwise_lazy(self._effect_maps(first_level_contrast), attribute)

    def _voxelwise_lazy(self, maps: list[MapSource], attribute: str, quiet: bool = False) -> xr.DataArray:
        X = self._design()
        per_map = attribute in _PER_MAP
        rows = len(maps) if per_map else 1
        reader, blocks, vrange = self._plan_blocks(maps, 2 * len(maps) + rows, quiet)  # + nilearn's wY, wresid
        task = dask.delayed(_voxelwise_task, pure=False)
        columns = [da.from_delayed(task(block, reader, vrange, X, attribute), (rows, block.size), np.float64)
                   for block in blocks]
        values = da.concatenate(columns, axis=1)
        return xr.DataArray(values if per_map else values[0], dims=("map", "voxel") if per_map else ("voxel",),
                            coords=self._output_coords(), name=attribute)

    def _voxelwise_values(self, maps: list[MapSource], attribute: str) -> np.ndarray:
        """:meth:`voxelwise` computed: (n, v) or (v,) (``results_``' element-wise attributes)."""
        lazy = self._voxelwise_lazy(maps, attribute, quiet=True)
        with self._session(maps) as client, phase(f"second level: {attribute}", default=True):
            (values,) = compute(lazy.data, client=client, verbose=self.verbose)
        return np.asarray(values)

    def _compute_contrasts(self, contrasts: Sequence[Any], first_level_contrast: Any,
                           stat_types: Sequence[str | None], output_type: str) -> list:
        """Images of several contrasts of the same maps, computed in one pass over the maps."""
        con_vals = [self._contrast_values(c, first_level_contrast) for c in contrasts]
        valid = [*OUTPUT_TYPES, "all"]
        check_parameter_in_allowed(output_type, valid, "output_type")
        maps = self._effect_maps(first_level_contrast)
        datasets, theta, dispersion = self._contrast_graph(list(zip(con_vals, stat_types)), maps)
        names = list(OUTPUT_TYPES) if output_type == "all" else [output_type]
        with self._session(maps) as client, phase(f"second level: {len(contrasts)} contrast(s)", default=True):
            theta, dispersion, *values = compute(theta, dispersion, *[ds[name].data for ds in datasets
                                                                     for name in names],
                                                 client=client, verbose=self.verbose)
        voxelwise = None if self.minimize_memory else partial(self._voxelwise_values, maps)
        self._set_results(np.zeros(self.n_elements_),
                          {0.0: GroupOLSResults(np.asarray(theta), np.asarray(dispersion), self._design(), voxelwise)})
        images = []
        for n, ds in enumerate(datasets):
            outputs = {}
            for name, value in zip(names, values[n * len(names):(n + 1) * len(names)]):
                img = self.masker_.inverse_transform(np.asarray(value, dtype=np.float64))
                if isinstance(img, nib.Nifti1Image):
                    img.header["descrip"] = f"{output_type} of contrast {ds.attrs['contrast']}"
                outputs[name] = img
            images.append(outputs if output_type == "all" else outputs[output_type])
        return images

    def compute_contrast(
        self,
        second_level_contrast: Any = None,
        first_level_contrast: Any = None,
        second_level_stat_type: str | None = None,
        output_type: str = "z_score",
    ) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """Maps of a second-level contrast as NIfTI images, as nilearn's ``compute_contrast``.

        Sets ``labels_`` and ``results_`` (the group fit), as nilearn.

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
        output_type : {"z_score", "stat", "p_value", "effect_size", "effect_variance", "all"}, default="z_score"
            The map to return, or ``"all"`` for every one.

        Returns
        -------
        Nifti1Image or dict of str to Nifti1Image
            The map, shape ``(x, y, z)`` (``effect_size`` of an F contrast:
            ``(x, y, z, q)``), or a dict of them keyed by output type for
            ``"all"``.
        """
        (result,) = self._compute_contrasts([second_level_contrast], first_level_contrast,
                                            [second_level_stat_type], output_type)
        return result

    def _make_stat_maps(self, contrasts: dict, output_type: str = "z_score",
                        first_level_contrast: Any = None) -> dict:
        """nilearn's hook of ``generate_report`` and ``save_glm_to_bids``: maps of several contrasts.

        All contrasts are computed in one pass over the maps.

        Parameters
        ----------
        contrasts : dict
            Contrast name -> definition (as ``second_level_contrast``).
        output_type : str
            As :meth:`compute_contrast`.
        first_level_contrast : str or array, optional

        Returns
        -------
        dict
            Contrast name -> image (or dict of images for ``"all"``).
        """
        if not contrasts:
            return {}
        names = list(contrasts)
        images = self._compute_contrasts([contrasts[n] for n in names], first_level_contrast,
                                         [None] * len(names), output_type)
        return dict(zip(names, images))

    def _get_element_wise_model_attribute(self, attribute: str, result_as_time_series: bool) -> nib.Nifti1Image:
        """nilearn's hook behind ``residuals_``, ``predicted_`` and ``r_square_``: an image.

        The values come from ``results_[0.0]``, which computes them per voxel
        block on first access (see :class:`GroupOLSResults`).

        Parameters
        ----------
        attribute : {"residuals", "normalized_residuals", "predicted", "SSE", "r_square", "MSE"}
        result_as_time_series : bool
            Whether the attribute has a value per map.

        Returns
        -------
        Nifti1Image
            4D: ``(x, y, z, n_maps)``, or ``(x, y, z, 1)``.
        """
        check_is_fitted(self)
        check_parameter_in_allowed(attribute, ELEMENT_WISE, "attribute")
        if self.minimize_memory:
            raise AttributeError("To access voxelwise attributes like R-squared, residuals, and predictions, "
                                 "the `SecondLevelModel`-object needs to store there attributes. To do so, set "
                                 "`minimize_memory` to `False` when initializing the `SecondLevelModel`-object.")
        if getattr(self, "labels_", None) is None or getattr(self, "results_", None) is None:
            raise ValueError("The model has no results. No contrast has been computed yet.")
        values = np.asarray(getattr(self.results_[0.0], attribute), dtype=np.float64)
        rows = self.design_matrix_.shape[0] if result_as_time_series else 1
        return self.masker_.inverse_transform(values.reshape(rows, -1))


# ---------------------------------------------------------------- checks


def _check_cifti_input(second_level_input: Any, mask_img: Any, design_matrix: Any) -> str | None:
    """``"images"`` or ``"models"`` for CIFTI inputs (dense scalar maps, or models fitted on CIFTI), else None.

    nilearn has no CIFTI type: the checks it makes of images are made here, with its messages.
    """
    inputs = second_level_input
    first = inputs[0] if isinstance(inputs, (list, tuple)) and inputs else inputs
    if getattr(first, "_cifti_models", None) is not None:
        kind = "models"
    elif is_cifti_map(first):
        kind = "images"
        if isinstance(inputs, (list, tuple)) and len(inputs) < 2:
            raise TypeError("A second level model requires a list with at least two first level models or "
                            f"niimgs or surface images; got {len(inputs)}.")
        if design_matrix is None:
            raise ValueError("List of niimgs as second_level_input require a design matrix to be provided.")
    else:
        return None
    if mask_img is not None:
        raise ValueError(f"mask_img must be None for CIFTI maps (every grayordinate is kept); got "
                         f"{type(mask_img).__name__}")
    return kind


def _cifti_masker(inputs: Any, kind: InputKind) -> CiftiMasker:
    """The masker of CIFTI maps: the brain models of the first map, or of the first model's runs."""
    if kind == "models":
        return CiftiMasker(inputs[0]._cifti_models, "second_level_input[0]")
    first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return CiftiMasker.of(first, "second_level_input[0]" if isinstance(inputs, (list, tuple))
                          else "second_level_input")


def _check_input_type_with_count(second_level_input: Any) -> str:
    """nilearn's ``_check_input_type``, its 'at least two' message naming how many were given."""
    try:
        return check_input_type(second_level_input)
    except TypeError as exc:
        if "requires a list with at least two" in str(exc):
            raise TypeError(f"{str(exc).rstrip('.')}; got {len(second_level_input)}.") from None
        raise


def _check_masker(masker: Any) -> None:
    """Refuse ``NiftiMasker`` options that would clean the maps (daskglm masks, resamples and smooths only)."""
    changed = {name: getattr(masker, name) for name, neutral in _MASKER_NEUTRAL.items()
               if getattr(masker, name, neutral[0]) not in neutral}
    if changed:
        raise NotImplementedError(f"mask_img is a NiftiMasker with {changed}: daskglm's SecondLevelModel masks, "
                                  "resamples and smooths the maps but does not clean them (detrending, "
                                  "filtering, standardizing); clean them beforehand or add regressors")

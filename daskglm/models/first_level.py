"""``FirstLevelModel``: nilearn's estimator, fitted out of core on Dask.

daskglm's ``FirstLevelModel`` *is* a nilearn ``FirstLevelModel`` (a subclass):
it takes nilearn's parameters, and nilearn's own code — ``generate_report``,
``nilearn.glm.save_glm_to_bids``, ``SecondLevelModel`` inputs, scikit-learn's
``clone`` and nilearn's estimator checks — works on it. What it overrides is
where the data go:

* ``fit`` ingests each run into a zarr store (:mod:`daskglm.store.ingest`), builds
  design matrices with nilearn's ``make_first_level_design_matrix``
  (:mod:`daskglm.glm.design`), fits every run per voxel block
  (:mod:`daskglm.glm.fit`) and persists the fits into the stores in one
  computation, kept in memory when small (see :mod:`daskglm.glm.fitstore`, dask
  config ``daskglm.fit-memory-bytes``), lazy in large chunks otherwise;
* ``compute_contrast`` returns NIfTI images like nilearn's, and
  ``contrast_dataset`` the same maps as an xarray Dataset
  (:mod:`daskglm.glm.contrasts`);
* ``residuals_``, ``predicted_`` and ``r_square_`` are recomputed per voxel
  block from the stores when first read (``minimize_memory=False``), and
  :meth:`FirstLevelModel.voxelwise` gives them lazily.

``masker_`` is a fitted nilearn ``NiftiMasker`` of the analysis mask, as
nilearn's; it is never used to load a run.

Other kinds of runs (:mod:`daskglm.io.cifti`, :mod:`daskglm.io.surface`) take the
same path as ``n x 1 x 1`` runs of an identity grid: nilearn ``SurfaceImage`` runs
are masked by nilearn's ``SurfaceMasker`` (``masker_``, as nilearn's), and maps
come back as ``SurfaceImage``; CIFTI-2 dense time series are read by rows from
their files and maps come back as dense scalar ``Cifti2Image`` on the runs'
brain models (no mask, smoothing or report).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import inspect
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr
from nilearn.glm.first_level import FirstLevelModel as _NilearnFirstLevelModel
from nilearn.interfaces.bids import parse_bids_filename
from nilearn.maskers import NiftiMasker
from sklearn.utils.validation import check_is_fitted

from ..glm import contrasts as _contrasts
from ..glm import design as _design
from ..glm.fit import check_bins, check_scaling, fit_run, noise_parameters, voxelwise_run
from ..glm.fitstore import reopen_fit, save_fits
from ..io.cifti import (
    brain_models,
    check_same_brain_models,
    grid_image,
    grid_mask,
    structure_of,
    to_dscalar,
    to_dtseries,
)
from ..io.grid import check_target
from ..io.maps import scatter_to_volume
from ..io.nifti import RunInfo, inspect_run, is_url, load_image, nifti_image
from ..io.surface import is_surface, masked_vertices
from ..kernels import regression as _regression
from ..kernels.volume import fwhm_to_sigma
from ..runtime.cluster import (
    compute,
    get_client,
    n_workers_from_n_jobs,
    phase,
    verbosity,
)
from ..runtime.config import config_number
from ..runtime.plan import check_positive
from ..store import default_cache_dir, ingest_runs, mean_images, parameters_key, read_bytes, store_lock
from .estimator import EstimatorMixin
from .nilearn_compat import (
    BaseGLM,
    check_compatibility_mask_and_images,
    check_embedded_masker,
    check_parameter_in_allowed,
    check_params,
    figure_to_png_base64,
    log,
    prepare_mask,
)

__all__ = ["FirstLevelModel", "default_store_root"]

#: Element-wise fit attributes daskglm computes (nilearn's ``RegressionResults`` names).
_VOXELWISE = ("residuals", "predicted", "r_square")
#: dask config key of ``noise_model="arma11"``'s spatial regularisation (FWHM in mm; 0: none), and its default
#: (chosen on benchmarks/calibration.py: BENCHMARKS.md "Calibrated inference").
ARMA_FWHM_KEY, ARMA_FWHM = "daskglm.arma-smoothing-fwhm", 5.0
#: NiftiMasker parameters that would change the data beyond masking, smoothing and
#: resampling, with the value that leaves the data alone.
#: nilearn 0.14's values of ``standardize`` (its ``signal.clean`` refuses "zscore").
_STANDARDIZE_VALUES = ("zscore_sample", "psc", True, False, None)
_MASKER_UNSUPPORTED = {"detrend": False, "low_pass": None, "high_pass": None, "runs": None}


def default_store_root() -> Path:
    """Where run stores go when no ``store`` is given: ``$DASKGLM_CACHE`` or ``~/.cache/daskglm/stores``."""
    return default_cache_dir()


def _inspect(run: Any, storage_options: dict | None) -> tuple[RunInfo, Any]:
    """A run's header, and what to hand ingestion for the run.

    A local file is opened by nibabel once, and ingestion gets that
    file-backed image: its header is not read again (its blocks are still
    read by path, in the tasks). Anything nibabel cannot open, or any other
    input, goes to :func:`inspect_run` as given (which names the problem).
    """
    if isinstance(run, (str, os.PathLike)) and not is_url(run):
        try:
            img = load_image(os.path.expanduser(os.fspath(run)))
        except Exception:  # noqa: BLE001 - whatever it is, inspect_run names it below
            img = None
        if img is not None and isinstance(img.dataobj, nib.arrayproxy.ArrayProxy):
            return inspect_run(img, storage_options), img
    return inspect_run(run, storage_options), run


def _standardize_name(standardize: Any) -> Any:
    """nilearn's FirstLevelModel spelling of ``standardize``: bools mapped, anything else checked."""
    if standardize is True:
        return "zscore_sample"
    if standardize is False or standardize is None:
        return None
    if not (isinstance(standardize, str) and standardize in ("zscore_sample", "psc")):
        raise ValueError(f"'standardize' must be one of {_STANDARDIZE_VALUES}.\n{standardize!r} was provided.")
    return standardize


def _check_run_imgs(run_imgs: Any) -> list:
    """The runs as a list, with nilearn's TypeError for anything but images and paths."""
    from nilearn.surface import SurfaceImage

    runs = list(run_imgs) if isinstance(run_imgs, (list, tuple)) else [run_imgs]
    allowed = (str, os.PathLike, nib.spatialimages.SpatialImage, nib.Cifti2Image, SurfaceImage)
    if not runs or not all(isinstance(run, allowed) for run in runs):
        given = [type(run) for run in runs] if isinstance(run_imgs, (list, tuple)) else type(run_imgs)
        raise TypeError("'run_imgs' must be a single instance / a list of any of the following:\n- string\n"
                        f"- pathlib.Path\n- NiftiImage\n- SurfaceImage\nGot: {given}")
    return runs


def _check_same_fov(infos: list[RunInfo]) -> None:
    """nilearn's field-of-view check of the runs (``check_same_fov``), from their headers."""
    errors = []
    first = infos[0]
    for index, info in enumerate(infos[1:], start=1):
        name = info.path or f"img_#{index}"
        if tuple(info.volume_shape) != tuple(first.volume_shape):
            errors.append(f"{first.path or 'img_#0'} and {name} do not have the same shape "
                          f"({tuple(first.volume_shape)} vs {tuple(info.volume_shape)})")
        if not np.allclose(info.affine, first.affine):
            errors.append(f"{first.path or 'img_#0'} and {name} do not have the same affine")
    if errors:
        raise ValueError("Following field of view errors were detected:\n" + "\n".join(f"- {e}" for e in errors))


def _brain_models(runs: list, infos: list[RunInfo]) -> Any:
    """The CIFTI runs' shared brain-model axis; None for volumes (a mix of both is refused)."""
    cifti = [isinstance(run, nib.Cifti2Image) for run in runs]
    if not any(cifti):
        return None
    names = [info.path or f"run_imgs[{index}]" for index, info in enumerate(infos)]
    if not all(cifti):
        volume = names[cifti.index(False)]
        raise ValueError(f"the runs mix CIFTI dense time series and volumes ({volume} is a volume): "
                         "fit them in separate models")
    models = [brain_models(run, name)[1] for run, name in zip(runs, names)]
    check_same_brain_models(models, names)
    return models[0]


def _check_masker(masker: NiftiMasker) -> None:
    changed = {name: getattr(masker, name, default) for name, default in _MASKER_UNSUPPORTED.items()
               if getattr(masker, name, default) not in (default, False, None)}
    if changed:
        raise NotImplementedError(
            f"mask_img is a NiftiMasker with {changed}: daskglm's ingestion masks, smooths and resamples "
            "the runs, it does not detrend or filter them; add drift or confound regressors to the design "
            "instead")


def _contrast_label(contrast_def: Any) -> str:
    """A contrast definition in a few characters, for the progress's label."""
    if isinstance(contrast_def, (list, tuple)) and contrast_def and all(
            isinstance(c, str) and c == contrast_def[0] for c in contrast_def):
        contrast_def = contrast_def[0]
    if isinstance(contrast_def, str):
        return repr(contrast_def if len(contrast_def) <= 40 else contrast_def[:37] + "...")
    try:
        weights = np.atleast_1d(np.asarray(contrast_def[0] if isinstance(contrast_def, (list, tuple))
                                           else contrast_def, dtype=float))
    except (TypeError, ValueError, IndexError):
        return "(of the runs)"
    if weights.ndim > 1:
        return f"(F, {weights.shape[0]} rows)"
    shown = " ".join(f"{w:g}" for w in weights[:6])
    return f"[{shown}{' ...' if weights.size > 6 else ''}]"


def _insert_before(page: str, text: str, pattern: str) -> str | None:
    """``page`` with ``text`` inserted before the first match of ``pattern`` (None if it does not match)."""
    found = re.search(pattern, page)
    return None if found is None else page[:found.start()] + text + page[found.start():]


class FirstLevelModel(EstimatorMixin, _NilearnFirstLevelModel):
    """nilearn's ``FirstLevelModel``, computed out of core on Dask.

    A subclass of :class:`nilearn.glm.first_level.FirstLevelModel` with its
    parameters and defaults, plus daskglm's keyword-only ``store``,
    ``storage_options``, ``t_chunk``, ``v_chunk`` and ``client``. Runs are
    ingested into zarr stores and fitted per voxel block on a Dask cluster;
    the differences from nilearn are listed in README's "Differences from
    nilearn".

    Parameters
    ----------
    t_r : :obj:`float` or None, default=None
        Repetition time of the runs, in seconds; required to build design
        matrices from events, as in nilearn (ignored with design matrices).
    slice_time_ref : :obj:`float`, default=0.0
        Time of the reference slice as a fraction of ``t_r``.
    hrf_model : :obj:`str`, function, :obj:`list` of functions, or None, default='glover'
        As nilearn's ``make_first_level_design_matrix``.
    drift_model : :obj:`str`, default='cosine'
        'cosine', 'polynomial' or None.
    high_pass : :obj:`float`, default=0.01
        Cut frequency of the cosine drifts, in Hz.
    drift_order : :obj:`int`, default=1
        Order of the polynomial drifts.
    fir_delays : array of shape(n_onsets), :obj:`list` or None, default=None
        FIR delays, in scans.
    min_onset : :obj:`float`, default=-24
        Minimal onset relative to the first scan, in seconds.
    mask_img : Niimg-like, NiftiMasker, False or None, default=None
        A mask image; a fitted ``NiftiMasker`` (its mask, smoothing and target
        grid are used; detrending or filtering maskers are refused); ``False``
        for every voxel; ``None`` for nilearn's EPI mask of the runs
        (``compute_epi_mask`` of a run's mean, ``compute_multi_epi_mask`` of
        several runs' means, each an out-of-core pass over the runs).
    target_affine : 3x3 or a 4x4 array-like, or None, default=None
        As nilearn's masker: the mask goes onto this grid (nearest), each
        block of volumes is resampled onto the mask's cropped grid before
        smoothing, and maps come out on it (see :mod:`daskglm.io.grid`).
    target_shape : :obj:`tuple` or :obj:`list` or None, default=None
        Shape of the target grid (with ``target_affine``).
    smoothing_fwhm : :obj:`float` or :obj:`int` or None, default=None
        Gaussian smoothing FWHM in mm, as nilearn's maskers.
    memory : None, instance of :class:`joblib.Memory`, :obj:`str`, or :class:`pathlib.Path`, default=None
        nilearn's cache. daskglm's cache is its run stores: when ``store`` is
        not given they go to ``<memory>/daskglm`` (else to
        :func:`default_store_root`).
    memory_level : :obj:`int`, default=1
        Accepted for compatibility; run stores are always kept (the fit reads
        them). nilearn's warning for a ``memory`` with ``memory_level=0`` is kept.
    standardize : any of: 'zscore_sample', 'psc', True, False or None; default=False
        Checked and, as by nilearn 0.14, never applied (its ``standardize_``
        is None whatever ``signal_scaling``).
    signal_scaling : False, :obj:`int` or (int, int), default=0
        0: percent signal change of each voxel's mean; (0, 1): of the run's
        grand mean; False: none.
    noise_model : {'ar1', 'ols', 'arN', 'arma11'}, default='ar1'
        Temporal noise model. ``'arma11'`` (daskglm's) fits an ARMA(1,1)
        model per voxel, its parameters chosen by restricted maximum
        likelihood on a grid (AFNI's ``3dREMLfit``); see the user guide's
        "Choosing a noise model".
    verbose : :obj:`bool` or :obj:`int`, default=0
        0: silent. 1: a line per step and dask's progress bars for work
        lasting more than about a second (a widget in a notebook with
        ipywidgets, text in a terminal).
    n_jobs : :obj:`int`, default=-1
        Workers of the embedded Dask cluster, joblib's convention (-1: one
        per core; -2: all but one...). Ignored when the work runs on another
        cluster (``client``, an active client, ``DASK_SCHEDULER_ADDRESS``).
    minimize_memory : :obj:`bool`, default=True
        ``False`` enables ``residuals_``, ``predicted_`` and ``r_square_``,
        recomputed per voxel block from the run stores when first read
        (:meth:`voxelwise` gives them lazily whatever this setting).
    subject_label : :obj:`str` or None, default=None
        Subject label, for ``SecondLevelModel`` and BIDS outputs.
    random_state : :obj:`int` or numpy.random.RandomState, default=None
        KMeans seed for AR(p > 1).
    reports : :obj:`bool`, default=True
        Keep what ``generate_report`` needs, as nilearn.
    store : :obj:`str`, :class:`pathlib.Path` or None, default=None
        Folder (local path or fsspec URL) for the run stores, one per source
        file and ingestion parameters (mask, smoothing, grid): switching
        parameters and back reuses what was built.
    storage_options : :obj:`dict` or None, default=None
        fsspec options for remote stores and inputs.
    t_chunk : :obj:`int` or None, default=None
        Scans per chunk of the run stores (default: planned from the data size).
    v_chunk : :obj:`int` or None, default=None
        Voxels per chunk of the run stores (default: planned from the data size).
    client : distributed.Client, :obj:`str` or None, default=None
        Where the graphs run: a client, a scheduler address or file, 'sync'
        or 'threads', or None for the active client,
        ``DASK_SCHEDULER_ADDRESS`` or an embedded ``LocalCluster`` of
        ``n_jobs`` workers (see :func:`daskglm.runtime.cluster.get_client`).
    overwrite : :obj:`bool`, default=False
        Rebuild the runs' stores (and so refit) at each ``fit`` even when
        they are complete and up to date: the remedy for a store reported
        damaged (:class:`daskglm.store.StoreDamagedError`).

    Attributes
    ----------
    design_matrices_ : :obj:`list` of :obj:`pandas.DataFrame`
        One per run, shape (n_scans, n_regressors).
    fir_delays_ : :obj:`list` of :obj:`int`
        ``fir_delays``, or [0].
    labels_ : :obj:`list` of xarray.DataArray
        Each run's ``label_index`` (voxel,): the row of the run's ``cov``
        table that applies to each voxel (nilearn: the noise label of each voxel).
    masker_ : :obj:`~nilearn.maskers.NiftiMasker`
        Fitted on the analysis mask; ``mask_img_`` is its mask.
    memory_ : joblib.Memory
        nilearn's cache object (unused by daskglm).
    n_elements_ : :obj:`int`
        Voxels in the mask.
    results_ : :obj:`list` of xarray.Dataset
        Each run's fit: ``beta`` (regressor, voxel), ``sigma2`` (voxel,),
        ``label_index`` (voxel,), ``cov`` (label, regressor, regressor),
        ``label_value``, persisted in the run's store (group ``glm-<key>``,
        see :func:`daskglm.glm.fit.fit_key`; attribute ``group``). numpy
        when the fits of all runs take at most the dask config
        ``daskglm.fit-memory-bytes`` (default 256 MiB; 0: always lazy), so
        that contrasts are numpy operations in this process; lazy otherwise,
        in large chunks the workers read (nilearn: dicts of
        ``RegressionResults`` per noise label).
    standardize_ : :obj:`str` or None
        ``standardize`` as applied (None when ``signal_scaling`` is not False).
    t_r_ : :obj:`float` or None
        ``t_r``, or the first run's header repetition time when ``t_r`` is None.
    """

    def __init__(
        self,
        t_r: float | None = None,
        slice_time_ref: float = 0.0,
        hrf_model: str | None = "glover",
        drift_model: str | None = "cosine",
        high_pass: float = 0.01,
        drift_order: int = 1,
        fir_delays: Any = None,
        min_onset: float = -24,
        mask_img: Any = None,
        target_affine: Any = None,
        target_shape: Any = None,
        smoothing_fwhm: float | None = None,
        memory: Any = None,
        memory_level: int = 1,
        standardize: Any = False,
        signal_scaling: Any = 0,
        noise_model: str = "ar1",
        verbose: int = 0,
        n_jobs: int = -1,
        minimize_memory: bool = True,
        subject_label: str | None = None,
        random_state: Any = None,
        reports: bool = True,
        *,
        store: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        t_chunk: int | None = None,
        v_chunk: int | None = None,
        client: Any = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(
            t_r=t_r, slice_time_ref=slice_time_ref, hrf_model=hrf_model, drift_model=drift_model,
            high_pass=high_pass, drift_order=drift_order, fir_delays=fir_delays, min_onset=min_onset,
            mask_img=mask_img, target_affine=target_affine, target_shape=target_shape,
            smoothing_fwhm=smoothing_fwhm, memory=memory, memory_level=memory_level, standardize=standardize,
            signal_scaling=signal_scaling, noise_model=noise_model, verbose=verbose, n_jobs=n_jobs,
            minimize_memory=minimize_memory, subject_label=subject_label, random_state=random_state,
            reports=reports,
        )
        self.store = store
        self.storage_options = storage_options
        self.t_chunk = t_chunk
        self.v_chunk = v_chunk
        self.client = client
        self.overwrite = overwrite

    def _map_images(self, maps: dict[str, np.ndarray], ds: xr.Dataset | xr.DataArray,
                    what: str | None = None) -> dict[str, Any]:
        """The maps of a contrast (values over ``ds``'s voxels, by name) as images of the runs' kind.

        ``SurfaceImage``s (nilearn's masker), dense scalar ``Cifti2Image``s on the runs' brain models,
        or NIfTI images of the analysis grid; the last two described as ``"<name> of contrast ..."``
        (``"<name> of <what>"`` when ``what`` is given).
        """
        what = what or f"contrast {ds.attrs['contrast']}"
        described = {name: f"{name} of {what}" for name in maps}
        if self._elements:  # element g is voxel (g, 0, 0): into the masker's / brain models' order
            order = np.argsort(ds["i"].values)
            if self._elements == "surface":
                return {name: self.masker_.inverse_transform(value[..., order]) for name, value in maps.items()}
            return {name: to_dscalar({name: value[..., order]}, self._cifti_models, described[name])
                    for name, value in maps.items()}
        ijk, shape = [ds[n].values for n in "ijk"], tuple(ds.attrs["volume_shape"])
        images = {name: nifti_image(scatter_to_volume(value, *ijk, shape), np.asarray(ds.attrs["affine"]))
                  for name, value in maps.items()}
        for name, img in images.items():
            img.header["descrip"] = described[name]
        return images

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """The client of this model's computations (an embedded cluster sized by ``n_jobs`` and the data)."""
        with get_client(self.client, n_workers=n_workers_from_n_jobs(self.n_jobs),
                        work_bytes=getattr(self, "_work_bytes", None)) as client:
            yield client

    # ------------------------------------------------------------------ fit

    def _store_root(self) -> str:
        if self.store is not None:
            return os.fspath(self.store)
        location = self.memory if isinstance(self.memory, (str, os.PathLike)) else getattr(self.memory, "location",
                                                                                           None)
        if location:
            return os.path.join(os.fspath(location), "daskglm")
        return os.fspath(default_store_root())

    def _store_for(self, info: RunInfo, index: int, key: str) -> str:
        """The store of one run: named after its source and the ingestion parameters' ``key``."""
        source = info.path or info.provenance.get("sha1", str(index))
        digest = hashlib.sha1(str(source).encode()).hexdigest()[:16]
        stem = Path(info.path).name.split(".")[0] if info.path else "in-memory"
        return f"{self._store_root().rstrip('/')}/{stem}-{digest}-{key[:8]}.zarr"

    @property
    def _elements(self) -> str | None:
        """What the fitted columns are: ``"cifti"`` grayordinates, ``"surface"`` vertices, or None (voxels).

        Derived from what ``fit`` keeps (``_cifti_models``, ``_surface_masker``); the same name and values
        as :class:`daskglm.SecondLevelModel`'s.
        """
        if getattr(self, "_cifti_models", None) is not None:
            return "cifti"
        return "surface" if getattr(self, "_surface_masker", None) is not None else None

    def _check_params(self, bins: Any = 100) -> None:
        """Check every parameter that can be checked before any run is read or written."""
        check_target(self.target_affine, self.target_shape)
        _regression.parse_noise_model(self.noise_model)
        if self.noise_model == _regression.ARMA11:
            config_number(ARMA_FWHM_KEY, ARMA_FWHM)
        check_bins(bins)
        check_parameter_in_allowed(self.signal_scaling, {False, 1, (0, 1)}, "signal_scaling")
        check_scaling(self.signal_scaling)  # and daskglm's message for 1, which nilearn 0.14 cannot fit
        fwhm_to_sigma(self.smoothing_fwhm, np.eye(4))
        for name in ("t_chunk", "v_chunk"):
            check_positive(name, getattr(self, name))
        n_workers_from_n_jobs(self.n_jobs)
        _standardize_name(self.standardize)
        check_params(self.__dict__)  # then nilearn's type checks of the rest of its shared parameters

    def _masking(self, info: RunInfo) -> tuple[Any, Any, Any, Any, NiftiMasker | None]:
        """What ingestion masks and smooths with, from ``mask_img`` as nilearn reads it.

        Returns
        -------
        mask : image, path or None
            None: compute nilearn's EPI mask from the runs.
        smoothing_fwhm, target_affine, target_shape
        masker : NiftiMasker or None
            A fitted masker given as ``mask_img`` (it becomes ``masker_``),
            or the masker nilearn builds when a fitted masker has no mask
            (fitted after ingestion); None otherwise.
        """
        given = self.mask_img
        if getattr(self, "_cifti_models", None) is not None:
            return self._cifti_masking(info)
        if getattr(self, "_surface_masker", None) is not None:  # masked already (see _surface_runs)
            return grid_mask(info.volume_shape[0]), None, None, None, self._surface_masker
        if isinstance(given, NiftiMasker):
            if getattr(given, "mask_img_", "not none") is None:
                # nilearn's edge case: a fitted masker without a mask; its parameters override
                # the model's (with nilearn's warning) and the mask is computed from the runs.
                masker = check_embedded_masker(self, masker_type="nii", ignore=["high_pass"])
                _check_masker(masker)
                return None, masker.smoothing_fwhm, masker.target_affine, masker.target_shape, masker
            check_is_fitted(given)
            _check_masker(given)
            return given.mask_img_, given.smoothing_fwhm, None, None, given
        if given is False:
            ones = nib.Nifti1Image(np.ones(tuple(info.volume_shape), np.int8), np.asarray(info.affine))
            return ones, self.smoothing_fwhm, self.target_affine, self.target_shape, None
        return given, self.smoothing_fwhm, self.target_affine, self.target_shape, None

    def _cifti_masking(self, info: RunInfo) -> tuple[Any, Any, Any, Any, None]:
        """Every grayordinate of a CIFTI run, unsmoothed (see :mod:`daskglm.io.cifti`)."""
        if self.mask_img not in (None, False):
            raise ValueError("mask_img must be None for CIFTI runs: every grayordinate of the brain models "
                             f"is fitted (got {type(self.mask_img).__name__})")
        if self.target_affine is not None or self.target_shape is not None:
            raise ValueError("target_affine and target_shape do not apply to CIFTI runs (grayordinates, "
                             "not a grid)")
        if self.smoothing_fwhm is not None:
            warnings.warn("Parameter 'smoothing_fwhm' is not yet supported for CIFTI data: the runs are "
                          "fitted unsmoothed.", UserWarning, stacklevel=4)
        return grid_mask(info.volume_shape[0]), None, None, None, None

    def _surface_runs(self, runs: list) -> list:
        """SurfaceImage runs through nilearn's own masking, as ``(n_elements, 1, 1, n_scans)`` images.

        nilearn's ``_prepare_mask`` sets ``masker_`` (a fitted ``SurfaceMasker``, with nilearn's checks of
        the mask, the meshes and the parameters, and its warnings); each run's ``(n_scans, n_elements)``
        matrix from its ``transform`` is then one column per vertex of daskglm's store, on the identity grid
        of :mod:`daskglm.io.cifti`. Surface images are held in memory by nilearn already.
        """
        from nilearn.surface.surface import check_surf_img

        check_surf_img(runs)  # nilearn's "The image is empty."
        self.masker_ = None
        prepare_mask(self, runs)
        self._surface_masker = self.masker_
        return [grid_image(np.asarray(self.masker_.transform(run), np.float32)) for run in runs]

    def _fitted_masker(self, masker: NiftiMasker | None, mask: nib.Nifti1Image) -> NiftiMasker:
        """``masker_``: the given fitted masker, or nilearn's embedded masker fitted on ``mask``."""
        if masker is not None and getattr(masker, "mask_img_", None) is not None:
            return masker
        if masker is None:
            masker = check_embedded_masker(self, masker_type="nii", ignore=["high_pass"])
        # ``mask`` is already on the analysis grid: the masker must not resample it again.
        masker.set_params(mask_img=mask, target_affine=None, target_shape=None)
        return masker.fit()

    def _reporting(self, runs: list, events: Any) -> None:
        """nilearn's ``_reporting_data``: what ``generate_report`` and ``save_glm_to_bids`` read."""
        drift = None
        if self.drift_model:
            detail = (f"high pass filter={self.high_pass} Hz" if self.drift_model == "cosine"
                      else f"order={self.drift_order}")
            drift = f"and a {self.drift_model} drift model ({detail})"
        trial_types: set[str] = set()
        if events is not None:
            for table in events if isinstance(events, list) else [events]:
                frame = _design.load_events_table(table)
                if frame is not None and "trial_type" in frame.columns:
                    trial_types.update(str(t) for t in frame["trial_type"] if t)
        self._report_content["reports_at_fit_time"] = self.reports
        self._reporting_data = {
            "trial_types": sorted(trial_types),
            "noise_model": self.noise_model,
            "hrf_model": "finite impulse response" if self.hrf_model == "fir" else self.hrf_model,
            "drift_model": drift,
            "run_imgs": {
                index: (parse_bids_filename(run) if isinstance(run, (str, Path)) and not is_url(run) else {})
                for index, run in enumerate(runs)
            },
        }

    def fit(
        self,
        run_imgs: Any,
        events: Any = None,
        confounds: Any = None,
        sample_masks: Any = None,
        design_matrices: Any = None,
        bins: int = 100,
    ) -> FirstLevelModel:
        """Ingest the runs, build the design matrices and fit every run.

        The runs are ingested together (a store that is complete and up to
        date is reused), then all of them are fitted and their fits written
        into their stores in one computation (see ``results_``).

        Parameters
        ----------
        run_imgs : path, fsspec URL, image, or list of them
            4D runs, on one field of view.
        events, confounds, sample_masks, design_matrices
            As nilearn's ``FirstLevelModel.fit``.
        bins : int, default=100
            AR(1) quantisation bins / AR(p) clusters.

        Returns
        -------
        FirstLevelModel
            This model, fitted (``results_``, ``design_matrices_``,
            ``masker_``, ``labels_`` set).
        """
        start = time.monotonic()
        self._check_params(bins)
        self.fir_delays_ = [0] if self.fir_delays is None else self.fir_delays
        self._fit_cache()
        # nilearn 0.14's rule, verbatim in effect: ``False in [0, 1, (0, 1)]`` is true, so
        # ``standardize_`` is None whatever ``signal_scaling`` (nilearn never standardizes).
        self.standardize_ = _standardize_name(self.standardize)
        if self.signal_scaling in [0, 1, (0, 1)]:
            self.standardize_ = None
        self.labels_ = self.results_ = None
        self._forget_computed()  # nilearn caches residuals_ and friends on first read
        infos, runs, designs = self._designs(run_imgs, events, confounds, sample_masks, design_matrices)
        masks = _design.sample_mask_indices(sample_masks, [info.n_scans for info in infos])
        mask_img, fwhm, target_affine, target_shape, masker = self._masking(infos[0])
        check_target(target_affine, target_shape)
        fwhm_to_sigma(fwhm, np.eye(4))
        self._reset_report()
        self.masker_ = None
        self._reporting(list(run_imgs) if isinstance(run_imgs, (list, tuple)) else [run_imgs], events)
        self.design_matrices_ = designs
        self.t_r_ = self.t_r if self.t_r is not None else infos[0].t_r
        # An embedded cluster's size: the bytes ingestion reads (a region of interest reads its slabs).
        # CIFTI and surface runs are never smoothed: their blocks are reads and BLAS, which threads share
        # without the GIL, so their cluster is threads in this process whatever the data's size (as fast as
        # worker processes, half the memory: BENCHMARKS.md, "HCP-size CIFTI").
        self._work_bytes = 0 if self._elements else read_bytes(infos, mask_img, fwhm, target_affine, target_shape,
                                                                self.storage_options)
        with self._client() as client, verbosity(self.verbose):
            if mask_img is None and len(runs) > 1:
                log("Computing the mask of the runs (compute_multi_epi_mask of their mean volumes)",
                    verbose=self.verbose)
                mask_img = self._multi_run_mask(runs, client, target_affine, target_shape)
            key = parameters_key(mask_img, fwhm, target_affine, target_shape, self.t_chunk, self.v_chunk,
                                 self.storage_options)
            stores = [self._store_for(info, index, key) for index, info in enumerate(infos)]
            # The stores' locks from ingestion through the fits' write and read: another process
            # cannot rebuild a store between this one's ingestion and its fit.
            with contextlib.ExitStack() as held:
                for store in sorted(set(stores)):
                    held.enter_context(store_lock(store))
                # Every run's blocks in one computation (a run given twice is ingested once).
                unique = {store: run for run, store in zip(runs, stores)}
                log(f"Ingesting {len(unique)} run(s) into zarr stores under {self._store_root()}",
                    verbose=self.verbose)
                for index, store in enumerate(unique):
                    source = infos[stores.index(store)].path or "in-memory image"
                    log(f"Extracting region signals of run {index + 1} ({source}: mask, "
                        f"smoothing_fwhm={fwhm}) into {store}", verbose=self.verbose, msg_level=2)
                # Whole voxel columns: one read task per fit block (a small graph).
                opened = dict(zip(unique, ingest_runs(
                    list(unique.values()), list(unique), mask_img=mask_img, smoothing_fwhm=fwhm,
                    t_chunk=self.t_chunk, v_chunk=self.v_chunk, client=client,
                    storage_options=self.storage_options, target_affine=target_affine,
                    target_shape=target_shape, columns=True, overwrite=bool(self.overwrite),
                )))
                datasets = []
                for index, store in enumerate(stores):
                    ds = opened[store]
                    if masks[index] is not None:
                        ds = ds.isel(time=np.asarray(masks[index]))
                    datasets.append(ds)
                self.masker_ = self._fitted_masker(masker, self._mask_image(datasets[0]))
                self.masker_.standardize = self.standardize_  # as nilearn
                self.n_elements_ = int(self.masker_.n_elements_)
                elements = {"cifti": "grayordinates", "surface": "vertices"}.get(self._elements, "voxels")
                log(f"Fitting {len(runs)} run(s): {self.noise_model}, {self.n_elements_} {elements}",
                    verbose=self.verbose)
                lazy = []
                # ARMA(1,1): lag correlations regularised in space, volumes only (no neighbours on a CIFTI
                # or surface run's identity grid)
                noise_fwhm = config_number(ARMA_FWHM_KEY, ARMA_FWHM) if self._elements is None else 0.0
                for index, (ds, design) in enumerate(zip(datasets, designs)):
                    with phase(f"fitting run {index + 1}/{len(runs)}: AR coefficients"):  # AR(p > 1) only
                        lazy.append(fit_run(ds, design, noise_model=self.noise_model, bins=bins,
                                            signal_scaling=self.signal_scaling, random_state=self.random_state,
                                            client=client, noise_smoothing_fwhm=noise_fwhm))
                # Every run's fit in one computation; small results come back in memory.
                with phase(f"fitting {len(runs)} runs" if len(runs) > 1 else "fitting the run"):
                    fits = save_fits(lazy, stores, name=None, storage_options=self.storage_options, client=client)
        self.results_ = fits
        self._run_datasets = datasets
        self.labels_ = [fit["label_index"] for fit in fits]
        self._log("done", n_runs=len(runs), time_in_second=time.monotonic() - start)
        return self

    def make_design_matrices(
        self,
        run_imgs: Any,
        events: Any = None,
        confounds: Any = None,
        sample_masks: Any = None,
        design_matrices: Any = None,
    ) -> list[pd.DataFrame]:
        """The design matrices :meth:`fit` would use, from the runs' headers only (no data read).

        A way to look at the design (its columns, for contrasts) before a long
        fit; every check :meth:`fit` makes of the runs' headers, events,
        confounds and sample masks is made, with nilearn's warnings.

        Parameters
        ----------
        run_imgs, events, confounds, sample_masks, design_matrices
            As :meth:`fit`.

        Returns
        -------
        list of DataFrame, one per run, each of shape (n_kept_scans_i, p_i)
            As ``design_matrices_`` after :meth:`fit`.
        """
        self._check_params()
        return self._designs(run_imgs, events, confounds, sample_masks, design_matrices)[2]

    def _designs(self, run_imgs: Any, events: Any, confounds: Any, sample_masks: Any,
                 design_matrices: Any) -> tuple[list[RunInfo], list, list[pd.DataFrame]]:
        """The runs' headers, the runs as ingestion takes them, and their design matrices."""
        runs = _check_run_imgs(run_imgs)
        self._surface_masker = None
        if is_surface(self.mask_img) or any(is_surface(run) for run in runs):
            other = [i for i, run in enumerate(runs) if not is_surface(run)]
            if other and len(other) < len(runs):  # (a surface mask with volumes: nilearn's TypeError below)
                raise ValueError(f"the runs mix SurfaceImages and other runs: run_imgs[{other[0]}] is a "
                                 f"{type(runs[other[0]]).__name__}; fit surface runs and volume or CIFTI runs "
                                 "in separate models")
            if self.mask_img not in (None, False):
                check_compatibility_mask_and_images(self.mask_img, runs[0])  # nilearn's TypeError for a mix
            runs = self._surface_runs(runs)
        infos, runs = map(list, zip(*[_inspect(run, self.storage_options) for run in runs]))
        self._cifti_models = _brain_models(runs, infos)
        _check_same_fov(infos)
        designs = _design.run_design_matrices(
            [info.n_scans for info in infos], self.t_r, events=events, confounds=confounds,
            sample_masks=sample_masks, design_matrices=design_matrices, slice_time_ref=self.slice_time_ref,
            hrf_model=self.hrf_model, drift_model=self.drift_model, high_pass=self.high_pass,
            drift_order=self.drift_order, fir_delays=self.fir_delays, min_onset=self.min_onset,
        )
        return infos, runs, designs

    def _multi_run_mask(self, runs: list, client: Any, target_affine: Any, target_shape: Any) -> nib.Nifti1Image:
        """nilearn's implicit mask of several runs: ``compute_multi_epi_mask`` of their means.

        Each run's mean volume is one out-of-core pass over the run.
        """
        from nilearn.masking import compute_multi_epi_mask

        with phase(f"mask: mean of {len(runs)} runs"):
            means = mean_images(runs, client, self.storage_options)
        mask = compute_multi_epi_mask(means, target_affine=target_affine, target_shape=target_shape)
        if not np.asarray(mask.dataobj).any():
            raise ValueError("the mask computed from the runs' mean EPI volumes "
                             "(nilearn's compute_multi_epi_mask) is empty; give mask_img")
        return mask

    @staticmethod
    def _mask_image(ds: xr.Dataset) -> nib.Nifti1Image:
        shape = tuple(ds.attrs["volume_shape"])
        mask = scatter_to_volume(np.ones(ds.sizes["voxel"], np.int8), ds["i"].values,
                                 ds["j"].values, ds["k"].values, shape)
        return nifti_image(mask, np.asarray(ds.attrs["affine"]))

    # ------------------------------------------------------------------ contrasts

    def contrast_dataset(self, contrast_def: Any, stat_type: str | None = None) -> xr.Dataset:
        """The maps of a contrast as an xarray Dataset (see :func:`daskglm.glm.contrasts.contrast_dataset`).

        Lazy when the fits are (``results_`` larger than the dask config
        ``daskglm.fit-memory-bytes``, see :mod:`daskglm.glm.fitstore`); computed
        now, in numpy, when they are held in memory.

        Parameters
        ----------
        contrast_def : array, str, or list of them (one per run)
            As nilearn's ``compute_contrast``.
        stat_type : {"t", "F"}, optional
            Type of the contrast; default ``"t"`` for a vector or a one-row
            matrix, ``"F"`` otherwise.

        Returns
        -------
        xarray.Dataset
            ``effect_size`` (voxel,) (``(contrast_row, voxel)`` for F),
            ``effect_variance``, ``stat``, ``p_value``, ``z_score`` (voxel,).
            Coordinates ``i, j, k`` on the analysis grid; for CIFTI runs also
            ``structure`` (``"CORTEX_LEFT"``...), for surface runs ``part``
            (``"left"``/``"right"``) and ``vertex`` (index in its part).
        """
        check_is_fitted(self)
        per_run = _design.contrasts_per_run(contrast_def, len(self.results_))
        columns = [[str(c) for c in dm.columns] for dm in self.design_matrices_]
        run_contrasts = []
        for index in _design.nonnull_runs(per_run, columns):  # warns for null runs, as nilearn
            matrix, kind = _design.parse_contrast(per_run[index], columns[index], stat_type)
            run_contrasts.append(_contrasts.run_contrast(self.results_[index], matrix, kind))
        ds = _contrasts.contrast_dataset(_contrasts.combine_contrasts(run_contrasts))
        ds.attrs["contrast"] = str(per_run)
        models = getattr(self, "_cifti_models", None)
        if models is not None:  # the grayordinate of voxel (g, 0, 0) is g
            ds = ds.assign_coords(structure=("voxel", structure_of(models)[ds["i"].values]))
        if self._elements == "surface":  # the masked vertex of voxel (g, 0, 0) is g
            part, vertex = masked_vertices(self.masker_)
            ds = ds.assign_coords(part=("voxel", part[ds["i"].values]), vertex=("voxel", vertex[ds["i"].values]))
        return ds

    def compute_contrast(
        self, contrast_def: Any, stat_type: str | None = None, output_type: str = "z_score"
    ) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """Maps of a contrast as NIfTI images, as nilearn's ``compute_contrast``.

        Parameters
        ----------
        contrast_def : array, str, or list of them (one per run)
            A string expression over the design's column names (``"a - b"``)
            or weights of shape ``(k,)`` or ``(q, k)`` (``k`` at most the
            design's columns, zero-padded with nilearn's warning); a ``str``
            or array applies to every run, a list or tuple holds one per run.
            The runs' contrasts are combined with nilearn's fixed effects.
        stat_type : {"t", "F"}, optional
            Type of the contrast; default ``"t"`` for a vector or a one-row
            matrix, ``"F"`` otherwise.
        output_type : {"z_score", "stat", "p_value", "effect_size", "effect_variance", "all"}, default="z_score"
            The map to return, or ``"all"`` for every one.

        Returns
        -------
        Nifti1Image or dict of str to Nifti1Image
            The map, ``(x, y, z)`` (an F contrast's ``effect_size`` is
            ``(x, y, z, q)``), zero outside the mask; for ``output_type="all"``
            a dict of every map by name.
        """
        check_parameter_in_allowed(output_type, [*_contrasts.OUTPUT_TYPES, "all"], "output_type")
        ds = self.contrast_dataset(contrast_def, stat_type)
        names = list(_contrasts.OUTPUT_TYPES) if output_type == "all" else [output_type]
        values = [ds[name].data for name in names]
        if any(isinstance(value, da.Array) for value in values):  # in-memory fits: nothing to compute
            with self._client() as client, phase(f"contrast {_contrast_label(contrast_def)}", default=True):
                values = compute(*values, client=client, verbose=self.verbose)
        outputs = self._map_images({name: np.asarray(value, dtype=np.float64) for name, value in zip(names, values)},
                                   ds)
        return outputs if output_type == "all" else outputs[output_type]

    # ------------------------------------------------------------------ voxel-wise fit attributes

    def voxelwise(self, attribute: str) -> list[xr.DataArray]:
        """Lazy ``residuals``, ``predicted``, ``r_square`` or ``noise_parameters`` of each run.

        Available whatever ``minimize_memory``: each is recomputed per voxel
        block from the run store and the stored fit when computed (see
        :func:`daskglm.glm.fit.voxelwise_run`; the workers read the fit from the
        store, also when ``results_`` holds it in memory).

        Parameters
        ----------
        attribute : {"residuals", "predicted", "r_square", "noise_parameters"}
            The quantity: the residuals or the predicted signal of each scan,
            the coefficient of determination of each voxel, or the parameters
            of each voxel's noise model (``a`` and ``b`` for ``"arma11"``,
            ``rho_1 ...`` for AR(N); :func:`daskglm.glm.fit.noise_parameters`,
            from the stored labels only).

        Returns
        -------
        list of xarray.DataArray
            One per run: ``(time, voxel)`` float64, ``(voxel,)`` for
            ``r_square``, ``(parameter, voxel)`` for ``noise_parameters``; turn
            one into an image with :func:`daskglm.io.maps.to_nifti`.
        """
        check_is_fitted(self)
        if attribute == "noise_parameters":
            return [noise_parameters(reopen_fit(fit, storage_options=self.storage_options)) for fit in self.results_]
        return [
            voxelwise_run(ds, reopen_fit(fit, storage_options=self.storage_options), design, attribute,
                          signal_scaling=self.signal_scaling)
            for ds, fit, design in zip(self._run_datasets, self.results_, self.design_matrices_)
        ]

    def _get_element_wise_model_attribute(self, attribute: str, result_as_time_series: bool) -> list:
        """nilearn's hook behind ``residuals_``, ``predicted_`` and ``r_square_``: images per run.

        Parameters
        ----------
        attribute : {"residuals", "predicted", "r_square"}
        result_as_time_series : bool
            Unused: ``r_square`` is one volume, the others one per scan (as nilearn).

        Returns
        -------
        list of Nifti1Image or Cifti2Image
            4D images, ``(x, y, z, n_scans)`` (``r_square``: ``(x, y, z, 1)``); for CIFTI runs, dense
            time series ``(n_scans, n_grayordinates)`` (``r_square``: a dense scalar).
        """
        del result_as_time_series
        check_is_fitted(self)
        check_parameter_in_allowed(attribute, list(_VOXELWISE), "attribute")
        if self.minimize_memory:
            raise AttributeError(
                "To access voxelwise attributes like R-squared, residuals, and predictions, "
                "the `FirstLevelModel`-object needs to store there attributes. To do so, set "
                "`minimize_memory` to `False` when initializing the `FirstLevelModel`-object. "
                "(daskglm: model.voxelwise(attribute) gives them lazily whatever minimize_memory.)"
            )
        return self.voxelwise_images(attribute)

    def voxelwise_images(self, attribute: str, client: Any = None, label: str = "") -> list:
        """``residuals``, ``predicted`` or ``r_square`` of each run as images, computed now.

        Parameters
        ----------
        attribute : {"residuals", "predicted", "r_square"}
            The quantity, as :meth:`voxelwise`.
        client : distributed.Client or str, optional
            Where to compute them (default: the model's client).
        label : str
            Start of the progress label (``"sub-01: "``).

        Returns
        -------
        list of Nifti1Image or Cifti2Image
            One per run: ``(x, y, z, n_scans)`` (``r_square``: ``(x, y, z, 1)``); for CIFTI runs, dense
            time series ``(n_scans, n_grayordinates)`` (``r_square``: a dense scalar).
        """
        arrays = self.voxelwise(attribute)
        given = contextlib.nullcontext(client) if client is not None else self._client()
        with given as client, phase(f"{label}{attribute}", default=True):
            values = compute(*[a.data for a in arrays], client=client, verbose=self.verbose)
        orders = [np.argsort(array["i"].values) for array in arrays]
        if self._elements == "surface":  # SurfaceImages, from nilearn's masker
            return [self.masker_.inverse_transform(np.atleast_2d(np.asarray(value)[..., order])) for value, order
                    in zip(values, orders)]  # r_square as nilearn's: one sample, (n_vertices, 1)
        models = getattr(self, "_cifti_models", None)
        if models is not None:  # dense time series per run (r_square: a dense scalar)
            if attribute == "r_square":
                return [to_dscalar({"r_square": np.asarray(value)[order]}, models) for value, order in
                        zip(values, orders)]
            return [to_dtseries(np.asarray(value)[:, order], models, self.t_r_) for value, order in
                    zip(values, orders)]
        images = []
        for array, value in zip(arrays, values):
            value = np.atleast_2d(value)  # r_square: one volume, as nilearn's masker gives
            shape = tuple(array.attrs["volume_shape"])
            ijk = [array[n].values for n in "ijk"]
            images.append(nifti_image(scatter_to_volume(value, *ijk, shape), np.asarray(array.attrs["affine"])))
        return images

    # ------------------------------------------------------------------ report

    def generate_report(self, *args: Any, **kwargs: Any) -> Any:
        """nilearn's ``generate_report`` (same parameters, page and warnings), plus a "Noise model" section.

        For a fitted model whose noise model is not ``"ols"``, a section before the statistical maps (and
        its entry in the page's menu) states the noise model and each run's median parameters in the mask,
        and shows the first run's map of the AR coefficient (``rho_1``; ``a`` and the MA parameter ``b``
        for ``"arma11"``) from :meth:`voxelwise` ``("noise_parameters")``, on a fixed scale -1 .. 1:
        slices over ``bg_img`` (as the statistical maps), or both hemispheres of the model's mesh for
        surface fits. With ``"ols"``, or no reporting data (``reports=False``), the page is nilearn's.

        Parameters
        ----------
        contrasts
            As nilearn's.
        first_level_contrast
            As nilearn's.
        title
            As nilearn's.
        bg_img
            As nilearn's.
        threshold
            As nilearn's.
        alpha
            As nilearn's.
        cluster_threshold
            As nilearn's.
        height_control
            As nilearn's.
        two_sided
            As nilearn's.
        min_distance
            As nilearn's.
        plot_type
            As nilearn's.
        cut_coords
            As nilearn's.
        display_mode
            As nilearn's.
        report_dims
            As nilearn's. Every parameter is passed on as given to nilearn's
            :meth:`nilearn.glm.first_level.FirstLevelModel.generate_report`.

        Returns
        -------
        nilearn.reporting.HTMLReport
            nilearn's report, with the "Noise model" section.
        """
        report = super().generate_report(*args, **kwargs)
        uid = re.search(r'<section id="mask-UUID-(\w+)"', report.body)  # the page's id, in nilearn's anchors
        if (uid is None or report.body not in report.html or not self.__sklearn_is_fitted__() or not self.reports
                or self.noise_model == "ols" or not self._report_content.get("reports_at_fit_time")):
            return report
        bound = inspect.signature(BaseGLM.generate_report).bind(self, *args, **kwargs)
        section = self._noise_section(bound.arguments.get("bg_img", "MNI152TEMPLATE"), uid[1])
        if section:
            after = f'(statistical-maps|about)-UUID-{uid[1]}"'  # before the statistical maps (or "About")
            link = (f'<li class="pure-menu-item"><a href="#noise-model-UUID-{uid[1]}" class="pure-menu-link">'
                    "Noise model</a></li>")
            body = _insert_before(report.body, link, r'<li class="pure-menu-item">\s*<a href="#' + after) or report.body
            body = _insert_before(body, section, '<section id="' + after) or body + section
            report.html, report.body = report.html.replace(report.body, body, 1), body
        return report

    generate_report.__signature__ = inspect.signature(BaseGLM.generate_report)  # type: ignore[attr-defined]

    def _noise_section(self, bg_img: Any, uid: str) -> str:
        """The report's "Noise model" section (HTML; figures embedded as nilearn's, base64 PNG)."""
        arrays = self.voxelwise("noise_parameters")
        names = [str(name) for name in arrays[0]["parameter"].values]
        if not names:
            return ""
        with self._client() as client, phase("noise model parameters", default=True):
            values = [np.asarray(v) for v in compute(*[a.data for a in arrays], client=client, verbose=self.verbose)]
        if names == ["a", "b"]:
            shown = {"a": "AR parameter a", "b": "MA parameter b"}
            what = ("ARMA(1,1) noise (<code>noise_model=\"arma11\"</code>): each voxel's AR parameter a and MA "
                    "parameter b, chosen by restricted maximum likelihood on a grid.")
        else:
            shown = {"rho_1": "AR coefficient rho_1"}
            what = (f"AR({len(names)}) noise (<code>noise_model=\"{html.escape(str(self.noise_model))}\"</code>): "
                    f"each voxel's autoregressive coefficient{'s' * (len(names) > 1)} ({', '.join(names)}), "
                    "estimated from its OLS residuals as nilearn does.")
        unit = "vertices" if self._elements == "surface" else "voxels"
        medians = "".join(
            f"<li>run {run + 1} ({value.shape[1]} {unit}): "
            + ", ".join(f"{name} = {median:.3f}" for name, median in zip(names, np.nanmedian(value, axis=1)))
            + "</li>" for run, value in enumerate(values))
        images = self._map_images({name: values[0][names.index(name)] for name in shown}, arrays[0],
                                  what="the noise model of run 1")
        figures = "".join(
            f'<div class="scroll-y"><img class="pure-img" src="data:image/png;base64,'
            f'{self._noise_figure(images[name], f"{label} (run 1)", bg_img)}" alt="Noise model: {label} of run 1" '
            f'title="Noise model: {label} of run 1" style="min-width: 600px" /></div>'
            for name, label in shown.items())
        return (f'<section id="noise-model-UUID-{uid}"><h2>Noise model</h2><p>{what}</p>'
                f"<p>Median of each parameter in the mask:</p><ul>{medians}</ul>{figures}</section>")

    def _noise_figure(self, img: Any, title: str, bg_img: Any) -> str:
        """One noise parameter's map (-1 .. 1, diverging), plotted by nilearn, as base64 PNG."""
        import matplotlib.pyplot as plt
        from nilearn.plotting import plot_stat_map, plot_surf_stat_map
        from nilearn.surface import SurfaceImage

        style = {"cmap": "RdBu_r", "vmin": -1.0, "vmax": 1.0, "colorbar": True, "title": title}
        if self._elements == "surface":
            figure = plot_surf_stat_map(stat_map=img, hemi="both", threshold=None,
                                        bg_map=bg_img if isinstance(bg_img, SurfaceImage) else None, **style)
        else:  # every voxel of the mask drawn (0 too), nothing outside it; nilearn's MNI template by default
            background = {} if isinstance(bg_img, str) and bg_img == "MNI152TEMPLATE" else {"bg_img": bg_img}
            mask = self.masker_.mask_img_
            if np.ptp(np.asarray(mask.dataobj)) > 0:  # (nilearn refuses a transparency image of one value)
                background.update(transparency=mask, transparency_range=[0.0, 1.0])
            figure = plot_stat_map(img, display_mode="z", cut_coords=min(7, img.shape[2]), threshold=None,
                                   **background, **style).frame_axes.figure
        try:
            return figure_to_png_base64(figure)
        finally:
            plt.close(figure)

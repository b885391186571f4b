"""``FirstLevelModel``: nilearn's estimator, fitted out of core on Dask.

The estimator only orchestrates: design matrices come from
:mod:`daskglm.design` (nilearn's ``make_first_level_design_matrix``), runs are
ingested into zarr stores by :mod:`daskglm.store`, fitted per voxel block by
:mod:`daskglm.fit`, and contrasts are computed by :mod:`daskglm.contrasts`.
``fit`` persists every run's fit (beta, sigma2, AR labels) into the run's store
in one computation and keeps them in memory when they are small (see
:mod:`daskglm._fitstore`, dask config ``daskglm.fit-memory-bytes``), lazy in
large chunks otherwise; ``compute_contrast`` returns NIfTI images like
nilearn's, and ``contrast_dataset`` the same maps as an xarray Dataset.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from sklearn.exceptions import NotFittedError

from . import _kernels
from . import contrasts as _contrasts
from . import design as _design
from ._plan import _check_positive as check_positive
from ._volume import fwhm_to_sigma
from .cluster import compute, get_client, verbosity
from .fit import _check_scaling as check_scaling
from .fit import check_bins, fit_run, voxelwise_run
from .grid import check_target
from .maps import scatter_to_volume
from .nifti import RunInfo, inspect_run, is_url, load_image
from .store import ingest_runs, mean_image, reopen_fit, save_fits

__all__ = ["FirstLevelModel", "default_store_root"]


def default_store_root() -> Path:
    """Where run stores go when no ``store`` is given: ``$DASKGLM_CACHE`` or ``~/.cache/daskglm/stores``."""
    root = os.environ.get("DASKGLM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "daskglm" / "stores"


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


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


class FirstLevelModel:
    """nilearn-compatible first-level GLM, computed out of core on Dask.

    Parameters
    ----------
    t_r, slice_time_ref, hrf_model, drift_model, high_pass, drift_order, fir_delays, min_onset
        As nilearn's ``FirstLevelModel`` (design matrices from events).
    mask_img : path or image, optional
        Brain mask; ``None`` computes nilearn's EPI mask of the runs
        (``compute_multi_epi_mask`` of their mean volumes, as nilearn).
    target_affine, target_shape
        Not supported yet (must be ``None``): resample runs beforehand.
    smoothing_fwhm : float, optional
    signal_scaling : 0, (0, 1) or False
    noise_model : {"ar1", "ols", "ar2", ...}
    minimize_memory : bool
        As nilearn: ``False`` enables the ``residuals_``, ``predicted_`` and
        ``r_square_`` image lists. daskglm never holds them: they are
        recomputed per voxel block from the run stores when asked for (and
        :meth:`voxelwise` gives them lazily whatever this setting).
    verbose : int
        0: silent. 1 (default, unlike nilearn's 0): dask's progress bars for
        ingestion, fits and contrasts lasting more than about a second (a
        widget in a notebook with ipywidgets, text in a terminal).
    subject_label : str, optional
    random_state : int or None
        KMeans seed for AR(p > 1).
    store : str or path, optional
        Folder (local path or fsspec URL) for the run stores. Default:
        :func:`default_store_root`, one store per source file.
    storage_options : dict, optional
        fsspec options for a remote ``store``.
    t_chunk, v_chunk : int, optional
        Chunk sizes of the run stores (default: planned from the data size).
    client : distributed.Client, address, local scheduler name, or None
        See :func:`daskglm.cluster.get_client` (default: the active client,
        ``DASK_SCHEDULER_ADDRESS``, or an embedded ``LocalCluster``).

    Attributes
    ----------
    results_ : list of xarray.Dataset
        Each run's fit (``beta``, ``sigma2``, ``label_index``, ``cov``,
        ``label_value``), persisted in the run's store (group ``glm``). Held in
        memory (numpy) when the fits of all runs take at most the dask config
        ``daskglm.fit-memory-bytes`` (default 256 MiB; 0: always lazy), so
        that contrasts are numpy operations in this process; lazy otherwise,
        in large chunks the workers read.
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
        signal_scaling: Any = 0,
        noise_model: str = "ar1",
        minimize_memory: bool = True,
        verbose: int = 1,
        subject_label: str | None = None,
        random_state: Any = None,
        store: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        t_chunk: int | None = None,
        v_chunk: int | None = None,
        client: Any = None,
    ) -> None:
        self.t_r = t_r
        self.slice_time_ref = slice_time_ref
        self.hrf_model = hrf_model
        self.drift_model = drift_model
        self.high_pass = high_pass
        self.drift_order = drift_order
        self.fir_delays = fir_delays
        self.min_onset = min_onset
        self.mask_img = mask_img
        self.target_affine = target_affine
        self.target_shape = target_shape
        self.smoothing_fwhm = smoothing_fwhm
        self.signal_scaling = signal_scaling
        self.noise_model = noise_model
        self.minimize_memory = minimize_memory
        self.verbose = verbose
        self.subject_label = subject_label
        self.random_state = random_state
        self.store = store
        self.storage_options = storage_options
        self.t_chunk = t_chunk
        self.v_chunk = v_chunk
        self.client = client

    # ------------------------------------------------------------------ fit

    def _store_for(self, info: RunInfo, index: int) -> str:
        root = os.fspath(self.store) if self.store is not None else os.fspath(default_store_root())
        key = info.path or info.provenance.get("sha1", str(index))
        digest = hashlib.sha1(str(key).encode()).hexdigest()[:16]
        stem = Path(info.path).name.split(".")[0] if info.path else "in-memory"
        return f"{root.rstrip('/')}/{stem}-{digest}.zarr"

    def _check_params(self, bins: Any = 100) -> None:
        """Check every parameter that can be checked before any run is read or written."""
        check_target(self.target_affine, self.target_shape)
        _kernels.parse_noise_model(self.noise_model)
        check_bins(bins)
        check_scaling(self.signal_scaling)
        fwhm_to_sigma(self.smoothing_fwhm, np.eye(4))
        for name in ("t_chunk", "v_chunk"):
            check_positive(name, getattr(self, name))

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

        The runs are ingested one after the other (a store that is complete
        and up to date is reused), then all of them are fitted and their fits
        written into their stores in one computation (see ``results_``).

        Parameters
        ----------
        run_imgs : path, image, or list of them
            4D runs.
        events, confounds, sample_masks, design_matrices
            As nilearn's ``FirstLevelModel.fit``.
        bins : int
            AR(1) quantisation bins / AR(p) clusters.

        Returns
        -------
        self
        """
        self._check_params(bins)
        runs = _as_list(run_imgs)
        if not runs:
            raise ValueError("run_imgs is empty: give at least one 4D run")
        infos, runs = map(list, zip(*[_inspect(run, self.storage_options) for run in runs]))
        t_r = self.t_r
        if t_r is None and design_matrices is None:
            t_r = infos[0].t_r
        n_scans = [info.n_scans for info in infos]
        designs = _design.run_design_matrices(
            n_scans, t_r, events=events, confounds=confounds, sample_masks=sample_masks,
            design_matrices=design_matrices, slice_time_ref=self.slice_time_ref,
            hrf_model=self.hrf_model, drift_model=self.drift_model, high_pass=self.high_pass,
            drift_order=self.drift_order, fir_delays=self.fir_delays, min_onset=self.min_onset,
        )
        masks = _as_list(sample_masks) if sample_masks is not None else [None] * len(runs)
        self.design_matrices_ = designs
        self.t_r_ = t_r
        stores = [self._store_for(info, index) for index, info in enumerate(infos)]
        datasets = []
        work_bytes = sum(int(info.data_bytes) for info in infos)  # an embedded cluster's size
        with get_client(self.client, work_bytes=work_bytes) as client, verbosity(self.verbose):
            mask_img = self.mask_img
            if mask_img is None and len(runs) > 1:
                mask_img = self._multi_run_mask(runs, client)
            # Every run's blocks in one computation (a run given twice is ingested once).
            unique = {store: run for run, store in zip(runs, stores)}
            # Whole voxel columns: one read task per fit block (a small graph).
            opened = dict(zip(unique, ingest_runs(
                list(unique.values()), list(unique), mask_img=mask_img, smoothing_fwhm=self.smoothing_fwhm,
                t_chunk=self.t_chunk, v_chunk=self.v_chunk, client=client,
                storage_options=self.storage_options, target_affine=self.target_affine,
                target_shape=self.target_shape, columns=True,
            )))
            for index, store in enumerate(stores):
                ds = opened[store]
                if index == 0:
                    self.mask_img_ = self._mask_image(ds)
                if masks[index] is not None:
                    ds = ds.isel(time=np.asarray(masks[index]))
                datasets.append(ds)
            lazy = [
                fit_run(ds, design, noise_model=self.noise_model, bins=bins,
                        signal_scaling=self.signal_scaling, random_state=self.random_state, client=client)
                for ds, design in zip(datasets, designs)
            ]
            # Every run's fit in one computation; small results come back in memory.
            fits = save_fits(lazy, stores, storage_options=self.storage_options, client=client)
        self.results_ = fits
        self._run_datasets = datasets
        self.labels_ = [fit["label_index"] for fit in fits]
        return self

    def _multi_run_mask(self, runs: list, client: Any) -> nib.Nifti1Image:
        """nilearn's implicit mask of several runs: ``compute_multi_epi_mask`` of their means.

        Each run's mean volume is one out-of-core pass over the run.
        """
        from nilearn.masking import compute_multi_epi_mask

        means = [mean_image(run, client, self.storage_options) for run in runs]
        mask = compute_multi_epi_mask(means, target_affine=self.target_affine,
                                      target_shape=self.target_shape)
        if not np.asarray(mask.dataobj).any():
            raise ValueError("the mask computed from the runs' mean EPI volumes "
                             "(nilearn's compute_multi_epi_mask) is empty; give mask_img")
        return mask

    @staticmethod
    def _mask_image(ds: xr.Dataset) -> nib.Nifti1Image:
        shape = tuple(ds.attrs["volume_shape"])
        mask = scatter_to_volume(np.ones(ds.sizes["voxel"], np.int8), ds["i"].values,
                                 ds["j"].values, ds["k"].values, shape)
        return nib.Nifti1Image(mask, np.asarray(ds.attrs["affine"]))

    # ------------------------------------------------------------------ contrasts

    def _check_fitted(self) -> None:
        if not hasattr(self, "results_"):
            raise NotFittedError(  # nilearn's type (sklearn's: a ValueError and an AttributeError)
                "This FirstLevelModel instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def contrast_dataset(self, contrast_def: Any, stat_type: str | None = None) -> xr.Dataset:
        """The maps of a contrast as an xarray Dataset (see :func:`daskglm.contrasts.contrast_dataset`).

        Lazy when the fits are (``results_`` larger than the dask config
        ``daskglm.fit-memory-bytes``, see :mod:`daskglm._fitstore`); computed
        now, in numpy, when they are held in memory.

        Parameters
        ----------
        contrast_def : array, str, or list of them (one per run)
            As nilearn's ``compute_contrast``.
        stat_type : {"t", "F"}, optional

        Returns
        -------
        xarray.Dataset
        """
        self._check_fitted()
        per_run = _design.contrasts_per_run(contrast_def, len(self.results_))
        columns = [[str(c) for c in dm.columns] for dm in self.design_matrices_]
        run_contrasts = []
        for index in _design.nonnull_runs(per_run, columns):  # warns for null runs, as nilearn
            matrix, kind = _design.parse_contrast(per_run[index], columns[index], stat_type)
            run_contrasts.append(_contrasts.run_contrast(self.results_[index], matrix, kind))
        self._last_contrast_name = str(per_run)
        return _contrasts.contrast_dataset(_contrasts.combine_contrasts(run_contrasts))

    def compute_contrast(
        self, contrast_def: Any, stat_type: str | None = None, output_type: str = "z_score"
    ) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """Maps of a contrast as NIfTI images, as nilearn's ``compute_contrast``.

        Parameters
        ----------
        contrast_def : array, str, or list of them (one per run)
        stat_type : {"t", "F"}, optional
        output_type : {"z_score", "stat", "p_value", "effect_size", "effect_variance", "all"}

        Returns
        -------
        Nifti1Image, or dict of them for ``output_type="all"``.
        """
        valid = (*_contrasts.OUTPUT_TYPES, "all")
        if output_type not in valid:
            raise ValueError(f"output_type must be one of {valid}; got {output_type!r}")
        ds = self.contrast_dataset(contrast_def, stat_type)
        names = list(_contrasts.OUTPUT_TYPES) if output_type == "all" else [output_type]
        values = [ds[name].data for name in names]
        if any(isinstance(value, da.Array) for value in values):  # in-memory fits: nothing to compute
            values = compute(*values, client=self.client, verbose=self.verbose)
        affine = np.asarray(ds.attrs["affine"])
        shape = tuple(ds.attrs["volume_shape"])
        ijk = [ds[n].values for n in "ijk"]
        outputs = {}
        for name, value in zip(names, values):
            img = nib.Nifti1Image(scatter_to_volume(np.asarray(value, dtype=np.float64), *ijk, shape), affine)
            img.header["descrip"] = f"{name} of contrast {self._last_contrast_name}"
            outputs[name] = img
        return outputs if output_type == "all" else outputs[output_type]

    # ------------------------------------------------------------------ voxel-wise fit attributes

    def voxelwise(self, attribute: str) -> list[xr.DataArray]:
        """Lazy ``residuals``, ``predicted`` or ``r_square`` of each run.

        Available whatever ``minimize_memory``: each is recomputed per voxel
        block from the run store and the stored fit when computed (see
        :func:`daskglm.fit.voxelwise_run`; the workers read the fit from the
        store, also when ``results_`` holds it in memory).

        Parameters
        ----------
        attribute : {"residuals", "predicted", "r_square"}

        Returns
        -------
        list of xarray.DataArray
            One per run: ``(time, voxel)`` float64, or ``(voxel,)`` for
            ``r_square``; turn one into an image with :func:`daskglm.maps.to_nifti`.
        """
        self._check_fitted()
        return [
            voxelwise_run(ds, reopen_fit(fit, storage_options=self.storage_options), design, attribute,
                          signal_scaling=self.signal_scaling)
            for ds, fit, design in zip(self._run_datasets, self.results_, self.design_matrices_)
        ]

    def _voxelwise_images(self, attribute: str) -> list[nib.Nifti1Image]:
        self._check_fitted()
        if self.minimize_memory:
            raise AttributeError(
                "To access voxelwise attributes like R-squared, residuals, and predictions, "
                "the `FirstLevelModel`-object needs to store there attributes. To do so, set "
                "`minimize_memory` to `False` when initializing the `FirstLevelModel`-object. "
                "(daskglm: model.voxelwise(attribute) gives them lazily whatever minimize_memory.)"
            )
        arrays = self.voxelwise(attribute)
        values = compute(*[a.data for a in arrays], client=self.client, verbose=self.verbose)
        images = []
        for array, value in zip(arrays, values):
            value = np.atleast_2d(value)  # r_square: one volume, as nilearn's masker gives
            shape = tuple(array.attrs["volume_shape"])
            ijk = [array[n].values for n in "ijk"]
            images.append(nib.Nifti1Image(scatter_to_volume(value, *ijk, shape),
                                          np.asarray(array.attrs["affine"])))
        return images

    @property
    def residuals_(self) -> list[nib.Nifti1Image]:
        """Residuals of each run, 4D images (needs ``minimize_memory=False``, as nilearn)."""
        return self._voxelwise_images("residuals")

    @property
    def predicted_(self) -> list[nib.Nifti1Image]:
        """Predicted signal of each run, 4D images (needs ``minimize_memory=False``, as nilearn)."""
        return self._voxelwise_images("predicted")

    @property
    def r_square_(self) -> list[nib.Nifti1Image]:
        """(Pseudo) R² of each run, one-volume 4D images (needs ``minimize_memory=False``, as nilearn)."""
        return self._voxelwise_images("r_square")

    def _deprecated(self, name: str) -> list[nib.Nifti1Image]:
        warnings.warn(
            f"'{name}' is deprecated (as in nilearn 0.14, removed in 0.16). Use '{name}_' instead.",
            FutureWarning, stacklevel=3,
        )
        return self._voxelwise_images(name)

    residuals = property(lambda self: self._deprecated("residuals"), doc="Deprecated: use ``residuals_``.")
    predicted = property(lambda self: self._deprecated("predicted"), doc="Deprecated: use ``predicted_``.")
    r_square = property(lambda self: self._deprecated("r_square"), doc="Deprecated: use ``r_square_``.")

    # ------------------------------------------------------------------ report

    def generate_report(self, contrasts: Any = None, **kwargs: Any) -> Any:
        """HTML report of the fitted model, as nilearn's ``generate_report``.

        Parameters
        ----------
        contrasts : str, array, list or dict of them
            The contrasts to show (as nilearn: a dict maps names to definitions).
        **kwargs
            ``title, bg_img, threshold, alpha, cluster_threshold, height_control,
            two_sided, min_distance, plot_type, cut_coords, display_mode,
            report_dims`` — see :func:`daskglm.report.make_glm_report`.

        Returns
        -------
        daskglm.report.GLMReport
            With ``save_as_html(path)``, ``open_in_browser()`` and a Jupyter repr.
        """
        from .report import make_glm_report

        return make_glm_report(self, contrasts, **kwargs)

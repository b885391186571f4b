"""Fit the GLM of one run over voxel blocks: a lazy xarray/Dask graph.

The run store's ``bold(time, voxel)`` is read in columns of ``v_chunk`` voxels
over all time points (the time chunks of one column are concatenated, never an
all-to-all rechunk) and :func:`daskglm.kernels.regression.fit_block` runs on each column.
The result is a lazy :class:`xarray.Dataset`::

    beta(regressor, voxel)       float64
    sigma2(voxel)                float64   dispersion RSS / (n - p) of the whitened fit
    label_index(voxel)           int64     row of ``cov`` that applies to the voxel
    cov(label, regressor, regressor_)      numpy, normalised covariance of beta per noise label
    label_value(label, lag)                AR coefficients of each label (empty for OLS)

Because nilearn's AR(1) labels lie on a fixed grid (``trunc(rho * bins) / bins``,
``|rho| <= n / (n - 1)``: :func:`daskglm.kernels.ar1_moments.ar1_grid`),
``cov`` is tabulated for every grid value up front from the design alone, and
the whole fit stays lazy. AR(p > 1) needs a global KMeans of the voxels' AR
coefficients: that pass is computed (on the client's cluster) when the graph is
built, and the refit is lazy.

Designs with at most as many scans as columns are fitted as nilearn fits them
(see :mod:`daskglm.kernels.regression`): ``dof`` 0 when ``rank(X) == n``, a dispersion
``inf`` (``n == p``, with nilearn's RuntimeWarning, given here when the graph
is built) or ``<= 0`` (``n < p``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import warnings
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.utils import funcname

from ..kernels import ar1_moments as _ar1_moments
from ..kernels import arma as _arma
from ..kernels import covariances as _covariances
from ..kernels import regression as _regression
from ..kernels.packing import fit_rows
from ..kernels.voxelwise import VOXELWISE_ATTRIBUTES, voxelwise_block
from ..runtime.cluster import compute
from ..runtime.compat import release_free_heap

__all__ = ["fit_run", "voxelwise_run", "noise_parameters", "check_bins", "packed_estimates", "split_estimates",
           "FIT_VARIABLES", "PACKED_ESTIMATES", "check_scaling"]

FIT_VARIABLES = ("beta", "sigma2", "label_index")
#: The key of a :func:`fit_run` result's ``encoding`` that holds its packed estimates (:func:`packed_estimates`).
PACKED_ESTIMATES = "daskglm_packed_estimates"


def _design(design: Any, n_scans: int) -> tuple[np.ndarray, list[str]]:
    if isinstance(design, pd.DataFrame):
        columns = [str(c) for c in design.columns]
        X = design.to_numpy(dtype=np.float64)
    else:
        X = np.asarray(design, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"the design matrix must be 2D (n_scans, n_regressors); got shape {X.shape}")
        columns = [str(c) for c in range(X.shape[1])]
    if X.shape[0] != n_scans:
        raise ValueError(
            f"the design matrix has {X.shape[0]} rows but the run has {n_scans} scans"
        )
    return X, columns


def check_bins(bins: Any) -> None:
    """Refuse anything but a positive integer number of AR bins (nilearn's ``run_glm`` fails on 0)."""
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}")


def check_scaling(signal_scaling: Any) -> Any:
    if signal_scaling is False or signal_scaling is None:
        return False
    if isinstance(signal_scaling, (list, tuple)) and tuple(signal_scaling) == (0, 1):
        return (0, 1)
    if signal_scaling == 0 and not isinstance(signal_scaling, bool):
        return 0
    raise ValueError(f"signal_scaling must be 0, (0, 1) or False; got {signal_scaling!r}")


def _quiet_if_short(X: np.ndarray) -> contextlib.AbstractContextManager:
    """numpy's floating-point warnings off in a block task whose design has ``n <= p`` (the
    dispersion's division by ``n - p``: :func:`fit_run` gives nilearn's warning once, on the client)."""
    return np.errstate(divide="ignore", invalid="ignore") if X.shape[0] <= X.shape[1] else contextlib.nullcontext()


def _packed_fit(Y, scaling_mean=None, *, X, noise_model, bins, signal_scaling):
    """Block task: fit, then pack as :func:`~daskglm.kernels.packing.fit_rows` (``label_index``: the row
    of each voxel's label in the fit's ``cov`` table, as float64)."""
    with _quiet_if_short(X):
        fit = _regression.fit_block(
            Y, X, noise_model=noise_model, bins=bins, signal_scaling=signal_scaling,
            scaling_mean=None if scaling_mean is None else float(scaling_mean),
        )
    if noise_model == "ols":
        index = np.zeros(fit.label.shape)
    else:
        index = _ar1_moments.ar1_label_index(fit.label, bins, X.shape[0]).astype(np.float64)
    return fit_rows(X.shape[1]).pack(beta=fit.beta, sigma2=fit.sigma2, label_index=index)


def _packed_refit(Y, labels, scaling_mean=None, *, X, coeffs, signal_scaling):
    with _quiet_if_short(X):
        fit = _regression.refit_block(
            Y, X, labels.astype(np.intp), coeffs, signal_scaling=signal_scaling,
            scaling_mean=None if scaling_mean is None else float(scaling_mean),
        )
    return fit_rows(X.shape[1]).pack(beta=fit.beta, sigma2=fit.sigma2, label_index=fit.label)


#: ``"arma11"`` refit tasks per worker process between two :func:`release_free_heap` calls.
ARMA_REFITS_PER_TRIM = 4
_ARMA_REFITS = itertools.count()  # per process; next() is atomic under the GIL


def _packed_arma_refit(Y, labels, scaling_mean=None, *, X, signal_scaling):
    """Block task of ``"arma11"``: the refit with each voxel's REML grid label.

    A column's second pass ends here, and every :data:`ARMA_REFITS_PER_TRIM`-th one gives the
    worker's freed memory back to the system (:func:`daskglm.runtime.compat.release_free_heap`):
    two passes over every column, with each run's lag correlations alive in between, leave a
    worker's heap fragmented where one pass (``"ar1"``) does not. Every task would cost each
    next column's buffers their page faults again (BENCHMARKS.md, "Calibrated inference").
    """
    mean = None if scaling_mean is None else float(scaling_mean)
    with _quiet_if_short(X):
        fit = _arma.refit_block(Y, X, labels.astype(np.intp), signal_scaling=signal_scaling, scaling_mean=mean)
    packed = fit_rows(X.shape[1]).pack(beta=fit.beta, sigma2=fit.sigma2, label_index=fit.label)
    del fit
    if next(_ARMA_REFITS) % ARMA_REFITS_PER_TRIM == ARMA_REFITS_PER_TRIM - 1:
        release_free_heap()
    return packed


def _lag_correlations(Y, scaling_mean=None, *, X, signal_scaling):
    return _arma.lag_correlations(Y, X, signal_scaling=signal_scaling,
                                  scaling_mean=None if scaling_mean is None else float(scaling_mean))


def _packed_arma_refit_in_run(Y, positions, run_labels, scaling_mean=None, *, X, signal_scaling):
    """:func:`_packed_arma_refit` given the labels of the whole run and the block's voxel positions in it."""
    return _packed_arma_refit(Y, run_labels[positions], scaling_mean, X=X, signal_scaling=signal_scaling)


def _reml_labels(r: np.ndarray, X: np.ndarray) -> np.ndarray:
    return _arma.reml_labels(r, _arma.prepare(X)).astype(np.int16)


def _smoothed(r: np.ndarray, ijk: np.ndarray, shape: tuple, sigma: np.ndarray) -> np.ndarray:
    """The run's smoothed lag correlations, once per run: its temporaries (~100 bytes a voxel) go back
    to the system (:func:`daskglm.runtime.compat.release_free_heap`) rather than stay resident on the worker."""
    smoothed = _arma.smooth_lag_correlations(r, ijk, shape, sigma)
    release_free_heap()
    return smoothed


#: Voxels per task of the label choice after smoothing (a GEMM over every grid point for every
#: voxel): the choice of a whole run is spread over the workers instead of waiting on one.
LABEL_VOXELS = 65536


def _arma_packed(ds: xr.Dataset, Y: da.Array, X: np.ndarray, extra: list, scaling: Any, fwhm: float) -> da.Array:
    """The lazy packed ``"arma11"`` fit: lag correlations per column; with ``fwhm`` > 0 gathered into one
    task per run that smooths them within the mask (the smoothing needs every voxel: 100 bytes a voxel on
    one worker), the labels chosen from them in tasks of :data:`LABEL_VOXELS` and gathered again (2 bytes
    a voxel), else labels per column; then the refit per column.

    With smoothing, the refit reads its columns again, in read tasks bound to the run's labels (read
    before the labels exist, every column of the run would wait in memory for them), and each refit
    task takes the run's labels whole (the ``"w"`` argument of :func:`_blockwise`) with its voxels'
    positions, so that it can run as soon as its column is read (split labels would be one more task
    each to wait for).
    """
    r = _blockwise(_lag_correlations, Y, _arma.N_LAGS + 1, *extra, X=X, signal_scaling=scaling)
    if fwhm > 0:
        from dask.graph_manipulation import bind

        bold = ds["bold"]
        ijk = np.stack([np.asarray(bold[name].values, dtype=np.int32) for name in "ijk"])
        voxel_size = np.sqrt((np.asarray(ds.attrs["affine"], dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
        sigma = fwhm / np.sqrt(8 * np.log(2)) / voxel_size
        smoothed = r.rechunk({1: -1}).map_blocks(_smoothed, ijk, tuple(ds.attrs["volume_shape"]), sigma,
                                                 dtype=np.float32, meta=np.empty((0, 0), np.float32))
        chosen = smoothed.rechunk({1: LABEL_VOXELS}).map_blocks(
            _reml_labels, X, drop_axis=0, dtype=np.int16, meta=np.empty((0,), np.int16)).rechunk(-1)
        positions = da.arange(Y.shape[1], chunks=(Y.chunks[1],))
        return _blockwise(_packed_arma_refit_in_run, bind(Y, chosen), fit_rows(X.shape[1]).rows, positions, "v",
                          chosen, "w", *extra, X=X, signal_scaling=scaling)
    labels = r.map_blocks(_reml_labels, X, drop_axis=0, dtype=np.int16, meta=np.empty((0,), np.int16))
    return _blockwise(_packed_arma_refit, Y, fit_rows(X.shape[1]).rows, labels, "v", *extra, X=X,
                      signal_scaling=scaling)


def _estimates(packed: Any) -> dict[str, Any]:
    """:data:`FIT_VARIABLES` of packed :func:`~daskglm.kernels.packing.fit_rows` (numpy or dask): row views
    or lazy slices, ``label_index`` rounded to int64."""
    rows = fit_rows(packed.shape[0] - fit_rows(0).rows).unpack(packed)
    return {**rows, "label_index": np.rint(rows["label_index"]).astype(np.int64)}


def packed_estimates(fit: xr.Dataset) -> da.Array | None:
    """The lazy packed :func:`~daskglm.kernels.packing.fit_rows` ``[beta; sigma2; label_index]``,
    shape (p + 2, voxel), that a :func:`fit_run` result carries (``fit.encoding[PACKED_ESTIMATES]``)
    and its variables are slices of; None for a fit from elsewhere, or one whose variables
    are no longer those slices (transformed since).

    Computing this one array and :func:`split_estimates` on the client gives the fit's
    variables with one task per voxel column instead of one per variable and column.
    """
    packed = fit.encoding.get(PACKED_ESTIMATES)
    if not isinstance(packed, da.Array):
        return None
    for name, array in _estimates(packed).items():  # dask names are deterministic: same name, same values
        if name not in fit or not isinstance(fit[name].data, da.Array) or fit[name].data.name != array.name:
            return None
    return packed


def split_estimates(packed: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`FIT_VARIABLES` from (a voxel block of) computed :func:`packed_estimates`, shape (p + 2, v).

    The packed rows carry each voxel's ``label_index`` itself: nothing else of the fit is needed.
    """
    return _estimates(packed)


def _coefficients(Y, scaling_mean=None, *, X, order, signal_scaling):
    return _regression.ar_coefficients_block(
        Y, X, order, signal_scaling=signal_scaling,
        scaling_mean=None if scaling_mean is None else float(scaling_mean),
    )


def _grand_mean(Y: da.Array) -> da.Array:
    """0-d lazy grand mean of the run (for ``signal_scaling=(0, 1)``)."""
    return Y.sum(dtype=np.float64) / Y.size


def _single_blocks(func, *args, **kwargs):
    """Call ``func`` with each contracted argument's one block (a list of one) unwrapped."""
    return func(*(a[0] if isinstance(a, list) else a for a in args), **kwargs)


def _blockwise(func, Y: da.Array, n_rows: int, *extra, **kwargs) -> da.Array:
    """Apply ``func`` to each column of ``Y`` (all scans), output ``(n_rows, v)`` per column.

    ``extra`` holds pairs (array, index): a voxel-aligned ``(v,)`` array
    (index ``"v"``), a ``(p, v)`` array with one chunk over ``p`` (index
    ``"pv"``), a 0-d array broadcast to every block (index ``""``) or a
    1-d array of one chunk given whole to every block (index ``"w"``).

    ``Y`` has one chunk along time and a ``"pv"`` array one along ``p``, so
    each task gets the blocks themselves: dask's ``concatenate=True`` would
    copy a column (13 MiB at HCP size) to "concatenate" its one block.
    """
    for array, index in zip(extra[::2], extra[1::2]):
        if index in ("pv", "w") and len(array.chunks[0]) != 1:
            along = "p" if index == "pv" else "its axis"
            raise ValueError(f"a {index!r} argument must have one chunk along {along}; got chunks {array.chunks[0]}")
    if len(Y.chunks[0]) != 1:
        raise ValueError(f"Y must have one chunk along time; got chunks {Y.chunks[0]}")
    name = f"{funcname(func)}-{tokenize(func, Y, n_rows, *extra, kwargs)}"
    return da.blockwise(
        partial(_single_blocks, func), "rv", Y, "tv", *extra, name=name,
        new_axes={"r": n_rows}, concatenate=False, dtype=np.float64, meta=np.empty((0, 0)),
        **kwargs,
    )


def _check_short_run(n_scans: int, p: int, order: int) -> None:
    """nilearn's behaviour on runs of at most as many scans as design columns or AR order.

    AR(order > 1) with ``n_scans <= order`` fails (the lag-n autocovariance is 0 / 0: nilearn's
    KMeans refuses the NaN); ``n_scans == p`` warns as nilearn's dispersion ``RSS / 0`` does.
    """
    if order > 1 and n_scans <= order:
        raise ValueError(
            f"noise_model='ar{order}' needs more than {order} scans; got {n_scans}: the Yule-Walker "
            f"lag-{n_scans} autocovariance is 0 / 0 (nilearn 0.14 fails in KMeans: 'Input X contains NaN.')"
        )
    if n_scans == p:
        warnings.warn(
            f"divide by zero encountered in divide: the dispersion RSS / (n_scans - n_regressors) of a run of "
            f"{n_scans} scans and {p} design columns divides by 0 (inf; nan for a perfect fit), as nilearn's",
            RuntimeWarning, stacklevel=3,
        )


def _data_identity(ds: xr.Dataset) -> str:
    """What identifies a run's data wherever its store lies: the store's fingerprint (source and
    ingestion parameters) and the scans selected (the ``time`` coordinate :func:`open_run` sets);
    the dask name of ``bold`` for data from elsewhere."""
    if "fingerprint" in ds.attrs and "time" in ds["bold"].coords:
        scans = np.asarray(ds["bold"]["time"].values, dtype=np.int64)
        return repr((ds.attrs["fingerprint"], scans.size, hashlib.sha1(scans.tobytes()).hexdigest()))
    return str(ds["bold"].data.name)


def fit_key(data_name: str, X: np.ndarray, columns: list, noise_model: str, bins: int, scaling: Any,
            random_state: Any) -> str:
    """What identifies a fit's results: its data (see :func:`_data_identity`: the run store's
    fingerprint and the scans selected), design, options and daskglm's version.

    Fits are stored in a group of this name in their run's store (see
    :func:`daskglm.glm.fitstore.save_fits`), so that analyses of one run with other designs
    or noise models, even concurrent ones, never share a group. AR(p > 1) with a
    ``random_state`` that is not an integer (KMeans seeded anew) gets a key of its own.

    Returns
    -------
    str
        16 hexadecimal digits.
    """
    import uuid
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("daskglm")
    except PackageNotFoundError:  # a source tree on sys.path
        release = "unknown"
    seed = random_state if random_state is None or isinstance(random_state, (int, np.integer)) else uuid.uuid4()
    text = repr((data_name, hashlib.sha1(np.ascontiguousarray(X, dtype=np.float64).tobytes()).hexdigest(),
                 X.shape, [str(c) for c in columns], noise_model, int(bins), str(scaling), str(seed), release))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def fit_run(
    ds: xr.Dataset,
    design: Any,
    noise_model: str = "ar1",
    bins: int = 100,
    signal_scaling: Any = 0,
    random_state: Any = None,
    client: Any = None,
    noise_smoothing_fwhm: float = 0.0,
) -> xr.Dataset:
    """Lazy GLM fit of one ingested run, as nilearn's ``run_glm``.

    Parameters
    ----------
    ds : xarray.Dataset
        A run store from :func:`daskglm.store.ingest.ingest_run` / ``open_run``.
    design : pandas.DataFrame or ndarray, shape (n_scans, p)
        The run's design matrix, one row per scan of ``ds`` (its column
        names, for a DataFrame, become the ``regressor`` coordinate).
    noise_model : {"ols", "ar1", "ar2", ..., "arma11"}, default="ar1"
        Temporal noise model: ordinary least squares, or an AR(N) model of
        the residuals, as nilearn's ``noise_model``; or daskglm's ARMA(1,1)
        model, its parameters chosen per voxel by REML on a grid
        (:mod:`daskglm.kernels.arma`; ``label_value`` holds ``(a, b)`` per label).
    bins : int, default=100
        AR(1): quantisation bins of rho; AR(p>1): KMeans clusters.
    signal_scaling : 0, (0, 1) or False, default=0
        As nilearn's ``FirstLevelModel(signal_scaling=...)``.
    random_state : int, RandomState or None, default=None
        KMeans seed for AR(p > 1).
    client : distributed.Client, str or None, optional
        Where the AR(p > 1) coefficient pass runs (the only computation made
        here), resolved by :func:`daskglm.runtime.cluster.get_client`.
    noise_smoothing_fwhm : float, default=0.0
        ``"arma11"``: FWHM (mm) of the Gaussian that regularises each voxel's
        residual lag correlations within the mask before its REML grid point is
        chosen (:func:`daskglm.kernels.arma.smooth_lag_correlations`); 0: none
        (each voxel on its own; for runs whose geometry is not a volume).

    Returns
    -------
    xarray.Dataset
        Lazy ``beta``, ``sigma2``, ``label_index`` over ``voxel`` (with the
        run's ``i, j, k`` coordinates); in-memory ``cov`` and ``label_value``
        tables; attrs ``dof``, ``noise_model``, ``bins``, ``signal_scaling``,
        ``n_scans``, ``fit_key`` (see :func:`fit_key`) and the run geometry;
        ``encoding[PACKED_ESTIMATES]`` holds the lazy packed rows the three
        variables are slices of (see :func:`packed_estimates`).

    Raises
    ------
    ValueError
        AR(p > 1) with at most p scans (nilearn's KMeans fails on the NaN
        coefficients), bad options.
    """
    order = _regression.parse_noise_model(noise_model)
    check_bins(bins)
    scaling = check_scaling(signal_scaling)
    bold = ds["bold"]
    n_scans = bold.sizes["time"]
    X, columns = _design(design, n_scans)
    p = X.shape[1]
    _check_short_run(n_scans, p, order)
    Y = bold.data.rechunk({0: -1})
    extra: list[Any] = []
    if scaling == (0, 1):
        extra = [_grand_mean(Y), ""]

    if noise_model == _regression.ARMA11:
        packed = _arma_packed(ds, Y, X, extra, scaling, float(noise_smoothing_fwhm))
        label_value = _arma.grid()  # (a, b) per label
    elif order <= 1:
        packed = _blockwise(_packed_fit, Y, fit_rows(p).rows, *extra, X=X, noise_model=noise_model,
                            bins=int(bins), signal_scaling=scaling)
        label_value = (np.zeros((1, 0)) if order == 0
                       else _ar1_moments.ar1_grid(bins, n_scans)[:, None])
    else:
        if _regression.residual_dof(X) == 0:  # zero residuals: every voxel's coefficients are 0
            index, label_value = np.zeros(Y.shape[1], np.int64), np.zeros((1, order))
        else:
            coefs = _blockwise(_coefficients, Y, order, *extra, X=X, order=order, signal_scaling=scaling)
            (coefs_np,) = compute(coefs, client=client)
            from sklearn.cluster import KMeans

            kmeans = KMeans(n_clusters=min(int(bins), coefs_np.shape[1]), n_init=10,
                            random_state=random_state).fit(coefs_np.T)
            index, label_value, _ = _covariances.merge_ar_clusters(kmeans.cluster_centers_, kmeans.labels_)
        labels = da.from_array(index.astype(np.float64), chunks=(Y.chunks[1],))
        packed = _blockwise(_packed_refit, Y, fit_rows(p).rows, labels, "v", *extra, X=X,
                            coeffs=label_value, signal_scaling=scaling)
    estimates = _estimates(packed)

    if noise_model == _regression.ARMA11:
        cov = _arma.label_covariances(X)
    elif order == 1:  # the moment fit's whitened inverses where accurate, else one pinv per label
        cov = _covariances.ar1_label_covariances(X, int(bins))
    else:
        cov = _covariances.label_covariances(X, label_value)  # one pinv per label, no SVD for the dof
    voxel_coords = {name: bold.coords[name] for name in "ijk" if name in bold.coords}
    fit = xr.Dataset(
        {
            "beta": (("regressor", "voxel"), estimates["beta"]),
            "sigma2": (("voxel",), estimates["sigma2"]),
            "label_index": (("voxel",), estimates["label_index"]),
            "cov": (("label", "regressor", "regressor_"), cov),
            "label_value": (("label", "lag"), label_value),
        },
        coords={"regressor": columns, "regressor_": columns, **voxel_coords},
        attrs={
            "dof": int(_regression.residual_dof(X)),
            "noise_model": noise_model,
            "bins": int(bins),
            "signal_scaling": str(scaling),
            "n_scans": n_scans,
            "fit_key": fit_key(_data_identity(ds), X, columns,
                               f"{noise_model}:{noise_smoothing_fwhm}" if noise_model == _regression.ARMA11
                               else noise_model, bins, scaling, random_state),
            **{k: ds.attrs[k] for k in ("affine", "volume_shape", "t_r", "store") if k in ds.attrs},
        },
    )
    fit.encoding[PACKED_ESTIMATES] = packed  # what save_fits computes and writes (see packed_estimates)
    return fit


def _voxelwise_task(Y, beta, label_index, scaling_mean=None, *, X, label_value, attribute, signal_scaling,
                    noise_model):
    with _quiet_if_short(X):
        return voxelwise_block(
            Y, X, beta, label_index, label_value, attribute, signal_scaling=signal_scaling,
            scaling_mean=None if scaling_mean is None else float(scaling_mean), noise_model=noise_model,
        )


def noise_parameters(fit: xr.Dataset) -> xr.DataArray:
    """Each voxel's noise-model parameters, lazily from a fit's labels (the run is not read).

    Parameters
    ----------
    fit : xarray.Dataset
        From :func:`fit_run` or :func:`daskglm.glm.fitstore.open_fit`.

    Returns
    -------
    xarray.DataArray
        ``(parameter, voxel)`` float64 with the run's ``i, j, k`` coordinates:
        ``parameter`` is ``["a", "b"]`` for ``"arma11"`` (AR and MA parameters of the
        voxel's grid point), ``["rho_1", ...]`` for AR(N) (its label's
        coefficients), empty for OLS.
    """
    values = np.asarray(fit["label_value"].values, dtype=np.float64)
    names = (["a", "b"] if fit.attrs.get("noise_model") == _regression.ARMA11
             else [f"rho_{k + 1}" for k in range(values.shape[1])])
    labels = da.asarray(fit["label_index"].data)
    data = labels.map_blocks(lambda index, table=values: table[np.asarray(index, np.intp)].T,
                             new_axis=0, chunks=((values.shape[1],), *labels.chunks), dtype=np.float64,
                             meta=np.empty((0, 0)))
    coords = {name: fit.coords[name] for name in "ijk" if name in fit.coords}
    return xr.DataArray(data, dims=("parameter", "voxel"), coords={"parameter": names, **coords},
                        name="noise_parameters", attrs=dict(fit.attrs))


def voxelwise_run(ds: xr.Dataset, fit: xr.Dataset, design: Any, attribute: str,
                  signal_scaling: Any = 0) -> xr.DataArray:
    """Lazy ``residuals``, ``predicted`` or ``r_square`` of a fitted run, as nilearn's.

    Recomputed per voxel column from the run store and the stored fit (see
    :mod:`daskglm.kernels.voxelwise` for nilearn's definitions), so nothing of the
    run's size is held between the fit and this call.

    Parameters
    ----------
    ds : xarray.Dataset
        The run (``bold(time, voxel)``) the fit was computed from, with the
        same scans (after ``sample_masks``).
    fit : xarray.Dataset
        From :func:`fit_run` or :func:`daskglm.glm.fitstore.open_fit`.
    design : pandas.DataFrame or ndarray, shape (n_scans, p)
        The design matrix the fit was computed with, one row per scan of ``ds``.
    attribute : {"residuals", "predicted", "r_square"}
        The quantity, as nilearn's ``residuals``, ``predicted`` and
        ``r_square`` (see :mod:`daskglm.kernels.voxelwise`).
    signal_scaling : 0, (0, 1) or False, default=0
        As in the fit.

    Returns
    -------
    xarray.DataArray
        Lazy float64, dims ``(time, voxel)`` (``r_square``: ``(voxel,)``),
        with the run's ``i, j, k`` coordinates.
    """
    if attribute not in VOXELWISE_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {VOXELWISE_ATTRIBUTES}; got {attribute!r}")
    scaling = check_scaling(signal_scaling)
    bold = ds["bold"]
    X, _ = _design(design, bold.sizes["time"])
    if fit.sizes["voxel"] != bold.sizes["voxel"] or fit.sizes["regressor"] != X.shape[1]:
        raise ValueError(
            f"the fit ({fit.sizes['regressor']} regressors, {fit.sizes['voxel']} voxels) does not "
            f"belong to this run and design ({X.shape[1]} columns, {bold.sizes['voxel']} voxels)"
        )
    Y = bold.data.rechunk({0: -1})
    columns = Y.chunks[1]
    beta = da.asarray(fit["beta"].data).rechunk({0: -1, 1: columns})
    labels = da.asarray(fit["label_index"].data).rechunk((columns,))
    extra: list[Any] = [_grand_mean(Y), ""] if scaling == (0, 1) else []
    n_rows = 1 if attribute == "r_square" else X.shape[0]
    out = _blockwise(
        _voxelwise_task, Y, n_rows, beta, "pv", labels, "v", *extra, X=X,
        label_value=np.asarray(fit["label_value"].values, dtype=np.float64), attribute=attribute,
        signal_scaling=scaling, noise_model=fit.attrs.get("noise_model", "ar1"),
    )
    coords = {name: bold.coords[name] for name in "ijk" if name in bold.coords}
    if attribute == "r_square":
        return xr.DataArray(out[0], dims=("voxel",), coords=coords, name=attribute, attrs=dict(fit.attrs))
    return xr.DataArray(out, dims=("time", "voxel"), coords=coords, name=attribute, attrs=dict(fit.attrs))

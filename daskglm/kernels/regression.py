"""Numpy kernels of the first-level GLM, applied to one voxel block at a time.

A block is ``Y (n, v)``: all ``n`` scans of ``v`` voxels. Everything here is a
pure function of plain arrays and reproduces nilearn 0.14
(``nilearn.glm.first_level.run_glm`` / ``mean_scaling``, ``OLSModel``,
``ARModel``) up to floating-point rounding. Statistics are computed in float64
even for float32 data. Contrast statistics live in :mod:`daskglm.kernels.stats`, the
per-label covariances of beta (and the AR(p>1) label table) in
:mod:`daskglm.kernels.covariances`, the percent-signal-change scaling that every fit
starts with in :mod:`daskglm.kernels.scaling`, nilearn's AR(p) whitening in
:mod:`daskglm.kernels.whitening`.

Definitions (each defined once, here):

* ``residual_dof(X) = n - rank(X)`` with nilearn's rank tolerance
  ``eps * sum|X|``; this is the dof of all t/F p-values, for every AR label.
* dispersion ``sigma2 = RSS / (n - p)`` with ``p`` the number of *columns*
  of X (not its rank: nilearn's choice, it differs for rank-deficient X).
  Designs with ``n <= p`` are fitted as nilearn fits them: beta is the
  minimum-norm ``pinv(X) Y``, the divisor ``n - p`` is 0 or negative, so the
  dispersion is ``inf`` for ``n == p`` (``nan`` for a zero RSS, with numpy's
  RuntimeWarnings), and ``<= 0`` for ``n < p`` (about ``-1e-28`` when
  ``rank(X) == n``: the RSS is rounding); the contrasts' statistics follow
  (:mod:`daskglm.kernels.stats`).
* Yule-Walker autocovariances ``r_k = sum_t y_t y_{t+k} / ((n - k) n)``.
  nilearn subtracts ONE scalar, the mean of the whole residual matrix, before
  this; a per-block mean would make labels depend on the block partition, so
  ``yule_walker`` takes that scalar as ``center`` (default 0: with an
  intercept in X every voxel's residuals already have mean ~1e-16, so the
  term is negligible; pass the global mean to reproduce nilearn exactly for
  designs without an intercept; it is ``sum(ols(...).residuals.sum()) /
  (n * V)`` reduced over blocks, i.e. one extra pass). Voxels with all-zero residuals get AR
  coefficients 0 (nilearn raises ``LinAlgError`` when they are alone and
  labels them 1.0 otherwise, as an artefact of the global mean). So do all
  voxels of a design with ``residual_dof(X) == 0`` (``rank(X) == n``), whose
  residuals are zero in exact arithmetic: nilearn estimates their AR
  coefficients from the rounding of its residuals, which no other
  computation reproduces. Their beta is the same whatever the label (the
  minimum-norm solution of ``X b = y``, W being invertible), and so are the
  t contrasts; an F contrast's effect depends on the label's covariance.
  With ``n <= order`` the lag-``n`` autocovariance is ``0 / 0``:
  `yule_walker` gives nilearn's NaN coefficients, the AR(1) fit takes them
  as 0 (whitening one scan changes nothing; nilearn's label is the integer
  cast of NaN), and AR(p > 1) fits are refused by :func:`daskglm.glm.fit.fit_run`
  (nilearn's KMeans fails on the NaN).
* Constant voxels: a voxel whose signal is exactly the same value ``y`` at
  every scan (after scaling: the scaling maps equal values to equal values),
  fitted with a full-rank design that holds a constant column ``X[:, j] = c``
  and has residual dof > 0, has in exact arithmetic ``beta = (y / c) e_j``,
  zero residuals and ``sigma2 = 0`` whatever the whitening (``W X e_j``
  is ``W 1`` times ``c``): the fits set these exact values
  (:func:`exact_constant_fits`) and, as for other zero residuals, AR
  coefficient 0 (AR(1) label 0.0). nilearn computes them through ``pinv``,
  so with ``signal_scaling=False`` its betas carry ~1e-15 of rounding, its
  dispersion ~1e-29, and the t of a contrast without the constant column is
  the ratio of two rounding errors (any value, e.g. z = -1.2 for OLS and 5.0
  for AR(1)); here it is exactly 0 (effect 0, variance 0, p 0.5). With the
  default ``signal_scaling=0`` the scaled signal is exactly 0 and both
  give 0. A contrast on the constant column gets effect ``y / c``, variance
  0 and nilearn's statistic for a zero variance (``effect / sqrt(1e-50)``).
* AR(1) labels: ``trunc(rho * bins) / bins`` on a fixed grid, both defined
  beside the moment fit that also uses them
  (:func:`daskglm.kernels.ar1_moments.ar1_labels`, re-exported here, and
  :func:`daskglm.kernels.ar1_moments.ar1_grid`). As nilearn's, they are not clipped:
  ``|rho| <= n / (n - 1)``, so short runs have labels beyond +-1.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np

from . import ar1_moments as _ar1_moments
from . import scaling as _scaling
from .ar1_moments import ar1_labels  # nilearn's AR(1) quantisation, beside its grid
from .lru import LRUCache
from .scaling import ScalingMode, scale_signal
from .whitening import (  # nilearn's AR(p) whitening
    whiten,
    whiten_inplace,
    whitened_pinv,
)

__all__ = [
    "check_design",
    "OLSFit",
    "BlockFit",
    "residual_dof",
    "parse_noise_model",
    "ARMA11",
    "ols",
    "yule_walker",
    "ar1_labels",
    "whiten",
    "fit_block",
    "ar_coefficients_block",
    "refit_block",
    "exact_constant_fits",
]

#: The name of daskglm's ARMA(1,1) noise model (:mod:`daskglm.kernels.arma`).
ARMA11 = "arma11"


class OLSFit(NamedTuple):
    """Ordinary least squares fit of a block.

    Attributes
    ----------
    beta : ndarray, shape (p, v)
    residuals : ndarray, shape (n, v)
    sigma2 : ndarray, shape (v,)
        Dispersion RSS / (n - p).
    dof : int
        ``residual_dof(X)``.
    """

    beta: np.ndarray
    residuals: np.ndarray
    sigma2: np.ndarray
    dof: int


class BlockFit(NamedTuple):
    """GLM fit of a block under a noise model.

    Attributes
    ----------
    beta : ndarray, shape (p, v)
    sigma2 : ndarray, shape (v,)
        Dispersion of the whitened residuals, RSS / (n - p).
    label : ndarray, shape (v,), float64
        AR(1): quantised rho (nilearn's label, as a float); OLS: 0.0;
        `refit_block`: the label index given to it.
    dof : int
        ``residual_dof(X)``.
    """

    beta: np.ndarray
    sigma2: np.ndarray
    label: np.ndarray
    dof: int


def residual_dof(X: np.ndarray) -> int:
    """Residual degrees of freedom ``n - rank(X)`` (nilearn ``df_residuals``).

    The rank uses nilearn's absolute tolerance ``eps * sum(|X|)``.
    """
    X = np.asarray(X, dtype=np.float64)
    tol = np.abs(X).sum() * np.finfo(np.float64).eps
    return int(X.shape[0] - np.linalg.matrix_rank(X, tol))


def _as_float64(Y: np.ndarray) -> np.ndarray:
    """One float64 copy of a (float32) block, so no later step converts it again."""
    return np.asarray(Y, dtype=np.float64)


def _dispersion_df(X: np.ndarray) -> int:
    """nilearn's dispersion divisor ``n - p``: 0 or negative for ``n <= p`` (then the dispersion is
    ``inf`` / ``nan`` or ``<= 0``, with numpy's RuntimeWarnings for a division by 0, as nilearn)."""
    return X.shape[0] - X.shape[1]


def check_design(Y: np.ndarray, X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or np.ndim(Y) != 2 or X.shape[0] != np.shape(Y)[0]:
        raise ValueError(
            f"Y must be (n_scans, n_voxels) and X (n_scans, n_regressors); got Y {np.shape(Y)} and X {X.shape}"
        )
    return X


def parse_noise_model(noise_model: str) -> int:
    """AR order of a noise model name: ``"ols"`` -> 0, ``"arN"`` -> N, ``"arma11"`` -> 1.

    ``"arma11"`` (daskglm's, :mod:`daskglm.kernels.arma`) has one AR lag and one MA
    lag; its fits are not :func:`fit_block`'s.
    """
    if noise_model == "ols":
        return 0
    if noise_model == ARMA11:
        return 1
    if not isinstance(noise_model, str) or noise_model[:2] != "ar":
        raise ValueError(f"Acceptable noise models are ['ols', 'arN', '{ARMA11}']. "
                         f"You provided 'noise_model={noise_model}'.")
    try:
        order = int(noise_model[2:])
    except ValueError:
        order = 0
    if order < 1:
        raise ValueError(
            f"AR order must be a positive integer specified as arN, where N is an integer. "
            f"E.g. ar3. You provided {noise_model}."
        )
    return order


def ols(Y: np.ndarray, X: np.ndarray) -> OLSFit:
    """OLS fit ``beta = pinv(X) Y`` of a block.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
    X : ndarray, shape (n, p)
        Any shape, ``n <= p`` included (see the module notes on the dispersion).

    Returns
    -------
    OLSFit
    """
    X = check_design(Y, X)
    pinv, dof = _pinv_and_dof(X, np.zeros(0))
    beta = pinv @ Y
    residuals = X @ beta
    np.subtract(Y, residuals, out=residuals)
    sigma2 = np.einsum("tv,tv->v", residuals, residuals) / _dispersion_df(X)
    return OLSFit(beta, residuals, sigma2, dof)


def yule_walker(residuals: np.ndarray, order: int, center: float = 0.0) -> np.ndarray:
    """Yule-Walker AR(order) coefficients of each voxel's residuals.

    Parameters
    ----------
    residuals : ndarray, shape (n, v)
    order : int
        AR order >= 1.
    center : float, default 0.0
        Scalar subtracted from all residuals first (nilearn: the mean of the
        residuals of all voxels of the run; see the module notes).

    Returns
    -------
    ndarray, shape (order, v)
        Coefficients; 0 for voxels whose (centred) residuals are all zero;
        NaN for the others when ``n <= order`` (nilearn's: the lag-``n``
        autocovariance is ``0 / 0``).
    """
    if not isinstance(order, int | np.integer) or order < 1:
        raise ValueError(f"AR order must be a positive integer; got {order!r}")
    y = np.asarray(residuals, dtype=np.float64)
    if center:
        y = y - center
    n, v = y.shape
    r = np.empty((order + 1, v))
    r[0] = np.einsum("tv,tv->v", y, y)
    for k in range(1, order + 1):
        r[k] = np.einsum("tv,tv->v", y[:-k], y[k:]) if k < n else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # n <= order: 0 / 0 at lag n, as nilearn
        r /= ((n - np.arange(order + 1)) * n)[:, None]
    ok = r[0] > 0
    rho = np.zeros((order, v))
    if n <= order:
        rho[:, ok] = np.nan
        return rho
    if order == 1:
        rho[0, ok] = r[1, ok] / r[0, ok]
        return rho
    rr = r[:, ok].T  # (v_ok, order + 1)
    lags = np.abs(np.arange(order)[:, None] - np.arange(order)[None, :])
    toeplitz = rr[:, lags]  # (v_ok, order, order)
    try:
        sol = np.linalg.solve(toeplitz, rr[:, 1:, None])[..., 0]
    except np.linalg.LinAlgError:
        sol = (np.linalg.pinv(toeplitz) @ rr[:, 1:, None])[..., 0]
    rho[:, ok] = sol.T
    return rho


class _PinvCache:
    """Pseudo-inverses of whitened designs and residual degrees of freedom, kept per process.

    Every block of a run has the same design and AR(1) labels on a fixed grid,
    so the same ``pinv(whiten(X, rho))`` would be recomputed for every label of
    every block. Entries are keyed by the design's digest and the coefficients,
    the least recently used evicted beyond ``max_bytes`` (:class:`LRUCache`,
    shared safely by a worker's threads). The cached values are equal to a
    fresh computation (same function, same inputs).
    """

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self._pinvs: LRUCache[np.ndarray] = LRUCache(max_bytes, size_of=lambda value: value.nbytes)
        self._dofs: LRUCache[int] = LRUCache(64)

    design_key = staticmethod(_ar1_moments.design_key)

    def pinv(self, X: np.ndarray, coeffs: np.ndarray, key: bytes | None = None) -> np.ndarray:
        def compute() -> np.ndarray:
            value = whitened_pinv(X, coeffs)[1]
            value.setflags(write=False)
            return value

        return self._pinvs.get((key or self.design_key(X), np.asarray(coeffs, np.float64).tobytes()), compute)

    def dof(self, X: np.ndarray, key: bytes | None = None) -> int:
        return self._dofs.get(key or self.design_key(X), lambda: residual_dof(X))


_PINVS = _PinvCache()


def _pinv_and_dof(X: np.ndarray, coeffs: np.ndarray) -> tuple[np.ndarray, int]:
    key = _PINVS.design_key(X)
    return _PINVS.pinv(X, coeffs, key), _PINVS.dof(X, key)


def _fit_groups(
    Y: np.ndarray, X: np.ndarray, group: np.ndarray, group_coeffs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Whitened least squares, one cached pinv and one GEMM per group of voxels.

    ``group (v,)`` int in [0, G), ``group_coeffs (G, order)``.
    Returns ``beta (p, v)``, ``sigma2 (v,)``.

    The voxels are permuted once so that each group is a contiguous column
    slice (BLAS reads it in place), instead of gathering scattered columns
    once per group.
    """
    n, v = Y.shape
    df = _dispersion_df(X)
    key = _PINVS.design_key(X)
    sorter = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[sorter], np.arange(len(group_coeffs) + 1))
    identity = bool(np.all(sorter[1:] > sorter[:-1]))
    # Whiten every voxel at once with its group's coefficients, in group order.
    coeffs_sorted = np.asarray(group_coeffs, dtype=np.float64)[group[sorter]].T  # (order, v)
    wy = np.array(Y, dtype=np.float64) if identity else np.take(Y, sorter, axis=1)
    whiten_inplace(wy, coeffs_sorted)
    beta = np.empty((X.shape[1], v))
    sigma2 = np.empty(v)
    for g, coeffs in enumerate(group_coeffs):
        lo, hi = bounds[g], bounds[g + 1]
        if lo == hi:
            continue
        wx = whiten(X, coeffs) if np.size(coeffs) else X
        b = _PINVS.pinv(X, coeffs, key) @ wy[:, lo:hi]
        resid = wx @ b
        np.subtract(wy[:, lo:hi], resid, out=resid)
        beta[:, lo:hi] = b
        sigma2[lo:hi] = np.einsum("tv,tv->v", resid, resid)
    sigma2 /= df
    if not identity:
        beta[:, sorter] = beta.copy()
        sigma2[sorter] = sigma2.copy()
    return beta, sigma2


def constant_column(X: np.ndarray, key: bytes | None = None) -> int | None:
    """The column of a full-rank design (residual dof > 0) whose entries are one non-zero value.

    None when there is no such column, more than one, ``X`` is rank deficient
    or has no residual dof: then a constant voxel's exact fit is not the
    simple ``(y / c) e_j`` (or its residuals are not all zero).
    """
    X = np.asarray(X, dtype=np.float64)
    n, p = X.shape
    if n < 2 or _PINVS.dof(X, key) != n - p or n - p <= 0:
        return None
    columns = np.flatnonzero(np.all(X == X[:1], axis=0) & (X[0] != 0))
    return int(columns[0]) if columns.size == 1 else None


def constant_voxels(Y: np.ndarray, rows: int = 64) -> np.ndarray:
    """Indexes of the columns of ``Y (n, v)`` whose ``n >= 2`` values are all equal."""
    Y = np.asarray(Y)
    n, v = Y.shape
    if n < 2 or v == 0:
        return np.empty(0, dtype=np.intp)
    same = np.ones(v, dtype=bool)
    first = Y[0]
    for a in range(1, n, rows):  # a few rows at a time: no (n, v) temporary
        same &= np.all(Y[a:a + rows] == first, axis=0)
    return np.flatnonzero(same)


def exact_constant_fits(Y: np.ndarray, X: np.ndarray, beta: np.ndarray, sigma2: np.ndarray,
                        mean: float | np.ndarray | None = None, key: bytes | None = None) -> np.ndarray:
    """Give the voxels with an exactly constant signal their exact fit, in place.

    See the module notes: ``beta = (y / c) e_j`` and ``sigma2 = 0`` where
    ``X[:, j] = c`` is the design's constant column and ``y`` the voxel's
    scaled value; nothing is changed when the design has no such column.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        The block as given to the fit (raw; ``mean`` scales it).
    X : ndarray, shape (n, p)
    beta : ndarray, shape (p, v)
    sigma2 : ndarray, shape (v,)
    mean : float or ndarray, optional
        :func:`daskglm.kernels.scaling.scaling_mean`'s floored mean (None: ``Y`` is the
        fitted signal).
    key : bytes, optional
        The design's cache key.

    Returns
    -------
    ndarray of intp
        The constant voxels changed.
    """
    j = constant_column(X, key)
    if j is None:
        return np.empty(0, dtype=np.intp)
    idx = constant_voxels(Y)
    if idx.size:
        value = np.empty((1, idx.size))
        _scaling.scaled_rows(Y[:1, idx], mean if mean is None or np.ndim(mean) == 0 else mean[idx], 0, 1, value)
        beta[:, idx] = 0.0
        beta[j, idx] = value[0] / np.asarray(X, dtype=np.float64)[0, j]
        sigma2[idx] = 0.0
    return idx


def ar_coefficients_block(
    Y: np.ndarray,
    X: np.ndarray,
    order: int,
    signal_scaling: ScalingMode = 0,
    scaling_mean: float | np.ndarray | None = None,
    ar_center: float = 0.0,
) -> np.ndarray:
    """Pass 1 of AR(p) fits: Yule-Walker coefficients of the OLS residuals.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Raw block (float32 or float64).
    X : ndarray, shape (n, p)
    order : int
    signal_scaling, scaling_mean
        See :func:`daskglm.kernels.scaling.scale_signal`.
    ar_center : float
        See `yule_walker` ``center``.

    Returns
    -------
    ndarray, shape (order, v)
        0 for every voxel when ``residual_dof(X) == 0`` (see the module notes).
    """
    X = check_design(Y, X)
    if _PINVS.dof(X) == 0:  # residuals zero in exact arithmetic
        return np.zeros((order, np.shape(Y)[1]))
    Ys = _as_float64(scale_signal(Y, signal_scaling, scaling_mean)[0])
    return yule_walker(ols(Ys, X).residuals, order, ar_center)


def fit_block(
    Y: np.ndarray,
    X: np.ndarray,
    noise_model: str = "ar1",
    bins: int = 100,
    signal_scaling: ScalingMode = 0,
    scaling_mean: float | np.ndarray | None = None,
    ar_center: float = 0.0,
) -> BlockFit:
    """Fit the GLM of one block under ``"ols"`` or ``"ar1"`` (nilearn ``run_glm``).

    Steps: scaling -> OLS -> (ar1) Yule-Walker rho of the OLS residuals ->
    labels ``ar1_labels(rho, bins)`` -> per label: whiten X and the voxels'
    Y with the label value, ``beta = pinv(WX) WY``, ``sigma2 = RSS / (n - p)``.
    Labels lie on a fixed grid, so any voxel partition gives the same result.
    AR(1) is computed from the block's moments (:mod:`daskglm.kernels.ar1_moments`:
    one GEMM for the block, streamed over row steps as the rows are scaled,
    so no float64 copy of the block is made) when the design is well
    conditioned; voxels whose
    rounding-error bound there is too large, and every voxel of other designs,
    take the exact path above.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Raw block.
    X : ndarray, shape (n, p)
    noise_model : {"ols", "ar1"}
        Higher orders need a global clustering: use `ar_coefficients_block`
        then `refit_block`.
    bins : int
        AR(1) quantisation bins.
    signal_scaling, scaling_mean
        See :func:`daskglm.kernels.scaling.scale_signal`.
    ar_center : float
        See `yule_walker` ``center``.

    Returns
    -------
    BlockFit
    """
    order = parse_noise_model(noise_model)
    if noise_model == ARMA11:
        raise ValueError("noise_model='arma11' is fitted by daskglm.kernels.arma.fit_block")
    if order > 1:
        raise ValueError(
            f"noise_model={noise_model!r} needs labels clustered over all voxels: call "
            "ar_coefficients_block, cluster the coefficients, then refit_block"
        )
    X = check_design(Y, X)
    key = _ar1_moments.design_key(X) if order == 1 else None  # hashed once per block: both caches' key
    design = _ar1_moments.prepare(X, bins, key) if order == 1 and not ar_center else None
    if design is None:  # OLS; or a rank deficient or ill-conditioned design, or a centre: exact path only
        Ys = _as_float64(scale_signal(Y, signal_scaling, scaling_mean)[0])
        if order == 0:
            fit = ols(Ys, X)
            exact_constant_fits(Ys, X, fit.beta, fit.sigma2, key=key)
            return BlockFit(fit.beta, fit.sigma2, np.zeros(Ys.shape[1]), fit.dof)
        beta, sigma2, label = _ar1_exact(Ys, X, bins, ar_center, key)
        label[exact_constant_fits(Ys, X, beta, sigma2, key=key)] = 0.0
        return BlockFit(beta, sigma2, label, _PINVS.dof(X, key))
    Y = np.asarray(Y)
    # the scaled block is streamed into the moments a few rows at a time, never held whole
    mean = _scaling.scaling_mean(Y, signal_scaling, scaling_mean)
    fast = _ar1_moments.ar1_fit_moments(Y, design, rows=partial(_scaling.scaled_rows, Y, mean))
    beta, sigma2, label = fast.beta, fast.sigma2, fast.label
    redo = np.flatnonzero(fast.redo)
    if redo.size:  # voxels the moments cannot fit to full precision: the exact path
        Ys = np.empty((Y.shape[0], redo.size))
        _scaling.scaled_rows(Y[:, redo], mean if mean is None or mean.ndim == 0 else mean[redo],
                             0, Y.shape[0], Ys)
        beta[:, redo], sigma2[redo], label[redo] = _ar1_exact(Ys, X, bins, key=key)
    label[exact_constant_fits(Y, X, beta, sigma2, mean, key)] = 0.0
    return BlockFit(beta, sigma2, label, _PINVS.dof(X, key))


def _ar1_exact(Ys: np.ndarray, X: np.ndarray, bins: int, ar_center: float = 0.0, key: bytes | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AR(1) fit as nilearn computes it: OLS, residuals, Yule-Walker, one whitened GEMM per label.

    Returns ``beta (p, v)``, ``sigma2 (v,)``, ``label (v,)``. rho is 0 where
    the residuals are zero in exact arithmetic (``residual_dof(X) == 0``) and
    where it is not finite (``n <= 1``), see the module notes.
    """
    if _PINVS.dof(X, key) == 0:
        rho = np.zeros(Ys.shape[1])
    else:
        fit = ols(Ys, X)
        rho = yule_walker(fit.residuals, 1, ar_center)[0]
        del fit
        rho[~np.isfinite(rho)] = 0.0
    label = ar1_labels(rho, bins)
    values, group = np.unique(label, return_inverse=True)
    beta, sigma2 = _fit_groups(Ys, X, group, values[:, None])
    return beta, sigma2, label


def refit_block(
    Y_scaled: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    coeffs_per_label: np.ndarray,
    signal_scaling: ScalingMode = False,
    scaling_mean: float | np.ndarray | None = None,
) -> BlockFit:
    """Pass 2 of AR(p) fits: whitened fit with given per-label coefficients.

    Parameters
    ----------
    Y_scaled : ndarray, shape (n, v)
        Block, already scaled unless ``signal_scaling`` is given.
    X : ndarray, shape (n, p)
    labels : ndarray of int, shape (v,)
        Label index of each voxel, in [0, L).
    coeffs_per_label : ndarray, shape (L, order)
    signal_scaling, scaling_mean
        Optional scaling applied first (default: none).

    Returns
    -------
    BlockFit
        ``label`` is ``labels`` as float64.
    """
    X = check_design(Y_scaled, X)
    coeffs = np.asarray(coeffs_per_label, dtype=np.float64)
    labels = np.asarray(labels)
    if coeffs.ndim != 2 or labels.shape != (np.shape(Y_scaled)[1],):
        raise ValueError(
            f"need coeffs_per_label (L, order) and labels ({np.shape(Y_scaled)[1]},); got "
            f"{coeffs.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= coeffs.shape[0]):
        raise ValueError(
            f"labels must lie in [0, {coeffs.shape[0]}); got range [{labels.min()}, {labels.max()}]"
        )
    Ys = _as_float64(scale_signal(Y_scaled, signal_scaling, scaling_mean)[0])
    beta, sigma2 = _fit_groups(Ys, X, labels.astype(np.intp), coeffs)
    exact_constant_fits(Ys, X, beta, sigma2)  # exact under any whitening: the labels stay
    return BlockFit(beta, sigma2, labels.astype(np.float64), _PINVS.dof(X))

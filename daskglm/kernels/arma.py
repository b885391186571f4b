"""The ARMA(1,1) noise model: per-voxel REML on a parameter grid, exact whitening, the refit.

fMRI noise is close to an AR(1) process plus white noise, which is an
ARMA(1,1) process ``y_t = a y_{t-1} + e_t + b e_{t-1}`` (``b < 0`` for a
white share). As AFNI's ``3dREMLfit``, every voxel gets the point of a fixed
grid of ``(a, b)`` that maximises its restricted likelihood, and the GLM is
refitted with that point's exact whitening. Labels are rows of the grid
(:func:`grid`), so a voxel's label, the label's covariance of beta and its
whitening are the same whatever block it falls in, as for nilearn's AR(1)
bins.

**Whitening** (exact, for a stationary start). With unit innovation variance
the autocovariance is ``g0 = (1 + 2ab + b^2) / (1 - a^2)``, ``g1 = (1 + ab)(a + b)
/ (1 - a^2)``, ``g_k = a g_{k-1}``. ``z_0 = y_0``, ``z_t = y_t - a y_{t-1}`` has a
tridiagonal covariance (``g0``, then ``1 + b^2`` on the diagonal, ``b`` beside
it), whose ``LDL'`` factor gives ``x_t = z_t - m_t x_{t-1}`` and ``w_t = x_t /
sqrt(d_t)``: ``|w|^2 = y' R^-1 y`` and ``log|R| = sum_t log d_t``
(:func:`factor`, :func:`whiten`).

**REML.** ``-2 l(a, b) = log|R| + log|X' R^-1 X| + nu log(y' P y)`` with ``nu = n
- rank(X)`` (the dispersion profiled out) and ``y' P y`` the whitened residual
sum of squares of the GLS fit. Evaluated exactly that costs a whitened
regression per voxel and grid point; here it costs one pass over the block:

* ``y' P y`` is taken as ``q nu / tau``, where ``q = e' Pi e`` is the quadratic
  form of the OLS residuals ``e`` in ``Pi``, the band-``K`` Toeplitz matrix of the
  inverse autocovariance (that of an ARMA(1,1) with the roles of ``a`` and
  ``-b`` exchanged), and ``tau = E[e' Pi e] = tr(Pi M R M)`` its expectation under
  the grid point's own model (``M = I - X X^+``), so that the ratio is unbiased
  for ``y' P y`` at the truth. ``q`` is a combination of the residuals' lag sums
  ``S_k = sum_t e_t e_{t+k}`` (``k <= K``, :data:`N_LAGS`): one pass over the
  block, then one small GEMM for every grid point of every voxel.
* ``log|R|``, ``log|X' R^-1 X|`` and ``tau`` depend on the design and the grid
  point only: they are computed once per design (:func:`prepare`).

What this leaves out of exact REML: the edges of ``Pi`` (its first and last
``~1 / (1 - |b|)`` rows are those of the infinite inverse, where ``R^-1``'s are not),
its truncation (``|b|^K <= 0.8^24 = 5e-3`` of a lag sum that is itself a
noise-level fraction of ``S_0``), and the fluctuation of ``y' P y / e' Pi e``
about its mean. Each is of order ``1 / n`` of the criterion; the tests compare
the choice with a direct optimisation of the exact REML (scipy) per voxel.

**Refit.** Each voxel's scaled signal is whitened with its label
(:func:`daskglm.kernels.arma_jit.whiten_gathered`, which reads and scales it on the way), and per label ``beta =
(WX'WX)^-1 WX' Wy`` on the design with unit-norm columns (``cond`` of the
whitened design, not of its Gram matrix, sets the rounding: the same scaling
as :mod:`daskglm.kernels.ar1_moments`), ``sigma2 = |Wy - WX beta|^2 / (n - p)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.signal

from . import regression as _regression
from . import scaling as _scaling
from .covariances import gram_inverses
from .lru import LRUCache
from .scaling import ScalingMode, scale_signal

__all__ = ["GRID_A", "GRID_B", "N_LAGS", "ArmaDesign", "grid", "white_label", "autocovariance", "factor",
           "whiten", "whiten_label", "prepare", "lag_correlations", "smooth_lag_correlations", "reml_labels",
           "refit_block", "fit_block", "label_covariances"]

#: AR parameters of the grid (AFNI's default range, 0 .. 0.8, widened to 0.95 for short TRs).
GRID_A = np.round(np.arange(0.0, 0.951, 0.05), 2)
#: MA parameters of the grid (AFNI's default range, -0.8 .. 0.8).
GRID_B = np.round(np.arange(-0.8, 0.801, 0.05), 2)
#: Lags of the inverse autocovariance in the REML criterion (``0.8 ** 24 = 5e-3``).
N_LAGS = 24


def grid() -> np.ndarray:
    """The ``(a, b)`` grid, one row per label: ``a`` outer, ``b`` inner.

    Returns
    -------
    ndarray, shape (len(GRID_A) * len(GRID_B), 2)
    """
    a, b = np.meshgrid(GRID_A, GRID_B, indexing="ij")
    return np.column_stack([a.ravel(), b.ravel()])


def white_label() -> int:
    """The row of ``(0, 0)`` (white noise) in :func:`grid`."""
    return int(np.flatnonzero((grid() == 0.0).all(axis=1))[0])


def autocovariance(a: np.ndarray | float, b: np.ndarray | float, n_lags: int) -> np.ndarray:
    """Autocovariance of a stationary ARMA(1,1) with unit innovation variance.

    Parameters
    ----------
    a, b : float or ndarray, shape (L,)
        AR and MA parameters (``|a| < 1``).
    n_lags : int
        Largest lag.

    Returns
    -------
    ndarray, shape (L, n_lags + 1)
    """
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))[:, None]
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))[:, None]
    out = np.empty((a.shape[0], n_lags + 1))
    out[:, :1] = (1 + 2 * a * b + b * b) / (1 - a * a)
    if n_lags >= 1:
        out[:, 1:] = (1 + a * b) * (a + b) / (1 - a * a) * a ** np.arange(n_lags)
    return out


def factor(params: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``LDL'`` factors of the whitening of each ``(a, b)`` (see the module notes).

    Parameters
    ----------
    params : ndarray, shape (L, 2)
    n : int
        Scans.

    Returns
    -------
    m : ndarray, shape (T, L)
        ``m_0 = 0``, ``m_t = b / d_{t-1}``; ``T <= n`` rows: the recursion reaches a fixed point
        in floating point (``|b| <= 0.8``: after ~80 scans), and row ``T - 1`` holds for every later scan.
    scale : ndarray, shape (T, L)
        ``1 / sqrt(d_t)``, the same rows.
    log_det : ndarray, shape (L,)
        ``log|R| = sum_t log d_t``.
    """
    a, b = np.asarray(params, dtype=np.float64).T
    m = np.zeros((n, a.size))
    d = np.empty((n, a.size))
    d[0] = autocovariance(a, b, 0)[:, 0]
    rows = n
    for t in range(1, n):
        m[t] = b / d[t - 1]
        d[t] = 1 + b * b - m[t] * b
        if t > 1 and np.array_equal(d[t], d[t - 1]):  # a fixed point in floating point: every later row is this one
            rows = t + 1
            break
    log_det = np.log(d[:rows]).sum(axis=0) + (n - rows) * np.log(d[rows - 1])
    return m[:rows].copy(), 1 / np.sqrt(d[:rows]), log_det


def _contiguous(A: np.ndarray) -> np.ndarray:
    """``A`` C-ordered, float32 kept and anything else as float64 (the scaling's arithmetic is the same)."""
    A = np.asarray(A)
    return np.ascontiguousarray(A if A.dtype == np.float32 else A.astype(np.float64, copy=False))


def _whiten_label(A: np.ndarray, a: float, m: np.ndarray, scale: np.ndarray, cols: np.ndarray | None = None,
                  mean: np.ndarray | None = None) -> np.ndarray:
    """Columns ``cols`` (default: all) of ``A (n, m)`` whitened with one label's ``a`` and its
    columns ``m (T,)``, ``scale (T,)`` of :func:`factor`; first scaled by ``mean`` (one value per
    column of ``cols``, from :func:`daskglm.kernels.scaling.scaling_mean`) if given.

    Returns
    -------
    ndarray, shape (n, len(cols)), float64
    """
    from .arma_jit import whiten_gathered

    A = _contiguous(A)
    cols = np.arange(A.shape[1]) if cols is None else np.asarray(cols, dtype=np.intp)
    if mean is None:
        mean = np.empty(0, dtype=A.dtype)
    dtype = mean.dtype.type
    out = np.empty((A.shape[0], cols.size))
    whiten_gathered(A, cols, np.ascontiguousarray(mean), dtype(1.0), dtype(100.0), float(a),
                    np.ascontiguousarray(m, dtype=np.float64), np.ascontiguousarray(scale, dtype=np.float64), out)
    return out


def whiten(A: np.ndarray, a: float, b: float) -> np.ndarray:
    """Exact ARMA(1,1) whitening ``W A`` (``W' W = R^-1``) of data or a design.

    Parameters
    ----------
    A : ndarray, shape (n,) or (n, m)
    a, b : float

    Returns
    -------
    ndarray, same shape as A, float64
    """
    A = np.asarray(A, dtype=np.float64)
    A2 = A.reshape(A.shape[0], -1)
    m, scale, _ = factor(np.array([[a, b]]), A2.shape[0])
    return _whiten_label(A2, a, m[:, 0], scale[:, 0]).reshape(A.shape)


def whiten_label(A: np.ndarray, X: np.ndarray, label: int) -> np.ndarray:
    """``A`` whitened by grid label ``label``, with the factors :func:`prepare` keeps for the run's design.

    Parameters
    ----------
    A : ndarray, shape (n, m)
        Data or design of the run.
    X : ndarray, shape (n, p)
        The run's design (its cached :class:`ArmaDesign` holds the factors of every label).
    label : int
        Row of :func:`grid`.

    Returns
    -------
    ndarray, shape (n, m), float64
    """
    design = prepare(X)
    return _whiten_label(np.asarray(A, dtype=np.float64), design.params[label, 0], design.m[:, label],
                         design.scale[:, label])


def inverse_autocovariance(params: np.ndarray, n_lags: int) -> np.ndarray:
    """Autocovariance of the inverse process (AR ``-b``, MA ``-a``): the band of ``Pi``.

    Returns
    -------
    ndarray, shape (L, n_lags + 1)
    """
    a, b = np.asarray(params, dtype=np.float64).T
    return autocovariance(-b, -a, n_lags)


class ArmaDesign(NamedTuple):
    """The design's part of an ARMA(1,1) fit (:func:`prepare`), one row per grid label.

    Attributes
    ----------
    params : ndarray, shape (L, 2)
        :func:`grid`.
    m, scale : ndarray, shape (T, L)
        :func:`factor` (row ``T - 1`` for the scans after it).
    norms : ndarray, shape (p,)
        The design's column norms (ones for a rank deficient design).
    cov_scaled : ndarray, shape (L, p, p)
        ``pinv(W X_s) pinv(W X_s)'`` of the unit-norm design ``X_s = X / norms``.
    weights : ndarray, shape (L, N_LAGS + 1)
        ``q = weights @ S`` (``S`` the lag sums of the OLS residuals).
    offset : ndarray, shape (L,)
        ``nu log(nu / tau) + log|R| + log|X' R^-1 X|``.
    scored : ndarray, shape (L, N_LAGS + 1)
        ``weights * exp((offset - min(offset)) / nu)``: the criterion ``nu log(q) + offset`` is
        smallest where ``scored @ S`` is, so the choice needs no logarithm.
    refine : ndarray of bool, shape (L,)
        Labels whose whitened design has ``cond > 1e3``: their refit takes one step of
        iterative refinement (the normal equations' rounding is ``cond^2 eps``).
    nu : int
        ``n - rank(X)``.
    """

    params: np.ndarray
    m: np.ndarray
    scale: np.ndarray
    norms: np.ndarray
    cov_scaled: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    scored: np.ndarray
    refine: np.ndarray
    nu: int


def _whitened_designs(Xs: np.ndarray, params: np.ndarray, m: np.ndarray, scale: np.ndarray,
                      batch: int = 64):
    """Yield ``(lo, W_l Xs)`` for labels ``lo .. lo + batch``, shape (batch, n, p)."""
    n, p = Xs.shape
    for lo in range(0, len(params), batch):  # numpy over labels, rows in turn (no compiled code on the client)
        rows = slice(lo, min(lo + batch, len(params)))
        a = params[rows, 0, None]
        out = np.empty((a.shape[0], n, p))
        x = np.repeat(Xs[:1], a.shape[0], axis=0)
        out[:, 0] = x * scale[0, rows, None]
        for t in range(1, n):
            row = min(t, len(m) - 1)
            x = Xs[t] - a * Xs[t - 1] - m[row, rows, None] * x
            out[:, t] = x * scale[row, rows, None]
        yield lo, out


def _expected_quadratic(X: np.ndarray, params: np.ndarray, pi: np.ndarray, rank: int) -> np.ndarray:
    """``tau = tr(Pi M R M)`` for every label (see the module notes), from the design alone.

    With ``Q`` an orthonormal basis of ``X``'s columns, ``R Q = g0 Q + g1 U_a``
    where ``U_a = F + B`` are the forward and backward sums ``sum a^(|t-s|-1) Q_s``
    (one pair of first-order filters per value of ``a``), so every term is a few
    lagged inner products of ``Q`` and ``U_a``.
    """
    n = X.shape[0]
    n_lags = pi.shape[1] - 1
    u, _, _ = np.linalg.svd(X, full_matrices=False)
    Q = u[:, :rank]
    a_all, b_all = params.T
    gamma = autocovariance(a_all, b_all, n_lags)
    lags = np.arange(1, n_lags + 1)
    tr_pi_r = n * pi[:, 0] * gamma[:, 0] + 2 * ((n - lags) * pi[:, 1:] * gamma[:, 1:]).sum(axis=1)
    # Q' Pi Q = pi_0 I + sum_k pi_k (G_k + G_k'), G_k = Q[k:]' Q[:-k]
    G = np.stack([Q[k:].T @ Q[:-k] for k in lags]) if n_lags and rank else np.zeros((0, rank, rank))
    qpq = pi[:, :1, None] * np.eye(rank) + np.einsum("lk,kij->lij", pi[:, 1:], G + G.transpose(0, 2, 1))
    tau = np.empty(len(params))
    for a in np.unique(a_all):
        rows = np.flatnonzero(a_all == a)
        forward = scipy.signal.lfilter([0.0, 1.0], [1.0, -a], Q, axis=0)
        U = forward + scipy.signal.lfilter([0.0, 1.0], [1.0, -a], Q[::-1], axis=0)[::-1]
        h = np.empty(n_lags + 1)  # <U, S^k Q> + <U, S^-k Q>, k >= 1; <U, Q> at k = 0
        h[0] = np.sum(U * Q)
        for k in lags:
            h[k] = np.sum(U[k:] * Q[:-k]) + np.sum(U[:-k] * Q[k:])
        g0, g1 = gamma[rows, 0], gamma[rows, 1]
        tr_qpq = np.trace(qpq[rows], axis1=1, axis2=2)
        tr_pi_h_r = g0 * tr_qpq + g1 * (pi[rows] @ h)
        qrq_u = Q.T @ U  # Q' R Q = g0 I + g1 Q' U
        tr_pi_hrh = g0 * tr_qpq + g1 * np.einsum("lij,ji->l", qpq[rows], qrq_u)
        tau[rows] = tr_pi_r[rows] - 2 * tr_pi_h_r + tr_pi_hrh
    return tau


#: :func:`_whitened_design`'s cache: (design digest, label) -> W X_s, 8 MiB. A label's whitened
#: design (125 KiB for an HCP-sized design) is used once per voxel column, and neighbouring
#: columns share most labels; computing one costs about as much as whitening 20 voxels.
_WHITENED: LRUCache[np.ndarray] = LRUCache(8 * 2**20, size_of=lambda value: value.nbytes)


def _whitened_design(X: np.ndarray, label: int, design: ArmaDesign, key: bytes) -> np.ndarray:
    """``W_label X_s`` (the unit-norm design whitened by one label), cached per process."""
    def compute() -> np.ndarray:
        value = _whiten_label(X / design.norms, design.params[label, 0], design.m[:, label], design.scale[:, label])
        value.setflags(write=False)
        return value

    return _WHITENED.get((key, int(label)), compute)


#: :func:`prepare`'s cache: design digest -> ArmaDesign, the last four used.
_CACHE: LRUCache[ArmaDesign] = LRUCache(4)


def prepare(X: np.ndarray, key: bytes | None = None) -> ArmaDesign:
    """The design's part of the ARMA(1,1) fit (cached per process).

    Parameters
    ----------
    X : ndarray, shape (n, p)
    key : bytes, optional
        The design's digest (:func:`daskglm.kernels.ar1_moments.design_key`).

    Returns
    -------
    ArmaDesign
    """
    X = np.asarray(X, dtype=np.float64)

    def compute() -> ArmaDesign:
        n, p = X.shape
        params = grid()
        m, scale, log_det_r = factor(params, n)
        nu = _regression.residual_dof(X)
        rank = n - nu
        norms = np.linalg.norm(X, axis=0)
        if rank < p:
            norms = np.ones(p)
        Xs = X / norms
        cov_scaled = np.empty((len(params), p, p))
        log_det_xrx = np.empty(len(params))
        for lo, wx in _whitened_designs(Xs, params, m, scale):
            cov_scaled[lo:lo + len(wx)], log_det_xrx[lo:lo + len(wx)] = gram_inverses(wx)
        pi = inverse_autocovariance(params, N_LAGS)
        weights = np.concatenate([pi[:, :1], 2 * pi[:, 1:]], axis=1)
        if nu > 0:
            tau = _expected_quadratic(X, params, pi, rank)
            offset = nu * np.log(nu / tau) + log_det_r + log_det_xrx
            scored = weights * np.exp(np.minimum((offset - offset.min()) / nu, 700.0))[:, None]
        else:
            offset = np.zeros(len(params))
            scored = weights
        eig = np.linalg.eigvalsh(cov_scaled)  # 1 / s^2 of each whitened design (0: below the cutoff)
        positive = np.where(eig > 0, eig, np.nan)
        refine = ~(np.nanmax(positive, axis=1) / np.nanmin(positive, axis=1) <= 1e6)
        for array in (m, scale, norms, cov_scaled, weights, offset, scored, refine):
            array.setflags(write=False)
        return ArmaDesign(params, m, scale, norms, cov_scaled, weights, offset, scored, refine, nu)

    return _CACHE.get(key or _regression._PINVS.design_key(X), compute)


def lag_correlations(
    Y: np.ndarray,
    X: np.ndarray,
    signal_scaling: ScalingMode = 0,
    scaling_mean: float | np.ndarray | None = None,
) -> np.ndarray:
    """Pass 1 of the ARMA(1,1) fit: the lag sums of each voxel's OLS residuals, over the lag-0 sum.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Raw block.
    X : ndarray, shape (n, p)
    signal_scaling, scaling_mean
        See :func:`daskglm.kernels.scaling.scale_signal`.

    Returns
    -------
    ndarray, shape (N_LAGS + 1, v), float32
        ``S_k / S_0`` (row 0 is 1) of the float32 residuals, summed in float64; all zeros where
        the residuals are zero (and for every voxel of a design without residual degrees of freedom).
    """
    from .arma_jit import lag_sums

    X = _regression.check_design(Y, X)
    key = _regression._PINVS.design_key(X)
    out = np.zeros((N_LAGS + 1, np.shape(Y)[1]))
    if _regression._PINVS.dof(X, key) == 0 or X.shape[0] < 2:
        return out.astype(np.float32)
    # float32 residuals (the choice of a grid point does not need more), float64 sums of their products
    E = scale_signal(Y, signal_scaling, scaling_mean)[0]
    if E is Y or not (E.dtype == np.float32 and E.flags.c_contiguous):
        E = np.array(E, dtype=np.float32, order="C")
    X32 = X.astype(np.float32)
    beta = _regression._PINVS.pinv(X, np.zeros(0), key).astype(np.float32) @ E
    for lo in range(0, E.shape[0], 64):  # the residuals in place, a slab of rows at a time
        E[lo:lo + 64] -= X32[lo:lo + 64] @ beta
    lag_sums(E, min(N_LAGS, X.shape[0] - 1), out[:min(N_LAGS, X.shape[0] - 1) + 1])
    ok = out[0] > 0
    out[:, ok] /= out[0, ok]
    out[:, ~ok] = 0.0
    return out.astype(np.float32)


def smooth_lag_correlations(r: np.ndarray, ijk: np.ndarray, shape: tuple[int, int, int],
                            sigma: np.ndarray) -> np.ndarray:
    """Spatial regularisation of :func:`lag_correlations` within the mask (as FSL FILM's).

    Each lag's values are smoothed by a Gaussian over the voxels that have one,
    normalised by the smoothed mask, so that voxels at the mask's edge are
    averages of mask voxels only.

    Parameters
    ----------
    r : ndarray, shape (N_LAGS + 1, V)
    ijk : ndarray of int, shape (3, V)
        The voxels' indices in the volume.
    shape : tuple of int
        The volume's shape.
    sigma : ndarray, shape (3,)
        Gaussian standard deviation per axis, in voxels.

    Returns
    -------
    ndarray, shape (N_LAGS + 1, V), float32
        Voxels whose residuals are zero (row 0 is 0) are left out of the average and stay 0.
    """
    import scipy.ndimage

    used = np.flatnonzero(np.asarray(r[0]) > 0)
    flat = np.ravel_multi_index(tuple(np.asarray(ijk, dtype=np.intp)[:, used]), shape)
    out = np.zeros(np.shape(r), dtype=np.float32)
    volume = np.zeros(int(np.prod(shape)), dtype=np.float32)

    def smoothed(values: np.ndarray) -> np.ndarray:
        volume[flat] = values
        return scipy.ndimage.gaussian_filter(volume.reshape(shape), sigma, mode="constant",
                                             truncate=3.0).ravel()[flat]

    weight = smoothed(np.float32(1.0))
    for k in range(np.shape(r)[0]):
        out[k, used] = smoothed(np.asarray(r[k])[used]) / weight
    return out


def reml_labels(r: np.ndarray, design: ArmaDesign, chunk: int = 1024) -> np.ndarray:
    """Each voxel's REML grid label from its (possibly smoothed) :func:`lag_correlations`.

    Parameters
    ----------
    r : ndarray, shape (N_LAGS + 1, v)
    design : ArmaDesign
    chunk : int
        Voxels per criterion table (``L x chunk`` float64).

    Returns
    -------
    ndarray of intp, shape (v,)
        Rows of :func:`grid`; :func:`white_label` for voxels with zero residuals
        (row 0 of ``r`` is 0) and for designs without residual degrees of freedom.
    """
    r = np.asarray(r)
    label = np.full(r.shape[1], white_label(), dtype=np.intp)
    if design.nu <= 0:
        return label
    ok = np.flatnonzero(r[0] > 0)
    for lo in range(0, ok.size, chunk):  # float64 a chunk at a time (a whole run's r is ~100 bytes a voxel)
        cols = ok[lo:lo + chunk]
        score = design.scored @ r[:, cols].astype(np.float64)
        best = np.argmin(score, axis=0)
        bad = np.flatnonzero(score[best, np.arange(cols.size)] <= 0)
        if bad.size:  # a band truncated below positive definiteness (extreme labels): not a candidate
            worse = score[:, bad]
            worse[worse <= 0] = np.inf
            best[bad] = np.argmin(worse, axis=0)
        label[cols] = best
    return label


def _whitened_fit(wy: np.ndarray, wx: np.ndarray, cov: np.ndarray, refine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of whitened data on its whitened unit-norm design.

    Parameters
    ----------
    wy : ndarray, shape (n, c)
    wx : ndarray, shape (n, p)
    cov : ndarray, shape (p, p)
        ``pinv(wx) pinv(wx)'``.
    refine : bool
        One step of iterative refinement (``wx`` ill-conditioned).

    Returns
    -------
    beta : ndarray, shape (p, c)
    rss : ndarray, shape (c,)
    """
    xty = wx.T @ wy
    b = cov @ xty
    total = np.einsum("tv,tv->v", wy, wy)
    rss = total - np.einsum("pv,pv->v", b, xty)  # |Wy|^2 - b' WX'Wy, unless it cancels (below)
    exact = np.arange(wy.shape[1]) if refine else np.flatnonzero(~(rss > 1e-6 * total))
    if exact.size:  # an explicit residual: refined where WX is ill-conditioned (cond(WX), not cond^2)
        resid = wy[:, exact] - wx @ b[:, exact]
        if refine:
            b[:, exact] += cov @ (wx.T @ resid)
            resid = wy[:, exact] - wx @ b[:, exact]
        rss[exact] = np.einsum("tv,tv->v", resid, resid)
    return b, rss


def refit_block(
    Y: np.ndarray,
    X: np.ndarray,
    label: np.ndarray,
    signal_scaling: ScalingMode = 0,
    scaling_mean: float | np.ndarray | None = None,
    batch: int = 512,
) -> _regression.BlockFit:
    """Pass 2 of the ARMA(1,1) fit: each voxel whitened by its label, one fit per label.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Raw block.
    X : ndarray, shape (n, p)
    label : ndarray of int, shape (v,)
        Rows of :func:`grid` (:func:`reml_labels`).
    signal_scaling, scaling_mean
        See :func:`daskglm.kernels.scaling.scale_signal`.
    batch : int
        Voxels whitened at once (a float64 ``(n, batch)`` buffer: the task's memory
        beyond its block does not grow with the block).

    Returns
    -------
    daskglm.kernels.regression.BlockFit
        ``label`` is each voxel's row of :func:`grid`, as float64
        (:func:`white_label` for voxels with an exactly constant signal).
    """
    X = _regression.check_design(Y, X)
    key = _regression._PINVS.design_key(X)
    design = prepare(X, key)
    label = np.array(label, dtype=np.intp)
    if label.shape != (np.shape(Y)[1],) or (label.size and (label.min() < 0 or label.max() >= len(design.params))):
        raise ValueError(f"label must be {np.shape(Y)[1]} rows of the grid [0, {len(design.params)}); got "
                         f"shape {label.shape}")
    n, v = np.shape(Y)
    p = X.shape[1]
    sorter = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[sorter], np.arange(len(design.params) + 1))
    Y = _contiguous(Y)
    mean = _scaling.scaling_mean(Y, signal_scaling, scaling_mean)
    per_voxel = mean is not None and mean.ndim > 0
    beta = np.empty((p, v))
    sigma2 = np.empty(v)
    for g in np.flatnonzero(np.diff(bounds)):  # one label at a time, at most `batch` voxels at once
        wx = _whitened_design(X, g, design, key)
        for lo in range(bounds[g], bounds[g + 1], batch):
            cols = sorter[lo:min(lo + batch, bounds[g + 1])]
            wy = _whiten_label(Y, design.params[g, 0], design.m[:, g], design.scale[:, g], cols,
                               None if mean is None else mean[cols] if per_voxel
                               else np.full(cols.size, mean, dtype=mean.dtype))
            beta[:, cols], sigma2[cols] = _whitened_fit(wy, wx, design.cov_scaled[g], design.refine[g])
    beta /= design.norms[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 /= n - p
    label[_regression.exact_constant_fits(Y, X, beta, sigma2, mean, key)] = white_label()  # their exact fit
    return _regression.BlockFit(beta, sigma2, label.astype(np.float64), _regression._PINVS.dof(X, key))


def fit_block(
    Y: np.ndarray,
    X: np.ndarray,
    signal_scaling: ScalingMode = 0,
    scaling_mean: float | np.ndarray | None = None,
) -> _regression.BlockFit:
    """ARMA(1,1) GLM of one block without spatial regularisation: both passes on the block.

    :func:`lag_correlations`, :func:`reml_labels`, :func:`refit_block`; see them for the
    parameters and the result.
    """
    X = _regression.check_design(Y, X)
    r = lag_correlations(Y, X, signal_scaling, scaling_mean)
    return refit_block(Y, X, reml_labels(r, prepare(X)), signal_scaling, scaling_mean)


def label_covariances(X: np.ndarray) -> np.ndarray:
    """Normalised covariance of beta ``pinv(WX) pinv(WX)'`` for every label of :func:`grid`.

    Parameters
    ----------
    X : ndarray, shape (n, p)

    Returns
    -------
    ndarray, shape (L, p, p)
    """
    design = prepare(np.asarray(X, dtype=np.float64))
    inv = 1 / design.norms
    return design.cov_scaled * inv[None, :, None] * inv[None, None, :]

"""AR(1) GLM of a voxel block from its lag-0 and lag-1 moments (numpy only).

nilearn's AR(1) fit (``run_glm``) is, per voxel with data ``y (n,)``:

1. OLS ``b = pinv(X) y``, residuals ``e = y - X b``;
2. Yule-Walker ``rho = r1 / r0`` with ``r_k = sum_t e_t e_{t-k} / ((n - k) n)``,
   quantised to the label ``l = trunc(rho * bins) / bins``;
3. whitening ``W = I - l L`` (``L`` shifts by one scan; row 0 is kept), then
   ``beta = pinv(W X) W y`` and ``sigma2 = |W y - W X beta|^2 / (n - p)``.

Every quantity there is a function of a handful of per-voxel moments of
``y`` and of the design alone::

    A = X' y            B = (L X + L' X)' y        (one GEMM: [X, LX + L'X]' Y)
    s0 = y' y           s1 = sum_t y_t y_{t-1}     y_last = y_{n-1}

because ``X' W' W y = A - l B + l^2 (A - x_last y_last)``, ``X' W' W X =
G - l (K + K') + l^2 (G - x_last' x_last)`` with ``G = X' X`` and ``K =
X[1:]' X[:-1]``, and ``|W y|^2 = s0 - 2 l s1 + l^2 (s0 - y_last^2)``. So the
whole block costs one GEMM over ``Y`` and two dot-product passes, instead of
an OLS, a residual matrix, a whitened copy of ``Y`` regrouped by label and a
GEMM per label (:func:`daskglm.kernels.regression.fit_block`'s exact path).

The price is the normal equations' rounding. The design's columns are
scaled to unit norm first (which leaves the least-squares solution
unchanged) so that ``cond`` is that of the scaled Gram matrices (about 12 for
nilearn's FIAC design, against 1e8 unscaled), and each label's whitened Gram
matrix ``C_l`` is summed from its whitened design, not from the identity
above (whose cancellation for labels near 1 loses digits). Each label carries
a bound of the rounding of ``inv(C_l)`` -- ``eps * cond(C_l) * (n trace(C_l)
/ |C_l| + p)``, from the worst case of an ``n``-term sum (Higham's
``gamma_n``), typically 100-1000 times the actual error -- and each voxel
that bound times ``(s0 + 2 |l s1| + l^2 (s0 + y_last^2)) / RSS``, the size of
the terms ``|W y|^2`` is summed from against the residual (and the same for
the OLS step that gives ``rho``); voxels over :data:`MAX_RELATIVE_ERROR`,
with a zero residual, or with non-finite data are reported so that the
caller refits them exactly. A design that is rank deficient or too
ill-conditioned is refused as a whole (:func:`prepare` returns None).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np

from .lru import LRUCache
from .scaling import scaled_rows
from .whitening import whiten

__all__ = ["MAX_RELATIVE_ERROR", "MAX_COVARIANCE_ERROR", "MomentDesign", "MomentFit", "ar1_fit_moments",
           "ar1_grid", "ar1_half_width", "ar1_label_index", "ar1_labels", "block_moments", "prepare"]

#: Largest rounding-error bound (relative) a voxel may carry on the fast path.
MAX_RELATIVE_ERROR = 1e-8
#: Largest condition number of a scaled Gram matrix the fast path accepts.
MAX_CONDITION = 1e6
#: Largest rounding-error bound (relative) of a label covariance taken from the
#: moment design instead of an SVD (:func:`daskglm.kernels.covariances.ar1_label_covariances`).
MAX_COVARIANCE_ERROR = 1e-10
#: The covariances from the moment design are used only when every whitened
#: design is this far from the SVD pseudo-inverse's rank cutoff
#: (``max(n, p) * eps`` relative), so that the cutoff discards nothing there.
_CUTOFF_MARGIN = 1e-2
_EPS = float(np.finfo(np.float64).eps)


def ar1_half_width(bins: int, n_scans: int | None = None) -> int:
    """Largest ``|k|`` of an AR(1) label ``k / bins`` of a run of ``n_scans`` scans.

    nilearn's Yule-Walker ``rho = r1 / r0`` is ``n / (n - 1)`` times ``S1 /
    S0`` (the lag-1 and lag-0 sums of products) and ``|S1| <= S0``
    (Cauchy-Schwarz), so ``|rho| <= n / (n - 1)`` and its label, truncated,
    has ``|k| <= floor(bins n / (n - 1))`` (rounding cannot reach the next
    integer: it is at least ``1 / (n - 1)`` away, or ``bins n / (n - 1)`` is
    itself an integer). That is ``bins`` for ``n > bins + 1``: only short
    runs have labels beyond +-1, which nilearn uses as they are (no clipping).

    Parameters
    ----------
    bins : int
        AR(1) quantisation bins (>= 1).
    n_scans : int, optional
        Scans of the run; None, or fewer than 2 (no lag-1 product: rho is
        taken as 0), gives ``bins``.

    Returns
    -------
    int
    """
    bins = int(bins)
    if n_scans is None or n_scans < 2:
        return bins
    return max(bins, (bins * int(n_scans)) // (int(n_scans) - 1))


def ar1_grid(bins: int, n_scans: int | None = None) -> np.ndarray:
    """nilearn's AR(1) label values ``k / bins``, ``|k| <= ar1_half_width(bins, n_scans)``.

    Row ``k + K`` (``K = ar1_half_width(bins, n_scans)``) of every per-label
    table (covariances, inverses) is the label ``k / bins``
    (:func:`ar1_label_index`). A label of :func:`ar1_labels`,
    ``trunc(rho * bins) / bins``, equals its grid value bit for bit. The
    labels of the grid values themselves are not always the same values:
    ``(k / bins) * bins`` can round to just below ``k`` (e.g. ``bins=100``,
    ``k=58``), which truncates to ``k - 1``, as in nilearn.

    Parameters
    ----------
    bins : int
        AR(1) quantisation bins (>= 1).
    n_scans : int, optional
        Scans of the run: runs of at most ``bins + 1`` scans have labels
        beyond +-1 (see :func:`ar1_half_width`); default: ``[-1, 1]``.

    Returns
    -------
    ndarray, shape (2 K + 1,), float64
        The label values in increasing order.
    """
    half = ar1_half_width(bins, n_scans)
    return np.arange(-half, half + 1, dtype=np.float64) / bins


def ar1_label_index(label: np.ndarray, bins: int, n_scans: int | None = None) -> np.ndarray:
    """Row of each AR(1) label in :func:`ar1_grid` ``(bins, n_scans)``: ``rint(label * bins) + K``.

    Parameters
    ----------
    label : ndarray, shape (v,)
        Labels of :func:`ar1_labels`.
    bins : int
    n_scans : int, optional

    Returns
    -------
    ndarray of int64, shape (v,)

    Raises
    ------
    ValueError
        A label off the grid (not finite, or beyond ``n / (n - 1)``).
    """
    half = ar1_half_width(bins, n_scans)
    k = np.rint(np.asarray(label, dtype=np.float64) * bins)
    off = ~(np.abs(k) <= half)
    if off.any():
        raise ValueError(f"AR(1) labels must lie on the grid k / {bins}, |k| <= {half} ({n_scans} scans); "
                         f"got {np.asarray(label)[off][:5]}")
    return k.astype(np.int64) + half


def ar1_labels(rho: np.ndarray, bins: int = 100) -> np.ndarray:
    """nilearn's AR(1) quantisation ``trunc(rho * bins) / bins``.

    Parameters
    ----------
    rho : ndarray, shape (v,)
    bins : int

    Returns
    -------
    ndarray, shape (v,), float64
        Labels on the fixed grid ``k / bins`` (truncated toward 0; -0 -> 0),
        :func:`ar1_grid`.
    """
    return np.trunc(np.asarray(rho, dtype=np.float64) * bins) / bins + 0.0


class MomentDesign(NamedTuple):
    """What the moment fit needs of a design and a number of bins.

    Attributes
    ----------
    scale : ndarray, shape (p,)
        Column norms of X; the scaled design is ``X / scale``.
    stacked : ndarray, shape (n, 2p)
        ``[Xs, L Xs + L' Xs]`` (scaled), so ``stacked' Y`` gives ``A`` and ``B``.
    gram_inv : ndarray, shape (p, p)
        ``inv(Xs' Xs)``.
    lag_gram : ndarray, shape (p, p)
        Symmetric part of ``Xs[1:]' Xs[:-1]``.
    last : ndarray, shape (p,)
        ``Xs[n - 1]``.
    label_inv : ndarray, shape (2 K + 1, p, p)
        ``inv(Xs' W' W Xs)`` for every label of ``ar1_grid(bins, n)`` (``K =
        ar1_half_width(bins, n)``).
    label_error : ndarray, shape (2 K + 1,)
        Bound of the relative rounding error of each of those inverses (see
        :func:`_inverse_and_error`).
    gram_error : float
        The same bound for ``gram_inv``.
    bins : int
    df : int
        Dispersion degrees of freedom ``n - p``.
    covariances : ndarray, shape (2 K + 1, p, p), or None
        ``label_inv`` unscaled: ``pinv(W X) pinv(W X)'`` of every label to
        ``label_error`` (relative), read-only; None when the SVD
        pseudo-inverse's rank cutoff could discard a singular value of some
        ``W X`` (see :func:`daskglm.kernels.covariances.ar1_label_covariances`).
    """

    scale: np.ndarray
    stacked: np.ndarray
    gram_inv: np.ndarray
    lag_gram: np.ndarray
    last: np.ndarray
    label_inv: np.ndarray
    label_error: np.ndarray
    gram_error: float
    bins: int
    df: int
    covariances: np.ndarray | None


class MomentFit(NamedTuple):
    """AR(1) fit of a block from its moments.

    Attributes
    ----------
    beta : ndarray, shape (p, v)
    sigma2 : ndarray, shape (v,)
    label : ndarray, shape (v,)
        Quantised rho, ``trunc(rho * bins) / bins``.
    redo : ndarray of bool, shape (v,)
        Voxels whose values here are not trustworthy (error bound over
        :data:`MAX_RELATIVE_ERROR`, zero residual, non-finite data): refit
        them exactly.
    """

    beta: np.ndarray
    sigma2: np.ndarray
    label: np.ndarray
    redo: np.ndarray


def _inverse_and_error(mats: np.ndarray, n_terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverses of Gram matrices ``(..., p, p)``, their condition numbers and bounds of their rounding.

    Each ``M = A' A`` was summed from ``n_terms`` products; its entries are
    then off by at most ``n_terms * eps * |A|'|A|`` (Higham's ``gamma_n``),
    whose spectral norm is at most ``trace(M)``. The inverse's relative error
    is within ``cond(M)`` times the relative error of ``M`` and of the
    eigendecomposition: ``eps * cond * (n_terms * trace / |M| + p)``.

    Returns
    -------
    inv : ndarray, shape (..., p, p)
    cond : ndarray, shape (...)
        ``inf`` for a singular matrix.
    error : ndarray, shape (...)
        The bound (relative).
    """
    values, vectors = np.linalg.eigh(mats)
    low, high = values[..., 0], values[..., -1]
    p = mats.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(low > 0, high / np.where(low > 0, low, 1.0), np.inf)
        inv = (vectors / np.where(values > 0, values, np.inf)[..., None, :]) @ np.swapaxes(vectors, -1, -2)
        spread = np.trace(mats, axis1=-2, axis2=-1) / np.where(high > 0, high, np.inf)
    return inv, cond, _EPS * cond * (n_terms * spread + p)


def _whitened_grams(Xs: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``(W_l Xs)' (W_l Xs)`` of every label, each from its whitened design (no cancellation).

    Parameters
    ----------
    Xs : ndarray, shape (n, p)
    rho : ndarray, shape (L,)

    Returns
    -------
    ndarray, shape (L, p, p)

    The moment identity ``G - l (K + K') + l^2 (G - x_last' x_last)`` gives
    the same matrices, but by cancellation: for ``l`` near 1 and smooth
    columns (drifts, the constant) it loses digits that no bound sees.
    """

    out = np.empty((rho.size, Xs.shape[1], Xs.shape[1]))
    for k, value in enumerate(rho):
        whitened = whiten(Xs, value)
        out[k] = whitened.T @ whitened
    return out


def _build(X: np.ndarray, bins: int) -> MomentDesign | None:
    n, p = X.shape
    if n <= p + 1:
        return None
    scale = np.sqrt(np.einsum("tp,tp->p", X, X))
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        return None
    Xs = X / scale
    lagged = np.zeros_like(Xs)
    lagged[1:] += Xs[:-1]  # (L Xs)_t = x_{t-1}
    lagged[:-1] += Xs[1:]  # (L' Xs)_t = x_{t+1}
    gram = Xs.T @ Xs
    gram_inv, gram_cond, gram_error = _inverse_and_error(gram, n)
    if not gram_cond <= MAX_CONDITION:
        return None
    lag = Xs[1:].T @ Xs[:-1]
    lag = 0.5 * (lag + lag.T)
    last = Xs[n - 1].copy()
    rho = ar1_grid(bins, n)
    label_inv, _, label_error = _inverse_and_error(_whitened_grams(Xs, rho), n)
    return MomentDesign(scale, np.ascontiguousarray(np.hstack([Xs, lagged])), gram_inv, lag, last,
                        label_inv, label_error, float(gram_error), int(bins), n - p,
                        _covariances(X, scale, label_inv, float(np.abs(rho).max())))


def _whitening_condition(n: int, lmax: float) -> float:
    """A bound of ``cond(W)``, ``W = I - l L`` (n x n), over ``|l| <= lmax``.

    ``|W| <= 1 + lmax`` and ``W^-1 = sum_k l^k L^k`` has norm at most
    ``sum_{k < n} lmax^k`` (``n`` for ``lmax <= 1``; at most ``e n`` for the
    grid's ``lmax <= n / (n - 1)``).
    """
    geometric = float(n) if lmax <= 1 else float(np.expm1(n * np.log(lmax)) / (lmax - 1))
    return (1 + lmax) * geometric


def _covariances(X: np.ndarray, scale: np.ndarray, label_inv: np.ndarray, lmax: float = 1.0
                 ) -> np.ndarray | None:
    """``label_inv`` unscaled, or None when it may differ from nilearn's pinv-based covariances.

    ``cond(W X) <= cond(W) cond(X)`` (:func:`_whitening_condition`, ``|l| <=
    lmax``; twice that here); far below ``1 / (max(n, p) eps)`` the
    pseudo-inverse keeps every singular value and equals the inverse used here.
    """
    n, p = X.shape
    sv = np.linalg.svd(X, compute_uv=False)
    bound = 2 * _whitening_condition(n, lmax) * (sv[0] / sv[-1]) if sv[-1] > 0 else np.inf
    if not bound <= _CUTOFF_MARGIN / (max(n, p) * _EPS):
        return None
    covariances = label_inv / np.outer(scale, scale)[None]
    covariances.setflags(write=False)  # cached with the design and shared by every fit of it
    return covariances


def design_key(X: np.ndarray) -> bytes:
    """A digest of a design's shape and values: the key of the per-process design caches."""
    return hashlib.sha1(repr(X.shape).encode() + np.ascontiguousarray(X).tobytes()).digest()


#: :func:`prepare`'s cache: (design digest, bins) -> MomentDesign or None, the last eight used.
_CACHE: LRUCache[MomentDesign | None] = LRUCache(8)


def prepare(X: np.ndarray, bins: int, key: bytes | None = None) -> MomentDesign | None:
    """The design's part of the moment fit (cached per process), or None when it does not apply.

    Parameters
    ----------
    X : ndarray, shape (n, p)
    bins : int
        AR(1) quantisation bins (>= 1).
    key : bytes, optional
        ``design_key(X)``, when the caller has it already.

    Returns
    -------
    MomentDesign or None
        None for a design with a zero or non-finite column, ``n <= p + 1``,
        or a scaled Gram matrix of condition number over :data:`MAX_CONDITION`
        (rank deficient designs included): fit those exactly.
    """
    X = np.asarray(X, dtype=np.float64)
    return _CACHE.get((key or design_key(X), int(bins)), lambda: _build(X, int(bins)))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot products ``sum_i a[i, v] b[i, v]``."""
    return np.einsum("iv,iv->v", a, b)


#: Rows per step of :func:`block_moments`: a few MiB of float64 at HCP column widths, so each step's
#: rows are read by the GEMM and both dot products while they are still in cache.
MOMENT_ROWS = 128


def block_moments(rows: Callable[[int, int, np.ndarray], None], n: int, v: int, stacked: np.ndarray,
                  step: int = MOMENT_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The moments of a scaled block, streamed over its rows.

    Parameters
    ----------
    rows : callable ``rows(start, stop, out)``
        Writes rows ``start:stop`` of the scaled float64 block into ``out``,
        shape (stop - start, v) (e.g. :func:`daskglm.kernels.scaling.scaled_rows`).
    n, v : int
        Shape of the block.
    stacked : ndarray, shape (n, 2p)
        :attr:`MomentDesign.stacked`.
    step : int
        Rows per step.

    Returns
    -------
    moments : ndarray, shape (2p, v)
        ``stacked' Y``.
    s0, s1, y_last : ndarray, shape (v,)
        ``sum_t y_t^2``, ``sum_t y_t y_{t-1}``, ``y_{n-1}``.

    The whole scaled block is never held: one ``(step, v)`` buffer is
    refilled, which saves a float64 copy of the block (27 MiB at HCP size)
    and two passes over it from memory.
    """
    buffer = np.empty((min(step, n), v))
    product = np.empty((stacked.shape[1], v))
    moments = np.zeros((stacked.shape[1], v))
    s0, s1, last = np.zeros(v), np.zeros(v), np.empty(v)
    for start in range(0, n, step):
        stop = min(start + step, n)
        y = buffer[: stop - start]
        rows(start, stop, y)
        np.matmul(stacked[start:stop].T, y, out=product)
        moments += product
        s0 += _dot(y, y)
        s1 += _dot(y[1:], y[:-1])
        if start:
            s1 += last * y[0]  # the product across the steps' boundary
        last[...] = y[-1]
    return moments, s0, s1, last


def ar1_fit_moments(Y: np.ndarray, design: MomentDesign,
                    rows: Callable[[int, int, np.ndarray], None] | None = None) -> MomentFit:
    """nilearn's AR(1) fit of a block, from the block's moments.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        The block, already scaled (``scale_signal``); or, with ``rows``, the
        raw block (only its shape is used).
    design : MomentDesign
        From :func:`prepare` with the block's design.
    rows : callable, optional
        See :func:`block_moments`; default: rows of ``Y`` as float64.

    Returns
    -------
    MomentFit
        Values for every voxel; those flagged ``redo`` must be refitted exactly.
    """
    n, v = np.shape(Y)
    if rows is None:
        rows = partial(scaled_rows, Y, None)  # the rows as they are, as float64
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # non-finite voxels: flagged
        return _fit(n, block_moments(rows, n, v, design.stacked), design)


def _solve_by_label(inverses: np.ndarray, index: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``out[:, v] = inverses[index[v]] @ rhs[:, v]``: one small GEMM per label present.

    Parameters
    ----------
    inverses : ndarray, shape (L, p, p)
    index : ndarray of int, shape (v,)
        Values in [0, L).
    rhs : ndarray, shape (p, v)

    Returns
    -------
    ndarray, shape (p, v)

    Gathering ``inverses[index]`` (v p x p matrices) for one batched product
    moves ``p`` times more memory than the data; a block holds a few dozen
    labels, so sorting its voxels by label and multiplying each run of
    columns costs a fraction of that.
    """
    if index.size == 0:
        return np.empty_like(rhs)
    sorter = np.argsort(index, kind="stable")
    sorted_index = index[sorter]
    starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
    stops = np.r_[starts[1:], sorted_index.size]
    grouped = rhs[:, sorter]
    out = np.empty_like(grouped)
    for start, stop in zip(starts, stops):
        out[:, start:stop] = inverses[sorted_index[start]] @ grouped[:, start:stop]
    result = np.empty_like(out)
    result[:, sorter] = out
    return result


def _fit(n: int, moments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
         design: MomentDesign) -> MomentFit:
    p = design.scale.shape[0]
    bins = design.bins
    half = (design.label_inv.shape[0] - 1) // 2  # ar1_half_width(bins, n)
    stacked_y, s0, s1, y_last = moments
    A, B = stacked_y[:p], stacked_y[p:]

    # OLS residual moments, then rho as yule_walker computes it (0 without residuals).
    b_ols = design.gram_inv @ A
    r0 = s0 - _dot(b_ols, A)
    r1 = s1 - _dot(b_ols, B) + _dot(b_ols, design.lag_gram @ b_ols)
    usable = r0 > 0
    safe_r0 = np.where(usable, r0, 1.0)
    rho = np.where(usable, (r1 / ((n - 1) * n)) / (safe_r0 / (n * n)), 0.0)
    ols_error = design.gram_error * s0 / safe_r0
    label = ar1_labels(rho, bins)
    k = np.rint(label * bins)
    in_table = np.abs(k) <= half  # False for NaN; beyond the grid only for rounding-noise residuals
    index = np.where(in_table, k, 0.0).astype(np.intp) + half

    # Whitened refit with the label value.
    gram_y = A - label * B + label**2 * (A - design.last[:, None] * y_last)  # X' W' W y
    beta_s = _solve_by_label(design.label_inv, index, gram_y)
    energy = s0 - 2 * label * s1 + label**2 * (s0 - y_last * y_last)  # |W y|^2
    rss = energy - _dot(gram_y, beta_s)
    # rounding relative to the RSS: that of the whitened system, and that of the terms |W y|^2
    # (and X' W' W y) are summed from, which cancel for labels near +-1
    terms = s0 + 2 * np.abs(label * s1) + label**2 * (s0 + y_last * y_last)
    fit_error = design.label_error[index] * terms / np.where(rss > 0, rss, 1.0)
    trusted = (usable & in_table & (rss > 0) & (ols_error <= MAX_RELATIVE_ERROR)
               & (fit_error <= MAX_RELATIVE_ERROR))
    return MomentFit(beta_s / design.scale[:, None], rss / design.df, label, ~trusted)

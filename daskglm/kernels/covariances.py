"""Per-label tables of the noise model: functions of the design and the labels only.

The block kernels (:mod:`daskglm.kernels.regression`) give each voxel a noise label: an
AR(1) value on the grid :func:`daskglm.kernels.ar1_moments.ar1_grid`, or for AR(p>1)
the index of a KMeans cluster of all voxels (:func:`merge_ar_clusters` turns
the clustering into nilearn's labels, on the client). The contrasts need, for
every label, the normalised covariance of beta ``pinv(WX) pinv(WX)'`` of the
whitened design ``WX`` (nilearn's ``normalized_cov_beta``, with scipy's
pseudo-inverse cutoff), computed once per design rather than per block.
Numpy/scipy only, like the kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import ar1_moments as _ar1_moments
from .regression import residual_dof
from .whitening import whitened_pinv

__all__ = [
    "LabelCovariance",
    "label_covariance",
    "label_covariances",
    "ar1_label_covariances",
    "merge_ar_clusters",
    "gram_inverses",
]


class LabelCovariance(NamedTuple):
    """Normalised covariance of beta for one noise label.

    Attributes
    ----------
    cov : ndarray, shape (p, p)
        ``pinv(WX) @ pinv(WX).T`` with ``WX`` the whitened design.
    dof : int
        ``residual_dof(X)``.
    """

    cov: np.ndarray
    dof: int


def label_covariance(X: np.ndarray, coeffs: np.ndarray | float | None = None) -> LabelCovariance:
    """Normalised covariance of beta for one AR coefficient vector.

    Parameters
    ----------
    X : ndarray, shape (n, p)
    coeffs : float or ndarray, shape (order,), optional
        AR coefficients of the label (AR(1): the label value); None, empty or
        zeros for OLS.

    Returns
    -------
    LabelCovariance
        ``cov`` (p, p) = pinv(WX) pinv(WX)', ``dof`` = ``residual_dof(X)``.
    """
    X = np.asarray(X, dtype=np.float64)
    c = np.zeros(0) if coeffs is None else np.atleast_1d(np.asarray(coeffs, dtype=np.float64))
    pinv = whitened_pinv(X, c)[1]
    return LabelCovariance(pinv @ pinv.T, residual_dof(X))


def label_covariances(X: np.ndarray, label_values: np.ndarray) -> np.ndarray:
    """``label_covariance(X, c).cov`` for every row ``c`` of a label table.

    Parameters
    ----------
    X : ndarray, shape (n, p)
    label_values : ndarray, shape (L, order)
        AR coefficients per label (``order == 0``: OLS).

    Returns
    -------
    ndarray, shape (L, p, p)
        ``pinv(WX) pinv(WX)'`` (scipy's pinv cutoff), from one batched SVD
        per 64 labels.
    """
    X = np.asarray(X, dtype=np.float64)
    coeffs = np.asarray(label_values, dtype=np.float64).reshape(len(label_values), -1)
    n, p = X.shape
    out = np.empty((len(coeffs), p, p))
    for lo in range(0, len(coeffs), 64):  # whitened designs of 64 labels at a time, one batched SVD
        c = coeffs[lo:lo + 64]
        wx = np.repeat(X[None], len(c), axis=0)
        for k in range(1, c.shape[1] + 1):
            wx[:, k:] -= c[:, k - 1, None, None] * X[None, :-k]
        out[lo:lo + len(c)] = gram_inverses(wx)[0]
    return out


def gram_inverses(wx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pinv(WX) pinv(WX)'`` of a batch of whitened designs, from one batched SVD.

    Parameters
    ----------
    wx : ndarray, shape (L, n, p)

    Returns
    -------
    cov : ndarray, shape (L, p, p)
        ``V diag(1 / s^2) V'`` over the singular values above scipy.linalg.pinv's
        cutoff (nilearn's): ``max(n, p) * eps * s_max``.
    log_det : ndarray, shape (L,)
        ``log`` of the pseudo-determinant of ``WX' WX`` (``sum 2 log s`` over the same values).
    """
    n, p = wx.shape[1:]
    _, sv, vt = np.linalg.svd(wx, full_matrices=False)
    keep = sv > (max(n, p) * np.finfo(np.float64).eps) * sv[:, :1]
    safe = np.where(keep, sv, 1.0)
    inv2 = np.where(keep, 1.0 / safe ** 2, 0.0)
    return np.einsum("lki,lk,lkj->lij", vt, inv2, vt), 2 * np.log(safe).sum(axis=1)


def ar1_label_covariances(X: np.ndarray, bins: int) -> np.ndarray:
    """`label_covariances` on nilearn's AR(1) grid ``ar1_grid(bins, n)`` (``k / bins``,
    ``|k| <= K = ar1_half_width(bins, n)``: ``K = bins`` unless the run has at most ``bins + 1``
    scans, whose labels can go beyond +-1).

    The moment fit's whitened inverses (:mod:`daskglm.kernels.ar1_moments`) serve the
    labels where their rounding-error bound is at most
    :data:`daskglm.kernels.ar1_moments.MAX_COVARIANCE_ERROR` (all but the few labels
    next to ``|rho| = 1`` for FIAC and HCP designs: 2 of 201 for the ``hcp``
    benchmark's design, actual errors there ~1e-14); the others, and
    every label of a design the moments refuse, take one SVD per label.

    Parameters
    ----------
    X : ndarray, shape (n, p)
        Any shape (``n <= p`` included).
    bins : int

    Returns
    -------
    ndarray, shape (2 K + 1, p, p)
        Row ``i`` is the label ``ar1_grid(bins, n)[i]``
        (:func:`daskglm.kernels.ar1_moments.ar1_label_index`).
    """
    X = np.asarray(X, dtype=np.float64)
    grid = _ar1_moments.ar1_grid(bins, X.shape[0])[:, None]
    design = _ar1_moments.prepare(X, bins)
    if design is None or design.covariances is None:
        return label_covariances(X, grid)
    out = np.array(design.covariances)
    redo = np.flatnonzero(~(design.label_error <= _ar1_moments.MAX_COVARIANCE_ERROR))
    if redo.size:
        out[redo] = label_covariances(X, grid[redo])
    return out


def merge_ar_clusters(centers: np.ndarray, voxel_cluster: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's AR(p>1) labels from a KMeans clustering of all voxels.

    nilearn names each cluster by its centre rounded to 2 decimals
    (``"0.12_-0.05"``); clusters with equal names merge into one label whose
    coefficients are the centre of the first voxel (in voxel order) carrying
    it. Client-side helper (needs the cluster of every voxel).

    Parameters
    ----------
    centers : ndarray, shape (K, order)
        ``KMeans.cluster_centers_``.
    voxel_cluster : ndarray of int, shape (V,)
        ``KMeans.labels_``.

    Returns
    -------
    label_index : ndarray of int, shape (V,)
        Index of each voxel's label (for :func:`daskglm.kernels.regression.refit_block`).
    coeffs : ndarray, shape (L, order)
        Coefficients of each label.
    names : ndarray of str, shape (L,)
        nilearn's label strings, sorted.
    """
    centers = np.asarray(centers, dtype=np.float64)
    voxel_cluster = np.asarray(voxel_cluster)
    cluster_names = np.array(["_".join(map(str, np.round(c, 2))) for c in centers])
    names, first, label_index = np.unique(cluster_names[voxel_cluster], return_index=True, return_inverse=True)
    return label_index, centers[voxel_cluster[first]], names

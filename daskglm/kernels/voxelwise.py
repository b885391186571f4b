"""Voxel-wise fit diagnostics of one block (numpy only): nilearn's RegressionResults attributes.

nilearn's ``FirstLevelModel(minimize_memory=False)`` keeps a
``RegressionResults`` per noise label and exposes ``residuals``,
``predicted`` and ``r_square`` images. With ``WX`` the design whitened by the
voxel's label, ``WY`` the whitened scaled signal and ``Y`` the scaled (not
whitened) signal, nilearn defines::

    predicted = WX @ beta
    residuals = Y - predicted
    r_square  = var(predicted, axis=0) / var(WY, axis=0)

(for OLS, ``WX = X`` and ``WY = Y``). This module recomputes them per voxel
block from the stored data and the stored fit, so nothing of size
``(n_scans, n_voxels)`` is kept between fit and use.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from . import arma
from .regression import ARMA11, check_design
from .scaling import ScalingMode, scale_signal
from .whitening import whiten

__all__ = ["VOXELWISE_ATTRIBUTES", "voxelwise_block"]

VOXELWISE_ATTRIBUTES = ("residuals", "predicted", "r_square")

Attribute = Literal["residuals", "predicted", "r_square"]


def _whiten(A: np.ndarray, X: np.ndarray, label: int, value: np.ndarray, noise_model: str) -> np.ndarray:
    """``A`` whitened by one label: ARMA(1,1)'s grid row ``label`` (the design's cached factors), else
    the label's AR coefficients ``value`` (none: OLS)."""
    if noise_model == ARMA11:
        return arma.whiten_label(A, X, label)
    return whiten(A, value) if value.size else np.asarray(A)


def voxelwise_block(
    Y: np.ndarray,
    X: np.ndarray,
    beta: np.ndarray,
    label_index: np.ndarray,
    label_value: np.ndarray,
    attribute: Attribute,
    signal_scaling: ScalingMode = 0,
    scaling_mean: float | np.ndarray | None = None,
    noise_model: str = "ar1",
) -> np.ndarray:
    """One of nilearn's voxel-wise regression attributes for a block.

    Parameters
    ----------
    Y : ndarray, shape (n, v)
        Raw block as stored (scaled here as in the fit).
    X : ndarray, shape (n, p)
    beta : ndarray, shape (p, v)
    label_index : ndarray of int, shape (v,)
        Row of ``label_value`` that applies to each voxel.
    label_value : ndarray, shape (L, order)
        AR coefficients per label (``order == 0`` for OLS); ``(a, b)`` for ``"arma11"``.
    attribute : {"residuals", "predicted", "r_square"}
    signal_scaling, scaling_mean
        As in the fit (see :func:`daskglm.kernels.scaling.scale_signal`).
    noise_model : str, default="ar1"
        The fit's: ``"arma11"`` whitens with :func:`daskglm.kernels.arma.whiten_label` (``label_value``
        is :func:`daskglm.kernels.arma.grid`), any other name with the AR coefficients of ``label_value``.

    Returns
    -------
    ndarray, float64
        Shape (n, v) for ``residuals`` and ``predicted``, (1, v) for
        ``r_square`` (nilearn's masker turns it into a one-volume 4D image).
    """
    if attribute not in VOXELWISE_ATTRIBUTES:
        raise ValueError(f"attribute must be one of {VOXELWISE_ATTRIBUTES}; got {attribute!r}")
    X = check_design(Y, X)
    beta = np.asarray(beta, dtype=np.float64)
    label_index = np.asarray(label_index).astype(np.intp)
    label_value = np.asarray(label_value, dtype=np.float64)
    n, v = np.shape(Y)
    if beta.shape != (X.shape[1], v) or label_index.shape != (v,):
        raise ValueError(
            f"need beta ({X.shape[1]}, {v}) and label_index ({v},); got {beta.shape} and {label_index.shape}"
        )
    Ys, _ = scale_signal(Y, signal_scaling, scaling_mean)
    out = np.empty((1 if attribute == "r_square" else n, v))
    for label in np.unique(label_index):
        cols = np.flatnonzero(label_index == label)
        coeffs = label_value[label]
        wx = _whiten(X, X, label, coeffs, noise_model)
        predicted = wx @ beta[:, cols]
        if attribute == "predicted":
            out[:, cols] = predicted
        elif attribute == "residuals":
            out[:, cols] = Ys[:, cols] - predicted
        else:
            wy = _whiten(Ys[:, cols], X, label, coeffs, noise_model)
            out[0, cols] = np.var(predicted, axis=0) / np.var(wy, axis=0)
    return out

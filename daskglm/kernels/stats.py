"""Contrast and fixed-effects statistics on per-voxel GLM results.

Pure numpy/scipy functions reproducing the numbers of nilearn 0.14
(``nilearn.glm.contrasts``, ``nilearn.glm._utils.z_score``). Every function is
vectorised over voxels; voxels fitted with different noise models (AR labels)
are handled through a stack of normalised covariances ``cov (L, p, p)`` and a
per-voxel index ``label_index (v,)`` into it.

Statistic definitions (each defined once, here):

* t = effect / sqrt(max(variance, TINY)), one-sided upper-tail p from
  Student's t with ``min(dof, DOF_MAX)`` degrees of freedom.
* F = sum(effect**2) / q / max(variance, TINY) with ``effect`` the contrast
  whitened by ``(c cov c')^(-1/2)`` and ``variance`` the dispersion sigma2
  (this is what nilearn reports as the F contrast's variance).
* z from p as nilearn's ``z_score``: ``norm.isf`` of p clipped to
  [1e-300, 1 - 1e-16], replaced by ``norm.ppf`` of the (clipped) lower-tail
  probability wherever the first is negative.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import special

__all__ = [
    "TINY",
    "DOF_MAX",
    "FIXED_EFFECTS_TINY",
    "ContrastStats",
    "FixedEffects",
    "z_score",
    "contrast_stats",
    "pad_contrast",
    "t_contrast",
    "t_effect",
    "f_contrast",
    "f_effect",
    "combine_runs",
    "fixed_effects",
]

#: Floor of the contrast variance in t and F (nilearn ``DEF_TINY``).
TINY = 1e-50
#: Degrees of freedom are capped at this value for p-values (``DEF_DOFMAX``).
DOF_MAX = 1e10
#: Floor of the per-run variances in ``fixed_effects`` (nilearn's 1e-16).
FIXED_EFFECTS_TINY = 1e-16
#: Degrees of freedom assumed per run when ``fixed_effects`` gets no dofs.
DEFAULT_RUN_DOF = 100
_P_MIN, _P_MAX = 1e-300, 1.0 - 1e-16


class ContrastStats(NamedTuple):
    """Per-voxel statistics of one contrast.

    Attributes
    ----------
    effect : ndarray, shape (q, v)
        ``c @ beta`` (t, q = 1) or the whitened effect (F).
    variance : ndarray, shape (v,)
        Variance of the t effect; the dispersion sigma2 for F.
    stat : ndarray, shape (v,)
        t or F statistic.
    p_value : ndarray, shape (v,)
        Upper-tail p-value.
    z_score : ndarray, shape (v,)
        z equivalent of ``p_value``.
    dof : float
        Residual degrees of freedom.
    stat_type : str
        ``"t"`` or ``"F"``.
    """

    effect: np.ndarray
    variance: np.ndarray
    stat: np.ndarray
    p_value: np.ndarray
    z_score: np.ndarray
    dof: float
    stat_type: str


class FixedEffects(NamedTuple):
    """Fixed-effects combination (nilearn ``compute_fixed_effects`` outputs).

    Attributes
    ----------
    effect : ndarray, shape (v,) or (q, v)
    variance : ndarray, shape (v,)
    stat : ndarray, shape (v,)
    z_score : ndarray, shape (v,)
    """

    effect: np.ndarray
    variance: np.ndarray
    stat: np.ndarray
    z_score: np.ndarray


def z_score(p_value: np.ndarray, lower_tail: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """z-scores of upper-tail p-values, precise in both tails (nilearn's ``z_score``).

    Parameters
    ----------
    p_value : ndarray, shape (v,)
        Upper-tail probabilities (survival function).
    lower_tail : callable, optional
        Given a boolean mask ``(v,)``, the lower-tail probabilities (cdf) of
        the same statistic at those voxels: used where the upper tail gives a
        negative z, which keeps precision for p near 1 (nilearn evaluates the
        cdf everywhere; the values are the same).

    Returns
    -------
    ndarray, shape (v,)
        Finite z-scores (|z| <= about 37.5).
    """
    # norm.isf(p) is -ndtri(p) and norm.ppf(p) is ndtri(p) in scipy, bit for bit.
    z = -special.ndtri(np.clip(np.atleast_1d(p_value), _P_MIN, _P_MAX))
    if lower_tail is not None:
        low = z < 0
        z[low] = special.ndtri(np.clip(lower_tail(low), _P_MIN, _P_MAX))
    return z


def contrast_stats(effect: np.ndarray, variance: np.ndarray, dof: float, stat_type: str) -> ContrastStats:
    """Statistic, p-value and z-score from an effect and its variance.

    Parameters
    ----------
    effect : ndarray, shape (q, v) or (v,)
        Contrast effect (q = 1 for t).
    variance : ndarray, shape (v,)
        Variance (t) or dispersion (F).
    dof : float
        Residual degrees of freedom (capped at ``DOF_MAX``).
    stat_type : {"t", "F"}

    Returns
    -------
    ContrastStats
    """
    effect = np.atleast_2d(np.asarray(effect, dtype=np.float64))
    variance = np.asarray(variance, dtype=np.float64)
    if variance.ndim != 1 or variance.shape[0] != effect.shape[1]:
        raise ValueError(
            f"variance must have shape ({effect.shape[1]},) to match effect {effect.shape}; got {variance.shape}"
        )
    q = effect.shape[0]
    if stat_type == "t" and q != 1:
        raise ValueError(f"a t contrast has a single row; got an effect of shape {effect.shape}")
    dof = float(dof)
    df = min(dof, DOF_MAX)
    floor = np.maximum(variance, TINY)
    # scipy.stats' t.sf / t.cdf are special.stdtr(df, -x) / stdtr(df, x), and f.sf / f.cdf are
    # fdtrc / fdtr, bit for bit; called directly they skip scipy.stats' argument handling, and
    # the cdf (for the z of p > 1/2) is evaluated only where it is used.
    if stat_type == "t":
        stat = effect[0] / np.sqrt(floor)
        p = special.stdtr(df, -stat)
        z = z_score(p, lambda low: special.stdtr(df, stat[low]))
    elif stat_type == "F":
        stat = np.sum(effect**2, axis=0) / q / floor
        p = special.fdtrc(q, df, stat)
        z = z_score(p, lambda low: special.fdtr(q, df, stat[low]))
    else:
        raise ValueError(f"stat_type must be 't' or 'F'; got {stat_type!r}")
    return ContrastStats(effect, variance, stat, p, z, dof, stat_type)


def pad_contrast(con: np.ndarray, p: int, stat_type: str | None = None) -> np.ndarray:
    """Zero-pad a contrast to ``p`` columns, warning as nilearn does.

    Parameters
    ----------
    con : ndarray, shape (k,) or (q, k)
        Contrast with ``k <= p`` columns.
    p : int
        Number of design columns.
    stat_type : {"t", "F"}, optional
        Used for the messages; default "t" for 1-D ``con``, "F" otherwise.

    Returns
    -------
    ndarray, shape (p,) or (q, p)
        Float64 contrast, same number of dimensions as ``con``.

    Raises
    ------
    ValueError
        If ``con`` has more than ``p`` columns.
    """
    con = np.asarray(con, dtype=np.float64)
    if stat_type is None:
        stat_type = "t" if con.ndim == 1 else "F"
    k = con.shape[-1]
    if k > p:
        if stat_type == "t":
            raise ValueError(f"t contrasts should be of length P={p}, but it has length {k}.")
        raise ValueError(f"F contrasts should have {p} columns, but it has {k}.")
    if k < p:
        if stat_type == "t":
            msg = f"t contrasts should be of length P={p}, but it has length {k}. "
        else:
            msg = f"F contrasts should have {p} columns, but it has only {k}. "
        warnings.warn(msg + "The rest of the contrast was padded with zeros.", UserWarning, stacklevel=2)
        pad = [(0, 0)] * (con.ndim - 1) + [(0, p - k)]
        con = np.pad(con, pad)
    return con


def _check_labels(beta: np.ndarray, cov: np.ndarray, label_index: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim == 2:
        cov = cov[None]
    p, v = beta.shape
    if cov.shape[1:] != (p, p):
        raise ValueError(f"cov must have shape (L, {p}, {p}) to match beta {beta.shape}; got {cov.shape}")
    if label_index is None:
        if cov.shape[0] != 1:
            raise ValueError(f"label_index is required with {cov.shape[0]} covariances")
        return cov, np.zeros(v, dtype=np.intp)
    label_index = np.asarray(label_index)
    if label_index.shape != (v,):
        raise ValueError(f"label_index must have shape ({v},); got {label_index.shape}")
    if v and (label_index.min() < 0 or label_index.max() >= cov.shape[0]):
        raise ValueError(
            f"label_index values must lie in [0, {cov.shape[0]}); got range "
            f"[{label_index.min()}, {label_index.max()}]"
        )
    return cov, label_index


def t_contrast(
    con: np.ndarray,
    beta: np.ndarray,
    sigma2: np.ndarray,
    cov: np.ndarray,
    label_index: np.ndarray | None,
    dof: float,
) -> ContrastStats:
    """t contrast per voxel (nilearn ``compute_contrast(..., "t")``).

    :func:`contrast_stats` of :func:`t_effect`.

    Parameters
    ----------
    con, beta, sigma2, cov, label_index
        As in `t_effect`.
    dof : float
        Residual degrees of freedom.

    Returns
    -------
    ContrastStats
    """
    return contrast_stats(*t_effect(con, beta, sigma2, cov, label_index), dof, "t")


def t_effect(
    con: np.ndarray,
    beta: np.ndarray,
    sigma2: np.ndarray,
    cov: np.ndarray,
    label_index: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Effect and variance of a t contrast per voxel, without the statistics.

    (The statistics of runs combined by fixed effects are those of the sum:
    :func:`combine_runs` needs no run's own.)

    Parameters
    ----------
    con : ndarray, shape (k,) or (1, k), k <= p
        Contrast vector (zero-padded to p with a warning).
    beta : ndarray, shape (p, v)
    sigma2 : ndarray, shape (v,)
        Dispersion of each voxel.
    cov : ndarray, shape (L, p, p) or (p, p)
        Normalised covariance of beta of each label (``label_covariance``).
    label_index : ndarray of int, shape (v,), or None
        Row of ``cov`` for each voxel (None: a single covariance).

    Returns
    -------
    effect : ndarray, shape (1, v)
        c beta.
    variance : ndarray, shape (v,)
        c cov c' sigma2; NaN where that is negative (a design with fewer
        scans than columns has a dispersion ``<= 0``): nilearn's variance is
        the square of ``sqrt(c cov c' sigma2)``. No warning here (nilearn's
        ``invalid value encountered in sqrt`` is given by
        :func:`daskglm.glm.contrasts.run_contrast`).
    """
    beta = np.asarray(beta, dtype=np.float64)
    con = np.asarray(con, dtype=np.float64)
    if con.size == 0:
        raise ValueError(f"t contrasts cannot be empty: got {con}")
    if con.ndim == 2 and con.shape[0] != 1 or con.ndim > 2:
        raise ValueError(f"t contrasts should have only one row: got {con}.")
    c = pad_contrast(con.ravel(), beta.shape[0], "t")
    cov, label_index = _check_labels(beta, cov, label_index)
    ccc = np.maximum(np.einsum("i,lij,j->l", c, cov, c), 0.0)
    effect = (c @ beta)[None]
    variance = ccc[label_index] * sigma2
    variance[variance < 0] = np.nan  # nilearn's sqrt of a negative variance
    return effect, variance


def _inverse_sqrt(mat: np.ndarray) -> np.ndarray:
    """``mat^(-1/2)`` of symmetric PSD matrices (L, q, q); null directions -> 0."""
    w, vec = np.linalg.eigh(mat)
    tol = w.max(axis=-1, keepdims=True) * mat.shape[-1] * np.finfo(np.float64).eps
    inv_sqrt = np.where(w > tol, 1.0 / np.sqrt(np.where(w > tol, w, 1.0)), 0.0)
    return (vec * inv_sqrt[:, None, :]) @ np.swapaxes(vec, -1, -2)


def f_contrast(
    con: np.ndarray,
    beta: np.ndarray,
    sigma2: np.ndarray,
    cov: np.ndarray,
    label_index: np.ndarray | None,
    dof: float,
) -> ContrastStats:
    """F contrast per voxel (nilearn ``compute_contrast(..., "F")``).

    :func:`contrast_stats` of :func:`f_effect`: F = |effect|^2 / q / sigma2.

    Parameters
    ----------
    con, beta, sigma2, cov, label_index
        As in `f_effect`.
    dof : float
        Residual degrees of freedom.

    Returns
    -------
    ContrastStats
    """
    return contrast_stats(*f_effect(con, beta, sigma2, cov, label_index), dof, "F")


def f_effect(
    con: np.ndarray,
    beta: np.ndarray,
    sigma2: np.ndarray,
    cov: np.ndarray,
    label_index: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Effect and variance of an F contrast per voxel, without the statistics.

    Parameters
    ----------
    con : ndarray, shape (q, k) or (k,), k <= p
        Contrast matrix (zero-padded to p columns with a warning).
    beta, sigma2, cov, label_index
        As in `t_effect`.

    Returns
    -------
    effect : ndarray, shape (q, v)
        (c cov_l c')^(-1/2) c beta (symmetric inverse square root; a
        singular c cov c' uses its pseudo-inverse where nilearn fails).
    variance : ndarray, shape (v,)
        sigma2.
    """
    beta = np.asarray(beta, dtype=np.float64)
    con = np.atleast_2d(pad_contrast(con, beta.shape[0], "F"))
    cov, label_index = _check_labels(beta, cov, label_index)
    ccc = np.einsum("ai,lij,bj->lab", con, cov, con)
    root = _inverse_sqrt(0.5 * (ccc + np.swapaxes(ccc, -1, -2)))
    effect = np.einsum("vab,bv->av", root[label_index], con @ beta)
    return effect, np.asarray(sigma2, dtype=np.float64)


def combine_runs(runs: Sequence[ContrastStats]) -> ContrastStats:
    """Fixed-effects combination of one contrast over runs, as nilearn's
    ``FirstLevelModel.compute_contrast`` with several runs.

    Effects and variances are summed, then scaled by ``1/R`` and ``1/R**2``;
    degrees of freedom are summed. For F contrasts this is nilearn's
    "approximate fixed effects on F statistics" (a warning is issued).
    Runs whose contrast is null must be left out by the caller (nilearn
    skips them with a warning).

    Parameters
    ----------
    runs : sequence of ContrastStats
        One per run, same ``stat_type`` and number of effect rows.

    Returns
    -------
    ContrastStats
    """
    if len(runs) == 0:
        raise ValueError("combine_runs needs at least one run; got 0")
    first = runs[0]
    effect = np.asarray(first.effect, dtype=np.float64)
    variance = np.asarray(first.variance, dtype=np.float64)
    dof = float(first.dof)
    for i, run in enumerate(runs[1:], start=1):
        if run.stat_type != first.stat_type:
            raise ValueError(
                f"The two contrasts do not have consistent type dimensions: run 0 is "
                f"{first.stat_type!r}, run {i} is {run.stat_type!r}"
            )
        if np.shape(run.effect)[0] != effect.shape[0]:
            raise ValueError(
                f"The two contrasts do not have compatible dimensions: run 0 has "
                f"{effect.shape[0]} rows, run {i} has {np.shape(run.effect)[0]}"
            )
        effect = effect + run.effect
        variance = variance + run.variance
        dof += float(run.dof)
    if first.stat_type == "F" and len(runs) > 1:
        warnings.warn("Running approximate fixed effects on F statistics.", UserWarning, stacklevel=2)
    scale = 1.0 / len(runs)
    return contrast_stats(effect * scale, variance * scale**2, dof, first.stat_type)


def fixed_effects(
    effects: np.ndarray,
    variances: np.ndarray,
    dofs: Sequence[float] | np.ndarray | None = None,
    precision_weighted: bool = False,
) -> FixedEffects:
    """Fixed effects of per-run effect/variance maps (nilearn
    ``compute_fixed_effects``).

    Variances are floored at ``FIXED_EFFECTS_TINY``. Unweighted:
    effect = mean(effects), variance = mean(variances) / R. Precision
    weighted: variance = 1 / sum(1 / variances),
    effect = sum(effects / variances) * variance. The statistic is a t
    (F when effects have q > 1 rows) with ``sum(dofs)`` degrees of freedom.

    Parameters
    ----------
    effects : ndarray, shape (R, v) or (R, q, v)
    variances : ndarray, shape (R, v)
    dofs : sequence of R floats, optional
        Default ``DEFAULT_RUN_DOF`` (100) per run, as nilearn.
    precision_weighted : bool, default False

    Returns
    -------
    FixedEffects
    """
    effects = np.asarray(effects, dtype=np.float64)
    variances = np.maximum(np.asarray(variances, dtype=np.float64), FIXED_EFFECTS_TINY)
    n_runs = effects.shape[0]
    if variances.shape[0] != n_runs:
        raise ValueError(
            f"The number of contrast images ({n_runs}) differs from the number of "
            f"variance images ({variances.shape[0]})."
        )
    if dofs is None:
        dofs = [DEFAULT_RUN_DOF] * n_runs
    elif len(dofs) != n_runs:
        raise ValueError(
            f"The number of degrees of freedom ({len(dofs)}) differs from the number of contrast images ({n_runs})."
        )
    if precision_weighted:
        weights = 1.0 / variances
        variance = 1.0 / np.sum(weights, axis=0)
        w = weights if effects.ndim == 2 else weights[:, None, :]
        effect = np.sum(effects * w, axis=0) * variance
    else:
        variance = np.mean(variances, axis=0) / n_runs
        effect = np.mean(effects, axis=0)
    stat_type = "F" if effect.ndim == 2 and effect.shape[0] > 1 else "t"
    res = contrast_stats(effect, variance, float(np.sum(dofs)), stat_type)
    return FixedEffects(effect, variance, res.stat, res.z_score)

"""Lazy contrasts over fitted runs, and their combination across runs.

A contrast of one run is computed per voxel block from the fit Dataset of
:func:`daskglm.glm.fit.fit_run` (``beta``, ``sigma2``, ``label_index`` and the
``cov`` table): its effect and variance by :func:`daskglm.kernels.stats.t_effect` /
``f_effect``. Several runs are combined per voxel block by
:func:`daskglm.kernels.stats.combine_runs` (nilearn's fixed effects inside
``compute_contrast``), which gives the statistics of the sum; a single run's
statistics come from :func:`daskglm.kernels.stats.contrast_stats` (what
``t_contrast`` / ``f_contrast`` give). Like nilearn, no statistic of a run is
computed when runs are combined: t/F survival functions are most of the cost
of a contrast. Everything stays lazy when the fit is lazy; with an in-memory
fit the same block functions run on whole arrays.

The result is an :class:`xarray.Dataset` with nilearn's output names::

    effect_size(voxel) or effect_size(contrast_row, voxel) for an F contrast
    effect_variance(voxel), stat(voxel), p_value(voxel), z_score(voxel)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..kernels import stats as _stats
from ..kernels.packing import contrast_rows, effect_rows, pack_contrast

__all__ = ["OUTPUT_TYPES", "run_contrast", "combine_contrasts", "contrast_dataset", "contrast_variables"]

OUTPUT_TYPES = ("z_score", "stat", "p_value", "effect_size", "effect_variance")


def _contrast_block(beta, sigma2, label_index, con, cov, stat_type):
    """Block task: effect and variance of one run's block packed as :func:`~daskglm.kernels.packing.effect_rows`
    (no statistics)."""
    kernel = _stats.t_effect if stat_type == "t" else _stats.f_effect
    effect, variance = kernel(con, beta, sigma2, cov, label_index.astype(np.intp))
    return effect_rows(np.atleast_2d(effect).shape[0]).pack(effect=effect, variance=variance)


def _stats_block(block, *, q, dof, stat_type):
    """Block task: the statistics of one run's :func:`~daskglm.kernels.packing.effect_rows` block, packed as
    :func:`~daskglm.kernels.packing.contrast_rows`."""
    rows = effect_rows(q).unpack(block)
    return pack_contrast(_stats.contrast_stats(rows["effect"], rows["variance"], dof, stat_type))


def _combine_block(*packed, q, dofs, stat_type):
    """Block task: fixed effects of the runs' blocks (each :func:`~daskglm.kernels.packing.effect_rows`),
    packed as :func:`~daskglm.kernels.packing.contrast_rows`."""
    # combine_runs reads the runs' effect, variance and dof only.
    runs = []
    for block, dof in zip(packed, dofs):
        rows = effect_rows(q).unpack(block)
        runs.append(_stats.ContrastStats(rows["effect"], rows["variance"], None, None, None, dof, stat_type))
    return pack_contrast(_stats.combine_runs(runs))


def _is_lazy(*arrays) -> bool:
    return any(isinstance(a, da.Array) for a in arrays)


class RunContrast:
    """A packed contrast of one run, :func:`~daskglm.kernels.packing.effect_rows` (effect and variance:
    no statistics yet), or of combined runs, :func:`~daskglm.kernels.packing.contrast_rows` (internal)."""

    def __init__(self, packed, q: int, dof: float, stat_type: str, template: xr.Dataset):
        self.packed, self.q, self.dof, self.stat_type, self.template = packed, q, dof, stat_type, template

    @property
    def has_stats(self) -> bool:
        return self.packed.shape[0] == contrast_rows(self.q).rows


def run_contrast(fit: xr.Dataset, con: np.ndarray, stat_type: str) -> RunContrast:
    """Contrast of one fitted run.

    Parameters
    ----------
    fit : xarray.Dataset
        From :func:`daskglm.glm.fit.fit_run` (lazy) or its computed/persisted form.
    con : ndarray, shape (q, p)
        Already padded to the design's ``p`` columns.
    stat_type : {"t", "F"}
        Type of the contrast: ``"t"`` uses the first row of ``con`` only.

    Returns
    -------
    RunContrast
        Effect and variance; the statistics come with :func:`contrast_dataset`
        (or, for several runs, with :func:`combine_contrasts`).

    Warns
    -----
    RuntimeWarning
        A t contrast of a run with fewer scans than design columns (attrs
        ``n_scans``): nilearn's ``invalid value encountered in sqrt``.
    """
    con = np.atleast_2d(np.asarray(con, dtype=np.float64))
    if stat_type not in ("t", "F"):
        raise ValueError(f"stat_type must be 't' or 'F'; got {stat_type!r}")
    beta, sigma2, label_index = (fit[name].data for name in ("beta", "sigma2", "label_index"))
    cov = np.asarray(fit["cov"].values)
    dof = float(fit.attrs["dof"])
    n_scans, p = fit.attrs.get("n_scans"), beta.shape[0]
    if stat_type == "t" and n_scans is not None and int(n_scans) < p:
        warnings.warn(
            f"invalid value encountered in sqrt: the dispersion of a run of {int(n_scans)} scans and {p} "
            "design columns is negative (RSS / (n_scans - n_regressors)), so its t contrast's variance, "
            "stat, p-value and z-score are NaN, as nilearn's",
            RuntimeWarning, stacklevel=2,
        )
    q = 1 if stat_type == "t" else con.shape[0]
    kwargs = dict(con=con[0] if stat_type == "t" else con, cov=cov, stat_type=stat_type)
    if _is_lazy(beta, sigma2, label_index):
        beta = da.asarray(beta)
        chunks = (beta.chunks[1],)
        packed = da.blockwise(
            _contrast_block, "rv", beta, "pv", da.asarray(sigma2).rechunk(chunks), "v",
            da.asarray(label_index).rechunk(chunks), "v",
            new_axes={"r": effect_rows(q).rows}, concatenate=True, dtype=np.float64, meta=np.empty((0, 0)),
            **kwargs,
        )
    else:
        packed = _contrast_block(np.asarray(beta), np.asarray(sigma2), np.asarray(label_index), **kwargs)
    return RunContrast(packed, q, dof, stat_type, fit)


def combine_contrasts(contrasts: Sequence[RunContrast]) -> RunContrast:
    """nilearn's fixed effects of per-run contrasts (sum, then scaled by 1 / n_runs).

    Parameters
    ----------
    contrasts : sequence of RunContrast
        Same ``q`` and ``stat_type`` for all.

    Returns
    -------
    RunContrast
        Summed dof, as nilearn.
    """
    if not contrasts:
        raise ValueError("no run contrast to combine (all runs had an all-zero contrast?)")
    if len(contrasts) == 1:
        return contrasts[0]
    first = contrasts[0]
    if any(c.q != first.q or c.stat_type != first.stat_type for c in contrasts):
        raise ValueError(
            "per-run contrasts must have the same type and number of rows; got "
            f"{[(c.stat_type, c.q) for c in contrasts]}"
        )
    dofs = [c.dof for c in contrasts]
    kwargs = dict(q=first.q, dofs=dofs, stat_type=first.stat_type)
    blocks = [c.packed[:effect_rows(first.q).rows] for c in contrasts]  # effect and variance (the first rows)
    if _is_lazy(*blocks):
        chunks = next(b.chunks for b in blocks if isinstance(b, da.Array))
        args = []
        for block in blocks:
            args += [da.asarray(block).rechunk(chunks), "rv"]
        packed = da.blockwise(_combine_block, "rv", *args, adjust_chunks={"r": contrast_rows(first.q).rows},
                              dtype=np.float64, meta=np.empty((0, 0)), **kwargs)
    else:
        packed = _combine_block(*blocks, **kwargs)
    return RunContrast(packed, first.q, float(sum(dofs)), first.stat_type, first.template)


def contrast_dataset(contrast: RunContrast) -> xr.Dataset:
    """The contrast as an xarray Dataset with nilearn's output names (lazy if the fit was).

    Parameters
    ----------
    contrast : RunContrast
        One run's contrast from :func:`run_contrast`, or several runs'
        combined by :func:`combine_contrasts`; its statistics are computed
        here if it has none yet.

    Returns
    -------
    xarray.Dataset
        Variables ``effect_size``, ``effect_variance``, ``stat``, ``p_value``,
        ``z_score`` over ``voxel`` (``effect_size`` has a leading
        ``contrast_row`` dimension for F contrasts); attrs ``dof``,
        ``stat_type`` and the run geometry; ``i, j, k`` coordinates.
    """
    q, packed = contrast.q, contrast.packed
    if not contrast.has_stats:
        kwargs = dict(q=q, dof=contrast.dof, stat_type=contrast.stat_type)
        if isinstance(packed, da.Array):
            packed = packed.map_blocks(_stats_block, chunks=((contrast_rows(q).rows,), packed.chunks[1]),
                                       dtype=np.float64, meta=np.empty((0, 0)), **kwargs)
        else:
            packed = _stats_block(packed, **kwargs)
    template = contrast.template
    coords = {name: template.coords[name] for name in "ijk" if name in template.coords}
    attrs = {k: template.attrs[k] for k in ("affine", "volume_shape") if k in template.attrs}
    return xr.Dataset(contrast_variables(packed, q, contrast.stat_type), coords=coords,
                      attrs={**attrs, "dof": contrast.dof, "stat_type": contrast.stat_type})


def contrast_variables(packed, q: int, stat_type: str) -> dict[str, tuple]:
    """nilearn's output variables of a contrast packed as :func:`~daskglm.kernels.packing.contrast_rows`.

    Parameters
    ----------
    packed : ndarray or dask array, shape (q + 4, v)
    q : int
        Rows of the effect (1 for t).
    stat_type : {"t", "F"}

    Returns
    -------
    dict
        ``name: (dims, rows of packed)`` for ``effect_size`` (``(voxel,)``
        for t, ``(contrast_row, voxel)`` for F), ``effect_variance``,
        ``stat``, ``p_value``, ``z_score``: views or lazy slices.
    """
    layout = contrast_rows(q)
    rows = layout.unpack(packed)
    effect = ((("voxel",), packed[layout.slice("effect").start]) if stat_type == "t"
              else (("contrast_row", "voxel"), rows["effect"]))
    return {"effect_size": effect, "effect_variance": (("voxel",), rows["variance"]),
            **{name: (("voxel",), rows[name]) for name in ("stat", "p_value", "z_score")}}

"""Per-run contrasts and their fixed effects (daskglm.glm.contrasts) against the statistics kernels.

The kernels (:mod:`daskglm.kernels.stats`) are checked against nilearn in
test_kernels.py; here the contrasts of in-memory and lazy fits must give
exactly what the kernels give: ``t_contrast`` / ``f_contrast`` for one run,
``combine_runs`` of the runs' full ``ContrastStats`` for several.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskglm.glm import contrasts as contrasts_mod
from daskglm.glm.contrasts import combine_contrasts, contrast_dataset, run_contrast
from daskglm.kernels import stats as _stats

P, N_LABELS, N_VOXELS = 6, 9, 1000


def _fit(seed: int, chunk: int | None = None) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=(P, N_VOXELS))
    sigma2 = rng.uniform(0.5, 2.0, N_VOXELS)
    labels = rng.integers(0, N_LABELS, N_VOXELS)
    cov = np.stack([np.linalg.inv(x.T @ x) for x in rng.normal(size=(N_LABELS, 30, P))])
    if chunk:
        beta = da.from_array(beta, chunks=(P, chunk))
        sigma2, labels = da.from_array(sigma2, chunks=chunk), da.from_array(labels, chunks=chunk)
    return xr.Dataset(
        {"beta": (("regressor", "voxel"), beta), "sigma2": (("voxel",), sigma2),
         "label_index": (("voxel",), labels), "cov": (("label", "regressor", "regressor_"), cov)},
        attrs={"dof": 24 + seed},
    )


def _expected(fits: list[xr.Dataset], con: np.ndarray, kind: str) -> _stats.ContrastStats:
    kernel = _stats.t_contrast if kind == "t" else _stats.f_contrast
    with dask.config.set(scheduler="sync"):
        runs = [kernel(con[0] if kind == "t" else con, f["beta"].values, f["sigma2"].values, f["cov"].values,
                       f["label_index"].values, f.attrs["dof"]) for f in fits]
    return runs[0] if len(runs) == 1 else _stats.combine_runs(runs)


CASES = [(np.eye(P)[:1], "t"), (np.array([[1.0, -1.0, 0, 0, 0, 0]]), "t"), (np.eye(P)[:3], "F")]


@pytest.mark.parametrize("chunk", [None, 300])
@pytest.mark.parametrize("n_runs", [1, 2, 3])
@pytest.mark.parametrize("con,kind", CASES)
def test_contrasts_equal_the_kernels(con, kind, n_runs, chunk):
    fits = [_fit(seed, chunk) for seed in range(n_runs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # approximate fixed effects on F
        expected = _expected(fits, con, kind)
        ds = contrast_dataset(combine_contrasts([run_contrast(f, con, kind) for f in fits]))
        assert all(isinstance(ds[n].data, da.Array) == bool(chunk) for n in ds.data_vars)  # lazy if the fit was
        with dask.config.set(scheduler="sync"):
            got = {n: ds[n].values for n in ds.data_vars}
    assert ds.attrs["dof"] == expected.dof and ds.attrs["stat_type"] == kind
    effect = expected.effect[0] if kind == "t" else expected.effect
    np.testing.assert_array_equal(got["effect_size"], effect)
    for name, value in (("effect_variance", expected.variance), ("stat", expected.stat),
                        ("p_value", expected.p_value), ("z_score", expected.z_score)):
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_statistics_are_computed_once_per_contrast(monkeypatch):
    """As nilearn: the runs' own t/F statistics are not computed when runs are combined."""
    calls = []
    real = _stats.contrast_stats
    monkeypatch.setattr(_stats, "contrast_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    fits = [_fit(seed) for seed in range(3)]
    contrast_dataset(combine_contrasts([run_contrast(f, np.eye(P)[:1], "t") for f in fits]))
    assert len(calls) == 1
    contrast_dataset(run_contrast(fits[0], np.eye(P)[:1], "t"))
    assert len(calls) == 2


def test_lazy_contrast_graph_stages():
    """Lazy runs of 4 blocks: per-run effect blocks, then their combination (or one run's statistics)."""
    fits = [_fit(seed, 250) for seed in range(2)]
    ds = contrast_dataset(combine_contrasts([run_contrast(f, np.eye(P)[:1], "t") for f in fits]))
    z = ds["z_score"].data
    assert z.numblocks == (4,)
    names = {key[0].split("-")[0].lstrip("_") for key in dict(z.__dask_graph__()) if isinstance(key, tuple)}
    assert {"contrast_block", "combine_block"} <= names
    assert "stats_block" not in names  # combined runs: their statistics come with the combination
    single = contrast_dataset(run_contrast(fits[0], np.eye(P)[:1], "t"))["z_score"].data
    names = {key[0].split("-")[0].lstrip("_") for key in dict(single.__dask_graph__()) if isinstance(key, tuple)}
    assert {"contrast_block", "stats_block"} <= names and "combine_block" not in names


def test_mismatched_runs_are_refused():
    fits = [_fit(0), _fit(1)]
    with pytest.raises(ValueError, match="same type and number of rows"):
        combine_contrasts([run_contrast(fits[0], np.eye(P)[:1], "t"), run_contrast(fits[1], np.eye(P)[:2], "F")])
    with pytest.raises(ValueError, match="stat_type must be 't' or 'F'"):
        run_contrast(fits[0], np.eye(P)[:1], "z")
    with pytest.raises(ValueError, match="no run contrast"):
        combine_contrasts([])
    assert contrasts_mod.OUTPUT_TYPES == ("z_score", "stat", "p_value", "effect_size", "effect_variance")

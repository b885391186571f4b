"""The lazy per-voxel-block fit against nilearn's run_glm on the same data."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import dask.array
import numpy as np
import pytest
from helpers import TaskCounter
from nilearn.glm.first_level import mean_scaling, run_glm
from nilearn.maskers import NiftiMasker

from daskglm.glm.fit import fit_run
from daskglm.glm.fitstore import open_fit, save_fit
from daskglm.store.ingest import ingest_run
from daskglm.store.zarrio import open_run


@pytest.fixture(scope="module")
def fiac_small(tmp_path_factory, fiac_data):
    root = tmp_path_factory.mktemp("fit")
    data = fiac_data(shape=(24, 26, 12), n_scans=80, n_runs=1)
    X = np.load(data["design_matrix1"])["X"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Y = NiftiMasker(data["mask"], smoothing_fwhm=5).fit_transform(data["func1"])
    return {"data": data, "X": X, "Y": Y, "root": root}


def _ingest(fiac_small, v_chunk, name=None):
    data = fiac_small["data"]
    return ingest_run(data["func1"], fiac_small["root"] / (name or f"v{v_chunk}.zarr"),
                      mask_img=data["mask"], smoothing_fwhm=5, v_chunk=v_chunk, client="threads")


def _nilearn_maps(Y, X, noise_model, signal_scaling=0):
    Ys = mean_scaling(Y, signal_scaling)[0] if signal_scaling is not False else Y
    labels, results = run_glm(Ys, X, noise_model=noise_model, random_state=0)
    beta = np.zeros((X.shape[1], Y.shape[1]))
    sigma2 = np.zeros(Y.shape[1])
    for label, res in results.items():
        beta[:, labels == label] = res.theta
        sigma2[labels == label] = res.dispersion
    return beta, sigma2, labels, results


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_fit_equals_run_glm(fiac_small, noise_model):
    ds = _ingest(fiac_small, 600)
    fit = fit_run(ds, fiac_small["X"], noise_model=noise_model)
    beta, sigma2, labels, results = _nilearn_maps(fiac_small["Y"], fiac_small["X"], noise_model)
    with dask.config.set(scheduler="threads"):
        np.testing.assert_allclose(fit["beta"].values, beta, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fit["sigma2"].values, sigma2, rtol=1e-9)
        index = fit["label_index"].values
    # Each voxel's covariance row is nilearn's normalized_cov_beta for its label.
    for label, res in results.items():
        rows = np.unique(index[labels == label])
        assert rows.size == 1
        np.testing.assert_allclose(fit["cov"].values[rows[0]], res.cov, rtol=1e-9, atol=1e-14)
        assert fit.attrs["dof"] == res.df_residuals


def test_building_the_graph_computes_nothing(fiac_small):
    ds = _ingest(fiac_small, 600)
    with TaskCounter() as counter:
        fit = fit_run(ds, fiac_small["X"], noise_model="ar1", signal_scaling=(0, 1))
    assert counter.started == 0
    assert isinstance(fit["beta"].data, dask.array.Array)
    assert fit["beta"].data.npartitions == ds["bold"].data.numblocks[1]


def test_chunk_size_does_not_change_results(fiac_small):
    n_vox = _ingest(fiac_small, 600).sizes["voxel"]
    results = []
    for v_chunk in (257, 1000, n_vox):  # 257 does not divide the voxel count
        fit = fit_run(_ingest(fiac_small, v_chunk), fiac_small["X"], noise_model="ar1")
        with dask.config.set(scheduler="threads"):
            results.append({k: fit[k].values for k in ("beta", "sigma2", "label_index")})
    assert n_vox % 257 != 0
    for other in results[1:]:
        # AR labels identical; floats equal up to BLAS blocking round-off.
        np.testing.assert_array_equal(other["label_index"], results[0]["label_index"])
        np.testing.assert_allclose(other["beta"], results[0]["beta"], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(other["sigma2"], results[0]["sigma2"], rtol=1e-10)


def test_grand_mean_scaling_and_no_scaling(fiac_small):
    ds = _ingest(fiac_small, 600)
    for scaling in [(0, 1), False]:
        fit = fit_run(ds, fiac_small["X"], noise_model="ols", signal_scaling=scaling)
        beta, sigma2, _, _ = _nilearn_maps(fiac_small["Y"], fiac_small["X"], "ols", scaling)
        # (0, 1): nilearn's grand mean is a float32 pairwise sum over the whole run,
        # which no blockwise reduction reproduces bit for bit; scaled values then
        # differ by float32 round-off (~1e-5 of the signal in percent units).
        atol = (1e-4 if scaling == (0, 1) else 1e-9) * np.abs(beta).max()
        with dask.config.set(scheduler="threads"):
            np.testing.assert_allclose(fit["beta"].values, beta, rtol=1e-5, atol=atol)
            np.testing.assert_allclose(fit["sigma2"].values, sigma2, rtol=1e-4)


@pytest.mark.slow
def test_ar2_two_pass_equals_run_glm(fiac_small):
    ds = _ingest(fiac_small, 600)
    fit = fit_run(ds, fiac_small["X"], noise_model="ar2", bins=10, random_state=0, client="threads")
    Ys = mean_scaling(fiac_small["Y"], 0)[0]
    labels, results = run_glm(Ys, fiac_small["X"], noise_model="ar2", bins=10, random_state=0)
    beta = np.zeros_like(fit["beta"].values)
    for label, res in results.items():
        beta[:, labels == label] = res.theta
    np.testing.assert_allclose(fit["beta"].values, beta, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("noise_model", ["ols", "ar1", "ar2"])
def test_packed_estimates_split_into_the_fit_variables(fiac_small, noise_model):
    """The packed rows of a fit_run result give its variables (same values and dtypes) with one
    task per voxel column after the reads; a fit sliced or reopened has none."""
    from daskglm.glm.fit import FIT_VARIABLES, packed_estimates, split_estimates

    ds = _ingest(fiac_small, 600)
    fit = fit_run(ds, fiac_small["X"], noise_model=noise_model, bins=10, random_state=0, client="sync")
    packed = packed_estimates(fit)
    assert packed is not None and packed.shape == (fit.sizes["regressor"] + 2, fit.sizes["voxel"])
    with dask.config.set(scheduler="sync"):
        with TaskCounter() as counter:
            values = packed.compute()
        alone = TaskCounter()
        with alone:
            expected = dask.compute(*[fit[name].data for name in FIT_VARIABLES])
    columns = ds["bold"].data.numblocks[1]
    assert alone.started - counter.started >= len(FIT_VARIABLES) * columns  # the slices saved
    split = split_estimates(values)
    for name, want in zip(FIT_VARIABLES, expected):
        assert split[name].dtype == want.dtype
        np.testing.assert_array_equal(split[name], want)
    assert packed_estimates(fit.isel(voxel=slice(0, 10))) is None
    assert packed_estimates(fit.assign(sigma2=fit["sigma2"] * 2)) is None


def test_fit_run_carries_its_packed_estimates(fiac_small, tmp_path):
    """fit_run puts its packed rows in the fit's encoding and save_fits writes them by the fitting tasks;
    a fit whose variables changed since is written variable by variable, with a warning; a fit from
    elsewhere (no packed rows) silently so."""
    import shutil
    import warnings

    from daskglm.glm.fit import PACKED_ESTIMATES, packed_estimates
    from daskglm.glm.fitstore import save_fits

    ds = _ingest(fiac_small, 600)
    fit = fit_run(ds, fiac_small["X"], noise_model="ols")
    packed = fit.encoding[PACKED_ESTIMATES]
    assert packed_estimates(fit) is packed and packed_estimates(fit.copy()) is packed
    store = str(tmp_path / "run.zarr")
    shutil.copytree(ds.attrs["store"], store)
    changed = fit.assign(sigma2=fit["sigma2"] * 2)
    assert changed.encoding[PACKED_ESTIMATES] is packed and packed_estimates(changed) is None
    with pytest.warns(RuntimeWarning, match="no longer slices of them"):
        (saved,) = save_fits([changed], [store], name="changed", client="sync")
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(saved["sigma2"].values, 2 * fit["sigma2"].values)
        np.testing.assert_array_equal(saved["beta"].values, fit["beta"].values)
    elsewhere = fit.copy()
    elsewhere.encoding.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        (again,) = save_fits([elsewhere], [store], name="elsewhere", client="sync")
    np.testing.assert_array_equal(again["label_index"].values, saved["label_index"].values)


def test_save_and_reopen_fit(fiac_small, tmp_path):
    ds = _ingest(fiac_small, 700, name="saved.zarr")
    lazy = fit_run(ds, fiac_small["X"], noise_model="ar1")
    saved = save_fit(lazy, ds.attrs["store"], client="threads")
    reopened = open_fit(ds.attrs["store"])
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(reopened["beta"].values, lazy["beta"].values)
        np.testing.assert_array_equal(saved["label_index"].values, lazy["label_index"].values)
    np.testing.assert_array_equal(reopened["i"].values, ds["i"].values)
    assert reopened.attrs["dof"] == lazy.attrs["dof"]


def test_fit_group_made_by_hand_reads_back_as_to_zarr_writes_it(tmp_path):
    """The fit group's layout made with zarr directly (``create_group_like``, then each dask
    variable written through the arrays it returns) opens in xarray exactly as the same
    dataset written by xarray's own ``to_zarr``: dims, dtypes, values, chunks, attributes."""
    import xarray as xr

    from daskglm.store.zarrio import create_group_like

    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"beta": (("regressor", "voxel"), dask.array.from_array(rng.standard_normal((3, 10)), chunks=(3, 4))),
         "sigma2": (("voxel",), dask.array.from_array(rng.random(10), chunks=4)),
         "label_index": (("voxel",), dask.array.from_array(rng.integers(0, 5, 10), chunks=4)),
         "cov": (("label", "regressor", "regressor_"), rng.standard_normal((5, 3, 3))),
         "label_value": (("label", "lag"), np.zeros((5, 0)))},
        attrs={"dof": np.int64(7), "t_r": np.float64(2.5), "affine": np.eye(4), "regressors": ["a", "b", "c"],
               "bins": np.int32(100), "nested": {"flags": [True], "name": "x"}},
    )
    for var in ds.variables.values():
        if np.issubdtype(var.dtype, np.floating):
            var.encoding["compressors"] = None
    ds.to_zarr(tmp_path / "xarray.zarr", zarr_format=3, consolidated=False)
    arrays = create_group_like(str(tmp_path / "hand.zarr"), ds, None)
    for key in ("beta", "sigma2", "label_index"):
        arrays[key][...] = ds[key].values
    oracle = xr.open_zarr(tmp_path / "xarray.zarr", zarr_format=3, consolidated=False)
    ours = xr.open_zarr(tmp_path / "hand.zarr", zarr_format=3, consolidated=False)
    xr.testing.assert_identical(ours.load(), oracle.load())
    for key in ds.data_vars:
        assert ours[key].dtype == oracle[key].dtype
        assert ours[key].encoding["chunks"] == oracle[key].encoding["chunks"]
        assert ours[key].encoding["compressors"] == oracle[key].encoding["compressors"]


def _two_stores(fiac_small, tmp_path):
    """The run ingested into two stores (200-voxel blocks), with an AR(1) and an OLS fit."""
    import shutil

    ds = _ingest(fiac_small, 200, name="two-a.zarr")
    shutil.copytree(ds.attrs["store"], tmp_path / "two-b.zarr")
    stores = [ds.attrs["store"], str(tmp_path / "two-b.zarr")]
    X = fiac_small["X"]
    runs = [open_run(store, columns=True) for store in stores]
    fits = [fit_run(runs[0], X, noise_model="ar1"), fit_run(runs[1], X[:, :-1], noise_model="ols")]
    return stores, fits


def test_save_fits_is_one_computation_equal_to_save_fit(fiac_small, tmp_path, monkeypatch):
    """Two runs' fits written by one compute; read back in memory (numpy, straight from zarr) or
    lazily in large chunks: the same Datasets as save_fit + open_fit, one run at a time."""
    import xarray as xr

    import daskglm.glm.fitstore as fitstore
    from daskglm.glm.fitstore import save_fits

    stores, fits = _two_stores(fiac_small, tmp_path)
    alone = []
    for fit, store in zip(fits, stores):
        save_fit(fit, store, client="threads")
        with dask.config.set(scheduler="threads"):
            alone.append(open_fit(store).load())
    calls = []
    real = fitstore.compute
    monkeypatch.setattr(fitstore, "compute", lambda *a, **k: calls.append(len(a)) or real(*a, **k))
    in_memory = save_fits(fits, stores, client="threads", in_memory=True)
    assert calls == [2]  # one computation of both runs' packed estimates (then split and written from here)
    for got, expected in zip(in_memory, alone):
        assert all(isinstance(got[n].data, np.ndarray) for n in got.variables)
        xr.testing.assert_identical(got, expected)
        assert got.attrs == expected.attrs and got.attrs["complete"] is True
    # Lazy: whole multiples of the stored 200-voxel blocks, ~64 MiB of beta (here: one chunk).
    lazy = save_fits(fits, stores, client="threads", in_memory=False)
    for got, expected in zip(lazy, alone):
        beta = got["beta"].data
        assert isinstance(beta, dask.array.Array) and beta.numblocks == (1, 1)
        assert got["sigma2"].data.chunks == (beta.chunks[1],)
        with dask.config.set(scheduler="threads"):
            xr.testing.assert_identical(got.load(), expected)
    # Over a budget of 1 KiB they stay lazy, here in chunks of 400 voxels (two stored blocks).
    with dask.config.set({"daskglm.fit-memory-bytes": "1 KiB"}):
        assert fitstore.fit_memory_bytes() == 1024
        monkeypatch.setattr(fitstore, "LAZY_CHUNK_BYTES", 8 * 13 * 400 + 1)
        small = save_fits(fits, stores, client="threads")
    chunks = small[0]["beta"].data.chunks[1]
    assert len(chunks) > 2 and set(chunks[:-1]) == {400}, chunks
    with dask.config.set(scheduler="threads"):
        xr.testing.assert_identical(small[0].load(), alone[0])
    # The default budget holds these fits (a few hundred KiB) in memory.
    assert sum(fitstore.fit_nbytes(f) for f in fits) < fitstore.DEFAULT_FIT_MEMORY_BYTES
    assert all(isinstance(f["beta"].data, np.ndarray) for f in save_fits(fits, stores, client="threads"))


def test_save_fits_budget_and_bad_budget(fiac_small, tmp_path):
    from daskglm.glm.fitstore import fit_memory_bytes, fit_nbytes, save_fits

    stores, fits = _two_stores(fiac_small, tmp_path)
    total = sum(fit_nbytes(f) for f in fits)
    assert total == sum(f[n].size * f[n].dtype.itemsize for f in fits for n in ("beta", "sigma2", "label_index"))
    for budget, held in ((total, True), (total - 1, False), (0, False)):
        with dask.config.set({"daskglm.fit-memory-bytes": budget}):
            out = save_fits(fits, stores, client="threads")
        assert [isinstance(f["beta"].data, np.ndarray) for f in out] == [held, held], budget
    for bad in (-1, "lots", True, None, [1]):
        with dask.config.set({"daskglm.fit-memory-bytes": bad}), \
                pytest.raises(ValueError, match=r"'daskglm.fit-memory-bytes' must be a non-negative"):
            fit_memory_bytes()


def test_save_fits_of_a_store_given_twice(fiac_small, tmp_path):
    """The same run fitted twice (same store): each result is its own fit; the store keeps the last."""
    from daskglm.glm.fitstore import save_fits

    ds = _ingest(fiac_small, 200, name="twice.zarr")
    store = ds.attrs["store"]
    run = open_run(store, columns=True)
    X = fiac_small["X"]
    fits = [fit_run(run, X, noise_model="ols"), fit_run(run, X[:, :-2], noise_model="ols")]
    with dask.config.set(scheduler="threads"):
        expected = [f["beta"].values for f in fits]
    out = save_fits(fits, [store, store], client="threads", in_memory=True)
    for got, beta in zip(out, expected):
        np.testing.assert_array_equal(got["beta"].values, beta)
    assert open_fit(store)["beta"].shape[0] == X.shape[1] - 2
    # A fit without the voxel indices gets the run store's.
    (bare,) = save_fits([fits[0].drop_vars(["i", "j", "k"])], [store], client="threads", in_memory=True)
    for n in "ijk":
        np.testing.assert_array_equal(bare[n].values, run[n].values)


def test_save_fits_waits_for_every_store_lock(fiac_small, tmp_path):
    """Another holder of the second store's lock: no group is rewritten until it lets go."""
    import threading
    import time

    from daskglm.glm.fitstore import save_fits
    from daskglm.store.locks import store_lock

    stores, fits = _two_stores(fiac_small, tmp_path)
    save_fits(fits, stores, client="threads")
    marker = Path(stores[0]) / "glm" / "zarr.json"
    before = marker.stat().st_mtime_ns
    held, release = threading.Event(), threading.Event()

    def hold():
        with store_lock(stores[1]):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    done = []
    writer = threading.Thread(target=lambda: done.append(save_fits(fits, stores, client="threads")))
    writer.start()
    time.sleep(1.0)
    assert not done and marker.stat().st_mtime_ns == before  # waiting, nothing rewritten
    release.set()
    holder.join(30)
    writer.join(60)
    assert done and marker.stat().st_mtime_ns != before


def test_bad_parameters_are_named(fiac_small):
    ds = _ingest(fiac_small, 600)
    X = fiac_small["X"]
    with pytest.raises(ValueError, match="79 rows but the run has 80 scans"):
        fit_run(ds, X[:-1])
    with pytest.raises(ValueError, match="bins.*0"):
        fit_run(ds, X, bins=0)
    with pytest.raises(ValueError, match="signal_scaling.*'yes'"):
        fit_run(ds, X, signal_scaling="yes")
    for bad in ("ar0", "foo"):
        with pytest.raises(ValueError, match=bad):
            fit_run(ds, X, noise_model=bad)


def test_blockwise_hands_each_task_its_blocks_and_refuses_split_contracted_axes():
    """Each column task gets the one time block itself (no concatenation copy); an input split
    along time or along p would be silently wrong that way, so it is refused."""
    from daskglm.glm.fit import _blockwise

    Y = dask.array.from_array(np.arange(24.0).reshape(4, 6), chunks=(4, 3))
    beta = dask.array.from_array(np.ones((2, 6)), chunks=(2, 3))
    out = _blockwise(lambda y, b: np.vstack([y.sum(axis=0), b.sum(axis=0)]), Y, 2, beta, "pv")
    np.testing.assert_array_equal(out.compute(scheduler="sync"),
                                  np.vstack([np.arange(24.0).reshape(4, 6).sum(axis=0), np.full(6, 2.0)]))
    with pytest.raises(ValueError, match="one chunk along time"):
        _blockwise(lambda y: y, Y.rechunk((2, 3)), 4)
    with pytest.raises(ValueError, match="one chunk along p"):
        _blockwise(lambda y, b: y, Y, 4, beta.rechunk((1, 3)), "pv")


# ----------------------------------------------------------------------------- short runs
def _tiny_run(root: Path, Y: np.ndarray, name: str) -> tuple[Path, Path]:
    """A 4 x 4 x 3 float32 run of ``Y (n, 48)`` (voxels in C order) and an all-ones mask."""
    import nibabel as nib

    n = Y.shape[0]
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(Y.T.reshape(4, 4, 3, n)).astype(np.float32), affine)
    img.header.set_zooms((3.0, 3.0, 3.0, 2.0))
    path, mask = root / f"{name}.nii.gz", root / f"{name}_mask.nii.gz"
    nib.save(img, path)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), affine), mask)
    return path, mask


def _nilearn_contrasts(path, mask, X, noise_model, contrasts):
    """nilearn's FirstLevelModel on the run: each contrast's maps, masked (C order)."""
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FirstLevelModel(mask_img=str(mask), noise_model=noise_model, minimize_memory=True)
        model.fit(str(path), design_matrices=pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])]))
        return [{k: v.get_fdata().reshape(48, -1) if v.ndim == 4 else v.get_fdata().ravel()
                 for k, v in model.compute_contrast(con, stat_type=kind, output_type="all").items()}
                for con, kind in contrasts], model


def _our_contrasts(fit, contrasts):
    """Our maps of each contrast, as :func:`_nilearn_contrasts` gives nilearn's (F effects (48, q))."""
    from daskglm.glm import contrasts as C

    out = []
    for con, kind in contrasts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = C.contrast_dataset(C.run_contrast(fit, np.atleast_2d(con), kind))
        with dask.config.set(scheduler="threads"):
            maps = {name: np.asarray(ds[name].values) for name in ds.data_vars}
        if kind == "F":
            maps["effect_size"] = maps["effect_size"].T
        out.append(maps)
    return out


@pytest.mark.parametrize("in_memory", [True, False])
def test_short_run_labels_beyond_one_through_fit_run_stores_and_contrasts(tmp_path, in_memory):
    """A run of 8 scans: nilearn's AR(1) labels reach below -1 (its FirstLevelModel uses them as they
    are). fit_run tabulates cov on ar1_grid(bins, 8), label_index indexes it, the stored fit (in memory
    or lazy) and its contrasts give nilearn's maps."""
    from daskglm.glm.fitstore import save_fits
    from daskglm.kernels import ar1_moments as _ar1_moments

    n = 8
    rng = np.random.default_rng(7)
    alternating = (-1.0) ** np.arange(n)[:, None]
    Y = 1000 + 20 * alternating * (1 + 0.3 * rng.standard_normal((n, 48))) + 4 * rng.standard_normal((n, 48))
    t = np.linspace(-1, 1, n)
    X = np.column_stack([np.ones(n), t, t**2])  # smooth: the residuals keep the alternation
    path, mask = _tiny_run(tmp_path, Y, "short")
    ds = ingest_run(path, tmp_path / "short.zarr", mask_img=mask, v_chunk=20, client="threads")
    (fit,) = save_fits([fit_run(ds, X, noise_model="ar1")], [ds.attrs["store"]], client="threads",
                       in_memory=in_memory)
    contrasts = [(np.array([0.0, 1.0, 0.0]), "t"), (np.eye(3)[1:], "F")]
    refs, model = _nilearn_contrasts(path, mask, X, "ar1", contrasts)
    labels = np.array([float(label) for label in model.labels_[0]])
    assert labels.min() < -1
    grid = _ar1_moments.ar1_grid(100, n)
    with dask.config.set(scheduler="threads"):
        index = fit["label_index"].values
    np.testing.assert_array_equal(fit["label_value"].values[:, 0], grid)
    np.testing.assert_array_equal(grid[index], labels)
    assert fit["cov"].shape[0] == grid.size == 2 * ((100 * n) // (n - 1)) + 1
    for ours, ref in zip(_our_contrasts(fit, contrasts), refs):
        for name in ("effect_size", "effect_variance", "stat", "p_value", "z_score"):
            np.testing.assert_allclose(ours[name], ref[name], rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("n, p", [(5, 7), (6, 6)])
def test_fewer_scans_than_columns_through_fit_run_as_first_level_model(tmp_path, n, p):
    """nilearn's FirstLevelModel fits such runs: the effect (minimum-norm beta) and NaN for the rest
    (dof 0); fit_run warns as nilearn's fit does for n == p (division by 0), run_contrast as its t
    contrast does for n < p (sqrt of a negative variance)."""
    from daskglm.glm import contrasts as C

    rng = np.random.default_rng(8)
    Y = 500 + 10 * rng.standard_normal((n, 48))
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    path, mask = _tiny_run(tmp_path, Y, f"n{n}p{p}")
    ds = ingest_run(path, tmp_path / f"n{n}p{p}.zarr", mask_img=mask, client="threads")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_run(ds, X, noise_model="ols")
    assert any("divide by zero" in str(w.message) for w in caught) == (n == p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        C.run_contrast(fit, np.eye(p)[[1]], "t")
    assert any("invalid value encountered in sqrt" in str(w.message) for w in caught) == (n < p)
    assert fit.attrs["dof"] == 0
    contrasts = [(np.eye(p)[1], "t"), (np.eye(p)[1:3], "F")]
    for noise_model in ("ols", "ar1"):
        refs, _ = _nilearn_contrasts(path, mask, X, noise_model, contrasts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # n == p: the warning checked above
            ours = _our_contrasts(fit_run(ds, X, noise_model=noise_model) if noise_model == "ar1" else fit,
                                  contrasts)
        for (_con, kind), got, ref in zip(contrasts, ours, refs):
            if kind == "t" or noise_model == "ols":  # an F effect of AR(1) depends on its (noise) labels
                np.testing.assert_allclose(got["effect_size"], ref["effect_size"], rtol=1e-5, atol=1e-6)
            assert np.all(np.isnan(got["p_value"])) and np.all(np.isnan(ref["p_value"]))
            assert np.all(np.isnan(got["z_score"])) and np.all(np.isnan(ref["z_score"]))
            if kind == "t":
                for name in ("effect_variance", "stat"):
                    np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(ref[name]), err_msg=name)
                    np.testing.assert_array_equal(got[name][~np.isnan(got[name])], ref[name][~np.isnan(ref[name])])


def test_standardize_is_never_applied_as_by_nilearn(tmp_path):
    """nilearn 0.14.1 sets ``standardize_`` to None whatever ``signal_scaling`` (``False in [0, 1,
    (0, 1)]``): its FirstLevelModel never standardizes, and neither does daskglm's (same maps);
    both refuse "zscore"."""
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    from daskglm import FirstLevelModel

    rng = np.random.default_rng(0)
    img = nib.Nifti1Image((100 + rng.standard_normal((3, 3, 3, 12))).astype(np.float32), np.eye(4))
    mask = nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4))
    design = pd.DataFrame({"a": np.ones(12), "b": np.linspace(-1, 1, 12)})
    kwargs = {"mask_img": mask, "signal_scaling": False, "standardize": "psc", "noise_model": "ols"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(**kwargs).fit(img, design_matrices=design)
        ours = FirstLevelModel(store=tmp_path, client="threads", **kwargs).fit(img, design_matrices=design)
    assert theirs.standardize_ is None and ours.standardize_ is None
    np.testing.assert_allclose(ours.compute_contrast("b", output_type="effect_size").get_fdata(),
                               theirs.compute_contrast("b", output_type="effect_size").get_fdata(), rtol=1e-6)
    with pytest.raises(ValueError, match="'zscore' was provided"):
        FirstLevelModel(standardize="zscore", **{k: v for k, v in kwargs.items() if k != "standardize"}).fit(
            img, design_matrices=design)


def test_ar2_with_at_most_two_scans_refused_and_with_dof_0_unclustered(tmp_path):
    """AR(2) of 2 scans: nilearn fails (its KMeans on the NaN coefficients, the lag-2
    autocovariance being 0 / 0, or before that its Yule-Walker solve: LinAlgError), fit_run
    refuses it when the graph is built. AR(2) of 5 scans and 7 columns: zero
    residuals, one label of coefficients 0 (no KMeans), nilearn's t effects."""
    rng = np.random.default_rng(9)
    X2 = np.ones((2, 1))
    path, mask = _tiny_run(tmp_path, 100 + rng.standard_normal((2, 48)), "two")
    ds = ingest_run(path, tmp_path / "two.zarr", mask_img=mask, client="threads")
    with pytest.raises(ValueError), warnings.catch_warnings():  # KMeans on NaN, or a singular Toeplitz
        warnings.simplefilter("ignore", RuntimeWarning)
        run_glm(ds["bold"].values.astype(np.float64), X2, noise_model="ar2")
    with pytest.raises(ValueError, match="needs more than 2 scans; got 2"):
        fit_run(ds, X2, noise_model="ar2")
    X = np.column_stack([np.ones(5), rng.standard_normal((5, 6))])
    path, mask = _tiny_run(tmp_path, 100 + rng.standard_normal((5, 48)), "five")
    ds = ingest_run(path, tmp_path / "five.zarr", mask_img=mask, client="threads")
    fit = fit_run(ds, X, noise_model="ar2", client="threads")
    np.testing.assert_array_equal(fit["label_value"].values, np.zeros((1, 2)))
    refs, _ = _nilearn_contrasts(path, mask, X, "ar2", [(np.eye(7)[1], "t")])
    (ours,) = _our_contrasts(fit, [(np.eye(7)[1], "t")])
    np.testing.assert_allclose(ours["effect_size"], refs[0]["effect_size"], rtol=1e-5, atol=1e-6)
    for name in ("effect_variance", "stat", "p_value", "z_score"):
        assert np.all(np.isnan(ours[name])) and np.all(np.isnan(refs[0][name])), name

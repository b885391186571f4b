"""FirstLevelModel parity with nilearn 0.14 on the two-run walkthrough (simulated FIAC data)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import TaskCounter, assert_maps_match
from nilearn.glm.first_level import FirstLevelModel as NilearnModel

from daskglm.models.first_level import FirstLevelModel

N_COLUMNS = 13
CONTRASTS = {
    "SStSSp_minus_DStDSp": np.array([[1, 0, 0, -1]]),
    "DStDSp_minus_SStSSp": np.array([[-1, 0, 0, 1]]),
    "DSt_minus_SSt": np.array([[-1, -1, 1, 1]]),
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),
    "DSt_minus_SSt_for_DSp": np.array([[0, -1, 0, 1]]),
    "DSp_minus_SSp_for_DSt": np.array([[0, 0, -1, 1]]),
    "Deactivation": np.array([[-1, -1, -1, -1, 4]]),
    "Effects_of_interest": np.eye(N_COLUMNS)[:5, :],
}


@pytest.fixture(scope="module")
def fiac(tmp_path_factory, fiac_data):
    root = tmp_path_factory.mktemp("model")
    data = fiac_data(shape=(30, 32, 14), n_scans=100)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return {"data": data, "designs": designs, "runs": [data["func1"], data["func2"]],
            "stores": root / "stores"}



def _models(fiac, noise_model, fwhm):
    kwargs = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=fwhm, noise_model=noise_model,
                  random_state=0)
    return (FirstLevelModel(store=fiac["stores"], client="threads", **kwargs),
            NilearnModel(minimize_memory=True, **kwargs))


@pytest.mark.slow
@pytest.mark.parametrize("noise_model,fwhm", [("ols", 5.0), ("ar1", 5.0), ("ar1", None), ("ar2", 5.0)])
def test_walkthrough_matches_nilearn(fiac, noise_model, fwhm):
    from nilearn.glm.contrasts import compute_fixed_effects as nilearn_fixed_effects

    from daskglm.glm.fixed_effects import compute_fixed_effects

    ours, theirs = _models(fiac, noise_model, fwhm)
    runs, designs = fiac["runs"], fiac["designs"]
    contrast_val = [[-1, -1, 1, 1]]
    per_run = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run, design in zip(runs, designs):
            ours.fit(run, design_matrices=design)
            theirs.fit(run, design_matrices=design)
            a = ours.compute_contrast(contrast_val, output_type="all")
            b = theirs.compute_contrast(contrast_val, output_type="all")
            assert set(a) == set(b)
            for key in b:
                assert_maps_match(a[key], b[key], noise_model, f"run {run} {key}")
            per_run.append((a, b))
        # Explicit fixed effects over the two runs' maps.
        fx_ours = compute_fixed_effects([a["effect_size"] for a, _ in per_run],
                                        [a["effect_variance"] for a, _ in per_run],
                                        fiac["data"]["mask"], client="threads")
        fx_theirs = nilearn_fixed_effects([b["effect_size"] for _, b in per_run],
                                          [b["effect_variance"] for _, b in per_run],
                                          fiac["data"]["mask"])
        for x, y in zip(fx_ours, fx_theirs):
            assert_maps_match(x, y, noise_model, "fixed effects")
        # The multi-run fit with per-run contrast lists, then the eight contrasts.
        ours.fit(runs, design_matrices=designs)
        theirs.fit(runs, design_matrices=designs)
        two = [np.array([[-1, -1, 1, 1]]), np.array([[-1, -1, 1, 1]])]
        assert_maps_match(ours.compute_contrast(two, output_type="z_score"),
                          theirs.compute_contrast(two, output_type="z_score"), noise_model, "multi-run")
        for name, con in CONTRASTS.items():
            a = ours.compute_contrast(con, output_type="all")
            b = theirs.compute_contrast(con, output_type="all")
            for key in b:
                assert_maps_match(a[key], b[key], noise_model, f"{name} {key}")


def test_multirun_z_equals_explicit_fixed_effects_direction(fiac):
    """The walkthrough's remark: both fixed-effects routes show higher peaks than one run."""
    ours, _ = _models(fiac, "ar1", 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = ours.fit(fiac["runs"][0], design_matrices=fiac["designs"][0]).compute_contrast([[-1, -1, 1, 1]])
        both = ours.fit(fiac["runs"], design_matrices=fiac["designs"]).compute_contrast([[-1, -1, 1, 1]])
    assert np.abs(both.get_fdata()).max() > np.abs(single.get_fdata()).max()


def test_warnings_match_nilearn(fiac):
    ours, theirs = _models(fiac, "ols", None)
    ours.fit(fiac["runs"], design_matrices=fiac["designs"])
    theirs.fit(fiac["runs"], design_matrices=fiac["designs"])
    for model in (ours, theirs):
        with pytest.warns(UserWarning, match="padded with zeros"):
            with pytest.warns(RuntimeWarning, match="same contrast will be used for all 2 runs"):
                model.compute_contrast([[-1, -1, 1, 1]])


def _all_maps(model) -> dict[str, np.ndarray]:
    maps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, con in CONTRASTS.items():
            for kind, img in model.compute_contrast(con, output_type="all").items():
                maps[f"{name}/{kind}"] = np.asarray(img.dataobj)
    return maps


def test_contrast_dataset_is_lazy_and_equals_images(fiac):
    """Fits over the ``daskglm.fit-memory-bytes`` budget stay lazy (in a few large chunks), and so
    does ``contrast_dataset``; its maps are those of compute_contrast."""
    import dask
    import dask.array as da

    ours, _ = _models(fiac, "ar1", 5.0)
    with dask.config.set({"daskglm.fit-memory-bytes": 0}):
        ours.fit(fiac["runs"], design_matrices=fiac["designs"])
    assert all(isinstance(fit["beta"].data, da.Array) for fit in ours.results_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ours.contrast_dataset([[-1, -1, 1, 1]])
        img = ours.compute_contrast([[-1, -1, 1, 1]], output_type="stat")
    assert isinstance(ds["z_score"].data, da.Array)
    assert ds["z_score"].data.npartitions == 1  # ~64 MiB chunks of the fits, not the fit's blocks
    mask = np.asarray(ours.mask_img_.dataobj) > 0
    with dask.config.set(scheduler="threads"):
        np.testing.assert_allclose(img.get_fdata()[mask], ds["stat"].values, rtol=1e-12)


def test_small_fits_are_held_in_memory(fiac, monkeypatch):
    """Within the budget (default 256 MiB) the fits are numpy, read from the stores: the same
    Datasets as open_fit gives, and contrasts, computed without any dask computation, give the
    same maps, bit for bit, as the lazy fits (the walkthrough test holds them against nilearn)."""
    import dask
    import xarray as xr

    import daskglm.models.first_level
    from daskglm.glm.fitstore import open_fit

    lazy, _ = _models(fiac, "ar1", 5.0)
    with dask.config.set({"daskglm.fit-memory-bytes": 0}):
        expected = _all_maps(lazy.fit(fiac["runs"], design_matrices=fiac["designs"]))
    ours, _ = _models(fiac, "ar1", 5.0)
    ours.fit(fiac["runs"], design_matrices=fiac["designs"])
    for fit in ours.results_:
        assert all(isinstance(fit[n].data, np.ndarray) for n in fit.variables)
        with dask.config.set(scheduler="threads"):
            xr.testing.assert_identical(fit, open_fit(fit.attrs["store"], fit.attrs["group"]).load())
    assert all(isinstance(labels.data, np.ndarray) for labels in ours.labels_)

    def no_compute(*args, **kwargs):
        raise AssertionError("compute_contrast computed something")

    monkeypatch.setattr(daskglm.models.first_level, "compute", no_compute)
    with TaskCounter() as started:
        got = _all_maps(ours)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = ours.contrast_dataset([[-1, -1, 1, 1]])
    assert started.started == 0
    assert isinstance(ds["z_score"].data, np.ndarray)  # not lazy: the fits are not
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # The lazy voxel-wise attributes read the stored fits (workers read them on a cluster).
    (residuals, _) = ours.voxelwise("residuals")
    assert isinstance(residuals.data, dask.array.Array)


def test_fit_reads_headers_once_and_computes_once(fiac, monkeypatch):
    """Stores already ingested: each run's header is read once, and both runs' fits are one
    computation (the stores' complete ``glm`` groups written by it)."""
    import nibabel

    import daskglm.glm.fitstore
    import daskglm.io.nifti
    import daskglm.models.first_level
    import daskglm.store.ingest

    model, _ = _models(fiac, "ols", None)
    model.fit(fiac["runs"], design_matrices=fiac["designs"])  # ingests (or reuses) the stores
    loads, computes = [], []
    real_load, real_compute = nibabel.load, daskglm.glm.fitstore.compute
    monkeypatch.setattr(nibabel, "load", lambda path, *a, **k: loads.append(str(path)) or real_load(path, *a, **k))
    # daskglm reads .nii.gz headers itself (daskglm.io.nifti.load_image): its reads count too, once
    # each (what it hands on to nibabel.load is the same read)
    real_image = daskglm.io.nifti.load_image

    def counted_image(path):
        loads.append(str(path))
        with monkeypatch.context() as inner:
            inner.setattr(nibabel, "load", real_load)
            return real_image(path)

    monkeypatch.setattr(daskglm.io.nifti, "load_image", counted_image)
    monkeypatch.setattr(daskglm.models.first_level, "load_image", counted_image)
    monkeypatch.setattr(daskglm.glm.fitstore, "compute",
                        lambda *a, **k: computes.append(len(a)) or real_compute(*a, **k))
    monkeypatch.setattr(daskglm.store.ingest, "compute", lambda *a, **k: computes.append(("store", len(a))))
    model.fit(fiac["runs"], design_matrices=fiac["designs"])
    # the stores are reused: nothing ingested; and so are the fits of the same design and options
    # (their groups are keyed by both): nothing computed
    assert computes == []
    runs = [str(r) for r in fiac["runs"]]
    assert sorted(p for p in loads if p in runs) == sorted(runs)
    loads.clear()
    model.fit(fiac["runs"], design_matrices=[d.iloc[:, ::-1] for d in fiac["designs"]])
    # another design: one computation for both fits (each run's packed estimates, split into
    # beta, sigma2 and label_index and written from this process)
    assert computes == [2]
    assert sorted(p for p in loads if p in runs) == sorted(runs)


def test_bad_use_is_reported(fiac):
    ours, _ = _models(fiac, "ols", None)
    with pytest.raises(ValueError, match="not fitted"):
        ours.compute_contrast([1, 0])
    with pytest.raises(ValueError, match="ar0"):
        FirstLevelModel(noise_model="ar0").fit(fiac["runs"][0], design_matrices=fiac["designs"][0])
    ours.fit(fiac["runs"][0], design_matrices=fiac["designs"][0])
    with pytest.raises(ValueError, match="output_type"):
        ours.compute_contrast([1, 0], output_type="zz")


@pytest.mark.parametrize("noise_model,scaling", [("ols", 0), ("ar1", 0), ("ar1", (0, 1)),
                                                 pytest.param("ar2", False, marks=pytest.mark.slow)])
def test_voxelwise_attributes_match_nilearn(fiac, noise_model, scaling):
    """minimize_memory=False: residuals, predicted and r_square images, as nilearn's."""
    kwargs = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model=noise_model,
                  signal_scaling=scaling, random_state=0, minimize_memory=False)
    ours = FirstLevelModel(store=fiac["stores"], client="threads", **kwargs)
    theirs = NilearnModel(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(fiac["runs"], design_matrices=fiac["designs"])
        theirs.fit(fiac["runs"], design_matrices=fiac["designs"])
    labels_agree = [np.asarray(a) for a in ours.labels_]
    for name in ("residuals_", "predicted_", "r_square_"):
        a_list, b_list = getattr(ours, name), getattr(theirs, name)
        assert len(a_list) == len(b_list) == 2
        for run, (a, b) in enumerate(zip(a_list, b_list)):
            a, b = a.get_fdata(), b.get_fdata()
            assert a.shape == b.shape, (name, a.shape, b.shape)
            # Voxels whose AR label sits on a bin edge may differ (see assert_maps_match).
            diff = np.abs(a - b).reshape(-1, a.shape[-1]).max(axis=1)
            scale = max(1.0, float(np.abs(b).max()))
            close = diff <= 1e-5 * scale
            assert close.mean() >= 0.998, (name, run, diff.max())
            if noise_model == "ols":
                assert close.all(), (name, run, diff.max())
    assert len(labels_agree) == 2


def test_voxelwise_needs_minimize_memory_false_but_lazy_always_works(fiac):
    model = FirstLevelModel(mask_img=fiac["data"]["mask"], store=fiac["stores"], client="threads",
                            noise_model="ols")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(fiac["runs"][0], design_matrices=fiac["designs"][0])
    with pytest.raises(AttributeError, match="minimize_memory"):
        _ = model.residuals_
    # nilearn's deprecated name, with nilearn 0.14.1's own message (which names 'residuals_' for all three)
    with pytest.warns(FutureWarning, match="residuals' is deprecated.\n It will be removed in Nilearn 0.16.0.\n"
                                           "Use 'residuals_' instead."), pytest.raises(AttributeError):
        _ = model.predicted
    (lazy,) = model.voxelwise("residuals")
    assert lazy.dims == ("time", "voxel") and lazy.chunks is not None  # dask-backed, not computed
    # Oracle: per-voxel least squares on the scaled signal read from the store.
    from daskglm.store.zarrio import open_run

    Y = np.asarray(open_run(model.results_[0].attrs["store"])["bold"].values, dtype=np.float64)
    mean = np.maximum(Y.mean(axis=0), 1.0)
    Ys = 100 * (Y / mean - 1)
    X = fiac["designs"][0].to_numpy()
    beta, *_ = np.linalg.lstsq(X, Ys, rcond=None)
    np.testing.assert_allclose(lazy.values, Ys - X @ beta, atol=1e-3)
    (r2,) = model.voxelwise("r_square")
    pred = X @ beta
    np.testing.assert_allclose(r2.values, pred.var(axis=0) / Ys.var(axis=0), rtol=1e-4)
    with pytest.raises(ValueError, match="'sse'"):
        model.voxelwise("sse")


@pytest.mark.parametrize("fwhm", [None, 5.0])
def test_non_finite_data_are_zeroed_as_nilearn(fiac, tmp_path, fwhm):
    """NaN and inf in a run become 0 before smoothing and masking, as nilearn's maskers do."""
    import nibabel as nib

    img = nib.load(fiac["runs"][0])
    data = np.asarray(img.dataobj, dtype=np.float32)
    inside = np.argwhere(nib.load(fiac["data"]["mask"]).get_fdata() > 0)
    data[tuple(inside[0])][5] = np.nan
    data[tuple(inside[10])][:] = np.nan  # a whole voxel lost: constant 0 once zeroed
    data[tuple(inside[20])][7] = np.inf
    data[tuple(inside[30])][9] = -np.inf
    path = tmp_path / "nonfinite.nii"
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    kwargs = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=fwhm)
    design = fiac["designs"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = FirstLevelModel(store=tmp_path / "stores", client="threads", **kwargs).fit(
            path, design_matrices=design).compute_contrast([[1, 0, 0, -1]], output_type="all")
        theirs = NilearnModel(**kwargs).fit(path, design_matrices=design).compute_contrast(
            [[1, 0, 0, -1]], output_type="all")
    # Without smoothing the all-NaN voxel has a constant signal: its residuals are
    # rounding noise (sigma2 ~ 1e-28) and both tools' statistics there are noise.
    degenerate = np.zeros(img.shape[:3], bool)
    if fwhm is None:
        degenerate[tuple(inside[10])] = True
    for key in theirs:
        a, b = ours[key].get_fdata(), theirs[key].get_fdata()
        assert np.isfinite(a).all(), key
        np.testing.assert_allclose(a[~degenerate], b[~degenerate], rtol=1e-4, atol=1e-4, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("with_mask", [True, False])
def test_target_affine_matches_nilearn(fiac, tmp_path, with_mask):
    """Runs resampled onto a 4 mm grid (nilearn's masker rules), two runs, AR(1)."""
    import nibabel as nib

    affine = nib.load(fiac["runs"][0]).affine
    target_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    target_affine[:3, 3] = affine[:3, 3]
    kwargs = dict(mask_img=fiac["data"]["mask"] if with_mask else None, smoothing_fwhm=5.0,
                  target_affine=target_affine, target_shape=(22, 24, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = FirstLevelModel(store=tmp_path, client="threads", **kwargs).fit(
            fiac["runs"], design_matrices=fiac["designs"])
        theirs = NilearnModel(**kwargs).fit(fiac["runs"], design_matrices=fiac["designs"])
        a = ours.compute_contrast([[-1, -1, 1, 1]], output_type="all")
        b = theirs.compute_contrast([[-1, -1, 1, 1]], output_type="all")
    np.testing.assert_array_equal(ours.mask_img_.get_fdata() > 0, theirs.masker_.mask_img_.get_fdata() > 0)
    for key in b:
        assert a[key].shape == b[key].shape == (22, 24, 10)
        np.testing.assert_allclose(a[key].affine, target_affine)
        assert_maps_match(a[key], b[key], "ar1", key)


def test_implicit_mask_of_runs_with_different_coverage_matches_nilearn(fiac, tmp_path):
    """mask_img=None over two runs: nilearn's compute_multi_epi_mask of both runs."""
    import nibabel as nib

    img = nib.load(fiac["runs"][1])
    data = np.asarray(img.dataobj).copy()
    data[:, :, -4:] = 0  # the second run lost its top slices
    cut = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(data, img.affine, img.header), cut)
    runs = [fiac["runs"][0], cut]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = FirstLevelModel(store=tmp_path / "stores", client="threads", noise_model="ols").fit(
            runs, design_matrices=fiac["designs"])
        theirs = NilearnModel(noise_model="ols").fit(runs, design_matrices=fiac["designs"])
        a, b = ours.compute_contrast([[-1, -1, 1, 1]]), theirs.compute_contrast([[-1, -1, 1, 1]])
    mask_ours, mask_theirs = ours.mask_img_.get_fdata() > 0, theirs.masker_.mask_img_.get_fdata() > 0
    first_only = FirstLevelModel(store=tmp_path / "stores", client="threads").fit(
        runs[0], design_matrices=fiac["designs"][0]).mask_img_.get_fdata() > 0
    assert (first_only != mask_theirs).any()  # the first run's mask alone would not do
    np.testing.assert_array_equal(mask_ours, mask_theirs)
    assert_maps_match(a, b, "ols")

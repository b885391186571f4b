"""FirstLevelModel on CIFTI-2 dense time series, against nilearn's GLM functions on the same matrix.

nilearn has no CIFTI reader, but its ``FirstLevelModel`` on an image is its masker's
``(time, voxel)`` float32 matrix through ``mean_scaling``, ``run_glm`` and
``compute_contrast`` (``compute_fixed_effect_contrast`` over runs): the oracle here is those
functions on the dense time series' matrix, which is what a user does today by hand.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from helpers import N_SCANS_CIFTI as N_SCANS
from helpers import T_R_CIFTI as T_R
from helpers import cifti_brain_models, cifti_run
from nilearn.glm.contrasts import compute_contrast, compute_fixed_effect_contrast
from nilearn.glm.first_level import make_first_level_design_matrix, mean_scaling, run_glm

from daskglm import FirstLevelModel

CONTRAST = "DStDSp - SStSSp"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifti")
    models = cifti_brain_models()
    out = []
    for seed in (1, 2):
        img, data, events = cifti_run(seed, models)
        path = root / f"sub-01_task-x_run-{seed}_bold.dtseries.nii"
        nib.save(img, path)
        out.append({"path": path, "data": data, "events": events, "img": img})
    return {"root": root, "models": models, "runs": out}


def _nilearn_z(runs, noise_model: str) -> np.ndarray:
    """nilearn's z of CONTRAST on each run's (time, grayordinate) float32 matrix, fixed effects over runs."""
    labels, results, contrasts = [], [], []
    for run in runs:
        design = make_first_level_design_matrix(np.arange(N_SCANS) * T_R, run["events"])
        y, _ = mean_scaling(run["data"])
        run_labels, run_results = run_glm(y, design.values, noise_model=noise_model)
        labels.append(run_labels)
        results.append(run_results)
        con = np.zeros(design.shape[1])
        con[list(design.columns).index("DStDSp")], con[list(design.columns).index("SStSSp")] = 1, -1
        contrasts.append(con)
    if len(runs) == 1:
        return compute_contrast(labels[0], results[0], contrasts[0]).z_score()
    return compute_fixed_effect_contrast(labels, results, contrasts).z_score()


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
@pytest.mark.parametrize("n_runs", [1, 2])
def test_z_maps_equal_nilearns_glm_on_the_same_matrix(runs, tmp_path, noise_model, n_runs):
    chosen = runs["runs"][:n_runs]
    model = FirstLevelModel(t_r=T_R, noise_model=noise_model, store=tmp_path / "stores", client="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's "the same contrast for every run"
        model.fit([str(r["path"]) for r in chosen], events=[r["events"] for r in chosen])
        z = model.compute_contrast(CONTRAST)
    assert isinstance(z, nib.Cifti2Image)
    ours = np.asarray(z.dataobj)[0]
    theirs = _nilearn_z(chosen, noise_model)
    if noise_model == "ols":
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    else:  # nilearn's AR(1) bins: a voxel whose rho sits on a bin edge may take the neighbouring label
        diff = np.abs(ours - theirs)
        assert (diff <= 1e-4).mean() >= 0.99 and diff.max() <= 1e-2, diff.max()
    assert ours[:30].mean() > 4 and abs(ours[30:].mean()) < 0.5  # the effect where it was put


def test_maps_are_dense_scalars_on_the_runs_braincifti_brain_models(runs, tmp_path):
    model = FirstLevelModel(t_r=T_R, store=tmp_path / "stores", client="threads")
    model.fit(str(runs["runs"][0]["path"]), events=runs["runs"][0]["events"])
    maps = model.compute_contrast(CONTRAST, output_type="all")
    assert set(maps) == {"z_score", "stat", "p_value", "effect_size", "effect_variance"}
    for name, img in maps.items():
        nib.save(img, tmp_path / f"{name}.dscalar.nii")
        back = nib.load(tmp_path / f"{name}.dscalar.nii")
        assert back.header.get_axis(1) == runs["models"]
        assert list(back.header.get_axis(0).name) == [name]
        np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))
    ds = model.contrast_dataset(CONTRAST)
    structures = dict(zip(*np.unique(ds["structure"].values, return_counts=True)))
    assert structures == {"CORTEX_LEFT": 150, "THALAMUS_LEFT": 48}
    z = ds["z_score"].values[np.argsort(ds["i"].values)]  # grayordinate order
    np.testing.assert_allclose(z, np.asarray(maps["z_score"].dataobj)[0], rtol=1e-6)


def test_an_in_memory_cifti_image_fits_as_its_file_does(runs, tmp_path):
    run = runs["runs"][0]
    from_file = FirstLevelModel(t_r=T_R, store=tmp_path / "a", client="threads").fit(
        str(run["path"]), events=run["events"]).compute_contrast(CONTRAST)
    in_memory = FirstLevelModel(t_r=T_R, store=tmp_path / "b", client="threads").fit(
        run["img"], events=run["events"]).compute_contrast(CONTRAST)
    np.testing.assert_array_equal(np.asarray(in_memory.dataobj), np.asarray(from_file.dataobj))


def test_runs_with_other_brain_models_are_refused_before_any_work(runs, tmp_path):
    other, _, events = cifti_run(3, cifti_brain_models(cortex=140))
    path = tmp_path / "other.dtseries.nii"
    nib.save(other, path)
    model = FirstLevelModel(t_r=T_R, store=tmp_path / "stores", client="threads")
    with pytest.raises(ValueError, match=r"brain models differ: .*other\.dtseries\.nii.*CORTEX_LEFT: 150 surface "
                                         r"grayordinates in .*, 140 in"):
        model.fit([str(runs["runs"][0]["path"]), str(path)], events=[runs["runs"][0]["events"], events])
    assert not (tmp_path / "stores").exists()


def test_cifti_specific_parameters_are_checked(runs, tmp_path, fiac_data):
    run = runs["runs"][0]
    with pytest.raises(ValueError, match="mask_img must be None for CIFTI runs"):
        FirstLevelModel(t_r=T_R, mask_img=fiac_data(shape=(8, 8, 6), n_scans=20)["mask"],
                        store=tmp_path, client="threads").fit(str(run["path"]), events=run["events"])
    volume = fiac_data(shape=(8, 8, 6), n_scans=N_SCANS)["func1"]
    with pytest.raises(ValueError, match=r"mix CIFTI dense time series and volumes"):
        FirstLevelModel(t_r=T_R, store=tmp_path, client="threads").fit(
            [str(run["path"]), volume], events=[run["events"], run["events"]])
    with pytest.warns(UserWarning, match="smoothing_fwhm' is not yet supported for CIFTI"):
        FirstLevelModel(t_r=T_R, smoothing_fwhm=5, store=tmp_path / "s", client="threads").fit(
            str(run["path"]), events=run["events"])


def test_residuals_and_r_square_are_cifti_images_and_reports_say_they_are_not_supported(runs, tmp_path):
    run = runs["runs"][0]
    model = FirstLevelModel(t_r=T_R, noise_model="ols", minimize_memory=False, store=tmp_path, client="threads")
    model.fit(str(run["path"]), events=run["events"])
    (residuals,), (r_square,) = model.residuals_, model.r_square_
    assert residuals.header.get_axis(1) == runs["models"] and residuals.shape == (N_SCANS, len(runs["models"]))
    assert residuals.header.get_axis(0).step == T_R
    # OLS residuals of the scaled data, as nilearn's run_glm computes them
    design = make_first_level_design_matrix(np.arange(N_SCANS) * T_R, run["events"])
    y, _ = mean_scaling(run["data"])
    _, results = run_glm(y, design.values, noise_model="ols")
    np.testing.assert_allclose(np.asarray(residuals.dataobj), results[0.0].residuals, rtol=1e-4, atol=1e-4)
    assert list(r_square.header.get_axis(0).name) == ["r_square"]
    with pytest.raises(NotImplementedError, match="generate_report does not support CIFTI"):
        model.generate_report(CONTRAST)


def test_more_grayordinates_than_nifti1_dimensions_fit_without_nibabels_warning(tmp_path):
    """91,282 grayordinates exceed NIfTI-1's 32,767 per dimension: the grid images are NIfTI-2, so nibabel's
    "large vector Freesurfer hack" warning (three per fit before) is not given."""
    import pandas as pd
    from nibabel.cifti2 import cifti2_axes

    models = cifti2_axes.BrainModelAxis.from_surface(np.arange(40000), 40000, "CortexLeft")
    rng = np.random.default_rng(0)
    data = rng.normal(100, 1, (20, 40000)).astype(np.float32)
    img = nib.Cifti2Image(data, header=(cifti2_axes.SeriesAxis(0, 2.0, 20, unit="SECOND"), models))
    img.nifti_header.set_intent("ConnDenseSeries")
    nib.save(img, tmp_path / "big.dtseries.nii")
    design = pd.DataFrame({"a": rng.random(20), "constant": 1.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = FirstLevelModel(t_r=2.0, store=tmp_path / "s").fit(tmp_path / "big.dtseries.nii",
                                                              design_matrices=design).compute_contrast("a")
    assert z.shape == (1, 40000)
    assert not [w for w in caught if "Freesurfer" in str(w.message)]


def test_arma11_is_each_grayordinates_own_reml_choice(runs, tmp_path):
    """No volume neighbours: each grayordinate's ARMA(1,1) point comes from its own residuals (no
    spatial smoothing, whatever daskglm.arma-smoothing-fwhm), as the kernels choose it on the matrix."""
    from daskglm.kernels import arma

    run = runs["runs"][0]
    model = FirstLevelModel(t_r=T_R, noise_model="arma11", store=tmp_path / "stores", client="threads")
    model.fit(str(run["path"]), events=run["events"])
    params = model.voxelwise("noise_parameters")[0]
    order = np.argsort(params["i"].values)
    X = model.design_matrices_[0].to_numpy()
    expected = arma.grid()[arma.reml_labels(arma.lag_correlations(run["data"], X), arma.prepare(X))]
    np.testing.assert_array_equal(params.values[:, order].T, expected)
    ours = np.asarray(model.compute_contrast(CONTRAST).dataobj)[0]
    assert ours[:30].mean() > 3 and abs(ours[30:].mean()) < 0.5  # the effect where it was put (one run)

"""FirstLevelModel on nilearn SurfaceImage runs (fsaverage5, shipped with nilearn), against nilearn 0.14's own.

The oracle is nilearn's ``FirstLevelModel`` and ``compute_fixed_effects`` run on the same
SurfaceImages: maps, masks, residuals and warnings must be nilearn's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import T_R_CIFTI as T_R
from nilearn.glm.contrasts import compute_fixed_effects as nilearn_fixed_effects
from nilearn.glm.first_level import FirstLevelModel as NilearnFirstLevelModel
from nilearn.glm.first_level import make_first_level_design_matrix
from nilearn.maskers import SurfaceMasker
from nilearn.surface import SurfaceImage

from daskglm import FirstLevelModel, compute_fixed_effects

N_SCANS = 80
CONTRAST = "DStDSp - SStSSp"
ACTIVE = slice(0, 40)  # the first vertices of the left hemisphere respond to DStDSp


@pytest.fixture(scope="module")
def mesh():
    from nilearn.datasets import load_fsaverage

    return load_fsaverage("fsaverage5")["pial"]


def _run(mesh, seed: int) -> tuple[SurfaceImage, object]:
    from daskglm.datasets import fiac_events

    rng = np.random.default_rng(seed)
    events = fiac_events(n_scans=N_SCANS, t_r=T_R, seed=seed)
    design = make_first_level_design_matrix(np.arange(N_SCANS) * T_R, events)
    data = {}
    for hemi in ("left", "right"):
        n = mesh.parts[hemi].n_vertices
        beta = np.zeros((design.shape[1], n))
        if hemi == "left":
            beta[list(design.columns).index("DStDSp"), ACTIVE] = 8.0
        noise = rng.normal(size=(N_SCANS, n))
        for t in range(1, N_SCANS):
            noise[t] += 0.4 * noise[t - 1]
        data[hemi] = (500 + design.values @ beta + 4 * noise).astype(np.float32).T  # (n_vertices, n_scans)
    return SurfaceImage(mesh, data), events


@pytest.fixture(scope="module")
def runs(mesh):
    return [_run(mesh, seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def half_mask(mesh):
    """Every other vertex of each hemisphere (a SurfaceImage of booleans)."""
    return SurfaceImage(mesh, {hemi: np.arange(mesh.parts[hemi].n_vertices) % 2 == 0 for hemi in ("left", "right")})


def _values(img: SurfaceImage) -> np.ndarray:
    return np.concatenate([np.asarray(img.data.parts[hemi]).ravel() for hemi in ("left", "right")])


def _fit_both(runs, tmp_path, **params):
    imgs, events = [r[0] for r in runs], [r[1] for r in runs]
    ours = FirstLevelModel(t_r=T_R, store=tmp_path / "stores", **params).fit(imgs, events=events)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnFirstLevelModel(t_r=T_R, **params).fit(imgs, events=events)
    return ours, theirs


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
@pytest.mark.parametrize("n_runs", [1, 2])
def test_z_maps_equal_nilearns(runs, tmp_path, noise_model, n_runs):
    ours, theirs = _fit_both(runs[:n_runs], tmp_path, noise_model=noise_model)
    z = ours.compute_contrast(CONTRAST)
    expected = theirs.compute_contrast(CONTRAST)
    assert isinstance(z, SurfaceImage)
    assert {h: z.data.parts[h].shape for h in z.data.parts} == {h: expected.data.parts[h].shape
                                                                for h in expected.data.parts}
    a, b = _values(z), _values(expected)
    if noise_model == "ols":
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    else:  # nilearn rounds each vertex's AR(1) coefficient to 0.01: a vertex at a bin edge may differ
        assert np.mean(np.abs(a - b) < 1e-3) > 0.99 and np.abs(a - b).max() < 0.2
    assert a[ACTIVE].mean() > 3 and abs(a[100:].mean()) < 0.2  # the simulated effect, where it was put


def test_surface_mask_and_outputs_equal_nilearns(runs, tmp_path, half_mask):
    ours, theirs = _fit_both(runs, tmp_path, mask_img=half_mask, noise_model="ols", minimize_memory=False)
    assert isinstance(ours.masker_, SurfaceMasker) and ours.masker_.n_elements_ == theirs.masker_.n_elements_
    np.testing.assert_array_equal(_values(ours.masker_.mask_img_), _values(theirs.masker_.mask_img_))
    outputs, expected = ours.compute_contrast(CONTRAST, output_type="all"), theirs.compute_contrast(
        CONTRAST, output_type="all")
    for name in ("effect_size", "effect_variance", "stat", "z_score", "p_value"):
        np.testing.assert_allclose(_values(outputs[name]), _values(expected[name]), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    assert (_values(outputs["z_score"])[1::2] == 0).all()  # outside the mask
    residuals, their_residuals = ours.residuals_, theirs.residuals_
    assert len(residuals) == 2 and isinstance(residuals[0], SurfaceImage)
    np.testing.assert_allclose(np.asarray(residuals[1].data.parts["left"]),
                               np.asarray(their_residuals[1].data.parts["left"]), rtol=1e-3, atol=1e-3)


def test_fixed_effects_of_surface_maps_equal_nilearns(runs, tmp_path, half_mask):
    maps = [FirstLevelModel(t_r=T_R, noise_model="ols", store=tmp_path / "stores").fit(img, events=events)
            .compute_contrast(CONTRAST, output_type="all") for img, events in runs]
    effects, variances = [m["effect_size"] for m in maps], [m["effect_variance"] for m in maps]
    for mask in (None, half_mask, SurfaceMasker(mask_img=half_mask)):
        for weighted in (False, True):
            ours = compute_fixed_effects(effects, variances, mask=mask, dofs=[70, 70], precision_weighted=weighted)
            theirs = nilearn_fixed_effects(effects, variances, mask=mask, dofs=[70, 70],
                                           precision_weighted=weighted)
            assert len(ours) == 4
            for a, b in zip(ours, theirs):
                assert isinstance(a, SurfaceImage)
                np.testing.assert_allclose(_values(a), _values(b), rtol=1e-5, atol=1e-6)


def test_smoothing_is_nilearns(runs, tmp_path):
    ours, theirs = _fit_both(runs[:1], tmp_path, smoothing_fwhm=6, noise_model="ols")
    np.testing.assert_allclose(_values(ours.compute_contrast(CONTRAST)), _values(theirs.compute_contrast(CONTRAST)),
                               rtol=1e-4, atol=1e-4)


def test_a_volume_mask_with_surface_runs_is_nilearns_type_error(runs, tmp_path, fiac_data):
    with pytest.raises(TypeError, match="Mask and input images must be of compatible types"):
        FirstLevelModel(t_r=T_R, mask_img=fiac_data(shape=(8, 8, 6), n_scans=20)["mask"],
                        store=tmp_path).fit(runs[0][0], events=runs[0][1])


def test_contrast_dataset_locates_each_vertex(runs, tmp_path, half_mask):
    ours, theirs = _fit_both(runs[:1], tmp_path, mask_img=half_mask, noise_model="ols")
    ds = ours.contrast_dataset(CONTRAST)
    z = theirs.compute_contrast(CONTRAST)
    for hemi in ("left", "right"):
        part = ds["z_score"].where(ds["part"] == hemi, drop=True)
        vertices = part["vertex"].values
        assert (vertices % 2 == 0).all() and vertices.size == z.data.parts[hemi].size // 2
        np.testing.assert_allclose(part.values, np.asarray(z.data.parts[hemi]).ravel()[vertices], rtol=1e-4,
                                   atol=1e-4)
    by_part = ds["z_score"].groupby("part").mean()
    assert by_part.sel(part="left") > by_part.sel(part="right")  # the effect is in the left hemisphere


def test_surface_runs_mixed_with_other_runs_are_refused(runs, tmp_path, fiac_data):
    volume = fiac_data(shape=(8, 8, 6), n_scans=N_SCANS)["func1"]
    with pytest.raises(ValueError, match=r"the runs mix SurfaceImages and other runs: run_imgs\[1\] is a str"):
        FirstLevelModel(t_r=T_R, store=tmp_path).fit([runs[0][0], volume], events=[runs[0][1]] * 2)


def test_arma11_is_each_vertexs_own_reml_choice(runs, tmp_path):
    """Surface runs are not regularised in space (no volume neighbours): each vertex's ARMA(1,1) point
    is the kernels' choice on its own time series, and the z map is a SurfaceImage showing the effect."""
    from daskglm.kernels import arma

    img, events = runs[0]
    model = FirstLevelModel(t_r=T_R, noise_model="arma11", store=tmp_path / "stores").fit(img, events=events)
    params = model.voxelwise("noise_parameters")[0]
    Y = np.concatenate([np.asarray(img.data.parts[h]) for h in ("left", "right")]).T  # (scans, vertices)
    X = model.design_matrices_[0].to_numpy()
    expected = arma.grid()[arma.reml_labels(arma.lag_correlations(Y, X), arma.prepare(X))]
    np.testing.assert_array_equal(params.values[:, np.argsort(params["i"].values)].T, expected)
    z = model.compute_contrast(CONTRAST)
    assert isinstance(z, SurfaceImage)
    a = _values(z)  # 80 scans, each vertex's own estimate: noisier than AR(1)'s, the effect still shows
    assert a[ACTIVE].mean() > 2 and abs(a[100:].mean()) < 0.2

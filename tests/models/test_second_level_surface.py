"""SecondLevelModel on nilearn SurfaceImage maps (fsaverage5, shipped with nilearn), against nilearn 0.14's own."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.second_level import SecondLevelModel as NilearnSecondLevelModel
from nilearn.maskers import SurfaceMasker
from nilearn.surface import SurfaceImage

from daskglm import SecondLevelModel

N_SUBJECTS = 12


@pytest.fixture(scope="module")
def mesh():
    from nilearn.datasets import load_fsaverage

    return load_fsaverage("fsaverage5")["pial"]


@pytest.fixture(scope="module")
def maps(mesh):
    """One effect map per subject: 1.0 at the first 50 left vertices, plus subject noise."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(N_SUBJECTS):
        data = {hemi: rng.normal(size=mesh.parts[hemi].n_vertices) for hemi in ("left", "right")}
        data["left"][:50] += 1.0
        out.append(SurfaceImage(mesh, data))
    return out


def _values(img: SurfaceImage) -> np.ndarray:
    return np.concatenate([np.asarray(img.data.parts[hemi]).ravel() for hemi in ("left", "right")])


def _both(inputs, design, **params):
    ours = SecondLevelModel(**params).fit(inputs, design_matrix=design)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnSecondLevelModel(**params).fit(inputs, design_matrix=design)
    return ours, theirs


def test_one_sample_test_equals_nilearns(maps):
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS)})
    ours, theirs = _both(maps, design)
    assert isinstance(ours.masker_, SurfaceMasker) and ours.n_elements_ == theirs.n_elements_
    outputs, expected = ours.compute_contrast("intercept", output_type="all"), theirs.compute_contrast(
        "intercept", output_type="all")
    for name, img in outputs.items():
        assert isinstance(img, SurfaceImage)
        np.testing.assert_allclose(_values(img), _values(expected[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    z = _values(outputs["z_score"])
    assert z[:50].mean() > 2.5 and abs(z[100:].mean()) < 0.1  # the simulated group effect, where it was put


def test_two_groups_with_a_mask_equal_nilearns(maps, mesh):
    design = pd.DataFrame({"a": np.repeat([1.0, 0.0], N_SUBJECTS // 2), "b": np.repeat([0.0, 1.0], N_SUBJECTS // 2)})
    mask = SurfaceImage(mesh, {hemi: np.arange(mesh.parts[hemi].n_vertices) < 3000 for hemi in ("left", "right")})
    ours, theirs = _both(maps, design, mask_img=mask)
    a, b = ours.compute_contrast("a - b", output_type="stat"), theirs.compute_contrast("a - b", output_type="stat")
    np.testing.assert_allclose(_values(a), _values(b), rtol=1e-5, atol=1e-6)
    assert (_values(a).reshape(2, -1)[:, 3000:] == 0).all()


def test_one_image_of_several_samples_is_several_maps(maps, mesh):
    # (ravel: fitting a list of 1D SurfaceImages makes them (n, 1), in nilearn's model as in daskglm's, which
    # calls nilearn's sample-map function)
    stacked = SurfaceImage(mesh, {hemi: np.stack([np.asarray(m.data.parts[hemi]).ravel() for m in maps], axis=1)
                                  for hemi in ("left", "right")})
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS)})
    ours, theirs = _both(stacked, design)
    np.testing.assert_allclose(_values(ours.compute_contrast()), _values(theirs.compute_contrast()), rtol=1e-5,
                               atol=1e-6)
    from_list = SecondLevelModel().fit(maps, design_matrix=design).compute_contrast()
    np.testing.assert_allclose(_values(ours.compute_contrast()), _values(from_list), rtol=1e-12)


def test_residuals_equal_nilearns(maps):
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS)})
    ours, theirs = _both(maps, design, minimize_memory=False)
    ours.compute_contrast()
    theirs.compute_contrast()
    np.testing.assert_allclose(np.asarray(ours.residuals_.data.parts["left"]),
                               np.asarray(theirs.residuals_.data.parts["left"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_values(ours.r_square_), _values(theirs.r_square_), rtol=1e-5, atol=1e-6)

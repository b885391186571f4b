"""Fixed effects and SecondLevelModel on CIFTI-2 dense scalar maps.

nilearn has no CIFTI type; the oracle is nilearn's ``compute_fixed_effects`` and
``SecondLevelModel`` on the same values as volumes (one voxel per grayordinate, every
voxel in the mask), which is the same statistics on the same numbers.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import T_R_CIFTI as T_R
from helpers import cifti_brain_models, cifti_run
from nibabel.cifti2 import cifti2_axes
from nilearn.glm.contrasts import compute_fixed_effects as nilearn_fixed_effects
from nilearn.glm.second_level import SecondLevelModel as NilearnSecondLevelModel

from daskglm import FirstLevelModel, SecondLevelModel, compute_fixed_effects

N_SUBJECTS = 8


@pytest.fixture(scope="module")
def models():
    return cifti_brain_models()


def _dscalar(values: np.ndarray, models, name: str = "effect") -> nib.Cifti2Image:
    img = nib.Cifti2Image(np.atleast_2d(values).astype(np.float32), header=(cifti2_axes.ScalarAxis([name]), models))
    img.nifti_header.set_intent("ConnDenseScalar")
    return img


def _as_volume(img: nib.Cifti2Image) -> nib.Nifti1Image:
    values = np.asarray(img.dataobj, dtype=np.float64)[0]
    return nib.Nifti1Image(values.reshape(-1, 1, 1), np.eye(4))


def _ones(n: int) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.ones((n, 1, 1), np.int8), np.eye(4))


@pytest.fixture(scope="module")
def subject_maps(models):
    rng = np.random.default_rng(3)
    effects = rng.normal(size=(N_SUBJECTS, len(models)))
    effects[:, :30] += 1.5
    return [_dscalar(e, models) for e in effects]


def test_fixed_effects_of_run_maps_equal_nilearns_on_the_same_values(models, tmp_path):
    maps = []
    for seed in (1, 2):
        img, _, events = cifti_run(seed, models)
        model = FirstLevelModel(t_r=T_R, noise_model="ols", store=tmp_path).fit(img, events=events)
        maps.append(model.compute_contrast("DStDSp", output_type="all"))
    effects, variances = [m["effect_size"] for m in maps], [m["effect_variance"] for m in maps]
    for weighted in (False, True):
        ours = compute_fixed_effects(effects, variances, dofs=[100, 100], precision_weighted=weighted)
        theirs = nilearn_fixed_effects([_as_volume(e) for e in effects], [_as_volume(v) for v in variances],
                                       mask=_ones(len(models)), dofs=[100, 100], precision_weighted=weighted)
        for a, b in zip(ours, theirs):
            assert isinstance(a, nib.Cifti2Image) and a.header.get_axis(1) == models
            np.testing.assert_allclose(np.asarray(a.dataobj)[0], b.get_fdata().ravel(), rtol=1e-5, atol=1e-6)
    z = np.asarray(ours[3].dataobj)[0]
    assert z[:30].mean() > 5 and abs(z[30:].mean()) < 1  # DStDSp responds at the first 30 vertices


def test_fixed_effects_refuse_a_mask_and_other_brain_models(models, subject_maps):
    with pytest.raises(ValueError, match="mask must be None for CIFTI maps"):
        compute_fixed_effects(subject_maps[:2], subject_maps[:2], mask=_ones(len(models)))
    other = _dscalar(np.ones(len(cifti_brain_models(thalamus=False))), cifti_brain_models(thalamus=False))
    with pytest.raises(ValueError, match="brain models differ: .*THALAMUS_LEFT only in contrast_imgs"):
        compute_fixed_effects([subject_maps[0], other], subject_maps[:2])


@pytest.mark.parametrize("as_paths", [False, True])
def test_one_sample_test_equals_nilearns_on_the_same_values(models, subject_maps, tmp_path, as_paths):
    inputs = subject_maps
    if as_paths:
        inputs = []
        for n, img in enumerate(subject_maps):
            nib.save(img, tmp_path / f"sub-{n:02d}_effect.dscalar.nii")
            inputs.append(str(tmp_path / f"sub-{n:02d}_effect.dscalar.nii"))
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS)})
    ours = SecondLevelModel().fit(inputs, design_matrix=design).compute_contrast("intercept", output_type="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnSecondLevelModel(mask_img=_ones(len(models))).fit(
            [_as_volume(img) for img in subject_maps], design_matrix=design).compute_contrast(
            "intercept", output_type="all")
    for name, img in ours.items():
        assert isinstance(img, nib.Cifti2Image) and img.header.get_axis(1) == models
        np.testing.assert_allclose(np.asarray(img.dataobj)[0], theirs[name].get_fdata().ravel(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    z = np.asarray(ours["z_score"].dataobj)[0]
    assert z[:30].mean() > 2.5 and abs(z[30:].mean()) < 0.5


def test_second_level_of_first_level_models_fitted_on_cifti(models, tmp_path):
    firsts, effects = [], []
    for seed in range(1, 5):
        img, _, events = cifti_run(seed, models)
        model = FirstLevelModel(t_r=T_R, noise_model="ols", subject_label=f"{seed:02d}", store=tmp_path).fit(
            img, events=events)
        firsts.append(model)
        effects.append(model.compute_contrast("DStDSp", output_type="effect_size"))
    z = SecondLevelModel().fit(firsts).compute_contrast(first_level_contrast="DStDSp")
    from_maps = SecondLevelModel().fit(effects, design_matrix=pd.DataFrame({"intercept": np.ones(4)})
                                       ).compute_contrast()
    assert isinstance(z, nib.Cifti2Image) and z.header.get_axis(1) == models
    np.testing.assert_allclose(np.asarray(z.dataobj), np.asarray(from_maps.dataobj), rtol=1e-6)


def test_second_level_cifti_errors(models, subject_maps):
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS)})
    with pytest.raises(ValueError, match="mask_img must be None for CIFTI maps"):
        SecondLevelModel(mask_img=_ones(len(models))).fit(subject_maps, design_matrix=design)
    with pytest.raises(ValueError, match="require a design matrix"):
        SecondLevelModel().fit(subject_maps)
    model = SecondLevelModel().fit(subject_maps, design_matrix=design)
    with pytest.raises(NotImplementedError, match="CIFTI"):
        model.generate_report("intercept")

"""daskglm's FirstLevelModel as a nilearn estimator: subclassing, scikit-learn's protocol, nilearn's
estimator checks on volume data, masks given as maskers, stores keyed by their parameters."""

from __future__ import annotations

import inspect
import os
import pickle
from unittest import mock

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel as NilearnModel
from nilearn.maskers import NiftiMasker
from nilearn_checks import nilearn_checks, run_on_volume_data
from sklearn.base import clone

import daskglm
from daskglm.models.first_level import FirstLevelModel

SHAPE = (7, 8, 9)
N_SCANS = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run with a known effect, its mask and design, on disk."""
    root = tmp_path_factory.mktemp("model_protocol")
    rng = np.random.default_rng(5)
    design = pd.DataFrame({"task": np.tile([0.0, 1.0], N_SCANS // 2), "constant": np.ones(N_SCANS)})
    signal = 100 + 3 * design["task"].to_numpy()
    data = signal + rng.normal(0, 1, (*SHAPE, N_SCANS))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    path = root / "sub-01_task-x_bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    mask = np.zeros(SHAPE, np.int8)
    mask[1:6, 1:7, 2:8] = 1
    mask_path = root / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    return {"path": str(path), "mask": str(mask_path), "design": design, "root": root, "affine": affine}


def test_is_a_nilearn_estimator_with_its_parameters():
    model = daskglm.FirstLevelModel()
    assert isinstance(model, NilearnModel) and str(model) == "First Level Model"
    ours = inspect.signature(FirstLevelModel.__init__).parameters
    theirs = inspect.signature(NilearnModel.__init__).parameters
    for name, param in theirs.items():
        default = -1 if name == "n_jobs" else param.default  # daskglm: one worker per core
        assert ours[name].default == default and ours[name].kind == param.kind, name
    own = [n for n in ours if n not in theirs]
    assert own == ["store", "storage_options", "t_chunk", "v_chunk", "client", "overwrite"]
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in own)
    params = model.get_params()
    assert set(params) == set(theirs) - {"self"} | set(own) and params["verbose"] == 0
    changed = clone(model.set_params(v_chunk=500, client="threads", smoothing_fwhm=4.0))
    assert (changed.v_chunk, changed.client, changed.smoothing_fwhm) == (500, "threads", 4.0)
    assert type(changed) is FirstLevelModel and not changed.__sklearn_is_fitted__()


def test_clone_shares_a_live_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        model = FirstLevelModel(client=client, noise_model="ols")
        copy = clone(model)
        assert copy.client is client and copy is not model and copy.noise_model == "ols"


@pytest.mark.slow  # nilearn's whole battery of estimator checks, as tests/nilearn_suite: slow
@pytest.mark.parametrize(("estimator", "check"), nilearn_checks(FirstLevelModel(client="threads")))
def test_nilearn_estimator_checks_on_volume_data(estimator, check, request, tmp_path, monkeypatch):
    """nilearn's own estimator checks, on volume data in place of their surface data (tests/nilearn_suite's)."""
    run_on_volume_data(check, estimator, request.node.callspec.id, tmp_path, monkeypatch)


def test_masker_as_mask_img(run, tmp_path):
    """A fitted NiftiMasker brings its mask and smoothing (nilearn's rule); it becomes ``masker_``."""
    masker = NiftiMasker(mask_img=run["mask"], smoothing_fwhm=6.0).fit()
    ours = FirstLevelModel(mask_img=masker, smoothing_fwhm=None, store=tmp_path, client="threads")
    ours.fit(run["path"], design_matrices=run["design"])
    theirs = NilearnModel(mask_img=NiftiMasker(mask_img=run["mask"], smoothing_fwhm=6.0).fit())
    theirs.fit(run["path"], design_matrices=run["design"])
    assert ours.masker_ is masker and ours.n_elements_ == theirs.n_elements_
    np.testing.assert_allclose(ours.compute_contrast("task").get_fdata(),
                               theirs.compute_contrast("task").get_fdata(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="NiftiMasker instance is not fitted yet"):
        FirstLevelModel(mask_img=NiftiMasker(run["mask"]), store=tmp_path).fit(
            run["path"], design_matrices=run["design"])
    with pytest.raises(NotImplementedError, match="detrend"):
        FirstLevelModel(mask_img=NiftiMasker(run["mask"], detrend=True).fit(), store=tmp_path).fit(
            run["path"], design_matrices=run["design"])


def test_mask_img_false_fits_every_voxel(run, tmp_path):
    model = FirstLevelModel(mask_img=False, noise_model="ols", store=tmp_path, client="threads")
    model.fit(run["path"], design_matrices=run["design"])
    assert model.n_elements_ == int(np.prod(SHAPE)) and model.mask_img is False
    theirs = NilearnModel(mask_img=False, noise_model="ols").fit(run["path"], design_matrices=run["design"])
    np.testing.assert_allclose(model.compute_contrast("task", output_type="effect_size").get_fdata(),
                               theirs.compute_contrast("task", output_type="effect_size").get_fdata(),
                               rtol=1e-5, atol=1e-6)


def test_events_without_t_r_raise_as_nilearn(run, tmp_path):
    events = pd.DataFrame({"onset": [2.0, 10.0], "duration": [1.0, 1.0], "trial_type": ["a", "a"]})
    for model in (FirstLevelModel(mask_img=run["mask"], store=tmp_path), NilearnModel(mask_img=run["mask"])):
        with pytest.raises(ValueError, match="t_r not given"):
            model.fit(run["path"], events=events)


def test_switching_parameters_reuses_each_store(run, tmp_path, recwarn):
    """One store per source and ingestion parameters: switching smoothing and back rebuilds nothing."""
    def fit(fwhm):
        model = FirstLevelModel(mask_img=run["mask"], smoothing_fwhm=fwhm, store=tmp_path, client="threads")
        return model.fit(run["path"], design_matrices=run["design"])

    first = fit(None).results_[0].attrs["store"]
    modified = {p: os.stat(os.path.join(p, "zarr.json")).st_mtime_ns for p in [first]}
    second = fit(6.0).results_[0].attrs["store"]
    assert second != first
    assert fit(None).results_[0].attrs["store"] == first
    assert not [w for w in recwarn if "rebuilding" in str(w.message)]
    # the first store was reused as it was, not rebuilt: its creation did not change
    assert os.stat(os.path.join(first, "zarr.json")).st_mtime_ns >= modified[first]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".zarr") == sorted(
        os.path.basename(p) for p in (first, second))


def test_memory_is_where_stores_go(run, tmp_path):
    model = FirstLevelModel(mask_img=run["mask"], memory=str(tmp_path / "cache"), client="threads")
    model.fit(run["path"], design_matrices=run["design"])
    assert model.results_[0].attrs["store"].startswith(str(tmp_path / "cache" / "daskglm"))


def test_dir_and_repr_compute_nothing(run, tmp_path):
    """scikit-learn's dir() (behind its HTML repr) must not recompute residuals over the data."""
    model = FirstLevelModel(mask_img=run["mask"], minimize_memory=False, store=tmp_path, client="threads")
    model.fit(run["path"], design_matrices=run["design"])
    with mock.patch.object(FirstLevelModel, "_get_element_wise_model_attribute",
                           side_effect=AssertionError("computed")):
        names = dir(model)
        model._repr_html_()
    assert "residuals_" not in names and "results_" in names
    residuals = model.residuals_[0]  # computed when read, then listed
    assert residuals.shape == (*SHAPE, N_SCANS) and "residuals_" in dir(model)


def test_pickle_round_trip(run, tmp_path):
    model = FirstLevelModel(mask_img=run["mask"], store=tmp_path, client="threads")
    model.fit(run["path"], design_matrices=run["design"])
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.compute_contrast("task").get_fdata(),
                                  model.compute_contrast("task").get_fdata())

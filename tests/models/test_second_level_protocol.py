"""daskglm's SecondLevelModel as a nilearn estimator: subclassing, scikit-learn protocol, nilearn's checks,
reports and BIDS outputs (nilearn 0.14's own code run on it)."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import pickle
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.second_level import SecondLevelModel as NilearnModel
from nilearn_checks import nilearn_checks, run_on_volume_data, volume_data
from sklearn.base import clone

import daskglm
from daskglm.models.second_level import SecondLevelModel

SHAPE = (9, 10, 8)
N_MAPS = 6


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("second_level_protocol")
    rng = np.random.default_rng(11)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = []
    for s in range(N_MAPS):
        paths.append(str(root / f"sub-{s:02d}_effect.nii.gz"))
        nib.save(nib.Nifti1Image(rng.normal(size=SHAPE) + 2.0, affine), paths[-1])
    mask = np.zeros(SHAPE, np.int8)
    mask[1:8, 2:9, 1:7] = 1
    nib.save(nib.Nifti1Image(mask, affine), root / "mask.nii.gz")
    design = pd.DataFrame({"intercept": np.ones(N_MAPS), "age": np.linspace(-1, 1, N_MAPS)})
    return {"paths": paths, "mask": str(root / "mask.nii.gz"), "design": design, "root": root}


def test_is_a_nilearn_estimator_with_its_parameters():
    model = daskglm.SecondLevelModel()
    assert isinstance(model, NilearnModel) and str(model) == "Second Level Model"
    ours = inspect.signature(SecondLevelModel.__init__).parameters
    theirs = inspect.signature(NilearnModel.__init__).parameters
    for name, param in theirs.items():
        assert ours[name].default == param.default and ours[name].kind == param.kind, name
    assert [n for n in ours if n not in theirs] == ["client", "v_chunk"]
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("client", "v_chunk"))
    params = model.get_params()
    assert params["verbose"] == 0 and params["client"] is None and params["v_chunk"] is None
    assert set(params) == set(theirs) - {"self"} | {"client", "v_chunk"}
    changed = clone(model.set_params(v_chunk=500, client="threads", smoothing_fwhm=4.0))
    assert (changed.v_chunk, changed.client, changed.smoothing_fwhm) == (500, "threads", 4.0)
    assert type(changed) is SecondLevelModel and not changed.__sklearn_is_fitted__()
    assert model.__sklearn_tags__().input_tags.niimg_like


@pytest.mark.slow  # nilearn's whole battery of estimator checks, as tests/nilearn_suite: slow
@pytest.mark.parametrize(("estimator", "check"), nilearn_checks(SecondLevelModel(client="threads")))
def test_nilearn_estimator_checks_on_volume_data(estimator, check, request, tmp_path, monkeypatch):
    """nilearn's own estimator checks, on volume data in place of their surface data (tests/nilearn_suite's)."""
    run_on_volume_data(check, estimator, request.node.callspec.id, tmp_path, monkeypatch)


def test_empty_volume_data_message():
    """The volume half of nilearn's check_glm_empty_data_messages."""
    _, design = volume_data()
    with pytest.raises(ValueError, match="empty"):
        SecondLevelModel(client="threads").fit([nib.Nifti1Image(np.zeros((7, 9, 0)), np.eye(4))] * 5,
                                               design_matrix=design)


def test_verbose_messages(maps):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        SecondLevelModel(verbose=1, client="threads").fit(maps["paths"], design_matrix=maps["design"])
    assert "SecondLevelModel.fit" in out.getvalue() and "Computation of second level model done in" in out.getvalue()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        SecondLevelModel(client="threads").fit(maps["paths"], design_matrix=maps["design"])
    assert quiet.getvalue() == ""


def test_generate_report(maps):
    model = SecondLevelModel(mask_img=maps["mask"], client="threads").fit(maps["paths"],
                                                                         design_matrix=maps["design"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = model.generate_report(contrasts={"age": "age", "both": np.eye(2)}, height_control="fpr",
                                       alpha=0.05)
    html = report.get_standalone()
    for text in ('id="design-matrix-', 'id="statistical-maps-', "The mask includes", "age"):
        assert text in html


@pytest.mark.slow
def test_save_glm_to_bids_equals_nilearn(maps, tmp_path):
    """nilearn's save_glm_to_bids on daskglm's model: nilearn's files, nilearn's numbers."""
    from nilearn.glm import save_glm_to_bids

    contrasts = {"age effect": "age"}
    written = {}
    for label, cls in (("ours", SecondLevelModel), ("theirs", NilearnModel)):
        kwargs = {"client": "threads"} if cls is SecondLevelModel else {}
        model = cls(mask_img=maps["mask"], minimize_memory=False, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(maps["paths"], design_matrix=maps["design"])
            save_glm_to_bids(model, contrasts, out_dir=tmp_path / label, prefix="task-x")
        written[label] = sorted(p.relative_to(tmp_path / label).as_posix() for p in (tmp_path / label).rglob("*")
                                if p.is_file())
    assert written["ours"] == written["theirs"]
    assert "group/task-x_stat-errorts_statmap.nii.gz" in written["ours"]
    for name in written["ours"]:
        if name.endswith(".nii.gz"):
            ours, theirs = nib.load(tmp_path / "ours" / name), nib.load(tmp_path / "theirs" / name)
            assert ours.shape == theirs.shape, name
            np.testing.assert_allclose(ours.get_fdata(), theirs.get_fdata(), rtol=1e-8, atol=1e-10, err_msg=name)
        elif name.endswith(".json") and "dataset_description" not in name:
            assert json.loads((tmp_path / "ours" / name).read_text()) == json.loads(
                (tmp_path / "theirs" / name).read_text()), name


def test_fitted_model_pickles_and_clones(maps):
    model = SecondLevelModel(mask_img=maps["mask"], minimize_memory=False, client="threads")
    model.fit(maps["paths"], design_matrix=maps["design"]).compute_contrast("age")
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copy.r_square_.get_fdata(), model.r_square_.get_fdata())
    fresh = clone(model)
    assert not fresh.__sklearn_is_fitted__() and fresh.get_params() == model.get_params()


def test_clone_shares_a_live_client():
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=False) as client:
            model = SecondLevelModel(client=client, v_chunk=64)
            copy = clone(model)
            assert copy.client is client and copy.v_chunk == 64 and model.client is client


def test_dir_and_repr_compute_nothing(maps):
    """scikit-learn's dir() (behind its HTML repr) must not compute residuals over the maps."""
    from unittest import mock

    model = SecondLevelModel(mask_img=maps["mask"], minimize_memory=False, client="threads")
    model.fit(maps["paths"], design_matrix=maps["design"])
    model.compute_contrast("age")
    with mock.patch.object(SecondLevelModel, "_get_element_wise_model_attribute",
                           side_effect=AssertionError("computed")):
        names = dir(model)
        model._repr_html_()
    assert "residuals_" not in names and "results_" in names
    assert model.residuals_.shape == (*SHAPE, N_MAPS) and "residuals_" in dir(model)  # computed when read
    model.compute_contrast("intercept")  # new results: the cached residuals are dropped
    assert "residuals_" not in dir(model)

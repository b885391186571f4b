"""SecondLevelModel out of core, against nilearn 0.14's SecondLevelModel."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import TaskCounter
from nilearn.glm.second_level import SecondLevelModel as NilearnModel
from scipy.ndimage import gaussian_filter

import daskglm
from daskglm.glm import contrasts
from daskglm.models import second_level
from daskglm.models.second_level import SecondLevelModel

SHAPE = (12, 13, 10)
N_MAPS = 16
OUTPUTS = ("z_score", "stat", "p_value", "effect_size", "effect_variance")


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """16 smooth effect maps (.nii, float64) with a group effect, zero outside a brain; a box mask."""
    root = tmp_path_factory.mktemp("second_level")
    rng = np.random.default_rng(3)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    affine[:3, 3] = [-18.0, -20.0, -15.0]
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    brain = ((x - 6) / 5.5) ** 2 + ((y - 6) / 6) ** 2 + ((z - 4.5) / 4.5) ** 2 < 1
    blob = np.exp(-((x - 4) ** 2 + (y - 7) ** 2 + (z - 5) ** 2) / 8)
    group = np.arange(N_MAPS) % 2  # two groups; also read as condition of 8 subject pairs
    subject = np.arange(N_MAPS) // 2
    paths, arrays = [], []
    for s in range(N_MAPS):
        data = gaussian_filter(rng.normal(size=SHAPE), 1.0) * 2 + blob * (1 + group[s]) + 0.3 * subject[s]
        arrays.append(np.where(brain, data, 0.0))
        paths.append(str(root / f"effect{s:02d}.nii"))
        nib.save(nib.Nifti1Image(arrays[-1], affine), paths[-1])
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:10, 2:11, 2:8] = 1
    mask_path = str(root / "mask.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    designs = {
        "one_sample": pd.DataFrame({"intercept": np.ones(N_MAPS)}),
        "two_sample": pd.DataFrame({"group_a": (group == 0) * 1.0, "group_b": (group == 1) * 1.0}),
        "paired": pd.concat([pd.DataFrame({"condition": np.where(group == 1, 1.0, -1.0)}),
                             pd.get_dummies(subject, prefix="sub", dtype=float)], axis=1),
    }
    return {"root": root, "affine": affine, "paths": paths, "arrays": arrays, "mask": mask.astype(bool),
            "mask_path": mask_path, "designs": designs}


CONTRASTS = {"one_sample": None, "two_sample": "group_b - group_a", "paired": "condition"}


def _nilearn(inputs, design=None, contrast=None, first_level_contrast=None, stat_type=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NilearnModel(**kwargs).fit(inputs, design_matrix=design)
        return model.compute_contrast(contrast, first_level_contrast=first_level_contrast,
                                      second_level_stat_type=stat_type, output_type="all")


def _ours(inputs, design=None, contrast=None, first_level_contrast=None, stat_type=None, v_chunk=120,
          client="threads", **kwargs):
    model = SecondLevelModel(client=client, v_chunk=v_chunk, **kwargs).fit(inputs, design_matrix=design)
    return model.compute_contrast(contrast, first_level_contrast=first_level_contrast,
                                  second_level_stat_type=stat_type, output_type="all")


def _assert_same(ours, theirs, rtol=1e-7, atol=1e-10):
    assert set(ours) == set(theirs) == set(OUTPUTS)
    for name in OUTPUTS:
        mine, ref = ours[name], theirs[name]
        assert isinstance(mine, nib.Nifti1Image), name
        assert mine.shape == ref.shape, name
        np.testing.assert_array_equal(mine.affine, ref.affine)
        np.testing.assert_allclose(mine.get_fdata(), ref.get_fdata(), rtol=rtol, atol=atol, err_msg=name)
    assert np.count_nonzero(ours["z_score"].get_fdata()) > 100


@pytest.mark.parametrize("design", ["one_sample", "two_sample", "paired"])
@pytest.mark.parametrize("fwhm", [None, 6.0])
@pytest.mark.parametrize("mask_kind", ["path", None])
def test_designs_equal_nilearn(maps, design, fwhm, mask_kind):
    mask = maps["mask_path"] if mask_kind else None
    dm, con = maps["designs"][design], CONTRASTS[design]
    expected = _nilearn(maps["paths"], dm, con, mask_img=mask, smoothing_fwhm=fwhm)
    ours = _ours(maps["paths"], dm, con, mask_img=mask, smoothing_fwhm=fwhm)
    _assert_same(ours, expected)
    if mask_kind is None:  # nilearn's background mask of the mean map: the brain, not the box
        assert np.count_nonzero(ours["z_score"].get_fdata()) > maps["mask"].sum()


@pytest.mark.parametrize("fwhm", [None, 5.0])
def test_f_contrasts_equal_nilearn(maps, fwhm):
    dm = maps["designs"]["two_sample"]
    for con, stat_type in ((np.eye(2), None), ("group_a - group_b", "F"), ([[1, 0], [1, -1]], None)):
        expected = _nilearn(maps["paths"], dm, con, stat_type=stat_type, mask_img=maps["mask_path"],
                            smoothing_fwhm=fwhm)
        ours = _ours(maps["paths"], dm, con, stat_type=stat_type, mask_img=maps["mask_path"], smoothing_fwhm=fwhm)
        _assert_same(ours, expected)
        q = 1 if isinstance(con, str) else len(con)
        assert ours["effect_size"].shape == SHAPE + (q,)


def test_image_inputs_equal_nilearn(maps, tmp_path):
    affine, dm = maps["affine"], maps["designs"]["two_sample"]
    images = [nib.Nifti1Image(a, affine) for a in maps["arrays"]]
    four_d = nib.Nifti1Image(np.stack(maps["arrays"], axis=-1), affine)
    nib.save(four_d, tmp_path / "all.nii.gz")
    for fwhm in (None, 6.0):
        expected = _nilearn(images, dm, "group_a", smoothing_fwhm=fwhm)
        for inputs in (images, four_d, str(tmp_path / "all.nii.gz"), pd.Series(maps["paths"]),
                       [Path(p) for p in maps["paths"]]):
            _assert_same(_ours(inputs, dm, "group_a", smoothing_fwhm=fwhm), expected)
    # as nilearn: all elements of one type
    with pytest.raises(TypeError, match="must be of the same type. Got object type <class 'str'> at idx 5"):
        _ours(images[:5] + maps["paths"][5:], dm, "group_a")


@pytest.mark.slow
def test_float32_and_gzipped_maps_equal_nilearn(maps, tmp_path):
    paths = []
    for n, data in enumerate(maps["arrays"]):
        paths.append(str(tmp_path / f"e{n}.nii.gz"))
        nib.save(nib.Nifti1Image(data.astype(np.float32), maps["affine"]), paths[-1])
    dm = maps["designs"]["paired"]
    for fwhm in (None, 4.0):  # nilearn smooths float32 maps in float32: so do we
        _assert_same(_ours(paths, dm, "condition", smoothing_fwhm=fwhm),
                     _nilearn(paths, dm, "condition", smoothing_fwhm=fwhm), rtol=1e-6)
        # nilearn casts every map to the first map's dtype (its concatenation)
        mixed = paths[:1] + maps["paths"][1:]
        _assert_same(_ours(mixed, dm, "condition", smoothing_fwhm=fwhm),
                     _nilearn(mixed, dm, "condition", smoothing_fwhm=fwhm), rtol=1e-6)


def test_non_finite_and_integer_maps_as_nilearn(maps):
    arrays = [a.copy() for a in maps["arrays"]]
    arrays[3][4, 5, 4], arrays[7][6, 6, 3], arrays[9][0, 0, 0] = np.nan, np.inf, np.nan  # nilearn: zeros
    images = [nib.Nifti1Image(a, maps["affine"]) for a in arrays]
    integers = [nib.Nifti1Image(np.round(a * 100).astype(np.int32), maps["affine"]) for a in maps["arrays"]]
    dm = maps["designs"]["one_sample"]
    for inputs in (images, integers):
        for fwhm, mask in ((None, None), (5.0, maps["mask_path"])):
            ours = _ours(inputs, dm, smoothing_fwhm=fwhm, mask_img=mask)
            _assert_same(ours, _nilearn(inputs, dm, smoothing_fwhm=fwhm, mask_img=mask), rtol=1e-6)
            assert all(np.isfinite(img.get_fdata()).all() for img in ours.values())


def test_niftimasker_mask_brings_its_smoothing(maps):
    from nilearn.maskers import NiftiMasker

    dm = maps["designs"]["two_sample"]
    expected = _nilearn(maps["paths"], dm, "group_a", mask_img=NiftiMasker(maps["mask_path"], smoothing_fwhm=5.0),
                        smoothing_fwhm=8.0)
    with pytest.warns(UserWarning, match="Overriding provided-default estimator parameters with provided masker "
                                         "parameters"):
        ours = _ours(maps["paths"], dm, "group_a", mask_img=NiftiMasker(maps["mask_path"], smoothing_fwhm=5.0),
                     smoothing_fwhm=8.0)
    _assert_same(ours, expected)
    # a fitted masker with no mask_img of its own: its computed mask is used, as nilearn
    fitted = NiftiMasker().fit(maps["paths"][0])
    _assert_same(_ours(maps["paths"], dm, "group_a", mask_img=fitted),
                 _nilearn(maps["paths"], dm, "group_a", mask_img=fitted))
    # options that clean the maps are refused, naming them
    with pytest.raises(NotImplementedError, match=r"NiftiMasker with \{'detrend': True\}"):
        _ours(maps["paths"], dm, "group_a", mask_img=NiftiMasker(maps["mask_path"], detrend=True))


def test_dataframe_input_equals_nilearn(maps):
    n = N_MAPS // 2
    rows = [{"subject_label": f"sub-{s:02d}", "map_name": name, "effects_map_path": maps["paths"][2 * s + c]}
            for s in range(n) for c, name in enumerate(("faces", "houses"))]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # shuffled: nilearn sorts by subject_label
    confounds = pd.DataFrame({"subject_label": [f"sub-{s:02d}" for s in range(n)], "age": np.arange(n) - 3.5})
    one_per_subject = pd.DataFrame({"intercept": np.ones(n)})
    for fwhm, mask in ((None, None), (6.0, maps["mask_path"])):
        expected = _nilearn(frame, one_per_subject, "intercept", first_level_contrast="houses", mask_img=mask,
                            smoothing_fwhm=fwhm)
        model = SecondLevelModel(mask_img=mask, smoothing_fwhm=fwhm, client="threads", v_chunk=120)
        model.fit(frame, design_matrix=one_per_subject)
        ours = model.compute_contrast("intercept", first_level_contrast="houses", output_type="all")
        _assert_same(ours, expected)
        assert list(model.second_level_input_["subject_label"]) == sorted(frame["subject_label"])
    # as nilearn: the default design has one row per DataFrame row, whatever the map names
    with pytest.raises(ValueError, match="16 rows in design matrix do not match with 8 maps"):
        SecondLevelModel(client="threads").fit(frame).compute_contrast(first_level_contrast="houses")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selected = frame[frame["map_name"] == "faces"]
        expected = NilearnModel().fit(selected, confounds=confounds).compute_contrast(
            "age", first_level_contrast="faces", output_type="all")
    model = SecondLevelModel(client="threads", v_chunk=120).fit(selected, confounds=confounds)
    assert list(model.design_matrix_.columns) == ["age", "intercept"]
    _assert_same(model.compute_contrast("age", first_level_contrast="faces", output_type="all"), expected)


@pytest.fixture(scope="module")
def first_level(tmp_path_factory, fiac_data):
    """Four simulated FIAC-like subjects fitted (OLS) by daskglm and by nilearn.

    ``ours`` hold their (small) fits in memory, as by default; ``ours_lazy`` keep them lazy in
    the stores' 64-voxel blocks (a ``daskglm.fit-memory-bytes`` budget of 0, lazy chunks of one
    stored block).
    """
    from unittest import mock

    import dask
    from nilearn.glm.first_level import FirstLevelModel as NilearnFirstLevel

    import daskglm.glm.fitstore
    from daskglm.datasets.fiac import load_fiac_design_matrix
    from daskglm.models.first_level import FirstLevelModel

    root = tmp_path_factory.mktemp("first_level")
    ours, ours_lazy, theirs = [], [], []
    for seed in range(4):
        data = fiac_data(shape=(10, 11, 8), n_scans=40, n_runs=1, seed=seed, compress=False)
        design = load_fiac_design_matrix(data["design_matrix1"])
        kwargs = {"mask_img": data["mask"], "noise_model": "ols", "subject_label": f"{seed:02d}"}
        ours.append(FirstLevelModel(store=root / "stores", client="threads", v_chunk=64, **kwargs)
                    .fit(data["func1"], design_matrices=design))
        with dask.config.set({"daskglm.fit-memory-bytes": 0}), \
                mock.patch.object(daskglm.glm.fitstore, "LAZY_CHUNK_BYTES", 1):
            ours_lazy.append(FirstLevelModel(store=root / "stores_lazy", client="threads", v_chunk=64, **kwargs)
                             .fit(data["func1"], design_matrices=design))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.append(NilearnFirstLevel(**kwargs).fit(data["func1"], design_matrices=design))
    assert all(isinstance(m.results_[0]["beta"].data, np.ndarray) for m in ours)
    assert all(len(m.results_[0]["beta"].data.chunks[1]) > 1 for m in ours_lazy)
    return {"ours": ours, "ours_lazy": ours_lazy, "theirs": theirs, "mask": data["mask"]}


@pytest.mark.parametrize(("mask_kind", "fwhm"), [(None, None), ("given", 5.0)])
def test_first_level_models_equal_nilearn(first_level, mask_kind, fwhm):
    mask = first_level["mask"] if mask_kind else None
    con = "SStSSp - DStDSp"
    expected = _nilearn(first_level["theirs"], first_level_contrast=con, mask_img=mask, smoothing_fwhm=fwhm)
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=fwhm, client="threads", v_chunk=80)
    ours = model.fit(first_level["ours"]).compute_contrast(first_level_contrast=con, output_type="all")
    # first-level fits agree with nilearn's to ~1e-9 relative; the group maps to the same precision
    _assert_same(ours, expected, rtol=1e-6, atol=1e-8)
    # nilearn's own models as inputs (their effect maps are computed eagerly)
    _assert_same(_ours(first_level["theirs"], first_level_contrast=con, mask_img=mask, smoothing_fwhm=fwhm),
                 expected)
    # and nilearn fed with our first-level effect maps gives our numbers
    effects = [m.compute_contrast(con, output_type="effect_size") for m in first_level["ours"]]
    intercept = pd.DataFrame({"intercept": np.ones(len(effects))})
    _assert_same(ours, _nilearn(effects, intercept, mask_img=model.mask_img_, smoothing_fwhm=fwhm))


@pytest.mark.parametrize("kind", ["paths", "images", "4d_path", "models", "lazy_models"])
def test_graph_is_lazy_and_no_task_holds_all_maps(maps, first_level, kind, tmp_path, monkeypatch):
    if kind in ("models", "lazy_models"):
        inputs = first_level["ours" if kind == "models" else "ours_lazy"]
        design, fwhm, mask = None, 5.0, first_level["mask"]
    else:
        inputs = {"paths": maps["paths"], "images": [nib.Nifti1Image(a, maps["affine"]) for a in maps["arrays"]],
                  "4d_path": str(tmp_path / "all.nii")}[kind]
        if kind == "4d_path":
            nib.save(nib.Nifti1Image(np.stack(maps["arrays"], -1), maps["affine"]), inputs)
        design, fwhm, mask = maps["designs"]["two_sample"], 6.0, maps["mask_path"]
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=fwhm, client="threads", v_chunk=90)
    model.fit(inputs, design_matrix=design)
    con, first = ("intercept", "SStSSp") if kind.endswith("models") else ("group_a - group_b", None)
    first_level_blocks = []  # each first-level contrast block is computed once, whatever the slabs
    real_block = contrasts._contrast_block
    monkeypatch.setattr(contrasts, "_contrast_block",
                        lambda *a, **k: first_level_blocks.append(1) or real_block(*a, **k))
    with TaskCounter() as counter:
        ds = model.contrast_dataset(con, first_level_contrast=first)
    assert counter.started == 0
    assert all(isinstance(ds[name].data, da.Array) for name in OUTPUTS)
    n_vox = model.n_elements_
    chunks = ds["z_score"].data.chunks[0]
    assert ds.sizes["voxel"] == n_vox and len(chunks) > 2 and max(chunks) < n_vox

    reads, fits = [], []
    real_slab, real_fit = second_level.read_planes, second_level.ols_contrasts

    def slab(*args):
        out = real_slab(*args)
        reads.append(out.shape)
        return out

    monkeypatch.setattr(second_level, "read_planes", slab)
    monkeypatch.setattr(second_level, "ols_contrasts", lambda Y, *a: fits.append(Y.shape) or real_fit(Y, *a))
    with TaskCounter() as counter:
        z = ds["z_score"].compute(scheduler="threads")
    assert counter.started > 0 and np.isfinite(z.values).all()
    volume = int(np.prod(model.mask_img_.shape))
    n_maps = model.design_matrix_.shape[0]
    assert len(fits) == len(chunks) and all(shape[0] == n_maps and shape[1] < n_vox for shape in fits)
    assert len(reads) == n_maps * len(chunks)
    assert max(int(np.prod(shape)) for shape in reads) < volume  # slabs of x-planes, never a whole map
    if kind == "models":  # fits in memory: each model's contrast computed once, in numpy
        assert len(first_level_blocks) == len(inputs)
    if kind == "lazy_models":
        expected = sum(len(m.contrast_dataset("SStSSp").effect_size.data.chunks[0]) for m in inputs)
        assert len(first_level_blocks) == expected > len(inputs)


@pytest.mark.slow
def test_cluster_gives_identical_results(maps, first_level, cluster_client):
    dm = maps["designs"]["two_sample"]
    images = [nib.Nifti1Image(a, maps["affine"]) for a in maps["arrays"]]
    finer = {"target_affine": np.diag([2.0, 2.0, 2.0]), "minimize_memory": False}
    runs = [(maps["paths"], dm, "group_a - group_b", None, {}), (images, dm, "group_a - group_b", None, {}),
            (first_level["ours"], None, None, "SStSSp - DStDSp", {}),
            (maps["paths"], dm, "group_a - group_b", None, finer)]
    for inputs, design, con, first, kwargs in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local = SecondLevelModel(smoothing_fwhm=6.0, client="threads", v_chunk=120, **kwargs)
            remote = SecondLevelModel(smoothing_fwhm=6.0, client=cluster_client, v_chunk=120, **kwargs)
            outputs = [m.fit(inputs, design_matrix=design).compute_contrast(
                con, first_level_contrast=first, output_type="all") for m in (local, remote)]
        for name in OUTPUTS:
            np.testing.assert_array_equal(outputs[0][name].get_fdata(), outputs[1][name].get_fdata())
        if kwargs:  # and the out-of-core residuals
            np.testing.assert_array_equal(local.residuals_.get_fdata(), remote.residuals_.get_fdata())


def test_attributes_and_single_outputs(maps):
    model = daskglm.SecondLevelModel(mask_img=maps["mask_path"], smoothing_fwhm=6.0, client="threads")
    assert model.fit(maps["paths"], design_matrix=maps["designs"]["one_sample"]) is model
    assert model.n_elements_ == maps["mask"].sum() and model.labels_ is None and model.results_ is None
    np.testing.assert_array_equal(model.mask_img_.get_fdata().astype(bool), maps["mask"])
    assert model.mask_img_ is model.masker_.mask_img_
    assert model.masker_.smoothing_fwhm == 6.0 and model.masker_.n_elements_ == model.n_elements_
    all_maps = model.compute_contrast(output_type="all")
    for name in OUTPUTS:
        single = model.compute_contrast("intercept", output_type=name)
        np.testing.assert_array_equal(single.get_fdata(), all_maps[name].get_fdata())
        assert single.header["descrip"].item().decode() == f"{name} of contrast [1.]"
    ds = model.contrast_dataset()
    assert ds.attrs["dof"] == N_MAPS - 1 and ds.attrs["stat_type"] == "t"


def test_labels_and_results_as_nilearn(maps):
    """``labels_`` / ``results_`` after compute_contrast: nilearn's own contrast code on them gives our maps."""
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.masking import apply_mask

    dm, mask = maps["designs"]["two_sample"], maps["mask_path"]
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=5.0, client="threads", v_chunk=120)
    model.fit(maps["paths"], design_matrix=dm)
    ours = model.compute_contrast("group_b - group_a", output_type="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(mask_img=mask, smoothing_fwhm=5.0).fit(maps["paths"], design_matrix=dm)
        theirs.compute_contrast("group_b - group_a")
    np.testing.assert_array_equal(model.labels_, theirs.labels_)
    assert list(model.results_) == list(theirs.results_) == [0.0]
    mine, ref = model.results_[0.0], theirs.results_[0.0]
    np.testing.assert_allclose(mine.theta, ref.theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mine.dispersion, ref.dispersion, rtol=1e-10)
    assert (mine.df_total, mine.df_model, mine.df_residuals) == (ref.df_total, ref.df_model, ref.df_residuals)
    np.testing.assert_allclose(mine.cov, ref.cov)
    for con in (np.array([-1.0, 1.0]), np.eye(2)):
        contrast = compute_contrast(model.labels_, model.results_, con)
        image = model.compute_contrast(con, output_type="z_score")
        np.testing.assert_allclose(apply_mask(image, model.mask_img_), contrast.z_score(), rtol=1e-8)
    np.testing.assert_allclose(apply_mask(ours["z_score"], model.mask_img_),
                               compute_contrast(theirs.labels_, theirs.results_, np.array([-1.0, 1.0])).z_score(),
                               rtol=1e-8)
    with pytest.raises(AttributeError, match="'residuals' is not kept with minimize_memory=True"):
        _ = mine.residuals
    model2 = pickle.loads(pickle.dumps(model))  # the fitted model and its results pickle
    np.testing.assert_array_equal(model2.results_[0.0].theta, mine.theta)


@pytest.mark.parametrize("fwhm", [None, 6.0])
def test_voxelwise_attributes_equal_nilearn(maps, fwhm):
    """residuals_, predicted_, r_square_ (and the other element-wise attributes) out of core, as nilearn's."""
    from nilearn.masking import apply_mask

    dm, mask = maps["designs"]["two_sample"], maps["mask_path"]
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=fwhm, minimize_memory=False, client="threads",
                             v_chunk=120).fit(maps["paths"], design_matrix=dm)
    with pytest.raises(ValueError, match="The model has no results. No contrast has been computed yet."):
        _ = model.residuals_
    model.compute_contrast("group_a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(mask_img=mask, smoothing_fwhm=fwhm, minimize_memory=False)
        theirs.fit(maps["paths"], design_matrix=dm).compute_contrast("group_a")
    for name in ("residuals_", "predicted_", "r_square_"):
        mine, ref = getattr(model, name), getattr(theirs, name)
        assert isinstance(mine, nib.Nifti1Image) and mine.shape == ref.shape, name
        assert mine.shape == SHAPE + ((N_MAPS,) if name != "r_square_" else (1,))
        np.testing.assert_array_equal(mine.affine, ref.affine)
        np.testing.assert_allclose(mine.get_fdata(), ref.get_fdata(), rtol=1e-9, atol=1e-11, err_msg=name)
        assert getattr(model, name) is mine  # computed once (nilearn's auto_attr)
    for attribute, series in (("normalized_residuals", True), ("SSE", False), ("MSE", False)):
        np.testing.assert_allclose(model._get_element_wise_model_attribute(attribute, series).get_fdata(),
                                   theirs._get_element_wise_model_attribute(attribute, series).get_fdata(),
                                   rtol=1e-9, atol=1e-11, err_msg=attribute)
    # an independent oracle: numpy's least squares on nilearn's masked maps
    Y = theirs.masker_.transform(maps["paths"])
    X = dm.to_numpy()
    beta = np.linalg.lstsq(X, Y, rcond=None)[0]
    np.testing.assert_allclose(apply_mask(model.residuals_, model.mask_img_), Y - X @ beta, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="'attribute' must be one of"):
        model._get_element_wise_model_attribute("beta", True)


def test_voxelwise_follow_the_last_contrast(maps):
    """DataFrame inputs: residuals_ are those of the maps of the last compute_contrast (and not a stale cache)."""
    n = N_MAPS // 2
    rows = [{"subject_label": f"sub-{s:02d}", "map_name": name, "effects_map_path": maps["paths"][2 * s + c]}
            for s in range(n) for c, name in enumerate(("faces", "houses"))]
    frame = pd.DataFrame(rows)
    one = pd.DataFrame({"intercept": np.ones(n)})
    model = SecondLevelModel(mask_img=maps["mask_path"], minimize_memory=False, client="threads", v_chunk=120)
    model.fit(frame, design_matrix=one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(mask_img=maps["mask_path"], minimize_memory=False).fit(frame, design_matrix=one)
    for first in ("faces", "houses"):
        model.compute_contrast(first_level_contrast=first)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs.compute_contrast(first_level_contrast=first)
            expected = theirs._get_element_wise_model_attribute("residuals", True)
        np.testing.assert_allclose(model.residuals_.get_fdata(), expected.get_fdata(), rtol=1e-9, atol=1e-11)


def test_voxelwise_is_lazy_and_reads_slabs(maps, monkeypatch):
    from nilearn.masking import apply_mask

    dm = maps["designs"]["paired"]
    model = SecondLevelModel(mask_img=maps["mask_path"], smoothing_fwhm=5.0, client="threads", v_chunk=90)
    model.fit(maps["paths"], design_matrix=dm)
    with TaskCounter() as counter:
        lazy = model.voxelwise("residuals")
        r2 = model.voxelwise("r_square")
    assert counter.started == 0
    assert lazy.dims == ("map", "voxel") and lazy.shape == (N_MAPS, model.n_elements_)
    assert r2.dims == ("voxel",) and len(lazy.data.chunks[1]) > 2
    reads = []
    real_slab = second_level.read_planes
    monkeypatch.setattr(second_level, "read_planes", lambda *a: reads.append(real_slab(*a).shape) or real_slab(*a))
    values = lazy.compute(scheduler="threads").values
    assert max(int(np.prod(shape)) for shape in reads) < int(np.prod(SHAPE))  # slabs, never a whole map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(mask_img=maps["mask_path"], smoothing_fwhm=5.0, minimize_memory=False)
        theirs.fit(maps["paths"], design_matrix=dm).compute_contrast("condition")
    np.testing.assert_allclose(values, apply_mask(theirs.residuals_, theirs.mask_img_), rtol=1e-9, atol=1e-11)
    # with minimize_memory=True the images are refused, as nilearn
    model.compute_contrast("condition")
    with pytest.raises(AttributeError, match="To access voxelwise attributes"):
        _ = model.residuals_


def test_make_stat_maps_reads_the_maps_once(maps, monkeypatch):
    """Several contrasts (reports, save_glm_to_bids) are computed in one pass over the maps."""
    dm = maps["designs"]["two_sample"]
    model = SecondLevelModel(mask_img=maps["mask_path"], client="threads", v_chunk=120)
    model.fit(maps["paths"], design_matrix=dm)
    contrasts = {"a": "group_a", "b_minus_a": "group_b - group_a", "both": np.eye(2)}
    reads = []
    real_slab = second_level.read_planes
    monkeypatch.setattr(second_level, "read_planes", lambda *a: reads.append(1) or real_slab(*a))
    together = model._make_stat_maps(contrasts, output_type="all")
    n_reads = len(reads)
    assert n_reads == N_MAPS * len(model.contrast_dataset("group_a").z_score.data.chunks[0])
    for name, con in contrasts.items():
        alone = model.compute_contrast(con, output_type="all")
        for output in OUTPUTS:
            np.testing.assert_array_equal(together[name][output].get_fdata(), alone[output].get_fdata())
    assert model._make_stat_maps({}) == {}


def test_bad_inputs_are_clear(maps, first_level, tmp_path):
    paths, dm = maps["paths"], maps["designs"]["two_sample"]

    def fit(inputs=paths, design=dm, **kwargs):
        return SecondLevelModel(client="threads", **kwargs).fit(inputs, design_matrix=design)

    with pytest.raises(TypeError, match="at least two first level models or niimgs.*; got 1"):
        fit(paths[:1])
    with pytest.raises(ValueError, match="require a design matrix"):
        fit(paths, None)
    with pytest.raises(ValueError, match="16 rows in design matrix do not match with 15 maps"):
        fit(paths[:15])
    with pytest.raises(TypeError, match="same type"):
        fit(paths[:3] + [first_level["ours"][0]])
    with pytest.raises(TypeError, match="'second_level_input' must be either"):
        fit(42)
    with pytest.raises(TypeError, match="'design_matrix' must be"):
        fit(paths, dm.to_numpy())
    with pytest.raises(ValueError, match="must be 4D"):
        fit(paths[0])
    with pytest.raises(ValueError, match="columns 'subject_label', 'map_name' and 'effects_map_path'"):
        fit(pd.DataFrame({"subject_label": ["a", "b"], "effects_map_path": paths[:2]}), None)
    with pytest.raises(ValueError, match=r"File not found: '.*nothing.nii' \(second_level_input\[1\]\)"):
        fit([paths[0], str(tmp_path / "nothing.nii")], dm[:2])
    with pytest.raises(ValueError, match="'v_chunk' must be a positive integer|v_chunk"):
        fit(v_chunk=0)
    other = str(tmp_path / "other.nii")
    nib.save(nib.Nifti1Image(np.ones((12, 13, 9)), maps["affine"]), other)
    with pytest.raises(ValueError, match="Following field of view errors were detected"):
        fit(paths[:15] + [other])
    with pytest.raises(TypeError, match="Mask and input images must be of compatible types"):
        from nilearn.conftest import _make_surface_img

        fit([_make_surface_img(1), _make_surface_img(1)], dm[:2], mask_img=maps["mask_path"])

    model = fit(mask_img=maps["mask_path"])
    with pytest.raises(ValueError, match=r"(?s)name 'group_c' is not defined.*"
                                         r"Available matrix columns are: \['group_a', 'group_b'\]"):
        model.compute_contrast("group_a - group_c")
    with pytest.raises(ValueError, match="No second-level contrast is specified"):
        model.compute_contrast()
    with pytest.raises(ValueError, match="Contrast is null"):
        model.compute_contrast([0, 0])
    with pytest.raises(ValueError, match="'output_type' must be one of"):
        model.compute_contrast("group_a", output_type="beta")
    with pytest.raises(ValueError, match="'stat_type' must be one of"):
        model.compute_contrast("group_a", second_level_stat_type="z")
    with pytest.raises(ValueError, match="t contrasts should be of length P=2, but it has length 3"):
        model.compute_contrast([1, 0, 0])
    with pytest.warns(UserWarning, match="t contrasts should be of length P=2, but it has length 1"):
        padded = model.compute_contrast([1])  # nilearn pads a short t contrast, with a warning
    np.testing.assert_array_equal(padded.get_fdata(), model.compute_contrast([1, 0]).get_fdata())
    with pytest.raises(ValueError, match="not fitted"):
        SecondLevelModel().compute_contrast("group_a")
    with pytest.raises(ValueError, match="at least 3 maps"):
        fit(paths[:2], pd.DataFrame({"a": [1.0, 0.0], "b": [0.0, 1.0]})).compute_contrast("a")

    flm = SecondLevelModel(mask_img=first_level["mask"], client="threads").fit(first_level["ours"])
    with pytest.raises(ValueError, match="first_level_contrast is mandatory"):
        flm.compute_contrast("intercept")
    with pytest.raises(ValueError, match="F contrast"):
        flm.compute_contrast("intercept", first_level_contrast=np.eye(13)[:2])
    frame = pd.DataFrame({"subject_label": ["01", "02", "03"], "map_name": "a", "effects_map_path": paths[:3]})
    with pytest.raises(ValueError, match="3 rows in design matrix do not match with 0 maps"):
        fit(frame, None).compute_contrast(first_level_contrast="b")

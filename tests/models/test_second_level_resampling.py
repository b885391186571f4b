"""SecondLevelModel with target_affine / target_shape or a mask on another grid, against nilearn 0.14.

nilearn's masker resamples the maps (cubic splines) onto the mask's cropped
grid; daskglm does it per slab of x-planes inside the block tasks. The oracle
is nilearn run in the test (its ``SecondLevelModel``, or its ``resample_img``
on whole volumes).
"""

from __future__ import annotations

import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import TaskCounter
from nilearn.glm.second_level import SecondLevelModel as NilearnModel
from nilearn.image import resample_img
from scipy.ndimage import gaussian_filter

from daskglm.kernels.group import SPLINE_MARGIN, source_planes
from daskglm.models import second_level
from daskglm.models import second_level_inputs as _second_level_inputs
from daskglm.models.second_level import SecondLevelModel

SHAPE = (80, 12, 10)  # long along x: slabs of x-planes are much smaller than a map
N_MAPS = 8
OUTPUTS = ("z_score", "stat", "p_value", "effect_size", "effect_variance")


def _rotation(angle: float, scale: float, origin: list[float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.1, 1.0]]) * scale
    affine[:3, 3] = origin
    return affine


TARGETS = {
    "finer": {"target_affine": np.diag([1.5, 1.5, 1.5])},
    "oblique": {"target_affine": _rotation(0.3, 2.5, [-30.0, -25.0, -12.0]), "target_shape": (70, 26, 14)},
    "shifted": {"target_affine": np.array([[3.0, 0, 0, -118.5], [0, 3.0, 0, -17.0], [0, 0, 3.0, -14.0],
                                           [0, 0, 0, 1]]), "target_shape": SHAPE},
}


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("second_level_resampling")
    rng = np.random.default_rng(7)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-120.0, -18.0, -14.0]
    x, y, z = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    blob = np.exp(-((x - 30) ** 2 / 40 + (y - 6) ** 2 / 8 + (z - 5) ** 2 / 6))
    arrays, paths = [], []
    for s in range(N_MAPS):
        arrays.append(gaussian_filter(rng.normal(size=SHAPE), 1.2) * 3 + blob * (1 + s % 2) + 0.5)
        paths.append(str(root / f"effect{s}.nii"))
        nib.save(nib.Nifti1Image(arrays[-1], affine), paths[-1])
    mask = np.zeros(SHAPE, np.uint8)
    mask[5:70, 2:10, 2:8] = 1
    mask_path = str(root / "mask.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    design = pd.DataFrame({"intercept": np.ones(N_MAPS), "group": np.where(np.arange(N_MAPS) % 2, 1.0, -1.0)})
    return {"affine": affine, "arrays": arrays, "paths": paths, "mask_path": mask_path, "design": design}


def _nilearn(inputs, design, contrast, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NilearnModel(**kwargs).fit(inputs, design_matrix=design)
        return model, model.compute_contrast(contrast, output_type="all")


def _assert_same(ours, theirs, rtol=1e-9):
    for name in OUTPUTS:
        mine, ref = ours[name], theirs[name]
        assert mine.shape == ref.shape, name
        np.testing.assert_array_equal(mine.affine, ref.affine)
        scale = np.abs(ref.get_fdata()).max()
        np.testing.assert_allclose(mine.get_fdata(), ref.get_fdata(), rtol=rtol, atol=rtol * scale, err_msg=name)
    assert np.count_nonzero(ours["z_score"].get_fdata()) > 100


@pytest.mark.filterwarnings("ignore:NaNs or infinite values:RuntimeWarning")  # nilearn's, once per slab
@pytest.mark.parametrize("split", [1, 3, 7])
@pytest.mark.parametrize("target", ["finer", "oblique"])
def test_slabs_resample_as_the_whole_volume(maps, target, split):
    """Each slab of target x-planes, resampled from the source planes source_planes() names, is nilearn's."""
    data = maps["arrays"][0].copy()
    data[40, 6, 5] = np.nan  # nilearn's extrapolation of non-finite values is local too
    img = nib.Nifti1Image(data, maps["affine"])
    spec = TARGETS[target]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = resample_img(img, interpolation="continuous", copy_header=True, **spec)
    expected = whole.get_fdata()
    shape, affine = expected.shape, whole.affine
    reader = second_level._Reader(data.dtype, None, affine, shape, maps["affine"], SHAPE, True)
    transform = np.linalg.inv(maps["affine"]) @ affine
    vrange = (float(np.nanmin(data)), float(np.nanmax(data)))
    got = np.empty(shape)
    read = []
    for a in range(0, shape[0], split):
        b = min(a + split, shape[0])
        sa, sb = source_planes(transform, a, b, shape[1:], SHAPE[0])
        read.append(sb - sa)
        got[a:b] = second_level._resample_slab(data[sa:sb], reader, sa, a, b, vrange)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.nanmax(np.abs(expected)), equal_nan=True)
    assert max(read) < SHAPE[0]  # slabs, not the whole volume
    assert max(read) >= 2 * SPLINE_MARGIN  # interior slabs carry the margin on both sides


def test_source_planes_outside_the_volume():
    transform = np.eye(4)
    assert source_planes(transform, 0, 4, (3, 3), 100, margin=2) == (0, 8)
    assert source_planes(transform, 50, 52, (3, 3), 100, margin=2) == (47, 56)  # 50 - 1 - 2, 51 + 3 + 2
    transform[0, 3] = -500.0  # target planes far before the source: the first planes
    assert source_planes(transform, 0, 4, (3, 3), 100, margin=2) == (0, 3)
    transform[0, 3] = 500.0  # far after: the last planes
    assert source_planes(transform, 0, 4, (3, 3), 100, margin=2) == (97, 100)


@pytest.mark.parametrize("mask_kind", ["given", None])
@pytest.mark.parametrize("fwhm", [None, 5.0])
# the finer target grid: nilearn resamples onto 8 times as many voxels, slow
@pytest.mark.parametrize("target", [pytest.param(t, marks=pytest.mark.slow) if t == "finer" else t for t in TARGETS])
def test_target_grid_equals_nilearn(maps, target, fwhm, mask_kind):
    mask = maps["mask_path"] if mask_kind else None
    spec = TARGETS[target]
    theirs, expected = _nilearn(maps["paths"], maps["design"], "group", mask_img=mask, smoothing_fwhm=fwhm, **spec)
    model = SecondLevelModel(mask_img=mask, smoothing_fwhm=fwhm, client="threads", v_chunk=400, **spec)
    model.fit(maps["paths"], design_matrix=maps["design"])
    np.testing.assert_array_equal(model.mask_img_.get_fdata(), theirs.mask_img_.get_fdata())
    np.testing.assert_array_equal(model.mask_img_.affine, theirs.mask_img_.affine)
    with pytest.warns(UserWarning, match="imgs are being resampled to the mask_img resolution"):
        ours = model.compute_contrast("group", output_type="all")
    _assert_same(ours, expected)
    if "target_shape" in spec:
        assert ours["z_score"].shape == spec["target_shape"]


def test_mask_on_another_grid_and_images(maps):
    """No target: a mask on another grid resamples the maps onto it, as nilearn's masker (in-memory maps too)."""
    coarse = resample_img(nib.load(maps["mask_path"]), target_affine=np.diag([4.5, 4.5, 4.5]),
                          interpolation="nearest", copy_header=True)
    images = [nib.Nifti1Image(a, maps["affine"]) for a in maps["arrays"]]
    _, expected = _nilearn(images, maps["design"], "group", mask_img=coarse, smoothing_fwhm=4.0)
    model = SecondLevelModel(mask_img=coarse, smoothing_fwhm=4.0, client="threads", v_chunk=200)
    with pytest.warns(UserWarning, match="imgs are being resampled"):
        ours = model.fit(images, design_matrix=maps["design"]).compute_contrast("group", output_type="all")
    _assert_same(ours, expected)


def test_non_finite_and_integer_maps_resampled_as_nilearn(maps):
    arrays = [a.copy() for a in maps["arrays"]]
    arrays[2][30, 5, 4], arrays[5][60, 3, 3] = np.nan, np.inf
    spec = TARGETS["oblique"]
    for inputs in ([nib.Nifti1Image(a, maps["affine"]) for a in arrays],
                   [nib.Nifti1Image(np.round(a * 50).astype(np.int32), maps["affine"]) for a in maps["arrays"]]):
        _, expected = _nilearn(inputs, maps["design"], "group", mask_img=maps["mask_path"], **spec)
        model = SecondLevelModel(mask_img=maps["mask_path"], client="threads", v_chunk=300, **spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = model.fit(inputs, design_matrix=maps["design"]).compute_contrast("group", output_type="all")
        _assert_same(ours, expected, rtol=1e-7)


@pytest.mark.slow
def test_minimize_memory_false_with_resampling(maps):
    spec = TARGETS["finer"]
    model = SecondLevelModel(mask_img=maps["mask_path"], minimize_memory=False, smoothing_fwhm=4.0,
                             client="threads", v_chunk=500, **spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(maps["paths"], design_matrix=maps["design"]).compute_contrast("group")
        theirs = NilearnModel(mask_img=maps["mask_path"], minimize_memory=False, smoothing_fwhm=4.0, **spec)
        theirs.fit(maps["paths"], design_matrix=maps["design"]).compute_contrast("group")
        pairs = [(getattr(model, n), getattr(theirs, n)) for n in ("residuals_", "predicted_", "r_square_")]
    for mine, ref in pairs:
        assert mine.shape == ref.shape
        np.testing.assert_allclose(mine.get_fdata(), ref.get_fdata(), rtol=1e-8,
                                   atol=1e-9 * np.abs(ref.get_fdata()).max())


def test_resampling_graph_is_lazy_and_reads_slabs(maps, monkeypatch):
    spec = TARGETS["finer"]
    model = SecondLevelModel(mask_img=maps["mask_path"], smoothing_fwhm=3.0, client="threads", v_chunk=1500, **spec)
    model.fit(maps["paths"], design_matrix=maps["design"])
    with TaskCounter() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = model.contrast_dataset("group")
    assert counter.started == 0
    assert isinstance(ds["z_score"].data, da.Array) and len(ds["z_score"].data.chunks[0]) > 3
    block_reads, range_reads = [], []
    real_slab = second_level.read_planes
    for module, reads in ((second_level, block_reads), (_second_level_inputs, range_reads)):
        monkeypatch.setattr(module, "read_planes", lambda item, a, b, *rest, reads=reads: reads.append(b - a) or
                            real_slab(item, a, b, *rest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = ds["z_score"].compute(scheduler="threads").values
    assert np.isfinite(z).all()
    n_blocks = len(ds["z_score"].data.chunks[0])
    assert len(block_reads) == N_MAPS * n_blocks and max(block_reads) < SHAPE[0]  # never a whole map
    # the range pass (nilearn clips resampled maps to the range of all maps) reads each map once, per slab
    assert sum(range_reads) == N_MAPS * SHAPE[0] and max(range_reads) < SHAPE[0]


@pytest.fixture(scope="module")
def first_level(tmp_path_factory, fiac_data):
    """Three simulated subjects fitted (OLS) by daskglm: their lazy effects go through the resampling."""
    from daskglm.datasets.fiac import load_fiac_design_matrix
    from daskglm.models.first_level import FirstLevelModel

    root = tmp_path_factory.mktemp("first_level_resampling")
    models = []
    for seed in range(3):
        data = fiac_data(shape=(10, 11, 8), n_scans=30, n_runs=1, seed=seed, compress=False)
        design = load_fiac_design_matrix(data["design_matrix1"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.append(FirstLevelModel(mask_img=data["mask"], noise_model="ols", subject_label=f"{seed:02d}",
                                          store=root / "stores", client="threads", v_chunk=64)
                          .fit(data["func1"], design_matrices=design))
    return models


def test_first_level_models_resampled_as_nilearn(first_level):
    """daskglm first-level models with a target grid: nilearn given their effect maps is the oracle."""
    con = "SStSSp - DStDSp"
    effects = [m.compute_contrast(con, output_type="effect_size") for m in first_level]
    target = {"target_affine": np.diag([2.0, 2.0, 2.0]), "mask_img": first_level[0].mask_img_}
    intercept = pd.DataFrame({"intercept": np.ones(len(effects))})
    _, expected = _nilearn(effects, intercept, None, smoothing_fwhm=5.0, **target)
    model = SecondLevelModel(smoothing_fwhm=5.0, client="threads", v_chunk=300, **target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = model.fit(first_level).compute_contrast(first_level_contrast=con, output_type="all")
    _assert_same(ours, expected, rtol=1e-7)

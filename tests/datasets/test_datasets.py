"""Tests for daskglm.datasets.fiac.simulate_fiac."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix
from nilearn.masking import compute_epi_mask

from daskglm.datasets import fiac as datasets
from daskglm.datasets.fiac import (
    CONDITIONS,
    fiac_events,
    load_fiac_design_matrix,
    simulate_fiac,
)

# Keys of nilearn.datasets.fetch_fiac_first_level (nilearn 0.14.1,
# nilearn/datasets/func.py, ``_glob_fiac_data`` + ``data.description``).
NILEARN_FIAC_KEYS = {
    "func1", "func2", "design_matrix1", "design_matrix2", "mask", "description",
}
SMALL = {"shape": (12, 14, 10), "n_scans": 40}
COLUMNS = [*CONDITIONS, *(f"drift_{k}" for k in range(1, 8)), "constant"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> datasets.Bunch:
    return simulate_fiac(tmp_path_factory.mktemp("small"), **SMALL)


@pytest.fixture(scope="module")
def glm_data(tmp_path_factory: pytest.TempPathFactory) -> datasets.Bunch:
    """Small volume, FIAC-length run: enough scans for factor contrasts."""
    return simulate_fiac(tmp_path_factory.mktemp("glm"), shape=(12, 14, 10),
                         n_runs=1, effect_size=0.05)


def _files(bunch: dict) -> dict[str, Path]:
    return {k: Path(v) for k, v in bunch.items() if k != "description"}


def test_keys_match_nilearn(small: dict) -> None:
    assert NILEARN_FIAC_KEYS <= set(small)
    assert set(small) - NILEARN_FIAC_KEYS == {"events1", "events2", "truth"}
    assert all(isinstance(v, str) for v in small.values())
    assert "FIAC" in small["description"]
    assert small["func1"].endswith(".nii.gz") and small["mask"].endswith(".nii.gz")


@pytest.mark.parametrize("n_runs", [1, 3])
def test_keys_follow_run_count(tmp_path: Path, n_runs: int) -> None:
    data = simulate_fiac(tmp_path, shape=(5, 6, 4), n_scans=20, n_runs=n_runs)
    runs = {int(k[4:]) for k in data if k.startswith("func")}
    assert runs == set(range(1, n_runs + 1))
    for r in runs:
        assert Path(data[f"design_matrix{r}"]).is_file()
        assert Path(data[f"events{r}"]).is_file()


@pytest.mark.parametrize("compress", [True, False])
def test_func_readable_by_nibabel(tmp_path: Path, compress: bool) -> None:
    data = simulate_fiac(tmp_path, n_runs=1, compress=compress, t_r=2.0,
                         voxel_size=(3.0, 2.5, 4.0), **SMALL)
    assert data["func1"].endswith(".nii.gz" if compress else ".nii")
    img = nib.load(data["func1"])
    assert img.shape == (12, 14, 10, 40)
    assert img.get_data_dtype() == np.int16
    assert img.header.get_zooms() == (3.0, 2.5, 4.0, 2.0)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.header.get_sform(coded=True)[1] == 1
    affine = img.affine
    np.testing.assert_allclose(np.diag(affine)[:3], [3.0, 2.5, 4.0])
    centre = affine @ np.r_[(np.array(img.shape[:3]) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)  # centred volume
    raw = np.asanyarray(img.dataobj)
    assert raw.dtype == np.int16
    np.testing.assert_array_equal(img.get_fdata(), raw)
    np.testing.assert_array_equal(img.dataobj[..., 7:11], raw[..., 7:11])
    np.testing.assert_array_equal(img.dataobj[2:5, :, 3, 30], raw[2:5, :, 3, 30])
    # baseline inside the brain, dim background outside
    truth = np.load(data["truth"])
    mean = raw.mean(axis=-1)
    inside = truth["mask"].astype(bool)
    assert 750 < np.median(mean[inside]) < 1250
    assert 10 < np.median(mean[~inside]) < 60


def test_mask_and_truth(small: dict) -> None:
    mask = nib.load(small["mask"])
    assert mask.get_data_dtype() == np.uint8 and mask.shape == SMALL["shape"]
    values = np.asanyarray(mask.dataobj)
    assert set(np.unique(values)) == {0, 1}
    np.testing.assert_allclose(mask.affine, nib.load(small["func1"]).affine)
    with np.load(small["truth"]) as truth:
        np.testing.assert_array_equal(truth["mask"], values)
        assert truth["activation"].shape == (5, *SMALL["shape"])
        assert list(truth["conditions"]) == list(CONDITIONS)
        assert list(truth["blob_names"]) == ["sentence", "speaker", "all"]
        rho = truth["ar_rho"]
        assert 0.1 <= rho.min() and rho.max() <= 0.5 and rho.max() - rho.min() > 0.2


def test_design_matrix_matches_nilearn_oracle(small: dict) -> None:
    for run in (1, 2):
        with np.load(small[f"design_matrix{run}"]) as npz:
            X = npz["X"]
            names = [c.decode() for c in npz["conditions"]]
        assert X.shape == (40, 13) and X.dtype == np.float64
        assert names == COLUMNS
        events = pd.read_csv(small[f"events{run}"], sep="\t")
        assert list(events.columns) == ["onset", "duration", "trial_type"]
        oracle = make_first_level_design_matrix(
            np.arange(40) * 2.5, events, hrf_model="spm",
            drift_model="polynomial", drift_order=7)
        np.testing.assert_allclose(X, oracle[COLUMNS].to_numpy(), rtol=0, atol=1e-12)
        loaded = load_fiac_design_matrix(small[f"design_matrix{run}"])
        assert list(loaded.columns) == COLUMNS
        assert np.linalg.matrix_rank(X) == 13


@pytest.mark.parametrize(("n_scans", "t_r"), [(20, 2.5), (40, 2.5), (191, 2.5),
                                              (1200, 0.72), (57, 3.1)])
def test_events_fit_in_run(n_scans: int, t_r: float) -> None:
    orders = []
    for run in (1, 2):
        ev = fiac_events(n_scans, t_r, seed=3, run=run)
        assert (ev.onset >= 0).all() and (ev.duration > 0).all()
        assert (ev.onset + ev.duration <= n_scans * t_r).all()
        assert ev.onset.is_monotonic_increasing
        counts = ev.trial_type.value_counts()
        n_blocks = counts["FirstSt"]
        assert set(counts.index) == set(CONDITIONS)
        assert all(counts[c] == n_blocks // 4 for c in CONDITIONS[:4])
        orders.append(list(ev.trial_type[ev.trial_type != "FirstSt"]))
    if n_scans >= 191:
        assert orders[0] != orders[1]


def test_default_events_look_like_fiac() -> None:
    events = fiac_events()  # 191 scans, TR 2.5 s
    blocks = events[events.trial_type != "FirstSt"]
    assert len(blocks) == 16  # 4 blocks per condition and run, as in FIAC
    assert 15 < blocks.duration.iloc[0] < 20  # 5 of 6 sentences, ~3.25 s apart
    assert fiac_events(seed=0).equals(events) and not fiac_events(seed=1).equals(events)


def test_deterministic(tmp_path: Path, small: dict) -> None:
    again = simulate_fiac(tmp_path / "again", **SMALL)
    for key, path in _files(small).items():
        assert path.read_bytes() == Path(again[key]).read_bytes(), key
    other = simulate_fiac(tmp_path / "other", seed=1, **SMALL)
    assert Path(other["func1"]).read_bytes() != Path(small["func1"]).read_bytes()
    assert other["func1"] != small["func1"]
    run1 = np.asanyarray(nib.load(small["func1"]).dataobj)
    run2 = np.asanyarray(nib.load(small["func2"]).dataobj)
    assert np.mean(run1 != run2) > 0.5


def test_cache_reuse_and_regeneration(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DASKGLM_DATA", str(tmp_path))
    first = simulate_fiac(shape=(6, 7, 5), n_scans=20)
    folder = Path(first["func1"]).parent
    assert folder.parent == tmp_path and folder.name.startswith("fiac_6x7x5_20_seed0_gz")
    marker = json.loads((folder / "fiac_complete.json").read_text())
    assert marker["shape"] == [6, 7, 5] and marker["n_scans"] == 20
    mtimes = {k: p.stat().st_mtime_ns for k, p in _files(first).items()}
    second = simulate_fiac(shape=(6, 7, 5), n_scans=20)
    assert second == first
    assert mtimes == {k: p.stat().st_mtime_ns for k, p in _files(second).items()}
    # any parameter change -> a different folder
    for change in ({"noise_sd": 3.0}, {"t_r": 2.0}, {"compress": False}, {"n_runs": 1}):
        other = simulate_fiac(shape=(6, 7, 5), n_scans=20, **change)
        assert Path(other["func1"]).parent != folder, change
    # overwrite=True, or a marker with other parameters, regenerates in place
    simulate_fiac(shape=(6, 7, 5), n_scans=20, overwrite=True)
    assert Path(first["func1"]).stat().st_mtime_ns != mtimes["func1"]
    mtime = Path(first["func1"]).stat().st_mtime_ns
    (folder / "fiac_complete.json").write_text(json.dumps({**marker, "seed": 9}))
    simulate_fiac(shape=(6, 7, 5), n_scans=20)
    assert Path(first["func1"]).stat().st_mtime_ns != mtime
    assert json.loads((folder / "fiac_complete.json").read_text()) == marker


def test_interrupted_run_leaves_no_complete_file(tmp_path: Path, monkeypatch) -> None:
    real = datasets.run_volumes

    def broken(*args, **kwargs):
        for t, vol in enumerate(real(*args, **kwargs)):
            if t == 5:
                raise KeyboardInterrupt
            yield vol

    monkeypatch.setattr(datasets, "run_volumes", broken)
    with pytest.raises(KeyboardInterrupt):
        simulate_fiac(tmp_path, shape=(6, 7, 5), n_scans=20)
    (folder,) = tmp_path.iterdir()
    names = {p.name for p in folder.iterdir()}
    assert "run1.nii.gz" not in names and "fiac_complete.json" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    monkeypatch.setattr(datasets, "run_volumes", real)
    data = simulate_fiac(tmp_path, shape=(6, 7, 5), n_scans=20)
    assert nib.load(data["func1"]).shape == (6, 7, 5, 20)


def _ols(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    Y = np.asanyarray(nib.load(data["func1"]).dataobj).astype(float)
    shape, n = Y.shape[:3], Y.shape[3]
    X = np.load(data["design_matrix1"])["X"]
    Y = Y.reshape(-1, n).T
    beta = np.linalg.lstsq(X, Y, rcond=None)[0]
    resid = Y - X @ beta
    sigma2 = (resid**2).sum(axis=0) / (n - X.shape[1])
    return X, beta, sigma2, resid.T.reshape(*shape, n)


def test_ols_glm_recovers_blobs(glm_data: dict) -> None:
    X, beta, sigma2, _ = _ols(glm_data)
    truth = np.load(glm_data["truth"])
    mask = truth["mask"].astype(bool)
    null = mask & (np.abs(truth["activation"]).max(axis=0) == 0)
    assert null.sum() > 100
    contrasts = {"sentence": [-1, -1, 1, 1, 0],  # DSt > SSt
                 "speaker": [-1, 1, -1, 1, 0],  # DSp > SSp
                 "all": [1, 1, 1, 1, 0]}
    xtx_inv = np.linalg.inv(X.T @ X)
    for name, centre in zip(truth["blob_names"], truth["blob_centers"]):
        c = np.r_[contrasts[name], np.zeros(8)]
        t = (c @ beta / np.sqrt(sigma2 * (c @ xtx_inv @ c))).reshape(mask.shape)
        assert t[tuple(centre)] > 5, (name, t[tuple(centre)])
        peak = np.unravel_index(np.argmax(np.where(mask, t, -np.inf)), mask.shape)
        assert np.abs(np.subtract(peak, centre)).max() <= 2, (name, peak, centre)
        assert abs(t[null].mean()) < 0.75 and np.median(np.abs(t[null])) < 1.5


# nilearn 0.14.1 warns about its own masker whenever FirstLevelModel gets mask_img.
@pytest.mark.filterwarnings("ignore:.*Generation of a mask has been requested")
def test_nilearn_first_level_model_reproduces_design(glm_data: dict) -> None:
    from nilearn.glm.first_level import FirstLevelModel

    events = pd.read_csv(glm_data["events1"], sep="\t")
    model = FirstLevelModel(t_r=2.5, hrf_model="spm", drift_model="polynomial",
                            drift_order=7, mask_img=glm_data["mask"], minimize_memory=True)
    model.fit(glm_data["func1"], events=events)
    X = np.load(glm_data["design_matrix1"])["X"]
    np.testing.assert_allclose(model.design_matrices_[0][COLUMNS].to_numpy(), X, atol=1e-12)
    z = model.compute_contrast("SStSSp + SStDSp + DStSSp + DStDSp").get_fdata()
    truth = np.load(glm_data["truth"])
    centre = tuple(truth["blob_centers"][list(truth["blob_names"]).index("all")])
    assert z[centre] > 5


def test_ar1_noise_present(glm_data: dict) -> None:
    *_, resid = _ols(glm_data)
    truth = np.load(glm_data["truth"])
    r = resid[truth["mask"].astype(bool)]
    lag1 = (r[:, 1:] * r[:, :-1]).sum(axis=1) / (r**2).sum(axis=1)
    assert 0.05 < lag1.mean() < 0.7
    rho = truth["ar_rho"][truth["mask"].astype(bool)]
    assert np.corrcoef(lag1, rho)[0, 1] > 0.3  # follows the true AR(1) map


def test_epi_mask_matches_brain_at_fiac_shape(tmp_path: Path) -> None:
    data = simulate_fiac(tmp_path, n_scans=20, n_runs=1)
    img = nib.load(data["func1"])
    assert img.shape == (64, 64, 30, 20)
    mean = nib.Nifti1Image(np.asanyarray(img.dataobj).mean(axis=-1), img.affine)
    found = compute_epi_mask(mean).get_fdata().astype(bool)
    true = nib.load(data["mask"]).get_fdata().astype(bool)
    dice = 2 * (found & true).sum() / (found.sum() + true.sum())
    assert dice > 0.8, dice


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"shape": (64, 0, 30)}, r"\(64, 0, 30\)"),
     ({"shape": (64, 64)}, r"\(64, 64\)"),
     ({"shape": (64.0, 64, 30)}, r"64\.0"),
     ({"shape": "abc"}, "'abc'"),
     ({"n_scans": 5}, "got 5"),
     ({"n_scans": 19}, "got 19"),
     ({"t_r": 0}, "got 0"),
     ({"t_r": -2.5}, r"got -2\.5"),
     ({"n_runs": 0}, "got 0"),
     ({"seed": -1}, "got -1"),
     ({"ar_rho": (0.5, 0.1)}, r"\(0\.5, 0\.1\)"),
     ({"ar_rho": (0.1, 1.0)}, r"1\.0"),
     ({"noise_sd": -1.0}, r"-1\.0"),
     ({"voxel_size": (3.0, 0.0, 3.0)}, r"0\.0"),
     ({"compresslevel": 12}, "12")],
)
def test_validation(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simulate_fiac(tmp_path, **{**SMALL, **kwargs})
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_streaming_memory_is_bounded(tmp_path: Path) -> None:
    shape, n_scans = (91, 109, 91), 120
    script = textwrap.dedent(f"""
        import sys
        from daskglm.datasets.fiac import simulate_fiac
        data = simulate_fiac({str(tmp_path)!r}, shape={shape}, n_scans={n_scans},
                             n_runs=1, compress=False)
        print(data["func1"])
        # VmHWM: this process image's peak RSS. (ru_maxrss would also count the
        # parent's RSS at fork time, which Linux carries across exec.)
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
        print(int(hwm.split()[1]))
    """)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(datasets.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    path, maxrss_kb = out.stdout.split()
    size = Path(path).stat().st_size
    assert size == 352 + 2 * np.prod(shape) * n_scans  # ~238 MB
    assert int(maxrss_kb) < 400 * 1024, f"peak RSS {int(maxrss_kb) / 1024:.0f} MB"
    img = nib.load(path)
    last = np.asanyarray(img.dataobj[..., -1])
    assert last.dtype == np.int16 and last.shape == shape and last.max() > 500

"""Object storage: run stores, fits, inputs and maps on a real S3 API (moto's server on 127.0.0.1).

The whole pipeline runs with stores at ``s3://bucket/stores/...`` on a
two-process cluster whose workers open the stores by URL inside their tasks,
and must give exactly the numbers of the same pipeline on a local store.
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pandas as pd
import pytest

from daskglm.glm import contrasts as contrasts_mod
from daskglm.glm import design as design_mod
from daskglm.glm.fitstore import open_fit
from daskglm.io.maps import load_nifti, save_nifti, to_nifti
from daskglm.models.first_level import FirstLevelModel
from daskglm.runtime.cluster import compute
from daskglm.store import ingest as store_mod
from daskglm.store.ingest import ingest_run
from daskglm.store.zarrio import StoreIncompleteError, open_group, open_run

pytest.importorskip("moto.server", reason="moto[server] is not installed (the test extra has it)")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (the test extra has it)")

BUCKET = "daskglm-test"
CONTRASTS = {"DSt_minus_SSt": np.array([[-1, -1, 1, 1]]), "Effects_of_interest": np.eye(13)[:5]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (a subprocess) with one bucket; killed at teardown."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer on {endpoint}: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        # Any key works with moto; us-east-1 would make bucket creation fail (see NOTES).
        options = {"key": "testing", "secret": "testing",
                   "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        yield {"options": options, "fs": fs, "root": f"s3://{BUCKET}"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def fiac(tmp_path_factory, fiac_data):
    root = tmp_path_factory.mktemp("s3_fiac")
    data = fiac_data(shape=(18, 20, 10), n_scans=60)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return {"data": data, "designs": designs, "runs": [data["func1"], data["func2"]], "root": root}


def _graph_bytes(collection) -> int:
    import cloudpickle

    return len(cloudpickle.dumps(dict(collection.__dask_graph__()), protocol=pickle.HIGHEST_PROTOCOL))


def test_ingest_reopen_and_reuse_on_s3(s3, fiac, tmp_path, monkeypatch):
    url = f"{s3['root']}/stores/ingest/run1.zarr"
    # The same codec on both sides (the default, "auto", picks none locally and lz4 on S3).
    kwargs = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, t_chunk=16, v_chunk=700, compressor="lz4")
    local = ingest_run(fiac["runs"][0], tmp_path / "run1.zarr", client="sync", **kwargs)
    remote = ingest_run(fiac["runs"][0], url, client="sync", storage_options=s3["options"], **kwargs)
    assert s3["fs"].exists(f"{BUCKET}/stores/ingest/run1.zarr/zarr.json")
    reopened = open_run(url, storage_options=s3["options"])
    assert reopened.attrs["store"] == url
    assert reopened.attrs["complete"] is True
    assert reopened["bold"].data.chunksize == (16, 700)
    np.testing.assert_array_equal(reopened["bold"].values, local["bold"].values)
    for name in "ijk":
        np.testing.assert_array_equal(reopened[name].values, local[name].values)
    assert remote.attrs["fingerprint"] == local.attrs["fingerprint"]
    # The graph reads chunks from the URL inside its tasks: it holds no data.
    assert _graph_bytes(reopened["bold"].data) < reopened["bold"].nbytes / 4
    # A complete store on S3 is reused without reading the run.
    def no_read(*args, **kwargs):
        raise AssertionError("the run was read again")
    monkeypatch.setattr(store_mod, "read_volumes", no_read)
    again = ingest_run(fiac["runs"][0], url, client="sync", storage_options=s3["options"], **kwargs)
    np.testing.assert_array_equal(again["bold"].values, local["bold"].values)


def test_missing_and_incomplete_stores_on_s3(s3, fiac):
    options = s3["options"]
    with pytest.raises(FileNotFoundError, match="no daskglm store.*nothing.zarr"):
        open_run(f"{s3['root']}/stores/nothing.zarr", storage_options=options)
    with pytest.raises(FileNotFoundError, match="not found.*s3://.*absent.nii.gz"):
        ingest_run(f"{s3['root']}/inputs/absent.nii.gz", f"{s3['root']}/stores/absent.zarr",
                   client="sync", storage_options=options)
    s3["fs"].pipe_file(f"{BUCKET}/inputs/not_nifti.nii", b"this is not a NIfTI file at all\n" * 20)
    with pytest.raises(ValueError, match="s3://.*not_nifti.nii.*not a readable NIfTI"):
        ingest_run(f"{s3['root']}/inputs/not_nifti.nii", f"{s3['root']}/stores/bad.zarr",
                   client="sync", storage_options=options)
    with pytest.raises(IsADirectoryError, match="s3://.*inputs.*is a directory"):
        ingest_run(f"{s3['root']}/inputs", f"{s3['root']}/stores/bad.zarr",
                   client="sync", storage_options=options)
    assert not s3["fs"].exists(f"{BUCKET}/stores/bad.zarr")
    url = f"{s3['root']}/stores/incomplete.zarr"
    ingest_run(fiac["runs"][0], url, mask_img=fiac["data"]["mask"], client="sync",
               storage_options=options, t_chunk=30)
    group = open_group(url, "r+", options)
    group.attrs["complete"] = False  # as if ingestion had been interrupted
    with pytest.raises(StoreIncompleteError, match="incomplete"):
        open_run(url, storage_options=options)


def test_two_run_model_on_s3_equals_local(s3, fiac, tmp_path, cluster_client):
    """Ingest, fit, reopen the fit, compute contrasts, write maps: all on S3, on worker processes."""
    options, fs = s3["options"], s3["fs"]
    store_root = f"{s3['root']}/stores/model"
    common = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model="ar1",
                  t_chunk=16, v_chunk=700)
    remote = FirstLevelModel(store=store_root, storage_options=options, client=cluster_client, **common)
    local = FirstLevelModel(store=tmp_path / "stores", client=cluster_client, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        remote.fit(fiac["runs"], design_matrices=fiac["designs"])
        local.fit(fiac["runs"], design_matrices=fiac["designs"])
    urls = [fit.attrs["store"] for fit in remote.results_]
    assert all(url.startswith(store_root + "/") for url in urls)
    assert len(fs.ls(f"{BUCKET}/stores/model")) == 2
    assert len(list((tmp_path / "stores").glob("*.zarr/glm-*"))) == 2  # the local twin is local

    # The model's own contrasts: identical images.
    for name, con in CONTRASTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = remote.compute_contrast(con, output_type="all")
            b = local.compute_contrast(con, output_type="all")
        for key in b:
            np.testing.assert_array_equal(a[key].get_fdata(), b[key].get_fdata(), err_msg=f"{name} {key}")
            np.testing.assert_array_equal(a[key].affine, b[key].affine)

    # Reopen the saved fits from S3, as another session would, and compute the
    # fixed-effects contrast from them; write the maps to S3 and read them back.
    fits = [open_fit(url, storage_options=options) for url in urls]
    for fit, ref in zip(fits, local.results_):
        assert fit.attrs["store"].startswith("s3://")
        for var in ("beta", "sigma2", "label_index"):
            np.testing.assert_array_equal(fit[var].values, ref[var].values, err_msg=var)
        np.testing.assert_array_equal(fit["cov"].values, ref["cov"].values)
        assert _graph_bytes(fit["beta"].data) < fit["beta"].nbytes / 4  # read from the URL in tasks
    columns = [str(c) for c in remote.design_matrices_[0].columns]
    written = {}
    for name, con in CONTRASTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the short vector is zero-padded, as nilearn warns
            matrix, kind = design_mod.parse_contrast(con, columns, None)
        combined = contrasts_mod.combine_contrasts(
            [contrasts_mod.run_contrast(fit, matrix, kind) for fit in fits])
        ds = contrasts_mod.contrast_dataset(combined)
        keys = ("z_score", "effect_size")
        for key, value in zip(keys, compute(*[ds[key] for key in keys], client=cluster_client)):
            img = to_nifti(value, like=ds)
            url = f"{s3['root']}/maps/{name}_{key}.nii.gz"
            save_nifti(img, url, storage_options=options)
            written[url] = (name, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {name: local.compute_contrast(con, output_type="all") for name, con in CONTRASTS.items()}
    assert sorted(fs.ls(f"{BUCKET}/maps")) == sorted(u.removeprefix("s3://") for u in written)
    for url, (name, key) in written.items():
        back = load_nifti(url, storage_options=options)
        np.testing.assert_array_equal(back.get_fdata(), expected[name][key].get_fdata(), err_msg=url)
        np.testing.assert_array_equal(back.affine, expected[name][key].affine)


@pytest.mark.parametrize("kind", ["nii.gz", "nii"])
def test_inputs_on_s3(s3, fiac, tmp_path, cluster_client, kind):
    """Runs and masks addressed by s3:// URLs, read by the workers (indexed_gzip over fsspec for .gz)."""
    import nibabel as nib

    options, fs = s3["options"], s3["fs"]
    run = fiac["runs"][0]
    if kind == "nii":
        run = tmp_path / "run1.nii"
        nib.save(nib.load(fiac["runs"][0]), str(run))
    run_url = f"{s3['root']}/inputs/run1.{kind}"
    mask_url = f"{s3['root']}/inputs/mask.nii.gz"
    fs.put(str(run), run_url)
    fs.put(str(fiac["data"]["mask"]), mask_url)
    kwargs = dict(smoothing_fwhm=5.0, t_chunk=16, v_chunk=700)
    local = ingest_run(run, tmp_path / "local.zarr", mask_img=fiac["data"]["mask"], client="sync", **kwargs)
    # A remote run into a remote store, and into a local one (options then apply to inputs only).
    for target in (f"{s3['root']}/stores/inputs-{kind}.zarr", tmp_path / "from_s3.zarr"):
        ds = ingest_run(run_url, target, mask_img=mask_url, client=cluster_client,
                        storage_options=options, **kwargs)
        np.testing.assert_array_equal(ds["bold"].values, local["bold"].values)
        assert ds.attrs["source"]["url"] == run_url
        assert ds.attrs["source"]["size"] == fs.size(run_url)
    # No mask: nilearn's EPI mask from the mean of the remote run, as from the local file.
    ds = ingest_run(run_url, f"{s3['root']}/stores/epi-{kind}.zarr", client=cluster_client,
                    storage_options=options, **kwargs)
    ref = ingest_run(run, tmp_path / "epi.zarr", client="sync", **kwargs)
    np.testing.assert_array_equal(ds["bold"].values, ref["bold"].values)


def test_model_with_inputs_on_s3(s3, fiac, tmp_path, cluster_client):
    options, fs = s3["options"], s3["fs"]
    urls = []
    for index, run in enumerate(fiac["runs"], start=1):
        urls.append(f"{s3['root']}/model-inputs/run{index}.nii.gz")
        fs.put(str(run), urls[-1])
    common = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, t_chunk=16, v_chunk=700,
                  client=cluster_client)
    remote = FirstLevelModel(store=tmp_path / "remote-inputs", storage_options=options, **common)
    local = FirstLevelModel(store=tmp_path / "local-inputs", **common)
    con = [[-1, -1, 1, 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = remote.fit(urls, design_matrices=fiac["designs"]).compute_contrast(con, output_type="all")
        b = local.fit(fiac["runs"], design_matrices=fiac["designs"]).compute_contrast(con, output_type="all")
    for key in b:
        np.testing.assert_array_equal(a[key].get_fdata(), b[key].get_fdata(), err_msg=key)


def test_save_nifti_round_trips_locally_and_on_s3(s3, tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.normal(size=(5, 6, 7)).astype(np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header["descrip"] = b"z map"
    for url, options in ((tmp_path / "a" / "b" / "map.nii.gz", None),
                         (tmp_path / "map.nii", None),
                         (f"{s3['root']}/roundtrip/map.nii.gz", s3["options"]),
                         (f"{s3['root']}/roundtrip/map.nii", s3["options"])):
        save_nifti(img, url, storage_options=options)
        back = load_nifti(url, storage_options=options)
        np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())
        np.testing.assert_array_equal(back.affine, img.affine)
        assert back.header["descrip"].tobytes().rstrip(b"\0") == b"z map"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["map.nii", "map.nii.gz"]
    local = nib.load(str(tmp_path / "a" / "b" / "map.nii.gz"))  # a plain nibabel read works too
    np.testing.assert_array_equal(local.get_fdata(), img.get_fdata())

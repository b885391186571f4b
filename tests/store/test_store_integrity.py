"""Never trust a damaged store, never touch a symlink, never share a fit between analyses.

A complete store records the digests of its layout (array metadata, voxel indices,
attributes) and every chunk carries a crc32c checksum: each damage an adversarial probe
found trusted before (exit 0, other maps) is an error naming the store and the damage,
and ``overwrite=True`` rebuilds the store to the very rows it held. Fits are stored in a
group keyed by their data, design and options, so that analyses of one run with another
noise model or design never read each other's fit, lazily or not.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import zarr

from daskglm.models.first_level import FirstLevelModel
from daskglm.store.ingest import StoreDamagedError, ingest_run, open_run

CHUNKS = {"t_chunk": 8, "v_chunk": 500}


@pytest.fixture()
def store(small_run, tmp_path):
    path = tmp_path / "run.zarr"
    ingest_run(small_run["nii"], path, mask_img=small_run["mask_path"], client="sync", **CHUNKS)
    return path


def _chunk_files(store, array="bold"):
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


def _edit_json(path, edit):
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _delete_chunk(store):
    _chunk_files(store)[3].unlink()


def _garbage_chunk(store):
    chunk = _chunk_files(store)[3]
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))


def _flip_one_byte(store):
    chunk = _chunk_files(store)[5]
    data = bytearray(chunk.read_bytes())
    data[17] ^= 0x01
    chunk.write_bytes(bytes(data))


def _dtype(store):
    _edit_json(store / "bold" / "zarr.json", lambda d: d.update(data_type="int32"))


def _chunk_shape(store):
    def edit(d):
        d["chunk_grid"]["configuration"]["chunk_shape"] = [4, 1000]
    _edit_json(store / "bold" / "zarr.json", edit)


def _affine(store):
    def edit(d):
        d["attributes"]["affine"][0][0] = 2.0
    _edit_json(store / "zarr.json", edit)


def _volume_shape(store):
    def edit(d):
        d["attributes"]["volume_shape"] = [21, 22, 14]
    _edit_json(store / "zarr.json", edit)


def _voxel_index(store):
    i = zarr.open_group(str(store), mode="r+")["i"]
    values = i[:]
    values[0] += 1
    i[:] = values  # a valid chunk (its checksum is right): the recorded digest catches it


def _swap_chunks(store):
    first, second = _chunk_files(store)[2], _chunk_files(store)[7]
    a, b = first.read_bytes(), second.read_bytes()
    assert a != b  # (of other lengths too: the bold chunks are compressed)
    first.write_bytes(b)
    second.write_bytes(a)  # each a valid chunk (its checksum is right), in the other's place


OPEN_DAMAGE = {
    "deleted chunk": (_delete_chunk, "1 chunk\\(s\\) of 'bold' are missing"),
    "swapped chunks": (_swap_chunks, "chunks of 'bold' differ from those written"),
    "dtype": (_dtype, "its bold differ"),
    "chunk shape": (_chunk_shape, "its bold differ"),
    "affine": (_affine, "its attributes differ"),
    "volume shape": (_volume_shape, "its attributes differ"),
    "voxel index": (_voxel_index, "its voxels differ"),
}


@pytest.mark.parametrize("damage", sorted(OPEN_DAMAGE))
def test_damaged_store_is_refused_then_rebuilt_by_overwrite(small_run, store, damage):
    """Each damage (tested first on the undamaged store: no error) is refused by open_run and by
    ingest_run's reuse, naming the store and the damage; overwrite=True rebuilds the same rows."""
    expected = open_run(store).bold.values
    apply, what = OPEN_DAMAGE[damage]
    apply(store)
    for call in (lambda: open_run(store),
                 lambda: ingest_run(small_run["nii"], store, mask_img=small_run["mask_path"], client="sync",
                                    **CHUNKS)):
        with pytest.raises(StoreDamagedError, match=f"store at '{store}' is damaged \\({what}"):
            call()
    rebuilt = ingest_run(small_run["nii"], store, mask_img=small_run["mask_path"], client="sync",
                         overwrite=True, **CHUNKS)
    np.testing.assert_array_equal(rebuilt.bold.values, expected)


@pytest.mark.parametrize("damage", ["garbage", "one bit"])
def test_corrupt_chunks_are_refused(small_run, store, damage):
    """Same-size garbage in a chunk changes its recorded checksum: refused when the store is
    opened. One flipped bit inside a chunk (its recorded checksum intact) fails the checksum when
    read: an error, never numbers; a model's fit names the store either way."""
    apply, what = {"garbage": (_garbage_chunk, "chunks of 'bold' differ from those written"),
                   "one bit": (_flip_one_byte, "a chunk failed its crc32c checksum")}[damage]
    apply(store)
    if damage == "garbage":
        with pytest.raises(StoreDamagedError, match=what):
            open_run(store)
    else:
        with pytest.raises(ValueError, match="checksum"):
            open_run(store).bold.load()
    design = pd.DataFrame({"a": np.sin(np.arange(30) / 3), "constant": np.ones(30)})
    model = FirstLevelModel(mask_img=small_run["mask_path"], store=store.parent / "model", client="sync",
                            **CHUNKS)
    model.fit(small_run["nii"], design_matrices=[design])
    (run_store,) = (store.parent / "model").glob("*.zarr")
    apply(run_store)
    with pytest.raises(StoreDamagedError, match=f"store at '{run_store}' is damaged \\({what}"):
        model.fit(small_run["nii"], design_matrices=[design.iloc[:, ::-1]])


@pytest.mark.parametrize("damage", ["deleted", "swapped"])
def test_a_damaged_fit_is_refused(small_run, tmp_path, damage):
    """A fit group's chunks are recorded when it is completed: one deleted or two swapped is an
    error naming the store and the array when the fit is opened, never NaN or another voxel's fit."""
    from daskglm.glm.fitstore import open_fit

    design = _design(30, 3)
    model = FirstLevelModel(mask_img=small_run["mask_path"], store=tmp_path, client="sync", **CHUNKS)
    fit = model.fit(small_run["nii"], design_matrices=[design]).results_[0]
    store, group = fit.attrs["store"], fit.attrs["group"]
    open_fit(store, group)  # undamaged: opens
    chunks = sorted(p for p in (tmp_path / store.rsplit("/", 1)[-1] / group / "sigma2" / "c").iterdir())
    assert len(chunks) >= 2
    if damage == "deleted":
        chunks[1].unlink()
        what = f"1 chunk\\(s\\) of '{group}/sigma2' are missing"
    else:
        a, b = chunks[0].read_bytes(), chunks[1].read_bytes()
        chunks[0].write_bytes(b)
        chunks[1].write_bytes(a)
        what = f"chunks of '{group}/sigma2' differ from those written"
    with pytest.raises(StoreDamagedError, match=f"store at '{store}' is damaged \\({what}"):
        open_fit(store, group)


def test_a_symlinked_store_is_rebuilt_in_its_target(small_run, tmp_path):
    """A rebuild (other parameters) empties the link's target and writes there: the link stays."""
    target = tmp_path / "disk" / "run.zarr"
    target.parent.mkdir()
    link = tmp_path / "run.zarr"
    kwargs = dict(mask_img=small_run["mask_path"], client="sync", **CHUNKS)
    ingest_run(small_run["nii"], target, **kwargs)
    os.symlink(target, link)
    with pytest.warns(UserWarning, match="other parameters: rebuilding it"):
        rebuilt = ingest_run(small_run["nii"], link, smoothing_fwhm=6.0, **kwargs)
    assert link.is_symlink() and os.readlink(link) == str(target)
    expected = ingest_run(small_run["nii"], tmp_path / "alone.zarr", smoothing_fwhm=6.0, **kwargs)
    np.testing.assert_array_equal(rebuilt.bold.values, expected.bold.values)
    assert open_run(target).attrs["smoothing_fwhm"] == 6.0


def _maps(model, contrast="a"):
    return model.compute_contrast(contrast, output_type="z_score").get_fdata()


def _design(n_scans, period):
    return pd.DataFrame({"a": np.sin(np.arange(n_scans) / period), "constant": np.ones(n_scans)})


def test_lazy_fits_of_other_noise_models_or_designs_are_never_shared(small_run, tmp_path):
    """Lazy fits (kept in their stores, read by each contrast) of one run with two noise models
    in one store folder, and of one run given twice with two designs: each contrast is that of
    its own model, as fitted alone (before, the second fit rewrote the first's group)."""
    design = _design(30, 3)
    kwargs = dict(mask_img=small_run["mask_path"], client="sync", **CHUNKS)
    with dask.config.set({"daskglm.fit-memory-bytes": 0}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = {noise: _maps(FirstLevelModel(noise_model=noise, store=tmp_path / noise, **kwargs).fit(
            small_run["nii"], design_matrices=[design])) for noise in ("ar1", "ols")}
        ar1 = FirstLevelModel(noise_model="ar1", store=tmp_path / "shared", **kwargs).fit(
            small_run["nii"], design_matrices=[design])
        ols = FirstLevelModel(noise_model="ols", store=tmp_path / "shared", **kwargs).fit(
            small_run["nii"], design_matrices=[design])
        assert not isinstance(ar1.results_[0]["beta"].data, np.ndarray)  # lazy: read at each contrast
        np.testing.assert_array_equal(_maps(ar1), alone["ar1"])
        np.testing.assert_array_equal(_maps(ols), alone["ols"])
        assert not np.array_equal(alone["ar1"], alone["ols"])

        other = _design(30, 7)
        twice = FirstLevelModel(noise_model="ols", store=tmp_path / "twice", **kwargs).fit(
            [small_run["nii"], small_run["nii"]], design_matrices=[design, other])
        per_run = [FirstLevelModel(noise_model="ols", store=tmp_path / f"run{k}", **kwargs).fit(
            small_run["nii"], design_matrices=[d]) for k, d in enumerate((design, other))]
        assert not isinstance(twice.results_[0]["beta"].data, np.ndarray)
        for fit, model in zip(twice.results_, per_run):
            np.testing.assert_array_equal(fit["beta"].values, model.results_[0]["beta"].values)
        assert not np.array_equal(twice.results_[0]["beta"].values, twice.results_[1]["beta"].values)


def test_a_store_copied_elsewhere_keeps_its_fits(small_run, tmp_path):
    """Fit groups are keyed by the store's fingerprint, not its location: a model pointed at a
    copy of its store folder reuses the fit (nothing computed) and gives the same maps."""
    design = _design(30, 3)
    kwargs = dict(mask_img=small_run["mask_path"], client="sync", **CHUNKS)
    first = FirstLevelModel(store=tmp_path / "a", **kwargs).fit(small_run["nii"], design_matrices=[design])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    groups = sorted(p.name for p in (tmp_path / "b").glob("*.zarr/glm-*"))
    again = FirstLevelModel(store=tmp_path / "b", **kwargs).fit(small_run["nii"], design_matrices=[design])
    assert sorted(p.name for p in (tmp_path / "b").glob("*.zarr/glm-*")) == groups
    np.testing.assert_array_equal(_maps(again), _maps(first))


def test_the_command_line_names_a_damaged_store_and_overwrite_rebuilds_it(tmp_path, capsys, fiac_data):
    """`daskglm fit` on a store with a chunk deleted: one line naming the store and the damage, no
    map written; `--overwrite` rebuilds the store and writes the maps of the undamaged run."""
    from daskglm.cli.main import main
    from daskglm.datasets.fiac import load_fiac_design_matrix

    data = fiac_data(shape=(10, 12, 6), n_scans=40, n_runs=1)
    design = tmp_path / "design.tsv"
    load_fiac_design_matrix(data["design_matrix1"]).to_csv(design, sep="\t", index=False)

    def fit(out, *extra):
        code = main(["fit", str(data["func1"]), "--design-matrix", str(design), "--mask", str(data["mask"]),
                     "--contrast", "c=DStDSp - SStSSp", "--out", str(tmp_path / out), "--store",
                     str(tmp_path / "stores"), "--scheduler", "sync", "--verbose", "0", "--t-chunk", "8",
                     *extra])
        return code, capsys.readouterr().err.splitlines()

    assert fit("first")[0] == 0
    expected = (tmp_path / "first" / "contrast-c_stat-z_statmap.nii.gz").read_bytes()
    (store,) = (tmp_path / "stores").glob("*.zarr")
    _delete_chunk(store)
    code, err = fit("second")
    assert code != 0 and len(err) == 1, err
    assert err[0].startswith("daskglm: error:") and str(store) in err[0] and "chunk(s) of 'bold' are missing" in err[0]
    assert not list((tmp_path / "second").glob("*.nii.gz"))
    assert fit("second", "--overwrite")[0] == 0
    assert (tmp_path / "second" / "contrast-c_stat-z_statmap.nii.gz").read_bytes() == expected


@pytest.mark.parametrize("location", ["file", "memory", "colons"])
def test_store_locations_as_documented(small_run, tmp_path, location):
    """A ``file://`` URL is the local path (it failed: "No such file"), ``memory://`` is fsspec's
    in-process filesystem, and a local folder named ``a::b.zarr`` is that folder (it was read
    as an fsspec URL chain): each ingests, is reused, and holds the rows of a plain path."""
    kwargs = dict(mask_img=small_run["mask_path"], client="sync", **CHUNKS)
    expected = ingest_run(small_run["nii"], tmp_path / "plain.zarr", **kwargs).bold.values
    store = {"file": f"file://{tmp_path}/sub/run.zarr", "memory": f"memory://{tmp_path.name}/run.zarr",
             "colons": str(tmp_path / "a::b.zarr")}[location]
    first = ingest_run(small_run["nii"], store, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reused: no rebuild warning
        again = ingest_run(small_run["nii"], store, **kwargs)
    np.testing.assert_array_equal(first.bold.values, expected)
    np.testing.assert_array_equal(again.bold.values, expected)
    if location != "memory":
        local = tmp_path / ("sub/run.zarr" if location == "file" else "a::b.zarr")
        assert (local / "zarr.json").is_file() and not (tmp_path / "a").exists()


def test_a_memory_store_with_worker_processes_is_refused_before_any_work(small_run, cluster_client):
    """memory:// is one process's filesystem: with worker processes each task saw an empty one
    (GroupNotFoundError from every worker, then a traceback); now one error, nothing computed."""
    import fsspec

    store = "memory://refused/run.zarr"
    with pytest.raises(ValueError, match="'memory://refused/run.zarr': a memory:// location lives in this "
                                         "process, and the Dask workers are other processes"):
        ingest_run(small_run["nii"], store, mask_img=small_run["mask_path"], client=cluster_client)
    assert not fsspec.filesystem("memory").exists("/refused")

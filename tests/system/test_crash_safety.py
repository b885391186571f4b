"""Crash safety (issue 8, part 2): SIGKILL during ingestion, fit and output writing, then rerun.

The work runs in a subprocess: this file is also its driver script (see
``__main__`` at the bottom), a two-run ``FirstLevelModel`` fit with stores in
``<dir>/stores`` and three contrasts' maps (every output type, 15 files) saved
with :func:`daskglm.io.maps.save_nifti` into ``<dir>/maps``, on dask's
synchronous scheduler (one task at a time, in a fixed order). The child kills
itself with SIGKILL at a deterministic point chosen by the ``CRASH``
environment variable, ``<what>:<n>``, counted by wrappers the driver installs
by monkeypatching *in the child* (no hook in the library):

- ``flag:n``: right after the n-th ``ingest_done`` block flag is written
  (n blocks of volumes ingested over both runs);
- ``bold:n``: in the middle of writing the n-th ``bold`` chunk (a half-written
  ``.partial`` file of zarr's atomic write left behind; its block not flagged);
- ``glm:n``: in the middle of writing the n-th chunk of a ``glm`` group (the
  fits: both runs' in one computation, once both runs are ingested);
- ``map:n``: before the n-th map is saved (n - 1 maps written);
- ``rename:n``: in the n-th ``save_nifti``, after its temporary file is
  written, before it is renamed into place;
- ``meta:n``: in the middle of the n-th write of a store's root metadata
  (``zarr.json``, which holds the store's attributes);
- ``clear:n``: right after the n-th member of a store is deleted, when a store
  made with other parameters is emptied for a rebuild.

A rerun without ``CRASH`` must complete, ingest again only the blocks that were
not flagged (the driver logs every block read to ``READ_LOG``), refit, and give
byte-identical map files and the same stores as an uninterrupted run.

And two processes ingesting the same run into the same store at once (started
together behind a barrier) must both succeed, one of them reusing the store the
other wrote: the store's lock (``<store>.lock``, see :func:`daskglm.store.ingest.store_lock`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

SHAPE, N_SCANS = (20, 24, 16), 64
CHUNKS = {"t_chunk": 8, "v_chunk": 600}
N_TIME_BLOCKS = -(-N_SCANS // CHUNKS["t_chunk"])  # 8 blocks of volumes per run
CONTRASTS = {
    "DSt_minus_SSt": [[-1, -1, 1, 1]],
    "DSp_minus_SSp": [[-1, 1, -1, 1]],
    "Effects_of_interest": np.eye(13)[:5].tolist(),
}
N_MAPS = 3 * 5
HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- the child's driver


def _die() -> None:
    os.kill(os.getpid(), 9)  # SIGKILL: no finally, no atexit, no flush
    time.sleep(60)  # never reached


def _install_crash_hooks(crash: str) -> None:
    """Wrap zarr's local chunk writer and daskglm's map writer to SIGKILL this process."""
    import zarr.storage._local as zlocal

    import daskglm.io.maps

    what, n = crash.split(":")
    n = int(n)
    count = {"n": 0}
    lock = threading.Lock()  # zarr writes the chunks of one array write from several threads

    def hit() -> bool:
        with lock:
            count["n"] += 1
            return count["n"] == n

    real_put = zlocal._put

    def put(path, value, exclusive=False):
        parts = Path(path).parts
        if what == "meta" and parts[-1] == "zarr.json" and parts[-2].endswith(".zarr") and hit():
            # half of a store's root metadata in zarr's temporary file, then death
            with zlocal._atomic_write(Path(path), "wb") as fh:
                fh.write(bytes(value.as_buffer_like())[:10])
                fh.flush()
                _die()
        if what == "flag" and "ingest_done" in parts and "c" in parts:
            written = real_put(path, value, exclusive)
            if hit():
                _die()
            return written
        if (what == "bold" and "bold" in parts and "c" in parts) or (
                what == "glm" and any(p.startswith("glm") for p in parts) and "c" in parts):
            if hit():  # half of the chunk in zarr's temporary file, then death
                view = value.as_buffer_like()
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                with zlocal._atomic_write(Path(path), "wb") as fh:
                    fh.write(bytes(view)[: max(1, len(view) // 2)])
                    fh.flush()
                    _die()
        return real_put(path, value, exclusive)

    zlocal._put = put

    if what == "clear":  # the n-th member deleted while a store is emptied for a rebuild, then death
        from fsspec.implementations.local import LocalFileSystem

        real_rm = LocalFileSystem.rm

        def rm(self, path, recursive=False, maxdepth=None):
            real_rm(self, path, recursive=recursive, maxdepth=maxdepth)
            if hit():
                _die()

        LocalFileSystem.rm = rm

    real_save, real_replace = daskglm.io.maps.save_nifti, os.replace

    def save_nifti(img, url, storage_options=None):
        if what == "map" and hit():
            _die()
        if what == "rename":
            def replace(src, dst):
                if str(dst).endswith(".nii.gz") and hit():
                    _die()
                return real_replace(src, dst)

            os.replace = replace
            try:
                return real_save(img, url, storage_options)
            finally:
                os.replace = real_replace
        return real_save(img, url, storage_options)

    daskglm.io.maps.save_nifti = save_nifti


def _log_reads(log: str) -> None:
    """Append ``<run file name> <first volume>`` to ``log`` for every block read of a run."""
    import daskglm.store.ingest

    real = daskglm.store.ingest.read_volumes
    delay = float(os.environ.get("READ_DELAY", "0"))

    def read_volumes(path, start, stop, *args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{Path(str(path)).name} {start}\n")
        time.sleep(delay)
        return real(path, start, stop, *args, **kwargs)

    daskglm.store.ingest.read_volumes = read_volumes


def _designs(data: dict, alternative: bool) -> list:
    import pandas as pd

    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    if alternative:  # another model of the same runs: drop the last four columns
        designs = [d.iloc[:, :-4] for d in designs]
    return designs


def _drive(out: Path) -> None:
    """The work: fit both runs, save every output of three contrasts (or ingest one store)."""
    import warnings

    import daskglm.io.maps
    from daskglm.models.first_level import FirstLevelModel
    from daskglm.store.ingest import ingest_run

    data = json.loads(os.environ["FIAC"])
    if os.environ.get("READ_LOG"):
        _log_reads(os.environ["READ_LOG"])
    if os.environ.get("CRASH"):
        _install_crash_hooks(os.environ["CRASH"])
    if os.environ.get("INGEST_ONLY"):  # the concurrent-ingestion test
        barrier = Path(os.environ["BARRIER"])
        (barrier / f"ready-{os.getpid()}").touch()
        while len(list(barrier.glob("ready-*"))) < int(os.environ["N_PROCESSES"]):
            time.sleep(0.01)
        start = time.time()
        ds = ingest_run(data["func1"], os.environ["INGEST_ONLY"], mask_img=data["mask"],
                        smoothing_fwhm=float(os.environ.get("SMOOTHING", "5")), client="sync", **CHUNKS)
        print(json.dumps({"start": start, "end": time.time(), "n_scans": ds.sizes["time"]}))
        return
    model = FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=float(os.environ.get("SMOOTHING", "5")),
                            noise_model=os.environ.get("NOISE", "ar1"), client="sync", verbose=0,
                            store=os.environ.get("STORES", out / "stores"), **CHUNKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit([data["func1"], data["func2"]],
                  design_matrices=_designs(data, bool(os.environ.get("ALTERNATIVE"))))
        if os.environ.get("NO_MAPS"):
            return
        for name, con in CONTRASTS.items():
            for kind, img in model.compute_contrast(np.array(con), output_type="all").items():
                daskglm.io.maps.save_nifti(img, out / "maps" / f"{name}_{kind}.nii.gz")


# --------------------------------------------------------------------------- the parent's side


@pytest.fixture(scope="module")
def fiac(fiac_data) -> dict:
    data = fiac_data(shape=SHAPE, n_scans=N_SCANS)
    return {key: str(value) for key, value in data.items()
            if key in ("func1", "func2", "mask", "design_matrix1", "design_matrix2")}


def run_child(fiac: dict, out: Path, *, crash: str | None = None, timeout: float = 240,
              **env: str) -> subprocess.CompletedProcess:
    """Run the driver in a fresh Python process; its block reads go to ``out/reads-<k>.log``."""
    out.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    full_env.update(FIAC=json.dumps(fiac), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                    MKL_NUM_THREADS="1", **env)
    if crash:
        full_env["CRASH"] = crash
    full_env.setdefault("READ_LOG", str(out / f"reads-{len(list(out.glob('reads-*.log')))}.log"))
    proc = subprocess.run([sys.executable, str(HERE), str(out)], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if crash:
        assert proc.returncode == -9, (crash, proc.returncode, proc.stderr[-3000:])
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def reads(log: str | Path) -> dict[str, list[int]]:
    """Block reads logged by a child: run file name -> first volumes read, in order."""
    out: dict[str, list[int]] = {}
    if Path(log).exists():
        for line in Path(log).read_text().splitlines():
            name, start = line.split()
            out.setdefault(name, []).append(int(start))
    return out


@pytest.fixture(scope="module")
def reference(fiac, tmp_path_factory) -> Path:
    """An uninterrupted run: its maps and stores."""
    out = tmp_path_factory.mktemp("reference")
    run_child(fiac, out)
    got = reads(out / "reads-0.log")
    assert {name: sorted(v) for name, v in got.items()} == {
        Path(fiac[f"func{r}"]).name: list(range(0, N_SCANS, CHUNKS["t_chunk"])) for r in (1, 2)}
    assert len(list((out / "maps").iterdir())) == N_MAPS
    return out


def store_of(out: Path, run: int, fiac: dict) -> Path:
    name = Path(fiac[f"func{run}"]).name.split(".")[0]
    (store,) = (out / "stores").glob(f"{name}-*.zarr")
    return store


def flags(store: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(store), mode="r")["ingest_done"][:], dtype=bool)


def is_complete(store: Path, group: str | None = None) -> bool:
    """Whether the store (or its ``group``) is marked complete (a missing group is not)."""
    import zarr

    node = zarr.open_group(str(store), mode="r")
    if group and group not in node:
        return False
    return bool((node[group] if group else node).attrs.get("complete"))


def nifti_parts(path: Path) -> tuple[bytes, bytes]:
    """Uncompressed header+extension bytes and data bytes of a single-file .nii.gz map."""
    import nibabel as nib

    raw = gzip.decompress(path.read_bytes())
    offset = int(nib.Nifti1Header.from_fileobj(io.BytesIO(raw)).get_data_offset())
    return raw[:offset], raw[offset:]


def assert_maps_identical(out: Path, reference: Path, names: list[str] | None = None) -> None:
    """The maps (all of them, or ``names``) are byte-identical to the reference's."""
    expected = sorted(p.name for p in (reference / "maps").iterdir())
    if names is None:
        names = expected
        got = sorted(p.name for p in (out / "maps").glob("*.nii.gz"))
        assert got == expected
    for name in names:
        a, b = out / "maps" / name, reference / "maps" / name
        header, data = nifti_parts(a)
        ref_header, ref_data = nifti_parts(b)
        assert header == ref_header, f"{name}: header bytes differ"
        assert data == ref_data, f"{name}: data bytes differ"
        assert a.read_bytes() == b.read_bytes(), f"{name}: file bytes differ (gzip mtime is 0)"


# tests/helpers.py is imported where it is used: this file is also the child's script, run with
# only its own folder on sys.path.


def files(root: Path) -> list[str]:
    from helpers import store_files

    return store_files(root)


def fit_group(store: Path) -> str:
    from helpers import fit_group

    return fit_group(store)


def assert_stores_identical(out: Path, reference: Path) -> None:
    """Same files in the stores folder (no lock file, no .partial debris) and the same arrays."""
    from helpers import assert_same_store

    assert files(out / "stores") == files(reference / "stores")
    for store in sorted((reference / "stores").glob("*.zarr")):
        assert_same_store(str(out / "stores" / store.name), str(store))


def rerun_and_check(fiac: dict, out: Path, reference: Path, expect_reads: dict[str, list[int]]) -> None:
    """Rerun without a crash: it completes, reads exactly ``expect_reads``, and matches the reference."""
    log = out / "rerun-reads.log"
    run_child(fiac, out, READ_LOG=str(log))
    got = {name: sorted(v) for name, v in reads(log).items()}
    assert got == {name: v for name, v in expect_reads.items() if v}, "the rerun read other blocks"
    assert_maps_identical(out, reference)
    assert_stores_identical(out, reference)


def missing_blocks(store: Path) -> list[int]:
    return [int(b) * CHUNKS["t_chunk"] for b in np.flatnonzero(~flags(store))]


# --------------------------------------------------------------------------- ingestion


@pytest.mark.parametrize("k", [3, N_TIME_BLOCKS + 5])
def test_killed_during_ingestion_resumes_only_the_missing_blocks(fiac, reference, tmp_path, k):
    """SIGKILL right after k blocks are flagged (the blocks of both runs go into one
    computation, in dask's order): those k are kept, the others are ingested again."""
    from daskglm.store.zarrio import StoreIncompleteError, open_run

    run_child(fiac, tmp_path, crash=f"flag:{k}")
    stores = [store_of(tmp_path, run, fiac) for run in (1, 2)]
    assert sum(int(flags(store).sum()) for store in stores) == k
    for store in stores:  # complete only once every run's blocks are in: neither is
        assert not is_complete(store) and not [p for p in store.iterdir() if p.name.startswith("glm")]
        with pytest.raises(StoreIncompleteError, match="incomplete"):
            open_run(store)
        assert Path(f"{store}.lock").exists()  # the killed holder could not remove it: taken over below
    expect = {Path(fiac[f"func{run}"]).name: missing_blocks(store) for run, store in zip((1, 2), stores)}
    assert sum(map(len, expect.values())) == 2 * N_TIME_BLOCKS - k
    assert not (tmp_path / "maps").exists()
    rerun_and_check(fiac, tmp_path, reference, expect)


def test_killed_mid_chunk_write_during_ingestion(fiac, reference, tmp_path):
    """SIGKILL half-way through a bold chunk: its block is not flagged, its debris is swept."""
    import zarr

    n_voxel_blocks = zarr.open_group(str(store_of(reference, 1, fiac)), mode="r")["bold"].cdata_shape[1]
    assert n_voxel_blocks >= 3
    # N_TIME_BLOCKS + 3 blocks whole (over both runs), then one chunk of the next block.
    n = (N_TIME_BLOCKS + 3) * n_voxel_blocks + 2
    run_child(fiac, tmp_path, crash=f"bold:{n}")
    stores = [store_of(tmp_path, run, fiac) for run in (1, 2)]
    assert sum(int(flags(store).sum()) for store in stores) == N_TIME_BLOCKS + 3
    assert list((tmp_path / "stores").rglob("*.partial")), "no half-written chunk left by the kill"
    rerun_and_check(fiac, tmp_path, reference,
                    {Path(fiac[f"func{run}"]).name: missing_blocks(store) for run, store in zip((1, 2), stores)})
    assert not list((tmp_path / "stores").rglob("*.partial"))


# --------------------------------------------------------------------------- fit


def _n_glm_chunks(reference: Path, fiac: dict) -> int:
    store = store_of(reference, 1, fiac)
    glm = store / fit_group(store)
    return sum(1 for p in glm.rglob("*") if p.is_file() and "c" in p.relative_to(glm).parts)


@pytest.mark.parametrize("when", ["early", "late"])
def test_killed_during_the_fit_is_refitted(fiac, reference, tmp_path, when):
    """SIGKILL half-way through writing the glm groups (both runs' fits are one computation, after
    both runs are ingested), early or late: open_fit refuses both; the rerun reuses both complete
    stores (no block read) and rewrites the fits."""
    from daskglm.glm.fitstore import open_fit
    from daskglm.store.zarrio import StoreIncompleteError, open_run

    per_run = _n_glm_chunks(reference, fiac)
    assert per_run >= 8
    run_child(fiac, tmp_path, crash=f"glm:{per_run // 2 if when == 'early' else per_run + per_run // 2}")
    for run in (1, 2):
        store = store_of(tmp_path, run, fiac)
        assert is_complete(store) and open_run(store).sizes["time"] == N_SCANS  # ingested before the fit
        glm = fit_group(store)
        assert not is_complete(store, glm)
        with pytest.raises(StoreIncompleteError, match=f"fit '{glm}'.*incomplete"):
            open_fit(store, glm)
    rerun_and_check(fiac, tmp_path, reference, {})


def test_a_complete_fit_of_another_design_is_not_reused(fiac, reference, tmp_path):
    """Stores holding a complete fit of another design matrix: the rerun refits (same maps)."""
    from daskglm.glm.fitstore import open_fit

    run_child(fiac, tmp_path, ALTERNATIVE="1", NO_MAPS="1")
    stores = [store_of(tmp_path, run, fiac) for run in (1, 2)]
    alternative = [fit_group(store) for store in stores]
    for store, glm in zip(stores, alternative):
        assert open_fit(store, glm)["beta"].shape[0] == 9
    # The rerun's design gets a group of its own (the other design's is set aside here, so that
    # the stores compare equal to the reference's).
    import shutil

    for store, glm in zip(stores, alternative):
        (tmp_path / "kept" / store.name).mkdir(parents=True)
        shutil.move(store / glm, tmp_path / "kept" / store.name / glm)
    rerun_and_check(fiac, tmp_path, reference, {})
    for store, glm in zip(stores, alternative):
        assert fit_group(store) != glm


# --------------------------------------------------------------------------- outputs


def _check_killed_maps(out: Path, reference: Path, n_whole: int, n_debris: int) -> None:
    maps = sorted((out / "maps").iterdir())
    whole = [p.name for p in maps if p.name.endswith(".nii.gz")]
    assert len(whole) == n_whole
    assert_maps_identical(out, reference, whole)
    debris = [p.name for p in maps if not p.name.endswith(".nii.gz")]
    # save_nifti writes <map>.tmp-<uuid> and renames it: a kill in between leaves that file
    # (never a partial map under the map's name); nothing sweeps it.
    assert len(debris) == n_debris, debris
    assert all(".nii.gz.tmp-" in name for name in debris)


def test_killed_while_writing_maps(fiac, reference, tmp_path):
    """SIGKILL between two maps, then (on the rerun) inside one before its rename: the maps
    already there are whole and right, none is half-written; a last rerun writes them all."""
    run_child(fiac, tmp_path, crash="map:4")
    _check_killed_maps(tmp_path, reference, 3, 0)
    run_child(fiac, tmp_path, crash="rename:7")
    _check_killed_maps(tmp_path, reference, 6, 1)
    rerun_and_check(fiac, tmp_path, reference, {})


# --------------------------------------------------------------------------- concurrency


def test_two_processes_ingesting_one_store_at_once(fiac, reference, tmp_path):
    """Both succeed; one ingests, the other waits on the lock and reuses the complete store."""
    import zarr

    store = tmp_path / "shared" / "run-1.zarr"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, FIAC=json.dumps(fiac), INGEST_ONLY=str(store), BARRIER=str(barrier),
               N_PROCESSES="2", READ_DELAY="0.1", OMP_NUM_THREADS="1")
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    procs = []
    for index in range(2):
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE), str(tmp_path / f"p{index}")],
            env={**env, "READ_LOG": str(tmp_path / f"reads-p{index}.log")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
        assert "Traceback" not in stderr
    assert all(r["n_scans"] == N_SCANS for r in results)
    (first, second) = sorted(results, key=lambda r: r["end"])
    assert second["start"] < first["end"], "the two ingestions did not overlap"
    counts = sorted(sum(len(v) for v in reads(tmp_path / f"reads-p{i}.log").values()) for i in range(2))
    assert counts == [0, N_TIME_BLOCKS], counts  # one read every block; the other none
    # The store is complete and holds exactly the reference's rows; no lock file, no debris.
    ref = zarr.open_group(str(store_of(reference, 1, fiac)), mode="r")
    got = zarr.open_group(str(store), mode="r")
    assert got.attrs["complete"] is True and got.attrs["fingerprint"] == ref.attrs["fingerprint"]
    for path in ("bold", "ingest_done", "i", "j", "k", "gzip_index"):
        np.testing.assert_array_equal(got[path][...], ref[path][...], err_msg=path)
    assert files(store) == [f for f in files(store_of(reference, 1, fiac)) if not f.startswith("glm")]
    assert files(store.parent) == [f"run-1.zarr/{f}" for f in files(store)]  # no run-1.zarr.lock


if __name__ == "__main__":  # the child process of these tests
    _drive(Path(sys.argv[1]))


# --------------------------------------------------------------------------- store metadata and rebuilds


def _ingest(fiac: dict, out: Path, store: Path, smoothing: float, crash: str | None = None) -> None:
    run_child(fiac, out, crash=crash, INGEST_ONLY=str(store), BARRIER=str(out), N_PROCESSES="1",
              SMOOTHING=str(smoothing))


def _assert_same_rows(store: Path, expected: Path) -> None:
    import zarr

    got, ref = zarr.open_group(str(store), mode="r"), zarr.open_group(str(expected), mode="r")
    assert got.attrs["complete"] is True
    assert {k: v for k, v in got.attrs.items() if k != "source"} == {
        k: v for k, v in ref.attrs.items() if k != "source"}  # every attribute, t_r among them
    for path in ("bold", "ingest_done", "i", "j", "k", "gzip_index"):
        np.testing.assert_array_equal(got[path][...], ref[path][...], err_msg=path)


@pytest.fixture(scope="module")
def isolated_stores(fiac, tmp_path_factory) -> dict[float, Path]:
    """One run ingested alone with smoothing 5 and with smoothing 6."""
    out = tmp_path_factory.mktemp("isolated")
    for fwhm in (5.0, 6.0):
        _ingest(fiac, out, out / f"s{fwhm}.zarr", fwhm)
    return {fwhm: out / f"s{fwhm}.zarr" for fwhm in (5.0, 6.0)}


@pytest.mark.parametrize("k", [1, 2, 5, 9, 10])
def test_killed_while_a_new_store_writes_its_metadata(fiac, isolated_stores, tmp_path, k):
    """SIGKILL inside the k-th write of a new store's zarr.json (1: created with daskglm's
    marker, 2: marked again, 3-8: rewritten by zarr as each array is created, 9: every attribute
    in one write, 10: complete, with the layout's digests): the rerun completes with every
    attribute (t_r...) and the rows of an isolated ingestion; never an error, never a store
    marked complete but lacking attributes. (Before: zarr wrote one attribute per write.)"""
    store = tmp_path / "run.zarr"
    _ingest(fiac, tmp_path, store, 5.0, crash=f"meta:{k}")
    _ingest(fiac, tmp_path, store, 5.0)
    _assert_same_rows(store, isolated_stores[5.0])


@pytest.mark.parametrize("k", [1, 3, 6])
def test_killed_while_a_store_is_emptied_for_a_rebuild(fiac, isolated_stores, tmp_path, k):
    """A store of smoothing 5, rebuilt for smoothing 6 and killed after k of its members are
    deleted: reruns with either parameter complete with the rows of an isolated ingestion
    (before, the old 'complete' marker stayed over half-deleted arrays: "No variable named 'i'")."""
    store = tmp_path / "run.zarr"
    _ingest(fiac, tmp_path, store, 5.0)
    _ingest(fiac, tmp_path, store, 6.0, crash=f"clear:{k}")
    _ingest(fiac, tmp_path, store, 5.0)
    _assert_same_rows(store, isolated_stores[5.0])
    _ingest(fiac, tmp_path, store, 6.0, crash=f"clear:{k}")
    _ingest(fiac, tmp_path, store, 6.0)
    _assert_same_rows(store, isolated_stores[6.0])


def test_concurrent_analyses_with_other_parameters_share_a_store_folder(fiac, tmp_path):
    """Three processes fit the same runs at once, into one store folder, with other smoothing
    or noise models, their fits kept lazy in the stores (read by every contrast): each writes
    the maps of its own analysis run alone (before: one wrote the other's maps, or NaN)."""
    analyses = {"a": {"SMOOTHING": "5", "NOISE": "ar1"}, "b": {"SMOOTHING": "5", "NOISE": "ols"},
                "c": {"SMOOTHING": "6", "NOISE": "ar1"}}
    lazy = {"DASK_DASKGLM__FIT_MEMORY_BYTES": "0"}
    for name, env in analyses.items():
        run_child(fiac, tmp_path / f"alone-{name}", **env, **lazy)
    shared = tmp_path / "shared-stores"
    base = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    base.update(FIAC=json.dumps(fiac), OMP_NUM_THREADS="1", STORES=str(shared), **lazy)
    procs = {}
    for name, env in analyses.items():
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen([sys.executable, str(HERE), str(tmp_path / name)],
                                       env={**base, **env, "READ_LOG": str(tmp_path / f"reads-{name}.log")},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
    for proc in procs.values():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    for name in analyses:
        assert_maps_identical(tmp_path / name, tmp_path / f"alone-{name}")

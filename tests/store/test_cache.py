"""The cache of run stores: ``daskglm cache list / remove`` run as a user runs them (``python -m
daskglm`` in a subprocess, ``DASKGLM_CACHE`` naming the cache), the size cap, the stores' codec.

The cache holds real stores (made by ``ingest_run`` and by a model's fit, which adds a fit
group) among things that are not daskglm stores: files, a hidden file, a folder, an empty
folder, a zarr group of someone else's, a folder named like a store, a symlink to a store
outside the cache, a stray lock file. Every one of those must survive each command byte for byte.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import zarr

from daskglm.store import ingest_run, open_run, store_lock

MODULE = [sys.executable, "-m", "daskglm"]
DAY = 86400


@pytest.fixture(scope="module")
def template(small_run, tmp_path_factory) -> Path:
    """``root/cache`` with three stores and foreign things, ``root/outside`` with a store the cache links to."""
    from daskglm.models.first_level import FirstLevelModel

    root = tmp_path_factory.mktemp("cache_template")
    cache, outside, sources = root / "cache", root / "outside", root / "sources"
    for folder in (cache, outside, sources):
        folder.mkdir()
    copy = sources / "copy.nii"
    shutil.copyfile(small_run["nii"], copy)
    mask = small_run["mask_path"]
    # A model's store (named by the model, with a fit group), and two stores made by ingest_run.
    design = pd.DataFrame({"a": np.tile([1.0, 0.0], 15), "constant": np.ones(30)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FirstLevelModel(mask_img=str(mask), store=str(cache), client="sync", t_r=2.0).fit(
            str(small_run["nii"]), design_matrices=design)
    ingest_run(small_run["nii.gz"], cache / "gz.zarr", mask_img=mask, client="sync")
    ingest_run(copy, cache / "copy.zarr", mask_img=mask, smoothing_fwhm=4.0, client="sync")
    ingest_run(small_run["nii.gz"], outside / "linked.zarr", mask_img=mask, client="sync")
    # Things that are not daskglm stores.
    (cache / "notes.txt").write_text("my notes\n")
    (cache / ".hidden").write_bytes(b"\x00\x01hidden")
    (cache / "other").mkdir()
    (cache / "other" / "data.bin").write_bytes(os.urandom(3000))
    (cache / "empty").mkdir()
    foreign = zarr.open_group(cache / "foreign.zarr", mode="w", attributes={"owner": "someone else"})
    foreign.create_array("bold", shape=(4, 4), dtype="float32")[:] = 1.0
    (cache / "fake-0123456789abcdef-01234567.zarr" / "bold").mkdir(parents=True)
    (cache / "fake-0123456789abcdef-01234567.zarr" / "bold" / "c").write_bytes(b"not daskglm's")
    (cache / "link.zarr").symlink_to(Path("..") / "outside" / "linked.zarr")
    (cache / "stale.zarr.lock").write_text('{"pid": 1, "host": "x", "since": "then"}')
    return root


@pytest.fixture
def cache(template, tmp_path) -> Path:
    """A copy of the template (times kept): its ``cache`` folder."""
    root = tmp_path / "t"
    shutil.copytree(template, root, symlinks=True)
    return root / "cache"


def stores_in(cache: Path) -> dict[str, Path]:
    """The cache's stores by kind: ``model`` (with a fit group), ``gz``, ``copy``."""
    found = {p.name: p for p in cache.iterdir() if p.suffix == ".zarr" and not p.is_symlink()}
    model = [p for name, p in found.items() if name.startswith("run-")]
    assert len(model) == 1, sorted(found)
    return {"model": model[0], "gz": found["gz.zarr"], "copy": found["copy.zarr"]}


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, object]:
    """Every path under ``root`` but the ``skip`` folders: file bytes, link targets, folders."""
    seen: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            seen[key] = ("link", os.readlink(path))
        elif path.is_dir():
            seen[key] = "dir"
        else:
            seen[key] = path.read_bytes()
    return seen


def daskglm(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """``python -m daskglm cache ARGS`` with ``DASKGLM_CACHE=cache``."""
    environment = {k: v for k, v in os.environ.items() if k != "DASK_DASKGLM__CACHE_MAX_SIZE"}
    environment["DASKGLM_CACHE"] = str(cache)
    return subprocess.run([*MODULE, "cache", *args], capture_output=True, text=True, env=environment, timeout=120,
                          check=False)


def set_last_used(store: Path, days_ago: float) -> None:
    stamp = time.time() - days_ago * DAY
    os.utime(store, (stamp, stamp))


def list_stores(cache: Path) -> list:
    """:func:`daskglm.store.cache.list_stores` (imported here: without it, each test fails on its own)."""
    from daskglm.store.cache import list_stores

    return list_stores(cache)


def _info(path: Path):
    from daskglm.store.cache import store_info

    return store_info(str(path))


# --------------------------------------------------------------------------- list


@pytest.mark.slow
def test_list_shows_each_store_its_source_fits_and_the_total(cache, small_run, template):
    stores = stores_in(cache)
    before = snapshot(cache.parent)
    done = daskglm("list", cache=cache)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    infos = {Path(info.path).name: info for info in list_stores(cache)}
    assert set(infos) == {p.name for p in stores.values()}  # nothing foreign, no symlink
    blocks = re.split(r"\n(?=\S)", out.strip())
    assert len(blocks) == 4, out  # three stores and the total
    by_path = {block.splitlines()[0]: block for block in blocks[:3]}
    assert set(by_path) == {str(p) for p in stores.values()}
    for kind, path in stores.items():
        block = by_path[str(path)]
        info = infos[path.name]
        assert f"{dask.utils.format_bytes(info.size)}, complete, created " in block
        assert time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_used)) in block
        source = {"model": small_run["nii"], "gz": small_run["nii.gz"], "copy": template / "sources" / "copy.nii"}[kind]
        assert f"source: {Path(source).resolve()}\n" in block + "\n"
        assert f"mask: {Path(small_run['mask_path']).resolve()}" in block
    fits = [name for name in os.listdir(stores["model"]) if name.startswith("glm-")]
    assert len(fits) == 1
    assert f"fits: {fits[0]}" in by_path[str(stores["model"])]
    assert "fits: none" in by_path[str(stores["gz"])]
    total = sum(info.size for info in infos.values())
    assert blocks[3] == f"total: 3 stores, {dask.utils.format_bytes(total)} in {cache}"
    assert all(info.size > 10_000 for info in infos.values())
    # --cache overrides $DASKGLM_CACHE, before or after the action; listing changes nothing.
    elsewhere = daskglm("--cache", str(cache), "list", cache=cache.parent / "nowhere")
    assert elsewhere.stdout == out
    again = daskglm("list", "--cache", str(cache), cache=cache.parent / "nowhere")
    assert again.stdout == out
    assert snapshot(cache.parent) == before


@pytest.mark.slow
def test_list_says_when_a_source_is_gone_and_a_store_is_incomplete(cache, template, tmp_path):
    stores = stores_in(cache)
    source = template / "sources" / "copy.nii"  # shared by the tests: put back below
    moved = tmp_path / "moved.nii"
    source.rename(moved)
    try:
        group = zarr.open_group(stores["gz"], mode="r+")
        group.attrs["complete"] = False
        out = daskglm(cache=cache).stdout  # ``daskglm cache`` alone lists
    finally:
        moved.rename(source)
    block = out.split(str(stores["copy"]), 1)[1].split("\n/", 1)[0]
    assert "(missing since: this store is no longer reused for it)" in block
    assert ", incomplete, " in out.split(str(stores["gz"]), 1)[1].splitlines()[1]


# --------------------------------------------------------------------------- remove


@pytest.mark.slow
def test_remove_older_than_removes_only_stores_unused_that_long(cache):
    stores = stores_in(cache)
    set_last_used(stores["model"], 10)
    set_last_used(stores["gz"], 3)
    set_last_used(stores["copy"], 0.5)
    keep = snapshot(cache.parent, skip=(stores["model"],))
    done = daskglm("remove", "--older-than", "7d", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"removed {stores['model']} (")
    assert done.stdout.splitlines()[-1].startswith("removed 1 store (")
    assert not stores["model"].exists()
    assert snapshot(cache.parent) == keep  # everything else byte for byte, lock files included
    done = daskglm("remove", "--older-than", "2d12h", cache=cache)
    assert done.returncode == 0 and not stores["gz"].exists() and stores["copy"].exists()
    assert daskglm("remove", "--older-than", "soon", cache=cache).returncode == 2


@pytest.mark.slow
def test_remove_source_removes_the_stores_of_that_file(cache, small_run):
    stores = stores_in(cache)
    keep = snapshot(cache.parent, skip=(stores["gz"],))
    relative = os.path.relpath(small_run["nii.gz"])
    done = daskglm("remove", "--source", relative, cache=cache)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"removed {stores['gz']} (")
    assert lines[1].startswith("removed 1 store (")
    assert not stores["gz"].exists() and stores["model"].exists() and stores["copy"].exists()
    assert snapshot(cache.parent) == keep  # the store outside the cache, made from that file, too
    assert (cache.parent / "outside" / "linked.zarr" / "zarr.json").exists()


@pytest.mark.slow
def test_remove_all_dry_run_then_all(cache):
    stores = stores_in(cache)
    before = snapshot(cache.parent)
    dry = daskglm("remove", "--all", "--dry-run", cache=cache)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert sorted(line.split(" (")[0] for line in lines[:-1]) == sorted(f"would remove {p}" for p in stores.values())
    assert lines[-1].startswith("would remove 3 stores (") and lines[-1].endswith(f" from {cache}")
    assert snapshot(cache.parent) == before  # nothing removed, nothing touched
    foreign = snapshot(cache.parent, skip=tuple(stores.values()))
    done = daskglm("remove", "--all", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("removed 3 stores (")
    assert not any(p.exists() for p in stores.values())
    assert snapshot(cache.parent) == foreign  # files, folders, foreign zarr, symlink and its target, lock file
    assert list_stores(cache) == []
    assert daskglm("list", cache=cache).stdout.strip() == f"total: 0 stores, 0 B in {cache}"


@pytest.mark.slow
def test_remove_needs_a_selection(cache):
    before = snapshot(cache.parent)
    for args, why in ((["remove"], "say which stores to remove: --all, --older-than"),
                      (["remove", "--dry-run"], "say which stores to remove"),
                      (["remove", "--all", "--older-than", "1d"], "--all selects every store"),
                      (["remove", "--older-than", "7 days"], "argument --older-than: must be a duration")):
        done = daskglm(*args, cache=cache)
        assert done.returncode == 2 and done.stderr.startswith(f"daskglm: error: {why}"), (args, done.stderr)
    assert snapshot(cache.parent) == before


@pytest.mark.slow
def test_a_store_in_use_is_skipped(cache):
    stores = stores_in(cache)
    held = snapshot(stores["gz"])
    with store_lock(stores["gz"]):  # as a fit holds it, in this (another) process
        done = daskglm("remove", "--all", cache=cache)
    assert done.returncode == 0, done.stderr
    assert f"skipped {stores['gz']}: in use (pid {os.getpid()} on host " in done.stdout
    assert done.stdout.splitlines()[-1].startswith("removed 2 stores (") and "; skipped 1" in done.stdout
    assert snapshot(stores["gz"]) == held
    assert not stores["model"].exists() and not stores["copy"].exists()
    assert open_run(stores["gz"])["bold"].shape[0] == 30  # still a complete, sound store


# --------------------------------------------------------------------------- size cap


def test_size_cap_removes_the_least_recently_used_store_and_warns(cache, small_run, monkeypatch, tmp_path):
    stores = stores_in(cache)
    monkeypatch.setenv("DASKGLM_CACHE", str(cache))
    sizes = {kind: info.size for kind, info in ((k, _info(p)) for k, p in stores.items())}
    set_last_used(stores["model"], 1)
    set_last_used(stores["gz"], 5)  # the least recently used
    set_last_used(stores["copy"], 2)
    foreign = snapshot(cache.parent, skip=tuple(stores.values()))
    new = cache / "new.zarr"
    # Room for the new store (as large as gz) and two of the three others.
    cap = sum(sizes.values()) + sizes["gz"] - min(sizes.values()) // 2
    with dask.config.set({"daskglm.cache-max-size": cap}), pytest.warns(UserWarning) as caught:
        ingest_run(small_run["nii.gz"], new, mask_img=small_run["mask_path"], client="sync", t_chunk=10)
    messages = [str(w.message) for w in caught if "daskglm.cache-max-size" in str(w.message)]
    assert len(messages) == 1 and "removed the least recently used store(s) gz.zarr (" in messages[0], messages
    assert not stores["gz"].exists()
    assert stores["model"].exists() and stores["copy"].exists() and new.exists()
    assert snapshot(cache.parent, skip=(*stores.values(), new)) == foreign
    # Stores elsewhere (named by the user) are never counted nor removed, whatever the cap.
    with dask.config.set({"daskglm.cache-max-size": "1B"}), warnings.catch_warnings():
        warnings.simplefilter("error")
        ingest_run(small_run["nii"], tmp_path / "mine" / "run.zarr", mask_img=small_run["mask_path"], client="sync")
    assert stores["model"].exists() and stores["copy"].exists() and new.exists()


def test_size_cap_skips_a_store_in_use_and_the_one_just_written(cache, small_run, monkeypatch):
    stores = stores_in(cache)
    monkeypatch.setenv("DASKGLM_CACHE", str(cache))
    set_last_used(stores["gz"], 5)
    set_last_used(stores["model"], 3)
    set_last_used(stores["copy"], 1)
    gz = snapshot(stores["gz"])
    new = cache / "new.zarr"
    with store_lock(stores["gz"]), dask.config.set({"daskglm.cache-max-size": "1 kiB"}), \
            pytest.warns(UserWarning) as caught:
        ingest_run(small_run["nii.gz"], new, mask_img=small_run["mask_path"], client="sync", t_chunk=10)
    messages = [str(w.message) for w in caught if "daskglm.cache-max-size" in str(w.message)]
    assert any(f"store(s) {stores['model'].name} (" in m and ", copy.zarr (" in m for m in messages), messages
    assert any("over daskglm.cache-max-size" in m and "in use, incomplete or just written" in m for m in messages)
    assert snapshot(stores["gz"]) == gz and new.exists()
    assert open_run(new)["bold"].shape[0] == 30
    assert not stores["model"].exists() and not stores["copy"].exists()


def test_size_cap_must_be_a_size(cache, small_run, monkeypatch):
    monkeypatch.setenv("DASKGLM_CACHE", str(cache))
    with dask.config.set({"daskglm.cache-max-size": "lots"}), pytest.raises(ValueError, match="cache-max-size"):
        ingest_run(small_run["nii.gz"], cache / "new.zarr", mask_img=small_run["mask_path"], client="sync")


# --------------------------------------------------------------------------- codec


def _codec_names(array: Path) -> list[dict]:
    """The codecs of a zarr array's metadata (``bytes`` without its endianness)."""
    import json

    codecs = json.loads((array / "zarr.json").read_text())["codecs"]
    return [c if c["name"] != "bytes" else {"name": "bytes"} for c in codecs]


@pytest.mark.parametrize("fwhm", [None, 5.0])
def test_stores_are_compressed_by_default_and_read_back_exactly(small_run, tmp_path, fwhm):
    """The default codec (blosc lz4, bit-shuffled, then crc32c) and the others give back exactly the
    float32 rows an uncompressed store holds; an uncompressed store (the old default) is reused as it is."""
    plain = tmp_path / "plain.zarr"
    kwargs = {"mask_img": small_run["mask_path"], "smoothing_fwhm": fwhm, "client": "sync", "t_chunk": 8}
    expected = ingest_run(small_run["nii"], plain, compressor=None, **kwargs)["bold"].values
    assert expected.dtype == np.float32 and np.unique(expected).size > (10_000 if fwhm else 100)
    for compressor in ("auto", "lz4", "zstd"):
        store = tmp_path / f"{compressor}.zarr"
        got = ingest_run(small_run["nii"], store, compressor=compressor, **kwargs)["bold"].values
        assert got.dtype == np.float32 and np.array_equal(got, expected), compressor
        assert np.array_equal(open_run(store, columns=True)["bold"].values, expected)
        for name in ("bold", "i", "j", "k"):
            assert _codec_names(store / name)[-1] == {"name": "crc32c"}, (compressor, name)
    default = _codec_names(tmp_path / "auto.zarr" / "bold")
    assert [c["name"] for c in default] == ["bytes", "blosc", "crc32c"]
    assert default[1]["configuration"] | {"typesize": 4} == {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle",
                                                             "typesize": 4, "blocksize": 0}
    size = {name: sum(p.stat().st_size for p in (tmp_path / f"{name}.zarr" / "bold").rglob("*") if p.is_file())
            for name in ("plain", "auto")}
    assert size["auto"] < size["plain"] * (0.95 if fwhm else 0.7), size
    # The old default's uncompressed store is reused (not rebuilt) by the new default, and opens.
    before = snapshot(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ingest_run(small_run["nii"], plain, **kwargs)
    assert np.array_equal(again["bold"].values, expected)
    assert snapshot(plain) == before
    assert [c["name"] for c in _codec_names(plain / "bold")] == ["bytes", "crc32c"]


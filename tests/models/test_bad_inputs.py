"""A catalogue of bad inputs across the public API and the command line (issue 8).

Each row of ``CASES`` is one bad input: the call that makes it, what daskglm
must answer (an exception type, or a warning category when the input is
usable), a regular expression the message must match (it names the file,
parameter, column, shape or value at fault), and, where nilearn 0.14 has an
equivalent call, that call. The test then checks:

* the exception type and message (or the warning, and that the call went on);
* that a failed call left no store marked complete (every zarr group under
  the case's folder is read: none has ``complete: true``) and claimed no
  rebuild;
* nilearn's answer has the same kind (error / warning / silent acceptance),
  except in the rows marked ``differs=...`` where daskglm deliberately
  answers otherwise: there nilearn's own answer is asserted too, so the
  documented difference cannot drift.

Data: tests/conftest.py's ``small_run`` (20x22x14, 30 scans) for broken
files, ``simulate_fiac(shape=(16, 18, 10), n_scans=40)`` for the model, a
one-subject ``simulate_bids`` dataset for BIDS, everything on the ``sync``
scheduler.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import zarr
from nilearn.glm.first_level import FirstLevelModel as NilearnModel
from sklearn.exceptions import NotFittedError

from daskglm import FirstLevelModel
from daskglm.store.ingest import ingest_run
from daskglm.store.zarrio import STORE_FORMAT, StoreIncompleteError, open_run

T_R = 2.5
N_SCANS = 40


class CLIFailed(Exception):
    """A ``python -m daskglm`` run that exited non-zero: ``exit <status>: <its one stderr line>``."""


# --------------------------------------------------------------------------- shared data


class Ctx:
    """What a case needs: its own folder, the small run, the simulated FIAC runs, fitted models."""

    def __init__(self, tmp: Path, shared: Path, small_run: dict, cache: dict) -> None:
        self.tmp, self.shared, self.small_run, self._cache = tmp, shared, small_run, cache

    def _cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def fiac(self) -> dict:
        def make() -> dict:
            data = self._cache["fiac_data"](shape=(16, 18, 10), n_scans=N_SCANS)
            designs = []
            for r in (1, 2):
                npz = np.load(data[f"design_matrix{r}"])
                designs.append(pd.DataFrame(npz["X"], columns=[c.decode() for c in npz["conditions"]]))
            events = [pd.read_csv(data[f"events{r}"], sep="\t") for r in (1, 2)]
            return {"data": data, "run": data["func1"], "runs": [data["func1"], data["func2"]],
                    "mask": data["mask"], "design": designs[0], "designs": designs,
                    "events": events[0], "all_events": events}
        return self._cached("fiac", make)

    @property
    def design30(self) -> pd.DataFrame:
        """A two-column design for small_run's 30 scans."""
        return pd.DataFrame({"wave": np.sin(np.arange(30) / 3.0), "constant": np.ones(30)})

    def fitted(self) -> tuple[FirstLevelModel, NilearnModel]:
        """Two-run OLS models from events (daskglm's and nilearn's), fitted once per module."""
        def make() -> tuple:
            kw = {"mask_img": self.fiac["mask"], "t_r": T_R, "noise_model": "ols"}
            ours = FirstLevelModel(store=self.shared / "fitted", client="sync", verbose=0, **kw)
            theirs = NilearnModel(minimize_memory=True, **kw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours.fit(self.fiac["runs"], events=self.fiac["all_events"])
                theirs.fit(self.fiac["runs"], events=self.fiac["all_events"])
            return ours, theirs
        return self._cached("fitted", make)

    @property
    def bids(self) -> Any:
        def make() -> Any:
            return self._cache["bids_data"](n_subjects=1, n_runs=1, shape=(10, 12, 8), n_scans=30)
        return self._cached("bids", make)

    # ----------------------------------------------------------------- makers

    def ours(self, **kw: Any) -> FirstLevelModel:
        """A daskglm model on the FIAC mask, storing into this case's folder."""
        kw.setdefault("mask_img", self.fiac["mask"])
        kw.setdefault("noise_model", "ols")
        return FirstLevelModel(store=self.tmp / "stores", client="sync", verbose=0, **kw)

    def theirs(self, **kw: Any) -> NilearnModel:
        kw.setdefault("mask_img", self.fiac["mask"])
        kw.setdefault("noise_model", "ols")
        return NilearnModel(minimize_memory=True, **kw)

    def small_ours(self, **kw: Any) -> FirstLevelModel:
        return self.ours(mask_img=self.small_run["mask_path"], **kw)

    def small_theirs(self, **kw: Any) -> NilearnModel:
        return self.theirs(mask_img=self.small_run["mask_path"], **kw)

    def save(self, name: str, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path = self.tmp / name
        nib.save(nib.Nifti1Image(data, self.small_run["affine"] if affine is None else affine), str(path))
        return path

    def fiac_mask_variant(self, name: str, data: np.ndarray | None = None, affine: np.ndarray | None = None
                          ) -> Path:
        mask = nib.load(self.fiac["mask"])
        values = np.asarray(mask.dataobj) if data is None else data
        return self.save(name, values, mask.affine if affine is None else affine)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, fiac_data, bids_data) -> dict:
    """The module's folder of fitted models, the session's simulated datasets, what the cases made once."""
    return {"shared": tmp_path_factory.mktemp("bad_inputs_shared"), "fiac_data": fiac_data, "bids_data": bids_data}


@pytest.fixture
def ctx(tmp_path, small_run, cache) -> Ctx:
    return Ctx(tmp_path, cache["shared"], small_run, cache)


# --------------------------------------------------------------------------- broken files


def _three_d(c: Ctx) -> Path:
    return c.save("three_d.nii.gz", c.small_run["data"][..., 0])


def _five_d(c: Ctx) -> Path:
    return c.save("five_d.nii.gz", c.small_run["data"][..., None])


def _zero_scans(c: Ctx) -> Path:
    return c.save("zero_scans.nii.gz", np.zeros((20, 22, 14, 0), np.int16))


def _text_gz(c: Ctx) -> Path:
    path = c.tmp / "not_nifti.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"this is not a NIfTI file at all\n" * 20)
    return path


def _plain_bytes_gz(c: Ctx) -> Path:
    path = c.tmp / "not_gzip.nii.gz"
    path.write_bytes(b"onset\tduration\ttrial_type\n1\t2\ta\n" * 20)
    return path


def _truncated_gz(c: Ctx) -> Path:
    raw = c.small_run["nii.gz"].read_bytes()
    path = c.tmp / "truncated.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _corrupt_gz(c: Ctx) -> Path:
    raw = bytearray(c.small_run["nii.gz"].read_bytes())
    for pos in range(len(raw) // 2, len(raw) // 2 + 400):
        raw[pos] ^= 0x5A
    path = c.tmp / "corrupt.nii.gz"
    path.write_bytes(bytes(raw))
    return path


def _truncated_nii(c: Ctx) -> Path:
    path = c.tmp / "truncated.nii"
    path.write_bytes(c.small_run["nii"].read_bytes()[:-1000])
    return path


def _dangling(c: Ctx) -> Path:
    path = c.tmp / "dangling.nii.gz"
    path.symlink_to(c.tmp / "gone.nii.gz")
    return path


def _fit_small(c: Ctx, run: Any) -> Any:
    return c.small_ours().fit(run, design_matrices=c.design30)


def _nilearn_fit_small(c: Ctx, run: Any) -> Any:
    return c.small_theirs().fit(str(run), design_matrices=c.design30)


def _unreadable(c: Ctx) -> Any:
    """chmod 000; as root (who reads it anyway) the kernel's EACCES is simulated where the file is
    opened: nibabel.load (indexed_gzip opens files in C) and Python's own open (daskglm reads
    .nii.gz headers through gzip)."""
    path = c.tmp / "unreadable.nii.gz"
    shutil.copy(c.small_run["nii.gz"], path)
    path.chmod(0)
    try:
        with open(path, "rb"):
            readable = True
    except PermissionError:
        readable = False
    if not readable:
        return _fit_small(c, path)
    real_load = nib.load

    def load(filename: Any, *args: Any, **kwargs: Any) -> Any:
        if os.path.abspath(os.fspath(filename)) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(filename))
        return real_load(filename, *args, **kwargs)

    real_open = builtins.open

    def open_(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    with mock.patch.object(nib, "load", load), mock.patch.object(builtins, "open", open_):
        return _fit_small(c, path)


# --------------------------------------------------------------------------- stores


def _masker_rows(run: Any, mask: Any) -> np.ndarray:
    from nilearn.maskers import NiftiMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NiftiMasker(mask_img=str(mask)).fit_transform(str(run))


def _ingest_fiac(c: Ctx, store: Path, **kw: Any) -> Any:
    return ingest_run(c.fiac["run"], store, mask_img=c.fiac["mask"], client="sync", **kw)


def _store_other_source(c: Ctx) -> Any:
    store = c.tmp / "run.zarr"
    ingest_run(c.small_run["nii"], store, mask_img=c.small_run["mask_path"], client="sync")
    return _ingest_fiac(c, store)


def _old_format(c: Ctx, *, in_fingerprint: bool) -> Any:
    """A complete store whose attributes say another store format (as an older daskglm wrote it)."""
    store = c.tmp / "run.zarr"
    _ingest_fiac(c, store)
    group = zarr.open_group(str(store), mode="r+")
    group["bold"][:] = -1.0  # stale content: a rebuild must replace it
    group.attrs["daskglm_store_format"] = 0
    if in_fingerprint:
        fingerprint = json.loads(group.attrs["fingerprint"])
        fingerprint["format"] = 0
        group.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    return _ingest_fiac(c, store)


def _check_fresh_fiac_store(c: Ctx, ds: Any) -> None:
    store = c.tmp / "run.zarr"
    attrs = zarr.open_group(str(store), mode="r").attrs
    assert attrs["complete"] is True and attrs["daskglm_store_format"] == STORE_FORMAT
    assert ds.attrs["source"]["path"] == str(Path(c.fiac["run"]).resolve())
    np.testing.assert_allclose(ds["bold"].values, _masker_rows(c.fiac["run"], c.fiac["mask"]),
                               rtol=1e-6, atol=1e-4)


def _tamper(c: Ctx, **attrs: Any) -> Path:
    store = c.tmp / "run.zarr"
    _ingest_fiac(c, store)
    zarr.open_group(str(store), mode="r+").attrs.update(attrs)
    return store


def _foreign_folder(c: Ctx) -> Any:
    folder = c.tmp / "my_results"
    folder.mkdir()
    (folder / "thesis.txt").write_text("three years of work")
    return _ingest_fiac(c, folder)


def _assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "three years of work"


def _unwritable(c: Ctx) -> Any:
    blocker = c.tmp / "a_file"
    blocker.write_text("a file where a folder should be")
    return _ingest_fiac(c, blocker / "run.zarr")


# --------------------------------------------------------------------------- fixed effects, second level


def _fx_maps(c: Ctx, variance_value: float | None = None) -> tuple[list, list, Path]:
    rng = np.random.default_rng(0)
    shape, affine = (6, 7, 5), np.eye(4)
    effects, variances = [], []
    for r in range(2):
        effects.append(c.save(f"effect{r}.nii.gz", rng.normal(size=shape), affine))
        var = rng.uniform(1.0, 2.0, size=shape)
        if r == 1 and variance_value is not None:
            var[2, 3, 2] = variance_value
        variances.append(c.save(f"var{r}.nii.gz", var, affine))
    mask = c.save("fx_mask.nii.gz", np.ones(shape, np.uint8), affine)
    return effects, variances, mask


def _fx(c: Ctx, variance_value: float | None = None, nilearn: bool = False, **kw: Any) -> Any:
    effects, variances, mask = _fx_maps(c, variance_value)
    if "n_variances" in kw:
        variances = variances[: kw.pop("n_variances")]
    if nilearn:
        from nilearn.glm.contrasts import compute_fixed_effects

        return compute_fixed_effects([str(p) for p in effects], [str(p) for p in variances], str(mask), **kw)
    from daskglm import compute_fixed_effects

    return compute_fixed_effects(effects, variances, mask, client="sync", **kw)


def _check_fx_as_nilearn(c: Ctx, ours: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _fx(c, 0.0, nilearn=True, precision_weighted=True)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), rtol=1e-6)


def _second_level(c: Ctx, nilearn: bool) -> Any:
    if nilearn:
        from nilearn.glm.second_level import SecondLevelModel
    else:
        from daskglm.models.second_level import SecondLevelModel
    effects, _, _ = _fx_maps(c)
    design = pd.DataFrame({"intercept": [1.0]})
    kw = {} if nilearn else {"client": "sync"}
    return SecondLevelModel(**kw).fit([str(effects[0])], design_matrix=design)


# --------------------------------------------------------------------------- command line


def _cli(c: Ctx, *argv: Any) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "DASKGLM_DEBUG")}
    proc = subprocess.run([sys.executable, "-m", "daskglm", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=c.tmp, check=False)
    if proc.returncode == 0:
        return proc
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    raise CLIFailed(f"exit {proc.returncode}: {lines[0]}")


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    """One bad input.

    expect : an exception type (the call must raise it), a warning category
        (the call must warn and go on), or None (accepted silently).
    match : regex searched in the exception's or warning's message.
    nilearn : nilearn 0.14's equivalent call, if there is one.
    differs : why daskglm deliberately answers otherwise than nilearn; then
        ``nilearn_kind`` states nilearn's answer ("error", "warning" or "silent").
    nilearn_match : the warning of nilearn's to look for (default: ``match``).
    check : more assertions, given the context and the result (or the exception).
    writes : False for a read-only call on a store its setup made complete on purpose
        (the "no store left complete" rule is about what a failed call writes).
    """

    id: str
    call: Callable[[Ctx], Any]
    expect: type[BaseException] | None
    match: str | None
    nilearn: Callable[[Ctx], Any] | None = None
    differs: str = ""
    nilearn_kind: str | None = None
    nilearn_match: str | None = None
    check: Callable[[Ctx, Any], None] | None = None
    writes: bool = True


def _fiac_fit(c: Ctx, model_kw: dict | None = None, **fit_kw: Any) -> Any:
    if "events" not in fit_kw:
        fit_kw.setdefault("design_matrices", c.fiac["design"])
    run = fit_kw.pop("run", c.fiac["run"])
    return c.ours(**(model_kw or {})).fit(run, **fit_kw)


def _nl_fiac_fit(c: Ctx, model_kw: dict | None = None, **fit_kw: Any) -> Any:
    if "events" not in fit_kw:
        fit_kw.setdefault("design_matrices", c.fiac["design"])
    run = fit_kw.pop("run", c.fiac["run"])
    model_kw = {k: v for k, v in (model_kw or {}).items() if k not in ("t_chunk", "v_chunk")}
    return c.theirs(**model_kw).fit([str(r) for r in run] if isinstance(run, list) else str(run), **fit_kw)


def fiac_case(id: str, kwargs: Callable[[Ctx], tuple[dict, dict]], expect: Any, match: str, **extra: Any) -> Case:
    """A FirstLevelModel fit of FIAC run 1 (model keywords, fit keywords), and nilearn's same fit."""
    def ours(c: Ctx) -> Any:
        model_kw, fit_kw = kwargs(c)
        return _fiac_fit(c, model_kw, **fit_kw)

    def theirs(c: Ctx) -> Any:
        model_kw, fit_kw = kwargs(c)
        return _nl_fiac_fit(c, model_kw, **fit_kw)

    return Case(id, ours, expect, match, nilearn=extra.pop("nilearn", theirs), **extra)


def small_case(id: str, make: Callable[[Ctx], Any], expect: Any, match: str, **extra: Any) -> Case:
    return Case(id, lambda c: _fit_small(c, make(c)), expect, match,
                nilearn=extra.pop("nilearn", lambda c: _nilearn_fit_small(c, make(c))), **extra)


def contrast_case(id: str, args: Callable[[Ctx], tuple[tuple, dict]], expect: Any, match: str, **extra: Any) -> Case:
    def ours(c: Ctx) -> Any:
        a, kw = args(c)
        return c.fitted()[0].compute_contrast(*a, **kw)

    def theirs(c: Ctx) -> Any:
        a, kw = args(c)
        return c.fitted()[1].compute_contrast(*a, **kw)

    return Case(id, ours, expect, match, nilearn=theirs, **extra)


EV = {"onset": [4.0, 30.0, 60.0], "duration": [2.0, 2.0, 2.0], "trial_type": ["a", "b", "a"]}


def _events(**changes: Any) -> pd.DataFrame:
    return pd.DataFrame({**EV, **changes})


def _labels_mask(c: Ctx) -> Path:
    shape = nib.load(c.fiac["mask"]).shape
    return c.fiac_mask_variant("labels.nii.gz", (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.int16))


def _four_d_mask(c: Ctx) -> Path:
    mask = np.asarray(nib.load(c.fiac["mask"]).dataobj)
    return c.fiac_mask_variant("mask4d.nii.gz", np.stack([mask, mask], -1))


def _far_mask(c: Ctx) -> Path:
    affine = nib.load(c.fiac["mask"]).affine.copy()
    affine[:3, 3] += 1000.0
    return c.fiac_mask_variant("far_mask.nii.gz", affine=affine)


def _flipped_mask(c: Ctx) -> Path:
    """The same mask, stored with the first axis reversed (another orientation, same voxels in space)."""
    img = nib.load(c.fiac["mask"])
    data, affine = np.asarray(img.dataobj), img.affine.copy()
    flip = affine.copy()
    flip[:3, 0] *= -1
    flip[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
    return c.fiac_mask_variant("flipped_mask.nii.gz", data[::-1].copy(), flip)


def _check_flipped(c: Ctx, model: Any) -> None:
    """nilearn resamples the run onto the mask's grid; daskglm does the same (daskglm/io/grid.py)."""
    flipped = nib.load(_flipped_mask(c))
    np.testing.assert_allclose(model.mask_img_.affine, flipped.affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = c.theirs(mask_img=str(_flipped_mask(c))).fit(str(c.fiac["run"]),
                                                                design_matrices=c.fiac["design"])
    a = model.compute_contrast("DStDSp - SStSSp", output_type="stat").get_fdata()
    b = theirs.compute_contrast("DStDSp - SStSSp", output_type="stat").get_fdata()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _design_with(c: Ctx, **columns: Any) -> pd.DataFrame:
    return c.fiac["design"].assign(**columns)


def _duplicate_columns(c: Ctx) -> pd.DataFrame:
    design = c.fiac["design"].copy()
    design.columns = ["SStSSp", "SStSSp", *design.columns[2:]]
    return design


def _run_glm(c: Ctx, bins: int) -> Any:
    """nilearn's only ``bins``: ``run_glm`` (its FirstLevelModel.fit has none)."""
    from nilearn.glm.first_level import run_glm

    Y = np.random.default_rng(0).normal(size=(N_SCANS, 5))
    return run_glm(Y, c.fiac["design"].to_numpy(), noise_model="ar1", bins=bins)


def _bids_no_task(c: Ctx, nilearn: bool = False) -> Any:
    if nilearn:
        from nilearn.glm.first_level import first_level_from_bids
    else:
        from daskglm import first_level_from_bids
    return first_level_from_bids(c.bids.root, "nosuchtask", derivatives_folder=c.bids.derivatives_folder)


def _batch_no_task(c: Ctx) -> Any:
    from daskglm.bids.batch import run_batch

    return run_batch(c.bids.root, "nosuchtask", {"language": "language"}, c.tmp / "out",
                     derivatives_folder=c.bids.derivatives_folder, client="sync", verbose=0)


def _nothing_at(*names: str) -> Callable[[Ctx, Any], None]:
    def check(c: Ctx, _: Any) -> None:
        for name in names:
            assert not (c.tmp / name).exists(), name
    return check


CASES = [
    # ---------------------------------------------------------------- run files
    small_case("run missing", lambda c: c.tmp / "missing.nii.gz", FileNotFoundError,
               r"run image not found: '.*missing\.nii\.gz'"),
    small_case("run is a dangling symlink", _dangling, FileNotFoundError,
               r"run image not found: '.*dangling\.nii\.gz'"),
    Case("run unreadable (mode 000)", _unreadable, PermissionError,
         r"run image '.*unreadable\.nii\.gz' cannot be read: Permission denied"),  # root reads it anyway: no nilearn
    small_case("run is a directory", lambda c: c.tmp, IsADirectoryError, r"run image '.*' is a directory, not a NIfTI"),
    small_case("text gzipped under a .nii.gz name", _text_gz, ValueError,
               r"run image '.*not_nifti\.nii\.gz' is not a readable NIfTI image"),
    small_case("plain text under a .nii.gz name", _plain_bytes_gz, ValueError,
               r"run image '.*not_gzip\.nii\.gz' is not gzip-compressed, although its name ends in \.gz"),
    small_case("truncated .nii.gz", _truncated_gz, ValueError, r"'.*truncated\.nii\.gz' is (truncated|a corrupt)"),
    small_case("gzip with corrupt data", _corrupt_gz, ValueError,
               r"'.*corrupt\.nii\.gz' is a corrupt or truncated gzip file"),
    small_case("truncated .nii", _truncated_nii, ValueError,
               r"'.*truncated\.nii' is truncated: \d+ bytes on disk, its header announces \d+"),
    small_case("3D run", _three_d, ValueError, r"'.*three_d\.nii\.gz' must be 4D .*got 3D shape \(20, 22, 14\)"),
    small_case("5D run", _five_d, ValueError, r"'.*five_d\.nii\.gz' must be 4D .*got 5D shape \(20, 22, 14, 30, 1\)"),
    small_case("zero-length time axis", _zero_scans, ValueError,
               r"'.*zero_scans\.nii\.gz' is empty: shape \(20, 22, 14, 0\)"),
    # ---------------------------------------------------------------- masks
    fiac_case("mask missing", lambda c: ({"mask_img": c.tmp / "nomask.nii.gz"}, {}), FileNotFoundError,
              r"mask image not found: '.*nomask\.nii\.gz'"),
    fiac_case("mask all zeros",
              lambda c: ({"mask_img": c.fiac_mask_variant("empty.nii.gz", np.zeros((16, 18, 10), np.uint8))}, {}),
              ValueError, r"mask '.*empty\.nii\.gz' is not a usable binary mask: .*empty"),
    fiac_case("mask not binary", lambda c: ({"mask_img": _labels_mask(c)}, {}), ValueError,
              r"mask '.*labels\.nii\.gz' is not a usable binary mask: .*not made of 2 values: \[0 1 2\]",
              differs="nilearn's own load_mask_img refuses a 3-valued mask, but FirstLevelModel's masker silently "
                      "keeps every non-zero voxel: label images given as masks merge their labels unseen",
              nilearn_kind="silent"),
    fiac_case("mask with two volumes", lambda c: ({"mask_img": _four_d_mask(c)}, {}), ValueError,
              r"mask '.*mask4d\.nii\.gz' must be 3D; got shape \(16, 18, 10, 2\)",
              differs="nilearn 0.14's FirstLevelModel accepts a 4D mask of several volumes without a word",
              nilearn_kind="silent"),
    fiac_case("mask with no voxel in the run's field of view", lambda c: ({"mask_img": _far_mask(c)}, {}), ValueError,
              r"mask '.*far_mask\.nii\.gz' has no voxel inside the field of view of the run \(shape \(16, 18, 10\)\)"),
    fiac_case("mask in another orientation", lambda c: ({"mask_img": _flipped_mask(c)}, {}), UserWarning,
              r"imgs are being resampled to the mask_img resolution", check=_check_flipped),
    # ---------------------------------------------------------------- design matrices
    fiac_case("design rows != scans", lambda c: ({}, {"design_matrices": c.fiac["design"].iloc[:30]}), ValueError,
              r"design_matrices\[0\] has 30 rows but run 0 has 40 scans"),
    fiac_case("design with NaN", lambda c: ({}, {"design_matrices": _design_with(c, SStDSp=np.nan)}), ValueError,
              r"design_matrices\[0\] has NaN or infinite values in columns \['SStDSp'\]"),
    Case("contrast naming a duplicated design column",
         lambda c: _fiac_fit(c, design_matrices=_duplicate_columns(c)).compute_contrast("SStSSp - DStDSp"),
         ValueError, r"The expression \(SStSSp - DStDSp\) names \['SStSSp'\], which the design matrix has as "
                     r"more than one column",
         nilearn=lambda c: _nl_fiac_fit(c, design_matrices=_duplicate_columns(c)).compute_contrast("SStSSp - DStDSp"),
         writes=False),  # the fit (the setup) completes its stores; the contrast is what fails
    fiac_case("fewer designs than runs",
              lambda c: ({}, {"run": c.fiac["runs"], "design_matrices": [c.fiac["design"]]}), ValueError,
              r"len\(run_imgs\) 2 does not match len\(design_matrices\) 1"),
    # ---------------------------------------------------------------- events, confounds, sample masks
    fiac_case("t_r = 0", lambda c: ({"t_r": 0}, {"events": c.fiac["events"]}), ValueError,
              r"'t_r' must be positive. Got 0 instead"),
    fiac_case("t_r < 0", lambda c: ({"t_r": -2.5}, {"events": c.fiac["events"]}), ValueError,
              r"'t_r' must be positive. Got -2.5 instead"),
    fiac_case("slice_time_ref > 1", lambda c: ({"t_r": T_R, "slice_time_ref": 1.5}, {"events": c.fiac["events"]}),
              ValueError, r"'slice_time_ref' must be between 0 and 1. Got 1.5"),
    fiac_case("events without onset", lambda c: ({"t_r": T_R}, {"events": _events().drop(columns="onset")}),
              ValueError, r"Run 0 \(events\[0\]\): The provided events data has no onset column"),
    fiac_case("events without duration", lambda c: ({"t_r": T_R}, {"events": _events().drop(columns="duration")}),
              ValueError, r"Run 0 \(events\[0\]\): The provided events data has no duration column"),
    fiac_case("events with a negative duration",
              lambda c: ({"t_r": T_R}, {"events": _events(duration=[2.0, -3.0, 2.0])}),
              UserWarning, r"events\[0\] has 1 event\(s\) with negative duration(.|\n)*-3\.0",
              differs="nilearn models a negative box before the onset without a word; daskglm keeps nilearn's "
                      "design and says so", nilearn_kind="silent", nilearn_match="duration"),
    fiac_case("events beyond the end of the run",
              lambda c: ({"t_r": T_R}, {"events": _events(onset=[4.0, 30.0, 500.0])}),
              UserWarning, r"events\[0\] has 1 event\(s\) with an onset after the last scan of run 0 "
                           r"\(t = 97\.5 s: 40 scans, t_r = 2\.5 s\)(.|\n)*500\.0",
              differs="nilearn drops such events silently (onsets in ms or another run's events are common "
                      "mistakes); daskglm keeps nilearn's design and says so", nilearn_kind="silent",
              nilearn_match="onset|after"),
    fiac_case("fewer events than runs", lambda c: ({"t_r": T_R}, {"run": c.fiac["runs"], "events": [_events()]}),
              ValueError, r"len\(run_imgs\) 2 does not match len\(events\) 1"),
    fiac_case("confounds of the wrong length",
              lambda c: ({"t_r": T_R}, {"events": _events(), "confounds": pd.DataFrame({"motion": np.arange(30.0)})}),
              ValueError, r"confounds\[0\] has 30 rows, run 0 has 40 scans"),
    fiac_case("confounds with NaN",
              lambda c: ({"t_r": T_R}, {"events": _events(),
                                        "confounds": pd.DataFrame({"motion": [np.nan] + [0.0] * 39})}),
              ValueError, r"Extra regressors contain NaN values: confounds\[0\] columns \['motion'\]"),
    fiac_case("sample_masks out of range",
              lambda c: ({"t_r": T_R}, {"events": _events(), "sample_masks": np.arange(5, 42)}), IndexError,
              r"sample_masks\[0\] has indices \[40, 41\] out of range for run 0, which has 40 scans"),
    fiac_case("sample_masks negative",
              lambda c: ({"t_r": T_R}, {"events": _events(), "sample_masks": np.arange(-2, 30)}), ValueError,
              r"sample_mask should not contain negative values: sample_masks\[0\] has \[-2, -1\]"),
    # ---------------------------------------------------------------- model parameters
    fiac_case("smoothing_fwhm < 0", lambda c: ({"smoothing_fwhm": -5.0}, {}), ValueError,
              r"smoothing_fwhm must be None or a non-negative number .*got -5\.0",
              differs="nilearn skips smoothing silently for a negative FWHM", nilearn_kind="silent",
              nilearn_match="fwhm|smooth"),
    fiac_case("smoothing_fwhm a string", lambda c: ({"smoothing_fwhm": "5"}, {}), TypeError,
              r"smoothing_fwhm must be None or a number .*got '5' of type str"),
    fiac_case("noise_model invalid", lambda c: ({"noise_model": "arx"}, {}), ValueError,
              r"AR order must be a positive integer specified as arN.*You provided arx"),
    fiac_case("signal_scaling invalid", lambda c: ({"signal_scaling": 2}, {}), ValueError,
              r"'signal_scaling' must be one of \{False, 1, \(0, 1\)\}.\n'2' was provided"),
    fiac_case("target_shape without target_affine", lambda c: ({"target_shape": (10, 10, 10)}, {}), ValueError,
              r"target_shape needs a 4x4 target_affine.*target_shape=\(10, 10, 10\)"),
    Case("bins = 0", lambda c: c.ours(noise_model="ar1").fit(c.fiac["run"], design_matrices=c.fiac["design"], bins=0),
         ValueError, r"bins must be a positive integer; got 0", nilearn=lambda c: _run_glm(c, 0)),
    Case("bins < 0", lambda c: c.ours(noise_model="ar1").fit(c.fiac["run"], design_matrices=c.fiac["design"], bins=-3),
         ValueError, r"bins must be a positive integer; got -3", nilearn=lambda c: _run_glm(c, -3),
         differs="nilearn's run_glm fits with negative bins without a word (the AR(1) labels it quantises "
                 "with them mean nothing)", nilearn_kind="silent"),
    Case("t_chunk = 0", lambda c: _fiac_fit(c, {"t_chunk": 0}), ValueError,
         r"t_chunk must be a positive integer or None; got 0"),
    Case("v_chunk = 0 (ingest_run)", lambda c: _ingest_fiac(c, c.tmp / "run.zarr", v_chunk=0), ValueError,
         r"v_chunk must be a positive integer or None; got 0"),
    # ---------------------------------------------------------------- stores
    Case("store URL with an unknown protocol", lambda c: _ingest_fiac(c, "foo://bucket/run.zarr"), ValueError,
         r"store 'foo://bucket/run\.zarr': unknown protocol 'foo'"),
    Case("store path not writable", _unwritable, OSError, r"cannot create the store at '.*a_file/run\.zarr'"),
    Case("store path is a folder of other files", _foreign_folder, FileExistsError,
         r"'.*my_results' is a folder holding \['thesis\.txt'\], not a daskglm store: refusing to delete it",
         check=lambda c, _: _assert_untouched(c.tmp / "my_results")),
    Case("store made from another source", _store_other_source, UserWarning,
         r"the store at '.*run\.zarr' was made from another source or with other parameters: rebuilding it",
         check=_check_fresh_fiac_store),
    Case("store of another daskglm store format", lambda c: _old_format(c, in_fingerprint=True), UserWarning,
         rf"the store at '.*run\.zarr' has daskglm store format 0 while this daskglm writes format {STORE_FORMAT}: "
         "rebuilding it",
         check=_check_fresh_fiac_store),
    Case("store whose format attribute alone differs", lambda c: _old_format(c, in_fingerprint=False), UserWarning,
         rf"the store at '.*run\.zarr' has daskglm store format 0 while this daskglm writes format {STORE_FORMAT}: "
         "rebuilding it",
         check=_check_fresh_fiac_store),
    Case("open_run of another store format", lambda c: open_run(_tamper(c, daskglm_store_format=0)), ValueError,
         rf"'.*run\.zarr' is not a daskglm run store of format {STORE_FORMAT} \(found format 0\)", writes=False),
    Case("open_run of an incomplete store", lambda c: open_run(_tamper(c, complete=False)), StoreIncompleteError,
         r"the store at '.*run\.zarr' is incomplete", writes=False),
    # ---------------------------------------------------------------- contrasts
    Case("compute_contrast before fit", lambda c: c.ours().compute_contrast("DStDSp - SStSSp"), NotFittedError,
         r"This FirstLevelModel instance is not fitted yet",
         nilearn=lambda c: c.theirs().compute_contrast("DStDSp - SStSSp")),
    contrast_case("contrast with an unknown name", lambda c: (("DStDSp - zz",), {}), ValueError,
                  r"name 'zz' is not defined(.|\n)*Available matrix columns are: \['DStDSp'"),
    contrast_case("contrast expression with a syntax error", lambda c: (("DStDSp -* SStSSp",), {}), ValueError,
                  r"The expression \(DStDSp -\* SStSSp\) is not valid(.|\n)*Parser error: SyntaxError"),
    contrast_case("contrast too long", lambda c: ((np.ones(30),), {}), ValueError,
                  r"t contrasts should be of length P=\d+, but it has length 30"),
    contrast_case("wrong number of per-run contrasts", lambda c: (([np.ones(2)] * 3,), {}), ValueError,
                  r"3 contrasts given, while there are 2 runs"),
    contrast_case("F contrast with rank deficiency", lambda c: ((np.array([[1, -1, 0], [-1, 1, 0]]),), {}),
                  np.linalg.LinAlgError, r"F contrast is rank deficient: its 2 rows have rank 1"),
    contrast_case("stat_type invalid", lambda c: ((np.array([1, -1]),), {"stat_type": "z"}), ValueError,
                  r"'stat_type' must be one of \['t', 'F'\].\n'z' was provided"),
    contrast_case("output_type invalid", lambda c: ((np.array([1, -1]),), {"output_type": "zz"}), ValueError,
                  r"'output_type' must be one of .*\n'zz' was provided"),
    contrast_case("all contrasts null", lambda c: (([np.zeros(3), np.zeros(3)],), {}), ValueError,
                  r"All contrasts provided were null contrasts"),
    # ---------------------------------------------------------------- fixed effects, second level
    Case("compute_fixed_effects with mismatched lists", lambda c: _fx(c, n_variances=1), ValueError,
         r"The number of contrast images \(2\) differs from the number of variance images \(1\)",
         nilearn=lambda c: _fx(c, nilearn=True, n_variances=1)),
    Case("compute_fixed_effects with mismatched dofs", lambda c: _fx(c, dofs=[10]), ValueError,
         r"The number of degrees of freedom \(1\) differs from the number of contrast images \(2\)",
         nilearn=lambda c: _fx(c, nilearn=True, dofs=[10])),
    Case("variance map with a negative value", lambda c: _fx(c, -1.5), ValueError,
         r"variance_imgs\[1\] \('.*var1\.nii\.gz'\) has 1 negative value\(s\) inside the mask .*min -1\.5",
         nilearn=lambda c: _fx(c, -1.5, nilearn=True),
         differs="nilearn floors it at 1e-16 silently: a variance is never negative (most often the effect "
                 "maps were passed as variance_imgs)", nilearn_kind="silent", nilearn_match="varian"),
    Case("variance map with a zero (precision weighted)", lambda c: _fx(c, 0.0, precision_weighted=True), None,
         None, nilearn=lambda c: _fx(c, 0.0, nilearn=True, precision_weighted=True), check=_check_fx_as_nilearn),
    Case("second-level input with one subject", lambda c: _second_level(c, nilearn=False), TypeError,
         r"A second level model requires a list with at least two first level models or niimgs.*got 1",
         nilearn=lambda c: _second_level(c, nilearn=True)),
    # ---------------------------------------------------------------- BIDS
    Case("BIDS dataset without the requested task", _bids_no_task, ValueError,
         r"No BOLD files found for subject 01 .*nosuchtask(.|\n)*have tasks \['language'\]",
         nilearn=lambda c: _bids_no_task(c, nilearn=True)),
    Case("BIDS batch without the requested task", _batch_no_task, ValueError,
         r"No BOLD files found for task_label='nosuchtask'.*have tasks \['language'\]",
         nilearn=lambda c: _bids_no_task(c, nilearn=True), check=_nothing_at("out")),
    # ---------------------------------------------------------------- command line
    Case("CLI convert without --store", lambda c: _cli(c, "convert", c.small_run["nii"], "--scheduler", "sync"),
         CLIFailed, r"^exit 2: daskglm: error: --store STORE is required"),
    Case("CLI fit without --out and --contrast",
         lambda c: _cli(c, "fit", c.small_run["nii"]), CLIFailed,
         r"^exit 2: daskglm: error: the following arguments are required: --out.*--contrast"),
    Case("CLI convert of a 3D run", lambda c: _cli(c, "convert", _three_d(c), "--store", c.tmp / "s.zarr",
                                                   "--scheduler", "sync"),
         CLIFailed, r"^exit 1: daskglm: error: '.*three_d\.nii\.gz' must be 4D", check=_nothing_at("s.zarr")),
]

#: What nilearn's error says, for the rows where nilearn fails too: it must fail for the same
#: reason (not, say, on a mistake of this test's), even when its message is less clear than ours.
NILEARN_ERRORS = {
    "run missing": r"File not found: '.*missing\.nii\.gz'",
    "run is a dangling symlink": r"No such file or no access: '.*dangling\.nii\.gz'",
    "run is a directory": r"Cannot work out file type",
    "text gzipped under a .nii.gz name": r"Cannot work out file type of .*not_nifti\.nii\.gz",
    "plain text under a .nii.gz name": r"not_gzip\.nii\.gz is not a gzip file",
    "truncated .nii.gz": r"Expected \d+ bytes, got \d+ bytes",
    "gzip with corrupt data": r"Cannot work out file type of .*corrupt\.nii\.gz",
    "truncated .nii": r"Expected \d+ bytes, got \d+ bytes from .*truncated\.nii",
    "3D run": r"number of rows of Y should match",  # nilearn only notices it when fitting
    "5D run": r"Expected dimension is 4D and you provided a 5D image",
    "zero-length time axis": r"The image is empty",
    "mask missing": r"File not found: '.*nomask\.nii\.gz'",
    "mask all zeros": r"The mask is invalid as it is empty",
    "mask with no voxel in the run's field of view": r"does not contain any of the data",
    "design rows != scans": r"number of rows of Y should match.*\(30, 13\)",
    "design with NaN": r"must not contain infs or NaNs",
    "fewer designs than runs": r"len\(design_matrices\) 1",
    "t_r = 0": r"'t_r' must be positive. Got 0",
    "t_r < 0": r"'t_r' must be positive. Got -2.5",
    "slice_time_ref > 1": r"'slice_time_ref' must be between 0 and 1",
    "events without onset": r"no onset column",
    "events without duration": r"no duration column",
    "fewer events than runs": r"len\(events\) 1",
    "confounds of the wrong length": r"Rows in confounds does not match n_scans",
    "confounds with NaN": r"Extra regressors contain NaN values",
    "sample_masks out of range": r"out-of-bounds",
    "sample_masks negative": r"sample_mask should not contain negative values",
    "smoothing_fwhm a string": r"'smoothing_fwhm' must be of type",
    "noise_model invalid": r"You provided arx",
    "signal_scaling invalid": r"'signal_scaling' must be one of",
    "target_shape without target_affine": r"target_affine should be specified too",
    "bins = 0": r"must not contain infs or NaNs",  # run_glm divides by bins
    "compute_contrast before fit": r"not fitted yet",
    "contrast with an unknown name": r"name 'zz' is not defined",
    "contrast naming a duplicated design column": r"The expression \(SStSSp - DStDSp\) is not valid",
    "contrast expression with a syntax error": r"The expression \(DStDSp -\* SStSSp\) is not valid",
    "contrast too long": r"but it has length 30",
    "wrong number of per-run contrasts": r"3 contrasts given, while there are 2 runs",
    "F contrast with rank deficiency": r"Singular matrix",
    "stat_type invalid": r"'stat_type' must be one of",
    "output_type invalid": r"'output_type' must be one of",
    "all contrasts null": r"All contrasts provided were null contrasts",
    "compute_fixed_effects with mismatched lists": r"number of variance images \(1\)",
    "compute_fixed_effects with mismatched dofs": r"number of degrees of freedom \(1\)",
    "second-level input with one subject": r"requires a list with at least two",
    "BIDS dataset without the requested task": r"No BOLD files found for subject 01.*nosuchtask",
    "BIDS batch without the requested task": r"No BOLD files found for subject 01.*nosuchtask",
}

#: Warnings of nilearn's unrelated to the inputs under test.
_NILEARN_NOISE = ("Generation of a mask has been requested", "Casting data from")


def _run(call: Callable[[], Any]) -> tuple[Any, BaseException | None, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return call(), None, caught
        except Exception as exc:  # noqa: BLE001 - the table says which
            return None, exc, caught


def _kind(exc: BaseException | None, caught: list, pattern: str | None) -> str:
    if exc is not None:
        return "error"
    relevant = [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
                and not any(n in str(w.message) for n in _NILEARN_NOISE)]
    if pattern is None:
        return "warning" if relevant else "silent"
    return "warning" if any(re.search(pattern, str(w.message), re.IGNORECASE) for w in relevant) else "silent"


def _complete_groups(root: Path) -> list[str]:
    """Every zarr group under ``root`` whose attributes say ``complete: true``."""
    found = []
    for folder, _, files in os.walk(root):
        if "zarr.json" in files:
            node = json.loads((Path(folder) / "zarr.json").read_text())
            if node.get("node_type") == "group" and zarr.open_group(folder, mode="r").attrs.get("complete") is True:
                found.append(folder)
    return found


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    nilearn_fails = {case.id for case in CASES if case.nilearn is not None
                     and (case.nilearn_kind or ("error" if case.expect and not issubclass(case.expect, Warning)
                                                else "")) == "error"}
    assert nilearn_fails == set(NILEARN_ERRORS)


# the CLI cases run ``python -m daskglm`` in a subprocess: slow
@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.id, marks=pytest.mark.slow if case.id.startswith("CLI ") else ()) for case in CASES])
def test_bad_input(case: Case, ctx: Ctx):
    result, exc, caught = _run(lambda: case.call(ctx))
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    if case.expect is not None and issubclass(case.expect, Warning):
        assert exc is None, f"expected a {case.expect.__name__}, got {type(exc).__name__}: {exc}"
        assert any(issubclass(w.category, case.expect) and re.search(case.match, str(w.message)) for w in caught), (
            f"no {case.expect.__name__} matching {case.match!r} among {messages}")
    elif case.expect is not None:
        assert exc is not None, f"expected {case.expect.__name__}, the call succeeded (warnings: {messages})"
        assert isinstance(exc, case.expect), f"expected {case.expect.__name__}, got {type(exc).__name__}: {exc}"
        assert re.search(case.match, str(exc)), f"{str(exc)!r} does not match {case.match!r}"
        assert not any("rebuilding" in str(w.message) for w in caught), f"a failed call claimed a rebuild: {messages}"
        if case.writes:
            assert _complete_groups(ctx.tmp) == [], "a failed call left a store marked complete"
    else:
        assert exc is None, f"expected the input to be accepted, got {type(exc).__name__}: {exc}"
        noisy = [m for m in messages if "Deprecat" not in m and "FutureWarning" not in m]
        assert noisy == [], f"expected no warning (as nilearn), got {noisy}"
    if case.check is not None:
        case.check(ctx, exc if exc is not None else result)

    if case.nilearn is None:
        return
    ours = "silent" if case.expect is None else "warning" if issubclass(case.expect, Warning) else "error"
    expected = case.nilearn_kind or ours
    assert bool(case.differs) == (expected != ours), "a deliberate difference needs differs= and nilearn_kind="
    side = ctx.tmp / "nilearn_side"  # nilearn's call makes its own copies of the bad files
    side.mkdir()
    nl_ctx = Ctx(side, ctx.shared, ctx.small_run, ctx._cache)
    _, nl_exc, nl_caught = _run(lambda: case.nilearn(nl_ctx))
    pattern = case.nilearn_match if case.nilearn_match is not None else (case.match if ours == "warning" else None)
    got = _kind(nl_exc, nl_caught, pattern)
    assert got == expected, (f"nilearn's answer is {got!r} ({type(nl_exc).__name__ if nl_exc else ''} {nl_exc or ''} "
                             f"{[str(w.message)[:120] for w in nl_caught]}), daskglm's is {ours!r}; "
                             f"documented: {case.differs or 'the same'}")
    if got == "error":
        assert re.search(NILEARN_ERRORS[case.id], str(nl_exc), re.DOTALL), f"nilearn failed otherwise: {nl_exc!r}"

"""Security properties (issue 8 part 5): no unpickling of store data, files
created with the user's umask, BIDS-derived paths confined to the output root."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daskglm"


# ----------------------------------------------------------------------------- (1) no unpickling
UNSAFE = {
    "pickle.load": re.compile(r"\b(c?pickle|dill|cloudpickle)\.loads?\s*\("),
    "np.load(allow_pickle=True)": re.compile(r"allow_pickle\s*=\s*True"),
    "zarr object codecs": re.compile(r"object_codec|numcodecs\.(Pickle|JSON|MsgPack|VLenUTF8)"
                                    r"|dtype\s*=\s*(object|['\"]O['\"])"),
    "pandas read_pickle": re.compile(r"read_pickle\s*\("),
}


def test_package_never_unpickles():
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            hits += [f"{path.name}:{lineno}: {what}: {line.strip()}" for what, rx in UNSAFE.items() if rx.search(code)]
    assert not hits, "\n".join(hits)


# ----------------------------------------------------------------------------- (2) umask
UMASK_SCRIPT = textwrap.dedent("""
    import os, sys, warnings
    warnings.simplefilter("ignore")
    os.umask(0o027)
    from pathlib import Path
    import numpy as np, nibabel as nib, zarr
    from daskglm.datasets.fiac import simulate_fiac
    from daskglm.io.maps import save_nifti
    from daskglm.store.ingest import ingest_run
    root = Path(sys.argv[1])
    data = simulate_fiac(data_dir=root / "data", shape=(12, 14, 8), n_scans=30, n_runs=1)
    ingest_run(data["func1"], root / "out" / "run1.zarr", client="sync")
    img = nib.load(data["func1"])
    save_nifti(nib.Nifti1Image(np.zeros(img.shape[:3], "float32"), img.affine), root / "out" / "map.nii.gz")
    g = zarr.open_group(str(root / "out" / "run1.zarr"), mode="r")
    bad = []
    def visit(group, prefix=""):
        for name, arr in group.arrays():
            if arr.dtype.kind not in "biuf":
                bad.append((prefix + name, str(arr.dtype)))
        for name, sub in group.groups():
            visit(sub, prefix + name + "/")
    visit(g)
    print("DTYPES_OK" if not bad else f"BAD_DTYPES {bad}")
""")


@pytest.fixture(scope="module")
def umask_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("umask")
    proc = subprocess.run([sys.executable, "-c", UMASK_SCRIPT, str(root)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout


def test_store_arrays_are_numeric(umask_run):
    """A store holds only numeric arrays: reading it never decodes objects."""
    _, stdout = umask_run
    assert "DTYPES_OK" in stdout, stdout


def test_created_files_respect_umask(umask_run):
    root, _ = umask_run
    out = root / "out"
    created = [out, *out.rglob("*"), *(root / "data").rglob("*")]
    assert any(p.name.endswith(".nii.gz") for p in created) and any(p.suffix == ".zarr" for p in created)
    too_open = [f"{p.relative_to(root)} {oct(p.stat().st_mode & 0o777)}" for p in created
                if p.stat().st_mode & 0o027]
    assert not too_open, "files/dirs beyond umask 027:\n" + "\n".join(too_open)


# ----------------------------------------------------------------------------- (3) BIDS paths
@pytest.fixture(scope="module")
def bids(bids_data):
    return bids_data()


def _deriv(bids) -> Path:
    root = Path(bids.root if hasattr(bids, "root") else bids["root"])
    deriv = [p for p in root.rglob("sub-*") if p.is_dir() and "derivatives" in p.parts]
    return root, deriv[0].parent


def test_subject_labels_with_path_separators_are_never_selected(bids):
    """Labels come from ``sub-*`` folder names (which cannot hold a separator);
    user-given ``sub_labels`` are only kept if such a folder exists."""
    from daskglm.bids.batch import _subjects

    root, deriv = _deriv(bids)
    found = sorted(p.name[4:] for p in deriv.glob("sub-*") if p.is_dir())
    evil = ["../evil", "../../evil", "/tmp/evil", f"{found[0]}/../../evil"]
    task = re.search(r"task-([a-zA-Z0-9]+)", next(deriv.rglob("*bold*.nii*")).name).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = _subjects(root, deriv, task, None, [*evil, found[0]], [])
        assert labels == [found[0]]
        with pytest.raises(RuntimeError, match="No subject found"):
            _subjects(root, deriv, task, None, evil, [])


def _job(out: Path, label: str, root: Path, deriv: Path):
    from daskglm.bids.subject import Job

    return Job(label=label, dataset=str(root), task_label="x", space_label=None,
               derivatives_folder=str(deriv.relative_to(root)), output_dir=str(out), contrasts={},
               stat_types={}, fingerprint="f", parameters={}, report=False, figures=False, kwargs={})


@pytest.mark.parametrize("label", ["../evil", "a/../../evil", "/abs/evil", ".."])
def test_run_subject_never_writes_outside_the_output_root(bids, tmp_path, label):
    """Even called directly with a crafted label, a subject job creates
    nothing outside its output root (it refuses the label)."""
    from daskglm.bids.subject import run_subject

    root, deriv = _deriv(bids)
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_subject(_job(out, label, root, deriv), "sync")
    assert result.status == "failed"
    new = set(tmp_path.rglob("*")) - before
    outside = [p for p in new if not p.resolve().is_relative_to(out.resolve())]
    assert not outside, outside
    assert not Path("/abs/evil").exists()

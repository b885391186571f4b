"""README's and the user guide's examples, run as written, compute what they say.

Every ``python`` block of README, and of each page of docs/ that is not executed when the site is built
(pages written as notebooks are), runs in order in one fresh interpreter per page (in an empty folder, with the
simulated data and stores in it), and each command-line example runs through the real ``daskglm`` command
(file names swapped for simulated ones where README uses placeholders such as ``run1.nii.gz``). The simulated
FIAC data (``daskglm.datasets.fiac.simulate_fiac``) and BIDS data (``daskglm.datasets.simulate_bids``) have a
"sentence" blob (DSt > SSt) and a "speaker" blob (DSp > SSp): each map named after a contrast must be
positive, and large, at its own blob.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
pytestmark = pytest.mark.slow


def _readme_commands(command: str) -> list[list[str]]:
    """The ``daskglm <command> ...`` examples of README's command-line block, continuation lines joined."""
    text = README.read_text()
    found = re.findall(rf"^daskglm {command} .*?(?<!\\)\n", text, flags=re.S | re.M)
    assert found, f"README has no daskglm {command} example"
    return [shlex.split(match.replace("\\\n", " "), comments=True) for match in found]


def _readme_command(command: str) -> list[str]:
    """The first ``daskglm <command> ...`` example of README's command-line block."""
    return _readme_commands(command)[0]


def _readme_fit_command() -> list[str]:
    return _readme_command("fit")


@pytest.fixture(scope="module")
def fiac(tmp_path_factory, fiac_data):
    root = tmp_path_factory.mktemp("readme")
    data = fiac_data(shape=(16, 16, 10), n_scans=191, effect_size=0.06)
    return data, root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}


def _run(argv: list[str], cwd: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daskglm", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**_env(), **(extra or {})})


def test_readme_fit_example_maps_show_their_contrasts(fiac):
    data, root = fiac
    argv = _readme_fit_command()[1:]  # after "daskglm"
    names = {"run1.nii.gz": data["func1"], "run2.nii.gz": data["func2"], "mask.nii.gz": data["mask"],
             "run1_events.tsv": data["events1"], "run2_events.tsv": data["events2"]}
    assert set(names) <= set(argv), argv  # the example's inputs are those of the simulated dataset
    argv = [str(names.get(arg, arg)) for arg in argv]
    proc = _run(argv, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    truth = np.load(data["truth"])
    blobs = dict(zip(truth["blob_names"].tolist(), truth["blob_centers"].tolist()))
    contrasts = dict(arg.split("=", 1) for arg in argv[argv.index("--contrast") + 1:] if "=" in arg)
    expected = {"language": "sentence", "DSp_minus_SSp": "speaker"}
    assert set(contrasts) == set(expected), contrasts
    for name, blob in expected.items():
        key = re.sub(r"[^a-z]", "", name.lower())  # nilearn camel-cases the names of the files
        (path,) = [p for p in (root / "results").glob("contrast-*_stat-z_statmap.nii.gz")
                   if re.sub(r"[^a-z]", "", p.name.split("_stat-")[0][len("contrast-"):].lower()) == key]
        z = np.asarray(nib.load(path).dataobj)
        assert z[tuple(blobs[blob])] > 3, (name, z[tuple(blobs[blob])])
        other = "speaker" if blob == "sentence" else "sentence"
        assert z[tuple(blobs[blob])] > z[tuple(blobs[other])] + 2, name  # the blob of its own effect
    assert (root / "results" / "report.html").is_file()


def test_weights_that_do_not_match_the_design_list_its_columns(fiac):
    """Four weights against the events' design (5 conditions, drifts, constant): one line, the columns in
    order, before any work (before: the map was another contrast, with only a 'padded' warning)."""
    data, root = fiac
    out = root / "short"
    proc = _run(["fit", str(data["func1"]), "--events", str(data["events1"]), "--t-r", "2.5",
                 "--mask", str(data["mask"]), "--contrast", "DSt_minus_SSt=-1,-1,1,1", "--out", str(out),
                 "--store", str(root / "stores-short"), "--scheduler", "sync"], root)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskglm: error: contrast 'DSt_minus_SSt' has 4 weights but "
                                                   "the design has"), proc.stderr
    assert "columns, in this order: DStDSp, DStSSp, FirstSt, SStDSp, SStSSp," in lines[0]
    assert not (root / "stores-short").exists() and not list(out.glob("*.nii.gz"))


def test_readme_convert_example_writes_the_store(fiac):
    from daskglm.store import open_run

    data, root = fiac
    argv = _readme_command("convert")[1:]
    names = {"run1.nii.gz": data["func1"], "mask.nii.gz": data["mask"]}
    assert set(names) <= set(argv), argv
    proc = _run([str(names.get(arg, arg)) for arg in argv] + ["--scheduler", "sync"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = root / argv[argv.index("--store") + 1]
    ds = open_run(store)
    mask = np.asarray(nib.load(data["mask"]).dataobj) > 0
    assert ds["bold"].shape == (191, int(mask.sum()))


def _z_at_blobs(path: Path, truth: Path) -> dict[str, float]:
    t = np.load(truth)
    z = np.asarray(nib.load(path).dataobj)
    return {name: float(z[tuple(center)]) for name, center in zip(t["blob_names"].tolist(), t["blob_centers"].tolist())}


def test_readme_bids_example_runs_as_written_on_simulated_data(tmp_path):
    """``daskglm simulate-bids`` then ``daskglm bids`` exactly as README writes them (before: no command made the
    data, and the bids command found no subject under the default derivatives folder): each subject's
    language map is positive at its sentence blob."""
    simulate = _readme_command("simulate-bids")[1:]
    proc = _run(simulate, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bids = _readme_command("bids")[1:]
    env_cache = {"DASKGLM_CACHE": str(tmp_path / "cache")}
    proc = _run(bids, tmp_path, env_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dataset = tmp_path / simulate[1]
    out = tmp_path / bids[bids.index("--out") + 1]
    subjects = sorted(p.name for p in (dataset / "derivatives" / "fmriprep").glob("sub-*"))
    assert len(subjects) == 3
    for sub in subjects:
        (z_path,) = (out / sub).glob("*contrast-language_stat-z_statmap.nii.gz")
        z = _z_at_blobs(z_path, dataset / "derivatives" / "simulation" / "truth.npz")
        assert z["sentence"] > 3 and z["sentence"] > z["speaker"] + 2, (sub, z)
    listing = _run(_readme_command("cache")[1:], tmp_path, env_cache)  # the stores the batch left in the cache
    assert listing.returncode == 0, listing.stderr
    runs = sorted(dataset.glob("derivatives/fmriprep/sub-*/func/*_desc-preproc_bold.nii.gz"))
    assert len(runs) == 6 and all(run.name in listing.stdout for run in runs), listing.stdout


def test_readme_fslr_example_runs_as_written(tmp_path):
    """README's CIFTI pair (``simulate-bids --space fsLR``, ``bids --space fsLR``) as written: each subject's
    language map is a dense scalar whose sentence blob (left cortex) is high and speaker blob is not."""
    (simulate,) = [argv[1:] for argv in _readme_commands("simulate-bids") if "fsLR" in argv]
    (bids,) = [argv[1:] for argv in _readme_commands("bids") if "fsLR" in argv]
    proc = _run(simulate, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(bids, tmp_path, {"DASKGLM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    dataset, out = tmp_path / simulate[1], tmp_path / bids[bids.index("--out") + 1]
    truth = np.load(dataset / "derivatives" / "simulation" / "truth.npz")
    names = truth["blob_names"].tolist()
    sentence, speaker = (truth["blob_centers"][names.index(name)] for name in ("sentence", "speaker"))
    subjects = sorted(p.name for p in (dataset / "derivatives" / "fmriprep").glob("sub-*"))
    assert len(subjects) == 3
    for sub in subjects:
        (z_path,) = (out / sub).glob("*contrast-language_stat-z_statmap.dscalar.nii")
        z = np.asarray(nib.load(z_path).dataobj)[0]
        assert z.shape == (91282,) and z[sentence] > 3 and z[sentence] > z[speaker] + 2, (sub, z[[sentence, speaker]])


_BLOBS = ("def _blobs(img, truth):\n    t = np.load(truth); z = np.asarray(img.dataobj)\n"
          "    return {n: float(z[tuple(c)]) for n, c in zip(t['blob_names'].tolist(), t['blob_centers'].tolist())}\n"
          "def _inside(img, truth, name):\n    t = np.load(truth); z = np.asarray(img.dataobj)\n"
          "    names = t['blob_names'].tolist(); blob = t['blob_maps'][names.index(name)] > 0.5\n"
          "    away = (t['blob_maps'].max(axis=0) == 0) & (t['mask'] > 0)\n"
          "    return [float(z[blob].mean()), float(z[away].mean())]")
_BIDS_TRUTH = "'bids_demo/derivatives/simulation/truth.npz'"
#: Per page: a marker of each python block that computes something, and the line appended after that block
#: to record it; the page's blocks run in order in one new interpreter.
PAGES = {
    "README.md": {
        "first": ("z_map.to_filename", "_c['first'] = _blobs(z_map, data['truth'])"),
    },
    "docs/first_level.md": {
        "walkthrough": ("run_1 = fmri_glm.fit", "_c['run_1'] = _blobs(run_1['z_score'], data['truth']); "
                        "_c['eoi'] = _blobs(z_map, data['truth']); "
                        "_c['ds_z'] = _blobs(to_nifti(ds['z_score'], like=ds), data['truth'])"),
        "report": ("generate_report", "_c['report'] = open('report.html').read().count('DSt_minus_SSt')"),
    },
    "docs/index.md": {},  # the import line
    "docs/noise_models.md": {
        "arma11": ("a_map = to_nifti(", "_c['arma11'] = _blobs(z_map, data['truth']); "
                   "_c['arma_a'] = [float(np.nanmin(a_map.get_fdata())), float(np.nanmax(a_map.get_fdata()))]"),
    },
    "docs/cache.md": {
        "ingest": ("ingest_run(", "_c['mean_shape'] = list(mean_img.shape); _c['bold'] = list(ds['bold'].shape)"),
    },
    "docs/bids.md": {
        "subjects": ("model.compute_contrast(", "_c['subjects'] = {s: _blobs(z, " + _BIDS_TRUTH + ")['sentence'] "
                     "for s, z in z_maps.items()}"),
        "fslr": ('space_label="fsLR"', "_c['fslr'] = [float(np.asarray(z.dataobj)[0, c]) "
                 "for c in np.load(fslr.truth)['blob_centers'][:2]]"),  # the sentence and speaker blobs' centres
        "batch": ("result = run_batch(", "_c['done'] = sorted(result.done); _c['failures'] = dict(result.failures)"),
        "group": ("group.compute_contrast(", f"_c['group'] = _inside(z_map, {_BIDS_TRUTH}, 'sentence')"),
    },
}
#: Pages whose python blocks are fragments of a user's own setup (a scheduler address, a bucket, their runs),
#: shown, not run here; what they configure is tested elsewhere (test_distributed, test_s3, test_slurm).
FRAGMENTS = {"docs/cluster.md", "docs/chunks.md"}


def _python_blocks_of(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), flags=re.S | re.M)


def test_every_page_with_python_examples_is_run_or_listed():
    """A new page of python examples is run by the test below, or named as fragments with the reason."""
    pages = {str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")]
             if "_build" not in p.parts and _python_blocks_of(str(p.relative_to(ROOT)))}
    assert pages <= set(PAGES) | FRAGMENTS, sorted(pages - set(PAGES) - FRAGMENTS)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_python_examples_run_as_written_and_show_their_contrasts(page, tmp_path):
    """Every python block of a page, in order, in one new interpreter; each map checked at the simulated blobs."""
    checks = PAGES[page]
    script = ["import json, numpy as np, nibabel as nib", "from daskglm import to_nifti", "_c = {}", _BLOBS]
    seen = []
    for block in _python_blocks_of(page):
        script.append(block)
        for name, (marker, check) in checks.items():
            if marker in block:
                script.append(check)
                seen.append(name)
    assert sorted(seen) == sorted(checks), f"{page}'s python blocks changed: checks for {sorted(checks)}, found {seen}"
    script.append("print('CHECKS ' + json.dumps(_c))")
    (tmp_path / "examples.py").write_text("\n".join(script))
    env = {"DASKGLM_CACHE": str(tmp_path / "cache"), "DASKGLM_DATA": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "examples.py"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=1200, env={**_env(), **env})
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("CHECKS ")]
    c = json.loads(line[len("CHECKS "):])
    for key in ("first", "run_1"):  # DSt > SSt: the sentence blob
        if key in c:
            assert c[key]["sentence"] > 3 and c[key]["sentence"] > c[key]["speaker"] + 2, (key, c[key])
    if "eoi" in c:
        assert c["eoi"]["sentence"] > 3 and c["eoi"]["speaker"] > 3, c["eoi"]  # effects of interest: both blobs
        assert c["ds_z"]["sentence"] > 3 and c["ds_z"]["speaker"] > 3, c["ds_z"]  # DStDSp - SStSSp: both effects
        assert c["report"] > 0
    if "arma11" in c:  # noise_model="arma11": the sentence blob, and AR parameters on the grid
        assert c["arma11"]["sentence"] > 3 and c["arma11"]["sentence"] > c["arma11"]["speaker"] + 2, c["arma11"]
        assert 0 <= c["arma_a"][0] <= c["arma_a"][1] <= 0.95 and c["arma_a"][1] > 0, c["arma_a"]
    if "bold" in c:
        assert c["bold"][0] == 191 and len(c["mean_shape"]) == 3
    if "first" in c:
        assert (tmp_path / "sentence_z_map.nii.gz").is_file()
    if "fslr" in c:  # DSt > SSt on CIFTI runs: the sentence blob, not the speaker blob
        sentence, speaker = c["fslr"]
        assert sentence > 3 and sentence > speaker + 2, c["fslr"]
    if "done" in c:  # the sentence contrast: clear in a subject and in the group, near 0 away from the blobs
        assert c["done"] == ["01", "02", "03"] and not c["failures"], c
        assert sorted(c["subjects"]) == ["01", "02", "03"], c  # z at the blob's centre, per subject
        assert min(c["subjects"].values()) > 0 and np.mean(list(c["subjects"].values())) > 2.5, c["subjects"]
        inside, away = c["group"]  # mean group z in the blob, and away from every blob (3 subjects: 2 dof)
        assert inside > 1 and inside > away + 1 and abs(away) < 0.5, c["group"]


def test_readme_speaks_to_users():
    """Links stay in the repository (and resolve), no issue numbers, no status of one machine."""
    text = README.read_text()
    root = README.parent
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert "://" not in target, f"README links outside the repository: {target}"
        path = target.split("#", 1)[0]
        assert not path or (root / path).exists(), f"README links to a missing file: {target}"
    assert not re.search(r"\bissue\s*#?\d+|#\d{2,}\b", text, flags=re.I)
    assert not re.search(r"this machine|\d+-core machine|\.\./shared", text, flags=re.I)

"""The command line, run as a user runs it: the installed ``daskglm`` script and ``python -m daskglm``
in subprocesses, on small simulated data; nilearn 0.14 is the oracle for maps and file names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import assert_maps_match, assert_same_statistical_maps, parse_report, report_page
from nilearn.glm import save_glm_to_bids
from nilearn.glm.first_level import FirstLevelModel as NilearnModel

from daskglm.cli.main import WALKTHROUGH_CONTRASTS, build_parser
from daskglm.datasets.fiac import load_fiac_design_matrix
from daskglm.models.first_level import FirstLevelModel
from daskglm.store.zarrio import open_run

SCRIPT = shutil.which("daskglm", path=os.path.dirname(sys.executable)) or shutil.which("daskglm")
MODULE = [sys.executable, "-m", "daskglm"]
N_COLUMNS = 13
#: --contrast arguments, and the same contrasts as nilearn is given them (full-length weights).
CONTRASTS = {
    "DSt minus SSt": ("-1,-1,1,1" + ",0" * 9, np.array([-1, -1, 1, 1] + [0] * 9, dtype=float)),
    "language": ("DStDSp + DStSSp - SStDSp - SStSSp", "DStDSp + DStSSp - SStDSp - SStSSp"),
    "Effects_of_interest": (";".join(",".join("1" if i == j else "0" for j in range(N_COLUMNS)) for i in range(5)),
                            np.eye(N_COLUMNS)[:5]),
}


def run_cli(*args: str, script: bool = True, env: dict | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    """Run the installed console script (or ``python -m daskglm``) in a subprocess."""
    assert SCRIPT, f"the daskglm console script is not installed next to {sys.executable}"
    environment = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "DASKGLM_DEBUG")}
    environment.update(env or {})
    command = [SCRIPT] if script else MODULE
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=environment)


def contrast_options(contrasts: dict = CONTRASTS) -> list[str]:
    return [item for name, (expr, _) in contrasts.items() for item in ("--contrast", f"{name}={expr}")]



@pytest.fixture(scope="module")
def fiac(tmp_path_factory, fiac_data):
    """Two simulated runs, their design matrices (run 1 as .npz, run 2 as .tsv) and BIDS-named links."""
    root = tmp_path_factory.mktemp("cli")
    data = fiac_data(shape=(20, 22, 10), n_scans=60)
    designs = [load_fiac_design_matrix(data[f"design_matrix{r}"]) for r in (1, 2)]
    tsv = root / "run2_design.tsv"
    designs[1].to_csv(tsv, sep="\t", index=False)
    bids = root / "bids"
    bids.mkdir()
    linked = []
    for r in (1, 2):
        link = bids / f"sub-01_task-fiac_run-{r}_desc-preproc_bold.nii.gz"
        link.symlink_to(data[f"func{r}"])
        linked.append(str(link))
    return {"root": root, "data": data, "designs": designs, "design_files": [data["design_matrix1"], str(tsv)],
            "runs": [data["func1"], data["func2"]], "bids_runs": linked,
            "events": [data["events1"], data["events2"]]}


@pytest.mark.slow
def test_console_script_is_installed():
    assert SCRIPT and os.access(SCRIPT, os.X_OK)
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "convert", "fit", "bids"):
        assert command in proc.stdout


# ------------------------------------------------------------------ demo


@pytest.mark.slow
def test_demo_writes_maps_and_report_on_an_embedded_cluster(tmp_path):
    """README's ``python -m daskglm demo`` (legacy --output/--workers spellings), embedded LocalCluster."""
    out = tmp_path / "demo"
    proc = run_cli("demo", "--output", out, "--shape", "16x18x10", "--n-scans", "40", "--workers", "1",
                   script=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LocalCluster" in proc.stdout
    assert "Traceback" not in proc.stderr
    maps = sorted(p.name for p in (out / "maps").glob("*_z_map.nii.gz"))
    assert len(maps) == 8 and "Effects_of_interest_z_map.nii.gz" in maps
    assert (out / "maps" / "fixed_DSt_minus_SSt_z_score.nii.gz").exists()
    assert len(list((out / "maps").glob("run-[12]_DSt_minus_SSt_*.nii.gz"))) == 10
    stores = sorted((out / "stores").glob("*.zarr"))
    assert len(stores) == 2
    for store in stores:
        assert open_run(store)["bold"].shape[0] == 40
    z = nib.load(out / "maps" / "DSt_minus_SSt_z_map.nii.gz")
    assert z.shape == (16, 18, 10) and np.isfinite(z.get_fdata()).all()
    saved = (out / "report.html").read_text(encoding="utf-8")
    assert saved.startswith("<iframe srcdoc=")  # as nilearn's save_as_html writes it
    page = parse_report(saved)
    assert page.names == list(WALKTHROUGH_CONTRASTS)
    assert page.images and all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert "Mask image" in [img.get("alt") for img in page.images]


# ------------------------------------------------------------------ fit


@pytest.mark.slow
def test_fit_design_matrices_equals_daskglm_and_nilearn_with_nilearn_names(fiac, tmp_path):
    """BIDS-named runs, an .npz and a .tsv design: nilearn's file names, daskglm's and nilearn's maps."""
    out = tmp_path / "out"
    mask = fiac["data"]["mask"]
    proc = run_cli("fit", *fiac["bids_runs"], "--design-matrix", fiac["design_files"][0],
                   "--design-matrix", fiac["design_files"][1], "--mask", mask, "--smoothing-fwhm", "5",
                   *contrast_options(), "--out", out, "--store", tmp_path / "stores", "--scheduler", "sync",
                   "--report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert all(line.startswith("daskglm: warning:") for line in proc.stderr.splitlines()), proc.stderr
    assert "is not used with" not in proc.stderr  # no report option nilearn would ignore

    # The same inputs through nilearn's own save_glm_to_bids: the same names.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(mask_img=mask, smoothing_fwhm=5, minimize_memory=False)
        theirs.fit(fiac["bids_runs"], design_matrices=fiac["designs"])
        save_glm_to_bids(theirs, {name: value for name, (_, value) in CONTRASTS.items()},
                         out_dir=tmp_path / "nilearn")
    ours_files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                  and p.name != ".daskglm-outputs.json"}  # daskglm's manifests: tests/io/test_output_safety.py
    nilearn_files = {p.relative_to(tmp_path / "nilearn").as_posix()
                     for p in (tmp_path / "nilearn").rglob("*") if p.is_file()}
    statmaps = {f for f in nilearn_files if "contrast-" in f and f.endswith("_statmap.nii.gz")}
    assert len(statmaps) == 5 * len(CONTRASTS)
    assert "sub-01/sub-01_task-fiac_contrast-dstMinusSst_stat-z_statmap.nii.gz" in statmaps
    assert "sub-01/sub-01_task-fiac_contrast-effectsOfInterest_stat-F_statmap.nii.gz" in statmaps
    # nilearn's files but its figures and per-run residuals (daskglm bids writes those on request)
    assert ours_files == {f for f in nilearn_files if not f.endswith((".png", "stat-errorts_statmap.nii.gz",
                                                                      "stat-rsquared_statmap.nii.gz"))}
    assert {"sub-01/statmap.json", "sub-01/sub-01_task-fiac_contrast-language_clusters.tsv"} <= ours_files
    for index, design in enumerate(fiac["designs"], start=1):
        written = pd.read_csv(out / f"sub-01/sub-01_task-fiac_run-{index}_design.tsv", sep="\t")
        pd.testing.assert_frame_equal(written, design, check_exact=False)
        # nilearn writes the model's t_r (None: designs given); daskglm the model's t_r_, the header's TR
        sidecar = f"sub-01/sub-01_task-fiac_run-{index}_design.json"
        assert json.loads((tmp_path / "nilearn" / sidecar).read_text()) == {"RepetitionTime": None}
        assert json.loads((out / sidecar).read_text()) == {"RepetitionTime": 2.5}
    # statmap.json: nilearn's model parameters, and the subject the run names give
    theirs_meta = json.loads((tmp_path / "nilearn" / "sub-01" / "statmap.json").read_text())
    assert json.loads((out / "sub-01" / "statmap.json").read_text()) == {
        **theirs_meta, "ModelParameters": {**theirs_meta["ModelParameters"], "subject_label": "01"}}
    for name in ours_files:  # the cluster tables' parameters (nilearn's defaults: fpr, alpha 0.001)
        if name.endswith("_clusters.json"):
            assert json.loads((out / name).read_text()) == json.loads((tmp_path / "nilearn" / name).read_text())
    description = json.loads((out / "dataset_description.json").read_text())
    assert [entry["Name"] for entry in description["GeneratedBy"]] == ["daskglm"]

    # The maps: daskglm in-process (fresh stores), and nilearn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = FirstLevelModel(mask_img=mask, smoothing_fwhm=5, store=tmp_path / "inprocess", client="sync")
        ours.fit(fiac["bids_runs"], design_matrices=fiac["designs"])
        for name, (_, value) in CONTRASTS.items():
            stat = "t" if isinstance(value, str) or value.ndim == 1 else "F"
            clean = {"DSt minus SSt": "dstMinusSst", "language": "language",
                     "Effects_of_interest": "effectsOfInterest"}[name]
            files = {key: out / "sub-01" / f"sub-01_task-fiac_contrast-{clean}_stat-{label}_statmap.nii.gz"
                     for key, label in (("effect_size", "effect"), ("stat", stat), ("effect_variance", "variance"),
                                        ("z_score", "z"), ("p_value", "p"))}
            in_process = ours.compute_contrast([value, value], stat_type=stat, output_type="all")
            nilearn_maps = theirs.compute_contrast(value, stat_type=stat, output_type="all")
            for key, path in files.items():
                written = nib.load(path)
                expected = in_process[key].get_fdata()
                # the same computation in two processes: equal to rounding, relative to the map's scale
                # (numpy's SIMD reductions sum in an order that depends on the arrays' alignment, so a
                # value near zero can differ in its last bits: 4e-16 on -1.4e-4, once in a clean run)
                np.testing.assert_allclose(written.get_fdata(), expected, rtol=1e-12,
                                           atol=1e-12 * np.abs(expected).max(), err_msg=f"{name} {key}")
                np.testing.assert_allclose(written.affine, nilearn_maps[key].affine)
                if key != "p_value":  # p underflows differently where z is large; z carries it
                    assert_maps_match(written, nilearn_maps[key], "ar1", f"{name} {key} vs nilearn")
    # The report: nilearn's own report of its model (defaults: fpr, alpha 0.001) on the same contrasts.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs.generate_report({name: value for name, (_, value) in CONTRASTS.items()})
    ours_page = parse_report((out / "sub-01" / "report.html").read_text(encoding="utf-8"))
    assert ours_page.names == list(CONTRASTS)
    assert_same_statistical_maps(ours_page, parse_report(expected.get_standalone()), peak_atol=0.02)


@pytest.mark.slow
def test_fit_events_and_t_r_equals_nilearn(fiac, tmp_path):
    """Designs from events (+ confounds, non-default HRF and drifts), OLS: nilearn's maps and designs."""
    rng = np.random.default_rng(0)
    confounds = []
    for r in (1, 2):
        path = tmp_path / f"run{r}_confounds.tsv"
        pd.DataFrame(rng.normal(size=(60, 2)), columns=["motion_x", "motion_y"]).to_csv(path, sep="\t", index=False)
        confounds.append(str(path))
    out = tmp_path / "out"
    contrasts = {"language": CONTRASTS["language"], "DSt_minus_SSt": ("DStDSp + DStSSp - SStSSp - SStDSp", None)}
    report_options = {"height_control": None, "threshold": 2.5, "cluster_threshold": 2, "bg_img": fiac["data"]["mask"]}
    proc = run_cli("fit", *fiac["runs"], "--events", fiac["events"][0], "--events", fiac["events"][1],
                   "--confounds", confounds[0], "--confounds", confounds[1], "--t-r", "2.5",
                   "--hrf-model", "spm", "--drift-model", "polynomial", "--drift-order", "2",
                   "--noise-model", "ols", "--mask", fiac["data"]["mask"], "--smoothing-fwhm", "5",
                   *contrast_options(contrasts), "--out", out, "--store", tmp_path / "stores",
                   "--scheduler", "threads", "--verbose", "0", "--report", "--height-control", "none",
                   "--threshold", "2.5", "--cluster-threshold", "2", "--bg-img", fiac["data"]["mask"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "" and proc.stderr == ""  # --verbose 0
    # Plain file names (no subject in the run names): nilearn's names with prefix "".
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"contrast-{c}_stat-{s}_statmap.nii.gz" for c in ("language", "dstMinusSst")
                       for s in ("effect", "t", "variance", "z", "p")]
                      + [f"contrast-{c}_clusters.{e}" for c in ("language", "dstMinusSst") for e in ("tsv", "json")]
                      + ["run-1_design.tsv", "run-1_design.json", "run-2_design.tsv", "run-2_design.json",
                         "mask.nii.gz", "statmap.json", "dataset_description.json", "report.html",
                         ".daskglm-outputs.json"])
    assert names == expected
    # The report's thresholds make the cluster tables too, as save_glm_to_bids
    assert json.loads((out / "contrast-language_clusters.json").read_text()) == {
        "Height control": "None", "Threshold Z": 2.5, "Cluster size threshold (voxels)": 2,
        "Minimum distance (mm)": 8.0}
    assert json.loads((out / "run-1_design.json").read_text()) == {"RepetitionTime": 2.5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NilearnModel(t_r=2.5, hrf_model="spm", drift_model="polynomial", drift_order=2, noise_model="ols",
                              mask_img=fiac["data"]["mask"], smoothing_fwhm=5, minimize_memory=True)
        theirs.fit(fiac["runs"], events=fiac["events"], confounds=confounds)
        for index, design in enumerate(theirs.design_matrices_, start=1):
            written = pd.read_csv(out / f"run-{index}_design.tsv", sep="\t")
            assert list(written.columns) == [str(c) for c in design.columns]
            np.testing.assert_allclose(written.to_numpy(), design.to_numpy(), rtol=1e-12, atol=1e-15)
        for clean, expr in (("language", contrasts["language"][0]), ("dstMinusSst", contrasts["DSt_minus_SSt"][0])):
            maps = theirs.compute_contrast(expr, output_type="all")
            for key, label in (("z_score", "z"), ("stat", "t"), ("effect_size", "effect")):
                written = nib.load(out / f"contrast-{clean}_stat-{label}_statmap.nii.gz")
                assert_maps_match(written, maps[key], "ols", f"{clean} {key}")
        # The report options reach nilearn's generate_report: its report of its own model with them.
        expected = theirs.generate_report({name: expr for name, (expr, _) in contrasts.items()}, **report_options)
    page = parse_report((out / "report.html").read_text(encoding="utf-8"))
    assert page.contrasts[0].details["Height control"] == "None"
    assert page.contrasts[0].details["Cluster size threshold (voxels)"] == "2"
    assert_same_statistical_maps(page, parse_report(expected.get_standalone()))
    assert report_page((out / "report.html").read_text(encoding="utf-8")).count("data:image/png;base64,") >= 5


@pytest.mark.slow
def test_fit_takes_the_repetition_time_from_the_header(fiac, tmp_path):
    """Without --t-r, events use the run's header TR (2.5 s): the same design as --t-r 2.5."""
    out = tmp_path / "out"
    proc = run_cli("fit", fiac["runs"][0], "--events", fiac["events"][0], "--mask", fiac["data"]["mask"],
                   "--contrast", "a=DStDSp-SStSSp", "--noise-model", "ols", "--out", out,
                   "--store", tmp_path / "stores", "--scheduler", "sync", "--verbose", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "t_r = 2.5" in proc.stdout
    from nilearn.glm.first_level import make_first_level_design_matrix

    events = pd.read_csv(fiac["events"][0], sep="\t")
    expected = make_first_level_design_matrix(np.arange(60) * 2.5, events)
    written = pd.read_csv(out / "design.tsv", sep="\t")
    np.testing.assert_allclose(written.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
    assert (out / "contrast-a_stat-z_statmap.nii.gz").exists()


# ------------------------------------------------------------------ convert


@pytest.mark.slow
def test_convert_and_its_ingest_alias(small_run, tmp_path):
    """``convert RUN --store S`` and the older ``ingest RUN STORE``: the rows nilearn's masker gives."""
    expected = small_run["data"][small_run["mask"]].T.astype(np.float32)
    for argv in (["convert", small_run["nii.gz"], "--store", tmp_path / "a.zarr"],
                 ["ingest", small_run["nii"], tmp_path / "b.zarr"]):
        proc = run_cli(*argv, "--mask", small_run["mask_path"], "--scheduler", "sync")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "bold (time=30" in proc.stdout
    for store in ("a.zarr", "b.zarr"):
        np.testing.assert_array_equal(open_run(tmp_path / store)["bold"].values, expected)


# ------------------------------------------------------------------ help and errors


def _subcommand_parsers() -> dict:
    import argparse

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["demo", "convert", "fit"])
def test_help_documents_every_option_with_its_default(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    parser = _subcommand_parsers()[command]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, action.option_strings
        assert "default" in action.help or "required" in action.help, action.option_strings
        assert action.option_strings[0] in proc.stdout


def test_parser_keeps_the_old_spellings():
    args = build_parser().parse_args(["demo", "--output", "x", "--workers", "3", "--memory-limit", "2GiB"])
    assert (args.output, args.n_workers, args.memory_limit, args.verbose) == ("x", 3, "2GiB", 1)
    assert build_parser().parse_args(["demo", "--out", "y", "--n-workers", "2"]).output == "y"
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.output, defaults.scheduler, defaults.n_workers, defaults.memory_limit) == (
        "daskglm_demo", None, None, None)
    parsers = _subcommand_parsers()
    assert parsers["ingest"] is parsers["convert"]


def _bad_cases(fiac, tmp_path) -> dict:
    """argv of each bad-argument case, and what its error line must name."""
    run1, run2 = fiac["runs"]
    dm1 = fiac["design_files"][0]
    short = tmp_path / "short_design.tsv"
    fiac["designs"][0].iloc[:50].to_csv(short, sep="\t", index=False)
    out = ["--out", tmp_path / "out", "--store", tmp_path / "stores"]
    fit = ["fit", run1, "--design-matrix", dm1, *out]
    return {
        "missing run": (["fit", tmp_path / "nope.nii.gz", "--design-matrix", dm1, "--contrast", "a=SStSSp", *out],
                        "nope.nii.gz"),
        "missing design": (["fit", run1, "--design-matrix", tmp_path / "dm.npz", "--contrast", "a=SStSSp", *out],
                           "dm.npz"),
        "missing mask": ([*fit, "--contrast", "a=SStSSp", "--mask", tmp_path / "mask.nii.gz"], "mask.nii.gz"),
        "contrast without name": ([*fit, "--contrast", "=-1,1"], "NAME=EXPR"),
        "unknown column": ([*fit, "--contrast", "a=DStDSp - Nope"], "Nope"),
        "too many weights": ([*fit, "--contrast", "a=" + ",".join(["1"] * 14)],
                             "has 14 weights but the design has 13 columns, in this order: SStSSp, SStDSp"),
        "too few weights": ([*fit, "--contrast", "a=-1,-1,1,1"], "has 4 weights but the design has 13 columns"),
        "ragged F": ([*fit, "--contrast", "a=1,0;0"], "same number of weights"),
        "duplicate contrast": ([*fit, "--contrast", "a=SStSSp", "--contrast", "a=SStDSp"], "'a'"),
        "design rows": (["fit", run1, "--design-matrix", short, "--contrast", "a=SStSSp", *out], "50 rows"),
        "run not 4D": (["fit", fiac["data"]["mask"], "--design-matrix", dm1, "--contrast", "a=SStSSp", *out], "4D"),
        "design count": (["fit", run1, run2, "--design-matrix", dm1, "--contrast", "a=SStSSp", *out],
                         "--design-matrix"),
        "design and events": ([*fit, "--events", fiac["events"][0], "--contrast", "a=SStSSp"], "--events"),
        "events option with designs": ([*fit, "--hrf-model", "spm", "--contrast", "a=SStSSp"], "--hrf-model"),
        "no design": (["fit", run1, "--contrast", "a=SStSSp", *out], "--design-matrix"),
        "no contrast": (fit, "--contrast"),
        "no output": (["fit", run1, "--design-matrix", dm1, "--contrast", "a=SStSSp"], "--out"),
        "bad noise model": ([*fit, "--contrast", "a=SStSSp", "--noise-model", "ar0"], "ar0"),
        "bad hrf": ([*fit, "--contrast", "a=SStSSp", "--hrf-model", "gamma"], "gamma"),
        "bad t_r": (["fit", run1, "--events", fiac["events"][0], "--t-r", "-2", "--contrast", "a=SStSSp", *out],
                    "--t-r"),
        "bad fwhm": ([*fit, "--contrast", "a=SStSSp", "--smoothing-fwhm", "-1"], "--smoothing-fwhm"),
        "bad workers": ([*fit, "--contrast", "a=SStSSp", "--n-workers", "0"], "'0'"),
        "bad memory": ([*fit, "--contrast", "a=SStSSp", "--memory-limit", "lots"], "'lots'"),
        "bad scheduler": ([*fit, "--contrast", "a=SStSSp", "--scheduler", "nosuchscheduler"], "nosuchscheduler"),
        "unreachable scheduler": ([*fit, "--contrast", "a=SStSSp", "--scheduler", "tcp://127.0.0.1:9"],
                                  "tcp://127.0.0.1:9"),
        "report option without --report": ([*fit, "--contrast", "a=SStSSp", "--alpha", "0.01"], "--alpha"),
        "threshold with a height control": ([*fit, "--contrast", "a=SStSSp", "--report", "--threshold", "3"],
                                            "--threshold 3.0"),
        "alpha without a height control": ([*fit, "--contrast", "a=SStSSp", "--report", "--height-control", "none",
                                            "--alpha", "0.01"], "--alpha 0.01"),
        "negative cluster threshold": ([*fit, "--contrast", "a=SStSSp", "--report", "--cluster-threshold", "-1"],
                                       "'-1'"),
        "missing background": ([*fit, "--contrast", "a=SStSSp", "--report", "--bg-img", tmp_path / "bg.nii.gz"],
                               "bg.nii.gz"),
        "bad shape": (["demo", "--shape", "64x64", "--out", tmp_path / "out"], "64x64"),
        "convert without store": (["convert", run1], "--store"),
        "unknown command": (["frobnicate"], "frobnicate"),
    }


BAD_CASES = ["missing run", "missing design", "missing mask", "contrast without name", "unknown column",
             "too many weights", "too few weights", "ragged F", "duplicate contrast", "design rows", "run not 4D",
             "design count", "design and events", "events option with designs", "no design", "no contrast",
             "no output", "bad noise model", "bad hrf", "bad t_r", "bad fwhm", "bad workers", "bad memory",
             "bad scheduler", "unreachable scheduler", "report option without --report",
             "threshold with a height control", "alpha without a height control", "negative cluster threshold",
             "missing background", "bad shape", "convert without store", "unknown command"]


@pytest.fixture(scope="module")
def bad_runs(fiac, tmp_path_factory):
    """Every bad-argument case run once, three subprocesses at a time: {case: (process, named, root)}."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("bad")
    cases = _bad_cases(fiac, root)
    assert sorted(cases) == sorted(BAD_CASES)
    env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    with ThreadPoolExecutor(3) as pool:
        futures = {case: pool.submit(run_cli, *argv, env=env, timeout=120) for case, (argv, _) in cases.items()}
        return {case: (future.result(), cases[case][1], root) for case, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_arguments_give_one_error_line(bad_runs, case):
    proc, named, root = bad_runs[case]
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("daskglm: error:"), lines[0]
    assert named in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (root / "out").exists()  # nothing written before the arguments are known good


@pytest.mark.slow
def test_debug_shows_the_traceback(fiac, tmp_path):
    argv, _ = _bad_cases(fiac, tmp_path)["design and events"]
    for extra_env, extra_args in (({"DASKGLM_DEBUG": "1"}, []), ({}, ["--debug"])):
        proc = run_cli(*(extra_args + [str(a) for a in argv]), env=extra_env)
        assert proc.returncode == 2
        assert "Traceback" in proc.stderr
        assert proc.stderr.splitlines()[-1].startswith("daskglm: error:")


@pytest.mark.slow
def test_nilearns_events_warnings_reach_the_user_before_the_contrast_error(fiac, tmp_path):
    """Events with no trial_type column: nilearn fits a one-regressor "dummy" model and warns. The warning is one
    line on stderr, before the error of the contrast that names a condition (before: only the error)."""
    events = pd.read_csv(fiac["events"][0], sep="\t").rename(columns={"trial_type": "condition"})
    events.to_csv(tmp_path / "events.tsv", sep="\t", index=False)
    proc = run_cli("fit", fiac["runs"][0], "--events", tmp_path / "events.tsv", "--t-r", "2.5", "--contrast",
                   "language=DStDSp - SStSSp", "--out", tmp_path / "out", "--scheduler", "sync")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[:2] == ["daskglm: warning: 'trial_type' column not found in the given events data.",
                         "daskglm: warning: The following unexpected columns in events data will be ignored: "
                         "condition"], proc.stderr
    assert len(lines) == 3 and lines[2].startswith("daskglm: error: contrast 'language'") and "'dummy'" in lines[2]


def test_fit_cifti_runs_writes_dense_scalars_named_as_nilearn_would(tmp_path):
    """``daskglm fit`` on two fsLR dense time series: nilearn's BIDS names with ``.dscalar.nii`` maps on the runs'
    brain models, equal to the Python model's maps (itself checked against nilearn's GLM functions); no cluster
    tables (nilearn's are of volumes); ``--report`` refused before any work."""
    from helpers import T_R_CIFTI, cifti_brain_models, cifti_run

    models = cifti_brain_models()
    runs, events = [], []
    for run in (1, 2):
        img, _, table = cifti_run(run, models)
        runs.append(tmp_path / f"sub-01_task-x_run-{run}_space-fsLR_den-91k_bold.dtseries.nii")
        nib.save(img, runs[-1])
        events.append(tmp_path / f"run-{run}_events.tsv")
        table.to_csv(events[-1], sep="\t", index=False)
    args = [*runs, "--events", events[0], "--events", events[1], "--t-r", T_R_CIFTI, "--contrast",
            "dst=DStDSp - SStSSp", "--scheduler", "threads", "--store", tmp_path / "stores"]
    refused = run_cli("fit", *args, "--out", tmp_path / "refused", "--report")
    assert refused.returncode == 1 and "not available for CIFTI runs" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists() and not (tmp_path / "stores").exists()
    proc = run_cli("fit", *args, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "out" / "sub-01"
    stem = "sub-01_task-x_space-fsLR_contrast-dst_stat-"
    assert sorted(p.name for p in folder.glob("*.dscalar.nii")) == sorted(
        [f"{stem}{kind}_statmap.dscalar.nii" for kind in ("effect", "p", "t", "variance", "z")]
        + ["sub-01_task-x_space-fsLR_mask.dscalar.nii"])
    assert not list(folder.glob("*clusters*"))
    z = nib.load(folder / f"{stem}z_statmap.dscalar.nii")
    assert z.header.get_axis(1) == models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FirstLevelModel(t_r=T_R_CIFTI, store=tmp_path / "stores", client="threads").fit(
            [str(r) for r in runs], events=[str(e) for e in events])
        expected = model.compute_contrast("DStDSp - SStSSp")
    np.testing.assert_allclose(np.asarray(z.dataobj), np.asarray(expected.dataobj), rtol=1e-6)
    assert np.asarray(z.dataobj)[0, :30].mean() > 4  # the simulated effect


@pytest.mark.slow
def test_fit_arma11_equals_the_api(fiac, tmp_path):
    """``--noise-model arma11``: the z map the API computes with the same options."""
    out = tmp_path / "out"
    proc = run_cli("fit", *fiac["runs"], "--events", fiac["events"][0], "--events", fiac["events"][1],
                   "--t-r", "2.5", "--noise-model", "arma11", "--mask", fiac["data"]["mask"],
                   "--contrast", "language=" + CONTRASTS["language"][0], "--out", out,
                   "--store", tmp_path / "stores", "--scheduler", "threads", "--verbose", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = FirstLevelModel(t_r=2.5, mask_img=fiac["data"]["mask"], noise_model="arma11",
                            store=tmp_path / "stores", client="threads")
    model.fit(list(fiac["runs"]), events=[pd.read_csv(e, sep="\t") for e in fiac["events"]])
    z = model.compute_contrast(CONTRASTS["language"][0], output_type="z_score").get_fdata()
    written = nib.load(out / "contrast-language_stat-z_statmap.nii.gz").get_fdata()
    np.testing.assert_allclose(written, z, rtol=1e-6, atol=1e-6)
    assert np.abs(z).max() > 3  # the simulated effect is found


@pytest.mark.parametrize(("argv", "expected"), [
    (["bids", "ds", "--task", "t", "--out", "o", "--contrast", "a=b"], True),
    (["--debug", "bids", "ds", "--task", "t"], True),
    (["bids", "ds", "--scheduler", "tcp://127.0.0.1:8786"], False),
    (["bids", "ds", "--scheduler=sync"], False),
    (["bids", "ds", "--sched", "sync"], False),  # argparse takes an unambiguous prefix
    (["bids", "--help"], False),
    (["fit", "run.nii.gz", "--task", "bids"], False),
    ([], False),
])
def test_the_command_starts_the_worker_forkserver_only_for_bids_on_an_embedded_cluster(argv, expected, monkeypatch):
    from daskglm.__main__ import _embedded_bids

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert _embedded_bids(argv) is expected
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    assert _embedded_bids(argv) is False

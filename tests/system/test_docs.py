"""The documentation site builds as CI builds it, covers the public API, shows executed outputs, and renders in
a real browser.

The site is built once per run, as README says to build it: ``python -m sphinx -W --keep-going -b html docs
<out>`` in a subprocess. Warnings are errors, so a broken cross-reference to a daskglm name, a malformed
docstring or a notebook cell that raises fails the build and this module. The notebooks and the pages
written as MyST notebooks are executed then (myst-nb), on small simulated data.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import NILEARN_TEMPLATE_LINKS

import daskglm

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SUBPACKAGES = ("runtime", "io", "store", "glm", "models", "bids", "datasets")
#: Pages executed at build time, and a line of output each must show (printed by one of its cells).
EXECUTED = {
    "notebooks/two_runs_model": "Contrast 8 out of 8: Effects_of_interest",
    "notebooks/connect_to_cluster": "ingest_block",
    "notebooks/group_analysis": "mean group z inside the sentence blob",
    "notebooks/surface_first_level": "daskglm vs nilearn: max |dz|",
    "notebooks/cifti_first_level": "mean z inside the sentence blob",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built HTML site (README's command), or the build's warnings and errors as the failure."""
    pytest.importorskip("sphinx", reason="the docs extra (in the test extra) installs Sphinx")
    out = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.pop("MPLBACKEND", None)
    started = time.monotonic()
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(out / "doctrees"),
         str(DOCS), str(out / "html")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    log = build.stdout + build.stderr
    (out / "build.log").write_text(log)
    problems = [line for line in log.splitlines() if re.search(r"WARNING|ERROR|Error|Traceback", line)]
    assert build.returncode == 0, (f"the docs build failed (exit {build.returncode}) after "
                                   f"{time.monotonic() - started:.0f} s:\n" + "\n".join(problems[-40:] or
                                                                                        log.splitlines()[-40:]))
    return out / "html"


def _page(site: Path, name: str) -> str:
    path = site / f"{name}.html"
    assert path.is_file(), f"{name}.html was not built"
    return path.read_text(encoding="utf-8")


def test_api_reference_covers_every_public_name(site):
    """Every name of ``daskglm.__all__`` has its page, linked from the API page; each subpackage's page covers
    the rest of its ``__all__``; the docstring's sections are rendered."""
    api = _page(site, "api")
    for name in daskglm.__all__:
        page = _page(site, f"generated/daskglm.{name}")
        assert f'href="generated/daskglm.{name}.html' in api, name
        assert f'id="daskglm.{name}"' in page, f"{name}: no description of daskglm.{name} on its page"
    fit = _page(site, "generated/daskglm.FirstLevelModel")
    for section in ("Parameters", "Attributes"):
        assert f">{section}<" in fit, section
    for method in ("fit", "compute_contrast", "contrast_dataset", "make_design_matrices", "voxelwise"):
        assert f'id="daskglm.FirstLevelModel.{method}"' in fit, method
    for package in SUBPACKAGES:
        module = importlib.import_module(f"daskglm.{package}")
        page = _page(site, f"generated/daskglm.{package}")
        for name in module.__all__:
            if name in daskglm.__all__:
                continue
            assert f"daskglm.{package}.{name}.html" in page, f"daskglm.{package}.{name} is not in its page"
            assert (site / "generated" / f"daskglm.{package}.{name}.html").is_file(), name


def test_command_line_page_is_the_parser(site):
    """The CLI page is generated from ``build_parser``: every subcommand and a sample of options."""
    from daskglm.cli.main import build_parser

    cli = re.sub(r"<[^>]+>", "", _page(site, "cli"))  # the text, as shown
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for command in ("demo", "convert", "fit", "bids", "simulate-bids", "cache"):
        assert command in subcommands
        assert f"daskglm {command}" in cli, command
    for option in ("--contrast", "--smoothing-fwhm", "--scheduler", "--derivatives-folder", "--group-effect"):
        assert option in cli, option


def test_notebook_outputs_are_in_the_pages(site):
    """The executed pages show what their cells printed and drew (figures as image files of the site)."""
    for name, printed in EXECUTED.items():
        page = _page(site, name)
        assert printed in page, f"{name}: {printed!r} is not in the built page"
        figures = re.findall(r'<img [^>]*src="([^"]+\.png)"', page)
        if name != "notebooks/connect_to_cluster":
            assert figures, f"{name}: no figure"
        for src in figures:
            assert (site / Path(name).parent / src).resolve().is_file(), f"{name}: {src} missing"
    lazy = _page(site, "lazy_results")
    assert re.search(r'<img [^>]*src="[^"]+\.png"', lazy), "lazy_results: no figure"
    assert "xr-wrap" in lazy or "xarray.Dataset" in lazy, "lazy_results: no xarray output"


def test_differences_page_exists_and_readme_links_it(site):
    """One page lists the deliberate differences from nilearn; README links it."""
    page = _page(site, "differences")
    for topic in ("n_jobs", "results_", "compute_fixed_effects", "Surface data"):
        assert topic in page, topic
    readme = (ROOT / "README.md").read_text()
    assert "(docs/differences.md)" in readme
    assert "python -m sphinx -W --keep-going -b html docs docs/_build/html" in readme


def test_data_kinds_page_has_its_table_and_is_linked(site):
    """One page says what each kind of data supports; the site's index and README link it."""
    text = re.sub(r"<[^>]+>", "", _page(site, "data_kinds"))
    for kind in ("Volume (NIfTI)", "Surface (SurfaceImage, GIFTI)", "CIFTI-2 (.dtseries.nii)"):
        assert kind in text, kind
    for row in ("Fit", "Masks", "Smoothing", "Contrasts", "Fixed effects", "Second level", "Reports", "BIDS",
                "daskglm fit", "Stores"):
        assert f"\n{row}" in text, row
    assert 'href="data_kinds.html"' in _page(site, "index")
    assert "(docs/data_kinds.md)" in (ROOT / "README.md").read_text()


def _open(chrome, site: Path, name: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get((site / f"{name}.html").as_uri())
    WebDriverWait(chrome, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _console_errors(chrome) -> list[str]:
    """The page's console errors, but for nilearn's report template loading its stylesheets from the
    network: the report embedded in the walkthrough asks for them, and the browser here is offline."""
    errors = [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    return [e for e in errors if not any(url in e for url in NILEARN_TEMPLATE_LINKS)]


def _images(chrome) -> list[dict]:
    return chrome.execute_script(
        "return Array.from(document.images).map(i => ({src: i.src, complete: i.complete, "
        "width: i.naturalWidth, height: i.naturalHeight, visible: i.getBoundingClientRect().width > 0}));")


def test_api_page_renders_in_chromium(chrome, site, tmp_path):
    """The API page in headless Chromium: its title, the theme's navigation, a link per public name that
    leads to a rendered page, and no console error."""
    from selenium.webdriver.common.by import By

    _open(chrome, site, "api")
    assert chrome.title.startswith("API reference"), chrome.title
    assert chrome.find_element(By.TAG_NAME, "h1").text.startswith("API reference")
    assert chrome.find_elements(By.CSS_SELECTOR, "nav.bd-docs-nav a, nav a.nav-link"), "no navigation"
    links = {a.text for a in chrome.find_elements(By.CSS_SELECTOR, "article a.reference.internal code")}
    missing = [name for name in daskglm.__all__ if name not in links]
    assert not missing, missing
    assert not _console_errors(chrome), _console_errors(chrome)
    chrome.save_screenshot(str(tmp_path / "api.png"))
    chrome.find_element(By.LINK_TEXT, "FirstLevelModel").click()
    assert chrome.title.startswith("daskglm.FirstLevelModel"), chrome.title
    fields = [h.text for h in chrome.find_elements(By.CSS_SELECTOR, "dl.py.class > dd > dl.field-list > dt")]
    assert [f.rstrip(":") for f in fields[:2]] == ["Parameters", "Attributes"], fields  # numpydoc's sections
    assert not _console_errors(chrome), _console_errors(chrome)


def test_walkthrough_page_renders_in_chromium(chrome, site, tmp_path):
    """The executed walkthrough notebook in headless Chromium: its title, its figures decoded and shown, the
    report's frame, and no console error but the report template's offline stylesheets."""
    from selenium.webdriver.common.by import By

    _open(chrome, site, "notebooks/two_runs_model")
    assert "Two runs, out of core" in chrome.title, chrome.title
    images = [img for img in _images(chrome) if img["src"].endswith(".png")]
    assert len(images) >= 3, images  # the runs' and the fixed-effects maps at least
    broken = [img for img in images if not (img["complete"] and img["width"] > 100 and img["visible"])]
    assert not broken, broken
    frames = chrome.find_elements(By.TAG_NAME, "iframe")
    assert frames, "the report's frame is not on the page"
    assert not _console_errors(chrome), _console_errors(chrome)
    chrome.save_screenshot(str(tmp_path / "walkthrough.png"))
    figure = chrome.find_elements(By.CSS_SELECTOR, "img[src$='.png']")[0]
    chrome.execute_script("arguments[0].scrollIntoView();", figure)
    chrome.save_screenshot(str(tmp_path / "walkthrough_figure.png"))


@pytest.mark.parametrize(("name", "title", "n_figures"), [
    ("notebooks/surface_first_level", "Surface data (fsaverage5)", 2),  # the two-run and fixed-effects maps
    ("notebooks/cifti_first_level", "CIFTI-2 dense time series", 3),  # both hemispheres and the subcortex
])
def test_surface_and_cifti_walkthroughs_render_in_chromium(chrome, site, name, title, n_figures):
    """The surface and CIFTI walkthroughs in headless Chromium: their title, their figures decoded and shown,
    and no console error."""
    _open(chrome, site, name)
    assert title in chrome.title, chrome.title
    images = [img for img in _images(chrome) if img["src"].endswith(".png")]
    assert len(images) >= n_figures, images
    broken = [img for img in images if not (img["complete"] and img["width"] > 100 and img["visible"])]
    assert not broken, broken
    assert not _console_errors(chrome), _console_errors(chrome)

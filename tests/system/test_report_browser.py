"""nilearn's report of a daskglm model, as saved, in a real browser: headless Chromium driven by selenium, offline
(the ``chrome`` fixture of conftest.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import PNG_SIGNATURE

CONTRASTS = {
    "DSt_minus_SSt": "DStSSp + DStDSp - SStSSp - SStDSp",
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),
    "Effects_of_interest": np.eye(13)[:5],
}
@pytest.fixture(scope="module")
def report(tmp_path_factory, fiac_data):
    from daskglm.datasets.fiac import load_fiac_design_matrix
    from daskglm.models.first_level import FirstLevelModel

    root = tmp_path_factory.mktemp("report_browser")
    data = fiac_data(shape=(24, 26, 12), n_scans=60, effect_size=0.08)
    designs = [load_fiac_design_matrix(data[f"design_matrix{r}"]) for r in (1, 2)]
    model = FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=5.0, noise_model="ols",
                            store=root / "stores", client="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit([data["func1"], data["func2"]], design_matrices=designs)
        return model.generate_report(CONTRASTS, title="daskglm report in Chromium", bg_img=data["mask"])


def _frame_document(chrome):
    """Switch into the inline frame nilearn's ``save_as_html`` wraps the page in, once it has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(chrome, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    (frame,) = chrome.find_elements(By.TAG_NAME, "iframe")
    chrome.switch_to.frame(frame)
    WebDriverWait(chrome, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_report_renders_offline_in_headless_chromium(chrome, report, tmp_path):
    """The file nilearn's ``save_as_html`` writes, opened with no network: every image decoded, every contrast."""
    from helpers import NILEARN_TEMPLATE_LINKS
    from selenium.webdriver.common.by import By

    path = tmp_path / "report.html"
    report.save_as_html(path)
    chrome.get(path.resolve().as_uri())
    _frame_document(chrome)
    # Every image decoded: complete and with a natural size (a broken data URI has naturalWidth 0).
    images = chrome.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
        "width: i.naturalWidth, height: i.naturalHeight, scheme: i.src.split(':')[0]}));")
    assert len(images) >= 2 * 2 + 2 * len(CONTRASTS) + 1  # per run: design, correlation, contrasts; the mask
    failed = [img for img in images if not (img["complete"] and img["width"] > 0 and img["height"] > 0)]
    assert not failed, failed
    assert {img["scheme"] for img in images} == {"data"}
    # One heading per contrast in the statistical maps section, in order, with a map where clusters survive.
    section = chrome.find_element(By.CSS_SELECTOR, "section[id^='statistical-maps']")
    titles = [h.get_attribute("textContent").strip() for h in section.find_elements(By.TAG_NAME, "h3")]
    assert titles == list(CONTRASTS)
    maps = [img.get_attribute("alt") for img in section.find_elements(By.TAG_NAME, "img")]
    assert "Stat map plot for the contrast: DSt_minus_SSt" in maps
    # The carousel's script ran: the first run's design is shown.
    first_run = chrome.find_element(By.CSS_SELECTOR, "section[id^='design-matrix-'] img")
    assert first_run.is_displayed()
    # Offline (DNS answers nothing): only nilearn's template stylesheets and favicon were asked for, and
    # failing to load them is the only error the page logged.
    resources = chrome.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    remote = {r for r in resources if not r.startswith(("data:", "file:", "about:"))}
    assert remote <= NILEARN_TEMPLATE_LINKS, remote
    errors = [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    unexpected = [e for e in errors if not any(url in e for url in NILEARN_TEMPLATE_LINKS)]
    assert not unexpected, errors
    # A screenshot of the statistical maps, kept in the test's temporary directory.
    chrome.execute_script("arguments[0].scrollIntoView();", section)
    shot = tmp_path / "statistical_maps.png"
    assert section.screenshot(str(shot))
    data = Path(shot).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000

"""The "Noise model" section daskglm adds to nilearn's ``generate_report`` (FirstLevelModel, not OLS).

Simulated runs: AR(1) plus white noise whose AR coefficient grows along x, so the section's
map has something to show. The medians the page states are checked against the median of
``model.voxelwise("noise_parameters")`` computed here; an OLS model's page is the page of
nilearn's own ``generate_report`` (the inherited method), and the saved file is opened in
headless Chromium (the ``chrome`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import base64
import re
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import NILEARN_TEMPLATE_LINKS, PNG_SIGNATURE

from daskglm.models.first_level import FirstLevelModel

SHAPE, N_SCANS, T_R = (6, 5, 4), 90, 2.0
CONTRASTS = {"task": "task"}


def _run(seed: int) -> nib.Nifti1Image:
    """AR(1) (coefficient 0.1 .. 0.8 along x) plus white noise of the same variance, around 100."""
    rng = np.random.default_rng(seed)
    phi = np.broadcast_to(np.linspace(0.1, 0.8, SHAPE[0])[:, None, None], SHAPE).ravel()
    ar = np.zeros((N_SCANS, phi.size))
    ar[0] = rng.standard_normal(phi.size)
    for t in range(1, N_SCANS):
        ar[t] = phi * ar[t - 1] + rng.standard_normal(phi.size) * np.sqrt(1 - phi**2)
    data = 100 + ar + rng.standard_normal(ar.shape)
    return nib.Nifti1Image(data.T.reshape(*SHAPE, N_SCANS).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Models fitted once per (noise model, number of runs, reports), on a mask of ones."""
    root, runs, models = tmp_path_factory.mktemp("report_noise"), [_run(1), _run(2)], {}
    events = pd.DataFrame({"onset": np.arange(0, N_SCANS * T_R, 30.0), "duration": 15.0, "trial_type": "task"})
    mask = nib.Nifti1Image(np.ones(SHAPE, np.uint8), runs[0].affine)

    def fit(noise_model: str, n_runs: int = 1, reports: bool = True) -> FirstLevelModel:
        key = noise_model, n_runs, reports
        if key not in models:
            model = FirstLevelModel(t_r=T_R, mask_img=mask, noise_model=noise_model, reports=reports,
                                    store=root, client="sync")
            models[key] = model.fit(runs[:n_runs], events=[events] * n_runs)
        return models[key]

    return fit


def _page(model: FirstLevelModel, **kwargs) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notes on this tiny volume (empty mask plot...)
        return model.generate_report(CONTRASTS, bg_img=None, **kwargs).get_standalone()


def _section(page: str) -> str:
    (section,) = re.findall(r'<section id="noise-model-UUID-\w+">.*?</section>', page, flags=re.S)
    return section


def _stated_medians(section: str) -> list[dict[str, str]]:
    """Each run's medians as the page prints them: ``[{"a": "0.450", "b": "-0.250"}, ...]``."""
    runs = re.findall(r"<li>run (\d+) \((\d+) voxels\): (.*?)</li>", section)
    assert [int(run) for run, _, _ in runs] == list(range(1, len(runs) + 1))
    assert all(int(n) == np.prod(SHAPE) for _, n, _ in runs)  # every voxel of the mask of ones
    return [dict(re.findall(r"(\w+) = (-?\d+\.\d{3})", text)) for _, _, text in runs]


def _images(section: str) -> dict[str, bytes]:
    """The section's embedded figures, PNG bytes by their alt text."""
    found = re.findall(r'<img class="pure-img" src="data:image/png;base64,([^"]+)" alt="([^"]+)"', section)
    return {alt: base64.b64decode(data, validate=True) for data, alt in found}


@pytest.mark.parametrize("noise_model,n_runs,names,shown", [
    pytest.param("arma11", 2, ["a", "b"], ["AR parameter a", "MA parameter b"], marks=pytest.mark.slow),  # ~2.5 s
    ("ar1", 1, ["rho_1"], ["AR coefficient rho_1"]),
])
def test_section_states_the_medians_and_embeds_the_maps(fitted, noise_model, n_runs, names, shown):
    model = fitted(noise_model, n_runs)
    page = _page(model)
    section = _section(page)
    assert "<h2>Noise model</h2>" in section and f'noise_model="{noise_model}"' in section
    # The medians printed for each run: those of voxelwise("noise_parameters"), computed here.
    params = model.voxelwise("noise_parameters")
    assert len(params) == n_runs
    expected = [{name: f"{np.median(p.sel(parameter=name).values):.3f}" for name in names} for p in params]
    assert _stated_medians(section) == expected
    # The first run's maps (the AR coefficient; ARMA's MA parameter too), embedded PNG figures.
    images = _images(section)
    assert list(images) == [f"Noise model: {label} of run 1" for label in shown]
    for png in images.values():
        assert png[:8] == PNG_SIGNATURE
        assert int.from_bytes(png[16:20], "big") > 100 and int.from_bytes(png[20:24], "big") > 100
    # Between the mask and the statistical maps, with its entry in the page's menu.
    order = [page.index(f'<section id="{name}-UUID') for name in ("mask", "noise-model", "statistical-maps")]
    assert order == sorted(order)
    assert re.search(r'<a href="#noise-model-UUID-\w+" class="pure-menu-link">Noise model</a>', page)


def test_the_map_follows_the_simulated_gradient(fitted):
    """What the AR map draws: the AR coefficient grows along x as simulated (a sanity check of the data)."""
    params = fitted("ar1").voxelwise("noise_parameters")[0]
    rho = params.sel(parameter="rho_1").values
    by_x = [np.median(rho[params["i"].values == x]) for x in range(SHAPE[0])]
    assert np.corrcoef(by_x, np.arange(SHAPE[0]))[0, 1] > 0.8


def _normalised(page: str) -> str:
    """A page without what changes between two calls: its random id, scikit-learn's counted ids, its date."""
    page = re.sub(r"UUID-\w+|unique_id = \"[^\"]*\"", "UUID", page)
    page = re.sub(r"(sk-[a-z-]*id-)\d+", r"\1N", page)
    return re.sub(r"<time>[^<]*</time>", "<time></time>", page)


def test_an_ols_page_is_nilearns(fitted):
    model = fitted("ols")
    page = _page(model)
    assert "noise-model" not in page and "Noise model" not in page
    # The inherited generate_report (nilearn's, through daskglm's EstimatorMixin) gives the same page.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = super(FirstLevelModel, model).generate_report(CONTRASTS, bg_img=None).get_standalone()
    assert _normalised(page) == _normalised(theirs)
    assert not model.voxelwise("noise_parameters")[0].sizes["parameter"]


def test_no_section_without_reporting_data(fitted):
    """``reports=False`` at fit: nilearn's page says no reporting data is available; nothing is added."""
    assert "noise-model" not in _page(fitted("ar1", reports=False))


@pytest.mark.slow
def test_saved_report_renders_in_headless_chromium(chrome, fitted, tmp_path):
    """The file ``save_as_html`` writes, opened offline: the section's figures decode, no console error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = fitted("arma11", 2).generate_report(CONTRASTS, bg_img=None)
    path = tmp_path / "report.html"
    report.save_as_html(path)
    chrome.get(path.resolve().as_uri())
    loaded = lambda d: d.execute_script("return document.readyState") == "complete"  # noqa: E731
    WebDriverWait(chrome, 60).until(loaded)
    (frame,) = chrome.find_elements(By.TAG_NAME, "iframe")  # nilearn saves the page in an <iframe srcdoc>
    chrome.switch_to.frame(frame)
    WebDriverWait(chrome, 60).until(loaded)
    section = chrome.find_element(By.CSS_SELECTOR, "section[id^='noise-model-UUID-']")
    assert section.find_element(By.TAG_NAME, "h2").text == "Noise model"
    images = chrome.execute_script(
        "return Array.from(arguments[0].querySelectorAll('img')).map(i => ({alt: i.alt, complete: i.complete, "
        "width: i.naturalWidth, height: i.naturalHeight}));", section)
    assert [img["alt"] for img in images] == ["Noise model: AR parameter a of run 1",
                                              "Noise model: MA parameter b of run 1"]
    assert all(img["complete"] and img["width"] > 0 and img["height"] > 0 for img in images), images
    # Offline: failing to load nilearn's template stylesheets and favicon is the only error logged.
    errors = [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert not [e for e in errors if not any(url in e for url in NILEARN_TEMPLATE_LINKS)], errors
    chrome.execute_script("arguments[0].scrollIntoView();", section)
    shot = tmp_path / "noise_model.png"
    assert section.screenshot(str(shot)) and shot.read_bytes()[:8] == PNG_SIGNATURE

"""nilearn's ``generate_report`` on daskglm models: the page nilearn's own model gives on the same data.

daskglm's ``FirstLevelModel`` is a nilearn ``FirstLevelModel``, so
``generate_report`` is nilearn's code. What is daskglm's, and checked here
against nilearn's own model fitted on the same simulated runs: the fitted state
the report reads (design matrices, mask, masker) and the z maps it thresholds
(daskglm's ``compute_contrast``), hence the thresholds and cluster tables in
the page, and the warnings; and the file daskglm writes
(:func:`daskglm.bids.outputs.report_html`) being the one nilearn's
``save_as_html`` writes. nilearn's own report tests run against daskglm in
tests/nilearn_suite/test_nilearn_glm_reporter.py.

The page is read with the helpers of tests/helpers.py (:func:`report_page`,
:func:`parse_report`, :func:`assert_same_statistical_maps`), which
tests/cli/test_cli.py and tests/bids/test_batch.py use too.
"""

from __future__ import annotations

import base64
import re
import warnings

import numpy as np
import pytest
from helpers import NILEARN_TEMPLATE_LINKS, PNG_SIGNATURE, assert_same_statistical_maps, parse_report, report_page

from daskglm.models.first_level import FirstLevelModel

CONTRASTS = {
    "DSt_minus_SSt": "DStSSp + DStDSp - SStSSp - SStDSp",  # a string expression
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),  # short weights, zero-padded
    "Effects_of_interest": np.eye(13)[:5],  # an F contrast
}


# ------------------------------------------------------------------ the models


@pytest.fixture(scope="module")
def fiac(tmp_path_factory, fiac_data):
    from daskglm.datasets.fiac import load_fiac_design_matrix

    root = tmp_path_factory.mktemp("report")
    data = fiac_data(shape=(24, 26, 12), n_scans=60, effect_size=0.08)
    designs = [load_fiac_design_matrix(data[f"design_matrix{r}"]) for r in (1, 2)]
    return {"data": data, "designs": designs, "runs": [data["func1"], data["func2"]], "root": root,
            "models": {}}


def _models(fiac: dict, noise_model: str) -> tuple[FirstLevelModel, object]:
    """daskglm's and nilearn's models fitted on the same runs (once per noise model)."""
    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    if noise_model not in fiac["models"]:
        kwargs = {"mask_img": fiac["data"]["mask"], "smoothing_fwhm": 5.0, "noise_model": noise_model}
        ours = FirstLevelModel(store=fiac["root"] / "stores", client="threads", **kwargs)
        theirs = NilearnModel(minimize_memory=True, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours.fit(fiac["runs"], design_matrices=fiac["designs"])
            theirs.fit(fiac["runs"], design_matrices=fiac["designs"])
        fiac["models"][noise_model] = ours, theirs
    return fiac["models"][noise_model]


def _message(warning: warnings.WarningMessage) -> tuple[str, str]:
    """A warning's category and text, numbers to 4 significant digits (thresholds quoted from the maps)."""
    text = re.sub(r"-?\d+\.\d+(e[-+]?\d+)?", lambda m: f"{float(m.group()):.4g}",
                  " ".join(str(warning.message).split()))
    return warning.category.__name__, text


def _report(model: object, contrasts: dict | None = None, **kwargs: object) -> tuple[object, list[tuple[str, str]]]:
    """``generate_report`` and the warnings it raised, as sorted distinct (category, message) pairs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = model.generate_report(contrasts, **kwargs)
    return report, sorted({_message(w) for w in caught})


@pytest.fixture(scope="module")
def default_reports(fiac):
    """The OLS models' reports with nilearn's defaults (fpr, alpha 0.001)."""
    ours, theirs = _models(fiac, "ols")
    return _report(ours, CONTRASTS), _report(theirs, CONTRASTS)


# ------------------------------------------------------------------ tests


@pytest.mark.slow
@pytest.mark.parametrize("noise_model,kwargs", [
    ("ols", {}),  # nilearn's defaults: fpr, alpha 0.001, one-sided
    ("ols", {"height_control": "fdr", "alpha": 0.05, "two_sided": True}),
    ("ols", {"height_control": "bonferroni", "alpha": 0.05, "cluster_threshold": 2, "plot_type": "glass"}),
    ("ols", {"height_control": None, "threshold": 2.5, "cluster_threshold": 3, "min_distance": 6.0}),
    ("ar1", {}),
])
def test_thresholds_and_cluster_tables_equal_nilearns_own_model(fiac, noise_model, kwargs):
    """The page of a daskglm model: nilearn's model on the same runs gives the same thresholds, tables, warnings."""
    ours, theirs = _models(fiac, noise_model)
    (our_report, our_warnings), (their_report, their_warnings) = (_report(m, CONTRASTS, **kwargs)
                                                                  for m in (ours, theirs))
    our_page, their_page = parse_report(our_report.get_standalone()), parse_report(their_report.get_standalone())
    assert our_page.names == list(CONTRASTS)
    # AR(1): a voxel whose rho lies on a bin edge may fall in the neighbouring bin (tests/models/test_model.py).
    assert_same_statistical_maps(our_page, their_page, peak_atol=0.011 if noise_model == "ols" else 0.02)
    assert our_warnings == their_warnings
    # Not a trivial comparison: clusters survive, with sub-peaks ("2a") of the F contrast by default.
    tables = {c.name: c.clusters for c in our_page.contrasts}
    assert any(table and len(table) > 1 for table in tables.values())
    if not kwargs:
        assert any(re.fullmatch(r"\d+[a-z]", row[0]) for row in tables["Effects_of_interest"][1:])


@pytest.mark.slow
def test_page_names_every_contrast_and_embeds_its_images(fiac, default_reports):
    (report, _), (theirs, _) = default_reports
    page = parse_report(report.get_standalone())
    assert page.names == list(CONTRASTS)
    alts = [img.get("alt", "") for img in page.images]
    for name in CONTRASTS:  # one contrast matrix per run, a map where clusters survive
        assert sum(alt.startswith(f"Plot of the contrast {name} ") for alt in alts) == len(fiac["designs"])
    assert sum(alt.startswith("Plot of design matrix for") for alt in alts) == len(fiac["designs"])
    # Self-contained: every image is an embedded PNG; nothing is loaded from the network but nilearn's
    # template stylesheets and favicon (the page renders without them), the same as nilearn's own page.
    assert page.images and all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    for img in page.images:
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png[:8] == PNG_SIGNATURE
        assert int.from_bytes(png[16:20], "big") > 0 and int.from_bytes(png[20:24], "big") > 0
    assert not [ref for ref in page.external if ref[1] == "src"]
    loaded = {ref for ref in page.external if ref[0] == "link"}  # <a> links are only followed when clicked
    assert loaded == {ref for ref in parse_report(theirs.get_standalone()).external if ref[0] == "link"}
    assert {url for _, _, url in page.external} <= NILEARN_TEMPLATE_LINKS


@pytest.mark.slow
def test_save_as_html_writes_what_daskglm_writes(default_reports, tmp_path):
    """``save_as_html`` (nilearn's: the page in an ``<iframe srcdoc>``) and daskglm's ``report_html`` agree."""
    from daskglm.bids.outputs import report_html

    (report, _), _ = default_reports
    path = tmp_path / "report.html"
    report.save_as_html(path)
    saved = path.read_bytes()
    assert saved == report_html(report)
    assert report_page(saved.decode("utf-8")) == report.get_standalone()
    assert parse_report(saved.decode("utf-8")).names == list(CONTRASTS)


@pytest.mark.slow
def test_short_weight_vectors_are_reported_as_one_row_matrices(fiac):
    """nilearn 0.14 cannot draw a short 1D weight vector; daskglm's writers pass it as the same t contrast."""
    from daskglm.bids.outputs import report_contrasts

    ours, _ = _models(fiac, "ols")
    vector = np.array([-1.0, 1, -1, 1])
    converted = report_contrasts({"v": vector, "s": "DStDSp - SStSSp", "f": np.eye(13)[:2]})
    assert converted["v"].shape == (1, 4) and converted["s"] == "DStDSp - SStSSp" and converted["f"].shape == (2, 13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_row = parse_report(ours.generate_report({"v": converted["v"]}).get_standalone())
        reference = parse_report(ours.generate_report({"v": CONTRASTS["DSp_minus_SSp"]}).get_standalone())
        np.testing.assert_array_equal(ours.compute_contrast(converted["v"]).get_fdata(),
                                      ours.compute_contrast(vector).get_fdata())
    assert_same_statistical_maps(one_row, reference, peak_atol=0)


def test_unfitted_model_report_is_nilearns(fiac):
    """An unfitted daskglm model is unfitted to nilearn's report too: the same warning, no maps."""
    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    ours, our_warnings = _report(FirstLevelModel(mask_img=fiac["data"]["mask"]))
    theirs, their_warnings = _report(NilearnModel(mask_img=fiac["data"]["mask"]))
    assert our_warnings == their_warnings and any("not been fit" in m for _, m in our_warnings)
    assert parse_report(ours.get_standalone()).names == parse_report(theirs.get_standalone()).names == []



@pytest.mark.slow
def test_integer_design_columns_are_reported_as_nilearns_named_ones(fiac):
    """The walkthrough's designs (``pd.DataFrame(X)``: integer column names) crash nilearn 0.14.1's report
    (its design-correlation plot calls ``str.startswith`` on each name); daskglm's report shows them as
    strings, with the same statistics as nilearn's model on the same designs named "0", "1"..."""
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    designs = [pd.DataFrame(dm.to_numpy()) for dm in fiac["designs"]]
    kwargs = {"mask_img": fiac["data"]["mask"], "smoothing_fwhm": 5.0, "noise_model": "ols"}
    contrasts = {"DSp_minus_SSp": np.array([[-1, 1, -1, 1]]), "Effects_of_interest": np.eye(13)[:5]}
    ours = FirstLevelModel(store=fiac["root"] / "stores", client="threads", **kwargs)
    theirs = NilearnModel(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(fiac["runs"], design_matrices=designs)
        theirs.fit(fiac["runs"], design_matrices=designs)
        with pytest.raises(AttributeError, match="startswith"):  # nilearn 0.14.1 itself
            theirs.generate_report(contrasts)
        theirs.design_matrices_ = [dm.rename(columns=str) for dm in theirs.design_matrices_]
        our_page = parse_report(ours.generate_report(contrasts).get_standalone())
        their_page = parse_report(theirs.generate_report(contrasts).get_standalone())
    assert our_page.names == list(contrasts)
    assert_same_statistical_maps(our_page, their_page)
    assert all(isinstance(c, int) for dm in ours.design_matrices_ for c in dm.columns)  # left as they were

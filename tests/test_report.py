"""The HTML report: its content checked against nilearn 0.14 run on the same simulated data."""

from __future__ import annotations

import base64
import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest

from daskglm.model import FirstLevelModel
from daskglm.report import GLMReport, make_glm_report

CONTRASTS = {
    "DSt_minus_SSt": "DStSSp + DStDSp - SStSSp - SStDSp",  # a string expression
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),  # a short vector, zero-padded
    "Effects_of_interest": np.eye(13)[:5],  # an F contrast
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects images, contrast titles, figure classes and the cluster tables of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.images, self.titles, self.figures, self.tables = [], [], [], []
        self._stack: list[str] = []
        self._in_title = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "img":
            self.images.append(attrs)
        elif tag == "figure":
            self.figures.append(attrs.get("class"))
        elif tag == "h3" and "contrast-title" in classes:
            self._in_title = True
            self.titles.append("")
        elif tag == "table" and "cluster-table" in classes:
            self.tables.append([])
            self._stack.append("cluster")
        elif tag == "table":
            self._stack.append("other")
        elif tag == "tr" and self._stack[-1:] == ["cluster"]:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self._stack[-1:] == ["cluster"]:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h3":
            self._in_title = False
        elif tag == "table":
            self._stack.pop()
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._in_title:
            self.titles[-1] += data
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def fiac(tmp_path_factory):
    from daskglm.datasets import load_fiac_design_matrix, simulate_fiac

    root = tmp_path_factory.mktemp("report")
    data = simulate_fiac(data_dir=root / "data", shape=(24, 26, 12), n_scans=60,
                         effect_size=0.08)
    designs = [load_fiac_design_matrix(data[f"design_matrix{r}"]) for r in (1, 2)]
    model = FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=5.0, noise_model="ols",
                            store=root / "stores", client="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit([data["func1"], data["func2"]], design_matrices=designs)
        import matplotlib
        import matplotlib.pyplot as plt

        before = matplotlib.get_backend(), plt.get_fignums()
        report = model.generate_report(CONTRASTS, title="FIAC <simulated>")
        after = matplotlib.get_backend(), plt.get_fignums()
    return {"data": data, "designs": designs, "model": model, "report": report,
            "runs": [data["func1"], data["func2"]], "matplotlib": (before, after)}


def test_sections_and_embedded_images(fiac):
    report = fiac["report"]
    page = parse(str(report))
    assert isinstance(report, GLMReport)
    assert str(report).startswith("<!DOCTYPE html>")
    assert "<title>FIAC &lt;simulated&gt;</title>" in str(report)  # escaped
    assert page.figures.count("design-matrix") == len(fiac["designs"]) == 2
    assert page.figures.count("contrast-matrix") == len(CONTRASTS) * 2  # one per contrast and run
    assert page.figures.count("mask") == 1
    assert page.titles == list(CONTRASTS) == report.contrasts
    n_images = 2 + 2 * len(CONTRASTS) + 1 + page.figures.count("stat-map")
    assert len(page.images) == n_images
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == PNG_SIGNATURE
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 50 and height > 50
        assert img["alt"]
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", str(report))
    assert "<script" not in str(report) and "<link" not in str(report)
    # Model parameters as given to the model.
    assert "<th>noise_model</th><td>ols</td>" in str(report)
    assert "<th>smoothing_fwhm (mm)</th><td>5.0</td>" in str(report)


def _nilearn_cluster_table(z_img, mask):
    from nilearn.glm import threshold_stats_img
    from nilearn.reporting import get_clusters_table

    thresholded, threshold = threshold_stats_img(z_img, mask_img=mask, alpha=0.001, height_control="fpr",
                                                 cluster_threshold=0, two_sided=False)
    return get_clusters_table(thresholded, stat_threshold=threshold, cluster_threshold=0,
                              min_distance=8.0, two_sided=False), threshold


def _assert_html_table_equals(rows, expected):
    header, body = rows[0], rows[1:]
    assert header == list(expected.columns)
    assert len(body) == len(expected) > 0
    for cells, row in zip(body, expected.to_dict("records")):
        assert cells[0] == str(row["Cluster ID"])
        np.testing.assert_allclose([float(c) for c in cells[1:5]],
                                   [row[k] for k in ("X", "Y", "Z", "Peak Stat")], atol=0.0051)
        assert cells[5] == str(row["Cluster Size (mm3)"])


def test_cluster_tables_equal_nilearn_on_its_own_fit(fiac):
    """The tables in the page are those of nilearn's own FirstLevelModel z maps."""
    from nilearn.glm.first_level import FirstLevelModel as NilearnModel

    theirs = NilearnModel(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model="ols",
                          minimize_memory=True)
    page = parse(str(fiac["report"]))
    assert len(page.tables) == len(CONTRASTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit(fiac["runs"], design_matrices=fiac["designs"])
        for rows, (name, definition) in zip(page.tables, CONTRASTS.items()):
            expected, threshold = _nilearn_cluster_table(theirs.compute_contrast(definition),
                                                         fiac["data"]["mask"])
            _assert_html_table_equals(rows, expected)
            assert fiac["report"].thresholds[name] == pytest.approx(threshold)
            assert f"<td>{threshold:.3f}</td>" in str(fiac["report"])
    # The F contrast's blobs give several clusters with sub-peaks: the comparison is not trivial.
    assert sum(1 for row in page.tables[2][1:] if re.fullmatch(r"\d+[a-z]", row[0])) >= 1


@pytest.mark.parametrize("name,height_control,two_sided,plot_type", [
    ("Effects_of_interest", "fdr", True, "slice"),
    ("Effects_of_interest", "bonferroni", False, "glass"),
    ("DSt_minus_SSt", None, True, "slice"),
])
def test_thresholds_and_tables_follow_nilearn(fiac, name, height_control, two_sided, plot_type):
    """Other height controls, both tails, a cluster size threshold: nilearn's functions on daskglm's z map."""
    from nilearn.glm import threshold_stats_img
    from nilearn.reporting import get_clusters_table

    model, definition = fiac["model"], CONTRASTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = make_glm_report(model, {name: definition}, height_control=height_control,
                                 two_sided=two_sided, threshold=2.5, cluster_threshold=2, plot_type=plot_type)
        z_img = model.compute_contrast(definition)
        thresholded, threshold = threshold_stats_img(z_img, mask_img=model.mask_img_, alpha=0.001,
                                                     threshold=2.5 if height_control is None else None,
                                                     height_control=height_control, cluster_threshold=2,
                                                     two_sided=two_sided)
        expected = get_clusters_table(thresholded, stat_threshold=threshold, cluster_threshold=2,
                                      min_distance=8.0, two_sided=two_sided)
    assert report.thresholds[name] == pytest.approx(threshold)
    page = parse(str(report))
    (rows,) = page.tables
    _assert_html_table_equals(rows, expected)
    assert page.figures.count("stat-map") == 1


def test_contrast_forms_as_nilearn():
    """str, list of str, list of weights and arrays are named by str(value), as nilearn's coerce_to_dict."""
    from daskglm.report import _contrast_dict

    vector = np.array([1, 0, 0, -1])
    assert list(_contrast_dict("DStDSp - SStSSp")) == ["DStDSp - SStSSp"]
    assert list(_contrast_dict(vector)) == [str(vector)]
    forms = _contrast_dict(["DStDSp", vector, [[1, 0], [0, 1]]])
    assert list(forms) == ["DStDSp", str(vector), "[[1, 0], [0, 1]]"]
    np.testing.assert_array_equal(forms["[[1, 0], [0, 1]]"], np.eye(2))
    (name, weights), = _contrast_dict([1, 0, 0, -1]).items()  # one weight vector, not one per run
    assert name == "[1, 0, 0, -1]" and isinstance(weights, np.ndarray)
    per_run = [np.ones(4), np.zeros(4)]
    assert _contrast_dict({"a": per_run})["a"] is per_run  # dict values: compute_contrast definitions
    assert _contrast_dict(None) == {}


def test_no_contrast_and_nothing_surviving(fiac):
    with pytest.warns(UserWarning, match="cut_coords=.*plot_type='glass'"):
        empty = make_glm_report(fiac["model"], plot_type="glass", cut_coords=(0, 0, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nothing = make_glm_report(fiac["model"], {"none": "DStDSp"}, height_control=None, threshold=50.0)
    assert empty.contrasts == [] and "No contrast was given" in str(empty)
    assert parse(str(empty)).figures.count("design-matrix") == 2
    page = parse(str(nothing))
    assert page.titles == ["none"] and "No voxel survives" in str(nothing)
    assert "stat-map" not in page.figures
    assert page.tables == [[list(nothing.cluster_tables["none"].columns)]]  # the header only


def test_save_round_trip_and_notebook_repr(fiac, tmp_path):
    report = fiac["report"]
    path = tmp_path / "report.html"
    report.save_as_html(path)
    assert path.read_text(encoding="utf-8") == str(report)
    assert parse(path.read_text(encoding="utf-8")).titles == list(CONTRASTS)
    frame = report._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and 'width="1600" height="800"' in frame
    assert report.get_iframe() == frame
    assert report.body in str(report) and "<!DOCTYPE" not in report.body


def test_open_in_browser_opens_the_saved_page(fiac, tmp_path, monkeypatch):
    import daskglm.report

    opened = []
    monkeypatch.setattr(daskglm.report.webbrowser, "open", opened.append)
    report = fiac["report"]
    path = report.open_in_browser(tmp_path / "page.html")
    temporary = report.open_in_browser()
    try:
        assert opened == [path.as_uri(), temporary.as_uri()]
        for page in (path, temporary):
            assert page.read_text(encoding="utf-8") == str(report)
    finally:
        temporary.unlink()


def test_matplotlib_state_untouched(fiac):
    """Figures are drawn on Agg canvases outside pyplot: same backend, no figure left open."""
    before, after = fiac["matplotlib"]
    assert after == before


def test_unfitted_model_error_is_compute_contrasts(fiac):
    model = FirstLevelModel(mask_img=fiac["data"]["mask"])
    with pytest.raises(ValueError) as theirs:
        model.compute_contrast("a")
    with pytest.raises(ValueError) as ours:
        model.generate_report("a")
    assert str(ours.value) == str(theirs.value) and "not fitted" in str(ours.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"height_control": "fwe"}, "height_control.*'fwe'"),
    ({"plot_type": "surface"}, "plot_type.*'surface'"),
    ({"alpha": 1.5}, "alpha.*1.5"),
    ({"alpha": "0.01"}, "alpha.*'0.01'"),
    ({"cluster_threshold": -1}, "cluster_threshold.*-1"),
    ({"cluster_threshold": 2.5}, "cluster_threshold.*2.5"),
    ({"min_distance": -8}, "min_distance.*-8"),
    ({"two_sided": "yes"}, "two_sided.*'yes'"),
    ({"threshold": -1.0, "height_control": None, "two_sided": True}, "threshold.*-1.0"),
    ({"display_mode": "lzry"}, "display_mode='lzry'.*plot_type='slice'"),
    ({"display_mode": "tiled", "plot_type": "glass"}, "display_mode='tiled'"),
    ({"report_dims": (1600,)}, r"report_dims.*\(1600,\)"),
    ({"contrasts": {"bad": "DStDSp - nothing"}}, "contrast 'bad'.*nothing"),
    ({"contrasts": {"runs": [np.ones(4)] * 3}}, "contrast 'runs'.*3 contrasts given, while there are 2 runs"),
    ({"contrasts": {1: "DStDSp"}}, r"names.*\[1\]"),
    ({"contrasts": 5}, "contrasts must be.*got 5"),
    ({"contrasts": []}, r"contrasts must be.*got \[\]"),
    ({"contrasts": ["DStDSp", {"a": 1}]}, r"a contrast must be.*\{'a': 1\}"),
])
def test_bad_arguments_fail_before_any_computation(fiac, monkeypatch, kwargs, message):
    model = fiac["model"]

    def no_compute(*args, **kw):
        raise AssertionError("computed before validating")

    monkeypatch.setattr(model, "compute_contrast", no_compute)
    contrasts = kwargs.pop("contrasts", "DStDSp")
    with pytest.raises(ValueError, match=message):
        make_glm_report(model, contrasts, **kwargs)

"""HTML report of a fitted :class:`daskglm.FirstLevelModel`, as nilearn's ``generate_report``.

The report holds the model parameters, each run's design matrix, the contrast
matrices, the mask and, per contrast, a thresholded z map with its table of
clusters. Everything statistical or graphical is nilearn's: the z maps come
from the model's ``compute_contrast`` (one Dask computation per contrast),
thresholds from :func:`nilearn.glm.threshold_stats_img`, cluster tables from
:func:`nilearn.reporting.get_clusters_table`, figures from
:mod:`nilearn.plotting`. This module only validates, arranges and embeds.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with an Agg
canvas, never through ``pyplot``: the user's backend and pyplot's figure list
are left alone, and nothing leaks into a notebook. Images are embedded as
base64 PNG data URIs, so the saved page is self-contained and needs no network.
"""

from __future__ import annotations

import base64
import html
import io
import numbers
import tempfile
import warnings
import webbrowser
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.reporting import HTMLReport

from . import design as _design

__all__ = ["GLMReport", "make_glm_report"]

HEIGHT_CONTROLS: tuple[str, ...] = ("fpr", "fdr", "bonferroni")
PLOT_TYPES: tuple[str, ...] = ("slice", "glass")
#: ``FirstLevelModel.compute_contrast``'s message for an unfitted model.
NOT_FITTED = ("This FirstLevelModel instance is not fitted yet. Call 'fit' with "
              "appropriate arguments before using this estimator.")
#: Model parameters shown in the report (nilearn's selection, plus AR/FIR details).
_PARAMETERS = ("subject_label", "t_r", "slice_time_ref", "hrf_model", "fir_delays", "drift_model",
               "high_pass", "drift_order", "noise_model", "signal_scaling", "smoothing_fwhm",
               "target_shape", "target_affine")
_UNITS = {"t_r": "seconds", "high_pass": "Hertz", "smoothing_fwhm": "mm"}

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="daskglm">
<title>$title</title>
</head>
<body>
$body
</body>
</html>
""")

_CSS = """<style>
.daskglm-report { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
.daskglm-report h1 { margin-bottom: 0.1em; }
.daskglm-report .subtitle { color: #666; margin-top: 0; }
.daskglm-report section { margin-bottom: 2em; }
.daskglm-report figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
.daskglm-report figcaption { font-weight: bold; text-align: center; }
.daskglm-report img { max-width: 100%; height: auto; }
.daskglm-report table { border-collapse: collapse; margin: 0.5em 0; }
.daskglm-report th, .daskglm-report td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
.daskglm-report th { background: #eee; }
.daskglm-report .note { color: #a60; }
</style>"""


class GLMReport(HTMLReport):
    """A self-contained HTML report; nilearn's :class:`~nilearn.reporting.HTMLReport` API.

    ``str(report)`` is the full standalone page, ``report.body`` its body;
    ``get_iframe()`` wraps the page in an inline frame of ``report.width`` by
    ``report.height`` pixels, which is what notebooks display.

    Attributes
    ----------
    contrasts : list of str
        The contrast names, in section order.
    thresholds : dict of str to float
        The z threshold actually used for each contrast.
    cluster_tables : dict of str to pandas.DataFrame
        :func:`nilearn.reporting.get_clusters_table` for each contrast.
    """

    def __init__(self, body: str, title: str, contrasts: list[str], thresholds: dict[str, float],
                 cluster_tables: dict[str, pd.DataFrame]) -> None:
        super().__init__(head_tpl=_PAGE, body=body, head_values={"title": html.escape(title)})
        self.contrasts = contrasts
        self.thresholds = thresholds
        self.cluster_tables = cluster_tables

    def __str__(self) -> str:
        return self.html

    def _repr_html_(self) -> str:
        return self.get_iframe()

    def save_as_html(self, file_name: str | Path) -> None:
        """Write the standalone page (UTF-8) to ``file_name``.

        Unlike nilearn 0.14, which writes the page wrapped in an ``<iframe
        srcdoc>``, this writes the page itself.
        """
        Path(file_name).write_text(self.html, encoding="utf-8")

    def open_in_browser(self, file_name: str | Path | None = None) -> Path:
        """Save the page (to a new temporary file by default) and open it in the web browser.

        Returns
        -------
        pathlib.Path
            The file opened. A temporary file is not deleted afterwards.
        """
        if file_name is None:
            with tempfile.NamedTemporaryFile("wb", suffix=".html", prefix="daskglm-report-", delete=False) as f:
                file_name = f.name
        path = Path(file_name).resolve()
        self.save_as_html(path)
        webbrowser.open(path.as_uri())
        return path


# ---------------------------------------------------------------- validation

def _number(name: str, value: Any, *, minimum: float | None = None, integer: bool = False) -> Any:
    kinds = (numbers.Integral,) if integer else (numbers.Real,)
    if isinstance(value, bool) or not isinstance(value, kinds) or not np.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return value


def _check_arguments(model: Any, height_control: Any, plot_type: Any, alpha: Any, threshold: Any,
                     cluster_threshold: Any, min_distance: Any, two_sided: Any, display_mode: Any,
                     report_dims: Any, title: Any) -> str:
    """Validate everything that needs no computation; return the display mode to use."""
    if not hasattr(model, "results_") or not hasattr(model, "design_matrices_"):
        raise ValueError(NOT_FITTED)
    if height_control is not None and not (isinstance(height_control, str) and height_control in HEIGHT_CONTROLS):
        raise ValueError(f"height_control must be one of 'fpr', 'fdr', 'bonferroni' or None; got {height_control!r}")
    if not (isinstance(plot_type, str) and plot_type in PLOT_TYPES):
        raise ValueError(f"plot_type must be one of 'slice', 'glass'; got {plot_type!r}")
    _number("alpha", alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    if threshold is not None:
        _number("threshold", threshold)
    if two_sided and threshold is not None and height_control is None and threshold < 0:
        raise ValueError(f"threshold must be >= 0 when two_sided=True; got {threshold!r}")
    _number("cluster_threshold", cluster_threshold, minimum=0, integer=True)
    _number("min_distance", min_distance, minimum=0)
    if not isinstance(two_sided, (bool, np.bool_)):
        raise ValueError(f"two_sided must be True or False; got {two_sided!r}")
    if (not isinstance(report_dims, (tuple, list)) or len(report_dims) != 2
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in report_dims)):
        raise ValueError(f"report_dims must be (width, height) in pixels, two positive integers; got {report_dims!r}")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a str or None; got {title!r}")
    if display_mode is None:
        return "z" if plot_type == "slice" else "lzry"
    from nilearn.plotting.displays import get_projector, get_slicer

    try:
        (get_slicer if plot_type == "slice" else get_projector)(display_mode)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"display_mode={display_mode!r} is not valid with plot_type={plot_type!r}: {err}") from None
    return display_mode


def _definition(value: Any) -> Any:
    """A list of plain numbers is one weight vector: make it an array (a list means per run)."""
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        return np.asarray(value, dtype=float)
    return value


def _contrast_dict(contrasts: Any) -> dict[str, Any]:
    """nilearn's rules: a str, an array, a list of them (named by ``str``), or a dict name → definition."""
    if contrasts is None:
        return {}
    if isinstance(contrasts, Mapping):
        bad = [k for k in contrasts if not isinstance(k, str)]
        if bad:
            raise ValueError(f"contrast names (dict keys) must be str; got {bad!r}")
        items = {k: _definition(v) for k, v in contrasts.items()}
    elif isinstance(contrasts, (str, np.ndarray)):
        items = {str(contrasts): contrasts}
    elif isinstance(contrasts, (list, tuple)) and contrasts:
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in contrasts):
            contrasts = [contrasts]  # one vector of weights
        items = {}
        for c in contrasts:
            try:
                items[str(c)] = c if isinstance(c, (str, np.ndarray)) else np.asarray(c, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"a contrast must be a str or numeric weights; got {c!r}") from None
    else:
        raise ValueError("contrasts must be a str, an array, a non-empty list of them, or a dict "
                         f"mapping names to definitions; got {contrasts!r}")
    if not items:
        raise ValueError(f"contrasts is empty: {contrasts!r}")
    return items


def _parse_contrasts(contrasts: dict[str, Any], designs: list[pd.DataFrame]) -> dict[str, list[np.ndarray]]:
    """Each contrast as one padded ``(q, p)`` matrix per run, exactly as ``compute_contrast`` reads it."""
    parsed = {}
    for name, definition in contrasts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # compute_contrast gives nilearn's warnings once
            try:
                per_run = _design.contrasts_per_run(definition, len(designs))
                parsed[name] = [_design.parse_contrast(c, [str(col) for col in dm.columns])[0]
                                for c, dm in zip(per_run, designs)]
            except (ValueError, TypeError) as err:
                raise ValueError(f"contrast {name!r}: {err}") from err
    return parsed


def _background(bg_img: Any, mask_img: nib.Nifti1Image) -> Any:
    if bg_img is None:
        return mask_img
    if bg_img is False:
        return None
    if isinstance(bg_img, str) and bg_img == "MNI152TEMPLATE":
        from nilearn.datasets import load_mni152_template

        return load_mni152_template(resolution=2)
    from nilearn.image import load_img

    return load_img(bg_img)


# ---------------------------------------------------------------- figures and HTML pieces

def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _data_uri(fig: Any, dpi: int = 80) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, caption: str | None = None, cls: str = "") -> str:
    tag = f'<img src="{uri}" alt="{html.escape(alt)}">'
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="{cls}">{cap}{tag}</figure>'


def _table(rows: dict[str, Any], cls: str) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f'<table class="{cls}">{body}</table>'


def _design_matrix_uri(dm: pd.DataFrame) -> str:
    from nilearn.plotting import plot_design_matrix

    fig = _figure((max(4.0, 0.35 * dm.shape[1] + 1.5), 5.0))
    plot_design_matrix(dm, axes=fig.add_subplot())
    return _data_uri(fig)


def _contrast_matrix_uri(matrix: np.ndarray, dm: pd.DataFrame) -> str:
    from nilearn.plotting import plot_contrast_matrix

    fig = _figure((max(5.0, 0.4 * dm.shape[1]), max(2.5, 1.0 + 0.5 * matrix.shape[0])))
    plot_contrast_matrix(matrix, dm, axes=fig.add_subplot())
    return _data_uri(fig)


def _mask_uri(mask_img: nib.Nifti1Image, bg: Any) -> str:
    from nilearn.plotting import plot_roi

    fig = _figure((11.0, 2.6))
    plot_roi(mask_img, bg_img=bg, display_mode="z", cmap="Set1", colorbar=False, figure=fig)
    return _data_uri(fig)


def _stat_map_uri(img: nib.Nifti1Image, threshold: float, bg: Any, plot_type: str, display_mode: str,
                  cut_coords: Any, two_sided: bool) -> str:
    from nilearn.plotting import plot_glass_brain, plot_stat_map

    colours: dict[str, Any] = {"symmetric_cbar": True}
    if not two_sided:  # one colour scale when the map has one sign, as nilearn's report
        data = np.asarray(img.get_fdata())
        if data.min() >= 0:
            colours = {"cmap": "Reds", "symmetric_cbar": False}
        elif data.max() <= 0:
            colours = {"cmap": "Blues_r", "symmetric_cbar": False}
    big = display_mode in ("tiled", "mosaic")
    fig = _figure((9.0, 7.0) if big else (11.0, 3.0))
    if plot_type == "slice":
        plot_stat_map(img, bg_img=bg, cut_coords=cut_coords, display_mode=display_mode, figure=fig,
                      threshold=abs(threshold), draw_cross=False, **colours)
    else:
        plot_glass_brain(img, display_mode=display_mode, figure=fig, threshold=abs(threshold),
                         plot_abs=False, **colours)
    return _data_uri(fig)


def _parameters(model: Any) -> dict[str, Any]:
    rows = {}
    for name in _PARAMETERS:
        value = getattr(model, name, None)
        if name == "t_r" and value is None:
            value = getattr(model, "t_r_", None)
        if (value is None or (name == "fir_delays" and model.hrf_model != "fir")
                or (name == "high_pass" and model.drift_model != "cosine")
                or (name == "drift_order" and model.drift_model != "polynomial")):
            continue
        value = value.tolist() if isinstance(value, np.ndarray) else value
        rows[f"{name} ({_UNITS[name]})" if name in _UNITS else name] = value
    return rows


def _contrast_section(index: int, name: str, z_map: nib.Nifti1Image, mask_img: nib.Nifti1Image,
                      options: dict[str, Any]) -> tuple[str, float, pd.DataFrame]:
    """Threshold one z map with nilearn, tabulate its clusters, and plot it."""
    from nilearn.glm import threshold_stats_img
    from nilearn.reporting import get_clusters_table

    height_control = options["height_control"]
    thresholded, threshold = threshold_stats_img(
        z_map, mask_img=mask_img, alpha=options["alpha"],
        threshold=options["threshold"] if height_control is None else None,
        height_control=height_control, cluster_threshold=options["cluster_threshold"],
        two_sided=options["two_sided"])
    threshold = float(threshold)
    table = get_clusters_table(thresholded, stat_threshold=threshold,
                               cluster_threshold=options["cluster_threshold"],
                               min_distance=options["min_distance"], two_sided=options["two_sided"])
    details = {"Height control": height_control or "none (explicit threshold)", "alpha": options["alpha"],
               "Threshold (z)": f"{threshold:.3f}",
               "Cluster size threshold (voxels)": options["cluster_threshold"],
               "Minimum distance (mm)": options["min_distance"], "Two-sided": options["two_sided"]}
    parts = [f'<section class="contrast-result" id="contrast-{index}">',
             f'<h3 class="contrast-title">{html.escape(name)}</h3>', _table(details, "thresholding")]
    if len(table) == 0:
        parts.append('<p class="note">No voxel survives the threshold.</p>')
    else:
        parts.append(_img(_stat_map_uri(thresholded, threshold, options["bg"], options["plot_type"],
                                        options["display_mode"], options["cut_coords"], options["two_sided"]),
                          f"Thresholded z map of {name}", cls="stat-map"))
    parts.append(table.to_html(index=False, classes="cluster-table", border=0, na_rep="",
                               float_format=lambda v: f"{v:.2f}"))
    parts.append("</section>")
    return "\n".join(parts), threshold, table


# ---------------------------------------------------------------- entry point

def make_glm_report(
    model: Any,
    contrasts: Any = None,
    title: str | None = None,
    bg_img: Any = None,
    threshold: float | None = 3.09,
    alpha: float = 0.001,
    cluster_threshold: int = 0,
    height_control: str | None = "fpr",
    two_sided: bool = False,
    min_distance: float = 8.0,
    plot_type: str = "slice",
    cut_coords: Any = None,
    display_mode: str | None = None,
    report_dims: tuple[int, int] = (1600, 800),
) -> GLMReport:
    """HTML report of a fitted :class:`daskglm.FirstLevelModel`, as nilearn's ``generate_report``.

    Every argument is checked before anything is computed. Then each
    contrast's z map is computed (``model.compute_contrast``), thresholded with
    :func:`nilearn.glm.threshold_stats_img` and tabulated with
    :func:`nilearn.reporting.get_clusters_table`, exactly as nilearn's report.

    Parameters
    ----------
    model : daskglm.FirstLevelModel
        A fitted model.
    contrasts : str, array, list of them, or dict of str to definition, optional
        As nilearn: a string expression or an array is one contrast, named by
        ``str(value)``; a list holds several (a list of plain numbers is one
        weight vector); a dict maps names to ``compute_contrast`` definitions
        (a dict value may be a list of per-run definitions). ``None``: no
        contrast sections.
    title : str, optional
        Page title and main heading (default ``"daskglm first-level report"``).
    bg_img : Niimg-like, "MNI152TEMPLATE", False or None
        Background of the slice plots. ``None`` (default) uses the model's
        mask, which is in the data's own space and costs nothing: nilearn's
        default, the MNI152 template, is only meaningful for MNI-space data
        (pass ``"MNI152TEMPLATE"`` for those, or a mean EPI / anatomy you
        have). ``False``: no background.
    threshold : float or None
        z threshold, used only when ``height_control`` is None (None: 3.09).
    alpha : float
        p (``"fpr"``, ``"bonferroni"``) or q (``"fdr"``) value, in (0, 1).
    cluster_threshold : int
        Minimum cluster size in voxels (>= 0).
    height_control : {"fpr", "fdr", "bonferroni"} or None
    two_sided : bool
        Threshold both tails (alpha is then split between them).
    min_distance : float
        Minimum distance between sub-peaks in mm, for the cluster tables.
    plot_type : {"slice", "glass"}
        :func:`nilearn.plotting.plot_stat_map` or :func:`nilearn.plotting.plot_glass_brain`.
    cut_coords : optional
        As ``plot_stat_map``'s; ignored (with a warning) for ``"glass"``.
    display_mode : str, optional
        Default ``"z"`` for slices, ``"lzry"`` for glass brains.
    report_dims : (int, int)
        Width and height in pixels of the inline frame shown in notebooks.

    Returns
    -------
    GLMReport
        With ``save_as_html(path)``, ``open_in_browser()``, ``get_iframe()``
        and a Jupyter representation; ``cluster_tables`` and ``thresholds``
        hold the per-contrast results.

    Raises
    ------
    ValueError
        Unfitted model (``compute_contrast``'s message), invalid arguments or
        contrasts; the message quotes the offending value.
    """
    display_mode = _check_arguments(model, height_control, plot_type, alpha, threshold, cluster_threshold,
                                    min_distance, two_sided, display_mode, report_dims, title)
    if cut_coords is not None and plot_type == "glass":
        warnings.warn(f"cut_coords={cut_coords!r} is not used with plot_type='glass'; ignored.",
                      UserWarning, stacklevel=2)
        cut_coords = None
    designs = list(model.design_matrices_)
    contrast_defs = _contrast_dict(contrasts)
    matrices = _parse_contrasts(contrast_defs, designs)
    mask_img = model.mask_img_
    bg = _background(bg_img, mask_img)
    z_maps = {name: model.compute_contrast(definition, output_type="z_score")
              for name, definition in contrast_defs.items()}

    title = title if title is not None else "daskglm first-level report"
    threshold = 3.09 if threshold is None else threshold
    options = {"height_control": height_control, "alpha": alpha, "threshold": threshold,
               "cluster_threshold": cluster_threshold, "min_distance": min_distance,
               "two_sided": bool(two_sided), "bg": bg, "plot_type": plot_type,
               "display_mode": display_mode, "cut_coords": cut_coords}
    names = list(z_maps)
    nav = "".join(f'<li><a href="#contrast-{i}">{html.escape(n)}</a></li>' for i, n in enumerate(names))
    mask = np.asarray(mask_img.dataobj) > 0
    data_rows = {"Runs": len(designs), "Scans per run": ", ".join(str(len(dm)) for dm in designs),
                 "Regressors per run": ", ".join(str(dm.shape[1]) for dm in designs),
                 "Volume shape": mask.shape,
                 "Voxel size (mm)": tuple(round(float(z), 3) for z in mask_img.header.get_zooms()[:3]),
                 "Voxels in mask": int(mask.sum())}
    body = [_CSS, '<div class="daskglm-report">', f"<h1>{html.escape(title)}</h1>",
            '<p class="subtitle">Statistical report: first-level model (daskglm)</p>',
            ('<nav><ul><li><a href="#model-details">Model details</a></li>'
             '<li><a href="#design-matrices">Design matrices</a></li><li><a href="#mask">Mask</a></li>'
             f'<li><a href="#statistical-maps">Statistical maps</a><ul>{nav}</ul></li></ul></nav>'),
            '<section id="model-details"><h2>Model details</h2>', _table(_parameters(model), "parameters"),
            _table(data_rows, "data"), "</section>",
            '<section id="design-matrices"><h2>Design matrices</h2>']
    body += [_img(_design_matrix_uri(dm), f"Design matrix of run {r}", f"Run {r}", "design-matrix")
             for r, dm in enumerate(designs, start=1)]
    body.append('</section><section id="contrasts"><h2>Contrasts</h2>')
    for r, dm in enumerate(designs, start=1):
        body.append(f'<div class="run-contrasts"><h3>Run {r}</h3>')
        body += [_img(_contrast_matrix_uri(matrices[name][r - 1], dm), f"Contrast {name}, run {r}", name,
                      "contrast-matrix") for name in names]
        body.append("</div>")
    body += ['</section><section id="mask"><h2>Mask</h2>',
             _img(_mask_uri(mask_img, None if bg is mask_img else bg), "Mask", cls="mask"),
             f"<p>{int(mask.sum())} voxels.</p></section>",
             '<section id="statistical-maps"><h2>Statistical maps</h2>']
    if not names:
        body.append('<p class="note">No contrast was given: pass contrasts to see statistical maps.</p>')
    thresholds, tables = {}, {}
    for index, name in enumerate(names):
        section, thresholds[name], tables[name] = _contrast_section(index, name, z_maps[name], mask_img, options)
        body.append(section)
    body += ["</section>", "</div>"]
    report = GLMReport("\n".join(body), title, names, thresholds, tables)
    report.resize(*report_dims)
    return report

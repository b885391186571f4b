"""A fitted first-level model's BIDS-derivatives outputs, as nilearn names them: one plan, one writer.

``daskglm fit`` (:mod:`daskglm.cli.fit`) and each subject of
:func:`daskglm.bids.run_batch` (:mod:`daskglm.bids.subject`) name, plan and
write their outputs here, so that one subject's outputs are the same files
with the same contents whichever wrote them. nilearn 0.14's
:func:`nilearn.glm.save_glm_to_bids` is the reference.

* Names (:func:`model_outputs`): nilearn's own, its
  ``BaseGLM._generate_filenames_output`` run on a stand-in holding the run
  file names (:func:`daskglm.models.nilearn_compat.first_level_view`), so
  they are known, and checked, before anything is read. Runs named like BIDS
  files of one subject give ``sub-<label>/sub-<label>_task-..._`` names;
  otherwise the prefix given, or none (nilearn 0.14 fails there).
* ``dataset_description.json`` at the output root
  (:func:`write_dataset_description`): written when absent or daskglm's own
  (its manifest says so, :mod:`daskglm.io.outputs`), daskglm's
  ``GeneratedBy`` entry appended unless it is there already (as nilearn
  appends its own); another tool's file is left as it is (nilearn would
  rewrite it).
* In the model's folder (:func:`write_model`): the mask; per run the design
  TSV and its sidecar ``{"RepetitionTime": model.t_r_}``, and with
  ``figures`` nilearn's design, correlation and contrast figures (PNG);
  ``<prefix>statmap.json`` (``ModelParameters``: nilearn's
  ``_attributes_to_dict``); per contrast its five maps, its cluster table
  (``_clusters.tsv``) and the table's parameters (``_clusters.json``), with
  the thresholds of the report (nilearn's ``generate_report`` defaults
  unless given: fpr, alpha 0.001, no cluster size, 8 mm between peaks);
  with ``residuals`` each run's ``stat-errorts`` and ``stat-rsquared``
  maps; with ``report``, ``<prefix>report.html`` (nilearn's
  ``generate_report``, saved as its ``save_as_html`` saves it).

Surface models (fsaverage5 ``SurfaceImage`` runs, named after their left
hemisphere's GIFTI files): nilearn's names with the extension ``gii``, each map
(mask, contrast maps, residuals) written as one GIFTI file per hemisphere under
the name nilearn's ``save_glm_to_bids`` gives it
(``..._hemi-L_space-fsaverage5_den-10242_contrast-..._statmap.gii``, nilearn's own
rule), the data array as nilearn's ``PolyData.to_filename`` writes it; the
cluster tables are nilearn's surface ones, and ``statmap.json`` has nilearn's
``Density``. CIFTI models: dense scalar maps (``.dscalar.nii``), no cluster
tables. Reports are for volumes only.

Deliberate differences from nilearn 0.14: ``RepetitionTime`` is the model's
``t_r_`` (``t_r``, or the first run's header when ``t_r`` is None; nilearn
writes ``t_r``, null when not given); cluster tables are computed on the z
map (nilearn uses the last map it wrote, the variance); a contrast is
computed with the statistic its file name says (nilearn tests the one its
shape implies); residuals, figures and the report are optional (nilearn
0.14 always writes them).

Files are written atomically (:func:`daskglm.io.maps.write_bytes`) by a
:class:`Writer`, which records each in its :class:`daskglm.io.outputs.OutputPlan`.
nilearn is imported where it is used: the command line starts without it.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..io.cifti import is_cifti, to_dscalar
from ..io.maps import save_nifti, write_bytes
from ..io.remote import is_url, url_to_fs
from ..kernels.lru import LRUCache
from ..models.nilearn_compat import surface_filename
from ..runtime.cluster import phase

__all__ = [
    "DESCRIPTION",
    "MAP_KEYS",
    "REPORT_DEFAULTS",
    "ModelOutputs",
    "Writer",
    "contrast_labels",
    "dataset_description",
    "gifti_bytes",
    "generate_report",
    "join",
    "model_outputs",
    "report_contrasts",
    "report_html",
    "write_dataset_description",
    "write_model",
]

#: The output root's dataset description.
DESCRIPTION = "dataset_description.json"
#: ``compute_contrast``'s output types, in nilearn's file order.
MAP_KEYS = ("effect_size", "stat", "effect_variance", "z_score", "p_value")
#: nilearn 0.14's ``generate_report`` defaults that ``save_glm_to_bids`` also thresholds the cluster tables with.
REPORT_DEFAULTS = {"height_control": "fpr", "alpha": 0.001, "threshold": None, "cluster_threshold": 0,
                   "min_distance": 8.0, "two_sided": False}
#: nilearn 0.14's z threshold when ``height_control`` is None and no threshold is given.
_NILEARN_THRESHOLD = 3.09
_GENERATED_BY = {"Name": "daskglm",
                 "Description": "A daskglm first-level GLM (nilearn's FirstLevelModel, out of core).",
                 "CodeURL": "https://pypi.org/project/daskglm/"}


def join(folder: str | os.PathLike, name: str) -> str:
    """``folder/name`` for a local folder or an fsspec URL."""
    folder = os.fspath(folder)
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)


def contrast_labels(names: Iterable[str]) -> dict[str, str]:
    """Each contrast name's ``contrast-<label>`` label in file names (nilearn's camelCase cleaning).

    Raises
    ------
    ValueError
        Two names that would be written under one label (one would overwrite
        the other's maps), named both.
    """
    from ..models.nilearn_compat import clean_contrast_name

    labels: dict[str, str] = {}
    owners: dict[str, str] = {}
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nilearn warns whenever it changes a name
            label = clean_contrast_name(name)
        other = owners.setdefault(label, name)
        if other != name:
            raise ValueError(f"contrasts {other!r} and {name!r} would both be written as contrast-{label}: "
                             "rename one")
        labels[name] = label
    return labels


# ------------------------------------------------------------------ names and plan


@dataclass(frozen=True)
class ModelOutputs:
    """The files of one model, in its folder, under nilearn's names (see :func:`model_outputs`)."""

    folder: str  #: where the model's files go: the output folder, or its ``sub-<label>`` folder
    names: dict  #: nilearn's ``filenames`` (``mask``, ``statistical_maps``...), relative to ``folder``
    prefix: str  #: the prefix of ``statmap.json`` and ``report.html``: ``""`` or ``"<prefix>_"``, as nilearn's
    contrasts: tuple[str, ...]
    n_runs: int
    subject: str | None  #: the one subject label the run file names carry, else None
    figures: bool = False
    residuals: bool = False
    report: bool = False
    #: CIFTI runs: maps are dense scalars (``.dscalar.nii``), residuals dense time series; no cluster tables
    cifti: bool = False
    #: surface runs: ``(("L", n_vertices), ("R", n_vertices))``, each map written as one GIFTI file per hemisphere
    surface: tuple[tuple[str, int], ...] | None = None

    @property
    def statmap(self) -> str:
        return f"{self.prefix}statmap.json"

    @property
    def report_html(self) -> str:
        return f"{self.prefix}report.html"

    def map_files(self, name: str) -> list[str]:
        """The files of the map nilearn names ``name``: itself, or one per hemisphere for a surface model."""
        if self.surface is None:
            return [name]
        return [surface_filename(name, hemi, density) for hemi, density in self.surface]

    def design(self, index: int) -> tuple[str, str]:
        """The design TSV of run ``index`` and its JSON sidecar."""
        tsv = self.names["design_matrices_dict"][index]["design_matrix_tsv"]
        return tsv, f"{tsv.removesuffix('.tsv')}.json"

    def files(self) -> list[str]:
        """Every file this model writes, relative to :attr:`folder`, in the order :func:`write_model` writes them."""
        names = self.names
        files = self.map_files(names["mask"])
        for index in range(self.n_runs):
            files += self.design(index)
            if self.figures:
                design = names["design_matrices_dict"][index]
                files += [design["design_matrix_png"], design["correlation_matrix_png"],
                          *(names["contrasts_dict"][index][name] for name in self.contrasts)]
        files.append(self.statmap)
        tables = () if self.cifti else ("clusters_tsv", "metadata")
        for name in self.contrasts:
            maps = names["statistical_maps"][name]
            files += [file for key in MAP_KEYS for file in self.map_files(maps[key])]
            files += [maps[key] for key in tables]
        if self.residuals:
            files += [file for key in ("residuals", "r_square") for index in range(self.n_runs)
                      for file in self.map_files(names["model_level_mapping"][index][key])]
        if self.report:
            files.append(self.report_html)
        return files

    def path(self, name: str) -> str:
        return join(self.folder, name)

    def paths(self) -> list[str]:
        return [self.path(name) for name in self.files()]


def model_outputs(out_dir: str | os.PathLike, run_imgs: list, contrasts: Iterable[str], stat_types: dict[str, str],
                  prefix: str | None = None, *, figures: bool = False, residuals: bool = False, report: bool = False,
                  surface: dict[str, int] | None = None) -> ModelOutputs:
    """nilearn 0.14's names of a first-level model's outputs (``save_glm_to_bids``), before the fit.

    Parameters
    ----------
    out_dir : str or path
        The output root (local folder or fsspec URL).
    run_imgs : list of str or path
        The run files, in order: their BIDS entities name the outputs when
        ``prefix`` is None.
    contrasts : iterable of str
        Contrast names (checked with :func:`contrast_labels`).
    stat_types : dict of name to "t" or "F"
    prefix : str or None
        As ``save_glm_to_bids``. ``None`` with run names that do not name one
        subject is taken as ``""`` (nilearn 0.14 fails there).
    figures, residuals, report : bool
        Whether the model's PNG figures, per-run residuals and r-square maps,
        and report are among its outputs.
    surface : dict of {"L", "R"} to int, optional
        For a surface model (``run_imgs``: its runs' left-hemisphere GIFTI
        files), the vertices of each hemisphere's mesh: each map is one
        ``.gii`` file per hemisphere, as nilearn's ``save_glm_to_bids``.

    Returns
    -------
    ModelOutputs

    Raises
    ------
    ValueError
        ``report`` for CIFTI or surface runs (nilearn's report is of volumes here).
    """
    from nilearn.interfaces.bids import parse_bids_filename

    from ..models.nilearn_compat import first_level_view, output_filenames

    contrasts = tuple(contrasts)
    contrast_labels(contrasts)
    subjects = {parse_bids_filename(os.fspath(run))["entities"].get("sub") for run in run_imgs}
    subject = next(iter(subjects)) if len(subjects) == 1 else None
    if prefix is None and subject is None:
        prefix = ""
    view = first_level_view([None] * len(run_imgs), run_imgs)
    names = output_filenames(view, prefix, dict.fromkeys(contrasts, "c"), dict(stat_types), ".")
    cifti = bool(run_imgs) and all(is_cifti(run) for run in run_imgs)
    if cifti:
        if report:
            raise ValueError("report.html is not available for CIFTI runs yet: nilearn's report draws volumes "
                             "or surfaces (leave out --report)")
        _cifti_names(names)
    hemispheres = None
    if surface is not None:
        if report:
            raise ValueError("report.html is not available for surface runs: nilearn 0.14.1's surface report fails "
                             "on any contrast with no vertex above its threshold (leave out --report)")
        _surface_names(names)
        hemispheres = tuple((hemi, int(surface[hemi])) for hemi in ("L", "R"))
    sub = os.fspath(names.pop("dir"))  # "." or "sub-<label>": nilearn's folder, relative to out_dir
    folder = os.fspath(out_dir) if sub == "." else join(out_dir, sub)
    short = prefix if isinstance(prefix, str) else ""
    if short and not short.endswith("_"):
        short += "_"
    return ModelOutputs(folder, names, short, contrasts, len(run_imgs), subject, bool(figures), bool(residuals),
                        bool(report), cifti, hemispheres)


def _surface_names(names: dict) -> None:
    """nilearn's ``.nii.gz`` names, as it names a surface model's maps (extension ``gii``; split per hemisphere)."""
    def rename(name: str) -> str:
        return f"{name.removesuffix('.nii.gz')}.gii"

    names["mask"] = rename(names["mask"])
    for files in names["statistical_maps"].values():
        for key in MAP_KEYS:
            files[key] = rename(files[key])
    for files in names["model_level_mapping"].values():
        for key in ("residuals", "r_square"):
            files[key] = rename(files[key])


def gifti_bytes(data: np.ndarray) -> bytes:
    """One hemisphere's data as the GIFTI file nilearn's ``PolyData.to_filename`` writes (its ``data_to_gifti``).

    Parameters
    ----------
    data : ndarray, shape (n_vertices,) or (n_vertices, k)

    Returns
    -------
    bytes
    """
    from nilearn.surface.surface import data_to_gifti

    return data_to_gifti(np.asarray(data)).to_bytes()


def _cifti_names(names: dict) -> None:
    """nilearn's ``.nii.gz`` names, for CIFTI: maps and mask as dense scalars, residuals as dense time series."""
    def rename(name: str, kind: str) -> str:
        return f"{name.removesuffix('.nii.gz')}.{kind}.nii"

    names["mask"] = rename(names["mask"], "dscalar")
    for files in names["statistical_maps"].values():
        for key in MAP_KEYS:
            files[key] = rename(files[key], "dscalar")
    for files in names["model_level_mapping"].values():
        files["residuals"] = rename(files["residuals"], "dtseries")
        files["r_square"] = rename(files["r_square"], "dscalar")


# ------------------------------------------------------------------ writing


class Writer:
    """Writes planned files atomically and records each in its plan's manifests.

    Parameters
    ----------
    plan : daskglm.io.outputs.OutputPlan
        Claimed before the first write.
    on_write : callable, optional
        Called with each path written.
    """

    def __init__(self, plan: Any, on_write: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.on_write = on_write
        self.written: list[str] = []

    def put(self, path: str, payload: Any) -> None:
        """Write ``payload`` (bytes, or a NIfTI image) at ``path``, then record it."""
        if isinstance(payload, bytes):
            write_bytes(path, payload, self.plan.storage_options)
        else:
            save_nifti(payload, path, self.plan.storage_options)
        self.plan.record(path)
        self.written.append(path)
        if self.on_write is not None:
            self.on_write(path)


def dataset_description(existing: bytes | None = None) -> bytes:
    """``dataset_description.json``: ``existing`` (daskglm's own) or a new one, with daskglm's ``GeneratedBy``.

    A new one is nilearn's (``BIDSVersion`` 1.9.0, ``DatasetType``
    derivative); the entry (name, version, description, code URL) is appended
    to ``GeneratedBy`` unless it is there already.
    """

    entry = {**_GENERATED_BY, "Version": __version__}
    try:
        description = json.loads(existing) if existing is not None else None
    except ValueError:
        description = None
    if not isinstance(description, dict):
        description = {"BIDSVersion": "1.9.0", "DatasetType": "derivative"}
    generated = description.setdefault("GeneratedBy", [])
    if entry not in generated:
        generated.append(entry)
    return json.dumps(description, indent=4, sort_keys=True).encode()


def write_dataset_description(writer: Writer, out_dir: str | os.PathLike) -> None:
    """``out_dir``'s ``dataset_description.json`` (see :func:`dataset_description`), unless another tool's.

    It must be among ``writer``'s plan as an optional output; a file the plan
    leaves out (another tool's) is left as it is.
    """
    path = join(out_dir, DESCRIPTION)
    if not writer.plan.will_write(path):
        return
    existing = None
    try:
        if is_url(path):
            fs, location = url_to_fs(path, writer.plan.storage_options)
            existing = fs.cat_file(location)
        else:
            with open(path, "rb") as fh:
                existing = fh.read()
    except FileNotFoundError:
        pass
    writer.put(path, dataset_description(existing))


def write_model(model: Any, outputs: ModelOutputs, contrasts: dict[str, Any], stat_types: dict[str, str],
                writer: Writer, run_imgs: list, *, report_options: dict | None = None, label: str = "",
                client: Any = None, on_step: Callable[[str], None] | None = None,
                on_contrast: Callable[[int, str, dict], None] | None = None) -> None:
    """Write a fitted model's files of ``outputs`` (see the module docstring) with ``writer``.

    Parameters
    ----------
    model : daskglm.FirstLevelModel
        Fitted on ``run_imgs``.
    outputs : ModelOutputs
        From :func:`model_outputs`, whose paths ``writer``'s plan has claimed.
    contrasts : dict of name to definition
        One definition for every run (a str or an array), or a list of one per run.
    stat_types : dict of name to "t" or "F"
    writer : Writer
    run_imgs : list
        The run files (``statmap.json``'s metadata reads their names).
    report_options : dict, optional
        ``generate_report``'s keyword arguments given (others: nilearn's
        defaults); the thresholding ones also make the cluster tables, as
        ``save_glm_to_bids``.
    label : str
        Start of the progress labels (``"sub-01: "``).
    client
        Where the residuals and r-square maps are computed (see
        :func:`daskglm.runtime.cluster.compute`).
    on_step : callable, optional
        Called with what is done next (``"computing contrast 'a'"``...), for error messages.
    on_contrast : callable, optional
        Called with ``(number, name, maps)`` after each contrast's files.
    """
    from ..models.nilearn_compat import first_level_view, model_attributes

    def step(text: str) -> None:
        if on_step is not None:
            on_step(text)

    names = outputs.names
    step("writing the design and model files")
    if outputs.surface is not None:  # nilearn's: the boolean mask as uint8
        _put_map(writer, outputs, names["mask"], model.mask_img_, np.uint8)
    else:
        writer.put(outputs.path(names["mask"]), model.mask_img_ if not outputs.cifti else to_dscalar(
            {"mask": np.ones(model.n_elements_, np.float32)}, model._cifti_models))
    _write_designs(model, outputs, contrasts, writer)
    view = first_level_view(model.design_matrices_, run_imgs, model)
    metadata = {"Description": "A statistical map generated by Nilearn.", "ModelParameters": model_attributes(view)}
    if outputs.surface is not None:  # nilearn's, for surface models
        metadata["Density"] = {str(d): f"{d} vertices per hemisphere" for d in dict.fromkeys(
            density for _, density in outputs.surface)}
    writer.put(outputs.path(outputs.statmap), json.dumps(metadata, indent=4, sort_keys=True).encode())
    options = {**REPORT_DEFAULTS, **{k: v for k, v in (report_options or {}).items() if k in REPORT_DEFAULTS}}
    n_runs = len(model.design_matrices_)
    for number, (name, definition) in enumerate(contrasts.items(), start=1):
        # One definition for every run: nilearn's rule, without its "same contrast for all runs" warning.
        per_run = definition if isinstance(definition, (list, tuple)) else [definition] * n_runs
        step(f"computing contrast {name!r}")
        with phase(f"{label}contrast {number}/{len(contrasts)} {name}"):  # the progress's label
            maps = model.compute_contrast(per_run, stat_type=stat_types[name], output_type="all")
        files = names["statistical_maps"][name]
        for key in MAP_KEYS:
            _put_map(writer, outputs, files[key], maps[key])
        if not outputs.cifti:  # nilearn's cluster tables are of volumes or surfaces
            table, details = _clusters(maps["z_score"], options, volume=outputs.surface is None)
            writer.put(outputs.path(files["clusters_tsv"]), table.to_csv(sep="\t", index=False).encode())
            writer.put(outputs.path(files["metadata"]), json.dumps(details).encode())
        if on_contrast is not None:
            on_contrast(number, name, maps)
    if outputs.residuals:
        step("writing residuals and r_square")
        _write_residuals(model, outputs, writer, label, client)
    if outputs.report:
        step("writing the report")
        writer.put(outputs.path(outputs.report_html), report_html(generate_report(model, contrasts, report_options)))


def _write_designs(model: Any, outputs: ModelOutputs, contrasts: dict[str, Any], writer: Writer) -> None:
    """Per run: design TSV and sidecar; with figures, design, correlation and contrast PNGs (Agg, no pyplot)."""
    sidecar = json.dumps({"RepetitionTime": model.t_r_}, indent=4, sort_keys=True).encode()
    for index, dm in enumerate(model.design_matrices_):
        tsv, json_name = outputs.design(index)
        writer.put(outputs.path(tsv), dm.to_csv(sep="\t", index=False).encode())
        writer.put(outputs.path(json_name), sidecar)
    if outputs.figures:
        _write_figures(model, outputs, contrasts, writer)


def _write_figures(model: Any, outputs: ModelOutputs, contrasts: dict[str, Any], writer: Writer) -> None:
    from nilearn.plotting import plot_design_matrix, plot_design_matrix_correlation

    from ..glm.design import contrast_matrices

    matrices = contrast_matrices(dict(contrasts), model.design_matrices_)
    for index, dm in enumerate(model.design_matrices_):
        files = outputs.names["design_matrices_dict"][index]
        fig = _figure((max(4.0, 0.35 * dm.shape[1] + 1.5), 5.3))
        plot_design_matrix(dm, axes=fig.add_subplot())
        writer.put(outputs.path(files["design_matrix_png"]), _png(fig))
        fig = _figure((max(5.0, 0.4 * dm.shape[1]), max(4.0, 0.4 * dm.shape[1])))
        plot_design_matrix_correlation(dm, axes=fig.add_subplot())
        writer.put(outputs.path(files["correlation_matrix_png"]), _png(fig))
        for name, per_run in matrices.items():
            writer.put(outputs.path(outputs.names["contrasts_dict"][index][name]),
                       _contrast_png(name, np.asarray(per_run[index], dtype=np.float64), dm))


#: Contrast-matrix PNGs by what they show (name, weights, design columns): a batch's subjects and
#: runs of one design draw the same figure, which is drawn once per process (4 MiB of PNGs).
_CONTRAST_PNGS: LRUCache[bytes] = LRUCache(4 * 2**20, size_of=len)


def _contrast_png(name: str, weights: np.ndarray, dm: Any) -> bytes:
    """nilearn's contrast-matrix figure of ``weights`` (shape (k,) or (q, k)) on ``dm``'s columns, as PNG."""
    def draw() -> bytes:
        from nilearn.plotting import plot_contrast_matrix

        fig = _figure((max(5.0, 0.4 * dm.shape[1]), 2.0))
        axes = plot_contrast_matrix(weights, dm, colorbar=True, axes=fig.add_subplot())
        axes.set_xlabel(name)
        return _png(fig)

    columns = tuple(str(column) for column in dm.columns)
    return _CONTRAST_PNGS.get((name, weights.shape, weights.tobytes(), columns), draw)


def _write_residuals(model: Any, outputs: ModelOutputs, writer: Writer, label: str, client: Any) -> None:
    """Each run's residuals and r-square maps, computed per voxel block from its store."""

    for attribute in ("residuals", "r_square"):
        for index, img in enumerate(model.voxelwise_images(attribute, client, label=f"{label}writing the ")):
            _put_map(writer, outputs, outputs.names["model_level_mapping"][index][attribute], img)


def _put_map(writer: Writer, outputs: ModelOutputs, name: str, img: Any, dtype: Any = None) -> None:
    """A map under nilearn's ``name``: one image, or a surface image's hemispheres as GIFTI files."""
    if outputs.surface is None:
        writer.put(outputs.path(name), img)
        return
    for (hemi, _), file in zip(outputs.surface, outputs.map_files(name)):
        data = np.asarray(img.data.parts["left" if hemi == "L" else "right"])
        writer.put(outputs.path(file), gifti_bytes(data if dtype is None else data.astype(dtype)))


#: Keys of a cluster table's parameters that nilearn writes for volume models only.
_VOLUME_CLUSTER_KEYS = ("Cluster size threshold (voxels)", "Minimum distance (mm)")


def _clusters(z_map: Any, options: dict, volume: bool = True) -> tuple[Any, dict]:
    """Cluster table and its parameters, thresholded as ``save_glm_to_bids`` (its report's options)."""
    from nilearn.glm import threshold_stats_img
    from nilearn.reporting import get_clusters_table

    from ..models.nilearn_compat import clustering_params

    height_control, alpha = options["height_control"], options["alpha"]
    # nilearn's rule: a threshold only without height control (then 3.09 by default), else ignored
    threshold = (_NILEARN_THRESHOLD if options["threshold"] is None else float(options["threshold"])
                 ) if height_control is None else None
    thresholded, threshold = threshold_stats_img(z_map, threshold=threshold, alpha=alpha,
                                                 cluster_threshold=options["cluster_threshold"],
                                                 height_control=height_control)
    details = clustering_params(threshold, options["cluster_threshold"], options["min_distance"], height_control,
                                alpha)
    if not volume:  # nilearn's parameters of a surface table (is_volume_glm=False)
        details = {k: v for k, v in details.items() if k not in _VOLUME_CLUSTER_KEYS}
    table = get_clusters_table(_cropped(thresholded) if volume else thresholded, stat_threshold=threshold,
                               cluster_threshold=options["cluster_threshold"], min_distance=options["min_distance"],
                               two_sided=options["two_sided"])
    return table, details


def _cropped(img: Any) -> Any:
    """A thresholded volume cropped to its non-zero voxels and a margin of one zero voxel (nilearn's
    ``crop_img(pad=True)``), its affine moved with it: the same cluster table, in less time.

    nilearn's ``get_clusters_table`` filters the whole volume once per cluster; its
    filters see the same neighbourhood of every voxel in the margin-padded crop (the
    voxels outside it are zero), so peaks, sizes and coordinates in mm are unchanged.
    """
    from nilearn.image import crop_img

    if not np.any(np.asanyarray(img.dataobj)):
        return img
    return crop_img(img, rtol=0.0, pad=True)


# ------------------------------------------------------------------ report and figures


def report_contrasts(contrasts: dict[str, Any]) -> dict[str, Any]:
    """The contrasts as ``generate_report`` can draw them: weight vectors as one-row matrices.

    nilearn 0.14's report fails to draw a weight vector shorter than the
    design (its ``pad_contrast_matrix`` pads a 1D array as if it were 2D); a
    one-row matrix is the same t contrast, and is padded correctly.

    Parameters
    ----------
    contrasts : dict of str to str or array
        The contrast definitions by name.

    Returns
    -------
    dict of str to str or ndarray
        The same definitions, 1D arrays (and lists of numbers) as ``(1, k)`` arrays.
    """
    return {name: value if isinstance(value, str) else np.atleast_2d(np.asarray(value, dtype=float))
            for name, value in contrasts.items()}


def generate_report(model: Any, contrasts: dict[str, Any], options: dict | None = None) -> Any:
    """nilearn's ``generate_report`` of the contrasts, with ``options`` (others: nilearn's defaults).

    Weight vectors are given as one-row matrices (:func:`report_contrasts`).
    Not shown: nilearn's note that one contrast is used for every run (the
    rule here), the padding warning of its contrast plots (the maps' own was
    shown), and numpy's note from plotting a mask with empty slices.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The same contrast will be used for all", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="Contrasts will be padded with", category=UserWarning)
        # numpy's, from nilearn's plot of a mask with empty slices over the background: noise to the user.
        warnings.filterwarnings("ignore", message="Warning: converting a masked element to nan", category=UserWarning)
        return model.generate_report(report_contrasts(contrasts), **(options or {}))


def report_html(report: Any) -> bytes:
    """The bytes nilearn's ``HTMLReport.save_as_html`` writes, to be written atomically elsewhere.

    nilearn 0.14 saves the page wrapped in an inline frame
    (``report.get_iframe()``, UTF-8), also for ``save_glm_to_bids``'s
    ``report.html``; this gives the same bytes.

    Parameters
    ----------
    report : nilearn.reporting.HTMLReport
        What ``generate_report`` returned.

    Returns
    -------
    bytes
    """
    return report.get_iframe().encode("utf-8")


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas, outside pyplot (no backend change, no open-figure list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()

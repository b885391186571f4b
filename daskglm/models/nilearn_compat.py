"""nilearn's private names that daskglm relies on, in one place.

daskglm's ``FirstLevelModel`` and ``SecondLevelModel`` subclass nilearn's, so
that nilearn's own code (``save_glm_to_bids``, ``generate_report``, its
estimator checks, ``SecondLevelModel`` inputs) treats them as nilearn models.
That contract goes through a few of nilearn's private names; they are imported
here only, so that a nilearn release that moves them breaks one module.
nilearn is pinned to 0.14.x in ``pyproject.toml`` for this reason.

The layers above the models (``daskglm.bids``, ``daskglm.cli``) reach
nilearn's private code through the functions of this module only:
:func:`first_level_view` (a stand-in for a fitted volume first-level model),
:func:`output_filenames` (``BaseGLM._generate_filenames_output``, the names
``save_glm_to_bids`` writes), :func:`model_attributes`
(``BaseGLM._attributes_to_dict``, ``statmap.json``'s ``ModelParameters``),
:func:`clustering_params` (``clustering_params_to_dataframe``, the cluster
tables' metadata) and :func:`clean_contrast_name`. ``figure_to_png_base64`` is
how nilearn's GLM report embeds its figures (PNG, base64), used by the
report's "Noise model" section (``FirstLevelModel.generate_report``).

Inherent to subclassing nilearn's estimators, and so left in
``models/first_level.py`` and ``models/second_level.py`` (each is what
nilearn's own ``fit`` does, or what its own code reads or calls on a model):

* attributes nilearn reads: ``_reporting_data`` (set at fit; read by
  ``generate_report`` and ``save_glm_to_bids``) and ``_report_content``
  (``["reports_at_fit_time"]``);
* inherited methods called as nilearn's ``fit`` calls them:
  ``_fit_cache()``, ``_reset_report()``, ``_log(...)`` (first level);
* hooks overridden so that nilearn's code computes with daskglm:
  ``_get_element_wise_model_attribute`` (behind ``residuals_``,
  ``predicted_``, ``r_square_``; both models) and ``_make_stat_maps``
  (the maps of ``save_glm_to_bids`` and ``generate_report``; second level).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from nilearn._utils.glm import check_and_load_tables
from nilearn._utils.logger import log
from nilearn._utils.masker_validation import check_compatibility_mask_and_images
from nilearn._utils.param_validation import check_parameter_in_allowed, check_params
from nilearn.glm._base import BaseGLM
from nilearn.glm._base import _clean_contrast_name as clean_contrast_name
from nilearn.glm.second_level.second_level import _check_confounds as check_confounds
from nilearn.glm.second_level.second_level import (
    _check_design_matrix as check_design_matrix,
)
from nilearn.glm.second_level.second_level import (
    _check_first_level_contrast as check_first_level_contrast,
)
from nilearn.glm.second_level.second_level import (
    _check_input_as_type as check_input_as_type,
)
from nilearn.glm.second_level.second_level import _check_input_type as check_input_type
from nilearn.glm.second_level.second_level import (
    _check_n_rows_desmat_vs_n_effect_maps as check_n_rows_desmat_vs_n_effect_maps,
)
from nilearn.glm.second_level.second_level import _get_con_val as get_con_val
from nilearn.glm.second_level.second_level import (
    _sort_input_dataframe as sort_input_dataframe,
)
from nilearn.image.image import check_volume_for_fit, smooth_array
from nilearn.image.resampling import BoundingBoxError
from nilearn.maskers.masker_validation import check_embedded_masker
from nilearn.reporting.utils import figure_to_png_base64

__all__ = [
    "BaseGLM", "BoundingBoxError", "check_and_load_tables", "clean_contrast_name",
    "check_compatibility_mask_and_images", "check_confounds", "check_design_matrix", "check_embedded_masker",
    "check_first_level_contrast", "check_first_level_from_bids_args", "check_input_as_type", "check_input_type",
    "check_n_rows_desmat_vs_n_effect_maps", "check_parameter_in_allowed", "check_params", "check_volume_for_fit",
    "clustering_params", "figure_to_png_base64", "first_level_view", "get_con_val", "log", "model_attributes",
    "output_filenames", "prepare_mask", "second_level_sample", "smooth_array", "sort_input_dataframe",
    "surface_filename",
]

#: The parameters ``BaseGLM._attributes_to_dict`` may read from a first-level model.
VIEW_PARAMETERS = ("subject_label", "drift_model", "hrf_model", "noise_model", "t_r", "signal_scaling",
                   "smoothing_fwhm", "slice_time_ref", "target_shape", "target_affine", "fir_delays", "high_pass",
                   "drift_order")


def first_level_view(design_matrices: list, run_imgs: list, model: Any = None) -> Any:
    """A stand-in with what nilearn's naming and metadata code reads from a fitted volume first-level model.

    Parameters
    ----------
    design_matrices : list
        One per run (only their number matters to the names: placeholders do).
    run_imgs : list of str or path
        The runs' file names, parsed as BIDS names (``_reporting_data["run_imgs"]``).
    model : FirstLevelModel, optional
        Supplies the parameters :func:`model_attributes` reads
        (:data:`VIEW_PARAMETERS`; ``standardize`` is False: daskglm never
        standardizes, nilearn's default). Not needed for names only.

    Returns
    -------
    object
        For :func:`output_filenames` and :func:`model_attributes`.
    """
    from nilearn.interfaces.bids import parse_bids_filename
    from sklearn.base import BaseEstimator

    class _View(BaseEstimator):
        _generate_filenames_output = BaseGLM._generate_filenames_output
        _attributes_to_dict = BaseGLM._attributes_to_dict

        def fit(self) -> None:  # pragma: no cover - sklearn's check_is_fitted wants one
            raise NotImplementedError

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def _is_volume_glm(self) -> bool:
            return True

        def __str__(self) -> str:
            return "First Level Model"

    view = _View()
    if model is not None:
        for name in VIEW_PARAMETERS:
            setattr(view, name, getattr(model, name))
        view.standardize = False
    view.design_matrices_ = list(design_matrices)
    view._reporting_data = {"run_imgs": {i: parse_bids_filename(os.fspath(p)) for i, p in enumerate(run_imgs)}}
    return view


def output_filenames(view: Any, prefix: str | None, contrasts: dict[str, Any], contrast_types: dict[str, str],
                     out_dir: Any) -> dict:
    """nilearn's output names of ``save_glm_to_bids`` (``BaseGLM._generate_filenames_output``) for ``view``.

    nilearn's notes about renamed contrasts are not shown (the names are checked
    by the callers, :func:`daskglm.bids.outputs.contrast_labels`).

    Returns
    -------
    dict
        nilearn's ``filenames``: ``dir`` (``Path(out_dir) / "sub-<label>"`` or
        ``Path(out_dir)``), ``mask``, ``statistical_maps[name][key]``,
        ``design_matrices_dict[run][key]``, ``contrasts_dict[run][name]``,
        ``model_level_mapping[run][key]``; names relative to ``dir``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view._generate_filenames_output(prefix, contrasts, contrast_types, out_dir)
    return view._reporting_data["filenames"]


def model_attributes(view: Any) -> dict:
    """``statmap.json``'s ``ModelParameters``: nilearn's ``BaseGLM._attributes_to_dict`` of ``view``."""
    return dict(view._attributes_to_dict())


def clustering_params(threshold: float, cluster_threshold: int, min_distance: float, height_control: str | None,
                      alpha: float) -> dict:
    """A cluster table's metadata (its JSON sidecar), as nilearn's ``save_glm_to_bids`` writes it (volume GLM)."""
    from nilearn.reporting.get_clusters_table import clustering_params_to_dataframe

    frame = clustering_params_to_dataframe(threshold, cluster_threshold, min_distance, height_control, alpha,
                                           is_volume_glm=True)
    return frame.to_dict()[0]


def prepare_mask(model: Any, run_imgs: list) -> None:
    """nilearn's ``FirstLevelModel._prepare_mask``: sets ``model.masker_``, fitted, from ``mask_img`` and the runs.

    Used for surface runs, so that masks, meshes and parameters are checked, warned about and
    applied as nilearn does.
    """
    from nilearn.glm.first_level import FirstLevelModel

    FirstLevelModel._prepare_mask(model, run_imgs)


def second_level_sample(second_level_input: Any) -> Any:
    """nilearn's sample map of a ``SecondLevelModel`` input (what its masker is fitted on)."""
    from nilearn.glm.second_level.second_level import _process_second_level_input

    return _process_second_level_input(second_level_input)[0]


def check_first_level_from_bids_args(**kwargs: Any) -> None:
    """nilearn's checks of ``first_level_from_bids``' arguments (types, labels, filters), with its messages.

    Keyword arguments: ``dataset_path, task_label, space_label, sub_labels, exclude_subjects, img_filters,
    derivatives_folder``, as nilearn's ``first_level_from_bids`` takes them.
    """
    from nilearn.glm.first_level.first_level import _check_args_first_level_from_bids

    _check_args_first_level_from_bids(**kwargs)


def surface_filename(name: str, hemi: str, density: int) -> str:
    """nilearn's name of one hemisphere's file of a surface map (``save_glm_to_bids``' rule).

    ``name``'s entities plus ``hemi`` and ``den``, in BIDS order; e.g.
    ``sub-01_task-x_space-fsaverage5_contrast-a_stat-z_statmap.gii`` with ``("L", 10242)`` gives
    ``sub-01_task-x_hemi-L_space-fsaverage5_den-10242_contrast-a_stat-z_statmap.gii``.
    """
    from nilearn.glm.io import _generate_filename_surface_file

    return str(_generate_filename_surface_file(name, hemi, density))

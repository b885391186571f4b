"""nilearn's private helpers that daskglm's estimators rely on, in one place.

daskglm's ``FirstLevelModel`` and ``SecondLevelModel`` subclass nilearn's, so
that nilearn's own code (``save_glm_to_bids``, ``generate_report``, its
estimator checks, ``SecondLevelModel`` inputs) treats them as nilearn models.
That contract goes through a few of nilearn's private names; they are imported
here only, so that a nilearn release that moves them breaks one module.
nilearn is pinned to 0.14.x in ``pyproject.toml`` for this reason.
"""

from __future__ import annotations

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
from nilearn.image.image import check_volume_for_fit
from nilearn.maskers.masker_validation import check_embedded_masker

__all__ = [
    "BaseGLM", "check_and_load_tables", "clean_contrast_name", "check_compatibility_mask_and_images", "check_confounds", "check_design_matrix",
    "check_embedded_masker", "check_first_level_contrast", "check_input_as_type", "check_input_type",
    "check_n_rows_desmat_vs_n_effect_maps", "check_parameter_in_allowed", "check_params",
    "check_volume_for_fit", "get_con_val", "log", "sort_input_dataframe",
]

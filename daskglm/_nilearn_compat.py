"""nilearn's private helpers that daskglm's estimators rely on, in one place.

daskglm's ``FirstLevelModel`` and ``SecondLevelModel`` subclass nilearn's, so
that nilearn's own code (``save_glm_to_bids``, ``generate_report``, its
estimator checks, ``SecondLevelModel`` inputs) treats them as nilearn models.
That contract goes through a few of nilearn's private names; they are imported
here only, so that a nilearn release that moves them breaks one module.
nilearn is pinned to 0.14.x in ``pyproject.toml`` for this reason.
"""

from __future__ import annotations

from nilearn._utils.logger import log
from nilearn._utils.param_validation import check_parameter_in_allowed, check_params
from nilearn.maskers.masker_validation import check_embedded_masker

__all__ = ["check_embedded_masker", "check_parameter_in_allowed", "check_params", "log"]

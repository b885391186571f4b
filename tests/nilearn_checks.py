"""nilearn's own estimator checks run on volume data, for daskglm's two estimators.

nilearn's checks fit GLMs on surface data (``_make_surface_img_and_design``);
tests/nilearn_suite runs them so. Here that data generator is replaced by a
volume of the same kind, so that every behaviour the checks test is tested on
volumes too, daskglm's main kind of data (tests/models/test_model_protocol.py,
tests/models/test_second_level_protocol.py).
"""

from __future__ import annotations

import warnings
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

#: nilearn checks that cannot pass, and why.
NOT_APPLICABLE = {
    "check_doc_link": "expects the class in nilearn's module tree (nilearn.<module>.<level>...)",
    "check_glm_empty_data_messages": ("builds its empty image from the surface data's hemispheres (passes on "
                                      "surfaces in tests/nilearn_suite; volume half: test_empty_volume_data_message)"),
}


def volume_data(n_samples: int = 5) -> tuple[nib.Nifti1Image, pd.DataFrame]:
    """Volume data in place of the surface data nilearn's estimator checks fit GLMs on: a bright
    blob on a dark background, so that nilearn's EPI mask (mask_img=None) is not empty."""
    rng = np.random.default_rng(0)
    shape = (10, 11, 12)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    blob = sum(((c - (s - 1) / 2) / (s / 3)) ** 2 for c, s in zip((x, y, z), shape)) < 1
    data = np.where(blob, 1000.0, 20.0)[..., None] + rng.random((*shape, n_samples)) * 10
    design = pd.DataFrame(rng.standard_normal((n_samples, 3)), columns=["a", "b", "c"])
    return nib.Nifti1Image(data, np.eye(4)), design


def nilearn_checks(estimator: Any) -> list:
    """``pytest.param(estimator, check, id=name)`` for each of nilearn's checks of ``estimator``."""
    with warnings.catch_warnings():  # nilearn's test modules it imports use nilearn's own pytest marks
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        from nilearn._utils.estimator_checks import nilearn_check_estimator

    return [pytest.param(est, check, id=name) for est, check, name in nilearn_check_estimator([estimator])]


def run_on_volume_data(check: Any, estimator: Any, name: str, tmp_path: Any, monkeypatch: Any) -> None:
    """Run one nilearn check with :func:`volume_data`, in ``tmp_path`` (checks that set
    memory="tmp" cache there), stores there too; xfail the :data:`NOT_APPLICABLE` ones."""
    import nilearn._utils.estimator_checks as checks

    if name in NOT_APPLICABLE:
        pytest.xfail(NOT_APPLICABLE[name])
    monkeypatch.setenv("DASKGLM_CACHE", str(tmp_path / "stores"))
    monkeypatch.chdir(tmp_path)
    with mock.patch.object(checks, "_make_surface_img_and_design", volume_data), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)

"""What daskglm's two estimators add to nilearn's base classes, in one place.

* ``clone`` with a live ``distributed.Client`` as the ``client`` parameter.
* ``dir()`` (which scikit-learn's HTML repr walks) that does not compute
  ``residuals_``, ``predicted_`` and ``r_square_`` over the whole data, and
  the forgetting of those nilearn caches when the fit changes.
* ``generate_report`` with design matrices whose column names are not
  strings (nilearn's walkthrough loads its designs as ``pd.DataFrame(X)``,
  whose columns are integers, and nilearn 0.14.1's report fails on them when
  it plots the design's correlations).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator
from typing import Any

from .nilearn_compat import BaseGLM

__all__ = ["EstimatorMixin", "COMPUTED_ON_READ"]

#: nilearn's element-wise attributes (and their deprecated names): computed over the whole data when
#: first read, then cached on the instance by nilearn's ``auto_attr``.
COMPUTED_ON_READ = frozenset({"residuals_", "predicted_", "r_square_", "residuals", "predicted", "r_square"})

#: Where each estimator keeps its design(s): FirstLevelModel a list, SecondLevelModel one DataFrame.
_DESIGN_ATTRIBUTES = ("design_matrices_", "design_matrix_")


@contextlib.contextmanager
def _string_columns(model: Any) -> Iterator[None]:
    """Inside the block, the model's fitted designs have their column names as strings."""
    saved = {}
    for name in _DESIGN_ATTRIBUTES:
        value = model.__dict__.get(name)
        designs = value if isinstance(value, list) else [value]
        if value is None or all(all(isinstance(c, str) for c in dm.columns) for dm in designs):
            continue
        renamed = [dm.rename(columns=str) for dm in designs]
        saved[name] = value
        setattr(model, name, renamed if isinstance(value, list) else renamed[0])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(model, name, value)


class EstimatorMixin:
    """Mixed into ``FirstLevelModel`` and ``SecondLevelModel`` before nilearn's classes."""

    client: Any

    def __sklearn_clone__(self) -> Any:
        """scikit-learn's ``clone``; a live ``client`` is shared, not deep-copied (it is a connection).

        An address, a scheduler file or a local scheduler name is copied as usual.
        """
        client = self.client
        if client is None or isinstance(client, (str, os.PathLike)):
            return super().__sklearn_clone__()  # type: ignore[misc]
        self.client = None
        try:
            new = super().__sklearn_clone__()  # type: ignore[misc]
        finally:
            self.client = client
        new.client = client
        return new

    def __dir__(self) -> list[str]:
        """scikit-learn's ``dir`` without computing :data:`COMPUTED_ON_READ` (listed once computed).

        scikit-learn lists only the attributes ``hasattr`` finds, which reads
        every property: here that would recompute residuals over the whole
        data for a repr or a tab completion.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return [name for name in object.__dir__(self)
                    if (name in self.__dict__ if name in COMPUTED_ON_READ else hasattr(self, name))]

    def _forget_computed(self) -> None:
        """Drop the cached :data:`COMPUTED_ON_READ` of an earlier fit or contrast."""
        for name in COMPUTED_ON_READ:
            self.__dict__.pop(name, None)

    def generate_report(self, *args: Any, **kwargs: Any) -> Any:
        """nilearn's ``generate_report`` (same parameters, page and warnings).

        Design columns that are not strings (e.g. ``pd.DataFrame(X)``'s
        integers) are shown as strings: nilearn 0.14.1's report fails on them.
        """
        if getattr(self, "_elements", None) == "cifti":
            raise NotImplementedError("generate_report does not support CIFTI fits yet (nilearn's report draws "
                                      "volumes or surfaces); the maps of compute_contrast are dense scalars "
                                      "that Connectome Workbench and nibabel read")
        with _string_columns(self):
            return super().generate_report(*args, **kwargs)  # type: ignore[misc]

    # nilearn's own signature: nilearn.glm.save_glm_to_bids reads it to route its keyword arguments.
    generate_report.__signature__ = inspect.signature(BaseGLM.generate_report)  # type: ignore[attr-defined]

"""Layer 6 — nilearn's estimators, computed out of core: subclasses of nilearn's own.

* :mod:`.first_level` — ``FirstLevelModel``.
* :mod:`.second_level`, :mod:`.second_level_inputs` — ``SecondLevelModel``
  and its inputs (maps, models, DataFrames).
* :mod:`.estimator` — what both add to nilearn's base classes.
* :mod:`.nilearn_compat` — nilearn's private names they rely on, in one place.
"""

from .first_level import FirstLevelModel, default_store_root
from .second_level import SecondLevelModel

__all__ = ["FirstLevelModel", "SecondLevelModel", "default_store_root"]

"""Layer 5 — the GLM over voxel blocks: designs, the lazy fit, stored fits, contrasts, fixed effects.

* :mod:`.design` — design matrices (nilearn's ``make_first_level_design_matrix``)
  and contrast definitions with nilearn's checks.
* :mod:`.fit` — the lazy blockwise fit of one run (one packed array per voxel column).
* :mod:`.fitstore` — fits persisted in the run stores, held in memory or lazy.
* :mod:`.contrasts` — lazy per-run contrasts and their combination across runs.
* :mod:`.fixed_effects` — ``compute_fixed_effects`` over voxel slabs.
"""

from .contrasts import combine_contrasts, contrast_dataset, run_contrast
from .fit import fit_run, voxelwise_run
from .fitstore import open_fit, reopen_fit, save_fit, save_fits
from .fixed_effects import compute_fixed_effects, fixed_effects_dataset

__all__ = ["combine_contrasts", "compute_fixed_effects", "contrast_dataset", "fit_run", "fixed_effects_dataset",
           "open_fit", "reopen_fit", "run_contrast", "save_fit", "save_fits", "voxelwise_run"]

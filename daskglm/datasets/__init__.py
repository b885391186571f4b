"""Layer 8 — simulated data: FIAC-shaped runs (up to HCP size) and BIDS datasets with known effects.

* :mod:`.fiac` — ``simulate_fiac`` (runs streamed to disk), its designs and ground truth.
* :mod:`.bids_sim`, :mod:`.confounds` — ``simulate_bids`` with fMRIPrep-style confounds.
* :mod:`.cifti` — ``simulate_cifti``: the same design as CIFTI-2 dense time series (fsaverage5-sized or
  fsLR-91k grayordinates), streamed to disk, with ground truth.
* :mod:`.files` — the simulators' atomic, byte-reproducible file writers.
"""

from .bids_sim import simulate_bids
from .cifti import simulate_cifti
from .fiac import (
    CONDITIONS,
    DESIGN_PARAMS,
    fiac_design_matrix,
    fiac_events,
    fiac_ground_truth,
    load_fiac_design_matrix,
    simulate_fiac,
)

__all__ = ["CONDITIONS", "DESIGN_PARAMS", "fiac_design_matrix", "fiac_events", "fiac_ground_truth",
           "load_fiac_design_matrix", "simulate_bids", "simulate_cifti", "simulate_fiac"]

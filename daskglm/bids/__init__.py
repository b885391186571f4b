"""Layer 7 — BIDS datasets: nilearn's ``first_level_from_bids`` with daskglm models, resumable batches.

* :mod:`.from_bids` — ``first_level_from_bids`` on nilearn's BIDS discovery.
* :mod:`.batch`, :mod:`.subject` — one task per subject across the cluster,
  a marker per subject.
* :mod:`.outputs` — a fitted model's outputs under nilearn's ``save_glm_to_bids``
  names, planned and written in one place (``daskglm fit`` and the batch).
"""

from .batch import BatchResult, SubjectResult, run_batch
from .from_bids import first_level_from_bids

__all__ = ["BatchResult", "SubjectResult", "first_level_from_bids", "run_batch"]

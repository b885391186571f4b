"""daskglm: first-level fMRI GLMs (nilearn's FirstLevelModel) out of core on Dask."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0.dev0"

# Public names and the module that defines each; imported on first use so that
# `import daskglm` stays cheap and a notebook pays only for what it touches.
_EXPORTS = {
    "ingest_run": "daskglm.store",
    "ingest_runs": "daskglm.store",
    "open_run": "daskglm.store",
    "StoreIncompleteError": "daskglm.store",
    "to_nifti": "daskglm.maps",
    "to_volume": "daskglm.maps",
    "get_client": "daskglm.cluster",
    "simulate_fiac": "daskglm.datasets",
    "simulate_bids": "daskglm.datasets",
    "first_level_from_bids": "daskglm.bids",
    "FirstLevelModel": "daskglm.model",
    "compute_fixed_effects": "daskglm.fixed_effects",
    "SecondLevelModel": "daskglm.second_level",
    "run_batch": "daskglm.batch",
    "fit_run": "daskglm.fit",
    "save_fit": "daskglm.store",
    "save_fits": "daskglm.store",
    "open_fit": "daskglm.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'daskglm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

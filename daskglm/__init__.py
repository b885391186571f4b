"""daskglm: first-level fMRI GLMs (nilearn's FirstLevelModel) out of core on Dask.

Subpackages in pipeline order; each imports only from those before it
(``tests/test_layering.py``)::

    kernels  → runtime → io → store → glm → models → bids → datasets → cli

The names below are the public surface; each is imported on first use so that
``import daskglm`` stays cheap and a notebook pays only for what it touches.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from importlib import import_module
from types import ModuleType
from typing import Any

__version__ = "0.1.0.dev0"

#: Public names and the module that defines each.
_EXPORTS = {
    "ingest_run": "daskglm.store",
    "ingest_runs": "daskglm.store",
    "open_run": "daskglm.store",
    "StoreIncompleteError": "daskglm.store",
    "to_nifti": "daskglm.io",
    "to_volume": "daskglm.io",
    "get_client": "daskglm.runtime",
    "simulate_fiac": "daskglm.datasets",
    "simulate_bids": "daskglm.datasets",
    "simulate_cifti": "daskglm.datasets",
    "first_level_from_bids": "daskglm.bids",
    "FirstLevelModel": "daskglm.models",
    "compute_fixed_effects": "daskglm.glm",
    "SecondLevelModel": "daskglm.models",
    "run_batch": "daskglm.bids",
    "fit_run": "daskglm.glm",
    "save_fit": "daskglm.glm",
    "save_fits": "daskglm.glm",
    "open_fit": "daskglm.glm",
}

__all__ = sorted(_EXPORTS)

#: Module paths of earlier releases (one flat package) that still import, with a DeprecationWarning.
_MOVED_MODULES = {
    "daskglm.model": "daskglm.models.first_level",
    "daskglm.second_level": "daskglm.models.second_level",
    "daskglm.fit": "daskglm.glm.fit",
    "daskglm.contrasts": "daskglm.glm.contrasts",
    "daskglm.design": "daskglm.glm.design",
    "daskglm.fixed_effects": "daskglm.glm.fixed_effects",
    "daskglm.cluster": "daskglm.runtime.cluster",
    "daskglm.nifti": "daskglm.io.nifti",
    "daskglm.maps": "daskglm.io.maps",
    "daskglm.grid": "daskglm.io.grid",
    "daskglm.batch": "daskglm.bids.batch",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import daskglm.model`` gives ``daskglm.models.first_level`` itself (the same module object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = _MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} is now {new}; the old module path will be removed", DeprecationWarning,
                      stacklevel=2)
        return import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to execute: the module is the new one, already imported."""


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'daskglm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

"""Layer 4 — run stores: a run ingested once into a zarr store of ``bold(time, voxel)``.

* :mod:`.ingest` — ingestion (every run's blocks in one computation), the
  store fingerprint, resume and ``complete`` marker.
* :mod:`.zarrio` — a store's zarr side: layout, codecs, ``open_run``.
* :mod:`.summary` — what ingestion learns of a run first (mean image, value
  range, gzip seek index).
* :mod:`.locks` — the ``flock`` that serialises writers of a local store.
* :mod:`.cache` — the default cache folder of run stores: listing, removal, size cap.

The fits stored beside the runs are :mod:`daskglm.glm.fitstore`'s
(``save_fit``, ``save_fits``, ``open_fit``); their old names here still work,
with a DeprecationWarning.
"""

from typing import Any

from .cache import (
    CACHE_MAX_SIZE_KEY,
    Removal,
    StoreInfo,
    cache_max_size,
    default_cache_dir,
    enforce_cache_cap,
    list_stores,
    remove_stores,
)
from .ingest import ingest_run, ingest_runs, parameters_key, read_bytes
from .locks import store_lock
from .summary import mean_image, mean_images
from .zarrio import STORE_FORMAT, StoreDamagedError, StoreIncompleteError, open_run

__all__ = ["CACHE_MAX_SIZE_KEY", "STORE_FORMAT", "Removal", "StoreDamagedError", "StoreIncompleteError", "StoreInfo",
           "cache_max_size", "default_cache_dir", "enforce_cache_cap", "ingest_run", "ingest_runs", "list_stores",
           "mean_image", "mean_images", "open_run", "parameters_key", "read_bytes", "remove_stores", "store_lock"]

#: Names this module re-exported before the fits moved to the glm layer.
_MOVED_TO_GLM = ("FIT_MEMORY_KEY", "fit_memory_bytes", "open_fit", "reopen_fit", "save_fit", "save_fits")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_GLM:  # deprecated alias: imported when asked for, never by daskglm itself
        import importlib
        import warnings

        warnings.warn(f"daskglm.store.{name} is now daskglm.glm.{name}; the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("daskglm.glm.fitstore"), name)
    raise AttributeError(f"module 'daskglm.store' has no attribute {name!r}")

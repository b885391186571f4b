"""Layer 3 — the edges: NIfTI files and fsspec URLs in, maps out.

* :mod:`.nifti` — run headers, block reads of volumes, masks.
* :mod:`.remote` — fsspec locations and their ``storage_options``.
* :mod:`.grid` — nilearn's masker rules for the analysis grid and per-block
  resampling.
* :mod:`.maps` — voxel vectors back to volumes and NIfTI images, written
  atomically.
* :mod:`.slabs` — effect and variance maps read by slabs of x-planes (fixed
  effects and the second level), blocks of whole planes, the mean of maps.
"""

from .maps import load_nifti, save_nifti, scatter_to_volume, to_nifti, to_volume

__all__ = ["load_nifti", "save_nifti", "scatter_to_volume", "to_nifti", "to_volume"]

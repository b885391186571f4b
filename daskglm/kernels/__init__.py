"""Layer 1 — numpy/scipy/numba maths on one block of data; no dask, no I/O.

One kernel serves the in-memory path and each dask block; each is tested
against nilearn and a per-voxel ``np.linalg.lstsq`` oracle.

* :mod:`.volume`, :mod:`.smoothing`, :mod:`.smoothing_jit` — nilearn's
  smoothing of a block of volumes, cropped to the mask, and masking.
* :mod:`.scaling` — nilearn's percent-signal-change scaling of a block.
* :mod:`.regression` — OLS, Yule–Walker, AR(1) labels, the block fits.
* :mod:`.ar1_moments` — the AR(1) fit of a block from its lag-0/lag-1 moments.
* :mod:`.whitening`, :mod:`.covariances` — AR(p) whitening, per-label
  covariances of beta.
* :mod:`.arma`, :mod:`.arma_jit` — the ARMA(1,1) noise model: exact whitening,
  each voxel's REML point of a parameter grid, the refit.
* :mod:`.stats` — t/F statistics, run combination, fixed effects.
* :mod:`.voxelwise` — residuals, predicted values, R² of a block.
* :mod:`.group` — the second level's OLS of a block of maps.
* :mod:`.packing` — the packed row layouts of fits, contrasts, fixed effects
  and the group fit (named row blocks of one ``(rows, voxels)`` array).
* :mod:`.lru` — the thread-safe cache of the kernels' per-process caches.

Modules are imported by their users (``from daskglm.kernels import
regression``): importing this package imports nothing, so that worker
processes pay only for the kernels their tasks use.
"""

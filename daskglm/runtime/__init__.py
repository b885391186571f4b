"""Layer 2 — where the graphs run and how the data are cut.

* :mod:`.cluster` — which Dask client runs the graphs (explicit, local
  scheduler, active, ``DASK_SCHEDULER_ADDRESS``, embedded ``LocalCluster``),
  :func:`compute` with retries and progress bars, and :class:`ClusterLostError`
  (:class:`NoWorkersError`, :class:`SchedulerLostError`) when the cluster goes
  away mid-computation (``daskglm.no-workers-timeout``).
* :mod:`.plan` — pure arithmetic: chunk sizes and reads per task from the
  data size and a memory budget.
* :mod:`.compat` — distributed's and multiprocessing's internals: worker
  processes that never import the user's ``__main__``.
"""

from .cluster import (
    LOCAL_SCHEDULERS,
    ClusterLostError,
    NoWorkersError,
    SchedulerLostError,
    compute,
    connect_timeout,
    get_client,
    n_workers_from_n_jobs,
    no_workers_timeout,
    task_retries,
    verbosity,
    wait_first,
)

__all__ = ["LOCAL_SCHEDULERS", "ClusterLostError", "NoWorkersError", "SchedulerLostError", "compute", "connect_timeout",
           "get_client", "n_workers_from_n_jobs", "no_workers_timeout", "task_retries", "verbosity", "wait_first"]

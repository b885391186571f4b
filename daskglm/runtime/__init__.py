"""Layer 2 — where the graphs run and how the data are cut.

* :mod:`.cluster` — which Dask client runs the graphs (explicit, local
  scheduler, active, ``DASK_SCHEDULER_ADDRESS``, embedded ``LocalCluster``),
  :func:`compute` with retries of transient errors and progress, and :class:`ClusterLostError`
  (:class:`NoWorkersError`, :class:`SchedulerLostError`) when the cluster goes
  away mid-computation (``daskglm.no-workers-timeout``).
* :mod:`.progress` — what the user sees of a computation: one labelled bar
  per :func:`phase` in a terminal, plain lines otherwise.
* :mod:`.workerlog` — the embedded cluster's workers do not log a task's
  error on the user's stderr (it is raised by :func:`compute`).
* :mod:`.config` — daskglm's durations and sizes in dask's config, read and
  checked in one place.
* :mod:`.plan` — pure arithmetic: chunk sizes and reads per task from the
  data size and a memory budget.
* :mod:`.compat` — distributed's, multiprocessing's and glibc's internals: worker
  processes that never import the user's ``__main__``, a process's freed heap
  given back to the system.
"""

from .cluster import (
    LOCAL_SCHEDULERS,
    ClusterLostError,
    NoWorkersError,
    SchedulerLostError,
    compute,
    connect_timeout,
    get_client,
    is_transient,
    n_workers_from_n_jobs,
    no_workers_timeout,
    phase,
    task_retries,
    verbosity,
    wait_first,
)

__all__ = ["LOCAL_SCHEDULERS", "ClusterLostError", "NoWorkersError", "SchedulerLostError", "compute", "connect_timeout",
           "get_client", "is_transient", "n_workers_from_n_jobs", "no_workers_timeout", "phase", "task_retries",
           "verbosity", "wait_first"]

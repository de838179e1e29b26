"""Where units of work run: joblib's backend for an execution setting, and threads per worker.

One copy for every layer that spreads work (the sweep's heads, fine-tuning of nested
sets and baselines). Takes any object with ``n_jobs``, ``backend`` and ``scheduler``
(:class:`workbench.search.options.Execution`), so this bottom layer imports no other.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

import joblib

__all__ = ["ExecutionLike", "call_in_worker", "in_this_process", "parallel_backend", "threads_per_worker",
           "unordered", "worker_threads", "workers"]

T = TypeVar("T")


class ExecutionLike(Protocol):
    """What :func:`parallel_backend` reads of an execution setting."""

    n_jobs: int
    backend: str
    scheduler: str | None


def workers(execution: ExecutionLike) -> int:
    """How many units run at once on this machine (joblib's count: ``-1`` every core,
    ``-2`` all but one); 1 for the sequential backend."""
    if execution.backend == "sequential":
        return 1
    n = execution.n_jobs
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + n if n < 0 else n)


def threads_per_worker(n_workers: int) -> int:
    """Threads each of ``n_workers`` concurrent units may use so together they do not
    oversubscribe the machine's cores: ``max(1, cores // n_workers)``."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def worker_threads(execution: ExecutionLike) -> int | None:
    """Torch threads for each of ``execution``'s workers on this machine
    (:func:`threads_per_worker`); ``None`` on a remote Dask cluster, whose workers keep
    their own settings."""
    if execution.backend == "dask" and execution.scheduler not in (None, "local"):
        return None
    return threads_per_worker(workers(execution))


def call_in_worker(threads: int | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` as a unit of work: torch held to ``threads`` threads (None:
    as it is) and joblib kept sequential inside, since in a Dask worker joblib's default
    backend is Dask again and a unit's own ``Parallel`` would become cluster tasks."""
    if threads is not None:
        import torch  # only fine-tuning units set threads, and they run torch anyway

        torch.set_num_threads(threads)
    with joblib.parallel_config(backend="threading", n_jobs=1):
        return fn(*args, **kwargs)


@contextmanager
def parallel_backend(execution: ExecutionLike) -> Iterator[int]:
    """joblib's parallel configuration for ``execution``; yields the n_jobs to use.

    ``dask`` with no scheduler (or ``"local"``) starts a local cluster of ``n_jobs``
    single-threaded worker processes for the duration; an address connects to it.
    """
    if execution.backend != "dask":
        backend = execution.backend if execution.backend != "sequential" else "loky"
        with joblib.parallel_config(backend=backend):
            yield 1 if execution.backend == "sequential" else execution.n_jobs
        return
    from distributed import Client, LocalCluster  # optional: only a Dask run needs it

    with ExitStack() as stack_:
        if execution.scheduler in (None, "local"):
            n_jobs = execution.n_jobs
            cluster = stack_.enter_context(LocalCluster(
                n_workers=max(n_jobs if n_jobs > 0 else os.cpu_count() or 1, 1), threads_per_worker=1,
                processes=True, dashboard_address=":0"))
            stack_.enter_context(Client(cluster))
        else:
            stack_.enter_context(Client(execution.scheduler))
        stack_.enter_context(joblib.parallel_config(backend="dask"))
        yield -1


def in_this_process(execution: ExecutionLike | None) -> bool:
    """Whether units run one after the other in this process: no execution setting, or a
    single local worker (a Dask cluster always gets the work, whatever its size)."""
    return execution is None or (workers(execution) == 1 and execution.backend != "dask")


def unordered(execution: ExecutionLike, fn: Callable[..., T], units: Iterable[tuple]) -> Iterator[T]:
    """``fn(*unit)`` for every unit on ``execution``'s workers (torch held to
    :func:`worker_threads` each), yielded as each finishes, so the caller can record it
    at once and a killed run keeps what was done."""
    threads = worker_threads(execution)
    calls = (joblib.delayed(call_in_worker)(threads, fn, *unit) for unit in units)
    with parallel_backend(execution) as jobs:
        yield from joblib.Parallel(n_jobs=jobs, return_as="generator_unordered")(calls)

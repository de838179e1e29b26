"""Where units of work run: joblib's backend for an execution setting, and threads per worker.

One copy for every layer that spreads work (the sweep's heads, fine-tuning of nested
sets and baselines, extraction chunks, Grad-CAM chunks); on Dask, units that run on a
GPU ask for the worker resource :data:`GPU`. Takes any object with ``n_jobs``, ``backend`` and ``scheduler``
(:class:`workbench.search.options.Execution`), so this bottom layer imports no other.
"""
from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, TypeVar

import joblib

__all__ = ["ExecutionLike", "GPU", "call_in_worker", "gpu_resources", "in_this_process", "parallel_backend",
           "shared_cluster", "threads_per_worker", "unordered", "whole_batches", "worker_threads", "workers"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: The Dask worker resource a unit that runs on a GPU asks for: workers started with
#: ``dask worker ADDR --nthreads 1 --resources GPU=1`` (one per GPU) take such units,
#: one at a time each.
GPU = "GPU"


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


#: Addresses of the local clusters :func:`shared_cluster` holds open (innermost last).
_SHARED: list[str] = []


def _gpu_devices() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (none
    without torch or CUDA)."""
    try:
        import torch  # only asked when a local Dask cluster starts
    except ImportError:
        return []
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:n] if visible else [str(i) for i in range(n)]


def _local_cluster(execution: ExecutionLike) -> Any:
    """A local cluster of ``n_jobs`` (every core: ``-1``) single-threaded worker processes.

    On a machine with GPUs, the first worker per GPU offers :data:`GPU` and sees only its
    own device (``CUDA_VISIBLE_DEVICES``), so GPU units run one at a time per GPU, as on
    a cluster started by hand; the other workers see no GPU and take the CPU units.
    """
    from distributed import LocalCluster  # optional: only a Dask run needs it

    n_jobs = execution.n_jobs
    n = max(n_jobs if n_jobs > 0 else os.cpu_count() or 1, 1)
    devices = _gpu_devices()[:n]
    if not devices:
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
    from distributed import Nanny, Scheduler, SpecCluster

    spec = {}
    for i in range(n):
        gpu = i < len(devices)
        options = {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": devices[i] if gpu else ""}}
        if gpu:
            options["resources"] = {GPU: 1}
        spec[f"gpu-{devices[i]}" if gpu else f"cpu-{i}"] = {"cls": Nanny, "options": options}
    logger.info(f"local Dask cluster: {len(devices)} GPU worker(s) ({', '.join(devices)}), {n - len(devices)} CPU")
    return SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})


@contextmanager
def shared_cluster(execution: ExecutionLike | None) -> Iterator[None]:
    """Inside the block, every :func:`parallel_backend` of a local Dask execution
    (``scheduler`` ``None`` or ``"local"``) uses one local cluster, started here, instead
    of starting its own (``workbench run``: one cluster for every stage). Anything else:
    nothing is started."""
    if execution is None or execution.backend != "dask" or execution.scheduler not in (None, "local"):
        yield
        return
    with _local_cluster(execution) as cluster:
        _SHARED.append(cluster.scheduler_address)
        try:
            yield
        finally:
            _SHARED.pop()


@contextmanager
def parallel_backend(execution: ExecutionLike) -> Iterator[int]:
    """joblib's parallel configuration for ``execution``; yields the n_jobs to use.

    ``dask`` with no scheduler (or ``"local"``) starts a local cluster of ``n_jobs``
    single-threaded worker processes for the duration (or uses the one
    :func:`shared_cluster` holds open); an address connects to it.
    """
    if execution.backend != "dask":
        backend = execution.backend if execution.backend != "sequential" else "loky"
        with joblib.parallel_config(backend=backend):
            yield 1 if execution.backend == "sequential" else execution.n_jobs
        return
    from distributed import Client  # optional: only a Dask run needs it

    with ExitStack() as stack_:
        if execution.scheduler in (None, "local") and _SHARED:
            stack_.enter_context(Client(_SHARED[-1]))  # the one :func:`shared_cluster` holds open
        elif execution.scheduler in (None, "local"):
            stack_.enter_context(Client(stack_.enter_context(_local_cluster(execution))))
        else:
            stack_.enter_context(Client(execution.scheduler))
        stack_.enter_context(joblib.parallel_config(backend="dask"))
        yield -1


def in_this_process(execution: ExecutionLike | None) -> bool:
    """Whether units run one after the other in this process: no execution setting, or a
    single local worker (a Dask cluster always gets the work, whatever its size)."""
    return execution is None or (workers(execution) == 1 and execution.backend != "dask")


def whole_batches(chunk_size: int, batch_size: int, what: str = "rows") -> int:
    """``chunk_size`` rounded up to whole batches of ``batch_size``: a chunk of work then
    holds the batches a local run holds, so a network's outputs are the same bit for bit
    (they may vary in the last bits with what else is in a batch).

    Raises
    ------
    ConfigError
        ``chunk_size`` is not a positive integer (named, with ``what`` it counts).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        from workbench.errors import ConfigError  # the bottom layer's errors, imported when needed

        raise ConfigError(f"chunk_size = {chunk_size!r}: expected a positive number of {what}")
    return -(-chunk_size // batch_size) * batch_size


def gpu_resources(device: str | None) -> dict[str, float] | None:
    """The Dask worker resources of a unit that runs torch on ``device``: ``{"GPU": 1}``
    for ``cuda``/``cuda:N`` and for ``None``/``"auto"`` (the GPU when there is one),
    ``None`` for the CPU (any worker may take it)."""
    if device is None or device == "auto" or str(device).startswith("cuda"):
        return {GPU: 1}
    return None


def _offered(client: Any, resources: Mapping[str, float]) -> dict[str, float] | None:
    """``resources`` if some worker of ``client``'s cluster offers all of them, else
    ``None``: a cluster with no ``--resources GPU=1`` worker (a local one, CPU nodes)
    runs the units anywhere instead of holding them forever."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer distributed lists only a few workers by default
    except TypeError:
        info = client.scheduler_info()
    for worker in info.get("workers", {}).values():
        have = worker.get("resources") or {}
        if all(have.get(k, 0) >= v for k, v in resources.items()):
            return dict(resources)
    logger.info(f"no worker of the cluster offers {dict(resources)}; its units run on any worker "
                f"(start GPU workers with `dask worker ADDR --nthreads 1 --resources GPU=1`)")
    return None


def _dask_unordered(execution: ExecutionLike, fn: Callable[..., T], units: Iterable[tuple],
                    resources: Mapping[str, float]) -> Iterator[T]:
    """:func:`unordered` on Dask with worker resources: ``Client.submit`` per unit, since
    joblib's Dask backend passes no resources. A unit whose worker dies is run again on
    another (the scheduler's ``distributed.scheduler.allowed-failures`` times)."""
    threads = worker_threads(execution)
    with parallel_backend(execution):
        from distributed import as_completed, get_client

        client = get_client()
        wanted = _offered(client, resources)
        futures = [client.submit(call_in_worker, threads, fn, *unit, resources=wanted, pure=False) for unit in units]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            # A caller that stops early (an error, a closed generator) leaves no work queued.
            client.cancel(futures)


def unordered(execution: ExecutionLike, fn: Callable[..., T], units: Iterable[tuple], *,
              resources: Mapping[str, float] | None = None) -> Iterator[T]:
    """``fn(*unit)`` for every unit on ``execution``'s workers (torch held to
    :func:`worker_threads` each), yielded as each finishes, so the caller can record it
    at once and a killed run keeps what was done.

    ``resources`` (e.g. :func:`gpu_resources`): on Dask, only workers offering them take
    the units (``dask worker --resources GPU=1``), each running as many at once as its
    resources allow; ignored by the other backends and on a cluster where no worker
    offers them.
    """
    if resources and execution.backend == "dask":
        yield from _dask_unordered(execution, fn, units, resources)
        return
    threads = worker_threads(execution)
    calls = (joblib.delayed(call_in_worker)(threads, fn, *unit) for unit in units)
    with parallel_backend(execution) as jobs:
        yield from joblib.Parallel(n_jobs=jobs, return_as="generator_unordered")(calls)

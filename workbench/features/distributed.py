"""Extraction spread over workers: the manifest in chunks of rows, each extracted into the shared cache.

The feature cache is content-addressed and safe for concurrent writers, so every worker
writes the rows of its chunk into the same cache folder (on a shared file system, at the
same path on every node). One local :func:`~workbench.features.extraction.extract` then
finds every row cached and returns the aligned :class:`FeatureSet`, computing nothing;
the features are the ones a local run writes, bit for bit on the same device type.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from typing import Any, Sequence

from workbench.backbones.finetuned import resolved_root, using_root
from workbench.core.parallel import ExecutionLike, gpu_resources, unordered, whole_batches
from workbench.data.manifest import Manifest
from workbench.errors import WorkbenchError
from workbench.features.cache import FeatureCache
from workbench.features.extraction import _validated, extract
from workbench.features.featureset import FeatureSet
from workbench.features.options import ExtractOptions
from workbench.features.request import FeatureRequest

__all__ = ["DEFAULT_CHUNK_SIZE", "DistributedExtractError", "extract_on"]

logger = logging.getLogger(__name__)

#: Rows per task: large enough that loading the models is a small share of a task,
#: small enough that a retried task repeats little.
DEFAULT_CHUNK_SIZE = 256


class DistributedExtractError(WorkbenchError, RuntimeError):
    """The assembly after the workers' extraction found rows still missing."""


def _extract_chunk(manifest: Manifest, features: Sequence[str | FeatureRequest], cache_root: str,
                   options: ExtractOptions, classes: Sequence[str] | None,
                   finetuned_root: str | None = None) -> dict[str, Any]:
    """One task: extract ``manifest``'s rows into the cache; return what its record says.

    ``finetuned_root``: the caller's fine-tuned store, where ``@ft-`` weights resolve (a
    worker keeps the environment it started with)."""
    if multiprocessing.current_process().daemon and options.num_workers != 0:
        # A daemonic process (a Dask worker, unless started with DASK_DISTRIBUTED__WORKER__DAEMON=False)
        # cannot start loader processes; decoding here instead changes no number.
        options = dataclasses.replace(options, num_workers=0)
    with using_root(finetuned_root):
        rec = extract(manifest, features, cache=cache_root, options=options, classes=classes,
                      progress=False).record
    try:
        from distributed import get_worker

        where = get_worker().address
    except (ImportError, ValueError):  # not in a Dask worker (loky, threads)
        where = f"pid {os.getpid()}"
    return {"computed_rows": rec["computed_rows"], "forward_images": rec["forward_images"],
            "device": rec["settings"]["device"], "precision": rec["settings"]["precision"],
            "n_images": rec["n_images"], "worker": where}


def _distinct_rows(manifest: Manifest, options: ExtractOptions) -> list[str]:
    """Ids of the rows a local pass computes, in its order: the first of each distinct
    image (content hash; with manual boxes, hash and box, as the rows' cache keys)."""
    manual_box = options.input == "box" and options.box_source is None
    seen: set = set()
    ids = []
    for it in manifest:
        key = (it.sha256, tuple(it.box) if manual_box and it.box is not None else None)
        if key not in seen:
            seen.add(key)
            ids.append(it.id)
    return ids


def extract_on(
    execution: ExecutionLike | None,
    manifest: Manifest | str | os.PathLike,
    features: Sequence[str | FeatureRequest],
    *,
    cache: FeatureCache | str | os.PathLike = "features_cache",
    options: ExtractOptions | None = None,
    classes: Sequence[str] | None = None,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FeatureSet:
    """:func:`~workbench.features.extraction.extract` on ``execution``'s workers.

    The manifest is validated once here (content hashes), split into chunks of
    ``chunk_size`` rows (rounded up to whole batches), and each chunk extracted by one task into the shared cache (a
    task that runs on a GPU asks for the Dask resource ``GPU``); then the aligned
    features are read back here. Without a Dask execution this is just :func:`extract`
    (locally torch's threads already use every core). Nested fine-tuned requests work as there (each task expands them).

    The run record counts the rows the tasks computed (``computed_rows``,
    ``forward_images``) and adds ``distributed``: chunks, workers, and the rows the
    assembly computed (0).

    Raises
    ------
    DistributedExtractError
        When the assembly would compute rows (the cache is not shared by the workers and
        this machine, e.g. not at the same path).
    ConfigError
        ``chunk_size`` below 1.
    """
    options = options if options is not None else ExtractOptions()
    chunk_size = whole_batches(chunk_size, options.batch_size)  # a bad value fails before any work
    # Only a Dask cluster gets chunks. On this machine torch's threads already use every
    # core, so local worker processes would only load every network once more each (and
    # threads would build seeded random networks concurrently from torch's one global
    # generator: other weights under the same cache key).
    if execution is None or execution.backend != "dask":
        return extract(manifest, features, cache=cache, options=options, classes=classes, progress=progress)
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    cache.check()
    # Validated once, here: every task then finds the images' hashes in the cache's memo.
    validated = _validated(manifest, cache, options, classes, progress)
    # Whole batches of distinct images per chunk: a batch's rows then are a local run's
    # (which computes a byte-identical copy once, at its first row). The assembly below
    # reads every row, copies included.
    ids = _distinct_rows(validated, options)
    chunks = [validated.subset(ids[i:i + chunk_size]) for i in range(0, len(ids), chunk_size)]
    root = str(cache.root.resolve())
    logger.info(f"extraction: {len(ids)} images in {len(chunks)} chunk(s) of up to {chunk_size} on Dask workers")
    finetuned = str(resolved_root())
    units = ((chunk, list(features), root, options, classes, finetuned) for chunk in chunks)
    done = list(unordered(execution, _extract_chunk, units, resources=gpu_resources(options.device)))
    precisions = sorted({d["precision"] for d in done})
    if len(precisions) > 1:
        raise DistributedExtractError(f"the workers extracted at different precisions {precisions} "
                                      f"(GPU and CPU workers with precision 'auto'); set the precision "
                                      f"or the device explicitly")
    # The workers' precision, not this machine's: 'auto' on a GPU worker is bf16, and
    # the assembly must find the entries they wrote (the key holds the precision).
    local = dataclasses.replace(options, precision=precisions[0]) if precisions else options
    if local.device is None or local.device == "auto" or str(local.device).startswith("cuda"):
        local = dataclasses.replace(local, device="cpu")  # reads only: no GPU needed here
    fs = extract(validated, features, cache=cache, options=local, classes=classes, progress=False)
    rec = fs.record
    assembled = sum(rec["computed_rows"].values())
    if assembled:
        raise DistributedExtractError(
            f"after the workers' extraction, {assembled} row(s) were still missing from the cache "
            f"{cache.root.resolve()}: do the workers write to this folder (a shared file system, the same path "
            f"on every node)? computed here: {rec['computed_rows']}")
    rec["computed_rows"] = {k: sum(d["computed_rows"].get(k, 0) for d in done) for k in rec["computed_rows"]}
    rec["forward_images"] = {k: sum(d["forward_images"].get(k, 0) for d in done) for k in rec["forward_images"]}
    rec["settings"]["device"] = ",".join(sorted({d["device"] for d in done}))
    rec["distributed"] = {"backend": execution.backend, "scheduler": execution.scheduler, "chunks": len(chunks),
                          "chunk_size": chunk_size, "workers": sorted({d["worker"] for d in done}),
                          "assembly_computed_rows": assembled}
    return fs

"""Dask overhead: the same extraction on this process and on a LocalCluster (issue 17).

Extracts ``--features`` for the first ``--n`` BUSI images twice, each into a fresh feature
cache (a pixel store filled beforehand, so neither run decodes): once with plain
``extract`` (torch using ``--threads`` threads here) and once with ``extract_on`` on a
local Dask cluster of ``--workers`` single-threaded worker processes (chunks of
``--chunk-size`` rows). Prints both wall times (cluster start included and apart), and
checks that the features are bit-identical.

    OMP_NUM_THREADS=2 python benchmarks/bench_dask_overhead.py --n 192 --workers 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench.data import Manifest, decode_image
from workbench.data.pixels import PixelStore
from workbench.features import ExtractOptions, extract
from workbench.features.distributed import extract_on
from workbench.search.options import Execution

HERE = Path(__file__).resolve().parent


def _cache_with(pixels: Path) -> Path:
    tmp = Path(tempfile.mkdtemp())
    os.symlink(pixels, tmp / "pixels")  # the cache's store is <cache>/pixels
    return tmp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busi", type=Path, default=HERE.parent.parent / "shared" / "data" / "busi")
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--features", nargs="*", default=["tf_efficientnet_lite0:avgpool", "resnet18@random:avgpool"])
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=64)
    args = ap.parse_args()

    full = Manifest.load(args.busi / "labels.csv")
    sub = full.subset(full.ids[: args.n]).validate(progress=False)
    pixels = Path(tempfile.mkdtemp()) / "pixels"
    store = PixelStore(pixels)
    for it in sub:
        store.get(it, decode=decode_image)
    opts = ExtractOptions(batch_size=args.batch, image_size=args.image_size, device="cpu", num_workers=0)

    t0 = time.perf_counter()
    local = extract(sub, args.features, cache=_cache_with(pixels), options=opts, progress=False)
    t_local = time.perf_counter() - t0

    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        execution = Execution(n_jobs=args.workers, backend="dask", scheduler=c.scheduler_address)
        with Client(c):
            spread = extract_on(execution, sub, args.features, cache=_cache_with(pixels), options=opts,
                                progress=False, chunk_size=args.chunk_size)
        t_dask = time.perf_counter() - t1
    same = all(np.array_equal(local[n], spread[n]) for n in local.names)
    for n in local.names:
        diff = np.abs(local[n].astype(np.float64) - spread[n])
        rows = np.flatnonzero(diff.max(axis=1) > 0)
        print(f"{n}: max abs difference {diff.max():.3g} (largest value {np.abs(local[n]).max():.3g}), "
              f"{rows.size} of {len(rows) if False else local[n].shape[0]} rows differ"
              + (f", first {[local.ids[i] for i in rows[:3]]}" if rows.size else ""))
    print(f"| images | features | local ({torch.get_num_threads()} threads) s | Dask cluster start s | "
          f"Dask ({args.workers} workers x 1 thread, chunks of {spread.record['distributed']['chunk_size']}) s | "
          f"chunks | bit-identical |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    print(f"| {len(sub)} | {', '.join(args.features)} | {t_local:.1f} | {t_start:.1f} | {t_dask:.1f} | "
          f"{spread.record['distributed']['chunks']} | {'yes' if same else 'NO'} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

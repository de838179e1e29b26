"""Large n in the sweep (issue 17.5): estimated vs measured peak memory of an SVM unit.

For each ``--n-train``, one outer fold of a sweep unit on synthetic float32 features
(three blocks of ``--dims``, n_eval = n_train / 4, 3 inner folds):

* fast path: :class:`~workbench.heads.kernels.BlockKernels` over the three blocks and
  :func:`~workbench.heads.kernels.kernel_subset_scores` over all 7 subsets with an RBF
  grid of three gamma factors (the memory-heaviest case), against
  :func:`~workbench.heads.kernels.kernel_unit_bytes`;
* plain refit: :class:`~workbench.heads.tuned.TunedHead` on the concatenation of the
  three blocks (one grid point), against :func:`~workbench.heads.kernels.plain_fit_bytes`.

Measured: tracemalloc's peak (numpy's arrays; libsvm's own kernel cache is malloc'd in
C++ and not traced, so it is compared against the estimate less that cache) and the
growth of the process's peak RSS over its RSS before the unit (everything, the cache
and the allocator's slack included). Each n runs in a fresh process, so peak RSS is its
own. Then the model's projection: the fast path's need for six blocks and the default
grid, and the largest n_train a 24 GB machine's default budget (80 %) holds, on the
estimate and on what the sweep plans with (the estimate times ``RSS_MARGIN``).

Usage::

    python benchmarks/bench_large_n.py [--n-train 500 1000 2000] [--dims 1280 2048 4096]
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.evaluation.splits import make_folds
from workbench.heads.kernels import (
    SVC_CACHE_MB,
    BlockKernels,
    kernel_subset_scores,
    kernel_unit_bytes,
    plain_fit_bytes,
)
from workbench.heads.tuned import TunedHead
from workbench.search.running import RSS_MARGIN

GRID = {"C": [1.0], "gamma_factor": [0.3, 1.0, 3.0]}
MiB = 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class _RssPeak:
    """The largest RSS seen while in the block, sampled every 2 ms (ru_maxrss would keep
    the data generation's own high-water mark)."""

    def __enter__(self):
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        return False


def _data(n_train: int, dims: list[int], seed: int = 0):
    n = n_train + n_train // 4
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    latent = np.eye(2)[y] @ rng.normal(size=(2, 8)) + rng.normal(size=(n, 8))
    blocks = [(latent @ rng.normal(size=(8, d)) * 0.3 + rng.normal(size=(n, d))).astype(np.float32) for d in dims]
    return blocks, y


def one(mode: str, n_train: int, dims: list[int]) -> dict:
    """One unit in this process: its estimate, tracemalloc peak, RSS growth, seconds."""
    blocks, y = _data(n_train, dims)
    train, evaluate = np.arange(n_train), np.arange(n_train, len(y))
    inner = make_folds(y[train], 3, 0)
    fits = [len(tr) for tr, _ in inner]
    rss0, t0 = _rss(), time.perf_counter()
    tracemalloc.start()
    with threadpool_limits(1), _RssPeak() as rss:
        if mode == "fast":
            kernels = BlockKernels(blocks, "rbf", train, evaluate, inner)
            subsets = [s for k in (1, 2, 3) for s in itertools.combinations(range(len(dims)), k)]
            kernel_subset_scores(kernels, subsets, "svm-rbf", y, 2, grid=GRID)
            est = kernel_unit_bytes(n_train, len(evaluate), dims, inner_folds=fits, gamma_factors=3)
            cache = min(SVC_CACHE_MB * MiB, 4 * max(fits) ** 2)
        else:
            X = np.concatenate(blocks, axis=1)
            head = TunedHead("svm-rbf", grid={"C": [1.0]}, inner_splits=3, random_state=0).fit(X[train], y[train])
            head.predict_proba(X[evaluate])
            est = plain_fit_bytes(len(y), n_train, sum(dims))
            cache = min(SVC_CACHE_MB * MiB, 4 * n_train ** 2)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"mode": mode, "n_train": n_train, "estimate": est, "cache": cache, "traced": traced,
            "rss_growth": rss.peak - rss0, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--dims", type=int, nargs="+", default=[1280, 2048, 4096])
    ap.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.dims)))
        return
    print(f"# {platform.node()}: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}; blocks {args.dims} float32, 3 inner folds, n_eval = n_train / 4")
    print("| path | n_train | estimate MiB | traced peak MiB (vs estimate less libsvm cache) | peak RSS growth MiB "
          "(vs estimate) | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in ("fast", "plain"):
        for n in args.n_train:
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(n), "--dims", *map(str, args.dims)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            e = r["estimate"]
            print(f"| {mode} | {n} | {e / MiB:.1f} | {r['traced'] / MiB:.1f} ({r['traced'] / (e - r['cache']):.3f}) "
                  f"| {r['rss_growth'] / MiB:.1f} ({r['rss_growth'] / e:.3f}) | {r['seconds']:.1f} |", flush=True)
    six = [1280, 1280, 1536, 2048, 4096, 4096]  # Lite0, Lite1, Lite2-ish, ResNet-50, VGG-16 fc7, AlexNet fc7
    print("\nProjection (kernel_unit_bytes, six blocks, default svm-rbf grid: 3 gamma factors, n_eval = n_train / 4):")
    for n in (5_000, 10_000, 12_000, 20_000):
        print(f"  n_train = {n:>6}: fast path {kernel_unit_bytes(n, n // 4, six, gamma_factors=3) / 1e9:5.1f} GB "
              f"per (head, fold) unit; plain refit of all six {plain_fit_bytes(n + n // 4, n, sum(six)) / 1e9:5.1f} GB")
    budget = 0.8 * 24e9
    for margin in (1.0, RSS_MARGIN):
        fits = max(n for n in range(1000, 40_000, 100)
                   if margin * kernel_unit_bytes(n, n // 4, six, gamma_factors=3) <= budget)
        print(f"  largest n_train whose six-block unit fits 80 % of 24 GB at {margin:g}x the estimate: {fits}")


if __name__ == "__main__":
    main()

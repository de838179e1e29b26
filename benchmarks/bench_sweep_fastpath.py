"""SVM sweep fast path vs plain scikit-learn refits (issue: heads and sweep).

The full 63-subset, 5-fold RBF-SVM sweep on six feature blocks of 2048-4096 dims, at
each ``--n``: every non-empty subset of the blocks, on every outer fold, gets a nested
grid search (inner CV), a refit on the fold's training rows and Platt calibration on
the inner out-of-fold scores, then decision values on the fold's held-out rows.

* fast path: per outer fold, :class:`~workbench.heads.kernels.BlockKernels` (each
  block's squared-distance matrix once per fit) and
  :func:`~workbench.heads.kernels.kernel_subset_scores` over all 63 subsets;
* plain path: :class:`~workbench.heads.tuned.TunedHead` (same head, grid, inner folds)
  fitted on the concatenated blocks of the fold's training rows, its raw SVM decision
  values (``scores``) on its held-out rows.

Goal: >= 100x faster with 100 % identical decisions. Reported: seconds of each path,
speed-up, share of identical chosen grid points, share of identical predicted labels
over all held-out predictions (sign of the decision value, and argmax of the calibrated
probabilities, i.e. ``predict``), the largest decision-value difference, the float64
kernel matrices' size and the peak RSS.

The data are synthetic, float32, binary: a rank-8 latent factor whose mean depends on
the class, seen through a random projection in every block with a per-block strength
(one block is pure noise), plus unit Gaussian noise -- so subsets differ and the SVM is
neither trivial nor hopeless.

The fast path always runs in full. The plain path runs every subset unless
``--plain-sample K`` (one value per ``--n``, 0 = all) limits it to K subsets chosen
deterministically to cover every subset size (sizes 1..6, spread evenly within a size);
its total is then extrapolated per subset size, scaled by width (the sampled subsets of a
size give seconds per feature dimension; times the summed dims of all subsets of that
size) and marked as such. Predictions are
compared on the subsets that ran on both paths.

Both paths run on one thread (``threadpoolctl``: BLAS limited to 1) unless
``--threads`` says otherwise: libsvm is single-threaded, so this compares like with like
(one worker of a sweep's process pool).

Usage::

    python benchmarks/bench_sweep_fastpath.py --n 600 2000 [--plain-sample K [K ...]] [--seed 0] [--write]
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.heads.kernels import BlockKernels, kernel_subset_scores
from workbench.heads.nested import calibrated_proba
from workbench.heads.tuned import TunedHead
from workbench.evaluation.splits import make_folds

HERE = Path(__file__).resolve().parent
DIMS = (4096, 4096, 2048, 2048, 2048, 4096)
#: Per-block strength of the class-bearing latent factor (block 4 is noise only).
STRENGTH = (0.05, 0.035, 0.06, 0.03, 0.0, 0.045)
RANK = 8
HEAD = "svm-rbf"
SMALL_GRID = {"C": [1.0], "gamma_factor": [1.0]}


def make_data(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    direction = rng.normal(size=RANK)
    direction /= np.linalg.norm(direction)
    latent = (np.where(y == 1, 1.0, -1.0)[:, None] * direction * 0.9 + rng.normal(size=(n, RANK)))
    blocks = []
    for d, s in zip(DIMS, STRENGTH):
        X = rng.standard_normal((n, d), dtype=np.float32)
        if s:
            X += (latent @ (rng.normal(size=(RANK, d)) * s * np.sqrt(d / RANK))).astype(np.float32)
        blocks.append(X)
    return blocks, y


def all_subsets(k: int) -> list[tuple[int, ...]]:
    return [c for size in range(1, k + 1) for c in itertools.combinations(range(k), size)]


def plain_sample(subsets: list[tuple[int, ...]], k: int) -> list[tuple[int, ...]]:
    """``k`` subsets (all when k <= 0 or k >= len): at least one per size, the rest
    spread over sizes in proportion to their counts, evenly spaced within a size."""
    if k <= 0 or k >= len(subsets):
        return list(subsets)
    sizes = sorted({len(s) for s in subsets})
    by_size = {z: [s for s in subsets if len(s) == z] for z in sizes}
    if k < len(sizes):
        raise SystemExit(f"--plain-sample {k}: need at least {len(sizes)} to cover every subset size")
    take = {z: 1 for z in sizes}
    while sum(take.values()) < k:  # give the next one to the size most under-sampled
        z = max((z for z in sizes if take[z] < len(by_size[z])),
                key=lambda z: (len(by_size[z]) / take[z], -z))
        take[z] += 1
    out = []
    for z in sizes:
        pool = by_size[z]
        idx = np.unique(np.round(np.linspace(0, len(pool) - 1, take[z] + 2)[1:-1]).astype(int)) \
            if take[z] < len(pool) else np.arange(len(pool))
        out += [pool[i] for i in idx]
    return sorted(out, key=subsets.index)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_n(n: int, seed: int, inner_splits: int, grid: dict, sample: int) -> dict:
    t0 = time.perf_counter()
    blocks, y = make_data(n, seed)
    print(f"n={n}: data {time.perf_counter() - t0:.1f} s, {sum(b.nbytes for b in blocks) / 2**20:.0f} MiB", flush=True)
    subsets = all_subsets(len(blocks))
    outer = make_folds(y, 5, seed)
    n_classes = 2

    # ---- fast path: always all 63 subsets on every outer fold -----------------------
    fast_d = np.zeros((len(subsets), n))
    fast_label = np.zeros((len(subsets), n), dtype=int)  # argmax of calibrated proba
    fast_best = {}  # (subset index, outer fold) -> chosen grid point
    fast_fit_s = np.zeros(len(subsets))  # per subset: its SVC fits, summed over folds
    t_kernels = 0.0
    mat_bytes = 0
    for k, (tr, ev) in enumerate(outer):
        t0 = time.perf_counter()
        bk = BlockKernels(blocks, "rbf", tr, ev, make_folds(y[tr], inner_splits, seed))
        t_kernels += time.perf_counter() - t0
        mat_bytes = max(mat_bytes, sum(m.nbytes for p in [*bk.inner, bk.final] for m in p.mats))
        for i, subset in enumerate(subsets):
            t0 = time.perf_counter()
            (r,) = kernel_subset_scores(bk, [subset], HEAD, y, n_classes, grid=grid)
            fast_fit_s[i] += time.perf_counter() - t0
            fast_d[i, ev] = r.scores[:, 1]
            fast_label[i, ev] = r.proba.argmax(axis=1)
            fast_best[i, k] = r.search.best_params
        del bk
    t_fast = t_kernels + fast_fit_s.sum()
    rss_fast = peak_rss_mb()
    print(f"  fast path, all {len(subsets)} subsets: {t_fast:.1f} s (kernels {t_kernels:.1f} s, "
          f"SVC fits {fast_fit_s.sum():.1f} s); float64 block matrices {mat_bytes / 2**20:.0f} MiB "
          f"per outer fold; peak RSS {rss_fast:.0f} MiB", flush=True)

    # ---- plain path: TunedHead on the concatenated blocks --------------------------
    chosen = plain_sample(subsets, sample)
    plain_s = {}
    plain_d = np.zeros((len(chosen), n))
    plain_label = np.zeros((len(chosen), n), dtype=int)
    same_best = 0
    for j, subset in enumerate(chosen):
        t = 0.0
        t0 = time.perf_counter()
        X = np.concatenate([blocks[b] for b in subset], axis=1)
        t += time.perf_counter() - t0
        for k, (tr, ev) in enumerate(outer):
            t0 = time.perf_counter()
            th = TunedHead(HEAD, grid=grid, inner_splits=inner_splits, random_state=seed).fit(X[tr], y[tr])
            d = th.scores(X[ev])  # raw SVM decision values, binary d as [-d, d]
            t += time.perf_counter() - t0
            same_best += th.best_params_ == fast_best[subsets.index(subset), k]
            plain_d[j, ev] = d[:, 1]
            # predict() without a second pass: argmax of the calibrated probabilities
            plain_label[j, ev] = th.classes_[calibrated_proba(th.calibrator_, d).argmax(axis=1)]
        plain_s[subset] = t
        del X
        i = subsets.index(subset)
        print(f"  plain {subset}: {t:.1f} s (fast path's SVC fits {fast_fit_s[i]:.2f} s) [{j + 1}/{len(chosen)}]",
              flush=True)
    rss_plain = peak_rss_mb()

    sizes = sorted({len(s) for s in subsets})
    count = {z: sum(len(s) == z for s in subsets) for z in sizes}
    dims = {s: sum(DIMS[b] for b in s) for s in subsets}
    # Extrapolation per subset size, scaled by width: the sampled subsets' seconds per
    # feature dimension, times the summed dims of all subsets of that size.
    rate = {z: sum(t for s, t in plain_s.items() if len(s) == z) / sum(dims[s] for s in plain_s if len(s) == z)
            for z in sizes}
    per_size = {z: rate[z] * sum(dims[s] for s in subsets if len(s) == z) / count[z] for z in sizes}
    full = len(chosen) == len(subsets)
    plain_total = sum(plain_s.values()) if full else sum(per_size[z] * count[z] for z in sizes)

    idx = [subsets.index(s) for s in chosen]
    fd = fast_d[idx]
    diff = np.abs(fd - plain_d)
    same_sign = (fd > 0) == (plain_d > 0)
    return {
        "n": n, "n_subsets": len(subsets), "n_plain": len(chosen), "full": full,
        "fast_s": t_fast, "kernels_s": t_kernels, "fits_s": float(fast_fit_s.sum()),
        "plain_measured_s": sum(plain_s.values()), "plain_s": plain_total,
        "per_size": [(z, count[z], sum(len(s) == z for s in chosen), per_size[z],
                      float(np.mean([fast_fit_s[i] for i, s in enumerate(subsets) if len(s) == z])))
                     for z in sizes],
        "fast_sample_fits_s": float(fast_fit_s[idx].sum()),
        "same_best": same_best, "searches": len(chosen) * len(outer),
        "compared": int(diff.size), "same_sign": int(same_sign.sum()),
        "same_label": int((fast_label[idx] == plain_label).sum()),
        "max_abs_diff": float(diff.max()), "median_abs_diff": float(np.median(diff)),
        "flipped_abs_d": sorted(float(v) for v in np.abs(plain_d[~same_sign])),
        "mat_mib": mat_bytes / 2**20, "rss_fast_mib": rss_fast, "rss_plain_mib": rss_plain,
        "train_rows": max(len(tr) for tr, _ in outer),
    }


def table(results: list[dict]) -> list[str]:
    lines = [
        "| n | plain path: subsets run | fast path s (kernels + SVC fits) | plain path s | speed-up (goal >= 100x) "
        "| same chosen grid point | identical labels: decision sign / predict | max abs decision diff (median) "
        "| float64 matrices per outer fold | peak RSS after fast / after plain |",
        "| ---: | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        runs = f"all {r['n_subsets']} (measured)" if r["full"] else \
            f"{r['n_plain']} of {r['n_subsets']}, rest extrapolated per subset size"
        plain = f"{r['plain_s']:.0f}" if r["full"] else f"~{r['plain_s']:.0f} (measured {r['plain_measured_s']:.0f})"
        lines.append(
            f"| {r['n']} | {runs} | {r['fast_s']:.1f} ({r['kernels_s']:.1f} + {r['fits_s']:.1f}) | {plain} "
            f"| {'' if r['full'] else '~'}{r['plain_s'] / r['fast_s']:.0f}x "
            f"| {r['same_best']}/{r['searches']} | {r['same_sign']}/{r['compared']} ({100 * r['same_sign'] / r['compared']:.2f} %) / "
            f"{r['same_label']}/{r['compared']} ({100 * r['same_label'] / r['compared']:.2f} %) "
            f"| {r['max_abs_diff']:.1e} ({r['median_abs_diff']:.0e}) | {r['mat_mib']:.0f} MiB "
            f"| {r['rss_fast_mib']:.0f} / {r['rss_plain_mib']:.0f} MiB |")
    lines += ["", "| n | subset size | subsets | plain run on | plain s per subset (mean, 5 folds) "
                  "| fast SVC fits s per subset (mean, 5 folds) |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for z, cnt, ran, p, f in r["per_size"]:
            lines.append(f"| {r['n']} | {z} | {cnt} | {ran} | {p:.1f} | {f:.2f} |")
    flips = [f"n={r['n']}: {len(r['flipped_abs_d'])} sign flips, plain |d| = "
             + ", ".join(f"{v:.1e}" for v in r["flipped_abs_d"][:10]) for r in results if r["flipped_abs_d"]]
    if flips:
        lines += ["", *flips]
    return lines


def machine() -> str:
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import os

    import sklearn

    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}, numpy {np.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[600, 2000], help="images per run (default: 600 2000)")
    ap.add_argument("--plain-sample", type=int, nargs="+", default=[0], metavar="K",
                    help="subsets run on the plain path, one value per --n or one for all; 0 = all 63")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inner-splits", type=int, default=3)
    ap.add_argument("--grid", type=json.loads, default=SMALL_GRID,
                    help=f"JSON grid for both paths (default: {json.dumps(SMALL_GRID)})")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1; libsvm uses one)")
    ap.add_argument("--write", action="store_true", help="append results to benchmarks/RESULTS.md")
    args = ap.parse_args()
    samples = args.plain_sample * len(args.n) if len(args.plain_sample) == 1 else args.plain_sample
    if len(samples) != len(args.n):
        ap.error("--plain-sample takes one value, or one per --n")

    rss_start = peak_rss_mb()  # interpreter + imports (workbench pulls in torch)
    results = []
    with threadpool_limits(args.threads):
        for n, k in zip(args.n, samples):
            results.append(run_n(n, args.seed, args.inner_splits, args.grid, k))
    lines = table(results)
    lines += ["", f"Peak RSS is the process's (ru_maxrss), cumulative over the run; {rss_start:.0f} MiB "
                  "of it is the interpreter and imports, before any data."]
    print()
    print("\n".join(lines))
    if args.write:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=HERE).stdout.strip()
        cmd = "python benchmarks/bench_sweep_fastpath.py " + " ".join(sys.argv[1:])
        block = [f"\n## SVM sweep fast path vs plain refits ({time.strftime('%Y-%m-%d')}, commit {rev})", "",
                 f"Machine: {machine()}; BLAS threads: {args.threads}.", "",
                 f"Command: `{cmd}`", "",
                 f"Workload: six synthetic float32 blocks of {', '.join(map(str, DIMS))} dims (binary labels, "
                 f"shared rank-{RANK} class signal plus noise), all 63 non-empty subsets, 5 outer stratified "
                 f"folds, head `{HEAD}`, grid `{json.dumps(args.grid)}`, {args.inner_splits} inner folds "
                 "(inner CV runs even for a 1-point grid: calibration needs out-of-fold scores). "
                 "Fast path: `BlockKernels` per outer fold + `kernel_subset_scores`; plain path: "
                 "`TunedHead` fitted on the concatenated training rows, raw decision values (`scores`) on the held-out "
                 "rows. Seconds are wall-clock on one core.", "", *lines, ""]
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n".join(block))
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    sys.exit(main())

"""Model bundles: single-image latency per kind, `predict` vs `extract` throughput, server load.

    python benchmarks/bench_bundle.py --work /tmp/bench_bundle

Builds (or reuses) the small BUSI run of ``tests/_bundles.py`` (EfficientNet-Lite0 ImageNet
weights at 96 px; svm-rbf and rf heads, votes, a stack, the fine-tuned Lite0 baseline) and
its five bundles, then measures on this machine:

1. per bundle kind, the latency of one image (``predict_proba([path])``: read, decode,
   network, heads) and of one explanation, p50 / p95;
2. images/s of `workbench predict` (the svm-rbf bundle, no cache) on all of BUSI against
   `workbench extract` of the same block (Lite0 avgpool at 96 px, into an empty cache),
   both as a user runs them (one process each, wall time of the command);
3. the server under `load_test` (8 clients x 25 requests), with and without explanations.

Prints Markdown for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _pct(xs: list[float]) -> str:
    a = np.asarray(xs) * 1000
    return f"{np.percentile(a, 50):.0f} / {np.percentile(a, 95):.0f}"


def _command(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workbench.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/bench_bundle", help="working folder (the run and bundles are reused)")
    ap.add_argument("--repeats", type=int, default=20, help="single-image predictions per kind")
    ap.add_argument("--explains", type=int, default=5, help="explanations per kind")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    a = ap.parse_args()
    from _bundles import BUSI, KINDS, build_bundle_run

    from workbench.bundle import load_model
    from workbench.data.manifest import Manifest

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    br = build_bundle_run(work)
    print(f"# run and bundles ready in {time.perf_counter() - t0:.0f} s ({work})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}, "
          f"Python {platform.python_version()}\n")
    test = [it.path for it in Manifest.load(br.csv) if it.split == "test"]
    print("| bundle | kind | one image p50 / p95 (ms) | explanation p50 / p95 (ms) | method |")
    print("|---|---|---|---|---|")
    models = {}
    for kind in KINDS:
        m = load_model(br.bundles[kind])
        models[kind] = m
        m.predict_proba([test[0]])  # warm-up
        times = []
        for i in range(a.repeats):
            s = time.perf_counter()
            m.predict_proba([test[i % len(test)]])
            times.append(time.perf_counter() - s)
        ex, method = [], ""
        for i in range(a.explains):
            s = time.perf_counter()
            method = m.explain(test[i % len(test)]).method
            ex.append(time.perf_counter() - s)
        print(f"| {m.name} | {kind} | {_pct(times)} | {_pct(ex)} | {method} |")

    if not a.skip_throughput:
        all_csv = BUSI / "labels.csv"
        n = len(Manifest.load(all_csv))
        cache = work / "bench_cache"
        shutil.rmtree(cache, ignore_errors=True)
        t_extract = _command(["extract", "--manifest", str(all_csv), "--features", "tf_efficientnet_lite0:avgpool",
                              "--image-size", "96", "--cache", str(cache), "--quiet"])
        t_predict = _command(["predict", "--model", str(br.bundles["head"]), "--manifest", str(all_csv),
                              "--out", str(work / "preds.csv"), "--quiet"])
        print(f"\n`workbench predict` (svm-rbf bundle, no cache) vs `workbench extract` (same block, empty cache), "
              f"all {n} BUSI images:\n")
        print("| command | seconds | images/s |\n|---|---|---|")
        print(f"| extract | {t_extract:.1f} | {n / t_extract:.1f} |")
        print(f"| predict | {t_predict:.1f} | {n / t_predict:.1f} |")
        print(f"\npredict / extract throughput: **{t_extract / t_predict:.2f}** (goal >= 0.9)")

    if not a.skip_server:
        from workbench.serve import create_app, load_test, start_server

        data = Path(test[0]).read_bytes()
        print("\nServer, 8 clients x 25 requests on 127.0.0.1:\n")
        print("| bundle | explain | answered | p50 / p95 (ms) | requests/s |\n|---|---|---|---|---|")
        for kind in ("head", "vote-soft", "baseline"):
            url, stop = start_server(create_app(models[kind]))
            try:
                for explain in (False, True):
                    if explain and kind == "vote-soft":
                        continue  # occlusion: seconds per request, a load test of it measures the queue
                    r = load_test(url, data, clients=8, requests=25, explain=explain)
                    print(f"| {kind} | {explain} | {r['ok']}/{r['sent']} | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | "
                          f"{r['throughput_rps']:.1f} |")
            finally:
                stop()


if __name__ == "__main__":
    main()

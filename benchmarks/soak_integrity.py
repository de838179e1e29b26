"""Soak test of the feature cache's storage integrity (issue 12). Not a timed test.

Four parts, each against real ``workbench`` processes on a small BUSI subset with a
random-init ResNet-18 at a small input size:

1. **Killed extracts.** ``workbench extract`` is SIGKILLed at random moments, ``cache
   verify`` must stay clean after every kill (interrupted-write leftovers are warnings,
   not damage), and the run that finally completes must give the reference features.
2. **Killed sweeps.** The same with ``workbench sweep`` (fresh cache, so early kills land
   in its extraction and later ones in its heads); the completed run's results must
   equal an uninterrupted reference sweep.
3. **Concurrent writers.** Four extracts of the same manifest into one empty cache at
   once: all finish, ``verify`` is clean, features equal the reference, four distinct
   run records.
4. **Many shards, few descriptors.** An entry of 5 000 shards: ``cache verify``,
   ``cache ls``, a read of every row and ``cache gc --remove-corrupt --no-compact``
   under ``ulimit -n 256``; nothing reported, nothing removed, every row right.

Usage::

    python benchmarks/soak_integrity.py [--busi ../shared/data/busi] [--images 48] [--extract-kills 8]
        [--sweep-kills 4] [--writers 4] [--shards 5000] [--nofile 256] [--seed 0] [--workdir DIR] [--json OUT]

Prints one line per event and a JSON summary (kills, mismatches, seconds, machine).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FEATURE = "resnet18@random:avgpool"
ATOL = 1e-5  # rows that differ by more are mismatches (the test suite's tolerance)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def workbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", *args]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def limit_nofile(n: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return pre


def call(cmd: list[str], *, nofile: int | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout,
                          preexec_fn=limit_nofile(nofile) if nofile else None)


def subset(busi: Path, n: int, out: Path) -> Path:
    """``n`` benign/malignant BUSI rows, half of each, splits as given; absolute paths."""
    rows = list(csv.DictReader(open(busi / "labels.csv")))
    picked = []
    for label in ("benign", "malignant"):
        for split in ("train", "test"):
            pool = [r for r in rows if r["label"] == label and r["split"] == split]
            k = n // 4 if split == "test" else n // 2 - n // 4
            picked += pool[:k]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label", "split"])
        for r in picked:
            w.writerow([r["id"], str((busi / r["path"]).resolve()), r["label"], r["split"]])
    return out


def extract_cmd(manifest: Path, cache: Path, save: Path, size: int) -> list[str]:
    return workbench("extract", "--manifest", str(manifest), "--features", FEATURE, "--cache", str(cache),
                     "--image-size", str(size), "--batch-size", "2", "--workers", "0", "--device", "cpu",
                     "--quiet", "--save", str(save))


def sweep_cmd(manifest: Path, cache: Path, out: Path, size: int) -> list[str]:
    return workbench("sweep", "--manifest", str(manifest), "--features", FEATURE, "--cache", str(cache),
                     "--classes", "benign,malignant", "--heads", "logreg,svm-rbf", "--cv", "5", "--inner-cv", "2",
                     "--out", str(out), "--image-size", str(size), "--batch-size", "2", "--workers", "0",
                     "--device", "cpu", "--quiet")


def shard_count(cache: Path) -> int:
    return sum(1 for _ in (cache / "v1").rglob("shard-*.json")) if (cache / "v1").exists() else 0


def verify(cache: Path, *, nofile: int | None = None) -> tuple[int, str]:
    r = call(workbench("cache", "--cache", str(cache), "verify"), nofile=nofile)
    return r.returncode, (r.stdout.strip().splitlines() or [""])[-1]


def features_of(npz: Path) -> np.ndarray:
    with np.load(npz, allow_pickle=False) as z:  # written by our own child process
        return np.asarray(z[FEATURE])


def mismatched_rows(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape:
        return max(len(a), len(b))
    return int((np.abs(a - b) > ATOL).any(axis=1).sum())


def results_table(out: Path) -> list[tuple]:
    """results.csv as sorted tuples, timing columns dropped (they are the only thing allowed to vary)."""
    rows = list(csv.DictReader(open(out / "results.csv")))
    drop = {c for c in (rows[0] if rows else {}) if "second" in c or c in ("time", "created")}
    return sorted(tuple((k, v) for k, v in sorted(r.items()) if k not in drop) for r in rows)


def lines_of(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def timed_run(cmd: list[str], progress) -> tuple[float, float]:
    """Run ``cmd`` to the end; (seconds to its first progress, seconds in all)."""
    start, first = progress(), None
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    while p.poll() is None:
        if first is None and progress() > start:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    err = p.stderr.read()
    if p.returncode:
        raise SystemExit(f"reference run failed (rc={p.returncode}): {err[-2000:]}")
    return (first if first is not None else total), total


def kill_series(cmd: list[str], kills: int, rng: random.Random, progress, units: int, per_unit: float,
                cache: Path) -> dict:
    """Start ``cmd`` and SIGKILL it up to ``kills`` times, then run it to completion.

    ``progress()`` counts finished units of work (committed shards, appended records);
    a complete run makes ``units`` of them, about ``per_unit`` seconds each. Each kill
    waits for a random number of new units (at least one, never the last), then a
    random fraction of a unit, so it lands anywhere in a batch: mid-forward, between
    the files of a shard, before its commit record. ``cache verify`` must pass after
    every kill.
    """
    out = {"kills": 0, "kills_mid_work": 0, "verify_failures": 0}
    for _ in range(kills):
        before = progress()
        if units - before < 2:
            break  # nothing left to interrupt
        target = before + rng.randint(1, units - before - 1)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        t0, deadline = time.perf_counter(), None
        while p.poll() is None:
            now = time.perf_counter()
            if deadline is None and progress() >= target:
                deadline = now + rng.uniform(0.0, per_unit)
            if deadline is not None and now >= deadline:
                break
            time.sleep(0.005)
        if p.poll() is not None:
            log(f"  finished before its kill (rc={p.returncode})")
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        out["kills"] += 1
        moved = progress() - before
        out["kills_mid_work"] += 0 < moved and progress() < units
        rc, line = verify(cache)
        out["verify_failures"] += rc != 0
        log(f"  killed at {time.perf_counter() - t0:5.1f} s, {progress()}/{units} units done (+{moved}): "
            f"verify rc={rc} {line}")
    r = call(cmd)
    if r.returncode:
        raise SystemExit(f"final run failed (rc={r.returncode}): {r.stderr[-2000:]}")
    return out


def part_extract(work: Path, manifest: Path, size: int, kills: int, rng: random.Random) -> dict:
    ref_cache, ref_npz = work / "ref_cache", work / "ref.npz"
    first, total = timed_run(extract_cmd(manifest, ref_cache, ref_npz, size), lambda: shard_count(ref_cache))
    ref = features_of(ref_npz)
    units = shard_count(ref_cache)
    log(f"reference extract: {ref.shape[0]} images in {total:.1f} s (first shard at {first:.1f} s), "
        f"{shard_count(ref_cache)} shards")

    cache, npz = work / "kill_cache", work / "killed.npz"
    totals = {"rounds": 0, "kills": 0, "kills_mid_work": 0, "verify_failures": 0, "mismatched_rows": 0}
    t0 = time.perf_counter()
    left = kills
    while left > 0:
        shutil.rmtree(cache, ignore_errors=True)
        per_round = min(left, 3)
        res = kill_series(extract_cmd(manifest, cache, npz, size), per_round, rng, lambda: shard_count(cache),
                          units, (total - first) / units, cache)
        left -= max(res["kills"], 1)
        got = features_of(npz)
        mism = mismatched_rows(got, ref)
        rc, line = verify(cache)
        totals["rounds"] += 1
        for k in ("kills", "kills_mid_work", "verify_failures"):
            totals[k] += res[k]
        totals["verify_failures"] += rc != 0
        totals["mismatched_rows"] += mism
        log(f"extract round {totals['rounds']}: {res['kills']} kills, completed run: {mism} mismatched rows "
            f"(max |diff| {float(np.abs(got - ref).max()) if got.shape == ref.shape else float('nan'):.2e}), "
            f"verify rc={rc}")
    totals["seconds"] = round(time.perf_counter() - t0, 1)
    totals["reference_seconds"] = round(total, 1)
    return totals


def part_sweep(work: Path, manifest: Path, size: int, kills: int, rng: random.Random) -> dict:
    ref_out = work / "ref_sweep"
    first, total = timed_run(sweep_cmd(manifest, work / "sweep_ref_cache", ref_out, size),
                             lambda: lines_of(ref_out / "records.jsonl") + shard_count(work / "sweep_ref_cache"))
    ref = results_table(ref_out)
    units = lines_of(ref_out / "records.jsonl") + shard_count(work / "sweep_ref_cache")
    log(f"reference sweep: {len(ref)} result rows in {total:.1f} s (first shard or record at {first:.1f} s)")
    cache, out = work / "sweep_cache", work / "killed_sweep"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = kill_series(sweep_cmd(manifest, cache, out, size), kills, rng,
                      lambda: lines_of(out / "records.jsonl") + shard_count(cache), units, (total - first) / units, cache)
    got = results_table(out)
    rc, line = verify(cache)
    diff = (Counter(got) - Counter(ref)) + (Counter(ref) - Counter(got))
    res.update(result_rows=len(got), mismatched_result_rows=sum(diff.values()) // 2 + abs(len(got) - len(ref)) // 2,
               final_verify_rc=rc, seconds=round(time.perf_counter() - t0, 1), reference_seconds=round(total, 1))
    log(f"sweep: {res['kills']} kills, completed run: {len(got)} rows, "
        f"{res['mismatched_result_rows']} differ from the reference; verify rc={rc}")
    return res


def part_writers(work: Path, manifest: Path, size: int, writers: int) -> dict:
    cache = work / "shared_cache"
    shutil.rmtree(cache, ignore_errors=True)
    ref = features_of(work / "ref.npz")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(extract_cmd(manifest, cache, work / f"w{i}.npz", size), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env()) for i in range(writers)]
    rcs = [p.wait(timeout=1800) for p in procs]
    errs = [p.stderr.read()[-500:] for p in procs]
    seconds = time.perf_counter() - t0
    mism = sum(mismatched_rows(features_of(work / f"w{i}.npz"), ref) for i in range(writers) if rcs[i] == 0)
    rc, line = verify(cache)
    records = sorted((cache / "records").glob("extract-*.json"))
    res = {"writers": writers, "failed": sum(r != 0 for r in rcs), "mismatched_rows": mism, "verify_rc": rc,
           "records": len(records), "shards": shard_count(cache), "seconds": round(seconds, 1)}
    log(f"{writers} concurrent writers: {res}")
    if res["failed"]:
        log("  errors: " + " | ".join(e for e in errs if e))
    return res


_MAKE_SHARDS = r"""
import sys, numpy as np
import workbench.features.cache as C
root, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
C.os.fsync = lambda fd: None  # setup speed only: durability is what parts 1-3 test
e = C.FeatureCache(root).entry({"backbone": "soak", "weights_id": "synthetic", "weights_random": True, "tap": "t",
                                 "dim": dim, "dtype": "float32", "precision": "fp32",
                                 "preprocess": {"geometry": {"size": 64, "resize": "squash"}, "input": "whole"}})
for i in range(n):
    e.write([f"{i:064x}"], np.full((1, dim), i, np.float32))
print(e.key)
"""

_READ_ALL = r"""
import sys, os, numpy as np
from workbench.features.cache import CacheEntry
from pathlib import Path
root, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
e = CacheEntry(Path(root), key)
x = e.read([f"{i:064x}" for i in range(n)][::-1])
bad = int((x != np.arange(n, dtype=np.float32)[::-1, None]).any(axis=1).sum())
print(bad, len(os.listdir("/proc/self/fd")))
"""


def part_shards(work: Path, shards: int, nofile: int) -> dict:
    cache = work / "many_shards"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    r = call([sys.executable, "-c", _MAKE_SHARDS, str(cache), str(shards), "64"], timeout=3600)
    if r.returncode:
        raise SystemExit(f"making {shards} shards failed: {r.stderr[-2000:]}")
    key = r.stdout.strip().splitlines()[-1]
    made = time.perf_counter() - t0
    res: dict = {"shards": shard_count(cache), "nofile": nofile, "make_seconds": round(made, 1)}
    t0 = time.perf_counter()
    rc, line = verify(cache, nofile=nofile)
    res.update(verify_rc=rc, verify=line, verify_seconds=round(time.perf_counter() - t0, 1))
    t0 = time.perf_counter()
    ls = call(workbench("cache", "--cache", str(cache), "ls"), nofile=nofile)
    res.update(ls_rc=ls.returncode, ls_seconds=round(time.perf_counter() - t0, 1))
    t0 = time.perf_counter()
    rd = call([sys.executable, "-c", _READ_ALL, str(cache), key, str(shards)], nofile=nofile)
    if rd.returncode:
        res.update(read_rc=rd.returncode, read_error=rd.stderr.strip().splitlines()[-1:])
    else:
        bad, fds = (int(v) for v in rd.stdout.split())
        res.update(read_rc=0, read_wrong_rows=bad, open_fds_after_read=fds)
    res["read_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    gc = call(workbench("cache", "--cache", str(cache), "gc", "--remove-corrupt", "--no-compact"), nofile=nofile)
    res.update(gc_rc=gc.returncode, gc=gc.stdout.strip(), gc_seconds=round(time.perf_counter() - t0, 1),
               shards_after_gc=shard_count(cache))
    log(f"{shards} shards under ulimit -n {nofile}: {res}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busi", type=Path, default=HERE.parents[1] / "shared" / "data" / "busi")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--extract-kills", type=int, default=8)
    ap.add_argument("--sweep-kills", type=int, default=4)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--shards", type=int, default=5000)
    ap.add_argument("--nofile", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="kept when given; a temporary folder otherwise")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak_integrity_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    manifest = subset(args.busi, args.images, work / "subset.csv")
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "feature": FEATURE, "images": args.images, "image_size": args.image_size,
    }
    summary["extract"] = part_extract(work, manifest, args.image_size, args.extract_kills, rng)
    summary["sweep"] = part_sweep(work, manifest, args.image_size, args.sweep_kills, rng)
    summary["writers"] = part_writers(work, manifest, args.image_size, args.writers)
    summary["many_shards"] = part_shards(work, args.shards, args.nofile)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    ok = (summary["extract"]["verify_failures"] == 0 and summary["extract"]["mismatched_rows"] == 0
          and summary["sweep"]["verify_failures"] == 0 and summary["sweep"]["mismatched_result_rows"] == 0
          and summary["writers"]["failed"] == 0 and summary["writers"]["mismatched_rows"] == 0
          and summary["writers"]["verify_rc"] == 0 and summary["writers"]["records"] == args.writers
          and summary["many_shards"]["verify_rc"] == 0 and summary["many_shards"]["ls_rc"] == 0
          and summary["many_shards"]["gc_rc"] == 0 and summary["many_shards"].get("read_wrong_rows") == 0
          and summary["many_shards"]["shards_after_gc"] == args.shards)
    summary["ok"] = ok
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

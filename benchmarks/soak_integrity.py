"""Soak test of storage integrity under kills (issue 12). Not a timed test.

Six parts, each against real ``workbench`` processes on a small BUSI subset with a
random-init ResNet-18 at a small input size. The four kill parts default to 6 + 4 + 5 + 5
= 20 SIGKILLs, each landing at a random moment (after a random number of finished units
of work, plus a random fraction of one):

1. **Killed extracts.** ``workbench extract`` is SIGKILLed at random moments, ``cache
   verify`` must stay clean after every kill (interrupted-write leftovers are warnings,
   not damage), and the run that finally completes must give the reference features.
2. **Killed sweeps.** The same with ``workbench sweep`` (fresh cache, so early kills land
   in its extraction and later ones in its heads); the completed run's results must
   equal an uninterrupted reference sweep.
3. **Killed fine-tunes.** ``workbench finetune`` of ``resnet18 --weights random`` (Adam,
   cosine schedule, no early stopping, 6 epochs at 64 px) into a fresh store, killed
   between or inside epochs (mid-batch, mid checkpoint save, mid weights save); after
   each kill every file in the store must read back (JSON parses, every member of each
   torch zip passes its CRC; ``*.part`` leftovers of an interrupted save are notes), and
   the restart must log that it resumed from the checkpoint (or found the weights
   finished). The completed weights must equal an uninterrupted fine-tune's (max abs
   diff <= 1e-6; the same history), be listed by the store and load through the registry.
4. **Killed ``workbench run``.** A tiny experiment TOML written into the workdir
   (``resnet18@random:avgpool`` at 64 px, svm-rbf and rf with small grids, votes, 3-fold
   CV, a lite0 baseline of 1 epoch at 64 px: one network per fold + test) is killed in
   its extraction, sweep, baselines or report; ``cache verify`` and the fine-tuned store
   check after every kill; the completed run's ``report/tables/*.csv`` must be
   byte-identical to an uninterrupted run's.
5. **Concurrent writers.** Four extracts of the same manifest into one empty cache at
   once: all finish, ``verify`` is clean, features equal the reference, four distinct
   run records.
6. **Many shards, few descriptors.** An entry of 5 000 shards: ``cache verify``,
   ``cache ls``, a read of every row and ``cache gc --remove-corrupt --no-compact``
   under ``ulimit -n 256``; nothing reported, nothing removed, every row right.

Usage::

    python benchmarks/soak_integrity.py [--busi ../shared/data/busi] [--images 48] [--extract-kills 6]
        [--sweep-kills 4] [--finetune-kills 5] [--run-kills 5] [--finetune-epochs 6] [--finetune-size 64]
        [--baseline-epochs 1] [--writers 4] [--shards 5000] [--nofile 256] [--seed 0]
        [--skip PART,...] [--workdir DIR] [--json OUT]

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
import zipfile
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
                cache: Path | None, *, check=None, log_to: Path | None = None) -> dict:
    """Start ``cmd`` and SIGKILL it up to ``kills`` times, then run it to completion.

    ``progress()`` counts finished units of work (committed shards, appended records);
    a complete run makes ``units`` of them, about ``per_unit`` seconds each. Each kill
    waits for a random number of new units (at least one, never the last), then a
    random fraction of a unit, so it lands anywhere in a batch: mid-forward, between
    the files of a shard, before its commit record. ``cache verify`` must pass after
    every kill (when ``cache`` is given), and ``check()`` (when given) returns the
    number of problems it finds after each kill, counted as ``check_failures``.
    ``log_to``: append every child's stderr there (else it is discarded).
    """
    out = {"kills": 0, "kills_mid_work": 0, "verify_failures": 0, "check_failures": 0}
    errf = open(log_to, "a") if log_to else subprocess.DEVNULL
    for _ in range(kills):
        before = progress()
        if units - before < 2:
            break  # nothing left to interrupt
        target = before + rng.randint(1, units - before - 1)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env())
        t0, deadline = time.perf_counter(), None
        while p.poll() is None:
            now = time.perf_counter()
            done = progress()  # every turn: a stateful progress() must see each change
            if deadline is None and done >= target:
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
        rc, line = verify(cache) if cache is not None else (0, "(no cache)")
        out["verify_failures"] += rc != 0
        problems = check() if check is not None else 0
        out["check_failures"] += problems
        log(f"  killed at {time.perf_counter() - t0:5.1f} s, {progress()}/{units} units done (+{moved}): "
            f"verify rc={rc} {line}" + (f"; store check: {problems} problems" if check is not None else ""))
    r = call(cmd)
    if log_to:
        errf.write(r.stderr)
        errf.close()
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


FT_BACKBONE = "resnet18"
FT_CLASSES = ["benign", "malignant"]


def finetune_cmd(manifest: Path, root: Path, size: int, epochs: int, *, quiet: bool) -> list[str]:
    """Random-init ResNet-18, Adam with a cosine schedule (so optimizer and schedule state
    must survive a resume), no early stopping (every epoch runs, one checkpoint each)."""
    sets = {"epochs": epochs, "image_size": size, "batch_size": 8, "optimizer": "adam", "lr": 1e-3,
            "schedule": "cosine", "patience": 0, "seed": 0}
    cmd = workbench("finetune", "--manifest", str(manifest), "--classes", ",".join(FT_CLASSES),
                    "--backbone", FT_BACKBONE, "--weights", "random", "--finetuned", str(root), "--device", "cpu")
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + (["--quiet"] if quiet else [])


class Replacements:
    """Progress of a fine-tune seen from outside: how many times ``checkpoint`` was
    replaced (a new inode, mtime or size; one per finished epoch), plus one once ``final``
    exists. Stateful, so it survives the checkpoint's removal at the end."""

    def __init__(self, checkpoint: Path, final: Path) -> None:
        self.checkpoint, self.final, self.n, self.last = checkpoint, final, 0, None

    def __call__(self) -> int:
        try:
            st = os.stat(self.checkpoint)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key is not None and key != self.last:
            self.n, self.last = self.n + 1, key
        return self.n + self.final.is_file()


def store_check(root: Path) -> tuple[int, list[str]]:
    """Read every file of a fine-tuned store without torch: each ``*.json`` must parse and
    each ``*.pth``/``*.pt`` (torch's zip format) must pass a CRC check of every member.
    Returns (problems, notes); ``*.tmp`` / ``.*.part`` files (an interrupted save, overwritten by the
    next one) and weights without ``meta.json`` yet (the store does not list them) are
    notes, not problems."""
    problems, notes = 0, []
    for f in sorted(root.rglob("*")) if root.exists() else []:
        if not f.is_file():
            continue
        rel = f.relative_to(root)
        if f.name.endswith((".tmp", ".part")):
            notes.append(f"leftover {rel}")
        elif f.suffix == ".json":
            try:
                json.loads(f.read_text())
            except (ValueError, OSError) as e:
                problems += 1
                notes.append(f"UNREADABLE {rel}: {type(e).__name__}: {e}")
        elif f.suffix in (".pth", ".pt"):
            try:
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                if bad is not None:
                    raise ValueError(f"CRC mismatch in member {bad}")
            except (zipfile.BadZipFile, ValueError, OSError) as e:
                problems += 1
                notes.append(f"UNREADABLE {rel}: {type(e).__name__}: {e}")
        if f.name == "weights.pth" and not (f.parent / "meta.json").is_file():
            notes.append(f"unfinished {rel.parent} (weights.pth, no meta.json yet)")
    return problems, notes


_COMPARE_FT = r"""
import json, sys, torch
from pathlib import Path
from workbench.backbones.finetuned import list_finetuned, find_finetuned, using_root
from workbench.backbones.loading import load_backbone
ref, got, backbone, wid = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
a = torch.load(ref / backbone / wid / "weights.pth", weights_only=True)
b = torch.load(got / backbone / wid / "weights.pth", weights_only=True)
same_keys = sorted(a) == sorted(b)
diff = max((float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0) for k in a) if same_keys else float("inf")
ma, mb = (json.loads((r / backbone / wid / "meta.json").read_text()) for r in (ref, got))
strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
with using_root(got):
    listed = wid in list_finetuned(backbone)
    find_finetuned(backbone, wid)
    lb = load_backbone(backbone, wid)  # through the registry, as --features would
    loaded = sum(p.numel() for p in lb.model.parameters())
left = sorted(p.name for p in (got / backbone / wid).iterdir())
print(json.dumps({"same_keys": same_keys, "max_abs_diff": diff, "history_equal": strip(ma["history"]) == strip(mb["history"]),
                  "best_epoch_equal": ma["best_epoch"] == mb["best_epoch"], "listed": listed,
                  "loaded_parameters": loaded, "files": left}))
"""


def part_finetune(work: Path, manifest: Path, size: int, epochs: int, kills: int, rng: random.Random) -> dict:
    ref_root = work / "ft_ref"
    shutil.rmtree(ref_root, ignore_errors=True)

    def ref_progress() -> int:  # checkpoints written so far (timed_run only waits for the first)
        return sum(1 for _ in ref_root.rglob("checkpoint.pt")) + sum(1 for _ in ref_root.rglob("weights.pth"))

    first, total = timed_run(finetune_cmd(manifest, ref_root, size, epochs, quiet=True), ref_progress)
    (folder,) = list((ref_root / FT_BACKBONE).glob("ft-*"))
    wid = folder.name
    history = json.loads((folder / "meta.json").read_text())["history"]
    units = len(history) + 1  # one checkpoint per epoch, then the weights
    per_epoch = (total - first) / max(len(history) - 1, 1)
    log(f"reference fine-tune {FT_BACKBONE}@{wid}: {len(history)} epochs in {total:.1f} s "
        f"(first checkpoint at {first:.1f} s, then {per_epoch:.1f} s per epoch), {units} units (checkpoints + weights)")

    root, errlog = work / "ft_killed", work / "ft_killed.log"
    totals = {"rounds": 0, "kills": 0, "kills_mid_work": 0, "store_problems": 0, "leftover_notes": 0,
              "resumes_logged": 0, "found_finished_logged": 0, "mismatched_rounds": 0, "files_left_after_completion": 0,
              "max_abs_diff": 0.0}
    t0 = time.perf_counter()
    left = kills
    while left > 0:
        shutil.rmtree(root, ignore_errors=True)
        errlog.unlink(missing_ok=True)
        target = root / FT_BACKBONE / wid

        def check() -> int:
            problems, notes = store_check(root)
            totals["leftover_notes"] += sum(n.startswith("leftover") for n in notes)
            for n in notes:
                log(f"    store: {n}")
            return problems

        res = kill_series(finetune_cmd(manifest, root, size, epochs, quiet=False), min(left, 3), rng,
                          Replacements(target / "checkpoint.pt", target / "weights.pth"), units,
                          per_epoch, None, check=check, log_to=errlog)
        left -= max(res["kills"], 1)
        text = errlog.read_text(errors="replace")
        resumes, found = text.count("resuming "), text.count("not training again")
        problems, notes = store_check(root)
        r = call([sys.executable, "-c", _COMPARE_FT, str(ref_root), str(root), FT_BACKBONE, wid])
        if r.returncode:
            raise SystemExit(f"comparing fine-tuned weights failed: {r.stderr[-2000:]}")
        cmp = json.loads(r.stdout.strip().splitlines()[-1])
        bad = (not cmp["same_keys"] or cmp["max_abs_diff"] > 1e-6 or not cmp["history_equal"]
               or not cmp["best_epoch_equal"] or not cmp["listed"])
        # A complete file left beside the finished weights (e.g. a checkpoint.pt when the kill
        # fell between meta.json and the checkpoint's removal) is reported, not a mismatch.
        extra = [f for f in cmp["files"] if f not in ("meta.json", "weights.pth")]
        totals["rounds"] += 1
        totals["kills"] += res["kills"]
        totals["kills_mid_work"] += res["kills_mid_work"]
        totals["store_problems"] += res["check_failures"] + problems
        totals["resumes_logged"] += resumes
        totals["found_finished_logged"] += found
        totals["mismatched_rounds"] += bad
        totals["files_left_after_completion"] += len(extra)
        totals["max_abs_diff"] = max(totals["max_abs_diff"], cmp["max_abs_diff"])
        log(f"finetune round {totals['rounds']}: {res['kills']} kills, {resumes} restarts resumed from a checkpoint, "
            f"{found} found it finished; "
            f"completed: max |diff| {cmp['max_abs_diff']:.2e}, history equal {cmp['history_equal']}, "
            f"listed {cmp['listed']}, files {cmp['files']}, store problems {problems}"
            + (f" ({'; '.join(notes)})" if notes else ""))
    totals["seconds"] = round(time.perf_counter() - t0, 1)
    totals["reference_seconds"] = round(total, 1)
    totals.update(weights_id=f"{FT_BACKBONE}@{wid}", epochs=epochs)
    return totals


def experiment_toml(manifest: Path, name: str, size: int, baseline_epochs: int) -> str:
    """A tiny ``workbench run`` experiment beside its outputs (paths relative to it)."""
    baselines = (f'[baselines]\nnames = ["lite0"]\n\n[baselines.set]\nepochs = {baseline_epochs}\n'
                 f'image_size = {size}\nbatch_size = 8\npatience = 0\n') if baseline_epochs else ""
    return f"""# written by benchmarks/soak_integrity.py
name = "soak_run"
manifest = {json.dumps(str(manifest))}
classes = ["benign", "malignant"]
positive = "malignant"
out = "{name}_out"
cache = "{name}_cache"
finetuned = "{name}_finetuned"

[protocol]
cv = 3
inner_cv = 2
seed = 0
scoring = "auc"
metric = "auc"
top_k = 2

[features]
specs = [{json.dumps(FEATURE)}]
image_size = {size}
batch_size = 4

[sweep]
heads = ["svm-rbf", "rf"]
subsets = "all"
ensembles = true

[sweep.grids]
svm-rbf = {{C = [1, 10]}}
rf = {{max_features = ["sqrt"], n_estimators = [20]}}

{baselines}"""


def report_tables(out: Path) -> dict[str, bytes]:
    tables = out / "report" / "tables"
    return {p.name: p.read_bytes() for p in sorted(tables.glob("*.csv"))} if tables.exists() else {}


def part_run(work: Path, manifest: Path, size: int, baseline_epochs: int, kills: int, rng: random.Random) -> dict:
    def paths(name: str) -> tuple[Path, Path, Path, Path]:
        return (work / f"{name}.toml", work / f"{name}_out", work / f"{name}_cache", work / f"{name}_finetuned")

    def progress_of(name: str):
        _, out, cache, ft = paths(name)
        return lambda: (shard_count(cache) + lines_of(out / "records.jsonl")
                        + (sum(1 for _ in ft.rglob("weights.pth")) if ft.exists() else 0))

    def fresh(name: str) -> Path:
        toml, out, cache, ft = paths(name)
        for d in (out, cache, ft):
            shutil.rmtree(d, ignore_errors=True)
        toml.write_text(experiment_toml(manifest, name, size, baseline_epochs))
        return toml

    run_cmd = lambda toml: workbench("run", str(toml), "--device", "cpu", "--quiet")  # noqa: E731
    toml = fresh("run_ref")
    first, total = timed_run(run_cmd(toml), progress_of("run_ref"))
    ref = report_tables(paths("run_ref")[1])
    units = progress_of("run_ref")()
    if not ref:
        raise SystemExit("the reference run wrote no report tables")
    log(f"reference run: {len(ref)} report tables in {total:.1f} s (first shard at {first:.1f} s), "
        f"{units} units (shards + records + baseline networks)")

    totals = {"rounds": 0, "kills": 0, "kills_mid_work": 0, "verify_failures": 0, "store_problems": 0,
              "mismatched_tables": 0, "tables": len(ref)}
    t0 = time.perf_counter()
    left = kills
    while left > 0:
        toml = fresh("run_killed")
        _, out, cache, ft = paths("run_killed")

        def check() -> int:
            problems, notes = store_check(ft)
            for n in notes:
                log(f"    store: {n}")
            return problems

        res = kill_series(run_cmd(toml), min(left, 3), rng, progress_of("run_killed"), units,
                          (total - first) / units, cache, check=check)
        left -= max(res["kills"], 1)
        got = report_tables(out)
        differ = sorted(k for k in set(ref) | set(got) if ref.get(k) != got.get(k))
        rc, line = verify(cache)
        problems, _ = store_check(ft)
        totals["rounds"] += 1
        for k in ("kills", "kills_mid_work", "verify_failures"):
            totals[k] += res[k]
        totals["verify_failures"] += rc != 0
        totals["store_problems"] += res["check_failures"] + problems
        totals["mismatched_tables"] += len(differ)
        log(f"run round {totals['rounds']}: {res['kills']} kills, completed run: {len(got)} tables, "
            f"{len(differ)} differ from the reference{' (' + ', '.join(differ) + ')' if differ else ''}; "
            f"verify rc={rc} {line}")
    totals["seconds"] = round(time.perf_counter() - t0, 1)
    totals["reference_seconds"] = round(total, 1)
    totals["baseline_epochs"] = baseline_epochs
    return totals


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
    ap.add_argument("--extract-kills", type=int, default=6)
    ap.add_argument("--sweep-kills", type=int, default=4)
    ap.add_argument("--finetune-kills", type=int, default=5)
    ap.add_argument("--run-kills", type=int, default=5)
    ap.add_argument("--finetune-epochs", type=int, default=6)
    ap.add_argument("--finetune-size", type=int, default=64, help="image size of the fine-tunes and of the run")
    ap.add_argument("--baseline-epochs", type=int, default=1,
                    help="epochs of the run's lite0 baseline (one network per fold + test); 0: no baselines")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out (extract, sweep, writers, "
                    "shards, finetune, run); writers needs extract")
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
        "feature": FEATURE, "images": args.images, "image_size": args.image_size, "seed": args.seed,
    }
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    checks: list[bool] = []
    if "extract" not in skip:
        e = summary["extract"] = part_extract(work, manifest, args.image_size, args.extract_kills, rng)
        checks += [e["verify_failures"] == 0, e["mismatched_rows"] == 0]
    if "sweep" not in skip:
        sw = summary["sweep"] = part_sweep(work, manifest, args.image_size, args.sweep_kills, rng)
        checks += [sw["verify_failures"] == 0, sw["mismatched_result_rows"] == 0]
    if "finetune" not in skip:
        ft = summary["finetune"] = part_finetune(work, manifest, args.finetune_size, args.finetune_epochs,
                                                 args.finetune_kills, rng)
        checks += [ft["store_problems"] == 0, ft["mismatched_rounds"] == 0, ft["max_abs_diff"] <= 1e-6,
                   ft["resumes_logged"] + ft["found_finished_logged"] == ft["kills"]]
    if "run" not in skip:
        ru = summary["run"] = part_run(work, manifest, args.finetune_size, args.baseline_epochs, args.run_kills, rng)
        checks += [ru["verify_failures"] == 0, ru["store_problems"] == 0, ru["mismatched_tables"] == 0]
    if "writers" not in skip and "extract" not in skip:
        w = summary["writers"] = part_writers(work, manifest, args.image_size, args.writers)
        checks += [w["failed"] == 0, w["mismatched_rows"] == 0, w["verify_rc"] == 0, w["records"] == args.writers]
    if "shards" not in skip:
        ms = summary["many_shards"] = part_shards(work, args.shards, args.nofile)
        checks += [ms["verify_rc"] == 0, ms["ls_rc"] == 0, ms["gc_rc"] == 0, ms.get("read_wrong_rows") == 0,
                   ms["shards_after_gc"] == args.shards]
    summary["kills"] = {k: summary[k]["kills"] for k in ("extract", "sweep", "finetune", "run") if k in summary}
    summary["kills"]["total"] = sum(summary["kills"].values())
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    ok = all(checks)
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

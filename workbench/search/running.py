"""Running a sweep's plan: head units through joblib, then ensembles from stored predictions.

SVM heads go through the precomputed-kernel fast path (one unit of work per outer fold
covers all subsets); other heads are one unit per (candidate, fold). Units run through
joblib (local processes or a Dask cluster) and :func:`run_heads` yields each result as
its unit returns, so the caller can record it at once and a killed sweep loses only the
units in flight. :func:`run_ensembles` works from the stored predictions; stacks (and,
for two classes, hard votes' member thresholds) also need each member's inner
out-of-fold predictions on a CV fold's training rows, refitted with the member's chosen
parameters on the tuning's inner folds.

Memory: before the head units start, :func:`plan_head_units` checks each SVM unit's
estimated peak (:func:`~workbench.heads.kernels.kernel_unit_bytes`, checked against
measured peaks; times :data:`RSS_MARGIN` for the allocator's slack) against its share of
the memory budget (:attr:`Execution.memory_budget`, by default 80 % of the available
memory, split over the units that run at once). A kernel unit over its share is split into units over fewer blocks (the same numbers, bit for bit: each block's
matrices and each subset's sum do not depend on the other blocks of a unit); a subset
whose blocks alone do not fit runs as a plain refit on the concatenation (no stored
kernels; the fast path equals it to libsvm's tolerance); a plain SVM refit that does not
fit either stops the sweep, before any unit runs, with a :class:`MemoryBudgetError`
naming the need and the budget. The fallback is logged. Other heads are not estimated.

Hybrid ensembles add end-to-end baseline networks as members, from their stored records
(fold for fold, matched by fold name). No inner-fold networks exist, so where a head
member uses inner out-of-fold predictions a network uses its fold network's scores on
its own validation split (``val_ids``, ``val_y``, ``val_proba`` of its record: images
held out from its training, used for early stopping). See :meth:`_Members.training`
and :meth:`_Members.baseline_threshold`.
"""
from __future__ import annotations

import functools
import logging
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Iterator

import joblib
import numpy as np
from joblib import Parallel, delayed

from workbench.core.parallel import parallel_backend, workers
from workbench.errors import WorkbenchError
from workbench.evaluation.protocol import Protocol
from workbench.evaluation.stats import youden_threshold
from workbench.heads.ensembles import stack, vote
from workbench.heads.kernels import BlockKernels, kernel_subset_scores, kernel_unit_bytes, plain_fit_bytes
from workbench.heads.nested import calibrated_proba, fit_calibrator, response
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import get_head
from workbench.search.candidates import Candidate, baseline_label
from workbench.search.options import Execution, parse_memory_budget
from workbench.search.plan import SweepPlan
from workbench.evaluation.settings import is_cv_fold

__all__ = ["EnsembleResult", "HeadResult", "HeadUnits", "HybridMemberError", "MemoryBudget", "MemoryBudgetError",
           "RSS_MARGIN", "available_memory", "memory_budget", "plan_head_units", "run_ensembles", "run_heads"]

logger = logging.getLogger(__name__)


class HybridMemberError(WorkbenchError, ValueError):
    """A baseline's stored record that a hybrid ensemble cannot use (other images, no
    validation-split scores)."""


@dataclass
class HeadResult:
    """One computed (head candidate, fold): what the caller turns into a record."""

    candidate: Candidate
    fold: str
    proba: np.ndarray
    scores: np.ndarray
    best_params: dict[str, Any]
    inner_score: float | None
    seconds: float


@dataclass
class EnsembleResult:
    """One computed (ensemble, fold); ``extra`` holds its record's own fields, in order."""

    candidate: Candidate
    fold: str
    pred: np.ndarray
    proba: np.ndarray
    extra: dict[str, Any]


# ---- units of work (run in worker processes) --------------------------------------


def _unit(fn):
    """Run a unit with joblib kept sequential inside it.

    In a Dask worker, joblib's default backend is Dask again, so a head's own
    ``Parallel(n_jobs=1)`` (a random forest's trees) would become hundreds of cluster
    tasks: 10x slower than running the trees in place.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with joblib.parallel_config(backend="threading", n_jobs=1):
            return fn(*args, **kwargs)

    return wrapper


@_unit
def _kernel_unit(blocks, names, subsets, head, grid, y, n_classes, fold, train, evaluate,
                 inner_folds, protocol: Protocol) -> list[HeadResult]:
    """Every subset of one SVM head on one outer fold, from summed block kernels."""
    t0 = time.perf_counter()
    used = sorted({names.index(b) for s in subsets for b in s})
    local = {u: k for k, u in enumerate(used)}
    kernels = BlockKernels([blocks[u] for u in used], get_head(head).kernel, train, evaluate, inner_folds)
    results = kernel_subset_scores(kernels, [[local[names.index(b)] for b in s] for s in subsets],
                                   head, y, n_classes, grid=grid, scoring=protocol.scoring)
    per = (time.perf_counter() - t0) / max(len(subsets), 1)
    return [
        HeadResult(Candidate("head", tuple(s), head), fold, r.proba, r.scores, r.search.best_params,
                   None if np.isnan(r.search.best_score) else r.search.best_score, per)
        for s, r in zip(subsets, results)
    ]


@_unit
def _plain_unit(blocks, subset, head, grid, y, fold, train, evaluate, groups, protocol: Protocol,
                names) -> list[HeadResult]:
    """One head on one subset and outer fold, as :class:`TunedHead` fits it."""
    t0 = time.perf_counter()
    X = np.concatenate([blocks[b] for b in subset], axis=1) if len(subset) > 1 else blocks[subset[0]]
    subset = [names[b] for b in subset]
    est = TunedHead(head, grid=grid, inner_splits=protocol.inner_cv, scoring=protocol.scoring,
                    random_state=protocol.seed)
    est.fit(X[train], y[train], groups=None if groups is None else groups[train])
    scores = est.scores(X[evaluate])
    # Probabilities over the run's classes even if (impossibly, given the fold checks)
    # a class were absent from the training rows.
    proba = est.predict_proba(X[evaluate])
    score = est.search_.best_score
    return [HeadResult(Candidate("head", tuple(subset), head), fold, proba, scores, est.best_params_,
                       None if np.isnan(score) else score, time.perf_counter() - t0)]


@_unit
def _inner_oof_unit(X, head, params, y, train, inner_folds, n_classes, seed) -> np.ndarray:
    """A member's inner out-of-fold probabilities on the training rows of one outer fold.

    The member's head with its chosen parameters (no search) is refitted on each inner
    fold of ``train`` (the folds its tuning used) and predicts the held-out inner rows;
    an SVM's decision values are calibrated as the member's own are, by a sigmoid fitted
    on these out-of-fold scores. No row outside ``train`` is seen, so a meta-learner or
    threshold fitted on the result is clean for the outer fold's evaluation rows.
    """
    spec = get_head(head)
    Xt, yt = np.asarray(X)[train], np.asarray(y)[train]
    oof = np.zeros((len(train), n_classes))
    for tr, va in inner_folds:
        est = spec.pipeline(seed, **params).fit(Xt[tr], yt[tr])
        oof[va] = response(est, Xt[va], n_classes, decision=spec.calibrate)
    return calibrated_proba(fit_calibrator(oof, yt, n_classes), oof) if spec.calibrate else oof


# ---- memory ----------------------------------------------------------------------


#: What a unit is planned to take over its estimate (numpy's peak, which tracemalloc
#: matches within ~2 %): the process's RSS grew up to 1.26x that (glibc keeping freed
#: blocks, BLAS buffers; benchmarks/RESULTS.md, "Large n in the sweep").
RSS_MARGIN = 1.3


class MemoryBudgetError(WorkbenchError, MemoryError):
    """A sweep unit that cannot fit the memory budget even as a plain refit; raised
    before any unit runs, never an out-of-memory kill halfway."""


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _cgroup_headroom() -> int | None:
    """Bytes this process's cgroup (a container, a batch job) still allows, where it
    sets a limit: the kernel kills there, whatever the machine has free."""
    paths = ["/sys/fs/cgroup"]
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):  # cgroup v2: this process's own group
                    paths.insert(0, "/sys/fs/cgroup" + line[3:].strip().rstrip("/"))
    except OSError:
        pass
    room = []
    for base in paths:
        for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes",
                                                                "memory/memory.usage_in_bytes")):
            lim, use = _read_int(f"{base}/{limit}"), _read_int(f"{base}/{usage}")
            if lim is not None and use is not None and lim < 1 << 60:  # v1 writes ~2^63 for none
                room.append(max(0, lim - use))
    return min(room) if room else None


def available_memory() -> int | None:
    """Bytes this machine can still give without swapping: the kernel's ``MemAvailable``
    (``/proc/meminfo``), less where a cgroup limit leaves less; elsewhere the free
    physical pages; ``None`` where none of these is known."""
    known = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not known:
        try:
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    room = _cgroup_headroom()
    if room is not None:
        known.append(room)
    return min(known) if known else None


def _size(n: float) -> str:
    from dask.utils import format_bytes  # dask is a dependency; its import is slow, so here

    return format_bytes(int(n))


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the SVM units may use: ``total`` per machine (per Dask worker on a remote
    cluster), shared by ``concurrent`` units at once; ``total=None``: unknown, no check."""

    total: int | None
    concurrent: int
    source: str  # in words, for messages: "80% of 15.6 GiB available"
    cap: int = 1  # the most units that run at once there (workers, or a Dask worker's threads)

    def for_units(self, n_units: int) -> "MemoryBudget":
        """The same budget shared by as many of ``n_units`` as run at once."""
        return dataclasses.replace(self, concurrent=max(1, min(self.cap, n_units)))

    @property
    def per_unit(self) -> int | None:
        return None if self.total is None else self.total // max(1, self.concurrent)

    def __str__(self) -> str:
        if self.total is None:
            return f"no budget ({self.source})"
        return (f"{_size(self.per_unit)} per unit ({self.source}"
                + (f", shared by {self.concurrent} units at once)" if self.concurrent > 1 else ")"))


def _machine(execution: Execution) -> tuple[int | None, int, str]:
    """Memory a fractional budget is of, the most units that run at once on it, and its name.

    On a remote Dask cluster (inside :func:`parallel_backend`): the worker with the least
    memory limit per thread; elsewhere this machine's available memory and workers.
    """
    if execution.backend == "dask" and execution.scheduler not in (None, "local"):
        from distributed import get_client

        info = get_client().scheduler_info().get("workers", {}).values()
        limited = [w for w in info if w.get("memory_limit")]
        if limited:
            w = min(limited, key=lambda w: w["memory_limit"] / max(1, w.get("nthreads", 1)))
            return int(w["memory_limit"]), max(1, int(w.get("nthreads", 1))), "a Dask worker's memory limit"
        threads = max((int(w.get("nthreads", 1)) for w in info), default=1)
        return available_memory(), threads, "this machine's available memory (the Dask workers state no limit)"
    if execution.backend == "dask":  # a LocalCluster of n_jobs (or one per core) workers here
        cap = execution.n_jobs if execution.n_jobs > 0 else os.cpu_count() or 1
    else:
        cap = workers(execution)
    return available_memory(), cap, "available"


def memory_budget(execution: Execution, n_units: int) -> MemoryBudget:
    """The budget of :attr:`Execution.memory_budget` for ``n_units`` head units: a
    fraction of :func:`available_memory` (or a remote Dask worker's memory limit) or a
    fixed size, shared by as many of them as run at once."""
    kind, value = parse_memory_budget(execution.memory_budget)
    base, cap, where = _machine(execution)
    if kind == "bytes":
        budget = MemoryBudget(int(value), 1, f"memory_budget {_size(value)}", cap)
    elif base is None:
        budget = MemoryBudget(None, 1, "the available memory is unknown here; give memory_budget as a size", cap)
    else:
        budget = MemoryBudget(int(base * value), 1, f"{value:.0%} of {_size(base)} {where}", cap)
    return budget.for_units(n_units)


@dataclass
class HeadUnits:
    """The to-do heads as units of work: ``kernel`` (head, fold, subsets) fast-path units,
    ``plain`` (candidate, fold) refits, and what was changed to fit the budget."""

    kernel: list[tuple[str, str, list[tuple[str, ...]]]]
    plain: list[tuple[Candidate, str]]
    budget: MemoryBudget
    fallbacks: list[str] = field(default_factory=list)  # one line per head that fell back

    def __len__(self) -> int:
        return len(self.kernel) + len(self.plain)


def _pack(subsets: list[tuple[str, ...]], need: Callable[[set[str]], int], per_unit: int
          ) -> tuple[list[list[tuple[str, ...]]], list[tuple[str, ...]]]:
    """Subsets into groups whose blocks together fit ``per_unit`` (largest subsets first,
    each into the first group it fits), and the subsets whose blocks alone do not."""
    groups: list[tuple[set[str], list[int]]] = []
    alone: list[tuple[str, ...]] = []
    order = sorted(range(len(subsets)), key=lambda i: -len(subsets[i]))  # stable: ties keep plan order
    for i in order:
        s = set(subsets[i])
        if need(s) > per_unit:
            alone.append(subsets[i])
            continue
        for blocks, members in groups:
            if need(blocks | s) <= per_unit:
                blocks |= s
                members.append(i)
                break
        else:
            groups.append((s, [i]))
    return [[subsets[i] for i in sorted(members)] for _, members in groups], sorted(alone, key=subsets.index)


def _fit_units(plan: SweepPlan, by_kernel: dict[tuple[str, str], list[tuple[str, ...]]],
               plain: list[tuple[Candidate, str]], budget: MemoryBudget) -> HeadUnits:
    """The units under ``budget``: kernel units split where over it, subsets that fit no
    kernel unit as plain refits; raises for a plain SVM refit over it."""
    task, per = plan.task, budget.per_unit
    units = HeadUnits([], [], budget)
    fell: dict[str, dict[str, Any]] = {}
    for (h, f), subs in by_kernel.items():
        spec = get_head(h)
        blocks = dict(zip(plan.names, plan.blocks_of(f)))
        fits = [len(tr) for tr, _ in task.inner_of[f]]
        gammas = len(set(plan.grids[h].get("gamma_factor", [None]))) if spec.kernel == "rbf" else 1

        def need(bs: set[str], f=f, spec=spec, blocks=blocks, fits=fits, gammas=gammas) -> int:
            return int(RSS_MARGIN * kernel_unit_bytes(
                len(task.train_rows[f]), len(task.eval_rows[f]), [blocks[b].shape[1] for b in bs],
                kernel=spec.kernel, inner_folds=fits, gamma_factors=gammas, n_classes=len(task.class_names),
                itemsize=max(blocks[b].dtype.itemsize for b in bs)))

        used = {b for s in subs for b in s}
        whole = need(used)
        if per is None or whole <= per:
            units.kernel.append((h, f, subs))
            continue
        groups, alone = _pack(subs, need, per)
        units.kernel += [(h, f, g) for g in groups]
        units.plain += [(Candidate("head", s, h), f) for s in alone]
        info = fell.setdefault(h, {"folds": 0, "need": 0, "blocks": len(used), "units": 0, "widest": 0,
                                   "plain": 0})
        info["folds"] += 1
        info["need"] = max(info["need"], whole)
        info["units"] += len(groups)
        info["widest"] = max([info["widest"]] + [len({b for s in g for b in s}) for g in groups])
        info["plain"] += len(alone)
    for h, i in fell.items():
        widest = f"{i['widest']} block" + ("s" if i["widest"] > 1 else "")
        how = f"split into {i['units']} units of at most {widest}" if i["units"] else "no kernel unit fits"
        units.fallbacks.append(
            f"{h}: the SVM fast path over {i['blocks']} blocks needs up to ~{_size(i['need'])} per (head, fold) "
            f"unit, over the budget of {budget}; {how} on {i['folds']} fold(s)"
            + (f", {i['plain']} (subset, fold) pairs as plain refits (no stored kernels: slower, equal to "
               "libsvm's tolerance)" if i["plain"] else " (the same numbers, bit for bit; block kernels computed "
                                                         "once per unit)"))
    units.plain += plain
    for c, f in units.plain:
        _check_plain(plan, c, f, budget)
    return units


def _check_plain(plan: SweepPlan, c: Candidate, f: str, budget: MemoryBudget) -> None:
    """Refuse, naming need and budget, a plain SVM refit over the budget."""
    spec = get_head(c.head)
    if budget.per_unit is None or spec.kernel not in ("rbf", "linear"):
        return  # other heads are not estimated
    blocks = dict(zip(plan.names, plan.blocks_of(f)))
    Xs = [blocks[b] for b in c.blocks]
    n_train = len(plan.task.train_rows[f])
    width = sum(X.shape[1] for X in Xs)
    need = int(RSS_MARGIN * plain_fit_bytes(Xs[0].shape[0], n_train, width, kernel=spec.kernel,
                                            itemsize=max(X.dtype.itemsize for X in Xs),
                                            concatenated=len(Xs) > 1))
    if need > budget.per_unit:
        raise MemoryBudgetError(
            f"{plan.label(c)} on fold {f} needs ~{_size(need)} even as a plain refit (n_train = {n_train}, "
            f"{width} features), over the memory budget of {budget}. Give a larger memory_budget "
            "(--memory-budget), fewer parallel workers (--n-jobs), fewer or narrower blocks, or a machine with "
            "more memory")


def plan_head_units(plan: SweepPlan, execution: Execution) -> HeadUnits:
    """The plan's to-do heads as units of work that fit the memory budget.

    SVM heads whose grid the fast path honours form one kernel unit per (head, fold);
    where its estimate is over its share of the budget it is split into units over
    fewer blocks, and subsets whose blocks alone do not fit become plain refits, which
    must fit too (else :class:`MemoryBudgetError`). The share divides the budget by the
    units that run at once (``n_jobs``, at most the number of units, recounted after a
    split). Each fallback is logged as a warning.
    """
    by_kernel, plain = plan.kernel_groups()
    budget = memory_budget(execution, len(by_kernel) + len(plain))
    while True:
        units = _fit_units(plan, by_kernel, plain, budget)
        more = budget.for_units(len(units))
        if more.concurrent <= budget.concurrent:
            break
        budget = more  # the split made more units than ran at once before: smaller shares
    for line in units.fallbacks:
        logger.warning(line)
    if by_kernel and budget.per_unit is not None and not units.fallbacks:
        logger.info(f"SVM fast path: {len(units.kernel)} kernel units within the memory budget of {budget}")
    elif budget.per_unit is None:
        logger.info(f"SVM units are not checked against memory: {budget.source}")
    return units


# ---- heads -----------------------------------------------------------------------


def _head_units(plan: SweepPlan, units: HeadUnits) -> Iterator:
    """The delayed units for the plan's to-do heads, the big kernel units first.

    A generator, so no concatenation exists before its unit runs: 63 subsets of six
    4096-wide blocks would otherwise sit in memory all at once.
    """
    task, names = plan.task, plan.names
    train_rows, eval_rows = task.train_rows, task.eval_rows
    for h, f, subs in units.kernel:
        yield delayed(_kernel_unit)(plan.blocks_of(f), names, subs, h, plan.grids[h], task.y,
                                    len(task.class_names), f, train_rows[f], eval_rows[f], task.inner_of[f],
                                    plan.protocol)
    for c, f in units.plain:
        yield delayed(_plain_unit)(plan.blocks_of(f), [names.index(b) for b in c.blocks], c.head,
                                   plan.grids[c.head], task.y, f, train_rows[f], eval_rows[f], task.splits.groups,
                                   plan.protocol, names)


def run_heads(plan: SweepPlan, execution: Execution) -> Iterator[HeadResult]:
    """Compute the plan's to-do head candidates; yield each result as its unit returns.

    The units are planned against the memory budget first (:func:`plan_head_units`);
    a :class:`MemoryBudgetError` comes before any unit runs.
    """
    if not plan.todo_heads:
        return
    with parallel_backend(execution) as jobs:
        units = plan_head_units(plan, execution)  # in the backend: a remote cluster's limits are known here
        for outs in Parallel(n_jobs=jobs, return_as="generator_unordered")(_head_units(plan, units)):
            yield from outs


# ---- ensembles -------------------------------------------------------------------


class _Members:
    """Ensemble members' predictions: stored ones (each file read once), inner
    out-of-fold ones refitted for stacks and binary hard votes, and vote thresholds;
    for hybrids, the baseline networks' stored records too."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.stored = {r["key"]: r for r in plan.store.records()}
        self.loaded: dict[str, np.ndarray] = {}
        self.inner: dict[tuple[Candidate, str], np.ndarray] = {}
        self.thresholds: dict[tuple[Candidate, str], float] = {}
        self.cv_folds = [g for g, _, _ in plan.task.outer if is_cv_fold(g)]
        self.networks: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.net_thresholds: dict[tuple[str, str], float] = {}

    def key(self, m: Candidate, fold: str) -> str:
        key = f"{self.plan.candidate_id(m)}/{fold}"
        if key not in self.stored:
            raise RuntimeError(f"member {self.plan.label(m)} has no record for fold {fold}")
        return key

    def proba(self, m: Candidate, fold: str) -> np.ndarray:
        key = self.key(m, fold)
        if key not in self.loaded:
            self.loaded[key] = self.plan.store.predictions(self.stored[key])["proba"]
        return self.loaded[key]

    def refit_inner(self, execution: Execution) -> None:
        """Inner out-of-fold probabilities of the members of stacks (and of binary hard
        votes, for their thresholds) on each CV fold's training rows; one refit set per
        (member, fold), shared by every ensemble that needs it."""
        plan, task = self.plan, self.plan.task
        pairs = list(dict.fromkeys((m, f) for c, f in plan.todo_ensembles
                                   if is_cv_fold(f) and (c.kind == "stack" or (c.kind == "vote-hard" and plan.binary))
                                   for m in c.members()))
        if not pairs:
            return
        logger.info(f"refitting {len(pairs)} (member, fold) pairs on inner folds for stacks and hard votes")
        train_rows = task.train_rows
        units = (delayed(_inner_oof_unit)(
            plan.blocks_of(f)[plan.names.index(m.blocks[0])], m.head, self.stored[self.key(m, f)].get("best_params")
            or {}, task.y, train_rows[f], task.inner_of[f], len(task.class_names), plan.protocol.seed)
            for m, f in pairs)
        with parallel_backend(execution) as jobs:
            for pair, oof in zip(pairs, Parallel(n_jobs=jobs, return_as="generator")(units)):
                self.inner[pair] = oof

    # ---- baseline networks (hybrid ensembles) ----------------------------------------

    def network(self, b: str, f: str) -> dict[str, np.ndarray]:
        """The stored predictions of baseline ``b``'s fold-``f`` network, checked to be on
        the fold's evaluation images in the fold's order (the heads' order)."""
        if (b, f) not in self.networks:
            plan = self.plan
            key = f"{plan.baseline_ids[b]}/{f}"
            if key not in self.stored:
                raise RuntimeError(f"baseline {b} has no record for fold {f}")
            preds = plan.store.predictions(self.stored[key])
            expected = [plan.task.ids[i] for i in plan.task.eval_rows[f]]
            if [str(i) for i in preds["ids"]] != expected:
                raise HybridMemberError(f"the record of baseline {b} on fold {f} ({key}) holds predictions for "
                                        "other images than the fold's; re-run the baselines into this folder")
            self.networks[(b, f)] = preds
        return self.networks[(b, f)]

    def validation(self, b: str, f: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """Baseline ``b``'s fold-``f`` network on its own validation split: row of each
        image id in that split, its labels and its probabilities."""
        preds = self.network(b, f)
        if "val_proba" not in preds or not len(preds.get("val_ids", ())):
            raise HybridMemberError(
                f"the record of baseline {b} on fold {f} holds no validation-split scores (val_ids, val_y, "
                "val_proba), which hybrid hard votes and stacks need; re-run the baselines (no training) or "
                "train them with a validation split (val_fraction > 0)")
        ids = [str(i) for i in preds["val_ids"]]
        return {i: k for k, i in enumerate(ids)}, np.asarray(preds["val_y"]), np.asarray(preds["val_proba"])

    def baseline_proba(self, b: str, f: str) -> np.ndarray:
        return np.asarray(self.network(b, f)["proba"])

    def baseline_threshold(self, b: str, f: str) -> float:
        """A network member's hard-vote threshold: Youden's on its fold network's scores
        on that network's own validation split, on every fold (CV, test, external); no
        inner-fold networks exist to give inner out-of-fold scores."""
        if (b, f) not in self.net_thresholds:
            _, y, p = self.validation(b, f)
            pos = self.plan.positive_index
            if len(np.unique(y == pos)) < 2:
                raise HybridMemberError(f"the validation split of baseline {b} on fold {f} holds one class only: "
                                        "no threshold can be set on it; run the baselines with a larger "
                                        "val_fraction")
            self.net_thresholds[(b, f)] = youden_threshold(y == pos, p[:, pos])
        return self.net_thresholds[(b, f)]

    def _validation_rows(self, baselines: tuple[str, ...], f: str) -> np.ndarray:
        """Task rows of the images in every baseline's fold-``f`` validation split, in the
        first baseline's order; each must be a training row of ``f``."""
        task = self.plan.task
        splits = [self.validation(b, f)[0] for b in baselines]
        ids = [i for i in splits[0] if all(i in s for s in splits[1:])]
        row_of = {i: k for k, i in enumerate(task.ids)}
        train = set(task.train_rows[f].tolist())
        outside = [i for i in ids if row_of.get(i) not in train]
        if outside:
            raise HybridMemberError(f"baseline validation images {outside[:5]} of fold {f} are not among the "
                                    "fold's training images; the baselines were run on other folds")
        rows = np.array([row_of[i] for i in ids], dtype=np.int64)
        if len(np.unique(task.y[rows])) < 2:
            raise HybridMemberError(f"the validation split of {', '.join(baselines)} on fold {f} holds "
                                    f"{len(rows)} image(s) of fewer than two classes: too few to fit a stack on")
        return rows

    def training(self, members: list[Candidate], f: str,
                 baselines: tuple[str, ...] = ()) -> tuple[list[np.ndarray], np.ndarray]:
        """Out-of-fold probabilities a stack on fold ``f`` is fitted on, and their labels.

        The meta-learner never sees predictions made by members that trained on the rows
        it scores. Test: the members' outer CV out-of-fold probabilities. CV fold f: their
        inner out-of-fold probabilities on f's training rows (members refitted inside them).

        With ``baselines`` (a hybrid; their columns follow the heads'): on test (and
        external sets: any fold that is not a CV fold) the networks' outer CV predictions
        join the heads'; on CV fold f the stack is fitted on the rows of the baseline fold
        network's validation split only (where several baselines: the images in every
        one's), from the heads' inner out-of-fold probabilities on those rows and the
        network's scores there, as no inner-fold networks exist. Neither the heads nor
        the network trained on those rows, and none of them is scored on fold f.
        """
        task = self.plan.task
        if not is_cv_fold(f):  # the test split and external sets: models fitted on the whole training split
            eval_rows = task.eval_rows
            return ([np.concatenate([self.proba(m, g) for g in self.cv_folds]) for m in members]
                    + [np.concatenate([self.baseline_proba(b, g) for g in self.cv_folds]) for b in baselines],
                    np.concatenate([task.y[eval_rows[g]] for g in self.cv_folds]))
        if not baselines:
            return [self.inner[(m, f)] for m in members], task.y[task.train_rows[f]]
        rows = self._validation_rows(baselines, f)
        at = {r: k for k, r in enumerate(task.train_rows[f].tolist())}
        ks = np.array([at[r] for r in rows.tolist()], dtype=np.int64)  # rows of the inner OOF arrays
        nets = []
        for b in baselines:
            pos_of, _, p = self.validation(b, f)
            nets.append(p[[pos_of[task.ids[r]] for r in rows.tolist()]])
        return [self.inner[(m, f)][ks] for m in members] + nets, task.y[rows]

    def threshold(self, m: Candidate, f: str) -> float:
        """Youden on out-of-fold predictions the scored rows had no part in: inner ones
        for a CV fold, the member's outer CV ones for test."""
        if (m, f) not in self.thresholds:
            p, yy = self.training([m], f)
            pos = self.plan.positive_index
            self.thresholds[(m, f)] = youden_threshold(yy == pos, p[0][:, pos])
        return self.thresholds[(m, f)]


def _ensemble(plan: SweepPlan, members: _Members, c: Candidate, f: str) -> EnsembleResult:
    """One ensemble on one fold, from its members' predictions (heads', then networks')."""
    t0 = time.perf_counter()
    ms = c.members()
    probas = [members.proba(m, f) for m in ms] + [members.baseline_proba(b, f) for b in c.baselines]
    extra: dict[str, Any] = {"members": [plan.label(m) for m in ms] + [baseline_label(b) for b in c.baselines]}
    if c.baselines:
        extra.update(baselines=list(c.baselines), baseline_ids=[plan.baseline_ids[b] for b in c.baselines])
    if plan.rule(c) is not None:
        extra["ensemble_rule"] = plan.rule(c)
    if c.kind == "stack":
        train_p, y_tr = members.training(ms, f, c.baselines)
        pred, proba = stack(train_p, y_tr, probas, seed=plan.protocol.seed)
    elif c.kind == "vote-hard" and plan.binary:
        ts = [members.threshold(m, f) for m in ms] + [members.baseline_threshold(b, f) for b in c.baselines]
        extra["thresholds"] = ts
        pred, proba = vote(probas, c.kind, thresholds=ts, positive=plan.positive_index)
    else:
        pred, proba = vote(probas, c.kind)
    extra["seconds"] = round(time.perf_counter() - t0, 3)
    return EnsembleResult(c, f, pred, proba, extra)


def run_ensembles(plan: SweepPlan, execution: Execution) -> Iterator[EnsembleResult]:
    """Compute the plan's to-do ensembles from the stored member predictions (so every
    head result must be recorded first); yield each as it is done."""
    if not plan.todo_ensembles:
        return
    members = _Members(plan)
    members.refit_inner(execution)
    for c, f in plan.todo_ensembles:
        yield _ensemble(plan, members, c, f)

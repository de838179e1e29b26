"""Running a sweep's plan: head units through joblib, then ensembles from stored predictions.

SVM heads go through the precomputed-kernel fast path (one unit of work per outer fold
covers all subsets); other heads are one unit per (candidate, fold). Units run through
joblib (local processes or a Dask cluster) and :func:`run_heads` yields each result as
its unit returns, so the caller can record it at once and a killed sweep loses only the
units in flight. :func:`run_ensembles` works from the stored predictions; stacks (and,
for two classes, hard votes' member thresholds) also need each member's inner
out-of-fold predictions on a CV fold's training rows, refitted with the member's chosen
parameters on the tuning's inner folds.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import joblib
import numpy as np
from joblib import Parallel, delayed

from workbench.evaluation.protocol import Protocol
from workbench.evaluation.stats import youden_threshold
from workbench.heads.ensembles import stack, vote
from workbench.heads.kernels import BlockKernels, kernel_subset_scores
from workbench.heads.nested import calibrated_proba, fit_calibrator, response
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import get_head
from workbench.search.candidates import Candidate
from workbench.search.options import Execution
from workbench.search.plan import SweepPlan

__all__ = ["EnsembleResult", "HeadResult", "run_ensembles", "run_heads"]

logger = logging.getLogger(__name__)


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


@contextmanager
def _backend(execution: Execution) -> Iterator[int]:
    """joblib's parallel configuration for ``execution``; yields the n_jobs to use."""
    if execution.backend != "dask":
        backend = execution.backend if execution.backend != "sequential" else "loky"
        with joblib.parallel_config(backend=backend):
            yield 1 if execution.backend == "sequential" else execution.n_jobs
        return
    from distributed import Client, LocalCluster  # optional: only a Dask sweep needs it

    with ExitStack() as stack_:
        if execution.scheduler in (None, "local"):
            n_jobs = execution.n_jobs
            cluster = stack_.enter_context(LocalCluster(
                n_workers=max(n_jobs if n_jobs > 0 else os.cpu_count() or 1, 1),
                threads_per_worker=1, processes=True, dashboard_address=":0"))
            stack_.enter_context(Client(cluster))
        else:
            stack_.enter_context(Client(execution.scheduler))
        stack_.enter_context(joblib.parallel_config(backend="dask"))
        yield -1


# ---- heads -----------------------------------------------------------------------


def _head_units(plan: SweepPlan) -> Iterator:
    """The delayed units for the plan's to-do heads, the big kernel units first.

    A generator, so no concatenation exists before its unit runs: 63 subsets of six
    4096-wide blocks would otherwise sit in memory all at once.
    """
    task, names = plan.task, plan.names
    train_rows, eval_rows = task.train_rows, task.eval_rows
    by_kernel, plain = plan.kernel_groups()
    for (h, f), subs in by_kernel.items():
        yield delayed(_kernel_unit)(plan.blocks_of(f), names, subs, h, plan.grids[h], task.y,
                                    len(task.class_names), f, train_rows[f], eval_rows[f], task.inner_of[f],
                                    plan.protocol)
    for c, f in plain:
        yield delayed(_plain_unit)(plan.blocks_of(f), [names.index(b) for b in c.blocks], c.head,
                                   plan.grids[c.head], task.y, f, train_rows[f], eval_rows[f], task.splits.groups,
                                   plan.protocol, names)


def run_heads(plan: SweepPlan, execution: Execution) -> Iterator[HeadResult]:
    """Compute the plan's to-do head candidates; yield each result as its unit returns."""
    if not plan.todo_heads:
        return
    with _backend(execution) as jobs:
        for outs in Parallel(n_jobs=jobs, return_as="generator_unordered")(_head_units(plan)):
            yield from outs


# ---- ensembles -------------------------------------------------------------------


class _Members:
    """Ensemble members' predictions: stored ones (each file read once), inner
    out-of-fold ones refitted for stacks and binary hard votes, and vote thresholds."""

    def __init__(self, plan: SweepPlan):
        self.plan = plan
        self.stored = {r["key"]: r for r in plan.store.records()}
        self.loaded: dict[str, np.ndarray] = {}
        self.inner: dict[tuple[Candidate, str], np.ndarray] = {}
        self.thresholds: dict[tuple[Candidate, str], float] = {}
        self.cv_folds = [g for g, _, _ in plan.task.outer if g != "test"]

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
                                   if f != "test" and (c.kind == "stack" or (c.kind == "vote-hard" and plan.binary))
                                   for m in c.members()))
        if not pairs:
            return
        logger.info(f"refitting {len(pairs)} (member, fold) pairs on inner folds for stacks and hard votes")
        train_rows = task.train_rows
        units = (delayed(_inner_oof_unit)(
            plan.blocks_of(f)[plan.names.index(m.blocks[0])], m.head, self.stored[self.key(m, f)].get("best_params")
            or {}, task.y, train_rows[f], task.inner_of[f], len(task.class_names), plan.protocol.seed)
            for m, f in pairs)
        with _backend(execution) as jobs:
            for pair, oof in zip(pairs, Parallel(n_jobs=jobs, return_as="generator")(units)):
                self.inner[pair] = oof

    def training(self, members: list[Candidate], f: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Out-of-fold probabilities a stack on fold ``f`` is fitted on, and their labels.

        The meta-learner never sees predictions made by members that trained on the rows
        it scores. Test: the members' outer CV out-of-fold probabilities. CV fold f: their
        inner out-of-fold probabilities on f's training rows (members refitted inside them).
        """
        task = self.plan.task
        if f == "test":
            eval_rows = task.eval_rows
            return ([np.concatenate([self.proba(m, g) for g in self.cv_folds]) for m in members],
                    np.concatenate([task.y[eval_rows[g]] for g in self.cv_folds]))
        return [self.inner[(m, f)] for m in members], task.y[task.train_rows[f]]

    def threshold(self, m: Candidate, f: str) -> float:
        """Youden on out-of-fold predictions the scored rows had no part in: inner ones
        for a CV fold, the member's outer CV ones for test."""
        if (m, f) not in self.thresholds:
            p, yy = self.training([m], f)
            pos = self.plan.positive_index
            self.thresholds[(m, f)] = youden_threshold(yy == pos, p[0][:, pos])
        return self.thresholds[(m, f)]


def _ensemble(plan: SweepPlan, members: _Members, c: Candidate, f: str) -> EnsembleResult:
    """One ensemble on one fold, from its members' predictions."""
    t0 = time.perf_counter()
    ms = c.members()
    probas = [members.proba(m, f) for m in ms]
    extra: dict[str, Any] = {"members": [plan.label(m) for m in ms]}
    if plan.rule(c) is not None:
        extra["ensemble_rule"] = plan.rule(c)
    if c.kind == "stack":
        train_p, y_tr = members.training(ms, f)
        pred, proba = stack(train_p, y_tr, probas, seed=plan.protocol.seed)
    elif c.kind == "vote-hard" and plan.binary:
        ts = [members.threshold(m, f) for m in ms]
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

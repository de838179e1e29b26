"""Running a sweep's plan: head units through joblib, then ensembles from stored predictions.

SVM heads go through the precomputed-kernel fast path (one unit of work per outer fold
covers all subsets); other heads are one unit per (candidate, fold). Units run through
joblib (local processes or a Dask cluster) and :func:`run_heads` yields each result as
its unit returns, so the caller can record it at once and a killed sweep loses only the
units in flight. :func:`run_ensembles` works from the stored predictions; stacks (and,
for two classes, hard votes' member thresholds) also need each member's inner
out-of-fold predictions on a CV fold's training rows, refitted with the member's chosen
parameters on the tuning's inner folds.

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
import time
from dataclasses import dataclass
from typing import Any, Iterator

import joblib
import numpy as np
from joblib import Parallel, delayed

from workbench.core.parallel import parallel_backend
from workbench.errors import WorkbenchError
from workbench.evaluation.protocol import Protocol
from workbench.evaluation.stats import youden_threshold
from workbench.heads.ensembles import stack, vote
from workbench.heads.kernels import BlockKernels, kernel_subset_scores
from workbench.heads.nested import calibrated_proba, fit_calibrator, response
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import get_head
from workbench.search.candidates import Candidate, baseline_label
from workbench.search.options import Execution
from workbench.search.plan import SweepPlan
from workbench.evaluation.settings import is_cv_fold

__all__ = ["EnsembleResult", "HeadResult", "HybridMemberError", "run_ensembles", "run_heads"]

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
    with parallel_backend(execution) as jobs:
        for outs in Parallel(n_jobs=jobs, return_as="generator_unordered")(_head_units(plan)):
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

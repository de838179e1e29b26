"""The combination sweep: heads over every feature subset, vote ensembles, on fixed folds.

Flow: align feature blocks to the manifest, check them, fix the splits, then compute
every (candidate, fold) that the run folder has no record of yet. SVM heads go through
the precomputed-kernel fast path (one unit of work per outer fold covers all subsets);
other heads are one unit per (candidate, fold). Units run through joblib (local
processes or a Dask cluster); the parent process writes each record as its unit
returns, so a killed sweep loses only the units in flight. Ensembles are computed last,
from the stored predictions; stacks (and, for two classes, hard votes' member
thresholds) also need each member's inner out-of-fold predictions on a CV fold's
training rows, refitted with the member's chosen parameters on the tuning's inner folds.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from workbench.data.manifest import Manifest
from workbench.features.featureset import FeatureSet
from workbench.heads.ensembles import ENSEMBLE_RULES, VOTE_KINDS, stack, vote
from workbench.heads.nested import SCORINGS
from workbench.heads.zoo import get_head
from workbench.core.provenance import package_versions
from workbench.search.candidates import Candidate, block_codes, enumerate_subsets, grid_suffix
from workbench.evaluation.protocol import SWEEP_CODE_VERSION, RunTask, Protocol, build_task, seen_by, sha
from workbench.errors import WorkbenchError

__all__ = ["SweepInputError", "sweep", "SWEEP_CODE_VERSION"]

BACKENDS = ("loky", "threading", "sequential", "dask")


class SweepInputError(WorkbenchError, ValueError):
    """Features or labels the sweep cannot use; raised before anything is written."""


# ---- inputs ----------------------------------------------------------------------


def _align(features: FeatureSet, ids: list[str]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Blocks (and nested blocks' fold variants) in manifest order; features may hold
    more ids, never fewer."""
    pos = {i: k for k, i in enumerate(features.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise SweepInputError(f"the feature blocks have no rows for {len(missing)} of the manifest's "
                              f"{len(ids)} images: {shown}. Extract features with this manifest.")
    order = np.array([pos[i] for i in ids])
    identity = len(order) == len(features.ids) and bool((order == np.arange(len(order))).all())

    def aligned(name: str, X) -> np.ndarray:
        X = np.asarray(X)
        X = X if identity else X[order]
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            shown = ", ".join(repr(ids[i]) for i in np.flatnonzero(bad)[:5])
            raise SweepInputError(f"feature block {name} has NaN or infinite values in {int(bad.sum())} "
                                  f"row(s): {shown}")
        return X

    out = {name: aligned(name, features[name]) for name in features.names}
    variants = {name: {f: aligned(f"{name} (fold {f})", X) for f, X in v.items()}
                for name, v in features.fold_blocks.items()}
    return out, variants


def _block_ids(features: FeatureSet, blocks: dict[str, np.ndarray],
               variants: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Identity of each block: its cache key (when it came from the cache) and a digest of
    the values actually swept (every fold variant included), so a changed block can never
    reuse old records."""
    out: dict[str, dict[str, Any]] = {}
    for name, X in blocks.items():
        info = features.info.get(name)
        h = hashlib.sha256(np.ascontiguousarray(X, dtype=np.float32).tobytes())
        for f in sorted(variants.get(name, {})):
            h.update(f.encode())
            h.update(np.ascontiguousarray(variants[name][f], dtype=np.float32).tobytes())
        out[name] = {"cache_key": info.entry_key if info is not None else None, "data": h.hexdigest()[:16]}
        if name in features.fold_info:
            out[name]["fold_cache_keys"] = {f: i.entry_key for f, i in sorted(features.fold_info[name].items())}
    return out


def _optimistic_folds(features: FeatureSet, names: list[str], task: RunTask) -> dict[str, set[str]]:
    """For blocks from fine-tuned networks: the folds whose evaluation images the network saw.

    A network fine-tuned on the whole training split has seen every CV fold, so CV
    estimates on its features are optimistic (marked in the records); one that saw
    test images would make the test result meaningless, which is refused.
    """
    from workbench.backbones.finetuned import find_finetuned, is_finetuned_id

    def seen_ids(backbone: str, weights_id: str) -> list[str]:
        _, meta = find_finetuned(backbone, weights_id)
        return list(meta.get("train_ids", [])) + list(meta.get("val_ids", []))

    out: dict[str, set[str]] = {}
    for name in names:
        info = features.info.get(name)
        if info is None:
            continue
        if name in features.fold_info:  # nested: fold f is scored on its own network's features
            members = features.fold_info[name]
            folds = {f for f, _, _ in task.outer
                     if seen_by(seen_ids(info.backbone, members.get(f, info).weights_id), task, f)}
        elif is_finetuned_id(info.weights_id):
            trained = seen_ids(info.backbone, info.weights_id)
            folds = {f for f, _, _ in task.outer if seen_by(trained, task, f)}
        else:
            continue
        if "test" in folds:
            raise SweepInputError(
                f"block {name} comes from a network fine-tuned on test images of this task "
                f"({info.backbone}@{info.weights_id}); its test results would be meaningless")
        out[name] = folds
    return out


# ---- units of work (run in worker processes) --------------------------------------


@dataclass
class _Out:
    """One computed (candidate, fold): what the parent turns into a record."""

    candidate: Candidate
    fold: str
    proba: np.ndarray
    scores: np.ndarray
    best_params: dict[str, Any]
    inner_score: float | None
    seconds: float


def _unit(fn):
    """Run a unit with joblib kept sequential inside it.

    In a Dask worker, joblib's default backend is Dask again, so a head's own
    ``Parallel(n_jobs=1)`` (a random forest's trees) would become hundreds of cluster
    tasks: 10x slower than running the trees in place.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import joblib

        with joblib.parallel_config(backend="threading", n_jobs=1):
            return fn(*args, **kwargs)

    return wrapper


@_unit
def _kernel_unit(blocks, names, subsets, head, grid, y, n_classes, fold, train, evaluate,
                 inner_folds, scoring) -> list[_Out]:
    from workbench.heads.kernels import BlockKernels, kernel_subset_scores

    t0 = time.perf_counter()
    used = sorted({names.index(b) for s in subsets for b in s})
    local = {u: k for k, u in enumerate(used)}
    kernels = BlockKernels([blocks[u] for u in used], get_head(head).kernel, train, evaluate, inner_folds)
    results = kernel_subset_scores(kernels, [[local[names.index(b)] for b in s] for s in subsets],
                                   head, y, n_classes, grid=grid, scoring=scoring)
    per = (time.perf_counter() - t0) / max(len(subsets), 1)
    return [
        _Out(Candidate("head", tuple(s), head), fold, r.proba, r.scores, r.search.best_params,
             None if np.isnan(r.search.best_score) else r.search.best_score, per)
        for s, r in zip(subsets, results)
    ]


@_unit
def _plain_unit(blocks, subset, head, grid, y, fold, train, evaluate, groups, inner_splits, scoring,
                seed, names) -> list[_Out]:
    from workbench.heads.tuned import TunedHead

    t0 = time.perf_counter()
    X = np.concatenate([blocks[b] for b in subset], axis=1) if len(subset) > 1 else blocks[subset[0]]
    subset = [names[b] for b in subset]
    est = TunedHead(head, grid=grid, inner_splits=inner_splits, scoring=scoring, random_state=seed)
    est.fit(X[train], y[train], groups=None if groups is None else groups[train])
    scores = est.scores(X[evaluate])
    proba = est.predict_proba(X[evaluate])
    # Probabilities over the run's classes even if (impossibly, given the fold checks)
    # a class were absent from the training rows.
    score = est.search_.best_score
    return [_Out(Candidate("head", tuple(subset), head), fold, proba, scores, est.best_params_,
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
    from workbench.heads.nested import calibrated_proba, fit_calibrator, response

    spec = get_head(head)
    Xt, yt = np.asarray(X)[train], np.asarray(y)[train]
    oof = np.zeros((len(train), n_classes))
    for tr, va in inner_folds:
        est = spec.pipeline(seed, **params).fit(Xt[tr], yt[tr])
        oof[va] = response(est, Xt[va], n_classes, decision=spec.calibrate)
    return calibrated_proba(fit_calibrator(oof, yt, n_classes), oof) if spec.calibrate else oof


@contextmanager
def _backend(backend: str, scheduler: str | None, n_jobs: int) -> Iterator[int]:
    """joblib's parallel configuration for ``backend``; yields the n_jobs to use."""
    import joblib

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "dask":
        if scheduler is not None:
            raise ValueError("--scheduler only applies to --backend dask")
        with joblib.parallel_config(backend=backend if backend != "sequential" else "loky"):
            yield 1 if backend == "sequential" else n_jobs
        return
    from distributed import Client, LocalCluster

    with ExitStack() as stack_:
        if scheduler in (None, "local"):
            cluster = stack_.enter_context(LocalCluster(
                n_workers=max(n_jobs if n_jobs > 0 else os.cpu_count() or 1, 1),
                threads_per_worker=1, processes=True, dashboard_address=":0"))
            client = stack_.enter_context(Client(cluster))
        else:
            client = stack_.enter_context(Client(scheduler))
        stack_.enter_context(joblib.parallel_config(backend="dask"))
        yield -1


# ---- the sweep -------------------------------------------------------------------


def sweep(
    manifest: Manifest | str | os.PathLike,
    features: FeatureSet | Sequence[str],
    *,
    out: str | os.PathLike,
    heads: Sequence[str] = ("svm-rbf", "rf"),
    subsets: str | Sequence[Sequence[str]] | tuple[int, int] = "all",
    cv: int = 5,
    inner_cv: int = 3,
    seed: int = 0,
    scoring: str = "auc",
    grids: dict[str, dict[str, Sequence[Any]]] | None = None,
    ensembles: bool = True,
    ensemble_heads: Sequence[str] | None = None,
    stacking: bool = False,
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    codes: dict[str, str] | None = None,
    n_jobs: int = 1,
    backend: str = "loky",
    scheduler: str | None = None,
    cache: str | os.PathLike = "features_cache",
    extract_options: dict[str, Any] | None = None,
    progress: bool = True,
    log=None,
) -> pd.DataFrame:
    """Evaluate heads on every feature subset, and vote ensembles, by nested CV and test.

    Parameters
    ----------
    manifest
        A :class:`Manifest` or its path; its ``split`` column gives the test set, its
        ``group`` column (if any) keeps a patient's images in one fold.
    features
        A :class:`FeatureSet` (it may hold more images than the manifest) or feature
        requests (``"alexnet:fc6,fc7"``) to extract or read from ``cache``.
    out
        Run folder: records are appended there, and a rerun skips what is recorded.
    heads
        Zoo names (see :func:`workbench.heads.zoo.list_heads`).
    subsets
        ``"all"`` non-empty subsets of the blocks, ``"single"``, sizes ``(k1, k2)``, or
        a list of subsets of block names.
    cv, inner_cv
        Outer folds on the training split, and inner folds for hyper-parameter search.
    seed
        Fixes every split and every seeded head.
    scoring
        Inner selection score: ``auc``, ``balanced_accuracy`` or ``accuracy``.
    grids
        Per-head grid overriding the zoo default (``{}`` for no search). The first grid
        a head is swept with in a run folder keeps the plain label (``svm-rbf``); another
        grid later gets it as a suffix (``svm-rbf{C=1,10}``), so the two stay apart.
    ensembles, ensemble_heads, stacking
        Vote ensembles (hard and soft) over the per-block heads ``ensemble_heads``
        (default: all ``heads``) for every subset of two or more members; ``stacking``
        adds a logistic-regression stack fitted on out-of-fold probabilities (for a CV
        fold, the members' inner out-of-fold probabilities on its training rows). With
        two classes, hard-vote members vote at their own out-of-fold Youden thresholds
        (recorded as ``thresholds``).
    classes
        Keep only these classes (in this order), e.g. ``["benign", "malignant"]``.
    positive
        Positive class of binary metrics (default: ``malignant`` if present).
    codes
        Short codes for blocks in tables (default: derived from backbone names).
    n_jobs, backend, scheduler
        joblib workers and backend; ``backend="dask"`` with ``scheduler`` an address
        (``tcp://host:8786``) or ``"local"`` for a local cluster.

    Returns
    -------
    DataFrame
        One row per (candidate, fold) of this sweep's candidates, metrics as columns;
        ``fold`` is ``"0"``.. for CV folds and ``"test"`` for the test split.

    Raises
    ------
    SweepInputError, FoldError, ValueError
        Before anything is written: unknown heads or blocks, features not matching the
        manifest, non-finite features, classes too small for the folds.
    """
    log = log or (lambda msg: None)
    # -- check everything before touching the run folder --------------------------
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    heads = list(dict.fromkeys(heads))
    specs = [get_head(h) for h in heads]
    ens_heads = list(dict.fromkeys(ensemble_heads if ensemble_heads is not None else heads))
    missing_heads = [h for h in ens_heads if h not in heads]
    if missing_heads:
        raise ValueError(f"ensemble heads {missing_heads} are not among the swept heads {heads}")
    grids = dict(grids or {})
    unknown = [h for h in grids if h not in heads]
    if unknown:
        raise ValueError(f"grids given for heads {unknown} that are not swept ({heads})")
    grid_of = {s.name: (grids[s.name] if s.name in grids else s.grid) for s in specs}
    for s in specs:  # a misspelt parameter would otherwise fail mid-run, in a worker
        valid = s.pipeline().named_steps["clf"].get_params(deep=False)
        bad = sorted(set(grid_of[s.name]) - set(valid))
        if bad:
            raise ValueError(f"grid for head {s.name} names unknown parameters {bad}; "
                             f"valid: {sorted(valid)}")

    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    if classes is not None:
        manifest = manifest.select_classes(classes)
    if not isinstance(features, FeatureSet):
        opts = dict(extract_options or {})
        opts.setdefault("progress", progress)
        from workbench.features.extraction import extract

        features = extract(manifest, list(features), cache=cache, **opts)
        ids_kept = set(features.ids)
        if len(ids_kept) != len(manifest):  # --skip-bad dropped rows during extraction
            manifest = manifest.subset([i for i in manifest.ids if i in ids_kept])
    class_names = list(manifest.classes)
    if len(class_names) < 2:
        raise SweepInputError(f"need at least two classes, the manifest has {class_names}")
    if positive is not None and positive not in class_names:
        raise ValueError(f"positive class {positive!r} is not one of {class_names}")
    ids = manifest.ids
    blocks, variants = _align(features, ids)
    names = list(blocks)
    code_of = block_codes(names, codes)
    if not isinstance(subsets, (str, tuple)):
        # Explicit subsets may name blocks by their table codes as well.
        by_code = {c: n for n, c in code_of.items()}
        subsets = [[by_code.get(b, b) for b in ([s] if isinstance(s, str) else s)] for s in subsets]
    subset_list = enumerate_subsets(names, subsets)
    task = build_task(manifest, Protocol(cv=cv, inner_cv=inner_cv, seed=seed, scoring=scoring, positive=positive))
    positive, y, splits, outer, inner_of = task.positive, task.y, task.splits, task.outer, task.inner_of

    # -- the run folder -------------------------------------------------------------
    protocol_hash = task.protocol_hash
    store = task.open_store(out)

    block_id = _block_ids(features, blocks, variants)
    versions = package_versions(("xgboost", "joblib", "dask", "distributed"))
    binary = len(class_names) == 2
    pos_idx = class_names.index(positive) if binary else -1  # binary: the task's positive class, not index 1
    # Labels: the folder's first grid per head keeps the plain name; another gets a suffix.
    plain = store.plain_label_grids({h: grid_of[h] for h in heads})
    head_names = {h: h if json.loads(json.dumps(grid_of[h], default=str)) == plain[h]
                  else h + grid_suffix(grid_of[h]) for h in heads}

    def label(c: Candidate) -> str:
        return c.label(code_of, head_names)

    def rule_of(c: Candidate) -> int | None:
        # Hard votes of several classes still vote by argmax: their rule (and ids) stay.
        rule = ENSEMBLE_RULES.get(c.kind) if c.kind == "stack" or (c.kind == "vote-hard" and binary) else None
        return rule if rule is not None and rule > 1 else None

    def candidate_id(c: Candidate) -> str:
        spec: dict[str, Any] = {"kind": c.kind, "blocks": [block_id[b] for b in c.blocks],
                                "protocol": protocol_hash}
        if c.kind == "head":
            spec.update(head=c.head, grid=grid_of[c.head])
        else:
            spec.update(members=[candidate_id(m) for m in c.members()])
            if rule_of(c) is not None:  # absent for rule 1, so unchanged ensembles keep their ids
                spec.update(rule=rule_of(c))
        return sha(spec)[:16]

    head_cands = [Candidate("head", s, h) for s in subset_list for h in heads]
    ens_cands: list[Candidate] = []
    if ensembles and ens_heads:
        kinds = list(VOTE_KINDS) + (["stack"] if stacking else [])
        for s in subset_list:
            if len(s) * len(ens_heads) >= 2:
                ens_cands += [Candidate(k, s, None, tuple(ens_heads)) for k in kinds]
    cid = {c: candidate_id(c) for c in head_cands + ens_cands}
    eval_rows = {fold: ev for fold, _, ev in outer}
    train_rows = {fold: tr for fold, tr, _ in outer}

    optimistic = _optimistic_folds(features, names, task)

    def make_record(c: Candidate, fold: str, proba, pred, extra: dict[str, Any],
                    scores: np.ndarray | None = None) -> tuple[dict, dict]:
        fields = {
            "head": c.head,
            "heads": list(c.heads),
            "blocks": list(c.blocks),
            "codes": [code_of[b] for b in c.blocks],
            "size": len(c.blocks),
            **extra,
            "cache_keys": {b: block_id[b]["cache_key"] for b in c.blocks},
        }
        seen = sorted({b for b in c.blocks if fold in optimistic.get(b, ())})
        if seen:  # a fine-tuned network behind these features was trained on this fold's images
            fields.update(optimistic=True, optimistic_blocks=seen)
        return task.record(candidate_id=cid[c], candidate=label(c), kind=c.kind, fold=fold, proba=proba,
                           pred=pred, fields=fields, versions=versions, scores=scores)

    done = store.done()
    todo_heads = [(c, f) for c in head_cands for f, _, _ in outer if f"{cid[c]}/{f}" not in done]
    todo_ens = [(c, f) for c in ens_cands for f, _, _ in outer if f"{cid[c]}/{f}" not in done]
    total = len(head_cands + ens_cands) * len(outer)
    log(f"{len(head_cands)} head candidates and {len(ens_cands)} ensembles x {len(outer)} folds "
        f"= {total} records; {total - len(todo_heads) - len(todo_ens)} already in {store.root}")

    # -- units ------------------------------------------------------------------------
    from joblib import Parallel, delayed

    def blocks_of(fold: str) -> list[np.ndarray]:
        # Nested fine-tuned blocks: each outer fold gets its own network's features.
        return [variants.get(n, {}).get(fold, blocks[n]) for n in names]

    group_arr = splits.groups
    by_kernel: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    plain: list[tuple[Candidate, str]] = []
    from workbench.heads.kernels import fast_path_grid

    for c, f in todo_heads:
        if fast_path_grid(get_head(c.head), grid_of[c.head]):
            by_kernel.setdefault((c.head, f), []).append(c.blocks)
        else:
            plain.append((c, f))

    def units():
        # A generator, so no concatenation exists before its unit runs: 63 subsets of
        # six 4096-wide blocks would otherwise sit in memory all at once.
        for (h, f), subs in by_kernel.items():  # the big units first
            yield delayed(_kernel_unit)(blocks_of(f), names, subs, h, grid_of[h], y, len(class_names),
                                        f, train_rows[f], eval_rows[f], inner_of[f], scoring)
        for c, f in plain:
            yield delayed(_plain_unit)(blocks_of(f), [names.index(b) for b in c.blocks], c.head, grid_of[c.head],
                                       y, f, train_rows[f], eval_rows[f], group_arr, inner_cv, scoring, seed, names)

    bar = _progress(total, total - len(todo_heads) - len(todo_ens), progress)
    try:
        if by_kernel or plain:
            with _backend(backend, scheduler, n_jobs) as jobs:
                for outs in Parallel(n_jobs=jobs, return_as="generator_unordered")(units()):
                    for o in outs:
                        extra = {"best_params": o.best_params, "inner_score": o.inner_score,
                                 "seconds": round(o.seconds, 3)}
                        store.append(*make_record(o.candidate, o.fold, o.proba, o.proba.argmax(axis=1), extra,
                                                  o.scores))
                        bar.update(1)
        # -- ensembles, from the stored predictions -----------------------------------
        if todo_ens:
            stored = {r["key"]: r for r in store.records()}
            loaded: dict[str, np.ndarray] = {}  # every member's file is read once

            def member_key(m: Candidate, fold: str) -> str:
                key = f"{cid.get(m) or candidate_id(m)}/{fold}"
                if key not in stored:
                    raise RuntimeError(f"member {label(m)} has no record for fold {fold}")
                return key

            def member_proba(m: Candidate, fold: str) -> np.ndarray:
                key = member_key(m, fold)
                if key not in loaded:
                    loaded[key] = store.predictions(stored[key])["proba"]
                return loaded[key]

            cv_folds = [g for g, _, _ in outer if g != "test"]
            # Inner out-of-fold probabilities of the members of stacks (and of binary hard
            # votes, for their thresholds) on each CV fold's training rows; one refit set
            # per (member, fold), shared by every ensemble that needs it.
            needs_inner = [(m, f) for c, f in todo_ens
                           if f != "test" and (c.kind == "stack" or (c.kind == "vote-hard" and binary))
                           for m in c.members()]
            pairs = list(dict.fromkeys((m, f) for m, f in needs_inner))
            inner_proba: dict[tuple[Candidate, str], np.ndarray] = {}
            if pairs:
                log(f"refitting {len(pairs)} (member, fold) pairs on inner folds for stacks and hard votes")
                jobs_in = (delayed(_inner_oof_unit)(
                    blocks_of(f)[names.index(m.blocks[0])], m.head, stored[member_key(m, f)].get("best_params") or {},
                    y, train_rows[f], inner_of[f], len(class_names), seed) for m, f in pairs)
                with _backend(backend, scheduler, n_jobs) as jobs:
                    for pair, oof in zip(pairs, Parallel(n_jobs=jobs, return_as="generator")(jobs_in)):
                        inner_proba[pair] = oof
            thresholds: dict[tuple[Candidate, str], float] = {}

            def threshold(m: Candidate, f: str) -> float:
                # Youden on out-of-fold predictions the scored rows had no part in: inner
                # ones for a CV fold, the member's outer CV ones for test.
                if (m, f) not in thresholds:
                    from workbench.evaluation.stats import youden_threshold

                    if f == "test":
                        p = np.concatenate([member_proba(m, g) for g in cv_folds])
                        yy = np.concatenate([y[eval_rows[g]] for g in cv_folds])
                    else:
                        p, yy = inner_proba[(m, f)], y[train_rows[f]]
                    thresholds[(m, f)] = youden_threshold(yy == pos_idx, p[:, pos_idx])
                return thresholds[(m, f)]

            for c, f in todo_ens:
                t0 = time.perf_counter()
                members = c.members()
                probas = [member_proba(m, f) for m in members]
                extra: dict[str, Any] = {"members": [label(m) for m in members]}
                if rule_of(c) is not None:
                    extra["ensemble_rule"] = rule_of(c)
                if c.kind == "stack":
                    # The meta-learner never sees predictions made by members that trained
                    # on the rows it scores. Test: the members' outer CV out-of-fold
                    # probabilities. CV fold f: their inner out-of-fold probabilities on
                    # f's training rows (members refitted inside those rows).
                    if f == "test":
                        train_p = [np.concatenate([member_proba(m, g) for g in cv_folds]) for m in members]
                        y_tr = np.concatenate([y[eval_rows[g]] for g in cv_folds])
                    else:
                        train_p, y_tr = [inner_proba[(m, f)] for m in members], y[train_rows[f]]
                    pred, proba = stack(train_p, y_tr, probas, seed=seed)
                elif c.kind == "vote-hard" and binary:
                    ts = [threshold(m, f) for m in members]
                    extra["thresholds"] = ts
                    pred, proba = vote(probas, c.kind, thresholds=ts, positive=pos_idx)
                else:
                    pred, proba = vote(probas, c.kind)
                extra["seconds"] = round(time.perf_counter() - t0, 3)
                store.append(*make_record(c, f, proba, pred, extra))
                bar.update(1)
    finally:
        bar.close()
    frame = store.frame()
    mine = set(cid.values())
    return frame[frame["candidate_id"].isin(mine)].reset_index(drop=True) if len(frame) else frame


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="sweep", unit="record", disable=not enabled,
                dynamic_ncols=True, smoothing=0.05)

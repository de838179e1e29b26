"""The combination sweep: heads over every feature subset, vote ensembles, on fixed folds.

Three stages. Plan (:mod:`workbench.search.plan`): align feature blocks to the manifest,
check them, fix the splits, open the run folder and list every (candidate, fold) that
has no record yet. Run (:mod:`workbench.search.running`): the head units through
joblib, then the ensembles from the stored predictions. Record (here): each result is
appended to the run folder as it returns, so a killed sweep loses only the units in
flight.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import SWEEP_CODE_VERSION, Protocol, combine_external, load_external
from workbench.features.extraction import extract
from workbench.features.featureset import FeatureSet
from workbench.features.options import ExtractOptions
from workbench.search.candidates import Candidate
from workbench.search.options import Execution, SweepOptions
from workbench.search.plan import SweepInputError, SweepPlan, build_plan, check_heads
from workbench.search.running import EnsembleResult, HeadResult, MemoryBudgetError, run_ensembles, run_heads

__all__ = ["MemoryBudgetError", "SweepInputError", "sweep", "SWEEP_CODE_VERSION"]

logger = logging.getLogger(__name__)


def sweep(
    manifest: Manifest | str | os.PathLike,
    features: FeatureSet | Sequence[str],
    *,
    out: str | os.PathLike,
    protocol: Protocol | None = None,
    options: SweepOptions | None = None,
    execution: Execution | None = None,
    classes: Sequence[str] | None = None,
    cache: str | os.PathLike = "features_cache",
    extract_options: ExtractOptions | None = None,
    progress: bool = True,
    external: Mapping[str, Manifest | str | os.PathLike] | None = None,
) -> pd.DataFrame:
    """Evaluate heads on every feature subset, and vote ensembles, by nested CV and test.

    Parameters
    ----------
    manifest
        A :class:`Manifest` or its path; its ``split`` column gives the test set, its
        ``group`` column (if any) keeps a patient's images in one fold.
    features
        A :class:`FeatureSet` (it may hold more images than the manifest) or feature
        requests (``"alexnet:fc6,fc7"``) to extract, with ``extract_options``, or read
        from ``cache``.
    out
        Run folder: records are appended there, and a rerun skips what is recorded.
    protocol
        Folds, inner folds, seed, inner scoring, positive class (default :class:`Protocol`).
    options
        What is swept: heads, subsets, grids, ensembles (default :class:`SweepOptions`).
        The first grid a head is swept with in a run folder keeps the plain label
        (``svm-rbf``); another grid later gets it as a suffix (``svm-rbf{C=1,10}``).
        With two classes, hard-vote members vote at their own out-of-fold Youden
        thresholds (recorded as ``thresholds``). ``baseline:<name>`` ensemble members
        add hybrid ensembles once the baselines' records are in ``out`` (until then they
        are left to do, said in one log line; see :mod:`workbench.search.running`).
    execution
        joblib workers and backend (default: one process) and the memory budget of the
        SVM units (an SVM fast-path unit over it runs over fewer blocks, or as plain
        refits); never changes a number beyond libsvm's tolerance.
    classes
        Keep only these classes (in this order), e.g. ``["benign", "malignant"]``.
    progress
        Show a progress bar.
    external
        External test sets by name (manifests or their paths; ``classes`` selects in
        them too): every model fitted for the test split is also scored on each, as
        fold ``ext-<name>``; ``features`` must hold their rows (requests extract them).
        Images that also occur in ``manifest`` are refused. Adding a set to a finished
        run computes only its records.

    Returns
    -------
    DataFrame
        One row per (candidate, fold) of this sweep's candidates, metrics as columns;
        ``fold`` is ``"0"``.. for CV folds and ``"test"`` for the test split.

    Raises
    ------
    SweepInputError, FoldError, UnknownHeadError, ConfigError
        Before anything is written: unknown heads, grid parameters or blocks, features
        not matching the manifest, non-finite features, classes too small for the folds.
    MemoryBudgetError
        Before any head runs: an SVM subset whose plain refit alone is over its share of
        the memory budget (the message names both).
    """
    protocol, options, execution = protocol or Protocol(), options or SweepOptions(), execution or Execution()
    grids = check_heads(options)  # before the run folder is touched (and before extraction)
    external = load_external(external, classes)
    manifest, features = _inputs(manifest, features, classes, cache, extract_options, progress, external)
    plan = build_plan(manifest, features, out=out, protocol=protocol, options=options, grids=grids,
                      external=external)
    logger.info(f"{len(plan.head_candidates)} head candidates and {len(plan.ensemble_candidates)} ensembles x "
                f"{len(plan.task.outer)} folds = {plan.total} records; {plan.n_done} already in {plan.store.root}")
    if plan.waiting:  # not an error: `workbench run` sweeps again after its baselines
        logger.info(f"hybrid ensembles wait for the records of baseline {', '.join(plan.waiting)}: run the "
                    "baselines, then the sweep again")
    bar = tqdm(total=plan.total, initial=plan.n_done, desc="sweep", unit="record", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    with bar:
        for result in run_heads(plan, execution):
            record_head(plan, result)
            bar.update(1)
        # Ensembles read the members' stored predictions: every head is recorded by now.
        for result in run_ensembles(plan, execution):
            record_ensemble(plan, result)
            bar.update(1)
    return _own_rows(plan)


def _inputs(manifest: Manifest | str | os.PathLike, features: FeatureSet | Sequence[str],
            classes: Sequence[str] | None, cache: str | os.PathLike, extract_options: ExtractOptions | None,
            progress: bool, external: Mapping[str, Manifest] | None = None) -> tuple[Manifest, FeatureSet]:
    """The manifest (classes selected) and its features (the external sets' rows too),
    extracted when requests are given."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    if classes is not None:
        manifest = manifest.select_classes(classes)
    if not isinstance(features, FeatureSet):
        every = combine_external(manifest, external)[0]  # one pass over the manifest's and the sets' images
        features = extract(every, list(features), cache=cache, options=extract_options, progress=progress)
        ids_kept = set(features.ids)
        if len(ids_kept) != len(manifest):  # skip_bad dropped rows during extraction
            manifest = manifest.subset([i for i in manifest.ids if i in ids_kept])
    return manifest, features


# ---- recording -------------------------------------------------------------------


def _append(plan: SweepPlan, c: Candidate, fold: str, proba: np.ndarray, pred: np.ndarray,
            extra: dict[str, Any], scores: np.ndarray | None = None) -> None:
    """Append one (candidate, fold) record and its predictions to the run folder."""
    fields = {
        "head": c.head,
        "heads": list(c.heads),
        "blocks": list(c.blocks),
        "codes": [plan.codes[b] for b in c.blocks],
        "size": len(c.blocks),
        **extra,
        "cache_keys": {b: plan.block_ids[b]["cache_key"] for b in c.blocks},
    }
    seen = sorted({b for b in c.blocks if fold in plan.optimistic.get(b, ())})
    if seen:  # a fine-tuned network behind these features was trained on this fold's images
        fields.update(optimistic=True, optimistic_blocks=seen)
    plan.store.append(*plan.task.record(
        candidate_id=plan.ids[c], candidate=plan.label(c), kind=c.kind, fold=fold, proba=proba, pred=pred,
        fields=fields, versions=plan.versions, scores=scores))


def record_head(plan: SweepPlan, r: HeadResult) -> None:
    """Record a head's result; it predicts the class of highest probability."""
    extra = {"best_params": r.best_params, "inner_score": r.inner_score, "seconds": round(r.seconds, 3)}
    _append(plan, r.candidate, r.fold, r.proba, r.proba.argmax(axis=1), extra, r.scores)


def record_ensemble(plan: SweepPlan, r: EnsembleResult) -> None:
    """Record an ensemble's result."""
    _append(plan, r.candidate, r.fold, r.proba, r.pred, r.extra)


def _own_rows(plan: SweepPlan) -> pd.DataFrame:
    """The run folder's rows of this sweep's candidates (the folder may hold others)."""
    frame = plan.store.frame()
    mine = set(plan.ids.values())
    return frame[frame["candidate_id"].isin(mine)].reset_index(drop=True) if len(frame) else frame

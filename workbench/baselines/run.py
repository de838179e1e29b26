"""End-to-end CNN baselines on the sweep's folds, written into the same results store.

For every baseline and every outer fold (the CV folds of the training split, then the
test split) one network is fine-tuned on the fold's training images and scored on its
evaluation images, exactly the rows the classical heads saw. Records have
``kind="baseline"`` and otherwise the sweep's layout, so ``summarize`` and the search
rank both together. Fine-tuned networks live in the fine-tuned store under ids that
hash their data and config: a rerun, or a killed run, trains nothing twice.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.baselines.configs import BaselineSpec, get_baseline
from workbench.baselines.estimator import CNNClassifier
from workbench.data.manifest import Manifest
from workbench.core.provenance import package_versions
from workbench.evaluation.protocol import Protocol, build_task, fold_ids, sha

__all__ = ["run_baselines", "BASELINE_RECORD_VERSION"]

#: Bumped when what a baseline record holds changes; part of the candidate id, so the
#: next run re-scores the stored networks (no training) instead of reusing old records.
BASELINE_RECORD_VERSION = 2


def _spec(b: str | BaselineSpec, overrides: dict[str, Any]) -> BaselineSpec:
    spec = get_baseline(b) if isinstance(b, str) else b
    return spec.with_overrides(**overrides) if overrides else spec


def run_baselines(
    manifest: Manifest | str | os.PathLike,
    baselines: Sequence[str | BaselineSpec],
    out: str | os.PathLike,
    *,
    cv: int = 5,
    inner_cv: int = 3,
    seed: int = 0,
    scoring: str = "auc",
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    overrides: dict[str, Any] | None = None,
    tune: bool = False,
    tune_cv: int = 6,
    val_fraction: float = 0.15,
    root: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
    log=None,
) -> pd.DataFrame:
    """Fine-tune each baseline on every outer fold and on the training split; record them.

    Parameters
    ----------
    manifest, classes, positive, cv, inner_cv, seed, scoring
        As for :func:`workbench.search.sweep.sweep`; they must match the sweep's for
        the records to share its run folder (a mismatch is refused).
    baselines
        Names from :func:`~workbench.baselines.configs.list_baselines` or specs.
    out
        Run folder (shared with a sweep).
    overrides
        Config fields applied to every baseline (``{"epochs": 3, "image_size": 160}``
        for a CPU run).
    tune
        Choose each baseline's grid by ``tune_cv``-fold CV inside every training set
        (costly: grid size x ``tune_cv`` extra fine-tunes per fold). Off: the config's
        own settings, with early stopping on a ``val_fraction`` validation split.
    root, device
        Fine-tuned store and device (``None``: the GPU when there is one).

    Returns
    -------
    DataFrame
        The baselines' records (one row per baseline and fold).
    """
    say = log or ((lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None))
    overrides = dict(overrides or {})
    specs = [_spec(b, overrides) for b in baselines]  # unknown names fail before any work
    if not specs:
        raise ValueError("no baselines given (see `workbench baselines --list`)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"baseline named twice: {names}")
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    if classes is not None:
        manifest = manifest.select_classes(classes)
    # Fine-tuned ids hash the images' content, so every image is decoded and hashed first;
    # a bad image is named here, before any training.
    manifest = manifest.validate(progress=progress)
    task = build_task(manifest, Protocol(cv=cv, inner_cv=inner_cv, seed=seed, scoring=scoring, positive=positive))
    store = task.open_store(out)
    versions = package_versions(("grad-cam",))
    done = store.done()

    def candidate_id(s: BaselineSpec) -> str:
        return sha({"kind": "baseline", "backbone": s.backbone, "weights": s.weights, "config": s.config.to_dict(),
                    "grid": s.grid if tune else {}, "tune_cv": tune_cv if tune else None,
                    "val_fraction": val_fraction, "protocol": task.protocol_hash,
                    # 2: records carry the network's validation-split scores (threshold rule)
                    "record": BASELINE_RECORD_VERSION})[:16]

    cids = {s.name: candidate_id(s) for s in specs}
    row_of = {i: k for k, i in enumerate(task.ids)}
    id_set = set(row_of)
    todo = [(s, f) for s in specs for f, _, _ in task.outer if f"{cids[s.name]}/{f}" not in done]
    total = len(specs) * len(task.outer)
    say(f"{len(specs)} baselines x {len(task.outer)} folds = {total} fine-tunes; "
        f"{total - len(todo)} already in {store.root}")
    for k, (s, f) in enumerate(todo, 1):
        train_ids, eval_ids = fold_ids(task, f)
        say(f"[{k}/{len(todo)}] baseline {s.name} ({s.backbone}) fold {f}: "
            f"{len(train_ids)} training / {len(eval_ids)} evaluation images")
        t0 = time.perf_counter()
        est = CNNClassifier(s.backbone, manifest, weights=s.weights, config=s.config,
                            grid=s.grid if tune else None, tune_cv=tune_cv, val_fraction=val_fraction,
                            root=str(root) if root is not None else None, device=device, progress=progress)
        est.fit(train_ids)
        proba = est.predict_proba(eval_ids)
        ft = est.finetuned_
        fields = {
            "head": s.name, "heads": [], "blocks": [], "codes": [], "size": 0,
            "baseline": s.name, "backbone": s.backbone, "base_weights": ft.meta.get("base_weights"),
            "weights_id": ft.weights_id, "best_params": est.best_params_, "best_epoch": ft.best_epoch,
            "epochs_run": len(ft.history), "config": s.config.to_dict(),
            "seconds": round(time.perf_counter() - t0, 3), "record_version": BASELINE_RECORD_VERSION,
        }
        rec, preds = task.record(candidate_id=cids[s.name], candidate=f"CNN {s.name}", kind="baseline", fold=f,
                                 proba=proba, pred=proba.argmax(axis=1), fields=fields, versions=versions)
        # The network's own validation split (held out from its training, drawn like the
        # training split): the search sets this network's operating threshold on it, so
        # the threshold does not depend on the test split's class balance.
        val_ids = [i for i in ft.meta.get("val_ids", []) if i in id_set]
        if val_ids:
            preds.update(val_ids=np.array(val_ids), val_y=task.y[[row_of[i] for i in val_ids]],
                         val_proba=est.predict_proba(val_ids))
        store.append(rec, preds)
    frame = store.frame()
    if not len(frame):
        return frame
    return frame[frame["candidate_id"].isin(set(cids.values()))].reset_index(drop=True)

"""Baseline records as ``run_baselines`` writes them, from a cheap stand-in network.

A logistic regression on one feature block plays the fold's CNN: fitted on the fold's
training rows less a held-out validation split, it scores the fold's evaluation rows
and its validation split (``val_ids``, ``val_y``, ``val_proba``), like a fine-tuned
network with early stopping. Hybrid-ensemble tests use it instead of training CNNs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import Protocol, build_task
from workbench.features.featureset import FeatureSet


def add_network_baseline(run: Path, manifest: Manifest, fs: FeatureSet, protocol: Protocol, *,
                         name: str = "lite0", block: str = "resnet50:avgpool", C: float = 0.05,
                         cid: str | None = None, folds: Sequence[str] | None = None, val_fraction: float = 0.3,
                         seed: int = 0, with_val: bool = True) -> str:
    """Append baseline ``name``'s records (all folds, or ``folds``); return its candidate id.

    The validation split of each fold is a seeded, stratified draw of its training rows,
    stored in shuffled order (as a network's own split need not follow the manifest);
    ``with_val=False`` leaves the validation scores out (records made before they were kept).
    """
    task = build_task(manifest, protocol)
    store = task.open_store(run)
    X = np.asarray(fs[block])
    cid = cid or f"base-{name}-{C}"
    rng = np.random.default_rng(seed)
    for fold, tr, ev in task.outer:
        if folds is not None and fold not in folds:
            continue
        val = np.concatenate([rng.choice(tr[task.y[tr] == k], size=max(2, int(val_fraction * (task.y[tr] == k).sum())),
                                         replace=False) for k in np.unique(task.y[tr])])
        val = rng.permutation(val)
        fit = np.setdiff1d(tr, val)
        clf = LogisticRegression(C=C, max_iter=2000).fit(X[fit], task.y[fit])
        proba = clf.predict_proba(X[ev])
        rec, preds = task.record(
            candidate_id=cid, candidate=f"CNN {name}", kind="baseline", fold=fold, proba=proba,
            pred=proba.argmax(1), versions={},
            fields={"head": name, "heads": [], "blocks": [], "codes": [], "size": 0, "baseline": name,
                    "backbone": "tf_efficientnet_lite0", "weights_id": "ft-000000000000", "record_version": 2})
        if with_val:
            preds.update(val_ids=np.array([task.ids[i] for i in val]), val_y=task.y[val],
                         val_proba=clf.predict_proba(X[val]))
        store.append(rec, preds)
    return cid

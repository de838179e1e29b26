"""The evaluation protocol of a run folder, shared by the sweep and the CNN baselines.

Everything that makes two results comparable lives here: the task (ids, labels,
split, groups), the seeded outer and inner folds, the positive class, and the record
layout. The sweep and the end-to-end baselines build the same :class:`RunTask` from the
same manifest and settings, so their records land in one results store and rank
together; a store made under another protocol is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.core.hashing import stable_hash
from workbench.data.images import file_sha256
from workbench.data.manifest import Manifest
from workbench.evaluation.metrics import classification_metrics, default_positive
from workbench.evaluation.settings import SCORINGS, Protocol
from workbench.evaluation.splits import Splits
from workbench.evaluation.store import ResultStore, atomic_write
from workbench.errors import ConfigError

__all__ = ["Protocol", "RunTask", "SCORINGS", "build_task", "sha", "SWEEP_CODE_VERSION"]

#: Bumped when a change to the sweep would change its numbers; part of the protocol.
SWEEP_CODE_VERSION = "1"


def sha(obj: Any) -> str:
    """The stable hash of run protocols and task fingerprints."""
    return stable_hash(obj)


@dataclass
class RunTask:
    """A manifest bound to its folds: what every record of a run folder shares."""

    manifest: Manifest
    ids: list[str]
    class_names: list[str]
    y: np.ndarray  # class codes, manifest order
    positive: str
    splits: Splits
    outer: list[tuple[str, np.ndarray, np.ndarray]]  # (fold, train rows, evaluation rows); "test" last
    inner_of: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    seed: int
    protocol: dict[str, Any]
    protocol_hash: str

    @property
    def train_rows(self) -> dict[str, np.ndarray]:
        return {f: tr for f, tr, _ in self.outer}

    @property
    def eval_rows(self) -> dict[str, np.ndarray]:
        return {f: ev for f, _, ev in self.outer}

    def open_store(self, out) -> ResultStore:
        """Create (or check) the run folder under this protocol; write its splits once."""
        store = ResultStore(out)
        store.open(self.protocol)
        splits_csv = store.root / "splits.csv"
        if not splits_csv.exists():
            frame = pd.DataFrame({"id": self.ids, "label": self.manifest.labels, "fold": self.splits.assignment()})
            groups = [it.group or "" for it in self.manifest]
            if any(groups):  # the search clusters its test statistics by them
                frame["group"] = groups
            csv = frame.to_csv(index=False)
            atomic_write(splits_csv, csv.encode())
        return store

    def record(self, *, candidate_id: str, candidate: str, kind: str, fold: str, proba: np.ndarray,
               pred: np.ndarray, fields: dict[str, Any], versions: dict[str, str],
               scores: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One (candidate, fold) record and its predictions, metrics computed here."""
        ev = self.eval_rows[fold]
        y = self.y
        metrics = classification_metrics(y[ev], proba, classes=self.class_names, positive=self.positive,
                                         y_pred=pred)
        rec = {
            "key": f"{candidate_id}/{fold}",
            "candidate_id": candidate_id,
            "candidate": candidate,
            "kind": kind,
            **fields,
            "fold": fold,
            "n_train": int(len(self.train_rows[fold])),
            "n_eval": int(len(ev)),
            "metrics": metrics,
            "protocol": self.protocol_hash,
            "seed": self.seed,
            "positive": self.positive,
            "versions": versions,
        }
        preds = {"ids": np.array([self.ids[i] for i in ev]), "y_true": y[ev], "proba": proba,
                 "pred": np.asarray(pred)}
        if scores is not None:  # raw decision values (SVMs), for ROC curves without calibration
            preds["scores"] = scores
        return rec, preds


def _canonical_keys(items: Sequence) -> list[tuple[str, str]]:
    """Per item ``(sha256 of the image file, id)``; ``("", id)`` for all when a file cannot be read.

    A manifest that was not validated has no hashes yet: the files are hashed here, so a
    sweep and a baselines run on the same data agree whether or not they validated it.
    """
    keys = []
    for it in items:
        digest = it.sha256
        if digest is None:
            try:
                digest = file_sha256(it.path)  # the digest validation would record
            except OSError:  # synthetic tasks without files: order by id alone
                return [("", item.id) for item in items]
        keys.append((digest, it.id))
    return keys


def build_task(manifest: Manifest, protocol: Protocol) -> RunTask:
    """Fix the folds and the protocol of ``manifest`` (classes already selected)."""
    cv, inner_cv, seed, scoring = protocol.cv, protocol.inner_cv, protocol.seed, protocol.scoring
    positive = protocol.positive
    class_names = list(manifest.classes)
    if positive is not None and positive not in class_names:
        raise ConfigError(f"positive class {positive!r} is not one of {class_names}")
    positive = positive or default_positive(class_names)
    ids = manifest.ids
    y = np.array([class_names.index(lab) for lab in manifest.labels])
    items = list(manifest)
    groups = [it.group for it in items] if protocol.groups else [None] * len(items)
    # Folds follow the images, not the listing: rows sorted by content hash (ties by id).
    splits = Splits.build(y, [it.split for it in items], n_splits=cv, inner_splits=inner_cv, seed=seed,
                          groups=groups, classes=class_names, order=_canonical_keys(items))
    outer = splits.outer()
    inner_of = {fold: splits.inner(tr, y, class_names) for fold, tr, _ in outer}
    record = {
        "format": 1,
        "sweep_code_version": SWEEP_CODE_VERSION,
        # Sorted by id: the same images, labels and splits listed in another order are the same task.
        "task": sha(sorted((it.id, it.label, it.split or "", it.group or "") for it in items))[:16],
        "n_images": len(ids),
        "classes": class_names,
        "positive": positive,
        "cv": cv,
        "inner_cv": inner_cv,
        "seed": seed,
        "scoring": scoring,
        "folds": sha(sorted(zip(ids, splits.assignment())))[:16],
    }
    if not protocol.groups:  # only when set, so runs made before this switch keep their hash
        record["groups"] = False
    return RunTask(manifest, ids, class_names, y, positive, splits, outer, inner_of, seed, record,
                   sha(record)[:16])


def fold_ids(task: RunTask, fold: str) -> tuple[list[str], list[str]]:
    """Training and evaluation ids of ``fold`` (``"test"``: the whole training split vs test)."""
    return ([task.ids[i] for i in task.train_rows[fold]], [task.ids[i] for i in task.eval_rows[fold]])


def seen_by(trained_ids: Sequence[str], task: RunTask, fold: str) -> bool:
    """Whether a network trained on ``trained_ids`` saw any image that ``fold`` evaluates."""
    s = set(trained_ids)
    return any(task.ids[i] in s for i in task.eval_rows[fold])

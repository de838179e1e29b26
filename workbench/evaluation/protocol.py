"""The evaluation protocol of a run folder, shared by the sweep and the CNN baselines.

Everything that makes two results comparable lives here: the task (ids, labels,
split, groups), the seeded outer and inner folds, the positive class, and the record
layout. The sweep and the end-to-end baselines build the same :class:`RunTask` from the
same manifest and settings, so their records land in one results store and rank
together; a store made under another protocol is refused.

External test sets (another site, another scanner) are further evaluation rows appended
after the manifest's: fold ``ext-<name>`` trains on the whole training split, as the
test split does, so every model evaluated on test is evaluated on them unchanged. They
leave the protocol (and its hash) as it is: a site added to a finished run computes only
its own records. The run folder remembers each set's digest (``external.json``, rows in
``external.csv``) and refuses a set changed under a name it already holds.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.core.hashing import stable_hash
from workbench.data.images import file_sha256
from workbench.data.manifest import Manifest
from workbench.evaluation.metrics import classification_metrics, default_positive
from workbench.evaluation.settings import SCORINGS, TEST_FOLD, Protocol, external_fold_name, is_external_fold
from workbench.evaluation.splits import Splits
from workbench.evaluation.store import ResultStore, atomic_write
from workbench.errors import ConfigError, WorkbenchError

__all__ = ["ExternalSet", "ExternalSetError", "Protocol", "RunTask", "SCORINGS", "build_task", "check_external_name",
           "combine_external", "load_external", "recorded_external_sets", "sha", "SWEEP_CODE_VERSION"]

#: Bumped when a change to the sweep would change its numbers; part of the protocol.
SWEEP_CODE_VERSION = "1"


def sha(obj: Any) -> str:
    """The stable hash of run protocols and task fingerprints."""
    return stable_hash(obj)


class ExternalSetError(WorkbenchError, ValueError):
    """An external test set that cannot be used: a bad name, ids taken by another set,
    labels outside the task's classes, an image that also occurs in the run's own data,
    or a set changed under a name the run folder already holds."""


#: What an external set may be called: it names a fold (``ext-<name>``), files and columns.
_EXTERNAL_NAME = re.compile(r"[A-Za-z0-9_]+")


def check_external_name(name: Any) -> str:
    """``name`` if it can name an external test set (letters, digits, ``_``), else ExternalSetError."""
    if not isinstance(name, str) or not _EXTERNAL_NAME.fullmatch(name):
        raise ExternalSetError(f"external test set name {name!r}: use letters, digits and '_' only "
                               f"(it names the fold ext-<name>)")
    return name


@dataclass(frozen=True)
class ExternalSet:
    """One external test set of a task: its rows (after the manifest's) and identity.

    ``digest`` hashes its ids, labels, groups, boxes and image contents: records of fold
    ``ext-<name>`` carry it, and a run folder refuses another set under the same name.
    ``held_out``: its manifest file is the main manifest's (a held-out part of the same
    collection, not another site).
    """

    name: str
    rows: np.ndarray
    digest: str
    source: str
    held_out: bool

    @property
    def fold(self) -> str:
        return external_fold_name(self.name)

    def describe(self, y: np.ndarray, class_names: list[str]) -> dict[str, Any]:
        """What ``external.json`` keeps of the set."""
        counts = {c: int((y[self.rows] == k).sum()) for k, c in enumerate(class_names)}
        return {"digest": self.digest, "fold": self.fold, "n_images": int(len(self.rows)), "classes": counts,
                "source": self.source, "held_out": self.held_out}


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
    #: External test sets by name; their rows follow the manifest's (see :func:`build_task`).
    external: dict[str, ExternalSet] = field(default_factory=dict)

    @property
    def n_internal(self) -> int:
        """Rows of the manifest itself (CV and test); external rows come after them."""
        return len(self.ids) - sum(len(e.rows) for e in self.external.values())

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
            n = self.n_internal  # the manifest's own rows: external sets go to external.csv
            frame = pd.DataFrame({"id": self.ids[:n], "label": self.manifest.labels[:n],
                                  "fold": self.splits.assignment()})
            for r in range(1, self.splits.repeats):  # one column per further repeat of the CV
                frame[f"fold_r{r}"] = self.splits.assignment(r)
            groups = [it.group or "" for it in list(self.manifest)[:n]]
            if any(groups):  # the search clusters its test statistics by them
                frame["group"] = groups
            csv = frame.to_csv(index=False)
            atomic_write(splits_csv, csv.encode())
        if self.external:
            self._open_external(store)
        return store

    def _open_external(self, store: ResultStore) -> None:
        """Record new external sets in ``external.json`` / ``external.csv``; refuse a set
        whose content changed under a name the folder already holds.

        Kept out of ``splits.csv`` (written once, read back to rebuild the run's task) so
        the internal protocol's files are the same with and without external sets.
        """
        path = store.root / "external.json"
        known = recorded_external_sets(store.root)
        changed = [n for n, e in self.external.items() if n in known and known[n].get("digest") != e.digest]
        if changed:
            shown = "; ".join(f"{n!r}: {known[n].get('digest')} there, {self.external[n].digest} now"
                              for n in changed)
            raise ExternalSetError(
                f"external test set(s) changed since their records were made in {store.root} ({shown}): images, "
                f"ids or labels differ. Give the changed set another name, or delete its records to start over")
        new = [n for n in self.external if n not in known]
        if not new:
            return
        rows = []
        for n in new:
            e = self.external[n]
            known[n] = e.describe(self.y, self.class_names)
            rows += [{"id": self.ids[i], "label": self.class_names[self.y[i]], "fold": e.fold,
                      "group": self.manifest[i].group or ""} for i in e.rows]
        csv_path = store.root / "external.csv"
        frame = pd.DataFrame(rows, columns=["id", "label", "fold", "group"])
        if csv_path.exists():  # sets added earlier stay listed
            old = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
            frame = pd.concat([old[~old["fold"].isin(frame["fold"])], frame], ignore_index=True)
        atomic_write(csv_path, frame.to_csv(index=False).encode())
        atomic_write(path, (json.dumps(known, indent=1, sort_keys=True) + "\n").encode())

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
        if is_external_fold(fold):  # which content of the set these predictions are of
            ext = next(e for e in self.external.values() if e.fold == fold)
            rec.update(external_set=ext.name, external_digest=ext.digest)
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


def recorded_external_sets(run: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """What ``run/external.json`` records of each external set by name (``{}`` without one).

    Raises
    ------
    ExternalSetError
        The file is not valid JSON, naming it.
    """
    path = Path(run) / "external.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExternalSetError(f"{path} is not valid JSON ({e}); restore it or delete the run folder") from None


def _external_digest(items: Sequence, keys: Sequence[tuple[str, str]]) -> str:
    """A set's identity: ids, labels, groups, boxes and image contents, in any order."""
    return sha(sorted((it.id, it.label, it.group or "", list(it.box) if it.box else None, k[0])
                      for it, k in zip(items, keys)))[:16]


def _shown(ids: Sequence[str], k: int = 5) -> str:
    return ", ".join(map(repr, list(ids)[:k])) + (f" and {len(ids) - k} more" if len(ids) > k else "")


def load_external(external: Mapping[str, Manifest | str | os.PathLike] | None,
                  classes: Sequence[str] | None = None) -> dict[str, Manifest]:
    """External test sets as manifests (loaded from their paths), only ``classes`` kept,
    as the task's own manifest is reduced to them."""
    out = {}
    for name, m in (external or {}).items():
        m = m if isinstance(m, Manifest) else Manifest.load(m)
        out[check_external_name(name)] = m if classes is None else m.subset(
            [it.id for it in m if it.label in set(classes)])
    return out


def combine_external(manifest: Manifest, external: Mapping[str, Manifest] | None
                     ) -> tuple[Manifest, dict[str, tuple[list, list[tuple[str, str]]]]]:
    """``manifest`` with the external sets' items appended (sets in name order), checked.

    Returns the combined manifest (``manifest`` itself without external sets) and, per
    set, its items and their ``(sha256, id)`` keys.

    Raises
    ------
    ExternalSetError
        A bad or empty set name; an id the manifest or another set already uses; a label
        outside the manifest's classes (select the task's classes first); an image whose
        bytes equal an image of the manifest (its training or test split), naming both ids.
    """
    if not external:
        return manifest, {}
    classes = list(manifest.classes)
    main_items = list(manifest)
    main_keys = _canonical_keys(main_items)
    by_digest = {d: (i, it.split) for (d, i), it in zip(main_keys, main_items) if d}
    taken = {i: "the manifest" for i in manifest.ids}
    parts: dict[str, tuple[list, list[tuple[str, str]]]] = {}
    for name in sorted(external):
        check_external_name(name)
        items = list(external[name])
        if not items:
            raise ExternalSetError(f"external test set {name!r} holds no images")
        clash = [it.id for it in items if it.id in taken]
        if clash:
            where = sorted({taken[i] for i in clash})
            raise ExternalSetError(f"external test set {name!r}: id(s) {_shown(clash)} already used by "
                                   f"{' and '.join(where)}; give the set's images ids of their own (a prefix)")
        bad = [f"{it.id!r} ({it.label})" for it in items if it.label not in classes]
        if bad:
            raise ExternalSetError(f"external test set {name!r}: label(s) outside the task's classes {classes}: "
                                   f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; select the task's "
                                   f"classes for the set too, or remove these images")
        keys = _canonical_keys(items)
        leaked = [(i, by_digest[d]) for d, i in keys if d and d in by_digest]
        if leaked:
            shown = "; ".join(f"{i!r} is {m!r} ({'test' if sp == TEST_FOLD else 'training'} split)"
                              for i, (m, sp) in leaked[:5])
            raise ExternalSetError(
                f"external test set {name!r}: {len(leaked)} image(s) also occur in the run's own data (same "
                f"SHA-256): {shown}{' ...' if len(leaked) > 5 else ''}. An external test image must be one the "
                f"models never saw; remove them from the set")
        taken.update({it.id: f"external set {name!r}" for it in items})
        parts[name] = (items, keys)
    combined = Manifest(main_items + [it for items, _ in parts.values() for it in items], source=manifest.source,
                        classes=classes, bad_rows=manifest.bad_rows, skipped=manifest.skipped)
    return combined, parts


def build_task(manifest: Manifest, protocol: Protocol, external: Mapping[str, Manifest] | None = None) -> RunTask:
    """Fix the folds and the protocol of ``manifest`` (classes already selected).

    Parameters
    ----------
    manifest, protocol
        The task's images (labels, splits, groups) and how it is evaluated.
    external
        External test sets by name (letters, digits, ``_``), each a manifest of images
        the run's models never train on (its ``split`` column is ignored). Their rows
        follow the manifest's in ``ids``, ``y`` and ``task.manifest``; each is one more
        outer fold, ``ext-<name>`` after ``"test"``, with the test split's training rows
        (the whole training split), so every model fitted for the test split is
        evaluated on it unchanged. The CV folds, the test split, the protocol record and
        its hash are those of ``manifest`` alone (see :func:`combine_external` for what
        is refused).
    """
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
                          groups=groups, classes=class_names, order=_canonical_keys(items),
                          repeats=protocol.repeats)
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
    if protocol.repeats > 1:  # likewise: one repeat is the protocol runs always had
        record["repeats"] = protocol.repeats
        record["repeat_folds"] = sha(sorted(zip(ids, *(splits.assignment(r) for r in range(protocol.repeats)))))[:16]
    task = RunTask(manifest, ids, class_names, y, positive, splits, outer, inner_of, seed, record, sha(record)[:16])
    return _with_external(task, external) if external else task


def _with_external(task: RunTask, external: Mapping[str, Manifest]) -> RunTask:
    """``task`` with the external sets' rows and folds appended (its protocol unchanged)."""
    combined, parts = combine_external(task.manifest, external)
    n = len(task.ids)
    sets: dict[str, ExternalSet] = {}
    outer = list(task.outer)
    train = task.splits.train  # the test split's training rows: the models evaluated on test
    inner = task.inner_of.get(TEST_FOLD) or task.splits.inner(train, task.y, task.class_names)
    inner_of = dict(task.inner_of)
    for name, (items, keys) in parts.items():
        rows = np.arange(n, n + len(items))
        n += len(items)
        sets[name] = ExternalSet(name, rows, _external_digest(items, keys), str(external[name].source),
                                 held_out=Path(external[name].source).resolve() == Path(task.manifest.source).resolve())
        outer.append((sets[name].fold, train, rows))
        inner_of[sets[name].fold] = inner
    y = np.array([task.class_names.index(lab) for lab in combined.labels])
    return RunTask(combined, combined.ids, task.class_names, y, task.positive, task.splits, outer, inner_of,
                   task.seed, task.protocol, task.protocol_hash, sets)


def fold_ids(task: RunTask, fold: str) -> tuple[list[str], list[str]]:
    """Training and evaluation ids of ``fold`` (``"test"``: the whole training split vs test)."""
    return ([task.ids[i] for i in task.train_rows[fold]], [task.ids[i] for i in task.eval_rows[fold]])


def seen_by(trained_ids: Sequence[str], task: RunTask, fold: str) -> bool:
    """Whether a network trained on ``trained_ids`` saw any image that ``fold`` evaluates."""
    s = set(trained_ids)
    return any(task.ids[i] in s for i in task.eval_rows[fold])

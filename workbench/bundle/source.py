"""What a bundle is exported from: a run folder, its manifest and its feature cache.

:class:`RunSource` re-binds a run's manifest to the run's own folds (and refuses a
manifest that does not give the same task), finds a candidate's records, and reads the
training rows of any block from the cache entry the run's test record names, so a
refitted head sees exactly the numbers the run fitted it on (on a Y-Net's predicted
boxes: the rows keyed by the boxes the run's box file holds).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.errors import ConfigError, WorkbenchError
from workbench.evaluation.protocol import RunTask, build_task
from workbench.evaluation.settings import Protocol
from workbench.evaluation.store import ResultStore
from workbench.features.cache import CacheEntry, entry_key
from workbench.features.extraction import row_key
from workbench.features.online import BlockDef
from workbench.features.predicted_boxes import BoxNet, PredictedBoxes, predicted_boxes
from workbench.data.manifest import Item, Manifest
from workbench.search.select import UnknownCandidateError

__all__ = ["RunSource", "RunSourceError"]


class RunSourceError(WorkbenchError, ValueError):
    """A run folder, manifest or cache that cannot give the run's exact training data."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise RunSourceError(f"{path}: not valid JSON ({e})") from None


@dataclass
class RunSource:
    """A run folder bound to its manifest (validated) and feature cache.

    Parameters
    ----------
    run
        The run folder (records, ``run.json``, ``splits.csv``).
    manifest
        The manifest the run was made from; default: the one ``workbench run`` recorded
        in ``inputs.json``.
    cache, finetuned
        Feature cache and fine-tuned store; default: those ``workbench run`` recorded in
        ``inputs.json``, else ``features_cache`` and ``finetuned``.
    """

    run: Path
    manifest_path: Path | None = None
    cache_root: Path | None = None
    finetuned_root: Path | None = None
    progress: bool = True
    store: ResultStore = field(init=False)
    protocol: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.run = Path(self.run)
        if not (self.run / "run.json").is_file():
            raise RunSourceError(f"{self.run}: no run.json; give a run folder (`workbench run` or a sweep's --out)")
        self.store = ResultStore(self.run)
        self.protocol = self.store.protocol()
        self.inputs = _read_json(self.run / "inputs.json")
        if self.manifest_path is None:
            m = self.inputs.get("manifest_file")
            if not m:
                raise RunSourceError(f"{self.run}: the run does not record its manifest (no inputs.json); "
                                     f"give it: --manifest PATH")
            self.manifest_path = Path(m)
        # `workbench run` records where its cache and fine-tuned store were; a sweep folder does not.
        self.cache_root = Path(self.cache_root or self.inputs.get("cache_root") or "features_cache")
        ft = self.finetuned_root or self.inputs.get("finetuned_root") or "finetuned"
        self.finetuned_root = Path(ft)
        self._task: RunTask | None = None
        self._rows: dict[str, tuple] = {}  # block name -> its training rows (members share blocks)
        self._records = self.store.current_records()

    # -- records ---------------------------------------------------------------------
    def candidates(self) -> list[str]:
        return sorted({r["candidate"] for r in self._records})

    def record(self, candidate: str, fold: str = "test") -> dict[str, Any]:
        """The record of ``candidate`` on ``fold``, or an error naming close candidates."""
        for r in self._records:
            if r["candidate"] == candidate and r["fold"] == fold:
                return r
        if candidate not in self.candidates():
            raise UnknownCandidateError(candidate, self.candidates())
        raise RunSourceError(f"{candidate!r} has no record on fold {fold!r} in {self.run}; "
                             f"run the sweep (or baselines) to the end first")

    # -- the task --------------------------------------------------------------------
    @property
    def task(self) -> RunTask:
        """The run's task rebuilt from the manifest; refused unless it is the same task."""
        if self._task is None:
            self._task = self._build_task()
        return self._task

    def _build_task(self) -> RunTask:
        p = self.protocol
        splits = pd.read_csv(self.run / "splits.csv", dtype=str, keep_default_na=False)
        manifest = Manifest.load(self.manifest_path)
        manifest = manifest.select_classes(p["classes"])
        manifest = manifest.validate(progress=self.progress)
        try:
            manifest = manifest.subset(list(splits["id"]))
        except (ConfigError, KeyError) as e:
            raise RunSourceError(f"{self.manifest_path}: does not hold the run's images ({e})") from None
        protocol = Protocol(cv=p["cv"], inner_cv=p["inner_cv"], seed=p["seed"], scoring=p["scoring"],
                            positive=p.get("positive"), groups=p.get("groups", True), repeats=p.get("repeats", 1))
        task = build_task(manifest, protocol)
        for key in ("task", "folds", "repeat_folds"):  # repeat_folds: only runs of several CV repeats have it
            if task.protocol.get(key) != p.get(key):
                raise RunSourceError(
                    f"{self.manifest_path}: gives another {key} than the run's ({task.protocol.get(key)} vs "
                    f"{p.get(key)} in {self.run / 'run.json'}): labels, splits or images changed since the run")
        return task

    # -- features --------------------------------------------------------------------
    def block_def(self, name: str, record: dict[str, Any]) -> BlockDef:
        """What block ``name`` of ``record`` is, from the cache entry the record names."""
        key = (record.get("cache_keys") or {}).get(name)
        if key is None:
            raise RunSourceError(f"record {record['key']} does not name the cache entry of {name}; "
                                 f"re-run the sweep with this workbench to record it")
        entry = CacheEntry(self.cache_root, key)
        if not (entry.dir / "meta.json").is_file():
            raise RunSourceError(f"{entry.dir}: the cache entry of {name} is not in {self.cache_root} (give the "
                                 f"run's cache: --cache DIR)")
        fields = entry.meta.get("fields", {})
        if entry_key(fields) != key:
            raise RunSourceError(f"{entry.dir / 'meta.json'}: its fields do not hash to the entry's key; damaged")
        block = BlockDef.from_meta(name, fields)
        if entry_key(block.entry_fields()) != key:  # a field BlockDef does not carry
            raise RunSourceError(f"{entry.dir / 'meta.json'}: fields this workbench does not know "
                                 f"({sorted(fields)}); export with the workbench that made the run")
        return block

    def training_rows(self, block: BlockDef) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(X, y, groups)`` of the whole training split for ``block`` (the test fold's
        training rows), read from the cache entry the run used, as the sweep read them.

        A block on a Y-Net's predicted boxes (``block.boxes``) keys its rows by those boxes:
        they are read from the box file beside the cache (computed again only where it
        lacks an image), never from the manifest's manual boxes.
        """
        if block.name not in self._rows:
            task = self.task
            rows = task.train_rows["test"]
            items = [task.manifest[i] for i in rows]
            if block.boxes is not None:
                items = self.predicted_boxes(block, items).boxed(items)
            # The entry's key is the hash of the block's fields (block_def checked it).
            entry = CacheEntry(self.cache_root, entry_key(block.entry_fields()))
            try:
                X = entry.read([row_key(it, block.preprocess["input"]) for it in items])
            except KeyError as e:
                on = (f" on the boxes of Y-Net {block.boxes['backbone']}@{block.boxes['weights_id']}"
                      if block.boxes is not None else "")
                raise RunSourceError(f"{block.name}: the run's training rows{on} are not all in {self.cache_root} "
                                     f"({e.args[0]}); give the run's cache: --cache DIR") from None
            groups = task.splits.groups
            self._rows[block.name] = (X, task.y[rows], None if groups is None else np.asarray(groups)[rows])
        return self._rows[block.name]

    def predicted_boxes(self, block: BlockDef, items: list[Item]) -> PredictedBoxes:
        """The boxes ``block``'s Y-Net predicts for ``items``, as the run's extraction got
        them: the Y-Net from the run's fine-tuned store (checked against the digest the
        block's entry names), the boxes from the run's box file at the entry's precision."""
        if block.boxes is None:
            raise RunSourceError(f"{block.name}: not a block on predicted boxes")
        net = BoxNet.from_fields(block.boxes, root=self.finetuned_root)
        return predicted_boxes(items, net, cache_root=self.cache_root, precision=block.boxes["precision"],
                               progress=self.progress)

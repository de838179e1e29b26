"""Nested fine-tuning: one network per outer fold, so CV on fine-tuned features is clean.

A network fine-tuned on the whole training split has seen every CV fold's images; CV
estimates on its features are optimistic. The nested set fine-tunes, for every outer
fold of the sweep's protocol, one network on that fold's training images only (and one
on the whole training split for the test split). ``BACKBONE@ftn-<hash>:TAP`` then
extracts every member's features, and the sweep feeds each fold its own network's.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from workbench.backbones.finetuned import NESTED_PREFIX, finetuned_dir
from workbench.core.io import write_json_atomic
from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import Protocol, build_task, sha
from workbench.training.finetune import FineTuneConfig, FineTuned, fine_tune, validation_split

__all__ = ["NestedSet", "fine_tune_nested"]

logger = logging.getLogger(__name__)


@dataclass
class NestedSet:
    """A finished nested set: its id and the fine-tuned member of every outer fold."""

    backbone: str
    nested_id: str
    members: dict[str, FineTuned]

    @property
    def label(self) -> str:
        return f"{self.backbone}@{self.nested_id}"


def fine_tune_nested(
    backbone: str,
    manifest: Manifest,
    config: FineTuneConfig | None = None,
    *,
    protocol: Protocol,
    weights: str | None = None,
    val_fraction: float = 0.15,
    root: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
) -> NestedSet:
    """Fine-tune ``backbone`` once per outer fold of the sweep's ``protocol``.

    ``manifest`` must be the sweep's (classes selected, validated) and ``protocol`` the
    sweep's own, so the folds are the same. Members are ordinary fine-tuned weights
    (reused when they exist); ``val_fraction`` of each fold's training images is held
    out for early stopping.
    """
    config = config or FineTuneConfig()
    task = build_task(manifest, protocol)
    items = list(manifest)
    members: dict[str, FineTuned] = {}
    for fold, train_rows, _ in task.outer:
        train, val = validation_split([items[i] for i in train_rows], val_fraction, config.seed)
        logger.info(f"nested fine-tuning {backbone}: fold {fold} ({len(train)} training, "
                    f"{len(val)} validation images)")
        members[fold] = fine_tune(backbone, train, val, task.class_names, config, weights=weights, root=root,
                                  device=device, progress=progress)
    ids = {f: m.weights_id for f, m in members.items()}
    nested_id = NESTED_PREFIX + sha({"members": ids, "protocol": task.protocol_hash})[:12]
    name = members["test"].backbone
    folder = finetuned_dir(name, nested_id, root)
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"backbone": name, "nested_id": nested_id, "members": ids,
                            "protocol": task.protocol, "protocol_hash": task.protocol_hash,
                            "classes": task.class_names, "config": config.to_dict(), "val_fraction": val_fraction}
    write_json_atomic(folder / "nested.json", info)
    logger.info(f"nested set {backbone}@{nested_id}: {', '.join(f'{f}={i}' for f, i in ids.items())}")
    return NestedSet(name, nested_id, members)

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
from typing import TYPE_CHECKING, Any


from workbench.backbones.finetuned import NESTED_PREFIX, finetuned_dir, resolved_root
from workbench.core.io import write_json_atomic
from workbench.core.parallel import gpu_resources, in_this_process, unordered, worker_threads, workers
from workbench.data.manifest import Item, Manifest
from workbench.data.pixels import PixelStore
from workbench.evaluation.protocol import Protocol, RunTask, build_task, sha
from workbench.evaluation.settings import TEST_FOLD, is_cv_fold
from workbench.errors import ConfigError
from workbench.training.finetune import FineTuneConfig, FineTuned, _plan, fine_tune, validation_split

if TYPE_CHECKING:  # search sits above training: its Execution is only a type here
    from workbench.search.options import Execution

__all__ = ["NestedSet", "fine_tune_folds", "fine_tune_nested", "networks_per_set"]

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


def fine_tune_folds(task: RunTask) -> list[str]:
    """The folds that get a network of their own, in order: every CV fold of every
    repeat, then the test split. External test sets get none: the test split's network
    (trained on the whole training split) scores them."""
    return [f for f, _, _ in task.outer if is_cv_fold(f) or f == TEST_FOLD]


def networks_per_set(task: RunTask, folds: list[str]) -> str:
    """``"3 repeats x 5 folds + test = 16 networks"``: what one nested set or one
    baseline trains under ``task``'s protocol."""
    k, repeats = task.splits.n_splits, task.splits.repeats
    cv = f"{repeats} repeats x {k} folds" if repeats > 1 else f"{k} folds"
    return cv + (" + test" if TEST_FOLD in folds else "") + f" = {len(folds)} networks"


def _member_unit(fold: str, backbone: str, train: list[Item], val: list[Item], classes: list[str],
                 config: FineTuneConfig, weights: str | None, root: str | os.PathLike | None,
                 device: str | None, pixels: PixelStore | None = None) -> tuple[str, str]:
    """One member trained in a worker; only its fold and id come back (the network is in
    the store, and the parent loads it from there rather than receiving it pickled)."""
    ft = fine_tune(backbone, train, val, classes, config, weights=weights, root=root, device=device,
                   progress=False, pixels=pixels)
    return fold, ft.weights_id


def _finished(backbone: str, train: list[Item], val: list[Item], classes: list[str], config: FineTuneConfig,
              weights: str | None, root: str | os.PathLike | None, device: str | None) -> bool:
    """Whether the store already holds this member (it would load, not train)."""
    return _plan(backbone, train, val, classes, config, weights=weights, root=root, device=device,
                 context=None).in_store


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
    execution: Execution | None = None,
    pixels: PixelStore | None = None,
) -> NestedSet:
    """Fine-tune ``backbone`` once per outer fold of the sweep's ``protocol``.

    ``manifest`` must be the sweep's (classes selected, validated) and ``protocol`` the
    sweep's own, so the folds are the same: one member per CV fold of every repeat and
    one for the test split, ``repeats x cv + 1`` networks. Members are ordinary
    fine-tuned weights (reused when they exist); ``val_fraction`` of each fold's
    training images is held out for early stopping. ``execution`` spreads the members
    over joblib workers (torch limited to ``cores // n_jobs`` threads each); ``None``
    or one job trains them one after the other in this process. ``pixels``: the pixel
    store the members read their images from (the same tensors: ids unchanged).
    """
    config = config or FineTuneConfig()
    if config.is_ynet:  # a nested set exists to give clean feature blocks, and a Y-Net is not one
        raise ConfigError("a nested fine-tuned set is for feature blocks; a Y-Net (model = 'ynet') gives none. "
                          "Run it as a baseline (workbench baselines --baselines ynet-lite0), which trains one "
                          "per outer fold")
    task = build_task(manifest, protocol)
    items = list(manifest)
    rows = task.train_rows
    folds = fine_tune_folds(task)
    lists = {f: validation_split([items[i] for i in rows[f]], val_fraction, config.seed) for f in folds}
    done = sum(_finished(backbone, *lists[f], task.class_names, config, weights, root, device) for f in folds)
    logger.info(f"nested fine-tuning {backbone}: {networks_per_set(task, folds)}; {done} already in the store")
    members: dict[str, FineTuned] = {}
    if in_this_process(execution):
        for fold in folds:
            train, val = lists[fold]
            logger.info(f"nested fine-tuning {backbone}: fold {fold} ({len(train)} training, "
                        f"{len(val)} validation images)")
            members[fold] = fine_tune(backbone, train, val, task.class_names, config, weights=weights, root=root,
                                      device=device, progress=progress, pixels=pixels)
    else:
        threads = worker_threads(execution)
        # Resolved here: a reused worker process keeps the environment and folder it started in.
        root = resolved_root(root)
        logger.info(f"nested fine-tuning {backbone}: {len(folds)} members on {workers(execution)} "
                    f"{execution.backend} workers" + ("" if threads is None else f", {threads} torch thread(s) each"))
        if pixels is not None:  # as the store: a worker may start in another folder
            pixels = PixelStore(pixels.root.resolve())
        units = ((f, backbone, *lists[f], task.class_names, config, weights, root, device, pixels) for f in folds)
        # On Dask a member that trains on a GPU waits for a `--resources GPU=1` worker.
        for k, (fold, wid) in enumerate(unordered(execution, _member_unit, units,
                                                  resources=gpu_resources(device)), 1):
            logger.info(f"[{k}/{len(folds)}] nested fine-tuning {backbone}: fold {fold} done ({wid})")
        # Every member is finished in the store now: these calls load them, in fold order.
        for fold in folds:
            members[fold] = fine_tune(backbone, *lists[fold], task.class_names, config, weights=weights,
                                      root=root, device=device, progress=False)
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

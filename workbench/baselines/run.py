"""End-to-end CNN baselines on the sweep's folds, written into the same results store.

For every baseline and every outer fold (the CV folds of the training split, then the
test split) one network is fine-tuned on the fold's training images and scored on its
evaluation images, exactly the rows the classical heads saw. Records have
``kind="baseline"`` and otherwise the sweep's layout, so ``summarize`` and the search
rank both together. Fine-tuned networks live in the fine-tuned store under ids that
hash their data and config: a rerun, or a killed run, trains nothing twice.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.baselines.configs import BaselineSpec, get_baseline
from workbench.backbones.finetuned import resolved_root
from workbench.baselines.estimator import CNNClassifier
from workbench.core.parallel import gpu_resources, in_this_process, unordered, worker_threads, workers
from workbench.core.provenance import package_versions
from workbench.data.manifest import Manifest
from workbench.errors import ConfigError
from workbench.evaluation.protocol import Protocol, RunTask, build_task, fold_ids, load_external, sha
from workbench.evaluation.settings import is_external_fold
from workbench.training.nested import fine_tune_folds, networks_per_set

if TYPE_CHECKING:  # search sits above baselines: its Execution is only a type here
    from workbench.search.options import Execution

__all__ = ["run_baselines", "BASELINE_RECORD_VERSION"]

logger = logging.getLogger(__name__)

#: Bumped when what a baseline record holds changes; part of the candidate id, so the
#: next run re-scores the stored networks (no training) instead of reusing old records.
BASELINE_RECORD_VERSION = 2


@dataclass(frozen=True)
class _Training:
    """How every baseline network of a run is trained (all of it in the candidate id)."""

    tune: bool
    tune_cv: int
    val_fraction: float
    root: str | None
    device: str | None
    progress: bool
    pixels: str | None = None  # the pixel store's folder: the same tensors, so not in the candidate id

    def estimator(self, spec: BaselineSpec, manifest: Manifest) -> CNNClassifier:
        return CNNClassifier(spec.backbone, manifest, weights=spec.weights, config=spec.config,
                             grid=spec.grid if self.tune else None, tune_cv=self.tune_cv,
                             val_fraction=self.val_fraction, root=self.root, device=self.device,
                             progress=self.progress, pixels=self.pixels)


def _spec(b: str | BaselineSpec, overrides: dict[str, Any]) -> BaselineSpec:
    spec = get_baseline(b) if isinstance(b, str) else b
    return spec.with_overrides(**overrides) if overrides else spec


def _specs(baselines: Sequence[str | BaselineSpec], overrides: dict[str, Any]) -> list[BaselineSpec]:
    """The baselines' specs with ``overrides`` applied; unknown names fail before any work."""
    specs = [_spec(b, overrides) for b in baselines]
    if not specs:
        raise ConfigError("no baselines given (see `workbench baselines --list`)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"baseline named twice: {names}")
    return specs


def _task_manifest(manifest: Manifest | str | os.PathLike, classes: Sequence[str] | None,
                   progress: bool) -> Manifest:
    """The manifest loaded, classes selected and validated."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    if classes is not None:
        manifest = manifest.select_classes(classes)
    # Fine-tuned ids hash the images' content, so every image is decoded and hashed first;
    # a bad image is named here, before any training.
    return manifest.validate(progress=progress)


def _candidate_id(spec: BaselineSpec, task: RunTask, training: _Training) -> str:
    return sha({"kind": "baseline", "backbone": spec.backbone, "weights": spec.weights,
                "config": spec.config.to_dict(), "grid": spec.grid if training.tune else {},
                "tune_cv": training.tune_cv if training.tune else None,
                "val_fraction": training.val_fraction, "protocol": task.protocol_hash,
                # 2: records carry the network's validation-split scores (threshold rule)
                "record": BASELINE_RECORD_VERSION})[:16]


def _score_fold(spec: BaselineSpec, fold: str, cid: str, task: RunTask, training: _Training,
                versions: dict[str, str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fine-tune one baseline on one fold's training ids; its record and predictions."""
    train_ids, eval_ids = fold_ids(task, fold)
    t0 = time.perf_counter()
    est = training.estimator(spec, task.manifest)
    est.fit(train_ids)
    proba = est.predict_proba(eval_ids)
    ft = est.finetuned_
    if is_external_fold(fold) and ft.trained_now:  # the store had lost the network that scored the test split
        logger.warning(f"baseline {spec.name}: the test split's network {ft.weights_id} was not in the fine-tuned "
                       f"store and was trained again for {fold}; on a GPU it may differ from the one that scored test")
    fields = {
        "head": spec.name, "heads": [], "blocks": [], "codes": [], "size": 0,
        "baseline": spec.name, "backbone": spec.backbone, "base_weights": ft.meta.get("base_weights"),
        "weights_id": ft.weights_id, "best_params": est.best_params_, "best_epoch": ft.best_epoch,
        "epochs_run": len(ft.history), "config": spec.config.to_dict(),
        "seconds": round(time.perf_counter() - t0, 3), "record_version": BASELINE_RECORD_VERSION,
    }
    seg = _segmentation(ft, task, eval_ids, training) if ft.is_ynet else None
    if seg is not None:
        fields["segmentation"] = seg[0]
    rec, preds = task.record(candidate_id=cid, candidate=f"CNN {spec.name}", kind="baseline", fold=fold,
                             proba=proba, pred=proba.argmax(axis=1), fields=fields, versions=versions)
    if seg is not None:
        preds.update(seg[1])
    # The network's own validation split (held out from its training, drawn like the
    # training split): the search sets this network's operating threshold on it, so
    # the threshold does not depend on the test split's class balance.
    row_of = {i: k for k, i in enumerate(task.ids)}
    val_ids = [i for i in ft.meta.get("val_ids", []) if i in row_of]
    if val_ids and not is_external_fold(fold):  # an external set takes the test record's threshold
        preds.update(val_ids=np.array(val_ids), val_y=task.y[[row_of[i] for i in val_ids]],
                     val_proba=est.predict_proba(val_ids))
    return rec, preds


def _segmentation(ft, task: RunTask, eval_ids: Sequence[str], training: _Training
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A Y-Net's masks on the evaluation images and the fold's summary for its record.

    Arrays in evaluation-row order: per-image ``dice``/``iou`` (NaN for an image without
    a manual mask file), ``lesion`` (the manual mask is non-empty) and the predicted
    ``mask_box`` (NaN when none). The summary's Dice figures are over lesion images only;
    images whose manual mask is empty (no lesion) count in ``blank_kept_share``, the
    share whose predicted mask is empty too.
    """
    from workbench.evaluation.segmentation import FAILED_DICE
    from workbench.training.masks import score_masks

    items = list(task.manifest.subset(list(eval_ids)))
    scores = score_masks(ft.model, items, ft.geometry, ft.data_config, device=training.device).set_index("id")
    scored = scores.reindex([str(i) for i in eval_ids])
    arrays = {"dice": scored["dice"].to_numpy(float), "iou": scored["iou"].to_numpy(float),
              "lesion": scored["lesion"].eq(True).to_numpy(),
              "mask_box": scored[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy(float)}
    lesion, blank = scores[scores["lesion"]], scores[~scores["lesion"]]
    summary: dict[str, Any] = {"n": int(len(lesion)), "median_dice": None, "mean_dice": None, "mean_iou": None,
                               "failed_share": None, "blank_n": int(len(blank)), "blank_kept_share": None}
    if len(lesion):  # point figures; the report adds bootstrap intervals from the per-image arrays
        d = lesion["dice"].to_numpy(float)
        summary.update(median_dice=float(np.median(d)), mean_dice=float(d.mean()),
                       mean_iou=float(lesion["iou"].mean()), failed_share=float((d < FAILED_DICE).mean()))
    if len(blank):  # both empty: Dice 1
        summary["blank_kept_share"] = float((blank["dice"] == 1.0).mean())
    return summary, arrays


def _cost(specs: list[BaselineSpec], task: RunTask, folds: list[str], done: int, training: _Training) -> str:
    """What the run trains, said before it starts."""
    per = networks_per_set(task, folds)
    total = len(specs) * len(folds)
    tuned = (f"; tuning adds (grid points x {training.tune_cv}) fine-tunes per network"
             if training.tune and any(len(s.grid) for s in specs) else "")
    return (f"{per} per baseline x {len(specs)} baseline(s) = {total} fine-tunes{tuned}; "
            f"{done} already in the store")


def run_baselines(
    manifest: Manifest | str | os.PathLike,
    baselines: Sequence[str | BaselineSpec],
    out: str | os.PathLike,
    *,
    protocol: Protocol,
    classes: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    tune: bool = False,
    tune_cv: int = 6,
    val_fraction: float = 0.15,
    root: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
    execution: Execution | None = None,
    external: Mapping[str, Manifest | str | os.PathLike] | None = None,
    pixels: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Fine-tune each baseline on every outer fold and on the training split; record them.

    One network per (baseline, CV fold of every repeat) plus one per baseline on the
    whole training split: ``baselines x (repeats x cv + 1)`` fine-tunes.

    Parameters
    ----------
    manifest, classes, protocol
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
    execution
        Spreads the (baseline, fold) fine-tunes over ``n_jobs`` joblib workers on its
        backend (local processes or Dask), torch limited to ``cores // n_jobs`` threads
        each; records are appended by this process as each one finishes, so a killed
        run keeps every finished network and record. ``None`` or one job: one after
        the other, in this process.
    external
        External test sets by name (manifests or their paths; ``classes`` selects in
        them too): each is scored, as fold ``ext-<name>``, by every baseline's test-split
        network, loaded from the fine-tuned store (nothing is trained for them).
    pixels
        Pixel-store folder the networks read their images from (decoding only those it
        lacks); the tensors are the same, so networks and candidate ids are too.

    Returns
    -------
    DataFrame
        The baselines' records (one row per baseline and fold).
    """
    specs = _specs(baselines, dict(overrides or {}))
    ext = {n: _task_manifest(m, None, progress) for n, m in load_external(external, classes).items()}
    task = build_task(_task_manifest(manifest, classes, progress), protocol, ext)
    store = task.open_store(out)
    training = _Training(tune, tune_cv, val_fraction, str(root) if root is not None else None, device, progress,
                         # Absolute: a worker process may start in another folder.
                         None if pixels is None else str(Path(pixels).resolve()))
    versions = package_versions(("grad-cam",))
    cids = {s.name: _candidate_id(s, task, training) for s in specs}
    done = store.done()
    # Every CV fold of every repeat, then the test split; external test sets (if any)
    # are scored by the test split's network, never trained for.
    folds = fine_tune_folds(task)
    todo = [(s, f) for s in specs for f in folds if f"{cids[s.name]}/{f}" not in done]
    logger.info(_cost(specs, task, folds, len(specs) * len(folds) - len(todo), training) + f" ({store.root})")
    if in_this_process(execution):
        for k, (s, f) in enumerate(todo, 1):
            n_train, n_eval = (len(ids) for ids in fold_ids(task, f))
            logger.info(f"[{k}/{len(todo)}] baseline {s.name} ({s.backbone}) fold {f}: "
                        f"{n_train} training / {n_eval} evaluation images")
            store.append(*_score_fold(s, f, cids[s.name], task, training, versions))
    elif todo:
        # Bars of concurrent workers would interleave; the parent logs each finished unit.
        # The store resolved here: a reused worker process keeps the environment and folder it started in.
        quiet = dataclasses.replace(training, progress=False,
                                    root=str(resolved_root(root)))
        threads = worker_threads(execution)
        logger.info(f"{len(todo)} fine-tunes on {workers(execution)} {execution.backend} workers"
                    + ("" if threads is None else f", {threads} torch thread(s) each"))
        units = ((s, f, cids[s.name], task, quiet, versions) for s, f in todo)
        # On Dask a fine-tune on a GPU waits for a `--resources GPU=1` worker.
        for k, (rec, preds) in enumerate(unordered(execution, _score_fold, units,
                                                   resources=gpu_resources(device)), 1):
            store.append(rec, preds)
            logger.info(f"[{k}/{len(todo)}] baseline {rec['baseline']} fold {rec['fold']} done "
                        f"({rec['seconds']:.0f} s)")
    _score_external(specs, task, store, cids, training, versions, done)
    frame = store.frame()
    if not len(frame):
        return frame
    return frame[frame["candidate_id"].isin(set(cids.values()))].reset_index(drop=True)


def _score_external(specs: list[BaselineSpec], task: RunTask, store, cids: dict[str, str], training: _Training,
                    versions: dict[str, str], done: set[str]) -> None:
    """Each baseline's test-split network (in the store by now) on every external set."""
    todo = [(s, f) for s in specs for f, _, _ in task.outer
            if is_external_fold(f) and f"{cids[s.name]}/{f}" not in done]
    for k, (s, f) in enumerate(todo, 1):
        logger.info(f"[{k}/{len(todo)}] baseline {s.name}: the test split's network on external set {f}")
        rec, preds = _score_fold(s, f, cids[s.name], task, training, versions)
        store.append(rec, preds)

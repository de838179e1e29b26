"""Fine-tune a registry backbone end to end for a task's classes.

One call trains one network on a list of training images, early-stopping on a
validation list, and leaves it in the fine-tuned store under an id that hashes every
input (:mod:`workbench.backbones.finetuned`). A checkpoint is written after every
epoch (model, optimizer, schedule, random states), so a killed run resumes where it
stopped and ends exactly as the uninterrupted run would (same seed, CPU); a finished
id is loaded, never trained again. Checkpoints hold tensors and plain numbers only and
are read with ``weights_only=True``: a store folder someone else wrote cannot run code.

Imbalanced classes: the cross-entropy is weighted ``n / (C * n_c)`` by default
(``class_weight="balanced"``), early stopping watches validation AUC (ties go to the
lower loss), never accuracy, and a validation split with fewer than
:data:`MIN_VAL_PER_CLASS` images of a class is warned about.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from workbench.backbones.adapt import adapt_for_task, freeze_early
from workbench.backbones.finetuned import FT_PREFIX, finetuned_dir, read_meta
from workbench.backbones.loading import (
    CheckpointMismatchError,
    build_finetuned,
    build_model,
    load_data_only,
)
from workbench.backbones.registry import BackboneSpec, get_backbone
from workbench.backbones.weights import ResolvedWeights, resolve_weights
from workbench.core.devices import resolve_device
from workbench.core.io import atomic_file, write_json_atomic
from workbench.core.provenance import environment
from workbench.data.augment import StudyAugment, TrainImageDataset, collate
from workbench.data.manifest import Item
from workbench.data.pixels import PixelStore
from workbench.data.preprocess import DataConfig, Geometry
from workbench.errors import ConfigError
from workbench.training.config import (
    CLASS_WEIGHTS,
    MODELS,
    MONITORS,
    OPTIMIZERS,
    SCHEDULES,
    FineTuneConfig,
)
from workbench.core.hashing import canonical_json, stable_hash

__all__ = [
    "FineTuneConfig",
    "FineTuned",
    "SmallValidationWarning",
    "fine_tune",
    "finetune_id",
    "load_finetuned",
    "predict_proba",
    "validation_split",
    "FINETUNE_CODE_VERSION",
    "CLASS_WEIGHTS",
    "MONITORS",
    "OPTIMIZERS",
    "SCHEDULES",
    "MODELS",
    "model_outputs",
]

logger = logging.getLogger(__name__)

#: Part of every fine-tuned weights id; bump when a change alters the trained numbers.
#: 2: balanced class weights by default, AUC ties broken by lower loss, data-only checkpoints.
#: (Y-Nets came without a bump: a classifier's numbers did not change, and a Y-Net's config
#: differs from every classifier's by its ``model`` field.)
FINETUNE_CODE_VERSION = "2"

#: Fewer validation images of a class than this make early stopping a coin toss.
MIN_VAL_PER_CLASS = 5
#: Version of the checkpoint.pt layout (tensors, numbers, strings and lists only).
CHECKPOINT_FORMAT = 2


class SmallValidationWarning(UserWarning):
    """The validation split holds too few images of some class to steer early stopping."""


@dataclass
class FineTuned:
    """A fine-tuned network: its id, folder, model (best epoch, eval mode) and history."""

    backbone: str
    weights_id: str
    folder: Path
    model: nn.Module
    classes: list[str]
    data_config: DataConfig
    image_size: int
    resize: str
    history: list[dict[str, Any]]
    best_epoch: int
    meta: dict[str, Any] = field(default_factory=dict)
    trained_now: bool = False  # False when loaded from the store

    @property
    def label(self) -> str:
        return f"{self.backbone}@{self.weights_id}"

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.image_size, self.resize, interpolation=self.data_config.interpolation)

    @property
    def is_ynet(self) -> bool:
        """Whether this is a Y-Net (it predicts lesion masks as well as classes)."""
        return self.meta.get("config", {}).get("model") == "ynet"


def model_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(mask logits or None, class logits)`` of a classifier or a Y-Net."""
    out = model(x)
    if isinstance(out, tuple):
        return out[0], out[1]
    return None, out


def _precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def _item_fingerprint(items: Sequence[Item]) -> list[list[str]]:
    out = []
    for it in sorted(items, key=lambda i: i.id):
        if it.sha256 is None:
            raise ConfigError(f"item {it.id} has no content hash; validate the manifest first")
        out.append([it.id, it.sha256, it.label, str(tuple(it.box)) if it.box else ""])
    return out


def finetune_id(backbone: str, base: ResolvedWeights, train: Sequence[Item], val: Sequence[Item],
                classes: Sequence[str], config: FineTuneConfig, precision: str = "fp32") -> str:
    """``ft-<12 hex>``: a hash of everything that determines the fine-tuned numbers."""
    key = {
        "backbone": backbone, "base_weights": base.id, "base_digest": base.digest,
        "classes": list(classes), "train": _item_fingerprint(train), "val": _item_fingerprint(val),
        "config": config.to_dict(), "precision": precision, "code": FINETUNE_CODE_VERSION,
    }
    return FT_PREFIX + stable_hash(key, length=12)


def _dataset(items, classes, size, resize, dc: DataConfig, *, train: bool, config: FineTuneConfig,
             pixels: PixelStore | None = None):
    # A Y-Net's samples carry their lesion masks, moved with the image by one augmentation draw.
    return TrainImageDataset(
        items, classes, Geometry(size, resize, interpolation=dc.interpolation), dc.mean, dc.std,
        augment=StudyAugment() if (train and config.augment) else None,
        cut_remain=bool(train and config.cut_remain), box_mode=config.box_mode, masks=config.is_ynet,
        pixels=pixels,
    )


def _loader(ds, batch_size: int, *, shuffle: bool, device: torch.device, generator=None) -> DataLoader:
    # Worker processes only pay off on a GPU; on the CPU they would compete with the
    # model for the same cores (and one process keeps CPU runs bit-reproducible).
    workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=workers, pin_memory=device.type == "cuda")


def forward_batches(model: nn.Module, ds: TrainImageDataset, device: torch.device, batch_size: int, *,
                    progress: bool = False, desc: str = "predict"):
    """``(batch, mask logits or None, class logits)`` of ``model`` (eval mode, no gradients)
    over ``ds`` in order; channels_last and bf16 autocast on a GPU, as in training."""
    model = model.to(device).eval()
    for batch in tqdm(_loader(ds, batch_size, shuffle=False, device=device), disable=not progress, desc=desc,
                      leave=False):
        x = batch["images"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            mask_logits, logits = model_outputs(model, x)
        yield batch, mask_logits, logits


def predict_proba(model: nn.Module, items: Sequence[Item], classes: Sequence[str], geometry: Geometry,
                  data_config: DataConfig, *, device: str | torch.device | None = None,
                  batch_size: int = 64, progress: bool = False, pixels: PixelStore | None = None) -> np.ndarray:
    """Softmax probabilities of ``model`` on ``items`` (no augmentation), ``(n, C)``;
    images read from ``pixels`` when given (the same tensors)."""
    ds = TrainImageDataset(list(items), list(classes), geometry, data_config.mean, data_config.std,
                           augment=None, cut_remain=False, pixels=pixels)
    out = [torch.softmax(logits.float(), dim=1).cpu().numpy()
           for _, _, logits in forward_batches(model, ds, resolve_device(device), batch_size, progress=progress)]
    return np.concatenate(out) if out else np.zeros((0, len(classes)), np.float32)


def _val_metrics(proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Validation loss, AUC, accuracy and balanced accuracy (mean per-class recall).

    Only AUC and loss steer early stopping: accuracy is maximised by predicting the
    majority class, which on an imbalanced split looks like a good network.
    """
    p = np.clip(proba, 1e-7, 1.0)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y]))) if len(y) else float("nan")
    auc = float("nan")
    if len(np.unique(y)) == n_classes:
        auc = float(roc_auc_score(y, proba[:, 1]) if n_classes == 2
                    else roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=range(n_classes)))
    pred = proba.argmax(1)
    recalls = [float(np.mean(pred[y == c] == c)) for c in range(n_classes) if np.any(y == c)]
    return {"val_loss": loss, "val_auc": auc,
            "val_acc": float(np.mean(pred == y)) if len(y) else float("nan"),
            "val_bal_acc": float(np.mean(recalls)) if recalls else float("nan")}


def _class_weights(y_train: np.ndarray, classes: Sequence[str], mode: str) -> np.ndarray | None:
    """Balanced cross-entropy weights ``n / (C * n_c)`` from the training rows, or None.

    None too when the classes are already balanced: the weights would all be 1.
    """
    if mode == "none":
        return None
    counts = np.bincount(y_train, minlength=len(classes)).astype(np.float64)
    if np.all(counts == counts[0]):
        return None
    # A class absent from training gets the weight of a one-image class; it has no rows anyway.
    return len(y_train) / (len(classes) * np.maximum(counts, 1))


def _warn_small_validation(val_counts: dict[str, int]) -> None:
    small = {c: n for c, n in val_counts.items() if n < MIN_VAL_PER_CLASS}
    if not small:
        return
    msg = (f"the validation split holds fewer than {MIN_VAL_PER_CLASS} images of "
           + ", ".join(f"{c!r} ({n})" for c, n in small.items())
           + f" (counts: {val_counts}): early stopping on it is noisy"
           + ("; a class with none leaves AUC undefined, so validation loss is watched" if 0 in small.values()
              else "")
           + ". Use a larger validation share or more images of that class.")
    # stacklevel: the caller of fine_tune (fine_tune -> _set_up -> here).
    warnings.warn(msg, SmallValidationWarning, stacklevel=4)
    logger.warning(f"warning: {msg}")


def _score(row: dict[str, Any], monitor: str) -> list[float]:
    """What early stopping maximises: ``[auc, -loss]`` (ties in AUC go to the lower
    loss), ``[auc + dice, -loss]`` or ``[-loss]``. A list, so the checkpoint stores it as
    plain numbers."""
    if monitor == "auc":
        return [row["val_auc"], -row["val_loss"]]
    if monitor == "auc+dice":
        return [row["val_auc"] + row["val_dice"], -row["val_loss"]]
    return [-row["val_loss"]]


def _monitor_for(config: FineTuneConfig, row: dict[str, Any]) -> str:
    """The monitor an epoch's validation row can support. The validation split is the
    same every epoch, so the fallback is too, and scores stay comparable across epochs."""
    monitor = config.monitor
    # No segmentation trained (the ablation) or no validation image with a mask file:
    # there is no Dice to watch, only the class AUC.
    if monitor == "auc+dice" and (config.seg_weight == 0 or not np.isfinite(row["val_dice"])):
        monitor = "auc"
    # AUC is undefined when the validation split lacks a class: watch the loss then.
    if monitor in ("auc", "auc+dice") and np.isnan(row["val_auc"]):
        monitor = "loss"
    return monitor


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state as uint8 tensors and plain numbers, so the checkpoint loads
    with ``weights_only=True`` (numpy arrays and tuples of Python objects would not)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np.ascontiguousarray(key, dtype="<u4").view(np.uint8).copy()),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [int(version), [int(v) for v in internal], None if gauss_next is None else float(gauss_next)],
        "loader": generator.get_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    key = n["key"].numpy().view("<u4").astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer(params, config: FineTuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(opt, config: FineTuneConfig):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_size, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


def _freeze_bn_of_frozen(model: nn.Module) -> None:
    """Keep batch-norm statistics of frozen layers fixed too (eval mode)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def _better(score: Sequence[float], best: Sequence[float] | None) -> bool:
    """Strictly better in lexicographic order (the earlier epoch keeps a full tie)."""
    return best is None or list(score) > list(best)


# ---- stage 1: plan (check the inputs, fix the id) ------------------------------------


@dataclass
class _Plan:
    """What one fine-tune is: its inputs, checked, and the id they hash to."""

    spec: BackboneSpec
    base: ResolvedWeights
    config: FineTuneConfig
    classes: list[str]
    train: list[Item]
    val: list[Item]
    data_config: DataConfig
    size: int
    device: torch.device
    precision: str
    context: dict[str, Any]
    weights_id: str
    folder: Path
    # Where decoded images are read from: the same tensors, so no part of the id.
    pixels: PixelStore | None = None

    @property
    def label(self) -> str:
        return f"{self.spec.name}@{self.weights_id}"

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.size, self.config.resize, interpolation=self.data_config.interpolation)

    @property
    def in_store(self) -> bool:
        """Whether the store holds this network finished (it would be loaded, not trained)."""
        return (self.folder / "weights.pth").is_file() and (self.folder / "meta.json").is_file()

    def finished(self, model: nn.Module, meta: dict[str, Any], *, trained_now: bool) -> FineTuned:
        return FineTuned(self.spec.name, self.weights_id, self.folder, model.eval(), self.classes,
                         self.data_config, self.size, self.config.resize, meta["history"], meta["best_epoch"],
                         meta, trained_now=trained_now)


def _check_lists(train: list[Item], val: list[Item], classes: list[str]) -> None:
    if not train:
        raise ConfigError("fine-tuning needs training images; got none")
    unknown = sorted({it.label for it in train + val} - set(classes))
    if unknown:
        raise ConfigError(f"labels {unknown} are not among the classes {classes}")
    overlap = sorted({it.id for it in train} & {it.id for it in val})
    if overlap:
        raise ConfigError(
            f"{len(overlap)} images are in both the training and validation lists, e.g. {overlap[:3]}")


def _plan(backbone: str | BackboneSpec, train: Sequence[Item], val: Sequence[Item], classes: Sequence[str],
          config: FineTuneConfig, *, weights: str | None, root: str | os.PathLike | None,
          device: str | torch.device | None, context: dict[str, Any] | None,
          pixels: PixelStore | None = None) -> _Plan:
    """Check the inputs and fix the weights id and folder; nothing is built yet."""
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    classes, train, val = list(classes), list(train), list(val)
    _check_lists(train, val, classes)
    base = resolve_weights(spec, weights)
    dc = spec.data_config(base.id)
    dev = resolve_device(device)
    prec = _precision(dev)
    context = dict(context or {})
    wid = finetune_id(spec.name, base, train, val, classes, config, prec)
    if context:  # folds and the like: same images but a different role must not collide
        wid = FT_PREFIX + hashlib.sha256(f"{wid}|".encode() + canonical_json(context)).hexdigest()[:12]
    return _Plan(spec, base, config, classes, train, val, dc, config.image_size or dc.input_size, dev, prec,
                 context, wid, finetuned_dir(spec.name, wid, root), pixels)


def _load_model(plan: _Plan, path: Path) -> nn.Module:
    """A stored network of the plan's kind, strictly loaded (data only)."""
    if plan.config.is_ynet:
        from workbench.backbones.ynet import load_ynet  # segmentation-models-pytorch: only Y-Nets

        return load_ynet(plan.spec, path, len(plan.classes), base=plan.base)
    return build_finetuned(plan.spec, path, len(plan.classes))


def _load_finished(plan: _Plan) -> FineTuned | None:
    """The stored network of a finished id, or None when it must be trained."""
    folder = plan.folder
    if not plan.in_store:
        return None
    meta = read_meta(folder)
    model = _load_model(plan, folder / "weights.pth")
    logger.info(f"fine-tuned {plan.label} found in {folder}; not training again")
    # A kill between the final save and the checkpoint's removal leaves it behind.
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return plan.finished(model, meta, trained_now=False)


# ---- stage 2: set up (model, optimiser, loss, data) ----------------------------------


@dataclass
class _Setup:
    """The objects one training run works with."""

    model: nn.Module
    frozen: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module
    class_weights: np.ndarray | None
    train_counts: dict[str, int]
    val_counts: dict[str, int]
    y_val: np.ndarray
    loader: DataLoader
    generator: torch.Generator


def _counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    return {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=len(classes)))}


def _build_model(plan: _Plan) -> tuple[nn.Module, list]:
    """The backbone with a new head, seeded first (the head's init draws from the seed)."""
    config = plan.config
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    if config.is_ynet:
        from workbench.backbones.ynet import build_ynet  # segmentation-models-pytorch: only Y-Nets

        model, frozen = build_ynet(plan.spec, len(plan.classes), plan.base), []
    else:
        model = adapt_for_task(build_model(plan.spec, plan.base), len(plan.classes))
        frozen = freeze_early(model, config.freeze)
    model = model.to(plan.device)
    if plan.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, frozen


def _criterion(config: FineTuneConfig, class_weight: torch.Tensor | None) -> nn.Module:
    """Weighted cross-entropy; for a Y-Net, its segmentation + classification loss."""
    if config.is_ynet:
        from workbench.training.ynet_loss import YNetLoss

        return YNetLoss(config.seg_weight, config.cls_weight, class_weight)
    return nn.CrossEntropyLoss(weight=class_weight)


def _set_up(plan: _Plan) -> _Setup:
    """Build model, optimiser, schedule, weighted loss and loaders, in the order that
    fixes the random draws (an id's numbers depend on it)."""
    config, classes, dev = plan.config, plan.classes, plan.device
    model, frozen = _build_model(plan)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], config)
    sched = _scheduler(opt, config)
    y_train = np.array([classes.index(it.label) for it in plan.train])
    class_w = _class_weights(y_train, classes, config.class_weight)
    weight = None if class_w is None else torch.tensor(class_w, dtype=torch.float32, device=dev)
    criterion = _criterion(config, weight)
    train_ds = _dataset(plan.train, classes, plan.size, config.resize, plan.data_config, train=True, config=config,
                        pixels=plan.pixels)
    if config.cut_remain and train_ds.missing_box_ids:
        logger.info(f"Cut&Remain: {len(train_ds.missing_box_ids)} of {len(plan.train)} training images have no "
                    f"box; kept unmasked")
    y_val = np.array([classes.index(it.label) for it in plan.val], dtype=np.int64)
    val_counts = _counts(y_val, classes)
    if plan.val:
        _warn_small_validation(val_counts)
    generator = torch.Generator().manual_seed(config.seed)
    loader = _loader(train_ds, config.batch_size, shuffle=True, device=dev, generator=generator)
    return _Setup(model, frozen, opt, sched, criterion, class_w, _counts(y_train, classes), val_counts, y_val,
                  loader, generator)


# ---- stage 3: train (resume, epochs, checkpoint selection) ---------------------------


@dataclass
class _Progress:
    """Where training stands; all of it goes into the checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_score: list[float] | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    start: int = 1


def _read_checkpoint(plan: _Plan, path: Path) -> dict[str, Any]:
    """The checkpoint's data, refused when it belongs to another run or format."""
    # The folder may be shared or copied, and its id is predictable: data only, never code.
    ck = load_data_only(path, what="fine-tuning checkpoint")
    if not isinstance(ck, dict):
        raise CheckpointMismatchError(f"checkpoint {path} holds a {type(ck).__name__}, not a dict")
    if ck.get("weights_id") != plan.weights_id or ck.get("backbone") != plan.spec.name:
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to {ck.get('backbone')}@{ck.get('weights_id')}, not {plan.label}")
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"cannot resume from {path}: checkpoint format {ck.get('format', 'none')}, this "
            f"workbench writes {CHECKPOINT_FORMAT}. Move it away to start over.")
    return ck


def _resume(plan: _Plan, setup: _Setup) -> _Progress:
    """Progress from the folder's checkpoint (restoring every state), or a fresh start."""
    path = plan.folder / "checkpoint.pt"
    if not path.is_file():
        return _Progress()
    try:
        ck = _read_checkpoint(plan, path)
        setup.model.load_state_dict(ck["model"])
        setup.optimizer.load_state_dict(ck["optimizer"])
        setup.scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"], setup.generator)
        prog = _Progress(ck["history"], ck["best_state"], ck["best_score"], ck["best_epoch"], ck["bad_epochs"],
                         ck["epoch"] + 1)
    except CheckpointMismatchError:  # UnsafeCheckpointError included
        raise
    except Exception as e:  # another architecture's tensors, a truncated file, ...
        raise CheckpointMismatchError(
            f"cannot resume from {path}: it does not fit {plan.spec.name} with {len(plan.classes)} classes "
            f"({type(e).__name__}: {str(e)[:300]}). Move it away to start over.") from e
    logger.info(f"resuming {plan.label} after epoch {ck['epoch']} from {path}")
    return prog


def _train_epoch(plan: _Plan, setup: _Setup, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training data, then a scheduler step; the epoch's history row."""
    dev, model, opt = plan.device, setup.model, setup.optimizer
    model.train()
    _freeze_bn_of_frozen(model)
    total, n_rows, n_masked = 0.0, 0, 0
    seg_total, cls_total, seg_rows = 0.0, 0.0, 0
    bar = tqdm(setup.loader, disable=not progress, leave=False,
               desc=f"{plan.spec.name} epoch {epoch}/{plan.config.epochs}")
    for batch in bar:
        x = batch["images"].to(dev, non_blocking=True)
        yb = batch["labels"].to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            mask_logits, logits = model_outputs(model, x)
        if mask_logits is None:
            loss = setup.criterion(logits.float(), yb)
        else:
            loss, parts = setup.criterion(mask_logits.float(), logits.float(),
                                          batch["masks"].to(dev, non_blocking=True),
                                          batch["has_mask"].to(dev, non_blocking=True), yb)
            seg_total += parts.segmentation * parts.masked_rows
            cls_total += parts.classification * len(yb)
            seg_rows += parts.masked_rows
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(yb)
        n_rows += len(yb)
        n_masked += int(batch["is_masked"].sum())
        bar.set_postfix(loss=f"{total / n_rows:.4f}")
    lr = opt.param_groups[0]["lr"]
    setup.scheduler.step()
    row = {"epoch": epoch, "train_loss": total / max(n_rows, 1), "lr": lr, "rows": n_rows, "masked_rows": n_masked}
    if plan.config.is_ynet:  # the two terms, unweighted, each per row it was taken over
        row.update(train_seg_loss=seg_total / seg_rows if seg_rows else float("nan"),
                   train_cls_loss=cls_total / max(n_rows, 1), seg_rows=seg_rows)
    return row


def _validate(plan: _Plan, setup: _Setup, row: dict[str, Any]) -> tuple[str, list[float]]:
    """Add the validation metrics to ``row``; the monitor used and the epoch's score."""
    if not plan.val:
        return "loss", [-row["train_loss"]]
    if plan.config.is_ynet:  # Dice is watched only with monitor = "auc+dice"
        proba, row["val_dice"] = _ynet_validation(plan, setup.model)
    else:
        proba = predict_proba(setup.model, plan.val, plan.classes, plan.geometry, plan.data_config,
                              device=plan.device, batch_size=max(plan.config.batch_size, 32), pixels=plan.pixels)
    row.update(_val_metrics(proba, setup.y_val, len(plan.classes)))
    monitor = _monitor_for(plan.config, row)
    return monitor, _score(row, monitor)


def _ynet_validation(plan: _Plan, model: nn.Module) -> tuple[np.ndarray, float]:
    """A Y-Net's class probabilities on the validation images and the mean Dice of its
    thresholded masks on those with a mask file, at the network's resolution (NaN when
    none has one), from one pass over the images (their tensors are the ones
    :func:`predict_proba` would make)."""
    from workbench.evaluation.segmentation import dice

    ds = _dataset(plan.val, plan.classes, plan.size, plan.config.resize, plan.data_config, train=False,
                  config=plan.config, pixels=plan.pixels)
    probs, scores = [], []
    for batch, mask_logits, logits in forward_batches(model, ds, plan.device, max(plan.config.batch_size, 32)):
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        pred = (mask_logits.float() > 0).cpu().numpy()  # probability > 0.5
        truth = batch["masks"].numpy().astype(bool)
        scores += [dice(p[0], t[0]) for p, t, has in zip(pred, truth, batch["has_mask"].tolist()) if has]
    return np.concatenate(probs), float(np.mean(scores)) if scores else float("nan")


def _select(plan: _Plan, setup: _Setup, prog: _Progress, epoch: int, score: list[float]) -> None:
    """Keep this epoch's weights when they are the best so far (always, without validation)."""
    if not plan.val or _better(score, prog.best_score):
        prog.best_score, prog.best_epoch, prog.bad_epochs = score, epoch, 0
        prog.best_state = {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
    else:
        prog.bad_epochs += 1


def _save_checkpoint(plan: _Plan, setup: _Setup, prog: _Progress, epoch: int) -> None:
    # Tensors, numbers, strings and lists only: it is read back with weights_only=True.
    _atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "backbone": plan.spec.name, "weights_id": plan.weights_id, "epoch": epoch,
        "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(), "history": prog.history,
        "best_state": prog.best_state, "best_score": prog.best_score, "best_epoch": prog.best_epoch,
        "bad_epochs": prog.bad_epochs, "rng": _rng_state(setup.generator),
    }, plan.folder / "checkpoint.pt")


def _patience_spent(plan: _Plan, prog: _Progress) -> bool:
    return bool(plan.config.patience and plan.val and prog.bad_epochs >= plan.config.patience)


def _train(plan: _Plan, setup: _Setup, prog: _Progress, *, progress: bool,
           on_epoch: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Run the remaining epochs, checkpointing each, until done or out of patience."""
    if _patience_spent(plan, prog):  # a resumed run that had already stopped early
        return
    for epoch in range(prog.start, plan.config.epochs + 1):
        t0 = time.perf_counter()
        row = _train_epoch(plan, setup, epoch, progress)
        monitor, score = _validate(plan, setup, row)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        prog.history.append(row)
        _select(plan, setup, prog, epoch, score)
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        logger.info(f"{plan.label} epoch {epoch}: {shown}")
        _save_checkpoint(plan, setup, prog, epoch)
        if on_epoch is not None:
            on_epoch(epoch, row)
        if _patience_spent(plan, prog):
            logger.info(f"early stop after epoch {epoch}: no better validation {monitor} for "
                        f"{prog.bad_epochs} epochs")
            break


# ---- stage 4: record (best weights, meta.json) ---------------------------------------


def _meta(plan: _Plan, setup: _Setup, prog: _Progress) -> dict[str, Any]:
    """Everything ``meta.json`` says about the run (the key order is the file's)."""
    config, classes, class_w = plan.config, plan.classes, setup.class_weights
    return {
        "backbone": plan.spec.name, "weights_id": plan.weights_id, "base_weights": plan.base.id,
        "base_digest": plan.base.digest, "classes": classes, "config": config.to_dict(),
        "precision": plan.precision, "device": str(plan.device), "image_size": plan.size, "resize": config.resize,
        "n_train": len(plan.train), "n_val": len(plan.val),
        # The ids it saw: the sweep marks CV results on its features optimistic from these.
        "train_ids": sorted(it.id for it in plan.train), "val_ids": sorted(it.id for it in plan.val),
        "context": plan.context, "frozen_parameters": len(setup.frozen),
        "class_weight": {"mode": config.class_weight, "train_counts": setup.train_counts,
                         "weights": None if class_w is None else dict(zip(classes, map(float, class_w)))},
        "val_counts": setup.val_counts, "monitor": config.monitor,
        "history": prog.history, "best_epoch": prog.best_epoch, "code_version": FINETUNE_CODE_VERSION,
        "environment": environment(),
    }


def _record(plan: _Plan, setup: _Setup, prog: _Progress) -> FineTuned:
    """Load the best epoch, store weights and ``meta.json``, drop the checkpoint."""
    model = setup.model
    model.load_state_dict(prog.best_state)
    meta = _meta(plan, setup, prog)
    _atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, plan.folder / "weights.pth")
    # Atomic: a kill mid-write must not leave a cut-off meta.json beside complete
    # weights, which the store would list as finished and every re-run would trip on.
    write_json_atomic(plan.folder / "meta.json", meta)
    (plan.folder / "checkpoint.pt").unlink(missing_ok=True)  # the weights file supersedes it
    logger.info(f"fine-tuned {plan.label}: best epoch {prog.best_epoch} of {len(prog.history)}; "
                f"saved in {plan.folder}")
    return plan.finished(model, meta, trained_now=True)


# ---- the public entry point ----------------------------------------------------------


def fine_tune(
    backbone: str | BackboneSpec,
    train: Sequence[Item],
    val: Sequence[Item],
    classes: Sequence[str],
    config: FineTuneConfig | None = None,
    *,
    weights: str | None = None,
    root: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    context: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    pixels: PixelStore | None = None,
) -> FineTuned:
    """Fine-tune ``backbone`` on ``train``, early-stopping on ``val``; resume or reuse.

    Parameters
    ----------
    backbone
        Registry name or spec (``"alexnet"``, ``"tf_efficientnet_lite0"``).
    train, val
        Validated manifest items (content hashes set). ``val`` may be empty: then
        every epoch runs and the last one is kept.
    classes
        Class names; the new head has one output per class, in this order.
    config
        :class:`FineTuneConfig`; defaults to the study's settings.
    weights
        Base weights id (the backbone's default when None).
    root
        Fine-tuned store (``$WORKBENCH_FINETUNED`` or ``./finetuned`` when None).
    device
        ``None``/``"auto"``: the GPU when there is one, with bf16 autocast and
        channels_last; fp32 on the CPU.
    context
        Extra facts stored in ``meta.json`` (e.g. ``{"trained_on": "train"}`` or the
        outer fold of a nested run); part of the id, since they describe the data.
    progress
        Show a bar per epoch. Status lines go to the ``workbench.training.finetune`` logger.
    on_epoch
        Called after each epoch's checkpoint is on disk, with ``(epoch, history row)``.
    pixels
        Read the training and validation images from this pixel store (decoding only
        those it lacks) instead of decoding every file every epoch. The tensors are the
        same, so the id and the weights are too.

    Returns
    -------
    FineTuned
        With the best epoch's weights loaded.
    """
    plan = _plan(backbone, train, val, classes, config or FineTuneConfig(), weights=weights, root=root,
                 device=device, context=context, pixels=pixels)
    done = _load_finished(plan)
    if done is not None:
        return done
    setup = _set_up(plan)
    plan.folder.mkdir(parents=True, exist_ok=True)
    prog = _resume(plan, setup)
    _train(plan, setup, prog, progress=progress, on_epoch=on_epoch)
    return _record(plan, setup, prog)


def load_finetuned(backbone: str | BackboneSpec, weights_id: str, root: str | os.PathLike | None = None
                   ) -> FineTuned:
    """A finished network of the fine-tuned store by id (classifier or Y-Net), in eval mode.

    Raises
    ------
    FineTunedNotFoundError
        No finished network of that id (naming the folder looked in).
    """
    from workbench.backbones.finetuned import using_root

    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    with using_root(root):
        resolved = resolve_weights(spec, weights_id)
    meta = dict(resolved.finetuned or {})
    dc = spec.data_config(meta.get("base_weights"))
    return FineTuned(spec.name, weights_id, Path(resolved.path).parent, build_model(spec, resolved).eval(),
                     list(meta["classes"]), dc, int(meta["image_size"]), meta["resize"], meta["history"],
                     meta["best_epoch"], meta, trained_now=False)


def validation_split(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Stratified ``(train, val)`` split of ``items``; every class keeps a training image."""
    if fraction <= 0:
        return list(items), []
    rng = np.random.default_rng(seed)
    val_ids: set[str] = set()
    by_label: dict[str, list[Item]] = {}
    for it in items:
        by_label.setdefault(it.label, []).append(it)
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda i: i.id)
        k = int(round(len(group) * fraction))
        k = min(k, len(group) - 1)
        if k > 0:
            val_ids.update(group[j].id for j in rng.choice(len(group), size=k, replace=False))
    return [it for it in items if it.id not in val_ids], [it for it in items if it.id in val_ids]

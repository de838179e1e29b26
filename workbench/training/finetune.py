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

import dataclasses
import hashlib
import json
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from workbench.backbones.adapt import FREEZE_MODES, adapt_for_task, freeze_early
from workbench.backbones.finetuned import FT_PREFIX, finetuned_dir, read_meta
from workbench.backbones.loading import (
    CheckpointMismatchError,
    build_finetuned,
    build_model,
    load_data_only,
)
from workbench.backbones.registry import BackboneSpec, DataConfig, get_backbone
from workbench.backbones.weights import ResolvedWeights, resolve_weights
from workbench.data.manifest import Item
from workbench.data.preprocess import Geometry
from workbench.core.io import atomic_file, write_json_atomic
from workbench.core.provenance import environment

__all__ = [
    "FineTuneConfig",
    "FineTuned",
    "SmallValidationWarning",
    "fine_tune",
    "finetune_id",
    "predict_proba",
    "validation_split",
    "FINETUNE_CODE_VERSION",
]

#: Part of every fine-tuned weights id; bump when a change alters the trained numbers.
#: 2: balanced class weights by default, AUC ties broken by lower loss, data-only checkpoints.
FINETUNE_CODE_VERSION = "2"

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "none")
MONITORS = ("auc", "loss")
CLASS_WEIGHTS = ("balanced", "none")
#: Fewer validation images of a class than this make early stopping a coin toss.
MIN_VAL_PER_CLASS = 5
#: Version of the checkpoint.pt layout (tensors, numbers, strings and lists only).
CHECKPOINT_FORMAT = 2


class SmallValidationWarning(UserWarning):
    """The validation split holds too few images of some class to steer early stopping."""


@dataclass(frozen=True)
class FineTuneConfig:
    """How a network is fine-tuned. Every field goes into the weights id.

    Defaults follow the study: SGD with momentum 0.9, its augmentation (rotation
    +-10 deg, horizontal flip, zoom 95-105 %, shift up to 10 %), early stopping on a
    validation fold of the training split.
    """

    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    step_size: int = 10  # "step" schedule: epochs per decay
    gamma: float = 0.1  # "step" schedule: decay factor
    # "balanced": cross-entropy weights n / (C * n_c) from the training rows, so a
    # minority class counts as much as the majority; "none": plain cross-entropy.
    class_weight: str = "balanced"
    freeze: str | float = "none"  # "none", "features" (train the head only), or a fraction
    image_size: int | None = None  # None: the weights' own input size
    resize: str = "squash"
    augment: bool = True
    cut_remain: bool = False
    box_mode: str = "tight"
    patience: int = 5  # epochs without improvement before stopping; 0: never stop early
    monitor: str = "auc"
    seed: int = 0

    def __post_init__(self) -> None:
        # `--set class_weight=none` parses to None, a TOML flag to a bool: one spelling
        # each, so equal settings hash to one id.
        if self.class_weight is None or isinstance(self.class_weight, bool):
            object.__setattr__(self, "class_weight", "balanced" if self.class_weight else "none")
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.monitor in MONITORS, f"monitor must be one of {MONITORS}"),
            (self.class_weight in CLASS_WEIGHTS,
             f"class_weight must be one of {CLASS_WEIGHTS}, got {self.class_weight!r}"),
            (self.lr > 0, "lr must be > 0"),
            (self.freeze in FREEZE_MODES or (isinstance(self.freeze, (int, float))
                                              and not isinstance(self.freeze, bool) and 0 <= self.freeze < 1),
             "freeze must be 'none', 'features' or a fraction in [0, 1)"),
            (self.image_size is None or self.image_size >= 16, "image_size must be >= 16"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"fine-tune config: {msg}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FineTuneConfig":
        """Build from a mapping, naming unknown keys (a typo must not be ignored).

        The key ``class_weights`` (a bool, before ``class_weight`` replaced it) is read
        as ``"balanced"`` / ``"none"``, so older configs and ``meta.json`` files load.
        """
        d = dict(d)
        if "class_weights" in d:
            if "class_weight" in d:
                raise ValueError("fine-tune settings: give class_weight only (class_weights is its old name)")
            d["class_weight"] = d.pop("class_weights")  # a bool or None: __post_init__ maps it
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown fine-tune settings {bad}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "FineTuneConfig":
        return dataclasses.replace(self, **changes)


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


def _precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def _item_fingerprint(items: Sequence[Item]) -> list[list[str]]:
    out = []
    for it in sorted(items, key=lambda i: i.id):
        if it.sha256 is None:
            raise ValueError(f"item {it.id} has no content hash; validate the manifest first")
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
    return FT_PREFIX + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dataset(items, classes, size, resize, dc: DataConfig, *, train: bool, config: FineTuneConfig):
    from workbench.data.augment import StudyAugment, TrainImageDataset

    return TrainImageDataset(
        items, classes, Geometry(size, resize, interpolation=dc.interpolation), dc.mean, dc.std,
        augment=StudyAugment() if (train and config.augment) else None,
        cut_remain=bool(train and config.cut_remain), box_mode=config.box_mode,
    )


def _loader(ds, batch_size: int, *, shuffle: bool, device: torch.device, generator=None) -> DataLoader:
    from workbench.data.augment import collate

    # Worker processes only pay off on a GPU; on the CPU they would compete with the
    # model for the same cores (and one process keeps CPU runs bit-reproducible).
    workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=workers, pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_proba(model: nn.Module, items: Sequence[Item], classes: Sequence[str], geometry: Geometry,
                  data_config: DataConfig, *, device: str | torch.device | None = None,
                  batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Softmax probabilities of ``model`` on ``items`` (no augmentation), ``(n, C)``."""
    from workbench.data.augment import TrainImageDataset

    dev = _resolve_device(device)
    ds = TrainImageDataset(list(items), list(classes), geometry, data_config.mean, data_config.std,
                           augment=None, cut_remain=False)
    model = model.to(dev).eval()
    out = []
    for batch in tqdm(_loader(ds, batch_size, shuffle=False, device=dev), disable=not progress,
                      desc="predict", leave=False):
        x = batch["images"].to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(classes)), np.float32)


def _val_metrics(proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Validation loss, AUC, accuracy and balanced accuracy (mean per-class recall).

    Only AUC and loss steer early stopping: accuracy is maximised by predicting the
    majority class, which on an imbalanced split looks like a good network.
    """
    from sklearn.metrics import roc_auc_score

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


def _warn_small_validation(val_counts: dict[str, int], say: Callable[[str], None]) -> None:
    small = {c: n for c, n in val_counts.items() if n < MIN_VAL_PER_CLASS}
    if not small:
        return
    msg = (f"the validation split holds fewer than {MIN_VAL_PER_CLASS} images of "
           + ", ".join(f"{c!r} ({n})" for c, n in small.items())
           + f" (counts: {val_counts}): early stopping on it is noisy"
           + ("; a class with none leaves AUC undefined, so validation loss is watched" if 0 in small.values()
              else "")
           + ". Use a larger validation share or more images of that class.")
    warnings.warn(msg, SmallValidationWarning, stacklevel=3)
    say(f"warning: {msg}")


def _score(row: dict[str, Any], monitor: str) -> list[float]:
    """What early stopping maximises: ``[auc, -loss]`` (ties in AUC go to the lower
    loss) or ``[-loss]``. A list, so the checkpoint stores it as plain numbers."""
    return [row["val_auc"], -row["val_loss"]] if monitor == "auc" else [-row["val_loss"]]


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
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
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
    on_epoch
        Called after each epoch's checkpoint is on disk, with ``(epoch, history row)``.

    Returns
    -------
    FineTuned
        With the best epoch's weights loaded.
    """
    config = config or FineTuneConfig()
    say = log or ((lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None))
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    classes = list(classes)
    train, val = list(train), list(val)
    if not train:
        raise ValueError("fine-tuning needs training images; got none")
    unknown = sorted({it.label for it in train + val} - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    overlap = sorted({it.id for it in train} & {it.id for it in val})
    if overlap:
        raise ValueError(f"{len(overlap)} images are in both the training and validation lists, e.g. {overlap[:3]}")
    base = resolve_weights(spec, weights)
    dc = spec.data_config(base.id)
    size = config.image_size or dc.input_size
    dev = _resolve_device(device)
    prec = _precision(dev)
    context = dict(context or {})
    wid = finetune_id(spec.name, base, train, val, classes, config, prec)
    if context:  # folds and the like: same images but a different role must not collide
        wid = FT_PREFIX + hashlib.sha256(f"{wid}|{json.dumps(context, sort_keys=True)}".encode()).hexdigest()[:12]
    folder = finetuned_dir(spec.name, wid, root)

    if (folder / "weights.pth").is_file() and (folder / "meta.json").is_file():
        meta = read_meta(folder)
        model = build_finetuned(spec, folder / "weights.pth", len(classes))
        say(f"fine-tuned {spec.name}@{wid} found in {folder}; not training again")
        # A kill between the final save and the checkpoint's removal leaves it behind.
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        return FineTuned(spec.name, wid, folder, model.eval(), classes, dc, size, config.resize,
                         meta["history"], meta["best_epoch"], meta, trained_now=False)

    # -- set up (seeded before the model is built: the new head's init draws from it) --
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model = adapt_for_task(build_model(spec, base), len(classes))
    frozen = freeze_early(model, config.freeze)
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(trainable, config)
    sched = _scheduler(opt, config)
    y_train = np.array([classes.index(it.label) for it in train])
    train_counts = {c: int(n) for c, n in zip(classes, np.bincount(y_train, minlength=len(classes)))}
    class_w = _class_weights(y_train, classes, config.class_weight)
    weight = None if class_w is None else torch.tensor(class_w, dtype=torch.float32, device=dev)
    criterion = nn.CrossEntropyLoss(weight=weight)
    train_ds = _dataset(train, classes, size, config.resize, dc, train=True, config=config)
    if config.cut_remain and train_ds.missing_box_ids:
        say(f"Cut&Remain: {len(train_ds.missing_box_ids)} of {len(train)} training images have no box; "
            f"kept unmasked")
    val_ds = _dataset(val, classes, size, config.resize, dc, train=False, config=config) if val else None
    y_val = np.array([classes.index(it.label) for it in val], dtype=np.int64)
    val_counts = {c: int(n) for c, n in zip(classes, np.bincount(y_val, minlength=len(classes)))}
    if val:
        _warn_small_validation(val_counts, say)
    generator = torch.Generator().manual_seed(config.seed)
    loader = _loader(train_ds, config.batch_size, shuffle=True, device=dev, generator=generator)

    history: list[dict[str, Any]] = []
    best_state, best_score, best_epoch, bad_epochs, start = None, None, 0, 0, 1
    folder.mkdir(parents=True, exist_ok=True)
    ckpt_path = folder / "checkpoint.pt"
    if ckpt_path.is_file():
        try:
            # The folder may be shared or copied, and its id is predictable: data only, never code.
            ck = load_data_only(ckpt_path, what="fine-tuning checkpoint")
            if not isinstance(ck, dict):
                raise CheckpointMismatchError(f"checkpoint {ckpt_path} holds a {type(ck).__name__}, not a dict")
            if ck.get("weights_id") != wid or ck.get("backbone") != spec.name:
                raise CheckpointMismatchError(
                    f"checkpoint {ckpt_path} belongs to {ck.get('backbone')}@{ck.get('weights_id')}, "
                    f"not {spec.name}@{wid}")
            if ck.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointMismatchError(
                    f"cannot resume from {ckpt_path}: checkpoint format {ck.get('format', 'none')}, this "
                    f"workbench writes {CHECKPOINT_FORMAT}. Move it away to start over.")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            _set_rng_state(ck["rng"], generator)
            history, best_state, best_score = ck["history"], ck["best_state"], ck["best_score"]
            best_epoch, bad_epochs, start = ck["best_epoch"], ck["bad_epochs"], ck["epoch"] + 1
        except CheckpointMismatchError:  # UnsafeCheckpointError included
            raise
        except Exception as e:  # another architecture's tensors, a truncated file, ...
            raise CheckpointMismatchError(
                f"cannot resume from {ckpt_path}: it does not fit {spec.name} with {len(classes)} classes "
                f"({type(e).__name__}: {str(e)[:300]}). Move it away to start over.") from e
        say(f"resuming {spec.name}@{wid} after epoch {ck['epoch']} from {ckpt_path}")

    stop = start > config.epochs or (config.patience and bad_epochs >= config.patience and val)
    epoch = start - 1
    for epoch in range(start, config.epochs + 1):
        if stop:
            break
        t0 = time.perf_counter()
        model.train()
        _freeze_bn_of_frozen(model)
        total, n_rows, n_masked = 0.0, 0, 0
        bar = tqdm(loader, disable=not progress, leave=False, desc=f"{spec.name} epoch {epoch}/{config.epochs}")
        for batch in bar:
            x = batch["images"].to(dev, non_blocking=True)
            yb = batch["labels"].to(dev, non_blocking=True)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x)
            loss = criterion(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(yb)
            n_rows += len(yb)
            n_masked += int(batch["is_masked"].sum())
            bar.set_postfix(loss=f"{total / n_rows:.4f}")
        lr = opt.param_groups[0]["lr"]
        sched.step()
        row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(n_rows, 1), "lr": lr,
                               "rows": n_rows, "masked_rows": n_masked}
        if val_ds is not None:
            proba = predict_proba(model, val, classes, Geometry(size, config.resize, interpolation=dc.interpolation),
                                  dc, device=dev, batch_size=max(config.batch_size, 32))
            row.update(_val_metrics(proba, y_val, len(classes)))
            # AUC is undefined when the validation split lacks a class: watch the loss then.
            monitor = config.monitor if not (config.monitor == "auc" and np.isnan(row["val_auc"])) else "loss"
            score = _score(row, monitor)
        else:
            monitor, score = "loss", [-row["train_loss"]]
        row["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        if val_ds is None or _better(score, best_score):
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        say(f"{spec.name}@{wid} epoch {epoch}: {shown}")
        # Tensors, numbers, strings and lists only: it is read back with weights_only=True.
        _atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "backbone": spec.name, "weights_id": wid, "epoch": epoch, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
            "best_state": best_state, "best_score": best_score, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "rng": _rng_state(generator),
        }, ckpt_path)
        if on_epoch is not None:
            on_epoch(epoch, row)
        if config.patience and val_ds is not None and bad_epochs >= config.patience:
            say(f"early stop after epoch {epoch}: no better validation {monitor} for {bad_epochs} epochs")
            stop = True

    model.load_state_dict(best_state)
    meta = {
        "backbone": spec.name, "weights_id": wid, "base_weights": base.id, "base_digest": base.digest,
        "classes": classes, "config": config.to_dict(), "precision": prec, "device": str(dev),
        "image_size": size, "resize": config.resize,
        "n_train": len(train), "n_val": len(val),
        # The ids it saw: the sweep marks CV results on its features optimistic from these.
        "train_ids": sorted(it.id for it in train), "val_ids": sorted(it.id for it in val), "context": context, "frozen_parameters": len(frozen),
        "class_weight": {"mode": config.class_weight, "train_counts": train_counts,
                         "weights": None if class_w is None else dict(zip(classes, map(float, class_w)))},
        "val_counts": val_counts, "monitor": config.monitor,
        "history": history, "best_epoch": best_epoch, "code_version": FINETUNE_CODE_VERSION,
        "environment": environment(),
    }
    _atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, folder / "weights.pth")
    # Atomic: a kill mid-write must not leave a cut-off meta.json beside complete
    # weights, which the store would list as finished and every re-run would trip on.
    write_json_atomic(folder / "meta.json", meta)
    ckpt_path.unlink(missing_ok=True)  # the weights file supersedes it
    say(f"fine-tuned {spec.name}@{wid}: best epoch {best_epoch} of {len(history)}; saved in {folder}")
    return FineTuned(spec.name, wid, folder, model.eval(), classes, dc, size, config.resize, history,
                     best_epoch, meta, trained_now=True)


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

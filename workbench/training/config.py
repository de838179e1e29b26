"""How a network is fine-tuned: :class:`FineTuneConfig`, its choices and defaults.

Kept apart from the training loop and free of torch, torchvision, timm and
scikit-learn, so the command-line parser can show the defaults without loading any of
them. :mod:`workbench.training.finetune` re-exports everything here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

__all__ = ["FineTuneConfig", "OPTIMIZERS", "SCHEDULES", "MONITORS", "CLASS_WEIGHTS", "FREEZE_MODES", "MODELS"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "none")
#: What early stopping watches on the validation split: the class AUC (ties to the lower
#: loss), the loss, or for a Y-Net the class AUC plus the mean Dice of its masks, so a
#: network whose AUC peaked before its decoder learnt anything is not the one kept.
MONITORS = ("auc", "loss", "auc+dice")
CLASS_WEIGHTS = ("balanced", "none")
#: The named freeze modes of :func:`workbench.backbones.adapt.freeze_early` (which
#: imports torch, so the names are repeated here; a test keeps the two equal).
FREEZE_MODES = ("none", "features")
#: What is trained: a classifier (the backbone with a new head) or a Y-Net (a U-Net on
#: the backbone with a classification branch, :mod:`workbench.backbones.ynet`).
MODELS = ("classifier", "ynet")
#: Fields that only a Y-Net reads; left out of a classifier's :meth:`FineTuneConfig.to_dict`
#: so the ids of every classifier trained before they existed stay the same.
_YNET_FIELDS = ("model", "seg_weight", "cls_weight")


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


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
    # "ynet": train a Y-Net (segmentation + classification) on the backbone instead of a
    # classifier; its loss is seg_weight * (Dice + BCE) + cls_weight * CE. seg_weight = 0
    # is the study's ablation (the classification branch alone).
    model: str = "classifier"
    seg_weight: float = 1.0
    cls_weight: float = 1.0

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
            (self.freeze in FREEZE_MODES or _is_fraction(self.freeze),
             "freeze must be 'none', 'features' or a fraction in [0, 1)"),
            (self.image_size is None or self.image_size >= 16, "image_size must be >= 16"),
            (self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}"),
            (_is_weight(self.seg_weight) and _is_weight(self.cls_weight),
             f"seg_weight and cls_weight must be numbers >= 0, got {self.seg_weight!r}, {self.cls_weight!r}"),
            (self.model == "ynet" or (self.seg_weight, self.cls_weight) == (1.0, 1.0),
             "seg_weight and cls_weight are Y-Net settings: give model = 'ynet' with them"),
            (self.model != "ynet" or self.seg_weight > 0 or self.cls_weight > 0,
             "seg_weight and cls_weight are both 0: nothing would be learned"),
            (self.model != "ynet" or self.cls_weight > 0,
             "cls_weight = 0 leaves the Y-Net's classification branch untrained: its class scores are the records'"),
            (self.model != "ynet" or self.freeze == "none", "a Y-Net is trained whole: freeze must be 'none'"),
            (self.monitor != "auc+dice" or self.model == "ynet",
             "monitor 'auc+dice' watches a Y-Net's validation Dice: give model = 'ynet' with it"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"fine-tune config: {msg}")
        # One spelling per value (0 and 0.0 hash alike).
        object.__setattr__(self, "seg_weight", float(self.seg_weight))
        object.__setattr__(self, "cls_weight", float(self.cls_weight))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FineTuneConfig:
        """Build from a mapping, naming unknown keys (a typo must not be ignored).

        The key ``class_weights`` (a bool, before ``class_weight`` replaced it) is read
        as ``"balanced"`` / ``"none"``, so older configs and ``meta.json`` files load.
        """
        d = dict(d)
        if "class_weights" in d:
            if "class_weight" in d:
                raise ConfigError("fine-tune settings: give class_weight only (class_weights is its old name)")
            d["class_weight"] = d.pop("class_weights")  # a bool or None: __post_init__ maps it
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ConfigError(f"unknown fine-tune settings {bad}; known: {sorted(names)}")
        return cls(**d)

    @property
    def is_ynet(self) -> bool:
        return self.model == "ynet"

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: the form hashed into the weights id and stored in meta.json.

        A classifier's dict leaves out the Y-Net fields (they are at their defaults), so
        the ids of classifiers trained before Y-Nets existed do not change.
        """
        d = dataclasses.asdict(self)
        if not self.is_ynet:
            for k in _YNET_FIELDS:
                d.pop(k)
        return d

    def replace(self, **changes: Any) -> FineTuneConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

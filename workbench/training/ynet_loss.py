"""The Y-Net training loss: segmentation (Dice + cross-entropy) plus classification.

``loss = seg_weight * (Dice + BCE)(mask logits, masks of the rows that have one)
       + cls_weight * CE(class logits, labels)``

Images without a mask (the normal class of BUSI, or a manifest without masks) count in
the classification term only: the segmentation term is taken over the rows with a mask,
and is 0 when a batch has none. ``seg_weight = 0`` is the study's ablation (the
classification branch alone). Dice is segmentation-models-pytorch's ``DiceLoss`` (binary,
from logits), the well-kept implementation rather than our own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import ConfigError

__all__ = ["YNetLoss", "YNetLossParts"]


@dataclass(frozen=True)
class YNetLossParts:
    """The total and its two terms (unweighted), as floats for the training history."""

    total: float
    segmentation: float
    classification: float
    masked_rows: int


class YNetLoss(nn.Module):
    """``forward(mask_logits, class_logits, masks, has_mask, labels) -> (loss, parts)``.

    Parameters
    ----------
    seg_weight, cls_weight
        Weights of the segmentation and classification terms (>= 0, not both 0).
    class_weight
        Optional per-class weights of the classification cross-entropy.
    """

    def __init__(self, seg_weight: float = 1.0, cls_weight: float = 1.0,
                 class_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp  # heavy; only Y-Net needs it

        for name, v in (("seg_weight", seg_weight), ("cls_weight", cls_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"Y-Net loss {name} = {v!r}: expected a number >= 0")
        if seg_weight == 0 and cls_weight == 0:
            raise ConfigError("Y-Net loss: seg_weight and cls_weight are both 0; nothing would be learned")
        self.seg_weight, self.cls_weight = float(seg_weight), float(cls_weight)
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.register_buffer("class_weight", None if class_weight is None else torch.as_tensor(class_weight,
                                                                                                 dtype=torch.float32))

    def forward(self, mask_logits: torch.Tensor, class_logits: torch.Tensor, masks: torch.Tensor,
                has_mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, YNetLossParts]:
        cls = F.cross_entropy(class_logits, labels, weight=self.class_weight)
        rows = has_mask.bool()
        if rows.any() and self.seg_weight > 0:
            logits, target = mask_logits[rows], masks[rows].float()
            seg = self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
        else:  # no row with a mask (or the ablation): the classification term alone
            seg = mask_logits.sum() * 0.0
        total = self.seg_weight * seg + self.cls_weight * cls
        return total, YNetLossParts(float(total.detach()), float(seg.detach()), float(cls.detach()), int(rows.sum()))

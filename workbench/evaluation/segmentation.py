"""Segmentation metrics: Dice and IoU per image, and their summaries as a paper reports them.

The Y-Net study reports the median Dice of its masks with the range, and counts the
"totally wrong" masks (a vessel segmented instead of the node: Dice 0.002). These are
those figures, per image and per class, with percentile bootstrap intervals of the
median and the mean (scipy's ``bootstrap``, seeded, so the same masks give the same
table).

Empty masks: when both the predicted and the manual mask are empty (a normal image with
no lesion, correctly left blank), Dice and IoU are **1** — the prediction agrees with
the truth exactly, and 0/0 has no other sensible value. When only one of them is empty
they are 0.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError

__all__ = ["FAILED_DICE", "SegmentationInputError", "dice", "iou", "mask_scores", "segmentation_summary",
           "summary_by_class"]

#: Below this Dice a mask is "totally wrong" (the study's wording), counted apart.
FAILED_DICE = 0.1
#: Bootstrap resamples of the intervals of the median and mean.
N_BOOT = 2000


class SegmentationInputError(WorkbenchError, ValueError):
    """Masks that cannot be compared: shapes differ, or values are not binary."""


def _binary(mask: Any, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == bool:
        return m
    values = np.unique(m)
    if not np.isin(values, (0, 1)).all():
        raise SegmentationInputError(f"{what} mask holds values {values[:5].tolist()}: expected a binary mask "
                                     f"(0/1 or bool); threshold probabilities first")
    return m.astype(bool)


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _binary(pred, "predicted"), _binary(truth, "manual")
    if p.shape != t.shape:
        raise SegmentationInputError(f"predicted mask of shape {p.shape} against a manual mask of shape {t.shape}: "
                                     f"resize one to the other first")
    return p, t


def dice(pred: Any, truth: Any) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two binary masks; 1 when both are empty."""
    p, t = _pair(pred, truth)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(pred: Any, truth: Any) -> float:
    """Intersection over union |P∩T| / |P∪T| of two binary masks; 1 when both are empty."""
    p, t = _pair(pred, truth)
    union = int(np.logical_or(p, t).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, t).sum()) / union


def mask_scores(preds: Sequence[Any], truths: Sequence[Any], ids: Sequence[str] | None = None,
                labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per image: ``id``, (``label``), ``dice``, ``iou``, ``failed`` (Dice < :data:`FAILED_DICE`)."""
    if len(preds) != len(truths):
        raise SegmentationInputError(f"{len(preds)} predicted masks for {len(truths)} manual masks")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(preds))]
    rows = []
    for i, (p, t) in enumerate(zip(preds, truths)):
        try:
            d, j = dice(p, t), iou(p, t)
        except SegmentationInputError as e:
            raise SegmentationInputError(f"image {ids[i]!r}: {e}") from None
        rows.append({"id": ids[i], "dice": d, "iou": j, "failed": d < FAILED_DICE})
    frame = pd.DataFrame(rows, columns=["id", "dice", "iou", "failed"])
    if labels is not None:
        frame.insert(1, "label", list(labels))
    return frame


def _interval(values: np.ndarray, statistic, alpha: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (NaN for fewer than 2 values or no spread)."""
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:
        v = float(statistic(values)) if len(values) else float("nan")
        return (v, v) if len(values) else (float("nan"), float("nan"))
    res = bootstrap((values,), statistic, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=False)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def segmentation_summary(values: Sequence[float], *, alpha: float = 0.05, n_boot: int = N_BOOT, seed: int = 0
                         ) -> dict[str, float]:
    """Median and mean of per-image scores (Dice or IoU) with ``1 - alpha`` bootstrap
    intervals, range, and the share of images scoring below :data:`FAILED_DICE` (on Dice: the
    study's "totally wrong" masks)."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        raise SegmentationInputError("no per-image scores to summarise")
    if not np.isfinite(v).all():
        raise SegmentationInputError("per-image scores hold NaN or infinite values")
    med_lo, med_hi = _interval(v, np.median, alpha, n_boot, seed)
    mean_lo, mean_hi = _interval(v, np.mean, alpha, n_boot, seed)
    return {"n": int(len(v)), "median": float(np.median(v)), "median_low": med_lo, "median_high": med_hi,
            "mean": float(v.mean()), "mean_low": mean_lo, "mean_high": mean_hi, "min": float(v.min()),
            "max": float(v.max()), "failed_share": float((v < FAILED_DICE).mean())}


def summary_by_class(scores: pd.DataFrame, metric: str = "dice", *, alpha: float = 0.05, n_boot: int = N_BOOT,
                     seed: int = 0) -> pd.DataFrame:
    """:func:`segmentation_summary` of ``scores[metric]`` over all images and per ``label``
    (rows ``"all"``, then the classes in sorted order)."""
    if metric not in scores.columns:
        raise SegmentationInputError(f"no column {metric!r} in the per-image scores ({list(scores.columns)})")
    parts = [("all", scores)]
    if "label" in scores.columns:
        parts += [(str(c), g) for c, g in sorted(scores.groupby("label"), key=lambda x: str(x[0]))]
    rows = [{"class": name, **segmentation_summary(g[metric], alpha=alpha, n_boot=n_boot, seed=seed)}
            for name, g in parts]
    return pd.DataFrame(rows)

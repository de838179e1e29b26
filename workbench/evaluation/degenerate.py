"""The one rule for degenerate models: flagged in every table, never crowned.

A model is *degenerate* when it does not discriminate, whatever its accuracy says:

- it puts (nearly) every image in one class: at least :data:`ONE_CLASS_SHARE` of its
  predictions (at its operating threshold, or argmax) fall in one class while the
  images it predicts hold two classes or more (a fine-tuned CNN that calls every test
  nodule malignant has sensitivity 1 and a respectable accuracy on a malignant-heavy
  split);
- or its CV AUC (mean over the outer folds) is not above chance: at most
  :data:`CHANCE_AUC`.

The search checks both on the CV folds (out-of-fold predictions), where it may decide
the selection, and the first on the test split, where it only flags: a model flagged
on test stays selected if CV chose it (the selection never reads test), but it is
excluded from "best" marks, cannot be the baseline others are compared against, and is
named in the report.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["CHANCE_AUC", "DEGENERATE_MARK", "ONE_CLASS_SHARE", "degenerate_reason"]

#: Share of predictions in one class from which a model is degenerate.
ONE_CLASS_SHARE = 0.95
#: A CV AUC at or below this is not above chance (0.5 plus a margin for fold noise).
CHANCE_AUC = 0.55
#: The tables' mark for a degenerate model.
DEGENERATE_MARK = "‡"


def degenerate_reason(*, cv_auc: float | None = None, y: Sequence[Any] | np.ndarray | None = None,
                      pred: Sequence[Any] | np.ndarray | None = None, where: str = "test",
                      names: Sequence[str] | None = None) -> str:
    """Why a model is degenerate, or ``""`` when it is not.

    Parameters
    ----------
    cv_auc
        Mean CV AUC (``None``/NaN: not checked).
    y, pred
        True and predicted labels of the images the model classified (``None``: not
        checked). Integer labels are named by ``names`` in the reason.
    where
        What ``y``/``pred`` are, for the reason ("test", "out-of-fold").

    Examples
    --------
    >>> degenerate_reason(y=[0, 1, 1, 0] * 5, pred=[1] * 20, names=["benign", "malignant"])
    'predicts malignant for 100% of the test images'
    >>> degenerate_reason(cv_auc=0.52)
    'CV AUC 0.520 is not above chance (≤ 0.55)'
    """
    reasons = []
    if cv_auc is not None and not (isinstance(cv_auc, float) and math.isnan(cv_auc)) and cv_auc <= CHANCE_AUC:
        reasons.append(f"CV AUC {cv_auc:.3f} is not above chance (≤ {CHANCE_AUC:.2f})")
    if y is not None and pred is not None and len(pred):
        y_arr, p_arr = np.asarray(y), np.asarray(pred)
        if len(np.unique(y_arr)) >= 2:
            values, counts = np.unique(p_arr, return_counts=True)
            top = int(np.argmax(counts))
            share = counts[top] / len(p_arr)
            if share >= ONE_CLASS_SHARE:
                label = values[top]
                if names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(names):
                    label = names[int(label)]
                reasons.append(f"predicts {label} for {share:.0%} of the {where} images")
    return "; ".join(reasons)

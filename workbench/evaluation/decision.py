"""Decision curves: the net benefit of acting on a model's probabilities (Vickers & Elkin 2006).

At a threshold probability ``t`` (the risk above which a clinician would act, here
recommend a biopsy), a model that calls every case with ``p >= t`` positive has

    net benefit = TP / n - FP / n * t / (1 - t),

true positives gained, less false positives weighted by the odds of the threshold (the
harm of an unneeded biopsy relative to the benefit of a needed one that ``t`` implies).
The two default strategies are "biopsy all" (every case positive: ``prevalence -
(1 - prevalence) * t / (1 - t)``) and "biopsy none" (0 at every threshold). A model is
worth using at ``t`` only where its net benefit exceeds both.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workbench.evaluation.calibration import CalibrationError, checked_binary

__all__ = ["checked_thresholds", "net_benefit", "net_benefit_treat_all", "net_benefit_treat_none"]


def checked_thresholds(thresholds: Any) -> np.ndarray:
    """Threshold probabilities as a 1-D float array, each strictly between 0 and 1.

    Raises
    ------
    CalibrationError
        No thresholds, or one that is not a finite number in (0, 1) (named).
    """
    t = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if t.ndim != 1 or t.size == 0:
        raise CalibrationError(f"thresholds {thresholds!r}: expected a non-empty list of probabilities")
    bad = ~np.isfinite(t) | (t <= 0) | (t >= 1)
    if bad.any():
        raise CalibrationError(f"threshold probability {float(t[bad][0])!r}: expected a number strictly between "
                               "0 and 1 "
                               "(at 0 every case is treated, at 1 the harm weight t / (1 - t) is infinite)")
    return t


def _odds(t: np.ndarray) -> np.ndarray:
    return t / (1.0 - t)


def net_benefit(y: Any, p: Any, thresholds: Any) -> np.ndarray:
    """Net benefit of calling ``p >= t`` positive, at each threshold ``t``.

    Parameters
    ----------
    y
        0/1 truth (1: the positive class, the one a biopsy should find).
    p
        Predicted probability of the positive class.
    thresholds
        Threshold probabilities in (0, 1).

    Returns
    -------
    ndarray
        ``TP/n - FP/n * t/(1-t)`` per threshold.
    """
    y_arr, p_arr = checked_binary(y, p, what="net benefit")
    t = checked_thresholds(thresholds)
    calls = p_arr[None, :] >= t[:, None]  # thresholds x cases
    n = y_arr.size
    tp = (calls & (y_arr[None, :] == 1)).sum(axis=1)
    fp = (calls & (y_arr[None, :] == 0)).sum(axis=1)
    return tp / n - fp / n * _odds(t)


def net_benefit_treat_all(y: Any, thresholds: Any) -> np.ndarray:
    """Net benefit of treating (biopsying) every case: ``prevalence - (1 - prevalence) * t / (1 - t)``."""
    y_arr, _ = checked_binary(y, np.zeros(np.asarray(y).size), what="net benefit (treat all)")
    t = checked_thresholds(thresholds)
    prevalence = float(y_arr.mean())
    return prevalence - (1.0 - prevalence) * _odds(t)


def net_benefit_treat_none(thresholds: Any) -> np.ndarray:
    """Net benefit of treating no case: 0 at every threshold (no true and no false positives)."""
    return np.zeros(checked_thresholds(thresholds).size)

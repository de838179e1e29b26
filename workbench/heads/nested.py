"""Nested model selection shared by every head, plain or precomputed-kernel.

One algorithm, two ways of fitting: :func:`inner_search` takes a callback that fits a
grid point on some training rows and scores held-out rows, so the plain scikit-learn
path (:class:`~workbench.heads.tuned.TunedHead`) and the sweep's precomputed-kernel fast
path choose hyper-parameters, and calibrate, in exactly the same way.

Scores are always an ``(n, n_classes)`` matrix: class probabilities, or decision values
(a binary SVM's ``d`` becomes ``[-d, d]``), so selection and calibration never branch on
the number of classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import ParameterGrid

from workbench.evaluation.metrics import SCORINGS

__all__ = [
    "InnerSearch",
    "PlattCalibrator",
    "SCORINGS",
    "as_score_matrix",
    "calibrated_proba",
    "fit_calibrator",
    "grid_points",
    "inner_search",
    "response",
    "selection_score",
]


#: ``score_fold(params, fold_index, train_positions, heldout_positions)`` returns the
#: ``(n_heldout, C)`` scores of ``params`` fitted on the fold's training positions.
ScoreFold = Callable[[dict[str, Any], int, np.ndarray, np.ndarray], np.ndarray]


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The grid's points in scikit-learn's :class:`ParameterGrid` order (sorted keys)."""
    return list(ParameterGrid(grid)) if grid else [{}]


def as_score_matrix(values: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision values or probabilities as an ``(n, n_classes)`` float64 matrix."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        if n_classes != 2:
            raise ValueError(f"1-D scores for {n_classes} classes")
        return np.column_stack([-v, v])
    return v


def response(est: Any, X: np.ndarray, n_classes: int, *, decision: bool) -> np.ndarray:
    """Decision values (``decision=True``) or probabilities of a fitted estimator."""
    if decision:
        return as_score_matrix(est.decision_function(X), n_classes)
    p = as_score_matrix(est.predict_proba(X), n_classes)
    return p / p.sum(axis=1, keepdims=True)  # XGBoost's float32 rows sum to 1 +- 1e-7


def selection_score(y: np.ndarray, scores: np.ndarray, scoring: str = "auc") -> float:
    """Score of held-out ``scores`` for inner selection (higher is better).

    ``"auc"`` is the macro mean over classes of the one-vs-rest ROC AUC of each class's
    score column; for two classes it is the plain ROC AUC of the positive column.
    """
    y = np.asarray(y)
    if scoring == "auc":
        n_classes = scores.shape[1]
        if n_classes == 2:
            return _auc(y == 1, scores[:, 1])
        return float(np.mean([_auc(y == k, scores[:, k]) for k in range(n_classes)]))
    pred = scores.argmax(axis=1)
    if scoring == "balanced_accuracy":
        return float(balanced_accuracy_score(y, pred))
    if scoring == "accuracy":
        return float(accuracy_score(y, pred))
    raise ValueError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half).

    Equal to :func:`sklearn.metrics.roc_auc_score`, without its input validation, which
    costs more than the computation in the thousands of inner-fold calls of a sweep.
    """
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC of a held-out fold with one class only")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class InnerSearch:
    """Outcome of the inner cross-validation over a grid.

    Attributes
    ----------
    params : list of dict
        Grid points, in search order.
    scores : ndarray, shape (n_points,)
        Mean inner-fold selection score of each point.
    best : int
        Index of the chosen point: the first with the highest score.
    oof : ndarray, shape (n_train, n_classes) or None
        Out-of-fold scores of the chosen point on every training row (what calibration
        is fitted on); None when the grid has a single point and no calibration is asked.
    """

    params: list[dict[str, Any]]
    scores: np.ndarray
    best: int
    oof: np.ndarray | None

    @property
    def best_params(self) -> dict[str, Any]:
        return self.params[self.best]

    @property
    def best_score(self) -> float:
        return float(self.scores[self.best])


def inner_search(
    score_fold: ScoreFold,
    grid: dict[str, Sequence[Any]],
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    *,
    scoring: str = "auc",
    need_oof: bool = False,
) -> InnerSearch:
    """Choose the grid point with the best mean held-out score over ``folds``.

    ``y`` and fold positions are those of the training rows only: nothing outside them
    is seen. With one grid point and ``need_oof=False`` nothing is fitted.
    """
    points = grid_points(grid)
    if len(points) == 1 and not need_oof:
        return InnerSearch(points, np.array([np.nan]), 0, None)
    y = np.asarray(y)
    scores = np.empty(len(points))
    oofs = []
    for p, params in enumerate(points):
        oof = np.zeros((len(y), n_classes))
        fold_scores = []
        for i, (tr, va) in enumerate(folds):
            s = score_fold(params, i, tr, va)
            oof[va] = s
            fold_scores.append(selection_score(y[va], s, scoring))
        scores[p] = np.mean(fold_scores)
        oofs.append(oof)
    best = int(np.argmax(scores))  # first of equals: grid order decides ties
    return InnerSearch(points, scores, best, oofs[best])


def _platt(f: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid ``p = 1 / (1 + exp(a f + b))`` by Newton's method.

    The objective of scikit-learn's ``_sigmoid_calibration`` (Platt's smoothed targets,
    the same start), solved as in Lin, Lin & Weng (2007) and libsvm: a 2-parameter convex
    problem that Newton steps finish in a few iterations, where scikit-learn's general
    L-BFGS took ~90 ms a call: the largest cost of a 63-subset sweep's fast path.
    """
    f = np.asarray(f, dtype=np.float64)
    n_pos = float(positive.sum())
    n_neg = len(f) - n_pos
    t = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def nll(a: float, b: float) -> float:
        z = a * f + b
        return float(np.sum(np.logaddexp(0.0, z) - (1.0 - t) * z))

    a, b = 0.0, float(np.log((n_neg + 1.0) / (n_pos + 1.0)))
    value = nll(a, b)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(a * f + b))
        d1 = t - p
        g1, g2 = float(f @ d1), float(d1.sum())
        if abs(g1) < 1e-10 * len(f) and abs(g2) < 1e-10 * len(f):
            break
        d2 = p * (1.0 - p)
        h11, h22, h21 = float(f * f @ d2) + 1e-12, float(d2.sum()) + 1e-12, float(f @ d2)
        det = h11 * h22 - h21 * h21
        da, db = -(h22 * g1 - h21 * g2) / det, -(-h21 * g1 + h11 * g2) / det
        slope = g1 * da + g2 * db
        step = 1.0
        while step >= 1e-10:  # backtracking line search
            new = nll(a + step * da, b + step * db)
            if new < value + 1e-4 * step * slope:
                a, b, value = a + step * da, b + step * db, new
                break
            step /= 2
        else:
            break
    return a, b


@dataclass
class PlattCalibrator:
    """One-vs-rest sigmoids over decision values, normalized as scikit-learn does.

    ``coef[k] = (a, b)`` maps class ``k``'s score column (the positive column only, for
    two classes) to ``1 / (1 + exp(a s + b))``.
    """

    coef: list[tuple[float, float]]
    n_classes: int

    def predict_proba(self, scores: np.ndarray) -> np.ndarray:
        S = np.asarray(scores, dtype=np.float64)
        if self.n_classes == 2:
            a, b = self.coef[0]
            p1 = 1.0 / (1.0 + np.exp(a * S[:, 1] + b))
            return np.column_stack([1.0 - p1, p1])
        P = np.column_stack([1.0 / (1.0 + np.exp(a * S[:, k] + b)) for k, (a, b) in enumerate(self.coef)])
        total = P.sum(axis=1, keepdims=True)
        # As CalibratedClassifierCV: rows that all calibrate to 0 become uniform.
        with np.errstate(invalid="ignore", divide="ignore"):
            P = np.where(total > 0, P / total, 1.0 / self.n_classes)
        return np.clip(P, 0.0, 1.0)


def fit_calibrator(oof: np.ndarray, y: np.ndarray, n_classes: int) -> PlattCalibrator:
    """Platt (sigmoid) calibration fitted on out-of-fold scores.

    What ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` does: calibrate
    on cross-validated scores, then apply to a model refitted on all training rows. It
    is scikit-learn's replacement for the deprecated ``SVC(probability=True)``; a test
    holds this implementation to its output.
    """
    y = np.asarray(y)
    oof = np.asarray(oof, dtype=np.float64)
    if n_classes == 2:
        return PlattCalibrator([_platt(oof[:, 1], y == 1)], 2)
    return PlattCalibrator([_platt(oof[:, k], y == k) for k in range(n_classes)], n_classes)


def calibrated_proba(calibrator, scores: np.ndarray) -> np.ndarray:
    """Probabilities for decision-value ``scores`` from :func:`fit_calibrator`."""
    return calibrator.predict_proba(np.asarray(scores, dtype=np.float64))

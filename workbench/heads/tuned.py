"""A zoo head with nested hyper-parameter search, as one scikit-learn classifier."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from workbench.heads.nested import (
    calibrated_proba,
    fit_calibrator,
    inner_search,
    response,
)
from workbench.heads.zoo import HeadSpec, get_head

__all__ = ["TunedHead"]


class TunedHead(ClassifierMixin, BaseEstimator):
    """A zoo head whose hyper-parameters are chosen by inner cross-validation.

    ``fit`` searches ``grid`` (the zoo default when None) by stratified (group) k-fold on
    the rows it is given, refits the best point on all of them and, for SVMs, fits a
    sigmoid on the best point's out-of-fold decision values. It is what the sweep
    computes for one candidate and one outer fold; the sweep's precomputed-kernel fast
    path reproduces it for SVMs.

    Parameters
    ----------
    head : str
        Zoo name (``svm-rbf``, ``svm-linear``, ``rf``, ``xgb``, ``logreg``).
    grid : dict, optional
        Grid over the head's final-step parameters; ``{}`` means the defaults, no search.
    inner_splits : int
        Inner folds.
    scoring : str
        Inner selection score: ``auc``, ``balanced_accuracy`` or ``accuracy``.
    random_state : int
        Seeds the inner folds and the head.
    """

    def __init__(self, head: str = "svm-rbf", grid: dict[str, Sequence[Any]] | None = None,
                 inner_splits: int = 3, scoring: str = "auc", random_state: int = 0):
        self.head = head
        self.grid = grid
        self.inner_splits = inner_splits
        self.scoring = scoring
        self.random_state = random_state

    @property
    def spec_(self) -> HeadSpec:
        return get_head(self.head)

    def fit(self, X, y, groups=None):
        from workbench.search.splits import make_folds

        spec = self.spec_
        X = np.asarray(X)
        self.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
        n_classes = len(self.classes_)
        grid = spec.grid if self.grid is None else self.grid
        base = spec.pipeline(self.random_state)
        decision = spec.calibrate

        def score_fold(params, _fold, tr, va):
            est = clone(base).set_params(**{f"clf__{k}": v for k, v in params.items()})
            est.fit(X[tr], y_idx[tr])
            return response(est, X[va], n_classes, decision=decision)

        folds = make_folds(y_idx, self.inner_splits, self.random_state,
                           None if groups is None else np.asarray(groups), list(map(str, self.classes_)),
                           what="training rows")
        self.search_ = inner_search(score_fold, grid, y_idx, folds, n_classes,
                                    scoring=self.scoring, need_oof=decision)
        self.best_params_ = self.search_.best_params
        self.estimator_ = spec.pipeline(self.random_state, **self.best_params_).fit(X, y_idx)
        self.calibrator_ = fit_calibrator(self.search_.oof, y_idx, n_classes) if decision else None
        return self

    def scores(self, X) -> np.ndarray:
        """Raw ``(n, n_classes)`` scores: SVM decision values (binary ``d`` as ``[-d, d]``),
        or probabilities for the other heads."""
        check_is_fitted(self, "estimator_")
        return response(self.estimator_, np.asarray(X), len(self.classes_), decision=self.spec_.calibrate)

    def decision_function(self, X) -> np.ndarray:
        """scikit-learn's convention: ``(n,)`` scores of the second class when binary."""
        s = self.scores(X)
        return s[:, 1] if s.shape[1] == 2 else s

    def predict_proba(self, X) -> np.ndarray:
        scores = self.scores(X)
        return calibrated_proba(self.calibrator_, scores) if self.calibrator_ is not None else scores

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

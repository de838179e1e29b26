"""A zoo head with nested hyper-parameter search, as one scikit-learn classifier."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from workbench.evaluation.splits import make_folds
from workbench.heads.nested import (
    calibrated_proba,
    fit_calibrator,
    inner_search,
    response,
)
from workbench.heads.zoo import HeadSpec, get_head

__all__ = ["TunedHead", "log_odds"]

#: Float features keep their dtype (a float16 or float32 cache's rows are then scaled
#: exactly as the sweep's fast path scales them); anything else becomes float64.
_DTYPES = (np.float64, np.float32, np.float16)


def log_odds(proba: np.ndarray) -> np.ndarray:
    """scikit-learn's decision convention from probabilities.

    Binary: ``log(p1 / p0)``, shape ``(n,)``, positive exactly where ``p1 > p0``;
    more classes: ``log p``, shape ``(n, C)``, whose argmax is that of ``p``.
    Probabilities are clipped at the smallest positive float so 0 maps to about -708,
    not -inf (rows saturated at 0 or 1 tie, as their probabilities do).
    """
    L = np.log(np.clip(np.asarray(proba, dtype=np.float64), np.finfo(np.float64).tiny, None))
    return L[:, 1] - L[:, 0] if L.shape[1] == 2 else L


class TunedHead(ClassifierMixin, BaseEstimator):
    """A zoo head whose hyper-parameters are chosen by inner cross-validation.

    ``fit`` searches ``grid`` (the zoo default when None) by stratified (group) k-fold on
    the rows it is given, refits the best point on all of them and, for SVMs, fits a
    sigmoid on the best point's out-of-fold decision values. It is what the sweep
    computes for one candidate and one outer fold; the sweep's precomputed-kernel fast
    path reproduces it for SVMs.

    ``predict`` is the argmax of ``predict_proba`` and ``decision_function`` the log-odds
    of ``predict_proba`` (binary: ``> 0`` exactly where ``predict`` says ``classes_[1]``),
    for every head. The raw scores the sweep records (an SVM's own decision values, or
    the probabilities of the other heads) come from :meth:`scores`; an SVM's raw sign can
    disagree with ``predict``, since Platt's sigmoid need not cross 0.5 at 0.

    Parameters
    ----------
    head : str
        Zoo name (``svm-rbf``, ``svm-linear``, ``rf``, ``xgb``, ``logreg``).
    grid : dict, optional
        Grid over the head's final-step parameters; ``{}`` means the defaults, no search.
    inner_splits : int
        Inner folds; every class needs at least this many rows (or groups).
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

    def fit(self, X, y, groups=None) -> "TunedHead":
        """Search the grid by inner CV on ``(X, y)``, refit the best point, calibrate SVMs.

        Raises
        ------
        ValueError
            On non-finite, sparse or empty ``X``, a continuous or multi-output ``y``, one
            class only, or a class with fewer rows than ``inner_splits``.
        """
        spec = self.spec_
        X, y = validate_data(self, X, y, dtype=_DTYPES)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"TunedHead({self.head!r}): y holds one class only ({self.classes_[0]!r}); "
                             "a classifier needs at least two")
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
        """Raw ``(n, n_classes)`` scores, as the sweep records them: SVM decision values
        (binary ``d`` as ``[-d, d]``), or probabilities for the other heads."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_DTYPES, reset=False)
        return response(self.estimator_, X, len(self.classes_), decision=self.spec_.calibrate)

    def decision_function(self, X) -> np.ndarray:
        """Log-odds of :meth:`predict_proba`: ``(n,)`` when binary (``> 0``: ``classes_[1]``),
        else ``(n, n_classes)`` log-probabilities. See :func:`log_odds`."""
        return log_odds(self.predict_proba(X))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order (Platt-calibrated for SVMs)."""
        scores = self.scores(X)
        return calibrated_proba(self.calibrator_, scores) if self.calibrator_ is not None else scores

    def predict(self, X) -> np.ndarray:
        """The class of highest probability (first of equals)."""
        proba = self.predict_proba(X)  # first: it raises NotFittedError before fit
        return self.classes_[proba.argmax(axis=1)]

"""The named classifier heads and their default hyper-parameter grids.

A head is a scikit-learn pipeline built fresh for every fit. Heads that are sensitive to
feature scale start with a :class:`~sklearn.preprocessing.StandardScaler`; inside a
pipeline it is fitted on the training rows of each fit only, never on held-out rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from workbench.core.registry import Registry
from workbench.errors import ConfigError, UnknownNameError

__all__ = [
    "HEADS",
    "HeadSpec",
    "ScaledGammaSVC",
    "UnknownHeadError",
    "get_head",
    "list_heads",
    "rbf_gamma_scale",
    "register_head",
]


class UnknownHeadError(UnknownNameError):
    """A head name that is not in the zoo."""


def rbf_gamma_scale(n_features: int, var: float) -> float:
    """scikit-learn's ``gamma="scale"``: ``1 / (n_features * X.var())`` (1.0 when var is 0)."""
    return 1.0 / (n_features * var) if var > 0 else 1.0


class ScaledGammaSVC(ClassifierMixin, BaseEstimator):
    """An RBF :class:`~sklearn.svm.SVC` whose gamma is a multiple of ``gamma="scale"``.

    Absolute gammas do not carry over between a 1280-wide block and a 12 000-wide
    concatenation; a factor of the data's own scale does, so one grid serves every
    subset. ``gamma_factor=1`` is exactly ``SVC(gamma="scale")``.
    """

    def __init__(self, C: float = 1.0, gamma_factor: float = 1.0, tol: float = 1e-3,
                 cache_size: float = 500, class_weight: dict | str | None = None):
        self.C = C
        self.gamma_factor = gamma_factor
        self.tol = tol
        self.cache_size = cache_size
        self.class_weight = class_weight

    def fit(self, X, y):
        X = _as_float(X)
        self.gamma_ = self.gamma_factor * rbf_gamma_scale(X.shape[1], float(X.var()))
        self.svc_ = SVC(kernel="rbf", C=self.C, gamma=self.gamma_, tol=self.tol,
                        cache_size=self.cache_size, class_weight=self.class_weight).fit(X, y)
        self.classes_ = self.svc_.classes_
        return self

    def decision_function(self, X):
        return self.svc_.decision_function(_as_float(X))

    def predict(self, X):
        return self.svc_.predict(_as_float(X))


def _as_float(X) -> np.ndarray:
    return np.asarray(X, dtype=np.float64)


def _scaled(est: BaseEstimator) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", est)])


def _svm_rbf(seed: int) -> Pipeline:
    return _scaled(ScaledGammaSVC())


def _svm_linear(seed: int) -> Pipeline:
    return _scaled(SVC(kernel="linear", cache_size=500))


def _logreg(seed: int) -> Pipeline:
    return _scaled(LogisticRegression(max_iter=5000, random_state=seed))


def _rf(seed: int) -> Pipeline:
    # Trees need no scaling; n_jobs=1 because the sweep parallelises over candidates.
    return Pipeline([("clf", RandomForestClassifier(n_estimators=300, n_jobs=1, random_state=seed))])


def _xgb(seed: int) -> Pipeline:
    from xgboost import XGBClassifier  # optional dependency: only this head needs it

    return Pipeline([("clf", XGBClassifier(
        n_estimators=200, learning_rate=0.1, subsample=0.8, colsample_bytree=0.5,
        tree_method="hist", n_jobs=1, random_state=seed, verbosity=0,
    ))])


@dataclass(frozen=True)
class HeadSpec:
    """One classifier head of the zoo.

    Attributes
    ----------
    name : str
        Zoo name, e.g. ``"svm-rbf"``.
    build : callable
        ``build(seed) -> Pipeline`` with a final step named ``clf``, or ``build(seed) ->
        estimator`` (a scikit-learn classifier, then wrapped as that one step).
    grid : dict
        Default grid over the final step's parameters (names without the ``clf__``
        prefix), searched by inner cross-validation.
    kernel : str or None
        ``"rbf"`` or ``"linear"`` for SVMs, which the sweep's precomputed-kernel fast
        path can serve; None otherwise.
    calibrate : bool
        True when the estimator has no probabilities of its own; they then come from a
        sigmoid (Platt) fitted on the inner cross-validation's out-of-fold scores.
    code : str
        Short name for tables.
    """

    name: str
    build: Callable[[int], Pipeline]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    kernel: str | None = None
    calibrate: bool = False
    code: str = ""

    def pipeline(self, seed: int = 0, **params: Any) -> Pipeline:
        """A fresh pipeline with final-step ``params`` set."""
        pipe = self.build(seed)
        if not isinstance(pipe, Pipeline):  # a bare estimator of register_head
            pipe = Pipeline([("clf", pipe)])
        if params:
            pipe.set_params(**{f"clf__{k}": v for k, v in params.items()})
        return pipe

    def param_names(self) -> list[str]:
        """The classifier's parameters, sorted: what a grid of this head may name."""
        return sorted(self.pipeline().named_steps["clf"].get_params(deep=False))

    def unknown_params(self, grid: Mapping[str, Any]) -> list[str]:
        """The keys of ``grid`` that are not parameters of the classifier, sorted."""
        return sorted(set(grid) - set(self.param_names()))


HEADS: Registry[HeadSpec] = Registry("head", error=UnknownHeadError)
for _spec in (
    HeadSpec("svm-rbf", _svm_rbf, {"C": [0.1, 1.0, 10.0, 100.0], "gamma_factor": [0.3, 1.0, 3.0]},
             kernel="rbf", calibrate=True, code="SVM"),
    HeadSpec("svm-linear", _svm_linear, {"C": [0.001, 0.01, 0.1, 1.0]},
             kernel="linear", calibrate=True, code="SVM-L"),
    HeadSpec("rf", _rf, {"max_features": ["sqrt", 0.05]}, code="RF"),
    HeadSpec("xgb", _xgb, {"max_depth": [2, 4]}, code="XGB"),
    HeadSpec("logreg", _logreg, {"C": [0.001, 0.01, 0.1, 1.0]}, code="LR"),
):
    HEADS.register(_spec.name, _spec)
del _spec


def register_head(head: HeadSpec | str, build: Callable[[int], Any] | None = None,
                  grid: dict[str, list[Any]] | None = None, *, calibrate: bool | None = None, code: str = "",
                  replace: bool = False) -> HeadSpec:
    """Add a head to the zoo, for user code: a :class:`HeadSpec`, or a name and a builder.

    Parameters
    ----------
    head
        A spec, or the new head's name.
    build
        With a name: ``build(seed) -> estimator`` (a scikit-learn classifier) or a
        pipeline whose last step is ``clf``.
    grid
        Default grid over the estimator's parameters (no ``clf__`` prefix).
    calibrate
        Whether probabilities come from Platt scaling of ``decision_function``;
        default: when the estimator has no ``predict_proba``.
    code
        Short name for tables.
    replace
        Replace a head of the same name instead of refusing it.

    Raises
    ------
    ConfigError
        For a name without a builder, or a grid naming a parameter the estimator lacks.
    DuplicateNameError
        For a taken name without ``replace``.
    """
    if isinstance(head, HeadSpec):
        spec = head
    else:
        if build is None:
            raise ConfigError(f"register_head({head!r}): give build(seed) -> estimator")
        est = HeadSpec(head, build).pipeline().named_steps["clf"]
        if calibrate is None:
            calibrate = not hasattr(est, "predict_proba")
        spec = HeadSpec(head, build, dict(grid or {}), calibrate=calibrate, code=code)
    bad = spec.unknown_params(spec.grid)
    if bad:
        raise ConfigError(f"head {spec.name!r}: grid names {bad}, not parameters of its estimator "
                          f"({', '.join(spec.param_names())})")
    return HEADS.register(spec.name, spec, replace=replace)


def list_heads() -> list[str]:
    """Names of the heads in the zoo."""
    return HEADS.names()


def get_head(name: str | HeadSpec) -> HeadSpec:
    """The zoo entry called ``name``.

    Raises
    ------
    UnknownHeadError
        Naming the known heads and close matches.
    """
    if isinstance(name, HeadSpec):
        return name
    return HEADS.get(name)

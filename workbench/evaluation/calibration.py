"""Calibration of binary probabilities: Brier score, calibration intercept and slope,
expected calibration error, reliability curves, and recalibration maps.

Every function takes the 0/1 truth ``y`` (1: the positive class) and the predicted
probability ``p`` of the positive class. The calibration intercept and slope follow
Van Calster et al. (2019, *BMC Medicine* 17:230): the slope is the coefficient of
``logit(p)`` in a logistic regression of ``y`` on it (1: ideal; below 1: predictions too
extreme, over-confident), the intercept is calibration-in-the-large, the intercept of a
logistic regression with ``logit(p)`` as an offset (slope fixed at 1; 0: ideal; below 0:
risks over-estimated). The slope is fitted by statsmodels' GLM (binomial, logit link),
the intercept by solving its one score equation (:func:`_offset_intercept`). Probabilities
are clipped to ``[EPS, 1 - EPS]`` before the logit, so a model that says exactly 0 or 1
gets a finite log-odds (of ±13.8: such models get large intercepts, and the clip sets
how large).

A :class:`Recalibrator` (Platt: logistic regression on ``logit(p)``; isotonic:
scikit-learn's :class:`~sklearn.isotonic.IsotonicRegression`) is fitted on out-of-fold
predictions only and applied unchanged to test predictions.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from workbench.errors import WorkbenchError
from workbench.evaluation.stats import cluster_codes, clustered

__all__ = ["CalibrationError", "EPS", "RECALIBRATION_METHODS", "Recalibrator", "ReliabilityCurve",
           "brier_score", "calibration_intercept_slope", "calibration_summary", "checked_binary",
           "expected_calibration_error", "reliability_curve"]

#: Probabilities are clipped to [EPS, 1 - EPS] before their logit (|logit| <= 13.8).
EPS = 1e-6
#: The recalibration maps :class:`Recalibrator` fits.
RECALIBRATION_METHODS: tuple[str, ...] = ("platt", "isotonic")


class CalibrationError(WorkbenchError, ValueError):
    """Truth or probabilities that calibration cannot be computed on (named in the message)."""


# ---- input checks ----------------------------------------------------------------------


def checked_binary(y: Any, p: Any, *, both_classes: bool = False, what: str = "calibration"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(y, p)`` as 0/1 integers and floats, checked.

    Raises
    ------
    CalibrationError
        Lengths differ, ``y`` holds values other than 0/1, ``p`` is not finite or lies
        outside [0, 1], no predictions at all, or (``both_classes``) ``y`` holds one class only.
    """
    y_arr, p_arr = np.asarray(y).ravel(), np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise CalibrationError(f"{what}: {y_arr.size} labels but {p_arr.size} probabilities")
    if y_arr.size == 0:
        raise CalibrationError(f"{what}: no predictions")
    if y_arr.dtype == bool:
        y_arr = y_arr.astype(int)
    values = set(np.unique(y_arr).tolist())
    if not values <= {0, 1}:
        raise CalibrationError(f"{what}: labels must be 0 (negative) or 1 (positive), got {sorted(values, key=str)}")
    bad = ~np.isfinite(p_arr) | (p_arr < 0) | (p_arr > 1)
    if bad.any():
        raise CalibrationError(f"{what}: probabilities must lie in [0, 1]; {int(bad.sum())} do not "
                               f"(first: {float(p_arr[bad][0])!r})")
    if both_classes and len(values) < 2:
        raise CalibrationError(f"{what}: needs both classes, but every label is {next(iter(values))} "
                               f"({y_arr.size} predictions)")
    return y_arr.astype(int), p_arr


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1 - EPS))


def _glm(y: np.ndarray, X: np.ndarray, offset: np.ndarray | None = None):
    """Binomial GLM fit (logit link); None when the outcome is perfectly separated."""
    import statsmodels.api as sm  # light import of the package; statsmodels loads on first use
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    with warnings.catch_warnings(), np.errstate(over="ignore"):  # exp overflow on the way to separation
        # statsmodels >= 0.14 warns and returns a huge slope; an unbounded estimate is no estimate.
        warnings.simplefilter("error", PerfectSeparationWarning)
        try:
            return sm.GLM(y, X, family=sm.families.Binomial(), offset=offset).fit()
        except (PerfectSeparationWarning, PerfectSeparationError):
            return None


def _cluster_cov(X: np.ndarray, y: np.ndarray, mu: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Cluster-robust (sandwich) covariance of a logistic regression's coefficients at its
    fit ``mu``: ``B^-1 M B^-1`` with ``B = X' diag(mu (1 - mu)) X`` and ``M`` the outer
    products of the scores ``X' (y - mu)`` summed within each group, times statsmodels'
    small-sample factor ``G/(G-1) * (N-1)/(N-K)`` (its GLM with ``cov_type="cluster"``
    gives the same where it converges; a test compares them). By hand because that GLM
    takes the observed information through the link's second derivative, which divides
    by zero for probabilities of exactly 0 or 1; for the logit link the expected
    information used here is the same matrix. NaN with fewer than two groups."""
    n, k = X.shape
    g = int(groups.max()) + 1
    if g < 2:
        return np.full((k, k), np.nan)
    bread = np.linalg.inv(X.T @ (X * (mu * (1.0 - mu))[:, None]))
    scores = np.zeros((g, k))
    np.add.at(scores, groups, X * (y - mu)[:, None])
    return bread @ (scores.T @ scores) @ bread * (g / (g - 1) * (n - 1) / (n - k))


# ---- scores ------------------------------------------------------------------------------


def brier_score(y: Any, p: Any) -> float:
    """Mean squared difference between ``p`` and the 0/1 truth (0: perfect; scikit-learn's
    :func:`~sklearn.metrics.brier_score_loss`)."""
    y_arr, p_arr = checked_binary(y, p, what="Brier score")
    return float(brier_score_loss(y_arr, p_arr, pos_label=1))


def _overlap(y: np.ndarray, x: np.ndarray) -> bool:
    """Whether a logistic regression of ``y`` on ``x`` (with intercept) has a finite maximum:
    the classes' ranges of ``x`` must overlap strictly (Albert & Anderson 1984); otherwise
    ``x`` separates them, completely or quasi-completely, and the slope is unbounded."""
    x0, x1 = x[y == 0], x[y == 1]
    return bool(x1.min() < x0.max() and x1.max() > x0.min())


def _offset_intercept(y: np.ndarray, offset: np.ndarray, alpha: float | None, groups: np.ndarray | None = None
                      ) -> tuple[float, tuple[float, float]]:
    """Maximum-likelihood ``a`` of ``logit P(y=1) = a + offset`` and its Wald interval
    (cluster-robust over ``groups``, a code per row, when given).

    The score ``sum(y - sigmoid(a + offset))`` falls monotonically from ``n_pos`` to
    ``-n_neg``, so its root is found by bracketing (:func:`scipy.optimize.brentq`), which
    never fails where both classes are present. statsmodels' GLM with ``offset`` fits the
    same model (the tests compare them), but its iterations diverge when many
    probabilities are exactly 0 or 1 (an isotonic map's), whose clipped logits are ±13.8.
    """
    from scipy.optimize import brentq

    a = float(brentq(lambda a: float(np.sum(y - expit(a + offset))), -60.0, 60.0, xtol=1e-12))
    if not alpha:
        return a, (float("nan"), float("nan"))
    mu = expit(a + offset)
    if groups is None:
        se = 1.0 / np.sqrt(float(np.sum(mu * (1.0 - mu))))  # inverse Fisher information
    else:
        se = float(np.sqrt(_cluster_cov(np.ones((y.size, 1)), y, mu, groups)[0, 0]))
    return a, _wald(a, se, alpha)


def _wald(estimate: float, se: float, alpha: float) -> tuple[float, float]:
    """The normal (Wald) interval ``estimate -/+ z * se`` at level ``1 - alpha``."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    return estimate - z * se, estimate + z * se


def _intercept_slope(y: np.ndarray, p: np.ndarray, alpha: float | None, groups: np.ndarray | None = None
                     ) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
    """Intercept, slope and their Wald intervals at level ``1 - alpha`` (NaN where
    undefined), cluster-robust over ``groups`` (codes) when given."""
    nan2 = (float("nan"), float("nan"))
    lp = _logit(p)
    intercept, i_ci = _offset_intercept(y, lp, alpha, groups)
    slope, s_ci = float("nan"), nan2
    if _overlap(y, lp):  # else p separates the classes (or is constant): no finite slope
        X = np.column_stack([np.ones(y.size), lp])
        fit = _glm(y, X)
        if fit is not None:
            slope = float(fit.params[1])
            if alpha and groups is not None:
                s_ci = _wald(slope, float(np.sqrt(_cluster_cov(X, y, expit(X @ fit.params), groups)[1, 1])), alpha)
            elif alpha:
                s_ci = tuple(float(v) for v in fit.conf_int(alpha)[1])
    return intercept, slope, i_ci, s_ci  # type: ignore[return-value]


def calibration_intercept_slope(y: Any, p: Any) -> tuple[float, float]:
    """Calibration intercept (in the large) and slope of ``p``.

    Returns
    -------
    (intercept, slope)
        Intercept: of ``logit P(y=1) = a + logit(p)`` (offset; 0 is ideal). Slope: ``b`` of
        ``logit P(y=1) = a + b logit(p)`` (1 is ideal; < 1 over-confident). The slope is
        NaN when ``p`` is constant or separates the classes, completely or with ties at
        the boundary (its estimate is unbounded).

    Raises
    ------
    CalibrationError
        Bad inputs (see :func:`checked_binary`) or one class only.
    """
    y_arr, p_arr = checked_binary(y, p, both_classes=True, what="calibration intercept and slope")
    intercept, slope, _, _ = _intercept_slope(y_arr, p_arr, None)
    return intercept, slope


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1] by scikit-learn's calibration_curve rule ([0, 0.1], (0.1, 0.2], ...)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p)


def _check_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise CalibrationError(f"n_bins = {n_bins!r}: expected an integer >= 1")
    return int(n_bins)


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """Expected calibration error: over ``n_bins`` equal-width bins of ``p``, the mean of
    ``|mean p - observed rate|`` weighted by the share of predictions in the bin.

    The bins are those of :func:`reliability_curve` (scikit-learn's ``calibration_curve``,
    ``strategy="uniform"``), so the ECE is the count-weighted gap of its points.
    """
    n_bins = _check_bins(n_bins)
    y_arr, p_arr = checked_binary(y, p, what="expected calibration error")
    ids = _bin_ids(p_arr, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    gap = np.abs(np.bincount(ids, weights=p_arr, minlength=n_bins) - np.bincount(ids, weights=y_arr, minlength=n_bins))
    return float(gap.sum() / count.sum())  # sum over bins of n_b/n * |sum(p - y)_b| / n_b


class ReliabilityCurve(NamedTuple):
    """The non-empty bins of a reliability diagram."""

    mean_predicted: np.ndarray  # mean p in the bin (x)
    observed: np.ndarray  # share of positives in the bin (y)
    count: np.ndarray  # predictions in the bin


def reliability_curve(y: Any, p: Any, n_bins: int = 10) -> ReliabilityCurve:
    """Observed rate against mean predicted probability in ``n_bins`` equal-width bins.

    From :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``); empty
    bins are left out, ``count`` says how many predictions each point stands for.
    """
    n_bins = _check_bins(n_bins)
    y_arr, p_arr = checked_binary(y, p, what="reliability curve")
    observed, predicted = calibration_curve(y_arr, p_arr, n_bins=n_bins, strategy="uniform", pos_label=1)
    count = np.bincount(_bin_ids(p_arr, n_bins), minlength=n_bins)
    return ReliabilityCurve(predicted, observed, count[count > 0])


def calibration_summary(y: Any, p: Any, *, alpha: float = 0.05, n_bins: int = 10,
                        groups: Any = None) -> dict[str, float]:
    """Every calibration figure of ``p`` in one dict.

    ``groups`` (one per image, ``None``/"" = a group of its own, e.g. the patient): where
    a group holds several images, the intercept and slope intervals are cluster-robust
    (sandwich) over the groups, since images of one patient are not independent cases;
    otherwise, and without ``groups``, they are the model-based Wald intervals.

    Returns
    -------
    dict
        ``n``, ``prevalence``, ``mean_p``, ``brier``, ``intercept`` (with ``intercept_low``,
        ``intercept_high``: Wald interval at level ``1 - alpha``), ``slope`` (``slope_low``,
        ``slope_high``) and ``ece``.
    """
    y_arr, p_arr = checked_binary(y, p, both_classes=True, what="calibration summary")
    if not 0 < alpha < 1:
        raise CalibrationError(f"alpha = {alpha!r}: expected a number between 0 and 1 (exclusive)")
    codes = None
    if groups is not None:
        if len(groups) != y_arr.size:
            raise CalibrationError(f"groups: {len(groups)} values for {y_arr.size} predictions")
        if clustered(groups):
            codes = cluster_codes(groups)
    intercept, slope, i_ci, s_ci = _intercept_slope(y_arr, p_arr, alpha, codes)
    return {"n": int(y_arr.size), "prevalence": float(y_arr.mean()), "mean_p": float(p_arr.mean()),
            "brier": brier_score(y_arr, p_arr), "intercept": intercept, "intercept_low": i_ci[0],
            "intercept_high": i_ci[1], "slope": slope, "slope_low": s_ci[0], "slope_high": s_ci[1],
            "ece": expected_calibration_error(y_arr, p_arr, n_bins)}


# ---- recalibration -----------------------------------------------------------------------


class Recalibrator:
    """A monotone map of probabilities, fitted on out-of-fold predictions only.

    Parameters
    ----------
    method
        ``"platt"``: ``p' = sigmoid(a + b logit(p))``, a logistic regression of ``y`` on
        ``logit(p)`` (statsmodels GLM, unpenalized); ``"isotonic"``: scikit-learn's
        :class:`~sklearn.isotonic.IsotonicRegression` (``out_of_bounds="clip"``, so a test
        probability outside the fitted range gets the nearest end's value).

    Examples
    --------
    >>> r = Recalibrator("platt").fit(y_oof, p_oof)  # doctest: +SKIP
    >>> p_test_recalibrated = r.transform(p_test)  # doctest: +SKIP
    """

    def __init__(self, method: str = "platt") -> None:
        if method not in RECALIBRATION_METHODS:
            raise CalibrationError(f"recalibration method {method!r}: choose from {', '.join(RECALIBRATION_METHODS)}")
        self.method = method
        self.coef_: tuple[float, float] | None = None  # Platt (a, b)
        self.isotonic_: IsotonicRegression | None = None

    def fit(self, y: Any, p: Any) -> "Recalibrator":
        """Fit the map on out-of-fold truth and probabilities.

        Raises
        ------
        CalibrationError
            Bad inputs, one class only, or (Platt) out-of-fold probabilities that separate
            the classes perfectly (the logistic fit has no finite solution; use isotonic).
        """
        y_arr, p_arr = checked_binary(y, p, both_classes=True, what=f"{self.method} recalibration")
        if self.method == "platt":
            lp = _logit(p_arr)
            fit = _glm(y_arr, np.column_stack([np.ones(y_arr.size), lp])) if _overlap(y_arr, lp) else None
            if fit is None:
                raise CalibrationError("platt recalibration: the out-of-fold probabilities separate the classes "
                                       "perfectly or are constant, so the logistic fit has no finite solution; "
                                       "use isotonic")
            self.coef_ = (float(fit.params[0]), float(fit.params[1]))
        else:
            self.isotonic_ = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True,
                                                out_of_bounds="clip").fit(p_arr, y_arr)
        return self

    def transform(self, p: Any) -> np.ndarray:
        """The recalibrated probabilities of ``p`` (any predictions of the same model)."""
        if self.coef_ is None and self.isotonic_ is None:
            raise CalibrationError(f"{self.method} recalibration: call fit on out-of-fold predictions first")
        p_arr = np.asarray(p, dtype=float).ravel()
        bad = ~np.isfinite(p_arr) | (p_arr < 0) | (p_arr > 1)
        if bad.any():
            raise CalibrationError(f"{self.method} recalibration: probabilities must lie in [0, 1]; "
                                   f"{int(bad.sum())} do not (first: {float(p_arr[bad][0])!r})")
        if self.coef_ is not None:
            a, b = self.coef_
            return expit(a + b * _logit(p_arr))
        return np.asarray(self.isotonic_.predict(p_arr), dtype=float)

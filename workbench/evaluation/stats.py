"""Paired statistics for the paper tables: intervals, DeLong, McNemar, Holm, Youden.

Every candidate is scored on the *same* test images as its baseline, so comparisons
are paired: DeLong's test for two correlated ROC curves (AUC) and the exact McNemar
test (accuracy at a fixed threshold). Proportions get Wilson intervals, several
comparisons get Holm's step-down adjustment, and the operating point is Youden's
index chosen on out-of-fold predictions only (for models retrained per fold, as a
quantile of each fold's own scores: :func:`fold_quantile_threshold`).

Images of one patient are not independent: for grouped test data,
:func:`cluster_bootstrap_auc`, :func:`cluster_bootstrap_proportions` and
:func:`cluster_bootstrap_test` resample whole groups (seeded, percentile intervals,
:data:`N_BOOT` resamples) in place of DeLong, Wilson and McNemar.

Scores on cross-validation folds are another matter: the folds share training images,
so a paired comparison of two models over the ``J = R x k`` folds of a repeated CV uses
the corrected resampled t-test (:func:`corrected_resampled_ttest`, Nadeau & Bengio 2003)
and a CV mean gets the interval of the same corrected variance
(:func:`corrected_cv_interval`); many models over the folds (or over datasets) get
Friedman's test with the Nemenyi critical difference (:func:`friedman_test`, Demšar 2006).

Where statsmodels or scipy has the computation it is used as is (Wilson, exact
McNemar, Holm, midranks, the normal tail); this module validates input, handles the
degenerate cases explicitly (documented per function) and names its outputs.

Conventions
-----------
* Labels for the ROC functions are 0/1 (bool or numbers equal to 0 or 1); 1 is the
  positive class and larger scores mean "more positive".
* Invalid input (not binary, lengths differ, one class only, non-finite scores)
  raises :class:`ValueError` naming the problem; degenerate-but-valid input gives
  ``nan`` (or ``inf`` where the limit is unambiguous), never a warning.

References
----------
DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more
correlated receiver operating characteristic curves: a nonparametric approach.
Biometrics 44(3):837-845.
Sun X, Xu W (2014). Fast implementation of DeLong's algorithm for comparing the areas
under correlated receiver operating characteristic curves. IEEE Signal Processing
Letters 21(11):1389-1393.
Demšar J (2006). Statistical comparisons of classifiers over multiple data sets. Journal
of Machine Learning Research 7:1-30.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t
from sklearn.metrics import roc_curve
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from workbench.errors import WorkbenchError

# The proportions proportion_metrics reports with a Wilson interval, in order: the
# metric table's.
from workbench.evaluation.metrics import PROPORTION_METRICS

__all__ = [
    "AUCInterval",
    "BootstrapTest",
    "CorrectedTTest",
    "DeLongResult",
    "FriedmanResult",
    "Interval",
    "McNemarResult",
    "PROPORTION_METRICS",
    "N_BOOT",
    "apply_threshold",
    "cluster_bootstrap_auc",
    "cluster_bootstrap_proportions",
    "cluster_bootstrap_test",
    "cluster_codes",
    "cluster_weights",
    "clustered",
    "compare_to_baseline",
    "corrected_cv_interval",
    "corrected_resampled_ttest",
    "delong_auc_variance",
    "delong_interval",
    "delong_test",
    "fold_quantile_threshold",
    "friedman_test",
    "holm",
    "mcnemar_exact",
    "nemenyi_cd",
    "proportion_metrics",
    "StatsInputError",
    "wilson_interval",
    "youden_threshold",
]

_NAN = float("nan")



@dataclass(frozen=True)
class Interval:
    """A proportion with its confidence interval.

    Attributes
    ----------
    estimate : float
        ``successes / n`` (``nan`` when ``n == 0``).
    low, high : float
        Confidence bounds (Wilson score interval; ``nan`` when ``n == 0``).
    successes, n : int
        The counts the proportion is made of, so a table can print "45/50".
    """

    estimate: float
    low: float
    high: float
    successes: int
    n: int


@dataclass(frozen=True)
class AUCInterval:
    """An ROC AUC with its DeLong confidence interval.

    Attributes
    ----------
    estimate : float
        The AUC (Mann-Whitney, ties counted 1/2), equal to ``roc_auc_score``.
    low, high : float
        Normal (Wald) bounds ``auc -/+ z * sqrt(variance)`` clipped to [0, 1].
    variance : float
        DeLong's variance of the AUC (``nan`` with fewer than 2 of either class).
    """

    estimate: float
    low: float
    high: float
    variance: float


class DeLongResult(NamedTuple):
    """DeLong's test of two correlated AUCs; unpacks as ``(auc1, auc2, z, p_value)``."""

    auc1: float
    auc2: float
    z: float
    p_value: float


class McNemarResult(NamedTuple):
    """Exact McNemar test; unpacks as ``(b, c, p_value)``.

    ``b``: images classifier 1 gets right and classifier 2 wrong; ``c``: the reverse.
    """

    b: int
    c: int
    p_value: float


# ---------------------------------------------------------------------------
# Proportions
# ---------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Parameters
    ----------
    successes, n : int
        Count of successes and trials, ``0 <= successes <= n``.
    alpha : float
        1 - confidence level (0.05 gives a 95 % interval).

    Returns
    -------
    (low, high) : tuple of float
        From ``statsmodels.stats.proportion.proportion_confint(method="wilson")``;
        ``(nan, nan)`` when ``n == 0`` (no data, no interval).

    Examples
    --------
    >>> [round(v, 3) for v in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    successes, n = _count(successes, "successes"), _count(n, "n")
    if successes > n:
        raise ValueError(f"successes ({successes}) must not exceed n ({n})")
    _check_alpha(alpha)
    if n == 0:
        return _NAN, _NAN
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    # Analytically the lower bound is exactly 0 at 0 successes and the upper bound
    # exactly 1 at n successes; statsmodels' float round-off (e.g. 2.8e-17) is removed
    # so a table never prints "0.0000-..." for an interval that touches 0.
    low = 0.0 if successes == 0 else min(max(float(low), 0.0), 1.0)
    high = 1.0 if successes == n else min(max(float(high), 0.0), 1.0)
    return low, high


def proportion_metrics(
    y: Sequence[Any] | np.ndarray,
    pred: Sequence[Any] | np.ndarray,
    positive: Any = 1,
    alpha: float = 0.05,
) -> dict[str, Interval | float]:
    """Accuracy, sensitivity, specificity, PPV, NPV with Wilson intervals, and +LR/-LR.

    Parameters
    ----------
    y, pred : array-like of shape (n,)
        True and predicted labels of a binary problem (any two label values).
    positive : label
        The positive class (e.g. ``1`` or ``"malignant"``).
    alpha : float
        1 - confidence level of the intervals.

    Returns
    -------
    dict
        ``"accuracy"``, ``"sensitivity"``, ``"specificity"``, ``"ppv"``, ``"npv"`` map to
        :class:`Interval` (estimate, Wilson bounds, successes, n); ``"lr_plus"`` and
        ``"lr_minus"`` map to plain floats.

    Notes
    -----
    Likelihood ratios ``+LR = sens / (1 - spec)`` and ``-LR = (1 - sens) / spec`` are
    reported as their mathematical limit when the denominator is 0: ``inf`` when
    the numerator is positive (e.g. +LR with specificity 1 and sensitivity > 0),
    ``nan`` for 0/0 or when sensitivity or specificity is itself undefined (no
    positives or no negatives in ``y``). This differs from
    :func:`workbench.evaluation.metrics.classification_metrics`, which follows
    scikit-learn and reports ``nan`` instead of ``inf``.
    """
    y_arr, pred_arr = _check_pair(y, pred, "y", "pred")
    labels = set(np.unique(y_arr).tolist()) | set(np.unique(pred_arr).tolist())
    if len(labels) > 2:
        raise ValueError(f"y and pred must be binary together; found labels {sorted(map(str, labels))}")
    if len(labels) == 2 and positive not in labels:
        raise ValueError(f"positive label {positive!r} not found among labels {sorted(map(str, labels))}")
    _check_alpha(alpha)
    is_pos, said_pos = y_arr == positive, pred_arr == positive
    tp = int(np.sum(is_pos & said_pos))
    fn = int(np.sum(is_pos & ~said_pos))
    fp = int(np.sum(~is_pos & said_pos))
    tn = int(np.sum(~is_pos & ~said_pos))

    def interval(k: int, n: int) -> Interval:
        low, high = wilson_interval(k, n, alpha)
        return Interval(k / n if n else _NAN, low, high, k, n)

    out: dict[str, Interval | float] = {
        "accuracy": interval(tp + tn, tp + tn + fp + fn),
        "sensitivity": interval(tp, tp + fn),
        "specificity": interval(tn, tn + fp),
        "ppv": interval(tp, tp + fp),
        "npv": interval(tn, tn + fn),
    }
    sens = out["sensitivity"].estimate  # type: ignore[union-attr]
    spec = out["specificity"].estimate  # type: ignore[union-attr]
    out["lr_plus"] = _limit_ratio(sens, 1.0 - spec)
    out["lr_minus"] = _limit_ratio(1.0 - sens, spec)
    return out


def _limit_ratio(num: float, den: float) -> float:
    """``num / den`` with x/0 -> inf (x > 0), 0/0 -> nan, nan in -> nan."""
    if math.isnan(num) or math.isnan(den):
        return _NAN
    if den == 0.0:
        return math.inf if num > 0.0 else _NAN
    return num / den


# ---------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------


def _placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components by midranks (Sun & Xu 2014, Algorithm 2).

    ``scores`` has shape (k, n). Returns ``aucs`` (k,), ``v10`` (k, m): for each
    positive, the share of negatives it out-scores (ties 1/2), and ``v01`` (k, n_neg):
    for each negative, the share of positives that out-score it (ties 1/2). Midranks
    (``rankdata(method="average")``) make ties count 1/2 exactly as the O(m*n)
    definition does, in O(N log N).
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = rankdata(scores, method="average", axis=1)  # midranks among all images
    tx = rankdata(pos, method="average", axis=1)  # ... among positives only
    ty = rankdata(neg, method="average", axis=1)  # ... among negatives only
    tz_pos, tz_neg = tz[:, y == 1], tz[:, y == 0]
    # Rank of a positive among all minus its rank among positives = number of
    # negatives below it (ties 1/2).
    v10 = (tz_pos - tx) / n
    v01 = 1.0 - (tz_neg - ty) / m
    aucs = (tz_pos.sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return aucs, v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong covariance ``S10 / m + S01 / n`` (sample covariances, ddof = 1).

    With a single positive (or negative) the sample covariance is undefined: ``nan``.
    """
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        k = v10.shape[0]
        return np.full((k, k), _NAN)
    return np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def delong_auc_variance(
    y: Sequence[Any] | np.ndarray, p: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """ROC AUC and its DeLong variance.

    Parameters
    ----------
    y : array-like of shape (n,)
        0/1 labels, both classes present.
    p : array-like of shape (n,)
        Scores (e.g. predicted probability of class 1); ties allowed.

    Returns
    -------
    (auc, variance) : tuple of float
        ``auc`` equals ``sklearn.metrics.roc_auc_score(y, p)``; ``variance`` is
        ``nan`` with fewer than 2 positives or 2 negatives.
    """
    y_arr, scores = _check_roc_input(y, p)
    aucs, v10, v01 = _placements(y_arr, scores)
    return float(aucs[0]), float(_delong_cov(v10, v01)[0, 0])


def delong_interval(
    y: Sequence[Any] | np.ndarray, p: Sequence[float] | np.ndarray, alpha: float = 0.05
) -> AUCInterval:
    """AUC with a DeLong confidence interval (plain normal, clipped to [0, 1]).

    The interval is ``auc -/+ z_(1-alpha/2) * sqrt(var_DeLong)`` on the AUC scale, then
    clipped to [0, 1]: what R pROC's ``ci.auc(method="delong")`` reports and what most
    papers quote. (A logit-scale interval would behave better near AUC = 1; it is not
    used here so the figures match the reference software.)

    Returns
    -------
    AUCInterval
        ``low``/``high`` are ``nan`` when the variance is undefined (fewer than 2
        positives or negatives).
    """
    _check_alpha(alpha)
    auc, var = delong_auc_variance(y, p)
    if math.isnan(var):
        return AUCInterval(auc, _NAN, _NAN, var)
    half = float(norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(var)
    return AUCInterval(auc, max(auc - half, 0.0), min(auc + half, 1.0), var)


def delong_test(
    y: Sequence[Any] | np.ndarray,
    p1: Sequence[float] | np.ndarray,
    p2: Sequence[float] | np.ndarray,
) -> DeLongResult:
    """DeLong's two-sided test that two correlated ROC AUCs are equal.

    Both classifiers score the same images (paired), so the test uses the covariance
    of their AUCs: ``z = (auc1 - auc2) / sqrt(var(auc1 - auc2))``, ``p = 2 * (1 -
    Phi(|z|))`` (DeLong, DeLong & Clarke-Pearson 1988; fast midrank algorithm of
    Sun & Xu 2014). Agrees with R pROC ``roc.test(method="delong", paired=TRUE)``.

    Returns
    -------
    DeLongResult
        ``(auc1, auc2, z, p_value)``; ``z > 0`` when ``auc1 > auc2``.

    Notes
    -----
    ``var(auc1 - auc2)`` is computed from the differences of the structural
    components, so identical (or rank-identical) score vectors give exactly 0.
    Degenerate cases, explicitly: difference 0 and variance 0 (the same classifier,
    or two with the same ranking) -> ``z = 0, p = 1``; difference non-zero with
    variance 0 -> ``z = +/-inf, p = 0``; fewer than 2 positives or negatives -> ``z``
    and ``p`` are ``nan``.
    """
    y_arr, scores = _check_roc_input(y, p1, p2)
    aucs, v10, v01 = _placements(y_arr, scores)
    auc1, auc2 = float(aucs[0]), float(aucs[1])
    var_d = float(_delong_cov(v10[0:1] - v10[1:2], v01[0:1] - v01[1:2])[0, 0])
    d = auc1 - auc2
    if math.isnan(var_d):
        return DeLongResult(auc1, auc2, _NAN, _NAN)
    if var_d <= 0.0:
        if d == 0.0:
            return DeLongResult(auc1, auc2, 0.0, 1.0)
        return DeLongResult(auc1, auc2, math.copysign(math.inf, d), 0.0)
    z = d / math.sqrt(var_d)
    # sf (not 1 - cdf) keeps tiny p-values accurate.
    return DeLongResult(auc1, auc2, z, float(min(1.0, 2.0 * norm.sf(abs(z)))))


# ---------------------------------------------------------------------------
# McNemar, Holm
# ---------------------------------------------------------------------------


def mcnemar_exact(
    y: Sequence[Any] | np.ndarray,
    pred1: Sequence[Any] | np.ndarray,
    pred2: Sequence[Any] | np.ndarray,
) -> McNemarResult:
    """Exact McNemar test of paired accuracy.

    Each image is right or wrong under each classifier; only the discordant images
    carry information: ``b`` (1 right, 2 wrong) and ``c`` (1 wrong, 2 right). The
    p-value is the two-sided exact binomial test of ``b ~ Binomial(b + c, 1/2)`` from
    ``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)``.

    Parameters
    ----------
    y, pred1, pred2 : array-like of shape (n,)
        True labels and the two classifiers' predicted labels (any label values).

    Returns
    -------
    McNemarResult
        ``(b, c, p_value)``; ``p_value`` is 1.0 when there are no discordant images
        (``b = c = 0``: no evidence of a difference).
    """
    y_arr, p1 = _check_pair(y, pred1, "y", "pred1")
    _, p2 = _check_pair(y, pred2, "y", "pred2")
    ok1, ok2 = p1 == y_arr, p2 == y_arr
    both, b = int(np.sum(ok1 & ok2)), int(np.sum(ok1 & ~ok2))
    c, neither = int(np.sum(~ok1 & ok2)), int(np.sum(~ok1 & ~ok2))
    if b + c == 0:
        return McNemarResult(0, 0, 1.0)
    res = mcnemar(np.array([[both, b], [c, neither]]), exact=True)
    return McNemarResult(b, c, float(min(1.0, res.pvalue)))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, with ``nan`` entries kept as ``nan``.

    A ``nan`` (a comparison that could not be made) is not a hypothesis: it is left
    out of the family, so it neither counts towards the number of tests nor gets an
    adjusted value. The others are adjusted by
    ``statsmodels.stats.multitest.multipletests(method="holm")``.

    Parameters
    ----------
    p_values : array-like of shape (k,)
        Raw p-values in [0, 1] or ``nan``.

    Returns
    -------
    numpy.ndarray of shape (k,)
        Adjusted p-values in the input order.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    known = ~np.isnan(p)
    if np.any((p[known] < 0.0) | (p[known] > 1.0)):
        raise ValueError("p_values must lie in [0, 1] (or be nan)")
    out = np.full(p.shape, _NAN)
    if known.any():
        out[known] = multipletests(p[known], method="holm")[1]
    return out


# ---------------------------------------------------------------------------
# Operating point
# ---------------------------------------------------------------------------


def youden_threshold(y_oof: Sequence[Any] | np.ndarray, p_oof: Sequence[float] | np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Choose the threshold on **out-of-fold** (cross-validation) predictions of the
    training data, never on the test images whose metrics will be reported: a
    threshold tuned on the test set inflates its sensitivity and specificity.

    Parameters
    ----------
    y_oof : array-like of shape (n,)
        0/1 labels of the out-of-fold predictions, both classes present.
    p_oof : array-like of shape (n,)
        Out-of-fold scores (probability of class 1).

    Returns
    -------
    float
        One of the candidate thresholds of ``sklearn.metrics.roc_curve``, i.e. one of
        the ``p_oof`` values; an image is positive iff ``p >= threshold`` (the rule of
        :func:`apply_threshold`). Among thresholds with the same maximal J the one
        closest to 0.5 wins (the usual default cut-off, so a tie is broken towards
        it); an exact tie in distance goes to the higher threshold (fewer positive
        calls).
    """
    y_arr, scores = _check_roc_input(y_oof, p_oof, names=("y_oof", "p_oof"))
    fpr, tpr, thresholds = roc_curve(y_arr, scores[0], drop_intermediate=False)
    # drop_intermediate=False keeps every distinct score, so all tied optima are seen.
    keep = np.isfinite(thresholds)  # the leading +inf ("nothing positive") is no cut-off
    fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    m, n = int(np.sum(y_arr == 1)), int(np.sum(y_arr == 0))
    # Compare J in exact integers, J * m * n = tp * n - fp * m, so float round-off
    # cannot split a genuine tie.
    tp, fp = np.rint(tpr * m).astype(np.int64), np.rint(fpr * n).astype(np.int64)
    j = tp * n - fp * m
    best = thresholds[j == j.max()]
    dist = np.abs(best - 0.5)
    closest = best[dist == dist.min()]
    return float(closest.max())


def apply_threshold(p: Sequence[float] | np.ndarray, t: float) -> np.ndarray:
    """0/1 predictions ``p >= t``, the rule :func:`youden_threshold` assumes."""
    scores = np.asarray(p, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"p must be 1-D, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("p contains nan or inf")
    if math.isnan(float(t)):
        raise ValueError("threshold t is nan")
    return (scores >= t).astype(np.int64)


def compare_to_baseline(
    y: Sequence[Any] | np.ndarray,
    p_cand: Sequence[float] | np.ndarray,
    p_base: Sequence[float] | np.ndarray,
    threshold_cand: float,
    threshold_base: float,
) -> dict[str, float | int]:
    """Paired comparison of a candidate with a baseline on the same test images.

    Parameters
    ----------
    y : array-like of shape (n,)
        0/1 test labels.
    p_cand, p_base : array-like of shape (n,)
        Test scores of the candidate and the baseline.
    threshold_cand, threshold_base : float
        Each classifier's own cut-off (chosen beforehand on out-of-fold data, e.g.
        by :func:`youden_threshold`); predictions are ``p >= threshold``.

    Returns
    -------
    dict
        ``auc_candidate``, ``auc_baseline``, ``auc_z``, ``auc_p_value`` (DeLong,
        :func:`delong_test`), ``accuracy_candidate``, ``accuracy_baseline``,
        ``mcnemar_b`` (candidate right, baseline wrong), ``mcnemar_c`` (the reverse),
        ``accuracy_p_value`` (exact McNemar, :func:`mcnemar_exact`).
    """
    y_arr, scores = _check_roc_input(y, p_cand, p_base, names=("y", "p_cand", "p_base"))
    auc_c, auc_b, z, p_auc = delong_test(y_arr, scores[0], scores[1])
    pred_c, pred_b = apply_threshold(scores[0], threshold_cand), apply_threshold(scores[1], threshold_base)
    b, c, p_acc = mcnemar_exact(y_arr, pred_c, pred_b)
    return {
        "auc_candidate": auc_c,
        "auc_baseline": auc_b,
        "auc_z": z,
        "auc_p_value": p_auc,
        "accuracy_candidate": float(np.mean(pred_c == y_arr)),
        "accuracy_baseline": float(np.mean(pred_b == y_arr)),
        "mcnemar_b": b,
        "mcnemar_c": c,
        "accuracy_p_value": p_acc,
    }


def fold_quantile_threshold(
    y_folds: Sequence[Sequence[Any] | np.ndarray],
    p_folds: Sequence[Sequence[float] | np.ndarray],
    p_apply: Sequence[float] | np.ndarray,
) -> tuple[float, float]:
    """Operating threshold for a model whose fold networks differ in calibration.

    Each fold's network gets its own Youden cut-off on its own out-of-fold scores, and
    that cut-off is expressed as a *quantile* of the fold's scores: ``q_f``, the share
    of the fold's images scored below it. The quantiles are pooled (weighted by fold
    size) into ``q``, and the network that is applied (the one trained on the whole
    training split) gets the ``q``-quantile of its own scores ``p_apply``: it calls
    the top ``1 - q`` of them positive.

    Why: an end-to-end CNN is retrained per fold, and each network's probabilities sit
    on a scale of their own (one fold scored 0.41-0.75, the others 0.64-0.97): a single
    cut-off on pooled out-of-fold scores is then valid for none of them, and the test
    network's scores may all lie above it. A quantile is unchanged by any monotone
    re-calibration of a network, so it transfers from the fold networks to the test
    network. ``p_apply`` are the applied network's scores on a reference set drawn like
    the CV folds: the search passes the test network's own validation split (held out
    from its training), so the threshold does not move with the test split's class
    balance; their labels are not read.

    Parameters
    ----------
    y_folds, p_folds
        Per CV fold: 0/1 labels and the fold network's positive-class scores. Folds
        holding one class only are skipped.
    p_apply
        Scores of the network the threshold is for.

    Returns
    -------
    (threshold, q) : tuple of float
        ``p_apply >= threshold`` calls an image positive; ``q`` is the pooled quantile.
        ``(0.5, nan)`` when no fold holds both classes.
    """
    qs, ns = [], []
    for y, p in zip(y_folds, p_folds):
        y_arr, scores = np.asarray(y).astype(int), np.asarray(p, dtype=float)
        if len(np.unique(y_arr)) < 2:
            continue
        t = youden_threshold(y_arr, scores)
        qs.append(float(np.mean(scores < t)))
        ns.append(len(scores))
    s = np.sort(np.asarray(p_apply, dtype=float))
    if not qs or not len(s):
        return 0.5, _NAN
    q = float(np.average(qs, weights=ns))
    k = int(round(q * len(s)))  # images called negative
    # Every score >= threshold is positive; all negative needs a threshold above the maximum.
    t = float(s[k]) if k < len(s) else float(np.nextafter(s[-1], math.inf))
    return t, q


# ---------------------------------------------------------------------------
# Clustered data: a cluster bootstrap
# ---------------------------------------------------------------------------

#: Resamples of :func:`cluster_bootstrap`; the percentile bounds move by < 0.005 between seeds.
N_BOOT = 2000


def clustered(groups: Sequence[Any] | np.ndarray | None) -> bool:
    """Whether ``groups`` (one per image, ``None``/"" = its own group) put 2+ images in a group."""
    if groups is None:
        return False
    g = [str(v) for v in groups if v is not None and str(v) != ""]
    return len(set(g)) < len(g)


def cluster_codes(groups: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Group index per image, numbered in order of first appearance.

    Images without a group (``None`` or "") are groups of one. Numbering by appearance
    (not by name) keeps the resamples independent of how groups and images are named.
    """
    names = [f"\0row{i}" if v is None or str(v) == "" else str(v) for i, v in enumerate(groups)]
    _, first, inv = np.unique(np.asarray(names, dtype=object), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=int)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.ravel()]


def cluster_weights(groups: Sequence[Any] | np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Per resample, how often each image is drawn: whole groups drawn with replacement.

    Returns
    -------
    numpy.ndarray of shape (n_boot, n_images)
        Integer multiplicities; each row draws as many groups as there are.
    """
    codes = cluster_codes(groups)
    g = int(codes.max()) + 1 if len(codes) else 0
    if g == 0:
        raise ValueError("groups is empty")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    counts = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=n_boot)
    return counts[:, codes]


def _weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties 1/2) of each row of weights ``w`` (k, n); nan without both classes."""
    from scipy import sparse

    levels, inv = np.unique(s, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(s)), (np.arange(len(s)), inv.ravel())), shape=(len(s), len(levels)))
    out = np.empty(w.shape[0])
    for lo in range(0, w.shape[0], 256):  # chunks bound the (k, levels) work arrays
        wc = w[lo:lo + 256].astype(float)
        wp = np.asarray((onehot.T @ (wc * (y == 1)).T).T)
        wn = np.asarray((onehot.T @ (wc * (y == 0)).T).T)
        below = np.cumsum(wn, axis=1) - wn
        num = np.sum(wp * (below + 0.5 * wn), axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + 256] = np.where(den > 0, num / np.where(den > 0, den, 1.0), _NAN)
    return out


def _percentile(values: np.ndarray, alpha: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return _NAN, _NAN
    low, high = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def cluster_bootstrap_auc(
    y: Sequence[Any] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    alpha: float = 0.05,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> AUCInterval:
    """AUC with a percentile interval from a bootstrap over groups (patients, nodules).

    Images of one group are correlated, so they are resampled together: each
    resample draws as many groups as there are, with replacement, and keeps all their
    images. Resamples without both classes are skipped.

    Returns
    -------
    AUCInterval
        ``estimate``: the AUC of the data; ``low``/``high``: the ``alpha/2`` and
        ``1 - alpha/2`` percentiles of the resampled AUCs; ``variance``: their variance.
    """
    _check_alpha(alpha)
    y_arr, scores = _check_roc_input(y, p)
    g = _check_groups(groups, len(y_arr))
    auc = float(_weighted_auc(y_arr, scores[0], np.ones((1, len(y_arr))))[0])
    boot = _weighted_auc(y_arr, scores[0], cluster_weights(g, n_boot, seed))
    low, high = _percentile(boot, alpha)
    return AUCInterval(auc, low, high, float(np.nanvar(boot, ddof=1)) if np.isfinite(boot).sum() > 1 else _NAN)


def cluster_bootstrap_proportions(
    y: Sequence[Any] | np.ndarray,
    pred: Sequence[Any] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    positive: Any = 1,
    *,
    alpha: float = 0.05,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Interval | float]:
    """:func:`proportion_metrics` with percentile intervals from a bootstrap over groups.

    Estimates, counts and likelihood ratios are those of :func:`proportion_metrics`;
    only ``low``/``high`` of each :class:`Interval` come from the resamples (a
    resample where a proportion's denominator is 0 is skipped for it). With ``pred``
    of more than two labels only ``accuracy`` is computed (multi-class argmax).
    """
    y_arr, pred_arr = _check_pair(y, pred, "y", "pred")
    g = _check_groups(groups, len(y_arr))
    binary = len(set(np.unique(y_arr).tolist()) | set(np.unique(pred_arr).tolist())) <= 2
    w = cluster_weights(g, n_boot, seed).astype(float)
    ok = pred_arr == y_arr
    if binary:
        out = proportion_metrics(y_arr, pred_arr, positive, alpha)
        is_pos, said = y_arr == positive, pred_arr == positive
        parts = {"accuracy": (ok, np.ones(len(y_arr), bool)), "sensitivity": (is_pos & said, is_pos),
                 "specificity": (~is_pos & ~said, ~is_pos), "ppv": (is_pos & said, said),
                 "npv": (~is_pos & ~said, ~said)}
    else:
        _check_alpha(alpha)
        k = int(ok.sum())
        out = {"accuracy": Interval(k / len(y_arr), *wilson_interval(k, len(y_arr), alpha), k, len(y_arr))}
        parts = {"accuracy": (ok, np.ones(len(y_arr), bool))}
    for name, (num, den) in parts.items():
        d = w @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(d > 0, (w @ num) / np.where(d > 0, d, 1.0), _NAN)
        iv = out[name]
        low, high = _percentile(boot, alpha) if iv.n else (_NAN, _NAN)  # type: ignore[union-attr]
        out[name] = replace(iv, low=low, high=high)  # type: ignore[arg-type]
    return out


class BootstrapTest(NamedTuple):
    """Paired cluster-bootstrap test; unpacks as ``(difference, p_value)``."""

    difference: float
    p_value: float


def cluster_bootstrap_test(
    y: Sequence[Any] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    p1: Sequence[float] | np.ndarray | None = None,
    p2: Sequence[float] | np.ndarray | None = None,
    pred1: Sequence[Any] | np.ndarray | None = None,
    pred2: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> BootstrapTest:
    """Two-sided paired test over groups: AUC (``p1``, ``p2``) or accuracy (``pred1``, ``pred2``).

    Both models score the same images, so every resample of groups is applied to both
    and the difference is recomputed; the p-value is that of the bootstrap
    distribution of the difference centred on zero: ``(1 + #{|d* - d| >= |d|}) / (1 +
    B)`` over the ``B`` usable resamples (the smallest possible value is
    ``1 / (1 + B)``). Identical models give ``d = 0, p = 1``.
    """
    if (p1 is None) == (pred1 is None) or (p1 is None) != (p2 is None) or (pred1 is None) != (pred2 is None):
        raise ValueError("give either p1 and p2 (AUC) or pred1 and pred2 (accuracy)")
    if p1 is not None:
        y_arr, scores = _check_roc_input(y, p1, p2)
        g = _check_groups(groups, len(y_arr))
        w = cluster_weights(g, n_boot, seed)
        full = np.ones((1, len(y_arr)))
        d = float(_weighted_auc(y_arr, scores[0], full)[0] - _weighted_auc(y_arr, scores[1], full)[0])
        boot = _weighted_auc(y_arr, scores[0], w) - _weighted_auc(y_arr, scores[1], w)
    else:
        y_arr, a = _check_pair(y, pred1, "y", "pred1")
        _, b = _check_pair(y, pred2, "y", "pred2")
        g = _check_groups(groups, len(y_arr))
        diff = (a == y_arr).astype(float) - (b == y_arr).astype(float)
        d = float(diff.mean())
        w = cluster_weights(g, n_boot, seed).astype(float)
        boot = (w @ diff) / w.sum(axis=1)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return BootstrapTest(d, _NAN)
    if d == 0.0:
        return BootstrapTest(d, 1.0)
    extreme = int(np.sum(np.abs(boot - d) >= abs(d) - 1e-12))
    return BootstrapTest(d, float(min(1.0, (1 + extreme) / (1 + len(boot)))))


# ---------------------------------------------------------------------------
# Cross-validation: the corrected resampled t-test, Friedman and Nemenyi
# ---------------------------------------------------------------------------


class StatsInputError(WorkbenchError, ValueError):
    """Input a statistic of this section cannot be computed from (too few folds,
    lengths that differ, non-finite values); the message names the value."""


class CorrectedTTest(NamedTuple):
    """Corrected resampled t-test of two models' per-fold scores.

    Attributes
    ----------
    mean_diff : float
        Mean over the folds of ``a - b``.
    t, df, p_value : float
        The statistic, its degrees of freedom (``J - 1``) and the two-sided p value.
    low, high : float
        The ``1 - alpha`` interval of the mean difference, with the same corrected variance.
    """

    mean_diff: float
    t: float
    df: float
    p_value: float
    low: float
    high: float


class FriedmanResult(NamedTuple):
    """Friedman's test over blocks (folds, datasets) and the Nemenyi critical difference.

    Attributes
    ----------
    statistic, p_value : float
        Friedman's chi-square (with scipy's tie correction) and its p value.
    df : int
        ``k - 1`` degrees of freedom of the chi-square.
    mean_ranks : numpy.ndarray of shape (k,)
        Average rank of each treatment over the blocks, 1 = best, ties share the mean rank.
    cd : float
        Nemenyi critical difference at ``alpha``: two treatments whose mean ranks differ by
        more are different.
    n_blocks, n_treatments : int
        ``N`` and ``k``.
    alpha : float
        The level of ``cd``.
    """

    statistic: float
    p_value: float
    df: int
    mean_ranks: np.ndarray
    cd: float
    n_blocks: int
    n_treatments: int
    alpha: float


def _cv_sizes(n_train: Any, n_test: Any, folds: int) -> float:
    """``mean(n_test) / mean(n_train)``: the correction's ratio; per-fold arrays are
    averaged (folds of a k-fold CV differ by an image or two)."""
    ratio = []
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        arr = np.atleast_1d(np.asarray(v, dtype=float))
        if arr.ndim != 1 or arr.size not in (1, folds):
            raise StatsInputError(f"{name} must be a number or one per fold ({folds}), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise StatsInputError(f"{name} must be positive sizes, got {arr.tolist()[:10]}")
        ratio.append(float(arr.mean()))
    return ratio[1] / ratio[0]


def _fold_values(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise StatsInputError(f"{name} must be 1-D (one value per fold), got shape {arr.shape}")
    if len(arr) < 2:
        raise StatsInputError(f"{name} holds {len(arr)} fold value(s); a CV variance needs at least 2 folds")
    if not np.all(np.isfinite(arr)):
        raise StatsInputError(f"{name} contains nan or inf (fold {int(np.flatnonzero(~np.isfinite(arr))[0])})")
    return arr


def _corrected(d: np.ndarray, n_train: Any, n_test: Any, alpha: float) -> CorrectedTTest:
    """The corrected t statistic of the mean of ``d`` against 0 (see :func:`corrected_resampled_ttest`)."""
    _check_alpha(alpha)
    j = len(d)
    ratio = _cv_sizes(n_train, n_test, j)
    mean = float(d.mean())
    var = (1.0 / j + ratio) * float(d.var(ddof=1))
    df = j - 1
    if var <= 0.0:  # every fold the same value: the limits of t, p and the interval
        if mean == 0.0:
            return CorrectedTTest(0.0, 0.0, float(df), 1.0, 0.0, 0.0)
        return CorrectedTTest(mean, math.copysign(math.inf, mean), float(df), 0.0, mean, mean)
    se = math.sqrt(var)
    t = mean / se
    half = float(student_t.ppf(1.0 - alpha / 2.0, df)) * se
    return CorrectedTTest(mean, t, float(df), float(min(1.0, 2.0 * student_t.sf(abs(t), df))),
                          mean - half, mean + half)


def corrected_resampled_ttest(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_train: float | Sequence[float] | np.ndarray,
    n_test: float | Sequence[float] | np.ndarray,
    alpha: float = 0.05,
) -> CorrectedTTest:
    """Corrected resampled t-test of two models scored on the same CV folds.

    The ``J`` folds (``R x k`` of a repeated k-fold CV) share training images, so their
    scores are correlated and the plain paired t-test's variance ``s^2 / J`` is too
    small. Nadeau & Bengio (2003) correct it to ``(1/J + n_test/n_train) * s^2``, where
    ``s^2`` is the sample variance (ddof 1) of the per-fold differences ``a - b``;
    Bouckaert & Frank (2004) showed the corrected test's type-I error is close to
    nominal for repeated k-fold CV. ``t = mean(a - b) / sqrt(corrected variance)`` with
    ``J - 1`` degrees of freedom, two-sided.

    Parameters
    ----------
    a, b : array-like of shape (J,)
        Per-fold scores of the two models, paired by fold.
    n_train, n_test : float or array-like of shape (J,)
        Training and evaluation images per fold; arrays are averaged.
    alpha : float
        1 - confidence level of the interval of the mean difference.

    Returns
    -------
    CorrectedTTest
        ``(mean_diff, t, df, p_value, low, high)``; ``t > 0`` when ``a`` scores higher.

    Raises
    ------
    StatsInputError
        Fewer than 2 folds, ``a`` and ``b`` of different lengths, non-finite scores,
        sizes that are not positive or not one per fold.

    Notes
    -----
    When every fold shows the same difference (``s^2 = 0``) the limits are returned,
    as :func:`delong_test` does: difference 0 -> ``t = 0, p = 1`` (interval ``(0, 0)``);
    a non-zero difference -> ``t = +/-inf, p = 0`` (interval the difference itself).

    References
    ----------
    Nadeau C, Bengio Y (2003). Inference for the generalization error. Machine Learning
    52(3):239-281. Bouckaert RR, Frank E (2004). Evaluating the replicability of
    significance tests for comparing learning algorithms. PAKDD 2004, LNCS 3056:3-12.

    Examples
    --------
    >>> r = corrected_resampled_ttest([0.92, 0.90, 0.91], [0.90, 0.89, 0.88], 80, 20)
    >>> round(r.t, 3), r.df
    (2.619, 2.0)
    """
    x, y = _fold_values(a, "a"), _fold_values(b, "b")
    if len(x) != len(y):
        raise StatsInputError(f"length mismatch: a has {len(x)} folds, b has {len(y)}")
    return _corrected(x - y, n_train, n_test, alpha)


def corrected_cv_interval(
    values: Sequence[float] | np.ndarray,
    n_train: float | Sequence[float] | np.ndarray,
    n_test: float | Sequence[float] | np.ndarray,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """``1 - alpha`` interval of a CV mean with the corrected variance of Nadeau & Bengio.

    ``mean -/+ t_(1 - alpha/2, J-1) * sqrt((1/J + n_test/n_train) * s^2)`` over the ``J``
    per-fold values (see :func:`corrected_resampled_ttest`); the interval is not clipped
    (a metric's own range is the reader's to apply). All folds equal: ``(mean, mean)``.

    Raises
    ------
    StatsInputError
        As :func:`corrected_resampled_ttest`.
    """
    r = _corrected(_fold_values(values, "values"), n_train, n_test, alpha)
    return r.low, r.high


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``q_alpha * sqrt(k (k + 1) / (6 N))`` (Demšar 2006).

    ``q_alpha`` is the studentized range quantile for ``k`` groups and infinite degrees
    of freedom divided by ``sqrt(2)`` (``scipy.stats.studentized_range``): 2.569 for
    ``k = 4`` at ``alpha = 0.05``, as Demšar's Table 5 lists.
    """
    from scipy.stats import studentized_range

    _check_alpha(alpha)
    if k < 2 or n < 1:
        raise StatsInputError(f"the critical difference needs k >= 2 treatments and N >= 1 blocks, got k={k}, N={n}")
    q = float(studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


def friedman_test(matrix: Any, alpha: float = 0.05, higher_is_better: bool = True) -> FriedmanResult:
    """Friedman's test of ``k`` treatments over ``N`` blocks, with mean ranks and the Nemenyi CD.

    Parameters
    ----------
    matrix : array-like or DataFrame of shape (N, k)
        Blocks (folds, datasets) in rows, treatments (candidates) in columns.
    alpha : float
        Level of the critical difference.
    higher_is_better : bool
        Rank 1 goes to the highest value (``False``: to the lowest, e.g. a loss).

    Returns
    -------
    FriedmanResult
        Statistic and p value from ``scipy.stats.friedmanchisquare`` (tie-corrected),
        mean ranks (``scipy.stats.rankdata``, ties averaged) and
        :func:`nemenyi_cd`.

    Raises
    ------
    StatsInputError
        Fewer than 3 treatments (scipy's test needs 3) or 2 blocks, or a non-finite value.

    Notes
    -----
    When every block ties all treatments the ranks carry no evidence and scipy's
    statistic is 0/0: it is returned as ``statistic = 0, p = 1``.
    """
    from scipy.stats import friedmanchisquare

    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise StatsInputError(f"matrix must be 2-D (blocks x treatments), got shape {m.shape}")
    n, k = m.shape
    if k < 3:
        raise StatsInputError(f"Friedman's test needs at least 3 treatments (columns), got {k}")
    if n < 2:
        raise StatsInputError(f"Friedman's test needs at least 2 blocks (rows), got {n}")
    if not np.all(np.isfinite(m)):
        i, j = np.argwhere(~np.isfinite(m))[0]
        raise StatsInputError(f"matrix holds nan or inf (block {int(i)}, treatment {int(j)})")
    ranks = rankdata(-m if higher_is_better else m, method="average", axis=1)
    if np.all(ranks == (k + 1) / 2.0):
        stat, p = 0.0, 1.0
    else:
        res = friedmanchisquare(*m.T)
        stat, p = float(res.statistic), float(res.pvalue)
    return FriedmanResult(stat, p, k - 1, ranks.mean(axis=0), nemenyi_cd(k, n, alpha), n, k, alpha)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _check_groups(groups: Any, n: int) -> np.ndarray:
    g = np.asarray(groups, dtype=object)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must hold one entry per image ({n}), got shape {g.shape}")
    return g


def _count(value: Any, name: str) -> int:
    # Integer-valued floats (8.0) are accepted: counts often arrive as float sums.
    ok = isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    for arr, name in ((a_arr, name_a), (b_arr, name_b)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(a_arr) != len(b_arr):
        raise ValueError(f"length mismatch: {name_a} has {len(a_arr)} entries, {name_b} has {len(b_arr)}")
    if len(a_arr) == 0:
        raise ValueError(f"{name_a} is empty")
    return a_arr, b_arr


def _check_roc_input(
    y: Any, *scores: Any, names: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 int labels with both classes, and finite scores stacked as (k, n)."""
    names = names or ("y",) + (("p",) if len(scores) == 1 else tuple(f"p{i + 1}" for i in range(len(scores))))
    y_raw = np.asarray(y)
    if y_raw.ndim != 1:
        raise ValueError(f"{names[0]} must be 1-D, got shape {y_raw.shape}")
    # Object arrays (e.g. from pandas) are fine as long as the values are 0/1.
    if y_raw.dtype.kind not in "biufO":
        raise ValueError(f"{names[0]} must be binary 0/1 labels, got dtype {y_raw.dtype}")
    if not np.all(np.isin(y_raw, (0, 1))):
        found = sorted(np.unique(y_raw).tolist(), key=str)
        raise ValueError(f"{names[0]} must be binary 0/1 labels, found values {found[:10]}")
    y_arr = y_raw.astype(np.int64)
    if y_arr.min() == y_arr.max():
        raise ValueError(
            f"{names[0]} has a single class ({int(y_arr[0])}); AUC and ROC need both positives and negatives"
        )
    rows = []
    for s, name in zip(scores, names[1:]):
        s_arr = np.asarray(s, dtype=float)
        if s_arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {s_arr.shape}")
        if len(s_arr) != len(y_arr):
            raise ValueError(f"length mismatch: {names[0]} has {len(y_arr)} entries, {name} has {len(s_arr)}")
        if not np.all(np.isfinite(s_arr)):
            raise ValueError(f"{name} contains nan or inf")
        rows.append(s_arr)
    return y_arr, np.vstack(rows)

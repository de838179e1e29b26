"""Paired statistics checked against statsmodels, scipy, R pROC and brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from workbench.evaluation.stats import (
    AUCInterval,
    Interval,
    PROPORTION_METRICS,
    apply_threshold,
    compare_to_baseline,
    delong_auc_variance,
    delong_interval,
    delong_test,
    holm,
    mcnemar_exact,
    proportion_metrics,
    wilson_interval,
    youden_threshold,
)

# ---------------------------------------------------------------------------
# Wilson
# ---------------------------------------------------------------------------


def _wilson_by_hand(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Wilson (1927) score interval from its closed form."""
    z = norm.ppf(1 - alpha / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_hand_computed_8_of_10():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)


@pytest.mark.parametrize(
    "k,n,alpha", [(8, 10, 0.05), (0, 7, 0.05), (7, 7, 0.05), (45, 50, 0.05), (3, 120, 0.01), (60, 61, 0.1)]
)
def test_wilson_matches_statsmodels_and_closed_form(k, n, alpha):
    ours = wilson_interval(k, n, alpha)
    ref = proportion_confint(k, n, alpha=alpha, method="wilson")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)  # up to round-off at 0 and 1
    np.testing.assert_allclose(ours, _wilson_by_hand(k, n, alpha), rtol=0, atol=1e-12)
    assert 0.0 <= ours[0] <= k / n <= ours[1] <= 1.0


def test_wilson_empty_is_nan_and_bad_counts_refused():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="exceed"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="non-negative integer"):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError, match="non-negative integer"):
        wilson_interval(2.5, 10)
    with pytest.raises(ValueError, match="alpha"):
        wilson_interval(1, 10, alpha=1.5)


# ---------------------------------------------------------------------------
# Proportion metrics
# ---------------------------------------------------------------------------


def _labels(tp: int, fn: int, fp: int, tn: int, pos=1, neg=0) -> tuple[np.ndarray, np.ndarray]:
    dtype = object if isinstance(pos, str) else int
    y = np.array([pos] * tp + [pos] * fn + [neg] * fp + [neg] * tn, dtype=dtype)
    pred = np.array([pos] * tp + [neg] * fn + [pos] * fp + [neg] * tn, dtype=y.dtype)
    return y, pred


def test_proportion_metrics_on_a_hand_made_confusion_matrix():
    # TP 45, FN 5, FP 10, TN 40 (100 images).
    out = proportion_metrics(*_labels(45, 5, 10, 40))
    expected = {
        "accuracy": (85, 100),
        "sensitivity": (45, 50),
        "specificity": (40, 50),
        "ppv": (45, 55),
        "npv": (40, 45),
    }
    assert tuple(k for k in out if k in expected) == PROPORTION_METRICS
    for name, (k, n) in expected.items():
        iv = out[name]
        assert isinstance(iv, Interval)
        assert (iv.successes, iv.n) == (k, n)
        assert iv.estimate == pytest.approx(k / n, abs=1e-15)
        np.testing.assert_allclose((iv.low, iv.high), proportion_confint(k, n, method="wilson"), atol=1e-12)
    assert out["lr_plus"] == pytest.approx(0.9 / 0.2)  # 4.5
    assert out["lr_minus"] == pytest.approx(0.1 / 0.8)  # 0.125


def test_proportion_metrics_string_labels_and_alpha():
    y, pred = _labels(45, 5, 10, 40, pos="malignant", neg="benign")
    out = proportion_metrics(y, pred, positive="malignant", alpha=0.01)
    assert (out["sensitivity"].successes, out["sensitivity"].n) == (45, 50)
    np.testing.assert_allclose(
        (out["sensitivity"].low, out["sensitivity"].high),
        proportion_confint(45, 50, alpha=0.01, method="wilson"),
        atol=1e-12,
    )
    # The other class as positive swaps sensitivity and specificity.
    flipped = proportion_metrics(y, pred, positive="benign")
    assert (flipped["sensitivity"].successes, flipped["sensitivity"].n) == (40, 50)
    assert (flipped["specificity"].successes, flipped["specificity"].n) == (45, 50)


def test_likelihood_ratios_at_the_edges():
    # Specificity 1, sensitivity 0.9: +LR is infinite, -LR = 0.1.
    out = proportion_metrics(*_labels(9, 1, 0, 10))
    assert out["lr_plus"] == math.inf and out["lr_minus"] == pytest.approx(0.1)
    # Sensitivity 0, specificity 1: +LR is 0/0.
    out = proportion_metrics(*_labels(0, 10, 0, 10))
    assert math.isnan(out["lr_plus"]) and out["lr_minus"] == pytest.approx(1.0)
    # Specificity 0, sensitivity 1: -LR is 0/0, +LR = 1.
    out = proportion_metrics(*_labels(10, 0, 10, 0))
    assert out["lr_plus"] == pytest.approx(1.0) and math.isnan(out["lr_minus"])
    # Specificity 0, sensitivity 0.5: -LR = 0.5 / 0 = inf.
    out = proportion_metrics(*_labels(5, 5, 10, 0))
    assert out["lr_minus"] == math.inf
    # No positives at all: sensitivity and both LRs are undefined, PPV is 0/10.
    out = proportion_metrics(*_labels(0, 0, 10, 10))
    assert math.isnan(out["sensitivity"].estimate) and math.isnan(out["sensitivity"].low)
    assert out["sensitivity"].n == 0
    assert math.isnan(out["lr_plus"]) and math.isnan(out["lr_minus"])
    assert out["ppv"].estimate == 0.0 and out["ppv"].n == 10


def test_proportion_metrics_bad_input():
    with pytest.raises(ValueError, match="binary"):
        proportion_metrics([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="length mismatch"):
        proportion_metrics([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="positive label"):
        proportion_metrics(["a", "b"], ["a", "a"], positive="malignant")


# ---------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------

# R pROC's example dataset aSAH (Turck et al., Intensive Care Med 2010; shipped as
# pROC's data/aSAH.rda, 113 patients): outcome "Poor" as the positive class, and the
# three markers s100b, wfns (5-level ordinal score: heavy ties) and ndka, in data order.
# The transcription is checked against pROC's own placements (X/Y per patient) in
# xrobin/pROC tests/testthat/helper-deLongPlacementsCpp-expected.R.
ASAH_POOR = np.array([
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0,
    0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0,
    0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0,
    0
])

ASAH_S100B = np.array([
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71,
    0.04, 0.08, 0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11,
    0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46,
    0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1,
    0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09,
    0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28,
    0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07,
    0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48
])

ASAH_WFNS = np.array([
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2,
    1, 1, 3, 4, 2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1,
    2, 2, 2, 1, 5, 1, 1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4,
    2, 1, 4, 5, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1,
    1
])

ASAH_NDKA = np.array([
    3.01, 8.54, 8.09, 10.42, 17.4, 12.75, 6.0, 13.2, 15.54, 6.01, 15.96, 17.86, 5.18,
    8.9, 13.41, 20.75, 11.6, 16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29,
    12.53, 6.54, 6.3, 80.3, 12.8, 9.8, 9.81, 9.85, 18.21, 5.03, 14.04, 21.93, 8.02,
    7.42, 8.38, 6.59, 9.63, 13.12, 7.96, 14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87,
    9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95, 21.22, 11.73, 10.4, 58.83, 6.39,
    11.09, 12.22, 13.67, 17.21, 22.63, 12.9, 9.7, 21.57, 8.23, 72.57, 15.54, 10.51,
    10.6, 14.57, 5.19, 9.63, 4.61, 21.48, 17.3, 12.71, 9.44, 11.07, 19.46, 10.83, 5.37,
    11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.9, 46.83, 11.68, 12.67, 9.01, 9.57,
    34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45
])

# Expected values from pROC's own test suite (github.com/xrobin/pROC):
#   tests/testthat/helper-deLongPlacementsCpp-expected.R  theta (AUC) of each marker
#   tests/testthat/test-var.R     var(r.wfns), var(r.ndka), var(r.s100b)   (DeLong)
#   tests/testthat/test-ci.auc.R  ci.auc(r.ndka)                           (DeLong)
#   tests/testthat/test-roc.test.R  roc.test(r.wfns, r.s100b) = t1,
#       roc.test(r.wfns, r.ndka) = t2, roc.test(r.ndka, r.s100b) = t3 (paired DeLong)
PROC_AUC = {"s100b": 0.731368563685637, "wfns": 0.823678861788618, "ndka": 0.611957994579946}
PROC_VAR = {"s100b": 0.00266868245717244, "wfns": 0.00146991470882363, "ndka": 0.0031908105493913}
PROC_CI_NDKA = (0.501244999271703, 0.722670989888189)
PROC_TESTS = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054),
]
ASAH = {"s100b": ASAH_S100B, "wfns": ASAH_WFNS, "ndka": ASAH_NDKA}


def test_asah_transcription():
    assert len(ASAH_POOR) == 113 and ASAH_POOR.sum() == 41
    assert all(len(v) == 113 for v in ASAH.values())


@pytest.mark.parametrize("marker", sorted(ASAH))
def test_delong_variance_and_interval_match_proc(marker):
    auc, var = delong_auc_variance(ASAH_POOR, ASAH[marker])
    assert auc == pytest.approx(PROC_AUC[marker], rel=1e-13)
    assert var == pytest.approx(PROC_VAR[marker], rel=1e-12)
    assert auc == pytest.approx(roc_auc_score(ASAH_POOR, ASAH[marker]), abs=1e-15)


def test_delong_interval_matches_proc_ci_auc():
    ci = delong_interval(ASAH_POOR, ASAH_NDKA)
    assert isinstance(ci, AUCInterval)
    assert ci.estimate == pytest.approx(PROC_AUC["ndka"], rel=1e-13)
    np.testing.assert_allclose((ci.low, ci.high), PROC_CI_NDKA, rtol=1e-12)
    # Plain normal interval on the AUC scale.
    half = norm.ppf(0.975) * math.sqrt(ci.variance)
    assert (ci.low, ci.high) == pytest.approx((ci.estimate - half, ci.estimate + half))


@pytest.mark.parametrize("first,second,z_ref,p_ref", PROC_TESTS)
def test_delong_test_matches_proc_roc_test(first, second, z_ref, p_ref):
    auc1, auc2, z, p = delong_test(ASAH_POOR, ASAH[first], ASAH[second])
    assert (auc1, auc2) == pytest.approx((PROC_AUC[first], PROC_AUC[second]), rel=1e-13)
    assert z == pytest.approx(z_ref, rel=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-12)
    # Swapping the curves flips z, keeps p.
    _, _, z_swapped, p_swapped = delong_test(ASAH_POOR, ASAH[second], ASAH[first])
    assert z_swapped == pytest.approx(-z, rel=1e-14) and p_swapped == pytest.approx(p, rel=1e-14)


# A small vector set with ties within and across classes, and the values printed by
# the Python reference implementation yandexdataschool/roc_comparison,
# compare_auc_delong_xu.py (commit 8f601177b73f80c642dec6db507e63060e9cc9bc;
# run with np.float -> float, the only change): delong_roc_variance(y, p1),
# delong_roc_variance(y, p2), and delong_roc_test(y, p1, p2), which returns log10(p).
REF_Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0])
REF_P1 = np.array([0.9, 0.3, 0.7, 0.7, 0.5, 0.1, 0.6, 0.7, 0.4, 0.2, 0.5, 0.95, 0.3, 0.5, 0.05])
REF_P2 = np.array([0.8, 0.4, 0.4, 0.6, 0.6, 0.2, 0.5, 0.3, 0.4, 0.1, 0.7, 0.6, 0.2, 0.3, 0.4])
REF_AUCS = (0.875, 0.7232142857142858)
REF_COV = ((0.008028881195335276, 0.004310541180758018), (0.004310541180758018, 0.01891627186588921))
REF_LOG10_P = -0.5814298010980201


def test_delong_matches_the_yandex_reference_vectors():
    auc1, var1 = delong_auc_variance(REF_Y, REF_P1)
    auc2, var2 = delong_auc_variance(REF_Y, REF_P2)
    assert (auc1, auc2) == pytest.approx(REF_AUCS, rel=1e-14)
    assert (var1, var2) == pytest.approx((REF_COV[0][0], REF_COV[1][1]), rel=1e-12)
    a1, a2, z, p = delong_test(REF_Y, REF_P1, REF_P2)
    assert (a1, a2) == pytest.approx(REF_AUCS, rel=1e-14)
    assert math.log10(p) == pytest.approx(REF_LOG10_P, rel=1e-12)
    var_d = REF_COV[0][0] + REF_COV[1][1] - 2 * REF_COV[0][1]
    assert z == pytest.approx((REF_AUCS[0] - REF_AUCS[1]) / math.sqrt(var_d), rel=1e-12)


def _brute_force_components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by their O(m*n) definition, no ranks."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)  # V10 per positive, V01 per negative


def _brute_force_delong(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[float, float, float, float]:
    """(var1, var2, cov12, var of the difference) from the definition (DeLong 1988)."""
    v10_1, v01_1 = _brute_force_components(y, s1)
    v10_2, v01_2 = _brute_force_components(y, s2)
    m, n = len(v10_1), len(v01_1)
    s10 = np.cov(np.vstack([v10_1, v10_2]))
    s01 = np.cov(np.vstack([v01_1, v01_2]))
    cov = s10 / m + s01 / n
    return cov[0, 0], cov[1, 1], cov[0, 1], cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def _tied_scores(seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 0, 1  # both classes, at least 2 each
    s1 = np.round(0.8 * y + rng.normal(0, 1, n), 1)  # rounding makes many ties
    s2 = np.round(0.5 * s1 + rng.normal(0, 0.7, n), 0)
    return y, s1, s2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_delong_matches_sklearn_auc_and_brute_force_variance(seed):
    y, s1, s2 = _tied_scores(seed)
    var1, var2, _, var_d = _brute_force_delong(y, s1, s2)
    auc1, v1 = delong_auc_variance(y, s1)
    auc2, v2 = delong_auc_variance(y, s2)
    assert auc1 == pytest.approx(roc_auc_score(y, s1), abs=1e-14)
    assert auc2 == pytest.approx(roc_auc_score(y, s2), abs=1e-14)
    assert (v1, v2) == pytest.approx((var1, var2), rel=1e-12)
    a1, a2, z, p = delong_test(y, s1, s2)
    assert z == pytest.approx((auc1 - auc2) / math.sqrt(var_d), rel=1e-10)
    assert p == pytest.approx(2 * norm.sf(abs(z)), rel=1e-12)


def test_delong_all_tied_scores_give_auc_one_half():
    y = np.array([1, 0, 1, 0, 1, 0])
    auc, var = delong_auc_variance(y, np.full(6, 0.3))
    assert auc == 0.5 and var == 0.0


def test_delong_test_of_a_classifier_against_itself():
    y, s1, _ = _tied_scores(7)
    assert tuple(delong_test(y, s1, s1))[2:] == (0.0, 1.0)
    assert tuple(delong_test(y, s1, s1.copy()))[2:] == (0.0, 1.0)
    # Same ranking (a monotone transform) is the same ROC curve: 0/0 read as z=0, p=1.
    assert tuple(delong_test(y, s1, np.exp(3 * s1)))[2:] == (0.0, 1.0)
    assert tuple(delong_test(ASAH_POOR, ASAH_WFNS, ASAH_WFNS))[2:] == (0.0, 1.0)


def test_delong_degenerate_cases():
    y = np.array([1, 1, 0, 0])
    # Perfect vs constant: AUC 1 vs 0.5, both with zero variance: z = +inf, p = 0.
    assert tuple(delong_test(y, [0.9, 0.8, 0.1, 0.2], [0.5, 0.5, 0.5, 0.5])) == (1.0, 0.5, math.inf, 0.0)
    # A single positive: AUC defined, DeLong variance (ddof=1) is not.
    y1 = np.array([1, 0, 0, 0])
    auc, var = delong_auc_variance(y1, [0.9, 0.1, 0.5, 0.3])
    assert auc == 1.0 and math.isnan(var)
    ci = delong_interval(y1, [0.9, 0.1, 0.5, 0.3])
    assert math.isnan(ci.low) and math.isnan(ci.high)
    _, _, z, p = delong_test(y1, [0.9, 0.1, 0.5, 0.3], [0.2, 0.1, 0.5, 0.3])
    assert math.isnan(z) and math.isnan(p)


def test_delong_interval_is_clipped_to_unit_range():
    y = np.array([1, 1, 1, 0, 0, 0])
    ci = delong_interval(y, [0.9, 0.8, 0.3, 0.35, 0.2, 0.1])
    assert ci.high == 1.0 and 0.0 <= ci.low < ci.estimate


@pytest.mark.parametrize(
    "y,p,match",
    [
        ([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], "binary 0/1"),
        (["a", "b", "a", "b"], [0.1, 0.2, 0.3, 0.4], "binary 0/1"),
        ([0, 1, 0, 1], [0.1, 0.2, 0.3], "length mismatch"),
        ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], "single class"),
        ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "single class"),
        ([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], "nan or inf"),
    ],
)
def test_roc_functions_refuse_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        delong_auc_variance(y, p)
    with pytest.raises(ValueError, match=match):
        delong_interval(y, p)
    with pytest.raises(ValueError, match=match):
        delong_test(y, p, p)
    with pytest.raises(ValueError, match=match):
        youden_threshold(y, p)


def test_delong_test_names_the_mismatched_argument():
    with pytest.raises(ValueError, match="p2 has 3"):
        delong_test([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------------------
# McNemar
# ---------------------------------------------------------------------------


def _paired_predictions(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    pred1 = np.where(rng.random(n) < 0.85, y, 1 - y)
    pred2 = np.where(rng.random(n) < 0.7, y, 1 - y)
    return y, pred1, pred2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcnemar_matches_statsmodels_and_binomtest(seed):
    y, pred1, pred2 = _paired_predictions(seed)
    b, c, p = mcnemar_exact(y, pred1, pred2)
    ok1, ok2 = pred1 == y, pred2 == y
    assert (b, c) == (int(np.sum(ok1 & ~ok2)), int(np.sum(~ok1 & ok2)))
    table = [[np.sum(ok1 & ok2), b], [c, np.sum(~ok1 & ~ok2)]]
    assert p == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    assert p == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    # The test is symmetric in the two classifiers.
    assert tuple(mcnemar_exact(y, pred2, pred1)) == pytest.approx((c, b, p))


def test_mcnemar_hand_computed_and_no_discordant_pairs():
    # b = 0, c = 5: p = 2 * 0.5**5 = 0.0625.
    y = np.zeros(10, dtype=int)
    pred1 = np.array([1] * 5 + [0] * 5)
    pred2 = np.zeros(10, dtype=int)
    assert tuple(mcnemar_exact(y, pred1, pred2)) == pytest.approx((0, 5, 0.0625))
    # Identical predictions: no discordant image, p = 1.
    assert tuple(mcnemar_exact(y, pred1, pred1)) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="length mismatch"):
        mcnemar_exact(y, pred1, pred2[:-1])


# ---------------------------------------------------------------------------
# Holm
# ---------------------------------------------------------------------------


def test_holm_hand_computed_with_nan():
    # Without the nan: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03,
    # 0.06, 0.04, made monotone -> 0.02, 0.03, 0.06, 0.06; the nan stays nan and does
    # not count as a fifth test.
    np.testing.assert_allclose(
        holm([0.01, np.nan, 0.04, 0.03, 0.005]), [0.03, np.nan, 0.06, 0.06, 0.02], atol=1e-15
    )


def test_holm_matches_statsmodels_and_keeps_nan():
    # (statsmodels' Holm branch runs gc.collect() on every call, ~0.3 s in a process
    # that has torch loaded, so the calls here are kept few.)
    rng = np.random.default_rng(0)
    p = rng.random(12) ** 3
    reference = multipletests(p, method="holm")[1]
    with_nan = np.insert(p, [0, 5, 12], np.nan)
    out = holm(with_nan)
    assert np.isnan(out[[0, 6, 14]]).all()
    # nan entries are not hypotheses: the rest is adjusted as a family of 12.
    np.testing.assert_allclose(out[~np.isnan(out)], reference, atol=0)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.2])


# ---------------------------------------------------------------------------
# Youden
# ---------------------------------------------------------------------------


def _youden_j(y: np.ndarray, pred: np.ndarray) -> float:
    y = np.asarray(y)
    return np.mean(pred[y == 1] == 1) + np.mean(pred[y == 0] == 0) - 1


def test_youden_known_best_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    t = youden_threshold(y, p)
    assert t == 0.6  # the first positive score: p >= t separates perfectly
    np.testing.assert_array_equal(apply_threshold(p, t), y)


def test_youden_ties_go_to_the_threshold_closest_to_one_half():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # t = 0.7: sens 3/4, spec 4/4; t = 0.4: sens 4/4, spec 3/4. Both J = 0.75.
    assert _youden_j(y, apply_threshold(p, 0.7)) == _youden_j(y, apply_threshold(p, 0.4)) == 0.75
    assert youden_threshold(y, p) == 0.4
    # Equally far from 0.5 (0.4 and 0.6, both J = 0.5): the higher one.
    y2, p2 = np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.5, 0.6])
    assert youden_threshold(y2, p2) == 0.6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_is_the_brute_force_maximum_under_the_apply_threshold_rule(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    p = np.round(rng.random(60) * 0.6 + 0.3 * y, 2)  # ties
    t = youden_threshold(y, p)
    assert t in set(p.tolist())
    candidates = np.unique(p)
    js = np.array([_youden_j(y, apply_threshold(p, c)) for c in candidates])
    best = candidates[np.isclose(js, js.max(), rtol=0, atol=1e-12)]
    assert _youden_j(y, apply_threshold(p, t)) == pytest.approx(js.max(), abs=1e-12)
    assert abs(t - 0.5) == pytest.approx(np.min(np.abs(best - 0.5)), abs=1e-15)


def test_apply_threshold_is_greater_or_equal():
    np.testing.assert_array_equal(apply_threshold([0.2, 0.5, 0.7], 0.5), [0, 1, 1])
    with pytest.raises(ValueError, match="nan"):
        apply_threshold([0.2, np.nan], 0.5)


# ---------------------------------------------------------------------------
# compare_to_baseline
# ---------------------------------------------------------------------------


def test_compare_to_baseline_combines_delong_and_mcnemar():
    y, s1, s2 = _tied_scores(11)
    out = compare_to_baseline(y, s1, s2, 0.4, 0.0)
    auc1, auc2, z, p = delong_test(y, s1, s2)
    b, c, p_acc = mcnemar_exact(y, apply_threshold(s1, 0.4), apply_threshold(s2, 0.0))
    assert out == {
        "auc_candidate": auc1,
        "auc_baseline": auc2,
        "auc_z": z,
        "auc_p_value": p,
        "accuracy_candidate": float(np.mean(apply_threshold(s1, 0.4) == y)),
        "accuracy_baseline": float(np.mean(apply_threshold(s2, 0.0) == y)),
        "mcnemar_b": b,
        "mcnemar_c": c,
        "accuracy_p_value": p_acc,
    }
    same = compare_to_baseline(y, s1, s1, 0.4, 0.4)
    assert same["auc_p_value"] == 1.0 and same["accuracy_p_value"] == 1.0
    with pytest.raises(ValueError, match="p_base"):
        compare_to_baseline(y, s1, s2[:-1], 0.4, 0.0)


# ---------------------------------------------------------------------------
# Cluster bootstrap (grouped test data)
# ---------------------------------------------------------------------------


def _scored(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(0.8 * y + rng.normal(size=n), 2)  # ties included
    return y, p, (p > 0.4).astype(int)


def test_weighted_auc_equals_sklearn_on_the_resampled_images():
    from workbench.evaluation.stats import _weighted_auc, cluster_weights

    y, p, _ = _scored()
    groups = np.repeat(np.arange(40), 3)
    w = cluster_weights(groups, n_boot=6, seed=1)
    assert (w.sum(axis=1) == len(y)).all()  # 40 groups of 3 drawn, 120 images each time
    for k, auc in enumerate(_weighted_auc(y, p, w)):
        rows = np.repeat(np.arange(len(y)), w[k])
        assert auc == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-12)
        assert set(groups[rows]) <= set(groups)


def test_cluster_bootstrap_widens_with_duplicated_groups_and_matches_singletons():
    from workbench.evaluation.stats import cluster_bootstrap_auc, cluster_bootstrap_proportions

    y, p, pred = _scored()
    # Each image three times, as one group: three times the rows, no more information.
    y3, p3, pred3, g3 = np.repeat(y, 3), np.repeat(p, 3), np.repeat(pred, 3), np.repeat(np.arange(len(y)), 3)
    naive = delong_interval(y3, p3)
    clustered = cluster_bootstrap_auc(y3, p3, g3)
    assert clustered.estimate == pytest.approx(naive.estimate)
    assert clustered.high - clustered.low > 1.5 * (naive.high - naive.low)
    # ... and as wide as the interval of the images once (DeLong), up to bootstrap noise.
    once = delong_interval(y, p)
    assert clustered.high - clustered.low == pytest.approx(once.high - once.low, rel=0.15)
    props, wilson = cluster_bootstrap_proportions(y3, pred3, g3), proportion_metrics(y3, pred3)
    for m in PROPORTION_METRICS:
        assert props[m].estimate == wilson[m].estimate and props[m].n == wilson[m].n
        assert props[m].high - props[m].low > 1.4 * (wilson[m].high - wilson[m].low)
    # Deterministic (seeded), and another seed moves the bounds only a little.
    assert cluster_bootstrap_auc(y3, p3, g3) == clustered
    other = cluster_bootstrap_auc(y3, p3, g3, seed=5)
    assert other.low == pytest.approx(clustered.low, abs=0.02) and other.high == pytest.approx(clustered.high, abs=0.02)


def test_cluster_bootstrap_does_not_depend_on_group_names():
    from workbench.evaluation.stats import cluster_bootstrap_auc

    y, p, _ = _scored()
    g = np.repeat(np.arange(40), 3)
    a = cluster_bootstrap_auc(y, p, [f"p{k}" for k in g])
    b = cluster_bootstrap_auc(y, p, [f"patient-{997 * k % 1000}" for k in g])
    assert a == b
    lone = [None if k % 2 else f"p{k}" for k in range(len(y))]  # no group: a group of one
    assert cluster_bootstrap_auc(y, p, lone) == cluster_bootstrap_auc(y, p, [f"q{k}" for k in range(len(y))])


def test_cluster_bootstrap_paired_test():
    from workbench.evaluation.stats import cluster_bootstrap_test, clustered

    y, p, pred = _scored()
    g = np.repeat(np.arange(40), 3)
    assert cluster_bootstrap_test(y, g, p1=p, p2=p) == (0.0, 1.0)
    assert cluster_bootstrap_test(y, g, pred1=pred, pred2=pred).p_value == 1.0
    worse = cluster_bootstrap_test(y, g, pred1=pred, pred2=1 - pred)
    assert worse.difference > 0.2 and worse.p_value < 0.01
    noisy = p + np.random.default_rng(3).normal(0, 3, len(p))
    res = cluster_bootstrap_test(y, np.arange(len(y)), p1=p, p2=noisy)
    assert res.difference == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, noisy))
    # Groups of one: the bootstrap agrees with DeLong's test up to resampling noise.
    assert res.p_value == pytest.approx(delong_test(y, p, noisy).p_value, abs=0.04)
    with pytest.raises(ValueError, match="either p1 and p2"):
        cluster_bootstrap_test(y, g, p1=p, pred2=pred)
    with pytest.raises(ValueError, match="one entry per image"):
        cluster_bootstrap_test(y, g[:-1], p1=p, p2=p)
    assert clustered(["a", "a", "b"]) and not clustered(["a", "b", None, None, ""]) and not clustered(None)

"""Classification metrics checked against hand-computed values and scikit-learn."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    class_likelihood_ratios,
    classification_report,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from workbench.evaluation.metrics import (
    METRICS,
    PER_CLASS_METRICS,
    classification_metrics,
    default_positive,
)

BINARY = ["benign", "malignant"]
THYROID = ["normal", "graves", "toxic_nodular", "thyroiditis"]


def pairwise_auc(pos_scores, neg_scores) -> float:
    """AUC as P(score of a positive > score of a negative), ties counted half."""
    wins = sum((p > q) + 0.5 * (p == q) for p in pos_scores for q in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))


def binary_case(seed: int = 0):
    """20 images: 8 malignant (tp=6, fn=2), 12 benign (fp=1, tn=11)."""
    rng = np.random.default_rng(seed)
    y_true = np.array([1] * 8 + [0] * 12)
    pred_pos = np.array([1] * 6 + [0] * 2 + [1] * 1 + [0] * 11, dtype=bool)
    p_mal = np.where(pred_pos, rng.uniform(0.55, 0.99, 20), rng.uniform(0.01, 0.45, 20))
    p_mal[[0, 8]] = 0.7  # a tie across classes (tp and fp), so the AUC check covers ties
    proba = np.column_stack([1 - p_mal, p_mal])
    return y_true, proba


def thyroid_case(seed: int = 1, n: int = 80):
    """Four classes with some signal in the scores, every class present."""
    rng = np.random.default_rng(seed)
    y_true = np.repeat(np.arange(4), n // 4)
    rng.shuffle(y_true)
    logits = rng.normal(size=(n, 4)) + 1.2 * np.eye(4)[y_true]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y_true, proba


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# --- binary -------------------------------------------------------------------------


def test_binary_matches_hand_computed_confusion_matrix():
    y_true, proba = binary_case()
    r = no_warnings(classification_metrics, y_true, proba, classes=BINARY)
    assert (r["n"], r["n_pos"], r["tp"], r["fn"], r["fp"], r["tn"]) == (20, 8, 6, 2, 1, 11)
    expected = {
        "accuracy": 17 / 20,
        "balanced_accuracy": (6 / 8 + 11 / 12) / 2,
        "sensitivity": 6 / 8,
        "specificity": 11 / 12,
        "ppv": 6 / 7,
        "npv": 11 / 13,
        "lr_plus": (6 / 8) / (1 / 12),
        "lr_minus": (2 / 8) / (11 / 12),
        "f1": 2 * 6 / (2 * 6 + 1 + 2),
        "auc": pairwise_auc(proba[y_true == 1, 1], proba[y_true == 0, 1]),
    }
    for k, v in expected.items():
        assert r[k] == pytest.approx(v), k
    assert set(METRICS) <= set(r)


def test_binary_matches_sklearn():
    y_true, proba = binary_case(seed=3)
    y_pred = proba.argmax(1)
    r = classification_metrics(y_true, proba, classes=BINARY)
    lr_plus, lr_minus = class_likelihood_ratios(y_true, y_pred, labels=[0, 1])
    assert r["sensitivity"] == pytest.approx(recall_score(y_true, y_pred, pos_label=1))
    assert r["specificity"] == pytest.approx(recall_score(y_true, y_pred, pos_label=0))
    assert r["ppv"] == pytest.approx(precision_score(y_true, y_pred, pos_label=1))
    assert r["npv"] == pytest.approx(precision_score(y_true, y_pred, pos_label=0))
    assert r["f1"] == pytest.approx(f1_score(y_true, y_pred, pos_label=1))
    assert r["auc"] == pytest.approx(roc_auc_score(y_true, proba[:, 1]))
    assert r["lr_plus"] == pytest.approx(lr_plus)
    assert r["lr_minus"] == pytest.approx(lr_minus)
    assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_explicit_y_pred_overrides_argmax():
    y_true, proba = binary_case()
    y_pred = np.ones_like(y_true)  # everything called malignant
    r = classification_metrics(y_true, proba, classes=BINARY, y_pred=y_pred)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (8, 12, 0, 0)
    assert r["sensitivity"] == 1.0 and r["specificity"] == 0.0
    assert r["lr_plus"] == pytest.approx(1.0)
    assert math.isnan(r["lr_minus"])  # (1 - 1) / 0
    # The AUC still ranks the scores, not the predictions.
    assert r["auc"] == pytest.approx(roc_auc_score(y_true, proba[:, 1]))


def test_switching_positive_swaps_the_roles():
    y_true, proba = binary_case()
    mal = classification_metrics(y_true, proba, classes=BINARY, positive="malignant")
    ben = classification_metrics(y_true, proba, classes=BINARY, positive="benign")
    assert ben["sensitivity"] == pytest.approx(mal["specificity"])
    assert ben["specificity"] == pytest.approx(mal["sensitivity"])
    assert ben["ppv"] == pytest.approx(mal["npv"])
    assert ben["npv"] == pytest.approx(mal["ppv"])
    assert (ben["tp"], ben["fp"], ben["tn"], ben["fn"]) == (mal["tn"], mal["fn"], mal["tp"], mal["fp"])
    assert ben["n_pos"] == 12
    # LR+ of the flipped test is spec/(1-sens) = 1 / LR- of the original.
    assert ben["lr_plus"] == pytest.approx(1 / mal["lr_minus"])
    assert ben["lr_minus"] == pytest.approx(1 / mal["lr_plus"])
    assert ben["f1"] == pytest.approx(f1_score(y_true, proba.argmax(1), pos_label=0))
    # Rows sum to 1, so flipping both the labels and the scored column leaves the
    # ranking, hence the AUC, unchanged (it is NOT 1 - AUC) ...
    assert ben["auc"] == pytest.approx(mal["auc"])
    assert ben["auc"] == pytest.approx(roc_auc_score(y_true == 0, proba[:, 0]))
    # ... while scoring the benign label by the malignant column would give 1 - AUC.
    assert roc_auc_score(y_true == 0, proba[:, 1]) == pytest.approx(1 - mal["auc"])
    assert ben["accuracy"] == mal["accuracy"]
    assert ben["balanced_accuracy"] == pytest.approx(mal["balanced_accuracy"])


def test_default_positive():
    assert default_positive(["benign", "malignant"]) == "malignant"
    assert default_positive(["malignant", "benign"]) == "malignant"
    assert default_positive(["Benign", "Malignant"]) == "Malignant"
    assert default_positive(["normal", "abnormal"]) == "abnormal"  # classes[1]
    assert default_positive(THYROID) is None


def test_default_positive_used_when_malignant_is_first():
    y_true, proba = binary_case()
    # Same data with the class order reversed: index 0 is now "malignant".
    r = classification_metrics(1 - y_true, proba[:, ::-1], classes=["malignant", "benign"])
    ref = classification_metrics(y_true, proba, classes=BINARY)
    for k in [*METRICS, "tp", "fp", "tn", "fn", "n_pos"]:
        assert r[k] == pytest.approx(ref[k]), k


def test_binary_degenerate_cases_are_nan_without_warnings():
    # One class only in y_true: specificity, NPV, both LRs and the AUC are undefined.
    r = no_warnings(classification_metrics, [1, 1, 1], [[0.2, 0.8]] * 3, classes=BINARY)
    assert r["sensitivity"] == 1.0 and r["ppv"] == 1.0
    for k in ("specificity", "npv", "lr_plus", "lr_minus", "auc"):
        assert math.isnan(r[k]), k
    # Nothing predicted positive: PPV undefined, LR+ = 0/0.
    y_true, proba = binary_case()
    r = no_warnings(classification_metrics, y_true, proba, classes=BINARY, y_pred=np.zeros(20, int))
    assert math.isnan(r["ppv"]) and math.isnan(r["lr_plus"])
    assert r["sensitivity"] == 0.0 and r["specificity"] == 1.0 and r["f1"] == 0.0
    assert r["lr_minus"] == pytest.approx(1.0)
    # A perfect test: specificity 1 makes LR+ nan by convention (not inf).
    y = np.array([0, 0, 1, 1])
    r = no_warnings(classification_metrics, y, np.eye(2)[y], classes=BINARY)
    assert r["auc"] == 1.0 and r["lr_minus"] == 0.0 and math.isnan(r["lr_plus"])


# --- multi-class --------------------------------------------------------------------


def test_four_class_matches_sklearn():
    y_true, proba = thyroid_case()
    y_pred = proba.argmax(1)
    r = no_warnings(classification_metrics, y_true, proba, classes=THYROID)
    report = classification_report(y_true, y_pred, labels=range(4), output_dict=True, zero_division=np.nan)
    recall = recall_score(y_true, y_pred, average=None, labels=range(4))
    precision = precision_score(y_true, y_pred, average=None, labels=range(4))
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=range(4))
    for k, c in enumerate(THYROID):
        tn, fp, fn, tp = mcm[k].ravel()
        assert r[f"sensitivity[{c}]"] == pytest.approx(recall[k])
        assert r[f"sensitivity[{c}]"] == pytest.approx(report[str(k)]["recall"])
        assert r[f"ppv[{c}]"] == pytest.approx(precision[k])
        assert r[f"f1[{c}]"] == pytest.approx(report[str(k)]["f1-score"])
        assert r[f"specificity[{c}]"] == pytest.approx(tn / (tn + fp))
        assert r[f"npv[{c}]"] == pytest.approx(tn / (tn + fn))
        assert r[f"lr_plus[{c}]"] == pytest.approx((tp / (tp + fn)) / (fp / (tn + fp)))
        assert r[f"lr_minus[{c}]"] == pytest.approx((fn / (tp + fn)) / (tn / (tn + fp)))
        assert r[f"auc[{c}]"] == pytest.approx(roc_auc_score(y_true == k, proba[:, k]))
    assert r["accuracy"] == pytest.approx(report["accuracy"])
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert r["sensitivity"] == pytest.approx(r["balanced_accuracy"])
    assert r["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert r["auc"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
    for m in PER_CLASS_METRICS:
        per_class = [r[f"{m}[{c}]"] for c in THYROID]
        assert r[m] == pytest.approx(np.mean(per_class)), m
        assert r[f"{m}_macro"] == r[m]
    # The signal in the scores must show, or the checks above prove little.
    assert r["auc"] > 0.7 and r["accuracy"] > 0.4
    assert not any(k in r for k in ("tp", "n_pos"))


def test_four_class_unnormalized_scores_are_normalized_for_auc():
    y_true, proba = thyroid_case(seed=5)
    votes = np.round(proba * 25)  # vote counts of 25 trees, rows not summing to 1
    votes[votes.sum(1) == 0, 0] = 1
    r = classification_metrics(y_true, votes, classes=THYROID)
    shares = votes / votes.sum(1, keepdims=True)
    assert r["auc"] == pytest.approx(roc_auc_score(y_true, shares, multi_class="ovr"))
    assert r == classification_metrics(y_true, shares, classes=THYROID)
    # Decision scores with negative entries go through a softmax rather than failing.
    r = no_warnings(classification_metrics, y_true, np.log(proba), classes=THYROID)
    assert r["auc"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr"))


def test_four_class_with_positive_reports_that_class():
    y_true, proba = thyroid_case()
    plain = classification_metrics(y_true, proba, classes=THYROID)
    r = classification_metrics(y_true, proba, classes=THYROID, positive="graves")
    for m in PER_CLASS_METRICS:
        assert r[m] == r[f"{m}[graves]"], m
        assert r[f"{m}_macro"] == plain[m], m
    assert r["accuracy"] == plain["accuracy"]
    assert r["balanced_accuracy"] == plain["balanced_accuracy"]
    tn, fp, fn, tp = multilabel_confusion_matrix(y_true, proba.argmax(1), labels=[1])[0].ravel()
    assert (r["tp"], r["fp"], r["tn"], r["fn"], r["n_pos"]) == (tp, fp, tn, fn, tp + fn)
    assert r["sensitivity"] == pytest.approx(recall_score(y_true == 1, proba.argmax(1) == 1))


def test_four_class_absent_class_is_nan_without_warnings():
    y_true, proba = thyroid_case()
    keep = y_true != 3  # no thyroiditis in this fold ...
    y_true, proba = y_true[keep], proba[keep]
    y_pred = proba.argmax(1)
    y_pred[:2] = 3  # ... but it is predicted for two images
    r = no_warnings(classification_metrics, y_true, proba, classes=THYROID, y_pred=y_pred)
    for m in ("auc", "sensitivity", "lr_plus", "lr_minus"):
        assert math.isnan(r[f"{m}[thyroiditis]"]), m
    assert r["ppv[thyroiditis]"] == 0.0 and r["f1[thyroiditis]"] == 0.0
    assert r["specificity[thyroiditis]"] == pytest.approx(np.mean(y_pred != 3))
    # Macro means skip the undefined class, like balanced accuracy does.
    present = THYROID[:3]
    assert r["auc"] == pytest.approx(np.mean([roc_auc_score(y_true == k, proba[:, k]) for k in range(3)]))
    assert r["sensitivity"] == pytest.approx(np.mean([r[f"sensitivity[{c}]"] for c in present]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    # Only one class left: every AUC is undefined, still no warning.
    r = no_warnings(classification_metrics, [2, 2, 2], np.eye(4)[[2, 2, 1]], classes=THYROID)
    assert math.isnan(r["auc"]) and r["accuracy"] == pytest.approx(2 / 3)


# --- output and input ---------------------------------------------------------------


@pytest.mark.parametrize("classes", [BINARY, THYROID])
def test_values_are_plain_python_numbers(classes):
    y_true, proba = binary_case() if len(classes) == 2 else thyroid_case()
    r = classification_metrics(y_true.tolist(), proba.tolist(), classes=classes)
    assert all(type(v) in (float, int) for v in r.values()), {k: type(v) for k, v in r.items()}
    assert json.loads(json.dumps(r)).keys() == r.keys()


def test_integral_float_and_bool_labels_are_accepted():
    y_true, proba = binary_case()
    ref = classification_metrics(y_true, proba, classes=BINARY)
    assert classification_metrics(y_true.astype(float), proba, classes=BINARY) == ref
    assert classification_metrics(y_true.astype(bool), proba, classes=BINARY) == ref


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proba": np.full((4, 3), 1 / 3)}, r"shape \(n, 2\)"),
        ({"proba": np.full(4, 0.5)}, r"shape \(n, 2\)"),
        ({"y_true": [0, 1, 0]}, "inconsistent numbers of samples"),
        ({"y_pred": [0, 1]}, "inconsistent numbers of samples"),
        ({"y_true": [0, 1, 2, 0]}, r"y_true has labels outside 0\.\.1: \[2\]"),
        ({"y_true": [0, -1, 1, 0]}, r"y_true has labels outside 0\.\.1: \[-1\]"),
        ({"y_pred": [0, 1, 5, 0]}, r"y_pred has labels outside 0\.\.1: \[5\]"),
        ({"y_true": [0, 0.5, 1, 0]}, "integer class indices"),
        ({"y_true": ["benign", "malignant", "benign", "benign"]}, "integer class indices"),
        ({"proba": [[0.5, 0.5], [np.nan, 0.5], [0.2, 0.8], [0.9, 0.1]]}, "NaN"),
        ({"y_true": [], "proba": np.empty((0, 2))}, "empty"),
        ({"y_true": [], "proba": np.empty((0, 2)), "y_pred": []}, "empty"),
        ({"positive": "cancer"}, r"'cancer' is not one of the classes \['benign', 'malignant'\]"),
        ({"classes": ["benign"]}, "at least 2 classes"),
        ({"classes": ["benign", "benign"]}, "must be different"),
        ({"classes": "ab"}, "sequence of class names"),
    ],
)
def test_invalid_input_raises(kwargs, message):
    args = {
        "y_true": [0, 1, 1, 0],
        "proba": [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]],
        "classes": BINARY,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        classification_metrics(args.pop("y_true"), args.pop("proba"), **args)


def test_unknown_positive_raises_for_multiclass_too():
    y_true, proba = thyroid_case()
    with pytest.raises(ValueError, match="'malignant' is not one of the classes"):
        classification_metrics(y_true, proba, classes=THYROID, positive="malignant")


def test_ranking_follows_each_metrics_direction():
    """LR- is better low: summarize ranks it low-first, in every form of its name."""
    import pandas as pd

    from workbench.evaluation.metrics import higher_is_better
    from workbench.evaluation.summary import summarize

    assert higher_is_better("auc") and not higher_is_better("lr_minus")
    assert not higher_is_better("lr_minus[benign]") and not higher_is_better("lr_minus_macro")
    assert higher_is_better("sensitivity[benign]") and higher_is_better("auc_macro")
    rows = [{"candidate": c, "candidate_id": c, "kind": "head", "size": 1, "fold": f, "lr_minus": v, "auc": 1 - v}
            for c, v in (("a", 0.4), ("b", 0.1), ("c", 0.7)) for f in ("0", "1", "test")]
    frame = pd.DataFrame(rows)
    assert list(summarize(frame, "lr_minus")["candidate"]) == ["b", "a", "c"]
    assert list(summarize(frame, "auc")["candidate"]) == ["b", "a", "c"]

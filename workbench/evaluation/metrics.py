"""Classification metrics for one set of predictions, binary or multi-class.

Everything is computed by scikit-learn where it has the metric (confusion matrices,
precision/recall/F1, balanced accuracy, ROC AUC, likelihood ratios); this module only
validates the input, picks the positive class, and lays the figures out as a flat
``{name: value}`` dict of plain Python numbers that serializes to JSON.

Conventions
-----------
* A figure whose definition divides by zero (no positives in ``y_true``, nothing
  predicted positive, AUC with one class present, ...) is ``nan``, never ``inf``:
  this is scikit-learn's own default (``zero_division=np.nan``,
  ``class_likelihood_ratios(replace_undefined_by=np.nan)``). In particular ``lr_plus``
  is ``nan`` when specificity is 1 (no false positives) and ``lr_minus`` is ``nan``
  when specificity is 0.
* Macro means average the classes whose figure is defined (``nan`` are skipped), as
  :func:`sklearn.metrics.balanced_accuracy_score` and ``zero_division=np.nan`` do.
* No warnings reach the caller for degenerate-but-valid input; invalid input raises
  :class:`ValueError`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    class_likelihood_ratios,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from workbench.core.registry import Registry
from workbench.errors import UnknownNameError
from workbench.evaluation.settings import SCORINGS

__all__ = [
    "METRICS", "METRIC_TABLE", "MetricInfo", "PER_CLASS_METRICS", "PROPORTION_METRICS", "SCORINGS",
    "UnknownMetricError", "classification_metrics", "default_positive", "higher_is_better", "list_metrics",
    "metric_info", "metric_label", "register_metric",
]


class UnknownMetricError(UnknownNameError):
    """A metric name that the metric table does not hold."""


@dataclass(frozen=True)
class MetricInfo:
    """What the workbench knows about one metric: one row of the metric table.

    Parameters
    ----------
    name
        Key in results and record columns (``"auc"``).
    label
        How tables name it (``"AUC"``, ``"balanced accuracy"``); figures capitalise it.
    higher_is_better
        Direction: which end is "best" and what "below the baseline" means.
    per_class
        Multi-class results also hold ``"{name}[{class}]"`` (one-vs-rest) and the macro
        mean ``"{name}_macro"``.
    binary_only
        Defined for two classes only (not computed for more).
    proportion
        A share of images (test intervals: Wilson, or a cluster bootstrap).
    compute
        ``compute(y_true, y_pred, proba) -> float`` (class indices, indices, ``(n, C)``
        scores) for a metric :func:`classification_metrics` does not compute itself.
    """

    name: str
    label: str
    higher_is_better: bool = True
    per_class: bool = False
    binary_only: bool = False
    proportion: bool = False
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray], float] | None = field(default=None, compare=False)


#: Every metric, in table order; :func:`register_metric` adds one.
METRIC_TABLE: Registry[MetricInfo] = Registry("metric", error=UnknownMetricError)
for _m in (
    MetricInfo("accuracy", "accuracy", proportion=True),
    MetricInfo("balanced_accuracy", "balanced accuracy"),
    MetricInfo("sensitivity", "sensitivity", per_class=True, proportion=True),
    MetricInfo("specificity", "specificity", per_class=True, proportion=True),
    MetricInfo("ppv", "PPV", per_class=True, proportion=True),
    MetricInfo("npv", "NPV", per_class=True, proportion=True),
    MetricInfo("lr_plus", "LR+", per_class=True),
    MetricInfo("lr_minus", "LR−", higher_is_better=False, per_class=True),
    MetricInfo("f1", "F1", per_class=True),
    MetricInfo("auc", "AUC", per_class=True),
):
    METRIC_TABLE.register(_m.name, _m)
del _m

#: Names of the scalar metrics every result has, in table order.
METRICS: tuple[str, ...] = tuple(METRIC_TABLE.names())
#: Metrics reported per class (``"sensitivity[benign]"``) in multi-class results.
PER_CLASS_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE.values() if m.per_class)
#: The proportions reported on test with a Wilson interval, in table order.
PROPORTION_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE.values() if m.proportion)
# SCORINGS (imported above from evaluation.settings): what nested CV may tune for; the
# inner selection (workbench.heads.nested.selection_score) implements each.


def register_metric(info: MetricInfo, *, replace: bool = False) -> MetricInfo:
    """Add a metric to the table (tables then label and order it; with ``compute``,
    :func:`classification_metrics` computes it)."""
    return METRIC_TABLE.register(info.name, info, replace=replace)


def list_metrics() -> list[str]:
    """Names of the metrics in the table, built-in ones first."""
    return METRIC_TABLE.names()


def metric_info(name: str) -> MetricInfo:
    """The table's row for ``name``.

    Raises
    ------
    UnknownMetricError
        Naming close matches.
    """
    return METRIC_TABLE.get(name)


def metric_label(name: str, *, capital: bool = False) -> str:
    """Table label of ``name`` (``capital``: first letter upper case, as figures and
    headers write it); a name the table lacks (``"auc_macro"``) is its own label."""
    label = METRIC_TABLE.get(name).label if name in METRIC_TABLE else name
    return label[:1].upper() + label[1:] if capital else label


def higher_is_better(name: str) -> bool:
    """Direction of ``name``, also of its per-class (``lr_minus[benign]``) and macro
    (``lr_minus_macro``) forms; names the table lacks count as higher-is-better."""
    base = name.split("[", 1)[0].removesuffix("_macro")
    return METRIC_TABLE.get(base).higher_is_better if base in METRIC_TABLE else True


_NAN = float("nan")


def default_positive(classes: Sequence[str]) -> str | None:
    """The positive class of a binary problem, or ``None`` for more than two classes.

    ``"malignant"`` (any letter case) when it is one of two classes, else ``classes[1]``
    (scikit-learn's ``pos_label=1`` habit).
    """
    if len(classes) != 2:
        return None
    for c in classes:
        if str(c).lower() == "malignant":
            return c
    return classes[1]


def classification_metrics(
    y_true,
    proba,
    *,
    classes: Sequence[str],
    positive: str | None = None,
    y_pred=None,
) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV, likelihood ratios, F1 and AUC.

    Parameters
    ----------
    y_true : array of int, shape (n,)
        True class indices into ``classes``.
    proba : array of float, shape (n, C)
        Class probabilities or scores, ``C == len(classes)``; rows may be vote shares.
    classes : sequence of str
        Class names, at least two, all different.
    positive : str, optional
        The positive class. Binary: default :func:`default_positive`. Multi-class:
        when given, the plain keys of :data:`METRICS` other than ``accuracy`` and
        ``balanced_accuracy`` describe this class against the rest.
    y_pred : array of int, shape (n,), optional
        Predicted class indices; default ``proba.argmax(1)``.

    Returns
    -------
    dict of str to float
        Binary: :data:`METRICS` for the positive class, plus the counts ``n``,
        ``n_pos``, ``tp``, ``fp``, ``tn``, ``fn`` (ints). Multi-class: ``n``,
        ``accuracy``, ``balanced_accuracy``, ``"{metric}[{class}]"`` (one-vs-rest) for
        each of :data:`PER_CLASS_METRICS`, their macro means as ``"{metric}_macro"``
        and, unless ``positive`` is given, also under the plain names. AUC is
        one-vs-rest on rows normalized to sum to 1 (see ``_as_probabilities``).
        Both: every metric registered with a ``compute`` (:func:`register_metric`).

    Raises
    ------
    ValueError
        Empty input, shapes or lengths that disagree, labels outside ``0..C-1``,
        non-finite ``proba``, bad ``classes`` or an unknown ``positive``.
    """
    names = _check_classes(classes)
    n_classes = len(names)
    y_true, proba, y_pred = _check_arrays(y_true, proba, y_pred, n_classes)
    if positive is None:
        positive = default_positive(names)
    elif positive not in names:
        raise ValueError(f"positive class {positive!r} is not one of the classes {names}")
    pos = None if positive is None else names.index(positive)

    # Binary AUC ranks the positive column as given (any score will do); multi-class
    # OvR AUC in scikit-learn needs rows that sum to 1.
    scores = proba if n_classes == 2 else _as_probabilities(proba)
    with warnings.catch_warnings():
        # Degenerate folds (a class absent, nothing predicted positive) are expected in
        # small medical data sets; their figures are nan by convention, not news.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        # e.g. "y_pred contains classes not in y_true", "A single label was found".
        warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")
        per_class = _per_class(y_true, y_pred, scores, n_classes)
        out: dict[str, float] = {
            "n": int(y_true.size),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        }
        if n_classes == 2:
            tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[1 - pos, pos]).ravel()
            out.update(_counts(tp, fp, tn, fn))
            out.update({m: per_class[m][pos] for m in PER_CLASS_METRICS})
        else:
            macro = _macro(y_true, scores, per_class, n_classes)
    if n_classes != 2:
        out.update(_multiclass(y_true, y_pred, per_class, macro, names, pos))
    out.update(_registered(y_true, y_pred, proba, n_classes))
    return out


def _macro(y_true: np.ndarray, scores: np.ndarray, per_class: dict[str, list[float]], n_classes: int
           ) -> dict[str, float]:
    """Macro means of the per-class figures over the classes where each is defined."""
    macro = {m: _nanmean(per_class[m]) for m in PER_CLASS_METRICS}
    if np.isin(np.arange(n_classes), y_true).all():
        # The documented scikit-learn figure; equal to the mean of the per-class AUCs.
        macro["auc"] = float(
            roc_auc_score(y_true, scores, multi_class="ovr", average="macro", labels=np.arange(n_classes))
        )
    # else scikit-learn would give nan for the whole problem; the mean over the
    # classes present is still informative, like balanced accuracy.
    return macro


def _multiclass(y_true: np.ndarray, y_pred: np.ndarray, per_class: dict[str, list[float]],
                macro: dict[str, float], names: list[str], pos: int | None) -> dict[str, float]:
    """``"{metric}[{class}]"``, ``"{metric}_macro"``, and the plain names: the macro means,
    or the ``pos`` class against the rest (with its counts)."""
    out: dict[str, float] = {}
    for m in PER_CLASS_METRICS:
        for k, c in enumerate(names):
            out[f"{m}[{c}]"] = per_class[m][k]
    for m in PER_CLASS_METRICS:
        out[f"{m}_macro"] = macro[m]
    if pos is None:
        out.update(macro)
    else:
        (tn, fp), (fn, tp) = multilabel_confusion_matrix(y_true, y_pred, labels=[pos])[0]
        out.update(_counts(tp, fp, tn, fn))
        out.update({m: per_class[m][pos] for m in PER_CLASS_METRICS})
    return out


def _registered(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """The metrics registered with a ``compute`` of their own (none of the built-in ones)."""
    return {m.name: float(m.compute(y_true, y_pred, proba)) for m in METRIC_TABLE.values()
            if m.compute is not None and not (m.binary_only and n_classes != 2)}


def _per_class(
    y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, n_classes: int
) -> dict[str, list[float]]:
    """One-vs-rest figures of every class, as lists of Python floats indexed by class."""
    labels = np.arange(n_classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=np.nan
    )
    # mcm[k] = [[tn, fp], [fn, tp]] of class k against the rest.
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    out: dict[str, list[float]] = {m: [] for m in PER_CLASS_METRICS}
    for k in labels:
        (tn, fp), (fn, _tp) = mcm[k]
        is_true, is_pred = y_true == k, y_pred == k
        lr_plus, lr_minus = class_likelihood_ratios(is_true, is_pred, labels=[False, True])
        out["sensitivity"].append(float(recall[k]))
        out["specificity"].append(_ratio(tn, tn + fp))
        out["ppv"].append(float(precision[k]))
        out["npv"].append(_ratio(tn, tn + fn))
        out["lr_plus"].append(float(lr_plus))
        out["lr_minus"].append(float(lr_minus))
        out["f1"].append(float(f1[k]))
        out["auc"].append(_auc(is_true, scores[:, k]))
    return out


def _auc(is_pos: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one class against the rest; nan when ``y_true`` has one side only."""
    if is_pos.all() or not is_pos.any():
        return _NAN
    return float(roc_auc_score(is_pos, score))


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows summing to 1, as multi-class OvR AUC requires; unchanged if they already do.

    Non-negative rows (vote counts, unnormalized probabilities) are divided by their
    sum, all-zero rows become uniform; rows of a matrix with negative entries are
    taken for decision scores and go through a softmax.
    """
    sums = scores.sum(axis=1)
    # The tolerance scikit-learn itself uses to accept probabilities.
    if np.allclose(sums, 1.0):
        return scores
    if (scores < 0).any():
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    out = np.full_like(scores, 1.0 / scores.shape[1])
    ok = sums > 0
    out[ok] = scores[ok] / sums[ok, None]
    return out


def _counts(tp, fp, tn, fn) -> dict[str, float]:
    tp, fp, tn, fn = int(tp), int(fp), int(tn), int(fn)
    return {"n_pos": tp + fn, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _ratio(num, den) -> float:
    return float(num) / float(den) if den else _NAN


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values; nan (without numpy's warning) when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else _NAN


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise ValueError(f"classes must be a sequence of class names, not the string {classes!r}")
    names = list(classes)
    if len(names) < 2:
        raise ValueError(f"need at least 2 classes, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be different, got {names}")
    return names


def _check_arrays(y_true, proba, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        proba = np.asarray(proba, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"proba must be a numeric (n, {n_classes}) array: {e}") from None
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise ValueError(
            f"proba must have shape (n, {n_classes}) for {n_classes} classes, got shape {proba.shape}"
        )
    if proba.shape[0] == 0:
        raise ValueError("empty input: no samples")
    if not np.isfinite(proba).all():
        raise ValueError("proba contains NaN or infinite values")
    y_true = _check_labels(y_true, "y_true", n_classes)
    y_pred = proba.argmax(axis=1) if y_pred is None else _check_labels(y_pred, "y_pred", n_classes)
    lengths = {"y_true": y_true.size, "proba": proba.shape[0], "y_pred": y_pred.size}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inconsistent numbers of samples: {lengths}")
    return y_true, proba, y_pred


def _check_labels(y, name: str, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"empty input: {name} has no samples")
    if y.dtype.kind in "biu":
        y = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        # Integral floats (e.g. read back from a CSV with missing cells) are indices too.
        y = y.astype(np.int64)
    else:
        raise ValueError(f"{name} must hold integer class indices 0..{n_classes - 1}, got dtype {y.dtype}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(
            f"{name} has labels outside 0..{n_classes - 1}: {sorted(set(y[bad].tolist()))[:10]}"
        )
    return y

"""The evaluation settings of a run: :class:`Protocol` and the scorings nested CV may tune for.

A light module (no numpy, pandas or scikit-learn), so the command line reads its
defaults without importing them; :mod:`workbench.evaluation.protocol` binds a protocol
to a manifest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

__all__ = ["EXTERNAL_PREFIX", "OPTIMISTIC_CV_MARK", "OPTIMISTIC_CV_WHY", "Protocol", "SCORINGS", "TEST_FOLD",
           "cv_fold_name", "external_fold_name", "fold_repeat", "fold_sort_key", "is_cv_fold", "is_external_fold"]

#: What nested CV may tune hyper-parameters for (first: the default).
SCORINGS: tuple[str, ...] = ("auc", "balanced_accuracy", "accuracy")

# ---- fold names -------------------------------------------------------------------
# Every record names the fold it evaluates. Three kinds, told apart by these functions
# only (never by comparing with "test" by hand: an external set is not a CV fold):
#   CV folds         "0".."k-1" (repeat 0, as runs made before repeats named them),
#                    "r1-0".."r1-{k-1}", ... for further repeats of the k-fold CV;
#   the test split   "test" (models fitted on the whole training split);
#   external sets    "ext-<name>" (the same fitted models, on another test set).

#: The fold name of the internal test split.
TEST_FOLD = "test"
#: Prefix of the fold names of external test sets.
EXTERNAL_PREFIX = "ext-"

#: Why a record's CV estimate is marked optimistic (its ``optimistic`` field), and the
#: mark tables put beside such a CV figure (not † or ‡: those mark values below the
#: baseline and degenerate models).
OPTIMISTIC_CV_WHY = ("features from a network that trained on the CV folds' images: fine-tuned features without "
                     "nested = true, or boxes predicted by a Y-Net trained on the training split")
OPTIMISTIC_CV_MARK = "§"


def cv_fold_name(repeat: int, fold: int) -> str:
    """The name of CV fold ``fold`` of repeat ``repeat`` (``"3"``, ``"r1-3"``)."""
    return str(fold) if repeat == 0 else f"r{repeat}-{fold}"


def external_fold_name(name: str) -> str:
    """The fold name under which external test set ``name`` is recorded."""
    return EXTERNAL_PREFIX + name


def is_external_fold(fold: Any) -> bool:
    """Whether ``fold`` names an external test set."""
    return str(fold).startswith(EXTERNAL_PREFIX)


def is_cv_fold(fold: Any) -> bool:
    """Whether ``fold`` is an outer CV fold (any repeat): what rankings and selection read."""
    f = str(fold)
    return f != TEST_FOLD and not f.startswith(EXTERNAL_PREFIX)


def fold_repeat(fold: Any) -> int:
    """The repeat a CV fold belongs to (0 for ``"3"``, 1 for ``"r1-3"``)."""
    f = str(fold)
    return int(f[1:].split("-", 1)[0]) if f.startswith("r") else 0


def fold_sort_key(fold: Any) -> tuple:
    """CV folds by (repeat, number), then the test split, then external sets by name."""
    f = str(fold)
    if f == TEST_FOLD:
        return (1, 0, 0, "")
    if f.startswith(EXTERNAL_PREFIX):
        return (2, 0, 0, f)
    number = f.rsplit("-", 1)[-1] if f.startswith("r") else f
    return (0, fold_repeat(f), int(number) if number.isdigit() else 0, f)


@dataclass(frozen=True)
class Protocol:
    """How a run is evaluated; everything that makes two results comparable.

    Parameters
    ----------
    cv
        Outer folds on the training split (CV estimates; ranking and selection).
    inner_cv
        Inner folds within each outer training fold (hyper-parameter search).
    seed
        Fixes every split and every seeded model.
    scoring
        What the inner search maximizes: one of :data:`SCORINGS`.
    positive
        The positive class of a binary task (``None``: the second class listed, or
        the malignant-sounding one; see :func:`default_positive`).
    groups
        Keep the images of one ``group`` (patient) in one fold when the manifest has
        groups; ``False`` ignores the column.
    repeats
        Repeats of the outer k-fold CV, each with its own seeded partition (repeat 0
        is the partition of ``seed`` itself); every candidate and baseline is evaluated
        on all ``repeats x cv`` folds.
    """

    cv: int = 5
    inner_cv: int = 3
    seed: int = 0
    scoring: str = "auc"
    positive: str | None = None
    groups: bool = True
    repeats: int = 1

    def __post_init__(self) -> None:
        for name, low in (("cv", 2), ("inner_cv", 2), ("seed", 0), ("repeats", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"protocol {name} = {v!r}: expected an integer >= {low}")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"protocol scoring = {self.scoring!r}: choose from {', '.join(SCORINGS)}")
        if self.positive is not None and (not isinstance(self.positive, str) or not self.positive):
            raise ConfigError(f"protocol positive = {self.positive!r}: expected a class name")
        if not isinstance(self.groups, bool):
            raise ConfigError(f"protocol groups = {self.groups!r}: expected true or false")

    def replace(self, **changes: Any) -> "Protocol":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

"""The evaluation protocol's splits: fixed once per run, shared by every candidate.

Outer: the manifest's own train/test split, plus stratified k-fold cross-validation on
the training split (grouped when the manifest has groups, so one patient's images never
straddle folds). Inner: the same kind of folds inside each training set, for choosing
hyper-parameters without touching the outer fold or the test set.

The folds are a function of the data, not of how it is listed: rows are put in a
canonical order (``order``: e.g. each image's content hash, ties by id) before they
are split, and labels are stratified by their class *name* (sorted), so reordering the
manifest's rows, reordering ``classes`` or renaming ids gives the same folds, the same
row order inside every fold and therefore the same fitted models.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from workbench.errors import WorkbenchError
from workbench.evaluation.settings import TEST_FOLD, cv_fold_name

__all__ = ["FoldError", "Splits", "make_folds", "repeat_seed"]

Fold = tuple[np.ndarray, np.ndarray]


class FoldError(WorkbenchError, ValueError):
    """The data cannot be split as asked (too few images of a class, one class only)."""


def _strat_codes(y: np.ndarray, classes: Sequence[str] | None) -> tuple[np.ndarray, list[str] | None]:
    """Labels re-coded by the rank of their class name, and the sorted names.

    Stratification then does not depend on the order of ``classes``.
    """
    if classes is None:
        return np.asarray(y), None
    names = sorted(classes)
    rank = np.array([names.index(c) for c in classes])
    y = np.asarray(y)
    return (rank[y] if len(y) else y), names


def _class_names(classes: Sequence[str] | None, k) -> str:
    if classes is not None and isinstance(k, (int, np.integer)) and 0 <= k < len(classes):
        return repr(classes[k])
    return repr(k) if isinstance(k, str) else str(k)


def make_folds(
    y: np.ndarray,
    n_splits: int,
    seed: int,
    groups: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    what: str = "training set",
) -> list[Fold]:
    """Stratified (group) k-fold positions ``(train, held_out)`` over ``y``.

    Raises
    ------
    FoldError
        If ``y`` holds one class only, if a class has fewer images (or groups) than
        folds, or if a fold's training or held-out part misses a class.
    """
    y = np.asarray(y)
    if n_splits < 2:
        raise FoldError(f"need at least 2 folds, got {n_splits}")
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        only = _class_names(classes, present[0]) if len(present) else "none"
        raise FoldError(f"the {what} holds a single class ({only}): nothing to classify")
    if groups is not None:
        units = {k: len(set(np.asarray(groups)[y == k])) for k in present}
        unit = "groups"
    else:
        units = dict(zip(present, counts))
        unit = "images"
    short = {k: n for k, n in units.items() if n < n_splits}
    if short:
        desc = ", ".join(f"{_class_names(classes, k)} has {n} {unit}" for k, n in short.items())
        raise FoldError(f"cannot make {n_splits} stratified folds of the {what}: {desc}")
    if groups is not None:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = list(cv.split(np.zeros(len(y)), y, groups))
    else:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = list(cv.split(np.zeros(len(y)), y))
    for i, (tr, va) in enumerate(folds):
        for part, rows in (("training", tr), ("held-out", va)):
            missing = sorted(set(present) - set(np.unique(y[rows])))
            if missing:
                names = ", ".join(_class_names(classes, k) for k in missing)
                raise FoldError(f"fold {i} of the {what}: class {names} missing from its {part} part "
                                "(too few images or groups of that class for this many folds)")
    return [(np.asarray(tr), np.asarray(va)) for tr, va in folds]


def repeat_seed(seed: int, repeat: int) -> int:
    """The partition seed of CV repeat ``repeat``: ``seed`` itself for repeat 0 (so a run
    with one repeat has the folds it always had), a seed drawn from ``(seed, repeat)``
    for the others (so repeats of seed 0 do not reuse seed 1's partition)."""
    if repeat == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0] % (2 ** 31 - 1))


@dataclass(frozen=True)
class Splits:
    """Outer folds and test rows over a run's image order.

    Attributes
    ----------
    train, test : ndarray of int
        Row indices of the training and test splits (test may be empty), listed in
        the canonical order of :meth:`build`'s ``order``.
    folds : list of (ndarray, ndarray)
        Outer CV folds as row indices into the full arrays (subsets of ``train``): the
        ``n_splits`` folds of repeat 0, then those of repeat 1, ...
    n_splits, inner_splits, seed, repeats : int
    groups : ndarray or None
    """

    train: np.ndarray
    test: np.ndarray
    folds: list[Fold]
    n_splits: int
    inner_splits: int
    seed: int
    groups: np.ndarray | None = None
    repeats: int = 1

    @property
    def fold_names(self) -> list[str]:
        """The CV folds' names, parallel to :attr:`folds` (``"0"``.., ``"r1-0"``..)."""
        return [cv_fold_name(i // self.n_splits, i % self.n_splits) for i in range(len(self.folds))]

    @classmethod
    def build(
        cls,
        y: np.ndarray,
        split: Sequence[str | None],
        *,
        n_splits: int = 5,
        inner_splits: int = 3,
        seed: int = 0,
        groups: Sequence[str | None] | None = None,
        classes: Sequence[str] | None = None,
        order: Sequence[Any] | None = None,
        repeats: int = 1,
    ) -> Splits:
        """Splits for labels ``y`` and per-row split names.

        Rows whose split is ``"test"`` are the test set; every other row (``train``,
        ``val`` or no split) is training data for cross-validation.

        Parameters
        ----------
        order
            Per row, a sort key that does not depend on the listing (e.g. ``(sha256,
            id)``). Rows are split in this order and every index array of the result
            (``train``, ``test``, each fold's parts) lists rows in it, so models fitted
            on them see the same rows in the same order however the manifest is listed.
            Default: the row order itself.
        repeats
            Repeats of the k-fold partition, each seeded by :func:`repeat_seed`.
        """
        y = np.asarray(y)
        split_arr = np.array([s if s is not None else "" for s in split], dtype=object)
        if order is None:
            canon = np.arange(len(y))
        else:
            if len(order) != len(y):
                raise ValueError(f"order has {len(order)} keys for {len(y)} rows")
            canon = np.array(sorted(range(len(y)), key=lambda i: order[i]), dtype=int)
        position = np.empty(len(y), dtype=int)
        position[canon] = np.arange(len(y))
        test = canon[split_arr[canon] == "test"]
        train = canon[split_arr[canon] != "test"]
        g = None
        if groups is not None and any(v not in (None, "") for v in groups):
            g = np.array(["" if v is None else str(v) for v in groups], dtype=object)
            # An image without a group is its own group (named by its canonical position,
            # so the name does not depend on where the manifest lists it).
            lone = g == ""
            g[lone] = [f"__row{position[i]}" for i in np.flatnonzero(lone)]
            both = sorted(set(g[train]) & set(g[test]))
            if both:
                # The manifest's own split is given, not ours to change; but results on
                # it are optimistic, so say so loudly.
                shown = ", ".join(map(repr, both[:5])) + (" ..." if len(both) > 5 else "")
                warnings.warn(f"{len(both)} group(s) have images in both the training and the test split: "
                              f"{shown}; test results on this split are optimistic", stacklevel=3)
        if classes is not None:
            # A class seen only in the test split would leave every model without a column
            # for it (and the metrics without a meaning): refuse it by name.
            absent = [c for k, c in enumerate(classes) if np.any(y == k) and not np.any(y[train] == k)]
            if absent:
                raise FoldError(f"class(es) {absent} have images only in the test split, none in the "
                                f"training split: no model can learn them")
        y_strat, names = _strat_codes(y, classes)
        folds: list[Fold] = []
        for r in range(repeats):
            part = make_folds(y_strat[train], n_splits, repeat_seed(seed, r), None if g is None else g[train], names,
                              what="training split")
            folds += [(train[tr], train[va]) for tr, va in part]
        return cls(train, test, folds, n_splits, inner_splits, seed, g, repeats)

    def inner(self, rows: np.ndarray, y: np.ndarray, classes: Sequence[str] | None = None) -> list[Fold]:
        """Inner folds as positions within ``rows`` (the training rows of one outer fold)."""
        g = None if self.groups is None else self.groups[rows]
        y_strat, names = _strat_codes(np.asarray(y)[rows], classes)
        return make_folds(y_strat, self.inner_splits, self.seed, g, names,
                          what=f"training rows of an outer fold ({len(rows)} images)")

    def outer(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(fold name, training rows, evaluation rows)``: the CV folds of every repeat
        (``"0"``.., ``"r1-0"``..), then ``"test"``."""
        out = [(name, tr, va) for name, (tr, va) in zip(self.fold_names, self.folds)]
        if len(self.test):
            out.append((TEST_FOLD, self.train, self.test))
        return out

    def assignment(self, repeat: int = 0) -> list[str]:
        """Per row: its CV fold number in repeat ``repeat``, or ``"test"`` (``""``: neither)."""
        n = int(max([len(self.train) + len(self.test)] + [int(a.max()) + 1 for a in (self.train, self.test) if len(a)]))
        a = [""] * n
        for i, (_, va) in enumerate(self.folds[repeat * self.n_splits:(repeat + 1) * self.n_splits]):
            for r in va:
                a[r] = str(i)
        for r in self.test:
            a[r] = TEST_FOLD
        return a

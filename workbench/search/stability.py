"""Is the CV ranking stable across resamplings? The ranking of each CV repeat alone.

With ``[protocol] repeats = R > 1`` the search ranks candidates on the mean over the
``R x k`` outer CV folds. Each repeat is a k-fold CV of its own (its own seeded
partition), so ranking the candidates on one repeat's folds alone shows how much the
order depends on the partition: which candidate each repeat alone would select, where
the selected candidate and the best baseline land in it, and how well the repeats'
per-candidate means agree (Spearman and Kendall correlations between repeats).

Each repeat's order follows the main ranking's rule
(:func:`~workbench.evaluation.summary.summarize`: the CV mean in the metric's
direction, ties broken by candidate label) over every candidate of the ranking and
every baseline. A candidate that lacks a record of some fold of a repeat is left out
of that repeat's order (its mean there would cover other folds than the others'), and
:attr:`RankingStability.excluded` names it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

import pandas as pd
from scipy import stats as sps

from workbench.evaluation.metrics import metric_label
from workbench.evaluation.settings import fold_repeat, is_cv_fold
from workbench.evaluation.summary import summarize

__all__ = ["RankingStability", "RepeatStanding", "ranking_stability"]


@dataclass(frozen=True)
class RepeatStanding:
    """One CV repeat's ranking, alone.

    Attributes
    ----------
    repeat
        The repeat (0: folds ``"0"..``; r: folds ``"r{r}-0"..``).
    folds
        How many CV folds the repeat has in the records.
    first, first_mean
        The candidate this repeat alone would select (None: none eligible) and its mean
        metric over the repeat's folds.
    selected_rank, baseline_rank
        Rank (1 = best) of the selected candidate and of the best baseline among every
        candidate the repeat ranks; None when the candidate is not ranked in this repeat.
    n_candidates
        How many candidates (baselines included) the repeat ranks.
    excluded
        Candidates left out of this repeat: a fold of it has no record of theirs.
    """

    repeat: int
    folds: int
    first: str | None
    first_mean: float
    selected_rank: int | None
    baseline_rank: int | None
    n_candidates: int
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankingStability:
    """The per-repeat rankings of a repeated CV and their agreement.

    Attributes
    ----------
    metric, selected, baseline
        The ranking metric, the selected candidate and the best baseline (None: none).
    repeats
        One :class:`RepeatStanding` per repeat, in repeat order.
    pairs
        One row per pair of repeats: ``repeat_a``, ``repeat_b``, ``n`` (candidates ranked
        in both), ``spearman``, ``kendall`` (tau-b) of their per-candidate means; NaN
        with fewer than 3 common candidates or a constant column.
    """

    metric: str
    selected: str | None
    baseline: str | None
    repeats: list[RepeatStanding]
    pairs: pd.DataFrame = field(repr=False)

    @property
    def mean_spearman(self) -> float:
        """Mean pairwise Spearman correlation (NaN pairs left out; NaN if none)."""
        return _mean(self.pairs["spearman"])

    @property
    def mean_kendall(self) -> float:
        """Mean pairwise Kendall tau-b (NaN pairs left out; NaN if none)."""
        return _mean(self.pairs["kendall"])

    @property
    def excluded(self) -> dict[int, tuple[str, ...]]:
        """Repeat -> candidates left out of its ranking (only repeats that leave some out)."""
        return {s.repeat: s.excluded for s in self.repeats if s.excluded}

    def note(self) -> str:
        """One plain sentence for a report's notes."""
        r = len(self.repeats)
        sp, kt = self.pairs["spearman"], self.pairs["kendall"]
        n = sorted({s.n_candidates for s in self.repeats})
        text = (f"Ranking across the {r} CV repeats, each repeat's folds alone: Spearman {_range(sp)} between "
                f"repeats' per-candidate CV {metric_label(self.metric)} (Kendall {_range(kt)}; "
                f"{'/'.join(str(x) for x in n)} candidates ranked, baselines included)")
        if self.selected is not None:
            text += (f"; the selected candidate, {self.selected}, ranks "
                     f"{', '.join(_rank(s.selected_rank) for s in self.repeats)} in the repeats alone")
        if self.baseline is not None:
            text += (f"; the best baseline, {self.baseline}, ranks "
                     f"{', '.join(_rank(s.baseline_rank) for s in self.repeats)}")
        firsts = [s.first for s in self.repeats]
        if self.selected is not None and all(f == self.selected for f in firsts):
            text += "; every repeat alone would select it too"
        elif len(set(firsts)) == len(firsts):
            text += "; each repeat alone would select a different candidate: " + ", ".join(
                f"{f or 'none'} (repeat {s.repeat})" for f, s in zip(firsts, self.repeats))
        else:
            text += "; the repeats alone would select " + ", ".join(
                f"{f or 'none'} (repeat {s.repeat})" for f, s in zip(firsts, self.repeats))
        left = self.excluded
        if left:
            names = sorted({c for cs in left.values() for c in cs})
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            text += (f"; {len(names)} candidate{'s' if len(names) > 1 else ''} lacking a fold of repeat"
                     f"{'s' if len(left) > 1 else ''} {', '.join(str(k) for k in left)} "
                     f"{'are' if len(names) > 1 else 'is'} left out of that repeat's ranking ({shown})")
        return text


def _mean(v: pd.Series) -> float:
    v = v.astype(float).dropna()
    return float(v.mean()) if len(v) else float("nan")


def _range(v: pd.Series) -> str:
    """``0.85–0.91`` (``0.88`` when one value or all equal; ``–`` when none)."""
    v = v.astype(float).dropna()
    if not len(v):
        return "undefined"
    lo, hi = f"{v.min():.2f}", f"{v.max():.2f}"
    return lo if lo == hi else f"{lo}–{hi}"


def _rank(r: int | None) -> str:
    return "–" if r is None else str(r)


def _correlations(means: dict[int, pd.Series]) -> pd.DataFrame:
    """Spearman and Kendall of every pair of repeats' per-candidate means (common candidates)."""
    rows = []
    for a, b in combinations(sorted(means), 2):
        both = pd.concat([means[a], means[b]], axis=1, join="inner").dropna()
        rho = tau = float("nan")
        # Fewer than 3 points or a constant column say nothing (and make scipy warn).
        if len(both) >= 3 and both.iloc[:, 0].nunique() > 1 and both.iloc[:, 1].nunique() > 1:
            rho = float(sps.spearmanr(both.iloc[:, 0], both.iloc[:, 1]).statistic)
            tau = float(sps.kendalltau(both.iloc[:, 0], both.iloc[:, 1]).statistic)
        rows.append({"repeat_a": a, "repeat_b": b, "n": len(both), "spearman": rho, "kendall": tau})
    return pd.DataFrame(rows, columns=["repeat_a", "repeat_b", "n", "spearman", "kendall"])


def ranking_stability(records: pd.DataFrame, metric: str, selected: str | None, baseline: str | None = None,
                      eligible: Sequence[str] | None = None) -> RankingStability | None:
    """Each CV repeat's ranking alone, and how the repeats agree; None with one repeat.

    Parameters
    ----------
    records
        The records the search ranks (``candidate``, ``kind``, ``fold``, ``size`` and the
        ``metric`` column; test and external rows are ignored).
    metric
        The ranking metric (its direction sets the order).
    selected, baseline
        The search's selected candidate and best baseline, whose rank each repeat reports.
    eligible
        Candidates a repeat's first may be (the search's eligible pool); default: every
        candidate that is not a baseline.

    Returns
    -------
    RankingStability or None
        None when the CV records hold a single repeat (nothing to compare).
    """
    cv = records[records["fold"].map(is_cv_fold)]
    if cv.empty:
        return None
    rep = cv["fold"].map(fold_repeat)
    if rep.nunique() < 2:
        return None
    pool = set(eligible) if eligible is not None else set(cv.loc[cv["kind"] != "baseline", "candidate"])
    standings, means = [], {}
    for r in sorted(rep.unique()):
        sub = cv[rep == r]
        n_folds = sub["fold"].nunique()
        has = sub.groupby("candidate")["fold"].nunique()
        complete = has.index[has == n_folds]
        excluded = tuple(sorted(has.index[has < n_folds]))
        order = summarize(sub[sub["candidate"].isin(complete)], metric)
        if order.empty:  # no candidate has every fold of this repeat
            order = pd.DataFrame({"candidate": pd.Series([], dtype=str), f"cv_{metric}": pd.Series([], dtype=float)})
        names = list(order["candidate"])
        rank = {c: i + 1 for i, c in enumerate(names)}
        firsts = order[order["candidate"].isin(pool)]
        first = str(firsts["candidate"].iloc[0]) if len(firsts) else None
        first_mean = float(firsts[f"cv_{metric}"].iloc[0]) if len(firsts) else float("nan")
        standings.append(RepeatStanding(int(r), int(n_folds), first, first_mean, rank.get(selected),
                                        rank.get(baseline), len(names), excluded))
        means[int(r)] = order.set_index("candidate")[f"cv_{metric}"].astype(float)
    return RankingStability(metric, selected, baseline, standings, _correlations(means))

"""Critical-difference diagrams: Friedman's test and the Nemenyi post-hoc test as a figure.

Many candidates scored on the same blocks (the folds of a run's CV, or several datasets)
are compared by their ranks within each block: Friedman's test asks whether any differ,
and the Nemenyi critical difference (CD) says which mean ranks are far enough apart
(Demšar 2006). The diagram draws the mean ranks on one axis, rank 1 (best) on the left,
and joins with a thick bar the candidates whose mean ranks lie within one CD of each
other: the test does not tell them apart.

The statistics are :func:`workbench.evaluation.stats.friedman_test` (scipy's
``friedmanchisquare``, ``studentized_range``) and the drawing is matplotlib's, not the
``autorank`` package's: autorank refuses fewer than 5 blocks (``workbench compare``
usually has 2-4 datasets), switches to a Wilcoxon test without a diagram for 2
candidates, prints to stdout whenever a test is forced, and imports pyplot; here one
code path serves every case, and the files go through
:func:`workbench.report.figures.save_figure` (same data, same bytes).

Examples
--------
>>> scores = pd.DataFrame({"A": [.91, .90, .93], "B": [.88, .86, .90], "C": [.80, .84, .83]},
...                       index=["busi", "thyroid", "breastmnist"])  # doctest: +SKIP
>>> paths, result = cd_diagram_figure(scores, "paper/fig4_cd")  # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.evaluation import stats
from workbench.evaluation.metrics import higher_is_better as _higher_is_better, metric_label
from workbench.evaluation.settings import fold_sort_key, is_cv_fold
from workbench.report.figures import _new_figure, _rc, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CDInputError", "cd_axes", "cd_diagram_figure", "cliques", "cv_cd_section", "friedman_note"]


class CDInputError(WorkbenchError, ValueError):
    """Scores a critical-difference diagram cannot be drawn from (too few blocks or
    candidates, a missing value, unknown candidates); the message names them."""


def cliques(mean_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs of sorted mean ranks that lie within ``cd`` of each other.

    Parameters
    ----------
    mean_ranks
        Mean ranks in ascending order (best first).
    cd
        The critical difference.

    Returns
    -------
    list of (first, last)
        Index ranges (inclusive) of the sorted ranks the Nemenyi test does not separate,
        each not contained in an earlier one; a candidate apart from all others is in none.
    """
    r = np.asarray(mean_ranks, dtype=float)
    if np.any(np.diff(r) < 0):
        raise CDInputError("mean_ranks must be sorted in ascending order")
    out: list[tuple[int, int]] = []
    last = -1
    for i in range(len(r)):
        # A tiny tolerance: two mean ranks exactly one CD apart count as "within".
        j = int(np.searchsorted(r, r[i] + cd + 1e-12, side="right")) - 1
        if j > i and j > last:
            out.append((i, j))
            last = j
    return out


def friedman_note(result: stats.FriedmanResult, what: str) -> str:
    """One sentence with the Friedman statistic, its p value and the CD, for a report."""
    p = "< 0.001" if result.p_value < 0.001 else f"= {result.p_value:.3f}"
    return (f"Friedman test over {result.n_blocks} {what} of {result.n_treatments} candidates: "
            f"χ²({result.df}) = {result.statistic:.2f}, p {p}; Nemenyi critical difference at α = "
            f"{result.alpha:g}: CD = {result.cd:.2f} (mean ranks that differ by more are different).")


def _check_scores(scores: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(scores, pd.DataFrame):
        raise CDInputError(f"scores must be a DataFrame (blocks x candidates), got {type(scores).__name__}")
    names = [str(c) for c in scores.columns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CDInputError(f"candidate names must be unique; repeated: {', '.join(dup)}")
    values = scores.apply(pd.to_numeric, errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise CDInputError(f"scores hold no finite value for candidate {names[j]!r} in block {scores.index[i]!r}")
    values.columns = names
    return values


def cd_axes(names: Sequence[str], mean_ranks: Sequence[float], cd: float, *, title: str | None = None,
            caption: str | None = None) -> "Figure":
    """Draw a critical-difference diagram on a new figure (not saved).

    Parameters
    ----------
    names, mean_ranks
        Candidates and their mean ranks (any order; drawn best first).
    cd
        The critical difference: drawn as a scale bar, and the reach of the bars that
        join candidates the test does not separate.
    title, caption
        Text above and below the diagram.

    Returns
    -------
    Figure
        Its rank lines carry ``gid`` ``"cd:<name>"`` and the joining bars ``"clique:<i>-<j>"``.
    """
    import matplotlib

    order = np.argsort(np.asarray(mean_ranks, dtype=float), kind="stable")
    r = np.asarray(mean_ranks, dtype=float)[order]
    labels = [str(names[i]) for i in order]
    k = len(r)
    groups = cliques(r, cd)
    left = math.ceil(k / 2)  # the better half is labelled on the left, the rest on the right
    lo, hi = 1.0, float(max(k, math.ceil(r.max())))
    row, bar_gap = 0.28, 0.12
    first = 0.3 + bar_gap * len(groups)  # names start below the joining bars
    depth = first + row * max(left, k - left)
    with matplotlib.rc_context(_rc()):
        fig = _new_figure((6.4, 0.9 + depth * 0.62))
        ax = fig.add_subplot()
        ax.set_axis_off()
        # Room for the CD scale bar too: with few blocks the CD can exceed the rank range.
        ax.set_xlim(lo - 0.05 * (hi - lo), max(hi, lo + cd) + 0.05 * (hi - lo))
        ax.set_ylim(-depth - 0.1, 1.0)
        line = dict(color="black", linewidth=0.8, solid_capstyle="butt", clip_on=False)
        ax.plot([lo, hi], [0, 0], **line)
        for t in np.arange(lo, hi + 0.25, 0.5):
            major = float(t).is_integer()
            ax.plot([t, t], [0, 0.1 if major else 0.05], **line)
            if major:
                ax.text(t, 0.14, f"{int(t)}", ha="center", va="bottom")
        # The CD as a scale bar above the axis, from rank 1.
        ax.plot([lo, lo + cd], [0.62, 0.62], gid="cd-scale", **line)
        for x in (lo, lo + cd):
            ax.plot([x, x], [0.56, 0.68], **line)
        ax.text(lo + cd / 2, 0.7, f"CD = {cd:.2f}", ha="center", va="bottom")
        for i, (name, rank) in enumerate(zip(labels, r)):
            on_left = i < left
            y = -(first + row * (i if on_left else k - 1 - i))
            end = lo - 0.03 * (hi - lo) if on_left else hi + 0.03 * (hi - lo)
            ax.plot([rank, rank, end], [0, y, y], gid=f"cd:{name}", **line)
            ax.text(end + (-0.01 if on_left else 0.01) * (hi - lo), y, f"{name} ({rank:.2f})" if on_left
                    else f"({rank:.2f}) {name}", ha="right" if on_left else "left", va="center")
        for g, (i, j) in enumerate(groups):
            y = -(0.18 + bar_gap * g)
            ax.plot([r[i] - 0.03, r[j] + 0.03], [y, y], color="black", linewidth=2.6, solid_capstyle="butt",
                    gid=f"clique:{i}-{j}")
        if title:
            ax.set_title(title)
        if caption:
            ax.text(0.0, -depth - 0.1, caption, transform=ax.transData, ha="left", va="top", fontsize=7,
                    color="0.25")
    return fig


def cd_diagram_figure(scores: pd.DataFrame, path: str | os.PathLike, *, alpha: float = 0.05,
                      higher_is_better: bool = True, title: str | None = None
                      ) -> tuple[list[Path], stats.FriedmanResult]:
    """Friedman's test over ``scores`` and its critical-difference diagram, as PNG and PDF.

    Parameters
    ----------
    scores
        Blocks (CV folds, datasets) in rows, candidates in columns, a metric's values.
    path
        Target of :func:`~workbench.report.figures.save_figure` (suffix replaced).
    alpha
        Level of the Nemenyi critical difference.
    higher_is_better
        Rank 1 to the highest value (``False`` for a metric where lower is better).
    title
        Figure title.

    Returns
    -------
    (paths, result)
        The PNG and the PDF, and the :class:`~workbench.evaluation.stats.FriedmanResult`
        (mean ranks in the order of ``scores``' columns).

    Raises
    ------
    CDInputError, StatsInputError
        A value that is missing or not finite, repeated candidate names, fewer than 3
        candidates or 2 blocks.
    """
    values = _check_scores(scores)
    result = stats.friedman_test(values.to_numpy(), alpha=alpha, higher_is_better=higher_is_better)
    p = "< 0.001" if result.p_value < 0.001 else f"= {result.p_value:.3f}"
    caption = (f"Mean ranks over N = {result.n_blocks} blocks (1 = best). Friedman χ²({result.df}) = "
               f"{result.statistic:.2f}, p {p}; bars join candidates within the Nemenyi CD (α = {alpha:g}).")
    fig = cd_axes(list(values.columns), result.mean_ranks, result.cd, title=title, caption=caption)
    return save_figure(fig, path), result


def cv_cd_section(records: pd.DataFrame, metric: str, candidates: Sequence[str], folder: str | os.PathLike,
                  alpha: float = 0.05) -> tuple[list[Path], list[str]]:
    """Friedman's test and the CD diagram of ``candidates`` over a run's CV folds (every repeat).

    Parameters
    ----------
    records
        ``ResultStore(run).frame()``: one row per record, metrics as columns.
    metric
        The metric compared (a records column).
    candidates
        The candidates to compare, e.g. the top 10 by CV and the baselines.
    folder
        Where ``cd-cv-<metric>.png`` / ``.pdf`` go.
    alpha
        Level of the critical difference.

    Returns
    -------
    (paths, notes)
        The figure's files (none when it cannot be drawn) and the report's sentences:
        the test's figures, or why there is no diagram, and which folds were left out.

    Raises
    ------
    CDInputError
        ``metric`` is not a records column, or a candidate has no CV record.
    """
    if metric not in records.columns:
        raise CDInputError(f"no metric {metric!r} in the records")
    names = list(dict.fromkeys(str(c) for c in candidates))
    cv = records[records["fold"].map(is_cv_fold) & records["candidate"].isin(names)]
    missing = [c for c in names if c not in set(cv["candidate"])]
    if missing:
        raise CDInputError(f"no CV records of {', '.join(repr(c) for c in missing)}")
    if len(names) < 3:
        return [], [f"No critical-difference diagram: Friedman's test needs at least 3 candidates, "
                    f"{len(names)} given."]
    scores = (cv.drop_duplicates(["candidate", "fold"], keep="last")
              .pivot(index="fold", columns="candidate", values=metric).reindex(columns=names).astype(float))
    scores = scores.loc[sorted(scores.index, key=fold_sort_key)]
    notes = []
    incomplete = ~np.isfinite(scores.to_numpy()).all(axis=1)
    if incomplete.any():
        # The test compares candidates on the same blocks: a fold some candidate lacks is left out.
        left = ", ".join(map(str, scores.index[incomplete][:5])) + (" ..." if incomplete.sum() > 5 else "")
        notes.append(f"{int(incomplete.sum())} of {len(scores)} CV folds left out of the Friedman test: a "
                     f"candidate has no {metric_label(metric)} there ({left}).")
        scores = scores[~incomplete]
    if len(scores) < 2:
        return [], notes + [f"No critical-difference diagram: Friedman's test needs at least 2 CV folds that "
                            f"every candidate has, {len(scores)} found."]
    path = Path(folder) / f"cd-cv-{metric}"
    paths, result = cd_diagram_figure(scores, path, alpha=alpha, higher_is_better=_higher_is_better(metric),
                                      title=f"CV {metric_label(metric)}: mean ranks over {len(scores)} folds")
    best = np.argsort(result.mean_ranks, kind="stable")[:3]
    notes.append(friedman_note(result, "CV folds (every repeat)") + " Best mean ranks: "
                 + ", ".join(f"{names[i]} ({result.mean_ranks[i]:.2f})" for i in best) + ".")
    notes.append("The CV folds share training images (and repeats share all images), so the blocks are not "
                 "independent as Friedman's test assumes: read its p value and the CD as descriptive.")
    return paths, notes

"""The search: rank every candidate on CV, select by CV only, test once, compare with statistics.

Honest selection: candidates (classical heads, concatenations, ensembles) are ranked by
the mean of the chosen metric over the outer CV folds of the training split; the top
one (and a top-k) are chosen from that ranking alone, among the candidates that are not
degenerate on the CV folds (:mod:`workbench.evaluation.degenerate`); when runners-up lie
within one standard error of the selected CV mean (Nadeau & Bengio's corrected one: the
folds overlap), a note says the selection is a near-tie. Each CV mean has a 95 %
interval of the same corrected variance, and each reported model a paired corrected
resampled t-test of its per-fold CV values against the best baseline's (``p_cv``).
The operating threshold of each model is Youden's index on its out-of-fold
predictions; for end-to-end baselines (one network per fold, each calibrated its own
way) it is each fold's Youden cut-off as a quantile of that fold's scores, applied as
the same quantile of the test network's scores on its own validation split
(:func:`workbench.evaluation.stats.fold_quantile_threshold`), so it does not follow the
test split's class balance. Only then are the selected
candidates and every baseline evaluated on the test split, with 95 % intervals (Wilson
for proportions, DeLong for AUC) and paired tests against the best non-degenerate
baseline (by CV) on the same test images: DeLong for AUC, exact McNemar for accuracy,
Holm-adjusted across the table. When the test split holds several images of one group
(patient), intervals and paired tests come from a cluster bootstrap over groups
instead. The study's "best on test" pick is reported in a row of its own, labelled
optimistic, and never feeds the selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.evaluation import stats
from workbench.evaluation.degenerate import DEGENERATE_MARK, degenerate_reason
from workbench.evaluation.metrics import PROPORTION_METRICS, UnknownMetricError, higher_is_better
from workbench.evaluation.store import ResultStore
from workbench.evaluation.summary import summarize
from workbench.errors import UnknownNameError, WorkbenchError
from workbench.evaluation.settings import OPTIMISTIC_CV_WHY, is_cv_fold
from workbench.search.stability import RankingStability, ranking_stability

__all__ = ["NoRecordsError", "REQUESTED_ROLE", "SearchResult", "UnknownCandidateError", "search", "run_search", "rank_candidates"]

class NoRecordsError(WorkbenchError, ValueError):
    """A run folder (or record subset) with no records to search."""


#: Role of the study's "best on test" row: shown apart, never a test we make.
OPTIMISTIC_ROLE = "best on test (optimistic)"
#: Role of a candidate added on request (``search(include=...)``): outside the Holm family.
REQUESTED_ROLE = "requested"


class UnknownCandidateError(UnknownNameError):
    """A candidate name that no record of the run holds; the message lists close names
    (not every name, as a registry's does: a run holds hundreds of candidates)."""

    def __init__(self, name: str, known: list[str]):
        import difflib

        close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.name = name
        super().__init__(f"no candidate {name!r} in the run's records ({len(known)} candidates){hint}")


@dataclass
class SearchResult:
    """What the search decided and measured."""

    metric: str
    ranking: pd.DataFrame  # every non-baseline candidate, best CV mean first
    baselines: pd.DataFrame  # the baselines' CV summary, best first
    selected: list[str]  # top-k by CV, best first
    best_baseline: str | None
    comparison: pd.DataFrame  # one row per reported model (see comparison_table)
    notes: list[str] = field(default_factory=list)
    degenerate: dict[str, str] = field(default_factory=dict)  # candidate -> why (degenerate.py's rule)
    near_ties: list[str] = field(default_factory=list)  # within one corrected SE of the selected CV mean
    grouping: dict[str, Any] | None = None  # groups of CV and test; "clustered": bootstrap statistics
    #: Per external test set (by name): the reported models, frozen, on it (search/external.py).
    external: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: Each CV repeat's ranking alone and the repeats' agreement (stability.py); None with one repeat.
    stability: RankingStability | None = None


def rank_candidates(records: pd.DataFrame, metric: str = "auc", alpha: float = 0.05
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CV ranking of candidates and of baselines; reads CV folds only for the order.

    Beside :func:`~workbench.evaluation.summary.summarize`'s columns, each row has the
    mean training and evaluation images per CV fold (``n_train``, ``n_eval``) and the
    ``1 - alpha`` interval of its CV mean, ``cv_<metric>_low``/``cv_<metric>_high``,
    from the corrected variance of Nadeau & Bengio (the folds overlap;
    :func:`~workbench.evaluation.stats.corrected_cv_interval`), clipped to [0, 1] for
    metrics that live there.
    """
    cv_only = records[records["fold"].map(is_cv_fold)]
    ranked = summarize(records, metric)  # test column shown, ranking by the CV mean
    order = summarize(cv_only, metric)[["candidate"]]  # recomputed without test rows at all
    ranked = order.merge(ranked, on="candidate", how="left")
    extra = pd.DataFrame([_cv_extent(cv_only, c, metric, alpha) for c in ranked["candidate"]],
                         columns=["n_train", "n_eval", f"cv_{metric}_low", f"cv_{metric}_high"])
    at = ranked.columns.get_loc(f"cv_{metric}_sd") + 1
    for i, col in enumerate(extra.columns):  # beside the CV mean and sd they qualify
        ranked.insert(at + i, col, extra[col].to_numpy())
    # CV estimates on features of a network fine-tuned on those folds are optimistic.
    flagged = set()
    if "optimistic" in cv_only.columns:
        flagged = set(cv_only.loc[cv_only["optimistic"].eq(True), "candidate"])
    ranked["optimistic_cv"] = ranked["candidate"].isin(flagged)
    is_base = ranked["kind"] == "baseline"
    return ranked[~is_base].reset_index(drop=True), ranked[is_base].reset_index(drop=True)


def _load(store: ResultStore, recs: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    return [store.predictions(r) for r in recs]


def _column(preds: list[dict[str, np.ndarray]], key: str, pos: int | None = None) -> np.ndarray:
    """``key`` of every prediction file, concatenated (``proba``: column ``pos`` when given)."""
    parts = [p[key] if pos is None or key != "proba" else p[key][:, pos] for p in preds]
    return np.concatenate(parts) if parts else np.array([])


def _operating_point(kind: str, oof: list[dict[str, np.ndarray]], p_apply: np.ndarray, pos: int
                     ) -> tuple[float, float, np.ndarray]:
    """``(threshold, quantile, out-of-fold calls)`` of a binary model.

    Classical candidates: Youden's index on their pooled out-of-fold predictions (one
    model per fold, all on the probability scale of one calibrated head). Baselines
    (one CNN per fold, each calibrated its own way): each fold's Youden cut-off as a
    quantile of its own scores, applied as that quantile of ``p_apply``, the test
    network's scores on its own validation split
    (:func:`workbench.evaluation.stats.fold_quantile_threshold`); ``quantile`` is NaN for
    the pooled rule.
    """
    ys = [np.asarray(o["y_true"]) == pos for o in oof]
    ps = [np.asarray(o["proba"])[:, pos] for o in oof]
    if kind == "baseline":
        thr, q = stats.fold_quantile_threshold(ys, ps, p_apply)
        calls = [stats.apply_threshold(p, stats.youden_threshold(y, p)) if len(np.unique(y)) == 2
                 else np.zeros(len(p), dtype=np.int64) for y, p in zip(ys, ps)]
        return thr, q, np.concatenate(calls) if calls else np.array([], dtype=np.int64)
    y_o = np.concatenate(ys) if ys else np.array([], dtype=bool)
    p_o = np.concatenate(ps) if ps else np.array([])
    thr = stats.youden_threshold(y_o, p_o) if len(np.unique(y_o)) == 2 else 0.5
    return thr, float("nan"), stats.apply_threshold(p_o, thr) if len(p_o) else np.array([], dtype=np.int64)


def _decide(store: ResultStore, by_key: dict[tuple[str, str], dict], candidate: str, kind: str, folds: list[str],
            pos: int | None, cv_auc: float, names: list[str]) -> dict[str, Any]:
    """Threshold, test calls and degeneracy of one candidate (no intervals yet)."""
    oof = _load(store, [by_key[(candidate, f)] for f in folds if (candidate, f) in by_key])
    test = by_key.get((candidate, "test"))
    row: dict[str, Any] = {"candidate": candidate}
    y_o = _column(oof, "y_true")
    if pos is None:  # several classes: argmax decisions
        calls_o = _column(oof, "proba").argmax(axis=1) if oof else np.array([], dtype=np.int64)
        row["_cv_reason"] = degenerate_reason(cv_auc=cv_auc, y=y_o, pred=calls_o, where="out-of-fold",
                                              names=names)
    if test is None:
        row.setdefault("_cv_reason", degenerate_reason(cv_auc=cv_auc))
        row["_test_reason"] = ""
        return row
    t = store.predictions(test)
    row["_ids"] = np.asarray(t["ids"]).astype(str)
    if pos is not None:
        p_t = np.asarray(t["proba"])[:, pos]
        # A baseline's test network is applied at the pooled fold quantile of its scores on
        # its own validation split (drawn like the training split, never trained on), so
        # the threshold does not move with the test split's class balance. Records made
        # before they held those scores fall back to the test scores (labels unread).
        p_apply = p_t
        if kind == "baseline":
            if "val_proba" in t and len(t["val_proba"]):
                p_apply = np.asarray(t["val_proba"])[:, pos]
            else:
                row["_threshold_on_test_scores"] = True
        thr, q, calls_o = _operating_point(kind, oof, p_apply, pos)
        bnames = [names[1 - pos], names[pos]]  # 0/1 = other/positive class
        row["_cv_reason"] = degenerate_reason(cv_auc=cv_auc, y=(y_o == pos).astype(int), pred=calls_o,
                                              where="out-of-fold", names=bnames)
        row.update(calls(t, pos, thr), threshold_quantile=q)
        row["_test_reason"] = degenerate_reason(y=row["_y"], pred=row["_pred"], names=bnames)
    else:
        row.update(calls(t, None, auc=test.get("metrics", {}).get("auc", np.nan)), threshold_quantile=np.nan)
        row["_test_reason"] = degenerate_reason(y=row["_y"], pred=row["_pred"], names=names)
    return row


def calls(predictions: dict[str, np.ndarray], pos: int | None, threshold: float = np.nan,
          auc: float = np.nan) -> dict[str, Any]:
    """Labels, scores and calls of a model's stored predictions on a test set: binary, the
    positive class's probability at ``threshold`` (chosen on out-of-fold predictions);
    several classes, the argmax and the record's macro ``auc``. The private ``_y``,
    ``_p``, ``_pred`` are what :func:`_figures` and the paired tests read."""
    if pos is not None:
        p = np.asarray(predictions["proba"])[:, pos]
        return {"threshold": threshold, "_y": (np.asarray(predictions["y_true"]) == pos).astype(int), "_p": p,
                "_pred": stats.apply_threshold(p, threshold)}
    return {"threshold": np.nan, "_y": np.asarray(predictions["y_true"]), "_p": None,
            "_pred": np.asarray(predictions["proba"]).argmax(axis=1), "_auc": auc}


def _figures(row: dict[str, Any], pos: int | None, alpha: float, groups: np.ndarray | None) -> dict[str, Any]:
    """Test figures with intervals: Wilson and DeLong, or a cluster bootstrap over ``groups``."""
    out: dict[str, Any] = {}
    if "_y" not in row:
        out["note"] = "no test record"
        return out
    yb, p_t, pred = row["_y"], row["_p"], row["_pred"]
    if pos is not None:
        if groups is not None:
            props = stats.cluster_bootstrap_proportions(yb, pred, groups, positive=1, alpha=alpha)
        else:
            props = stats.proportion_metrics(yb, pred, positive=1, alpha=alpha)
        auc = None
        if len(np.unique(yb)) == 2:
            auc = (stats.cluster_bootstrap_auc(yb, p_t, groups, alpha=alpha) if groups is not None
                   else stats.delong_interval(yb, p_t, alpha=alpha))
        out.update(threshold=row["threshold"], auc=auc.estimate if auc else np.nan,
                   auc_low=auc.low if auc else np.nan, auc_high=auc.high if auc else np.nan)
        for m in PROPORTION_METRICS:
            iv = props[m]
            out.update({m: iv.estimate, f"{m}_low": iv.low, f"{m}_high": iv.high})
        half = stats.proportion_metrics(yb, stats.apply_threshold(p_t, 0.5), positive=1, alpha=alpha)
        for m in ("accuracy", "sensitivity", "specificity"):
            out[f"{m}_at_0.5"] = half[m].estimate
    else:  # several classes: argmax decisions, macro AUC from the record, an interval on accuracy
        y_t = row["_y"]
        if groups is not None:
            iv = stats.cluster_bootstrap_proportions(y_t, pred, groups, alpha=alpha)["accuracy"]
            acc, lo, hi = iv.estimate, iv.low, iv.high
        else:
            k = int((pred == y_t).sum())
            acc = k / len(y_t)
            lo, hi = stats.wilson_interval(k, len(y_t), alpha)
        out.update(threshold=np.nan, accuracy=acc, accuracy_low=lo, accuracy_high=hi,
                   auc=row["_auc"], auc_low=np.nan, auc_high=np.nan)
    return out


def run_groups(store: ResultStore, groups: dict[str, str] | None = None) -> dict[str, str] | None:
    """Image id -> group (``""``: none), from ``groups`` or the run's ``splits.csv``."""
    if groups is not None:
        return {str(k): "" if v is None else str(v) for k, v in groups.items()}
    path = store.root / "splits.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "group" not in frame.columns:
        return None
    return dict(zip(frame["id"], frame["group"]))


def _grouping(group_of: dict[str, str] | None, store: ResultStore, test_ids: np.ndarray | None
              ) -> dict[str, Any] | None:
    """Groups of the CV and of the test split, and whether the test statistics must cluster."""
    if not group_of or not any(group_of.values()):
        return None
    info: dict[str, Any] = {}
    path = store.root / "splits.csv"
    if path.is_file():
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "fold" in frame.columns:
            train = frame[frame["fold"].map(is_cv_fold)]
            g = [v or f"\0{i}" for i, v in zip(train["id"], train["id"].map(group_of).fillna(""))]
            info.update(cv_groups=len(set(g)), cv_images=len(g))
    if test_ids is not None:
        g = [group_of.get(i, "") or f"\0{i}" for i in test_ids]
        sizes = pd.Series(g).value_counts()
        info.update(test_groups=int(len(sizes)), test_images=len(g), test_max_per_group=int(sizes.max()),
                    clustered=bool(stats.clustered([group_of.get(i, "") for i in test_ids])))
    return info


@dataclass
class _Context:
    """What every step of one search reads: the records, the protocol and the decisions."""

    store: ResultStore
    records: pd.DataFrame
    metric: str
    classes: list[str]
    pos: int | None  # index of the positive class of a binary run; None: several classes
    alpha: float
    cv: pd.DataFrame = field(default_factory=pd.DataFrame)  # CV summary of every candidate, by name
    cv_auc: dict[str, float] = field(default_factory=dict)
    decided: dict[str, dict[str, Any]] = field(default_factory=dict)  # see _decide
    reason: dict[str, str] = field(default_factory=dict)  # why degenerate ("": not)
    group_of: dict[str, str] | None = None
    clustered: bool = False


def search(run: str | ResultStore, metric: str = "auc", *, top_k: int = 3, alpha: float = 0.05,
           allow_optimistic: bool = False, records: pd.DataFrame | None = None,
           groups: dict[str, str] | None = None, include: tuple[str, ...] = ()) -> SearchResult:
    """Rank, select on CV, evaluate on test, compare with the best baseline (by CV).

    Parameters
    ----------
    run
        Run folder (or its store) holding sweep and baseline records.
    metric
        Ranking metric (a metric column of the records), mean over the CV folds.
    top_k
        How many top candidates (by CV) the comparison shows; the first is "selected".
    alpha
        1 - confidence level of the intervals.
    allow_optimistic
        Let candidates whose CV estimates are optimistic (features of a network
        fine-tuned on the CV folds) be selected. Off: they stay in the ranking and the
        tables, marked, but the selection takes the best clean candidates (nested
        fine-tuning makes fine-tuned features clean).
    records
        The records to rank: a subset of the store's (default: all of them).
    groups
        Image id -> group (patient); default: the ``group`` column of the run's
        ``splits.csv``. When a group holds two test images or more, test intervals and
        paired tests come from a cluster bootstrap over groups (2000 resamples, seed 0)
        instead of Wilson / DeLong / McNemar.
    include
        Candidates to add to the comparison (role ``"requested"``) when the selection
        does not show them, e.g. the one a model bundle exports; like the optimistic
        row, they are tested against the baseline but kept out of the Holm adjustment,
        so the table's other p values do not change.

    Notes
    -----
    Degenerate models (:mod:`workbench.evaluation.degenerate`) found on the CV folds are
    not eligible for selection; those found on the test split stay where CV put them
    but are flagged (``degenerate`` column, :attr:`SearchResult.degenerate`), and a
    degenerate baseline is never the one the others are compared against.
    """
    ctx = _context(run, metric, alpha, records)
    ranking, base_rank = rank_candidates(ctx.records, metric, alpha)
    notes = _decide_all(ctx, ranking, base_rank)
    pool = _eligible(ctx, ranking, allow_optimistic, notes)
    selected = list(pool["candidate"].head(top_k))
    near = _near_ties(pool, metric)
    if near:
        notes.append(near[1])
    best_baseline = _best_baseline(base_rank, notes)
    # Repeated CV: the ranking of each repeat alone (None with one repeat; reads CV folds only).
    stability = ranking_stability(ctx.records, metric, selected[0] if selected else None, best_baseline,
                                  eligible=list(pool["candidate"]))
    ctx.group_of = run_groups(ctx.store, groups)
    test_ids = next((d["_ids"] for d in ctx.decided.values() if "_ids" in d), None)
    grouping = _grouping(ctx.group_of, ctx.store, test_ids)
    ctx.clustered = bool(grouping and grouping.get("clustered"))
    rows = _report_rows(ctx, selected, base_rank, ranking)
    shown = {r["candidate"] for r in rows if r["role"] != OPTIMISTIC_ROLE}
    for c in include:
        if c not in ctx.cv.index:
            raise UnknownCandidateError(c, list(ctx.cv.index))
        if c not in shown:
            rows.append(_report_row(ctx, c, REQUESTED_ROLE))
    _paired_tests(ctx, rows, best_baseline, notes)
    _cv_tests(ctx, rows, best_baseline)
    from workbench.search.external import external_results  # it imports this module's helpers

    external = external_results(ctx, rows, best_baseline, notes)
    if not len(base_rank):
        notes.append("no end-to-end baseline in the records: nothing to compare against")
    _degenerate_note(ctx.reason, rows, notes)
    return SearchResult(metric, ranking, base_rank, selected, best_baseline, _comparison_frame(ctx, rows), notes,
                        degenerate={c: v for c, v in ctx.reason.items() if v}, near_ties=near[0] if near else [],
                        grouping=grouping, external=external, stability=stability)


def _context(run: str | ResultStore, metric: str, alpha: float, records: pd.DataFrame | None) -> _Context:
    """The store, its records (checked for ``metric``) and the run's classes."""
    store = run if isinstance(run, ResultStore) else ResultStore(run)
    records = store.frame() if records is None else records
    if records.empty:
        raise NoRecordsError(f"no records in {store.root}")
    if metric not in records.columns:
        raise UnknownMetricError(f"no metric {metric!r} in the records of {store.root}")
    classes = list(store.protocol()["classes"])
    positive = store.protocol().get("positive")
    pos = classes.index(positive) if positive is not None and len(classes) == 2 else None
    return _Context(store, records, metric, classes, pos, alpha)


def _decide_all(ctx: _Context, ranking: pd.DataFrame, base_rank: pd.DataFrame) -> list[str]:
    """Thresholds, test calls and degeneracy of every candidate (into ``ctx``); the first notes.

    The selection reads only the CV part of it (``"_cv_reason"``).
    """
    folds = sorted(f for f in ctx.records["fold"].unique() if is_cv_fold(f))
    by_key = {(r["candidate"], r["fold"]): r for r in ctx.store.current_records()}
    ctx.cv = pd.concat([ranking, base_rank]).set_index("candidate")
    ctx.cv_auc = {c: records_cv(ctx.records, c, "auc") for c in ctx.cv.index}
    ctx.decided = {c: _decide(ctx.store, by_key, c, ctx.cv.loc[c, "kind"], folds, ctx.pos, ctx.cv_auc[c],
                              ctx.classes) for c in ctx.cv.index}
    ctx.reason = {c: "; ".join(x for x in (d["_cv_reason"], d["_test_reason"]) if x) for c, d in ctx.decided.items()}
    ranking["degenerate"] = [ctx.reason[c] for c in ranking["candidate"]]
    base_rank["degenerate"] = [ctx.reason[c] for c in base_rank["candidate"]]
    stale = sorted(c for c, d in ctx.decided.items() if d.get("_threshold_on_test_scores"))
    if not stale:
        return []
    return [f"{', '.join(stale)}: records made before baselines stored their validation-split scores; the "
            f"test network's threshold is the quantile of its test scores (labels unread), which moves with "
            f"the test split's class balance. Re-run the baselines to refresh them (no training)"]


def _eligible(ctx: _Context, ranking: pd.DataFrame, allow_optimistic: bool, notes: list[str]) -> pd.DataFrame:
    """The candidates the selection may take: clean CV estimates (unless allowed), not
    degenerate on the CV folds; each exclusion says so in ``notes``."""
    pool = ranking
    if not allow_optimistic and ranking["optimistic_cv"].any() and (~ranking["optimistic_cv"]).any():
        pool = ranking[~ranking["optimistic_cv"]]
        notes.append(f"{int(ranking['optimistic_cv'].sum())} candidates with optimistic CV estimates "
                     f"({OPTIMISTIC_CV_WHY}) were not eligible for selection; fine-tune with nested = true to make "
                     f"them eligible")
    elif len(ranking) and ranking["optimistic_cv"].all():
        # Nothing clean to select from: the selection stands, and says what its CV figures are.
        notes.append(f"every candidate's CV estimate is optimistic ({OPTIMISTIC_CV_WHY}): the ranking and the "
                     f"selection compare optimistic estimates with each other, and the CV figures overstate what "
                     f"the models do on images no network saw; the test split's figures are clean")
    cv_bad = pool["candidate"].map(lambda c: bool(ctx.decided[c]["_cv_reason"]))
    if cv_bad.any() and (~cv_bad).any():
        notes.append(f"{int(cv_bad.sum())} candidates degenerate on the CV folds (one class for nearly all "
                     f"out-of-fold images, or CV AUC not above chance) were not eligible for selection")
        pool = pool[~cv_bad]
    return pool


def _best_baseline(base_rank: pd.DataFrame, notes: list[str]) -> str | None:
    """The best non-degenerate baseline by CV (None without one), said in ``notes`` when
    it is not simply the first."""
    fine = base_rank[base_rank["degenerate"] == ""]
    best = fine["candidate"].iloc[0] if len(fine) else None
    if len(base_rank) and best is None:
        notes.append("every baseline is degenerate: no paired comparison is made")
    elif len(base_rank) and best != base_rank["candidate"].iloc[0]:
        notes.append(f"the best baseline by CV, {base_rank['candidate'].iloc[0]}, is degenerate; comparisons are "
                     f"against the best non-degenerate baseline, {best}")
    return best


def _report_row(ctx: _Context, candidate: str, role: str) -> dict[str, Any]:
    """One row of the comparison: test figures with intervals, CV figures, role, and the
    private ``_y``/``_p``/``_pred``/``_ids``/``_groups`` the paired tests read."""
    d, pos, metric = ctx.decided[candidate], ctx.pos, ctx.metric
    g = None
    if ctx.clustered and "_ids" in d:
        g = np.array([ctx.group_of.get(i, "") for i in d["_ids"]], dtype=object)
    return {"candidate": candidate, **_figures(d, pos, ctx.alpha, g), "role": role,
            "kind": ctx.cv.loc[candidate, "kind"], "cv_auc": ctx.cv_auc[candidate],
            "cv_auc_sd": records_cv(ctx.records, candidate, "auc", sd=True),
            **dict(zip(("cv_auc_low", "cv_auc_high"), _cv_extent(ctx.records, candidate, "auc", ctx.alpha)[2:])),
            f"cv_{metric}": ctx.cv.loc[candidate, f"cv_{metric}"],
            **{f"cv_{metric}_{e}": ctx.cv.loc[candidate, f"cv_{metric}_{e}"] for e in ("low", "high")},
            **({"threshold_quantile": d.get("threshold_quantile", np.nan)} if pos is not None else {}),
            "degenerate": ctx.reason[candidate], "optimistic_cv": bool(ctx.cv.loc[candidate, "optimistic_cv"]),
            "interval_method": "cluster bootstrap" if g is not None
            else ("Wilson / DeLong" if pos is not None else "Wilson"),
            **{k: d[k] for k in ("_y", "_p", "_pred", "_ids") if k in d}, "_groups": g}


def _report_rows(ctx: _Context, selected: list[str], base_rank: pd.DataFrame, ranking: pd.DataFrame
                 ) -> list[dict[str, Any]]:
    """Rows of the selected candidates, the baselines and the study's optimistic pick."""
    rows = [_report_row(ctx, c, "selected" if i == 0 else "top-k") for i, c in enumerate(selected)]
    rows += [_report_row(ctx, b, "baseline") for b in base_rank["candidate"]]
    # The study's pick, shown apart: the candidate with the best *test* value. Optimistic.
    test_col = f"test_{ctx.metric}"
    if len(ranking) and ranking[test_col].notna().any():
        best_test = ranking.sort_values([test_col, "candidate"], ascending=[not higher_is_better(ctx.metric), True]
                                        ).iloc[0]["candidate"]
        rows.append(_report_row(ctx, best_test, OPTIMISTIC_ROLE))
    return rows


def _baseline_row(rows: list[dict[str, Any]], best_baseline: str | None) -> dict[str, Any] | None:
    return next((r for r in rows if r["candidate"] == best_baseline and r["role"] == "baseline"), None)


def _holm_into(rows: list[dict[str, Any]], compared: list[dict[str, Any]], key: str) -> None:
    """``<key>_holm``: Holm over the ``compared`` rows (the table's honest comparisons; the
    optimistic and requested rows are not tests we make), NaN on the others."""
    adj = stats.holm([r[key] for r in compared]) if compared else []
    for r, a in zip(compared, adj):
        r[f"{key}_holm"] = a
    for r in rows:
        r.setdefault(f"{key}_holm", np.nan)


def _paired_tests(ctx: _Context, rows: list[dict[str, Any]], best_baseline: str | None, notes: list[str]) -> None:
    """p values against the best baseline on the same test images, Holm-adjusted, into ``rows``."""
    base_row = _baseline_row(rows, best_baseline)
    compared = []
    for r in rows:
        r.update(p_auc=np.nan, p_accuracy=np.nan)
        if base_row is None or r["role"] == "baseline" or "_y" not in r or "_y" not in base_row:
            continue
        if not (np.array_equal(r["_y"], base_row["_y"]) and np.array_equal(r["_ids"], base_row["_ids"])):
            notes.append(f"{r['candidate']}: test images differ from the baseline's; no paired test")
            continue
        g = r["_groups"]
        if ctx.pos is not None and r["_p"] is not None:
            r["p_auc"] = (stats.cluster_bootstrap_test(r["_y"], g, p1=r["_p"], p2=base_row["_p"]).p_value
                          if g is not None else stats.delong_test(r["_y"], r["_p"], base_row["_p"]).p_value)
        r["p_accuracy"] = (stats.cluster_bootstrap_test(r["_y"], g, pred1=r["_pred"], pred2=base_row["_pred"]).p_value
                           if g is not None else stats.mcnemar_exact(r["_y"], r["_pred"], base_row["_pred"]).p_value)
        if r["role"] not in (OPTIMISTIC_ROLE, REQUESTED_ROLE):
            compared.append(r)
    for key in ("p_auc", "p_accuracy"):
        _holm_into(rows, compared, key)


def _cv_tests(ctx: _Context, rows: list[dict[str, Any]], best_baseline: str | None) -> None:
    """``p_cv``: every row's per-fold ranking metric against the best baseline's, paired by
    fold, by the corrected resampled t-test (the folds overlap; a plain paired t-test is
    anti-conservative), Holm-adjusted like the test columns. It reads no test images."""
    base_row = _baseline_row(rows, best_baseline)
    compared = []
    for r in rows:
        r["p_cv"] = np.nan
        if base_row is not None and r["role"] != "baseline":
            r["p_cv"] = _cv_ttest(ctx.records, r["candidate"], base_row["candidate"], ctx.metric)
            if r["role"] not in (OPTIMISTIC_ROLE, REQUESTED_ROLE):
                compared.append(r)
    _holm_into(rows, compared, "p_cv")


def _degenerate_note(reason: dict[str, str], rows: list[dict[str, Any]], notes: list[str]) -> None:
    """Name the degenerate models: those in the comparison first, then the others."""
    shown = set(r["candidate"] for r in rows)
    bad = sorted((c for c in reason if reason[c]), key=lambda c: (c not in shown, c))
    if bad:
        notes.append(f"{len(bad)} degenerate model{'s' if len(bad) > 1 else ''}, marked {DEGENERATE_MARK} and never "
                     f"counted as best: " + "; ".join(f"{c} ({reason[c]})" for c in bad[:10])
                     + (f"; and {len(bad) - 10} more (ranking.csv)" if len(bad) > 10 else ""))


def _comparison_frame(ctx: _Context, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The public comparison: rows without their private columns, and only the columns
    that say something for this run."""
    comparison = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    if not ctx.clustered:  # the ungrouped comparison keeps its columns
        comparison = comparison.drop(columns=["interval_method"], errors="ignore")
    if ctx.pos is None or not (comparison["kind"] == "baseline").any():
        comparison = comparison.drop(columns=["threshold_quantile"], errors="ignore")
    if not comparison["optimistic_cv"].any():  # only where some row's CV figure is optimistic
        comparison = comparison.drop(columns=["optimistic_cv"])
    return comparison


def _near_ties(pool: pd.DataFrame, metric: str) -> tuple[list[str], str] | None:
    """Candidates whose CV mean lies within one corrected standard error of the selected one's.

    A candidate is a near-tie when its CV mean is below the selected one's by less than
    the larger of their two standard errors: closer than that, the CV cannot tell them
    apart (the "one-standard-error" yardstick). CV folds share training images, so the
    standard error is Nadeau & Bengio's corrected one, ``sd * sqrt(1/J + n_eval/n_train)``
    over the ``J`` folds (``n_train``, ``n_eval``: the pool's mean images per fold), not
    ``sd / sqrt(J)``, which shrinks with every repeat of the CV while the data stay the same.
    """
    if len(pool) < 2:
        return None
    col, sd_col = f"cv_{metric}", f"cv_{metric}_sd"
    top = pool.iloc[0]
    ratio = pool["n_eval"].astype(float) / pool["n_train"].astype(float)
    se = pool[sd_col].astype(float) * np.sqrt(1.0 / pool["n_folds"].clip(lower=1).astype(float) + ratio)
    if not (np.isfinite(top[col]) and np.isfinite(se.iloc[0]) and top["n_folds"] > 1):
        return None
    rest = pool.iloc[1:]
    gap = top[col] - rest[col]
    close = rest[(gap < np.fmax(se.iloc[0], se.iloc[1:].fillna(0.0))).to_numpy()]
    if close.empty:
        return None
    se_of = dict(zip(pool["candidate"], se))
    shown = ", ".join(f"{c} ({m:.3f}, corrected SE {se_of[c]:.3f}, −{top[col] - m:.3f})" for c, m in
                      zip(close["candidate"].head(5), close[col].head(5)))
    more = f" and {len(close) - 5} more" if len(close) > 5 else ""
    text = (f"near-tie: the selection is not clear-cut: {len(close)} candidate{'s' if len(close) > 1 else ''} "
            f"lie{'' if len(close) > 1 else 's'} below the selected candidate's CV {metric} ({top[col]:.3f}, "
            f"corrected SE {se.iloc[0]:.3f}) by less than one corrected standard error (sd·√(1/J + n_test/n_train), "
            f"Nadeau & Bengio; the CV folds overlap): {shown}{more}; the CV does not separate them")
    return list(close["candidate"]), text


def _fold_series(records: pd.DataFrame, candidate: str, metric: str) -> pd.DataFrame:
    """``candidate``'s CV records indexed by fold name: ``metric``, ``n_train``, ``n_eval``
    (NaN where a record lacks them), rows with a non-finite ``metric`` left out."""
    cols = [metric, "n_train", "n_eval"]
    rows = records.loc[(records["candidate"] == candidate) & records["fold"].map(is_cv_fold)]
    out = rows.drop_duplicates("fold", keep="last").set_index("fold").reindex(columns=cols).astype(float)
    return out[np.isfinite(out[metric])]


#: Metrics of the metric table that live in [0, 1] (the likelihood ratios do not): their
#: CV intervals are clipped to it, as the test split's DeLong intervals are.
_UNIT_RANGE = frozenset({"auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"})


def _cv_extent(records: pd.DataFrame, candidate: str, metric: str, alpha: float) -> tuple[float, ...]:
    """``(n_train, n_eval, low, high)``: mean images per CV fold and the corrected
    interval of the CV mean; NaN where it cannot be computed (one fold, sizes unknown)."""
    f = _fold_series(records, candidate, metric) if metric in records.columns else pd.DataFrame()
    if f.empty:
        return (np.nan,) * 4
    n_train, n_eval = float(f["n_train"].mean()), float(f["n_eval"].mean())
    if len(f) < 2 or not (np.isfinite(n_train) and np.isfinite(n_eval)):
        return n_train, n_eval, np.nan, np.nan
    low, high = stats.corrected_cv_interval(f[metric].to_numpy(), n_train, n_eval, alpha)
    if metric.split("[", 1)[0].removesuffix("_macro") in _UNIT_RANGE:
        low, high = max(low, 0.0), min(high, 1.0)
    return n_train, n_eval, low, high


def _cv_ttest(records: pd.DataFrame, candidate: str, baseline: str, metric: str) -> float:
    """p of the corrected resampled t-test of ``candidate``'s per-fold ``metric`` against
    ``baseline``'s, paired by fold name over the folds both have; NaN with fewer than 2."""
    if metric not in records.columns:
        return np.nan
    a, b = _fold_series(records, candidate, metric), _fold_series(records, baseline, metric)
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return np.nan
    a, b = a.loc[common], b.loc[common]
    sizes = a[["n_train", "n_eval"]].fillna(b[["n_train", "n_eval"]])  # the same folds: the same sizes
    if sizes.isna().any().any():
        return np.nan
    return stats.corrected_resampled_ttest(a[metric].to_numpy(), b[metric].to_numpy(), sizes["n_train"].to_numpy(),
                                           sizes["n_eval"].to_numpy()).p_value


def records_cv(records: pd.DataFrame, candidate: str, metric: str, sd: bool = False) -> float:
    """CV mean (or sd) of ``metric`` for ``candidate``; NaN when the metric is absent."""
    if metric not in records.columns:
        return float("nan")
    v = records.loc[(records["candidate"] == candidate) & records["fold"].map(is_cv_fold), metric]
    return float(v.std(ddof=1) if sd else v.mean())


#: ``workbench.run_search``: :func:`search` under a name the package namespace can hold
#: (``workbench.search`` is the sub-package).
run_search = search

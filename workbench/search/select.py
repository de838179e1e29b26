"""The search: rank every candidate on CV, select by CV only, test once, compare with statistics.

Honest selection: candidates (classical heads, concatenations, ensembles) are ranked by
the mean of the chosen metric over the outer CV folds of the training split; the top
one (and a top-k) are chosen from that ranking alone; the operating threshold of each
model is Youden's index on its out-of-fold predictions. Only then are the selected
candidates and every end-to-end baseline evaluated on the test split, with 95 %
intervals (Wilson for proportions, DeLong for AUC) and paired tests against the best
baseline (by CV) on the same test images: DeLong for AUC, exact McNemar for accuracy,
Holm-adjusted across the table. The study's "best on test" pick is reported in a row
of its own, labelled optimistic, and never feeds the selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.search import stats
from workbench.search.store import ResultStore
from workbench.search.summary import summarize

__all__ = ["SearchResult", "search", "rank_candidates"]

PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


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


def rank_candidates(records: pd.DataFrame, metric: str = "auc") -> tuple[pd.DataFrame, pd.DataFrame]:
    """CV ranking of candidates and of baselines; reads CV folds only for the order."""
    cv_only = records[records["fold"] != "test"]
    ranked = summarize(records, metric)  # test column shown, ranking by the CV mean
    order = summarize(cv_only, metric)[["candidate"]]  # recomputed without test rows at all
    ranked = order.merge(ranked, on="candidate", how="left")
    # CV estimates on features of a network fine-tuned on those folds are optimistic.
    flagged = set()
    if "optimistic" in cv_only.columns:
        flagged = set(cv_only.loc[cv_only["optimistic"].eq(True), "candidate"])
    ranked["optimistic_cv"] = ranked["candidate"].isin(flagged)
    is_base = ranked["kind"] == "baseline"
    return ranked[~is_base].reset_index(drop=True), ranked[is_base].reset_index(drop=True)


def _predictions(store: ResultStore, recs: list[dict[str, Any]], positive_index: int | None):
    """Concatenated y_true and scores (positive-class probability, or the whole matrix)."""
    ys, ps = [], []
    for r in recs:
        pr = store.predictions(r)
        ys.append(pr["y_true"])
        ps.append(pr["proba"] if positive_index is None else pr["proba"][:, positive_index])
    return np.concatenate(ys), np.concatenate(ps)


def _evaluate(store: ResultStore, by_key: dict[tuple[str, str], dict], candidate: str, folds: list[str],
              pos: int | None, alpha: float) -> dict[str, Any]:
    """Youden threshold on out-of-fold predictions, then every test figure with intervals."""
    oof = [by_key[(candidate, f)] for f in folds if (candidate, f) in by_key]
    test = by_key.get((candidate, "test"))
    row: dict[str, Any] = {"candidate": candidate}
    if test is None:
        row["note"] = "no test record"
        return row
    y_t, p_t = _predictions(store, [test], pos)
    if pos is not None:
        y_o, p_o = _predictions(store, oof, pos)
        thr = stats.youden_threshold(y_o == 1, p_o) if len(np.unique(y_o == 1)) == 2 else 0.5
        yb = (y_t == pos).astype(int)
        pred = stats.apply_threshold(p_t, thr)
        props = stats.proportion_metrics(yb, pred, positive=1, alpha=alpha)
        auc = stats.delong_interval(yb, p_t, alpha=alpha) if len(np.unique(yb)) == 2 else None
        row.update(threshold=thr, auc=auc.estimate if auc else np.nan, auc_low=auc.low if auc else np.nan,
                   auc_high=auc.high if auc else np.nan)
        for m in PROPORTIONS:
            iv = props[m]
            row.update({m: iv.estimate, f"{m}_low": iv.low, f"{m}_high": iv.high})
        half = stats.proportion_metrics(yb, stats.apply_threshold(p_t, 0.5), positive=1, alpha=alpha)
        for m in ("accuracy", "sensitivity", "specificity"):
            row[f"{m}_at_0.5"] = half[m].estimate
        row["_y"], row["_p"], row["_pred"] = yb, p_t, pred
    else:  # several classes: argmax decisions, macro AUC from the record, Wilson on accuracy
        pred = p_t.argmax(axis=1)
        k = int((pred == y_t).sum())
        lo, hi = stats.wilson_interval(k, len(y_t), alpha)
        row.update(threshold=np.nan, accuracy=k / len(y_t), accuracy_low=lo, accuracy_high=hi,
                   auc=test.get("metrics", {}).get("auc", np.nan), auc_low=np.nan, auc_high=np.nan)
        row["_y"], row["_p"], row["_pred"] = y_t, None, pred
    return row


def search(run: str | ResultStore, metric: str = "auc", *, top_k: int = 3, alpha: float = 0.05,
           allow_optimistic: bool = False, records: pd.DataFrame | None = None) -> SearchResult:
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
    """
    store = run if isinstance(run, ResultStore) else ResultStore(run)
    records = store.frame() if records is None else records
    if records.empty:
        raise ValueError(f"no records in {store.root}")
    if metric not in records.columns:
        raise KeyError(f"no metric {metric!r} in the records of {store.root}")
    classes = list(store.protocol()["classes"])
    positive = store.protocol().get("positive")
    pos = classes.index(positive) if positive is not None and len(classes) == 2 else None
    ranking, base_rank = rank_candidates(records, metric)
    notes = []
    pool = ranking
    if not allow_optimistic and ranking["optimistic_cv"].any() and (~ranking["optimistic_cv"]).any():
        pool = ranking[~ranking["optimistic_cv"]]
        notes.append(f"{int(ranking['optimistic_cv'].sum())} candidates with optimistic CV estimates (features of "
                     f"networks fine-tuned on the CV folds) were not eligible for selection; fine-tune with "
                     f"nested = true to make them eligible")
    selected = list(pool["candidate"].head(top_k))
    best_baseline = base_rank["candidate"].iloc[0] if len(base_rank) else None
    folds = sorted(f for f in records["fold"].unique() if f != "test")
    by_key = {(r["candidate"], r["fold"]): r for r in store.records()}

    cv = pd.concat([ranking, base_rank]).set_index("candidate")

    def row(candidate: str, role: str) -> dict[str, Any]:
        return {**_evaluate(store, by_key, candidate, folds, pos, alpha), "role": role,
                "kind": cv.loc[candidate, "kind"], "cv_auc": records_cv(records, candidate, "auc"),
                "cv_auc_sd": records_cv(records, candidate, "auc", sd=True),
                f"cv_{metric}": cv.loc[candidate, f"cv_{metric}"]}

    rows = [row(c, "selected" if i == 0 else "top-k") for i, c in enumerate(selected)]
    rows += [row(b, "baseline") for b in base_rank["candidate"]]
    # The study's pick, shown apart: the candidate with the best *test* value. Optimistic.
    test_col = f"test_{metric}"
    if len(ranking) and ranking[test_col].notna().any():
        best_test = ranking.sort_values([test_col, "candidate"], ascending=[False, True]).iloc[0]["candidate"]
        rows.append(row(best_test, "best on test (optimistic)"))

    # Paired comparisons with the best baseline, on the same test images.
    base_row = next((r for r in rows if r["candidate"] == best_baseline and r["role"] == "baseline"), None)
    compared = []
    for r in rows:
        r.update(p_auc=np.nan, p_accuracy=np.nan)
        if base_row is None or r["role"] == "baseline" or "_y" not in r or "_y" not in base_row:
            continue
        if not np.array_equal(r["_y"], base_row["_y"]):
            notes.append(f"{r['candidate']}: test images differ from the baseline's; no paired test")
            continue
        if pos is not None and r["_p"] is not None:
            r["p_auc"] = stats.delong_test(r["_y"], r["_p"], base_row["_p"]).p_value
        r["p_accuracy"] = stats.mcnemar_exact(r["_y"], r["_pred"], base_row["_pred"]).p_value
        if r["role"] != "best on test (optimistic)":
            compared.append(r)
    # Holm over the table's honest comparisons (the optimistic row is not a test we make).
    for key in ("p_auc", "p_accuracy"):
        adj = stats.holm([r[key] for r in compared]) if compared else []
        for r, a in zip(compared, adj):
            r[f"{key}_holm"] = a
        for r in rows:
            r.setdefault(f"{key}_holm", np.nan)
    if best_baseline is None:
        notes.append("no end-to-end baseline in the records: nothing to compare against")
    comparison = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return SearchResult(metric, ranking, base_rank, selected, best_baseline, comparison, notes)


def records_cv(records: pd.DataFrame, candidate: str, metric: str, sd: bool = False) -> float:
    """CV mean (or sd) of ``metric`` for ``candidate``; NaN when the metric is absent."""
    if metric not in records.columns:
        return float("nan")
    v = records.loc[(records["candidate"] == candidate) & (records["fold"] != "test"), metric]
    return float(v.std(ddof=1) if sd else v.mean())

"""``workbench compare``: several runs (datasets, protocols) side by side.

Each run ranks its candidates on its own CV; here the candidates that every run holds
(the same labels: the same heads on the same feature codes, or the same baselines) are
laid side by side, ranked within each run, and ranked across the runs by their mean
rank: Demšar's (2006) comparison of classifiers over several data sets, with Friedman's
test and a critical-difference diagram whose blocks are the runs.

``across_inputs=True`` (``--across-inputs``) compares one task's runs on different
inputs, the question "does a Y-Net's predicted box do as well as the manual one, or the
whole image?": the same config run with ``input = "whole"``, ``input = "box"`` and
``input = "box"`` + ``boxes = "predicted:..."``. A block on predicted boxes carries its
own code (``Lp0`` for ``L0``), so each candidate is matched under the code its blocks
have on the image itself.

The runs may be of different tasks (that is the point), but they must score the same
kind of metric: runs with different numbers of classes (a binary AUC against a
macro-averaged one) are refused; runs whose class names or positive class differ are
compared, and the notes say so.

Examples
--------
>>> result = compare_runs(["runs/busi", "runs/thyroid", "runs/breastmnist"], top=10)  # doctest: +SKIP
>>> write_comparison(result, "paper/compare")  # doctest: +SKIP
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from workbench.core.io import atomic_write
from workbench.errors import ConfigError, WorkbenchError
from workbench.evaluation import stats
from workbench.evaluation.metrics import UnknownMetricError, higher_is_better, metric_label
from workbench.evaluation.settings import OPTIMISTIC_CV_MARK, OPTIMISTIC_CV_WHY, TEST_FOLD, is_cv_fold
from workbench.evaluation.store import ResultStore
from workbench.report.cd import cd_diagram_figure, friedman_note
from workbench.report.tables import Cell, Table, _mark, _num, fmt, fmt_mean_sd, fmt_p, optimistic_mark, write_table
from workbench.search.select import NoRecordsError, rank_candidates, run_groups

__all__ = ["CompareResult", "RunsDifferError", "compare_runs", "comparison_across_runs_table", "comparison_test_table",
           "write_comparison"]


class RunsDifferError(WorkbenchError, ValueError):
    """Runs that cannot be ranked together (their metrics mean different things), or no
    candidate that every run holds."""


@dataclass
class CompareResult:
    """Candidates common to several runs, ranked within each run and across them.

    Attributes
    ----------
    metric
        The metric compared (each run's CV mean of it).
    runs
        Run labels (folder names, made unique), in the order given.
    paths
        The run folders, in the same order.
    frame
        One row per compared candidate, best mean rank first: ``candidate``, ``kind``,
        per run ``<run>:cv_<metric>``, ``<run>:cv_<metric>_sd``, ``<run>:rank`` (rank among
        the compared candidates in that run, 1 = best, ties averaged), then ``mean_rank``.
    long
        The same in long form: ``candidate, kind, run, cv_<metric>, cv_<metric>_sd, rank``.
    scores
        Runs (rows) x candidates (columns): the CV means the ranks and the test read.
    friedman
        Friedman's test across the runs, when there are 2 runs or more and 3 candidates or more.
    notes
        What the reader must know: candidates left out, differing classes, why no test.
    test
        When every run is binary and holds the same test images (one task's runs on
        different inputs or protocols): per compared candidate, ``<run>:test_auc`` and,
        for each run after the first, ``<run>:p`` (paired test against the first run on
        the same images: DeLong, or a cluster bootstrap where groups hold several test
        images) and ``<run>:p_holm`` (Holm over the table); None otherwise (see notes).
    """

    metric: str
    runs: list[str]
    paths: list[Path]
    frame: pd.DataFrame
    long: pd.DataFrame
    scores: pd.DataFrame
    alpha: float = 0.05
    friedman: stats.FriedmanResult | None = None
    notes: list[str] = field(default_factory=list)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)  # per run: classes, positive, folds
    test: pd.DataFrame | None = None


def _labels(paths: list[Path]) -> list[str]:
    """Folder names, with as many parent folders as it takes to tell them apart."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _input_blind_labels(records: pd.DataFrame) -> dict[str, str]:
    """Each candidate's label with its predicted-box blocks under their plain blocks' codes
    (``[Lp0+Lp1] svm-rbf`` -> ``[L0+L1] svm-rbf``); labels without such blocks unchanged."""
    from workbench.features.options import PREDICTED_BOX_SUFFIX
    from workbench.search.candidates import block_codes, subset_code

    first = records.drop_duplicates("candidate")
    names = sorted({b for bs in first["blocks"] if isinstance(bs, list) for b in bs})
    if not any(n.endswith(PREDICTED_BOX_SUFFIX) for n in names):
        return {}
    plain = {n: n.removesuffix(PREDICTED_BOX_SUFFIX) for n in names}
    # Plain blocks of this run keep the codes they have; the others get the codes a run of them would give.
    have = {b: c for bs, cs in zip(first["blocks"], first["codes"]) if isinstance(bs, list)
            for b, c in zip(bs, cs) if not b.endswith(PREDICTED_BOX_SUFFIX)}
    canon = block_codes(sorted(set(plain.values())), given=have)
    out = {}
    for label, blocks, codes in zip(first["candidate"], first["blocks"], first["codes"]):
        if not isinstance(blocks, list) or not blocks or not any(b.endswith(PREDICTED_BOX_SUFFIX) for b in blocks):
            continue
        old = subset_code(blocks, dict(zip(blocks, codes)))
        new = subset_code([plain[b] for b in blocks], canon)
        out[label] = label.replace(old, new, 1)
    return out


def _run_summary(path: Path, metric: str, across_inputs: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run's CV ranking (candidates and baselines) and its protocol facts."""
    store = ResultStore(path)
    protocol = store.protocol()  # a folder without run.json is named by MissingFileError
    records = store.frame()
    if records.empty:
        raise NoRecordsError(f"no records in {path}")
    if metric not in records.columns:
        raise UnknownMetricError(f"no metric {metric!r} in the records of {path}")
    ranking, baselines = rank_candidates(records, metric)
    both = pd.concat([ranking, baselines], ignore_index=True)
    both = both[np.isfinite(both[f"cv_{metric}"].astype(float))]
    both["recorded_as"] = both["candidate"]  # the run's own label, for its test records
    if across_inputs:
        relabel = _input_blind_labels(records)
        both["candidate"] = both["candidate"].map(lambda c: relabel.get(c, c))
        clash = sorted(both["candidate"][both["candidate"].duplicated()])
        if clash:
            raise RunsDifferError(f"{path}: candidates on predicted and on plain boxes fall together as {clash[:3]}; "
                                  f"compare runs of one input each")
    folds = sorted({f for f in records["fold"].unique() if is_cv_fold(f)})
    info = {"classes": list(protocol.get("classes", [])), "positive": protocol.get("positive"),
            "folds": len(folds), "repeats": int(protocol.get("repeats", 1)), "candidates": len(both)}
    return both.set_index("candidate"), info


def _check_classes(labels: list[str], info: dict[str, dict[str, Any]], notes: list[str]) -> None:
    """Refuse runs with different numbers of classes; note different class names."""
    counts = {label: len(info[label]["classes"]) for label in labels}
    if len(set(counts.values())) > 1:
        shown = "; ".join(f"{label}: {', '.join(info[label]['classes'])}" for label in labels)
        raise RunsDifferError(f"the runs classify different numbers of classes ({shown}): a binary and a "
                              f"multi-class metric (e.g. AUC and macro AUC) are not the same quantity; compare "
                              f"runs of the same number of classes")
    names = {label: (tuple(info[label]["classes"]), info[label]["positive"]) for label in labels}
    if len(set(names.values())) > 1:
        notes.append("The runs' classes differ (" + "; ".join(
            f"{label}: {', '.join(c)}" + (f", positive {p}" if p else "") for label, (c, p) in names.items())
            + "): each candidate is ranked within its own run, so the ranks compare; the metric values are "
              "each run's own.")


def compare_runs(runs: Sequence[str | os.PathLike], metric: str = "auc", top: int | None = None,
                 alpha: float = 0.05, across_inputs: bool = False) -> CompareResult:
    """Rank the candidates that every run holds, within each run and across the runs.

    Parameters
    ----------
    runs
        Run folders (``records.jsonl`` and ``run.json``), e.g. one per dataset.
    metric
        Each candidate's CV mean of this metric is what is ranked.
    top
        Keep the ``top`` candidates with the best mean rank among all common ones; the
        ranks are then recomputed among them (``None``: all).
    alpha
        Level of the Nemenyi critical difference.
    across_inputs
        Match a candidate on a Y-Net's predicted boxes with the same candidate on the image
        or the manual box (runs of one task on different inputs; see the module's notes).

    Returns
    -------
    CompareResult

    Raises
    ------
    ConfigError
        Repeated runs, ``top < 1``, ``alpha`` outside (0, 1).
    RunsDifferError
        Runs with different numbers of classes, or no candidate common to all runs.
    MissingFileError, NoRecordsError, UnknownMetricError
        A folder that is not a run, a run without records, a metric a run lacks.
    """
    paths = [Path(r) for r in runs]
    if not paths:
        raise ConfigError("compare needs at least one run folder")
    resolved = [p.resolve() for p in paths]
    dup = sorted({str(p) for p, r in zip(paths, resolved) if resolved.count(r) > 1})
    if dup:
        raise ConfigError(f"run folders given twice: {', '.join(dup)}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ConfigError(f"top = {top!r}: expected a positive integer")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha = {alpha!r}: expected a level in (0, 1)")
    labels = _labels(paths)
    summaries, info = {}, {}
    for label, path in zip(labels, paths):
        summaries[label], info[label] = _run_summary(path, metric, across_inputs)
    notes: list[str] = []
    _check_classes(labels, info, notes)
    common = sorted(set.intersection(*(set(s.index) for s in summaries.values())))
    if not common:
        raise RunsDifferError(f"no candidate is in every run ({', '.join(labels)}): the runs share no head on the "
                              f"same feature codes and no baseline")
    _note_left_out(summaries, common, notes)
    col = f"cv_{metric}"
    scores = pd.DataFrame({c: [float(summaries[label].loc[c, col]) for label in labels] for c in common},
                          index=pd.Index(labels, name="run"))
    if top is not None and top < len(common):
        keep = _order(scores, metric)[:top]
        notes.append(f"The {top} candidates with the best mean rank among the {len(common)} that every run holds; "
                     f"ranks recomputed among them.")
        scores = scores[keep]
    ranks = _ranks(scores, metric)
    order = _order(scores, metric)
    scores, ranks = scores[order], ranks[order]
    frame = pd.DataFrame({"candidate": order, "kind": [str(summaries[labels[0]].loc[c, "kind"]) for c in order]})
    long_rows = []
    for label in labels:
        s = summaries[label]
        frame[f"{label}:{col}"] = scores.loc[label].to_numpy()
        frame[f"{label}:{col}_sd"] = [float(s.loc[c, f"{col}_sd"]) for c in order]
        frame[f"{label}:rank"] = ranks.loc[label].to_numpy()
        flags = [bool(s.loc[c, "optimistic_cv"]) for c in order]
        if any(flags):  # only where a run's CV figures are optimistic (see OPTIMISTIC_CV_WHY)
            frame[f"{label}:optimistic_cv"] = flags
        long_rows += [{"candidate": c, "kind": frame.at[i, "kind"], "run": label, col: scores.at[label, c],
                       f"{col}_sd": frame.at[i, f"{label}:{col}_sd"], "rank": ranks.at[label, c]}
                      for i, c in enumerate(order)]
    frame["mean_rank"] = ranks.mean(axis=0).to_numpy()
    marked = [label for label in labels if f"{label}:optimistic_cv" in frame.columns]
    if marked:
        favour = "it" if len(marked) == 1 else "them"
        notes.append(f"{OPTIMISTIC_CV_MARK}: an optimistic CV estimate ({OPTIMISTIC_CV_WHY}), in "
                     f"{', '.join(marked)}: ranks against the other runs favour {favour}.")
    friedman = None
    if len(labels) < 2:
        notes.append("One run: no ranking across runs and no critical-difference diagram (give two runs or more).")
    elif len(order) < 3:
        notes.append(f"{len(order)} candidate{'s' if len(order) != 1 else ''} in every run: Friedman's test and "
                     f"the critical-difference diagram need at least 3.")
    else:
        friedman = stats.friedman_test(scores.to_numpy(), alpha=alpha, higher_is_better=higher_is_better(metric))
    test = _test_split_comparison(labels, paths, info, {label: summaries[label]["recorded_as"] for label in labels},
                                  frame, notes) if len(labels) > 1 else None
    return CompareResult(metric, labels, paths, frame, pd.DataFrame(long_rows), scores, alpha, friedman, notes, info,
                         test)


def _test_records(store: ResultStore) -> dict[str, dict[str, Any]]:
    """Each candidate's test record (the last one wins), from one read of the records."""
    return {r["candidate"]: r for r in store.current_records() if r["fold"] == TEST_FOLD}


def _test_predictions(store: ResultStore, rec: dict[str, Any], pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, y 0/1, p of the positive class)`` of a test record's predictions, by id."""
    pr = store.predictions(rec)
    ids = np.asarray(pr["ids"]).astype(str)
    order = np.argsort(ids, kind="stable")
    return ids[order], (np.asarray(pr["y_true"])[order] == pos).astype(int), np.asarray(pr["proba"])[order, pos]


def _test_split_comparison(labels: list[str], paths: list[Path], info: dict[str, dict[str, Any]],
                           recorded_as: dict[str, pd.Series], frame: pd.DataFrame, notes: list[str]
                           ) -> pd.DataFrame | None:
    """Test AUC of each compared candidate in each run, paired against the first run on
    the same test images (see :class:`CompareResult`); None, with a note, where the runs'
    test splits cannot be paired."""
    if any(len(info[label]["classes"]) != 2 or info[label]["positive"] is None for label in labels):
        return None  # the CV comparison's own notes cover several classes
    stores = {label: ResultStore(path) for label, path in zip(labels, paths)}
    tests = {label: _test_records(stores[label]) for label in labels}
    pos = {label: info[label]["classes"].index(info[label]["positive"]) for label in labels}
    got = {}  # candidate -> run -> (ids, y, p): the candidates with a test record in every run
    for cand in frame["candidate"]:
        recs = {label: tests[label].get(str(recorded_as[label][cand])) for label in labels}
        if all(r is not None for r in recs.values()):
            got[cand] = {label: _test_predictions(stores[label], r, pos[label]) for label, r in recs.items()}
    if not got:
        notes.append("No compared candidate has a test record in every run: no test-split table.")
        return None
    first = labels[0]
    ids, y, _ = next(iter(got.values()))[first]
    if any(not (np.array_equal(v[0], ids) and np.array_equal(v[1], y)) for runs in got.values() for v in runs.values()):
        notes.append("The runs' test splits hold different images (or labels): no paired test-split table.")
        return None
    group_of = run_groups(stores[first]) or {}
    groups = [group_of.get(i, "") for i in ids]
    clustered = stats.clustered(groups)
    rows = []
    for cand, kind in zip(frame["candidate"], frame["kind"]):
        if cand not in got:
            continue
        row: dict[str, Any] = {"candidate": cand, "kind": kind}
        for label in labels:
            row[f"{label}:test_auc"] = (float(roc_auc_score(y, got[cand][label][2])) if len(set(y)) == 2
                                        else float("nan"))
        for label in labels[1:]:
            p1, p2 = got[cand][label][2], got[cand][first][2]
            row[f"{label}:p"] = (stats.cluster_bootstrap_test(y, groups, p1=p1, p2=p2).p_value if clustered
                                 else stats.delong_test(y, p1, p2).p_value)
        rows.append(row)
    test = pd.DataFrame(rows)
    adjusted = stats.holm(test[[f"{label}:p" for label in labels[1:]]].to_numpy().ravel())
    for k, label in enumerate(labels[1:]):
        test[f"{label}:p_holm"] = adjusted.reshape(len(test), len(labels) - 1)[:, k]
    test.attrs["clustered"] = clustered
    return test


def comparison_test_table(result: CompareResult, *, key: str = "compare-test-auc") -> Table:
    """The test-split comparison (:attr:`CompareResult.test`) as a table: per run the test
    AUC, and for each run after the first its paired p against the first (Holm)."""
    if result.test is None:
        raise ValueError("no test-split comparison in this result (see its notes)")
    first = result.runs[0]
    columns = ["Model", *[f"{run}: test AUC" for run in result.runs],
               *[f"{run} vs {first}: p (Holm)" for run in result.runs[1:]]]
    rows = []
    for _, r in result.test.iterrows():
        row = [Cell(str(r["candidate"]) + (" (baseline)" if r["kind"] == "baseline" else ""))]
        row += [Cell(fmt(r[f"{run}:test_auc"]), _num(r[f"{run}:test_auc"])) for run in result.runs]
        row += [Cell(f"{fmt_p(r[f'{run}:p'])} ({fmt_p(r[f'{run}:p_holm'])})", _num(r[f"{run}:p"]))
                for run in result.runs[1:]]
        rows.append(row)
    for j in range(1, 1 + len(result.runs)):
        _mark(rows, j, ref=None, higher=True)
    how = ("a percentile cluster bootstrap of the AUC difference over the first run's groups, which hold several "
           "test images" if result.test.attrs.get("clustered") else "DeLong's test of two correlated AUCs")
    notes = [f"Test AUC of each candidate the runs share, on the test split they share (the same images and "
             f"labels); p: paired against {first} on those images, by {how}; Holm: adjusted over every p of the "
             f"table. Bold: the best test AUC of its column. Selection never reads these figures: they compare "
             f"inputs or protocols, not candidates within a run."]
    return Table(f"Candidates across runs: test AUC, paired against {first}", columns, rows, notes, key)


def _ranks(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rank of each candidate within each run (row), 1 = best, ties averaged."""
    values = scores.to_numpy()
    r = rankdata(-values if higher_is_better(metric) else values, method="average", axis=1)
    return pd.DataFrame(r, index=scores.index, columns=scores.columns)


def _order(scores: pd.DataFrame, metric: str) -> list[str]:
    """Candidates by mean rank, then by mean CV value (best first), then by label."""
    mean_rank = _ranks(scores, metric).mean(axis=0)
    mean = scores.mean(axis=0) * (-1.0 if higher_is_better(metric) else 1.0)
    key = pd.DataFrame({"r": mean_rank, "m": mean, "c": scores.columns}, index=scores.columns)
    return list(key.sort_values(["r", "m", "c"], kind="stable").index)


def _note_left_out(summaries: dict[str, pd.DataFrame], common: list[str], notes: list[str]) -> None:
    """Name the candidates some run lacks (the first ten) and where they are."""
    kept = set(common)
    where: dict[str, list[str]] = {}
    for label, s in summaries.items():
        for c in s.index:
            if c not in kept:
                where.setdefault(c, []).append(label)
    if not where:
        return
    shown = "; ".join(f"{c} (only in {', '.join(runs)})" for c, runs in sorted(where.items())[:10])
    more = f"; and {len(where) - 10} more" if len(where) > 10 else ""
    notes.append(f"{len(where)} candidate{'s' if len(where) > 1 else ''} not in every run, left out: {shown}{more}.")


def comparison_across_runs_table(result: CompareResult, *, key: str | None = None) -> Table:
    """The comparison as a :class:`~workbench.report.tables.Table`: per run the CV mean ±
    sd and the rank, then the mean rank; the best of each column bold."""
    m, col = result.metric, f"cv_{result.metric}"
    label = metric_label(m)
    columns = ["Model"]
    for run in result.runs:
        columns += [f"{run}: CV {label}", f"{run}: rank"]
    columns.append("Mean rank")
    rows = []
    for _, r in result.frame.iterrows():
        row = [Cell(str(r["candidate"]) + (" (baseline)" if r["kind"] == "baseline" else ""))]
        for run in result.runs:
            text = fmt_mean_sd(r[f"{run}:{col}"], r[f"{run}:{col}_sd"]) + optimistic_mark(r.get(f"{run}:optimistic_cv"))
            row.append(Cell(text, _num(r[f"{run}:{col}"])))
            row.append(Cell(f"{r[f'{run}:rank']:.1f}", float(r[f"{run}:rank"])))
        row.append(Cell(f"{r['mean_rank']:.2f}", float(r["mean_rank"])))
        rows.append(row)
    for j in range(1, len(columns)):
        is_rank = columns[j].endswith("rank")
        _mark(rows, j, ref=None, higher=False if is_rank else higher_is_better(m))
    notes = ["Runs: " + "; ".join(f"{run} = {path} ({result.info[run]['folds']} CV folds"
                                     + (f", {result.info[run]['repeats']} repeats" if result.info[run]["repeats"] > 1
                                        else "") + ")" for run, path in zip(result.runs, result.paths)) + ".",
             f"CV {label}: mean ± sd over each run's outer CV folds. Rank: within the run, among the "
             f"{len(result.frame)} candidates shown (1 = best, ties share the mean rank); mean rank: over the "
             f"{len(result.runs)} run{'s' if len(result.runs) > 1 else ''} (Demšar 2006). "
             f"Bold: the best of its column."]
    if result.friedman is not None:
        notes.append(friedman_note(result.friedman, "runs"))
    notes += result.notes
    return Table(f"Candidates across runs: CV {label} and ranks", columns, rows, notes,
                 key or f"compare-{m.replace('_', '-')}")


def write_comparison(result: CompareResult, out: str | os.PathLike) -> list[Path]:
    """Write the table (``compare-<metric>.md``, ``.tex``, ``.csv``), the long frame
    (``compare-<metric>-long.csv``), the test-split table when the runs share their test
    images (``compare-test-auc.md``, ``.tex``, ``.csv``) and, when the test was made, the
    CD diagram across runs (``cd-runs-<metric>.png``, ``.pdf``) into ``out``.

    Returns
    -------
    list of Path
        The files written, in that order.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = comparison_across_runs_table(result)
    paths = write_table(table, folder)
    p = folder / f"{table.key}-long.csv"
    atomic_write(p, result.long.to_csv(index=False, float_format="%.10g", lineterminator="\n").encode("utf-8"))
    paths.append(p)
    if result.test is not None:
        test_table = comparison_test_table(result)
        paths += write_table(test_table, folder)
    if result.friedman is not None:
        figs, _ = cd_diagram_figure(result.scores, folder / f"cd-runs-{result.metric.replace('_', '-')}",
                                    alpha=result.alpha, higher_is_better=higher_is_better(result.metric),
                                    title=f"CV {metric_label(result.metric)}: mean ranks over {len(result.runs)} runs")
        paths += figs
    return paths

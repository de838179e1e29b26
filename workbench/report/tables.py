"""The study's tables from run records, rendered as Markdown, LaTeX (booktabs) and CSV.

A :class:`Table` is plain data (title, column names, rows of :class:`Cell`, notes); the
builders make one from the records of a run folder (``ResultStore(run).frame()``) or
from the search's comparison frame, and the renderers turn it into text:

- :func:`backbone_table`: one backbone, one row per (tap, weights variant), one column
  per head, plus its end-to-end fine-tuned CNN (the study's per-CNN tables);
- :func:`concatenation_table`: heads on feature concatenations of two blocks or more;
- :func:`ensemble_table`: the vote (and stacking) ensembles of every subset;
- :func:`comparison_table`: the selected models and the baselines on the test split.
- :func:`external_table`: the same models on the test split and on each external test set.
- :func:`stability_table`: each CV repeat's ranking alone (repeated CV only).

CV cells are ``mean ± sd`` over the outer CV folds; test cells are shown beside them
but never decide an order or a mark of "best". Cells below the best baseline (by CV)
are marked (``†`` in Markdown, underlined in LaTeX, as the study did), the best of
each column is bold. Degenerate models (:mod:`workbench.evaluation.degenerate`: one class
for nearly every image, or a CV AUC not above chance) carry ``‡``, are never bold and
are never the baseline others are marked against. The same records always give
byte-identical files.

Examples
--------
>>> from workbench.evaluation.store import ResultStore  # doctest: +SKIP
>>> records = ResultStore("runs/busi-lite").frame()  # doctest: +SKIP
>>> write_tables(study_tables(records), "runs/busi-lite/tables")  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from workbench.evaluation.metrics import PER_CLASS_METRICS as _PER_CLASS, PROPORTION_METRICS
from workbench.evaluation.metrics import higher_is_better, metric_label
from workbench.core.io import atomic_write
from workbench.evaluation.settings import OPTIMISTIC_CV_MARK, OPTIMISTIC_CV_WHY, fold_repeat, is_cv_fold

__all__ = [
    "Cell",
    "Table",
    "backbone_table",
    "comparison_table",
    "concatenation_table",
    "ensemble_table",
    "external_table",
    "optimistic_mark",
    "stability_table",
    "study_tables",
    "tex_escape",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_table",
    "write_tables",
]

DASH = "–"  # en dash: a missing or undefined value
MINUS = "−"  # U+2212: a negative end of an interval (LaTeX: $-$)
DAGGER = "†"
DDAGGER = "‡"  # a degenerate model (workbench.evaluation.degenerate)
DIGITS = 3

ENSEMBLE_KINDS = ("vote-hard", "vote-soft", "stack")
#: Test-split columns of the comparison frame, in the table's order: AUC with its DeLong
#: interval, then the proportions with theirs (labels and directions: the metric table).
COMPARISON_METRICS = ("auc", *PROPORTION_METRICS)
ROLE_ORDER = {"selected": 0, "top-k": 1, "baseline": 2, "best on test (optimistic)": 4}
OPTIMISTIC_ROLE = "best on test (optimistic)"
#: LaTeX layout, in characters per row (the widest cell of each column, summed): above
#: STACK_WIDTH, cells longer than STACK_CHARS go over two lines; above WIDE_CHARS, the
#: table spans both columns of a two-column paper. Above LONG_ROWS rows, a longtable.
STACK_WIDTH = 60
WIDE_CHARS = 140
STACK_CHARS = 10
LONG_ROWS = 40
OPTIMISTIC_NOTE = "* CV estimate optimistic: the fine-tuned network saw these folds."
DEGENERATE_NOTE = (f"{DDAGGER} degenerate: predicts one class for at least 95 % of the images, or its CV AUC is "
                   "not above chance (≤ 0.55); never marked best, never the baseline compared against.")


# ---- the table model ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One table cell.

    Parameters
    ----------
    text
        What is shown (already formatted, without marks).
    value
        The number behind it (CSV writes it at full precision); ``None`` for text cells.
    below_baseline
        Worse than the best baseline: ``†`` in Markdown, underlined in LaTeX.
    best
        The best of its column: bold.
    degenerate
        The value of a degenerate model: ``‡``, and never the best of its column.
    """

    text: str
    value: float | int | None = None
    below_baseline: bool = False
    best: bool = False
    degenerate: bool = False


@dataclass
class Table:
    """A titled grid of cells with notes, rendered by :func:`to_markdown`, :func:`to_latex`
    and :func:`to_csv`.

    Parameters
    ----------
    title, columns, rows, notes
        Caption, header, one list of cells per row (as long as ``columns``), and notes
        printed below the table.
    key
        File stem and LaTeX label (``tab:<key>``).
    baseline
        What the below-baseline mark compares against (its note names it).
    rules
        Row indices preceded by a rule (``\\midrule``; Markdown has none, so builders say
        in a note what the rule separates).
    """

    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    key: str = "table"
    baseline: str = ""
    rules: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.key!r}: row {i} has {len(row)} cells for "
                                 f"{len(self.columns)} columns")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.key):
            raise ValueError(f"table key {self.key!r}: use letters, digits, '.', '_' and '-' "
                             "(it names files and the LaTeX label)")

    def numeric(self, j: int) -> bool:
        """Whether column ``j`` holds numbers (right-aligned)."""
        return any(row[j].value is not None for row in self.rows)


# ---- formatting --------------------------------------------------------------------------


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or bool(pd.isna(v))


def fmt(v: float | None) -> str:
    """``0.913``; ``–`` for NaN."""
    return DASH if _nan(v) else f"{float(v):.{DIGITS}f}"


def fmt_mean_sd(mean: float | None, sd: float | None) -> str:
    """``0.913 ± 0.020``; the mean alone when the sd is undefined (one fold)."""
    if _nan(mean):
        return DASH
    return fmt(mean) if _nan(sd) else f"{fmt(mean)} ± {fmt(sd)}"


def fmt_mean_sd_interval(mean: float | None, sd: float | None, low: float | None, high: float | None) -> str:
    """``0.913 ± 0.020 [0.875–0.951]``: a CV mean, its sd over the folds and the interval
    of the mean in brackets (parentheses are the test split's); parts that are undefined
    are left out."""
    text = fmt_mean_sd(mean, sd)
    if text == DASH or _nan(low) or _nan(high):
        return text
    return f"{text} [{_span(low, high)}]"


def fmt_signed(v: float | None) -> str:
    """``0.913``, ``−0.205``: :func:`fmt` with a minus sign, so a dash beside it never reads as one."""
    return fmt(v).replace("-", MINUS)


def _span(low: float, high: float) -> str:
    """``0.851–0.957``; with a negative end ``−0.768, 0.114`` (an en dash beside a minus
    sign would read as a range of a negative number)."""
    if min(float(low), float(high)) < 0:
        return f"{fmt_signed(low)}, {fmt_signed(high)}"
    return f"{fmt(low)}{DASH}{fmt(high)}"


def fmt_interval(v: float | None, low: float | None, high: float | None) -> str:
    """``0.908 (0.851–0.957)``; the value alone without an interval."""
    if _nan(v):
        return DASH
    if _nan(low) or _nan(high):
        return fmt(v)
    value = fmt_signed(v) if min(float(low), float(high)) < 0 else fmt(v)
    return f"{value} ({_span(low, high)})"


def fmt_p(p: float | None) -> str:
    """``0.031``, ``<0.001``; ``–`` for NaN."""
    if _nan(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{float(p):.3f}"


def _num(v: Any) -> float:
    return float("nan") if _nan(v) else float(v)


def _shown(v: float) -> float:
    """The value as displayed: ties and marks are decided at the table's precision."""
    return round(float(v), DIGITS)


def _worse(v: float | None, ref: float | None, higher: bool) -> bool:
    if _nan(v) or _nan(ref):
        return False
    return _shown(v) < _shown(ref) if higher else _shown(v) > _shown(ref)


def _mark(rows: list[list[Cell]], j: int, *, ref: float | None, higher: bool = True, best: bool = True,
          skip: Iterable[int] = ()) -> None:
    """Mark column ``j`` in place: below ``ref`` (all rows), best (rows not in ``skip``)."""
    skip = set(skip) | {i for i, row in enumerate(rows) if row[j].degenerate}
    vals = [(i, row[j].value) for i, row in enumerate(rows) if not _nan(row[j].value)]
    top = None
    cand = [_shown(v) for i, v in vals if i not in skip]
    if best and len(cand) > 1:  # a column of one value has no "best"
        top = max(cand) if higher else min(cand)
    for i, v in vals:
        c = rows[i][j]
        rows[i][j] = replace(c, below_baseline=_worse(v, ref, higher),
                             best=top is not None and i not in skip and _shown(v) == top)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower() or "x"


# ---- records -----------------------------------------------------------------------------


def _seq(v: Any) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
        return tuple(str(x) for x in list(v))
    return ()


def _is_true(v: Any) -> bool:
    return bool(v) if isinstance(v, (bool, np.bool_)) else False


def _split_block(name: str) -> tuple[str, str, str]:
    """``backbone[@weights]:tap`` -> (backbone, weights or "", tap)."""
    head, _, tap = name.rpartition(":")
    if not head:
        head, tap = name, ""
    backbone, _, weights = head.partition("@")
    return backbone, weights, tap


def _weights_label(weights: str) -> tuple[int, str]:
    """Order and label of a weights variant, as the study's columns named them."""
    if weights.startswith("ftn-"):
        return 2, "fine-tuned (nested)"
    if weights.startswith("ft-"):
        return 1, "fine-tuned"
    return 0, "pretrained" if not weights else f"pretrained ({weights})"


def _subset_code(codes: Sequence[str]) -> str:
    """``[AVR]`` when every code is one letter, ``[L0+L1]`` otherwise (as the sweep labels)."""
    return "[" + ("".join(codes) if all(len(c) == 1 for c in codes) else "+".join(codes)) + "]"


def _natural(s: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def _check(records: pd.DataFrame, metric: str) -> None:
    if records is None or records.empty:
        raise ValueError("no records to tabulate")
    missing = [c for c in ("candidate", "kind", "fold") if c not in records.columns]
    if missing:
        raise KeyError(f"records lack the columns {missing}; expected ResultStore(run).frame()")
    if metric not in records.columns:
        metrics = [c for c in records.columns if records[c].dtype.kind == "f"]
        raise KeyError(f"no metric {metric!r} in the records; metrics: {', '.join(metrics)}")


def _stats(records: pd.DataFrame, metric: str, degenerate: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per candidate: its description, CV mean / sd / folds, test value, optimistic,
    and why it is degenerate (``""``: it is not)."""
    cv = records[records["fold"].map(is_cv_fold)]
    test = records[records["fold"].astype(str) == "test"]
    first = records.drop_duplicates("candidate").set_index("candidate")
    g = cv.groupby("candidate", sort=True)[metric]
    out = pd.DataFrame(index=sorted(first.index))
    out["kind"] = first["kind"].reindex(out.index).astype(str)
    for col in ("head", "backbone"):
        out[col] = (first[col].reindex(out.index) if col in first else pd.Series(index=out.index, dtype=object))
        out[col] = [None if _nan(v) else str(v) for v in out[col]]
    for col in ("blocks", "codes", "heads"):
        src = first[col].reindex(out.index) if col in first else pd.Series(index=out.index, dtype=object)
        out[col] = [_seq(v) for v in src]
    out["mean"] = g.mean().reindex(out.index).astype(float)
    out["sd"] = g.std(ddof=1).reindex(out.index).astype(float)
    out["test"] = test.drop_duplicates("candidate", keep="last").set_index("candidate")[metric] \
        .reindex(out.index).astype(float)
    if "optimistic" in cv.columns:
        opt = cv.assign(_o=[_is_true(v) for v in cv["optimistic"]]).groupby("candidate")["_o"].any()
        out["optimistic"] = opt.reindex(out.index, fill_value=False).astype(bool)
    else:
        out["optimistic"] = False
    out["size"] = [len(b) for b in out["blocks"]]
    out["degenerate"] = [(degenerate or {}).get(c, "") for c in out.index]
    return out


def _folds_text(records: pd.DataFrame) -> str:
    """``"5"``, or ``"15 (3 repeats x 5)"`` for repeated CV: what a table's CV note says."""
    folds = records.loc[records["fold"].map(is_cv_fold), "fold"].astype(str).unique()
    repeats = len({fold_repeat(f) for f in folds})
    return f"{len(folds)} ({repeats} repeats x {len(folds) // repeats})" if repeats > 1 else str(len(folds))


def _best_baseline(stats: pd.DataFrame, metric: str) -> pd.Series | None:
    """The non-degenerate baseline with the best CV mean (ties: first label); ``None`` without one."""
    b = stats[(stats["kind"] == "baseline") & stats["mean"].notna() & (stats["degenerate"] == "")]
    if b.empty:
        return None
    higher = higher_is_better(metric)
    b = b.assign(_label=b.index).sort_values(["mean", "_label"], ascending=[not higher, True], kind="stable")
    return b.iloc[0]


def _baseline_text(best: pd.Series | None, metric: str) -> str:
    if best is None:
        return ""
    return (f"below the best end-to-end baseline, {best.name} (CV {metric_label(metric)} "
            f"{fmt_mean_sd(best['mean'], best['sd'])}; test {fmt(best['test'])})")


def _cv_cell(s: pd.Series | None) -> Cell:
    if s is None:
        return Cell(DASH, float("nan"))
    text = fmt_mean_sd(s["mean"], s["sd"])
    if s["optimistic"] and text != DASH:
        text += "*"
    return Cell(text, _num(s["mean"]), degenerate=bool(s["degenerate"]))


def _test_cell(s: pd.Series | None) -> Cell:
    if s is None:
        return Cell(DASH, float("nan"))
    return Cell(fmt(s["test"]), _num(s["test"]), degenerate=bool(s["degenerate"]))


def _value_columns(names: Sequence[str], test: bool) -> list[str]:
    return [c for n in names for c in ((f"{n} (CV)", f"{n} (test)") if test else (n,))]


def _legend(stats: pd.DataFrame) -> str:
    pairs = sorted({(c, b) for bs, cs in zip(stats["blocks"], stats["codes"]) for b, c in zip(bs, cs)},
                   key=lambda p: (_natural(p[0]), p[1]))
    return "Codes: " + "; ".join(f"{c} = {b}" for c, b in pairs) + "." if pairs else ""


def _grid_table(stats: pd.DataFrame, metric: str, *, row_keys: list[Any], row_labels: list[list[str]],
                col_keys: list[Any], col_names: list[str], label_columns: list[str], cell_of,
                test: bool, best: pd.Series | None, title: str, key: str, notes: list[str],
                n_folds: int | str, extra_rows: Sequence[list[Cell]] = (), skip_best: Sequence[int] = ()) -> Table:
    """Rows x columns of CV (and test) cells, marked against the best baseline."""
    rows: list[list[Cell]] = []
    for rk, labels in zip(row_keys, row_labels):
        cells = [Cell(t) for t in labels]
        for ck in col_keys:
            s = cell_of(rk, ck)
            cells.append(_cv_cell(s))
            if test:
                cells.append(_test_cell(s))
        rows.append(cells)
    rule = len(rows) if extra_rows else None
    rows.extend([list(r) for r in extra_rows])
    higher = higher_is_better(metric)
    width = 2 if test else 1
    skip = list(skip_best) + list(range(len(rows) - len(extra_rows), len(rows)))
    for c in range(len(col_keys)):
        j = len(label_columns) + c * width
        _mark(rows, j, ref=None if best is None else best["mean"], higher=higher, skip=skip)
        if test:  # test values are marked against that baseline's test value, never bold
            _mark(rows, j + 1, ref=None if best is None else best["test"], higher=higher, best=False)
    optimistic = any(r[j].text.endswith("*") for r in rows for j in range(len(label_columns), len(r)))
    label = metric_label(metric)
    all_notes = [f"CV: {label} mean ± sd over the {n_folds} outer CV folds of the training split"
                 + (f"; test: the {label} on the test split, shown beside it and never used to rank "
                    "or select" if test else "") + "."]
    if any(c.best for r in rows for c in r):
        aside = " (test columns are not marked best)" if test else ""
        all_notes.append(f"Bold: the best CV mean of its column{aside}.")
    if optimistic:
        all_notes.append(OPTIMISTIC_NOTE)
    if any(c.degenerate for r in rows for c in r):
        all_notes.append(DEGENERATE_NOTE)
    all_notes += [n for n in notes if n]
    if best is None:
        all_notes.append("No end-to-end baseline in the records: nothing is marked below baseline.")
    return Table(title, label_columns + _value_columns(col_names, test), rows, all_notes, key,
                 baseline=_baseline_text(best, metric), rules=(rule,) if rule is not None else ())


# ---- builders ----------------------------------------------------------------------------


def backbone_table(records: pd.DataFrame, backbone: str, metric: str = "auc", *, test: bool = True,
                   key: str | None = None,
    degenerate: dict[str, str] | None = None) -> Table:
    """The study's per-backbone table: each tap and weights variant under every head.

    Rows are the single-block head candidates of ``backbone`` (``pretrained``,
    ``fine-tuned`` for ``@ft-`` blocks, ``fine-tuned (nested)`` for ``@ftn-``), then one
    row per end-to-end baseline of that backbone, its value in the first head column.

    Parameters
    ----------
    records
        ``ResultStore(run).frame()``.
    backbone
        As in the block names (``alexnet``, ``tf_efficientnet_lite0``).
    metric
        A metric column of the records.
    test
        Also show each candidate's test value (beside, never ranked).
    key
        File stem and LaTeX label; default ``backbone-<backbone>-<metric>``.
    degenerate
        Candidate -> why it is degenerate (``SearchResult.degenerate``): its cells get
        ``‡``, are never bold, and a degenerate baseline is not the one marked against.

    Raises
    ------
    ValueError
        If the records hold neither a single-block head nor a baseline of ``backbone``.
    """
    _check(records, metric)
    st = _stats(records, metric, degenerate)
    singles = st[(st["kind"] == "head") & (st["size"] == 1)]
    singles = singles[[_split_block(b[0])[0] == backbone for b in singles["blocks"]]]
    bases = st[(st["kind"] == "baseline") & (st["backbone"] == backbone)]
    if singles.empty and bases.empty:
        known = sorted({_split_block(b[0])[0] for b in st.loc[st["size"] == 1, "blocks"]}
                       | {b for b in st.loc[st["kind"] == "baseline", "backbone"] if b})
        raise ValueError(f"no single-block heads or baselines of {backbone!r} in the records; "
                         f"backbones: {', '.join(known) or 'none'}")
    heads = sorted({h for h in singles["head"] if h} or {"CNN"})
    order, labels, by_cell, finetuned = _tap_rows(singles)
    best = _best_baseline(st, metric)
    extra = [_end_to_end_row(cand, s, len(heads), test) for cand, s in bases.sort_index().iterrows()]
    title = (f"{backbone}: {metric_label(metric)} of each head on each tap's features"
             + (", pretrained and fine-tuned" if finetuned else "")
             + ("; the end-to-end fine-tuned CNN" if len(bases) else ""))
    notes = []
    if len(bases):
        notes.append(f"End-to-end rows: the fine-tuned CNN itself, in the first column ({heads[0]} is not involved).")
    return _grid_table(st, metric, row_keys=order, row_labels=labels, col_keys=heads, col_names=heads,
                       label_columns=["Tap", "Weights"], cell_of=lambda r, c: by_cell.get((r, c)), test=test,
                       best=best, title=title, key=key or f"backbone-{_slug(backbone)}-{_slug(metric)}",
                       notes=notes, n_folds=_folds_text(records), extra_rows=extra)


def _tap_rows(singles: pd.DataFrame) -> tuple[list, list[list[str]], dict, bool]:
    """Rows of a backbone table: (tap, weights) keys in table order, their labels, the
    candidate of each (row, head) cell, and whether any row is fine-tuned."""
    by_cell: dict[tuple[tuple[str, str], str], pd.Series] = {}
    variants: dict[tuple[str, str], tuple] = {}
    for _, s in singles.iterrows():
        _, weights, tap = _split_block(s["blocks"][0])
        rank, label = _weights_label(weights)
        variants[(tap, weights)] = (_natural(tap), rank, weights, label)
        by_cell[((tap, weights), s["head"])] = s
    order = sorted(variants, key=lambda k: variants[k][:3])
    seen: dict[tuple[str, str], int] = {}
    for k in order:
        seen[(k[0], variants[k][3])] = seen.get((k[0], variants[k][3]), 0) + 1
    labels = []
    for tap, weights in order:
        lab = variants[(tap, weights)][3]
        if seen[(tap, lab)] > 1 and weights:  # two fine-tuned networks of one backbone: name them
            lab = f"{lab} {weights}"
        labels.append([tap, lab])
    return order, labels, by_cell, any(variants[k][1] > 0 for k in variants)


def _end_to_end_row(cand: str, s: pd.Series, n_heads: int, test: bool) -> list[Cell]:
    """A baseline's row of a backbone table: its value in the first head column."""
    cells = [Cell(f"end-to-end ({cand})"), Cell("fine-tuned"), _cv_cell(s)]
    if test:
        cells.append(_test_cell(s))
    return cells + [Cell("")] * ((n_heads - 1) * (2 if test else 1))


def _subset_rows(cands: pd.DataFrame) -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], str]]:
    """Distinct subsets (by block names), ordered by size then code string."""
    code_of = {b: _subset_code(c) for b, c in zip(cands["blocks"], cands["codes"])}
    return sorted(code_of, key=lambda b: (len(b), code_of[b], b)), code_of


def concatenation_table(records: pd.DataFrame, metric: str = "auc", *, test: bool = True,
                        key: str | None = None,
    degenerate: dict[str, str] | None = None) -> Table:
    """Every head on every concatenation of two blocks or more, rows as ``[AVR]`` codes.

    Parameters
    ----------
    records, metric, test
        As for :func:`backbone_table`.
    key
        Default ``concatenation-<metric>``.
    """
    _check(records, metric)
    st = _stats(records, metric, degenerate)
    cands = st[(st["kind"] == "head") & (st["size"] >= 2)]
    subsets, code_of = _subset_rows(cands)
    heads = sorted({h for h in cands["head"] if h})
    by_cell = {(b, h): s for (_, s), b, h in zip(cands.iterrows(), cands["blocks"], cands["head"])}
    notes = [_legend(cands)]
    if cands.empty:
        notes.append("No concatenations (subsets of two blocks or more) in the records.")
    return _grid_table(st, metric, row_keys=subsets, row_labels=[[code_of[b]] for b in subsets], col_keys=heads,
                       col_names=heads, label_columns=["Features"], cell_of=lambda r, c: by_cell.get((r, c)),
                       test=test, best=_best_baseline(st, metric),
                       title=f"{metric_label(metric)} of the heads on concatenated features",
                       key=key or f"concatenation-{_slug(metric)}", notes=notes, n_folds=_folds_text(records))


def ensemble_table(records: pd.DataFrame, metric: str = "auc", *, test: bool = True,
                   key: str | None = None,
    degenerate: dict[str, str] | None = None) -> Table:
    """The ensembles of every subset: one column per kind (``vote-hard``, ``vote-soft``, ``stack``).

    Where ensembles over different sets of heads are present, each (kind, heads) pair
    gets a column of its own, named like the candidates (``vote-soft(svm-rbf+rf)``).
    Hybrid ensembles, in which end-to-end baseline networks vote with the heads, get
    rows of their own after the others (``[A] + CNN lite0``).

    Parameters
    ----------
    records, metric, test
        As for :func:`backbone_table`.
    key
        Default ``ensembles-<metric>``.
    """
    _check(records, metric)
    st = _stats(records, metric, degenerate)
    cands = st[st["kind"].isin(ENSEMBLE_KINDS)]
    subsets, code_of = _subset_rows(cands)
    first = records.drop_duplicates("candidate").set_index("candidate")
    nets = [_seq(first.at[c, "baselines"]) if "baselines" in first.columns else () for c in cands.index]
    order = {b: i for i, b in enumerate(subsets)}
    rows = sorted({(b, n) for b, n in zip(cands["blocks"], nets)}, key=lambda r: (len(r[1]) > 0, r[1], order[r[0]]))
    kind_rank = {k: i for i, k in enumerate(ENSEMBLE_KINDS)}
    cols = sorted({(k, h) for k, h in zip(cands["kind"], cands["heads"])}, key=lambda c: (kind_rank[c[0]], c[1]))
    head_sets = sorted({h for _, h in cols})
    one_set = len(head_sets) <= 1
    names = [k if one_set else f"{k}({'+'.join(h)})" for k, h in cols]
    by_cell = {((b, n), (k, h)): s for (_, s), b, n, k, h in zip(cands.iterrows(), cands["blocks"], nets,
                                                                 cands["kind"], cands["heads"])}
    notes = [_legend(cands)]
    if one_set and head_sets and head_sets[0]:
        notes.append(f"Members: the {' and '.join(head_sets[0])} heads of each block of the subset"
                     + ("; stack: a logistic regression over their out-of-fold probabilities" if
                        any(k == "stack" for k, _ in cols) else "") + ".")
    if any(nets):
        notes.append("Rows + CNN NAME: hybrid ensembles, in which that end-to-end baseline network (one per "
                     "fold, as its own rows) votes with the heads; a hybrid stack on a CV fold is fitted on the "
                     "network's validation split.")
    if cands.empty:
        notes.append("No ensembles in the records.")
    labels = [[code_of[b] + "".join(f" + CNN {x}" for x in n)] for b, n in rows]
    return _grid_table(st, metric, row_keys=rows, row_labels=labels, col_keys=cols,
                       col_names=names, label_columns=["Features"], cell_of=lambda r, c: by_cell.get((r, c)),
                       test=test, best=_best_baseline(st, metric),
                       title=f"{metric_label(metric)} of the ensembles of each subset's per-block heads",
                       key=key or f"ensembles-{_slug(metric)}", notes=notes, n_folds=_folds_text(records))


def comparison_table(comparison: pd.DataFrame, *, key: str = "comparison") -> Table:
    """The final comparison: selected models and baselines on the test split, with intervals.

    Parameters
    ----------
    comparison
        One row per model (``SearchResult.comparison``): ``candidate``, ``role``,
        ``cv_auc``, ``cv_auc_sd`` (and optionally ``cv_auc_low``, ``cv_auc_high``: the
        corrected interval of the CV mean), for each test metric ``m``: ``m``, ``m_low``,
        ``m_high``; ``threshold``, ``p_auc``, ``p_auc_holm``, ``p_accuracy``,
        ``p_accuracy_holm``, ``p_cv``, ``p_cv_holm`` (corrected resampled t-test on the
        CV folds). Metrics the frame lacks (multi-class) are left out.
    key
        File stem and LaTeX label.

    Notes
    -----
    Rows go selected, top-k, baselines (each by CV AUC, best first, then by label), then
    the "best on test (optimistic)" row below a rule. A cell is marked below baseline when
    it is worse than the best baseline row's value of that column; the optimistic row is
    never bold.
    """
    df = _comparison_order(comparison)
    reason = [str(v) if isinstance(v, str) else "" for v in (df["degenerate"] if "degenerate" in df.columns
                                                                else [""] * len(df))]
    specs = _comparison_columns(df, reason)
    rows = [[make(r) for _, make, _ in specs] for _, r in df.iterrows()]
    is_base = [r == "baseline" for r in df["role"]]
    optimistic = [i for i, r in enumerate(df["role"]) if r == OPTIMISTIC_ROLE]
    degenerate = [i for i in range(len(df)) if reason[i]]
    # A degenerate baseline is no yardstick, and a degenerate row is never the best.
    ref_rows = [i for i in range(len(rows)) if is_base[i] and not reason[i]]
    for j, (_, _, marked) in enumerate(specs):
        if not marked:
            continue
        base_vals = [rows[i][j].value for i in ref_rows if not _nan(rows[i][j].value)]
        _mark(rows, j, ref=max(base_vals) if base_vals else None, skip=optimistic + degenerate)
    notes = _comparison_notes(df, rows, reason, is_base, optimistic, degenerate)
    return Table("Selected models and end-to-end baselines on the test split", [h for h, _, _ in specs], rows,
                 notes, key, baseline="below the best baseline row of its column" if any(is_base) else "",
                 rules=(optimistic[0],) if optimistic else ())


def optimistic_mark(flag: Any) -> str:
    """``" §"`` after a CV figure whose ``optimistic_cv`` flag is true; ``""`` otherwise,
    and for a missing flag (NaN, which is truthy, where a frame lacks the column)."""
    return f" {OPTIMISTIC_CV_MARK}" if isinstance(flag, (bool, np.bool_)) and flag else ""


def _comparison_order(comparison: pd.DataFrame) -> pd.DataFrame:
    """The frame checked and in table order: role, then CV AUC (the column shown), then
    label, so the input's row order does not matter."""
    if comparison is None or comparison.empty:
        raise ValueError("empty comparison frame")
    for c in ("candidate", "role"):
        if c not in comparison.columns:
            raise KeyError(f"comparison frame lacks {c!r}; expected SearchResult.comparison")
    df = comparison.reset_index(drop=True)
    cv_key = -df["cv_auc"].astype(float).fillna(-math.inf) if "cv_auc" in df.columns else 0.0
    df = df.assign(_r=[ROLE_ORDER.get(r, 3) for r in df["role"]], _cv=cv_key, _c=df["candidate"].astype(str))
    return df.sort_values(["_r", "_cv", "_c"], kind="stable").reset_index(drop=True)


def _comparison_columns(df: pd.DataFrame, reason: list[str]) -> list[tuple[str, Any, bool]]:
    """``(header, cell maker, marked?)`` per column the frame has data for."""
    get = lambda r, c: r[c] if c in df.columns else float("nan")  # noqa: E731

    def threshold_cell(r) -> Cell:
        q = get(r, "threshold_quantile")
        text = fmt(r["threshold"]) if _nan(q) or _nan(r["threshold"]) else f"{fmt(r['threshold'])} (q {fmt(q)})"
        return Cell(text, _num(r["threshold"]))

    specs: list[tuple[str, Any, bool]] = [
        ("Model", lambda r: Cell(str(r["candidate"]), degenerate=bool(reason[r.name])), False),
        ("Role", lambda r: Cell(str(r["role"])), False),
    ]
    if "cv_auc" in df.columns:
        specs.append(("CV AUC", lambda r: Cell(fmt_mean_sd_interval(r["cv_auc"], get(r, "cv_auc_sd"),
                                                                  get(r, "cv_auc_low"), get(r, "cv_auc_high"))
                                               + optimistic_mark(get(r, "optimistic_cv")), _num(r["cv_auc"])), True))
    for m in [m for m in COMPARISON_METRICS if m in df.columns]:
        specs.append((metric_label(m, capital=True),
                      lambda r, m=m: Cell(fmt_interval(r[m], get(r, f"{m}_low"), get(r, f"{m}_high")), _num(r[m])),
                      True))
    if "threshold" in df.columns:
        specs.append(("Threshold", threshold_cell, False))
    for p, head in (("p_auc", "p AUC"), ("p_auc_holm", "p AUC (Holm)"), ("p_accuracy", "p accuracy"),
                    ("p_accuracy_holm", "p accuracy (Holm)"), ("p_cv", "p CV (corrected t)"),
                    ("p_cv_holm", "p CV (Holm)")):
        if p in df.columns:
            specs.append((head, lambda r, p=p: Cell(fmt_p(r[p]), _num(r[p])), False))
    return specs


def _ranking_metric(df: pd.DataFrame) -> str:
    """The ranking metric of a comparison frame: its ``cv_<metric>`` column other than
    ``cv_auc`` (which every frame has for the table), else AUC."""
    found = [c[3:] for c in df.columns if c.startswith("cv_") and c != "cv_auc"
             and not c.endswith(("_sd", "_low", "_high"))]
    return found[0] if found else "auc"


def _comparison_notes(df: pd.DataFrame, rows: list[list[Cell]], reason: list[str], is_base: list[bool],
                      optimistic: list[int], degenerate: list[int]) -> list[str]:
    """What the comparison's columns, marks and rows mean, for the rows it has."""
    quantile = "threshold_quantile" in df.columns and df["threshold_quantile"].notna().any()
    notes = []
    if "optimistic_cv" in df.columns and df["optimistic_cv"].eq(True).any():
        notes.append(f"{OPTIMISTIC_CV_MARK}: an optimistic CV estimate ({OPTIMISTIC_CV_WHY}); its test figures are "
                     "clean.")
    if "cv_auc" in df.columns:
        shown = "cv_auc_low" in df.columns and df["cv_auc_low"].notna().any()
        notes.append("CV AUC: mean ± sd over the outer CV folds of the training split"
                     + (" [95 % interval of the mean over the J folds of every repeat, its variance corrected "
                        "for the folds' overlap: (1/J + n_test/n_train) × sd², Nadeau & Bengio 2003]" if shown else "")
                     + ", the selection criterion.")
    clustered = "interval_method" in df.columns and (df["interval_method"] == "cluster bootstrap").any()
    notes.append("Test split: value (95 % interval"
                 + ("; percentile cluster bootstrap over the groups of the test split, which hold several images "
                    "each" if clustered else "") + ")"
                 + ("; proportions at each model's threshold, chosen on its out-of-fold CV predictions"
                    if "threshold" in df.columns else "") + ".")
    if quantile:
        notes.append("Baselines (one network per CV fold, each calibrated its own way): each fold network's Youden "
                     "threshold as a quantile of its own out-of-fold scores; the test network's threshold is the q-quantile "
                     "of its scores on its own validation split (q: the pooled quantile, shown beside the threshold).")
    if any(c in df.columns for c in ("p_auc", "p_accuracy")):
        if clustered:
            notes.append("p: paired test against the best non-degenerate baseline (by CV) on the same test images, "
                         "by a cluster bootstrap of the difference (AUC and accuracy); Holm: adjusted across the "
                         "table's selected and top-k rows.")
        else:
            notes.append("p: paired test against the best "
                         + ("non-degenerate " if any(is_base[i] for i in degenerate) else "")
                         + "baseline (by CV) on the same test images (DeLong for AUC, exact McNemar for accuracy); "
                           "Holm: adjusted across the table's selected and top-k rows.")
    if "p_cv" in df.columns and df["p_cv"].notna().any():
        notes.append(f"p CV: corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004) of the "
                     f"per-fold CV {metric_label(_ranking_metric(df))} against the best "
                     + ("non-degenerate " if any(is_base[i] for i in degenerate) else "")
                     + "baseline's, paired by fold (J - 1 degrees of freedom); Holm: adjusted across the table's "
                       "selected and top-k rows.")
    if any(c.best for r in rows for c in r):
        notes.append("Bold: the best of its column, the optimistic row aside"
                     + (" and the degenerate rows" if degenerate else "") + ".")
    if degenerate:
        # A candidate can fill two rows (selected and best on test): name it once.
        named = dict.fromkeys(f"{df['candidate'][i]}: {reason[i]}" for i in degenerate)
        notes.append(DEGENERATE_NOTE + " " + "; ".join(named) + ".")
    if optimistic:
        notes.append(f"Below the rule (the last row{'s' if len(optimistic) > 1 else ''}): the candidate with the "
                     "best test value, picked by looking at the test split as the study did; its test figures "
                     "are optimistic and it is not a selection.")
    if not any(is_base):
        notes.append("No baseline row: nothing is marked below baseline.")
    return notes


#: Columns of the per-class table: the per-class metrics but the likelihood ratios
#: (unbounded, and undefined on most small test classes).
PER_CLASS_METRICS = tuple(m for m in _PER_CLASS if m not in ("lr_plus", "lr_minus"))


def per_class_table(records: pd.DataFrame, candidates: Sequence[str], classes: Sequence[str], *,
                    key: str = "per-class") -> Table:
    """Test-split metrics per class (one-vs-rest) and their macro mean, for a multi-class run.

    One block of rows per model (the selected candidates and the baselines, in the order
    given): a row per class, then ``macro``. Values come from the models' test records.
    """
    test = records[records["fold"] == "test"].set_index("candidate")
    columns = ["Model", "Class", *[metric_label(m) for m in PER_CLASS_METRICS]]
    rows: list[list[Cell]] = []
    rules = []
    for i, cand in enumerate(candidates):
        if cand not in test.index:
            continue
        rec = test.loc[cand]
        if i:
            rules.append(len(rows))
        for cls in [*classes, "macro"]:
            cells = [Cell(cand), Cell(cls)]
            for m in PER_CLASS_METRICS:
                col = f"{m}_macro" if cls == "macro" else f"{m}[{cls}]"
                v = _num(rec[col]) if col in rec.index else float("nan")
                cells.append(Cell(fmt(v), None if _nan(v) else v))
            rows.append(cells)
    notes = ["Test split; each class against the rest, at the argmax decision (AUC from the probabilities); "
             "macro: the unweighted mean over the classes."]
    return Table("Per-class test metrics of the selected models and the baselines", columns, rows, notes, key,
                 rules=tuple(rules))


def external_table(result: Any, *, key: str = "external") -> Table:
    """The reported models on the internal test split and on each external test set.

    Parameters
    ----------
    result
        A :class:`~workbench.search.select.SearchResult` with external sets
        (``result.external``: name -> frame, see :mod:`workbench.search.external`).
    key
        File stem and LaTeX label.

    Notes
    -----
    One row per reported model (selected, top-k, baselines, requested; in the
    comparison's order, the optimistic pick left out). For the internal test split and
    then for each set: AUC (95 % interval) and sensitivity and specificity at the
    model's threshold (multi-class: accuracy), the same threshold on every set; for each
    set also ΔAUC (external minus internal) and the paired test against the best
    baseline on the set's images. A note states the selected model's change in AUC.

    Raises
    ------
    ValueError
        When the result holds no external set.
    """
    external: dict[str, pd.DataFrame] = dict(getattr(result, "external", None) or {})
    if not external:
        raise ValueError("the search result holds no external test set")
    df = _comparison_order(result.comparison)
    df = df[df["role"] != OPTIMISTIC_ROLE].reset_index(drop=True)
    binary = "sensitivity" in df.columns
    shown = ("sensitivity", "specificity") if binary else ("accuracy",)
    p_key, p_head = ("p_auc", "p AUC") if binary else ("p_accuracy", "p accuracy")
    columns = ["Model", "Role", "Test AUC", *[f"Test {metric_label(m)}" for m in shown]]
    for name in external:
        columns += [f"{name} AUC", *[f"{name} {metric_label(m)}" for m in shown], f"{name} ΔAUC",
                    f"{name} {p_head}"]
    by_row = {n: {(r["candidate"], r["role"]): r for _, r in f.iterrows()} for n, f in external.items()}
    get = lambda r, c: r[c] if r is not None and c in r.index else float("nan")  # noqa: E731

    def interval(r, m: str) -> Cell:
        v = get(r, m)
        return Cell(fmt_interval(v, get(r, f"{m}_low"), get(r, f"{m}_high")), None if _nan(v) else float(v))

    def value(v: Any, text=fmt) -> Cell:
        return Cell(text(v), None if _nan(v) else float(v))

    rows = []
    for _, r in df.iterrows():
        cells = [Cell(str(r["candidate"])), Cell(str(r["role"])), interval(r, "auc"),
                 *[interval(r, m) for m in shown]]
        for name in external:
            e = by_row[name].get((r["candidate"], r["role"]))
            cells += [interval(e, "auc"), *[interval(e, m) for m in shown], value(get(e, "delta_auc")),
                      value(get(e, p_key), fmt_p)]
        rows.append(cells)
    notes = _external_notes(df, external, binary)
    return Table("Selected models and baselines on the internal test split and the external test sets", columns,
                 rows, notes, key)


def _external_notes(df: pd.DataFrame, external: dict[str, pd.DataFrame], binary: bool) -> list[str]:
    """What the external table's columns mean, each set described, and the selected model's change."""
    notes = ["Every model as fitted for the internal test split (on the whole training split), applied unchanged "
             "to each external set: value (95 % interval)"
             + ("; sensitivity and specificity at the model's own threshold, chosen on its out-of-fold CV "
                "predictions and the same on every set (never refitted on external labels)" if binary else
                "; accuracy at the argmax decision, AUC the macro mean over the classes") + ".",
             "ΔAUC: the set's AUC minus the internal test split's (negative: a drop).",
             ("p AUC: DeLong test" if binary else "p accuracy: exact McNemar test")
             + " against the best baseline (by CV) on the same external images (a cluster bootstrap where a "
               "group holds several images), unadjusted."]
    for name, f in external.items():
        a = f.attrs
        counts = a.get("classes") or {}
        what = f"{a.get('n_images', '?')} images" + (f" ({', '.join(f'{v} {k}' for k, v in counts.items())})"
                                                      if counts else "")
        if a.get("held_out"):
            notes.append(f"{name}: {what}, held out from the main manifest: a part of the same collection, not a "
                         f"different site or scanner, so it measures variation within the collection only.")
        else:
            notes.append(f"{name}: {what}" + (f", from {Path(str(a['source'])).name}" if a.get("source") else "")
                         + ".")
    sel = df[df["role"] == "selected"]
    if len(sel):
        cand = sel["candidate"].iloc[0]
        for name, f in external.items():
            e = f[(f["candidate"] == cand) & (f["role"] == "selected")]
            if not len(e) or "auc" not in e.columns or _nan(e["auc"].iloc[0]) or _nan(e["test_auc"].iloc[0]):
                notes.append(f"{name}: the selected model, {cand}, has no AUC on this set and the test split.")
                continue
            t, x = float(e["test_auc"].iloc[0]), float(e["auc"].iloc[0])
            change = (f"a drop of {fmt(t - x)}" if _shown(x) < _shown(t)
                      else f"a rise of {fmt(x - t)}" if _shown(x) > _shown(t) else "no change at this precision")
            notes.append(f"The selected model, {cand}, has AUC {fmt(t)} on the internal test split and {fmt(x)} on "
                         f"{name}: {change}.")
    return notes


def stability_table(stability: Any, *, key: str = "stability") -> Table:
    """Each CV repeat's ranking alone: its first, and where the selected candidate and the best
    baseline land in it.

    Parameters
    ----------
    stability
        A :class:`~workbench.search.stability.RankingStability` (``SearchResult.stability``).
    key
        File stem and LaTeX label.

    Notes
    -----
    One row per repeat: the candidate that repeat alone ranks first among those the
    selection may take, its CV mean over the repeat's folds, the ranks (1 = best, among
    every candidate and baseline the repeat ranks) of the selected candidate and of the
    best baseline, and how many candidates the repeat ranks. The notes give the
    Spearman and Kendall correlation of every pair of repeats' per-candidate means.
    """
    label = metric_label(stability.metric)
    columns = ["Repeat", "First in the repeat alone", f"Its CV {label}", "Rank of the selected",
               "Rank of the best baseline", "Candidates"]
    count = lambda v: Cell(DASH, float("nan")) if v is None else Cell(str(v), int(v))  # noqa: E731
    rows = [[Cell(str(s.repeat)), Cell(s.first or DASH), Cell(fmt(s.first_mean), _num(s.first_mean)),
             count(s.selected_rank), count(s.baseline_rank), count(s.n_candidates)] for s in stability.repeats]
    folds = sorted({s.folds for s in stability.repeats})
    notes = [f"Each repeat ranks the candidates on its own {'/'.join(str(f) for f in folds)} CV folds (repeat 0: "
             f"folds 0, 1, ...; repeat 1: folds r1-0, r1-1, ...; and so on) by the mean {label}, in the same "
             "order rule as the main ranking (ties by label); the selection ranks on the mean over every repeat's "
             "folds.",
             f"Selected: {stability.selected or 'none'}; best baseline: {stability.baseline or 'none'}. Rank 1 is "
             "the best, among every candidate and baseline the repeat ranks; the first is the best among the "
             "candidates the selection may take."]
    pairs = stability.pairs
    if len(pairs):
        # Words, not Greek letters: the LaTeX notes are plain text for any engine.
        notes.append(f"Agreement of the repeats' per-candidate CV {label} (Spearman, Kendall tau-b; over the "
                     "candidates ranked in both): " + "; ".join(
                         f"repeats {int(p.repeat_a)} and {int(p.repeat_b)}: Spearman {fmt(p.spearman)}, Kendall "
                         f"{fmt(p.kendall)} (n {int(p.n)})" for p in pairs.itertuples())
                     + (f"; mean Spearman {fmt(stability.mean_spearman)}, mean Kendall {fmt(stability.mean_kendall)}."
                        if len(pairs) > 1 else "."))
    for s in stability.repeats:
        if s.excluded:
            shown = ", ".join(s.excluded[:10]) + (f" and {len(s.excluded) - 10} more" if len(s.excluded) > 10 else "")
            notes.append(f"Repeat {s.repeat}: {len(s.excluded)} candidate(s) lack a record of one of its folds and "
                         f"are left out of its ranking: {shown}.")
    return Table("Stability of the ranking across CV repeats", columns, rows, notes, key)


def study_tables(records: pd.DataFrame, comparison: pd.DataFrame | None = None, metric: str = "auc",
                 *, test: bool = True, degenerate: dict[str, str] | None = None) -> list[Table]:
    """Every table of a run: one per backbone, concatenations, ensembles, the comparison.

    Tables with nothing to show (no concatenation, no ensemble) are left out.
    """
    _check(records, metric)
    st = _stats(records, metric, degenerate)
    backbones = sorted({_split_block(b[0])[0] for b in st.loc[(st["kind"] == "head") & (st["size"] == 1), "blocks"]}
                       | {b for b in st.loc[st["kind"] == "baseline", "backbone"] if b})
    tables = [backbone_table(records, b, metric, test=test, degenerate=degenerate) for b in backbones]
    if ((st["kind"] == "head") & (st["size"] >= 2)).any():
        tables.append(concatenation_table(records, metric, test=test, degenerate=degenerate))
    if st["kind"].isin(ENSEMBLE_KINDS).any():
        tables.append(ensemble_table(records, metric, test=test, degenerate=degenerate))
    if comparison is not None and not comparison.empty:
        tables.append(comparison_table(comparison))
    return tables


# ---- renderers ---------------------------------------------------------------------------


def _md_escape(s: str) -> str:
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("`", "\\`")
    # GitHub ignores intraword underscores (tf_efficientnet_lite0); escape only the others.
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", s)


def _md_cell(c: Cell) -> str:
    if not c.text:
        return ""
    s = _md_escape(c.text) + (DDAGGER if c.degenerate else "") + (DAGGER if c.below_baseline else "")
    return f"**{s}**" if c.best else s


def to_markdown(table: Table) -> str:
    """A GitHub pipe table: ``**title**`` above, notes below; ``†`` below baseline, bold best."""
    header = [_md_escape(c) for c in table.columns]
    body = [[_md_cell(c) for c in row] for row in table.rows]
    n = len(header)
    right = [table.numeric(j) for j in range(n)]
    width = [max([3, len(header[j])] + [len(r[j]) for r in body]) for j in range(n)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, width, right)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if r else (":" + "-" * (w - 1)) for w, r in zip(width, right)) + " |"
    out = [f"**{_md_escape(table.title)}**", "", line(header), rule] + [line(r) for r in body]
    notes = []
    if table.baseline and any(c.below_baseline for r in table.rows for c in r):
        notes.append(f"{DAGGER} {_md_escape(table.baseline)}.")
    notes += [_md_escape(n) for n in table.notes]
    for note in notes:
        out += ["", note]
    return "\n".join(out) + "\n"


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
    "±": r"$\pm$", "–": "--", "—": "---", "−": r"$-$", "†": r"\dag{}", "‡": r"\ddag{}", "§": r"\S{}",
    "≥": r"$\geq$", "≤": r"$\leq$",
    "×": r"$\times$", "·": r"$\cdot$", "°": r"$^\circ$",
}


def tex_escape(s: str) -> str:
    """Text safe in a LaTeX tabular (``_ % & # $ { } ~ ^ \\ < >``, ``±`` as ``$\\pm$``)."""
    return "".join(_TEX.get(ch, ch) for ch in s)


def _tex_text(s: str) -> str:
    s = tex_escape(s)
    # A cell opening a row follows "\\" or a booktabs rule, which would read "[" or "*"
    # as their optional argument.
    return "{}" + s if s[:1] in ("[", "*") else s


def _tex_lines(text: str) -> list[str]:
    """Where a long cell breaks in a stacked LaTeX cell: before its last parenthesis or
    bracket (``0.908 (0.857–0.960)``, ``p AUC (Holm)``, ``0.913 ± 0.020 [0.875–0.951]``),
    else at its first space."""
    if len(text) <= STACK_CHARS:
        return [text]
    cut = max(text.rfind(" ("), text.rfind(" ["))
    if cut <= 0:
        cut = text.find(" ")
    return [text] if cut <= 0 else [text[:cut], text[cut + 1:]]


def _tex_cell(c: Cell, stack: bool = False, align: str = "l") -> str:
    lines = [_tex_text(t) for t in (_tex_lines(c.text) if stack else [c.text])]
    if not lines[0]:
        return ""
    # A two-line cell is a one-column tabular: plain LaTeX, no extra package.
    s = lines[0] if len(lines) == 1 else (rf"\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}"
                                         + r" \\ ".join(lines) + r"\end{tabular}")
    if c.degenerate:
        s += r"\ddag{}"
    if c.below_baseline:
        s = rf"\underline{{{s}}}"
    return rf"\textbf{{{s}}}" if c.best else s


def _tex_width(table: Table) -> int:
    """Characters per row with one-line cells: the widest cell of each column, summed."""
    return sum(max([len(h)] + [len(r[j].text) for r in table.rows]) for j, h in enumerate(table.columns))


def to_latex(table: Table) -> str:
    """A booktabs table with caption and ``\\label{tab:<key>}``.

    Values below the best baseline are underlined, the best of each column bold. Needs
    ``\\usepackage{booktabs,graphicx,longtable}``. A table wider than the line is shrunk
    to it. A wide table is set in ``\\small`` with two-line cells, and the widest (the
    comparison, with its intervals) is a ``table*``, both columns of a two-column paper.
    A table of more than :data:`LONG_ROWS` rows is a ``longtable``, which breaks across
    pages, repeats its header, and needs a one-column document (a supplement).
    """
    ncol = len(table.columns)
    aligns = ["r" if table.numeric(j) else "l" for j in range(ncol)]
    width = _tex_width(table)
    stack = width > STACK_WIDTH
    head = " & ".join(_tex_cell(Cell(h), stack, a) for h, a in zip(table.columns, aligns)) + r" \\"
    caption = [rf"\caption{{{tex_escape(table.title)}}}", rf"\label{{tab:{table.key}}}"]
    body = []
    rules = set(table.rules)
    for i, row in enumerate(table.rows):
        if i in rules and i > 0:
            body.append(r"\midrule")
        body.append(" & ".join(_tex_cell(c, stack, a) for c, a in zip(row, aligns)) + r" \\")
    notes = []
    if table.baseline and any(c.below_baseline for r in table.rows for c in r):
        notes.append(f"Underlined: {tex_escape(table.baseline)}.")
    notes += [tex_escape(n) for n in table.notes]
    # Weights ids in the notes are long words: let them break after "_" and "@".
    notes = [n.replace(r"\_", r"\_\allowbreak{}").replace("@", r"@\allowbreak{}") for n in notes]
    spec = "".join(aligns)
    if len(table.rows) > LONG_ROWS:
        # A float cannot break across pages; longtable can (one-column documents only).
        # The notes follow it as a paragraph: a note row would widen the table.
        out = [r"\begingroup", r"\small", *([r"\setlength{\tabcolsep}{4pt}"] if stack else []),
               rf"\begin{{longtable}}{{{spec}}}", caption[0] + caption[1] + r" \\", r"\toprule", head,
               r"\midrule", r"\endfirsthead", r"\toprule", head, r"\midrule", r"\endhead",
               r"\midrule", rf"\multicolumn{{{ncol}}}{{r}}{{\footnotesize continued}} \\", r"\endfoot",
               r"\bottomrule", r"\endlastfoot", *body, r"\end{longtable}",
               *([r"\footnotesize\raggedright"] + [n + r"\par" for n in notes] if notes else []),
               r"\endgroup"]
        return "\n".join(out) + "\n"
    env = "table*" if width > WIDE_CHARS else "table"  # both columns of a two-column paper
    out = [rf"\begin{{{env}}}[htbp]", r"\centering", *([r"\small", r"\setlength{\tabcolsep}{4pt}"] if stack else []),
           *caption,
           # Set the tabular in a box and shrink it to the line only when it is wider.
           rf"\sbox0{{\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *body,
           r"\bottomrule", r"\end{tabular}}%",
           r"\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\usebox0}\else\usebox0\fi"]
    if notes:
        out += ["", r"\smallskip", r"\footnotesize"] + [n + r"\par" for n in notes]
    out.append(rf"\end{{{env}}}")
    return "\n".join(out) + "\n"


def _csv_value(c: Cell, numeric: bool) -> str:
    if c.value is not None:
        if isinstance(c.value, (int, np.integer)) and not isinstance(c.value, bool):
            return str(int(c.value))  # counts and ranks stay whole numbers
        return "" if _nan(c.value) else repr(float(c.value))
    return "" if numeric else c.text


def to_csv(table: Table) -> str:
    """Plain values: the table's columns, numbers at full precision, empty for missing."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    numeric = [table.numeric(j) for j in range(len(table.columns))]
    for row in table.rows:
        w.writerow([_csv_value(c, n) for c, n in zip(row, numeric)])
    return buf.getvalue()


def write_tables(tables: Sequence[Table], folder: str | os.PathLike) -> list[Path]:
    """Write ``<key>.md``, ``<key>.tex``, ``<key>.csv`` per table and ``tables.md`` (all of them).

    Returns
    -------
    list of Path
        The files written, in that order (``tables.md`` last).

    Raises
    ------
    ValueError
        If two tables share a key, or a key is ``tables`` (the combined file).
    """
    keys = [t.key for t in tables]
    dup = sorted({k for k in keys if keys.count(k) > 1} | ({"tables"} & set(keys)))
    if dup:
        raise ValueError(f"table keys must be unique and not 'tables': {dup}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for t in tables:
        paths += write_table(t, folder)
    p = folder / "tables.md"
    atomic_write(p, "\n".join(to_markdown(t) for t in tables).encode("utf-8"))
    paths.append(p)
    return paths


def write_table(table: Table, folder: str | os.PathLike) -> list[Path]:
    """Write ``<key>.md``, ``<key>.tex`` and ``<key>.csv`` of one table into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, text in (("md", to_markdown(table)), ("tex", to_latex(table)), ("csv", to_csv(table))):
        p = folder / f"{table.key}.{ext}"
        atomic_write(p, text.encode("utf-8"))
        paths.append(p)
    return paths

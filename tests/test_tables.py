"""Paper tables from a fixed, hand-written records frame, checked against golden files.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 pytest tests/test_tables.py`` and read the diff before committing.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.report.tables import (
    LONG_ROWS,
    Cell,
    Table,
    backbone_table,
    comparison_table,
    concatenation_table,
    ensemble_table,
    study_tables,
    to_csv,
    to_latex,
    to_markdown,
    write_tables,
)

GOLDEN = Path(__file__).parent / "data" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

A = "alexnet:fc6"
L = "tf_efficientnet_lite0:avgpool"
F = "tf_efficientnet_lite0@ft-3f2a9c0d1e2b:avgpool"  # fine-tuned on the training split
CODES = {A: "A", L: "L0a", F: "L0b"}  # what block_codes gives these three
VOTE = ("svm-rbf", "rf")

# candidate: kind, head, blocks, AUC on folds 0, 1, 2 and test. The best baseline is
# CNN lite0 (CV 0.850 ± 0.010, test 0.830); accuracy is AUC - 0.07 throughout.
SPEC = {
    "CNN lite0": ("baseline", "lite0", (), (0.84, 0.86, 0.85, 0.83)),
    "[A] rf": ("head", "rf", (A,), (0.78, 0.80, 0.82, 0.79)),
    "[A] svm-rbf": ("head", "svm-rbf", (A,), (0.84, 0.86, 0.88, 0.85)),
    "[L0a] rf": ("head", "rf", (L,), (0.82, 0.84, 0.83, 0.81)),
    "[L0a] svm-rbf": ("head", "svm-rbf", (L,), (0.85, 0.85, 0.85, 0.86)),  # ties the baseline: unmarked
    "[L0b] rf": ("head", "rf", (F,), (0.88, 0.90, 0.89, 0.84)),
    "[L0b] svm-rbf": ("head", "svm-rbf", (F,), (0.90, 0.93, 0.90, 0.87)),  # fold 1 optimistic
    "[A+L0a] rf": ("head", "rf", (A, L), (0.86, 0.87, 0.88, 0.85)),
    "[A+L0a] svm-rbf": ("head", "svm-rbf", (A, L), (0.89, 0.90, 0.91, 0.88)),
    "[A+L0b] rf": ("head", "rf", (A, F), (0.84, 0.83, 0.85, 0.86)),
    "[A+L0b] svm-rbf": ("head", "svm-rbf", (A, F), (0.92, 0.93, 0.94, 0.90)),
    "[A+L0a+L0b] rf": ("head", "rf", (A, L, F), (0.91, 0.92, 0.90, 0.89)),
    "[A+L0a+L0b] svm-rbf": ("head", "svm-rbf", (A, L, F), (0.92, 0.94, 0.92, 0.91)),
    "[A] vote-hard(svm-rbf+rf)": ("vote-hard", None, (A,), (0.80, 0.81, 0.79, 0.80)),
    "[A] vote-soft(svm-rbf+rf)": ("vote-soft", None, (A,), (0.86, 0.87, 0.85, 0.84)),
    "[A+L0a] vote-hard(svm-rbf+rf)": ("vote-hard", None, (A, L), (0.85, 0.86, 0.84, 0.82)),
    "[A+L0a] vote-soft(svm-rbf+rf)": ("vote-soft", None, (A, L), (0.90, 0.91, 0.92, 0.90)),
    "[A+L0a+L0b] vote-hard(svm-rbf+rf)": ("vote-hard", None, (A, L, F), (0.88, 0.89, 0.87, 0.86)),
    "[A+L0a+L0b] vote-soft(svm-rbf+rf)": ("vote-soft", None, (A, L, F), (0.93, 0.95, 0.94, 0.92)),
}
FOLDS = ("0", "1", "2", "test")


def make_records() -> pd.DataFrame:
    """The layout of ``ResultStore(run).frame()``: one row per (candidate, fold)."""
    rows = []
    for cand, (kind, head, blocks, aucs) in SPEC.items():
        for fold, auc in zip(FOLDS, aucs):
            rows.append({
                "candidate": cand, "kind": kind, "head": head,
                "heads": list(VOTE) if kind.startswith("vote") else [],
                "blocks": list(blocks), "codes": [CODES[b] for b in blocks], "size": len(blocks),
                "fold": fold, "auc": auc, "accuracy": auc - 0.07,
                "optimistic": True if (cand == "[L0b] svm-rbf" and fold == "1") else np.nan,
                "backbone": "tf_efficientnet_lite0" if kind == "baseline" else np.nan,
            })
    return pd.DataFrame(rows)


def _m(v, lo, hi):
    return {"": v, "_low": lo, "_high": hi}


# The search's comparison frame, in a scrambled row order (the table orders it).
COMPARISON_ROWS = [
    # candidate, role, cv_auc, cv_auc_sd, auc, accuracy, sensitivity, specificity, ppv, npv,
    # threshold, p_auc, p_auc_holm, p_accuracy, p_accuracy_holm
    ("CNN lite0", "baseline", 0.85, 0.01, (0.83, 0.76, 0.90), (0.78, 0.71, 0.84), (0.75, 0.62, 0.85),
     (0.80, 0.71, 0.87), (0.70, 0.57, 0.80), (0.84, 0.75, 0.90), 0.5, np.nan, np.nan, np.nan, np.nan),
    ("[A+L0a+L0b] svm-rbf", "best on test (optimistic)", 0.9267, 0.0115, (0.91, 0.85, 0.97),
     (0.86, 0.80, 0.91), (0.85, 0.73, 0.93), (0.87, 0.79, 0.92), (0.80, 0.68, 0.89), (0.90, 0.83, 0.95),
     0.44, 0.012, np.nan, 0.02, np.nan),
    ("[A+L0a+L0b] vote-soft(svm-rbf+rf)", "selected", 0.94, 0.01, (0.92, 0.871, 0.969), (0.87, 0.81, 0.92),
     (0.82, 0.70, 0.90), (0.90, 0.83, 0.94), (0.84, 0.72, 0.91), (0.89, 0.82, 0.94), 0.41, 0.031, 0.062,
     0.0004, 0.0008),
    ("[A+L0b] svm-rbf", "top-k", 0.93, 0.01, (0.90, 0.84, 0.96), (0.80, 0.73, 0.86), (0.72, 0.60, 0.82),
     (0.85, 0.77, 0.91), (0.75, 0.62, 0.84), (0.83, 0.75, 0.89), 0.38, 0.2, 0.2, 0.5, 0.5),
    ("[A+L0a] vote-soft(svm-rbf+rf)", "top-k", 0.91, 0.01, (0.82, 0.75, 0.89), (0.81, 0.74, 0.87), (0.78, 0.66, 0.87),
     (0.83, 0.75, 0.89), np.nan, (0.86, 0.78, 0.92), 0.47, 0.6, 0.6, 0.3, 0.6),
]
METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")


def make_comparison() -> pd.DataFrame:
    rows = []
    for cand, role, cv, sd, *rest in COMPARISON_ROWS:
        vals, (thr, pa, pah, pc, pch) = rest[:6], rest[6:]
        row = {"candidate": cand, "role": role, "cv_auc": cv, "cv_auc_sd": sd}
        for m, v in zip(METRICS, vals):
            v = v if isinstance(v, tuple) else (v, np.nan, np.nan)
            row.update({m: v[0], f"{m}_low": v[1], f"{m}_high": v[2]})
        row.update(threshold=thr, p_auc=pa, p_auc_holm=pah, p_accuracy=pc, p_accuracy_holm=pch)
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return make_records()


@pytest.fixture(scope="module")
def tables(records) -> list[Table]:
    return study_tables(records, make_comparison())


def _cell(table: Table, row_labels: tuple[str, ...], column: str) -> Cell:
    j = table.columns.index(column)
    rows = [r for r in table.rows if tuple(c.text for c in r[:len(row_labels)]) == row_labels]
    assert len(rows) == 1, (row_labels, [r[0].text for r in table.rows])
    return rows[0][j]


def _marked(table: Table) -> set[tuple[str, str]]:
    return {(" / ".join(c.text for c in r[:2] if c.value is None), table.columns[j])
            for r in table.rows for j, c in enumerate(r) if c.below_baseline}


# ---- golden files ----------------------------------------------------------------------------


def test_golden_files(tables, tmp_path):
    assert [t.key for t in tables] == ["backbone-alexnet-auc", "backbone-tf-efficientnet-lite0-auc",
                                       "concatenation-auc", "ensembles-auc", "comparison"]
    out = GOLDEN if UPDATE else tmp_path
    paths = write_tables(tables, out)
    assert [p.name for p in paths][-1] == "tables.md" and len(paths) == 3 * len(tables) + 1
    if UPDATE:
        pytest.skip(f"golden files written to {GOLDEN}; read the diff")
    stale = []
    for p in paths:
        golden = GOLDEN / p.name
        assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
        if p.read_bytes() != golden.read_bytes():
            stale.append(p.name)
    assert not stale, f"output differs from the golden files {stale}; UPDATE_GOLDEN=1 if intended"
    assert b"\r" not in (tmp_path / "tables.md").read_bytes()


def test_same_records_any_order_same_bytes(records):
    shuffled = records.sample(frac=1.0, random_state=3).reset_index(drop=True)
    comp = make_comparison()
    a = study_tables(records, comp)
    b = study_tables(shuffled, comp.iloc[::-1].reset_index(drop=True))
    for ta, tb in zip(a, b):
        assert to_markdown(ta) == to_markdown(tb)
        assert to_latex(ta) == to_latex(tb)
        assert to_csv(ta) == to_csv(tb)


# ---- marks -----------------------------------------------------------------------------------


def test_below_baseline_marks_exactly_where_expected(records):
    lite = backbone_table(records, "tf_efficientnet_lite0")
    assert lite.columns == ["Tap", "Weights", "rf (CV)", "rf (test)", "svm-rbf (CV)", "svm-rbf (test)"]
    assert [[c.text for c in r[:2]] for r in lite.rows] == [
        ["avgpool", "pretrained"], ["avgpool", "fine-tuned"], ["end-to-end (CNN lite0)", "fine-tuned"]]
    # CV 0.830 < 0.850 and test 0.810 < 0.830; 0.850 ties the baseline and stays unmarked.
    assert _marked(lite) == {("avgpool / pretrained", "rf (CV)"), ("avgpool / pretrained", "rf (test)")}
    assert _marked(backbone_table(records, "alexnet")) == {
        ("fc6 / pretrained", "rf (CV)"), ("fc6 / pretrained", "rf (test)")}
    assert _marked(concatenation_table(records)) == {("[A+L0b]", "rf (CV)")}
    assert _marked(ensemble_table(records)) == {
        ("[A]", "vote-hard (CV)"), ("[A]", "vote-hard (test)"), ("[A+L0a]", "vote-hard (test)")}

    md = to_markdown(lite)
    assert " 0.830 ± 0.010† |" in md and " 0.850 ± 0.000 |" in md
    assert "† below the best end-to-end baseline, CNN lite0 (CV AUC 0.850 ± 0.010; test 0.830)." in md
    tex = to_latex(lite)
    stacked = r"\begin{tabular}[t]{@{}r@{}}"  # this table is wide enough for two-line cells
    assert rf"\underline{{{stacked}0.830 \\ $\pm$ 0.010\end{{tabular}}}}" in tex
    assert rf"\underline{{{stacked}0.850" not in tex and rf"{stacked}0.850 \\ $\pm$ 0.000" in tex


def test_best_is_bold_on_cv_only(records):
    t = concatenation_table(records)
    assert [r[0].text for r in t.rows] == ["[A+L0a]", "[A+L0b]", "[A+L0a+L0b]"]  # size, then code
    best = {(r[0].text, t.columns[j]) for r in t.rows for j, c in enumerate(r) if c.best}
    assert best == {("[A+L0a+L0b]", "rf (CV)"), ("[A+L0b]", "svm-rbf (CV)")}
    assert "| **0.930 ± 0.010** |" in to_markdown(t)
    assert r"\textbf{0.930 $\pm$ 0.010}" in to_latex(t)
    lite = backbone_table(records, "tf_efficientnet_lite0")
    assert not any(c.best for c in lite.rows[-1])  # the CNN is not one of the heads


def test_optimistic_cell_and_note(records):
    lite = backbone_table(records, "tf_efficientnet_lite0")
    starred = [(r[1].text, lite.columns[j]) for r in lite.rows for j, c in enumerate(r) if c.text.endswith("*")]
    assert starred == [("fine-tuned", "svm-rbf (CV)")]
    assert _cell(lite, ("avgpool", "fine-tuned"), "svm-rbf (CV)").text == "0.910 ± 0.017*"
    assert "* CV estimate optimistic: the fine-tuned network saw these folds." in lite.notes
    md = to_markdown(lite)
    assert "0.910 ± 0.017\\*" in md and "\\* CV estimate optimistic" in md
    assert not any("optimistic" in n for n in backbone_table(records, "alexnet").notes)


def test_no_baseline_marks_nothing(records):
    t = concatenation_table(records[records["kind"] != "baseline"])
    assert not _marked(t) and "†" not in to_markdown(t) and r"\underline" not in to_latex(t)
    assert any("nothing is marked" in n for n in t.notes)


def test_metric_switch(records):
    t = ensemble_table(records, "accuracy")
    assert t.key == "ensembles-accuracy"
    assert _cell(t, ("[A+L0a+L0b]",), "vote-soft (CV)").text == "0.870 ± 0.010"
    with pytest.raises(KeyError, match="no metric 'f2'"):
        ensemble_table(records, "f2")
    with pytest.raises(ValueError, match="backbones: alexnet, tf_efficientnet_lite0"):
        backbone_table(records, "vgg16")


def test_comparison_layout_and_marks():
    t = comparison_table(make_comparison())
    assert [r[1].text for r in t.rows] == ["selected", "top-k", "top-k", "baseline", "best on test (optimistic)"]
    assert t.rules == (4,)
    sel = t.rows[0]
    col = {c: j for j, c in enumerate(t.columns)}
    assert sel[col["AUC"]].text == "0.920 (0.871–0.969)"
    assert sel[col["p AUC"]].text == "0.031" and sel[col["p accuracy"]].text == "<0.001"
    assert t.rows[3][col["p AUC"]].text == "–"  # the baseline is not tested against itself
    # Below the best baseline row's value of each column: [A+L0a] vote-soft's AUC 0.82 < 0.83,
    # [A+L0b] svm-rbf's sensitivity 0.72 < 0.75 and NPV 0.83 < 0.84; the optimistic row is never bold.
    assert _marked(t) == {("[A+L0a] vote-soft(svm-rbf+rf) / top-k", "AUC"),
                          ("[A+L0b] svm-rbf / top-k", "Sensitivity"), ("[A+L0b] svm-rbf / top-k", "NPV")}
    assert not any(c.best for c in t.rows[4])
    assert sel[col["AUC"]].best and sel[col["CV AUC"]].best
    tex = to_latex(t)
    body = tex.split(r"\midrule", 1)[1]
    assert body.count(r"\midrule") == 1  # the rule above the optimistic row
    assert body.index(r"\midrule") < body.index("best on test")
    assert r"$<$0.001" in tex and "0.871--0.969" in tex and r"95 \% interval" in tex
    md = to_markdown(t)
    assert "Below the rule (the last row): the candidate with the best test value" in md
    assert md.index("| [A+L0a+L0b] svm-rbf") > md.index("| CNN lite0")


def test_latex_escaping(records):
    concat = to_latex(concatenation_table(records))
    assert r"L0b = tf\_efficientnet\_lite0@ft-3f2a9c0d1e2b:avgpool" in concat.replace(r"\allowbreak{}", "")
    assert "tf_efficientnet" not in concat
    assert "{}[A+L0a]" in concat  # a row starting with "[" is not read as \\[<length>]
    assert "±" not in concat and "–" not in concat
    lite = to_latex(backbone_table(records, "tf_efficientnet_lite0"))
    assert r"\caption{tf\_efficientnet\_lite0: AUC" in lite
    assert r"\label{tab:backbone-tf-efficientnet-lite0-auc}" in lite
    for s in (r"\begin{table}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{table}"):
        assert s in lite
    t = Table("50% & #1 <x>", ["a_b", "c"], [[Cell("x~y^z\\"), Cell("$5", 5.0)]], key="esc")
    tex = to_latex(t)
    assert r"\caption{50\% \& \#1 $<$x$>$}" in tex and r"a\_b & c" in tex
    assert r"x\textasciitilde{}y\textasciicircum{}z\textbackslash{} & \$5 \\" in tex


def test_csv_is_numeric(records):
    t = backbone_table(records, "tf_efficientnet_lite0")
    df = pd.read_csv(io.StringIO(to_csv(t)))
    assert list(df.columns) == t.columns
    for c in t.columns[2:]:
        assert df[c].dtype == float, c
    # Full precision, not the formatted text; the CNN fills only the first head's columns.
    assert df.loc[1, "svm-rbf (CV)"] == pytest.approx((0.90 + 0.93 + 0.90) / 3, abs=1e-15)
    assert df.loc[2, "rf (CV)"] == pytest.approx(0.85) and np.isnan(df.loc[2, "svm-rbf (CV)"])
    assert "±" not in to_csv(t) and "†" not in to_csv(t)
    comp = pd.read_csv(io.StringIO(to_csv(comparison_table(make_comparison()))))
    assert comp["p accuracy"].iloc[0] == pytest.approx(0.0004) and comp["AUC"].dtype == float


def test_table_checks():
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        Table("t", ["a"], [[Cell("x"), Cell("y")]], key="k")
    with pytest.raises(ValueError, match="table key"):
        Table("t", ["a"], [], key="a b")
    t = Table("t", ["a"], [], key="k")
    with pytest.raises(ValueError, match="unique"):
        write_tables([t, t], "/nonexistent")


def _long_table(n: int = 45) -> Table:
    rows = [[Cell(f"[L0a+L1b+L2a] head{i}"), Cell("0.900 ± 0.020", 0.9), Cell("0.910 (0.860–0.950)", 0.91)]
            for i in range(n)]
    return Table("A long table", ["Features", "CV", "Test"], rows, ["A note naming tf_efficientnet_lite0@ft-1d1711e46707."],
                 key="long")


def test_latex_layouts():
    wide = comparison_table(make_comparison())
    tex = to_latex(wide)
    # The comparison is wide: both columns of a two-column paper, two-line interval cells.
    assert tex.startswith(r"\begin{table*}") and r"\begin{tabular}[t]{@{}r@{}}0.920 \\ (0.871--0.969)\end{tabular}" in tex
    assert r"\resizebox{\linewidth}" in tex  # shrunk to the line only where wider
    long = to_latex(_long_table())
    assert r"\begin{longtable}" in long and long.count(r"\endhead") == 1 and r"\begin{table" not in long
    assert r"\begin{longtable}" not in to_latex(_long_table(LONG_ROWS))


def test_latex_compiles(tables, tmp_path):
    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("no TeX engine (pdflatex): LaTeX compile not checked")
    shown = list(tables) + [_long_table(120)]  # 120 rows: the longtable breaks over pages
    write_tables(shown, tmp_path)
    inputs = "\n".join(rf"\input{{{t.key}.tex}}" for t in shown)
    doc = tmp_path / "doc.tex"
    # The packages to_latex documents, in a plain one-column article.
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx,longtable}\n\\begin{document}\n"
                   + inputs + "\n\\end{document}\n")
    cmd = [engine, "-interaction=nonstopmode", "-halt-on-error", doc.name]
    for _ in range(2):  # longtable settles its column widths on the second pass
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "doc.pdf").exists()
    log = (tmp_path / "doc.log").read_text(errors="replace")
    # Every table fits the page: nothing sticks out of the text block.
    assert "Overfull \\hbox" not in log and "Float too large" not in log, log[-3000:]


def test_comparison_shows_the_corrected_cv_interval_and_p_cv():
    comp = make_comparison()
    comp["cv_auc_low"], comp["cv_auc_high"] = comp.cv_auc - 0.0304, comp.cv_auc + 0.0304
    comp["p_cv"] = [np.nan, 0.01, 0.004, 0.2, 0.03]  # the baseline (first row) is not tested against itself
    comp["p_cv_holm"] = [np.nan, np.nan, 0.012, 0.2, 0.06]  # the optimistic row is outside the Holm family
    t = comparison_table(comp)
    col = {c: j for j, c in enumerate(t.columns)}
    assert t.columns[-2:] == ["p CV (corrected t)", "p CV (Holm)"]
    sel = t.rows[0]
    assert sel[col["CV AUC"]].text == "0.940 ± 0.010 [0.910–0.970]" and sel[col["CV AUC"]].value == 0.94
    assert sel[col["p CV (corrected t)"]].text == "0.004" and sel[col["p CV (Holm)"]].text == "0.012"
    assert t.rows[3][col["p CV (corrected t)"]].text == "–"  # the baseline row
    md = to_markdown(t)
    assert "Nadeau & Bengio 2003" in md and "p CV: corrected resampled t-test" in md
    assert "per-fold CV AUC against the best baseline's, paired by fold" in md
    # A frame without the interval keeps the plain mean ± sd and says nothing of an interval.
    plain = to_markdown(comparison_table(make_comparison()))
    assert "0.940 ± 0.010 |" in plain.replace("**", "") and "Nadeau" not in plain
    # LaTeX breaks the CV cell before its bracket, and "[" opening the second line is protected.
    assert r"0.940 $\pm$ 0.010 \\ {}[0.910--0.970]" in to_latex(t)
    # A ranking metric other than AUC is named in the note.
    other = comp.assign(cv_balanced_accuracy=0.8)
    assert "per-fold CV balanced accuracy" in to_markdown(comparison_table(other))


def test_intervals_with_a_negative_end_read_as_two_numbers():
    from workbench.report.tables import fmt_interval, fmt_mean_sd_interval

    assert fmt_interval(0.908, 0.851, 0.957) == "0.908 (0.851–0.957)"
    assert fmt_interval(-0.485, -1.085, 0.114) == "−0.485 (−1.085, 0.114)"
    assert fmt_mean_sd_interval(0.010, 0.020, -0.015, 0.035) == "0.010 ± 0.020 [−0.015, 0.035]"
    assert fmt_mean_sd_interval(0.913, 0.020, 0.875, 0.951) == "0.913 ± 0.020 [0.875–0.951]"

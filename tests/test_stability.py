"""Each CV repeat's ranking alone: firsts, ranks, the repeats' agreement, and the report's section."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workbench.report.tables import stability_table, to_csv, to_markdown
from workbench.search.stability import ranking_stability

#: Per-repeat CV means (repeat -> candidate -> mean); E is the baseline. Over the three
#: repeats B has the best mean (0.8633), A 0.86, C 0.8333. Repeat 2 ties A and B (0.86).
MEANS = {0: {"A": 0.90, "B": 0.85, "C": 0.80, "D": 0.70, "E": 0.75},
         1: {"A": 0.82, "B": 0.88, "C": 0.80, "D": 0.72, "E": 0.70},
         2: {"A": 0.86, "B": 0.86, "C": 0.90, "D": 0.60, "E": 0.65}}


def _fold(repeat: int, k: int) -> str:
    return str(k) if repeat == 0 else f"r{repeat}-{k}"


def records(means=MEANS, drop: tuple[str, str] | None = None) -> pd.DataFrame:
    """Two folds per repeat at mean -/+ 0.02 (the same two values for tied means), a test row each."""
    rows = []
    for r, by in means.items():
        for c, m in by.items():
            for k, v in enumerate((m - 0.02, m + 0.02)):
                if (c, _fold(r, k)) != drop:
                    rows.append({"candidate": c, "kind": "baseline" if c == "E" else "head", "size": 1,
                                 "fold": _fold(r, k), "auc": v})
    for c in "ABCDE":  # test rows never enter a repeat's ranking
        rows.append({"candidate": c, "kind": "baseline" if c == "E" else "head", "size": 1, "fold": "test",
                     "auc": {"D": 1.0}.get(c, 0.5)})
    return pd.DataFrame(rows)


def test_each_repeat_alone_gives_its_first_and_the_ranks_of_selected_and_baseline():
    st = ranking_stability(records(), "auc", "B", "E")
    assert [s.repeat for s in st.repeats] == [0, 1, 2] and [s.folds for s in st.repeats] == [2, 2, 2]
    # Repeat 2 ranks C, then A and B tied at 0.86 (the label breaks the tie, as the main ranking's rule).
    assert [s.first for s in st.repeats] == ["A", "B", "C"]
    assert [s.first_mean for s in st.repeats] == pytest.approx([0.90, 0.88, 0.90])
    assert [s.selected_rank for s in st.repeats] == [2, 1, 3]
    assert [s.baseline_rank for s in st.repeats] == [4, 5, 4]  # baselines are ranked among the candidates
    assert [s.n_candidates for s in st.repeats] == [5, 5, 5] and st.excluded == {}


def test_the_correlations_are_spearman_and_kendall_of_the_repeats_means():
    st = ranking_stability(records(), "auc", "B", "E")
    assert list(zip(st.pairs.repeat_a, st.pairs.repeat_b)) == [(0, 1), (0, 2), (1, 2)]
    assert list(st.pairs.n) == [5, 5, 5]
    # Repeats 0 and 1 by hand: rank differences 1, -1, 0, -1, 1 -> rho = 1 - 6*4/(5*24) = 0.8;
    # two discordant pairs of ten (A-B, D-E) -> tau = (8 - 2)/10 = 0.6.
    assert st.pairs.spearman[0] == pytest.approx(0.8) and st.pairs.kendall[0] == pytest.approx(0.6)
    v = {r: [MEANS[r][c] for c in "ABCDE"] for r in MEANS}
    for i, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)]):
        assert st.pairs.spearman[i] == pytest.approx(sps.spearmanr(v[a], v[b]).statistic)
        assert st.pairs.kendall[i] == pytest.approx(sps.kendalltau(v[a], v[b]).statistic)
    assert st.mean_spearman == pytest.approx(st.pairs.spearman.mean())
    assert st.mean_kendall == pytest.approx(st.pairs.kendall.mean())
    note = st.note()
    lo, hi = st.pairs.spearman.min(), st.pairs.spearman.max()
    assert note.startswith(f"Ranking across the 3 CV repeats, each repeat's folds alone: Spearman {lo:.2f}–{hi:.2f}")
    assert "the selected candidate, B, ranks 2, 1, 3 in the repeats alone" in note
    assert "the best baseline, E, ranks 4, 5, 4" in note
    assert "each repeat alone would select a different candidate: A (repeat 0), B (repeat 1), C (repeat 2)" in note


def test_the_first_is_taken_from_the_eligible_pool_and_the_direction_follows_the_metric():
    st = ranking_stability(records(), "auc", "B", "E", eligible=["B", "D"])
    assert [s.first for s in st.repeats] == ["B", "B", "B"]
    assert "every repeat alone would select it too" in st.note()
    # A lower-is-better metric ranks low values first (summarize's rule).
    low = records().rename(columns={"auc": "lr_minus"})
    st = ranking_stability(low, "lr_minus", "D", None)
    assert [s.first for s in st.repeats] == ["D", "D", "D"] and [s.selected_rank for s in st.repeats] == [1, 2, 1]
    assert st.repeats[0].baseline_rank is None and "best baseline" not in st.note()


def test_one_repeat_gives_no_stability():
    assert ranking_stability(records({0: MEANS[0]}), "auc", "A", "E") is None
    assert ranking_stability(records().query("fold == 'test'"), "auc", "A", "E") is None


def test_a_candidate_missing_a_fold_of_a_repeat_is_left_out_of_that_repeat_and_said():
    st = ranking_stability(records(drop=("D", "r1-1")), "auc", "B", "E")
    assert st.excluded == {1: ("D",)}
    assert [s.n_candidates for s in st.repeats] == [5, 4, 5]
    assert st.repeats[1].baseline_rank == 4  # E moves up: D is not ranked there
    assert list(st.pairs.n) == [4, 5, 4]  # pairs with repeat 1 correlate the four common candidates
    v = {r: [MEANS[r][c] for c in "ABCE"] for r in MEANS}
    assert st.pairs.spearman[0] == pytest.approx(sps.spearmanr(v[0], v[1]).statistic)
    assert "1 candidate lacking a fold of repeat 1 is left out of that repeat's ranking (D)" in st.note()
    table = stability_table(st)
    assert any("Repeat 1: 1 candidate(s) lack a record of one of its folds" in n and n.endswith(": D.")
               for n in table.notes)
    # The selected candidate left out of a repeat has no rank there.
    st = ranking_stability(records(drop=("B", "r2-0")), "auc", "B", "E")
    assert st.repeats[2].selected_rank is None and "ranks 2, 1, – in the repeats alone" in st.note()


def test_the_table_has_one_row_per_repeat_in_every_format():
    table = stability_table(ranking_stability(records(), "auc", "B", "E"))
    assert table.key == "stability" and table.title == "Stability of the ranking across CV repeats"
    assert [[c.text for c in row] for row in table.rows] == [
        ["0", "A", "0.900", "2", "4", "5"], ["1", "B", "0.880", "1", "5", "5"], ["2", "C", "0.900", "3", "4", "5"]]
    csv = to_csv(table).splitlines()
    assert csv[0] == ("Repeat,First in the repeat alone,Its CV AUC,Rank of the selected,Rank of the best baseline,"
                      "Candidates")
    assert csv[1:] == ["0,A,0.9,2,4,5", "1,B,0.88,1,5,5", "2,C,0.9,3,4,5"]  # counts and ranks as whole numbers
    assert "repeats 0 and 1: Spearman 0.800, Kendall 0.600 (n 5)" in " ".join(table.notes)
    md = to_markdown(table)
    assert md.startswith("**Stability of the ranking across CV repeats**") and md.count("\n| ") == 5


# ---- the report ---------------------------------------------------------------------------


def _report_files(out) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_one_repeat_report_is_unchanged(tmp_path, monkeypatch):
    """No section, no note: the same bytes as with the stability step taken out."""
    from _sweepdata import FAST, make_task, sweep_args
    from workbench.report.build import write_report
    from workbench.search import select
    from workbench.search.sweep import sweep

    manifest, fs = make_task(n=60, test_every=3)
    sweep(manifest, fs, out=tmp_path / "run", **sweep_args(**{**FAST, "heads": ["logreg"], "grids": {"logreg": {}}}))
    with_it = _report_files(write_report(tmp_path / "run"))
    assert not [k for k in with_it if "stability" in k]
    assert b"CV repeats" not in with_it["report.md"]
    monkeypatch.setattr(select, "ranking_stability", lambda *a, **k: None)
    assert _report_files(write_report(tmp_path / "run")) == with_it


@pytest.mark.slow
def test_a_repeated_run_reports_the_stability_of_its_ranking(tmp_path):
    from _sweepdata import FAST, make_task, sweep_args
    from workbench.evaluation.store import ResultStore
    from workbench.report.build import reported_search, write_report
    from workbench.search.sweep import sweep

    manifest, fs = make_task(n=60, test_every=3)
    sweep(manifest, fs, out=tmp_path / "run",
          **sweep_args(**{**FAST, "heads": ["logreg"], "grids": {"logreg": {}}, "repeats": 2}))
    out = write_report(tmp_path / "run")
    result, _ = reported_search(tmp_path / "run")
    expected = ranking_stability(ResultStore(tmp_path / "run").frame(), "auc", result.selected[0], None)
    st = result.stability
    assert [(s.first, s.selected_rank, s.n_candidates) for s in st.repeats] == [
        (s.first, s.selected_rank, s.n_candidates) for s in expected.repeats]
    assert st.pairs.equals(expected.pairs)
    for ext in ("md", "tex", "csv"):
        assert (out / "tables" / f"stability.{ext}").is_file()
    report = (out / "report.md").read_text()
    assert "Stability of the ranking across CV repeats" in report
    assert f"- {st.note()}" in report and "[stability](tables/stability.md)" in report
    csv = (out / "tables" / "stability.csv").read_text().splitlines()
    assert len(csv) == 3 and csv[1].split(",")[1] == st.repeats[0].first

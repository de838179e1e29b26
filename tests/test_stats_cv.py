"""Statistics of (repeated) CV: the corrected resampled t-test, its interval, Friedman and
the Nemenyi critical difference, and the CD diagram over a run's CV folds."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import friedmanchisquare, t as student_t

from workbench.errors import WorkbenchError
from workbench.evaluation.stats import (
    StatsInputError,
    corrected_cv_interval,
    corrected_resampled_ttest,
    friedman_test,
    nemenyi_cd,
)
from workbench.report.cd import CDInputError, cd_diagram_figure, cliques, cv_cd_section

# Five folds' differences a - b, 400 training and 100 evaluation images per fold.
DIFF = np.array([0.02, 0.05, -0.01, 0.03, 0.04])
B = np.array([0.90, 0.85, 0.88, 0.91, 0.87])


def test_corrected_ttest_equals_a_hand_computation():
    r = corrected_resampled_ttest(B + DIFF, B, n_train=400, n_test=100)
    # mean = 0.13 / 5 = 0.026
    # deviations -0.006, 0.024, -0.036, 0.004, 0.014; squares sum to 0.00212; s^2 = 0.00212 / 4 = 0.00053
    # corrected variance (1/5 + 100/400) * 0.00053 = 0.45 * 0.00053 = 0.0002385; se = 0.0154434
    # t = 0.026 / 0.0154434 = 1.68357 on 4 degrees of freedom
    se = math.sqrt(0.45 * 0.00053)
    assert r.mean_diff == pytest.approx(0.026)
    assert r.t == pytest.approx(0.026 / se) and r.t == pytest.approx(1.68357, abs=1e-5)
    assert r.df == 4
    assert r.p_value == pytest.approx(2 * student_t.sf(1.683567, 4), abs=1e-6)
    assert 0.16 < r.p_value < 0.17  # the plain paired t-test (t = 2.525) would give p = 0.065
    half = 2.776445 * se  # t(0.975, 4) = 2.776445
    assert (r.low, r.high) == pytest.approx((0.026 - half, 0.026 + half), abs=1e-6)
    # Swapping the models flips the sign, not the p value.
    s = corrected_resampled_ttest(B, B + DIFF, 400, 100)
    assert s.t == pytest.approx(-r.t) and s.p_value == pytest.approx(r.p_value)


def test_corrected_ttest_sizes_per_fold_are_averaged():
    per_fold = corrected_resampled_ttest(B + DIFF, B, [399, 400, 401, 400, 400], [101, 100, 99, 100, 100])
    assert per_fold == pytest.approx(tuple(corrected_resampled_ttest(B + DIFF, B, 400, 100)))
    # A larger test share widens the variance: n_test / n_train = 1 (2-fold CV) against 0.25.
    assert corrected_resampled_ttest(B + DIFF, B, 100, 100).p_value > per_fold.p_value


def test_corrected_ttest_zero_variance_gives_the_limits():
    same = corrected_resampled_ttest(B, B, 400, 100)
    assert (same.mean_diff, same.t, same.p_value, same.low, same.high) == (0.0, 0.0, 1.0, 0.0, 0.0)
    dyadic = np.array([0.5, 0.25, 0.75, 0.125, 0.375])  # + 0.25 exactly, in binary floating point
    shifted = corrected_resampled_ttest(dyadic + 0.25, dyadic, 400, 100)
    assert shifted.t == math.inf and shifted.p_value == 0.0 and shifted.low == shifted.high == 0.25
    assert corrected_resampled_ttest(dyadic, dyadic + 0.25, 400, 100).t == -math.inf


@pytest.mark.parametrize("a, b, n_train, n_test, match", [
    ([0.9], [0.8], 400, 100, "at least 2 folds"),
    ([0.9, 0.8, 0.7], [0.8, 0.7], 400, 100, "length mismatch: a has 3 folds, b has 2"),
    ([0.9, float("nan")], [0.8, 0.7], 400, 100, "nan or inf"),
    ([0.9, 0.8], [0.8, 0.7], 0, 100, "n_train must be positive"),
    ([0.9, 0.8], [0.8, 0.7], 400, [100, 100, 100], r"n_test must be a number or one per fold \(2\)"),
    ([[0.9, 0.8]], [[0.8, 0.7]], 400, 100, "1-D"),
])
def test_corrected_ttest_rejects_bad_input(a, b, n_train, n_test, match):
    with pytest.raises(StatsInputError, match=match) as e:
        corrected_resampled_ttest(a, b, n_train, n_test)
    assert isinstance(e.value, WorkbenchError) and isinstance(e.value, ValueError)


def test_corrected_cv_interval_equals_a_hand_computation():
    values = B + DIFF  # 0.92, 0.90, 0.87, 0.94, 0.91: mean 0.908, s^2 = 0.00067
    low, high = corrected_cv_interval(values, 400, 100)
    half = 2.776445 * math.sqrt((1 / 5 + 100 / 400) * 0.00067)
    assert (low, high) == pytest.approx((0.908 - half, 0.908 + half), abs=1e-6)
    low90, high90 = corrected_cv_interval(values, 400, 100, alpha=0.10)
    assert low < low90 < high90 < high
    assert corrected_cv_interval([0.9, 0.9, 0.9], 80, 20) == (0.9, 0.9)
    with pytest.raises(StatsInputError, match="at least 2 folds"):
        corrected_cv_interval([0.9], 80, 20)
    with pytest.raises(ValueError, match="alpha"):
        corrected_cv_interval(values, 400, 100, alpha=1.5)


def test_friedman_statistic_equals_scipys():
    rng = np.random.default_rng(3)
    m = np.round(rng.uniform(0.7, 0.95, size=(10, 5)), 2)  # rounded: ties within blocks
    m[2, :2] = m[2, 2]  # and a three-way tie
    r = friedman_test(m)
    expect = friedmanchisquare(*m.T)
    assert r.statistic == pytest.approx(expect.statistic) and r.p_value == pytest.approx(expect.pvalue)
    assert (r.df, r.n_blocks, r.n_treatments) == (4, 10, 5)
    assert r.mean_ranks.sum() == pytest.approx(5 * 6 / 2)  # each block's ranks sum to k(k+1)/2


def test_friedman_mean_ranks_by_hand():
    m = np.array([[0.9, 0.8, 0.7],
                  [0.8, 0.9, 0.7],
                  [0.9, 0.7, 0.7]])  # block 3: a tie for ranks 2 and 3 -> 2.5 each
    r = friedman_test(m)
    assert r.mean_ranks == pytest.approx([(1 + 2 + 1) / 3, (2 + 1 + 2.5) / 3, (3 + 3 + 2.5) / 3])
    # Lower is better (a loss): the ranks turn around.
    assert friedman_test(m, higher_is_better=False).mean_ranks == pytest.approx([4 - 4 / 3, 4 - 5.5 / 3, 4 - 8.5 / 3])
    # Every block a full tie: no evidence, not scipy's 0/0.
    assert friedman_test(np.full((4, 3), 0.8))[:2] == (0.0, 1.0)


def test_nemenyi_cd_matches_demsar():
    # Demšar (2006), Table 5(a), printed to 3 decimals: q_0.05 = 2.343, 2.569, 2.728, 3.164 for k = 3, 4, 5, 10.
    for k, q in ((3, 2.343), (4, 2.569), (5, 2.728), (10, 3.164)):
        assert nemenyi_cd(k, 7) / math.sqrt(k * (k + 1) / (6 * 7)) == pytest.approx(q, abs=1e-3)
    # His worked example: four classifiers over 14 data sets, CD = 1.25.
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    assert friedman_test(np.random.default_rng(0).random((14, 4))).cd == pytest.approx(nemenyi_cd(4, 14))
    # alpha = 0.10: q = 2.291 for k = 4 (Table 5(b)).
    assert nemenyi_cd(4, 1, alpha=0.10) / math.sqrt(20 / 6) == pytest.approx(2.291, abs=1e-3)


@pytest.mark.parametrize("matrix, match", [
    (np.ones((5, 2)), "at least 3 treatments"),
    (np.ones((1, 4)), "at least 2 blocks"),
    (np.array([[0.9, np.nan, 0.8], [0.9, 0.8, 0.7]]), r"block 0, treatment 1"),
    (np.ones(4), "2-D"),
])
def test_friedman_rejects_bad_input(matrix, match):
    with pytest.raises(StatsInputError, match=match):
        friedman_test(matrix)


def test_cliques_are_the_maximal_groups_within_the_cd():
    ranks = [1.0, 1.5, 2.4, 3.6, 4.0]
    assert cliques(ranks, 1.0) == [(0, 1), (1, 2), (3, 4)]  # 2.4-1.0 > 1; 3.6-2.4 > 1
    assert cliques(ranks, 1.4) == [(0, 2), (2, 3), (3, 4)]  # 1.0-2.4 exactly 1.4 counts as within
    assert cliques(ranks, 10.0) == [(0, 4)]
    assert cliques(ranks, 0.1) == []
    with pytest.raises(CDInputError, match="ascending"):
        cliques([2.0, 1.0], 1.0)


def _scores() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(8, 5)) * 0.02 + [0.90, 0.88, 0.87, 0.85, 0.80],
                        columns=["A", "B", "C", "D", "E"], index=[f"f{i}" for i in range(8)])


def test_cd_diagram_figure_writes_reproducible_files(tmp_path):
    scores = _scores()
    paths, result = cd_diagram_figure(scores, tmp_path / "cd.pdf", title="five candidates")
    assert [p.name for p in paths] == ["cd.png", "cd.pdf"] and all(p.stat().st_size > 1000 for p in paths)
    expect = friedmanchisquare(*scores.to_numpy().T)
    assert result.statistic == pytest.approx(expect.statistic)
    assert np.argmin(result.mean_ranks) == 0  # A is best
    first = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    again, _ = cd_diagram_figure(scores, tmp_path / "cd", title="five candidates")
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in again] == first
    # A loss: the order turns around.
    _, loss = cd_diagram_figure(scores, tmp_path / "loss", higher_is_better=False)
    assert np.argmin(loss.mean_ranks) == 4


def test_cd_diagram_figure_rejects_bad_scores(tmp_path):
    s = _scores()
    with pytest.raises(CDInputError, match="candidate 'C' in block 'f3'"):
        cd_diagram_figure(s.assign(C=s.C.where(s.index != "f3")), tmp_path / "x")
    with pytest.raises(CDInputError, match="repeated: A"):
        cd_diagram_figure(s.set_axis(["A", "A", "C", "D", "E"], axis=1), tmp_path / "x")
    with pytest.raises(StatsInputError, match="at least 3 treatments"):
        cd_diagram_figure(s[["A", "B"]], tmp_path / "x")
    assert not list(tmp_path.iterdir())


def _records() -> pd.DataFrame:
    """A run's records: 4 candidates on 2 repeats x 3 folds plus a test row each; D lacks fold r1-2."""
    rows = []
    rng = np.random.default_rng(1)
    for c, base in (("A", 0.92), ("B", 0.90), ("C", 0.86), ("D", 0.84)):
        for f in ("0", "1", "2", "r1-0", "r1-1", "r1-2", "test"):
            if c == "D" and f == "r1-2":
                continue
            rows.append({"candidate": c, "kind": "svm-rbf", "fold": f,
                         "auc": 0.5 if f == "test" else base + rng.normal() * 0.01})
    return pd.DataFrame(rows)


def test_cv_cd_section_tests_the_cv_folds_of_every_repeat(tmp_path):
    records = _records()
    paths, notes = cv_cd_section(records, "auc", ["A", "B", "C", "D"], tmp_path, alpha=0.05)
    assert [p.name for p in paths] == ["cd-cv-auc.png", "cd-cv-auc.pdf"]
    # The blocks: the 5 CV folds every candidate has (not the test rows, not D's missing r1-2).
    cv = records[(records.fold != "test") & (records.fold != "r1-2")]
    m = cv.pivot(index="fold", columns="candidate", values="auc")[["A", "B", "C", "D"]].to_numpy()
    expect = friedmanchisquare(*m.T)
    assert any(f"χ²(3) = {expect.statistic:.2f}" in n and f"CD = {nemenyi_cd(4, 5):.2f}" in n
               and "over 5 CV folds" in n for n in notes)
    assert any(n.startswith("1 of 6 CV folds left out") and "r1-2" in n for n in notes)
    assert any("not independent" in n for n in notes)


def test_cv_cd_section_says_why_there_is_no_diagram(tmp_path):
    paths, notes = cv_cd_section(_records(), "auc", ["A", "B"], tmp_path)
    assert paths == [] and "at least 3 candidates" in notes[0]
    with pytest.raises(CDInputError, match="no CV records of 'Z'"):
        cv_cd_section(_records(), "auc", ["A", "B", "Z"], tmp_path)
    with pytest.raises(CDInputError, match="no metric 'aucc'"):
        cv_cd_section(_records(), "aucc", ["A", "B", "C"], tmp_path)
    assert not list(tmp_path.iterdir())


def test_friedman_and_cd_agree_with_autorank():
    """autorank (Friedman + Nemenyi, Demšar's procedure) as an independent implementation."""
    autorank = pytest.importorskip("autorank")
    scores = _scores()
    ours = friedman_test(scores.to_numpy())
    theirs = autorank.autorank(scores, alpha=0.05, force_mode="nonparametric", order="descending")
    assert theirs.omnibus == "friedman" and theirs.posthoc == "nemenyi"
    assert ours.p_value == pytest.approx(theirs.pvalue)
    assert dict(zip(scores.columns, ours.mean_ranks)) == pytest.approx(theirs.rankdf["meanrank"].to_dict())
    assert ours.cd == pytest.approx(theirs.cd, abs=1e-4)  # autorank's q comes from statsmodels' qsturng table fit

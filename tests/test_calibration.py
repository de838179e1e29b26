"""Calibration (Brier, intercept, slope, ECE, reliability, recalibration) and decision curves.

Checked against scikit-learn (brier_score_loss, calibration_curve, LogisticRegression),
statsmodels (GLM with an offset) and hand computations on fixed numbers; the report
section on a small run folder written record by record (no sweep, so it is fast).
"""
from __future__ import annotations

import csv
import io
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from _sweepdata import make_task
from workbench.errors import WorkbenchError
from workbench.evaluation.calibration import (EPS, CalibrationError, Recalibrator, brier_score,
                                              calibration_intercept_slope, calibration_summary,
                                              expected_calibration_error, reliability_curve)
from workbench.evaluation.decision import net_benefit, net_benefit_treat_all, net_benefit_treat_none
from workbench.evaluation.protocol import Protocol, build_task
from workbench.evaluation.settings import is_cv_fold
from workbench.evaluation.store import ResultStore
from workbench.report import calibration as RC
from workbench.report.build import ReportSettings
from workbench.search.select import search


def _simulated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and outcomes drawn from them: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = expit(rng.normal(0.0, 1.5, n))
    return (rng.random(n) < p).astype(int), p


# ---- scores against scikit-learn and by hand --------------------------------------------------


def test_brier_score_is_scikit_learns():
    y, p = _simulated(500, seed=1)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    assert brier_score([1, 0], [1.0, 0.0]) == 0.0 and brier_score([1, 0], [0.0, 1.0]) == 1.0
    assert brier_score(np.array([True, False]), [0.5, 0.5]) == pytest.approx(0.25)


def test_reliability_curve_is_scikit_learns_calibration_curve():
    y, p = _simulated(400, seed=2)
    for n_bins in (5, 10):
        curve = reliability_curve(y, p, n_bins=n_bins)
        observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        np.testing.assert_allclose(curve.mean_predicted, predicted)
        np.testing.assert_allclose(curve.observed, observed)
        assert curve.count.sum() == y.size and (curve.count > 0).all()
    # By hand: bins [0, .5] and (.5, 1]; 0.5 itself falls in the first (scikit-learn's rule).
    c = reliability_curve([0, 1, 1, 1], [0.2, 0.5, 0.7, 0.9], n_bins=2)
    np.testing.assert_allclose(c.mean_predicted, [0.35, 0.8])
    np.testing.assert_allclose(c.observed, [0.5, 1.0])
    np.testing.assert_array_equal(c.count, [2, 2])


def test_ece_by_hand():
    y = [0, 0, 1, 1, 1, 0]
    p = [0.05, 0.15, 0.12, 0.55, 0.95, 0.85]
    # Bins of width 0.1: {0.05} gap |0.05 - 0| = 0.05; {0.15, 0.12} mean 0.135, observed 0.5,
    # gap 0.365 (two cases); {0.55} gap 0.45; {0.85} gap 0.85; {0.95} gap 0.05.
    # ECE = (0.05 + 2 * 0.365 + 0.45 + 0.85 + 0.05) / 6 = 2.13 / 6 = 0.355
    assert expected_calibration_error(y, p) == pytest.approx(0.355)
    # One bin: |mean p - prevalence| = |2.67/6 - 0.5|.
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(2.67 / 6 - 0.5))
    # The count-weighted gap of the reliability curve's points.
    y2, p2 = _simulated(300, seed=3)
    c = reliability_curve(y2, p2, n_bins=8)
    weighted = np.sum(c.count * np.abs(c.mean_predicted - c.observed)) / c.count.sum()
    assert expected_calibration_error(y2, p2, n_bins=8) == pytest.approx(weighted)


def test_calibrated_data_have_slope_one_and_intercept_zero():
    y, p = _simulated(40_000, seed=4)
    intercept, slope = calibration_intercept_slope(y, p)
    assert abs(intercept) < 0.05 and abs(slope - 1) < 0.05
    # Over-confident (log-odds doubled): slope about 1/2. Risks over-estimated: intercept < 0.
    _, slope_over = calibration_intercept_slope(y, expit(2 * logit(p)))
    assert slope_over == pytest.approx(0.5, abs=0.03)
    intercept_high, slope_high = calibration_intercept_slope(y, expit(logit(p) + 1.0))
    assert intercept_high == pytest.approx(-1.0, abs=0.05) and abs(slope_high - 1) < 0.05
    # Under-confident (log-odds halved): slope about 2.
    assert calibration_intercept_slope(y, expit(0.5 * logit(p)))[1] == pytest.approx(2.0, abs=0.1)


def test_intercept_and_slope_against_statsmodels_and_scikit_learn():
    import statsmodels.api as sm

    rng = np.random.default_rng(5)
    p = expit(rng.normal(0, 2, 300))
    y = (rng.random(300) < expit(0.3 + 0.7 * logit(p))).astype(int)
    s = calibration_summary(y, p, alpha=0.1)
    lp = logit(p)
    glm = sm.GLM(y, np.ones((300, 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert s["intercept"] == pytest.approx(glm.params[0], abs=1e-7)
    np.testing.assert_allclose([s["intercept_low"], s["intercept_high"]], glm.conf_int(0.1)[0], atol=1e-6)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(lp[:, None], y)
    assert s["slope"] == pytest.approx(lr.coef_[0, 0], abs=1e-4)
    full = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    np.testing.assert_allclose([s["slope_low"], s["slope_high"]], full.conf_int(0.1)[1], atol=1e-8)
    assert s["n"] == 300 and s["prevalence"] == pytest.approx(y.mean()) and s["brier"] == brier_score(y, p)
    assert s["ece"] == expected_calibration_error(y, p)


def test_separated_or_extreme_probabilities():
    # p separates the classes: the slope is unbounded (NaN), the intercept is still defined.
    intercept, slope = calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isnan(slope) and np.isfinite(intercept)
    # Quasi-complete separation (a tie at the boundary) is separation too.
    assert np.isnan(calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])[1])
    assert np.isnan(calibration_intercept_slope([0, 1, 1, 0], [0.3] * 4)[1])  # constant p
    # Probabilities of exactly 0 and 1 (an isotonic map's), one positive at 0: the intercept
    # solves its score equation sum(y - sigmoid(a + logit(p))) = 0 with p clipped to EPS.
    y = np.r_[np.ones(16), [1], np.zeros(15)].astype(int)
    p = np.r_[np.ones(16), [0.0], np.zeros(15)]
    a, _ = calibration_intercept_slope(y, p)
    o = logit(np.clip(p, EPS, 1 - EPS))
    assert abs(np.sum(y - expit(a + o))) < 1e-9 and 5 < a < 20


# ---- recalibration ------------------------------------------------------------------------


def test_platt_is_logistic_regression_on_the_logit():
    rng = np.random.default_rng(6)
    p = expit(rng.normal(0, 2, 400))
    y = (rng.random(400) < expit(-0.5 + 0.6 * logit(p))).astype(int)
    r = Recalibrator("platt").fit(y, p)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(logit(p)[:, None], y)
    p_new = np.array([0.01, 0.2, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(r.transform(p_new), lr.predict_proba(logit(np.clip(p_new, EPS, 1 - EPS))[:, None])[:, 1],
                               atol=1e-5)
    # Its fit is calibrated in the large on the data it saw (the intercept's score equation).
    assert r.transform(p).mean() == pytest.approx(y.mean(), abs=1e-8)
    assert calibration_intercept_slope(y, r.transform(p))[1] == pytest.approx(1.0, abs=1e-5)


def test_isotonic_is_monotone_clipped_and_mean_preserving():
    y, p = _simulated(300, seed=7)
    p = 0.1 + 0.8 * p  # fitted on [0.1, 0.9]
    r = Recalibrator("isotonic").fit(y, p)
    fitted = r.transform(p)
    assert fitted.mean() == pytest.approx(y.mean())  # pool-adjacent-violators keeps the mean
    grid = np.linspace(0, 1, 101)
    out = r.transform(grid)
    assert (np.diff(out) >= 0).all() and out.min() >= 0 and out.max() <= 1
    assert out[0] == r.transform([0.1])[0] and out[-1] == r.transform([0.9])[0]  # clipped ends


def _oof_model(y_test: np.ndarray, seed: int = 8) -> RC.ModelPredictions:
    rng = np.random.default_rng(seed)
    oof = {}
    for fold in ("0", "1", "2", "r1-0", "r1-1", "r1-2"):
        y, p = _simulated(60, seed=int(rng.integers(1 << 30)))
        oof[fold] = (y, expit(2 * logit(p)))
    p_test = expit(rng.normal(0, 3, y_test.size))
    return RC.ModelPredictions("m", "m", "selected", "head", oof, (y_test, p_test))


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_recalibration_is_fitted_on_out_of_fold_predictions_only(method):
    y_test = np.array([0, 1] * 20)
    base = _oof_model(y_test)
    first = RC._recalibrated(base, method)
    # Other test labels, same out-of-fold predictions: the same recalibrated test probabilities.
    flipped = RC.ModelPredictions("m", "m", "selected", "head", base.oof, (1 - y_test, base.test[1]))
    np.testing.assert_array_equal(RC._recalibrated(flipped, method).test[1], first.test[1])
    # Other out-of-fold labels: another map (so the check above can fail).
    oof = {f: (1 - y, p) for f, (y, p) in base.oof.items()}
    other = RC.ModelPredictions("m", "m", "selected", "head", oof, base.test)
    assert not np.allclose(RC._recalibrated(other, method).test[1], first.test[1])
    # The test map is the one fitted on all the pooled out-of-fold predictions.
    np.testing.assert_allclose(first.test[1], Recalibrator(method).fit(*base.pooled_oof()).transform(base.test[1]))
    # Each fold's OOF figures come from a map fitted on the other folds of its repeat.
    others = [f for f in ("1", "2")]
    fold0 = Recalibrator(method).fit(np.concatenate([base.oof[f][0] for f in others]),
                                     np.concatenate([base.oof[f][1] for f in others]))
    np.testing.assert_allclose(first.oof["0"][1], fold0.transform(base.oof["0"][1]))
    assert first.label == f"m ({RC.METHOD_LABEL[method]})"


# ---- decision curves --------------------------------------------------------------------------


def test_net_benefit_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [0.9, 0.3, 0.15, 0.25, 0.1, 0.6, 0.05, 0.2]
    # t = 0.2: calls p >= 0.2 -> cases 1, 2, 4, 6, 8 (0.2 itself is called).
    #   TP = cases 1, 2, 8 = 3; FP = cases 4, 6 = 2; n = 8; t / (1 - t) = 0.25
    #   NB = 3/8 - 2/8 * 0.25 = 0.375 - 0.0625 = 0.3125
    # t = 0.5: calls cases 1 and 6: TP = 1, FP = 1; NB = 1/8 - 1/8 * 1 = 0
    # t = 0.95: no call: NB = 0
    np.testing.assert_allclose(net_benefit(y, p, [0.2, 0.5, 0.95]), [0.3125, 0.0, 0.0])
    # Biopsy all: prevalence 4/8; t = 0.2: 0.5 - 0.5 * 0.25 = 0.375; t = 0.5: 0; t = 0.75: 0.5 - 0.5 * 3 = -1
    np.testing.assert_allclose(net_benefit_treat_all(y, [0.2, 0.5, 0.75]), [0.375, 0.0, -1.0])
    np.testing.assert_array_equal(net_benefit_treat_none([0.2, 0.5, 0.75]), [0.0, 0.0, 0.0])
    # A model calling every case positive is "biopsy all".
    np.testing.assert_allclose(net_benefit(y, [1.0] * 8, [0.1, 0.3]), net_benefit_treat_all(y, [0.1, 0.3]))


@pytest.mark.parametrize("bad", [[0.0], [1.0], [0.2, float("nan")], [], [-0.1], [[0.1, 0.2]]])
def test_thresholds_must_lie_strictly_between_0_and_1(bad):
    with pytest.raises(CalibrationError, match="threshold"):
        net_benefit([0, 1], [0.2, 0.8], bad)
    with pytest.raises(CalibrationError, match="threshold"):
        net_benefit_treat_none(bad)


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: brier_score([0, 1, 1], [0.2, 0.8]), "3 labels but 2 probabilities"),
    (lambda: brier_score([0, 1], [0.2, 1.2]), r"must lie in \[0, 1\]; 1 do not \(first: 1.2\)"),
    (lambda: expected_calibration_error([0, 1], [0.2, float("nan")]), "must lie in"),
    (lambda: reliability_curve([0, 2], [0.2, 0.3]), r"labels must be 0 \(negative\) or 1 \(positive\), got \[0, 2\]"),
    (lambda: calibration_intercept_slope([1, 1, 1], [0.2, 0.5, 0.9]), "needs both classes, but every label is 1"),
    (lambda: calibration_summary([0, 1], [0.2, 0.8], alpha=1.0), "alpha = 1.0"),
    (lambda: expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0), "n_bins = 0"),
    (lambda: brier_score([], []), "no predictions"),
    (lambda: Recalibrator("temperature"), "'temperature': choose from platt, isotonic"),
    (lambda: Recalibrator("platt").transform([0.5]), "call fit"),
    (lambda: Recalibrator("isotonic").fit([0, 0], [0.1, 0.2]), "needs both classes"),
    (lambda: Recalibrator("platt").fit([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]), "separate the classes perfectly"),
    (lambda: Recalibrator("platt").fit([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9]).transform([2.0]), "must lie in"),
    (lambda: net_benefit([0, 1], [0.5], [0.2]), "2 labels but 1 probabilities"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(CalibrationError, match=message) as err:
        call()
    assert isinstance(err.value, WorkbenchError) and isinstance(err.value, ValueError)


def test_signed_intervals_keep_minus_and_dash_apart():
    from workbench.report.tables import Table, to_latex

    assert RC.fmt_signed_interval(-0.4851, -1.0852, 0.1144) == "−0.485 (−1.085, 0.114)"
    assert RC.fmt_signed_interval(0.5, float("nan"), 1.0) == "0.500" and RC.fmt_signed_interval(None, 0, 1) == "–"
    tex = to_latex(Table("t", ["a"], [[RC.Cell(RC.fmt_signed_interval(-1.8, -2.9, -0.8), -1.8)]], key="t"))
    assert "$-$1.800 ($-$2.900, $-$0.800)" in tex and "---" not in tex


def test_report_settings_check_recalibrate_and_thresholds():
    s = ReportSettings(recalibrate="isotonic", decision_thresholds=[0.1, 0.25])
    assert s.decision_thresholds == (0.1, 0.25) and ReportSettings().recalibrate is None
    for bad, words in (({"recalibrate": "beta"}, "recalibrate = 'beta'"),
                       ({"decision_thresholds": ()}, "non-empty"),
                       ({"decision_thresholds": (0.1, 1)}, "1 is not"),
                       ({"decision_thresholds": (True,)}, "True is not"),
                       ({"decision_thresholds": (0.2, 0.2)}, "distinct")):
        with pytest.raises(WorkbenchError, match=words):
            ReportSettings(**bad)


# ---- the report section on a small run ---------------------------------------------------------


def _probability(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A calibrated probability of each image's label (its true posterior)."""
    z = 1.2 * (2 * y - 1) + rng.normal(0, 1.0, y.size)
    return expit(2 * 1.2 * z)  # log-odds of y = 1 given z, classes balanced


def _write_run(root, *, repeats: int = 2):
    """Two head candidates (calibrated; over-confident) and a baseline (under-confident, shifted)
    on every CV fold of ``repeats`` repeats and the test split: each image keeps its score."""
    manifest, _ = make_task(n=120, test_every=3)
    task = build_task(manifest, Protocol(cv=3, inner_cv=3, seed=0, repeats=repeats))
    store = task.open_store(root)
    pos = list(task.class_names).index(task.positive)
    p_pos = _probability((task.y == pos).astype(int), np.random.default_rng(0))
    versions = {
        "calibrated": (lambda p: p, dict(head="logreg", heads=[], blocks=["alexnet:fc6"], codes=["A"], size=1)),
        "overconfident": (lambda p: expit(3 * logit(p)),
                          dict(head="svm-rbf", heads=[], blocks=["vgg16:fc7"], codes=["V"], size=1)),
        "CNN stand-in": (lambda p: expit(0.4 * logit(p) + 0.8),
                         dict(head="CNN stand-in", heads=[], blocks=[], codes=[], size=0, weights_id="ft-0")),
    }
    for name, (f, fields) in versions.items():
        kind = "baseline" if name.startswith("CNN") else "head"
        for fold, _, ev in task.outer:
            p = f(p_pos[ev])
            proba = np.column_stack([1 - p, p]) if pos == 1 else np.column_stack([p, 1 - p])
            store.append(*task.record(candidate_id=name.replace(" ", "-"), candidate=name, kind=kind, fold=fold,
                                      proba=proba, pred=proba.argmax(1), versions={}, fields=fields))
    return store


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("calib") / "run")


def _csv(path) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return {r[next(iter(r))]: r for r in rows}


@pytest.fixture(scope="module")
def run_result(run_store):
    return search(run_store, "auc", top_k=2)


def _section(store, result, out, **kw):
    return RC.calibration_section(store, store.frame(), result, tables_dir=out / "tables", figures_dir=out / "figures",
                                  **kw)


def test_section_tables_and_figures(run_store, run_result, tmp_path):
    tables, figures, notes = _section(run_store, run_result, tmp_path, recalibrate="platt", thresholds=(0.1, 0.2, 0.5))
    assert [t.key for t in tables] == ["calibration", "net_benefit"]
    for key in ("calibration", "net_benefit"):
        for ext in ("md", "tex", "csv"):
            assert (tmp_path / "tables" / f"{key}.{ext}").is_file()
    assert not (tmp_path / "tables" / "tables.md").exists()  # the report's own file, not this section's
    assert [p.name for p in figures] == ["reliability.png", "reliability.pdf", "decision_curve.png",
                                         "decision_curve.pdf"]
    # Independent numbers from the stored predictions.
    recs = run_store.current_records()
    pos = run_store.protocol()["classes"].index(run_store.protocol()["positive"])

    def arrays(cand, cv):
        chosen = [r for r in recs if r["candidate"] == cand and (is_cv_fold(r["fold"]) if cv else r["fold"] == "test")]
        prs = [run_store.predictions(r) for r in chosen]
        return (np.concatenate([(p["y_true"] == pos).astype(int) for p in prs]),
                np.concatenate([p["proba"][:, pos] for p in prs]))

    y_oof, p_oof = arrays("calibrated", cv=True)
    assert y_oof.size == 2 * 80  # both repeats' out-of-fold predictions of the 80 training images
    cal = _csv(tmp_path / "tables" / "calibration.csv")
    assert set(cal) == {"calibrated", "calibrated (Platt)", "overconfident", "CNN stand-in"}
    assert float(cal["calibrated"]["OOF Brier"]) == pytest.approx(brier_score_loss(y_oof, p_oof))
    y_t, p_t = arrays("calibrated", cv=False)
    assert float(cal["calibrated"]["Test ECE"]) == pytest.approx(expected_calibration_error(y_t, p_t))
    assert float(cal["overconfident"]["Test slope"]) < 0.6 < float(cal["calibrated"]["Test slope"])
    # Platt keeps the order of the cases: the same test AUC.
    assert cal["calibrated (Platt)"]["Test AUC"] == cal["calibrated"]["Test AUC"]
    nb = _csv(tmp_path / "tables" / "net_benefit.csv")
    assert list(nb) == ["calibrated", "calibrated (Platt)", "overconfident", "CNN stand-in", "biopsy all",
                        "biopsy none"]
    t = np.array([0.1, 0.2, 0.5])
    cols = ["t = 0.1", "t = 0.2", "t = 0.5"]
    np.testing.assert_allclose([float(nb["calibrated"][c]) for c in cols], net_benefit(y_t, p_t, t))
    prevalence = y_t.mean()
    np.testing.assert_allclose([float(nb["biopsy all"][c]) for c in cols], prevalence - (1 - prevalence) * t / (1 - t))
    assert [float(nb["biopsy none"][c]) for c in cols] == [0.0, 0.0, 0.0]
    # Two repeats pool each training image twice: OOF estimates without Wald intervals, test ones with.
    oof_j, test_j = tables[0].columns.index("OOF slope"), tables[0].columns.index("Test slope")
    assert all("(" not in r[oof_j].text and "(" in r[test_j].text for r in tables[0].rows)
    assert notes[0].startswith("Best calibrated on the test split (lowest ECE): ")
    assert any(n.startswith("calibrated: net benefit on the test split above both") for n in notes)
    assert any("one network per CV fold" in n for n in notes)


def test_section_gives_identical_bytes_twice(run_store, run_result, tmp_path):
    _section(run_store, run_result, tmp_path / "a", recalibrate="isotonic")
    _section(run_store, run_result, tmp_path / "b", recalibrate="isotonic")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 10
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_figures_draw_scikit_learns_curves_and_the_default_strategies(run_store, run_result):
    result = run_result
    pos = run_store.protocol()["classes"].index(run_store.protocol()["positive"])
    by = {}
    for r in run_store.current_records():
        by.setdefault(r["candidate"], []).append(r)
    models = [RC._model(run_store, by[c], c, role, kind, pos) for c, role, kind in RC._reported(result)]
    fig = RC.reliability_axes(models)
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines()}
    for m in models:
        for part, yp in (("oof", m.pooled_oof()), ("test", m.test)):
            observed, predicted = calibration_curve(*yp, n_bins=10)
            ln = lines[f"reliability:{part}:{m.label}"]
            np.testing.assert_allclose(ln.get_xdata(), predicted)
            np.testing.assert_allclose(ln.get_ydata(), observed)
    fig = RC.decision_curve_axes(models)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    y, p = models[0].test
    t = RC.CURVE_THRESHOLDS
    prevalence = y.mean()
    np.testing.assert_allclose(lines["decision:biopsy all"].get_ydata(), prevalence - (1 - prevalence) * t / (1 - t))
    np.testing.assert_array_equal(lines["decision:biopsy none"].get_ydata(), np.zeros(t.size))
    np.testing.assert_allclose(lines[f"decision:{models[0].label}"].get_ydata(), net_benefit(y, p, t))
    lo, hi = fig.axes[0].get_ylim()
    assert lo < 0 < prevalence < hi < prevalence + 0.1  # clipped: biopsy all falls far below


def test_section_leaves_out_the_optimistic_row(run_store, tmp_path):
    result = search(run_store, "auc", top_k=1)
    comp = result.comparison
    extra = comp.iloc[[0]].assign(candidate="overconfident", role=RC.OPTIMISTIC_ROLE)
    result.comparison = pd.concat([comp[comp["candidate"] != "overconfident"], extra], ignore_index=True)
    tables, _, _ = RC.calibration_section(run_store, run_store.frame(), result, tables_dir=tmp_path,
                                          figures_dir=tmp_path)
    assert "overconfident" not in {r[0].text for r in tables[0].rows}


def test_multiclass_runs_get_a_note_only(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open({"classes": ["benign", "malignant", "normal"], "positive": None})
    tables, figures, notes = RC.calibration_section(store, pd.DataFrame(), None, tables_dir=tmp_path / "t",
                                                    figures_dir=tmp_path / "f")
    assert (tables, figures) == ([], []) and notes == [RC.BINARY_ONLY_NOTE.format(n=3)]
    assert "binary tasks" in notes[0] and not (tmp_path / "t").exists()


def test_section_refuses_unknown_recalibration(run_store, tmp_path):
    with pytest.raises(CalibrationError, match="recalibrate = 'beta'"):
        RC.calibration_section(run_store, run_store.frame(), None, recalibrate="beta", tables_dir=tmp_path,
                               figures_dir=tmp_path)


# ---- grouped images: cluster-robust intervals ------------------------------------------------


def _grouped(n_groups: int = 50, per: int = 3, seed: int = 2):
    """Probabilities and outcomes whose errors share a patient effect within each group."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per)
    effect = np.repeat(rng.normal(0, 1.5, n_groups), per)
    p = expit(rng.normal(0, 1.5, groups.size))
    y = (rng.random(groups.size) < expit(logit(p) + effect)).astype(int)
    return y, p, groups


def test_grouped_intervals_are_statsmodels_cluster_robust_ones():
    import statsmodels.api as sm

    y, p, groups = _grouped()
    s = calibration_summary(y, p, alpha=0.1, groups=[f"patient{g}" for g in groups])
    lp = logit(p)
    cluster = {"cov_type": "cluster", "cov_kwds": {"groups": groups}}
    glm = sm.GLM(y, np.ones((y.size, 1)), family=sm.families.Binomial(), offset=lp).fit(**cluster)
    assert s["intercept"] == pytest.approx(glm.params[0], abs=1e-7)
    np.testing.assert_allclose([s["intercept_low"], s["intercept_high"]], glm.conf_int(0.1)[0], atol=1e-6)
    full = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit(**cluster)
    np.testing.assert_allclose([s["slope_low"], s["slope_high"]], full.conf_int(0.1)[1], atol=1e-8)
    # The shared patient effect makes the independent-case intervals too narrow here.
    plain = calibration_summary(y, p, alpha=0.1)
    assert plain["intercept"] == s["intercept"] and plain["slope"] == s["slope"]
    assert s["intercept_high"] - s["intercept_low"] > 1.2 * (plain["intercept_high"] - plain["intercept_low"])


def test_groups_of_one_image_keep_the_model_based_intervals():
    y, p, _ = _grouped()
    plain = calibration_summary(y, p)
    assert calibration_summary(y, p, groups=[str(i) for i in range(y.size)]) == plain
    assert calibration_summary(y, p, groups=[""] * y.size) == plain  # no group: each its own
    with pytest.raises(CalibrationError, match="groups: 3 values for 150 predictions"):
        calibration_summary(y, p, groups=["a", "a", "b"])


def test_the_table_clusters_the_columns_whose_groups_hold_several_images(run_store, run_result):
    models = [RC._model(run_store, [r for r in run_store.current_records() if r["candidate"] == "calibrated"],
                        "calibrated", "selected", "head", 1)]
    test_ids = models[0].test_ids
    assert test_ids is not None and len(test_ids) == len(models[0].test[0])
    assert set(models[0].oof_ids) == set(models[0].oof)
    plain = RC.calibration_table(models)
    paired = {i: f"g{k // 2}" for k, i in enumerate(test_ids)}  # test images two by two
    grouped = RC.calibration_table(models, groups=paired)
    col = grouped.columns.index("Test intercept")
    assert grouped.rows[0][col].text != plain.rows[0][col].text  # the interval moved
    assert grouped.rows[0][col].text.split(" (")[0] == plain.rows[0][col].text.split(" (")[0]  # not the estimate
    oof = grouped.columns.index("OOF intercept")
    assert grouped.rows[0][oof].text == plain.rows[0][oof].text  # OOF images are not grouped here
    assert any("test: cluster-robust (sandwich) over the groups" in n for n in grouped.notes)
    assert not any("cluster-robust" in n for n in plain.notes)


def test_grouped_intervals_of_extreme_probabilities_are_finite_and_quiet():
    """Classes that only just overlap (a slope near 13, fitted probabilities within 1e-16
    of 0 or 1) with groups: statsmodels' cluster GLM divides by zero there (its observed
    information goes through the link's second derivative); the sandwich by hand does not."""
    lp = np.linspace(-3, 3, 60)
    y = (lp > 0).astype(int)
    y[29], y[30] = 1, 0  # one pair overlaps at the boundary: a finite, steep slope
    groups = [f"g{k // 3}" for k in range(60)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = calibration_summary(y, expit(lp), groups=groups)
    assert all(np.isfinite(s[k]) for k in ("intercept_low", "intercept_high", "slope_low", "slope_high"))
    assert s["intercept_low"] < s["intercept"] < s["intercept_high"] and s["slope_low"] < s["slope"] < s["slope_high"]

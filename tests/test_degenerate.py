"""Degenerate models are flagged, never crowned; baselines' thresholds per fold network (issue 11, 6 and 7)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from _sweepdata import make_task, sweep_args
from test_tables import make_comparison, make_records
from workbench.report.tables import DDAGGER, backbone_table, comparison_table, to_latex, to_markdown
from workbench.evaluation import stats
from workbench.evaluation.degenerate import degenerate_reason
from workbench.evaluation.protocol import Protocol, build_task
from workbench.search.select import search
from workbench.search.sweep import sweep

FIELDS = {"heads": [], "blocks": [], "codes": [], "size": 0}


# ---- the rule ------------------------------------------------------------------------------


def test_rule_one_class_and_chance_auc():
    y = np.array([0, 1] * 20)
    assert degenerate_reason(y=y, pred=np.ones(40, int), names=["benign", "malignant"]) == \
        "predicts malignant for 100% of the test images"
    nearly = np.ones(40, int)
    nearly[:2] = 0  # 95 %: still degenerate
    assert "95%" in degenerate_reason(y=y, pred=nearly)
    nearly[:3] = 0  # 92.5 %: a model that discriminates, if poorly
    assert degenerate_reason(y=y, pred=nearly) == ""
    assert degenerate_reason(y=np.ones(40, int), pred=np.ones(40, int)) == ""  # one class present: fine
    assert degenerate_reason(cv_auc=0.55).startswith("CV AUC 0.550 is not above chance")
    assert degenerate_reason(cv_auc=0.56) == "" and degenerate_reason(cv_auc=float("nan")) == ""


# ---- thresholds of baselines -----------------------------------------------------------------


def test_fold_quantile_threshold_is_invariant_to_each_networks_calibration():
    rng = np.random.default_rng(0)
    ys, ps = [], []
    for shift in (0.0, 0.3, 0.3):  # fold 1 scores low, the others high (the thyroid case)
        y = rng.integers(0, 2, 60)
        ys.append(y)
        ps.append(np.clip(0.41 + shift + 0.2 * y + rng.normal(0, 0.08, 60), 0, 1))
    y_test = rng.integers(0, 2, 50)
    p_test = np.clip(0.86 + 0.1 * y_test + rng.normal(0, 0.02, 50), 0, 1)  # above the pooled cut-off
    pooled = stats.youden_threshold(np.concatenate(ys), np.concatenate(ps))
    assert stats.apply_threshold(p_test, pooled).mean() > 0.95  # the old rule calls (nearly) all positive
    thr, q = stats.fold_quantile_threshold(ys, ps, p_test)
    share_neg = (p_test < thr).mean()
    assert abs(share_neg - q) <= 1 / len(p_test) + 1e-12 and 0.2 < q < 0.8
    # A monotone re-calibration of any network changes nothing but the scale.
    thr2, q2 = stats.fold_quantile_threshold(ys, [p ** 3 for p in ps], p_test ** 3)
    assert q2 == pytest.approx(q) and thr2 == pytest.approx(thr ** 3)
    assert stats.fold_quantile_threshold([np.zeros(5)], [np.ones(5)], p_test) == (0.5, pytest.approx(np.nan,
                                                                                                     nan_ok=True))


# ---- the search --------------------------------------------------------------------------------


def _baseline(store, task, name, proba_of, kind="baseline"):
    for fold, tr, ev in task.outer:
        proba = proba_of(fold, tr, ev)
        store.append(*task.record(candidate_id=name.replace(" ", "-"), candidate=name, kind=kind, fold=fold,
                                  proba=proba, pred=proba.argmax(1), versions={},
                                  fields={"head": name, **FIELDS}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("degenerate") / "run"
    manifest, fs = make_task(n=72, test_every=3)
    sweep(manifest, fs, out=out, **sweep_args(heads=["logreg"], grids={"logreg": {}}, cv=3, inner_cv=3,
                                             progress=False, ensembles=False))
    task = build_task(manifest, Protocol(cv=3, inner_cv=3, seed=0, scoring="auc", positive=None))
    store = task.open_store(out)
    X = np.concatenate([np.asarray(fs[b]) for b in fs.names], axis=1)
    Xw = np.asarray(fs["resnet50:avgpool"])

    def strong(fold, tr, ev):
        p = LogisticRegression(C=1.0, max_iter=3000).fit(X[tr], task.y[tr]).predict_proba(X[ev])
        if fold == "test":  # the test network collapsed: the same score for every image
            return np.tile([0.1, 0.9], (len(ev), 1))
        return p

    def weak(fold, tr, ev):
        return LogisticRegression(C=0.01, max_iter=3000).fit(Xw[tr], task.y[tr]).predict_proba(Xw[ev])

    def always_malignant(fold, tr, ev):  # top by CV sensitivity, and not a classifier at all
        return np.tile([0.3, 0.7], (len(ev), 1))

    _baseline(store, task, "CNN collapsed", strong)
    _baseline(store, task, "CNN weak", weak)
    _baseline(store, task, "[X] constant", always_malignant, kind="head")
    return out


def test_degenerate_baseline_is_flagged_and_not_the_yardstick(run):
    res = search(run, "auc", top_k=2)
    base = res.baselines.set_index("candidate")
    assert base["cv_auc"]["CNN collapsed"] > base["cv_auc"]["CNN weak"]  # best by CV ...
    assert "predicts malignant for 100% of the test images" in res.degenerate["CNN collapsed"]  # ... degenerate
    assert res.best_baseline == "CNN weak"
    comp = res.comparison.set_index("candidate")
    assert comp.loc["CNN collapsed", "degenerate"] and not comp.loc["CNN weak", "degenerate"]
    # Paired tests are made against the non-degenerate baseline.
    sel = res.comparison.iloc[0]
    y = (np.asarray(_test_scores(run, sel.candidate, "y_true")) == 1).astype(int)
    expected = stats.delong_test(y, _test_scores(run, sel.candidate), _test_scores(run, "CNN weak")).p_value
    assert sel["p_auc"] == pytest.approx(expected)
    assert any("CNN collapsed" in n and "degenerate" in n for n in res.notes)

    table = comparison_table(res.comparison)
    md = to_markdown(table)
    assert f"CNN collapsed{DDAGGER}" in md and "CNN collapsed: predicts malignant" in md
    rows = {r[0].text: r for r in table.rows}
    assert not any(c.best for c in rows["CNN collapsed"])  # its sensitivity 1.000 is not "best"
    j = table.columns.index("Sensitivity")
    assert rows["CNN collapsed"][j].value == 1.0
    # The † yardstick is the weak baseline's value, not the collapsed one's 1.000.
    weak_sens = rows["CNN weak"][j].value
    for name, r in rows.items():
        if name not in ("CNN collapsed", "CNN weak") and not np.isnan(r[j].value):
            assert r[j].below_baseline == (round(r[j].value, 3) < round(weak_sens, 3))
    assert r"\ddag{}" in to_latex(table)


def _test_scores(run, candidate, what=1):
    """Test-split positive-class probabilities (``what="y_true"``: the labels)."""
    from workbench.evaluation.store import ResultStore

    store = ResultStore(run)
    rec = next(r for r in store.records() if r["candidate"] == candidate and r["fold"] == "test")
    pr = store.predictions(rec)
    return pr["y_true"] if what == "y_true" else pr["proba"][:, what]


def test_degenerate_candidate_is_never_selected(run):
    res = search(run, "sensitivity", top_k=2)
    rank = res.ranking.set_index("candidate")["cv_sensitivity"]
    assert rank["[X] constant"] == 1.0 == rank.max()  # top by CV sensitivity ...
    assert "[X] constant" not in res.selected  # ... and never selected
    assert "CV AUC 0.500" in res.degenerate["[X] constant"]
    assert any("degenerate on the CV folds" in n for n in res.notes)


def test_baseline_threshold_is_a_quantile_of_its_own_scores(run):
    res = search(run, "auc", top_k=2)
    weak = res.comparison.set_index("candidate").loc["CNN weak"]
    p = _test_scores(run, "CNN weak")
    assert 0 < weak["threshold_quantile"] < 1
    assert abs((p < weak["threshold"]).mean() - weak["threshold_quantile"]) <= 1 / len(p) + 1e-12
    head = res.comparison[res.comparison["kind"] != "baseline"]
    assert head["threshold_quantile"].isna().all()  # classical candidates: pooled Youden, as before
    md = to_markdown(comparison_table(res.comparison))
    assert "(q " in md and "quantile of its own out-of-fold scores" in md


# ---- the tables ---------------------------------------------------------------------------------


def test_grid_tables_mark_degenerate_cells_and_skip_them_for_best_and_baseline():
    records = make_records()
    plain = backbone_table(records, "alexnet")
    flagged = backbone_table(records, "alexnet", degenerate={"CNN lite0": "predicts malignant for 100% of the test "
                                                                          "images", "[A] svm-rbf": "x"})
    cells = {(r[0].text, c): cell for r in flagged.rows for c, cell in zip(flagged.columns, r)}
    assert cells[("fc6", "svm-rbf (CV)")].degenerate and not cells[("fc6", "svm-rbf (CV)")].best
    assert any(c.below_baseline for r in plain.rows for c in r)
    # The only baseline is degenerate: nothing is compared against it.
    assert not any(c.below_baseline for r in flagged.rows for c in r)
    md = to_markdown(flagged)
    assert DDAGGER in md and "degenerate" in md
    # Unflagged tables are unchanged.
    assert to_markdown(backbone_table(records, "alexnet", degenerate={})) == to_markdown(plain)


def test_comparison_without_degenerate_rows_is_unchanged():
    comp = make_comparison()
    before = to_markdown(comparison_table(comp))
    assert to_markdown(comparison_table(comp.assign(degenerate=""))) == before
    flagged = comp.assign(degenerate=["predicts malignant for 100% of the test images", "", "", "", ""])
    md = to_markdown(comparison_table(flagged))
    assert f"CNN lite0{DDAGGER}" in md and "No baseline row" not in md
    t = comparison_table(flagged)
    assert not any(c.below_baseline for r in t.rows for c in r)  # the only baseline is degenerate


def test_baseline_threshold_comes_from_its_validation_split_not_the_test_balance(tmp_path):
    """A baseline record with the test network's validation-split scores: the threshold
    is the pooled fold quantile of *those*, so dropping most negatives from the test split
    (a prevalence shift) leaves it where it was; records without them fall back, said."""
    manifest, fs = make_task(n=72, test_every=3)
    X = np.concatenate([np.asarray(fs[b]) for b in fs.names], axis=1)

    def build(out, keep_test, with_val):
        sweep(manifest, fs, out=out, **sweep_args(heads=["logreg"], grids={"logreg": {}}, cv=3, inner_cv=3,
                                                 progress=False, ensembles=False))
        task = build_task(manifest, Protocol(cv=3, inner_cv=3, seed=0, scoring="auc", positive=None))
        store = task.open_store(out)
        rng = np.random.default_rng(0)
        for fold, tr, ev in task.outer:
            model = LogisticRegression(C=0.05, max_iter=3000).fit(X[tr], task.y[tr])
            rec, preds = task.record(candidate_id="cnn", candidate="CNN net", kind="baseline", fold=fold,
                                     proba=model.predict_proba(X[ev]), pred=model.predict(X[ev]), versions={},
                                     fields={"head": "net", **FIELDS})
            if fold == "test":
                keep = keep_test(task.y[ev])
                preds = {k: v[keep] for k, v in preds.items()}
                if with_val:  # a validation split drawn from the training rows
                    val = rng.choice(tr, size=len(tr) // 4, replace=False)
                    preds.update(val_ids=np.array([task.ids[i] for i in val]), val_y=task.y[val],
                                 val_proba=model.predict_proba(X[val]))
            store.append(rec, preds)
        res = search(out, "auc", top_k=1)
        return res, res.comparison.set_index("candidate").loc["CNN net"]

    everything = lambda y: np.ones(len(y), dtype=bool)  # noqa: E731
    few_negatives = lambda y: (y == 1) | (np.cumsum(y == 0) <= 2)  # noqa: E731
    _, full = build(tmp_path / "a", everything, True)
    _, shifted = build(tmp_path / "b", few_negatives, True)
    assert full["threshold"] == shifted["threshold"]  # the test split's balance does not move it
    res_old, old_full = build(tmp_path / "c", everything, False)
    _, old_shifted = build(tmp_path / "d", few_negatives, False)
    assert old_full["threshold"] != old_shifted["threshold"]  # the fallback does move (and says so)
    assert any("validation-split scores" in n for n in res_old.notes)

"""The search: selection reads CV records only; test figures, intervals and paired tests."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from _sweepdata import FAST, make_task
from workbench.search import stats
from workbench.search.metrics import classification_metrics
from workbench.search.protocol import build_task
from workbench.search.select import search
from workbench.search.store import ResultStore
from workbench.search.sweep import sweep


def add_baseline(run, manifest, fs, block: str, C: float = 0.05, name: str = "CNN stand-in"):
    """Baseline records from a real (if simple) model, through the protocol's record layout."""
    task = build_task(manifest, cv=3, inner_cv=3, seed=0, scoring="auc", positive=None)
    store = task.open_store(run)
    X = np.asarray(fs[block])
    for fold, tr, ev in task.outer:
        clf = LogisticRegression(C=C, max_iter=2000).fit(X[tr], task.y[tr])
        proba = clf.predict_proba(X[ev])
        store.append(*task.record(candidate_id=f"base{C}", candidate=name, kind="baseline", fold=fold,
                                  proba=proba, pred=proba.argmax(1), versions={},
                                  fields={"head": name, "heads": [], "blocks": [], "codes": [], "size": 0,
                                          "weights_id": "ft-000000000000"}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    manifest, fs = make_task(n=96, test_every=3)
    sweep(manifest, fs, out=root / "run", **FAST)
    add_baseline(root / "run", manifest, fs, "resnet50:avgpool")
    return root / "run"


def test_selection_is_the_cv_ranking_and_tests_are_paired(run):
    res = search(run, "auc", top_k=3)
    ranking = res.ranking
    assert res.selected == list(ranking.candidate[:3])
    assert (np.diff(ranking["cv_auc"].to_numpy()) <= 1e-12).all()  # best CV mean first
    assert res.best_baseline == "CNN stand-in"
    comp = res.comparison.set_index("role")
    assert list(res.comparison.role[:3]) == ["selected", "top-k", "top-k"]
    sel = res.comparison.iloc[0]
    # The figures equal those computed directly from the stored test predictions.
    store = ResultStore(run)
    recs = {(r["candidate"], r["fold"]): r for r in store.records()}
    t, b = store.predictions(recs[(sel.candidate, "test")]), store.predictions(recs[("CNN stand-in", "test")])
    oof = [store.predictions(recs[(sel.candidate, f)]) for f in ("0", "1", "2")]
    thr = stats.youden_threshold(np.concatenate([o["y_true"] for o in oof]),
                                 np.concatenate([o["proba"][:, 1] for o in oof]))
    assert sel.threshold == thr
    y = t["y_true"]
    pred = (t["proba"][:, 1] >= thr).astype(int)
    assert sel.accuracy == pytest.approx((pred == y).mean())
    lo, hi = stats.wilson_interval(int((pred == y).sum()), len(y))
    assert (sel.accuracy_low, sel.accuracy_high) == pytest.approx((lo, hi))
    assert sel.p_auc == pytest.approx(stats.delong_test(y, t["proba"][:, 1], b["proba"][:, 1]).p_value)
    honest = res.comparison[res.comparison.role.isin(["selected", "top-k"])]
    assert np.allclose(honest.p_auc_holm, stats.holm(honest.p_auc.to_numpy()), equal_nan=True)
    assert np.isnan(comp.loc["baseline", "p_auc"])


def test_permuting_test_labels_leaves_the_selection_unchanged(run, tmp_path):
    before = search(run, "auc", top_k=3)
    shaken = tmp_path / "shaken"
    shutil.copytree(run, shaken)
    store = ResultStore(shaken)
    rng = np.random.default_rng(1)
    lines = []
    for r in store.records():
        if r["fold"] == "test":
            pr = store.predictions(r)
            pr["y_true"] = rng.permutation(pr["y_true"])
            np.savez(shaken / r["predictions"], **pr)
            r["metrics"] = classification_metrics(pr["y_true"], pr["proba"], classes=["benign", "malignant"],
                                                  positive="malignant", y_pred=pr["pred"])
        lines.append(json.dumps(r))
    (shaken / "records.jsonl").write_text("\n".join(lines) + "\n")
    after = search(shaken, "auc", top_k=3)
    assert after.selected == before.selected and after.best_baseline == before.best_baseline
    assert list(after.ranking.candidate) == list(before.ranking.candidate)
    assert not np.allclose(after.comparison.auc, before.comparison.auc)  # the test figures did change


def test_empty_or_unknown_metric_fails_clearly(run, tmp_path):
    with pytest.raises(KeyError, match="no metric 'aucc'"):
        search(run, "aucc")
    ResultStore(tmp_path / "empty").open({"format": 1})
    with pytest.raises(ValueError, match="no records"):
        search(tmp_path / "empty")


def test_three_class_report_has_per_class_and_macro_tables(tmp_path):
    from workbench.report.build import write_report

    manifest, fs = make_task(n=120, classes=("benign", "malignant", "normal"), test_every=4)
    sweep(manifest, fs, out=tmp_path / "run", **{**FAST, "heads": ["logreg"], "grids": {"logreg": {}}})
    out = write_report(tmp_path / "run")
    table = (out / "tables" / "per-class.md").read_text()
    for c in ("benign", "malignant", "normal", "macro"):
        assert f"| {c}" in table
    res = search(tmp_path / "run", "auc", top_k=2)
    sel = res.comparison.iloc[0]
    assert np.isnan(sel.threshold) and 0 <= sel.accuracy_low <= sel.accuracy <= sel.accuracy_high <= 1
    assert not (out / "figures" / "roc_test.png").exists()  # ROC curves are for a binary task
    assert (out / "figures" / "heatmap_cv_auc.png").exists()


def test_candidates_with_optimistic_cv_are_not_selected(run, tmp_path):
    before = search(run, "auc", top_k=2)
    marked = tmp_path / "marked"
    shutil.copytree(run, marked)
    lines = []
    for r in ResultStore(marked).records():
        if r["candidate"] == before.selected[0] and r["fold"] != "test":
            r["optimistic"] = True
        lines.append(json.dumps(r))
    (marked / "records.jsonl").write_text("\n".join(lines) + "\n")
    after = search(marked, "auc", top_k=2)
    assert before.selected[0] not in after.selected and after.selected[0] == before.selected[1]
    assert bool(after.ranking.loc[after.ranking.candidate == before.selected[0], "optimistic_cv"].iloc[0])
    assert any("optimistic CV" in n for n in after.notes)
    assert search(marked, "auc", top_k=2, allow_optimistic=True).selected == before.selected

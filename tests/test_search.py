"""The search: selection reads CV records only; test figures, intervals and paired tests."""
from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from _sweepdata import FAST, make_task, sweep_args
from workbench.evaluation import stats
from workbench.evaluation.metrics import classification_metrics
from workbench.evaluation.protocol import Protocol, build_task
from workbench.search.select import search
from workbench.evaluation.store import ResultStore
from workbench.search.sweep import sweep


def _rewrite_predictions(root, record: dict, arrays: dict) -> None:
    """Replace a record's predictions file, and the digest its line carries."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    (root / record["predictions"]).write_bytes(data)
    record.update(predictions_size=len(data), predictions_sha256=hashlib.sha256(data).hexdigest())


def add_baseline(run, manifest, fs, block: str, C: float = 0.05, name: str = "CNN stand-in"):
    """Baseline records from a real (if simple) model, through the protocol's record layout."""
    task = build_task(manifest, Protocol(cv=3, inner_cv=3, seed=0, scoring="auc", positive=None))
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
    sweep(manifest, fs, out=root / "run", **sweep_args(**FAST))
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


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    """A sweep whose candidates include hybrid ensembles (a stand-in network votes with the heads)."""
    from _hybriddata import add_network_baseline

    run = tmp_path_factory.mktemp("hybrid") / "run"
    manifest, fs = make_task(n=96, test_every=3)
    kw = sweep_args(**{**FAST, "subsets": "single", "stacking": True,
                       "ensemble_members": ["svm-rbf", "rf", "baseline:lite0"]})
    add_network_baseline(run, manifest, fs, Protocol(cv=3, inner_cv=3), block="resnet50:avgpool")
    sweep(manifest, fs, out=run, **kw)
    return run


@pytest.mark.parametrize("which", ["run", "hybrid_run"])
def test_permuting_test_labels_leaves_the_selection_unchanged(which, request, tmp_path):
    run = request.getfixturevalue(which)
    before = search(run, "auc", top_k=3)
    if which == "hybrid_run":  # the hybrids are ranked like any other candidate, and some are selected
        assert before.ranking.candidate.str.contains(r"\+CNN lite0\)").sum() == 3 * 3
        assert any("CNN lite0)" in c for c in before.selected)
    shaken = tmp_path / "shaken"
    shutil.copytree(run, shaken)
    store = ResultStore(shaken)
    rng = np.random.default_rng(1)
    lines = []
    for r in store.records():
        if r["fold"] == "test":
            pr = store.predictions(r)
            pr["y_true"] = rng.permutation(pr["y_true"])
            _rewrite_predictions(shaken, r, pr)
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
    sweep(manifest, fs, out=tmp_path / "run", **sweep_args(**{**FAST, "heads": ["logreg"], "grids": {"logreg": {}}}))
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
    assert "optimistic_cv" not in before.comparison.columns  # a clean run's comparison keeps its columns


def test_a_run_whose_every_cv_estimate_is_optimistic_says_so(run, tmp_path):
    """E.g. every block on boxes of a Y-Net trained on the training split: the selection
    stands (nothing clean to prefer), its CV figures are marked and a note says why."""
    from workbench.report.tables import comparison_table, to_markdown

    before = search(run, "auc", top_k=2)
    marked = tmp_path / "all-marked"
    shutil.copytree(run, marked)
    lines = []
    for r in ResultStore(marked).records():
        if r.get("kind") != "baseline" and r["fold"] != "test":
            r["optimistic"] = True
        lines.append(json.dumps(r))
    (marked / "records.jsonl").write_text("\n".join(lines) + "\n")
    after = search(marked, "auc", top_k=2)
    assert after.selected == before.selected
    assert any(n.startswith("every candidate's CV estimate is optimistic") for n in after.notes)
    flags = dict(zip(after.comparison["candidate"] + "|" + after.comparison["role"], after.comparison["optimistic_cv"]))
    assert all(v == (not k.endswith("|baseline")) for k, v in flags.items()), flags
    text = to_markdown(comparison_table(after.comparison))
    assert text.count(" §") == int(after.comparison["optimistic_cv"].sum())
    assert "§: an optimistic CV estimate" in text
    assert "§" not in to_markdown(comparison_table(before.comparison))
    # Its own mark: † and ‡ already mean "below the baseline" and "degenerate".
    from workbench.evaluation.settings import OPTIMISTIC_CV_MARK
    from workbench.report.tables import DAGGER, DDAGGER, to_latex

    assert OPTIMISTIC_CV_MARK not in (DAGGER, DDAGGER)
    assert "\\S{}" in to_latex(comparison_table(after.comparison))


def test_without_groups_the_statistics_are_unchanged(run):
    plain = search(run, "auc", top_k=3)
    assert plain.grouping is None and "interval_method" not in plain.comparison.columns
    ids = [str(i) for i in ResultStore(run).frame()["fold"].index]  # any ids: none of them grouped
    for groups in ({}, {i: "" for i in ids}):
        again = search(run, "auc", top_k=3, groups=groups)
        pd.testing.assert_frame_equal(again.comparison, plain.comparison)


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    manifest, fs = make_task(n=96, test_every=3, groups=True)  # patients of two images
    sweep(manifest, fs, out=root / "run", **sweep_args(**{**FAST, "heads": ["logreg"], "grids": {"logreg": {}}}))
    add_baseline(root / "run", manifest, fs, "resnet50:avgpool")
    return root / "run", manifest


def test_grouped_test_split_gets_cluster_bootstrap_statistics(grouped_run):
    run, manifest = grouped_run
    res = search(run, "auc", top_k=2)
    g = res.grouping
    assert g["clustered"] and g["test_groups"] == g["test_images"] // 2 and g["test_max_per_group"] == 2
    assert g["cv_groups"] == g["cv_images"] // 2
    comp = res.comparison.set_index("candidate")
    assert (comp["interval_method"] == "cluster bootstrap").all()
    sel, base = res.comparison.iloc[0], comp.loc["CNN stand-in"]
    store = ResultStore(run)
    t = store.predictions(next(r for r in store.records() if r["candidate"] == "CNN stand-in" and r["fold"] == "test"))
    groups = [next(it.group for it in manifest if it.id == i) for i in t["ids"]]
    y, p = t["y_true"], t["proba"][:, 1]
    boot = stats.cluster_bootstrap_auc(y, p, groups)
    assert (base.auc_low, base.auc_high) == pytest.approx((boot.low, boot.high))
    naive = stats.delong_interval(y, p)
    assert base.auc == pytest.approx(naive.estimate) and base.auc_low != pytest.approx(naive.low)
    assert 0 < sel.p_auc <= 1 and 0 < sel.p_accuracy <= 1

    from workbench.report.build import write_report

    report = (write_report(run) / "report.md").read_text()
    assert f"grouped by the manifest's `group` column ({g['cv_groups']} groups" in report
    assert f"{g['test_images']} images in {g['test_groups']} groups" in report
    assert "cluster bootstrap" in report and "percentile" in report


def test_near_ties_are_said():
    from workbench.search.select import _near_ties

    pool = pd.DataFrame({"candidate": ["a", "b", "c", "d", "e"], "cv_auc": [0.913, 0.911, 0.903, 0.80, 0.85],
                         "cv_auc_sd": [0.020, 0.019, 0.02, 0.03, 0.2], "n_folds": [5, 5, 5, 5, 5],
                         "n_train": [80.0] * 5, "n_eval": [20.0] * 5})
    names, text = _near_ties(pool, "auc")
    # Corrected SE (Nadeau & Bengio): 0.020 * sqrt(1/5 + 20/80) = 0.020 * 0.6708 = 0.0134. b (-0.002) and
    # c (-0.010) are within it, d is not; c would not be within the plain SE 0.020 / sqrt(5) = 0.0089.
    se = 0.020 * np.sqrt(1 / 5 + 20 / 80)
    assert names == ["b", "c", "e"]  # e: -0.063, but its own corrected SE is 0.134
    assert f"corrected SE {se:.3f}" in text and "b (0.911, corrected SE 0.013, −0.002)" in text
    assert _near_ties(pool.iloc[[0, 3]], "auc") is None
    assert _near_ties(pool.iloc[:1], "auc") is None
    exact = pool.assign(cv_auc_sd=[0.0, 0.006, 0.0, 0.0, 0.0])  # a fold-constant top still ties with b
    assert _near_ties(exact, "auc")[0] == ["b"]


def test_near_tie_note_in_the_search(run):
    res = search(run, "auc", top_k=3)
    r = res.ranking
    se = r.cv_auc_sd * np.sqrt(1 / r.n_folds + r.n_eval / r.n_train)  # corrected SE
    close = list(r.candidate[1:][(r.cv_auc[0] - r.cv_auc[1:]) < np.fmax(se[0], se[1:])])
    assert res.near_ties == close
    assert any(n.startswith("near-tie") for n in res.notes) == bool(close)


def test_a_rebuilt_report_keeps_no_file_of_the_earlier_one(tmp_path):
    """The report folder is replaced whole: a figure the new report does not make is gone."""
    from workbench.report.build import write_report

    manifest, fs = make_task(n=120, classes=("benign", "malignant", "normal"), test_every=4)
    sweep(manifest, fs, out=tmp_path / "run", **sweep_args(**{**FAST, "heads": ["logreg"], "grids": {"logreg": {}}}))
    out = write_report(tmp_path / "run")
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    stale = out / "figures" / "gradcam" / "overlays" / "gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an overlay of an image the report no longer shows")
    assert write_report(tmp_path / "run") == out
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".report")] == []


def test_cv_intervals_and_p_cv_are_the_corrected_statistics_of_the_records(run):
    """cv_<metric>_low/high and p_cv equal corrected_cv_interval / corrected_resampled_ttest on the
    records' per-fold values (paired by fold name); p_cv_holm is Holm over the selected and top-k rows."""
    res = search(run, "auc", top_k=3)
    recs = ResultStore(run).frame()
    cv = recs[recs.fold != "test"]

    def folds(c):
        return cv[cv.candidate == c].set_index("fold")

    top = res.ranking.iloc[0]
    f = folds(top.candidate)
    from scipy.stats import t as student_t

    # By hand: mean -/+ t(0.975, J-1) * sqrt((1/J + n_eval/n_train) * s^2) over the J = 3 folds.
    half = student_t.ppf(0.975, 2) * np.sqrt((1 / 3 + f.n_eval.mean() / f.n_train.mean()) * f.auc.var(ddof=1))
    assert (top.cv_auc_low, top.cv_auc_high) == pytest.approx((f.auc.mean() - half, f.auc.mean() + half))
    assert top.n_train == f.n_train.mean() and top.n_eval == f.n_eval.mean()
    base = folds("CNN stand-in")
    assert {"cv_auc_low", "cv_auc_high"} <= set(res.baselines.columns)
    comp = res.comparison
    assert {"p_cv", "p_cv_holm", "cv_auc_low", "cv_auc_high"} <= set(comp.columns)
    for _, row in comp.iterrows():
        if row.role == "baseline":
            assert np.isnan(row.p_cv)
            continue
        a = folds(row.candidate)
        common = a.index.intersection(base.index)
        expect = stats.corrected_resampled_ttest(a.loc[common, "auc"], base.loc[common, "auc"],
                                                 a.loc[common, "n_train"], a.loc[common, "n_eval"]).p_value
        assert row.p_cv == pytest.approx(expect), row.candidate
    honest = comp[comp.role.isin(["selected", "top-k"])]
    assert np.allclose(honest.p_cv_holm, stats.holm(honest.p_cv.to_numpy()))
    assert comp[~comp.role.isin(["selected", "top-k"])].p_cv_holm.isna().all()


def test_cv_interval_is_clipped_to_the_metric_range():
    from workbench.search.select import _cv_extent

    # Three folds 0.90, 0.99, 1.00: the corrected interval's upper end (1.07 unclipped) is clipped to 1.
    records = pd.DataFrame({"candidate": "a", "fold": ["0", "1", "2", "test"], "auc": [0.90, 0.99, 1.00, 0.5],
                            "lr_plus": [3.0, 9.0, 12.0, 1.0], "n_train": 80, "n_eval": 20})
    unclipped = stats.corrected_cv_interval([0.90, 0.99, 1.00], 80, 20)
    assert unclipped[1] > 1.0
    assert _cv_extent(records, "a", "auc", 0.05) == pytest.approx((80, 20, unclipped[0], 1.0))
    # Likelihood ratios are not bounded by 1: their interval is left as it is.
    assert _cv_extent(records, "a", "lr_plus", 0.05)[2:] == pytest.approx(
        stats.corrected_cv_interval([3.0, 9.0, 12.0], 80, 20))

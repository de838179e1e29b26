"""The combination sweep end to end: records, resume, Dask, ensembles, bad input, BUSI."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _sweepdata import FAST, make_task, sweep_args

from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import Protocol
from workbench.features.featureset import FeatureSet
from workbench.evaluation.splits import FoldError
from workbench.evaluation.store import ResultStore, RunMismatchError
from workbench.search.options import SweepOptions
from workbench.search.sweep import SweepInputError, sweep

METRIC_COLS = ["accuracy", "sensitivity", "specificity", "auc", "f1"]


def table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["candidate", "fold"] + [c for c in METRIC_COLS if c in df.columns]
    return df[cols].sort_values(["candidate", "fold"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted sweep of the synthetic task, run in this process."""
    out = tmp_path_factory.mktemp("ref") / "run"
    manifest, fs = make_task()
    df = sweep(manifest, fs, out=out, **sweep_args(stacking=True, **FAST))
    return out, df


def test_records_cover_every_candidate_and_fold(reference):
    out, df = reference
    # 7 subsets x 2 heads, and 7 subsets x (hard, soft, stack) ensembles; 3 CV folds + test.
    assert df["candidate"].nunique() == 7 * 2 + 7 * 3
    assert len(df) == (7 * 2 + 7 * 3) * 4
    assert set(df["fold"]) == {"0", "1", "2", "test"}
    rec = ResultStore(out).records()[0]
    for field in ("protocol", "seed", "versions", "cache_keys", "best_params", "predictions", "metrics"):
        assert field in rec or rec["kind"] != "head"
    assert rec["versions"]["scikit-learn"]
    assert (out / "splits.csv").exists() and (out / "run.json").exists()
    # The signal is real: the best candidate separates the classes.
    assert df[df.fold != "test"].groupby("candidate")["auc"].mean().max() > 0.8


def test_rerun_computes_nothing_and_gives_the_same_table(reference):
    out, df = reference
    manifest, fs = make_task()
    before = (out / "records.jsonl").read_bytes()
    again = sweep(manifest, fs, out=out, **sweep_args(stacking=True, **FAST))
    assert (out / "records.jsonl").read_bytes() == before
    pd.testing.assert_frame_equal(table(again), table(df))


def test_new_heads_extend_a_run_without_recomputing(reference, tmp_path):
    out, _ = reference
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    n_before = len(ResultStore(copy).records())
    manifest, fs = make_task()
    opts = dict(FAST, heads=["svm-rbf", "rf", "logreg"], grids=dict(FAST["grids"], logreg={"C": [0.1]}))
    df = sweep(manifest, fs, out=copy, **sweep_args(ensembles=False, **opts))
    assert len(ResultStore(copy).records()) == n_before + 7 * 4
    assert set(df["head"].dropna()) == {"svm-rbf", "rf", "logreg"}


_KILLED_RUN = """
import sys
from _sweepdata import FAST, make_task, sweep_args
from workbench.search.sweep import sweep
manifest, fs = make_task()
sweep(manifest, fs, out=sys.argv[1], **sweep_args(stacking=True, backend="sequential", **FAST))
"""


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(reference, tmp_path):
    _, ref = reference
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(out)], env=env)
    records = out / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = records.read_bytes().count(b"\n")
    assert 10 <= n_killed < len(ref)
    # A kill mid-append leaves a torn line: simulate the worst case on top.
    with open(records, "ab") as f:
        f.write(b'{"key": "torn')
    manifest, fs = make_task()
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = sweep(manifest, fs, out=out, **sweep_args(stacking=True, **FAST))
    pd.testing.assert_frame_equal(table(resumed), table(ref), check_exact=False, atol=1e-12)
    assert len(ResultStore(out).records()) == len(ref)


@pytest.mark.slow
def test_dask_local_cluster_equals_local_run(reference, tmp_path):
    _, ref = reference
    manifest, fs = make_task()
    df = sweep(manifest, fs, out=tmp_path / "dask",
               **sweep_args(stacking=True, backend="dask", scheduler="local", n_jobs=2, **FAST))
    pd.testing.assert_frame_equal(table(df), table(ref), check_exact=False, atol=1e-9)


def test_loky_workers_equal_in_process_run(reference, tmp_path):
    _, ref = reference
    manifest, fs = make_task()
    df = sweep(manifest, fs, out=tmp_path / "loky", **sweep_args(stacking=True, n_jobs=2, **FAST))
    pd.testing.assert_frame_equal(table(df), table(ref), check_exact=False, atol=1e-9)


def test_ensembles_equal_voting_classifier_over_the_same_members(reference):
    """Stored-prediction soft votes == scikit-learn's VotingClassifier over refitted members;
    hard votes threshold each member at its own out-of-fold Youden point."""
    from sklearn.ensemble import VotingClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from workbench.heads.tuned import TunedHead

    out, df = reference
    manifest, fs = make_task()
    store = ResultStore(out)
    recs = {(r["candidate"], r["fold"]): r for r in store.records()}
    y = np.array([manifest.classes.index(lab) for lab in manifest.labels])
    test = np.array([it.split == "test" for it in manifest])
    names = ["alexnet:fc6", "vgg16:fc7"]
    X = np.concatenate([fs[n] for n in names], axis=1)
    starts = np.cumsum([0] + [fs[n].shape[1] for n in names])
    members = []
    for b, name in enumerate(names):
        cols = np.arange(starts[b], starts[b + 1])
        for head in ("svm-rbf", "rf"):
            fitted = TunedHead(head, grid=FAST["grids"][head], inner_splits=3, random_state=0).fit(
                fs[name][~test], y[~test])
            members.append((f"{name}-{head}", make_pipeline(
                FunctionTransformer(lambda Z, c=cols: Z[:, c]), FrozenEstimator(fitted))))
    soft = VotingClassifier(members, voting="soft").fit(X[~test], y[~test])

    stored_soft = store.predictions(recs[("[AV] vote-soft(svm-rbf+rf)", "test")])
    hard_rec = recs[("[AV] vote-hard(svm-rbf+rf)", "test")]
    stored_hard = store.predictions(hard_rec)
    assert list(stored_soft["ids"]) == [i for i, t in zip(manifest.ids, test) if t]
    np.testing.assert_allclose(stored_soft["proba"], soft.predict_proba(X[test]), atol=1e-6)
    np.testing.assert_array_equal(stored_soft["pred"], soft.predict(X[test]))
    # Hard votes (two classes): each member votes at its own Youden threshold, chosen on
    # its outer CV out-of-fold predictions (for test), not at 0.5.
    from workbench.evaluation.stats import youden_threshold

    pos = manifest.classes.index("malignant")
    ts = []
    for name in names:
        for head in ("svm-rbf", "rf"):
            code = "A" if name.startswith("alexnet") else "V"
            oof = [recs[(f"[{code}] {head}", f)] for f in ("0", "1", "2")]
            p_oof = np.concatenate([store.predictions(r)["proba"][:, pos] for r in oof])
            y_oof = np.concatenate([store.predictions(r)["y_true"] for r in oof]) == pos
            ts.append(youden_threshold(y_oof, p_oof))
    np.testing.assert_allclose(hard_rec["thresholds"], ts)
    assert hard_rec["ensemble_rule"] == 2
    assert len(set(hard_rec["thresholds"])) > 1  # members differ: not one 0.5 for all
    P = np.stack([m.predict_proba(X[test])[:, pos] for _, m in members])
    share = (P >= np.array(ts)[:, None]).mean(0)
    np.testing.assert_allclose(stored_hard["proba"][:, pos], share, atol=1e-12)
    decided = share != 0.5
    assert decided.any()
    np.testing.assert_array_equal(stored_hard["pred"][decided] == pos, share[decided] > 0.5)
    assert set(np.unique(stored_hard["proba"][:, pos])) <= {0.0, 0.25, 0.5, 0.75, 1.0}


# ---- bad input: clear errors, nothing written ---------------------------------------


def _nothing_written(out: Path) -> bool:
    return not out.exists()


def test_features_missing_ids_fail_before_writing(tmp_path):
    manifest, fs = make_task()
    short = FeatureSet(fs.ids[5:], fs.labels[5:], {n: fs[n][5:] for n in fs.names}, {})
    with pytest.raises(SweepInputError, match=r"no rows for 5 of the manifest's 72 images: 'img000'"):
        sweep(manifest, short, out=tmp_path / "run", **sweep_args(**FAST))
    assert _nothing_written(tmp_path / "run")


def test_features_may_hold_more_images_than_the_manifest(tmp_path):
    manifest, fs = make_task()
    sub = manifest.subset(manifest.ids[::-1][:60])  # other order, fewer images
    df = sweep(sub, fs, out=tmp_path / "run", **sweep_args(ensembles=False, subsets="single", **FAST))
    assert df.loc[df.fold == "test", "n_eval"].iloc[0] == sum(it.split == "test" for it in sub)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_fail_before_writing(tmp_path, bad):
    manifest, fs = make_task()
    blocks = {n: fs[n].copy() for n in fs.names}
    blocks["vgg16:fc7"][7, 3] = bad
    with pytest.raises(SweepInputError, match=r"vgg16:fc7 has NaN or infinite values in 1 row\(s\): 'img007'"):
        sweep(manifest, FeatureSet(fs.ids, fs.labels, blocks, {}), out=tmp_path / "run", **sweep_args(**FAST))
    assert _nothing_written(tmp_path / "run")


def test_class_too_small_for_the_folds_fails_before_writing(tmp_path):
    manifest, fs = make_task()
    # Keep only 2 training malignant images: 3 folds cannot each hold one.
    mal_train = [it.id for it in manifest if it.label == "malignant" and it.split != "test"]
    keep = [i for i in manifest.ids if i not in set(mal_train[2:])]
    with pytest.raises(FoldError, match=r"'malignant' has 2 images"):
        sweep(manifest.subset(keep), fs, out=tmp_path / "run", **sweep_args(**FAST))
    assert _nothing_written(tmp_path / "run")


def test_single_class_training_set_fails_before_writing(tmp_path):
    manifest, fs = make_task()
    keep = [it.id for it in manifest if it.label == "benign" or it.split == "test"]
    with pytest.raises(FoldError, match=r"single class \('benign'\)"):
        sweep(manifest.subset(keep), fs, out=tmp_path / "run", **sweep_args(**FAST))
    assert _nothing_written(tmp_path / "run")


def test_unknown_head_block_or_positive_fail_before_writing(tmp_path):
    manifest, fs = make_task()
    with pytest.raises(KeyError, match="unknown head 'svm'; known heads: svm-rbf"):
        sweep(manifest, fs, out=tmp_path / "run", options=SweepOptions(heads=("svm",)))
    with pytest.raises(ValueError, match="unknown blocks"):
        sweep(manifest, fs, out=tmp_path / "run", **sweep_args(subsets=[["alexnet:fc8"]], **FAST))
    with pytest.raises(ValueError, match="positive class 'cancer'"):
        sweep(manifest, fs, out=tmp_path / "run", **sweep_args(positive="cancer", **FAST))
    assert _nothing_written(tmp_path / "run")


def test_run_folder_of_another_protocol_is_refused(reference):
    out, _ = reference
    manifest, fs = make_task()
    opts = dict(FAST, cv=4)
    with pytest.raises(RunMismatchError, match=r"cv: 3 there, 4 now"):
        sweep(manifest, fs, out=out, **sweep_args(**opts))


def test_grouped_manifest_keeps_each_patient_in_one_fold(tmp_path):
    manifest, fs = make_task(groups=True)
    sweep(manifest, fs, out=tmp_path / "run", **sweep_args(subsets="single", ensembles=False, **FAST))
    folds = pd.read_csv(tmp_path / "run" / "splits.csv").merge(
        pd.DataFrame({"id": manifest.ids, "group": [it.group for it in manifest]}))
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert folds["fold"].nunique() == 4


def test_groups_straddling_the_manifest_split_are_warned_about(tmp_path):
    manifest, fs = make_task(groups=True)
    items = list(manifest)
    # Move one image of a test patient into training: that patient now leaks.
    items[1] = dataclasses.replace(items[1], split="train")
    leaky = Manifest(items, source=manifest.source, classes=manifest.classes)
    with pytest.warns(UserWarning, match=r"1 group\(s\) have images in both the training and the test split: "
                                         r"'patient000'"):
        sweep(leaky, fs, out=tmp_path / "run", **sweep_args(subsets="single", ensembles=False, **FAST))


def test_multiclass_sweep_reports_per_class_and_macro(tmp_path):
    manifest, fs = make_task(n=90, classes=("benign", "malignant", "normal"))
    df = sweep(manifest, fs, out=tmp_path / "run", **sweep_args(subsets="single", **FAST))
    for col in ("auc", "sensitivity", "sensitivity[normal]", "auc[malignant]", "balanced_accuracy"):
        assert col in df.columns and df[col].notna().all()


# ---- real data ----------------------------------------------------------------------


@pytest.mark.slow
def test_busi_benign_vs_malignant_lite_sweep(busi_dir, tmp_path_factory):
    """The issue's CI sweep: EfficientNet-Lite0/1/2 on BUSI benign vs malignant, 7 subsets
    x {svm-rbf, rf} + vote ensembles, 5-fold CV and the test split."""
    from workbench.evaluation.summary import summarize

    root = tmp_path_factory.mktemp("busi-sweep")
    feats = ["tf_efficientnet_lite0:avgpool", "tf_efficientnet_lite1:avgpool", "tf_efficientnet_lite2:avgpool"]
    kw = dict(classes=["benign", "malignant"], heads=["svm-rbf", "rf"], grids={"rf": {"max_features": ["sqrt"]}},
              cv=5, n_jobs=2, cache=root / "cache", progress=False,
              extract_options=dict(batch_size=32, device="cpu"))
    t0 = time.perf_counter()
    df = sweep(busi_dir / "labels.csv", feats, out=root / "run", **sweep_args(**kw))
    seconds = time.perf_counter() - t0
    assert df["candidate"].nunique() == 7 * 2 + 7 * 2
    assert len(df) == 28 * 6
    test = df[df.fold == "test"]
    assert (test["n_eval"] == 78 + 43).all() and (test["positive"] == "malignant").all()
    summary = summarize(df, "auc")
    best = summary.iloc[0]
    print(f"\nBUSI benign vs malignant, Lite0/1/2: best CV AUC {best['cv_auc']:.3f} +- {best['cv_auc_sd']:.3f} "
          f"({best['candidate']}), its test AUC {best['test_auc']:.3f}; {seconds:.0f} s")
    (root / "summary.txt").write_text(summary.to_string())
    # Published linear probes on BreastMNIST reach 0.85-0.93 AUC; these ImageNet features do too.
    assert best["cv_auc"] > 0.85
    assert summary[summary.kind == "head"]["cv_auc"].max() > 0.85
    # A second run reads the cache and the records: nothing is recomputed.
    before = (root / "run" / "records.jsonl").read_bytes()
    again = sweep(busi_dir / "labels.csv", feats, out=root / "run", **sweep_args(**kw))
    assert (root / "run" / "records.jsonl").read_bytes() == before
    pd.testing.assert_frame_equal(table(again), table(df))


def test_grids_the_fast_path_cannot_honour_run_plain(tmp_path):
    # A class_weight grid must be searched, not dropped by the precomputed-kernel path.
    manifest, fs = make_task()
    grids = {"svm-rbf": {"C": [1.0], "class_weight": [None, "balanced"]}}
    df = sweep(manifest, fs, out=tmp_path / "run", protocol=Protocol(cv=3, inner_cv=3),
               options=SweepOptions(heads=("svm-rbf",), grids=grids, ensembles=False, subsets="single"),
               progress=False)
    assert df.candidate_id.nunique() == 3 and len(df) == 3 * 4  # 3 CV folds + test
    recs = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 12
    assert all("class_weight" in r["best_params"] for r in recs), recs[0]


def test_unknown_grid_parameter_fails_before_writing(tmp_path):
    manifest, fs = make_task()
    with pytest.raises(ValueError, match="gama_factor"):
        sweep(manifest, fs, out=tmp_path / "run",
              options=SweepOptions(heads=("svm-rbf",), grids={"svm-rbf": {"gama_factor": [1.0]}}), progress=False)
    assert _nothing_written(tmp_path / "run")


def test_class_only_in_the_test_split_fails_before_writing(tmp_path):
    manifest, fs = make_task(n=90, classes=("benign", "malignant", "normal"), test_every=3)  # class 0 only in test
    with pytest.raises(FoldError, match="benign.*only in the test split"):
        sweep(manifest, fs, out=tmp_path / "run", **sweep_args(**FAST))
    assert _nothing_written(tmp_path / "run")


# ---- the grid is part of a candidate's label -------------------------------------------

QUICK = dict(heads=["logreg", "rf"], grids={"logreg": {"C": [1.0]}, "rf": {"n_estimators": [10]}},
             subsets=[["alexnet:fc6"]], cv=3, inner_cv=3, progress=False)


def test_another_grid_in_the_same_folder_gets_its_own_label(tmp_path):
    from workbench.search.select import search
    from workbench.evaluation.summary import summarize

    manifest, fs = make_task(n=48)
    out = tmp_path / "run"
    first = sweep(manifest, fs, out=out, **sweep_args(**QUICK))
    assert "[A] logreg" in set(first["candidate"])  # the folder's first grid: plain labels
    assert "[A] vote-soft(logreg+rf)" in set(first["candidate"])
    second = sweep(manifest, fs, out=out,
                   **sweep_args(**dict(QUICK, grids=dict(QUICK["grids"], logreg={"C": [0.1, 1]}))))
    labels = set(second["candidate"])
    assert "[A] logreg{C=0.1,1}" in labels and "[A] rf" in labels
    assert "[A] vote-soft(logreg{C=0.1,1}+rf)" in labels
    records = ResultStore(out).frame()
    summary = summarize(records, "auc")
    assert summary["candidate"].is_unique
    assert (summary["n_folds"] == 3).all()  # no label pools two candidates' folds
    assert len(summary) == records["candidate_id"].nunique()
    result = search(out, "auc")
    assert result.selected
    # The folder's first grid keeps the plain label on every later run.
    third = sweep(manifest, fs, out=out, **sweep_args(**QUICK))
    assert set(third["candidate"]) == set(first["candidate"])
    assert json.loads((out / "labels.json").read_text())["plain_grids"]["logreg"] == {"C": [1.0]}


def test_two_candidates_sharing_a_label_are_refused_by_name(tmp_path):
    from workbench.evaluation.summary import DuplicateLabelError, summarize

    manifest, fs = make_task(n=48)
    out = tmp_path / "run"
    sweep(manifest, fs, out=out, **sweep_args(**dict(QUICK, ensembles=False)))
    # The same block names with other values: other candidate ids under the same labels.
    changed = FeatureSet(fs.ids, fs.labels, {n: fs[n] + 1.0 for n in fs.names}, {})
    df = sweep(manifest, changed, out=out, **sweep_args(**dict(QUICK, ensembles=False)))
    records = ResultStore(out).frame()
    ids = sorted(records.loc[records["candidate"] == "[A] logreg", "candidate_id"].unique())
    assert len(ids) == 2
    with pytest.raises(DuplicateLabelError) as e:
        summarize(records, "auc")
    assert "'[A] logreg'" in str(e.value) and all(i in str(e.value) for i in ids)
    assert isinstance(e.value, ValueError)
    assert summarize(df, "auc")["candidate"].is_unique  # one sweep's own records are fine

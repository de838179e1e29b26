"""Hybrid ensembles: end-to-end baseline networks vote (and stack) with the feature heads.

The baselines here are stand-ins (:mod:`_hybriddata`: a logistic regression per fold
with a held-out validation split, recorded as ``run_baselines`` records a CNN), so
every check is against the stored member predictions, by hand or with scikit-learn.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from _hybriddata import add_network_baseline
from _sweepdata import make_task, sweep_args
from workbench.errors import ConfigError, UnknownNameError
from workbench.evaluation.protocol import Protocol, build_task
from workbench.evaluation.settings import is_cv_fold
from workbench.evaluation.stats import youden_threshold
from workbench.evaluation.store import ResultStore
from workbench.search import running
from workbench.search.options import SweepOptions
from workbench.search.plan import build_plan, check_heads
from workbench.search.select import search
from workbench.search.sweep import sweep

PROTO = dict(cv=3, inner_cv=3, repeats=2)
HEADS = dict(heads=["svm-rbf", "logreg"], grids={"svm-rbf": {"C": [1.0, 10.0], "gamma_factor": [1.0]},
                                                 "logreg": {"C": [0.1]}})
SUBSETS = [["alexnet:fc6"], ["vgg16:fc7"], ["alexnet:fc6", "vgg16:fc7"]]
MEMBERS = ["svm-rbf", "logreg", "baseline:lite0"]
HYBRID = r"\+CNN lite0\)$"


def _kw(**over) -> dict:
    return sweep_args(**{**PROTO, **HEADS, "subsets": SUBSETS, "stacking": True, "ensemble_members": MEMBERS,
                         "progress": False, **over})


def _options(**over) -> SweepOptions:
    return SweepOptions(**{"heads": tuple(HEADS["heads"]), "grids": HEADS["grids"], "subsets": SUBSETS,
                           "stacking": True, "ensemble_members": tuple(MEMBERS), **over})


def _stored(run: Path) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(label, fold) -> (record, predictions) of every record in ``run``."""
    store = ResultStore(run)
    return {(r["candidate"], r["fold"]): (r, store.predictions(r)) for r in store.records()}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """A sweep before the baselines (hybrids wait), the baseline records, the sweep again.

    Every call of the stacking rule is kept (``calls``) to check what stacks are fitted on.
    """
    run = tmp_path_factory.mktemp("hybrid") / "run"
    manifest, fs = make_task(n=72)
    calls = []
    real = running.stack

    def spy(train_probas, y_train, eval_probas, seed=0):
        out = real(train_probas, y_train, eval_probas, seed=seed)
        calls.append(SimpleNamespace(train=[np.array(p) for p in train_probas], y=np.array(y_train),
                                     eval=[np.array(p) for p in eval_probas], proba=out[1]))
        return out

    running.stack = spy
    try:
        first = sweep(manifest, fs, out=run, **_kw())
        n_first = len(ResultStore(run).records())
        cid = add_network_baseline(run, manifest, fs, Protocol(**PROTO))
        second = sweep(manifest, fs, out=run, **_kw())
    finally:
        running.stack = real
    task = build_task(manifest, Protocol(**PROTO))
    return SimpleNamespace(run=run, manifest=manifest, fs=fs, first=first, second=second, n_first=n_first,
                           cid=cid, task=task, calls=calls, stored=_stored(run))


def _hybrids(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["candidate"].str.contains(HYBRID)]


def test_hybrids_wait_for_the_baselines_then_are_computed_once(hybrid):
    assert _hybrids(hybrid.first).empty
    hyb = _hybrids(hybrid.second)
    folds = [f for f, _, _ in hybrid.task.outer]
    assert "r1-2" in folds and len(folds) == 7  # repeated CV: members matched by fold name
    # Every subset, one block included, in each kind: hard, soft, stack.
    assert sorted(hyb["candidate"].unique()) == sorted(
        f"{s} {k}(svm-rbf+logreg+CNN lite0)" for s in ("[A]", "[V]", "[AV]")
        for k in ("vote-hard", "vote-soft", "stack"))
    assert hyb.groupby("candidate")["fold"].apply(sorted).map(lambda fs: fs == sorted(folds)).all()
    # The second sweep added the hybrids only (plus the 7 baseline records in between).
    lines = (hybrid.run / "records.jsonl").read_text().splitlines()
    assert len(lines) == hybrid.n_first + 7 + 9 * 7
    r = hybrid.stored[("[A] vote-soft(svm-rbf+logreg+CNN lite0)", "0")][0]
    assert r["members"] == ["[A] svm-rbf", "[A] logreg", "CNN lite0"]
    assert r["baselines"] == ["lite0"] and r["baseline_ids"] == [hybrid.cid] and r["kind"] == "vote-soft"
    # A third sweep has nothing to do.
    sweep(hybrid.manifest, hybrid.fs, out=hybrid.run, **_kw())
    assert len((hybrid.run / "records.jsonl").read_text().splitlines()) == len(lines)


def test_waiting_is_one_log_line_and_partial_baselines_wait(tmp_path, caplog):
    manifest, fs = make_task(n=48)
    kw = sweep_args(cv=2, inner_cv=2, heads=["logreg"], grids={"logreg": {"C": [0.1]}}, subsets=[["alexnet:fc6"]],
                    ensemble_members=["logreg", "baseline:lite0"], progress=False)
    with caplog.at_level(logging.INFO, logger="workbench"):
        df = sweep(manifest, fs, out=tmp_path / "run", **kw)
    waits = [m for m in caplog.messages if "hybrid ensembles wait" in m]
    assert waits == ["hybrid ensembles wait for the records of baseline lite0: run the baselines, "
                     "then the sweep again"]
    assert list(df["candidate"].unique()) == ["[A] logreg"]  # one member: no plain ensemble
    add_network_baseline(tmp_path / "run", manifest, fs, Protocol(cv=2, inner_cv=2), folds=["0", "1"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workbench"):
        df = sweep(manifest, fs, out=tmp_path / "run", **kw)
    # No test record yet: still waiting.
    assert any("hybrid ensembles wait" in m for m in caplog.messages) and df["candidate"].nunique() == 1
    add_network_baseline(tmp_path / "run", manifest, fs, Protocol(cv=2, inner_cv=2), folds=["test"])
    df = sweep(manifest, fs, out=tmp_path / "run", **kw)
    # One head and one network: two members, a hybrid of a single block.
    assert sorted(df["candidate"].unique()) == ["[A] logreg", "[A] vote-hard(logreg+CNN lite0)",
                                                "[A] vote-soft(logreg+CNN lite0)"]


def test_a_baseline_record_without_validation_scores_is_named(tmp_path):
    from workbench.search.running import HybridMemberError

    manifest, fs = make_task(n=48)
    kw = sweep_args(cv=2, inner_cv=2, heads=["logreg"], grids={"logreg": {"C": [0.1]}}, subsets=[["alexnet:fc6"]],
                    ensemble_members=["logreg", "baseline:lite0"], progress=False)
    add_network_baseline(tmp_path / "run", manifest, fs, Protocol(cv=2, inner_cv=2), with_val=False)
    with pytest.raises(HybridMemberError, match=r"baseline lite0 on fold \S+ holds no validation-split scores"):
        sweep(manifest, fs, out=tmp_path / "run", **kw)
    assert [r["candidate"] for r in ResultStore(tmp_path / "run").records() if "vote" in r["kind"]] == []


def test_soft_vote_is_the_mean_of_the_stored_member_probabilities(hybrid):
    st = hybrid.stored
    for subset, blocks in (("[A]", "A"), ("[V]", "V"), ("[AV]", "AV")):
        for f, _, _ in hybrid.task.outer:
            rec, pr = st[(f"{subset} vote-soft(svm-rbf+logreg+CNN lite0)", f)]
            members = [st[(f"[{b}] {h}", f)][1]["proba"] for b in blocks for h in ("svm-rbf", "logreg")]
            members.append(st[("CNN lite0", f)][1]["proba"])
            mean = sum(members) / len(members)
            np.testing.assert_allclose(pr["proba"], mean, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(pr["pred"], mean.argmax(axis=1))
            np.testing.assert_array_equal(pr["ids"], st[("CNN lite0", f)][1]["ids"])
            # The network really changes the vote: it is not the heads' mean.
            assert not np.allclose(mean, st[(f"{subset} vote-soft(svm-rbf+logreg)", f)][1]["proba"])


def test_hard_vote_thresholds_heads_as_before_network_on_its_validation_split(hybrid):
    st, pos = hybrid.stored, 1  # benign, malignant: malignant is the positive class
    for f, _, _ in hybrid.task.outer:
        rec, pr = st[("[AV] vote-hard(svm-rbf+logreg+CNN lite0)", f)]
        plain = st[("[AV] vote-hard(svm-rbf+logreg)", f)][0]
        net = st[("CNN lite0", f)][1]
        assert rec["thresholds"][:4] == plain["thresholds"]  # the heads' rule is unchanged
        assert rec["thresholds"][4] == youden_threshold(net["val_y"] == pos, net["val_proba"][:, pos])
        # The vote by hand: members at their thresholds, a tie to the mean margin.
        labels = [f"[{b}] {h}" for b in "AV" for h in ("svm-rbf", "logreg")]
        p = np.stack([st[(m, f)][1]["proba"][:, pos] for m in labels] + [net["proba"][:, pos]])
        margin = p - np.array(rec["thresholds"])[:, None]
        share = (margin >= 0).mean(axis=0)
        expected = ((share > 0.5) | ((share == 0.5) & (margin.mean(axis=0) >= 0))).astype(int)
        np.testing.assert_array_equal(pr["pred"], expected)
        np.testing.assert_allclose(pr["proba"][:, pos], share)


def _meta(train, y, evals):
    """The stack's meta-learner, by scikit-learn: each member's last column dropped."""
    design = lambda ps: np.hstack([p[:, :-1] for p in ps])  # noqa: E731
    clf = LogisticRegression(max_iter=5000, random_state=0).fit(design(train), y)
    return clf.predict_proba(design(evals))


def test_stacks_are_fitted_on_allowed_predictions_only(hybrid):
    st, task = hybrid.stored, hybrid.task
    train_rows, eval_rows = task.train_rows, task.eval_rows
    cv = [f for f, _, _ in task.outer if is_cv_fold(f)]
    by_first = {st[("[A] svm-rbf", f)][1]["proba"].tobytes(): f for f, _, _ in task.outer}
    calls = {}  # (hybrid?, fold) -> the call of subset [A]: first member [A] svm-rbf, 2 or 3 members
    for c in hybrid.calls:
        f = by_first.get(c.eval[0].tobytes())
        if f is not None and len(c.train) in (2, 3):
            calls[(len(c.train) == 3, f)] = c
    assert len(calls) == 2 * len(task.outer)
    label = "[A] stack(svm-rbf+logreg+CNN lite0)"
    for f, _, _ in task.outer:
        c, net = calls[(True, f)], st[("CNN lite0", f)][1]
        np.testing.assert_allclose(st[(label, f)][1]["proba"], _meta(c.train, c.y, c.eval), atol=1e-9)
        np.testing.assert_array_equal(c.eval[2], net["proba"])
        if is_cv_fold(f):
            # Fitted on the network's validation split only: images of f's training rows,
            # none of them scored on f; the network's own scores and labels there.
            rows = np.array([task.ids.index(i) for i in net["val_ids"]])
            assert set(rows) <= set(train_rows[f]) and not set(rows) & set(eval_rows[f])
            np.testing.assert_array_equal(c.y, net["val_y"])
            np.testing.assert_array_equal(c.y, task.y[rows])
            np.testing.assert_array_equal(c.train[2], net["val_proba"])
            # The heads' columns: their inner out-of-fold predictions (the plain stack's
            # training columns) on those rows.
            plain = calls[(False, f)]
            at = {r: k for k, r in enumerate(train_rows[f])}
            for j in (0, 1):
                np.testing.assert_array_equal(c.train[j], plain.train[j][[at[r] for r in rows]])
        else:
            # Test: every member's outer CV out-of-fold predictions, the network's included.
            members = ["[A] svm-rbf", "[A] logreg", "CNN lite0"]
            for j, m in enumerate(members):
                np.testing.assert_array_equal(c.train[j], np.concatenate([st[(m, g)][1]["proba"] for g in cv]))
            np.testing.assert_array_equal(c.y, np.concatenate([st[("CNN lite0", g)][1]["y_true"] for g in cv]))


def test_non_hybrid_candidates_keep_their_ids(hybrid, tmp_path):
    """A sweep without ensemble members finds all it would compute in the hybrid run's
    folder (same ids), and plans the same ids as the hybrid sweep for non-hybrids."""
    proto = Protocol(**PROTO)
    plain_opts = _options(ensemble_members=None)
    plain = build_plan(hybrid.manifest, hybrid.fs, out=hybrid.run, protocol=proto, options=plain_opts,
                       grids=check_heads(plain_opts))
    assert plain.todo_heads == [] and plain.todo_ensembles == [] and plain.baseline_ids == {}
    opts = _options()
    with_h = build_plan(hybrid.manifest, hybrid.fs, out=hybrid.run, protocol=proto, options=opts,
                        grids=check_heads(opts))
    assert with_h.todo_ensembles == [] and with_h.baseline_ids == {"lite0": hybrid.cid}
    labels = {with_h.label(c): i for c, i in with_h.ids.items()}
    assert {plain.label(c): i for c, i in plain.ids.items()} == {k: v for k, v in labels.items() if "CNN" not in k}
    assert len(labels) == len(plain.ids) + 9
    recorded = {(r["candidate"], r["candidate_id"]) for r in ResultStore(hybrid.run).records()}
    assert set(labels.items()) <= recorded


def test_a_hybrid_follows_its_baselines_record_id(hybrid, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hybrid.run, run)
    proto, opts = Protocol(**PROTO), _options()

    def plan():
        return build_plan(hybrid.manifest, hybrid.fs, out=run, protocol=proto, options=opts, grids=check_heads(opts))

    before = plan()
    add_network_baseline(run, hybrid.manifest, hybrid.fs, proto, C=1.0, cid="retrained", folds=["0", "test"])
    assert plan().baseline_ids == {"lite0": hybrid.cid}  # incomplete: the complete one stays
    add_network_baseline(run, hybrid.manifest, hybrid.fs, proto, C=1.0, cid="retrained")
    after = plan()
    assert after.baseline_ids == {"lite0": "retrained"}
    hyb = [c for c in after.ensemble_candidates if c.baselines]
    assert len(hyb) == 9 and all(after.ids[c] != before.ids[c] for c in hyb)
    assert all(after.ids[c] == before.ids[c] for c in after.ids if not c.baselines)
    assert {c for c, _ in after.todo_ensembles} == set(hyb)


def test_options_refuse_bad_members():
    with pytest.raises(ConfigError, match=r"\['xgb'\] are not among the swept heads"):
        _options(ensemble_members=("svm-rbf", "xgb", "baseline:lite0"))
    with pytest.raises(ConfigError, match="name no head"):
        _options(ensemble_members=("baseline:lite0",))
    with pytest.raises(ConfigError, match="not both"):
        _options(ensemble_heads=("rf",), heads=("svm-rbf", "rf"), grids={})
    with pytest.raises(ConfigError, match="names no baseline"):
        _options(ensemble_members=("svm-rbf", "baseline:"))
    with pytest.raises(ConfigError, match="ensembles are off"):
        _options(ensembles=False)
    o = _options(ensemble_members=("logreg", "baseline:lite0", "logreg"))
    assert o.member_heads == ("logreg",) and o.ensemble_baselines == ("lite0",)
    assert SweepOptions().member_heads == ("svm-rbf", "rf") and SweepOptions().ensemble_baselines == ()
    with pytest.raises(UnknownNameError, match="unknown baseline 'nope'.*lite0"):
        check_heads(_options(ensemble_members=("svm-rbf", "baseline:nope")))


CONFIG = """
name = "t"
manifest = "labels.csv"
classes = ["benign", "malignant"]
[features]
specs = ["tf_efficientnet_lite0:avgpool"]
[sweep]
heads = ["svm-rbf", "rf"]
{sweep}
[baselines]
names = ["lite0"]
"""


@pytest.mark.parametrize("line, problem", [
    ('ensemble_members = ["svm-rbf", "baseline:nope"]', "unknown baseline 'nope'; known baselines: alexnet"),
    ('ensemble_members = ["svm-rbf", "logreg"]', "logreg is neither"),
    ('ensemble_members = ["svm-rbf", "baseline:lite1"]', "add 'lite1' to baselines.names"),
    ('ensemble_members = "svm-rbf"', 'write ensemble_members = ["svm-rbf"]'),
    ('ensemble_members = ["rf", "baseline:lite0"]\nensemble_heads = ["rf"]', "not both"),
])
def test_config_refuses_bad_members(tmp_path, line, problem):
    from workbench.experiment import ConfigError as FileConfigError, ExperimentConfig

    path = tmp_path / "exp.toml"
    path.write_text(CONFIG.format(sweep=line))
    with pytest.raises(FileConfigError, match="sweep.ensemble_members") as e:
        ExperimentConfig.load(path)
    assert problem in str(e.value)


def test_config_loads_members(tmp_path):
    from workbench.experiment import ExperimentConfig

    path = tmp_path / "exp.toml"
    path.write_text(CONFIG.format(sweep='ensemble_members = ["rf", "baseline:lite0"]'))
    cfg = ExperimentConfig.load(path)
    assert cfg.sweep.ensemble_members == ("rf", "baseline:lite0")
    assert cfg.sweep.member_heads == ("rf",) and cfg.sweep.ensemble_baselines == ("lite0",)


def test_run_experiment_sweeps_again_after_the_baselines(tmp_path, monkeypatch):
    """`workbench run`: sweep, baselines, then the sweep's hybrids, in that order."""
    from workbench import experiment

    path = tmp_path / "exp.toml"
    path.write_text(CONFIG.format(sweep='ensemble_members = ["rf", "baseline:lite0"]'))
    order = []
    for stage in ("fine_tune_stage", "extract_stage", "sweep_stage", "baselines_stage", "record_inputs",
                  "gradcam_stage", "report_stage", "export_stage"):
        monkeypatch.setattr(experiment, stage, lambda *a, _s=stage, **k: order.append(_s) or {})
    monkeypatch.setattr(experiment, "validate_inputs", lambda *a, **k: (None, {}, {}))  # manifest, duplicates, external
    experiment.run_experiment(path, progress=False)
    assert order[:4] == ["fine_tune_stage", "extract_stage", "sweep_stage", "baselines_stage"]
    assert order[4] == "sweep_stage" and order.count("sweep_stage") == 2
    order.clear()
    path.write_text(CONFIG.format(sweep=""))  # no baseline members: one sweep
    experiment.run_experiment(path, progress=False)
    assert order.count("sweep_stage") == 1


def test_ensemble_table_and_heat_map_show_hybrids_in_their_own_rows(hybrid):
    from workbench.report.figures import heatmap_table
    from workbench.report.tables import ensemble_table, to_markdown

    records = ResultStore(hybrid.run).frame()
    table = ensemble_table(records, "auc")
    labels = [r[0].text for r in table.rows]
    assert labels == ["[A]", "[V]", "[AV]", "[A] + CNN lite0", "[V] + CNN lite0", "[AV] + CNN lite0"]
    cv = records[records["fold"].map(is_cv_fold)].groupby("candidate")["auc"].mean()
    soft = table.columns.index("vote-soft (CV)")
    for row, cand in ((0, "[A] vote-soft(svm-rbf+logreg)"), (3, "[A] vote-soft(svm-rbf+logreg+CNN lite0)"),
                      (5, "[AV] vote-soft(svm-rbf+logreg+CNN lite0)")):
        assert table.rows[row][soft].text.startswith(f"{cv[cand]:.3f}")
    assert "hybrid ensembles" in to_markdown(table)
    heat = heatmap_table(records, "auc")
    hyb = "vote-soft(svm-rbf+logreg+CNN lite0)"
    assert heat.loc["[A]", hyb] == pytest.approx(cv[f"[A] {hyb}"])
    assert heat.loc["[A]", "vote-soft(svm-rbf+logreg)"] == pytest.approx(cv["[A] vote-soft(svm-rbf+logreg)"])


def test_permuted_test_labels_change_no_cv_record_and_no_selection(tmp_path):
    """The sweep never reads test labels for a hybrid: with the test split's labels
    permuted in the manifest, every CV prediction and the selection stay the same."""
    manifest, fs = make_task(n=72, test_every=3)  # both classes in the test split
    rng = np.random.default_rng(5)
    test = [k for k, it in enumerate(manifest) if it.split == "test"]
    labels = [it.label for it in manifest]
    shuffled = list(labels)
    for k, v in zip(test, rng.permutation([labels[k] for k in test])):
        shuffled[k] = v
    assert shuffled != labels
    from dataclasses import replace
    from workbench.data.manifest import Manifest
    from workbench.features.featureset import FeatureSet

    permuted = Manifest([replace(it, label=lab) for it, lab in zip(manifest, shuffled)], source=manifest.source,
                        classes=list(manifest.classes))
    fs2 = FeatureSet(permuted.ids, permuted.labels, {n: fs[n] for n in fs.names}, {})
    kw = _kw(repeats=1, subsets=[["alexnet:fc6"]])
    out = {}
    for name, (m, f) in {"a": (manifest, fs), "b": (permuted, fs2)}.items():
        sweep(m, f, out=tmp_path / name, **kw)
        add_network_baseline(tmp_path / name, m, f, Protocol(cv=3, inner_cv=3))
        sweep(m, f, out=tmp_path / name, **kw)
        out[name] = _stored(tmp_path / name)
    keys = {k for k in out["a"] if is_cv_fold(k[1])}
    assert keys == {k for k in out["b"] if is_cv_fold(k[1])} and any("CNN lite0)" in k[0] for k in keys)
    for k in keys:
        np.testing.assert_array_equal(out["a"][k][1]["proba"], out["b"][k][1]["proba"])
    a, b = search(tmp_path / "a", "auc", top_k=3), search(tmp_path / "b", "auc", top_k=3)
    assert a.selected == b.selected and list(a.ranking.candidate) == list(b.ranking.candidate)


@pytest.mark.slow
def test_sweep_baselines_sweep_from_the_command_line(tmp_path, monkeypatch, capsys):
    """`workbench sweep`, then `workbench baselines`, then `workbench sweep` again: the
    hybrids wait for the network's records, then are computed (a BUSI slice, lite0)."""
    from workbench.cli import main

    busi = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
    if not (busi / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {busi}")
    src = pd.read_csv(busi / "labels.csv")
    df = pd.concat([src[(src.split == s) & (src.label == c)].head(k) for s, k in (("train", 16), ("test", 8))
                    for c in ("benign", "malignant")])
    for col in ("path", "mask_path", "roi_path"):
        df[col] = [str(busi / p) if isinstance(p, str) else p for p in df[col]]
    csv = tmp_path / "labels.csv"
    df.to_csv(csv, index=False)
    monkeypatch.chdir(tmp_path)  # ./finetuned is the default store
    common = ["--manifest", str(csv), "--classes", "benign,malignant", "--out", str(tmp_path / "run"),
              "--cv", "2", "--inner-cv", "2"]
    sweep_cmd = ["sweep", *common, "--features", "tf_efficientnet_lite0:avgpool", "--image-size", "64",
                 "--heads", "logreg", "--grid", "logreg:C=0.1", "--ensemble-members", "logreg,baseline:lite0",
                 "--cache", str(tmp_path / "cache")]
    assert main(sweep_cmd) == 0
    assert "hybrid ensembles wait for the records of baseline lite0" in capsys.readouterr().err
    assert main(["baselines", *common, "--baselines", "lite0", "--set", "epochs=1", "--set", "image_size=64",
                 "--set", "batch_size=16", "--quiet"]) == 0
    capsys.readouterr()
    assert main([*sweep_cmd, "--quiet"]) == 0
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    hybrids = sorted(c for c in summary.candidate if c.endswith("+CNN lite0)"))
    assert len(hybrids) == 2 and all(c.split()[1].startswith(("vote-hard(logreg+", "vote-soft(logreg+"))
                                     for c in hybrids)
    assert (summary.set_index("candidate").loc[hybrids, "n_folds"] == 2).all()
    assert main(["sweep", *common[:-4], "--out", str(tmp_path / "r2"), "--features", "tf_efficientnet_lite0:avgpool",
                 "--ensemble-members", "logreg,baseline:nope", "--heads", "logreg"]) == 2
    assert "unknown baseline 'nope'" in capsys.readouterr().err


def test_export_refuses_a_hybrid_by_name(tmp_path):
    """A bundle holds feature heads or one network, not both: a hybrid is refused by name
    before anything is written."""
    from workbench.bundle.export import _features_model
    from workbench.bundle.files import BundleError

    record = {"kind": "vote-soft", "candidate": "[A] vote-soft(svm-rbf+CNN lite0)", "baselines": ["lite0"],
              "members": ["[A] svm-rbf", "CNN lite0"]}
    with pytest.raises(BundleError, match=r"vote-soft\(svm-rbf\+CNN lite0\).*hybrid.*lite0"):
        _features_model(None, record, tmp_path)
    assert not any(tmp_path.iterdir())

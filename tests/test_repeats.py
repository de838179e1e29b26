"""Repeated CV (``repeats = R``): R x k outer folds shared by every candidate and baseline,
nested fine-tuning per (repeat, fold), and fine-tuning spread over joblib workers.

Synthetic features for the sweep; a tiny random-weight CNN (``timm/test_efficientnet``,
32 px, one epoch) on 24 random 48x40 PNGs for the fine-tuning: well under a second per
network on a CPU.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _sweepdata import make_task

from workbench.baselines.configs import BaselineSpec
from workbench.baselines.run import run_baselines
from workbench.data.manifest import Item, Manifest
from workbench.errors import ConfigError
from workbench.evaluation.protocol import Protocol, build_task
from workbench.evaluation.store import ResultStore
from workbench.features.featureset import FeatureSet
from workbench.search.options import Execution, SweepOptions
from workbench.search.select import rank_candidates
from workbench.search.sweep import sweep
from workbench.training.config import FineTuneConfig
from workbench.training.nested import fine_tune_folds, fine_tune_nested, networks_per_set

CV_FOLDS = ["0", "1", "2", "r1-0", "r1-1", "r1-2"]
P2 = Protocol(cv=3, inner_cv=2, repeats=2)
TINY_NET = "timm/test_efficientnet"
TINY_FT = FineTuneConfig(epochs=1, batch_size=8, image_size=32, patience=0, augment=False)
TINY_BASELINE = BaselineSpec("tiny", TINY_NET, TINY_FT, weights="random")
#: The sweep's settings here: two heads with fixed parameters, single blocks and their
#: pair, votes and a stack (inner refits on every CV fold of both repeats).
SWEEP = SweepOptions(heads=("svm-rbf", "logreg"), subsets=[("alexnet:fc6",), ("vgg16:fc7",),
                                                          ("alexnet:fc6", "vgg16:fc7")],
                     grids={"svm-rbf": {"C": [1.0]}, "logreg": {}}, stacking=True)


def _rows(task, fold: str) -> tuple[np.ndarray, np.ndarray]:
    return task.train_rows[fold], task.eval_rows[fold]


# ---- the folds --------------------------------------------------------------------------


def test_each_repeat_is_its_own_partition_of_the_training_split_and_repeat_0_is_the_old_cv():
    manifest, _ = make_task(48)
    one, two = build_task(manifest, P2.replace(repeats=1)), build_task(manifest, P2)
    assert [f for f, _, _ in two.outer] == CV_FOLDS + ["test"]
    assert [f for f, _, _ in one.outer] == ["0", "1", "2", "test"]
    train = np.sort(two.train_rows["test"])
    partitions = []
    for r in range(2):
        folds = CV_FOLDS[3 * r:3 * r + 3]
        evals = [_rows(two, f)[1] for f in folds]
        # A partition: disjoint evaluation rows that together are the training split ...
        assert np.array_equal(np.sort(np.concatenate(evals)), train)
        assert sum(len(e) for e in evals) == len(train)
        for f in folds:  # ... and each fold trains on the rest of it
            tr, ev = _rows(two, f)
            assert np.array_equal(np.sort(tr), np.setdiff1d(train, ev))
            assert sorted(two.inner_of[f][0][0].tolist() + two.inner_of[f][0][1].tolist()) == list(range(len(tr)))
        partitions.append({frozenset(e.tolist()) for e in evals})
    assert partitions[0] != partitions[1]  # not the same partition twice
    for f in ("0", "1", "2", "test"):  # repeat 0 is exactly the single-repeat run's CV
        for a, b in zip(_rows(one, f), _rows(two, f)):
            assert np.array_equal(a, b)
    # One repeat keeps the protocol record runs always had (so its hash); two do not.
    assert "repeats" not in one.protocol and "repeat_folds" not in one.protocol
    assert two.protocol["repeats"] == 2 and two.protocol_hash != one.protocol_hash


def test_networks_are_trained_for_cv_folds_and_test_never_for_external_sets():
    manifest, _ = make_task(48)
    ext = Manifest([Item(id=f"ext{i:02d}", path=Path(f"/nonexistent/ext{i:02d}.png"),
                         label=("benign", "malignant")[i % 2], row=i + 2) for i in range(6)],
                   source=Path("/nonexistent"), classes=["benign", "malignant"])
    task = build_task(manifest, P2, external={"site2": ext})
    assert "ext-site2" in [f for f, _, _ in task.outer]
    assert fine_tune_folds(task) == CV_FOLDS + ["test"]
    assert networks_per_set(task, fine_tune_folds(task)) == "2 repeats x 3 folds + test = 7 networks"
    one = build_task(manifest, P2.replace(repeats=1))
    assert networks_per_set(one, fine_tune_folds(one)) == "3 folds + test = 4 networks"


# ---- sweep and baselines share the R x k folds --------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Manifest:
    """24 random PNGs: 16 in the training split (8 per class), 8 test; validated."""
    from conftest import TinyDataset

    ds = TinyDataset(tmp_path_factory.mktemp("images"))
    ds.add_images(24)
    return Manifest.load(ds.csv).validate(progress=False)


def _features(m: Manifest) -> FeatureSet:
    """Two blocks with a class signal, in the manifest's order."""
    rng = np.random.default_rng(0)
    y = np.array([m.classes.index(label) for label in m.labels])
    blocks = {name: (rng.normal(size=(len(y), d)) + 1.5 * y[:, None]).astype(np.float32)
              for name, d in (("alexnet:fc6", 8), ("vgg16:fc7", 6))}
    return FeatureSet(m.ids, m.labels, blocks, {})


@pytest.fixture(scope="module")
def shared_run(images, tmp_path_factory):
    """A sweep and a baseline in one run folder under repeats = 2, cv = 3."""
    tmp = tmp_path_factory.mktemp("shared")
    out = tmp / "run"
    sweep(images, _features(images), out=out, protocol=P2, options=SWEEP, progress=False)
    run_baselines(images, [TINY_BASELINE], out, protocol=P2, val_fraction=0.0, root=tmp / "ft", device="cpu",
                  progress=False)
    return out


def test_every_candidate_and_baseline_sees_the_same_repeated_folds(shared_run, images):
    store = ResultStore(shared_run)
    records = store.current_records()
    by_candidate: dict[str, dict[str, dict]] = {}
    for r in records:
        by_candidate.setdefault(r["candidate"], {})[r["fold"]] = r
    kinds = {r["kind"] for r in records}
    assert {"head", "vote-soft", "vote-hard", "stack", "baseline"} <= kinds
    assert len(by_candidate) == 3 * 2 + 3 * 3 + 1  # heads, ensembles (hard, soft, stack), the baseline
    for candidate, folds in by_candidate.items():
        assert sorted(folds) == sorted(CV_FOLDS + ["test"]), candidate
    task = build_task(images, P2)
    for fold in CV_FOLDS + ["test"]:
        expected = [task.ids[i] for i in task.eval_rows[fold]]
        for candidate, folds in by_candidate.items():
            ids = store.predictions(folds[fold])["ids"].tolist()
            assert ids == expected, (candidate, fold)
            assert folds[fold]["n_eval"] == len(expected) and folds[fold]["n_train"] == len(task.train_rows[fold])


def test_splits_csv_holds_one_column_per_repeat(shared_run, images):
    splits = pd.read_csv(shared_run / "splits.csv", dtype=str, keep_default_na=False)
    assert {"fold", "fold_r1"} <= set(splits.columns) and "fold_r2" not in splits.columns
    task = build_task(images, P2)
    row = {i: k for k, i in enumerate(splits["id"])}
    for column, folds in (("fold", CV_FOLDS[:3]), ("fold_r1", CV_FOLDS[3:])):
        for number, fold in enumerate(folds):
            ids = {task.ids[i] for i in task.eval_rows[fold]}
            assert {i for i in splits["id"] if splits.loc[row[i], column] == str(number)} == ids
        test_ids = {task.ids[i] for i in task.eval_rows["test"]}
        assert {i for i in splits["id"] if splits.loc[row[i], column] == "test"} == test_ids


def test_the_cv_mean_of_the_ranking_is_over_all_repeats(shared_run):
    frame = ResultStore(shared_run).frame()
    ranked, baselines = rank_candidates(frame, "auc")
    both = pd.concat([ranked, baselines]).set_index("candidate")
    assert len(both) == frame["candidate"].nunique()
    for candidate, rows in frame.groupby("candidate"):
        per_fold = rows.set_index("fold")["auc"]
        assert both.loc[candidate, "cv_auc"] == pytest.approx(float(np.mean([per_fold[f] for f in CV_FOLDS])))
        assert both.loc[candidate, "n_folds"] == 6
    from workbench.report.tables import _folds_text

    assert _folds_text(frame) == "6 (2 repeats x 3)"
    assert _folds_text(frame[~frame["fold"].str.startswith("r")]) == "3"


# ---- nested fine-tuning -----------------------------------------------------------------


def test_nested_fine_tuning_makes_one_member_per_repeated_fold(images, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WORKBENCH_FINETUNED", str(tmp_path / "ft"))
    with caplog.at_level(logging.INFO, logger="workbench"):
        ns = fine_tune_nested(TINY_NET, images, TINY_FT, protocol=P2, weights="random", val_fraction=0.0,
                              device="cpu", progress=False, execution=Execution(n_jobs=1))
    assert "2 repeats x 3 folds + test = 7 networks; 0 already in the store" in caplog.text
    assert list(ns.members) == CV_FOLDS + ["test"]
    assert len({m.weights_id for m in ns.members.values()}) == 7
    task = build_task(images, P2)
    for fold, member in ns.members.items():  # each saw exactly its fold's training images
        assert set(member.meta["train_ids"]) == {task.ids[i] for i in task.train_rows[fold]}
    # A set under one repeat has repeat 0's members (the same data: the same ids, reused).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workbench"):
        one = fine_tune_nested(TINY_NET, images, TINY_FT, protocol=P2.replace(repeats=1), weights="random",
                               val_fraction=0.0, device="cpu", progress=False)
    assert "3 folds + test = 4 networks; 4 already in the store" in caplog.text
    assert {f: m.weights_id for f, m in one.members.items()} == {
        f: ns.members[f].weights_id for f in ("0", "1", "2", "test")}
    assert one.nested_id != ns.nested_id

    # A sweep under two repeats on the one-repeat set: its repeat-1 folds get the test
    # network's features (it saw them), marked optimistic; repeat 0 stays clean.
    from workbench.features.extraction import extract
    from workbench.features.options import ExtractOptions

    block = f"{one.label}:pre_logits"
    fs = extract(images, [block], cache=tmp_path / "cache", progress=False,
                 options=ExtractOptions(image_size=32, batch_size=8, num_workers=0, device="cpu"))
    df = sweep(images, fs, out=tmp_path / "run", protocol=P2, progress=False,
               options=SweepOptions(heads=("logreg",), grids={"logreg": {}}, ensembles=False))
    optimistic = df.set_index("fold")["optimistic"] if "optimistic" in df.columns else pd.Series(dtype=object)
    assert sorted(optimistic[optimistic.eq(True)].index) == ["r1-0", "r1-1", "r1-2"]


@pytest.mark.slow
def test_parallel_nested_members_equal_the_sequential_ones(images, tmp_path):
    from workbench.core.parallel import threads_per_worker

    kw = dict(protocol=P2, weights="random", val_fraction=0.0, device="cpu", progress=False)
    # Float sums depend on how many threads split them: the sequential run gets the
    # threads each of the two workers gets, so equal code must give equal weights.
    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(2))
    try:
        seq = fine_tune_nested(TINY_NET, images, TINY_FT, root=tmp_path / "a", **kw)
    finally:
        torch.set_num_threads(before)
    par = fine_tune_nested(TINY_NET, images, TINY_FT, root=tmp_path / "b", execution=Execution(n_jobs=2), **kw)
    assert par.nested_id == seq.nested_id and list(par.members) == list(seq.members)
    assert (tmp_path / "b" / "timm__test_efficientnet" / par.nested_id / "nested.json").is_file()
    for fold in seq.members:
        a, b = seq.members[fold].model.state_dict(), par.members[fold].model.state_dict()
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a), fold


# ---- baselines on workers -------------------------------------------------------------


@pytest.mark.slow
def test_parallel_baselines_record_what_one_job_records(images, shared_run, tmp_path, caplog):
    # The shared run trained its baseline in this process, one network after the other.
    ref = ResultStore(shared_run)
    ref_recs = {r["fold"]: r for r in ref.current_records() if r["kind"] == "baseline"}
    out, root = tmp_path / "run", tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="workbench"):
        df = run_baselines(images, [TINY_BASELINE], out, protocol=P2, val_fraction=0.0, root=root, device="cpu",
                           progress=False, execution=Execution(n_jobs=2))
    assert "2 repeats x 3 folds + test = 7 networks per baseline x 1 baseline(s) = 7 fine-tunes; 0 already" \
        in caplog.text
    assert "on 2 loky workers" in caplog.text
    store = ResultStore(out)
    recs = {r["fold"]: r for r in store.current_records()}
    assert sorted(recs) == sorted(ref_recs) == sorted(CV_FOLDS + ["test"])
    for fold, r in recs.items():
        want = ref_recs[fold]
        assert r["candidate_id"] == want["candidate_id"] and r["weights_id"] == want["weights_id"]
        assert r["metrics"] == pytest.approx(want["metrics"], abs=1e-6, nan_ok=True), fold
        p, q = store.predictions(r), ref.predictions(want)
        assert p["ids"].tolist() == q["ids"].tolist()
        np.testing.assert_allclose(p["proba"], q["proba"], atol=1e-6)
    assert len(df) == 7
    # A rerun (after a kill, say) trains and records nothing more.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workbench"):
        again = run_baselines(images, [TINY_BASELINE], out, protocol=P2, val_fraction=0.0, root=root,
                              device="cpu", progress=False, execution=Execution(n_jobs=2))
    assert "7 already in the store" in caplog.text and len(again) == 7
    assert len(store.records()) == 7
    # Killed mid-run: the records of finished units are there; the rest are trained.
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    lines = (partial / "records.jsonl").read_text().splitlines(keepends=True)
    (partial / "records.jsonl").write_text("".join(lines[:3]))
    redone = run_baselines(images, [TINY_BASELINE], partial, protocol=P2, val_fraction=0.0, root=root,
                           device="cpu", progress=False, execution=Execution(n_jobs=2))
    assert sorted(redone["fold"]) == sorted(CV_FOLDS + ["test"]) and len(ResultStore(partial).records()) == 7


# ---- the setting: --repeats and [protocol] repeats ------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, "3", True, 2.0])
def test_bad_repeats_are_refused(bad):
    with pytest.raises(ConfigError, match=r"repeats = .*expected an integer >= 1"):
        Protocol(repeats=bad)


def test_repeats_on_the_command_line():
    from workbench.cli.app import parse_args
    from workbench.cli.objects import protocol_of

    base = ["sweep", "--manifest", "m.csv", "--features", "resnet18", "--out", "r"]
    assert protocol_of(parse_args(base)).repeats == 1
    assert protocol_of(parse_args([*base, "--repeats", "3", "--cv", "4"])) == Protocol(cv=4, repeats=3)
    for cmd in (["baselines"], ["finetune", "--manifest", "m", "--backbone", "resnet18", "--nested"]):
        assert protocol_of(parse_args([*cmd, "--repeats", "2"])).repeats == 2
    with pytest.raises(ConfigError, match="repeats = 0"):
        protocol_of(parse_args([*base, "--repeats", "0"]))
    with pytest.raises(SystemExit):
        parse_args([*base, "--repeats", "two"])


@pytest.mark.parametrize("value, ok", [("3", True), ("0", False), ("-1", False), ('"3"', False),
                                       ("true", False), ("2.5", False)])
def test_repeats_in_an_experiment_config(tmp_path, value, ok):
    from workbench.experiment import ExperimentConfig

    text = ('name = "t"\nmanifest = "labels.csv"\n[protocol]\ncv = 4\nrepeats = ' + value
            + '\n[features]\nspecs = ["tf_efficientnet_lite0:avgpool"]\n')
    path = tmp_path / "exp.toml"
    path.write_text(text)
    if ok:
        assert ExperimentConfig.load(path).protocol == Protocol(cv=4, repeats=3)
    else:
        with pytest.raises(ConfigError, match=f"protocol.repeats = {value}"):
            ExperimentConfig.load(path)

"""External test sets: scored once by the frozen models, beside the internal test split.

Synthetic features (``_sweepdata``) for the sweep, tiny random PNGs and a random tiny
timm backbone for the baselines, so every test runs in seconds on a CPU.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _sweepdata import FAST, make_task, sweep_args
from conftest import write_png
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from workbench.data.manifest import Manifest
from workbench.evaluation.protocol import ExternalSetError, Protocol, build_task
from workbench.evaluation.store import ResultStore
from workbench.features.featureset import FeatureSet
from workbench.search.select import search
from workbench.search.sweep import SweepInputError, sweep

CLASSES = ["benign", "malignant"]
N_MAIN, N_EXT = 60, 24


def _task(n_main: int = N_MAIN, n_ext: int = N_EXT, classes=CLASSES, seed: int = 0):
    """The manifest, one external set from elsewhere (ids ``img060``..) and features of both."""
    # Every len(classes)+1-th image in the test split: every class has test images.
    every, fs = make_task(n_main + n_ext, seed=seed, classes=tuple(classes), test_every=len(classes) + 1)
    main = every.subset(every.ids[:n_main])
    ext = Manifest(list(every)[n_main:], source=Path("/site2/labels.csv"), classes=list(classes))
    return main, ext, fs


def _relabel(m: Manifest, k: int) -> Manifest:
    """``m`` with the first ``k`` labels swapped (another version of the set)."""
    items = [dataclasses.replace(it, label=CLASSES[1 - CLASSES.index(it.label)]) if i < k else it
             for i, it in enumerate(m)]
    return Manifest(items, source=m.source, classes=m.classes)


#: Cheap: two heads with one grid point, each block alone, and their vote ensembles.
LIGHT = {**FAST, "heads": ["svm-rbf", "logreg"], "subsets": "single",
         "grids": {"svm-rbf": {"C": [1.0], "gamma_factor": [1.0]}, "logreg": {}}}
KW = sweep_args(**LIGHT)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The same sweep without and with the external set ``site2``."""
    root = tmp_path_factory.mktemp("ext")
    main, ext, fs = _task()
    plain = sweep(main, fs, out=root / "plain", **KW)
    with_ext = sweep(main, fs, out=root / "ext", external={"site2": ext}, **KW)
    return root, main, ext, fs, plain, with_ext


# ---- the task ---------------------------------------------------------------------


def test_external_rows_follow_the_manifest_and_leave_the_protocol_alone():
    main, ext, _ = _task()
    plain = build_task(main, Protocol(cv=3))
    task = build_task(main, Protocol(cv=3), {"site2": ext})
    assert task.protocol == plain.protocol and task.protocol_hash == plain.protocol_hash
    assert task.ids == main.ids + ext.ids and task.n_internal == N_MAIN
    assert [f for f, _, _ in task.outer] == ["0", "1", "2", "test", "ext-site2"]
    for (f, tr, ev), (g, tr0, ev0) in zip(task.outer, plain.outer):  # CV and test rows unchanged
        assert f == g and np.array_equal(tr, tr0) and np.array_equal(ev, ev0)
    _, tr, ev = task.outer[-1]
    assert np.array_equal(tr, task.train_rows["test"])  # trained as for the test split
    assert np.array_equal(ev, np.arange(N_MAIN, N_MAIN + N_EXT))
    assert list(task.y[ev]) == [CLASSES.index(lab) for lab in ext.labels]
    assert task.external["site2"].held_out is False


def test_bad_external_sets_are_refused_by_name():
    main, ext, _ = _task()
    with pytest.raises(ExternalSetError, match="'bad-name'"):
        build_task(main, Protocol(cv=3), {"bad-name": ext})
    clash = Manifest([dataclasses.replace(list(ext)[0], id=main.ids[5])], source=ext.source, classes=CLASSES)
    with pytest.raises(ExternalSetError, match=rf"'{main.ids[5]}' already used by the manifest"):
        build_task(main, Protocol(cv=3), {"site2": clash})
    with pytest.raises(ExternalSetError, match="already used by external set 'a'"):
        build_task(main, Protocol(cv=3), {"a": ext, "b": ext})
    other = Manifest([dataclasses.replace(it, label="normal") if i == 2 else it for i, it in enumerate(ext)],
                     source=ext.source, classes=[*CLASSES, "normal"])
    with pytest.raises(ExternalSetError, match=r"outside the task's classes.*'img062' \(normal\)"):
        build_task(main, Protocol(cv=3), {"site2": other})
    with pytest.raises(ExternalSetError, match="holds no images"):
        build_task(main, Protocol(cv=3), {"site2": ext.subset([])})


def _images(root: Path, n: int, prefix: str, seed0: int, test_every: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        path = write_png(root / "images" / f"{prefix}{i}.png", seed=seed0 + i)
        rows.append({"id": f"{prefix}{i}", "path": str(path), "label": CLASSES[i % 2],
                     "split": "test" if i % test_every == 0 else "train"})
    return rows


def test_a_leaked_image_is_refused_naming_both_ids(tmp_path):
    main_rows = _images(tmp_path, 20, "m", 0)
    ext_rows = _images(tmp_path, 6, "e", 100)
    pd.DataFrame(main_rows).to_csv(tmp_path / "main.csv", index=False)
    for leaked, split in (("m3", "training"), ("m5", "test")):  # m5: i % 5 == 0, the test split
        copy = tmp_path / "images" / f"copy_of_{leaked}.png"
        copy.write_bytes(Path(next(r["path"] for r in main_rows if r["id"] == leaked)).read_bytes())
        rows = ext_rows + [{"id": "e_copy", "path": str(copy), "label": "benign", "split": "train"}]
        pd.DataFrame(rows).to_csv(tmp_path / "ext.csv", index=False)
        with pytest.raises(ExternalSetError, match=rf"'e_copy' is '{leaked}' \({split} split\)"):
            build_task(Manifest.load(tmp_path / "main.csv"), Protocol(cv=2),
                       {"site2": Manifest.load(tmp_path / "ext.csv")})
        # The sweep refuses it before the run folder exists.
        ids = [r["id"] for r in main_rows + rows]
        fs = FeatureSet(ids, [r["label"] for r in main_rows + rows],
                        {"a:x": np.random.default_rng(0).normal(size=(len(ids), 4))}, {})
        with pytest.raises(ExternalSetError, match="e_copy"):
            sweep(tmp_path / "main.csv", fs, out=tmp_path / "run", external={"site2": tmp_path / "ext.csv"},
                  **sweep_args(**{**LIGHT, "cv": 2, "inner_cv": 2}))
        assert not (tmp_path / "run").exists()


# ---- the sweep --------------------------------------------------------------------


def test_cv_and_test_records_are_the_same_with_an_external_set(swept):
    root, _, _, _, plain, with_ext = swept
    assert (root / "plain" / "run.json").read_bytes() == (root / "ext" / "run.json").read_bytes()
    assert (root / "plain" / "splits.csv").read_bytes() == (root / "ext" / "splits.csv").read_bytes()
    inner = with_ext[with_ext["fold"] != "ext-site2"]
    assert sorted(inner["key"]) == sorted(plain["key"])  # same candidate ids, same folds
    a, b = ResultStore(root / "plain"), ResultStore(root / "ext")
    recs_b = {r["key"]: r for r in b.records()}
    for r in a.records():
        pa, pb = a.predictions(r), b.predictions(recs_b[r["key"]])
        np.testing.assert_array_equal(pa["proba"], pb["proba"])
        np.testing.assert_array_equal(pa["ids"], pb["ids"])


def test_every_candidate_has_an_external_record_carrying_the_set_digest(swept):
    root, _, ext, _, _, with_ext = swept
    ext_rows = with_ext[with_ext["fold"] == "ext-site2"]
    assert set(ext_rows["candidate_id"]) == set(with_ext["candidate_id"])
    assert set(ext_rows["kind"]) >= {"head", "vote-soft", "vote-hard"}
    known = json.loads((root / "ext" / "external.json").read_text())["site2"]
    assert known["n_images"] == N_EXT and known["held_out"] is False
    assert set(ext_rows["external_digest"]) == {known["digest"]} and (ext_rows["n_eval"] == N_EXT).all()
    listed = pd.read_csv(root / "ext" / "external.csv", dtype=str, keep_default_na=False)
    assert list(listed["id"]) == ext.ids and set(listed["fold"]) == {"ext-site2"}
    # A head's external predictions come from the model fitted for the test split: the
    # same fit (same rows, same seed), so its chosen parameters are the test fit's.
    head = with_ext[with_ext["kind"] == "head"]
    for cid, g in head.groupby("candidate_id"):
        by = g.set_index("fold")["best_params"]
        assert by["ext-site2"] == by["test"]


def test_adding_a_set_later_computes_only_its_records_and_a_rerun_nothing(swept, tmp_path):
    root, main, ext, fs, plain, _ = swept
    out = tmp_path / "run"
    shutil.copytree(root / "plain", out)  # a finished run without the set
    before = (out / "records.jsonl").read_bytes()
    sweep(main, fs, out=out, external={"site2": ext}, **KW)
    after = (out / "records.jsonl").read_bytes()
    assert after.startswith(before)  # the old lines untouched
    new = [json.loads(line) for line in after[len(before):].splitlines()]
    assert len(new) == plain["candidate_id"].nunique() and {r["fold"] for r in new} == {"ext-site2"}
    sweep(main, fs, out=out, external={"site2": ext}, **KW)
    assert (out / "records.jsonl").read_bytes() == after


def test_a_changed_set_under_the_same_name_is_refused(swept, tmp_path):
    root, main, ext, fs, _, _ = swept
    task = build_task(main, Protocol(cv=3, inner_cv=3), {"site2": _relabel(ext, 1)})
    with pytest.raises(ExternalSetError, match=r"changed since their records were made.*'site2'"):
        task.open_store(root / "ext")
    # Under a name of its own it is another set, added beside the first.
    build_task(main, Protocol(cv=3, inner_cv=3), {"site2_v2": _relabel(ext, 1)}).open_store(tmp_path / "copy")


def test_a_network_that_saw_an_external_image_is_refused(monkeypatch):
    from workbench.features.featureset import BlockInfo
    from workbench.search import plan as plan_mod

    main, ext, _ = _task()
    task = build_task(main, Protocol(cv=3), {"site2": ext})
    train = [task.ids[i] for i in task.train_rows["test"]]
    seen = {"ft-clean": train, "ft-leaky": train + [ext.ids[0]]}
    monkeypatch.setattr(plan_mod, "_seen_ids", lambda backbone, weights_id: seen[weights_id])
    info = lambda w: BlockInfo("b:x", "b", w, "", False, "x", 4, "k")  # noqa: E731
    n = len(task.ids)
    for w in seen:  # one network on the whole training split: CV optimistic, the rest as given
        fs = FeatureSet(task.ids, [""] * n, {"b:x": np.zeros((n, 4))}, {"b:x": info(w)})
        if w == "ft-clean":
            assert plan_mod.optimistic_folds(fs, ["b:x"], task) == {"b:x": {"0", "1", "2"}}
        else:
            with pytest.raises(SweepInputError, match="external set ext-site2"):
                plan_mod.optimistic_folds(fs, ["b:x"], task)
    # A nested set: external sets get the test member's features, so its images decide.
    for w, ok in (("ft-clean", True), ("ft-leaky", False)):
        fs = FeatureSet(task.ids, [""] * n, {"b:x": np.zeros((n, 4))}, {"b:x": info("ftn-set")},
                        fold_info={"b:x": {"test": info(w)}})
        if ok:
            assert "ext-site2" not in plan_mod.optimistic_folds(fs, ["b:x"], task)["b:x"]
        else:
            with pytest.raises(SweepInputError, match="external set ext-site2"):
                plan_mod.optimistic_folds(fs, ["b:x"], task)


# ---- the search -------------------------------------------------------------------


def test_external_figures_use_the_frozen_test_threshold(swept, tmp_path):
    root, main, ext, fs, _, _ = swept
    result = search(root / "ext")
    frame = result.external["site2"]
    comp = result.comparison[result.comparison["role"] != "best on test (optimistic)"]
    assert list(frame["candidate"]) == list(comp["candidate"])
    np.testing.assert_array_equal(frame["threshold"], comp["threshold"])
    np.testing.assert_array_equal(frame["test_auc"], comp["auc"])
    store = ResultStore(root / "ext")
    recs = {(r["candidate"], r["fold"]): r for r in store.records()}
    for _, row in frame.iterrows():  # against scikit-learn and hand counts on the stored predictions
        p = store.predictions(recs[(row["candidate"], "ext-site2")])
        y, s = p["y_true"] == 1, p["proba"][:, 1]
        call = s >= row["threshold"]
        assert row["auc"] == pytest.approx(roc_auc_score(y, s))
        assert row["sensitivity"] == pytest.approx(call[y].mean())
        assert row["specificity"] == pytest.approx((~call[~y]).mean())
        assert row["delta_auc"] == pytest.approx(row["auc"] - row["test_auc"])
    assert frame.attrs["n_images"] == N_EXT and frame.attrs["held_out"] is False
    # Other labels for the external images (a set of its own): not one threshold moves.
    other = tmp_path / "relabelled"
    shutil.copytree(root / "plain", other)  # only the set's records are computed
    sweep(main, fs, out=other, external={"site2": _relabel(ext, N_EXT // 2)}, **KW)
    moved = search(other).external["site2"]
    np.testing.assert_array_equal(moved["threshold"], frame["threshold"])
    assert not np.allclose(moved["auc"], frame["auc"])


def test_a_damaged_external_json_is_named_by_the_search(swept, tmp_path):
    import shutil

    from workbench.evaluation.protocol import ExternalSetError

    root = swept[0]
    run = tmp_path / "run"
    shutil.copytree(root / "ext", run)
    (run / "external.json").write_text("{not json")
    with pytest.raises(ExternalSetError, match=r"external\.json is not valid JSON"):
        search(run)


def test_multi_class_external_sets_report_accuracy_and_macro_auc(tmp_path):
    classes = ["benign", "malignant", "normal"]
    main, ext, fs = _task(classes=classes)
    sweep(main, fs, out=tmp_path / "run", external={"site2": ext},
          **sweep_args(**{**LIGHT, "heads": ["logreg"], "grids": {"logreg": {}}, "ensembles": False}))
    frame = search(tmp_path / "run").external["site2"]
    store = ResultStore(tmp_path / "run")
    recs = {(r["candidate"], r["fold"]): r for r in store.records()}
    row = frame.iloc[0]
    p = store.predictions(recs[(row["candidate"], "ext-site2")])
    assert row["accuracy"] == pytest.approx((p["proba"].argmax(axis=1) == p["y_true"]).mean())
    assert row["auc"] == pytest.approx(roc_auc_score(p["y_true"], p["proba"], multi_class="ovr"))
    assert "sensitivity" not in frame.columns


# ---- baselines --------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """40 tiny PNGs (every 5th in the test split) and 16 of another 'site'."""
    root = tmp_path_factory.mktemp("img")
    main = _images(root, 40, "m", 0)
    ext = _images(root, 16, "e", 1000)
    pd.DataFrame(main).to_csv(root / "main.csv", index=False)
    pd.DataFrame(ext).to_csv(root / "ext.csv", index=False)
    return root


def _tiny_baseline():
    from workbench.baselines.configs import BaselineSpec
    from workbench.training.config import FineTuneConfig

    return BaselineSpec("tiny", "timm/test_efficientnet", FineTuneConfig(epochs=1, batch_size=8, image_size=32,
                                                                         optimizer="adam", lr=1e-3, patience=0),
                        weights="random")


def test_baselines_score_external_sets_with_the_test_network_untrained(images, tmp_path, monkeypatch):
    import workbench.training.finetune as finetune
    from workbench.baselines.run import run_baselines

    trained = []
    real = finetune._train
    monkeypatch.setattr(finetune, "_train", lambda plan, *a, **k: (trained.append(plan.label), real(plan, *a, **k)))
    kw = dict(protocol=Protocol(cv=2, inner_cv=2), root=tmp_path / "ft", device="cpu", progress=False)
    spec = _tiny_baseline()
    first = run_baselines(images / "main.csv", [spec], tmp_path / "run", **kw)
    assert sorted(first["fold"]) == ["0", "1", "test"] and len(trained) == 3
    both = run_baselines(images / "main.csv", [spec], tmp_path / "run", external={"site2": images / "ext.csv"}, **kw)
    assert len(trained) == 3  # the test network came from the store: nothing was trained for the set
    by = both.set_index("fold")
    assert by.loc["ext-site2", "weights_id"] == by.loc["test", "weights_id"]
    assert by.loc["ext-site2", "n_eval"] == 16 and by.loc["ext-site2", "n_train"] == by.loc["test", "n_train"]
    # The search scores the baseline on the set at the threshold it uses on the test split.
    ids = [f"m{i}" for i in range(40)] + [f"e{i}" for i in range(16)]
    y = np.array([i % 2 for i in range(40)] + [i % 2 for i in range(16)])
    fs = FeatureSet(ids, [CLASSES[v] for v in y], {"a:x": np.random.default_rng(0).normal(size=(56, 6)) + y[:, None]},
                    {})
    sweep(images / "main.csv", fs, out=tmp_path / "run", external={"site2": images / "ext.csv"},
          **sweep_args(**{**LIGHT, "cv": 2, "inner_cv": 2, "ensembles": False}))
    result = search(tmp_path / "run")
    frame = result.external["site2"].set_index("role")
    assert frame.loc["baseline", "candidate"] == "CNN tiny"
    assert frame.loc["baseline", "threshold"] == result.comparison.set_index("role").loc["baseline", "threshold"]


def _delong_p(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> float:
    """DeLong's paired test from its structural components (DeLong et al. 1988), by hand."""
    from scipy.stats import norm

    def components(p):
        psi = (p[y][:, None] > p[~y][None, :]) + 0.5 * (p[y][:, None] == p[~y][None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    (a1, x1, y1), (a2, x2, y2) = components(p1), components(p2)
    s = np.cov(np.vstack([x1, x2])) / y.sum() + np.cov(np.vstack([y1, y2])) / (~y).sum()
    return float(2 * norm.sf(abs(a1 - a2) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])))


def test_paired_tests_against_the_best_baseline_on_the_external_images(swept, tmp_path):
    root, main, ext, _, _, _ = swept
    out = tmp_path / "run"
    shutil.copytree(root / "ext", out)
    # A baseline's records written as run_baselines writes them: imperfect scores on every fold.
    task = build_task(main, Protocol(cv=3, inner_cv=3), {"site2": ext})
    store = ResultStore(out)
    rng = np.random.default_rng(1)
    fields = {"head": "fake", "heads": [], "blocks": [], "codes": [], "size": 0, "baseline": "fake"}

    def proba(rows):
        p = 1 / (1 + np.exp(-(2.0 * task.y[rows] - 1 + rng.normal(0, 1.2, len(rows)))))
        return np.column_stack([1 - p, p])

    for f, tr, ev in task.outer:
        pr = proba(ev)
        rec, preds = task.record(candidate_id="fakebaseline0000", candidate="CNN fake", kind="baseline", fold=f,
                                 proba=pr, pred=pr.argmax(axis=1), fields=fields, versions={})
        if f == "test":  # the network's own validation split sets its threshold
            val = tr[:12]
            preds.update(val_ids=np.array([task.ids[i] for i in val]), val_y=task.y[val], val_proba=proba(val))
        store.append(rec, preds)
    result = search(out)
    assert result.best_baseline == "CNN fake"
    frame = result.external["site2"]
    recs = {(r["candidate"], r["fold"]): r for r in store.records()}
    base = frame[frame["role"] == "baseline"].iloc[0]
    pb = store.predictions(recs[("CNN fake", "ext-site2")])
    checked = 0
    for _, row in frame[frame["role"].isin(["selected", "top-k"])].iterrows():
        ps = store.predictions(recs[(row["candidate"], "ext-site2")])
        y = ps["y_true"] == 1
        right_s = (ps["proba"][:, 1] >= row["threshold"]) == y
        right_b = (pb["proba"][:, 1] >= base["threshold"]) == y
        b, c = int((right_s & ~right_b).sum()), int((~right_s & right_b).sum())
        assert row["p_accuracy"] == pytest.approx(1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue)
        assert row["p_auc"] == pytest.approx(_delong_p(y, ps["proba"][:, 1], pb["proba"][:, 1]), rel=1e-6)
        checked += 1
    assert checked == 3 and frame["p_auc_holm"].notna().sum() == 3 and np.isnan(base["p_auc"])


# ---- the report table -------------------------------------------------------------


def test_external_table_columns_and_the_stated_drop(swept):
    from workbench.report.tables import external_table, to_markdown

    root = swept[0]
    result = search(root / "ext")
    table = external_table(result)
    assert table.columns == ["Model", "Role", "Test AUC", "Test sensitivity", "Test specificity", "site2 AUC",
                             "site2 sensitivity", "site2 specificity", "site2 ΔAUC", "site2 p AUC"]
    assert len(table.rows) == (result.comparison["role"] != "best on test (optimistic)").sum()
    sel = result.external["site2"].iloc[0]
    text = to_markdown(table)
    assert f"{sel['candidate']}, has AUC {sel['test_auc']:.3f} on the internal test split and {sel['auc']:.3f}" in text
    assert "24 images (12 benign, 12 malignant)" in text
    held = dataclasses.replace(result, external={"site2": result.external["site2"].copy()})
    held.external["site2"].attrs.update(result.external["site2"].attrs, held_out=True)
    assert "not a different site or scanner" in to_markdown(external_table(held))
    with pytest.raises(ValueError, match="no external test set"):
        external_table(dataclasses.replace(result, external={}))


# ---- the experiment config --------------------------------------------------------


def _config(tmp_path: Path, test_section: str) -> Path:
    cfg = tmp_path / "exp.toml"
    cfg.write_text(textwrap.dedent("""
        name = "x"
        manifest = "main.csv"
        classes = ["benign", "malignant"]
        out = "run"
        [features]
        specs = ["tf_efficientnet_lite0:avgpool"]
        [test]
        """) + test_section + "\n")
    return cfg


@pytest.mark.parametrize("section, key, message", [
    ('external = {"bad-name" = "ext.csv"}', "test.external", "'bad-name'"),
    ("external = {site2 = 3}", "test.external.site2", "expected \"manifest.csv\""),
    ('external = {site2 = {manifest = "ext.csv", idz = "x.txt"}}', "test.external.site2", "unknown key(s) idz"),
    ('external = {site2 = {ids = "x.txt"}}', "test.external.site2.manifest", "missing"),
    ('external = {site2 = {manifest = ""}}', "test.external.site2.manifest", "a path"),
    ('external = "ext.csv"', "test.external", "a table"),
    ('externals = {site2 = "ext.csv"}', "test.externals", "unknown key"),
])
def test_config_errors_name_the_key(tmp_path, section, key, message):
    from workbench.experiment import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError) as e:
        ExperimentConfig.load(_config(tmp_path, section))
    assert e.value.key == key and message in str(e.value)


def test_ids_of_the_main_manifest_are_held_out_of_the_run(images, tmp_path):
    from workbench.experiment import ConfigError, ExperimentConfig, validate_inputs

    src = pd.read_csv(images / "main.csv")
    src.to_csv(tmp_path / "main.csv", index=False)
    (tmp_path / "held.txt").write_text("# held out\nm1\nm2  # a comment\n\nm3\nm4\n")
    cfg = ExperimentConfig.load(_config(tmp_path, 'external = {held = {manifest = "main.csv", ids = "held.txt"}}'))
    manifest, _, external = validate_inputs(cfg, progress=False)
    assert set(manifest.ids) == set(src["id"]) - {"m1", "m2", "m3", "m4"}
    assert external["held"].ids == ["m1", "m2", "m3", "m4"]
    assert json.loads((tmp_path / "run" / "external.json").read_text())["held"]["held_out"] is True
    # Without holding them out the run would differ: its protocol says so by the task hash.
    assert json.loads((tmp_path / "run" / "run.json").read_text())["n_images"] == 36
    for section, problem in (('external = {held = {manifest = "main.csv", ids = "nope.txt"}}', "nope.txt"),
                             ('external = {held = "main.csv"}', "give ids"),
                             ('external = {held = {manifest = "main.csv", ids = "bad.txt"}}', "'zz9'")):
        (tmp_path / "bad.txt").write_text("m1\nzz9\n")
        cfg = ExperimentConfig.load(_config(tmp_path, section))
        with pytest.raises((ConfigError, FileNotFoundError), match=problem):
            validate_inputs(cfg, progress=False)


def test_a_leaked_held_out_image_is_refused_before_any_work(images, tmp_path):
    from workbench.experiment import ExperimentConfig, validate_inputs

    src = pd.read_csv(images / "main.csv")
    copy = src[src["id"] == "m7"].assign(id="m7_copy")  # the same file under a second id
    pd.concat([src, copy]).to_csv(tmp_path / "main.csv", index=False)
    (tmp_path / "held.txt").write_text("m7_copy\n")
    cfg = ExperimentConfig.load(_config(tmp_path, 'external = {held = {manifest = "main.csv", ids = "held.txt"}}'))
    with pytest.raises(ExternalSetError, match=r"'m7_copy' is 'm7' \(training split\)"):
        validate_inputs(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_example_config_loads():
    from workbench.experiment import ExperimentConfig

    path = Path(__file__).resolve().parents[1] / "experiments" / "busi_external_heldout.toml"
    cfg = ExperimentConfig.load(path)
    spec = cfg.test.external["heldout"]
    assert spec.manifest == cfg.manifest and spec.ids is not None and spec.ids.is_file()
    ids = [line for line in spec.ids.read_text().splitlines() if line and not line.startswith("#")]
    assert len(ids) == len(set(ids)) == 105
    assert "NOT a different site" in path.read_text()


def test_cli_external_option():
    from workbench.cli.values import parse_external
    from workbench.errors import ConfigError

    assert parse_external(["site2=b.csv", "s3 = c.csv"]) == {"site2": "b.csv", "s3": "c.csv"}
    for bad in (["site2"], ["=b.csv"], ["a=x.csv", "a=y.csv"]):
        with pytest.raises(ConfigError, match="--external"):
            parse_external(bad)

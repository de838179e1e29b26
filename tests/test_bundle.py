"""Model bundles on a real BUSI run: exactness per kind, export/predict commands, refusals.

The session fixture ``bundle_run`` (tests/_bundles.py) runs a small experiment with real
EfficientNet-Lite0 weights and exports one bundle of every kind.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from _bundles import KINDS
from workbench.bundle.files import BundleError, sha256_file
from workbench.bundle.model import load_model
from workbench.bundle.source import RunSource, RunSourceError
from workbench.cli import main
from workbench.search.select import UnknownCandidateError

pytestmark = pytest.mark.slow


def _test_split(bundle_run, name):
    src = RunSource(bundle_run.run, progress=False)
    pr = src.store.predictions(src.record(name))
    man = src.task.manifest
    paths = [man[man.ids.index(i)].path for i in pr["ids"]]
    return paths, pr


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_bundle_predicts_the_runs_test_split_with_the_recorded_probabilities(bundle_run, kind):
    model = load_model(bundle_run.bundles[kind])
    assert model.kind == kind and model.name == KINDS[kind]
    paths, rec = _test_split(bundle_run, model.name)
    proba = model.predict_proba(paths)
    diff = np.abs(proba - rec["proba"]).max()
    print(f"\n{kind}: {len(paths)} test images, max |p - recorded p| = {diff:.2e}")
    assert diff <= 1e-6
    # The same calls at the bundle's threshold, which is the report's.
    assert np.array_equal(model.decide(proba), model.decide(rec["proba"]))
    assert np.array_equal(model.predict(paths), model.decide(proba))
    # The threshold is the report's (its comparison table shows the selected ones and the baselines).
    table = pd.read_csv(bundle_run.run / "report" / "tables" / "comparison.csv")
    names = table["Model"].str.rstrip("‡†* ")
    if model.name in set(names):
        assert abs(table.loc[names == model.name, "Threshold"].iloc[0] - model.threshold) < 1e-9


def test_images_as_paths_pil_arrays_and_tensors_give_the_same_probabilities(bundle_run):
    model = load_model(bundle_run.bundles["head"])
    paths, _ = _test_split(bundle_run, model.name)
    p = paths[0]
    ref = model.predict_proba([p])
    pil = Image.open(p)
    assert np.allclose(model.predict_proba(pil), ref, atol=1e-7)
    assert np.allclose(model.predict_proba(np.asarray(pil)), ref, atol=1e-7)
    from workbench.data.images import decode_image

    assert np.allclose(model.predict_proba([decode_image(p)]), ref, atol=1e-7)
    assert model.predict_proba(torch.zeros(1, 64, 64)).shape == (1, 2)


def test_the_model_card_carries_the_reports_figures(bundle_run):
    spec = json.loads((bundle_run.bundles["vote-soft"] / "model.json").read_text())
    card = spec["card"]
    assert card["intended_use"].startswith("Research use only")
    assert spec["default_threshold"] == 0.5 and spec["threshold"] == card["threshold"]
    t = card["figures"]["test"]
    assert 0.5 <= t["auc"] <= 1 and t["auc_ci"][0] <= t["auc"] <= t["auc_ci"][1]
    assert set(card["training_data"]["train_counts"]) == {"benign", "malignant"}
    report = (bundle_run.run / "report" / "report.md").read_text()
    text = (bundle_run.bundles["vote-soft"] / "MODEL_CARD.md").read_text()
    # The fixture's one-epoch CNN is degenerate: the card says what the report says.
    if "every baseline is degenerate" in report:
        assert card["baseline"] is None and "every baseline is degenerate" in text
    else:
        assert card["baseline"]["name"] == "CNN lite0" and "Against the best end-to-end baseline" in text
    for needle in ("Research use only", "Test AUC", "Limitations", "Operating threshold"):
        assert needle in text
    ranking = pd.read_csv(bundle_run.run / "report" / "ranking.csv")
    row = ranking[ranking["candidate"] == spec["name"]].iloc[0]
    assert abs(row["cv_auc"] - card["figures"]["cv"]["auc"]) < 1e-6


def test_export_and_predict_commands(bundle_run, tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(["export", str(bundle_run.run), "--out", str(out), "--above", "FNA recommended",
                 "--below", "no FNA", "--quiet"]) == 0
    assert "exported" in capsys.readouterr().out
    model = load_model(out)
    preds = tmp_path / "p.csv"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rows = pd.read_csv(bundle_run.csv)
    imgs = list(rows["path"][:3])
    assert main(["predict", "--model", str(out), *imgs, str(bad), "--out", str(preds), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "1 image(s) not predicted" in err and "bad.png: not an image file" in err
    table = pd.read_csv(preds)
    assert list(table["path"]) == imgs
    want = model.predict_proba(imgs)[:, model.positive_index]
    assert np.allclose(table[f"p_{model.positive}"], want, atol=1e-6)
    assert set(table["recommendation"]) <= {"FNA recommended", "no FNA"}
    # A manifest, with the run's cache: every row read, none computed; labels kept.
    if model.featurizer is not None:
        assert main(["predict", "--model", str(out), "--manifest", str(bundle_run.csv), "--cache",
                     str(bundle_run.cache), "--out", str(preds), "--quiet"]) == 0
        assert f"{len(rows)} from the cache, 0 computed" in capsys.readouterr().err
        table = pd.read_csv(preds)
        assert list(table["label"]) == list(rows["label"])
    # Nothing to predict: exit 2, said why.
    assert main(["predict", "--model", str(out), str(bad), "--quiet"]) == 2
    assert main(["predict", "--model", str(out), "--quiet"]) == 2
    assert "give image files or --manifest" in capsys.readouterr().err


def test_export_refuses_unknown_candidates_and_an_existing_folder(bundle_run, tmp_path, capsys):
    from workbench.bundle.export import export_model

    with pytest.raises(UnknownCandidateError, match=r"did you mean '\[L\] svm-rbf'"):
        export_model(bundle_run.run, tmp_path / "x", candidate="[L] svm-rbff", progress=False)
    with pytest.raises(RunSourceError, match="selects 2 candidate"):
        export_model(bundle_run.run, tmp_path / "x", candidate="top-3", progress=False)
    assert main(["export", str(bundle_run.run), "--out", str(bundle_run.bundles["head"]), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_manifest_that_is_not_the_runs(bundle_run, tmp_path):
    from workbench.bundle.export import export_model

    df = pd.read_csv(bundle_run.csv)
    df.loc[0, "label"] = "malignant" if df.loc[0, "label"] == "benign" else "benign"
    changed = tmp_path / "changed.csv"
    df.to_csv(changed, index=False)
    with pytest.raises(RunSourceError, match="another task than the run's"):
        export_model(bundle_run.run, tmp_path / "x", candidate="[L] svm-rbf", manifest=changed, progress=False)


def _copy(bundle_run, kind, tmp_path):
    dest = tmp_path / kind
    shutil.copytree(bundle_run.bundles[kind], dest)
    return dest


def _relist(root, rel):
    index = json.loads((root / "bundle.json").read_text())
    index["files"][rel] = sha256_file(root / rel)
    (root / "bundle.json").write_text(json.dumps(index))


def test_a_tampered_bundle_is_refused_naming_the_file(bundle_run, tmp_path):
    root = _copy(bundle_run, "vote-soft", tmp_path)
    spec = json.loads((root / "model.json").read_text())
    spec["threshold"] = 0.01  # a quieter threshold, say
    (root / "model.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match=r"model\.json: does not match the SHA-256"):
        load_model(root)


def test_a_bundle_holding_a_pickled_object_is_refused(bundle_run, tmp_path):
    import pickle

    root = _copy(bundle_run, "head", tmp_path)
    (root / "heads" / "0.skops").write_bytes(pickle.dumps({"anything": 1}))
    _relist(root, "heads/0.skops")  # even with its digest listed
    with pytest.raises(BundleError, match="not a skops file"):
        load_model(root)


def test_fine_tuned_weights_holding_a_pickled_object_are_refused(bundle_run, tmp_path):
    from workbench.errors import WorkbenchError

    root = _copy(bundle_run, "baseline", tmp_path)
    weights = next(root.glob("weights/*/*/weights.pth"))
    torch.save({"state": Image.new("L", (2, 2))}, weights)  # a pickled PIL object
    _relist(root, weights.relative_to(root).as_posix())
    with pytest.raises(WorkbenchError, match="weights.pth"):
        load_model(root)


def test_bundles_of_a_repeated_cv_run_predict_its_test_split_exactly(tmp_path):
    """Under 2 x 3-fold CV the refits (inner folds, the stack's meta-learner on every
    repeat's out-of-fold predictions, the members' thresholds) are the sweep's own."""
    from _bundles import config_text, slice_csv
    from workbench.bundle.export import export_model
    from workbench.experiment import run_experiment

    csv = slice_csv(tmp_path, {"train": 24, "test": 12})
    cfg = tmp_path / "exp.toml"
    cfg.write_text(config_text(csv, name="repeats", baselines=False, repeats=2))
    run_experiment(cfg, progress=False)
    run = tmp_path / "run"
    assert RunSource(run, progress=False).task.protocol["repeats"] == 2
    for kind in ("stack", "vote-hard"):
        model = load_model(export_model(run, tmp_path / kind, candidate=KINDS[kind], progress=False))
        src = RunSource(run, progress=False)
        rec = src.store.predictions(src.record(model.name))
        man = src.task.manifest
        proba = model.predict_proba([man[man.ids.index(i)].path for i in rec["ids"]])
        assert np.abs(proba - rec["proba"]).max() <= 1e-6, kind
        assert np.array_equal(model.decide(proba), model.decide(rec["proba"]))
        assert model.describe()["card"]["figures"]["cv"]["folds"] == 6

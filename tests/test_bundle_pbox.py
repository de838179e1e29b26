"""Bundles of feature candidates on a Y-Net's predicted boxes (issue 15, items 5 + 6).

A tiny run on a BUSI slice: a one-epoch 64-px Y-Net fine-tuned on the training split,
features of a tiny random backbone on the boxes it predicts (``--input box --boxes
predicted:ft-...``), a sweep of two heads and their votes, and the selected candidate
exported (~30 s on 2 CPU cores). The bundle must ship the Y-Net (checked by digest),
crop new images to the boxes it predicts (no manual box; one given is refused), give the
run's recorded test probabilities, and its API must answer without a box and return the
predicted box.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _bundles import BUSI, slice_csv
from _helpers import TINY
from workbench.bundle.files import BundleError, sha256_file

LITE = "tf_efficientnet_lite0"
CLASSES = ["benign", "malignant"]
PBOX = TINY + "#pbox"

pytestmark = pytest.mark.filterwarnings("ignore:the validation split holds fewer")


@pytest.fixture(scope="module")
def pbox_run(tmp_path_factory):
    """The run (Y-Net, features on its boxes, sweep) and the selected candidate's bundle."""
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    from workbench.bundle.export import export_model
    from workbench.data.manifest import Manifest
    from workbench.evaluation.settings import Protocol
    from workbench.features.options import ExtractOptions
    from workbench.search.options import SweepOptions
    from workbench.search.sweep import sweep
    from workbench.training.config import FineTuneConfig
    from workbench.training.finetune import fine_tune

    root = tmp_path_factory.mktemp("pbox_run")
    store, cache = root / "finetuned", root / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_FINETUNED", str(store))
    try:
        csv = slice_csv(root, {"train": 12, "test": 6})
        m = Manifest.load(csv).select_classes(CLASSES).validate(progress=False)
        train = [[it for it in m if it.split == "train" and it.label == c] for c in CLASSES]
        cfg = FineTuneConfig(model="ynet", epochs=1, batch_size=16, image_size=64, optimizer="adam", lr=1e-3,
                             patience=0, seed=0)
        ft = fine_tune(LITE, train[0][:10] + train[1][:10], train[0][10:] + train[1][10:], CLASSES, cfg,
                       root=store, progress=False)
        assert ft.is_ynet
        source = f"predicted:{ft.weights_id}"
        sweep(csv, [TINY], out=root / "run", protocol=Protocol(cv=2, inner_cv=2, positive="malignant"),
              options=SweepOptions(heads=("svm-rbf", "logreg"), grids={"svm-rbf": {"C": [1.0]},
                                                                       "logreg": {"C": [1.0]}}),
              classes=CLASSES, cache=cache, progress=False,
              extract_options=ExtractOptions(input="box", boxes=source, image_size=32, batch_size=8, num_workers=0,
                                             device="cpu"))
        bundle = export_model(root / "run", root / "bundle", candidate="selected", manifest=csv, cache=cache,
                              finetuned=store, progress=False)
    finally:
        mp.undo()
    return {"root": root, "csv": csv, "run": root / "run", "cache": cache, "store": store, "bundle": bundle,
            "ynet": ft.weights_id, "source": source}


@pytest.fixture(scope="module")
def pbox_model(pbox_run, tmp_path_factory):
    """The bundle, loaded with an empty fine-tuned store: the Y-Net must come from the bundle."""
    from workbench.bundle.model import load_model

    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_FINETUNED", str(tmp_path_factory.mktemp("empty_store")))
    try:
        yield load_model(pbox_run["bundle"])
    finally:
        mp.undo()


def _test_split(run):
    from workbench.bundle.source import RunSource

    src = RunSource(run["run"], run["csv"], run["cache"], run["store"], progress=False)
    name = json.loads((run["bundle"] / "model.json").read_text())["name"]
    rec = src.record(name)
    pr = src.store.predictions(rec)
    man = src.task.manifest
    return rec, pr, [man[man.ids.index(i)] for i in pr["ids"]]


def _run_boxes(run, items):
    """The boxes the run's extraction used (its box file, via the fine-tuned store)."""
    from workbench.features.predicted_boxes import BoxNet, predicted_boxes

    net = BoxNet.load(run["source"], root=run["store"])
    pb = predicted_boxes(items, net, cache_root=run["cache"], precision="fp32")
    assert pb.computed == 0  # all read from the run's box file
    return pb


@pytest.mark.slow
def test_the_bundle_ships_the_ynet_and_predicts_the_recorded_test_probabilities(pbox_run, pbox_model):
    model = pbox_model
    rec, pr, items = _test_split(pbox_run)
    assert rec["blocks"] == [PBOX] and model.kind == rec["kind"]
    assert model.input_mode == "box" and model.predicts_boxes
    src = model.box_source
    assert (src["backbone"], src["weights_id"]) == (LITE, pbox_run["ynet"])
    # The Y-Net's files are in the bundle, listed with the digests of the store's own files.
    store_dir = pbox_run["store"] / LITE / pbox_run["ynet"]
    index = json.loads((pbox_run["bundle"] / "bundle.json").read_text())["files"]
    shipped = {rel: d for rel, d in index.items() if rel.startswith(f"{src['folder']}/")}
    assert {Path(r).name for r in shipped} >= {"meta.json"} and len(shipped) >= 2
    for rel, digest in shipped.items():
        assert digest == sha256_file(store_dir / Path(rel).name)
    assert src["weights_digest"] == model.featurizer.box_net.weights.digest
    assert Path(model.featurizer.box_net.weights.path).is_relative_to(pbox_run["bundle"].resolve())
    # No box given: each image is cropped to the Y-Net's box, and the run's numbers come back.
    paths = [it.path for it in items]
    proba = model.predict_proba(paths)
    diff = float(np.abs(proba - pr["proba"]).max())
    print(f"\npredicted-box bundle ({model.name}): {len(paths)} test images, max |p - recorded p| = {diff:.2e}")
    assert diff <= 1e-6
    assert np.array_equal(model.decide(proba), model.decide(pr["proba"]))
    # Its boxes are those the run's extraction used (read from the run's box file).
    pb = _run_boxes(pbox_run, items)
    assert model.predicted_boxes(paths) == [pb.boxes[it.sha256] for it in items]
    found = [b for b in pb.boxes.values() if b is not None]
    assert len(set(found)) > 3 and any(b != it.box for b, it in zip(pb.boxed(items), items))  # real boxes
    card = (pbox_run["bundle"] / "MODEL_CARD.md").read_text()
    assert f"Lesion box: predicted by the bundled Y-Net {LITE}@{pbox_run['ynet']}" in card


@pytest.mark.slow
def test_export_reads_the_training_rows_under_the_predicted_boxes(pbox_run):
    from workbench.bundle.source import RunSource
    from workbench.features.cache import CacheEntry
    from workbench.features.extraction import row_key

    src = RunSource(pbox_run["run"], pbox_run["csv"], pbox_run["cache"], pbox_run["store"], progress=False)
    rec, _, _ = _test_split(pbox_run)
    block = src.block_def(PBOX, rec)
    assert block.boxes["weights_id"] == pbox_run["ynet"]
    X, y, _ = src.training_rows(block)
    task = src.task
    items = [task.manifest[i] for i in task.train_rows["test"]]
    entry = CacheEntry(pbox_run["cache"], rec["cache_keys"][PBOX])
    # By hand: the rows keyed by each image's predicted box...
    want = entry.read([row_key(it, "box") for it in _run_boxes(pbox_run, items).boxed(items)])
    np.testing.assert_array_equal(X, want)
    assert len(X) == len(items) and np.array_equal(y, task.y[task.train_rows["test"]])
    # ...not by the manifest's manual boxes, which the entry does not hold.
    with pytest.raises(KeyError, match="not cached"):
        entry.read([row_key(it, "box") for it in items])


@pytest.mark.slow
def test_manual_boxes_are_refused_by_a_bundle_that_predicts_its_own(pbox_run, pbox_model):
    _, _, items = _test_split(pbox_run)
    path, box = items[0].path, tuple(items[0].box)
    with pytest.raises(BundleError, match=r"selected on those boxes: do not give boxes"):
        pbox_model.predict_proba([path], boxes=[box])
    with pytest.raises(BundleError, match="do not give boxes"):
        pbox_model.explain(path, box=box)
    # Explained on the Y-Net's box: the probability is the prediction's.
    e = pbox_model.explain(path)
    assert np.allclose(e.proba, pbox_model.predict_proba([path])[0], atol=1e-7)
    w, h = Image.open(path).size
    assert e.heatmap.shape == (h, w) and e.method


@pytest.mark.slow
def test_workbench_predict_crops_to_the_predicted_boxes_and_finds_the_runs_cache_rows(pbox_run, pbox_model, caplog):
    import pandas as pd

    from workbench.bundle.predict import predict_files

    rec, pr, items = _test_split(pbox_run)
    test = pd.read_csv(pbox_run["csv"])
    test = test[test.id.isin([it.id for it in items])]
    csv = pbox_run["root"] / "test_only.csv"
    test.to_csv(csv, index=False)  # with the manual box columns: not used
    out = predict_files(pbox_model, manifest=csv, cache=pbox_run["cache"], progress=False)
    assert not out.bad and "the manifest's boxes are not used" in caplog.text
    # Every row is found in the run's cache: the keys are the extraction's (predicted boxes).
    assert (out.cached_rows, out.computed_rows) == (len(items), 0)
    table = out.table.set_index("id").loc[[it.id for it in items]]
    np.testing.assert_allclose(table[["p_benign", "p_malignant"]].to_numpy(), pr["proba"], atol=1e-6)
    boxed = _run_boxes(pbox_run, items).boxed(items)
    assert [tuple(r) for r in table[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy()] == [
        tuple(it.box) for it in boxed]


def _post(client, path: Path, **form):
    return client.post("/api/predict", files={"file": (path.name, path.read_bytes())}, data=form or None)


@pytest.mark.slow
def test_the_api_answers_without_a_box_and_returns_the_predicted_box(pbox_run, pbox_model):
    from workbench.serve import create_app

    _, pr, items = _test_split(pbox_run)
    client = TestClient(create_app(pbox_model))
    info = client.get("/api/model").json()
    assert info["input_mode"] == "box" and info["predicts_boxes"] is True
    assert info["box_source"]["weights_id"] == pbox_run["ynet"]
    boxes = _run_boxes(pbox_run, items)
    for it, p in zip(items[:3], pr["proba"][:3]):
        path = Path(it.path)
        r = _post(client, path, explain="false")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["proba"]["malignant"] == pytest.approx(float(p[1]), abs=1e-6)
        want = boxes.boxes[it.sha256]
        w, h = Image.open(path).size
        assert body["predicted_box"] == {"box": [0, 0, w, h] if want is None else list(want),
                                         "empty_mask": want is None, "ynet": f"{LITE}@{pbox_run['ynet']}"}
        assert body["segmentation"] is None  # not a Y-Net baseline: no contour
    # A box is refused, naming why; the explanation overlay draws the Y-Net's box.
    path = Path(items[0].path)
    r = _post(client, path, box=",".join(map(str, items[0].box)))
    assert r.status_code == 422 and "do not send a box" in r.json()["detail"]
    body = _post(client, path).json()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay_png"]))))
    x0, y0, x1, y1 = body["predicted_box"]["box"]
    if (x1 - x0, y1 - y0) != (png.shape[1], png.shape[0]):  # a box inside the frame: its outline is white
        assert (png[y0, x0:x1] == 255).all(axis=1).mean() > 0.9
    page = client.get("/").text
    assert "needsBox()" in page and "MODEL.predicts_boxes" in page and "r.predicted_box" in page


@pytest.mark.slow
def test_the_bundled_ynet_is_verified_by_digest(pbox_run, tmp_path):
    from workbench.bundle.files import write_index
    from workbench.bundle.model import load_model
    from workbench.features.online import WeightsMismatchError

    spec = json.loads((pbox_run["bundle"] / "model.json").read_text())
    folder = spec["box_source"]["folder"]
    weights = next(p for p in (pbox_run["bundle"] / folder).iterdir() if p.name.startswith("weights."))
    rel = weights.relative_to(pbox_run["bundle"]).as_posix()
    # A changed weights file is refused by the index, naming it.
    root = tmp_path / "changed"
    shutil.copytree(pbox_run["bundle"], root)
    with open(root / rel, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=rf"{rel}: does not match the SHA-256"):
        load_model(root)
    # Re-indexed to hide the change, it is still refused: the blocks name the Y-Net's digest.
    index = json.loads((root / "bundle.json").read_text())
    write_index(root, {k: v for k, v in index.items() if k not in ("files", "format")})
    with pytest.raises(WeightsMismatchError, match="the boxes were predicted with"):
        load_model(root)
    # model.json naming another Y-Net than its blocks' is refused.
    root = tmp_path / "renamed"
    shutil.copytree(pbox_run["bundle"], root)
    spec2 = {**spec, "box_source": {**spec["box_source"], "weights_id": "ft-000000000000"}}
    (root / "model.json").write_text(json.dumps(spec2))
    index = json.loads((root / "bundle.json").read_text())
    write_index(root, {k: v for k, v in index.items() if k not in ("files", "format")})
    with pytest.raises(BundleError, match=r"box_source names ft-000000000000, but the feature blocks were "
                                          rf"computed on the boxes of Y-Net {pbox_run['ynet']}"):
        load_model(root)


@pytest.mark.slow
def test_export_without_the_ynet_in_the_store_names_it(pbox_run, tmp_path):
    from workbench.bundle.export import export_model
    from workbench.errors import WorkbenchError

    empty = tmp_path / "store"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match=pbox_run["ynet"]):
        export_model(pbox_run["run"], tmp_path / "b", candidate="selected", manifest=pbox_run["csv"],
                     cache=pbox_run["cache"], finetuned=empty, progress=False)
    assert not (tmp_path / "b").exists()


def test_export_refuses_blocks_that_mix_box_sources():
    from workbench.bundle.export import _check_inputs
    from workbench.features.online import BlockDef

    pre = {"input": "box"}
    manual = BlockDef("a:t", "a", "random", "0" * 64, "t", 2, pre, "fp32", "float32")
    pred = BlockDef("a:t#pbox", "a", "random", "0" * 64, "t", 2, pre, "fp32", "float32",
                    boxes={"source": "predicted", "weights_id": "ft-1"})
    other = BlockDef("b:t#pbox", "b", "random", "0" * 64, "t", 2, pre, "fp32", "float32",
                     boxes={"source": "predicted", "weights_id": "ft-2"})
    whole = BlockDef("c:t", "c", "random", "0" * 64, "t", 2, {"input": "whole"}, "fp32", "float32")
    _check_inputs("ok", [pred, pred])
    _check_inputs("ok", [manual])
    with pytest.raises(BundleError, match=r"'x': its blocks mix boxes of several sources .* \(a:t, a:t#pbox\)"):
        _check_inputs("x", [manual, pred])
    with pytest.raises(BundleError, match="several sources"):
        _check_inputs("x", [pred, other])
    with pytest.raises(BundleError, match=r"input modes \['box', 'whole'\]"):
        _check_inputs("x", [manual, whole])

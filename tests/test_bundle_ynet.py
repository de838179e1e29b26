"""Y-Net baselines in model bundles and on the served page (issue 15, item 6).

A tiny run on a BUSI slice (Y-Net and a classifier baseline, EfficientNet-Lite0, 1 epoch
at 64 px, 2-fold CV: ~15 s on 2 CPU cores) is exported; the Y-Net bundle must give the
run's recorded test probabilities, the run's own masks (those the lead's
``training.masks.predict_masks`` computes from the fine-tuned store) and boxes, quote the
test record's Dice on its card, and the served API must return its contour. The contour
tracer itself is checked against matplotlib's point-in-polygon test on fixed maps.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from matplotlib.path import Path as MplPath
from PIL import Image

from _bundles import BUSI, slice_csv
from workbench.bundle.files import BundleError, sha256_file
from workbench.bundle.segment import Segmentation, mask_contours

YNET, CLASSIFIER = "CNN ynet-lite0", "CNN lite0"


# ---- the contour tracer on fixed maps (fast) ----------------------------------------------

def _inside(contours: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Even-odd fill of ``contours`` at the pixel centres ``(x + 0.5, y + 0.5)`` (matplotlib)."""
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    count = np.zeros(len(pts), int)
    for c in contours:
        count += MplPath(c).contains_points(pts)
    return (count % 2 == 1).reshape(h, w)


def _rings() -> np.ndarray:
    """Two blobs, one of them a ring (a hole), as a smooth probability map (50 x 70)."""
    yy, xx = np.mgrid[0:50, 0:70] + 0.5
    d1 = np.hypot(xx - 20, yy - 22)
    d2 = np.hypot(xx - 52, yy - 30)
    ring = np.clip(1.0 - np.abs(d1 - 11.0) / 6.0, 0, 1)  # > 0.5 for 8 < d1 < 14
    disc = np.clip(1.0 - d2 / 16.0, 0, 1)  # > 0.5 for d2 < 8
    return np.maximum(ring, disc)


def test_contours_enclose_exactly_the_pixels_above_the_threshold():
    prob = _rings()
    mask = prob > 0.5
    cs = mask_contours(prob, 0.5)
    assert len(cs) == 3  # the ring's outer and inner outline, the disc's
    assert all(np.array_equal(c[0], c[-1]) for c in cs)  # closed
    assert np.array_equal(_inside(cs, *prob.shape), mask)
    # Largest first: the ring's outer outline (radius 14) encloses ~pi 14^2.
    x, y = cs[0][:, 0], cs[0][:, 1]
    area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    assert area == pytest.approx(np.pi * 14 ** 2, rel=0.02)
    assert np.hypot(x - 20, y - 22) == pytest.approx(np.full(len(x), 14.0), abs=0.1)


def test_contours_of_a_mask_touching_the_edge_close_along_it_and_an_empty_mask_has_none():
    full = np.ones((12, 9), np.float32)
    (c,) = mask_contours(full)
    assert c[:, 0].min() == 0 and c[:, 0].max() == 9 and c[:, 1].min() == 0 and c[:, 1].max() == 12
    assert _inside([c], 12, 9).all()
    half = np.zeros((10, 10))
    half[:, :4] = 1.0
    (c,) = mask_contours(half)
    assert np.array_equal(_inside([c], 10, 10), half > 0.5)
    assert mask_contours(np.full((5, 5), 0.5)) == []  # nothing strictly above the threshold
    assert mask_contours(np.zeros((4, 4))) == []
    with pytest.raises(ValueError, match="2-D"):
        mask_contours(np.zeros((2, 3, 3)))


def test_a_segmentation_says_its_mask_box_and_contours_as_json():
    from workbench.training.masks import mask_box

    prob = _rings()
    seg = Segmentation(prob, 0.5, mask_box(prob))
    d = seg.to_dict()
    assert d["box"] == [int(v) for v in seg.box] and d["threshold"] == 0.5
    assert d["area_fraction"] == pytest.approx((prob > 0.5).mean())
    assert len(d["contours"]) == 3 and all(len(p) == 2 for p in d["contours"][0])
    assert json.loads(json.dumps(d)) == d


# ---- a tiny run with Y-Net baseline records ---------------------------------------------------

@pytest.fixture(scope="module")
def ynet_run(tmp_path_factory):
    """Records of a Y-Net and a classifier baseline and their exported bundles."""
    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    from workbench.baselines.run import run_baselines
    from workbench.bundle.export import export_model
    from workbench.evaluation.protocol import Protocol

    root = tmp_path_factory.mktemp("ynet_run")
    ft = root / "finetuned"
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_FINETUNED", str(ft))
    try:
        csv = slice_csv(root, {"train": 12, "test": 6})
        run_baselines(csv, ["ynet-lite0", "lite0"], root / "run", classes=["benign", "malignant"],
                      protocol=Protocol(cv=2, inner_cv=2, positive="malignant"),
                      overrides={"epochs": 1, "image_size": 64}, progress=False)
        bundles = {name: export_model(root / "run", root / "bundles" / name.split()[-1], candidate=name,
                                      manifest=csv, finetuned=ft, progress=False)
                   for name in (YNET, CLASSIFIER)}
    finally:
        mp.undo()
    return {"root": root, "csv": csv, "run": root / "run", "finetuned": ft, "bundles": bundles}


def _test_split(run, name):
    from workbench.bundle.source import RunSource

    src = RunSource(run["run"], run["csv"], progress=False)
    rec = src.record(name)
    pr = src.store.predictions(rec)
    man = src.task.manifest
    items = [man[man.ids.index(i)] for i in pr["ids"]]
    return rec, pr, items


@pytest.fixture(scope="module")
def ynet_model(ynet_run):
    from workbench.bundle.model import load_model

    return load_model(ynet_run["bundles"][YNET])


@pytest.mark.slow
def test_a_ynet_bundle_predicts_the_recorded_test_probabilities(ynet_run, ynet_model):
    model = ynet_model
    assert model.kind == "baseline" and model.is_ynet and model.spec["network"]["model"] == "ynet"
    rec, pr, items = _test_split(ynet_run, YNET)
    proba = model.predict_proba([it.path for it in items])
    diff = float(np.abs(proba - pr["proba"]).max())
    print(f"\nY-Net bundle: {len(items)} test images, max |p - recorded p| = {diff:.2e}")
    assert diff <= 1e-5
    assert np.array_equal(model.decide(proba), model.decide(pr["proba"]))
    assert model.describe()["segments"] is True


@pytest.mark.slow
def test_a_ynet_bundle_gives_the_runs_masks_and_boxes_at_each_images_size(ynet_run, ynet_model):
    from workbench.training.finetune import load_finetuned
    from workbench.training.masks import manual_mask, predict_masks

    rec, pr, items = _test_split(ynet_run, YNET)
    segs = ynet_model.segment([it.path for it in items])
    ft = load_finetuned(rec["backbone"], rec["weights_id"], root=ynet_run["finetuned"])
    want = predict_masks(ft.model, items, ft.geometry, ft.data_config, device="cpu")
    scored = 0
    for it, seg, ref, rbox, rdice in zip(items, segs, want, pr["mask_box"], pr["dice"]):
        h, w = Image.open(it.path).size[::-1]
        assert seg.prob.shape == (h, w) == ref.shape and seg.prob.dtype == np.float32
        assert float(np.abs(seg.prob - ref).max()) <= 1e-5
        assert seg.mask.shape == (h, w) and seg.mask.dtype == bool
        if seg.box is not None:
            x0, y0, x1, y1 = seg.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert seg.mask[y0:y1, x0:x1].any() and seg.contours
        if np.isfinite(rdice):  # the run scored this image against its manual mask
            scored += 1
            assert seg.box is not None and list(seg.box) == [int(v) for v in rbox]
            truth = manual_mask(it)
            dice = 2 * (seg.mask & truth).sum() / (seg.mask.sum() + truth.sum())  # by hand
            assert dice == pytest.approx(rdice, abs=1e-6)
    assert scored == rec["segmentation"]["n"] > 0
    # predict_masks is the maps alone, the same ones.
    maps = ynet_model.predict_masks([it.path for it in items[:2]])
    assert all(np.array_equal(m, s.prob) for m, s in zip(maps, segs[:2]))
    # A lower threshold gives a mask that holds the default one.
    low = ynet_model.segment(items[0].path, threshold=0.2)[0]
    assert (low.mask | segs[0].mask).sum() == low.mask.sum()
    with pytest.raises(BundleError, match="threshold"):
        ynet_model.segment(items[0].path, threshold=1.5)


@pytest.mark.slow
def test_the_ynet_card_quotes_the_test_records_dice(ynet_run, ynet_model):
    rec, pr, _ = _test_split(ynet_run, YNET)
    seg = ynet_model.card["segmentation"]
    for key in ("median_dice", "mean_dice", "mean_iou", "failed_share"):
        assert seg[key] == pytest.approx(rec["segmentation"][key])
    d = np.asarray(pr["dice"], float)
    d = d[np.isfinite(d)]
    assert seg["n"] == len(d) and seg["median_dice"] == pytest.approx(np.median(d))
    lo, hi = seg["median_dice_ci"]
    assert d.min() <= lo <= seg["median_dice"] <= hi <= d.max()
    text = (ynet_run["bundles"][YNET] / "MODEL_CARD.md").read_text()
    assert "Y-Net: a U-Net" in text
    assert f"| Test Dice, median (n = {len(d)} images with a manual mask) | {seg['median_dice']:.3f} (" in text
    assert f"| Test Dice, mean | {seg['mean_dice']:.3f} (" in text
    # A classifier's bundle says nothing of masks.
    from workbench.bundle.model import load_model

    clf = load_model(ynet_run["bundles"][CLASSIFIER])
    assert "segmentation" not in clf.card and "model" not in clf.spec["network"]
    assert "Dice" not in (ynet_run["bundles"][CLASSIFIER] / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_a_bundle_that_is_not_a_ynet_refuses_to_segment(ynet_run, tmp_path):
    from workbench.bundle.model import load_model

    clf = load_model(ynet_run["bundles"][CLASSIFIER])
    assert not clf.is_ynet
    _, _, items = _test_split(ynet_run, CLASSIFIER)
    with pytest.raises(BundleError, match=r"CNN lite0.*classifier.*no lesion masks"):
        clf.segment(items[0].path)
    with pytest.raises(BundleError, match="no lesion masks"):
        clf.predict_masks(items[0].path)
    # model.json claiming a Y-Net for a classifier's weights is refused, naming both.
    root = tmp_path / "fake"
    shutil.copytree(ynet_run["bundles"][CLASSIFIER], root)
    spec = json.loads((root / "model.json").read_text())
    spec["network"]["model"] = "ynet"
    (root / "model.json").write_text(json.dumps(spec))
    index = json.loads((root / "bundle.json").read_text())
    index["files"]["model.json"] = sha256_file(root / "model.json")
    (root / "bundle.json").write_text(json.dumps(index))
    with pytest.raises(BundleError, match="is a classifier, model.json says a Y-Net"):
        load_model(root)


@pytest.mark.slow
def test_gradcam_of_a_ynet_runs_through_its_classification_branch(ynet_run, ynet_model):
    from workbench.bundle.explain import YNetClassBranch
    from workbench.data.images import decode_image

    _, pr, items = _test_split(ynet_run, YNET)
    net = ynet_model.network
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(YNetClassBranch(net)(x), net(x)[1])
    image = decode_image(items[0].path, keep_gray=True)
    e = ynet_model.explain(items[0].path)
    assert e.heatmap.shape == tuple(image.shape[-2:]) and e.heatmap.dtype == np.float32
    assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0
    assert e.method.startswith("Grad-CAM (tf_efficientnet_lite0 Y-Net, the encoder's deepest features")
    assert np.allclose(e.proba, pr["proba"][0], atol=1e-5)
    if "empty" not in e.method:  # Grad-CAM proper, not its occlusion fallback
        assert e.heatmap.max() == pytest.approx(1.0)
    # Explaining leaves the network as it was (eval mode: the same probabilities after).
    assert not net.training and not any(m.training for m in net.modules())
    assert np.allclose(ynet_model.predict_proba([items[0].path])[0], pr["proba"][0], atol=1e-5)
    occ = ynet_model.explain(items[0].path, method="occlusion")
    assert occ.method.startswith("occlusion sensitivity") and occ.heatmap.shape == e.heatmap.shape
    with pytest.raises(ValueError, match="not a Y-Net"):
        YNetClassBranch(torch.nn.Linear(2, 2))


# ---- the served API and page ----------------------------------------------------------------

def _post(client, path: Path, **form):
    return client.post("/api/predict", files={"file": (path.name, path.read_bytes())}, data=form or None)


@pytest.mark.slow
def test_the_api_returns_the_ynets_contour_and_box(ynet_run, ynet_model):
    from workbench.serve import create_app

    _, pr, items = _test_split(ynet_run, YNET)
    client = TestClient(create_app(ynet_model))
    assert client.get("/api/model").json()["segments"] is True
    for it, p in zip(items[:3], pr["proba"][:3]):
        path = Path(it.path)
        r = _post(client, path, explain="false")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["proba"]["malignant"] == pytest.approx(float(p[1]), abs=1e-5)
        seg = body["segmentation"]
        want = ynet_model.segment(path)[0]
        w, h = Image.open(path).size
        assert seg["box"] == (None if want.box is None else list(want.box))
        assert len(seg["contours"]) == len(want.contours)
        if want.box is not None:
            x0, y0, x1, y1 = seg["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            pts = np.asarray(seg["contours"][0])
            assert pts.shape[1] == 2 and np.allclose(pts, want.contours[0], atol=0.01)
            assert 0 <= pts[:, 0].min() and pts[:, 0].max() <= w and 0 <= pts[:, 1].min() and pts[:, 1].max() <= h
        png = Image.open(io.BytesIO(base64.b64decode(seg["overlay_png"])))
        assert png.size == (w, h) and png.mode == "RGB"
    # The explanation is still there, the class branch's Grad-CAM.
    body = _post(client, Path(items[0].path)).json()
    assert "Y-Net" in body["explanation"]["method"] and body["segmentation"] is not None
    page = client.get("/").text
    assert 'id="seg-overlay"' in page and "r.segmentation" in page


@pytest.mark.slow
def test_the_contour_overlay_draws_the_outline_on_the_image():
    from workbench.serve import contour_png
    from workbench.serve.app import CONTOUR_RGB

    img = torch.full((1, 40, 60), 0.5)
    square = np.array([[10, 10], [30, 10], [30, 25], [10, 25], [10, 10]], float)
    out = np.asarray(Image.open(io.BytesIO(contour_png(img, [square]))))
    assert out.shape == (40, 60, 3)
    assert tuple(out[10, 20]) == CONTOUR_RGB and tuple(out[25, 10]) == CONTOUR_RGB
    assert tuple(out[18, 20]) == (128, 128, 128) and tuple(out[2, 2]) == (128, 128, 128)


@pytest.mark.slow
def test_the_api_gives_no_segmentation_for_a_classifier_or_a_feature_head_bundle(ynet_run, bundle_run):
    from workbench.bundle.model import load_model
    from workbench.serve import create_app

    _, _, items = _test_split(ynet_run, CLASSIFIER)
    path = Path(items[0].path)
    for bundle in (ynet_run["bundles"][CLASSIFIER], bundle_run.bundles["head"]):
        model = load_model(bundle)
        client = TestClient(create_app(model))
        assert client.get("/api/model").json()["segments"] is False
        r = _post(client, path, explain="false")
        assert r.status_code == 200, r.text
        assert r.json()["segmentation"] is None

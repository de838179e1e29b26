"""Explanations of bundle predictions (``workbench.bundle.explain``).

Unit tests (no pretrained weights): the torch SVM decision against scikit-learn's,
occlusion sensitivity on a fake model whose probability depends on one region only, the
inverse of every resize geometry, the decision gradient through randomly initialised
torchvision networks (FX-traced taps, one and two backbones, box mode). Bundle tests
(slow): every kind of the shared BUSI fixture bundle gives a map at the image's size,
names its method and returns ``predict_proba``'s numbers. Slow too: the lesion test on
a dedicated BUSI run, and the latency of occlusion on a three-backbone soft vote.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from workbench.bundle.explain import (
    DEFAULT_PATCH,
    DEFAULT_STRIDE,
    explain,
    occlusion_map,
    predicted_class,
    svm_decision,
    svm_parts,
    to_image_grid,
)
from workbench.data.preprocess import Geometry
from workbench.heads.zoo import ScaledGammaSVC


# ---------------------------------------------------------------------- helpers
def _check_map(e, image: torch.Tensor) -> None:
    h, w = image.shape[-2:]
    assert e.heatmap.shape == (h, w)
    assert e.heatmap.dtype == np.float32
    assert np.isfinite(e.heatmap).all()
    assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0
    assert isinstance(e.method, str) and e.method


@dataclass
class _RegionFeaturizer:
    """Stands in for a Featurizer: one feature, the mean brightness of ``spot``."""

    spot: tuple[int, int, int, int]  # x0, y0, x1, y1
    input_mode: str = "whole"
    box_margin: float = 0.0
    calls: list[int] = field(default_factory=list)

    def transform(self, images, boxes=None, *, batch_size=32):
        self.calls.append(len(images))
        x0, y0, x1, y1 = self.spot
        return {"f": np.array([[float(im[:, y0:y1, x0:x1].mean())] for im in images])}

    def input_region(self, height, width, box=None):
        if self.input_mode != "box":
            return (0, 0, width, height)
        x0, y0, x1, y1 = box
        return (x0, y0, x1, y1)


class _FakeModel:
    """A two-class 'vote' whose P(b) is a steep function of one region's brightness."""

    kind = "vote-soft"
    classes = ["a", "b"]
    positive = "b"
    positive_index = 1
    threshold = 0.5
    members: list = []

    def __init__(self, featurizer, fn=None):
        self.featurizer = featurizer
        self.fn = fn or (lambda f: 1.0 / (1.0 + np.exp(-20.0 * (f - 0.5))))

    def proba_from_features(self, feats):
        p = np.clip(np.asarray(self.fn(feats["f"][:, 0]), dtype=np.float64), 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def predict_proba_tensors(self, images, boxes=None):
        return self.proba_from_features(self.featurizer.transform(images, boxes))


def _spot_image(h=60, w=80, spot=(50, 10, 70, 30)) -> torch.Tensor:
    img = torch.full((1, h, w), 0.2)
    x0, y0, x1, y1 = spot
    img[:, y0:y1, x0:x1] = 1.0
    return img


# ------------------------------------------------------------------ unit tests
@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_torch_svm_decision_equals_sklearn(kernel):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 30)).astype(np.float32) * rng.uniform(0.5, 5, 30).astype(np.float32) + 3
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + rng.normal(size=80) > 4).astype(int)
    clf = ScaledGammaSVC(C=3.0, gamma_factor=2.0) if kernel == "rbf" else SVC(kernel="linear", C=0.5)
    est = Pipeline([("scale", StandardScaler()), ("clf", clf)]).fit(X, y)
    Xt = rng.normal(size=(15, 30)).astype(np.float32) * 3 + 3
    want = est.decision_function(Xt)
    got = svm_decision(est, torch.from_numpy(Xt)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert svm_parts(est).kernel == kernel
    # differentiable: a gradient reaches the features
    x = torch.from_numpy(Xt[:1]).requires_grad_(True)
    svm_decision(est, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_svm_parts_refuses_other_heads():
    from sklearn.ensemble import RandomForestClassifier

    X, y = np.random.default_rng(1).normal(size=(20, 4)), np.arange(20) % 2
    assert svm_parts(Pipeline([("clf", RandomForestClassifier(n_estimators=3))]).fit(X, y)) is None
    three = Pipeline([("scale", StandardScaler()), ("clf", SVC(kernel="linear"))]).fit(X, np.arange(20) % 3)
    assert svm_parts(three) is None  # three classes: no single decision function
    with pytest.raises(ValueError, match="not a binary"):
        svm_decision(three, torch.zeros(1, 4))


def test_occlusion_map_peaks_where_the_probability_depends():
    spot = (50, 10, 70, 30)
    model = _FakeModel(_RegionFeaturizer(spot))
    image = _spot_image(spot=spot)
    e = explain(model, image)
    _check_map(e, image)
    assert "occlusion sensitivity (patch 1/4 of the side, stride 1/8" in e.method and "P(b)" in e.method
    np.testing.assert_array_equal(e.proba, model.predict_proba_tensors([image])[0])
    y, x = np.unravel_index(np.argmax(e.heatmap), e.heatmap.shape)
    assert spot[0] <= x < spot[2] and spot[1] <= y < spot[3]
    # far from the spot nothing moves the probability
    assert e.heatmap[45:, :30].max() == 0.0
    # after the one-image prediction: 7 x 7 patches + the original, in batches of 16
    assert model.featurizer.calls[:5] == [1, 16, 16, 16, 2]


def test_occlusion_explains_the_predicted_class_and_respects_patch_and_stride():
    spot = (50, 10, 70, 30)
    # A dark spot: P(b) is low, the prediction is "a", whose probability falls when the
    # spot is filled with the (brighter) mean.
    image = torch.full((3, 60, 80), 0.8)
    image[:, 10:30, 50:70] = 0.0
    model = _FakeModel(_RegionFeaturizer(spot), fn=lambda f: 1.0 / (1.0 + np.exp(20.0 * (0.3 - f))))
    assert predicted_class(model, model.predict_proba_tensors([image])[0]) == 0
    e = explain(model, image, patch=0.5, stride=0.25)
    _check_map(e, image)
    assert "patch 1/2 of the side, stride 1/4" in e.method and "P(a)" in e.method
    y, x = np.unravel_index(np.argmax(e.heatmap), e.heatmap.shape)
    assert 40 <= x < 80 and 0 <= y < 40
    with pytest.raises(ValueError, match="fractions"):
        occlusion_map(lambda ims: np.zeros(len(ims)), image, patch=0.0)


def test_occlusion_in_box_mode_is_zero_outside_the_crop():
    spot = (50, 10, 70, 30)
    fz = _RegionFeaturizer(spot, input_mode="box")
    model = _FakeModel(fz)
    image = _spot_image(spot=spot)
    box = (40, 0, 80, 40)
    e = explain(model, image, box)
    _check_map(e, image)
    assert e.heatmap[40:, :].max() == 0.0 and e.heatmap[:, :40].max() == 0.0
    assert e.heatmap[10:30, 50:70].max() == 1.0


def test_occlusion_constant_and_rise_only_cases_say_so():
    image = _spot_image()
    flat = _FakeModel(_RegionFeaturizer((0, 0, 5, 5)), fn=lambda f: np.full_like(f, 0.7))
    e = explain(flat, image)
    _check_map(e, image)
    assert e.heatmap.max() == 0.0 and "did not change under any patch" in e.method
    # P(b) only rises when the bright spot is covered (the fill is darker than the spot):
    # the map ranks patches by how little they raise it, and says so.
    spot = (50, 10, 70, 30)
    rising = _FakeModel(_RegionFeaturizer(spot), fn=lambda f: 0.9 - 0.1 * f)
    e = explain(rising, image)
    _check_map(e, image)
    assert "no patch lowered P(b)" in e.method and e.heatmap.max() == 1.0
    assert e.heatmap[10:30, 50:70].max() < 1.0  # covering the spot raised P(b) most


@pytest.mark.parametrize("resize", ["squash", "crop", "letterbox"])
@pytest.mark.parametrize("shape", [(90, 150), (150, 90)])
def test_to_image_grid_inverts_the_geometry(resize, shape):
    h, w = shape
    img = torch.zeros(1, h, w)
    cy, cx = int(h * 0.45), int(w * 0.55)  # near the centre: inside a centre crop too
    img[:, cy - 4:cy + 4, cx - 4:cx + 4] = 1.0
    g = Geometry(64, resize, 0.875, "bilinear")
    seen = g(img.clone())[0].numpy()
    back = to_image_grid(seen / seen.max(), g, h, w)
    assert back.shape == (h, w)
    y, x = np.unravel_index(np.argmax(back), back.shape)
    assert abs(y - cy) <= 6 and abs(x - cx) <= 6, (resize, (y, x), (cy, cx))
    if resize == "letterbox":  # the padding is dropped, not stretched into the image
        pad = 1.0 - g(torch.ones(1, h, w))[0].numpy()  # 1 on the bands the letterbox added
        assert pad.max() == 1.0 and to_image_grid(pad, g, h, w).max() < 0.05


def _head_bundle(featurizer, estimator, block: str):
    """A BundleModel of kind ``head`` built in memory around ``estimator`` (no files)."""
    import threading

    from workbench.bundle.model import BundleModel, _Member
    from workbench.heads.nested import PlattCalibrator

    model = BundleModel.__new__(BundleModel)
    model.name, model.kind, model.spec = "test head", "head", {}
    model.classes, model.positive, model.positive_index, model.threshold = ["a", "b"], "b", 1, 0.5
    model.classes_ = np.array(model.classes)
    model.input_mode, model.lock, model.featurizer = featurizer.input_mode, threading.Lock(), featurizer
    model.members = [_Member("svm", "svm-rbf", [block], estimator, PlattCalibrator([(-2.0, 0.0)], 2))]
    return model


@pytest.mark.parametrize("input_mode", ["whole", "box"])
def test_svm_gradient_through_an_fx_traced_torchvision_backbone(input_mode):
    """ResNet-18 (random weights) is tapped through an FX graph that hides its container
    CAM layer (layer4.1): the map comes from the same network traced with that layer as an
    extra output; its features equal the featurizer's."""
    from workbench.bundle.explain import _runner
    from workbench.features.online import Featurizer

    fz = Featurizer(_default_blocks(["resnet18"], weights="random", size=96, input=input_mode))
    block = fz.blocks[0].name
    rng = np.random.default_rng(0)
    images, y = [], []
    for i in range(24):
        img = torch.from_numpy(rng.uniform(0, 0.3, (1, 80, 100)).astype(np.float32))
        if i % 2:
            img[:, 20:50, 10:40] += 0.6
        images.append(img)
        y.append(i % 2)
    box = (5, 10, 60, 70)
    X = fz.transform(images, [box] * len(images) if input_mode == "box" else None)[block]
    est = Pipeline([("scale", StandardScaler()), ("clf", ScaledGammaSVC())]).fit(X, y)
    model = _head_bundle(fz, est, block)
    image = images[1]
    e = model.explain_tensor(image, box, method="gradient")
    _check_map(e, image)
    assert "through resnet18 layer4.1" in e.method, e.method
    np.testing.assert_array_equal(e.proba, model.predict_proba_tensors([image], [box])[0])
    if input_mode == "box":  # zero outside the crop the network saw (the box and its 10 % margin)
        x0, y0, x1, y1 = fz.input_region(80, 100, box)
        assert (x0, y0, x1, y1) == (0, 4, 66, 76)
        outside = np.ones((80, 100), bool)
        outside[y0:y1, x0:x1] = False
        assert e.heatmap[outside].max() == 0 and e.heatmap[~outside].max() == 1
    (g, x), = fz.network_inputs(image, box)
    with torch.no_grad():
        taps, act = _runner(fz, 0).run(x)
        np.testing.assert_allclose(taps["avgpool"][0].numpy(), fz.forward_tensor(image, box)[block].numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert act.shape[1:] == (512, 3, 3)
    # the same model, explained by occlusion on request
    o = explain(model, image, box, method="occlusion")
    _check_map(o, image)
    assert o.method.startswith("occlusion sensitivity") and np.array_equal(o.proba, e.proba)
    with pytest.raises(ValueError, match="method must be one of"):
        explain(model, image, box, method="lime")


def test_svm_gradient_over_two_backbones_averages_their_maps():
    from workbench.features.online import Featurizer

    fz = Featurizer(_default_blocks(["resnet18", "shufflenet_v2_x1_0"], weights="random", size=64))
    names = [b.name for b in fz.blocks]
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.uniform(0, 1, (3, 50, 70)).astype(np.float32)) for _ in range(16)]
    feats = fz.transform(images)
    X = np.concatenate([feats[n] for n in names], axis=1)
    est = Pipeline([("scale", StandardScaler()), ("clf", SVC(kernel="linear"))]).fit(X, np.arange(16) % 2)
    model = _head_bundle(fz, est, names[0])
    model.members[0].blocks = names
    e = model.explain_tensor(images[3], method="gradient")
    _check_map(e, images[3])
    assert ("(linear SVM) decision gradient (Grad-CAM weighting) through resnet18 layer4.1 + shufflenet_v2_x1_0 "
            "conv5 (mean of per-network maps)") in e.method, e.method
    np.testing.assert_array_equal(e.proba, model.predict_proba_tensors([images[3]])[0])


# ------------------------------------------------------------------ bundle tests
def _test_rows(bundle_run, n: int) -> list[tuple[torch.Tensor, tuple[int, int, int, int], str]]:
    from workbench.data.images import decode_image

    df = pd.read_csv(bundle_run.csv)
    df = df[(df.split == "test") & df.bbox_x0.notna()]
    rows = pd.concat([df[df.label == "malignant"].head(n - n // 2), df[df.label == "benign"].head(n // 2)])
    return [(decode_image(r.path, keep_gray=True), (int(r.bbox_x0), int(r.bbox_y0), int(r.bbox_x1),
                                                     int(r.bbox_y1)), r.label) for _, r in rows.iterrows()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["head", "vote-soft", "vote-hard", "stack", "baseline"])
def test_every_bundle_kind_explains_one_image(bundle_run, kind):
    from workbench.bundle import load_model

    model = load_model(bundle_run.bundles[kind])
    for image, box, _ in _test_rows(bundle_run, 2):
        t0 = time.perf_counter()
        e = model.explain_tensor(image, box)
        seconds = time.perf_counter() - t0
        _check_map(e, image)
        np.testing.assert_array_equal(e.proba, model.predict_proba_tensors([image], [box])[0])
        cls = model.classes[predicted_class(model, e.proba)]
        assert cls in e.method
        if kind == "baseline":
            assert e.method.startswith("Grad-CAM (tf_efficientnet_lite0, layer bn2) for class")
        else:  # features: occlusion by default (the maps that find lesions on BUSI)
            assert "occlusion sensitivity" in e.method
        if kind == "head":  # the SVM's own decision gradient, on request
            g = model.explain_tensor(image, box, method="gradient")
            _check_map(g, image)
            assert g.method.startswith("svm-rbf (RBF SVM) decision gradient (Grad-CAM weighting) through "
                                       "tf_efficientnet_lite0 bn2") or "occlusion" in g.method
        if e.heatmap.max() == 0:
            assert "did not change" in e.method
        print(f"\n{kind}: {seconds:.2f} s, {e.method}")
    # a box-mode bundle needs its box; a whole-image one ignores it, and explain() takes paths too
    assert model.explain(str(pd.read_csv(bundle_run.csv).path.iloc[0])).heatmap.ndim == 2


@pytest.mark.slow
def test_svm_head_decision_in_torch_matches_the_bundle(bundle_run):
    """The torch decision on the networks' own differentiable features equals the fitted
    pipeline's decision_function on the featurizer's (stored-dtype) features."""
    from workbench.bundle import load_model

    model = load_model(bundle_run.bundles["head"])
    member = model.members[0]
    images = [im for im, _, _ in _test_rows(bundle_run, 6)]
    X = np.concatenate([model.featurizer.transform(images)[b] for b in member.blocks], axis=1)
    want = member.estimator.decision_function(X)
    with torch.no_grad():
        z = torch.stack([torch.cat([f[b] for b in member.blocks])
                         for f in (model.featurizer.forward_tensor(im) for im in images)])
        got = svm_decision(member.estimator, z).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------ latency
class _VoteOfFeatures(_FakeModel):
    """A soft vote over real networks' features: one fixed logistic head per block, P
    averaged (the heads' cost is negligible beside the networks')."""

    def __init__(self, featurizer):
        super().__init__(featurizer)
        rng = np.random.default_rng(0)
        self.w = {b.name: rng.normal(size=b.dim) / np.sqrt(b.dim) for b in featurizer.blocks}

    def proba_from_features(self, feats):
        ps = [1.0 / (1.0 + np.exp(-(f - f.mean()) @ self.w[name])) for name, f in feats.items()]
        p = np.mean(ps, axis=0)
        return np.column_stack([1.0 - p, p])


def _default_blocks(backbones, *, weights=None, size=None, input="whole", tap="avgpool"):
    """Blocks ``backbone:tap`` at the weights' own input size (or ``size``)."""
    from workbench.backbones.registry import get_backbone
    from workbench.backbones.weights import resolve_weights
    from workbench.data.preprocess import Preprocess
    from workbench.features.online import BlockDef

    blocks = []
    for name in backbones:
        spec = get_backbone(name)
        w = resolve_weights(spec, weights or spec.default_weights)
        pre = Preprocess.from_data_config(spec.data_config(w.id), size=size, input=input)
        blocks.append(BlockDef(f"{name}:{tap}", name, w.id, w.digest, tap, spec.tap(tap).dim,
                               pre.key_fields(), "fp32", "float32"))
    return blocks


@pytest.mark.slow
def test_occlusion_of_a_three_backbone_soft_vote(busi_dir):
    """Default grid (7 x 7 patches) on Lite0/1/2 at 224/240/260 px: a valid map. The time is
    printed, not asserted (speed is the benchmarks' business: 11-14 s on one CPU thread
    when written, benchmarks/RESULTS.md)."""
    from workbench.data.images import decode_image
    from workbench.features.online import Featurizer

    fz = Featurizer(_default_blocks(["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]))
    model = _VoteOfFeatures(fz)
    image = decode_image(busi_dir / "images" / "busi_malignant_040.png", keep_gray=True)
    explain(model, image, patch=0.5, stride=0.5)  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    e = explain(model, image)
    seconds = time.perf_counter() - t0
    _check_map(e, image)
    sizes = [b.pre.geometry.size for b in fz.blocks]
    print(f"\nocclusion, soft vote of 3 backbones at {sizes} px, patch {DEFAULT_PATCH:.3g}, stride "
          f"{DEFAULT_STRIDE:.3g}, {torch.get_num_threads()} thread(s): {seconds:.1f} s\n{e.method}")
    assert "occlusion sensitivity" in e.method


# ------------------------------------------------------------------ the lesion test


@dataclass
class _LesionRun:
    bundles: dict
    images: list  # the test split's images with boxes (all of benign and malignant)
    boxes: list
    labels: list


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory):
    """All BUSI benign + malignant images (526 train, 121 test, every one with a box):
    Lite0 ImageNet features at 160 px, svm-rbf and rf heads, their soft vote; the head
    and the vote exported as bundles. About a minute on 2 CPU cores."""
    import warnings

    from _bundles import BUSI, config_text
    from workbench.bundle.export import export_model
    from workbench.data.images import decode_image
    from workbench.experiment import run_experiment

    if not (BUSI / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI}")
    folder = tmp_path_factory.mktemp("explain_busi")
    df = pd.read_csv(BUSI / "labels.csv")
    df = df[df.label.isin(["benign", "malignant"])].copy()
    for col in ("path", "mask_path", "roi_path"):
        df[col] = [str(BUSI / p) if isinstance(p, str) else p for p in df[col]]
    df.to_csv(folder / "labels.csv", index=False)
    (folder / "exp.toml").write_text(config_text(folder / "labels.csv", name="explain_busi", image_size=160,
                                                 stacking=False, baselines=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BUSI holds one image under two ids (a known duplicate)
        run_experiment(folder / "exp.toml", progress=False)
        bundles = {kind: export_model(folder / "run", folder / "bundles" / kind, candidate=name, progress=False)
                   for kind, name in {"head": "[L] svm-rbf", "vote-soft": "[L] vote-soft(svm-rbf+rf)"}.items()}
    test = df[(df.split == "test") & df.bbox_x0.notna()]
    return _LesionRun(bundles, [decode_image(p, keep_gray=True) for p in test.path],
                      [(int(r.bbox_x0), int(r.bbox_y0), int(r.bbox_x1), int(r.bbox_y1)) for _, r in test.iterrows()],
                      list(test.label))


def _peak_share(run: _LesionRun, maps: list[np.ndarray], what: str, keep: list[int] | None = None) -> float:
    """Share of maps peaking in their box, against a random peak's chance (the box's share
    of the image): returns z, the excess in standard deviations of the hit count under
    chance (a sum of Bernoulli(box share) draws). ``keep``: only these images."""
    from workbench.baselines.cam import peak_in_box

    keep = list(range(len(maps))) if keep is None else keep
    images, boxes = [run.images[i] for i in keep], [run.boxes[i] for i in keep]
    hits = np.array([peak_in_box(maps[i], b) for i, b in zip(keep, boxes)])
    area = np.array([(b[2] - b[0]) * (b[3] - b[1]) / (im.shape[-2] * im.shape[-1]) for im, b in zip(images, boxes)])
    centre = np.array([peak_in_box(_centre_map(im), b) for im, b in zip(images, boxes)])
    mal = np.array([run.labels[i] for i in keep]) == "malignant"
    z = (hits.sum() - area.sum()) / np.sqrt((area * (1 - area)).sum())
    print(f"\n{what}: peak in the lesion box {hits.sum()} of {len(hits)} = {hits.mean():.1%} vs chance "
          f"{area.mean():.1%} (z = {z:.1f}); malignant {hits[mal].mean():.1%} vs {area[mal].mean():.1%}, "
          f"benign {hits[~mal].mean():.1%} vs {area[~mal].mean():.1%}; a fixed map peaking at the image "
          f"centre: {centre.mean():.1%}")
    return float(z)


def _centre_map(image: torch.Tensor) -> np.ndarray:
    h, w = image.shape[-2:]
    m = np.zeros((h, w), np.float32)
    m[h // 2, w // 2] = 1.0
    return m


@pytest.mark.slow
def test_occlusion_of_a_soft_vote_peaks_in_the_lesion_box(lesion_run):
    """Occlusion maps of the soft vote peak in the lesion box clearly more often than a
    random peak: z > 2 (one-sided p < 0.025 against the box-area chance).

    When written (160 px, 121 test images): 28 of 121 = 23.1 % vs chance 13.3 % (z = 3.5);
    at 128 px 19.8 %, at 224 px 24.8 %. BUSI lesions sit near the image centre, so a fixed
    map peaking at the centre pixel scores 33 %: beating chance shows the maps follow the
    image, not that they outline the lesion."""
    from workbench.bundle import load_model

    model = load_model(lesion_run.bundles["vote-soft"])
    t0 = time.perf_counter()
    maps = []
    for image, box in zip(lesion_run.images, lesion_run.boxes):
        e = model.explain_tensor(image, box)
        assert "occlusion sensitivity" in e.method
        maps.append(e.heatmap)
    print(f"\n{(time.perf_counter() - t0) / len(maps):.2f} s per occlusion map")
    assert _peak_share(lesion_run, maps, "soft vote, occlusion") > 2.0


@pytest.mark.slow
def test_svm_decision_gradient_peaks_in_the_lesion_box(lesion_run):
    """The svm-rbf head's maps as ``explain`` gives them (Grad-CAM weighting of the
    decision gradient; occlusion where that map is empty) and the Grad-CAM maps alone.

    When written (160 px): as given 23 of 121 = 19.0 % vs chance 13.3 % (z = 2.0; 12 maps
    came from the occlusion fallback); the 109 Grad-CAM maps alone 18 = 16.5 % vs 13.4 %
    (z = 1.1; all maps: 9 % at 128 px, 16 % at 224 px, chance 13 %). Their peaks sit at
    the image's borders and corners. A known limitation of gradients through frozen
    ImageNet features, not a passing result: the localisation claim is an expected failure
    until the Grad-CAM maps beat chance clearly (z > 2).
    """
    from workbench.bundle import load_model

    model = load_model(lesion_run.bundles["head"])
    t0 = time.perf_counter()
    maps, fell = [], []
    for image, box in zip(lesion_run.images, lesion_run.boxes):
        e = model.explain_tensor(image, box, method="gradient")
        _check_map(e, image)
        assert e.method.startswith("svm-rbf (RBF SVM) decision gradient (Grad-CAM weighting)")
        fell.append("occlusion" in e.method)
        maps.append(e.heatmap)
    print(f"\n{(time.perf_counter() - t0) / len(maps):.2f} s per map; {sum(fell)} empty Grad-CAM maps "
          f"fell back to occlusion")
    _peak_share(lesion_run, maps, "svm-rbf head, as explained")
    keep = [i for i, f in enumerate(fell) if not f]
    z = _peak_share(lesion_run, maps, "svm-rbf head, Grad-CAM maps only", keep)
    if z <= 2.0:
        pytest.xfail(f"SVM decision-gradient Grad-CAM peaks in the lesion box at chance level (z = {z:.1f})")

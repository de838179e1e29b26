"""One Y-Net mask pipeline behind the training layer's masks, the feature layer's
predicted boxes and a bundle's ``segment()`` (:mod:`workbench.backbones.ynet_masks`).

A tiny random Y-Net (``timm/test_efficientnet`` encoder, its mask head sharpened so the
maps hold real regions) runs over four BUSI images (benign, malignant, normal) at 64 px
in every resize mode. Each of the three users must give the maps and boxes of an
independent computation written here from the primitives (decode, resize, normalise,
forward, sigmoid, inverse geometry, largest 8-connected region by ``scipy.ndimage``),
``score_masks`` the Dice computed by hand, and the box file its pinned key.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch.nn import functional as F

from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import ResolvedWeights
from workbench.backbones.ynet import build_ynet
from workbench.data.boxes import Box
from workbench.data.images import decode_image
from workbench.data.manifest import Manifest
from workbench.data.preprocess import RESIZE_MODES, Geometry
from workbench.errors import ConfigError

ENCODER = "timm/test_efficientnet"
SIZE = 64
IDS = ["busi_benign_001", "busi_benign_010", "busi_malignant_001", "busi_normal_001"]
#: The box file key of the stand-in BoxNet below (squash geometry, fp32): box keys must never change.
BOX_KEY = "b42b443a3cde7f1fde838dbf36c94c740faa89395dd1374a2efbb3354b78b886"


@pytest.fixture(scope="module")
def items():
    from pathlib import Path

    busi = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
    if not (busi / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {busi}")
    return list(Manifest.load(busi / "labels.csv").subset(IDS).validate(progress=False))


@pytest.fixture(scope="module")
def ynet(items):
    # The first U-Net a process builds draws from torch's generator differently from
    # every later one (a one-time setup inside the libraries), so the seeded network
    # would depend on whether an earlier test built one: build one first, then seed.
    build_ynet(ENCODER, 2, "random")
    torch.manual_seed(0)
    net = build_ynet(ENCODER, 2, "random").eval()
    head = net.unet.segmentation_head[0]
    with torch.no_grad():  # random logits sit near 0 (maps ~0.5 everywhere): spread them, then shift
        head.weight.mul_(40.0)
        head.bias.zero_()
        # ... so that about 15 % of the pixels are lesion: real regions, whatever the init.
        dc = get_backbone(ENCODER).data_config(None)
        mean, std = torch.tensor(dc.mean).view(3, 1, 1), torch.tensor(dc.std).view(3, 1, 1)
        g = Geometry(SIZE, interpolation=dc.interpolation)
        logits, _ = net(torch.stack([(g(decode_image(it.path)) - mean) / std for it in items]))
        head.bias.fill_(-float(torch.quantile(logits.flatten(), 0.85)))
    return net


@pytest.fixture(scope="module")
def data_config():
    return get_backbone(ENCODER).data_config(None)


def _geometry(resize: str, dc) -> Geometry:
    return Geometry(SIZE, resize, interpolation=dc.interpolation)


def _reference_maps(model, items, geometry: Geometry, dc) -> list[np.ndarray]:
    """Lesion maps at each image's size, computed from the primitives in one batch."""
    mean = torch.tensor(dc.mean).view(3, 1, 1)
    std = torch.tensor(dc.std).view(3, 1, 1)
    x = torch.stack([(geometry(decode_image(it.path)) - mean) / std for it in items])
    with torch.no_grad():
        logits, _ = model(x)
    out = []
    for it, p in zip(items, torch.sigmoid(logits)):
        w, h = Image.open(it.path).size
        out.append(geometry.to_frame(p, h, w)[0].clamp(0, 1).numpy())
    return out


def _reference_box(prob: np.ndarray, threshold: float = 0.5) -> Box | None:
    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3)))
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return Box(cols.start, rows.start, cols.stop, rows.stop)


def _close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)  # batches of other sizes differ in the last bits


def _box_net(model, geometry: Geometry, dc):
    from workbench.features.predicted_boxes import BoxNet

    w = ResolvedWeights(ENCODER, "ft-0123456789ab", None, "e" * 64, False, 2,
                        {"backbone": ENCODER, "config": {"model": "ynet"}})
    return BoxNet(ENCODER, w, geometry, tuple(dc.mean), tuple(dc.std), _model=model)


def _bundle(model, geometry: Geometry, dc):
    """A Y-Net baseline's loaded bundle without files: what segment() reads of it."""
    from workbench.bundle.model import BundleModel

    b = BundleModel.__new__(BundleModel)
    b.name, b.kind, b.is_ynet = "stub ynet", "baseline", True
    b.network, b.geometry, b.device = model, geometry, torch.device("cpu")
    b.mean = torch.tensor(dc.mean, dtype=torch.float32).view(3, 1, 1)
    b.std = torch.tensor(dc.std, dtype=torch.float32).view(3, 1, 1)
    b.lock = threading.Lock()
    return b


def test_the_reference_maps_hold_real_regions(items, ynet, data_config):
    """The comparisons below mean something: varied, non-trivial masks and boxes."""
    maps = _reference_maps(ynet, items, _geometry("squash", data_config), data_config)
    shares = [float((m > 0.5).mean()) for m in maps]
    assert all(0.005 < s < 0.6 for s in shares), shares
    assert len({_reference_box(m) for m in maps}) == len(maps)
    # The squash inverse is a plain bilinear resize (align_corners=False, no antialias).
    x = torch.rand(1, 1, SIZE, SIZE)
    np.testing.assert_allclose(Geometry(SIZE).to_frame(x[0], 50, 70).numpy(),
                               F.interpolate(x, size=(50, 70), mode="bilinear", align_corners=False)[0].numpy(),
                               atol=1e-6)


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_training_masks_are_the_reference_maps_and_boxes(items, ynet, data_config, resize):
    from workbench.training.masks import iter_masks, predict_masks

    g = _geometry(resize, data_config)
    want = _reference_maps(ynet, items, g, data_config)
    _close(predict_masks(ynet, items, g, data_config, device="cpu"), want)
    got = list(iter_masks(ynet, items, g, data_config, device="cpu", batch_size=3))  # two batches
    assert [it.id for it, _ in got] == IDS
    _close([m for _, m in got], want)


def test_score_masks_gives_the_dice_and_boxes_computed_by_hand(items, ynet, data_config):
    from workbench.training.masks import manual_mask, score_masks

    g = _geometry("letterbox", data_config)
    want = _reference_maps(ynet, items, g, data_config)
    s = score_masks(ynet, items, g, data_config, device="cpu").set_index("id")
    assert list(s.index) == IDS
    for it, prob in zip(items, want):
        pred, truth = prob > 0.5, manual_mask(it)
        union = pred.sum() + truth.sum()
        dice = 1.0 if union == 0 else 2 * (pred & truth).sum() / union
        assert s.loc[it.id, "dice"] == pytest.approx(dice, abs=1e-9)
        assert s.loc[it.id, "lesion"] == bool(truth.any())
        box = _reference_box(prob)
        got = s.loc[it.id, ["box_x0", "box_y0", "box_x1", "box_y1"]].tolist()
        if box is None:
            assert np.isnan(got).all()
        else:
            assert got == list(box)
    assert s.loc["busi_normal_001", "lesion"] == False  # noqa: E712 (numpy bool)


def test_a_classifier_gives_no_masks(items, data_config):
    from workbench.training.masks import predict_masks

    class Classifier(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2)

    with pytest.raises(ConfigError, match="classes only"):
        predict_masks(Classifier(), items[:1], _geometry("squash", data_config), data_config, device="cpu")


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_predicted_boxes_are_the_reference_boxes_and_their_file_keeps_its_key(items, ynet, data_config, resize,
                                                                                tmp_path):
    from workbench.features.predicted_boxes import BOXES_DIR, predicted_boxes

    g = _geometry(resize, data_config)
    want = {it.sha256: _reference_box(m) for it, m in zip(items, _reference_maps(ynet, items, g, data_config))}
    net = _box_net(ynet, g, data_config)
    res = predicted_boxes(items, net, cache_root=tmp_path, device="cpu", precision="fp32", batch_size=3)
    assert res.boxes == want and res.computed == len(items)
    doc = json.loads(res.path.read_text())
    assert res.path.parent == tmp_path / BOXES_DIR and doc["fields"] == net.fields("fp32")
    assert doc["boxes"] == {k: None if b is None else list(b) for k, b in want.items()}
    if resize == "squash":
        assert res.path.name == f"{BOX_KEY}.json"
    # New images (decoded, grey kept as one channel) get the same boxes, nothing cached.
    imgs = [decode_image(it.path, keep_gray=True) for it in items]
    assert imgs[0].shape[0] == 1
    assert net.boxes_of_images(imgs, device="cpu", precision="fp32", batch_size=3) == [want[it.sha256]
                                                                                       for it in items]


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_a_bundles_segmentation_is_the_reference(items, ynet, data_config, resize):
    g = _geometry(resize, data_config)
    want = _reference_maps(ynet, items, g, data_config)
    bundle = _bundle(ynet, g, data_config)
    segs = bundle.segment([it.path for it in items])
    _close([s.prob for s in segs], want)
    assert [s.box for s in segs] == [_reference_box(m) for m in want]
    assert all(s.threshold == 0.5 and np.array_equal(s.mask, s.prob > 0.5) for s in segs)
    _close(bundle.predict_masks([it.path for it in items]), want)
    low = bundle.segment_tensors([decode_image(items[0].path, keep_gray=True)], threshold=0.2, batch_size=1)[0]
    assert low.box == _reference_box(want[0], 0.2)


def test_the_shared_pipeline_runs_under_autocast_and_refuses_a_classifier(items, ynet, data_config):
    """bf16 autocast (the GPU's precision) on the CPU device: float32 maps near the fp32 ones."""
    from workbench.backbones.ynet_masks import YNetMasks

    g = _geometry("squash", data_config)
    masks = YNetMasks(ynet, g, data_config.mean, data_config.std)
    imgs = [decode_image(it.path, keep_gray=True) for it in items]
    fp32 = masks.maps(imgs, device=torch.device("cpu"))
    _close(fp32, _reference_maps(ynet, items, g, data_config))
    bf16 = masks.maps(imgs, device="cpu", precision="bf16")
    assert all(b.dtype == np.float32 and b.shape == f.shape for b, f in zip(bf16, fp32))
    assert max(float(np.abs(b - f).mean()) for b, f in zip(bf16, fp32)) < 0.05
    clf = YNetMasks(torch.nn.Conv2d(3, 2, 1), g, data_config.mean, data_config.std)
    with pytest.raises(ConfigError, match="classes only"):
        clf.maps(imgs[:1])

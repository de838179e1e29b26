"""Grad-CAM for the end-to-end baselines: wiring, known answers, layers, figures, saved maps."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402  (after the backend choice)
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from workbench.baselines.cam import (
    CamResult,
    cam_maps,
    default_target_layer,
    peak_in_box,
    peak_in_box_share,
    resolve_target_layer,
    upsample_to,
)
from workbench.report.gradcam import CamSet, cam_grid, cam_grid_figure, overlay, save_overlays, tile_caption

S = 64
RED_BOX = (8, 40, 20, 52)  # (x0, y0, x1, y1), exclusive: bottom-left square
GREEN_BOX = (40, 8, 56, 20)  # top-right square


def _name_of(model: nn.Module, layer: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is layer)


class TwoSquareNet(nn.Module):
    """Known answer: logit 1 = mean of a 'red' channel, logit 0 = mean of a 'green' one.

    A stride-2 conv makes the feature map coarser than the input, so the test also
    covers the package's upsampling back to the input size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1 / 9  # channel 0 averages red
            self.conv.weight[1, 1] = 1 / 9  # channel 1 averages green
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.conv(x)).mean(dim=(2, 3))
        return torch.stack([pooled[:, 1], pooled[:, 0]], dim=1)


def _two_square_image() -> torch.Tensor:
    x = torch.zeros(1, 3, S, S)
    x0, y0, x1, y1 = RED_BOX
    x[0, 0, y0:y1, x0:x1] = 1.0  # brighter: class 1 is predicted
    x0, y0, x1, y1 = GREEN_BOX
    x[0, 1, y0:y1, x0:x1] = 0.5
    return x


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core runner
    they lose ~10x to oversubscription; restore the setting for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=2).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, S, S)


# ----------------------------------------------------------------------------- maps
def test_maps_shape_range_and_probabilities(resnet, images):
    res = cam_maps(resnet, images, batch_size=2)
    assert isinstance(res, CamResult) and len(res) == 3
    assert res.maps.shape == (3, S, S) and res.maps.dtype == np.float32
    assert res.maps.min() >= 0.0 and res.maps.max() <= 1.0
    assert all(m.std() > 0 for m in res.maps), "maps should not be constant"
    with torch.no_grad():
        ref = torch.softmax(resnet(images), dim=-1).numpy()
    np.testing.assert_allclose(res.proba, ref, atol=1e-5)
    np.testing.assert_array_equal(res.pred, ref.argmax(1))
    np.testing.assert_array_equal(res.targets, res.pred)

    big = upsample_to(res.maps[0], (96, 128))  # original images are not square
    assert big.shape == (96, 128) and big.min() >= 0.0 and big.max() <= 1.0
    assert upsample_to(res.maps, (30, 20)).shape == (3, 30, 20)


def test_agrees_with_package(resnet, images):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = resnet.layer4[-1]
    targets = [0, 1, 1]
    with GradCAM(model=resnet, target_layers=[layer]) as cam:
        direct = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
        direct_pred = cam(input_tensor=images, targets=None)
    ours = cam_maps(resnet, images, targets=targets, batch_size=2)  # default layer, 2 batches
    np.testing.assert_allclose(ours.maps, direct, atol=1e-5)
    np.testing.assert_array_equal(ours.targets, targets)
    np.testing.assert_allclose(cam_maps(resnet, images, target_layer="layer4").maps, direct_pred, atol=1e-5)
    # a wrong class or a wrong layer would show: the wiring really matters
    assert not np.allclose(cam_maps(resnet, images, targets=[1, 0, 0]).maps, direct, atol=1e-3)
    assert not np.allclose(cam_maps(resnet, images, targets=targets, target_layer="layer3").maps, direct, atol=1e-3)


def test_known_answer_peaks_in_the_right_square():
    model, x = TwoSquareNet().eval(), _two_square_image()
    res = cam_maps(model, x)  # default layer: the ReLU after the last conv
    assert res.pred[0] == 1
    assert peak_in_box(res.maps[0], RED_BOX)
    assert not peak_in_box(res.maps[0], GREEN_BOX)
    other = cam_maps(model, x, targets=[0])
    assert peak_in_box(other.maps[0], GREEN_BOX) and not peak_in_box(other.maps[0], RED_BOX)

    # at the original resolution (here 2x, not square) with the box scaled alike
    big = upsample_to(res.maps[0], (2 * S, 3 * S))
    x0, y0, x1, y1 = RED_BOX
    assert peak_in_box(big, (3 * x0, 2 * y0, 3 * x1, 2 * y1))
    assert peak_in_box_share([res.maps[0], other.maps[0], res.maps[0]], [RED_BOX, RED_BOX, None]) == 0.5


def test_frozen_model_under_no_grad_is_left_as_found():
    model, x = TwoSquareNet().train(), _two_square_image()
    for p in model.parameters():
        p.requires_grad_(False)  # a linear-probe baseline: the backbone is frozen
    with torch.no_grad():
        res = cam_maps(model, x)
    assert peak_in_box(res.maps[0], RED_BOX)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_bad_targets_raise(resnet, images):
    with pytest.raises(ValueError, match="out of range"):
        cam_maps(resnet, images[:1], targets=[5])
    with pytest.raises(ValueError, match="targets for"):
        cam_maps(resnet, images, targets=[0])


# --------------------------------------------------------------------------- layers
@pytest.mark.parametrize(
    "name, expected",
    [
        ("alexnet", "features.11"),
        ("vgg16", "features.29"),
        ("resnet50", "layer4.2"),
        ("resnet34", "layer4.2"),
        ("inception_v3", "Mixed_7c"),
        ("densenet121", "features"),
        ("mobilenet_v3_large", "features.16"),
        ("efficientnet_b0", "features.8"),
        ("shufflenet_v2_x1_0", "conv5"),
    ],
)
def test_default_layer_torchvision_families(name, expected):
    kw = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    with torch.device("meta"):  # structure only: no memory, no weight init
        model = torchvision.models.get_model(name, weights=None, num_classes=2, **kw)
    assert _name_of(model, default_target_layer(model)) == expected


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2", "mobilenetv3_small_100"])
def test_default_layer_timm(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=2)
    # EfficientNet: bn2 after conv_head; MobileNetV3's conv_head comes after the pool
    expected = "blocks.5" if name.startswith("mobilenetv3") else "bn2"
    assert _name_of(model, default_target_layer(model)) == expected


def test_forward_small_families(images):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    models = {
        "mobilenet_v3_small": torchvision.models.mobilenet_v3_small(num_classes=2),
        "tf_efficientnet_lite0": timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2),
    }
    for name, model in models.items():
        res = cam_maps(model.eval(), images[:2])
        assert res.maps.shape == (2, S, S), name
        assert res.maps.min() >= 0.0 and res.maps.max() <= 1.0, name
        assert res.maps.std() > 0, name


def test_fallback_and_errors():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )
    assert default_target_layer(net) is net[4]  # past BN + in-place ReLU
    with pytest.raises(ValueError, match="no convolutional layer"):
        default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))

    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=2)
    for spec in ("layer4", "layer4.1", "layer4.-1", "layer4[-1]"):
        assert resolve_target_layer(model, spec) is (model.layer4 if spec == "layer4" else model.layer4[1])
    assert resolve_target_layer(model, model.layer3) is model.layer3
    with pytest.raises(ValueError, match="children are"):
        resolve_target_layer(model, "layer9")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_target_layer(model, nn.Conv2d(1, 1, 1))


# ------------------------------------------------------------------------- pictures
def test_overlay_shapes_and_bw_readability():
    rng = np.random.default_rng(0)
    gray = rng.random((40, 48))
    cam = rng.random((16, 16)).astype(np.float32)
    out = overlay(gray, cam)
    assert out.dtype == np.uint8 and out.shape == (40, 48, 3)
    assert overlay(np.stack([gray] * 3, -1), upsample_to(cam, (40, 48))).shape == (40, 48, 3)
    # on a black image, luminance must rise with the CAM value (reads in grayscale)
    ramp = overlay(np.zeros((1, 11)), np.linspace(0, 1, 11)[None], alpha=1.0).astype(float)
    luminance = ramp[0] @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance) > 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(gray * 255.0, cam)


def test_save_overlays(tmp_path):
    imgs = [np.full((20, 30), 0.5), np.zeros((10, 12, 3))]
    maps = [np.eye(8, dtype=np.float32), np.ones((4, 4), np.float32)]
    paths = save_overlays(imgs, maps, ["case 1/a.png", "b"], tmp_path / "cam")
    assert [p.name for p in paths] == ["case_1_a.png.png", "b.png"]
    assert all(p.parent == tmp_path / "cam" and p.stat().st_size > 0 for p in paths)
    assert matplotlib.image.imread(paths[0]).shape[:2] == (20, 30)
    with pytest.raises(ValueError, match="both map"):
        save_overlays(imgs, maps, ["a b", "a_b"], tmp_path)


def test_grid_figure(tmp_path):
    rng = np.random.default_rng(0)
    n = 5
    imgs = [rng.random((32, 40)) for _ in range(n)]
    maps = [rng.random((8, 8)).astype(np.float32) for _ in range(n)]
    proba = np.array([[0.13, 0.87]] * n)
    names = ["benign", "malignant"]
    assert tile_caption("malignant", proba[0], names) == "malignant · p(malignant)=0.87"
    assert tile_caption(0, proba[0], names, cls=0) == "benign · p(benign)=0.13"

    boxes = [(2, 3, 10, 12), None, None, (0, 0, 40, 32), None]
    fig = cam_grid(imgs, maps, labels=[1, 0, 1, 1, 0], proba=proba, class_names=names, boxes=boxes, ncols=3)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == n and len(fig.axes) == 6
    assert tiles[0].texts[0].get_text() == "malignant · p(malignant)=0.87"
    assert len(tiles[0].patches) == 1 and len(tiles[1].patches) == 0

    paths = cam_grid_figure(imgs, maps, [f"tile {i}" for i in range(n)], path=tmp_path / "fig" / "cam_grid", ncols=3)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert matplotlib.image.imread(paths[0]).ndim == 3


# --------------------------------------------------------------------- localisation
def test_peak_in_box():
    m = np.zeros((10, 10))
    m[4, 7] = 1.0  # row 4 (y), column 7 (x)
    assert peak_in_box(m, (7, 4, 8, 5))
    assert not peak_in_box(m, (0, 0, 7, 4))  # x1 / y1 exclusive
    assert not peak_in_box(np.zeros((10, 10)), (0, 0, 10, 10))  # constant: no peak
    with pytest.raises(ValueError, match="empty box"):
        peak_in_box(m, (3, 3, 3, 5))
    assert peak_in_box_share([m, m, m], [(7, 4, 8, 5), None, (0, 0, 1, 1)]) == 0.5
    assert np.isnan(peak_in_box_share([m], [None]))


# ------------------------------------------------------------------ saved maps (run -> report)
def test_cam_set_round_trips_and_lays_out_the_same_bytes(tmp_path):
    """What `workbench run` saves, `workbench report` reads back and draws identically."""
    rng = np.random.default_rng(0)
    eight_bit = rng.integers(0, 256, (20, 30, 3)).astype(np.float32) / np.float32(255)  # stored as uint8
    sixteen = rng.random((10, 12, 3)).astype(np.float32)  # not k / 255: stored as float32
    cams = CamSet(network="tf_efficientnet_lite0@ft-0123456789ab", classes=["benign", "malignant"],
                  ids=["a", "b"], labels=["malignant", "benign"], pred=np.array([1, 1]), targets=np.array([1, 1]),
                  proba=np.array([[0.2, 0.8], [0.4, 0.6]], np.float32), boxes=[(2, 3, 10, 12), None],
                  peak_in_box=[True, None], images=[eight_bit, sixteen],
                  maps=[rng.random((20, 30)).astype(np.float32), rng.random((10, 12)).astype(np.float32)])
    back = CamSet.load(cams.save(tmp_path / "cams.npz"))
    for name in ("network", "classes", "ids", "labels", "boxes", "peak_in_box"):
        assert getattr(back, name) == getattr(cams, name), name
    for name in ("pred", "targets", "proba", "images", "maps"):
        for x, y in zip(list(getattr(back, name)), list(getattr(cams, name))):
            np.testing.assert_array_equal(x, y)
            assert np.asarray(x).dtype == np.asarray(y).dtype
    assert back.peak_share("malignant") == 1.0 and np.isnan(back.peak_share("benign"))

    from workbench.report.gradcam import write_cam_folder

    first = write_cam_folder(cams, tmp_path / "one")
    again = write_cam_folder(back, tmp_path / "two")
    assert [p.name for p in first] == ["cam_grid.png", "cam_grid.pdf"]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["cam.csv", "cam_grid.pdf", "cam_grid.png", "overlays/a.png", "overlays/b.png"]
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    assert [p.name for p in again] == ["cam_grid.png", "cam_grid.pdf"]
    csv = (tmp_path / "one" / "cam.csv").read_text().splitlines()
    assert csv[0] == "id,label,pred,p_benign,p_malignant,target,peak_in_box,overlay"
    assert csv[1].endswith(",malignant,True,overlays/a.png") and csv[2].endswith(",malignant,,overlays/b.png")


def test_the_report_side_imports_no_torch():
    """`workbench report` reads files alone: the report package never loads torch."""
    import subprocess
    import sys

    code = ("import sys, workbench.report.build, workbench.report.gradcam; "
            "print(sorted(m for m in ('torch', 'pytorch_grad_cam', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

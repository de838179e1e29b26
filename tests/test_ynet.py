"""Y-Net model (segmentation-models-pytorch U-Net on a registry encoder) and its loss."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from workbench.backbones.loading import build_model
from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import resolve_weights
from workbench.backbones.ynet import build_ynet
from workbench.errors import ConfigError
from workbench.evaluation.segmentation import dice
from workbench.training.ynet_loss import YNetLoss

LITE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def ynet():
    return build_ynet(LITE, 2)


def test_the_encoder_starts_from_the_registry_weights(ynet):
    spec = get_backbone(LITE)
    ref = build_model(spec, resolve_weights(spec)).state_dict()  # the packaged ImageNet weights
    enc = ynet.unet.encoder.model.state_dict()
    assert torch.equal(enc["conv_stem.weight"], ref["conv_stem.weight"])
    assert torch.equal(enc["blocks.6.0.conv_pwl.weight"], ref["blocks.6.0.conv_pwl.weight"])
    assert ynet.spec.backbone == LITE and ynet.spec.weights_id == "packaged" and ynet.spec.num_classes == 2
    mask_logits, class_logits = ynet.eval()(torch.rand(2, 3, 64, 64))
    assert mask_logits.shape == (2, 1, 64, 64) and class_logits.shape == (2, 2)


def test_backbones_that_cannot_be_an_encoder_are_refused():
    with pytest.raises(ConfigError, match="'resnet50' \\(torchvision\\).*timm backbone"):
        build_ynet("resnet50", 2)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_ynet(LITE, 1)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(4, 1, 8, 8, generator=g)
    class_logits = torch.randn(4, 3, generator=g)
    masks = (torch.rand(4, 1, 8, 8, generator=g) > 0.6).to(torch.uint8)
    return mask_logits, class_logits, masks, torch.tensor([True, False, True, False]), torch.tensor([0, 2, 1, 2])


def test_the_loss_is_dice_plus_bce_on_masked_rows_plus_cross_entropy():
    import segmentation_models_pytorch as smp

    ml, cl, m, has, y = _batch()
    loss, parts = YNetLoss(seg_weight=0.5, cls_weight=2.0)(ml, cl, m, has, y)
    rows = has
    seg = (smp.losses.DiceLoss(mode="binary", from_logits=True)(ml[rows], m[rows].float())
           + F.binary_cross_entropy_with_logits(ml[rows], m[rows].float()))
    cls = F.cross_entropy(cl, y)
    assert loss.item() == pytest.approx(0.5 * seg.item() + 2.0 * cls.item(), rel=1e-6)
    assert parts.masked_rows == 2 and parts.segmentation == pytest.approx(seg.item(), rel=1e-6)
    # Rows without a mask never reach the segmentation term: change their masks and logits.
    ml2, m2 = ml.clone(), m.clone()
    ml2[~rows] = 5.0
    m2[~rows] = 1
    assert YNetLoss(0.5, 2.0)(ml2, cl, m2, has, y)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_no_masks_or_the_ablation_leave_classification_alone():
    ml, cl, m, has, y = _batch(1)
    ml.requires_grad_(True)
    cl.requires_grad_(True)
    cls = F.cross_entropy(cl, y).item()
    assert YNetLoss(seg_weight=0.0)(ml, cl, m, has, y)[0].item() == pytest.approx(cls, rel=1e-6)
    loss, parts = YNetLoss()(ml, cl, m, torch.zeros(4, dtype=torch.bool), y)
    assert loss.item() == pytest.approx(cls, rel=1e-6) and parts.segmentation == 0.0 and parts.masked_rows == 0
    loss.backward()  # still a graph through the mask logits' zero term
    with pytest.raises(ConfigError, match="both 0"):
        YNetLoss(0.0, 0.0)
    with pytest.raises(ConfigError, match="seg_weight"):
        YNetLoss(seg_weight=-1)


def _discs(n: int, size: int = 64, seed: int = 0):
    """Noisy images with a bright disc; class 1 = a large disc; masks = the discs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks, labels = [], [], []
    for i in range(n):
        big = i % 2
        r = 14 if big else 7
        cx, cy = (int(v) for v in torch.randint(r + 2, size - r - 2, (2,), generator=g))
        m = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).float()
        images.append((0.2 + 0.6 * m + 0.1 * torch.rand(size, size, generator=g)).expand(3, size, size))
        masks.append(m[None])
        labels.append(big)
    return torch.stack(images), torch.stack(masks).to(torch.uint8), torch.tensor(labels)


def test_a_short_fine_tune_lowers_both_losses_and_beats_trivial_masks():
    torch.manual_seed(0)
    model = build_ynet(LITE, 2).train()
    x, m, y = _discs(8)
    has = torch.ones(8, dtype=torch.bool)
    loss_fn = YNetLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        opt.zero_grad()
        loss, parts = loss_fn(*model(x), m, has, y)
        loss.backward()
        opt.step()
        history.append(parts)
    first, last = history[0], history[-1]
    assert last.segmentation < 0.6 * first.segmentation and last.classification < first.classification, history
    with torch.no_grad():
        pred = (model.eval()(x)[0] > 0).to(torch.uint8)
    learned = sum(dice(pred[i, 0], m[i, 0]) for i in range(8)) / 8
    empty = sum(dice(torch.zeros_like(m[i, 0]), m[i, 0]) for i in range(8)) / 8
    whole = sum(dice(torch.ones_like(m[i, 0]), m[i, 0]) for i in range(8)) / 8
    assert learned > max(empty, whole) + 0.2, (learned, empty, whole)

"""Training augmentation (StudyAugment), Cut&Remain and the fine-tuning dataset."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from workbench.data.augment import (
    BOX_MODES,
    AffineParams,
    BoxError,
    StudyAugment,
    TrainImageDataset,
    collate,
    cut_and_remain,
    remain_box,
)
from workbench.data.images import ImageDecodeError
from workbench.data.manifest import Item, Manifest
from workbench.data.preprocess import Geometry
from workbench.data.boxes import Box
from workbench.errors import ConfigError

CLASSES = ["benign", "malignant"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
W, H = 48, 40  # synthetic image size (width, height)


def _png(path: Path, seed: int, size: tuple[int, int] = (W, H), gray: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L" if gray else "RGB").save(path)
    return path


def _items(tmp_path: Path, boxes: list, *, sizes: bool = False) -> list[Item]:
    """One random PNG per box (None = no box); labels alternate."""
    out = []
    for i, box in enumerate(boxes):
        p = _png(tmp_path / f"img{i}.png", seed=i, gray=i % 2 == 0)
        out.append(
            Item(
                id=f"img{i}", path=p, label=CLASSES[i % 2], row=i + 2, box=box,
                width=W if sizes else None, height=H if sizes else None,
            )
        )
    return out


# ---- Cut&Remain ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", BOX_MODES)
def test_cut_and_remain_zero_outside_equal_inside(mode):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, H, W, generator=g) + 0.01  # no exact zeros inside
    box = (5, 7, 19, 30)  # 14 x 23
    out = cut_and_remain(img, box, mode, margin=0.25)
    x0, y0, x1, y1 = remain_box(box, W, H, mode, margin=0.25)
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert out.shape == img.shape and out.dtype == img.dtype
    assert torch.equal(out[:, inside], img[:, inside])
    assert (out[:, ~inside] == 0).all()
    assert (out != 0).sum() == 3 * (x1 - x0) * (y1 - y0)
    assert img.min() > 0  # input untouched


def test_remain_box_modes_documented_values():
    # tight: the box itself
    assert remain_box((5, 7, 19, 30), W, H, "tight") == (5, 7, 19, 30)
    # square: 14 x 23 -> 23 x 23; surplus 9 -> 4 left, 5 right
    assert remain_box((5, 7, 19, 30), W, H, "square") == (1, 7, 24, 30)
    # square, taller side even surplus: 20 x 10 -> 20 x 20, 5 above, 5 below
    assert remain_box((10, 10, 30, 20), W, H, "square") == (10, 5, 30, 25)
    # square near the border: clipped to the image (not shifted)
    assert remain_box((0, 0, 4, 20), W, H, "square") == (0, 0, 12, 20)
    # margin 0.1 of a 20 x 10 box: 2 px left/right, 1 px top/bottom
    assert remain_box((10, 10, 30, 20), W, H, "margin", margin=0.1) == (8, 9, 32, 21)
    # margin rounds outwards: 0.15 * 14 = 2.1 -> 3 px
    assert remain_box((5, 7, 19, 30), W, H, "margin", margin=0.15) == (2, 3, 22, 34)
    # margin clipped to the image
    assert remain_box((0, 0, W, H), W, H, "margin", margin=0.5) == (0, 0, W, H)


@pytest.mark.parametrize("mode", BOX_MODES)
def test_remain_box_stays_inside_and_contains_box(mode):
    rng = np.random.default_rng(1)
    for _ in range(300):
        x0, x1 = sorted(rng.choice(W + 1, 2, replace=False))
        y0, y1 = sorted(rng.choice(H + 1, 2, replace=False))
        bx = remain_box((x0, y0, x1, y1), W, H, mode, margin=float(rng.uniform(0, 1)))
        assert 0 <= bx[0] <= x0 < x1 <= bx[2] <= W
        assert 0 <= bx[1] <= y0 < y1 <= bx[3] <= H
        if mode == "square" and bx[0] > 0 and bx[1] > 0 and bx[2] < W and bx[3] < H:
            assert bx[2] - bx[0] == bx[3] - bx[1]


@pytest.mark.parametrize(
    "box, reason",
    [
        ((40, 30, 60, 45), "partly outside"),
        ((-1, 0, 10, 10), "partly outside"),
        ((50, 0, 60, 10), "wholly outside"),
        ((10, 10, 10, 20), "empty"),
        ((1.5, 0, 10, 10), "integer"),
    ],
)
def test_bad_box_raises_box_error_naming_box_and_size(box, reason):
    with pytest.raises(BoxError, match=reason) as info:
        remain_box(box, W, H)
    assert isinstance(info.value, ValueError)
    assert str(box[0]) in str(info.value) and f"{W}x{H}" in str(info.value)
    with pytest.raises(BoxError):
        cut_and_remain(torch.rand(3, H, W), box)
    with pytest.raises(ValueError, match="box mode"):
        remain_box((0, 0, 5, 5), W, H, "wide")


def test_box_error_pickles():
    e = BoxError((1, 2, 3, 4), 10, 10, "lies partly outside the image", item_id="a",
                 others=[BoxError((0, 0, 99, 9), 10, 10, "x", item_id="b")])
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.item_id == "a" and e2.other_ids == ("b",)


# ---- StudyAugment ----------------------------------------------------------------------


def test_study_augment_shape_randomness_and_reproducibility():
    img = torch.rand(3, H, W, generator=torch.Generator().manual_seed(3))
    aug = StudyAugment()
    torch.manual_seed(123)
    a = [aug(img) for _ in range(3)]
    torch.manual_seed(123)
    b = [aug(img) for _ in range(3)]
    assert all(x.shape == img.shape for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], img)
    assert not torch.equal(a[0], a[1])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aug(img, generator=g1), aug(img, generator=g2))


def test_study_augment_pure_flip_and_identity():
    img = torch.rand(1, H, W)
    flip = StudyAugment(degrees=0, flip_p=1.0, scale=(1, 1), translate=(0, 0))
    assert torch.equal(flip(img), torch.flip(img, dims=[-1]))
    assert torch.equal(StudyAugment.none()(img), img)
    assert torch.equal(StudyAugment(flip_p=0, degrees=0, scale=(1, 1), translate=(0, 0))(img), img)
    # an integer shift with nothing else moves pixels (up to float error), filling with 0
    p = AffineParams(angle=0.0, translate=(3, -2), scale=1.0, flip=False)
    out = StudyAugment().apply(img, p)
    assert torch.allclose(out[..., :-2, 3:], img[..., 2:, :-3], atol=1e-5)
    assert (out[..., :3] == 0).all() and (out[..., -2:, :] == 0).all()


def test_study_augment_parameter_ranges():
    aug = StudyAugment()
    g = torch.Generator().manual_seed(0)
    ps = [aug.sample_params(200, 100, generator=g) for _ in range(2000)]
    angles = np.array([p.angle for p in ps])
    scales = np.array([p.scale for p in ps])
    dx = np.array([p.translate[0] for p in ps])
    dy = np.array([p.translate[1] for p in ps])
    flips = np.array([p.flip for p in ps])
    assert angles.min() >= -10 and angles.max() <= 10 and angles.min() < -9 and angles.max() > 9
    assert scales.min() >= 0.95 and scales.max() <= 1.05 and np.ptp(scales) > 0.09
    assert np.abs(dx).max() <= 20 and np.abs(dx).max() >= 19  # 10 % of 200
    assert np.abs(dy).max() <= 10 and np.abs(dy).max() >= 9  # 10 % of 100
    assert 0.45 < flips.mean() < 0.55
    assert all(p.is_identity for p in [StudyAugment.none().sample_params(9, 9)])
    with pytest.raises(ValueError):
        StudyAugment(flip_p=1.5)
    with pytest.raises(ValueError):
        StudyAugment(scale=(1.1, 0.9))


# ---- dataset and collate ---------------------------------------------------------------


def test_dataset_missing_boxes_collate_and_masked_rows(tmp_path):
    boxes = [(2, 3, 20, 25), None, (10, 5, 40, 35), None, (0, 0, W, H)]
    ds = TrainImageDataset(
        _items(tmp_path, boxes), CLASSES, Geometry(32), (0, 0, 0), (1, 1, 1),
        augment=StudyAugment(), cut_remain=True,
    )
    assert ds.missing_box_ids == ["img1", "img3"] and ds.n_masked == 3
    assert "2 without box" in repr(ds)
    torch.manual_seed(0)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["images"].shape == (5 + 3, 3, 32, 32)
    assert batch["labels"].tolist() == [0, 1, 0, 1, 0] + [0, 0, 0]
    assert batch["indices"].tolist() == [0, 1, 2, 3, 4, 0, 2, 4]
    assert batch["is_masked"].tolist() == [False] * 5 + [True] * 3
    # independent augmentation of the full-box copy: same content, different draw
    assert not torch.equal(batch["images"][4], batch["images"][7])
    # through a DataLoader
    loader = DataLoader(ds, batch_size=2, collate_fn=ds.collate)
    sizes = [len(b["labels"]) for b in loader]
    assert sizes == [2 + 1, 2 + 1, 1 + 1]


def test_masked_copy_before_geometry_without_augmentation(tmp_path):
    # geometry = identity size squash of a 48x40 image to 48x48 changes the grid, so
    # use a square image to compare exactly with cut_and_remain on the decoded image
    p = _png(tmp_path / "sq.png", seed=7, size=(32, 32), gray=False)
    item = Item(id="sq", path=p, label="benign", row=2, box=(4, 6, 20, 18))
    ds = TrainImageDataset([item], CLASSES, Geometry(32), (0, 0, 0), (1, 1, 1), cut_remain=True)
    s = ds[0]
    from workbench.data.images import decode_image

    img = decode_image(p)
    assert torch.allclose(s["image"], img, atol=1e-6)
    assert torch.allclose(s["masked"], cut_and_remain(img, (4, 6, 20, 18)), atol=1e-6)


def test_dataset_box_outside_image_names_item(tmp_path):
    items = _items(tmp_path, [(2, 3, 20, 25), (30, 20, W + 5, 30), None, (50, 0, 60, 5)])
    with pytest.raises(BoxError, match="img1") as info:
        TrainImageDataset(items, CLASSES, 16, MEAN, STD, cut_remain=True)
    assert info.value.item_id == "img1" and info.value.other_ids == ("img3",)
    assert "img3" in str(info.value) and f"{W}x{H}" in str(info.value)
    # sizes from the items, when the manifest was validated, are used as well
    items_sz = _items(tmp_path, [(30, 20, W + 1, 30)], sizes=True)
    with pytest.raises(BoxError, match="img0"):
        TrainImageDataset(items_sz, CLASSES, 16, MEAN, STD, cut_remain=True)
    # without Cut&Remain boxes are not used, hence not checked
    assert len(TrainImageDataset(items, CLASSES, 16, MEAN, STD)) == 4


def test_dataset_eval_deterministic_and_normalised(tmp_path):
    items = _items(tmp_path, [(2, 3, 20, 25), None])
    raw = TrainImageDataset(items, CLASSES, Geometry(24), (0, 0, 0), (1, 1, 1))
    ds = TrainImageDataset(items, CLASSES, Geometry(24), MEAN, STD)
    a, b = ds[0], ds[0]
    assert torch.equal(a["image"], b["image"]) and a["masked"] is None
    assert a["image"].shape == (3, 24, 24) and a["label"] == 0 and a["index"] == 0
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(a["image"], (raw[0]["image"] - mean) / std, atol=1e-6)
    assert torch.equal(raw[0]["image"], Geometry(24)(_decode(items[0].path)))
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 24, 24) and not batch["is_masked"].any()


def _decode(path):
    from workbench.data.images import decode_image

    return decode_image(path)


def test_dataset_errors(tmp_path):
    items = _items(tmp_path, [None])
    with pytest.raises(ValueError, match="img0"):
        TrainImageDataset(items, ["a", "b"], 16, MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        TrainImageDataset(items, CLASSES, 16, MEAN, (1, 0, 1))
    with pytest.raises(ValueError, match="box_mode"):
        TrainImageDataset(items, CLASSES, 16, MEAN, STD, box_mode="wide")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    ds = TrainImageDataset([Item("bad", broken, "benign", 2)], CLASSES, 16, MEAN, STD)
    with pytest.raises(ImageDecodeError, match="broken.png"):
        ds[0]


@pytest.mark.slow
def test_busi_cut_and_remain(busi_dir):
    m = Manifest.load(busi_dir / "labels.csv")
    boxed = [it for it in m.items if it.box is not None][:3]
    normal = [it for it in m.items if it.box is None][:1]
    ds = TrainImageDataset(
        boxed + normal, m.classes, Geometry(64), MEAN, STD,
        augment=StudyAugment(), cut_remain=True, box_mode="square",
    )
    assert ds.missing_box_ids == [normal[0].id]
    torch.manual_seed(0)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["images"].shape == (4 + 3, 3, 64, 64)
    assert batch["is_masked"].sum() == 3 and torch.isfinite(batch["images"]).all()
    img = _decode(boxed[0].path)
    out = cut_and_remain(img, boxed[0].box, "square")
    x0, y0, x1, y1 = remain_box(boxed[0].box, img.shape[2], img.shape[1], "square")
    assert torch.equal(out[:, y0:y1, x0:x1], img[:, y0:y1, x0:x1])
    out[:, y0:y1, x0:x1] = 0
    assert not out.any()


def _disc_image(size: int = 64, centre: tuple[int, int] = (40, 24), radius: int = 8):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    box = torch.tensor([[centre[0] - radius, centre[1] - radius, centre[0] + radius + 1, centre[1] + radius + 1]],
                       dtype=torch.float32)
    return disc.float().expand(3, size, size).clone(), disc.to(torch.uint8), box


@pytest.mark.parametrize("seed", range(12))
def test_joint_augmentation_keeps_image_mask_and_box_aligned(seed):
    """A synthetic image whose lesion is a known disc: after any draw, the warped mask
    covers the warped disc, stays binary, and the warped box bounds the mask; the image
    itself is exactly what the image-only path gives."""
    img, mask, box = _disc_image()
    aug = StudyAugment(degrees=30, translate=(0.2, 0.2), scale=(0.8, 1.2), flip_p=0.5)
    params = aug.sample_params(64, 64, generator=torch.Generator().manual_seed(seed))
    out, m, b = aug.apply_joint(img, params, mask=mask, boxes=box)
    assert torch.equal(out, aug.apply(img, params))
    assert set(torch.unique(m).tolist()) <= {0, 1} and m.shape == mask.shape
    bright = out[0] > 0.5
    inter, union = (bright & (m > 0)).sum().item(), (bright | (m > 0)).sum().item()
    assert union > 0 and inter / union > 0.9, (params, inter, union)
    ys, xs = torch.nonzero(m, as_tuple=True)
    x0, y0, x1, y1 = b[0].tolist()
    assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1, (params, b)
    assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64


def test_joint_augmentation_flip_moves_the_box_by_hand():
    img, mask, box = _disc_image()
    aug = StudyAugment()
    _, m, b = aug.apply_joint(img, AffineParams(0.0, (0, 0), 1.0, True), mask=mask, boxes=box)
    assert torch.equal(m, torch.flip(mask, dims=[-1]))
    assert b.tolist() == [[64 - 49.0, 16.0, 64 - 32.0, 33.0]]  # x -> W - x, sides swapped
    only, none_m, none_b = aug.apply_joint(img, AffineParams(0.0, (0, 0), 1.0, False))
    assert torch.equal(only, img) and none_m is None and none_b is None


# ---- lesion masks through the training dataset ---------------------------------------


def _disc_files(tmp_path: Path, k: int, size: tuple[int, int] = (60, 50)) -> Item:
    """An image whose lesion is a bright disc on a dark background, and its mask file."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - 20 - 3 * k) ** 2 + (yy - 22) ** 2 <= 9 ** 2
    img = np.where(disc, 230, 20).astype(np.uint8)
    Image.fromarray(img, "L").save(tmp_path / f"disc{k}.png")
    Image.fromarray((disc * 255).astype(np.uint8), "L").save(tmp_path / f"disc{k}_mask.png")
    return Item(id=f"disc{k}", path=tmp_path / f"disc{k}.png", label=CLASSES[k % 2], row=k + 2,
                mask_path=tmp_path / f"disc{k}_mask.png", box=Box(11 + 3 * k, 13, 30 + 3 * k, 32))


def test_the_dataset_warps_each_mask_with_its_image(tmp_path):
    items = [_disc_files(tmp_path, k) for k in range(4)]
    aug = StudyAugment(degrees=20, translate=(0.15, 0.15), scale=(0.85, 1.15))
    ds = TrainImageDataset(items, CLASSES, 32, MEAN, STD, augment=aug, masks=True, cut_remain=True)
    torch.manual_seed(3)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["masks"].shape == (8, 1, 32, 32) and batch["masks"].dtype == torch.uint8
    assert batch["has_mask"].all() and set(torch.unique(batch["masks"]).tolist()) <= {0, 1}
    x = batch["images"] * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    for row in range(8):  # the image rows and their Cut&Remain copies, each its own draw
        bright, m = x[row, 0] > 0.5, batch["masks"][row, 0] > 0
        assert (bright & m).sum() / (bright | m).sum() > 0.8, row


def test_masks_leave_the_images_as_they_were_and_zero_where_there_is_none(tmp_path):
    items = [_disc_files(tmp_path, k) for k in range(2)]
    items.append(Item(id="plain", path=_png(tmp_path / "plain.png", seed=9), label="benign", row=9))
    aug = StudyAugment()
    with_masks = TrainImageDataset(items, CLASSES, 24, MEAN, STD, augment=aug, masks=True)
    without = TrainImageDataset(items, CLASSES, 24, MEAN, STD, augment=aug)
    for i in range(3):
        torch.manual_seed(i)
        a = with_masks[i]
        torch.manual_seed(i)
        assert torch.equal(a["image"], without[i]["image"])  # the same draw, the same numbers
    plain = with_masks[2]
    assert plain["has_mask"] is False and not plain["mask"].any()
    assert "mask" not in without[0]
    # No augmentation: the mask is the manual mask resized by the geometry (nearest).
    still = TrainImageDataset(items[:1], CLASSES, 24, MEAN, STD, masks=True)[0]
    manual = torch.from_numpy(np.array(Image.open(items[0].mask_path)) > 127).float()[None]
    from torchvision.transforms.v2 import functional as TF
    expected = (TF.resize(manual, [24, 24], interpolation=TF.InterpolationMode.NEAREST) > 0.5).to(torch.uint8)
    assert torch.equal(still["mask"], expected)


def test_a_mask_of_another_size_is_refused_naming_it(tmp_path):
    item = _disc_files(tmp_path, 0)
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(item.mask_path)
    ds = TrainImageDataset([item], CLASSES, 24, MEAN, STD, masks=True)
    with pytest.raises(ConfigError, match=r"disc0_mask\.png.*'disc0'.*10x10.*60x50"):
        ds[0]

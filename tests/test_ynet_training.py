"""Y-Net fine-tuning through the workbench's machinery: config, training, resume, store,
masks mapped back to the image, predicted boxes and the Y-Net baselines' records.

The slow tests train real EfficientNet-Lite0 Y-Nets at 64-96 px on a BUSI slice (a few
seconds each on 2 CPU cores).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import busi_two_class_slice, fine_tune_killed_at_epoch_2, history_numbers
from workbench.core.hashing import stable_hash
from workbench.data.preprocess import Geometry
from workbench.errors import ConfigError
from workbench.training.config import FineTuneConfig

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"
LITE = "tf_efficientnet_lite0"
CLASSES = ["benign", "malignant"]
YFAST = FineTuneConfig(model="ynet", epochs=4, batch_size=16, image_size=96, optimizer="adam", lr=1e-3,
                       patience=0, seed=0)


# ---- config ------------------------------------------------------------------------


def test_a_classifier_config_hashes_as_before_y_nets_existed():
    """Every classifier trained before the Y-Net fields existed keeps its id: the dict
    hashed into it has exactly the old keys, and the default config's hash is pinned."""
    d = FineTuneConfig().to_dict()
    assert not {"model", "seg_weight", "cls_weight"} & set(d)
    assert stable_hash(d, length=12) == "abeeb73b6e6b"  # the value before Y-Nets existed
    y = YFAST.to_dict()
    assert y["model"] == "ynet" and y["seg_weight"] == 1.0 and y["cls_weight"] == 1.0
    # 0 and 0.0 are one setting, hashed alike.
    assert FineTuneConfig(model="ynet", seg_weight=0).to_dict() == FineTuneConfig(model="ynet",
                                                                                   seg_weight=0.0).to_dict()
    assert FineTuneConfig.from_dict(y) == YFAST


@pytest.mark.parametrize("kw, match", [
    ({"model": "unet"}, "model must be one of"),
    ({"seg_weight": 0.5}, "Y-Net settings"),
    ({"model": "ynet", "seg_weight": -1.0}, "numbers >= 0"),
    ({"model": "ynet", "seg_weight": True}, "numbers >= 0"),
    ({"model": "ynet", "cls_weight": 0.0}, "classification branch untrained"),
    ({"model": "ynet", "freeze": "features"}, "trained whole"),
    ({"monitor": "auc+dice"}, "watches a Y-Net's validation Dice"),
    ({"monitor": "dice"}, "monitor must be one of"),
])
def test_bad_y_net_settings_are_refused_by_name(kw, match):
    with pytest.raises(ConfigError, match=match):
        FineTuneConfig(**kw)


def test_the_registered_y_net_baselines_and_their_ablation():
    from workbench.baselines.configs import get_baseline

    full, ablation = get_baseline("ynet-lite0"), get_baseline("ynet-lite0-noseg")
    assert full.backbone == ablation.backbone == LITE
    assert full.config.is_ynet and full.config.seg_weight == 1.0
    assert ablation.config.is_ynet and ablation.config.seg_weight == 0.0
    # The ablation differs in its segmentation loss only.
    assert ablation.config.replace(seg_weight=1.0) == full.config and ablation.grid == full.grid


# ---- masks back onto the image, boxes from masks ------------------------------------


def _disc(h: int, w: int, cx: int, cy: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).float()[None]


@pytest.mark.parametrize("resize", ["squash", "crop", "letterbox"])
def test_to_frame_inverts_each_geometry(resize):
    """A disc mask taken to the network's square and back lands on itself (Dice > 0.95)."""
    from workbench.evaluation.segmentation import dice

    h, w = 90, 130
    mask = _disc(h, w, 70, 45, 20)  # central, so a centre crop keeps it
    g = Geometry(64, resize)
    small = g.unclamped(mask)
    back = g.to_frame(small, h, w)
    assert back.shape == (1, h, w)
    assert dice(back[0].numpy() > 0.5, mask[0].numpy() > 0.5) > 0.95
    with pytest.raises(ValueError, match="expected a \\(C, 64, 64\\) map"):
        g.to_frame(torch.zeros(1, 32, 32), h, w)


def test_crop_leaves_the_cut_off_border_empty():
    g = Geometry(64, "crop", crop_pct=0.5)  # the crop keeps the central half
    back = g.to_frame(torch.ones(1, 64, 64), 100, 100)
    assert back[0, 50, 50] == 1 and back[0, 2, 2] == 0 and back[0, 97, 50] == 0


def test_mask_box_is_the_largest_region_and_none_when_empty():
    from workbench.training.masks import mask_box

    prob = np.zeros((40, 60), np.float32)
    prob[10:20, 5:25] = 0.9  # the lesion: 200 pixels
    prob[30:32, 50:52] = 0.8  # a speck: must not stretch the box
    assert tuple(mask_box(prob)) == (5, 10, 25, 20)
    assert mask_box(prob, threshold=0.95) is None
    assert mask_box(np.zeros((4, 4))) is None
    prob[0, 0] = 0.51  # one pixel above 0.5 is a box of one pixel
    assert tuple(mask_box(np.where(np.arange(16).reshape(4, 4) == 5, 0.6, 0.0))) == (1, 1, 2, 2)
    with pytest.raises(ConfigError, match="2-D"):
        mask_box(np.zeros((2, 3, 3)))


# ---- training on BUSI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_slice():
    """20 + 20 training and 10 + 10 test images of BUSI (benign, malignant; all with masks)."""
    return busi_two_class_slice(20, 10)


def _train_val(m):
    from workbench.training.finetune import validation_split

    return validation_split([it for it in m if it.split == "train"], 0.2, 0)


@pytest.mark.slow
def test_a_short_y_net_fine_tune_lowers_both_losses_and_beats_trivial_masks(busi_slice, tmp_path):
    from workbench.evaluation.segmentation import dice
    from workbench.training.finetune import fine_tune, load_finetuned, predict_proba
    from workbench.training.masks import manual_mask, predict_masks, score_masks

    train, val = _train_val(busi_slice)
    ft = fine_tune(LITE, train, val, CLASSES, YFAST, root=tmp_path, progress=False)
    assert ft.is_ynet and type(ft.model).__name__ == "YNet"
    first, last = ft.history[0], ft.history[-1]
    assert last["train_seg_loss"] < first["train_seg_loss"], ft.history
    assert last["train_cls_loss"] < first["train_cls_loss"], ft.history
    assert all(np.isfinite(r["val_dice"]) and r["seg_rows"] == len(train) for r in ft.history)
    test = [it for it in busi_slice if it.split == "test"]
    scores = score_masks(ft.model, test, ft.geometry, ft.data_config)
    truths = [manual_mask(it) for it in test]
    whole = np.mean([dice(np.ones_like(t), t) for t in truths])
    assert scores["dice"].mean() > whole > 0.0, (scores["dice"].mean(), whole)  # and an empty mask scores 0
    maps = predict_masks(ft.model, test[:2], ft.geometry, ft.data_config)
    assert [m.shape for m in maps] == [(it.height, it.width) for it in test[:2]]
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in maps)
    # The store gives it back as a Y-Net, by id, with the same numbers.
    again = load_finetuned(LITE, ft.weights_id, tmp_path)
    assert again.is_ynet and again.geometry == ft.geometry
    p1 = predict_proba(ft.model, test, CLASSES, ft.geometry, ft.data_config)
    p2 = predict_proba(again.model, test, CLASSES, again.geometry, again.data_config)
    np.testing.assert_array_equal(p1, p2)
    # A Y-Net's weights are not a backbone to tap.
    from workbench.backbones.finetuned import using_root
    from workbench.backbones.loading import load_backbone

    with using_root(tmp_path), pytest.raises(ConfigError, match="is a Y-Net"):
        load_backbone(LITE, ft.weights_id)


@pytest.mark.slow
def test_a_classifier_has_no_masks(busi_slice, tmp_path):
    from workbench.training.finetune import fine_tune
    from workbench.training.masks import predict_masks

    train, val = _train_val(busi_slice)
    cfg = FineTuneConfig(epochs=1, batch_size=16, image_size=64, optimizer="adam", patience=0)
    ft = fine_tune(LITE, train[:8], val, CLASSES, cfg, root=tmp_path, progress=False)
    assert not ft.is_ynet
    with pytest.raises(ConfigError, match="classes only"):
        predict_masks(ft.model, train[:2], ft.geometry, ft.data_config)


def test_the_auc_plus_dice_monitor_and_its_fallbacks():
    """What early stopping maximises per monitor, and what a validation row that cannot
    support the monitor falls back to (the same every epoch: the validation split is fixed)."""
    from workbench.training.finetune import _monitor_for, _score

    row = {"val_auc": 0.8, "val_dice": 0.5, "val_loss": 0.4}
    assert _score(row, "auc+dice") == [1.3, -0.4]
    assert _score(row, "auc") == [0.8, -0.4] and _score(row, "loss") == [-0.4]
    both = YFAST.replace(monitor="auc+dice")
    assert both.to_dict() != YFAST.to_dict()  # a different network, so a different id
    assert _monitor_for(both, row) == "auc+dice"
    assert _monitor_for(both.replace(seg_weight=0.0), row) == "auc"  # the ablation trains no decoder
    assert _monitor_for(both, {**row, "val_dice": float("nan")}) == "auc"  # no validation mask
    assert _monitor_for(both, {**row, "val_auc": float("nan")}) == "loss"  # one class in validation
    assert _monitor_for(YFAST, row) == "auc"


@pytest.mark.slow
def test_the_auc_plus_dice_monitor_keeps_the_epoch_best_on_both(busi_slice, tmp_path):
    from workbench.training.finetune import fine_tune

    train, val = _train_val(busi_slice)
    cfg = YFAST.replace(epochs=3, image_size=64, monitor="auc+dice")
    ft = fine_tune(LITE, train, val, CLASSES, cfg, root=tmp_path, progress=False)
    sums = [r["val_auc"] + r["val_dice"] for r in ft.history]
    assert all(np.isfinite(sums)) and ft.best_epoch == 1 + int(np.argmax(sums)), ft.history
    meta = json.loads((tmp_path / LITE / ft.weights_id / "meta.json").read_text())
    assert meta["monitor"] == "auc+dice" and meta["best_epoch"] == ft.best_epoch


@pytest.mark.slow
def test_y_net_resume_after_kill_equals_uninterrupted_run(busi_slice, tmp_path):
    from workbench.training.finetune import fine_tune

    train, val = _train_val(busi_slice)
    cfg = YFAST.replace(epochs=3, image_size=64)
    whole = fine_tune(LITE, train, val, CLASSES, cfg, root=tmp_path / "whole", progress=False)
    fine_tune_killed_at_epoch_2("test_ynet_training", "YFAST.replace(epochs=3, image_size=64)", tmp_path / "killed", BUSI / "labels.csv", busi_slice.ids)
    folder = tmp_path / "killed" / LITE / whole.weights_id
    assert (folder / "checkpoint.pt").is_file() and not (folder / "weights.pth").exists()
    resumed = fine_tune(LITE, train, val, CLASSES, cfg, root=tmp_path / "killed", progress=False)
    assert resumed.trained_now

    assert history_numbers(resumed.history) == history_numbers(whole.history)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_y_net_baseline_records_rank_with_the_others_on_the_same_images(busi_slice, tmp_path, monkeypatch):
    from workbench.baselines.run import run_baselines
    from workbench.evaluation.protocol import Protocol
    from workbench.evaluation.store import ResultStore
    from workbench.evaluation.summary import summarize

    monkeypatch.setenv("WORKBENCH_FINETUNED", str(tmp_path / "ft"))
    kw = dict(protocol=Protocol(cv=2, inner_cv=2, seed=0), overrides={"epochs": 1, "image_size": 64},
              progress=False)
    df = run_baselines(busi_slice, ["lite0", "ynet-lite0", "ynet-lite0-noseg"], tmp_path / "run", **kw)
    assert len(df) == 9 and (df.kind == "baseline").all()
    store = ResultStore(tmp_path / "run")
    recs = {(r["baseline"], r["fold"]): r for r in store.current_records()}
    # Every network scores the same evaluation images of a fold: paired tests compare like with like.
    for fold in ("0", "1", "test"):
        ids = [store.predictions(recs[(b, fold)])["ids"].tolist() for b in ("lite0", "ynet-lite0",
                                                                           "ynet-lite0-noseg")]
        assert ids[0] == ids[1] == ids[2]
    test = recs[("ynet-lite0", "test")]
    preds = store.predictions(test)
    assert preds["dice"].shape == preds["iou"].shape == (20,) and preds["mask_box"].shape == (20, 4)
    assert np.isfinite(preds["dice"]).all()  # every benign/malignant image of BUSI has a mask
    assert preds["lesion"].all()  # ... and a lesion in it
    seg = test["segmentation"]
    assert seg["n"] == 20 and seg["median_dice"] == pytest.approx(float(np.median(preds["dice"])))
    assert seg["blank_n"] == 0 and seg["blank_kept_share"] is None
    assert "segmentation" not in recs[("lite0", "test")]
    meta = json.loads((tmp_path / "ft" / LITE / test["weights_id"] / "meta.json").read_text())
    assert meta["config"]["model"] == "ynet" and meta["config"]["seg_weight"] == 1.0
    ablation = json.loads((tmp_path / "ft" / LITE / recs[("ynet-lite0-noseg", "test")]["weights_id"]
                           / "meta.json").read_text())
    assert ablation["config"]["seg_weight"] == 0.0
    ranked = summarize(store.frame(), "auc")
    assert {"CNN lite0", "CNN ynet-lite0", "CNN ynet-lite0-noseg"} <= set(ranked.candidate)
    # A rerun trains and scores nothing again.
    again = run_baselines(busi_slice, ["lite0", "ynet-lite0", "ynet-lite0-noseg"], tmp_path / "run", **kw)
    assert again.equals(df)


def test_a_nested_set_of_y_nets_is_refused(busi_slice):
    """A nested set exists for clean feature blocks; a Y-Net gives none."""
    from workbench.evaluation.protocol import Protocol
    from workbench.training.nested import fine_tune_nested

    with pytest.raises(ConfigError, match="Y-Net.*baseline"):
        fine_tune_nested(LITE, busi_slice, YFAST, protocol=Protocol(cv=2, inner_cv=2))


@pytest.mark.slow
def test_an_empty_manual_mask_is_no_lesion_scored_as_left_blank_or_not(tmp_path):
    """A normal image's empty mask file: its Dice is 1 when nothing is predicted, else 0,
    and it is flagged ``lesion=False`` so the Dice figures leave it out."""
    from PIL import Image

    from workbench.data.manifest import Item
    from workbench.training.masks import score_masks
    from workbench.backbones.ynet import build_ynet
    from workbench.backbones.registry import get_backbone

    img = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    Image.fromarray(img, "L").save(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 50), np.uint8), "L").save(tmp_path / "a_mask.png")
    lesion = np.zeros((40, 50), np.uint8)
    lesion[10:20, 10:30] = 255
    Image.fromarray(lesion, "L").save(tmp_path / "b_mask.png")
    items = [Item("a", tmp_path / "a.png", "normal", 2, mask_path=tmp_path / "a_mask.png"),
             Item("b", tmp_path / "a.png", "benign", 3, mask_path=tmp_path / "b_mask.png"),
             Item("c", tmp_path / "a.png", "benign", 4)]
    model = build_ynet(LITE, 2).eval()
    dc = get_backbone(LITE).data_config()
    for bias, blank_dice in ((-20.0, 1.0), (20.0, 0.0)):  # nothing predicted, then everything
        with torch.no_grad():
            model.unet.segmentation_head[0].weight.zero_()
            model.unet.segmentation_head[0].bias.fill_(bias)
        s = score_masks(model, items, Geometry(64), dc).set_index("id")
        assert list(s.index) == ["a", "b"]  # c has no mask file: no stated truth
        assert s.loc["a", "lesion"] == False and s.loc["b", "lesion"] == True  # noqa: E712
        assert s.loc["a", "dice"] == blank_dice
        assert s.loc["b", "dice"] == pytest.approx(0.0 if bias < 0 else 2 * 200 / (200 + 2000))


@pytest.mark.slow
def test_grad_cam_of_a_y_net_explains_its_class_branch(busi_slice, tmp_path):
    """`workbench run`'s Grad-CAM stage explains every baseline's test network, a Y-Net's too:
    through its classification branch (the encoder's deepest features), at each image's size."""
    from workbench.backbones.finetuned import using_root
    from workbench.baselines.explain import explain
    from workbench.training.finetune import fine_tune

    train, val = _train_val(busi_slice)
    ft = fine_tune(LITE, train[:12], val, CLASSES, YFAST.replace(epochs=1, image_size=64), root=tmp_path,
                   progress=False)
    items = [it for it in busi_slice if it.split == "test"][:3]
    with using_root(tmp_path):
        rep = explain(items, ft.label)
    assert [m.shape for m in rep.maps] == [(it.height, it.width) for it in items]
    assert all(np.isfinite(m).all() and m.max() > 0 for m in rep.maps)

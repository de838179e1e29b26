"""Class imbalance in fine-tuning: balanced class weights by default, a warning for a
validation split with few images of a class, early stopping that a constant
("all malignant") predictor cannot win.

A tiny random timm network on 32-px synthetic images: about a second per fine-tune.
"""
from __future__ import annotations

import csv
import json
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import resolve_weights
from workbench.training import finetune as ft_mod
from workbench.training.finetune import (
    FineTuneConfig,
    SmallValidationWarning,
    _better,
    _score,
    _val_metrics,
    fine_tune,
    finetune_id,
)
from workbench.data.manifest import Item, Manifest

TINY = "timm/test_efficientnet"
CLASSES = ["benign", "malignant"]
CFG = FineTuneConfig(epochs=2, batch_size=8, image_size=32, optimizer="adam", lr=1e-2, augment=False, patience=0)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> tuple[list[Item], list[Item]]:
    """6 benign + 30 malignant 32-px images; validation: 3 benign + 10 malignant."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(["benign"] * 6 + ["malignant"] * 30):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"im{i:03d}.png")
        rows.append({"id": f"im{i:03d}", "path": f"im{i:03d}.png", "label": label, "split": "train"})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    items = list(Manifest.load(root / "labels.csv").validate(progress=False))
    val = [it for it in items if it.label == "benign"][:3] + [it for it in items if it.label == "malignant"][:10]
    ids = {it.id for it in val}
    return [it for it in items if it.id not in ids], val


def test_config_imports_no_torch_and_matches_the_freeze_modes():
    """The CLI parser reads FineTuneConfig's defaults: its module must not pull in torch."""
    import subprocess
    import sys

    from workbench.backbones.adapt import FREEZE_MODES
    from workbench.training import config

    assert config.FREEZE_MODES == FREEZE_MODES
    assert ft_mod.FineTuneConfig is config.FineTuneConfig
    code = ("import sys, workbench.training.config; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_settings_are_config_errors_naming_the_value():
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown fine-tune settings.*lerning_rate"):
        FineTuneConfig.from_dict({"lerning_rate": 0.1})
    with pytest.raises(ConfigError, match="freeze must be"):
        FineTuneConfig(freeze="all")


def test_class_weight_setting_defaults_to_balanced_and_reads_old_spellings():
    assert FineTuneConfig().class_weight == "balanced"
    assert FineTuneConfig(class_weight=None).class_weight == "none"  # `--set class_weight=none`
    assert FineTuneConfig(class_weight=True).class_weight == "balanced"
    # The bool `class_weights` of earlier configs and meta.json files still loads.
    assert FineTuneConfig.from_dict({"class_weights": False}).class_weight == "none"
    assert FineTuneConfig.from_dict({"class_weights": True}).class_weight == "balanced"
    with pytest.raises(ValueError, match="class_weight must be one of .*'inverse'"):
        FineTuneConfig(class_weight="inverse")
    with pytest.raises(ValueError, match="class_weight only"):
        FineTuneConfig.from_dict({"class_weights": True, "class_weight": "none"})


def test_balanced_weights_reach_the_loss_and_the_metadata(imbalanced, tmp_path, monkeypatch):
    train, val = imbalanced
    seen: list[torch.Tensor | None] = []
    real = torch.nn.CrossEntropyLoss

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weight"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ft_mod.nn, "CrossEntropyLoss", spy)
    with pytest.warns(SmallValidationWarning):
        ft = fine_tune(TINY, train, val, CLASSES, CFG, weights="random", root=tmp_path, progress=False, device="cpu")
    n_b, n_m = 3, 20  # training rows: 6 - 3 benign, 30 - 10 malignant
    expected = [23 / (2 * n_b), 23 / (2 * n_m)]
    assert seen[-1] is not None
    np.testing.assert_allclose(seen[-1].cpu().numpy(), expected, rtol=1e-6)
    meta = json.loads((ft.folder / "meta.json").read_text())
    assert meta["config"]["class_weight"] == "balanced"
    assert meta["class_weight"]["train_counts"] == {"benign": n_b, "malignant": n_m}
    np.testing.assert_allclose([meta["class_weight"]["weights"][c] for c in CLASSES], expected)
    assert meta["val_counts"] == {"benign": 3, "malignant": 10}

    # Switched off: plain cross-entropy, recorded, and another fine-tune id.
    with pytest.warns(SmallValidationWarning):
        off = fine_tune(TINY, train, val, CLASSES, CFG.replace(class_weight="none"), weights="random",
                        root=tmp_path, progress=False, device="cpu")
    assert seen[-1] is None
    assert off.meta["class_weight"] == {"mode": "none", "train_counts": {"benign": n_b, "malignant": n_m},
                                        "weights": None}
    assert off.weights_id != ft.weights_id
    # The weighted loss really trained differently.
    assert off.history[0]["train_loss"] != ft.history[0]["train_loss"]


def test_balanced_data_needs_no_weights():
    assert ft_mod._class_weights(np.array([0, 1, 0, 1]), CLASSES, "balanced") is None
    np.testing.assert_allclose(ft_mod._class_weights(np.array([0, 1, 1, 1]), CLASSES, "balanced"), [2.0, 2 / 3])


def test_small_validation_split_is_warned_about_with_its_counts(imbalanced, tmp_path, caplog):
    train, val = imbalanced
    with caplog.at_level(logging.INFO, logger="workbench"), \
            pytest.warns(SmallValidationWarning, match=r"fewer than 5 images of 'benign' \(3\)") as rec:
        fine_tune(TINY, train, val, CLASSES, CFG.replace(epochs=1), weights="random", root=tmp_path,
                  progress=False, device="cpu")
    assert "'malignant': 10" in str(rec[0].message)
    assert rec[0].filename == __file__  # reported at the caller of fine_tune
    logs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("warning" in s and "'benign' (3)" in s for s in logs), logs
    # Enough of each class: no warning.
    benign_train = [it for it in train if it.label == "benign"]
    big_val = val + benign_train[:2]
    rest = [it for it in train if it not in big_val]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallValidationWarning)
        fine_tune(TINY, rest, big_val, CLASSES, CFG.replace(epochs=1), weights="random", root=tmp_path,
                  progress=False, device="cpu")


def test_a_constant_majority_predictor_never_wins_early_stopping():
    y = np.array([0] * 6 + [1] * 28)  # 6 benign of 34, as in the issue
    constant = np.tile([0.1, 0.9], (len(y), 1))  # "all malignant": accuracy 0.82
    # Separates the classes (AUC 1) but its 0.5 cut calls half the malignant benign.
    useful = np.where(y[:, None] == 1, [0.45, 0.55], [0.8, 0.2])
    useful[6:20] = [0.55, 0.45]
    m_const, m_useful = _val_metrics(constant, y, 2), _val_metrics(useful, y, 2)
    assert m_const["val_acc"] > m_useful["val_acc"]  # accuracy would pick the constant
    assert m_const["val_auc"] == 0.5 and m_const["val_bal_acc"] == 0.5
    assert m_useful["val_auc"] > 0.5 and m_useful["val_bal_acc"] > 0.5
    assert _better(_score(m_useful, "auc"), _score(m_const, "auc"))
    assert not _better(_score(m_const, "auc"), _score(m_useful, "auc"))
    # Equal AUC: the lower loss wins; a full tie keeps the earlier epoch.
    sharper = np.where(y[:, None] == 1, [0.2, 0.8], [0.7, 0.3])
    softer = np.where(y[:, None] == 1, [0.4, 0.6], [0.55, 0.45])
    m_sharp, m_soft = _val_metrics(sharper, y, 2), _val_metrics(softer, y, 2)
    assert m_sharp["val_auc"] == m_soft["val_auc"] == 1.0
    assert _better(_score(m_sharp, "auc"), _score(m_soft, "auc"))
    assert not _better(_score(m_soft, "auc"), _score(m_sharp, "auc"))
    assert not _better(_score(m_sharp, "auc"), _score(m_sharp, "auc"))


def test_fine_tune_keeps_the_epoch_with_the_best_auc_not_accuracy(imbalanced, tmp_path, monkeypatch):
    """Validation predictions scripted per epoch: the constant epochs must not be kept."""
    train, val = imbalanced
    y = np.array([CLASSES.index(it.label) for it in val])
    constant = np.tile([0.05, 0.95], (len(y), 1))
    # Ranks every malignant above every benign (AUC 1) but calls them all benign.
    useful = np.where(y[:, None] == 1, [0.55, 0.45], [0.8, 0.2]).astype(np.float32)
    scripted = iter([constant, useful, constant, constant])
    monkeypatch.setattr(ft_mod, "predict_proba", lambda *a, **k: next(scripted))
    with pytest.warns(SmallValidationWarning):
        ft = fine_tune(TINY, train, val, CLASSES, CFG.replace(epochs=4, patience=2), weights="random",
                       root=tmp_path, progress=False, device="cpu")
    assert ft.best_epoch == 2
    assert len(ft.history) == 4  # epochs 3 and 4 were worse: patience 2 stops after 4
    assert ft.history[0]["val_acc"] > ft.history[1]["val_acc"]  # accuracy would have kept epoch 1
    assert ft.history[1]["val_auc"] == 1.0


def test_class_weight_is_part_of_the_id(imbalanced):
    train, val = imbalanced
    base = resolve_weights(get_backbone(TINY), "random")
    ids = {finetune_id(TINY, base, train, val, CLASSES, CFG.replace(class_weight=cw)) for cw in ("balanced", "none")}
    assert len(ids) == 2


def test_a_fine_tune_stored_before_class_weight_still_loads(tmp_path):
    """Its meta.json has the old bool ``class_weights``; its id resolves like any other."""
    from workbench.backbones.adapt import adapt_for_task
    from workbench.backbones.finetuned import using_root
    from workbench.backbones.loading import load_backbone

    spec = get_backbone(TINY)
    folder = tmp_path / TINY.replace("/", "__") / "ft-00112233aabb"
    folder.mkdir(parents=True)
    torch.save(adapt_for_task(spec.build(), 2).state_dict(), folder / "weights.pth")
    old_config = {k: v for k, v in CFG.to_dict().items() if k != "class_weight"} | {"class_weights": False}
    (folder / "meta.json").write_text(json.dumps({"backbone": TINY, "classes": CLASSES, "config": old_config,
                                                  "history": [], "best_epoch": 1, "code_version": "1"}))
    with using_root(tmp_path):
        loaded = load_backbone(TINY, "ft-00112233aabb")
    assert loaded.weights.num_classes == 2
    assert FineTuneConfig.from_dict(loaded.weights.finetuned["config"]).class_weight == "none"

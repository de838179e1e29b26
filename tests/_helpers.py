"""Shared test helpers: tiny random backbones, a fast, CPU-only extract(), and a
fine-tune killed mid-run (for the exact-resume tests)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from workbench.features import FeatureSet, extract
from workbench.features.options import ExtractOptions

TINY = "timm/test_efficientnet@random:pre_logits"
RESNET = "resnet18@random:avgpool"

#: Small, fast, CPU-only extraction settings.
FAST_OPTIONS = dict(image_size=32, batch_size=4, num_workers=0, device="cpu")


def run(csv, features, cache, *, classes=None, progress=False, **options) -> FeatureSet:
    """extract() with small, fast, CPU-only defaults; ``options`` are :class:`ExtractOptions` fields."""
    return extract(csv, features, cache=cache, options=ExtractOptions(**{**FAST_OPTIONS, **options}),
                   classes=classes, progress=progress)


_KILL_AT_EPOCH_2 = """
import os, signal, sys, torch
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, {tests!r})
from {module} import {names}, LITE, CLASSES, _train_val
from workbench.data.manifest import Manifest
from workbench.training.finetune import fine_tune
m = Manifest.load({csv!r}).select_classes(CLASSES).subset({ids!r}).validate(progress=False)
train, val = _train_val(m)
def kill(epoch, row):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
fine_tune(LITE, train, val, CLASSES, {config}, root=sys.argv[1], progress=False, on_epoch=kill)
"""


def fine_tune_killed_at_epoch_2(module: str, config: str, root: Path, csv: Path, ids: list[str]) -> None:
    """Run ``fine_tune(LITE, train, val, CLASSES, <config>)`` of test module ``module`` (which
    defines ``LITE``, ``CLASSES``, ``_train_val`` and the names ``config`` uses) in a
    subprocess that SIGKILLs itself after epoch 2's checkpoint, into the store ``root``."""
    import torch

    names = sorted(set(re.findall(r"[A-Z][A-Z_]+", config)))
    script = _KILL_AT_EPOCH_2.format(tests=str(Path(__file__).parent), module=module, names=", ".join(names),
                                     csv=str(csv), ids=list(ids), config=config)
    proc = subprocess.run([sys.executable, "-c", script, str(root), str(torch.get_num_threads())],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]


def history_numbers(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A training history without its timings: what an exact resume must reproduce."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


BUSI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"


def busi_two_class_slice(n_train: int, n_test: int, classes: tuple[str, ...] = ("benign", "malignant")):
    """The first ``n_train`` training and ``n_test`` test images of each class of BUSI,
    validated (skips the test when the data is absent)."""
    import pytest

    from workbench.data.manifest import Manifest

    if not (BUSI_DIR / "labels.csv").is_file():
        pytest.skip(f"BUSI data not found at {BUSI_DIR}")
    m = Manifest.load(BUSI_DIR / "labels.csv").select_classes(list(classes))
    keep = []
    for split, k in (("train", n_train), ("test", n_test)):
        for c in classes:
            keep += [it.id for it in m if it.split == split and it.label == c][:k]
    return m.subset(keep).validate(progress=False)

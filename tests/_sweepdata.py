"""A small synthetic sweep task: a manifest without image files and matching blocks.

Importable by tests and by the subprocesses they start (resume after a kill).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.data.manifest import Item, Manifest
from workbench.features.featureset import FeatureSet

BLOCKS = {"alexnet:fc6": 24, "vgg16:fc7": 16, "resnet50:avgpool": 12}
#: Fast settings: small grids, a small forest.
FAST = dict(heads=["svm-rbf", "rf"], cv=3, inner_cv=3, progress=False,
            grids={"svm-rbf": {"C": [1.0, 10.0], "gamma_factor": [1.0]},
                   "rf": {"n_estimators": [40], "max_features": ["sqrt"]}})


def make_task(n: int = 72, seed: int = 0, classes=("benign", "malignant"), groups: bool = False,
              test_every: int = 4) -> tuple[Manifest, FeatureSet]:
    """``n`` images, every ``test_every``-th in the test split; blocks with a weak class signal."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    y = np.arange(n) % k
    items = [Item(id=f"img{i:03d}", path=Path(f"/nonexistent/img{i:03d}.png"), label=classes[y[i]], row=i + 2,
                  # With groups, the test split is by patient too.
                  split="test" if (i // 2 if groups else i) % test_every == 0 else "train",
                  group=f"patient{i // 2:03d}" if groups else None)
             for i in range(n)]
    manifest = Manifest(items, source=Path("/nonexistent"), classes=list(classes))
    centers = {name: rng.normal(size=(k, d)) for name, d in BLOCKS.items()}
    blocks = {name: (rng.normal(size=(n, d)) * 2.0 + centers[name][y]).astype(np.float32)
              for name, d in BLOCKS.items()}
    return manifest, FeatureSet(manifest.ids, manifest.labels, blocks, {})

"""A small synthetic sweep task: a manifest without image files and matching blocks.

Importable by tests and by the subprocesses they start (resume after a kill).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data.manifest import Item, Manifest
from workbench.evaluation.protocol import Protocol
from workbench.features.featureset import FeatureSet
from workbench.features.options import ExtractOptions
from workbench.search.options import Execution, SweepOptions

BLOCKS = {"alexnet:fc6": 24, "vgg16:fc7": 16, "resnet50:avgpool": 12}
#: Fast settings: small grids, a small forest (flat keywords; see :func:`sweep_args`).
FAST = dict(heads=["svm-rbf", "rf"], cv=3, inner_cv=3, progress=False,
            grids={"svm-rbf": {"C": [1.0, 10.0], "gamma_factor": [1.0]},
                   "rf": {"n_estimators": [40], "max_features": ["sqrt"]}})

_GROUPS = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (Protocol, SweepOptions, Execution)}


def sweep_args(**kw: Any) -> dict[str, Any]:
    """Flat test settings as :func:`sweep`'s keywords: the fields of :class:`Protocol`,
    :class:`SweepOptions` and :class:`Execution` become those objects (each built only
    when one of its fields is given); ``extract_options`` (a dict) an :class:`ExtractOptions`;
    everything else (``classes``, ``cache``, ``progress``) passes through."""
    out: dict[str, Any] = {}
    for cls, key in ((Protocol, "protocol"), (SweepOptions, "options"), (Execution, "execution")):
        given = {k: kw.pop(k) for k in list(kw) if k in _GROUPS[cls]}
        if given:
            out[key] = cls(**given)
    if isinstance(kw.get("extract_options"), dict):
        kw["extract_options"] = ExtractOptions(**kw["extract_options"])
    return {**out, **kw}


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

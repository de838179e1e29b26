"""Shared test helpers: tiny random backbones and a fast, CPU-only extract()."""
from __future__ import annotations

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

"""Shared test helpers: tiny random backbones and a fast, CPU-only extract()."""
from __future__ import annotations

from workbench.features import FeatureSet, extract

TINY = "timm/test_efficientnet@random:pre_logits"
RESNET = "resnet18@random:avgpool"


def run(csv, features, cache, **kw) -> FeatureSet:
    """extract() with small, fast, CPU-only defaults."""
    opts = dict(image_size=32, batch_size=4, num_workers=0, device="cpu", progress=False)
    opts.update(kw)
    return extract(csv, features, cache=cache, **opts)

"""Feature extraction, its options and requests, and the content-addressed feature cache.

Names are imported lazily (:mod:`workbench.core.lazy`): :class:`ExtractOptions` is read
by the command line, which must not import torch.
"""
from __future__ import annotations

from workbench.core.lazy import lazy_exports

_EXPORTS = {
    "CacheCorruptError": "cache", "CacheProblem": "cache", "FeatureCache": "cache",
    "FEATURE_CODE_VERSION": "extraction", "extract": "extraction",
    "BlockInfo": "featureset", "FeatureSet": "featureset",
    "ExtractOptions": "options",
    "FeatureRequest": "request", "expand_requests": "request",
}
_ELSEWHERE = {"Geometry": "workbench.data.preprocess", "Preprocess": "workbench.data.preprocess"}

__all__ = sorted({*_EXPORTS, *_ELSEWHERE})

__getattr__, __dir__ = lazy_exports(
    __name__, {**{n: f"workbench.features.{m}" for n, m in _EXPORTS.items()}, **_ELSEWHERE}, globals())

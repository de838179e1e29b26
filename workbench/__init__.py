"""Image-classification research workbench (medical imaging first).

Data flow: manifest -> images decoded once -> backbones (one registry) -> feature
cache (content-addressed) -> feature blocks aligned by image id -> sweep (heads over
every block subset, vote ensembles, nested CV on fixed folds) -> append-only records.

The public names below are imported lazily, so ``workbench --help`` does not pay for
importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench._version import __version__

_EXPORTS = {
    "get_backbone": "workbench.backbones",
    "list_backbones": "workbench.backbones",
    "load_backbone": "workbench.backbones",
    "Manifest": "workbench.data",
    "ManifestError": "workbench.data",
    "FeatureCache": "workbench.features",
    "FeatureRequest": "workbench.features",
    "FeatureSet": "workbench.features",
    "extract": "workbench.features",
    "TunedHead": "workbench.heads",
    "get_head": "workbench.heads",
    "list_heads": "workbench.heads",
    "ResultStore": "workbench.search",
    "summarize": "workbench.search",
    "sweep": "workbench.search",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs
    from workbench.backbones import get_backbone, list_backbones, load_backbone
    from workbench.data import Manifest, ManifestError
    from workbench.features import FeatureCache, FeatureRequest, FeatureSet, extract
    from workbench.heads import TunedHead, get_head, list_heads
    from workbench.search import ResultStore, summarize, sweep

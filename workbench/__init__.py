"""Image-classification research workbench (medical imaging first).

Data flow: manifest -> images decoded once -> backbones (one registry) -> feature
cache (content-addressed) -> feature blocks aligned by image id.

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

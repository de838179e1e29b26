"""Image-classification research workbench (medical imaging first).

Data flow: manifest -> images decoded once -> backbones (one registry) -> feature
cache (content-addressed) -> feature blocks aligned by image id.
"""
from workbench._version import __version__
from workbench.backbones import get_backbone, list_backbones, load_backbone
from workbench.data import Manifest, ManifestError
from workbench.features import FeatureCache, FeatureRequest, FeatureSet, extract

__all__ = [
    "__version__", "FeatureCache", "FeatureRequest", "FeatureSet", "Manifest", "ManifestError",
    "extract", "get_backbone", "list_backbones", "load_backbone",
]

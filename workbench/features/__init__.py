"""Feature extraction, preprocessing and the content-addressed feature cache."""
from workbench.features.cache import CacheCorruptError, CacheProblem, FeatureCache
from workbench.features.extraction import FEATURE_CODE_VERSION, FeatureRequest, extract
from workbench.features.featureset import BlockInfo, FeatureSet
from workbench.data.preprocess import Geometry, Preprocess

__all__ = [
    "BlockInfo", "CacheCorruptError", "CacheProblem", "FEATURE_CODE_VERSION", "FeatureCache",
    "FeatureRequest", "FeatureSet", "Geometry", "Preprocess", "extract",
]

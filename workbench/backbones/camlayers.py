"""Grad-CAM target layers: the family rules and the generic last-conv fallback.

A :class:`~workbench.backbones.registry.BackboneSpec` names its own CAM layer
(``cam_layer``: a module path or a callable); these rules serve specs without one and
bare models that come with no spec at all.
"""
from __future__ import annotations

from typing import Callable, Union

from torch import nn
from torchvision import models as tvm

__all__ = ["CamLayerRule", "PASS_THROUGH", "family_cam_layer", "find_cam_layer", "last_conv_layer",
           "timm_family_layer", "torchvision_family_layer"]

#: A spec's CAM layer: a dotted module path (``"layer4.2"``) or ``rule(model) -> module or None``.
CamLayerRule = Union[str, Callable[[nn.Module], Union[nn.Module, None]]]

# Layers that only re-scale or activate a conv output: the CAM layer is moved past
# them so that it sees post-activation features (what the families below use) and so
# that no later in-place activation rewrites the tensor the hooks captured.
PASS_THROUGH = (
    nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
    nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.PReLU, nn.Sigmoid, nn.Tanh,
)


def last_conv_layer(model: nn.Module) -> nn.Module | None:
    """Last ``nn.Conv2d`` in module order, moved past the norm/activation after it."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    name, layer = convs[-1]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential):
        siblings = list(parent.children())
        i = siblings.index(layer)
        while i + 1 < len(siblings) and isinstance(siblings[i + 1], PASS_THROUGH):
            i += 1
        layer = siblings[i]
    return layer


def torchvision_family_layer(model: nn.Module) -> nn.Module | None:
    """The last conv feature layer of a torchvision family, or None if not one."""
    if isinstance(model, tvm.ResNet):  # also resnext / wide_resnet
        return model.layer4[-1]
    if isinstance(model, (tvm.AlexNet, tvm.VGG)):
        # Last Conv of ``features`` plus its ReLU: the ReLU output feeds MaxPool
        # untouched, while the conv output would be rewritten by the in-place ReLU.
        return last_conv_layer(model.features)
    if isinstance(model, tvm.DenseNet):
        return model.features  # ends in norm5; the forward's ReLU is functional
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet, tvm.ConvNeXt)):
        return model.features[-1]
    if isinstance(model, tvm.ShuffleNetV2):
        return model.conv5
    if isinstance(model, tvm.Inception3):
        return model.Mixed_7c
    if isinstance(model, tvm.GoogLeNet):
        return model.inception5b
    if isinstance(model, tvm.RegNet):
        return model.trunk_output
    if isinstance(model, tvm.MNASNet):
        return model.layers[-1]
    return None


def timm_family_layer(model: nn.Module) -> nn.Module | None:
    """The last conv feature layer of a timm model, or None if not a timm model."""
    if not type(model).__module__.startswith("timm."):
        return None
    # timm EfficientNet (tf_efficientnet_lite*, efficientnet_b*): conv_head -> bn2
    # (norm + act) -> pool, so bn2 is the last 4-D map. timm MobileNetV3 also has a
    # conv_head, but *after* the pool (1x1 maps), hence the check for bn2.
    if hasattr(model, "conv_head") and isinstance(getattr(model, "bn2", None), nn.Module):
        return model.bn2
    # Every timm model lists its feature stages; the last one is the deepest map.
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        name = last.get("module") if isinstance(last, dict) else None
        if name:
            try:
                return model.get_submodule(name)
            except AttributeError:
                pass
    return None


def family_cam_layer(model: nn.Module) -> nn.Module | None:
    """The CAM layer of a model that comes without a spec: family rules, then the last conv."""
    for rule in (torchvision_family_layer, timm_family_layer, last_conv_layer):
        layer = rule(model)
        if layer is not None:
            return layer
    return None


def find_cam_layer(model: nn.Module, rule: CamLayerRule | None) -> nn.Module | None:
    """Apply a spec's CAM rule to ``model``; None (no rule, or the rule found none) falls back
    to the last convolution.

    Raises
    ------
    AttributeError
        When a dotted path names no submodule of ``model``.
    """
    layer = None
    if isinstance(rule, str):
        layer = model.get_submodule(rule)
    elif rule is not None:
        layer = rule(model)
    return layer if layer is not None else last_conv_layer(model)

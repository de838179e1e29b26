"""The torchvision backbones of the study and its related work, with their taps.

fc6/fc7 are taken after their ReLU (the study's fc1/fc2); ``avgpool`` is the flattened
global average pool, the layer before the classifier.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import get_model, get_model_weights

from workbench.backbones.loading import load_checkpoint_strict
from workbench.backbones.registry import (
    BackboneSpec,
    DataConfig,
    TapSpec,
    WeightsSpec,
    register_backbone,
)
from workbench.backbones.taps import graph_node_taps

# Builder arguments the pretrained weights imply. torchvision sets these itself when
# it builds with weights; we build without weights and load the file ourselves, so
# we must set them, or the architecture would differ from the one the weights fit.
_BUILD_KWARGS: dict[str, dict] = {
    "inception_v3": {"aux_logits": True, "transform_input": True, "init_weights": False},
    "googlenet": {"aux_logits": True, "transform_input": True, "init_weights": False},
}


def _weights_specs(name: str) -> dict[str, WeightsSpec]:
    out: dict[str, WeightsSpec] = {}
    for w in get_model_weights(name):
        t = w.transforms()
        interp = getattr(t, "interpolation", None)
        out[w.name] = WeightsSpec(
            id=w.name,
            data_config=DataConfig(
                input_size=int(t.crop_size[0]),
                resize_size=int(t.resize_size[0]),
                mean=tuple(float(v) for v in t.mean),
                std=tuple(float(v) for v in t.std),
                interpolation=getattr(interp, "value", "bilinear"),
            ),
            filename=w.url.rsplit("/", 1)[-1],
            url=w.url,
            doc=str(w.meta.get("recipe", "")),
        )
    return out


def _build(name: str) -> nn.Module:
    return get_model(name, weights=None, **_BUILD_KWARGS.get(name, {}))


def _load_state(model: nn.Module, path: str, *, name: str) -> None:
    load_checkpoint_strict(model, path, backbone=name)


def _register(name: str, taps: list[tuple[str, str, int, str]], doc: str, *, code: str, cam_layer: str) -> None:
    """Register torchvision ``name`` with its taps, table code and Grad-CAM layer (module path)."""
    weights = _weights_specs(name)
    default = next(iter(weights))  # torchvision lists the original ImageNet weights first
    register_backbone(
        BackboneSpec(
            name=name,
            family="torchvision",
            taps={t: TapSpec(t, dim, node, d) for t, node, dim, d in taps},
            weights=weights,
            default_weights=default,
            build=partial(_build, name),
            load_state=partial(_load_state, name=name),
            doc=doc,
            code=code,
            cam_layer=cam_layer,
            tapper=graph_node_taps,
        )
    )


_FC = "after ReLU ({} of the study)"
# Grad-CAM layers: the last conv feature stage, after its norm/activation where that is
# a module (the ReLU output of AlexNet/VGG feeds MaxPool untouched, while the conv
# output would be rewritten by the in-place ReLU; DenseNet's final ReLU is functional).
_CAM_FEATURES = {"alexnet": "features.11", "vgg11": "features.19", "vgg16": "features.29", "vgg19": "features.35"}
for _name in ("alexnet", "vgg11", "vgg16", "vgg19"):
    # AlexNet and VGG share the classifier layout: [Drop,] Linear, ReLU, Drop, Linear, ReLU, ...
    _nodes = ("classifier.2", "classifier.5") if _name == "alexnet" else ("classifier.1", "classifier.4")
    _register(
        _name,
        [
            ("fc6", _nodes[0], 4096, "first fully connected layer, " + _FC.format("fc1")),
            ("fc7", _nodes[1], 4096, "second fully connected layer, " + _FC.format("fc2")),
        ],
        doc=f"torchvision {_name}",
        code="A" if _name == "alexnet" else "V",
        cam_layer=_CAM_FEATURES[_name],
    )

for _name, _dim, _last in (("resnet18", 512, 1), ("resnet34", 512, 2), ("resnet50", 2048, 2)):
    _register(_name, [("avgpool", "flatten", _dim, "global average pool")], doc=f"torchvision {_name}",
              code="R", cam_layer=f"layer4.{_last}")  # the last block of layer4

_register(
    "inception_v3",
    [("avgpool", "flatten", 2048, "global average pool (299 px input)")],
    doc="torchvision inception_v3",
    code="I",
    cam_layer="Mixed_7c",
)
_register(
    "densenet121",
    [("avgpool", "flatten", 1024, "ReLU + global average pool after the last dense block")],
    doc="torchvision densenet121",
    code="D",
    cam_layer="features",
)
_register(
    "mobilenet_v3_large",
    [
        ("avgpool", "flatten", 960, "global average pool"),
        ("fc", "classifier.1", 1280, "pre-logits fully connected layer, after Hardswish"),
    ],
    doc="torchvision mobilenet_v3_large",
    code="M",
    cam_layer="features.16",
)
_register(
    "shufflenet_v2_x1_0",
    [("avgpool", "mean", 1024, "global average pool after conv5")],
    doc="torchvision shufflenet_v2_x1_0",
    code="S",
    cam_layer="conv5",
)

del _name, _dim, _nodes, _last

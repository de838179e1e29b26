"""Grad-CAM of a fine-tuned network over manifest images: the maps and what goes beside them.

The network is found through the registry (``backbone@ft-<hash>``), fed exactly the
tensors it was fine-tuned on (its size, resize and normalisation), and every map is
brought back to the original image's size, so overlays and lesion boxes share pixels.
Drawing (overlays, the grid figure, the table file) is the report's job:
:mod:`workbench.report.gradcam` lays out what :func:`explain` returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from workbench.backbones.finetuned import is_finetuned_id
from workbench.backbones.ynet import YNetClassBranch
from workbench.backbones.loading import build_model
from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import resolve_weights
from workbench.baselines.cam import cam_maps, peak_in_box, upsample_to
from workbench.data.augment import TrainImageDataset
from workbench.data.images import decode_image
from workbench.data.manifest import Item
from workbench.data.preprocess import Geometry
from workbench.errors import ConfigError

__all__ = ["CamReport", "explain"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CamReport:
    """The Grad-CAM maps of one network on some images.

    The fields of :class:`workbench.report.gradcam.CamSet`, which saves, loads, tables
    and draws them (``CamSet.from_result(report)``).
    """

    network: str
    classes: list[str]
    ids: list[str]
    labels: list[str]
    pred: np.ndarray  # (N,) predicted class
    targets: np.ndarray  # (N,) the class each map explains
    proba: np.ndarray  # (N, n_classes) softmax
    boxes: list[Box | None]
    peak_in_box: list[bool | None]  # None: the image has no box
    images: list[np.ndarray]  # originals, (H, W, 3) float32 in [0, 1]
    maps: list[np.ndarray]  # per image, original size


def _target_indices(target: str, items: Sequence[Item], classes: list[str]) -> list[int] | None:
    """The class each map explains: None for the predicted one."""
    if target == "true":
        return [classes.index(it.label) for it in items]
    if target != "pred":
        return [classes.index(target)] * len(items)
    return None


def _checked(network: str, items: Sequence[Item], target: str, classes: list[str]) -> None:
    if not items:
        raise ConfigError("no images to explain")
    bad = sorted({it.label for it in items} - set(classes))
    if bad:
        raise ConfigError(f"labels {bad} are not among the classes {classes} of {network}")
    if target not in ("pred", "true") and target not in classes:
        raise ConfigError(f"target must be 'pred', 'true' or one of {classes}, got {target!r}")


def explain(
    items: Sequence[Item],
    network: str,
    *,
    target: str = "pred",
    layer: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> CamReport:
    """Grad-CAM maps of fine-tuned ``network`` (``backbone@ft-<hash>``) on ``items``.

    Parameters
    ----------
    items
        Manifest items (labels must be among the network's classes).
    target
        ``"pred"`` (the predicted class), ``"true"`` (the label), or a class name.
    layer
        Target layer (dotted name); default: the backbone's last convolutional stage.

    Returns
    -------
    CamReport
        Maps at each original image's size; lay them out with
        :func:`workbench.report.gradcam.write_cam_folder` (via ``CamSet.from_result``).
    """
    backbone, sep, wid = network.partition("@")
    if not sep or not is_finetuned_id(wid):
        raise ConfigError(f"Grad-CAM needs a fine-tuned network BACKBONE@ft-<hash>, got {network!r} "
                          f"(see `workbench finetune`)")
    spec = get_backbone(backbone)
    weights = resolve_weights(spec, wid)
    meta = weights.finetuned
    classes = list(meta["classes"])
    items = list(items)
    _checked(network, items, target, classes)
    model = build_model(spec, weights)
    if weights.is_ynet:  # the class scores come from the encoder's deepest features: explain those
        model = YNetClassBranch(model.eval())
        layer = model.deepest if layer is None else layer
    dc = spec.data_config(meta.get("base_weights"))
    geometry = Geometry(int(meta["image_size"]), meta.get("resize", "squash"), interpolation=dc.interpolation)
    ds = TrainImageDataset(items, classes, geometry, dc.mean, dc.std)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    dev = torch.device(device) if device else torch.device("cpu")
    model = model.to(dev)
    # The backbone's own Grad-CAM layer (its spec says which) unless the caller names one.
    target_layer = layer if layer is not None else spec.cam_target(model)
    res = cam_maps(model, x.to(dev), targets=_target_indices(target, items, classes), target_layer=target_layer,
                   batch_size=batch_size)
    originals = [decode_image(it.path).permute(1, 2, 0).numpy() for it in items]
    maps = [upsample_to(m, img.shape[:2]) for m, img in zip(res.maps, originals)]
    return CamReport(
        network=network, classes=classes, ids=[it.id for it in items], labels=[it.label for it in items],
        pred=res.pred, targets=res.targets, proba=res.proba, boxes=[it.box for it in items],
        peak_in_box=[peak_in_box(m, it.box) if it.box is not None else None for m, it in zip(maps, items)],
        images=originals, maps=maps,
    )

"""Grad-CAM of a fine-tuned network over manifest images: overlays, a grid figure, a table.

The network is found through the registry (``backbone@ft-<hash>``), fed exactly the
tensors it was fine-tuned on (its size, resize and normalisation), and every map is
brought back to the original image's size, so overlays and lesion boxes share pixels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.backbones.finetuned import is_finetuned_id
from workbench.backbones.loading import build_model
from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import resolve_weights
from workbench.data.images import decode_image
from workbench.data.manifest import Item
from workbench.data.preprocess import Geometry

__all__ = ["CamReport", "explain"]


@dataclass
class CamReport:
    """What :func:`explain` wrote and measured."""

    table: pd.DataFrame  # id, label, pred, p_<class>..., target, peak_in_box, overlay
    figure: list[Path]  # grid PNG and PDF
    maps: list[np.ndarray]  # per image, original size
    folder: Path

    def peak_share(self, label: str | None = None, correct_only: bool = True) -> float:
        """Share of images (with a box) whose map peaks inside it; NaN if none qualify."""
        t = self.table[self.table["peak_in_box"].notna()]
        if label is not None:
            t = t[t["label"] == label]
        if correct_only:
            t = t[t["label"] == t["pred"]]
        return float(t["peak_in_box"].astype(bool).mean()) if len(t) else float("nan")


def explain(
    items: Sequence[Item],
    network: str,
    out: str | os.PathLike,
    *,
    target: str = "pred",
    layer: str | None = None,
    grid_max: int = 16,
    ncols: int = 4,
    batch_size: int = 16,
    device: str | None = None,
) -> CamReport:
    """Grad-CAM maps of fine-tuned ``network`` (``backbone@ft-<hash>``) on ``items``.

    Parameters
    ----------
    items
        Manifest items (labels must be among the network's classes).
    out
        Folder for ``overlays/<id>.png``, ``cam_grid.png/.pdf`` and ``cam.csv``.
    target
        ``"pred"`` (the predicted class), ``"true"`` (the label), or a class name.
    layer
        Target layer (dotted name); default: the backbone's last convolutional stage.
    grid_max
        Tiles in the grid figure (the first ones, in the order given).
    """
    from workbench.baselines.cam import cam_grid_figure, cam_maps, peak_in_box, save_overlays, upsample_to
    from workbench.data.augment import TrainImageDataset

    backbone, sep, wid = network.partition("@")
    if not sep or not is_finetuned_id(wid):
        raise ValueError(f"Grad-CAM needs a fine-tuned network BACKBONE@ft-<hash>, got {network!r} "
                         f"(see `workbench finetune`)")
    spec = get_backbone(backbone)
    weights = resolve_weights(spec, wid)
    meta = weights.finetuned
    classes = list(meta["classes"])
    items = list(items)
    if not items:
        raise ValueError("no images to explain")
    bad = sorted({it.label for it in items} - set(classes))
    if bad:
        raise ValueError(f"labels {bad} are not among the network's classes {classes}")
    if target not in ("pred", "true") and target not in classes:
        raise ValueError(f"target must be 'pred', 'true' or one of {classes}, got {target!r}")
    model = build_model(spec, weights)
    dc = spec.data_config(meta.get("base_weights"))
    geometry = Geometry(int(meta["image_size"]), meta.get("resize", "squash"), interpolation=dc.interpolation)
    ds = TrainImageDataset(items, classes, geometry, dc.mean, dc.std)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    targets = None
    if target == "true":
        targets = [classes.index(it.label) for it in items]
    elif target != "pred":
        targets = [classes.index(target)] * len(items)
    dev = torch.device(device) if device else torch.device("cpu")
    res = cam_maps(model.to(dev), x.to(dev), targets=targets, target_layer=layer, batch_size=batch_size)
    originals = [decode_image(it.path).permute(1, 2, 0).numpy() for it in items]
    maps = [upsample_to(m, img.shape[:2]) for m, img in zip(res.maps, originals)]
    folder = Path(out)
    paths = save_overlays(originals, maps, [it.id for it in items], folder / "overlays")
    table = pd.DataFrame({
        "id": [it.id for it in items],
        "label": [it.label for it in items],
        "pred": [classes[k] for k in res.pred],
        **{f"p_{c}": res.proba[:, k] for k, c in enumerate(classes)},
        "target": [classes[k] for k in res.targets],
        "peak_in_box": [peak_in_box(m, it.box) if it.box is not None else None for m, it in zip(maps, items)],
        "overlay": [p.relative_to(folder).as_posix() for p in paths],  # relative: the folder may move
    })
    table.to_csv(folder / "cam.csv", index=False)
    k = min(grid_max, len(items))
    figure = cam_grid_figure(
        originals[:k], maps[:k], path=folder / "cam_grid", labels=[it.label for it in items[:k]],
        proba=res.proba[:k], class_names=classes, classes=list(res.targets[:k]),
        boxes=[it.box for it in items[:k]], ncols=ncols,
        title=f"Grad-CAM: {network}",
    )
    return CamReport(table, figure, maps, folder)

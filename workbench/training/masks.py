"""What a trained Y-Net says about lesions: masks, their scores, and boxes from them.

A Y-Net's mask logits come at the network's input size; :func:`predict_masks` maps each
probability map back onto its own image (the inverse of the geometry the image went
through, :meth:`~workbench.data.preprocess.Geometry.to_frame`), so Dice is computed
against the manual mask in the image's own pixels and a predicted box is in the same
coordinates as a manual one. :func:`mask_box` turns a map into a box: the bounding box
of the largest connected region above the threshold (a stray speck elsewhere in the
frame must not stretch it), or None when nothing is above it. The steps after the
forward pass are the one mask pipeline of :mod:`workbench.backbones.ynet_masks`, which
the feature layer's predicted boxes and a bundle's ``segment()`` use too.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.backbones.ynet_masks import MASK_THRESHOLD, lesion_probs, mask_box, to_image_frame
from workbench.core.devices import resolve_device
from workbench.data.augment import TrainImageDataset, read_lesion_mask
from workbench.data.manifest import Item
from workbench.data.preprocess import DataConfig, Geometry
from workbench.errors import ConfigError
from workbench.evaluation.segmentation import mask_scores

__all__ = ["MASK_THRESHOLD", "iter_masks", "manual_mask", "mask_box", "predict_masks", "score_masks"]

# MASK_THRESHOLD and mask_box are re-exported from the shared pipeline (they live in
# data.boxes), so callers of this module keep their names.


@torch.no_grad()
def iter_masks(model: nn.Module, items: Sequence[Item], geometry: Geometry, data_config: DataConfig, *,
               device: str | torch.device | None = None, batch_size: int = 32, progress: bool = False
               ) -> Iterator[tuple[Item, np.ndarray]]:
    """``(item, lesion probability map (H, W) float32 at the image's size)`` per item, in order.

    Raises
    ------
    ConfigError
        ``model`` is not a Y-Net (it gives no mask logits).
    """
    from workbench.training.finetune import forward_batches

    items = list(items)
    # Labels do not matter here; one placeholder class keeps the dataset's checks quiet.
    ds = TrainImageDataset([_unlabelled(it) for it in items], ["?"], geometry, data_config.mean, data_config.std)
    k = 0
    # The fine-tuning loop's forward pass (as validation ran it: channels_last and bf16 on
    # a GPU); the steps after it are the shared pipeline's.
    for _, mask_logits, _ in forward_batches(model, ds, resolve_device(device), batch_size, progress=progress,
                                             desc="masks"):
        for p in lesion_probs(mask_logits):
            it = items[k]
            k += 1
            w, h = it.size()
            yield it, to_image_frame(p, geometry, h, w)


def _unlabelled(it: Item) -> Item:
    import dataclasses

    return dataclasses.replace(it, label="?")


def predict_masks(model: nn.Module, items: Sequence[Item], geometry: Geometry, data_config: DataConfig, *,
                  device: str | torch.device | None = None, batch_size: int = 32, progress: bool = False
                  ) -> list[np.ndarray]:
    """Lesion probability maps of ``items``, each at its image's size (see :func:`iter_masks`)."""
    return [m for _, m in iter_masks(model, items, geometry, data_config, device=device, batch_size=batch_size,
                                     progress=progress)]


def manual_mask(it: Item) -> np.ndarray:
    """The item's manual lesion mask as a bool (H, W) array (foreground > 0.5).

    Raises
    ------
    ConfigError
        The item has no mask, or its mask is not its image's size (naming both).
    """
    if it.mask_path is None:
        raise ConfigError(f"item {it.id!r} has no lesion mask (mask_path)")
    w, h = it.size()
    return read_lesion_mask(it, h, w)[0].numpy()


def score_masks(model: nn.Module, items: Sequence[Item], geometry: Geometry, data_config: DataConfig, *,
                device: str | torch.device | None = None, threshold: float = MASK_THRESHOLD,
                progress: bool = False) -> pd.DataFrame:
    """Dice and IoU of the thresholded predicted masks against the manual ones.

    Only items with a manual mask file are scored (an item without one has no stated
    truth). One row each: ``id, label, dice, iou, failed``, ``lesion`` (whether the
    manual mask is non-empty: an empty one, such as a BUSI normal image's, says "no
    lesion", and its Dice is 1 when the prediction is empty too, else 0, a detection
    figure rather than an outline's), and the predicted box (``box_x0..box_y1``, NaN
    when the predicted mask is empty).
    """
    with_mask = [it for it in items if it.mask_path is not None]
    preds, truths, boxes = [], [], []
    for it, prob in iter_masks(model, with_mask, geometry, data_config, device=device, progress=progress):
        pred = prob > threshold
        preds.append(pred)
        truths.append(manual_mask(it))
        boxes.append(mask_box(prob, threshold))
    frame = mask_scores(preds, truths, ids=[it.id for it in with_mask], labels=[it.label for it in with_mask])
    frame["lesion"] = [bool(t.any()) for t in truths]
    for j, name in enumerate(("box_x0", "box_y0", "box_x1", "box_y1")):
        frame[name] = [np.nan if b is None else b[j] for b in boxes]
    return frame

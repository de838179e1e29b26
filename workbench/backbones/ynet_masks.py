"""One Y-Net mask pipeline: lesion maps at each image's size, and boxes from them.

A Y-Net's mask logits come at its input size. Every place that reads them (the training
layer's Dice and boxes, :mod:`workbench.training.masks`; the feature layer's predicted
boxes, :mod:`workbench.features.predicted_boxes`; a bundle's ``segment()``) goes through
here, so a map or a box is the same wherever it is computed:

1. the network's input: the geometry, grey replicated to 3 channels, the weights'
   normalisation (:meth:`YNetMasks.inputs`, :meth:`YNetMasks.mask_probs`);
2. the forward pass at a stated precision, the sigmoid of the mask logits
   (:func:`lesion_probs`);
3. back onto the image's own pixels through the inverse of the geometry
   (:meth:`~workbench.data.preprocess.Geometry.to_frame`, :func:`to_image_frame`);
4. the box: the largest 8-connected region above the threshold
   (:func:`workbench.data.boxes.mask_box`).

It sits in the backbone layer, the lowest that the training, feature and bundle layers
all import (``.importlinter``). The fine-tuning loop keeps its own forward pass over
the training dataset (``training.finetune.forward_batches``: the one validation uses)
and hands its logits to steps 2-4.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from workbench.data.boxes import MASK_THRESHOLD, Box, mask_box
from workbench.data.preprocess import Geometry
from workbench.errors import ConfigError

__all__ = ["MASK_THRESHOLD", "YNetMasks", "lesion_probs", "mask_box", "resized_input", "to_image_frame"]

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resized_input(img: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """A decoded ``(1|3, H, W)`` image in [0, 1] as the Y-Net's ``(3, S, S)`` input, not yet
    normalised (:meth:`YNetMasks.mask_probs` does that on the device). Resizing one grey
    channel and replicating it gives the numbers of resizing three copies, for less work."""
    return geometry(img).expand(3, -1, -1)


def lesion_probs(mask_logits: torch.Tensor | None) -> torch.Tensor:
    """``(B, S, S)`` float32 lesion probabilities on the CPU of ``(B, 1, S, S)`` mask logits.

    Raises
    ------
    ConfigError
        ``mask_logits`` is None: the network is a classifier, it predicts no masks.
    """
    if mask_logits is None:
        raise ConfigError("this network predicts classes only, no lesion masks: give a Y-Net "
                          "(fine-tuned with model = 'ynet')")
    return torch.sigmoid(mask_logits.float())[:, 0].cpu()


def to_image_frame(prob: torch.Tensor, geometry: Geometry, height: int, width: int) -> np.ndarray:
    """An ``(S, S)`` probability map brought back onto its ``height x width`` image:
    ``(H, W)`` float32 in [0, 1] (the bilinear inverse can overshoot, hence the clamp)."""
    return geometry.to_frame(prob[None], int(height), int(width))[0].clamp_(0, 1).numpy()


@dataclass(frozen=True)
class YNetMasks:
    """A Y-Net with its input geometry and normalisation, reading decoded images.

    ``model`` returns ``(mask logits, class logits)``; ``mean`` and ``std`` are the
    weights' normalisation (3 values each); ``threshold`` is the mask's (a sigmoid's 0.5).
    """

    model: nn.Module
    geometry: Geometry
    mean: Sequence[float]
    std: Sequence[float]
    threshold: float = MASK_THRESHOLD

    def inputs(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(n, 3, S, S)`` network inputs of decoded images, not yet normalised (:func:`resized_input`)."""
        return torch.stack([resized_input(img, self.geometry) for img in images])

    def mask_probs(self, x: torch.Tensor, device: torch.device | str = "cpu", precision: str = "fp32"
                   ) -> torch.Tensor:
        """``(B, S, S)`` lesion probabilities (CPU) of resized ``[0, 1]`` images ``x``
        (:meth:`inputs`), the forward pass on ``device`` with autocast at ``precision``
        (``fp32``: none; ``bf16``, ``fp16``)."""
        device = torch.device(device)
        x = x.to(device)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        amp = _AUTOCAST.get(precision)
        ctx = torch.autocast(device_type=device.type, dtype=amp) if amp else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = self.model.to(device)((x - mean) / std)
        return lesion_probs(out[0] if isinstance(out, tuple) else None)

    def frame(self, prob: torch.Tensor, height: int, width: int) -> np.ndarray:
        """:func:`to_image_frame` with this network's geometry."""
        return to_image_frame(prob, self.geometry, height, width)

    def box(self, prob_map: np.ndarray, threshold: float | None = None) -> Box | None:
        """The box of a map in the image's frame (:func:`mask_box`; None when empty)."""
        return mask_box(prob_map, self.threshold if threshold is None else threshold)

    def maps(self, images: Sequence[torch.Tensor], *, device: torch.device | str = "cpu", precision: str = "fp32",
             batch_size: int = 16) -> list[np.ndarray]:
        """Lesion probability maps ``(H, W)`` float32 of decoded ``(1|3, H, W)`` images in
        [0, 1], each at its own image's size, in order."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            for img, p in zip(chunk, self.mask_probs(self.inputs(chunk), device, precision)):
                out.append(self.frame(p, img.shape[-2], img.shape[-1]))
        return out

    def boxes(self, images: Sequence[torch.Tensor], *, device: torch.device | str = "cpu", precision: str = "fp32",
              batch_size: int = 16) -> list[Box | None]:
        """The predicted box of each decoded image (None where its mask is empty)."""
        return [self.box(m) for m in self.maps(images, device=device, precision=precision, batch_size=batch_size)]

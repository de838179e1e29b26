"""From a decoded image to a backbone's input tensor.

Split in two so one decode serves every backbone: the *geometry* (input region, resize
to the backbone's size) runs in the loader workers and is shared by all backbones
with the same size; the *normalisation* (mean/std) runs per backbone on the device.
The geometry is plain torchvision functional ops, so it also runs on a device tensor
(extraction's ``preprocess_on="device"``) with the same arithmetic.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms import InterpolationMode

from workbench.data.modes import INPUT_MODES, RESIZE_MODES


@dataclass(frozen=True)
class DataConfig:
    """The input a set of weights expects, read from the weights' metadata.

    ``resize_size / input_size`` is the eval-time crop ratio (``crop_pct``); it only
    matters with ``resize="crop"``.
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size


__all__ = ["DataConfig", "Geometry", "Preprocess", "RESIZE_MODES", "INPUT_MODES"]



@dataclass(frozen=True)
class Geometry:
    """How an image becomes a ``size`` x ``size`` tensor.

    ``resize``:
    - ``squash`` (default): the whole frame scaled to the square, aspect not kept. A
      lesion at the frame's edge is never cut off, which a centre crop can do.
    - ``crop``: timm/torchvision eval transform: shorter side to ``size / crop_pct``,
      centre crop.
    - ``letterbox``: longer side to ``size``, zero padding (black) to the square.
    """

    size: int
    resize: str = "squash"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # Bicubic overshoots; keep the [0, 1] range the normalisation assumes.
        return self.unclamped(img).clamp_(0.0, 1.0)

    def unclamped(self, img: torch.Tensor) -> torch.Tensor:
        """The geometry without the final clamp: differentiable, for gradients through it."""
        interp = InterpolationMode(self.interpolation)
        s = self.size
        _, h, w = img.shape
        if self.resize == "squash":
            out = TF.resize(img, [s, s], interpolation=interp, antialias=True)
        elif self.resize == "crop":
            short = int(round(s / self.crop_pct))
            out = TF.center_crop(TF.resize(img, short, interpolation=interp, antialias=True), [s, s])
        else:
            scale = s / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            small = TF.resize(img, [nh, nw], interpolation=interp, antialias=True)
            out = img.new_zeros((img.shape[0], s, s))
            top, left = (s - nh) // 2, (s - nw) // 2
            out[:, top:top + nh, left:left + nw] = small
        return out

    def to_frame(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map a ``(C, size, size)`` map (a predicted mask) back onto the ``height x width``
        image it came from: the inverse of this geometry (bilinear). Under ``crop`` the
        part of the frame the crop cut off gets 0: the network never saw it."""
        s = self.size
        if tuple(t.shape[-2:]) != (s, s):
            raise ValueError(f"expected a (C, {s}, {s}) map, got shape {tuple(t.shape)}")
        bilinear = InterpolationMode.BILINEAR
        if self.resize == "squash":
            return TF.resize(t, [height, width], interpolation=bilinear, antialias=False)
        if self.resize == "crop":
            # Forward: shorter side -> short, centre crop of s x s. Backward: paste the
            # crop into a canvas of the resized frame, then scale that to the image.
            short = int(round(s / self.crop_pct))
            scale = short / min(height, width)
            rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
            canvas = t.new_zeros((t.shape[0], rh, rw))
            top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))  # torchvision's center_crop
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + s, rh), min(left + s, rw)
            canvas[:, y0:y1, x0:x1] = t[:, y0 - top:y1 - top, x0 - left:x1 - left]
            return TF.resize(canvas, [height, width], interpolation=bilinear, antialias=False)
        scale = s / max(height, width)
        nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (s - nh) // 2, (s - nw) // 2
        return TF.resize(t[:, top:top + nh, left:left + nw], [height, width], interpolation=bilinear,
                         antialias=False)


@dataclass(frozen=True)
class Preprocess:
    """Everything between the image file and a backbone's input; all of it is cache key.

    Parameters
    ----------
    geometry
        Resize settings (see :class:`Geometry`).
    mean, std
        Normalisation from the weights' metadata.
    input
        ``whole`` image or the lesion ``box`` crop.
    box_margin
        With ``input="box"``: fraction of the box's width/height added on each side.
    """

    geometry: Geometry
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input: str = "whole"
    box_margin: float = 0.1

    @classmethod
    def from_data_config(
        cls,
        cfg: DataConfig,
        *,
        resize: Literal["squash", "crop", "letterbox"] = "squash",
        input: Literal["whole", "box"] = "whole",
        box_margin: float = 0.1,
        size: int | None = None,
    ) -> "Preprocess":
        """Settings for a backbone's weights; ``size`` overrides the input size."""
        if input not in INPUT_MODES:
            raise ValueError(f"input must be one of {INPUT_MODES}, got {input!r}")
        if not 0.0 <= box_margin <= 2.0:
            raise ValueError(f"box_margin must be within [0, 2], got {box_margin}")
        return cls(
            geometry=Geometry(
                size=int(size or cfg.input_size),
                resize=resize,
                crop_pct=round(cfg.crop_pct, 6),
                interpolation=cfg.interpolation,
            ),
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            input=input,
            box_margin=float(box_margin) if input == "box" else 0.0,
        )

    def key_fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
        return (batch - mean) / std

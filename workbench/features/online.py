"""Features of new images, computed exactly as the cache's entries were.

A model bundle must turn an uploaded image into the numbers its heads were fitted on.
Every cache entry's ``meta.json`` holds what determines a feature (backbone, weights id
and digest, tap, preprocessing, precision, storage dtype); :class:`BlockDef` is that
record, and :class:`Featurizer` runs it on in-memory images with the extraction pass's
own steps (grey decode, box crop, one resize per geometry, replicate, normalise,
forward, round to the storage dtype). Nothing is read from or written to the cache.
Blocks computed on a Y-Net's predicted boxes carry their box source; the Featurizer then
predicts each image's box with that Y-Net (checked by digest) unless boxes are given.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from workbench.backbones.finetuned import using_root
from workbench.backbones.loading import TapModel, build_model
from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import resolve_weights
from workbench.data.boxes import Box
from workbench.data.images import crop_to_box
from workbench.data.preprocess import Geometry, Preprocess
from workbench.errors import WorkbenchError

__all__ = ["BlockDef", "Featurizer", "WeightsMismatchError"]


class WeightsMismatchError(WorkbenchError, ValueError):
    """The weights found on this machine are not the ones a block was computed with."""


@dataclass(frozen=True)
class BlockDef:
    """What one feature block is: enough to compute it again for any image.

    Attributes mirror a cache entry's ``meta.json``; ``name`` is the block's name in
    the run (``backbone[@weights]:tap``, a nested set's name included).
    """

    name: str
    backbone: str
    weights_id: str
    weights_digest: str
    tap: str
    dim: int
    preprocess: dict[str, Any]
    precision: str
    dtype: str
    family: str = ""
    weights_random: bool = False
    code_version: str = ""
    #: Blocks on a Y-Net's predicted boxes: the box source (cache entry field ``boxes``,
    #: :meth:`~workbench.features.predicted_boxes.BoxNet.fields`); None otherwise.
    boxes: dict[str, Any] | None = None

    @classmethod
    def from_meta(cls, name: str, meta: Mapping[str, Any]) -> "BlockDef":
        """From a cache entry's ``meta.json`` fields."""
        return cls(name=name, backbone=meta["backbone"], weights_id=meta["weights_id"],
                   weights_digest=meta["weights_digest"], tap=meta["tap"], dim=int(meta["dim"]),
                   preprocess=dict(meta["preprocess"]), precision=meta["precision"], dtype=meta["dtype"],
                   family=meta.get("family", ""), weights_random=bool(meta.get("weights_random", False)),
                   code_version=str(meta.get("code_version", "")),
                   boxes=dict(meta["boxes"]) if meta.get("boxes") is not None else None)

    def entry_fields(self) -> dict[str, Any]:
        """The cache entry fields this block was read from (their hash is the entry's key)."""
        fields = {"backbone": self.backbone, "family": self.family, "weights_id": self.weights_id,
                  "weights_digest": self.weights_digest, "weights_random": self.weights_random, "tap": self.tap,
                  "dim": self.dim, "preprocess": self.preprocess, "precision": self.precision, "dtype": self.dtype,
                  "code_version": self.code_version}
        if self.boxes is not None:  # absent otherwise: the keys of other blocks stay as they were
            fields["boxes"] = dict(self.boxes)
        return fields

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.entry_fields()}

    @property
    def pre(self) -> Preprocess:
        p = self.preprocess
        g = p["geometry"]
        return Preprocess(Geometry(int(g["size"]), g["resize"], float(g["crop_pct"]), g["interpolation"]),
                          tuple(p["mean"]), tuple(p["std"]), p["input"], float(p["box_margin"]))


@dataclass
class _Group:
    """Blocks that share one network and one input: one forward pass gives all their taps."""

    backbone: str
    weights_id: str
    pre: Preprocess
    precision: str
    blocks: list[BlockDef] = field(default_factory=list)
    model: TapModel | None = None


class Featurizer:
    """Compute blocks for in-memory images, as the extraction pass computed them.

    Parameters
    ----------
    blocks
        The blocks to compute (any backbones, taps, weights).
    weights_root
        Where fine-tuned weights ids are found (a bundle's ``weights/`` folder).
    device
        ``"cpu"`` (default) or a torch device.

    Raises
    ------
    WeightsMismatchError
        When a backbone's weights on this machine hash to another digest than the one
        the block was computed with (its features would not be the same numbers).
    """

    def __init__(self, blocks: Sequence[BlockDef], *, weights_root: str | None = None,
                 device: str | torch.device = "cpu"):
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.weights_root = weights_root
        groups: dict[tuple, _Group] = {}
        for b in self.blocks:
            key = (b.backbone, b.weights_id, repr(b.pre), b.precision)
            groups.setdefault(key, _Group(b.backbone, b.weights_id, b.pre, b.precision)).blocks.append(b)
        self.groups = list(groups.values())
        modes = {g.pre.input for g in self.groups}
        if len(modes) > 1:
            raise ValueError(f"blocks mix input modes {sorted(modes)}; one model takes one kind of input")
        self.input_mode = modes.pop() if modes else "whole"
        self.box_margin = self.groups[0].pre.box_margin if self.groups else 0.0
        sources = {json.dumps(b.boxes, sort_keys=True) for b in self.blocks}
        if len(sources) > 1:
            raise ValueError("blocks mix box sources (manual and predicted, or two Y-Nets); one model takes one "
                             "kind of box")
        #: The Y-Net whose boxes the blocks were computed on (None: manual boxes or whole images).
        self.box_net = None
        self._box_fields = self.blocks[0].boxes if self.blocks else None
        with using_root(weights_root):
            if self._box_fields is not None:
                self.box_net = _box_net(self._box_fields, weights_root)
            for g in self.groups:
                spec = get_backbone(g.backbone)
                w = resolve_weights(spec, g.weights_id)
                want = {b.weights_digest for b in g.blocks}
                if want != {w.digest}:
                    raise WeightsMismatchError(
                        f"{g.backbone}@{g.weights_id}: the weights at {w.path} hash to {w.digest[:12]}..., but the "
                        f"features were computed with {sorted(d[:12] + '...' for d in want)}; install the same "
                        f"weights (the bundle's model.json names them)")
                taps = [b.tap for b in g.blocks]
                g.model = TapModel(spec, build_model(spec, w), taps).eval().to(self.device)

    def predicted_boxes(self, images: Sequence[torch.Tensor]) -> list[Box]:
        """The boxes the blocks' Y-Net predicts for decoded images (the whole frame where
        its mask is empty), as the extraction pass computed them.

        Raises
        ------
        ValueError
            When the blocks are not on predicted boxes.
        """
        if self.box_net is None:
            raise ValueError("these blocks are not computed on predicted boxes: give the lesion boxes")
        found = self.box_net.boxes_of_images(list(images), device=self.device,
                                             precision=self._box_fields["precision"])
        return [b if b is not None else Box(0, 0, int(img.shape[-1]), int(img.shape[-2]))
                for b, img in zip(found, images)]

    def _inputs(self, images: Sequence[torch.Tensor], boxes: Sequence | None) -> list[torch.Tensor]:
        """Decoded images (``(1|3, H, W)`` in [0, 1]) cropped to their boxes in box mode
        (on predicted boxes: those the Y-Net predicts, unless ``boxes`` are given)."""
        if self.input_mode != "box":
            return list(images)
        if boxes is None and self.box_net is not None:
            boxes = self.predicted_boxes(images)
        if boxes is None or len(boxes) != len(images) or any(b is None for b in boxes):
            raise ValueError("this model takes the lesion box as input: give one box (x0, y0, x1, y1) per image")
        return [crop_to_box(img, box, self.box_margin) for img, box in zip(images, boxes)]

    @staticmethod
    def _gray(img: torch.Tensor) -> torch.Tensor:
        # The pass resizes one grey channel and replicates it; an RGB image whose channels
        # are equal is resized the same way, so both paths give the same numbers.
        if img.shape[0] == 3 and torch.equal(img[0], img[1]) and torch.equal(img[0], img[2]):
            return img[:1]
        return img

    def transform(self, images: Sequence[torch.Tensor], boxes: Sequence | None = None, *,
                  batch_size: int = 32) -> dict[str, np.ndarray]:
        """Block name -> ``(n, dim)`` features in the block's storage dtype.

        ``images`` are decoded tensors (:func:`~workbench.data.images.decode_image`, grey
        kept or not); ``boxes`` one ``(x0, y0, x1, y1)`` per image in box mode.
        """
        crops = [self._gray(x) for x in self._inputs(images, boxes)]
        out: dict[str, list[np.ndarray]] = {b.name: [] for b in self.blocks}
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                chunk = crops[start:start + batch_size]
                for g in self.groups:
                    x = torch.stack([g.pre.geometry(c).expand(3, -1, -1) for c in chunk]).to(self.device)
                    with self._autocast(g.precision):
                        feats = g.model(g.pre.normalize(x))
                    for b in g.blocks:
                        out[b.name].append(feats[b.tap].float().cpu().numpy().astype(b.dtype))
        return {name: (np.concatenate(v) if v else np.zeros((0, self._dim(name)), dtype=np.float32))
                for name, v in out.items()}

    def forward_tensor(self, image: torch.Tensor, box=None) -> dict[str, torch.Tensor]:
        """Differentiable features of one image (fp32, no dtype rounding): block name ->
        ``(dim,)`` tensor, for explanations by gradients through the networks."""
        out = {}
        for g, x in self.network_inputs(image, box):
            feats = g.model(x)
            for b in g.blocks:
                out[b.name] = feats[b.tap][0]
        return out

    def network_inputs(self, image: torch.Tensor, box=None) -> list[tuple[_Group, torch.Tensor]]:
        """Each network's differentiable input for one image: ``(group, (1, 3, S, S) tensor)``
        pairs, the box crop (box mode) resized and normalised as :meth:`forward_tensor` feeds
        ``group.model``; for explanations that need the network's layers, not only its taps."""
        (crop,) = self._inputs([image], None if box is None else [box])
        crop = crop.to(self.device)
        if crop.shape[0] == 1:
            crop = crop.expand(3, -1, -1)
        return [(g, g.pre.normalize(_resize_differentiable(g.pre.geometry, crop)[None])) for g in self.groups]

    def input_region(self, height: int, width: int, box=None) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the pixels the networks see in an ``height`` x ``width``
        image: the whole frame, or in box mode the box widened by the margin and clipped."""
        if self.input_mode != "box":
            return (0, 0, int(width), int(height))
        if box is None:
            raise ValueError("this model takes the lesion box as input: give one box (x0, y0, x1, y1)")
        r = Box.of(box).widen(self.box_margin, int(width), int(height))
        return (r.x0, r.y0, r.x1, r.y1)

    def _autocast(self, precision: str):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _dim(self, name: str) -> int:
        return next(b.dim for b in self.blocks if b.name == name)


def _box_net(fields: Mapping[str, Any], weights_root: str | None):
    """The Y-Net of a block's box source, checked to be the one the features were computed with."""
    from workbench.features.predicted_boxes import BoxNet

    return BoxNet.from_fields(fields, root=weights_root)


def _resize_differentiable(geometry: Geometry, img: torch.Tensor) -> torch.Tensor:
    """:class:`Geometry` with an out-of-place clamp, so autograd passes through it."""
    return geometry.unclamped(img).clamp(0.0, 1.0)

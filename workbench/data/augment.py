"""Training-time augmentation and Cut&Remain for fine-tuning CNNs.

Three pieces, used together by the end-to-end baselines:

- :class:`StudyAugment`: the random affine + flip augmentation of the thyroid-US
  study (rotation within +-10 deg, horizontal flip p=0.5, zoom 95-105 %, shift up to
  10 % of width/height), drawn from torch's RNG so ``torch.manual_seed`` replays a run.
- Cut&Remain (Lee et al., "Look At Here: Utilizing Supervision To Attend Subtle Key
  Regions", arXiv:2111.13233, 2021): besides each image with a lesion box, the
  mini-batch holds a copy in which every pixel outside the box is zero, with the same
  label, so the net learns to look at the lesion. :func:`remain_box` and
  :func:`cut_and_remain` do the masking.
- :class:`TrainImageDataset` and :func:`collate`: decode, mask, resize, augment and
  normalise; a batch of B images with k boxes becomes B + k rows.

Order of operations per sample: decode -> (Cut&Remain copy, in original pixels) ->
geometry (resize to S x S) -> augmentation (each copy drawn independently) ->
normalisation. Masking comes first because boxes are in the file's pixel grid;
augmentation comes after the resize because it is cheaper on S x S tensors and its
shift is relative to the image size anyway.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NotRequired, TypedDict

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from workbench.data.boxes import Box, BoxError
from workbench.data.images import decode_image
from workbench.data.manifest import Item
from workbench.data.pixels import PixelStore
from workbench.data.preprocess import Geometry
from workbench.errors import ConfigError

__all__ = [
    "BOX_MODES",
    "AffineParams",
    "BoxError",
    "StudyAugment",
    "TrainImageDataset",
    "TrainSample",
    "TrainBatch",
    "collate",
    "cut_and_remain",
    "read_lesion_mask",
    "remain_box",
]

BoxMode = Literal["tight", "square", "margin"]

#: How :func:`remain_box` turns an annotated box into the region kept by Cut&Remain.
BOX_MODES: tuple[str, ...] = ("tight", "square", "margin")


# ---- Cut&Remain --------------------------------------------------------------------


def remain_box(
    box: Sequence[float],
    width: int,
    height: int,
    mode: BoxMode = "tight",
    *,
    margin: float = 0.1,
) -> Box:
    """The region Cut&Remain keeps, as an integer box inside the image.

    The Cut&Remain paper (arXiv:2111.13233) keeps the annotated bounding box; the
    text we could consult (its abstract) says nothing about aspect-ratio options, so
    ``square`` and ``margin`` are this workbench's additions for lesions whose tight
    box leaves out the surrounding tissue a radiologist reads.

    Parameters
    ----------
    box : sequence of 4 int
        (x0, y0, x1, y1) in image pixels, x1/y1 exclusive; must lie inside the image.
    width, height : int
        Image size in pixels.
    mode : {"tight", "square", "margin"}
        - ``tight``: the box as annotated.
        - ``square``: the shorter side widened to the longer one, symmetrically
          about the centre (an odd surplus puts the extra pixel right / below),
          then clipped to the image; near a border the result can be non-square.
        - ``margin``: each side pushed out by ``margin`` times the box's width
          (left/right) or height (top/bottom), rounded outwards, clipped to the
          image; the same rule as :func:`workbench.data.images.crop_to_box`.
    margin : float
        Relative margin for ``mode="margin"`` (>= 0); ignored otherwise.

    Returns
    -------
    tuple of int
        (x0, y0, x1, y1) with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height; it
        always contains the given box.

    Raises
    ------
    BoxError
        If the box is empty or not wholly inside the image (naming box and size).
    ConfigError
        For an unknown ``mode`` or a negative / non-finite ``margin``.
    """
    if mode not in BOX_MODES:
        raise ConfigError(f"box mode must be one of {BOX_MODES}, got {mode!r}")
    checked = Box.inside(box, width, height)
    if mode == "tight":
        return checked
    if mode == "square":
        return checked.squared(width, height)
    return checked.widen(margin, width, height)


def cut_and_remain(
    img: torch.Tensor,
    box: Sequence[float],
    mode: BoxMode = "tight",
    *,
    margin: float = 0.1,
) -> torch.Tensor:
    """A copy of ``img`` with every pixel outside the (adjusted) box set to zero.

    Parameters
    ----------
    img : torch.Tensor
        (C, H, W) image; the box is in its pixel grid.
    box : sequence of 4 int
        (x0, y0, x1, y1), x1/y1 exclusive, inside the image.
    mode, margin
        How the kept region is derived from the box; see :func:`remain_box`.

    Returns
    -------
    torch.Tensor
        New tensor, same shape/dtype/device: equal to ``img`` inside the region and
        zero outside. ``img`` is not modified.

    Raises
    ------
    BoxError
        If the box is empty or not inside the image.
    """
    if img.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(img.shape)}")
    _, h, w = img.shape
    x0, y0, x1, y1 = remain_box(box, w, h, mode, margin=margin)
    out = torch.zeros_like(img)
    out[:, y0:y1, x0:x1] = img[:, y0:y1, x0:x1]
    return out


# ---- augmentation ------------------------------------------------------------------


@dataclass(frozen=True)
class AffineParams:
    """One draw of :class:`StudyAugment`'s random parameters.

    ``angle`` in degrees (counter-clockwise), ``translate`` (dx, dy) in whole pixels,
    ``scale`` a zoom factor (1 = none), ``flip`` whether the image is mirrored
    left-right (after the affine).
    """

    angle: float
    translate: tuple[int, int]
    scale: float
    flip: bool

    @property
    def is_identity(self) -> bool:
        return self.angle == 0 and self.translate == (0, 0) and self.scale == 1 and not self.flip


class StudyAugment(torch.nn.Module):
    """Random rotation, zoom, shift and horizontal flip of a (C, H, W) image.

    Defaults are the thyroid-US study's: rotation uniform in +-10 deg, horizontal flip
    with p = 0.5, zoom uniform in 95-105 %, shift uniform up to 10 % of the width
    (horizontally) and of the height (vertically), rounded to whole pixels as
    ``torchvision.transforms.v2.RandomAffine`` does. Rotation, zoom and shift are one
    affine warp about the centre (one interpolation); uncovered pixels are ``fill``.

    Randomness comes from torch's global RNG, so ``torch.manual_seed(s)`` replays a
    run, and DataLoader workers (which seed their own torch RNG from the main
    process's) stay reproducible too. No generator is stored on purpose: a stored
    ``torch.Generator`` would be copied into every worker with the same state, giving
    identical "random" augmentations across workers. Pass ``generator=`` per call
    when you need a private stream (tests, a single process).

    Parameters
    ----------
    degrees : float
        Maximum absolute rotation in degrees (>= 0).
    flip_p : float
        Probability of a horizontal flip, in [0, 1].
    scale : (float, float)
        Zoom factor range (low, high), 0 < low <= high.
    translate : (float, float)
        Maximum shift as a fraction of width and of height, each in [0, 1].
    fill : float
        Value of pixels uncovered by the warp; 0 (black) before normalisation.
    interpolation : str
        ``"bilinear"`` or ``"nearest"`` (torchvision InterpolationMode values).
    enabled : bool
        False makes the module the identity (see :meth:`none`).

    Examples
    --------
    >>> aug = StudyAugment()
    >>> _ = torch.manual_seed(0)
    >>> aug(torch.rand(3, 32, 32)).shape
    torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        *,
        degrees: float = 10.0,
        flip_p: float = 0.5,
        scale: tuple[float, float] = (0.95, 1.05),
        translate: tuple[float, float] = (0.1, 0.1),
        fill: float = 0.0,
        interpolation: str = "bilinear",
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not (math.isfinite(degrees) and degrees >= 0):
            raise ConfigError(f"degrees must be a finite number >= 0, got {degrees}")
        if not 0.0 <= flip_p <= 1.0:
            raise ConfigError(f"flip_p must be within [0, 1], got {flip_p}")
        lo, hi = (float(s) for s in scale)
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        tx, ty = (float(t) for t in translate)
        if not (0 <= tx <= 1 and 0 <= ty <= 1):
            raise ConfigError(f"translate fractions must be within [0, 1], got {translate}")
        self.degrees = float(degrees)
        self.flip_p = float(flip_p)
        self.scale = (lo, hi)
        self.translate = (tx, ty)
        self.fill = float(fill)
        self.interpolation = InterpolationMode(interpolation)
        self.enabled = bool(enabled)

    @classmethod
    def none(cls) -> StudyAugment:
        """An instance that returns its input unchanged (augmentation off)."""
        return cls(enabled=False)

    def sample_params(
        self, width: int, height: int, *, generator: torch.Generator | None = None
    ) -> AffineParams:
        """Draw one set of parameters for a width x height image."""
        if not self.enabled:
            return AffineParams(0.0, (0, 0), 1.0, False)

        def uniform(a: float, b: float) -> float:
            if a == b:  # keeps "no zoom" exactly 1.0 and avoids consuming randomness
                return a
            return float(torch.empty(1).uniform_(a, b, generator=generator).item())

        angle = uniform(-self.degrees, self.degrees)
        max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
        dx, dy = int(round(uniform(-max_dx, max_dx))), int(round(uniform(-max_dy, max_dy)))
        scale = uniform(*self.scale)
        flip = self.flip_p > 0 and float(torch.rand(1, generator=generator).item()) < self.flip_p
        return AffineParams(angle, (dx, dy), scale, flip)

    def apply(self, img: torch.Tensor, params: AffineParams) -> torch.Tensor:
        """Apply given parameters to a (..., C, H, W) tensor (deterministic)."""
        out = img
        if params.angle != 0 or params.translate != (0, 0) or params.scale != 1:
            out = TF.affine(
                out,
                angle=params.angle,
                translate=list(params.translate),
                scale=params.scale,
                shear=[0.0, 0.0],
                interpolation=self.interpolation,
                fill=self.fill,
            )
        if params.flip:
            out = TF.horizontal_flip(out)
        return out

    def apply_joint(self, img: torch.Tensor, params: AffineParams, *, mask: torch.Tensor | None = None,
                    boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Apply ``params`` to an image and, with the same warp, its lesion mask and boxes.

        The image goes through exactly :meth:`apply` (same numbers). The mask (``(H, W)``
        or ``(1, H, W)``, 0/1) is warped as a ``tv_tensors.Mask`` (nearest neighbour, 0
        where uncovered, so it stays binary) and the boxes (``(N, 4)`` x0, y0, x1, y1 in
        pixels) as ``tv_tensors.BoundingBoxes``: torchvision maps their corners and takes
        the enclosing box, clamped to the image, so a box still bounds its lesion after a
        rotation. Returns ``(image, mask, boxes)``, ``None`` where none was given.
        """
        from torchvision import tv_tensors

        h, w = img.shape[-2:]
        out_mask = None if mask is None else tv_tensors.Mask(mask)
        out_boxes = None if boxes is None else tv_tensors.BoundingBoxes(
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w))
        warp = params.angle != 0 or params.translate != (0, 0) or params.scale != 1
        if warp:
            kw = dict(angle=params.angle, translate=list(params.translate), scale=params.scale, shear=[0.0, 0.0])
            out_mask = None if out_mask is None else TF.affine(out_mask, **kw, fill=0)
            out_boxes = None if out_boxes is None else TF.clamp_bounding_boxes(TF.affine(out_boxes, **kw))
        if params.flip:
            out_mask = None if out_mask is None else TF.horizontal_flip(out_mask)
            out_boxes = None if out_boxes is None else TF.horizontal_flip(out_boxes)
        return (self.apply(img, params), None if out_mask is None else out_mask.as_subclass(torch.Tensor),
                None if out_boxes is None else out_boxes.as_subclass(torch.Tensor))

    def forward(self, img: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment one (C, H, W) image (a (B, C, H, W) batch gets one shared draw)."""
        if img.ndim < 3:
            raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(img.shape)}")
        if not self.enabled:
            return img
        h, w = img.shape[-2:]
        return self.apply(img, self.sample_params(w, h, generator=generator))

    def extra_repr(self) -> str:
        if not self.enabled:
            return "enabled=False"
        return (
            f"degrees={self.degrees}, flip_p={self.flip_p}, scale={self.scale}, "
            f"translate={self.translate}, fill={self.fill}, interpolation={self.interpolation.value}"
        )


# ---- dataset -----------------------------------------------------------------------


class TrainSample(TypedDict):
    """One item of :class:`TrainImageDataset`.

    ``masked`` is the Cut&Remain copy (3, S, S), or None when Cut&Remain is off or
    the item has no box.
    """

    image: torch.Tensor
    label: int
    index: int
    masked: torch.Tensor | None
    #: With ``masks=True``: the lesion mask (1, S, S) warped with ``image`` (zeros when
    #: the item has none) and whether there is one; ``masked_mask`` goes with ``masked``.
    mask: NotRequired[torch.Tensor]
    has_mask: NotRequired[bool]
    masked_mask: NotRequired[torch.Tensor | None]


class TrainBatch(TypedDict):
    """A batch from :func:`collate`: B images, then the k masked copies.

    ``indices`` are dataset indices (a masked row repeats its image's index), and
    ``is_masked`` flags the Cut&Remain rows.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    is_masked: torch.Tensor
    #: With masks: (B + k, 1, S, S) uint8 lesion masks and which rows have one.
    masks: NotRequired[torch.Tensor]
    has_mask: NotRequired[torch.Tensor]


def collate(samples: Sequence[TrainSample]) -> TrainBatch:
    """Stack samples into one batch; Cut&Remain copies are appended as extra rows.

    A list of B samples of which k carry a masked copy gives B + k rows: the B
    images in order, then the k copies in the same order, each with its image's label
    and index. Use as ``DataLoader(ds, collate_fn=collate)``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    extra = [s for s in samples if s["masked"] is not None]
    images = [s["image"] for s in samples] + [s["masked"] for s in extra]
    labels = [s["label"] for s in samples] + [s["label"] for s in extra]
    indices = [s["index"] for s in samples] + [s["index"] for s in extra]
    is_masked = torch.zeros(len(images), dtype=torch.bool)
    is_masked[len(samples):] = True
    batch = TrainBatch(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        indices=torch.tensor(indices, dtype=torch.long),
        is_masked=is_masked,
    )
    if "mask" in samples[0]:
        masks = [s["mask"] for s in samples] + [s["masked_mask"] for s in extra]
        has = [s["has_mask"] for s in samples] + [s["has_mask"] for s in extra]
        batch.update(masks=torch.stack(masks), has_mask=torch.tensor(has, dtype=torch.bool))
    return batch


def read_lesion_mask(it: Item, height: int, width: int) -> torch.Tensor:
    """The item's mask file (``mask_path``, set) as a (1, H, W) bool tensor, foreground > 0.5.

    Raises
    ------
    ImageDecodeError
        The mask file cannot be decoded (naming it).
    ConfigError
        The mask is not ``height x width``, its image's size (naming both).
    """
    m = decode_image(it.mask_path, keep_gray=True)[:1]
    if m.shape[-2:] != (height, width):
        raise ConfigError(f"mask {it.mask_path} of item {it.id!r} is {m.shape[-1]}x{m.shape[-2]} pixels, its "
                          f"image {width}x{height}: a mask must have its image's size")
    return m > 0.5


class TrainImageDataset(Dataset):
    """Images of a manifest as normalised (3, S, S) tensors for fine-tuning a CNN.

    Per item: decode (grayscale replicated to 3 channels) -> with ``cut_remain`` and
    a box, a masked copy (zero outside the box, in the file's pixels) -> geometry to
    S x S -> ``augment`` (drawn independently for the two copies) -> ``(x - mean) /
    std``. With ``augment=None`` and ``cut_remain=False`` the tensors are
    deterministic, which is the evaluation setting.

    Boxes are checked against image sizes here, before any training starts (sizes
    from ``item.width/height`` when set, else read from the file header); items
    without a box under Cut&Remain are kept unmasked and listed in
    :attr:`missing_box_ids`.

    Parameters
    ----------
    items : sequence of Item
        The images, e.g. ``manifest.items`` filtered to a split or a fold.
    classes : sequence of str
        Class names; a label's position is its index.
    geometry : Geometry or int
        Resize settings, or an output size S used with ``resize``.
    mean, std : sequence of 3 float
        Normalisation from the backbone's weights metadata.
    augment : StudyAugment or None
        Training augmentation; None for evaluation.
    cut_remain : bool
        Add a Cut&Remain copy for every item with a box.
    box_mode : {"tight", "square", "margin"}
        Kept region for Cut&Remain (see :func:`remain_box`).
    box_margin : float
        Relative margin for ``box_mode="margin"``.
    resize : str
        Resize mode when ``geometry`` is an int (see ``Geometry``).
    masks : bool
        Also return each item's lesion mask (``mask_path``; binary, foreground > 0.5),
        resized by the same geometry (nearest neighbour) and warped by the same
        augmentation draw as its image (:meth:`StudyAugment.apply_joint`); items without
        a mask get zeros and ``has_mask=False`` (e.g. normal images: they train a
        classification loss only). The image tensors are the same numbers either way.
    pixels : PixelStore or None
        Read decoded images from this pixel store (the same tensors, decoded only for
        images it lacks; an item's bytes must still hash to its validated digest);
        None decodes every file every epoch.

    Raises
    ------
    BoxError
        Under ``cut_remain``, if any box is empty or not inside its image; names the
        first item, and lists the others.
    ConfigError
        For a label not in ``classes``, bad mean/std, or an unknown ``box_mode``.
    ImageDecodeError
        If an image needed for the box check has no readable header (and later, from
        ``__getitem__``, if an image cannot be decoded).
    """

    def __init__(
        self,
        items: Sequence[Item],
        classes: Sequence[str],
        geometry: Geometry | int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: StudyAugment | None = None,
        cut_remain: bool = False,
        box_mode: BoxMode = "tight",
        box_margin: float = 0.1,
        resize: str = "squash",
        masks: bool = False,
        pixels: PixelStore | None = None,
    ) -> None:
        self.items = list(items)
        self.pixels = pixels
        self.masks = bool(masks)
        self.classes = [str(c) for c in classes]
        self.class_to_index = {c: i for i, c in enumerate(self.classes)}
        if len(self.class_to_index) != len(self.classes):
            raise ConfigError(f"duplicate class names in {self.classes!r}")
        unknown = [(it.id, it.label) for it in self.items if it.label not in self.class_to_index]
        if unknown:
            shown = ", ".join(f"{i} ({lab!r})" for i, lab in unknown[:5])
            raise ConfigError(
                f"{len(unknown)} item(s) with a label not in classes {self.classes}: {shown}"
                + (" ..." if len(unknown) > 5 else "")
            )
        self.geometry = geometry if isinstance(geometry, Geometry) else Geometry(int(geometry), resize=resize)
        self.mean = self._channel_stats(mean, "mean")
        self.std = self._channel_stats(std, "std")
        if (self.std <= 0).any():
            raise ConfigError(f"std must be > 0, got {list(std)}")
        self.augment = augment
        self.cut_remain = bool(cut_remain)
        if box_mode not in BOX_MODES:
            raise ConfigError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        if not (math.isfinite(box_margin) and box_margin >= 0):
            raise ConfigError(f"box_margin must be a finite number >= 0, got {box_margin}")
        self.box_mode = box_mode
        self.box_margin = float(box_margin)
        self.labels = [self.class_to_index[it.label] for it in self.items]
        self.missing_box_ids: list[str] = (
            [it.id for it in self.items if it.box is None] if self.cut_remain else []
        )
        if self.cut_remain:
            self._check_boxes()

    @staticmethod
    def _channel_stats(values: Sequence[float], name: str) -> torch.Tensor:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        if t.shape != (3,) or not torch.isfinite(t).all():
            raise ConfigError(f"{name} must be 3 finite numbers, got {list(values)}")
        return t.view(3, 1, 1)

    def _check_boxes(self) -> None:
        """Raise one BoxError for all items whose box does not fit their image."""
        errors: list[BoxError] = []
        for it in self.items:
            if it.box is None:
                continue
            w, h = it.size()  # header only when not validated
            try:
                remain_box(it.box, w, h, self.box_mode, margin=self.box_margin)
            except BoxError as e:
                errors.append(e.with_item(it.id))
        if errors:
            first, rest = errors[0], errors[1:]
            raise first.with_item(first.item_id, others=rest)

    @property
    def n_masked(self) -> int:
        """Number of items that get a Cut&Remain copy."""
        return len(self.items) - len(self.missing_box_ids) if self.cut_remain else 0

    def __len__(self) -> int:
        return len(self.items)

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        """Geometry, augmentation, normalisation of one decoded (3, H, W) image."""
        x = self.geometry(img)
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std

    def _lesion_mask(self, it: Item, height: int, width: int) -> tuple[torch.Tensor, bool]:
        """The item's mask as a (1, H, W) 0/1 float tensor at its image's size (zeros without one)."""
        if it.mask_path is None:
            return torch.zeros(1, height, width), False
        return read_lesion_mask(it, height, width).float(), True

    def _finish_joint(self, img: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_finish` of an image and, with the same geometry and draw, its mask."""
        x = self.geometry(img)
        m = dataclasses.replace(self.geometry, interpolation="nearest").unclamped(mask)
        if self.augment is not None:
            params = self.augment.sample_params(x.shape[-1], x.shape[-2])  # the draw forward() would make
            x, m, _ = self.augment.apply_joint(x, params, mask=m)
        return (x - self.mean) / self.std, (m > 0.5).to(torch.uint8)

    def __getitem__(self, index: int) -> TrainSample:
        it = self.items[index]
        if self.pixels is not None:
            img = self.pixels.get(it)  # grey kept as one channel: replicated as decode_image does
            img = img.repeat(3, 1, 1) if img.shape[0] == 1 else img
        else:
            img = decode_image(it.path)  # ImageDecodeError names the file
        masked = None
        if self.cut_remain and it.box is not None:
            try:
                masked = cut_and_remain(img, it.box, self.box_mode, margin=self.box_margin)
            except BoxError as e:  # the file changed size since __init__ checked it
                raise e.with_item(it.id) from None
        if not self.masks:
            return TrainSample(
                image=self._finish(img),
                label=self.labels[index],
                index=int(index),
                masked=None if masked is None else self._finish(masked),
            )
        lesion, has = self._lesion_mask(it, *img.shape[-2:])
        x, m = self._finish_joint(img, lesion)
        xm, mm = (None, None) if masked is None else self._finish_joint(masked, lesion)
        return TrainSample(image=x, label=self.labels[index], index=int(index), masked=xm, mask=m, has_mask=has,
                           masked_mask=mm)

    #: ``DataLoader(ds, collate_fn=ds.collate)``
    collate = staticmethod(collate)

    def __repr__(self) -> str:
        cr = (
            f", cut_remain={self.box_mode!r} ({self.n_masked} boxed, "
            f"{len(self.missing_box_ids)} without box)"
            if self.cut_remain
            else ""
        )
        return (
            f"{type(self).__name__}({len(self)} items, classes={self.classes}, "
            f"size={self.geometry.size}, augment={self.augment is not None}{cr})"
        )

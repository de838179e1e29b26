"""Bounding boxes: one type for parsing, checking, widening and clipping them.

A :class:`Box` is ``(x0, y0, x1, y1)`` in image pixels, x1/y1 exclusive. It is a
named tuple, so it compares equal to, hashes, pickles and serialises (JSON: a list)
exactly like the plain 4-tuples that items, feature-cache keys and records have always
held; code that only reads a box can keep treating it as a tuple.

The manifest parses boxes from CSV cells (:meth:`Box.from_cells`), the image crop and
Cut&Remain widen and clip them (:meth:`Box.widen`, :meth:`Box.squared`,
:meth:`Box.clip`), the training data checks them against their image
(:meth:`Box.inside`) and Grad-CAM asks whether a peak lies in one
(:meth:`Box.contains`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from workbench.errors import ConfigError, WorkbenchError

__all__ = ["BOX_COLUMNS", "Box", "BoxError", "BoxValueError", "MASK_THRESHOLD", "check_margin", "mask_box"]

#: The manifest columns of a box, in ``Box`` field order.
BOX_COLUMNS = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")

#: Probability above which a pixel of a predicted lesion map is lesion (a sigmoid's 0.5: logit > 0).
MASK_THRESHOLD = 0.5

# Margins are products like 0.15 * 20 = 3.0000000000000004: without the slack they
# would round out one pixel more than meant.
_EPS = 1e-6


class BoxValueError(WorkbenchError, ValueError):
    """Values that do not make a box (empty, non-integer, not four of them)."""


class BoxError(BoxValueError):
    """A bounding box cannot be used on its image (empty, or not inside it).

    Attributes
    ----------
    box : tuple
        The box as given, (x0, y0, x1, y1), x1/y1 exclusive.
    width, height : int
        The image size the box was checked against.
    reason : str
        What is wrong, e.g. ``"lies partly outside the image"``.
    item_id : str or None
        The manifest item, when the box came from one (set by the dataset).
    others : tuple of BoxError
        Further bad boxes found in the same check (``other_ids`` names their items),
        so a data set is fixed in one pass; each has a line in ``str(error)``.
    """

    def __init__(
        self,
        box: Sequence[float],
        width: int,
        height: int,
        reason: str,
        *,
        item_id: str | None = None,
        others: Sequence[BoxError] = (),
    ) -> None:
        self.box = tuple(box)
        self.width, self.height = int(width), int(height)
        self.reason = reason
        self.item_id = item_id
        self.others = tuple(others)
        super().__init__(self._format())

    @property
    def other_ids(self) -> tuple[str | None, ...]:
        return tuple(o.item_id for o in self.others)

    def _describe(self) -> str:
        where = f"item {self.item_id}: " if self.item_id is not None else ""
        return f"{where}box {self.box} {self.reason} ({self.width}x{self.height} image)"

    def _format(self) -> str:
        lines = [self._describe()]
        if self.others:
            lines.append(f"{len(self.others)} more item(s) with a bad box:")
            lines += [f"  {o._describe()}" for o in self.others]
        return "\n".join(lines)

    def with_item(self, item_id: str | None, others: Sequence[BoxError] = ()) -> BoxError:
        """The same error, naming the manifest item it came from (and further ones)."""
        return BoxError(self.box, self.width, self.height, self.reason, item_id=item_id, others=others)

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (_rebuild_box_error, (self.box, self.width, self.height, self.reason, self.item_id, self.others))


def _rebuild_box_error(box, width, height, reason, item_id, others):
    return BoxError(box, width, height, reason, item_id=item_id, others=others)


def check_margin(margin: float) -> float:
    """``margin`` if it is a finite number >= 0; :class:`ConfigError` naming it otherwise."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin must be a finite number >= 0, got {margin}")
    return margin


def _cell_value(name: str, text: str) -> tuple[int | None, str | None]:
    """One CSV cell as an integer, or the reason it is not one."""
    try:
        v = float(text)
    except ValueError:
        return None, f"non-numeric bounding box value {name}={text!r}"
    if not math.isfinite(v) or v != int(v):
        return None, f"bounding box value {name}={text!r} is not an integer"
    return int(v), None


def _integers(values: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Four integer-valued numbers as ints, or :class:`BoxError` against that image size."""
    try:
        values = tuple(values)
    except TypeError:
        raise BoxError((values,), width, height, "is not a sequence of 4 numbers") from None
    if len(values) != 4:
        raise BoxError(values, width, height, "must have 4 values (x0, y0, x1, y1)")
    try:
        floats = [float(v) for v in values]  # also numpy / torch scalars
    except (TypeError, ValueError):
        floats = [math.nan]
    if not all(math.isfinite(v) and v == int(v) for v in floats):
        raise BoxError(values, width, height, "must hold integer pixel coordinates")
    x0, y0, x1, y1 = (int(v) for v in floats)
    return x0, y0, x1, y1


class Box(NamedTuple):
    """``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive; prints like the plain tuple."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __str__(self) -> str:  # messages show "(1, 2, 3, 4)", as they did for tuples
        return tuple.__repr__(self)

    # ---- construction --------------------------------------------------------------

    @classmethod
    def of(cls, values: Sequence[float]) -> Box:
        """A non-empty box from four numbers, each truncated to an int.

        Raises
        ------
        BoxValueError
            If ``x1 <= x0`` or ``y1 <= y0``.
        """
        box = cls._make(int(v) for v in values)
        if box.is_empty:
            raise BoxValueError(f"empty box {tuple(values)}: need x1 > x0 and y1 > y0")
        return box

    @classmethod
    def from_cells(cls, cells: Mapping[str, str]) -> Box | None:
        """A box from manifest cells keyed by :data:`BOX_COLUMNS`; None when all are empty.

        Raises
        ------
        BoxValueError
            The row's reason: incomplete, non-numeric, non-integer, negative or empty.
        """
        missing = [k for k in BOX_COLUMNS if not cells.get(k)]
        if len(missing) == len(BOX_COLUMNS):
            return None
        if missing:
            raise BoxValueError(f"incomplete bounding box ({', '.join(missing)} empty)")
        values = []
        for k in BOX_COLUMNS:
            v, problem = _cell_value(k, cells[k])
            if problem:
                raise BoxValueError(problem)
            values.append(v)
        box = cls._make(values)
        if min(box) < 0:
            raise BoxValueError(f"negative bounding box coordinate in {box}")
        if box.is_empty:
            raise BoxValueError(f"empty bounding box {box}: need x1 > x0 and y1 > y0")
        return box

    @classmethod
    def inside(cls, values: Sequence[float], width: int, height: int) -> Box:
        """An integer box wholly inside a ``width`` x ``height`` image.

        Raises
        ------
        BoxError
            Naming box and size: not four integers, empty, or wholly or partly outside.
            Not clipped silently: a box that overhangs its image means the annotation
            belongs to another file or another resolution, which clipping would hide.
        """
        box = cls._make(_integers(values, width, height))
        shown = tuple(values)
        if box.is_empty:
            raise BoxError(shown, width, height, "is empty: need x1 > x0 and y1 > y0")
        if box.x1 <= 0 or box.y1 <= 0 or box.x0 >= width or box.y0 >= height:
            raise BoxError(shown, width, height, "lies wholly outside the image")
        if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
            raise BoxError(shown, width, height, "lies partly outside the image")
        return box

    # ---- geometry --------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def fits(self, width: int, height: int) -> bool:
        """Whether the far corner lies within a ``width`` x ``height`` image."""
        return self.x1 <= width and self.y1 <= height

    def contains(self, x: int, y: int) -> bool:
        """Whether pixel ``(x, y)`` lies in the box."""
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def clip(self, width: int, height: int) -> Box:
        """The part inside a ``width`` x ``height`` image (empty when none is)."""
        return Box(max(0, self.x0), max(0, self.y0), min(width, self.x1), min(height, self.y1))

    def widen(self, margin: float, width: int, height: int) -> Box:
        """Each side pushed out by ``margin`` x the box's width (left/right) or height
        (top/bottom), rounded outwards, clipped to the image.

        Raises
        ------
        ConfigError
            For a negative or non-finite ``margin``.
        """
        check_margin(margin)
        mx, my = margin * self.width, margin * self.height
        return Box(math.floor(self.x0 - mx + _EPS), math.floor(self.y0 - my + _EPS),
                   math.ceil(self.x1 + mx - _EPS), math.ceil(self.y1 + my - _EPS)).clip(width, height)

    def squared(self, width: int, height: int) -> Box:
        """The shorter side widened to the longer one about the centre (an odd surplus
        puts the extra pixel right / below), clipped to the image."""
        side = max(self.width, self.height)
        ex, ey = side - self.width, side - self.height
        return Box(self.x0 - ex // 2, self.y0 - ey // 2, self.x1 + (ex - ex // 2),
                   self.y1 + (ey - ey // 2)).clip(width, height)


def mask_box(prob, threshold: float = MASK_THRESHOLD) -> Box | None:
    """Bounding box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the largest connected region
    of ``prob > threshold`` (8-connected), or None when no pixel is above it.

    A stray speck elsewhere in the frame must not stretch the box, hence the largest
    region only (the first of equal largest ones). Here, below the training and feature
    layers, so a Y-Net's masks give the same boxes wherever they are turned into boxes.

    Raises
    ------
    ConfigError
        For a map that is not 2-D.
    """
    import numpy as np  # lazy: this module is imported by the command line's --help
    from scipy import ndimage

    fg = np.asarray(prob) > threshold
    if fg.ndim != 2:
        raise ConfigError(f"expected a 2-D probability map, got shape {fg.shape}")
    if not fg.any():
        return None
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        fg = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.nonzero(fg)
    return Box(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)

"""What a Y-Net bundle says about the lesion in one image: its mask, box and contour.

A Y-Net baseline (:mod:`workbench.backbones.ynet`) gives a lesion probability map
besides the class probabilities. :meth:`BundleModel.segment` brings the map back onto the
image (the inverse of the network's resize, as the run scored it) through the one Y-Net
mask pipeline (:mod:`workbench.backbones.ynet_masks`, which the run's Dice and predicted
boxes went through too) and wraps it here: the thresholded mask, the predicted box
(:func:`workbench.data.boxes.mask_box`: the largest connected region, so a stray speck
does not stretch it) and the mask's contour for drawing (:func:`mask_contours`).

Coordinates are the image's pixel frame, as boxes are: pixel ``(x, y)`` covers
``[x, x + 1) x [y, y + 1)``, so a mask filling the image has the contour of its border
``(0, 0)-(W, H)`` and the box ``(0, 0, W, H)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.data.boxes import Box

__all__ = ["Segmentation", "mask_contours"]


def mask_contours(prob: np.ndarray, threshold: float = 0.5) -> list[np.ndarray]:
    """Closed outlines of the region ``prob > threshold`` (sub-pixel: the level line of
    the bilinearly interpolated map).

    Uses ``contourpy`` (matplotlib's contour engine, installed with it). The map is
    padded with a zero border first, so a region touching the image's edge is closed
    along it rather than left open.

    Parameters
    ----------
    prob : ndarray (H, W)
        Lesion probability per pixel.
    threshold : float
        The level traced.

    Returns
    -------
    list of ndarray (k, 2)
        ``(x, y)`` points of each closed outline (first point repeated last), the largest
        enclosed area first; outer boundaries and the boundaries of holes alike. Empty when
        no pixel is above ``threshold``.
    """
    from contourpy import LineType, contour_generator

    z = np.asarray(prob, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {z.shape}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    h, w = z.shape
    z = np.nan_to_num(z, nan=0.0)
    if h == 0 or w == 0 or not (z > threshold).any():  # the mask's own rule: empty mask, no outline
        return []
    # Zero outside the image: for threshold 0.5 an edge pixel of p = 1 puts the outline
    # exactly on the image's edge (linear interpolation from the pad at -0.5 to it at 0.5).
    z = np.pad(z, 1, constant_values=0.0 if threshold > 0 else threshold - 1.0)
    # Grid points at pixel centres (x + 0.5 in the box frame); the pad lies at -0.5 and W + 0.5.
    xs = np.arange(w + 2, dtype=np.float64) - 0.5
    ys = np.arange(h + 2, dtype=np.float64) - 0.5
    gen = contour_generator(xs, ys, z, line_type=LineType.Separate)
    lines = [np.asarray(seg, dtype=np.float64) for seg in gen.lines(threshold) if len(seg) >= 3]
    out = []
    for seg in lines:
        # A line through the zero pad sits half a pixel outside the frame: clamp it onto the edge.
        seg[:, 0] = np.clip(seg[:, 0], 0.0, float(w))
        seg[:, 1] = np.clip(seg[:, 1], 0.0, float(h))
        if not np.array_equal(seg[0], seg[-1]):
            seg = np.vstack([seg, seg[:1]])
        out.append(seg)
    out.sort(key=lambda s: -abs(_area(s)))
    return out


def _area(poly: np.ndarray) -> float:
    """Signed shoelace area of a closed ``(k, 2)`` polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


@dataclass
class Segmentation:
    """One image's lesion segmentation by a Y-Net bundle.

    Attributes
    ----------
    prob : ndarray (H, W) float32
        Lesion probability per pixel, at the image's size.
    threshold : float
        Probability above which a pixel is lesion (the run's ``MASK_THRESHOLD``: a
        sigmoid's 0.5, logit > 0).
    box : Box or None
        Bounding box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the largest connected
        region of :attr:`mask`; None when the mask is empty.
    """

    prob: np.ndarray
    threshold: float
    box: Box | None
    _contours: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def mask(self) -> np.ndarray:
        """The predicted lesion mask, bool (H, W): ``prob > threshold`` (as the run scored Dice)."""
        return self.prob > self.threshold

    @property
    def contours(self) -> list[np.ndarray]:
        """The mask's outlines (:func:`mask_contours`), computed once."""
        if self._contours is None:
            self._contours = mask_contours(self.prob, self.threshold)
        return self._contours

    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-ready: threshold, box (or None), lesion share of the image, contours as
        ``[[x, y], ...]`` lists rounded to ``decimals``."""
        return {"threshold": float(self.threshold),
                "box": None if self.box is None else [int(v) for v in self.box],
                "area_fraction": float(self.mask.mean()) if self.prob.size else 0.0,
                "contours": [np.round(c, decimals).tolist() for c in self.contours]}

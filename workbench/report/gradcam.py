"""Grad-CAM laid out for the report: saved maps in, overlays, a grid figure and a table out.

``workbench run`` computes the maps (:mod:`workbench.baselines.explain`) and saves them
with :meth:`CamSet.save`, one ``.npz`` per network; the report reads them back with
:meth:`CamSet.load` and draws them here. Nothing in this module loads a network or
imports torch, so ``workbench report`` reads records and files alone.

Overlays and figures survive black-and-white print: the default colormap's luminance
rises with the map's value.

Examples
--------
>>> cams = CamSet.load("runs/x/gradcam/tf_efficientnet_lite0@ft-1234.npz")  # doctest: +SKIP
>>> rgb = overlay(cams.images[0], cams.maps[0])                            # doctest: +SKIP
>>> write_cam_folder(cams, "runs/x/report/figures/gradcam")                # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from workbench.core.io import atomic_file
from workbench.report.figures import save_figure

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.figure import Figure

__all__ = [
    "CamSet",
    "GRID_MAX",
    "cam_path",
    "DEFAULT_CMAP",
    "cam_grid",
    "cam_grid_figure",
    "overlay",
    "save_overlays",
    "tile_caption",
    "write_cam_folder",
]

Box = tuple[int, int, int, int]

#: Luminance rises monotonically along 'inferno', so the hot-to-cold order of a CAM
#: survives grayscale print and colour-vision deficiency; 'jet' (the package default)
#: is brightest in the middle and reads wrongly in both.
DEFAULT_CMAP = "inferno"

#: Version of the ``.npz`` layout written by :meth:`CamSet.save`.
CAM_FORMAT = 1
#: Images explained per network (the tiles of the report's grid).
GRID_MAX = 16


def cam_path(run: str | os.PathLike, network: str) -> Path:
    """Where ``workbench run`` saves the maps of ``network`` (``backbone@ft-<hash>``) in a run folder."""
    return Path(run) / "gradcam" / f"{_safe_name(network)}.npz"


# ----------------------------------------------------------------------- saved maps
@dataclass(frozen=True)
class CamSet:
    """Grad-CAM maps of one network on a few images, with what the report shows beside them.

    Attributes
    ----------
    network : str
        ``backbone@ft-<hash>``, the network the maps explain.
    classes : list of str
        The network's classes, in its output order.
    ids, labels : list of str
        The images and their true labels.
    pred, targets : ndarray (N,) int64
        Predicted class, and the class each map explains.
    proba : ndarray (N, n_classes) float32
        Softmax of the network's logits.
    boxes : list of (x0, y0, x1, y1) or None
        Lesion boxes in original pixels (x1/y1 exclusive).
    peak_in_box : list of bool or None
        Whether each map peaks inside its box (None: no box).
    images : list of ndarray (H, W, 3) float32 in [0, 1]
        The original images, decoded.
    maps : list of ndarray (H, W) float32 in [0, 1]
        The maps at the original images' size.
    """

    network: str
    classes: list[str]
    ids: list[str]
    labels: list[str]
    pred: np.ndarray
    targets: np.ndarray
    proba: np.ndarray
    boxes: list[Box | None]
    peak_in_box: list[bool | None]
    images: list[np.ndarray]
    maps: list[np.ndarray]

    @classmethod
    def from_result(cls, result: Any) -> "CamSet":
        """From any object with these attributes (e.g. :class:`workbench.baselines.explain.CamReport`)."""
        return cls(**{name: getattr(result, name) for name in cls.__dataclass_fields__})

    def table(self) -> pd.DataFrame:
        """One row per image: id, label, pred, p_<class>..., target, peak_in_box."""
        return pd.DataFrame({
            "id": list(self.ids),
            "label": list(self.labels),
            "pred": [self.classes[k] for k in self.pred],
            **{f"p_{c}": self.proba[:, k] for k, c in enumerate(self.classes)},
            "target": [self.classes[k] for k in self.targets],
            "peak_in_box": list(self.peak_in_box),
        })

    def peak_share(self, label: str | None = None, correct_only: bool = True) -> float:
        """Share of images (with a box) whose map peaks inside it; NaN if none qualify."""
        t = self.table()
        t = t[t["peak_in_box"].notna()]
        if label is not None:
            t = t[t["label"] == label]
        if correct_only:
            t = t[t["label"] == t["pred"]]
        return float(t["peak_in_box"].astype(bool).mean()) if len(t) else float("nan")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as one compressed ``.npz`` (atomically); return its path."""
        arrays = {"format": np.int64(CAM_FORMAT), "network": np.str_(self.network),
                  "classes": np.array(self.classes, dtype=str), "ids": np.array(self.ids, dtype=str),
                  "labels": np.array(self.labels, dtype=str), "pred": np.asarray(self.pred, np.int64),
                  "targets": np.asarray(self.targets, np.int64), "proba": np.asarray(self.proba),
                  "boxes": np.array([b if b is not None else (-1, -1, -1, -1) for b in self.boxes], np.int64)
                  .reshape(len(self.boxes), 4),
                  # -1: no box; 0/1: the peak is outside/inside it.
                  "peak_in_box": np.array([-1 if p is None else int(p) for p in self.peak_in_box], np.int8)}
        for i, (img, m) in enumerate(zip(self.images, self.maps)):
            arrays[f"image_{i}"] = _packed_image(img)
            arrays[f"map_{i}"] = np.asarray(m, np.float32)
        path = Path(path)
        with atomic_file(path) as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CamSet":
        """Read a set written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            n = len(z["ids"])
            return cls(
                network=str(z["network"]), classes=[str(c) for c in z["classes"]],
                ids=[str(i) for i in z["ids"]], labels=[str(x) for x in z["labels"]],
                pred=z["pred"], targets=z["targets"], proba=z["proba"],
                boxes=[None if b[0] < 0 else tuple(int(v) for v in b) for b in z["boxes"]],
                peak_in_box=[None if p < 0 else bool(p) for p in z["peak_in_box"]],
                images=[_unpacked_image(z[f"image_{i}"]) for i in range(n)],
                maps=[z[f"map_{i}"] for i in range(n)],
            )


def _packed_image(img: np.ndarray) -> np.ndarray:
    """``img`` as uint8 when that is lossless (8-bit images: k / 255), else as it is.

    Saves ~4x on disk; :func:`_unpacked_image` gives back the very same float32 values.
    """
    img = np.asarray(img, np.float32)
    u8 = np.round(img * 255).clip(0, 255).astype(np.uint8)
    return u8 if np.array_equal(_unpacked_image(u8), img) else img


def _unpacked_image(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) / np.float32(255) if arr.dtype == np.uint8 else arr


def write_cam_folder(cams: CamSet, folder: str | os.PathLike, *, grid_max: int = 16, ncols: int = 4,
                     title: str | None = None) -> list[Path]:
    """Lay out ``cams`` in ``folder``: ``overlays/<id>.png``, ``cam.csv``, ``cam_grid.png/.pdf``.

    ``grid_max`` tiles (the first images) go into the grid; ``title`` defaults to
    ``"Grad-CAM: <network>"``. Returns the grid's ``[png, pdf]``.
    """
    folder = Path(folder)
    paths = save_overlays(cams.images, cams.maps, cams.ids, folder / "overlays")
    table = cams.table()
    table["overlay"] = [p.relative_to(folder).as_posix() for p in paths]  # relative: the folder may move
    table.to_csv(folder / "cam.csv", index=False)
    k = min(grid_max, len(cams.ids))
    return cam_grid_figure(
        cams.images[:k], cams.maps[:k], path=folder / "cam_grid", labels=cams.labels[:k],
        proba=cams.proba[:k], class_names=cams.classes, classes=list(cams.targets[:k]),
        boxes=cams.boxes[:k], ncols=ncols, title=title or f"Grad-CAM: {cams.network}",
    )


# ------------------------------------------------------------------------- overlays
def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, 1|3) image, float in [0, 1] or uint8 -> (H, W, 3) float32."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {np.shape(image)}")
    if img.size and (img.min() < -1e-6 or img.max() > 1 + 1e-6):
        raise ValueError("float images must be in [0, 1] (de-normalise before overlaying)")
    return np.clip(img, 0.0, 1.0)


def _resized_map(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map brought to ``size`` = (H, W): a copy when it already has it, else resampled.

    Resampling is PIL's antialiased bilinear filter (torch-free, so the report never
    loads torch); maps saved by ``workbench run`` are already at the image's size.
    """
    h, w = size
    if cam_map.shape == (h, w):
        return cam_map.copy()
    out = np.asarray(Image.fromarray(cam_map, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def overlay(
    image: np.ndarray,
    cam_map: np.ndarray,
    alpha: float = 0.45,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """Alpha-blend a coloured CAM onto an image.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, 3)
        Float in [0, 1] (or uint8), at any resolution.
    cam_map : ndarray (h, w) in [0, 1]
        Resampled to (H, W) when its size differs.
    alpha : float
        Weight of the heat map (0 = image only).
    cmap : str
        Matplotlib colormap; the default 'inferno' is luminance-monotonic, so the
        overlay still reads in black-and-white print.

    Returns
    -------
    ndarray (H, W, 3) uint8
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_rgb_float(image)
    m = np.asarray(cam_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"cam_map must be (H, W), got shape {m.shape}")
    m = _resized_map(m, img.shape[:2])
    heat = colormaps[cmap](np.clip(m, 0.0, 1.0))[..., :3].astype(np.float32)
    out = (1.0 - alpha) * img + alpha * heat
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _safe_name(image_id: object) -> str:
    """A file-system-safe stem for an image id (no separators, no leading dot)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(image_id)).strip("._")
    return name or "image"


def save_overlays(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    ids: Sequence[object],
    folder: str | Path,
    alpha: float = 0.45,
    cmap: str = DEFAULT_CMAP,
) -> list[Path]:
    """Write one ``<id>.png`` overlay per image into ``folder``; returns the paths.

    Ids are sanitised (anything but letters, digits, ``._-`` becomes ``_``); two ids
    that sanitise to the same name raise instead of silently overwriting each other.
    """
    if not len(images) == len(maps) == len(ids):
        raise ValueError(f"{len(images)} images, {len(maps)} maps, {len(ids)} ids")
    names = [_safe_name(i) for i in ids]
    seen: dict[str, object] = {}
    for raw, name in zip(ids, names):
        if name in seen:
            raise ValueError(f"ids {seen[name]!r} and {raw!r} both map to file {name}.png")
        seen[name] = raw
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, m, name in zip(images, maps, names):
        path = out_dir / f"{name}.png"
        Image.fromarray(overlay(img, m, alpha=alpha, cmap=cmap), "RGB").save(path, format="PNG")
        paths.append(path)
    return paths


# -------------------------------------------------------------------------- figures
def tile_caption(
    true_label: object,
    proba: Sequence[float],
    class_names: Sequence[str],
    cls: int | None = None,
) -> str:
    """Caption such as ``"malignant · p(malignant)=0.87"``.

    ``true_label`` (a name or a class index) comes first; then the probability of
    ``cls`` (default: the predicted class), the class the CAM explains.
    """
    p = np.asarray(proba, dtype=float)
    k = int(np.argmax(p)) if cls is None else int(cls)
    is_index = isinstance(true_label, (int, np.integer))
    true = class_names[int(true_label)] if is_index else str(true_label)
    return f"{true} · p({class_names[k]})={p[k]:.2f}"


def _captions(captions: Sequence[str] | None, labels: Sequence[object] | None,
              proba: np.ndarray | None, class_names: Sequence[str] | None,
              classes: Sequence[int] | None) -> Sequence[str] | None:
    """``captions`` if given, else :func:`tile_caption` per tile when there is enough to say."""
    if captions is None and labels is not None and proba is not None and class_names is not None:
        captions = [tile_caption(lab, proba[i], class_names, None if classes is None else classes[i])
                    for i, lab in enumerate(labels)]
    return captions


def _draw_tile(ax: Any, image: np.ndarray, cam_map: np.ndarray, box: Box | None, caption: str | None,
               alpha: float, cmap: str) -> None:
    """One overlay on ``ax``, its box outlined and its caption below."""
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    ax.imshow(overlay(image, cam_map, alpha=alpha, cmap=cmap), interpolation="nearest")
    if box is not None:
        x0, y0, x1, y1 = box
        # Pixel centres sit on integers: edges at -0.5, exclusive x1 ends at x1-0.5.
        rect = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5)
        rect.set_path_effects([patheffects.withStroke(linewidth=3.0, foreground="black")])
        ax.add_patch(rect)
    if caption is not None:
        # Below the tile (not a title) so it reads as a caption in the paper.
        ax.text(0.5, -0.02, caption, transform=ax.transAxes, ha="center", va="top", fontsize=8)


def cam_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    *,
    labels: Sequence[object] | None = None,
    proba: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    classes: Sequence[int] | None = None,
    boxes: Sequence[Box | None] | None = None,
    ncols: int = 4,
    alpha: float = 0.45,
    cmap: str = DEFAULT_CMAP,
    tile_inches: float = 2.2,
    title: str | None = None,
) -> "Figure":
    """A grid of CAM overlays with a caption under each tile (not saved).

    Captions are ``captions`` if given, else built by :func:`tile_caption` from
    ``labels`` (true labels), ``proba`` (N, n_classes), ``class_names`` and
    ``classes`` (the class each map explains; default the argmax of ``proba``).
    ``boxes`` (x0, y0, x1, y1), x1/y1 exclusive, in the image's pixels, are drawn as
    outlines (white with a black edge: visible on any colour and in grayscale).
    """
    from matplotlib.figure import Figure

    n = len(images)
    if len(maps) != n:
        raise ValueError(f"{n} images but {len(maps)} maps")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    captions = _captions(captions, labels, proba, class_names, classes)
    for what, seq in (("captions", captions), ("boxes", boxes), ("classes", classes)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {what} for {n} images")

    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    # Figure() rather than pyplot: no GUI backend, no global figure registry to leak.
    fig = Figure(figsize=(tile_inches * ncols, (tile_inches + 0.35) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < n:
            _draw_tile(ax, images[i], maps[i], None if boxes is None else boxes[i],
                       None if captions is None else captions[i], alpha, cmap)
    if title:
        fig.suptitle(title)
    return fig


def cam_grid_figure(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    *,
    path: str | Path,
    **kwargs: Any,
) -> list[Path]:
    """Draw :func:`cam_grid` and save it as PNG and PDF next to each other.

    Parameters
    ----------
    path : str or Path
        Output stem; any suffix is replaced by ``.png`` and ``.pdf``.
    **kwargs
        Passed to :func:`cam_grid` (labels, proba, class_names, classes, boxes,
        ncols, alpha, cmap, tile_inches, title).

    Returns
    -------
    list of Path
        ``[png, pdf]``.
    """
    fig = cam_grid(images, maps, captions, **kwargs)
    # The report's own writer: PNG and PDF without dates or software stamps, so the same
    # maps give the same bytes (at the report's fixed resolution).
    return save_figure(fig, Path(path))

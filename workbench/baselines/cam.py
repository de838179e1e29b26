"""Grad-CAM for the fine-tuned end-to-end CNN baselines.

The maps come from the maintained ``pytorch_grad_cam`` package (``GradCAM`` with
``ClassifierOutputTarget``); this module only picks the layer, batches the images,
keeps the probabilities that go under each tile, and draws overlays and figures
that survive black-and-white print.

Examples
--------
>>> res = cam_maps(model, images)                      # doctest: +SKIP
>>> big = upsample_to(res.maps[0], original.shape[:2])  # doctest: +SKIP
>>> rgb = overlay(original, big)                        # doctest: +SKIP
>>> peak_in_box(big, (x0, y0, x1, y1))                  # doctest: +SKIP
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # matplotlib is imported lazily: most callers only want the maps
    from matplotlib.figure import Figure

__all__ = [
    "CamResult",
    "default_target_layer",
    "resolve_target_layer",
    "cam_maps",
    "upsample_to",
    "overlay",
    "save_overlays",
    "tile_caption",
    "cam_grid",
    "cam_grid_figure",
    "peak_in_box",
    "peak_in_box_share",
    "DEFAULT_CMAP",
]

Box = tuple[int, int, int, int]
LayerSpec = Union[str, nn.Module, None]

#: Luminance rises monotonically along 'inferno', so the hot-to-cold order of a CAM
#: survives grayscale print and colour-vision deficiency; 'jet' (the package default)
#: is brightest in the middle and reads wrongly in both.
DEFAULT_CMAP = "inferno"

# Layers that only re-scale or activate a conv output: the CAM layer is moved past
# them so that it sees post-activation features (what the families below use) and so
# that no later in-place activation rewrites the tensor the hooks captured.
_PASS_THROUGH = (
    nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
    nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.PReLU, nn.Sigmoid, nn.Tanh,
)


# --------------------------------------------------------------------------- layers
def _last_conv_layer(model: nn.Module) -> nn.Module | None:
    """Last ``nn.Conv2d`` in module order, moved past the norm/activation after it."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    name, layer = convs[-1]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential):
        siblings = list(parent.children())
        i = siblings.index(layer)
        while i + 1 < len(siblings) and isinstance(siblings[i + 1], _PASS_THROUGH):
            i += 1
        layer = siblings[i]
    return layer


def _torchvision_layer(model: nn.Module) -> nn.Module | None:
    """The last conv feature layer of a torchvision family, or None if not one."""
    from torchvision import models as tvm

    if isinstance(model, tvm.ResNet):  # also resnext / wide_resnet
        return model.layer4[-1]
    if isinstance(model, (tvm.AlexNet, tvm.VGG)):
        # Last Conv of ``features`` plus its ReLU: the ReLU output feeds MaxPool
        # untouched, while the conv output would be rewritten by the in-place ReLU.
        return _last_conv_layer(model.features)
    if isinstance(model, tvm.DenseNet):
        return model.features  # ends in norm5; the forward's ReLU is functional
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet, tvm.ConvNeXt)):
        return model.features[-1]
    if isinstance(model, tvm.ShuffleNetV2):
        return model.conv5
    if isinstance(model, tvm.Inception3):
        return model.Mixed_7c
    if isinstance(model, tvm.GoogLeNet):
        return model.inception5b
    if isinstance(model, tvm.RegNet):
        return model.trunk_output
    if isinstance(model, tvm.MNASNet):
        return model.layers[-1]
    return None


def _timm_layer(model: nn.Module) -> nn.Module | None:
    """The last conv feature layer of a timm model, or None if not a timm model."""
    if not type(model).__module__.startswith("timm."):
        return None
    # timm EfficientNet (tf_efficientnet_lite*, efficientnet_b*): conv_head -> bn2
    # (norm + act) -> pool, so bn2 is the last 4-D map. timm MobileNetV3 also has a
    # conv_head, but *after* the pool (1x1 maps), hence the check for bn2.
    if hasattr(model, "conv_head") and isinstance(getattr(model, "bn2", None), nn.Module):
        return model.bn2
    # Every timm model lists its feature stages; the last one is the deepest map.
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        name = last.get("module") if isinstance(last, dict) else None
        if name:
            try:
                return model.get_submodule(name)
            except AttributeError:
                pass
    return None


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional feature layer of ``model``, for Grad-CAM.

    Family rules (torchvision ResNet ``layer4[-1]``, AlexNet/VGG last ReLU of
    ``features``, DenseNet ``features``, MobileNet/EfficientNet ``features[-1]``,
    ShuffleNetV2 ``conv5``, Inception-v3 ``Mixed_7c``, timm EfficientNet ``bn2``,
    other timm models the last ``feature_info`` stage), else the last ``nn.Conv2d``
    in module order (moved past a directly following norm/activation).

    Raises
    ------
    ValueError
        If the model has no convolutional layer.
    """
    for rule in (_torchvision_layer, _timm_layer, _last_conv_layer):
        layer = rule(model)
        if layer is not None:
            return layer
    raise ValueError(
        f"no convolutional layer found in {type(model).__name__}: Grad-CAM needs a "
        "4-D (N, C, H, W) feature map; pass target_layer='<dotted.name>' explicitly"
    )


_PART = re.compile(r"^(?P<name>[^\[\]]*)(?P<idx>(\[-?\d+\])*)$")


def _child(module: nn.Module, key: str, path: str) -> nn.Module:
    """One step of a dotted path: a child by name, or by (negative) index."""
    children = dict(module.named_children())
    if key in children:
        return children[key]
    if re.fullmatch(r"-?\d+", key) and isinstance(module, (nn.Sequential, nn.ModuleList)):
        try:
            return module[int(key)]
        except IndexError:
            pass
    raise ValueError(
        f"target layer {path!r}: {type(module).__name__} has no child {key!r}; "
        f"children are {sorted(children)}"
    )


def resolve_target_layer(model: nn.Module, name: LayerSpec = None) -> nn.Module:
    """The CAM layer: the default, a dotted name, or a module of ``model``.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    name : str, nn.Module or None
        None for :func:`default_target_layer`; a dotted path such as ``"layer4"``,
        ``"layer4.1"``, ``"layer4.-1"`` or ``"features[-1]"``; or a module, which
        must belong to ``model``.
    """
    if name is None:
        return default_target_layer(model)
    if isinstance(name, nn.Module):
        if not any(m is name for m in model.modules()):
            raise ValueError(f"target layer {type(name).__name__} is not a submodule of the model")
        return name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"target layer must be a dotted name, a module or None, not {name!r}")
    layer = model
    for part in name.strip().split("."):
        m = _PART.match(part)
        if m is None:
            raise ValueError(f"cannot parse target layer {name!r} at {part!r}")
        if m["name"]:
            layer = _child(layer, m["name"], name)
        for idx in re.findall(r"-?\d+", m["idx"]):
            layer = _child(layer, idx, name)
    return layer


# ----------------------------------------------------------------------------- maps
@dataclass(frozen=True)
class CamResult:
    """Grad-CAM maps and the outputs of the same forward pass.

    Attributes
    ----------
    maps : ndarray (N, S, S) float32 in [0, 1]
        One map per image, at the input size, each min-max scaled by the package.
    proba : ndarray (N, n_classes) float32
        Softmax of the logits.
    pred : ndarray (N,) int64
        Predicted class (argmax of the logits).
    targets : ndarray (N,) int64
        The class each map explains (``pred`` unless targets were given).
    """

    maps: np.ndarray
    proba: np.ndarray
    pred: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.maps)


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int] | None = None,
    target_layer: LayerSpec = None,
    batch_size: int = 16,
) -> CamResult:
    """Grad-CAM maps of ``model`` for a batch of normalised images.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits (N, n_classes); run in eval mode here and put
        back in its former mode afterwards.
    images : Tensor (N, 3, S, S)
        Normalised inputs; moved to the model's device batch by batch.
    targets : sequence of int, optional
        Class to explain per image; default the predicted class.
    target_layer : str, nn.Module or None
        See :func:`resolve_target_layer`.
    batch_size : int
        Images per forward/backward pass (memory bound).

    Returns
    -------
    CamResult
        ``maps`` (N, S, S) in [0, 1]; use :func:`upsample_to` for the original size.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = getattr(images, "shape", type(images))
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {got}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    if targets is not None:
        targets = [int(t) for t in targets]
        if len(targets) != n:
            raise ValueError(f"{len(targets)} targets for {n} images")
        if any(t < 0 for t in targets):
            raise ValueError(f"negative target class in {targets}")
    layer = resolve_target_layer(model, target_layer)

    was_training = model.training
    maps, logits = [], []
    try:
        # enable_grad: callers often sit under no_grad (evaluation loops), and
        # Grad-CAM needs the backward pass.
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
            for start in range(0, n, batch_size):
                # A fresh leaf that needs a gradient, so the target layer's output
                # carries one even when the backbone is frozen (linear-probe models);
                # clone() also frees tensors made under inference_mode.
                batch = images[start:start + batch_size].detach().clone().requires_grad_(True)
                tgt = None if targets is None else [
                    ClassifierOutputTarget(t) for t in targets[start:start + batch_size]]
                # Errors are re-raised as ValueError because GradCAM.__exit__ swallows
                # IndexError (it would print and leave us with no maps).
                try:
                    maps.append(cam(input_tensor=batch, targets=tgt))
                except IndexError as err:
                    raise ValueError(
                        f"target class out of range for a model with "
                        f"{getattr(getattr(cam, 'outputs', None), 'shape', ['?'])[-1]} outputs: "
                        f"{targets}") from err
                except ValueError as err:
                    raise ValueError(
                        f"Grad-CAM failed on layer {type(layer).__name__} ({err}); it needs a "
                        "4-D (N, C, H, W) feature map, so transformer blocks need a "
                        "reshape_transform and are not supported here") from err
                # The package keeps the logits of its forward pass: no second forward.
                logits.append(cam.outputs.detach().float().cpu())
    finally:
        # Grad-CAM leaves parameter gradients behind; drop them so a later optimiser
        # step or memory count is not affected.
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    logit = torch.cat(logits) if logits else torch.zeros(0, 0)
    if targets is not None and any(t >= logit.shape[-1] for t in targets):
        raise ValueError(f"target class out of range for {logit.shape[-1]} classes: {targets}")
    pred = logit.argmax(dim=-1).numpy().astype(np.int64)
    out = np.concatenate(maps) if maps else np.zeros((0, *images.shape[-2:]), np.float32)
    return CamResult(
        maps=np.clip(out, 0.0, 1.0).astype(np.float32),
        proba=torch.softmax(logit, dim=-1).numpy().astype(np.float32),
        pred=pred,
        targets=pred.copy() if targets is None else np.asarray(targets, dtype=np.int64),
    )


def upsample_to(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a map (H, W) or maps (N, H, W) to ``size`` = (H, W), bilinearly.

    Antialiased, so shrinking does not alias; the weights are non-negative and sum to
    one, so values stay in [0, 1].
    """
    arr = np.asarray(cam_map, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"cam_map must be (H, W) or (N, H, W), got shape {arr.shape}")
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    if arr.shape[-2:] == (h, w):
        return arr.copy()
    t = torch.from_numpy(arr.reshape(-1, 1, *arr.shape[-2:]))
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(*arr.shape[:-2], h, w).numpy()
    return np.clip(out, 0.0, 1.0).astype(np.float32)


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
        Upsampled to (H, W) when its size differs.
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
    m = upsample_to(m, img.shape[:2])
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
    from PIL import Image

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
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(images)
    if len(maps) != n:
        raise ValueError(f"{n} images but {len(maps)} maps")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if captions is None and labels is not None and proba is not None and class_names is not None:
        captions = [
            tile_caption(lab, proba[i], class_names, None if classes is None else classes[i])
            for i, lab in enumerate(labels)]
    for what, seq in (("captions", captions), ("boxes", boxes), ("classes", classes)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {what} for {n} images")

    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    # Figure() rather than pyplot: no GUI backend, no global figure registry to leak.
    fig = Figure(figsize=(tile_inches * ncols, (tile_inches + 0.35) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    outline = [patheffects.withStroke(linewidth=3.0, foreground="black")]
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(overlay(images[i], maps[i], alpha=alpha, cmap=cmap), interpolation="nearest")
        if boxes is not None and boxes[i] is not None:
            x0, y0, x1, y1 = boxes[i]
            # Pixel centres sit on integers: edges at -0.5, exclusive x1 ends at x1-0.5.
            rect = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                             edgecolor="white", linewidth=1.5)
            rect.set_path_effects(outline)
            ax.add_patch(rect)
        if captions is not None:
            # Below the tile (not a title) so it reads as a caption in the paper.
            ax.text(0.5, -0.02, captions[i], transform=ax.transAxes, ha="center", va="top", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def cam_grid_figure(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    *,
    path: str | Path,
    dpi: int = 200,
    **kwargs: object,
) -> list[Path]:
    """Draw :func:`cam_grid` and save it as PNG and PDF next to each other.

    Parameters
    ----------
    path : str or Path
        Output stem; any suffix is replaced by ``.png`` and ``.pdf``.
    dpi : int
        Resolution of the PNG (the PDF is vector apart from the tiles).
    **kwargs
        Passed to :func:`cam_grid` (labels, proba, class_names, classes, boxes,
        ncols, alpha, cmap, tile_inches, title).

    Returns
    -------
    list of Path
        ``[png, pdf]``.
    """
    from workbench.report.figures import save_figure

    fig = cam_grid(images, maps, captions, **kwargs)
    # The report's own writer: PNG and PDF without dates or software stamps, so the same
    # maps give the same bytes (dpi: the report's fixed resolution).
    return save_figure(fig, Path(path))


# ---------------------------------------------------------------------- localisation
def peak_in_box(cam_map: np.ndarray, box: Box) -> bool:
    """Whether the map's maximum lies in ``box`` = (x0, y0, x1, y1), x1/y1 exclusive.

    The box is in the map's pixel grid (upsample the map to the original image first
    when the box is in original pixels). A constant map has no peak: False.
    """
    m = np.asarray(cam_map)
    if m.ndim != 2:
        raise ValueError(f"cam_map must be (H, W), got shape {m.shape}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {tuple(box)}: need x1 > x0 and y1 > y0")
    if m.size == 0 or not np.isfinite(m).all() or m.max() == m.min():
        return False
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return bool(x0 <= x < x1 and y0 <= y < y1)


def peak_in_box_share(maps: Sequence[np.ndarray], boxes: Sequence[Box | None]) -> float:
    """Share of maps whose peak is in their box, over the images that have a box.

    NaN when no image has a box (the share is undefined, not zero).
    """
    if len(maps) != len(boxes):
        raise ValueError(f"{len(maps)} maps but {len(boxes)} boxes")
    hits = [peak_in_box(m, b) for m, b in zip(maps, boxes) if b is not None]
    return float(np.mean(hits)) if hits else float("nan")

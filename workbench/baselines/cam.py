"""Grad-CAM maps for the fine-tuned end-to-end CNN baselines.

The maps come from the maintained ``pytorch_grad_cam`` package (``GradCAM`` with
``ClassifierOutputTarget``); this module only picks the layer, batches the images,
keeps the probabilities that go under each tile, and says where a map peaks. Overlays
and figures are drawn by :mod:`workbench.report.gradcam`.

Examples
--------
>>> res = cam_maps(model, images)                      # doctest: +SKIP
>>> big = upsample_to(res.maps[0], original.shape[:2])  # doctest: +SKIP
>>> peak_in_box(big, (x0, y0, x1, y1))                  # doctest: +SKIP
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workbench.backbones.camlayers import (
    family_cam_layer,
    last_conv_layer,
    timm_family_layer,
    torchvision_family_layer,
)
from workbench.backbones.finetuned import resolved_root, using_root
from workbench.backbones.registry import BackboneSpec, get_backbone
from workbench.core.parallel import ExecutionLike, gpu_resources, unordered, whole_batches
from workbench.data.boxes import Box
from workbench.errors import ConfigError

if TYPE_CHECKING:
    from workbench.baselines.explain import CamReport

__all__ = [
    "CamResult",
    "default_target_layer",
    "resolve_target_layer",
    "cam_maps",
    "upsample_to",
    "peak_in_box",
    "peak_in_box_share",
    "explain_on",
    "DEFAULT_CAM_CHUNK",
]

LayerSpec = Union[str, nn.Module, None]

# --------------------------------------------------------------------------- layers
# The rules live with the backbones (workbench.backbones.camlayers): a spec names its
# own layer, and these family rules serve models that come without a spec.
_last_conv_layer = last_conv_layer
_torchvision_layer = torchvision_family_layer
_timm_layer = timm_family_layer


def default_target_layer(model: nn.Module, backbone: str | BackboneSpec | None = None) -> nn.Module:
    """The last convolutional feature layer of ``model``, for Grad-CAM.

    With ``backbone`` (a registry name or spec), its spec's ``cam_layer``. Without, the
    family rules (torchvision ResNet ``layer4[-1]``, AlexNet/VGG last ReLU of
    ``features``, DenseNet ``features``, MobileNet/EfficientNet ``features[-1]``,
    ShuffleNetV2 ``conv5``, Inception-v3 ``Mixed_7c``, timm EfficientNet ``bn2``,
    other timm models the last ``feature_info`` stage), else the last ``nn.Conv2d``
    in module order (moved past a directly following norm/activation).

    Raises
    ------
    ValueError
        If the model has no convolutional layer.
    """
    if backbone is not None:
        spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
        return spec.cam_target(model)
    layer = family_cam_layer(model)
    if layer is None:
        raise ConfigError(
            f"no convolutional layer found in {type(model).__name__}: Grad-CAM needs a "
            "4-D (N, C, H, W) feature map; pass target_layer='<dotted.name>' explicitly"
        )
    return layer


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
    raise ConfigError(
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
            raise ConfigError(f"target layer {type(name).__name__} is not a submodule of the model")
        return name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"target layer must be a dotted name, a module or None, not {name!r}")
    layer = model
    for part in name.strip().split("."):
        m = _PART.match(part)
        if m is None:
            raise ConfigError(f"cannot parse target layer {name!r} at {part!r}")
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


def _checked_targets(images: torch.Tensor, targets: Sequence[int] | None, batch_size: int) -> list[int] | None:
    """The targets as ints, after checking the images, the batch size and the targets."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = getattr(images, "shape", type(images))
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {got}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if targets is None:
        return None
    targets = [int(t) for t in targets]
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} targets for {len(images)} images")
    if any(t < 0 for t in targets):
        raise ValueError(f"negative target class in {targets}")
    return targets


def _grad_cam_batches(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list[int] | None,
                      batch_size: int) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Maps and logits, batch by batch, from one ``GradCAM`` hooked on ``layer``."""
    from pytorch_grad_cam import GradCAM  # optional: only Grad-CAM needs it
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps, logits = [], []
    # enable_grad: callers often sit under no_grad (evaluation loops), and
    # Grad-CAM needs the backward pass.
    with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(images), batch_size):
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
    return maps, logits


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
    targets = _checked_targets(images, targets, batch_size)
    layer = resolve_target_layer(model, target_layer)
    was_training = model.training
    try:
        maps, logits = _grad_cam_batches(model, layer, images, targets, batch_size)
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


# ---------------------------------------------------------------------- localisation
def peak_in_box(cam_map: np.ndarray, box: Box) -> bool:
    """Whether the map's maximum lies in ``box`` = (x0, y0, x1, y1), x1/y1 exclusive.

    The box is in the map's pixel grid (upsample the map to the original image first
    when the box is in original pixels). A constant map has no peak: False.
    """
    m = np.asarray(cam_map)
    if m.ndim != 2:
        raise ValueError(f"cam_map must be (H, W), got shape {m.shape}")
    b = Box.of(box)  # refuses an empty box, naming it
    if m.size == 0 or not np.isfinite(m).all() or m.max() == m.min():
        return False
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return b.contains(int(x), int(y))


def peak_in_box_share(maps: Sequence[np.ndarray], boxes: Sequence[Box | None]) -> float:
    """Share of maps whose peak is in their box, over the images that have a box.

    NaN when no image has a box (the share is undefined, not zero).
    """
    if len(maps) != len(boxes):
        raise ValueError(f"{len(maps)} maps but {len(boxes)} boxes")
    hits = [peak_in_box(m, b) for m, b in zip(maps, boxes) if b is not None]
    return float(np.mean(hits)) if hits else float("nan")


# ------------------------------------------------------------------------ on workers
#: Images per Grad-CAM task: a few batches, so loading the network is a small share.
DEFAULT_CAM_CHUNK = 64


def _explain_chunk(index: int, items: list, network: str, kwargs: dict[str, Any],
                   finetuned_root: str) -> tuple[int, "CamReport"]:
    from workbench.baselines.explain import explain  # explain builds on this module: imported when run

    # The caller's store: a worker keeps the environment it started with.
    with using_root(finetuned_root):
        return index, explain(items, network, **kwargs)


def explain_on(execution: ExecutionLike | None, items: Sequence, network: str, *, target: str = "pred",
               layer: str | None = None, batch_size: int = 16, device: str | None = None,
               chunk_size: int = DEFAULT_CAM_CHUNK) -> "CamReport":
    """:func:`~workbench.baselines.explain.explain` with the images in chunks, one task
    each on ``execution``'s workers, joined in the order of ``items``.

    Chunks are whole batches of ``batch_size`` (``chunk_size`` rounded up), so every
    batch holds the images it holds in a local run and the maps are the same. On Dask a
    chunk for ``device="cuda"`` asks for a ``GPU`` worker. Without a Dask execution this is :func:`explain`.
    """
    from workbench.baselines.explain import CamReport, explain

    kwargs = {"target": target, "layer": layer, "batch_size": batch_size, "device": device}
    items = list(items)
    # Only a Dask cluster gets chunks: on this machine torch's threads already use every
    # core (local processes would load the network once more each; threads would share
    # torch's global state).
    if execution is None or execution.backend != "dask" or not items:
        return explain(items, network, **kwargs)
    step = whole_batches(chunk_size, batch_size, "images")
    root = str(resolved_root())
    units = [(k, items[i:i + step], network, kwargs, root) for k, i in enumerate(range(0, len(items), step))]
    # explain's default device is the CPU: only an explicit cuda asks for a GPU worker.
    resources = gpu_resources(device) if device else None
    parts = dict(unordered(execution, _explain_chunk, units, resources=resources))
    done = [parts[k] for k in range(len(units))]
    first = done[0]
    return CamReport(
        network=first.network, classes=first.classes, ids=[i for r in done for i in r.ids],
        labels=[lab for r in done for lab in r.labels], pred=np.concatenate([r.pred for r in done]),
        targets=np.concatenate([r.targets for r in done]), proba=np.concatenate([r.proba for r in done]),
        boxes=[b for r in done for b in r.boxes], peak_in_box=[p for r in done for p in r.peak_in_box],
        images=[im for r in done for im in r.images], maps=[m for r in done for m in r.maps])

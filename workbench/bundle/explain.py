"""Heat maps of a bundle's prediction for one image: which pixels the prediction rests on.

The method follows what the model is, and every map says which one made it:

- **End-to-end CNN** (``baseline``): Grad-CAM of the predicted class at the backbone's
  CAM layer (:func:`workbench.baselines.cam.cam_maps`, the maintained ``pytorch_grad_cam``).
  A **Y-Net** is explained through its classification branch alone (:class:`YNetClassBranch`):
  Grad-CAM of the class logit at the encoder's deepest feature map, the one input of that
  branch (the decoder and the mask play no part in the class probabilities).
- **Models on CNN features** (heads, votes, stacks; the default): occlusion sensitivity
  (below), the method whose maps peak in the lesion box clearly above chance on BUSI.
- **Binary SVM on CNN features, on request** (``method="gradient"``; a ``head`` bundle
  whose head is a scaler + RBF or linear SVC): the head's decision function re-expressed in torch (:func:`svm_decision`)
  on the features of :meth:`Featurizer.network_inputs`, so its gradient flows back
  through the backbones; Grad-CAM weighting at each backbone's CAM layer (channel
  weight = spatial mean of d(score)/d(activation), ReLU of the weighted sum). The
  score is the logit of the calibrated probability of the predicted class, which is the
  decision value up to the Platt slope (its sign included). Several backbones: the mean
  of their max-normalised maps. The CAM layer is hooked on the featurizer's own network
  (timm pre-logits taps); an FX-traced tap model (torchvision) keeps only leaf modules,
  so the network is rebuilt from the same weights and traced with the CAM layer as an
  extra output of the same graph (one forward gives taps and activations).
- **Occlusion sensitivity** (forests, boosting, votes, stacks, several classes, and SVMs
  by default): the model's own probability of the predicted class
  (:func:`occlusion_map`): a patch filled with the image's mean slides over the image
  (the crop in box mode); each pixel gets the mean drop ``max(0, p - p_occluded)`` over
  the patches that cover it.

Where a Grad-CAM map is empty (every weighted sum negative) the explanation falls back to
occlusion, and its text says so; ``explain(..., method="occlusion")`` asks for occlusion
for any model. On BUSI (Lite0 ImageNet features) occlusion maps of a soft vote peak in the
lesion box above chance (23 % vs 13 %), the SVM decision-gradient maps at chance level (they
peak at image borders), which is why occlusion is the default for every model on
features: ``tests/test_bundle_explain.py`` has the figures.

Maps are ``(H, W)`` float32 in [0, 1] at the input image's size; in box mode the
region outside the crop the networks see is 0. A map on a network's square input is
brought back to the image through the inverse of its resize (squash, centre crop or
letterbox). ``proba`` is computed exactly as :meth:`BundleModel.predict_proba_tensors`
computes it (same calls, one image), so the map is shown beside the same numbers.

The caller holds ``model.lock`` (:meth:`BundleModel.explain_tensor`); nothing here takes it.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from workbench.backbones.ynet import YNetClassBranch
from workbench.baselines.cam import cam_maps, default_target_layer, upsample_to
from workbench.bundle.model import Explanation
from workbench.data.preprocess import Geometry

__all__ = ["DEFAULT_PATCH", "DEFAULT_STRIDE", "METHODS", "OcclusionResult", "YNetClassBranch", "explain",
           "occlusion_map", "predicted_class", "svm_decision", "svm_parts", "to_image_grid"]

#: Occlusion patch side and stride, as fractions of the explained region's height and
#: width: 7 x 7 = 49 occluded copies (plus the original), one forward pass each. A
#: three-backbone soft vote (Lite0/1/2 at 224/240/260 px) took 12-14 s on one CPU thread.
DEFAULT_PATCH = 1 / 4
DEFAULT_STRIDE = 1 / 8

#: ``explain(method=...)``: ``auto`` picks by model kind (Grad-CAM for a CNN, occlusion
#: for features: the method whose maps find lesions on BUSI); ``occlusion`` for any model;
#: ``gradient``: the SVM decision gradient for a binary SVM head (occlusion elsewhere).
METHODS = ("auto", "occlusion", "gradient")

# Probability changes below this are float noise of batched forward passes, not a move.
_MOVE_EPS = 1e-6
# Occluded copies held at once are capped to this many bytes (a large photo: small batches).
_COPY_BYTES = 1 << 28


def explain(model, image: torch.Tensor, box=None, *, method: str = "auto", patch: float = DEFAULT_PATCH,
            stride: float = DEFAULT_STRIDE, batch_size: int = 16) -> Explanation:
    """Explain ``model``'s prediction for one decoded image.

    Parameters
    ----------
    model : BundleModel
        A loaded bundle (its lock held by the caller).
    image : Tensor (1|3, H, W)
        Decoded image in [0, 1] (:func:`~workbench.data.images.as_image_tensor`).
    box : (x0, y0, x1, y1), optional
        The lesion box (required by box-mode models, except those on a Y-Net's predicted
        boxes, which use the box it predicts for ``image``; ignored by whole-image ones).
    method : {"auto", "occlusion", "gradient"}
        ``auto``: Grad-CAM for a CNN, occlusion sensitivity for models on features;
        ``occlusion``: occlusion for every model; ``gradient``: the decision gradient of a
        binary SVM head (faithful to the head, but on BUSI its maps peak in the lesion box
        no more often than chance, so it is not the default), occlusion for other models.
    patch, stride : float
        Occlusion patch side and stride as fractions of the region's sides (only used
        by occlusion sensitivity).
    batch_size : int
        Occluded copies per forward pass.

    Returns
    -------
    Explanation
        ``heatmap`` (H, W) float32 in [0, 1], ``method`` (names the method, layer and
        class), ``proba`` (C,) equal to ``model.predict_proba_tensors([image], [box])[0]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    image = as_explain_tensor(image)
    if model.kind == "baseline":
        return _explain_baseline(model, image, occlusion=method == "occlusion", patch=patch, stride=stride,
                                 batch_size=batch_size)
    if box is None and getattr(model.featurizer, "box_net", None) is not None:
        # One box for the whole explanation: the Y-Net's box of the image itself, so an
        # occluded copy is read through the same crop (not re-boxed by what it hides).
        box = model.featurizer.predicted_boxes([image])[0]
    boxes = None if box is None else [box]
    proba = model.proba_from_features(model.featurizer.transform([image], boxes))[0]
    target = predicted_class(model, proba)
    member = model.members[0] if model.kind == "head" and len(model.members) == 1 else None
    fallback = ""  # why the gradient method, where it applies, gave way to occlusion
    if (method == "gradient" and member is not None and len(model.classes) == 2
            and svm_parts(member.estimator) is not None):
        try:
            heat, text = _svm_gradcam(model, member, image, box, target)
        except _NoGradientPath as e:
            heat, text = None, f"SVM decision gradient unavailable ({e})"
        if heat is not None:
            return Explanation(heat, text, proba)
        fallback = text
    res = occlusion_map(_features_scorer(model, box, target, batch_size), image,
                        model.featurizer.input_region(image.shape[-2], image.shape[-1], box),
                        patch=patch, stride=stride, batch_size=batch_size)
    return Explanation(res.heatmap, _join(fallback, res.describe(f"P({model.classes[target]})")), proba)


def as_explain_tensor(image: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy of a ``(1|3, H, W)`` image that autograd may use (not an
    inference tensor, as images decoded under ``torch.inference_mode`` are)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"an image tensor must be (1|3, H, W), got {getattr(image, 'shape', type(image))}")
    with torch.inference_mode(False):
        return image.detach().float().cpu().clone()


def predicted_class(model, proba: np.ndarray) -> int:
    """Index of the class the model predicts: for a binary model with a threshold, the
    positive class if ``P(positive) >= threshold``, else the other; otherwise the argmax."""
    pos = getattr(model, "positive_index", None)
    thr = getattr(model, "threshold", None)
    if pos is not None and thr is not None and len(proba) == 2:
        return int(pos) if proba[pos] >= thr else 1 - int(pos)
    return int(np.argmax(proba))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# ------------------------------------------------------------------------ geometry
def to_image_grid(cam: np.ndarray, geometry: Geometry, height: int, width: int) -> np.ndarray:
    """A map on a network's ``S x S`` input brought back to the ``height x width`` image it
    was resized from, inverting :class:`~workbench.data.preprocess.Geometry`.

    ``squash`` stretches back; ``letterbox`` drops the padding first; ``crop`` puts the
    centre crop back into the resized frame (0 where the network saw nothing).
    """
    cam = np.asarray(cam, dtype=np.float32)
    s = geometry.size
    if cam.shape != (s, s):
        cam = upsample_to(cam, (s, s))
    if geometry.resize == "letterbox":
        scale = s / max(height, width)
        nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (s - nh) // 2, (s - nw) // 2
        cam = cam[top:top + nh, left:left + nw]
    elif geometry.resize == "crop":
        # torchvision's resize of the shorter side to `short`, then its centre crop.
        short = int(round(s / geometry.crop_pct))
        if height <= width:
            rh, rw = short, int(short * width / height)
        else:
            rh, rw = int(short * height / width), short
        frame = np.zeros((max(rh, s), max(rw, s)), np.float32)
        top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
        if top >= 0 and left >= 0:
            frame[top:top + s, left:left + s] = cam
            cam = frame[:rh, :rw]
    return upsample_to(cam, (height, width))


def _paste(crop_map: np.ndarray, region: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """A map of the region ``(x0, y0, x1, y1)`` placed in a zero ``height x width`` map."""
    x0, y0, x1, y1 = region
    out = np.zeros((height, width), np.float32)
    out[y0:y1, x0:x1] = crop_map
    return out


def _unit(m: np.ndarray) -> np.ndarray:
    """Non-negative, NaN-free, scaled so the maximum is 1 (an all-zero map stays 0)."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    m = np.maximum(m, 0.0)
    top = float(m.max()) if m.size else 0.0
    return (m / top).astype(np.float32) if top > 0 else np.zeros_like(m, dtype=np.float32)


# ------------------------------------------------------------------------ baseline
def _explain_baseline(model, image: torch.Tensor, *, occlusion: bool, patch: float, stride: float,
                      batch_size: int) -> Explanation:
    proba = model.network_proba([image])[0]
    target = predicted_class(model, proba)
    cls = model.classes[target]
    method = ""
    if not occlusion:
        backbone = model.spec["network"]["backbone"]
        net = model.network
        if getattr(model, "is_ynet", False):
            net = YNetClassBranch(net)
            layer = net.deepest
            where = f"{backbone} Y-Net, the encoder's deepest features through the classification branch"
        else:
            layer = default_target_layer(net, backbone)
            where = f"{backbone}, layer {_module_name(net, layer)}"
        x = model.network_input([image])
        cam = cam_maps(net, x, targets=[target], target_layer=layer, batch_size=1).maps[0]
        h, w = image.shape[-2:]
        heat = _unit(to_image_grid(cam, model.geometry, h, w))
        method = f"Grad-CAM ({where}) for class {cls}"
        if heat.max() > 0:
            return Explanation(heat, method, proba)
        # Every channel-weighted activation was negative: Grad-CAM has nothing to show.
        method += " was empty"

    def score(images: Sequence[torch.Tensor]) -> np.ndarray:
        return model.network_proba(list(images), batch_size=batch_size)[:, target]

    res = occlusion_map(score, image, None, patch=patch, stride=stride, batch_size=batch_size)
    return Explanation(res.heatmap, _join(method, res.describe(f"P({cls})")), proba)


def _module_name(root: nn.Module, layer: nn.Module) -> str:
    return next((n for n, m in root.named_modules() if m is layer), type(layer).__name__)


# ---------------------------------------------------------------- SVM decision in torch
@dataclass(frozen=True)
class SvmParts:
    """A fitted binary SVM head as arrays: ``d(x) = svm((x - mean) / scale)``."""

    kernel: str  # "rbf" or "linear"
    mean: np.ndarray | None
    scale: np.ndarray | None
    support: np.ndarray | None  # (m, D) support vectors (rbf)
    dual: np.ndarray  # (m,) dual coefficients (rbf) or (D,) weights (linear)
    intercept: float
    gamma: float | None


def svm_parts(estimator: Any) -> SvmParts | None:
    """The arrays of a fitted ``Pipeline([("scale", StandardScaler()), ("clf", svm)])``
    with ``svm`` a binary :class:`~workbench.heads.zoo.ScaledGammaSVC` or linear
    :class:`~sklearn.svm.SVC` (the ``svm-rbf`` / ``svm-linear`` heads); None for any
    other estimator."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from workbench.heads.zoo import ScaledGammaSVC

    if not isinstance(estimator, Pipeline):
        return None
    steps = dict(estimator.steps)
    if set(steps) - {"scale", "clf"} or "clf" not in steps or list(steps)[-1] != "clf":
        return None
    scaler = steps.get("scale")
    if scaler is not None and not isinstance(scaler, StandardScaler):
        return None
    clf = steps["clf"]
    if isinstance(clf, ScaledGammaSVC):
        svc, gamma = getattr(clf, "svc_", None), getattr(clf, "gamma_", None)
    elif isinstance(clf, SVC):
        svc, gamma = clf, None
    else:
        return None
    if svc is None or len(getattr(svc, "classes_", ())) != 2 or list(svc.classes_) != [0, 1]:
        return None
    mean = None if scaler is None or scaler.mean_ is None else np.array(scaler.mean_, np.float64)
    scale = None if scaler is None or scaler.scale_ is None else np.array(scaler.scale_, np.float64)
    b = float(np.asarray(svc.intercept_).ravel()[0])
    if svc.kernel == "rbf" and isinstance(clf, ScaledGammaSVC):
        return SvmParts("rbf", mean, scale, np.array(svc.support_vectors_, np.float64),
                        np.array(svc.dual_coef_, np.float64).ravel(), b, float(gamma))
    if svc.kernel == "linear":
        return SvmParts("linear", mean, scale, None, np.array(svc.coef_, np.float64).ravel(), b, None)
    return None


def svm_decision(estimator: Any, X: torch.Tensor) -> torch.Tensor:
    """``estimator.decision_function`` of a binary SVM head, differentiable in ``X``.

    ``X`` is ``(n, D)`` (the member's blocks concatenated); the result is ``(n,)``
    float64: ``sum_i dual_i exp(-gamma |z - sv_i|^2) + b`` (RBF) or ``w . z + b``
    (linear) with ``z`` the scaler's output. scikit-learn's ``dual_coef_`` and
    ``intercept_`` already carry the binary sign flip, so ``d > 0`` means class 1.

    Raises
    ------
    ValueError
        For an estimator :func:`svm_parts` does not recognise.
    """
    parts = svm_parts(estimator)
    if parts is None:
        raise ValueError(f"not a binary scaler + RBF/linear SVC pipeline: {estimator!r}")
    z = X.double()
    dev = z.device
    if parts.mean is not None:
        z = z - torch.as_tensor(parts.mean, device=dev)
    if parts.scale is not None:
        z = z / torch.as_tensor(parts.scale, device=dev)
    if parts.kernel == "linear":
        return z @ torch.as_tensor(parts.dual, device=dev) + parts.intercept
    sv = torch.as_tensor(parts.support, device=dev)
    # |z - sv|^2 expanded: (n, m) without an (n, m, D) intermediate; float64 keeps it exact.
    d2 = (z * z).sum(1, keepdim=True) - 2.0 * z @ sv.T + (sv * sv).sum(1)[None]
    k = torch.exp(-parts.gamma * d2.clamp_min(0.0))
    return k @ torch.as_tensor(parts.dual, device=dev) + parts.intercept


# ------------------------------------------------------------ gradients through networks
class _NoGradientPath(Exception):
    """The CAM layer of a network cannot be reached for gradients (then: occlusion)."""


@dataclass
class _CamRunner:
    """Runs one featurizer group's network on a prepared input, returning its taps and
    the activation of its CAM layer from the same forward pass."""

    backbone: str
    layer_name: str
    run: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


# Per featurizer (weakly held, so a dropped bundle frees them): group index -> runner.
_RUNNERS: "weakref.WeakKeyDictionary[Any, dict[int, _CamRunner]]" = weakref.WeakKeyDictionary()


def _runner(featurizer, index: int) -> _CamRunner:
    cache = _RUNNERS.setdefault(featurizer, {})
    if index not in cache:
        cache[index] = _make_runner(featurizer, featurizer.groups[index])
    return cache[index]


def _make_runner(featurizer, group) -> _CamRunner:
    """Hooks on the featurizer's own network when its tap model calls the network's
    modules (timm pre-logits). An FX-traced tap model (torchvision graph nodes) keeps
    only leaf modules, so a container CAM layer (``layer4.2``, ``Mixed_7c``) never runs
    as a module: the same network is rebuilt from the same weights and traced once more
    with the CAM layer as an extra output of the same graph."""
    from workbench.backbones.registry import get_backbone
    from workbench.backbones.taps import PreLogitsTaps, graph_node_taps

    spec = get_backbone(group.backbone)
    body = group.model.body
    if isinstance(body, PreLogitsTaps):
        net = body.model
        layer = spec.cam_target(net)
        tap_model = group.model

        def run(x: torch.Tensor):
            seen: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
            try:
                feats = tap_model(x)
            finally:
                handle.remove()
            if not seen:
                raise _NoGradientPath(f"{spec.name}: CAM layer did not run")
            return feats, seen[-1]

        return _CamRunner(spec.name, _module_name(net, layer), run)
    if spec.tapper is not graph_node_taps:
        raise _NoGradientPath(f"{spec.name}: its tapper hides the CAM layer")
    return _fx_runner(featurizer, group, spec)


def _fx_runner(featurizer, group, spec) -> _CamRunner:
    import warnings

    from torchvision.models.feature_extraction import create_feature_extractor

    from workbench.backbones.finetuned import using_root
    from workbench.backbones.loading import build_model
    from workbench.backbones.weights import resolve_weights

    with using_root(featurizer.weights_root):
        w = resolve_weights(spec, group.weights_id)
    if {b.weights_digest for b in group.blocks} != {w.digest}:
        raise _NoGradientPath(f"{spec.name}: weights changed since the featurizer was built")
    net = build_model(spec, w).eval()
    layer = spec.cam_target(net)
    name = _module_name(net, layer)
    taps = {b.tap: spec.tap(b.tap) for b in group.blocks}
    nodes = {t.node: tap for tap, t in taps.items()}
    if name in nodes:
        raise _NoGradientPath(f"{spec.name}: the CAM layer {name} is a tap itself")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        graph = create_feature_extractor(net, return_nodes={**nodes, name: "__cam__"}).to(featurizer.device)
    for p in graph.parameters():
        p.requires_grad_(False)  # gradients are only asked of activations

    def run(x: torch.Tensor):
        out = graph(x)
        return {tap: out[tap].flatten(1) for tap in taps}, out["__cam__"]

    return _CamRunner(spec.name, name, run)


def _svm_gradcam(model, member, image: torch.Tensor, box, target: int) -> tuple[np.ndarray | None, str]:
    """Grad-CAM weighting of the SVM score of class ``target`` at every backbone of the member."""
    fz = model.featurizer
    h, w = image.shape[-2:]
    region = fz.input_region(h, w, box)
    used = set(member.blocks)
    with torch.inference_mode(False), torch.enable_grad():
        feats: dict[str, torch.Tensor] = {}
        acts = []
        for i, (g, x) in enumerate(fz.network_inputs(image, box)):
            if not used & {b.name for b in g.blocks}:
                continue
            runner = _runner(fz, i)
            out, act = runner.run(x.detach().requires_grad_(True))
            if act.ndim != 4:
                raise _NoGradientPath(f"{runner.backbone} {runner.layer_name}: not a (N, C, H, W) map")
            for b in g.blocks:
                feats[b.name] = out[b.tap][0]
            acts.append((g, runner, act))
        z = torch.cat([feats[b] for b in member.blocks])[None]
        d = svm_decision(member.estimator, z)[0]
        score, note = _class_score(d, member.calibrator, target)
        grads = torch.autograd.grad(score, [a for _, _, a in acts], allow_unused=True)
    maps, names = [], []
    for (g, runner, act), grad in zip(acts, grads):
        names.append(f"{runner.backbone} {runner.layer_name}")
        if grad is None:
            continue
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * act).sum(dim=1))[0].detach().float().cpu().numpy()
        cam = _unit(cam)
        if cam.max() > 0:
            x0, y0, x1, y1 = region
            maps.append(_unit(to_image_grid(cam, g.pre.geometry, y1 - y0, x1 - x0)))
    svm = "RBF" if svm_parts(member.estimator).kernel == "rbf" else "linear"
    crop = " on the box crop" if fz.input_mode == "box" else ""
    method = (f"{member.head} ({svm} SVM) decision gradient (Grad-CAM weighting) through "
              f"{' + '.join(names)}{' (mean of per-network maps)' if len(names) > 1 else ''}{crop} "
              f"for class {model.classes[target]}{note}")
    if not maps:
        return None, f"{method}: empty (no positive evidence at the CAM layer)"
    return _unit(_paste(np.mean(maps, axis=0), region, h, w)), method


def _class_score(d: torch.Tensor, calibrator, target: int) -> tuple[torch.Tensor, str]:
    """The logit of the calibrated probability of class ``target`` (Platt:
    ``P(class 1) = 1 / (1 + exp(a d + b))``, so ``logit = -(a d + b)``); without a
    calibrator the decision value itself, negated for class 0."""
    if calibrator is None:
        s1, note = d, ""
    else:
        a, b = (float(v) for v in calibrator.coef[0])
        s1, note = -(a * d + b), "" if a < 0 else f" (Platt slope {a:+.3g}: sign of d reversed)"
    return (s1 if target == 1 else -s1), note


# ------------------------------------------------------------------------- occlusion
@dataclass(frozen=True)
class OcclusionResult:
    """An occlusion map and what it rests on.

    ``heatmap`` (H, W) in [0, 1]; ``p`` the probability of the unoccluded image (same
    batch as the occluded ones); ``drop`` / ``rise`` the largest fall / rise of it under
    one patch; ``n`` the number of occluded copies; ``patch`` / ``stride`` as given.
    """

    heatmap: np.ndarray
    p: float
    drop: float
    rise: float
    n: int
    patch: float
    stride: float
    relative: bool  # no patch lowered p: the map ranks patches by how little they raised it

    def describe(self, what: str) -> str:
        """The method text, e.g. ``occlusion sensitivity (patch 1/4 of the side, ...), P(malignant)``."""
        head = (f"occlusion sensitivity (patch {_frac(self.patch)} of the side, stride {_frac(self.stride)}, "
                f"{self.n} patches filled with the image mean), {what}")
        if self.drop <= _MOVE_EPS and self.rise <= _MOVE_EPS:
            return f"{head}: {what} did not change under any patch (the map is empty)"
        if self.relative:
            return (f"{head}: no patch lowered {what} (each raised it, by up to {self.rise:.3g}); the map shows "
                    f"where occlusion raised it least")
        return f"{head}: largest drop {self.drop:.3g}"


def _frac(v: float) -> str:
    for d in range(1, 33):
        if abs(v * d - round(v * d)) < 1e-9 and round(v * d) >= 1:
            return f"{round(v * d)}/{d}"
    return f"{v:.3g}"


def _positions(length: int, size: int, step: int) -> list[int]:
    """Patch starts from 0 to ``length - size`` by ``step``; the last one always flush with the end."""
    last = max(0, length - size)
    pos = list(range(0, last + 1, step))
    if pos[-1] != last:
        pos.append(last)
    return pos


def occlusion_map(score: Callable[[Sequence[torch.Tensor]], np.ndarray], image: torch.Tensor,
                  region: tuple[int, int, int, int] | None = None, *, patch: float = DEFAULT_PATCH,
                  stride: float = DEFAULT_STRIDE, batch_size: int = 16) -> OcclusionResult:
    """Occlusion sensitivity of ``score`` (images -> one probability each) for ``image``.

    A rectangle of ``patch`` x the region's height and width slides by ``stride`` x them
    over ``region`` = ``(x0, y0, x1, y1)`` (default: the whole image), filled with the
    region's per-channel mean. Each pixel gets the mean of ``max(0, p - p_occluded)`` over
    the patches that cover it, scaled to a maximum of 1; pixels outside the region are 0.
    The unoccluded image is scored in the first batch, beside the occluded copies, so
    batch-size float noise does not show as a change. If no patch lowers ``p`` but some
    raise it, the map is ``max_k p_k - p_occluded`` instead (``relative``).

    Parameters
    ----------
    score
        ``score(list of (C, H, W) tensors) -> (n,)`` probabilities of the explained class.
    image
        ``(C, H, W)`` in [0, 1].
    region
        The part of the image the model sees (its box crop).
    patch, stride
        Fractions in (0, 1] of the region's sides.
    batch_size
        Images per ``score`` call.
    """
    if not (0 < patch <= 1 and 0 < stride <= 1):
        raise ValueError(f"patch and stride must be fractions in (0, 1], got patch={patch}, stride={stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, h, w = image.shape
    x0, y0, x1, y1 = region if region is not None else (0, 0, w, h)
    rh, rw = y1 - y0, x1 - x0
    if rh < 1 or rw < 1:
        raise ValueError(f"empty region {region} in a {w}x{h} image")
    ph, pw = max(1, round(patch * rh)), max(1, round(patch * rw))
    sh, sw = max(1, round(stride * rh)), max(1, round(stride * rw))
    fill = image[:, y0:y1, x0:x1].mean(dim=(1, 2), keepdim=True)
    boxes = [(y, x) for y in _positions(rh, ph, sh) for x in _positions(rw, pw, sw)]
    batch = max(1, min(batch_size, _COPY_BYTES // max(1, image.numel() * image.element_size())))
    probs: list[np.ndarray] = []
    queue: list[torch.Tensor] = [image]
    for i, (y, x) in enumerate(boxes):
        occ = image.clone()
        occ[:, y0 + y:y0 + y + ph, x0 + x:x0 + x + pw] = fill
        queue.append(occ)
        if len(queue) >= batch or i == len(boxes) - 1:
            probs.append(np.asarray(score(queue), dtype=np.float64).reshape(-1))
            queue = []
    p = np.concatenate(probs)
    p0, pk = float(p[0]), p[1:]
    drop = float(np.max(p0 - pk, initial=0.0))
    rise = float(np.max(pk - p0, initial=0.0))
    relative = drop <= _MOVE_EPS and rise > _MOVE_EPS
    delta = (float(pk.max()) - pk) if relative else np.maximum(0.0, p0 - pk)
    delta = np.where(delta > _MOVE_EPS, delta, 0.0)
    acc = np.zeros((rh, rw), np.float64)
    cnt = np.zeros((rh, rw), np.float64)
    for (y, x), dv in zip(boxes, delta):
        acc[y:y + ph, x:x + pw] += dv
        cnt[y:y + ph, x:x + pw] += 1
    local = np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0)
    heat = _unit(_paste(local.astype(np.float32), (x0, y0, x1, y1), h, w))
    return OcclusionResult(heat, p0, drop, rise, len(boxes), patch, stride, relative)


def _features_scorer(model, box, target: int, batch_size: int) -> Callable[[Sequence[torch.Tensor]], np.ndarray]:
    """Images -> the bundle's probability of ``target``, through its featurizer and members
    (not :meth:`predict_proba_tensors`, which takes the lock the caller holds)."""
    def score(images: Sequence[torch.Tensor]) -> np.ndarray:
        boxes = None if box is None else [box] * len(images)
        feats = model.featurizer.transform(list(images), boxes, batch_size=batch_size)
        return model.proba_from_features(feats)[:, target]

    return score

"""``workbench.load_model``: a bundle as a scikit-learn-style classifier of images.

``load_model(dir).predict_proba(images)`` takes paths, PIL images, arrays or decoded
tensors and returns the probabilities the run's test record holds for the same images
(the bundle's exactness test). A Y-Net baseline's bundle also segments:
``segment(images)`` gives each image's lesion probability map, mask, box and contour.
A bundle whose features were computed on a Y-Net's predicted boxes ships that Y-Net and
crops every image to the box it predicts (``predicted_boxes(images)``); it takes no
manual box, and refuses one: the model was selected on predicted boxes.
Every file is checked against ``bundle.json`` before anything is read; heads load
through skops' restricted loader, networks with ``weights_only`` loading, so a bundle
can be shared without trusting its author with code.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from workbench.bundle.files import BundleError, load_fitted, read_json, verify_bundle
from workbench.bundle.segment import Segmentation
from workbench.data.boxes import Box
from workbench.data.images import as_image_tensor

if TYPE_CHECKING:
    from workbench.backbones.ynet_masks import YNetMasks

__all__ = ["BundleModel", "Explanation", "load_model"]


@dataclass
class Explanation:
    """A heat map of one prediction: ``heatmap`` (H, W) in [0, 1] at the image's size, the
    ``method`` that made it (shown under every map) and the prediction's ``proba``."""

    heatmap: np.ndarray
    method: str
    proba: np.ndarray


@dataclass
class _Member:
    name: str
    head: str
    blocks: list[str]
    estimator: Any
    calibrator: Any  # PlattCalibrator or None

    def proba(self, feats: dict[str, np.ndarray], n_classes: int) -> np.ndarray:
        from workbench.heads.nested import calibrated_proba, response

        X = np.concatenate([feats[b] for b in self.blocks], axis=1) if len(self.blocks) > 1 else feats[self.blocks[0]]
        scores = response(self.estimator, X, n_classes, decision=self.calibrator is not None)
        return calibrated_proba(self.calibrator, scores) if self.calibrator is not None else scores


class BundleModel:
    """A loaded model bundle (see :func:`load_model`).

    Attributes
    ----------
    name, kind : str
        The candidate's label and kind (``head``, ``vote-soft``, ``vote-hard``, ``stack``, ``baseline``).
    classes : list of str
    positive : str or None
        The positive class of a binary model.
    threshold : float or None
        Operating threshold on P(positive) (the run report's); ``predict`` applies it.
    input_mode : str
        ``whole`` image or lesion ``box`` (then every image needs its box, unless the
        bundle predicts it).
    predicts_boxes : bool
        Features on a Y-Net's predicted boxes: the bundled Y-Net gives each image's box
        (:meth:`predicted_boxes`); manual boxes are refused.
    box_source : dict or None
        That Y-Net (``backbone``, ``weights_id``, ``weights_digest``, ``threshold``, ``folder``).
    is_ynet : bool
        A Y-Net baseline (segmentation + classification): :meth:`segment` works.
    card : dict
        The model card's fields (figures, training data, protocol, intended use).
    """

    def __init__(self, root: Path, spec: dict[str, Any], *, trusted: Iterable[str] = (), device: str = "cpu"):
        self.root = root
        self.spec = spec
        self.name: str = spec["name"]
        self.kind: str = spec["kind"]
        self.classes: list[str] = list(spec["classes"])
        self.positive: str | None = spec.get("positive")
        self.positive_index = self.classes.index(self.positive) if self.positive else None
        self.threshold: float | None = spec.get("threshold")
        self.input_mode: str = spec.get("input_mode", "whole")
        self.card: dict[str, Any] = spec.get("card", {})
        self.device = torch.device(device)
        self.lock = threading.Lock()  # torch modules are not ours to call from two threads at once
        self.classes_ = np.array(self.classes)
        self.is_ynet = self.kind == "baseline" and (spec.get("network") or {}).get("model") == "ynet"
        self.box_source: dict[str, Any] | None = spec.get("box_source")
        if self.kind == "baseline":
            self._load_network()
            self.featurizer = None
            self.members: list[_Member] = []
        else:
            self._load_members(trusted)

    # -- loading -------------------------------------------------------------------
    def _load_members(self, trusted: Iterable[str]) -> None:
        from workbench.features.online import BlockDef, Featurizer
        from workbench.heads.nested import PlattCalibrator

        n = len(self.classes)
        self.members = []
        for m in self.spec["members"]:
            est = load_fitted(self._file(m["estimator"]), trusted)
            cal = PlattCalibrator([tuple(c) for c in m["calibrator"]], n) if m.get("calibrator") else None
            self.members.append(_Member(m["name"], m["head"], list(m["blocks"]), est, cal))
        self.stack = load_fitted(self._file(self.spec["stack"]), trusted) if self.kind == "stack" else None
        blocks = [BlockDef(**b) for b in self.spec["blocks"]]
        self.featurizer = Featurizer(blocks, weights_root=str(self.root / "weights"), device=self.device)
        net = self.featurizer.box_net
        # model.json and the blocks' own box source must name the same Y-Net (its digest
        # was checked against the bundled weights by the featurizer).
        said = None if self.box_source is None else (self.box_source.get("weights_id"),
                                                     self.box_source.get("weights_digest"))
        found = None if net is None else (net.weights.id, net.weights.digest)
        if said != found:
            raise BundleError(f"{self.root / 'model.json'}: box_source names "
                              f"{'no Y-Net' if said is None else said[0]}, but the feature blocks were computed on "
                              f"{'manual boxes' if found is None else 'the boxes of Y-Net ' + found[0]}")

    def _load_network(self) -> None:
        from workbench.backbones.finetuned import using_root
        from workbench.backbones.loading import build_model
        from workbench.backbones.registry import get_backbone
        from workbench.backbones.weights import resolve_weights
        from workbench.data.preprocess import Geometry

        net = self.spec["network"]
        spec = get_backbone(net["backbone"])
        with using_root(self.root / "weights"):
            w = resolve_weights(spec, net["weights_id"])
        if w.is_ynet != self.is_ynet:
            # model.json and the weights' own meta.json must agree on what the network is.
            raise BundleError(f"{self.root / 'model.json'}: network {net['backbone']}@{net['weights_id']} is "
                              f"{'a Y-Net' if w.is_ynet else 'a classifier'}, model.json says "
                              f"{'a Y-Net' if self.is_ynet else 'a classifier'}")
        self.network = build_model(spec, w).eval().to(self.device)
        self.geometry = Geometry(int(net["image_size"]), net["resize"], interpolation=net["interpolation"])
        self.mean = torch.tensor(net["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(net["std"], dtype=torch.float32).view(3, 1, 1)

    def _file(self, rel: str) -> Path:
        return self.root / rel

    # -- prediction ----------------------------------------------------------------
    def _tensors(self, images: Sequence[Any] | Any) -> list[torch.Tensor]:
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        return [as_image_tensor(im, keep_gray=True) for im in images]

    @property
    def predicts_boxes(self) -> bool:
        """Whether the bundle crops images to the boxes its own Y-Net predicts."""
        return self.featurizer is not None and self.featurizer.box_net is not None

    def refuse_boxes(self, boxes: Any) -> None:
        """Raise :class:`BundleError` when ``boxes`` are given to a bundle that predicts its own."""
        if boxes is not None and self.predicts_boxes:
            src = self.box_source or {}
            raise BundleError(f"{self.name!r} crops each image to the lesion box its Y-Net "
                              f"({src.get('backbone')}@{src.get('weights_id')}) predicts, and was selected on those "
                              f"boxes: do not give boxes (manual boxes would feed it other inputs than it was "
                              f"tested on)")

    def predict_proba(self, images, boxes: Sequence | None = None) -> np.ndarray:
        """Class probabilities ``(n, C)`` of ``images`` (paths, PIL images, arrays, tensors).

        ``boxes``: one ``(x0, y0, x1, y1)`` per image for a box-input bundle; refused by a
        bundle that predicts its boxes (:attr:`predicts_boxes`).
        """
        return self.predict_proba_tensors(self._tensors(images), boxes)

    def predict_proba_tensors(self, images: Sequence[torch.Tensor], boxes: Sequence | None = None) -> np.ndarray:
        """As :meth:`predict_proba`, for decoded ``(1|3, H, W)`` tensors in [0, 1]."""
        self.refuse_boxes(boxes)
        with self.lock:
            if self.kind == "baseline":
                return self.network_proba(images)
            return self.proba_from_features(self.featurizer.transform(images, boxes))

    def predicted_boxes(self, images) -> list[Box | None]:
        """The lesion box the bundled Y-Net predicts for each image, as the run's extraction
        computed it (the largest region of P(lesion) > threshold, in the image's pixels);
        None where the mask is empty, and the model then reads the whole image.

        Raises
        ------
        BundleError
            The bundle does not predict boxes (:attr:`predicts_boxes` is false).
        """
        return self.predicted_boxes_tensors(self._tensors(images))

    def predicted_boxes_tensors(self, images: Sequence[torch.Tensor]) -> list[Box | None]:
        """As :meth:`predicted_boxes`, for decoded ``(1|3, H, W)`` tensors in [0, 1]."""
        if not self.predicts_boxes:
            raise BundleError(f"{self.name!r} predicts no lesion boxes (input: "
                              f"{'manual boxes' if self.input_mode == 'box' else 'the whole image'})")
        fz = self.featurizer
        with self.lock:
            return fz.box_net.boxes_of_images(list(images), device=fz.device,
                                              precision=fz.blocks[0].boxes["precision"])

    def proba_from_features(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities from block features (as :class:`~workbench.features.online.Featurizer` gives them)."""
        from workbench.heads.ensembles import stack_proba, vote

        n = len(self.classes)
        probas = [m.proba(feats, n) for m in self.members]
        if self.kind == "head":
            return probas[0]
        if self.kind == "stack":
            return stack_proba(self.stack, probas)
        thresholds = self.spec.get("member_thresholds")
        if self.kind == "vote-hard" and thresholds is not None:
            return vote(probas, "vote-hard", thresholds=thresholds, positive=self.positive_index)[1]
        return vote(probas, self.kind)[1]

    def network_input(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The network's ``(n, 3, S, S)`` input of decoded images, as its fine-tuning
        evaluated them (geometry, then the weights' normalisation)."""
        return torch.stack([(self.geometry(im.expand(3, -1, -1).clone()) - self.mean) / self.std
                            for im in images]).to(self.device)

    def network_proba(self, images: Sequence[torch.Tensor], batch_size: int = 64) -> np.ndarray:
        """A baseline bundle's softmax on decoded images (a Y-Net's: of its classification
        branch). The caller holds :attr:`lock`."""
        from workbench.training.finetune import model_outputs

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                _, logits = model_outputs(self.network, self.network_input(images[start:start + batch_size]))
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    # -- segmentation (Y-Net bundles) ----------------------------------------------
    def segment(self, images, *, threshold: float | None = None) -> list[Segmentation]:
        """Lesion segmentation of ``images`` by a Y-Net bundle, one per image.

        Each :class:`~workbench.bundle.segment.Segmentation` holds the lesion probability
        map at the image's own size (the network's map brought back through the inverse of
        its resize, as the run scored Dice), the mask ``prob > threshold``, its box (the
        largest connected region; None when empty) and its contours.

        Parameters
        ----------
        images
            Paths, PIL images, arrays or decoded tensors (as :meth:`predict_proba`).
        threshold : float, optional
            Mask threshold (default: the run's, 0.5).

        Raises
        ------
        BundleError
            The bundle is not a Y-Net (it predicts classes only).
        """
        return self.segment_tensors(self._tensors(images), threshold=threshold)

    def segment_tensors(self, images: Sequence[torch.Tensor], *, threshold: float | None = None,
                        batch_size: int = 32) -> list[Segmentation]:
        """As :meth:`segment`, for decoded ``(1|3, H, W)`` tensors in [0, 1]."""
        from workbench.backbones.ynet_masks import MASK_THRESHOLD

        thr = MASK_THRESHOLD if threshold is None else float(threshold)
        if not 0.0 <= thr < 1.0:
            raise BundleError(f"mask threshold must be in [0, 1), got {threshold!r}")
        with self.lock:
            masks = self._ynet_masks()
            maps = masks.maps(list(images), device=self.device, batch_size=batch_size)
        return [Segmentation(m, thr, masks.box(m, thr)) for m in maps]

    def predict_masks(self, images) -> list[np.ndarray]:
        """Lesion probability maps ``(H, W)`` float32 of ``images``, each at its image's size
        (a Y-Net bundle; see :meth:`segment`)."""
        with self.lock:
            return self._ynet_masks().maps(self._tensors(images), device=self.device, batch_size=32)

    def _ynet_masks(self) -> YNetMasks:
        """The shared Y-Net mask pipeline (:class:`~workbench.backbones.ynet_masks.YNetMasks`)
        over the bundled network, with its geometry and normalisation (as :meth:`network_input`),
        at fp32 (no autocast) on :attr:`device`.

        Raises
        ------
        BundleError
            The bundle is not a Y-Net.
        """
        from workbench.backbones.ynet_masks import YNetMasks

        if not self.is_ynet:
            what = "a CNN classifier" if self.kind == "baseline" else f"a {self.kind} on CNN features"
            raise BundleError(f"{self.name!r} is {what}: it predicts classes only, no lesion masks; export a "
                              f"Y-Net baseline (e.g. CNN ynet-lite0) to segment")
        return YNetMasks(self.network, self.geometry, self.mean.flatten().tolist(), self.std.flatten().tolist())

    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Class names: the positive class at or above ``threshold`` (default: the bundle's
        operating threshold; binary models), else the argmax."""
        proba = np.asarray(proba)
        threshold = self.threshold if threshold is None else threshold
        if self.positive_index is not None and threshold is not None:
            pos = proba[:, self.positive_index] >= threshold
            return np.where(pos, self.positive, self.classes[1 - self.positive_index])
        return self.classes_[proba.argmax(axis=1)]

    def predict(self, images, boxes: Sequence | None = None) -> np.ndarray:
        """Class names at the bundle's threshold."""
        return self.decide(self.predict_proba(images, boxes))

    def recommendation(self, p: float) -> str:
        """The bundle's text for P(positive) = ``p`` ("" for a model of several classes)."""
        rec = self.spec.get("recommendation")
        if not rec or self.threshold is None:
            return ""
        text = rec["above"] if p >= self.threshold else rec["below"]
        return text.format(positive=self.positive, p=p, threshold=self.threshold)

    # -- explanation ---------------------------------------------------------------
    def explain(self, image, box=None, *, method: str = "auto") -> Explanation:
        """A heat map of the prediction for one image: Grad-CAM for a CNN, occlusion
        sensitivity for models on features (``method="gradient"``: an SVM head's own
        decision gradient); see :mod:`workbench.bundle.explain`. A bundle that predicts
        its boxes explains on its Y-Net's box (and refuses ``box``)."""
        return self.explain_tensor(self._tensors(image)[0], box, method=method)

    def explain_tensor(self, image: torch.Tensor, box=None, *, method: str = "auto") -> Explanation:
        """As :meth:`explain`, for a decoded ``(1|3, H, W)`` tensor."""
        from workbench.bundle.explain import explain

        self.refuse_boxes(box)
        with self.lock:
            return explain(self, image, box, method=method)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (``GET /api/model``)."""
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "positive": self.positive,
                "threshold": self.threshold, "input_mode": self.input_mode, "card": self.card,
                "members": [m.name for m in self.members],
                "features": [b.name for b in self.featurizer.blocks] if self.featurizer else [],
                "network": self.spec.get("network"), "segments": self.is_ynet,
                "predicts_boxes": self.predicts_boxes, "box_source": self.box_source}

    def __repr__(self) -> str:
        return f"BundleModel({self.name!r}, kind={self.kind!r}, classes={self.classes})"


def load_model(path: str | Path, *, trusted: Iterable[str] = (), device: str = "cpu") -> BundleModel:
    """Load a model bundle written by ``workbench export``.

    Parameters
    ----------
    path
        The bundle folder.
    trusted
        Extra types (``"module.Class"``) the heads may construct, for heads of your own.
    device
        Where networks run (``"cpu"``; ``"cuda"`` on a GPU machine).

    Raises
    ------
    BundleError
        A file missing or changed since export (named), an untrusted type, unreadable weights.
    """
    root = Path(path)
    verify_bundle(root)
    spec = read_json(root / "model.json")
    try:
        return BundleModel(root, spec, trusted=trusted, device=device)
    except KeyError as e:
        raise BundleError(f"{root / 'model.json'}: missing field {e}; not a bundle this workbench wrote") from None

"""Lesion boxes predicted by a Y-Net, for box-input features where no manual box exists.

``--input box --boxes predicted:[backbone@]ft-...`` crops each image to the box of the
lesion a fine-tuned Y-Net segments instead of the manifest's manual box: the bounding
box of the largest connected region of its probability map above 0.5, in the image's
own pixels: the one Y-Net mask pipeline (:mod:`workbench.backbones.ynet_masks`) that the
training layer's :mod:`~workbench.training.masks` and a bundle's ``segment()`` use too. An image whose
predicted mask is empty is taken whole (its box is the full frame), and counted.

Boxes are computed once per (image bytes, Y-Net) and kept beside the feature cache::

    <cache>/predicted-boxes/<key>.json   {"key", "fields", "boxes": {sha256: [x0, y0, x1, y1] | null}}

``key`` hashes ``fields`` (the Y-Net's id and weights digest, its input geometry, the
threshold, the precision it ran at, this module's code version), which also go into
the key of every feature entry computed on these boxes, so features on predicted boxes
never share an entry with features on manual boxes or whole images. The file is data
only (JSON), written atomically under a lock; a damaged file is reported by name with
a warning and its boxes are computed again.

Only the backbone and data layers are used here: the feature layer may not import the
training layer (``.importlinter``), so the Y-Net is built from the fine-tuned store
(:func:`~workbench.backbones.weights.resolve_weights`, :func:`build_model`) and read
through :class:`~workbench.backbones.ynet_masks.YNetMasks` (``tests/test_predicted_boxes.py``
and ``tests/test_ynet_mask_pipeline.py`` check the boxes are the training layer's).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from workbench.backbones.finetuned import ENV_ROOT, FineTunedNotFoundError, default_root, read_meta
from workbench.backbones.loading import build_model
from workbench.backbones.registry import get_backbone
from workbench.backbones.weights import ResolvedWeights, resolve_weights
from workbench.backbones.ynet_masks import YNetMasks, resized_input
from workbench.core.devices import resolve_device, resolve_precision
from workbench.core.hashing import stable_hash
from workbench.core.io import atomic_write
from workbench.data.boxes import MASK_THRESHOLD, Box
from workbench.data.images import ImageDecodeError, decode_image
from workbench.data.manifest import Item
from workbench.data.preprocess import Geometry
from workbench.errors import ConfigError
from workbench.features.options import BoxSource, parse_boxes

__all__ = ["BOXES_DIR", "BOX_CODE_VERSION", "BoxNet", "NotAYNetError", "PredictedBoxes", "find_ynet",
           "predicted_boxes"]

logger = logging.getLogger(__name__)

#: Folder of the box files under the feature cache's root (beside ``v1/``).
BOXES_DIR = "predicted-boxes"
#: Part of every box key: bump it when a change here alters the boxes a Y-Net gives.
BOX_CODE_VERSION = "1"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class NotAYNetError(ConfigError):
    """Weights named for predicted boxes that are not a Y-Net's (a classifier predicts no mask)."""


def find_ynet(source: BoxSource, root: str | os.PathLike | None = None) -> str:
    """The backbone a Y-Net id belongs to: the one given, or the only one of the
    fine-tuned store (``root``, else ``$WORKBENCH_FINETUNED`` / ``./finetuned``) that holds it.

    Raises
    ------
    FineTunedNotFoundError
        No backbone of the store holds a finished network of that id (naming both).
    ConfigError
        Several backbones hold it (naming them): give ``predicted:<backbone>@<id>``.
    """
    if source.backbone:
        return get_backbone(source.backbone).name
    base = Path(root or default_root())
    found = []
    if base.is_dir():
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            folder = d / source.weights_id
            if (folder / "weights.pth").is_file() and (folder / "meta.json").is_file():
                found.append(str(read_meta(folder).get("backbone") or d.name.replace("__", "/")))
    if not found:
        raise FineTunedNotFoundError(
            f"boxes = {str(source)!r}: no fine-tuned network {source.weights_id!r} in the store "
            f"{base.resolve()} (under any backbone). Set ${ENV_ROOT} or --finetuned to the store that holds it")
    if len(found) > 1:
        raise ConfigError(f"boxes = {str(source)!r}: {source.weights_id} is in the store {base.resolve()} under "
                          f"several backbones ({', '.join(found)}); name one: predicted:<backbone>@"
                          f"{source.weights_id}")
    return found[0]


@dataclass
class BoxNet:
    """A fine-tuned Y-Net used for boxes: its weights, input geometry and normalisation.

    The network itself is built on first use (:attr:`model`), so a run whose boxes are
    all cached never loads it.
    """

    backbone: str
    weights: ResolvedWeights
    geometry: Geometry
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float = MASK_THRESHOLD
    _model: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def load(cls, source: BoxSource | str, root: str | os.PathLike | None = None) -> BoxNet:
        """The Y-Net ``source`` names (``"predicted:[backbone@]ft-..."`` or a :class:`BoxSource`).

        Raises
        ------
        NotAYNetError
            The id is a fine-tuned classifier, not a Y-Net (naming it).
        FineTunedNotFoundError, ConfigError
            See :func:`find_ynet`.
        """
        if isinstance(source, str):
            parsed = parse_boxes(source)
            if parsed is None:
                raise ConfigError(f"boxes = {source!r} names no Y-Net; expected 'predicted:[backbone@]ft-...'")
            source = parsed
        from workbench.backbones.finetuned import using_root

        with using_root(root):
            spec = get_backbone(find_ynet(source, root))
            weights = resolve_weights(spec, source.weights_id)
        if not weights.is_ynet:
            kind = ((weights.finetuned or {}).get("config") or {}).get("model") or "classifier"
            raise NotAYNetError(f"boxes = {str(source)!r}: {weights.label} is a fine-tuned {kind}, not a Y-Net: it "
                                f"predicts no lesion masks. Give the id of a network fine-tuned with model = "
                                f"'ynet' (e.g. a ynet-lite0 baseline's weights_id)")
        meta = dict(weights.finetuned or {})
        dc = spec.data_config(meta.get("base_weights"))
        # As training.finetune.FineTuned.geometry: the size and resize the Y-Net was trained at.
        geometry = Geometry(int(meta["image_size"]), meta["resize"], interpolation=dc.interpolation)
        return cls(spec.name, weights, geometry, tuple(dc.mean), tuple(dc.std))

    @classmethod
    def from_fields(cls, fields: dict[str, Any], root: str | os.PathLike | None = None) -> BoxNet:
        """The Y-Net a feature entry's box source names (its ``boxes`` field), checked to
        predict the boxes that entry was computed on (same weights digest and settings).

        Raises
        ------
        WeightsMismatchError
            The store's weights hash to another digest, or this workbench's box settings differ.
        """
        from workbench.features.online import WeightsMismatchError

        net = cls.load(BoxSource(fields["weights_id"], fields["backbone"]), root=root)
        if net.weights.digest != fields["weights_digest"]:
            raise WeightsMismatchError(
                f"{net.label}: the Y-Net weights at {net.weights.path} hash to {net.weights.digest[:12]}..., but "
                f"the boxes were predicted with {fields['weights_digest'][:12]}...; install the same weights")
        if net.fields(fields["precision"]) != dict(fields):
            raise WeightsMismatchError(f"{net.label}: this workbench predicts boxes otherwise than the one that "
                                       f"computed the features (box settings {dict(fields)})")
        return net

    @property
    def label(self) -> str:
        return self.weights.label

    @property
    def seen_ids(self) -> list[str]:
        """The images the Y-Net trained or early-stopped on (its store metadata)."""
        meta = self.weights.finetuned or {}
        return list(meta.get("train_ids", [])) + list(meta.get("val_ids", []))

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = build_model(get_backbone(self.backbone), self.weights).eval()
        return self._model

    def fields(self, precision: str) -> dict[str, Any]:
        """What the boxes depend on: the key of the box file, and part of every feature
        entry's key computed on them."""
        return {"source": "predicted", "backbone": self.backbone, "weights_id": self.weights.id,
                "weights_digest": self.weights.digest, "geometry": dataclasses.asdict(self.geometry),
                "mean": list(self.mean), "std": list(self.std), "threshold": self.threshold,
                "precision": precision, "empty": "whole", "code_version": BOX_CODE_VERSION}

    @property
    def masks(self) -> YNetMasks:
        """The shared mask pipeline over this network (builds it)."""
        return YNetMasks(self.model, self.geometry, self.mean, self.std, self.threshold)

    def boxes_of_images(self, images: Sequence[torch.Tensor], *, device: str | torch.device = "cpu",
                        precision: str = "fp32", batch_size: int = 16) -> list[Box | None]:
        """Predicted boxes of decoded images (``(1|3, H, W)`` in [0, 1]), None where the
        mask is empty: for new images, e.g. at prediction time (nothing is cached)."""
        return self.masks.boxes(list(images), device=device, precision=precision, batch_size=batch_size)


class _Frames(Dataset):
    """Each image decoded (checked against its validated SHA-256) and resized for the Y-Net
    (:func:`~workbench.backbones.ynet_masks.resized_input`, in the loader's workers)."""

    def __init__(self, items: Sequence[Item], geometry: Geometry):
        self.items, self.geometry = list(items), geometry

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        try:
            img = decode_image(it.path, keep_gray=True, expect_sha256=it.sha256)
        except ImageDecodeError as e:
            return e  # returned, not raised: a worker would lose the file and the reason
        return i, resized_input(img, self.geometry)


def _collate(batch: list):
    for b in batch:
        if isinstance(b, ImageDecodeError):
            return b
    return default_collate(batch)


class _BoxFile:
    """The boxes of one Y-Net (one key) on disk: read, and merged-in under a lock."""

    def __init__(self, cache_root: str | os.PathLike, fields: dict[str, Any]):
        self.fields = fields
        self.key = stable_hash(fields, compact=True)
        self.path = Path(cache_root) / BOXES_DIR / f"{self.key}.json"

    def read(self, *, warn: bool = True) -> dict[str, Box | None]:
        """sha256 -> box (None: empty mask); a missing file is empty, a damaged one is
        reported (naming it; ``warn``) and read as empty, so its boxes are computed again."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("key") != self.key or d.get("fields") != self.fields:
                raise ValueError("its key or fields are not this Y-Net's")
            if not isinstance(d.get("boxes"), dict):
                raise ValueError("no boxes mapping")
            out: dict[str, Box | None] = {}
            for sha, b in d["boxes"].items():
                if not _SHA_RE.match(sha):
                    raise ValueError(f"{sha!r} is not a SHA-256")
                if b is not None and not (isinstance(b, list) and len(b) == 4
                                          and all(isinstance(v, int) and not isinstance(v, bool) for v in b)):
                    raise ValueError(f"box {b!r} of {sha[:12]} is not 4 integers")
                out[sha] = None if b is None else Box.of(b)
            return out
        except ValueError as e:  # JSONDecodeError and BoxValueError are ValueErrors
            if warn:
                logger.warning(f"predicted boxes {self.path} are damaged ({e}); computing them again")
            return {}

    def add(self, boxes: dict[str, Box | None]) -> None:
        """Merge ``boxes`` into the file (atomic; writers serialised by a lock, so one
        never drops boxes another wrote meanwhile)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = {**self.read(warn=False), **boxes}  # a damaged file was reported when first read
            doc = {"key": self.key, "fields": self.fields,
                   "boxes": {k: None if b is None else list(b) for k, b in sorted(merged.items())}}
            atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())


@dataclass
class PredictedBoxes:
    """The predicted boxes of a set of images and how they were obtained.

    ``boxes``: sha256 -> box, None where the predicted mask is empty (the image is then
    taken whole); ``computed`` / ``cached``: distinct images run through the Y-Net now /
    read from the box file.
    """

    net: BoxNet
    fields: dict[str, Any]
    boxes: dict[str, Box | None]
    computed: int
    cached: int
    path: Path

    def box_of(self, item: Item) -> Box:
        """The item's predicted box, or its whole frame when the mask is empty."""
        b = self.boxes[item.sha256]
        if b is not None:
            return b
        w, h = item.size()
        return Box(0, 0, w, h)

    def boxed(self, items: Sequence[Item]) -> list[Item]:
        """``items`` with their predicted boxes in place of the manual ones."""
        return [dataclasses.replace(it, box=self.box_of(it)) for it in items]

    def empty_ids(self, items: Sequence[Item]) -> list[str]:
        """Ids of the items whose predicted mask is empty (taken whole)."""
        return [it.id for it in items if self.boxes[it.sha256] is None]

    def info(self) -> dict[str, Any]:
        """The box source of a block (its :class:`~workbench.features.featureset.BlockInfo`)."""
        return dict(self.fields)

    def record(self, items: Sequence[Item]) -> dict[str, Any]:
        """The extraction record's account of the boxes."""
        empty = self.empty_ids(items)
        return {"ynet": self.net.label, "weights_digest": self.net.weights.digest, "file": str(self.path),
                "computed": self.computed, "cached": self.cached, "empty_masks": len(empty),
                "empty_mask_ids": empty}


def predicted_boxes(items: Sequence[Item], source: BoxSource | str | BoxNet, *,
                    cache_root: str | os.PathLike = "features_cache", device: str | torch.device | None = None,
                    precision: str = "auto", batch_size: int = 32, num_workers: int = 0,
                    progress: bool = False) -> PredictedBoxes:
    """The Y-Net's box of every item (validated: content hashes taken), from the box file
    beside the feature cache where it holds them; the others are computed and added.

    Parameters
    ----------
    items
        Validated manifest items (their SHA-256 keys the boxes).
    source
        ``"predicted:[backbone@]ft-..."``, a :class:`BoxSource` or a loaded :class:`BoxNet`.
    cache_root
        The feature cache's folder; boxes go to ``<cache_root>/predicted-boxes/``.
    device, precision
        Where and how the Y-Net runs (``auto``: the GPU with bf16 when there is one);
        the resolved precision is part of the key.

    Raises
    ------
    NotAYNetError, FineTunedNotFoundError, ConfigError
        See :meth:`BoxNet.load`.
    ImageDecodeError
        An image that cannot be decoded, or whose bytes changed since validation.
    """
    net = source if isinstance(source, BoxNet) else BoxNet.load(source)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    items = list(items)
    unhashed = [it.id for it in items if it.sha256 is None]
    if unhashed:
        raise ValueError(f"items {unhashed[:5]} have no content hash; validate the manifest first")
    fields = net.fields(precision)
    store = _BoxFile(cache_root, fields)
    known = store.read()
    todo, seen = [], set()
    for it in items:
        if it.sha256 not in known and it.sha256 not in seen:
            seen.add(it.sha256)
            todo.append(it)
    n_cached = len({it.sha256 for it in items}) - len(todo)
    logger.info(f"predicted boxes ({net.label}): {n_cached} cached, {len(todo)} to compute")
    new: dict[str, Box | None] = {}
    if todo:
        masks = net.masks
        loader = DataLoader(_Frames(todo, net.geometry), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=_collate, pin_memory=dev.type == "cuda")
        bar = tqdm(total=len(todo), unit="img", desc="boxes", disable=not progress, dynamic_ncols=True)
        with bar:
            for batch in loader:
                if isinstance(batch, ImageDecodeError):
                    raise batch
                idx, x = batch
                for i, p in zip(idx.tolist(), masks.mask_probs(x, dev, precision)):
                    it = todo[i]
                    w, h = it.size()
                    new[it.sha256] = masks.box(masks.frame(p, h, w))
                bar.update(len(idx))
        store.add(new)
    boxes = {it.sha256: new[it.sha256] if it.sha256 in new else known[it.sha256] for it in items}
    result = PredictedBoxes(net, fields, boxes, len(todo), n_cached, store.path)
    empty = result.empty_ids(items)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        logger.warning(f"predicted boxes ({net.label}): the mask of {len(empty)} of {len(items)} images is empty; "
                       f"they are taken whole: {shown}")
    return result

"""``workbench predict``: a bundle over many images, with the feature cache reused.

Images come as paths or as a manifest (ids, labels kept in the output; boxes for a box
model). Each file is read once: its bytes are hashed (the cache's row key) and decoded
from memory. Bad images are listed with their reasons and left out; the good ones are
still predicted. With a cache, rows the cache holds for the bundle's blocks (the same
entries a run would use) are read instead of computed, and computed rows are stored.
A bundle on a Y-Net's predicted boxes crops each image to the box its Y-Net predicts
(written to the table as ``box_x0..box_y1``); a manifest's own box columns are not used
(said once in the log): the model was selected on predicted boxes.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.bundle.model import BundleModel
from workbench.data.images import ImageDecodeError, decode_image_bytes, read_image_bytes
from workbench.features.extraction import image_row_key

__all__ = ["Prediction", "predict_files"]

logger = logging.getLogger(__name__)

BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")


@dataclass
class _Image:
    id: str
    path: Path
    label: str | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass
class Prediction:
    """The rows predicted (a DataFrame) and the images left out, with their reasons."""

    table: pd.DataFrame
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path or id, reason)
    cached_rows: int = 0
    computed_rows: int = 0


def _images_of(paths: Sequence[str | Path] = (), manifest: str | Path | None = None
               ) -> tuple[list[_Image], list[tuple[str, str]]]:
    if manifest is None:
        return [_Image(Path(p).stem, Path(p)) for p in paths], []
    from workbench.data.manifest import Manifest

    m = Manifest.load(manifest)
    bad = [(str(m.source), b.describe()) for b in m.bad_rows]
    return [_Image(it.id, Path(it.path), it.label, None if it.box is None else tuple(it.box)) for it in m], bad


def _read(img: _Image) -> tuple[torch.Tensor, str]:
    """Decoded image (grey kept) and the SHA-256 of its bytes (one read); ImageDecodeError names the file."""
    data = read_image_bytes(img.path)
    return decode_image_bytes(data, str(img.path), keep_gray=True), hashlib.sha256(data).hexdigest()


def _features(model: BundleModel, tensors: list[torch.Tensor], boxes, keys: list[str], cache
              ) -> tuple[dict[str, np.ndarray], int, int]:
    """Block features of a batch: cached rows read, the others computed (and stored)."""
    fz = model.featurizer
    if cache is None:
        return fz.transform(tensors, boxes), 0, len(keys)
    entries = {b.name: cache.entry(b.entry_fields()) for b in fz.blocks}
    missing = {k for e in entries.values() for k in e.missing(keys)}
    todo = [i for i, k in enumerate(keys) if k in missing]
    computed = fz.transform([tensors[i] for i in todo], None if boxes is None else [boxes[i] for i in todo]) \
        if todo else {}
    out = {}
    for b in fz.blocks:
        e = entries[b.name]
        if todo:
            new_keys = [keys[i] for i in todo]
            need = set(e.missing(new_keys))
            rows = [n for n, k in enumerate(new_keys) if k in need]
            if rows:
                uniq = {new_keys[n]: n for n in rows}  # one row per distinct image
                e.write(list(uniq), computed[b.name][list(uniq.values())])
        out[b.name] = e.read(keys)
    return out, len(keys) - len(todo), len(todo)


def predict_files(model: BundleModel, paths: Sequence[str | Path] = (), *, manifest: str | Path | None = None,
                  cache: str | Path | None = None, batch_size: int = 32, progress: bool = True) -> Prediction:
    """Predict every image of ``paths`` (or of ``manifest``); see the module docstring.

    Returns
    -------
    Prediction
        ``table``: ``id, path[, label], p_<class>..., predicted[, recommendation][, box_x0..box_y1]``
        (the last on predicted boxes), in input order.
    """
    from workbench.features.cache import FeatureCache

    images, bad = _images_of(paths, manifest)
    predicts = bool(getattr(model, "predicts_boxes", False))
    box_mode = model.input_mode == "box" and not predicts
    if predicts and any(im.box is not None for im in images):
        logger.warning(f"{model.name}: the manifest's boxes are not used; the model crops each image to the box "
                       f"its Y-Net predicts (it was selected on those boxes)")
        images = [_Image(im.id, im.path, im.label) for im in images]
    if box_mode:
        no_box = [im for im in images if im.box is None]
        bad += [(str(im.path), "no lesion box (this model takes the box: give a manifest with box columns)")
                for im in no_box]
        images = [im for im in images if im.box is not None]
    fc = None
    if cache is not None and model.featurizer is not None:
        fc = FeatureCache(cache)
        fc.check()
    rows: list[dict[str, Any]] = []
    n_cached = n_computed = 0
    bar = tqdm(total=len(images), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    with bar:
        for start in range(0, len(images), batch_size):
            chunk, tensors, shas = [], [], []
            for im in images[start:start + batch_size]:
                try:
                    t, sha = _read(im)
                except ImageDecodeError as e:
                    bad.append((str(im.path), e.reason))
                    continue
                chunk.append(im)
                tensors.append(t)
                shas.append(sha)
            boxes = [im.box for im in chunk] if box_mode else None
            if chunk and predicts:
                with model.lock:  # the Y-Net's boxes, the whole frame where its mask is empty
                    boxes = model.featurizer.predicted_boxes(tensors)
                for im, b in zip(chunk, boxes):
                    im.box = tuple(int(v) for v in b)
            # Row keys as the extraction's: the image's bytes, plus the box read in box mode.
            keys = [image_row_key(sha, im.box, model.input_mode) for sha, im in zip(shas, chunk)]
            if chunk:
                with model.lock:
                    if model.featurizer is None:
                        proba = model.network_proba(tensors)
                    else:
                        feats, c, k = _features(model, tensors, boxes, keys, fc)
                        n_cached, n_computed = n_cached + c, n_computed + k
                        proba = model.proba_from_features(feats)
                rows += _rows(model, chunk, proba)
            bar.update(len(images[start:start + batch_size]))
    columns = ["id", "path", *(["label"] if manifest is not None else []),
               *[f"p_{c}" for c in model.classes], "predicted", *(["recommendation"] if model.positive else []),
               *(BOX_COLUMNS if predicts else ())]
    return Prediction(pd.DataFrame(rows, columns=columns), bad, n_cached, n_computed)


def _rows(model: BundleModel, chunk: list[_Image], proba: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for im, p, pred in zip(chunk, proba, model.decide(proba)):
        row: dict[str, Any] = {"id": im.id, "path": str(im.path)}
        if im.label is not None:
            row["label"] = im.label
        row.update({f"p_{c}": float(v) for c, v in zip(model.classes, p)})
        row["predicted"] = str(pred)
        if model.positive:
            row["recommendation"] = model.recommendation(float(p[model.positive_index]))
        if getattr(model, "predicts_boxes", False):  # the Y-Net's box the model read
            row.update(dict(zip(BOX_COLUMNS, im.box)))
        out.append(row)
    return out

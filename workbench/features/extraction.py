"""Multi-backbone, multi-tap feature extraction into the feature cache.

One pass decodes each image once and feeds every requested backbone; all taps of a
backbone come from one forward pass; only rows missing from the cache are computed,
and each finished batch is committed to the cache at once, so a killed run resumes
where it stopped. Preprocessing (resize to each backbone's size) runs in the loader
workers, or (``preprocess_on="device"``) on the model's device from the raw pixels the
workers read: the same ops, so the same cache keys.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from workbench.backbones.finetuned import is_nested_id
from workbench.backbones.loading import TapModel, build_model
from workbench.backbones.registry import BackboneSpec, get_backbone
from workbench.backbones.weights import ResolvedWeights, resolve_weights
from workbench.data.images import ImageDecodeError, crop_to_box, decode_image
from workbench.data.manifest import Item, Manifest
from workbench.data.pixels import PixelStore
from workbench.features.cache import FeatureCache
from workbench.features.featureset import BlockInfo, FeatureSet
from workbench.features.options import ExtractOptions
from workbench.features.predicted_boxes import BoxNet, PredictedBoxes, predicted_boxes
from workbench.features.request import FeatureRequest, expand_requests
from workbench.data.preprocess import Geometry, Preprocess
from workbench.core.devices import resolve_device, resolve_precision
from workbench.core.provenance import environment
from workbench.errors import ConfigError
from workbench.evaluation.settings import is_cv_fold

__all__ = ["ExtractOptions", "FeatureRequest", "entry_fields", "extract", "FEATURE_CODE_VERSION"]

logger = logging.getLogger(__name__)

#: Part of every cache key. Bump it when a change here or in image decoding alters
#: the numbers a feature would have, so stale entries are never reused.
FEATURE_CODE_VERSION = "1"


@dataclass
class _Job:
    """One backbone's share of the pass: its taps, cache entries and missing rows."""

    request: FeatureRequest
    spec: BackboneSpec
    weights: ResolvedWeights
    pre: Preprocess
    entries: dict[str, Any]  # tap -> CacheEntry
    missing: dict[str, set[str]]  # tap -> row keys to compute
    model: TapModel | None = None
    geometry_index: int = 0

    @property
    def needed(self) -> set[str]:
        return set().union(*self.missing.values()) if self.missing else set()


class _DecodeDataset(Dataset):
    """Decodes each image once and returns one resized tensor per distinct geometry.

    With ``geometries=None`` (the device path, ``preprocess_on="device"``) it only reads
    the pixels and returns ``(i, (C, h, w) tensor)`` unresized: uint8 where the pixel
    store holds the image as uint8, else the float32 tensor :func:`decode_image` gives.
    The box crop is a slice either way, taken here so only the crop is copied out of the
    memory map and uploaded (the same pixels wherever it is taken).
    """

    def __init__(self, items: Sequence[Item], input_mode: str, box_margin: float,
                 geometries: Sequence[Geometry] | None, pixels: PixelStore | None = None):
        self.items = list(items)
        self.pixels = pixels
        self.input_mode = input_mode
        self.box_margin = box_margin
        self.geometries = None if geometries is None else list(geometries)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        raw = self.geometries is None
        try:
            # The rows are keyed by the digest taken at validation: decode only bytes that
            # still hash to it, so a file rewritten meanwhile cannot store its new pixels
            # under the old key.
            # The pixel store gives the same tensor, decoding only images it lacks.
            img = (self.pixels.get(item, decode=decode_image, raw=raw) if self.pixels is not None
                   else decode_image(item.path, keep_gray=True, expect_sha256=item.sha256))
        except (ImageDecodeError, OSError) as e:  # OSError: the pixel store could not store it
            # Returned, not raised: a DataLoader worker would re-raise it as a bare
            # RuntimeError holding a traceback, losing the file and the reason.
            return e
        if self.input_mode == "box":
            img = crop_to_box(img, item.box, self.box_margin)  # slices a memory map or a tensor alike
        if raw:
            if isinstance(img, np.ndarray):
                return i, torch.from_numpy(np.array(img, order="C"))  # a copy: never hand out the mapping
            return i, img.contiguous()
        # Resizing one grey channel, then replicating, gives the same tensor for a third of the work.
        return i, [g(img).expand(3, -1, -1) for g in self.geometries]


def _collate(batch: list):
    """Default collation, or the first decode error of the batch (raised by the pass)."""
    for b in batch:
        if isinstance(b, (ImageDecodeError, OSError)):
            return b
    return default_collate(batch)


# ---- the device path (preprocess_on="device") ----------------------------------------

#: ``uint8 -> float32`` exactly as decode_image computes it (``float32(v) / float32(255)``).
#: A table, not a division on the device: a CUDA kernel may multiply by the reciprocal,
#: which is not the same float for every value.
_U8_TO_UNIT = torch.from_numpy(np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255.0))


@dataclass
class _RawBatch:
    """A batch of unresized images of different sizes, packed into one flat buffer per
    dtype so the batch is pinned and uploaded in (at most two) copies."""

    idx: torch.Tensor
    flat: dict[torch.dtype, torch.Tensor]
    parts: list[tuple[torch.dtype, int, tuple[int, ...]]]  # (dtype, offset, shape) per image

    @classmethod
    def of(cls, idx: list[int], images: list[torch.Tensor]) -> "_RawBatch":
        flat: dict[torch.dtype, list[torch.Tensor]] = {}
        parts, offsets = [], {}
        for t in images:
            off = offsets.get(t.dtype, 0)
            parts.append((t.dtype, off, tuple(t.shape)))
            offsets[t.dtype] = off + t.numel()
            flat.setdefault(t.dtype, []).append(t.reshape(-1))
        return cls(torch.tensor(idx), {d: torch.cat(ts) for d, ts in flat.items()}, parts)

    def pin_memory(self) -> "_RawBatch":
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        return _RawBatch(self.idx, {d: t.pin_memory() for d, t in self.flat.items()}, self.parts)

    def images(self, dev: torch.device) -> list[torch.Tensor]:
        """The images on ``dev``: one copy per dtype, then views into it."""
        flat = {d: t.to(dev, non_blocking=True) for d, t in self.flat.items()}
        return [flat[d][off:off + int(np.prod(shape))].view(shape) for d, off, shape in self.parts]


def _collate_raw(batch: list):
    """A :class:`_RawBatch`, or the first decode error of the batch (raised by the pass)."""
    for b in batch:
        if isinstance(b, (ImageDecodeError, OSError)):
            return b
    return _RawBatch.of([i for i, _ in batch], [t for _, t in batch])


def _device_preprocess(batch: _RawBatch, geometries: Sequence[Geometry], dev: torch.device) -> list[torch.Tensor]:
    """What :class:`_DecodeDataset` and the default collation make, made on ``dev``: one
    ``(B, 3, S, S)`` batch per geometry from one upload."""
    lut = _U8_TO_UNIT.to(dev)
    out: list[list[torch.Tensor]] = [[] for _ in geometries]
    for img in batch.images(dev):
        if img.dtype == torch.uint8:
            img = lut[img.long()]
        for k, g in enumerate(geometries):
            # The same functional ops on a device tensor; grey resized once, then replicated.
            out[k].append(g(img).expand(3, -1, -1))
    return [torch.stack(o) for o in out]


def _assemble_nested(fs: FeatureSet, requests: Sequence[FeatureRequest], plan: dict,
                     suffix: str = "") -> FeatureSet:
    """Blocks as requested; a nested block holds the test network's rows plus fold variants."""
    blocks, info, fold_blocks, fold_info = {}, {}, {}, {}
    for r in requests:
        for t in r.taps:
            name = r.block_name(t) + suffix
            if r not in plan:
                blocks[name], info[name] = fs[name], fs.info[name]
                continue
            members = plan[r]
            test_name = members["test"].block_name(t) + suffix
            blocks[name] = fs[test_name]
            info[name] = dataclasses.replace(fs.info[test_name], name=name, weights_id=r.weights)
            fold_blocks[name] = {f: fs[m.block_name(t) + suffix] for f, m in members.items() if is_cv_fold(f)}
            fold_info[name] = {f: fs.info[m.block_name(t) + suffix] for f, m in members.items()}
    return FeatureSet(fs.ids, fs.labels, blocks, info, fs.record, fold_blocks, fold_info)


def row_key(item: Item, input_mode: str) -> str:
    """A row's cache key: the image's content hash, plus its box when features come from the box."""
    if item.sha256 is None:
        raise ValueError(f"item {item.id} has no content hash; validate the manifest first")
    return image_row_key(item.sha256, item.box, input_mode)


def image_row_key(sha256: str, box, input_mode: str) -> str:
    """:func:`row_key` of an image known by its bytes' SHA-256 (and its box, in box mode)."""
    if input_mode == "box":
        return hashlib.sha256(f"{sha256}|box={tuple(box)}".encode()).hexdigest()
    return sha256


def _default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    # On the CPU the forward pass needs the cores; one decoder process hides decoding.
    return min(8, max(1, cpus - 1)) if device.type == "cuda" else (1 if cpus > 1 else 0)


def extract(
    manifest: Manifest | str | os.PathLike,
    features: Sequence[str | FeatureRequest],
    *,
    cache: FeatureCache | str | os.PathLike = "features_cache",
    options: ExtractOptions | None = None,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Extract (or read from the cache) features for every image of ``manifest``.

    Parameters
    ----------
    manifest
        A :class:`Manifest` or the path of a CSV manifest / class-folder tree.
    features
        Requests such as ``"alexnet:fc6,fc7"``, ``"resnet50@random:avgpool"``; a nested
        fine-tuned set (one network per outer fold) gives per-fold blocks.
    cache
        Cache folder or :class:`FeatureCache`.
    options
        Input, resizing, loader, device, precision and storage settings (default
        :class:`ExtractOptions`); precision and dtype are part of the cache key. With
        ``boxes="predicted:..."`` the box crops come from a Y-Net's predicted masks
        (:mod:`workbench.features.predicted_boxes`); manual boxes are then not needed.
    classes
        Allowed labels; others are bad rows.
    progress
        Show progress bars (status lines go to the ``workbench`` logger).

    Returns
    -------
    FeatureSet
        Blocks named as requested (``backbone[@weights]:tap``; on predicted boxes with
        ``#pbox`` added), rows in manifest order.
    """
    t0 = time.perf_counter()
    options = options if options is not None else ExtractOptions()
    requests = _parse_requests(features)
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    cache.check()
    dev = resolve_device(options.device)
    prec = resolve_precision(options.precision, dev)
    requests, specs = _check_requests(requests)
    if any(is_nested_id(r.weights) for r in requests):
        # A nested fine-tuned set stands for one network per outer fold: extract every
        # member (each cached under its own weights), then give the sweep per-fold blocks.
        flat, members = expand_requests(requests)
        fs = extract(manifest, flat, cache=cache, options=options, classes=classes, progress=progress)
        return _assemble_nested(fs, requests, members, options.block_suffix)
    plan = _plan(manifest, requests, specs, cache, options, classes, dev, prec, progress)
    forwarded: dict[str, int] = {j.request.label: 0 for j in plan.jobs}
    todo = [j for j in plan.jobs if j.needed]
    pass_seconds = 0.0
    if todo:
        # Beside the feature cache, so one folder (and one `cache verify`) holds both.
        pixels = PixelStore(cache.root / "pixels") if options.pixel_store else None
        pass_seconds = _run_pass(todo, plan, options, dev, prec, progress, forwarded, pixels)
    return _result(plan, cache, options, dev, prec, forwarded, pass_seconds, time.perf_counter() - t0)


# ---- planning ----------------------------------------------------------------------


def _parse_requests(features: Sequence[str | FeatureRequest]) -> list[FeatureRequest]:
    requests = [f if isinstance(f, FeatureRequest) else FeatureRequest.parse(f) for f in features]
    if not requests:
        raise ConfigError("no features requested (e.g. --features tf_efficientnet_lite0:avgpool)")
    return requests


def _check_requests(requests: list[FeatureRequest]) -> tuple[list[FeatureRequest], list[BackboneSpec]]:
    """Requests with every tap named (none means all) and their backbones; an unknown
    backbone or tap, or a block requested twice, is found before any work."""
    specs = [get_backbone(r.backbone) for r in requests]
    for r, s in zip(requests, specs):
        for t in r.taps or ():
            s.tap(t)
    requests = [FeatureRequest(r.backbone, r.weights, r.taps or tuple(s.taps)) for r, s in zip(requests, specs)]
    names = [r.block_name(t) for r in requests for t in r.taps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"feature requested twice: {', '.join(dupes)}")
    return requests, specs


@dataclass(frozen=True)
class _Plan:
    """What a pass must do: the validated manifest, its rows' keys and one job per backbone."""

    manifest: Manifest
    items: list[Item]  # with their predicted boxes in place of the manual ones (boxes="predicted:...")
    keys: list[str]
    jobs: list[_Job]
    boxes: PredictedBoxes | None = None


def _validated(manifest: Manifest | str | os.PathLike, cache: FeatureCache, options: ExtractOptions,
               classes: Sequence[str] | None, progress: bool) -> Manifest:
    """The manifest with every row checked (content hashes taken); what decoded cleanly
    is remembered by the cache even when other rows were bad: nothing done is lost."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest, classes=classes)
    known = cache.known_images()
    n_known = len(known)  # validate() only appends to `known`, so what follows is new
    try:
        # Predicted boxes need no manual ones: that is what they are for.
        return manifest.validate(require_box=(options.input == "box" and options.box_source is None),
                                 skip_bad=options.skip_bad, progress=progress, known=known)
    finally:
        cache.remember_images(dict(list(known.items())[n_known:]))


def entry_fields(s: BackboneSpec, w: ResolvedWeights, tap: str, pre: Preprocess, prec: str, dtype: str,
                 boxes: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a cache entry's features depend on (their hash is its key).

    ``boxes``: the box source of features on predicted boxes
    (:meth:`~workbench.features.predicted_boxes.BoxNet.fields`: the Y-Net's id, digest ...);
    absent otherwise, so entries of whole images and manual boxes keep their keys.
    """
    fields = {
        "backbone": s.name,
        "family": s.family,
        # A file's name does not matter, its bytes (the digest) do.
        "weights_id": "file" if w.path is not None and w.id == str(w.path) else w.id,
        "weights_digest": w.digest,
        "weights_random": w.is_random,
        "tap": tap,
        "dim": s.tap(tap).dim,
        "preprocess": pre.key_fields(),
        "precision": prec,
        "dtype": dtype,
        "code_version": FEATURE_CODE_VERSION,
    }
    if boxes is not None:
        fields["boxes"] = dict(boxes)
    return fields


def _job(r: FeatureRequest, s: BackboneSpec, w: ResolvedWeights, cache: FeatureCache, keys: list[str],
         options: ExtractOptions, prec: str, boxes: PredictedBoxes | None = None) -> _Job:
    """One backbone's cache entries (one per tap) and the rows each still lacks."""
    pre = Preprocess.from_data_config(s.data_config(w.id), resize=options.resize, input=options.input,
                                      box_margin=options.box_margin, size=options.image_size)
    entries, missing = {}, {}
    for t in r.taps:
        fields = entry_fields(s, w, t, pre, prec, options.dtype, None if boxes is None else boxes.fields)
        entries[t] = cache.entry(fields)
        missing[t] = set(entries[t].missing(keys))
    return _Job(r, s, w, pre, entries, missing)


def _plan(manifest: Manifest | str | os.PathLike, requests: list[FeatureRequest], specs: list[BackboneSpec],
          cache: FeatureCache, options: ExtractOptions, classes: Sequence[str] | None, dev: torch.device,
          prec: str, progress: bool) -> _Plan:
    """Resolve weights, validate the manifest and find which rows each (backbone, tap) lacks."""
    resolved = [resolve_weights(s, r.weights) for r, s in zip(requests, specs)]
    if options.box_source is not None:
        box_net = BoxNet.load(options.box_source)  # a missing or non-Y-Net id fails before validation
    manifest = _validated(manifest, cache, options, classes, progress)
    items = list(manifest)
    boxes = None
    if options.box_source is not None:
        workers = _default_workers(dev) if options.num_workers is None else options.num_workers
        boxes = predicted_boxes(items, box_net, cache_root=cache.root, device=dev, precision=prec,
                                batch_size=options.batch_size, num_workers=workers, progress=progress)
        # The row key of a box crop holds its box: rows on predicted boxes are their own rows.
        items = boxes.boxed(items)
    keys = [row_key(it, options.input) for it in items]
    jobs = [_job(r, s, w, cache, keys, options, prec, boxes) for r, s, w in zip(requests, specs, resolved)]
    n_uniq = len(set(keys))
    for j in jobs:
        for t in j.entries:
            n_miss = len(j.missing[t])
            logger.info(f"{j.request.block_name(t) + options.block_suffix}: {n_uniq - n_miss} cached, "
                        f"{n_miss} to compute")
    return _Plan(manifest, items, keys, jobs, boxes)


# ---- recording ---------------------------------------------------------------------


def _result(plan: _Plan, cache: FeatureCache, options: ExtractOptions, dev: torch.device, prec: str,
            forwarded: dict[str, int], pass_seconds: float, elapsed: float) -> FeatureSet:
    """Every block read back from the cache, aligned to the manifest, and the run record."""
    blocks, info = {}, {}
    sfx = options.block_suffix
    for j in plan.jobs:
        for t, e in j.entries.items():
            name = j.request.block_name(t) + sfx
            blocks[name] = e.read(plan.keys)
            info[name] = BlockInfo(name=name, backbone=j.spec.name, weights_id=j.weights.id,
                                   weights_digest=j.weights.digest, weights_random=j.weights.is_random, tap=t,
                                   dim=e.dim, entry_key=e.key, preprocess=j.pre.key_fields(),
                                   boxes=None if plan.boxes is None else plan.boxes.info())
    manifest, jobs = plan.manifest, plan.jobs
    record = {
        "kind": "extract",
        "manifest": str(manifest.source),
        "manifest_digest": manifest.digest(),
        "n_images": len(plan.items),
        "skipped": [asdict(b) for b in manifest.skipped],
        "features": [r.block_name(t) + sfx for r in (j.request for j in jobs) for t in r.taps],
        "settings": {
            "input": options.input, "box_margin": options.box_margin, "resize": options.resize,
            "image_size": options.image_size, "batch_size": options.batch_size,
            "num_workers": options.num_workers, "device": str(dev), "precision": prec, "dtype": options.dtype,
            "cache": str(cache.root.resolve()), "code_version": FEATURE_CODE_VERSION,
            # Not in the cache key: where the same preprocessing ran (ExtractOptions.preprocess_on).
            "preprocess_on": options.preprocess_site(dev.type),
        },
        "computed_rows": {j.request.block_name(t) + sfx: len(j.missing[t]) for j in jobs for t in j.entries},
        "forward_images": forwarded,
        "random_weights": sorted({j.spec.name for j in jobs if j.weights.is_random}),
        "seconds": round(elapsed, 3),
        "pass_seconds": round(pass_seconds, 3),
        "environment": environment(),
    }
    if plan.boxes is not None:  # only then, so other records keep their fields
        record["settings"]["boxes"] = options.boxes
        record["predicted_boxes"] = plan.boxes.record(plan.items)
    return FeatureSet(manifest.ids, manifest.labels, blocks, info, record)


# ---- running -----------------------------------------------------------------------


def _pass_rows(jobs: list[_Job], keys: list[str]) -> list[int]:
    """Rows to decode: images some backbone still needs, each distinct image once."""
    needed = set().union(*(j.needed for j in jobs))
    order, seen = [], set()
    for i, k in enumerate(keys):
        if k in needed and k not in seen:
            seen.add(k)
            order.append(i)
    return order


def _prepare_models(jobs: list[_Job], dev: torch.device) -> list[Geometry]:
    """Build each job's tap model (only the taps it still lacks); the distinct input
    geometries, each job pointing at its own, so an image is resized once per geometry."""
    geometries: list[Geometry] = []
    for j in jobs:
        if j.pre.geometry not in geometries:
            geometries.append(j.pre.geometry)
        j.geometry_index = geometries.index(j.pre.geometry)
        taps = [t for t in j.request.taps if j.missing[t]]
        model = build_model(j.spec, j.weights)
        j.model = TapModel(j.spec, model, taps).eval().to(dev)
        if dev.type == "cuda":
            j.model = j.model.to(memory_format=torch.channels_last)
    return geometries


def _loader(items: list[Item], geometries: list[Geometry], options: ExtractOptions, dev: torch.device,
            pixels: PixelStore | None = None, *, raw: bool = False) -> DataLoader:
    """The pass's loader (:class:`_DecodeDataset`): workers decode and resize, or with
    ``raw`` (the device path) only read pixels (a list collation: sizes differ)."""
    workers = _default_workers(dev) if options.num_workers is None else options.num_workers
    return DataLoader(
        _DecodeDataset(items, options.input, options.box_margin, None if raw else geometries, pixels),
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        collate_fn=_collate_raw if raw else _collate,
    )


def _forward(j: _Job, x: torch.Tensor, batch_keys: list[str], dev: torch.device, autocast) -> None:
    """One job's forward pass on a batch; the rows its taps lack are committed to the cache."""
    x = x.to(dev, non_blocking=True)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    x = j.pre.normalize(x)
    with autocast:
        out = j.model(x)
    for t, feats in out.items():
        rows = [n for n, k in enumerate(batch_keys) if k in j.missing[t]]
        if rows:
            arr = feats[rows].float().cpu().numpy()
            j.entries[t].write([batch_keys[n] for n in rows], arr)


def _run_pass(jobs: list[_Job], plan: _Plan, options: ExtractOptions, dev: torch.device, prec: str,
              progress: bool, forwarded: dict[str, int], pixels: PixelStore | None = None) -> float:
    """Run the decode-and-forward pass; return the loop's wall time (model building excluded).

    ``pixels``: the store images are read from (decoded and stored when it lacks them).
    """
    order = _pass_rows(jobs, plan.keys)
    pass_items = [plan.items[i] for i in order]
    pass_keys = [plan.keys[i] for i in order]
    geometries = _prepare_models(jobs, dev)
    on_device = options.preprocess_site(dev.type) == "device"
    loader = _loader(pass_items, geometries, options, dev, pixels, raw=on_device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    needed_mask = {id(j): np.array([k in j.needed for k in pass_keys]) for j in jobs}
    bar = tqdm(total=len(pass_items), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    with torch.inference_mode(), bar:
        for batch in loader:
            if isinstance(batch, (ImageDecodeError, OSError)):
                raise batch
            if on_device:
                idx, tensors = batch.idx, _device_preprocess(batch, geometries, dev)
            else:
                idx, tensors = batch
            idx = idx.numpy()
            for j in jobs:
                sel = np.flatnonzero(needed_mask[id(j)][idx])
                if sel.size == 0:
                    continue
                _forward(j, tensors[j.geometry_index][torch.from_numpy(sel)], [pass_keys[idx[s]] for s in sel],
                         dev, autocast)
                forwarded[j.request.label] += int(sel.size)
            bar.update(len(idx))
    return time.perf_counter() - t0

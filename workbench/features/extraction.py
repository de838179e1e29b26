"""Multi-backbone, multi-tap feature extraction into the feature cache.

One pass decodes each image once and feeds every requested backbone; all taps of a
backbone come from one forward pass; only rows missing from the cache are computed,
and each finished batch is committed to the cache at once, so a killed run resumes
where it stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from workbench.backbones.loading import TapModel, build_model
from workbench.backbones.registry import BackboneSpec, get_backbone
from workbench.backbones.weights import ResolvedWeights, resolve_weights
from workbench.data.images import ImageDecodeError, crop_to_box, decode_image
from workbench.data.manifest import Item, Manifest
from workbench.features.cache import FeatureCache
from workbench.features.featureset import BlockInfo, FeatureSet
from workbench.features.request import FeatureRequest, expand_requests
from workbench.data.preprocess import Geometry, Preprocess
from workbench.core.provenance import environment

__all__ = ["FeatureRequest", "extract", "FEATURE_CODE_VERSION"]

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
    """Decodes each image once and returns one resized tensor per distinct geometry."""

    def __init__(self, items: Sequence[Item], input_mode: str, box_margin: float, geometries: Sequence[Geometry]):
        self.items = list(items)
        self.input_mode = input_mode
        self.box_margin = box_margin
        self.geometries = list(geometries)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            # The rows are keyed by the digest taken at validation: decode only bytes that
            # still hash to it, so a file rewritten meanwhile cannot store its new pixels
            # under the old key.
            img = decode_image(item.path, keep_gray=True, expect_sha256=item.sha256)
        except ImageDecodeError as e:
            # Returned, not raised: a DataLoader worker would re-raise it as a bare
            # RuntimeError holding a traceback, losing the file and the reason.
            return e
        if self.input_mode == "box":
            img = crop_to_box(img, item.box, self.box_margin)
        # Resizing one grey channel, then replicating, gives the same tensor for a third of the work.
        return i, [g(img).expand(3, -1, -1) for g in self.geometries]


def _collate(batch: list):
    """Default collation, or the first decode error of the batch (raised by the pass)."""
    for b in batch:
        if isinstance(b, ImageDecodeError):
            return b
    return default_collate(batch)


def _assemble_nested(fs: FeatureSet, requests: Sequence[FeatureRequest], plan: dict) -> FeatureSet:
    """Blocks as requested; a nested block holds the test network's rows plus fold variants."""
    import dataclasses

    blocks, info, fold_blocks, fold_info = {}, {}, {}, {}
    for r in requests:
        for t in r.taps:
            name = r.block_name(t)
            if r not in plan:
                blocks[name], info[name] = fs[name], fs.info[name]
                continue
            members = plan[r]
            test_name = members["test"].block_name(t)
            blocks[name] = fs[test_name]
            info[name] = dataclasses.replace(fs.info[test_name], name=name, weights_id=r.weights)
            fold_blocks[name] = {f: fs[m.block_name(t)] for f, m in members.items() if f != "test"}
            fold_info[name] = {f: fs.info[m.block_name(t)] for f, m in members.items()}
    return FeatureSet(fs.ids, fs.labels, blocks, info, fs.record, fold_blocks, fold_info)


def row_key(item: Item, input_mode: str) -> str:
    """A row's cache key: the image's content hash, plus its box when features come from the box."""
    if item.sha256 is None:
        raise ValueError(f"item {item.id} has no content hash; validate the manifest first")
    if input_mode == "box":
        return hashlib.sha256(f"{item.sha256}|box={tuple(item.box)}".encode()).hexdigest()
    return item.sha256


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


def _default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    # On the CPU the forward pass needs the cores; one decoder process hides decoding.
    return min(8, max(1, cpus - 1)) if device.type == "cuda" else (1 if cpus > 1 else 0)


def extract(
    manifest: Manifest | str | os.PathLike,
    features: Sequence[str | FeatureRequest],
    *,
    cache: FeatureCache | str | os.PathLike = "features_cache",
    input: str = "whole",
    box_margin: float = 0.1,
    resize: str = "squash",
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    dtype: str = "float32",
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    log=None,
) -> FeatureSet:
    """Extract (or read from the cache) features for every image of ``manifest``.

    Parameters
    ----------
    manifest
        A :class:`Manifest` or the path of a CSV manifest / class-folder tree.
    features
        Requests such as ``"alexnet:fc6,fc7"``, ``"resnet50@random:avgpool"``.
    cache
        Cache folder or :class:`FeatureCache`.
    input, box_margin
        ``"whole"`` image or ``"box"`` crop widened by ``box_margin`` on each side.
    resize
        ``"squash"`` (default), ``"crop"`` or ``"letterbox"``; see :class:`Geometry`.
    image_size
        Override every backbone's input size (e.g. 160 for quick CPU runs).
    batch_size, num_workers
        Loader settings; ``num_workers=None`` picks one for the device.
    device, precision
        ``None``/``"auto"`` uses the GPU when there is one, with bf16 autocast and
        channels_last; fp32 on the CPU. Precision is part of the cache key.
    dtype
        Storage dtype in the cache: ``"float32"`` or ``"float16"``.
    classes
        Allowed labels; others are bad rows.
    skip_bad
        Skip bad rows (listed in the record) instead of failing before any work.
    progress
        Show progress bars.
    log
        Callable for status lines (``print`` by default when progress is on).

    Returns
    -------
    FeatureSet
        Blocks named as requested (``backbone[@weights]:tap``), rows in manifest order.
    """
    t0 = time.perf_counter()
    say = log or ((lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None))
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    requests = [f if isinstance(f, FeatureRequest) else FeatureRequest.parse(f) for f in features]
    if not requests:
        raise ValueError("no features requested (e.g. --features tf_efficientnet_lite0:avgpool)")
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    cache.check()
    dev = _resolve_device(device)
    prec = _resolve_precision(precision, dev)

    # 1. Everything that can be wrong with the request is found before any work.
    specs = [get_backbone(r.backbone) for r in requests]
    for r, s in zip(requests, specs):
        for t in r.taps or ():
            s.tap(t)
    # No taps means all of them; expand before looking for duplicates.
    requests = [FeatureRequest(r.backbone, r.weights, r.taps or tuple(s.taps)) for r, s in zip(requests, specs)]
    names = [r.block_name(t) for r in requests for t in r.taps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"feature requested twice: {', '.join(dupes)}")
    from workbench.backbones.finetuned import is_nested_id

    if any(is_nested_id(r.weights) for r in requests):
        # A nested fine-tuned set stands for one network per outer fold: extract every
        # member (each cached under its own weights), then give the sweep per-fold blocks.

        flat, plan = expand_requests(requests)
        fs = extract(manifest, flat, cache=cache, input=input, box_margin=box_margin, resize=resize,
                     image_size=image_size, batch_size=batch_size, num_workers=num_workers, device=device,
                     precision=precision, dtype=dtype, classes=classes, skip_bad=skip_bad, progress=progress,
                     log=log)
        return _assemble_nested(fs, requests, plan)
    resolved = [resolve_weights(s, r.weights) for r, s in zip(requests, specs)]
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest, classes=classes)
    known = cache.known_images()
    n_known = len(known)  # validate() only appends to `known`, so what follows is new
    try:
        manifest = manifest.validate(require_box=(input == "box"), skip_bad=skip_bad, progress=progress, known=known)
    finally:
        # Remember what decoded cleanly even when other rows were bad: nothing done is lost.
        cache.remember_images(dict(list(known.items())[n_known:]))
    items = list(manifest)
    keys = [row_key(it, input) for it in items]

    # 2. Which rows each (backbone, tap) still lacks.
    jobs: list[_Job] = []
    for r, s, w in zip(requests, specs, resolved):
        pre = Preprocess.from_data_config(
            s.data_config(w.id), resize=resize, input=input, box_margin=box_margin, size=image_size
        )
        taps = list(r.taps)
        entries, missing = {}, {}
        for t in taps:
            fields = {
                "backbone": s.name,
                "family": s.family,
                # A file's name does not matter, its bytes (the digest) do.
                "weights_id": "file" if w.path is not None and w.id == str(w.path) else w.id,
                "weights_digest": w.digest,
                "weights_random": w.is_random,
                "tap": t,
                "dim": s.tap(t).dim,
                "preprocess": pre.key_fields(),
                "precision": prec,
                "dtype": dtype,
                "code_version": FEATURE_CODE_VERSION,
            }
            e = cache.entry(fields)
            entries[t] = e
            missing[t] = set(e.missing(keys))
        jobs.append(_Job(r, s, w, pre, entries, missing))

    todo = [j for j in jobs if j.needed]
    n_uniq = len(set(keys))
    for j in jobs:
        for t in j.entries:
            n_miss = len(j.missing[t])
            say(f"{j.request.block_name(t)}: {n_uniq - n_miss} cached, {n_miss} to compute")

    forwarded: dict[str, int] = {j.request.label: 0 for j in jobs}
    pass_seconds = 0.0
    if todo:
        pass_seconds = _run_pass(todo, items, keys, input, box_margin, batch_size, num_workers, dev, prec, progress, forwarded)

    # 3. Read every block back from the cache, aligned to the manifest.
    blocks, info = {}, {}
    for j in jobs:
        for t, e in j.entries.items():
            name = j.request.block_name(t)
            blocks[name] = e.read(keys)
            info[name] = BlockInfo(
                name=name,
                backbone=j.spec.name,
                weights_id=j.weights.id,
                weights_digest=j.weights.digest,
                weights_random=j.weights.is_random,
                tap=t,
                dim=e.dim,
                entry_key=e.key,
                preprocess=j.pre.key_fields(),
            )
    elapsed = time.perf_counter() - t0
    record = {
        "kind": "extract",
        "manifest": str(manifest.source),
        "manifest_digest": manifest.digest(),
        "n_images": len(items),
        "skipped": [asdict(b) for b in manifest.skipped],
        "features": [r.block_name(t) for r in (j.request for j in jobs) for t in r.taps],
        "settings": {
            "input": input, "box_margin": box_margin, "resize": resize, "image_size": image_size,
            "batch_size": batch_size, "num_workers": num_workers, "device": str(dev),
            "precision": prec, "dtype": dtype, "cache": str(cache.root.resolve()),
            "code_version": FEATURE_CODE_VERSION,
        },
        "computed_rows": {j.request.block_name(t): len(j.missing[t]) for j in jobs for t in j.entries},
        "forward_images": forwarded,
        "random_weights": sorted({j.spec.name for j in jobs if j.weights.is_random}),
        "seconds": round(elapsed, 3),
        "pass_seconds": round(pass_seconds, 3),
        "environment": environment(),
    }
    return FeatureSet(manifest.ids, manifest.labels, blocks, info, record)


def _run_pass(
    jobs: list[_Job],
    items: list[Item],
    keys: list[str],
    input_mode: str,
    box_margin: float,
    batch_size: int,
    num_workers: int | None,
    dev: torch.device,
    prec: str,
    progress: bool,
    forwarded: dict[str, int],
) -> float:
    """Run the decode-and-forward pass; return the loop's wall time (model building excluded)."""
    # Decode only images some backbone still needs, each distinct image once.
    needed = set().union(*(j.needed for j in jobs))
    order, seen = [], set()
    for i, k in enumerate(keys):
        if k in needed and k not in seen:
            seen.add(k)
            order.append(i)
    pass_items = [items[i] for i in order]
    pass_keys = [keys[i] for i in order]

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

    workers = _default_workers(dev) if num_workers is None else num_workers
    loader = DataLoader(
        _DecodeDataset(pass_items, input_mode, box_margin, geometries),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        collate_fn=_collate,
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )
    needed_mask = {id(j): np.array([k in j.needed for k in pass_keys]) for j in jobs}
    bar = tqdm(total=len(pass_items), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    with torch.inference_mode(), bar:
        for batch in loader:
            if isinstance(batch, ImageDecodeError):
                raise batch
            idx, tensors = batch
            idx = idx.numpy()
            for j in jobs:
                sel = np.flatnonzero(needed_mask[id(j)][idx])
                if sel.size == 0:
                    continue
                x = tensors[j.geometry_index][torch.from_numpy(sel)].to(dev, non_blocking=True)
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                x = j.pre.normalize(x)
                with autocast:
                    out = j.model(x)
                forwarded[j.request.label] += int(sel.size)
                batch_keys = [pass_keys[idx[s]] for s in sel]
                for t, feats in out.items():
                    rows = [n for n, k in enumerate(batch_keys) if k in j.missing[t]]
                    if rows:
                        arr = feats[rows].float().cpu().numpy()
                        j.entries[t].write([batch_keys[n] for n in rows], arr)
            bar.update(len(idx))
    return time.perf_counter() - t0

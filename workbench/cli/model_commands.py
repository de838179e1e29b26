"""``workbench export``, ``predict`` and ``serve``: from a run's candidate to a page."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.errors import ConfigError

__all__ = ["cmd_export", "cmd_predict", "cmd_serve"]


def cmd_export(args: argparse.Namespace) -> int:
    """Write the bundle; print where, what and its card's key figures."""
    from workbench.bundle.export import Recommendation, export_model
    from workbench.bundle.files import read_json

    rec = None
    if args.above is not None or args.below is not None:
        base = Recommendation()
        rec = Recommendation(above=args.above or base.above, below=args.below or base.below)
    out = export_model(args.run, args.out, candidate=args.candidate, manifest=args.manifest, cache=args.cache,
                       finetuned=args.finetuned, recommendation=rec, overwrite=args.overwrite,
                       progress=not args.quiet)
    model = read_json(out / "model.json")
    test = model["card"]["figures"]["test"]
    auc = test.get("auc")
    ci = test.get("auc_ci")
    print(f"exported {model['name']} ({model['kind']}) -> {out}")
    if auc is not None:
        print(f"  test AUC {auc:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
              + (f", threshold {model['threshold']:.4f}" if model.get("threshold") is not None else ""))
    print(f"  model card: {out / 'MODEL_CARD.md'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict, write (or print) the table, list the bad images; exit 2 when none could be predicted."""
    from workbench.bundle.model import load_model
    from workbench.bundle.predict import predict_files

    if bool(args.images) == bool(args.manifest):
        raise ConfigError("give image files or --manifest (one of the two)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_model(args.model, device=args.device)
    result = predict_files(model, args.images, manifest=args.manifest, cache=args.cache,
                           batch_size=args.batch_size, progress=not args.quiet)
    if args.out:
        from workbench.core.io import atomic_write

        atomic_write(Path(args.out), result.table.to_csv(index=False).encode())
        print(f"{len(result.table)} prediction(s) -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(result.table.to_csv(index=False))
    if args.cache and model.featurizer is not None:
        print(f"feature rows: {result.cached_rows} from the cache, {result.computed_rows} computed",
              file=sys.stderr)
    if result.bad:
        print(f"workbench predict: warning: {len(result.bad)} image(s) not predicted:", file=sys.stderr)
        for where, reason in result.bad:
            print(f"  {where}: {reason}", file=sys.stderr)
    return 0 if len(result.table) else 2


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from workbench.serve.run import serve

    serve(args.model, host=args.host, port=args.port, keep_uploads=args.keep_uploads,
          max_upload_mb=args.max_upload_mb)
    return 0

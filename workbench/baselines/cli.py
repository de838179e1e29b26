"""Command-line layer of the baselines: ``workbench finetune``, ``baselines`` and ``cam``."""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

__all__ = ["add_commands"]

_EPILOG_FINETUNE = """\
examples:
  workbench finetune --manifest ../shared/data/busi/labels.csv --classes benign,malignant \\
      --backbone tf_efficientnet_lite0 --set epochs=5 --set image_size=160 --cut-remain
  then use the printed spec as features:  --features tf_efficientnet_lite0@ft-3f2a9c0d1e2b:avgpool
The network is fine-tuned on the manifest's training split only (a stratified share of it
for early stopping); CV results on its features are marked optimistic in sweep records,
since it has seen every CV fold. Test results on them are clean.
settings (--set KEY=VALUE): epochs, batch_size, optimizer (sgd|adam|adamw), lr, momentum,
  weight_decay, schedule (cosine|step|none), step_size, gamma, class_weight (balanced|none), freeze
  (none|features|fraction), image_size, resize, augment, cut_remain, box_mode
  (tight|square|margin), patience, monitor (auc|loss), seed
"""

_EPILOG_BASELINES = """\
examples:
  workbench baselines --list
  workbench baselines --manifest ../shared/data/busi/labels.csv --classes benign,malignant \\
      --baselines lite0,resnet50 --out runs/busi --set epochs=5 --set image_size=160
Use the same --manifest/--classes/--cv/--inner-cv/--seed/--scoring as the sweep writing
to OUT: the records then rank together (`summary.csv` is rewritten with both).
"""


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _settings(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {p!r}")
        out[key.strip()] = _value(val.strip())
    return out


def _grid(pairs: list[str]) -> dict[str, list[Any]]:
    out = {}
    for p in pairs:
        key, sep, vals = p.partition("=")
        if not sep:
            raise ValueError(f"--grid expects KEY=V1,V2, got {p!r}")
        out[key.strip()] = [_value(v.strip()) for v in vals.split(",") if v.strip()]
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV manifest or class-folder tree")
    p.add_argument("--classes", default=None, help="comma-separated classes of the task, e.g. benign,malignant")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tuning setting (repeatable), e.g. epochs=5, image_size=160, lr=1e-4")
    p.add_argument("--finetuned", default=None,
                   help="fine-tuned weights store [$WORKBENCH_FINETUNED or ./finetuned]")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... [the GPU when there is one]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_commands(sub) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the sub-commands to ``sub``; return their handlers by name."""
    f = sub.add_parser("finetune", help="fine-tune a backbone on the training split; print its weights id",
                       description="Fine-tune a registry backbone end to end with a new head for the task's "
                                   "classes (the study's augmentation, early stopping on a validation share of "
                                   "the training split, a checkpoint every epoch: re-run the same command to "
                                   "resume). The weights are stored as BACKBONE@ft-<hash>, usable wherever "
                                   "weights are named (--features, workbench cam).",
                       epilog=_EPILOG_FINETUNE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(f)
    f.add_argument("--backbone", required=True, help="registry name, e.g. tf_efficientnet_lite0, resnet50")
    f.add_argument("--weights", default=None, help="base weights id or file [the backbone's default]")
    f.add_argument("--val-fraction", type=float, default=0.15,
                   help="stratified share of the training split for early stopping [0.15]")
    f.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="settings to choose by --tune-cv-fold CV on the training split, e.g. lr=1e-4,1e-3")
    f.add_argument("--tune-cv", type=int, default=6, help="folds of that search (the study used 6) [6]")
    f.add_argument("--cut-remain", action="store_true", help="shorthand for --set cut_remain=true")
    n = f.add_argument_group("nested (clean CV on fine-tuned features)")
    n.add_argument("--nested", action="store_true",
                   help="one network per outer CV fold of the sweep protocol below, plus one on the whole "
                        "training split; prints BACKBONE@ftn-<hash>, whose features the sweep takes per fold")
    n.add_argument("--cv", type=int, default=5, help="the sweep's outer folds [5]")
    n.add_argument("--inner-cv", type=int, default=3, help="the sweep's inner folds [3]")
    n.add_argument("--seed", type=int, default=0, help="the sweep's seed [0]")
    n.add_argument("--scoring", default="auc", help="the sweep's scoring [auc]")
    n.add_argument("--positive", default=None, help="the sweep's positive class")

    b = sub.add_parser("baselines", help="end-to-end CNN baselines on the sweep's folds, into its run folder",
                       description="Fine-tune each baseline on every outer CV fold of the training split and on "
                                   "the whole training split (for the test split), with the sweep's seeded "
                                   "folds, and append one record per fold to OUT/records.jsonl beside the "
                                   "classical heads'. Re-running skips what is recorded.",
                       epilog=_EPILOG_BASELINES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--list", action="store_true", help="list the ready baselines and exit")
    b.add_argument("--manifest", help="CSV manifest or class-folder tree")
    b.add_argument("--classes", default=None, help="comma-separated classes of the task")
    b.add_argument("--positive", default=None, help="positive class of binary metrics [malignant if present]")
    b.add_argument("--baselines", default="lite0", help="comma-separated ready baselines [lite0]")
    b.add_argument("--out", help="run folder (shared with the sweep)")
    b.add_argument("--cv", type=int, default=5, help="outer CV folds (as the sweep) [5]")
    b.add_argument("--inner-cv", type=int, default=3, help="as the sweep's; part of the protocol [3]")
    b.add_argument("--seed", type=int, default=0, help="as the sweep's [0]")
    b.add_argument("--scoring", default="auc", choices=("auc", "balanced_accuracy", "accuracy"),
                   help="as the sweep's; part of the protocol [auc]")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="setting applied to every baseline, e.g. epochs=5 image_size=160")
    b.add_argument("--tune", action="store_true", help="choose each baseline's grid by k-fold CV in every fold")
    b.add_argument("--tune-cv", type=int, default=6, help="folds of that search [6]")
    b.add_argument("--metric", default="auc", help="metric of the printed ranking [auc]")
    b.add_argument("--finetuned", default=None, help="fine-tuned weights store")
    b.add_argument("--device", default=None, help="cpu, cuda ... [the GPU when there is one]")
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("cam", help="Grad-CAM overlays and a paper grid for a fine-tuned network",
                       description="Grad-CAM maps of a fine-tuned network (BACKBONE@ft-<hash>) on the manifest's "
                                   "images: one overlay PNG per image (colour map readable in black and white), "
                                   "a grid figure (PNG and PDF) with the true label and predicted probability "
                                   "under each tile and the lesion box drawn, and cam.csv with the share of "
                                   "maps peaking inside the box.")
    c.add_argument("--manifest", required=True, help="CSV manifest or class-folder tree")
    c.add_argument("--network", required=True, help="BACKBONE@ft-<hash> (see `workbench finetune`)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--split", default="test", help="images of this split ('all' for every image) [test]")
    c.add_argument("--label", default=None, help="only images with this label")
    c.add_argument("--ids", default=None, help="comma-separated image ids (overrides --split/--label)")
    c.add_argument("--target", default="pred", help="pred | true | a class name: the class explained [pred]")
    c.add_argument("--layer", default=None, help="target layer, e.g. layer4 [last conv stage]")
    c.add_argument("--grid-max", type=int, default=16, help="tiles in the grid figure [16]")
    c.add_argument("--cols", type=int, default=4, help="grid columns [4]")
    c.add_argument("--finetuned", default=None, help="fine-tuned weights store")
    c.add_argument("--device", default=None, help="cpu or cuda [cpu]")
    return {"finetune": _cmd_finetune, "baselines": _cmd_baselines, "cam": _cmd_cam}


def _store(args) -> None:
    if getattr(args, "finetuned", None):
        os.environ["WORKBENCH_FINETUNED"] = args.finetuned


def _manifest(args):
    from workbench.data.manifest import Manifest

    m = Manifest.load(args.manifest)
    if args.classes:
        m = m.select_classes([c.strip() for c in args.classes.split(",") if c.strip()])
    return m


def _cmd_finetune(args) -> int:
    from workbench.baselines.estimator import CNNClassifier
    from workbench.training.finetune import FineTuneConfig

    _store(args)
    settings = _settings(args.set)
    if args.cut_remain:
        settings["cut_remain"] = True
    config = FineTuneConfig.from_dict(settings)
    m = _manifest(args).validate(progress=not args.quiet)
    from workbench.backbones.registry import get_backbone

    taps = ",".join(get_backbone(args.backbone).taps)
    if args.nested:
        from workbench.training.nested import fine_tune_nested

        if args.grid:
            raise ValueError("--grid is not supported with --nested; fix the settings with --set")
        ns = fine_tune_nested(args.backbone, m, config, cv=args.cv, inner_cv=args.inner_cv, seed=args.seed,
                              scoring=args.scoring, positive=args.positive, weights=args.weights,
                              val_fraction=args.val_fraction, device=args.device, progress=not args.quiet,
                              log=print)
        print(f"nested set: {ns.label} ({len(ns.members)} networks)")
        print(f"features: --features {ns.label}:{taps}  (sweep with --cv {args.cv} --inner-cv {args.inner_cv} "
              f"--seed {args.seed}: CV records are then clean)")
        return 0
    train_ids = [it.id for it in m if it.split != "test"]
    n_test = len(m) - len(train_ids)
    print(f"fine-tuning {args.backbone} on {len(train_ids)} training images ({n_test} test images left out)")
    est = CNNClassifier(args.backbone, m, weights=args.weights, config=config, grid=_grid(args.grid) or None,
                        tune_cv=args.tune_cv, val_fraction=args.val_fraction, device=args.device,
                        progress=not args.quiet)
    est.fit(train_ids)
    ft = est.finetuned_
    if est.best_params_:
        print(f"chosen by {args.tune_cv}-fold CV on the training split: {est.best_params_}")
    last = ft.history[ft.best_epoch - 1] if ft.history else {}
    shown = {k: round(v, 4) for k, v in last.items() if k.startswith("val_") and isinstance(v, float)}
    print(f"best epoch {ft.best_epoch} of {len(ft.history)} {shown}")
    print(f"weights: {ft.label}  (in {ft.folder})")
    print(f"features: --features {ft.label}:{taps}  (CV results on them are marked optimistic; "
          f"--nested makes them clean)")
    return 0


def _cmd_baselines(args) -> int:
    from workbench.baselines.configs import list_baselines
    from workbench.baselines.run import run_baselines

    if args.list:
        for s in list_baselines():
            c = s.config
            print(f"{s.name:<14} {s.backbone:<22} {c.optimizer} lr={c.lr:g} {c.schedule} epochs={c.epochs}"
                  f"{' freeze=' + str(c.freeze) if c.freeze != 'none' else ''}  grid={s.grid}  {s.doc}")
        return 0
    if not args.manifest or not args.out:
        raise ValueError("--manifest and --out are required (or --list)")
    _store(args)
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    run_baselines(args.manifest, names, args.out, cv=args.cv, inner_cv=args.inner_cv, seed=args.seed,
                  scoring=args.scoring, classes=args.classes.split(",") if args.classes else None,
                  positive=args.positive, overrides=_settings(args.set), tune=args.tune, tune_cv=args.tune_cv,
                  device=args.device, progress=not args.quiet, log=print)
    from pathlib import Path

    from workbench.evaluation.store import ResultStore
    from workbench.evaluation.summary import summarize

    frame = ResultStore(args.out).frame()
    summary = summarize(frame, args.metric)
    summary.to_csv(Path(args.out) / "summary.csv", index=False)
    m = args.metric
    print(f"\nall candidates of {args.out} by mean CV {m} (baselines and classical heads together):")
    for _, r in summary.head(20).iterrows():
        test = r[f"test_{m}"]
        print(f"  {r['candidate']:<40} {r[f'cv_{m}']:.3f} +- {r[f'cv_{m}_sd']:.3f}  test {test:.3f}")
    return 0


def _cmd_cam(args) -> int:
    from workbench.baselines.explain import explain

    _store(args)
    from workbench.data.manifest import Manifest

    m = Manifest.load(args.manifest)  # all classes: the network's own are selected below
    if args.ids:
        items = list(m.subset([i.strip() for i in args.ids.split(",") if i.strip()]))
    else:
        items = [it for it in m if args.split == "all" or it.split == args.split]
        if args.label:
            items = [it for it in items if it.label == args.label]
    backbone, _, wid = args.network.partition("@")
    from workbench.backbones.finetuned import find_finetuned

    classes = find_finetuned(backbone, wid)[1]["classes"] if wid else []
    items = [it for it in items if it.label in classes] if classes else items
    if not items:
        raise ValueError(f"no images selected (split={args.split!r}, label={args.label!r}, classes {classes})")
    items = list(m.subset([it.id for it in items]).validate(progress=False))
    rep = explain(items, args.network, args.out, target=args.target, layer=args.layer, grid_max=args.grid_max,
                  ncols=args.cols, device=args.device)
    share = rep.peak_share()
    print(f"{len(items)} maps: overlays in {rep.folder / 'overlays'}, table {rep.folder / 'cam.csv'}")
    print(f"grid: {', '.join(str(p) for p in rep.figure)}")
    if share == share:
        print(f"map peak inside the lesion box: {share:.0%} of correctly classified images with a box")
    return 0

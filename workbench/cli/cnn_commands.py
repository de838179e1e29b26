"""``workbench finetune``, ``baselines`` and ``cam``: the end-to-end CNNs' commands."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from workbench.backbones.finetuned import find_finetuned
from workbench.backbones.registry import get_backbone
from workbench.baselines.cam import explain_on
from workbench.baselines.configs import list_baselines
from workbench.baselines.estimator import CNNClassifier
from workbench.baselines.run import run_baselines
from workbench.cli.objects import execution_of, protocol_of
from workbench.cli.values import parse_external, parse_settings, parse_settings_grid, split_list
from workbench.data.manifest import Manifest
from workbench.data.pixels import PixelStore
from workbench.errors import ConfigError
from workbench.evaluation.store import ResultStore
from workbench.evaluation.summary import summarize
from workbench.report.gradcam import CamSet, write_cam_folder
from workbench.training.config import FineTuneConfig
from workbench.training.nested import fine_tune_nested

__all__ = ["cmd_finetune", "cmd_baselines", "cmd_cam"]


def _use_store(args: argparse.Namespace) -> None:
    # The fine-tuned weights store is found through the environment by every layer below.
    if getattr(args, "finetuned", None):
        os.environ["WORKBENCH_FINETUNED"] = args.finetuned


def _manifest(args: argparse.Namespace) -> Manifest:
    m = Manifest.load(args.manifest)
    classes = split_list(args.classes)
    return m.select_classes(classes) if classes else m


def _pixels(args: argparse.Namespace) -> PixelStore | None:
    """``--pixel-store DIR`` as a store (None without it)."""
    return PixelStore(args.pixel_store) if getattr(args, "pixel_store", None) else None


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune one network (or, with ``--nested``, one per outer fold); print its id."""
    _use_store(args)
    settings = parse_settings(args.set)
    if args.cut_remain:
        settings["cut_remain"] = True
    config = FineTuneConfig.from_dict(settings)
    if args.nested and args.grid:
        raise ConfigError("--grid is not supported with --nested; fix the settings with --set")
    grid = parse_settings_grid(args.grid)
    m = _manifest(args).validate(progress=not args.quiet)
    taps = ",".join(get_backbone(args.backbone).taps)
    if args.nested:
        return _finetune_nested(args, m, config, taps)
    return _finetune_one(args, m, config, grid, taps)


def _finetune_nested(args: argparse.Namespace, m: Manifest, config: FineTuneConfig, taps: str) -> int:
    protocol = protocol_of(args)
    ns = fine_tune_nested(args.backbone, m, config, protocol=protocol, weights=args.weights,
                          val_fraction=args.val_fraction, device=args.device, progress=not args.quiet,
                          execution=execution_of(args), pixels=_pixels(args))
    print(f"nested set: {ns.label} ({len(ns.members)} networks)")
    repeats = f"--repeats {protocol.repeats} " if protocol.repeats > 1 else ""
    print(f"features: --features {ns.label}:{taps}  (sweep with --cv {protocol.cv} {repeats}--inner-cv "
          f"{protocol.inner_cv} --seed {protocol.seed}: CV records are then clean)")
    return 0


def _finetune_one(args: argparse.Namespace, m: Manifest, config: FineTuneConfig, grid: dict, taps: str) -> int:
    train_ids = [it.id for it in m if it.split != "test"]
    n_test = len(m) - len(train_ids)
    print(f"fine-tuning {args.backbone} on {len(train_ids)} training images ({n_test} test images left out)")
    est = CNNClassifier(args.backbone, m, weights=args.weights, config=config, grid=grid or None,
                        tune_cv=args.tune_cv, val_fraction=args.val_fraction, device=args.device,
                        progress=not args.quiet, pixels=_pixels(args))
    est.fit(train_ids)
    ft = est.finetuned_
    if est.best_params_:
        print(f"chosen by {args.tune_cv}-fold CV on the training split: {est.best_params_}")
    last = ft.history[ft.best_epoch - 1] if ft.history else {}
    shown = {k: round(v, 4) for k, v in last.items() if k.startswith("val_") and isinstance(v, float)}
    print(f"best epoch {ft.best_epoch} of {len(ft.history)} {shown}")
    print(f"weights: {ft.label}  (in {ft.folder})")
    if ft.is_ynet:
        print(f"a Y-Net (segmentation + classification): its lesion boxes feed feature blocks with "
              f"--input box --boxes predicted:{ft.label}")
        return 0
    print(f"features: --features {ft.label}:{taps}  (CV results on them are marked optimistic; "
          f"--nested makes them clean)")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    """Run the end-to-end baselines into ``--out``; rewrite and print its summary (or ``--list``)."""
    if args.list:
        _list_baselines()
        return 0
    if not args.manifest or not args.out:
        raise ConfigError("--manifest and --out are required (or --list)")
    _use_store(args)
    run_baselines(args.manifest, split_list(args.baselines) or [], args.out, protocol=protocol_of(args),
                  classes=split_list(args.classes), overrides=parse_settings(args.set), tune=args.tune,
                  tune_cv=args.tune_cv, device=args.device, progress=not args.quiet,
                  external=parse_external(args.external), execution=execution_of(args),
                  pixels=args.pixel_store)
    summary = summarize(ResultStore(args.out).frame(), args.metric)
    summary.to_csv(Path(args.out) / "summary.csv", index=False)
    m = args.metric
    print(f"\nall candidates of {args.out} by mean CV {m} (baselines and classical heads together):")
    for _, r in summary.head(20).iterrows():
        test = r[f"test_{m}"]
        print(f"  {r['candidate']:<40} {r[f'cv_{m}']:.3f} +- {r[f'cv_{m}_sd']:.3f}  test {test:.3f}")
    return 0


def _list_baselines() -> None:
    for s in list_baselines():
        c = s.config
        print(f"{s.name:<14} {s.backbone:<22} {c.optimizer} lr={c.lr:g} {c.schedule} epochs={c.epochs}"
              f"{' freeze=' + str(c.freeze) if c.freeze != 'none' else ''}  grid={s.grid}  {s.doc}")


def cmd_cam(args: argparse.Namespace) -> int:
    """Grad-CAM overlays, a grid figure and cam.csv for a fine-tuned network."""
    _use_store(args)
    m = Manifest.load(args.manifest)  # all classes: the network's own are selected below
    items = _cam_items(args, m)
    # explain() itself unless --n-jobs > 1 or --backend dask spread the images over workers.
    cams = CamSet.from_result(explain_on(execution_of(args), items, args.network, target=args.target,
                                         layer=args.layer, device=args.device))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    figure = write_cam_folder(cams, folder, grid_max=args.grid_max, ncols=args.cols)
    share = cams.peak_share()
    print(f"{len(items)} maps: overlays in {folder / 'overlays'}, table {folder / 'cam.csv'}")
    print(f"grid: {', '.join(str(p) for p in figure)}")
    if share == share:  # NaN: no correctly classified image with a box
        print(f"map peak inside the lesion box: {share:.0%} of correctly classified images with a box")
    return 0


def _cam_items(args: argparse.Namespace, m: Manifest) -> list:
    """The validated items ``--ids`` or ``--split``/``--label`` select, of the network's classes."""
    if args.ids:
        items = list(m.subset(split_list(args.ids)))
    else:
        items = [it for it in m if args.split == "all" or it.split == args.split]
        if args.label:
            items = [it for it in items if it.label == args.label]
    backbone, _, wid = args.network.partition("@")
    classes = find_finetuned(backbone, wid)[1]["classes"] if wid else []
    items = [it for it in items if it.label in classes] if classes else items
    if not items:
        raise ConfigError(f"no images selected (split={args.split!r}, label={args.label!r}, classes {classes})")
    return list(m.subset([it.id for it in items]).validate(progress=False))

"""``workbench run`` and ``demo``: whole experiments."""
from __future__ import annotations

import argparse

from workbench.cli.values import split_features, split_list
from workbench.demo import DEMO_FEATURES, run_demo
from workbench.experiment import run_experiment

__all__ = ["cmd_run", "cmd_demo"]


def cmd_run(args: argparse.Namespace) -> int:
    """Run every stage of an experiment TOML; print its report."""
    # --n-jobs/--backend/--scheduler over the config's [sweep] ones, for every stage.
    execution = {k: getattr(args, k) for k in ("n_jobs", "backend", "scheduler") if getattr(args, k) is not None}
    out = run_experiment(args.config, progress=not args.quiet, device=args.device, execution=execution)
    print((out / "report.md").read_text())
    print(f"report: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the synthetic demo data (or ``--data``)."""
    run_demo(data=args.data, out=args.out, cache=args.cache,
             features=split_features(args.features) or DEMO_FEATURES, image_size=args.image_size,
             classes=split_list(args.classes), batch_size=args.batch_size, num_workers=args.num_workers,
             n_jobs=args.n_jobs, progress=not args.quiet)
    return 0

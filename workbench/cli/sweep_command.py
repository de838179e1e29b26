"""``workbench sweep``: heads over every feature subset, then the printed ranking."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from workbench.cli.objects import execution_of, extract_options_of, protocol_of, sweep_options_of
from workbench.cli.values import parse_external, split_features, split_list
from workbench.evaluation.summary import summarize
from workbench.search.sweep import sweep

__all__ = ["cmd_sweep"]


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep into ``--out``; write results.csv and summary.csv; print the top rows."""
    protocol = protocol_of(args)
    execution = execution_of(args)
    df = sweep(args.manifest, split_features(args.features), out=args.out, protocol=protocol,
               options=sweep_options_of(args), execution=execution, classes=split_list(args.classes),
               cache=args.cache, extract_options=extract_options_of(args), progress=not args.quiet,
               external=parse_external(args.external))
    out = Path(args.out)
    df.to_csv(out / "results.csv", index=False)
    summary = summarize(df, args.metric)
    summary.to_csv(out / "summary.csv", index=False)
    _print_ranking(summary, args.metric, args.top, protocol.cv, protocol.repeats)
    print(f"\nrecords: {out / 'records.jsonl'}\nsummary: {out / 'summary.csv'}")
    return 0


def _print_ranking(summary: pd.DataFrame, m: str, top: int, cv: int, repeats: int = 1) -> None:
    folds = f"{repeats} x {cv}-fold" if repeats > 1 else f"{cv}-fold"
    print(f"\ntop {min(top, len(summary))} of {len(summary)} candidates by mean CV {m} "
          f"({folds}; test shown, never used to rank):")
    shown = summary.head(top)
    width = max(len(c) for c in shown["candidate"]) if len(shown) else 10
    print(f"{'candidate':<{width}}  {'CV ' + m:>14}  {'test ' + m:>9}")
    for _, r in shown.iterrows():
        test = "" if r[f"test_{m}"] != r[f"test_{m}"] else f"{r[f'test_{m}']:.3f}"  # NaN: no test record
        print(f"{r['candidate']:<{width}}  {r[f'cv_{m}']:.3f} +- {r[f'cv_{m}_sd']:.3f}  {test:>9}")

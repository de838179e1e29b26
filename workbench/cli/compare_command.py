"""``workbench compare``: the candidates several runs share, ranked within and across them."""
from __future__ import annotations

import argparse

from workbench.report.compare import comparison_across_runs_table, comparison_test_table, compare_runs, write_comparison
from workbench.report.tables import to_markdown

__all__ = ["cmd_compare"]


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison table of ``args.runs``; with ``--out``, write it and the CD diagram."""
    result = compare_runs(args.runs, metric=args.metric, top=args.top, alpha=args.alpha,
                          across_inputs=args.across_inputs)
    print(to_markdown(comparison_across_runs_table(result)))
    if result.test is not None:  # runs of one task: their shared test split, paired
        print()
        print(to_markdown(comparison_test_table(result)))
    if args.out:
        for p in write_comparison(result, args.out):
            print(f"wrote {p}")
    return 0

"""``workbench report``: the report of a run folder, rebuilt from its files alone.

Kept apart from ``workbench run`` so that rebuilding a report loads no network code.
"""
from __future__ import annotations

import argparse

from workbench.report.build import write_report

__all__ = ["cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild ``RUN/report/`` from the run folder's records and files; print it."""
    out = write_report(args.run)
    print((out / "report.md").read_text())
    print(f"report: {out}")
    return 0

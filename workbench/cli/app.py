"""``main``: parse, set up logging and warnings, run the command, report user errors.

A :class:`~workbench.errors.WorkbenchError` (a bad manifest, option, name, a damaged
cache...) is the user's to fix: one line and exit 2. So is an ``OSError`` from the file
system (a cache path that is a file, a full disk, a read-only mount), named by path and
cause. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from workbench.cli.parser import COMMANDS, build_parser
from workbench.errors import WorkbenchError

__all__ = ["main"]

_INTERRUPTED = "interrupted: finished work is in the cache / run folder; re-run the same command to resume"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    with _status_lines(quiet=getattr(args, "quiet", False)), _one_line_warnings_while(args.command):
        try:
            return _command(args.command)(args)
        except WorkbenchError as e:
            return _user_error(args.command, str(e))
        except OSError as e:
            return _user_error(args.command, _os_error_text(e))
        except KeyboardInterrupt:
            print(f"\n{_INTERRUPTED}", file=sys.stderr)
            return 130


def _command(name: str):
    """The function running sub-command ``name``, its module imported now (not at --help)."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _user_error(command: str, message: str) -> int:
    print(f"workbench {command}: error: {message}", file=sys.stderr)
    return 2


def _os_error_text(e: OSError) -> str:
    """``PATH: cause`` (``SRC -> DST: cause`` for a rename) when the error says them."""
    if e.filename is not None and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{where}: {e.strerror}"
    return str(e)


@contextmanager
def _status_lines(quiet: bool) -> Iterator[None]:
    """The workbench's INFO lines on stderr as plain text while a command runs (WARNING
    and above only with ``--quiet``); the logger is left as it was found afterwards."""
    log = logging.getLogger("workbench")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@contextmanager
def _one_line_warnings_while(command: str) -> Iterator[None]:
    default = warnings.formatwarning
    try:
        _one_line_warnings(command)
        yield
    finally:
        warnings.formatwarning = default


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed options of ``argv`` (for tests and scripts), nothing run."""
    return build_parser().parse_args(argv)

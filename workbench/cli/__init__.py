"""The ``workbench`` command line.

Every sub-command is a thin layer over a Python call of the same name, so what a
script does and what the CLI does never drift apart. Modules:

- :mod:`~workbench.cli.parser`: every sub-command and option (imports nothing heavy);
- :mod:`~workbench.cli.values`: the value strings (``--grid``, ``--set``, ``--subsets``);
- :mod:`~workbench.cli.objects`: options -> ``Protocol``, ``ExtractOptions``, ``SweepOptions``...;
- :mod:`~workbench.cli.app`: ``main`` (logging, warnings, errors);
- ``*_command(s)`` modules: the commands, each imported only when one of its commands runs.
"""
from __future__ import annotations

from workbench.cli.app import main

__all__ = ["main"]

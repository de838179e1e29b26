"""The workbench's errors: one base, so a caller (and the CLI) can tell a user's mistake
from a bug.

Every error the workbench raises on purpose derives from :class:`WorkbenchError` and
says what is wrong and with which file, value or name. Each also keeps the built-in
class it always had (``ValueError``, ``KeyError``, ``FileNotFoundError``...), so code
that caught those still works. The CLI prints a ``WorkbenchError`` as one line and exits
2; any other exception is a bug and shows its traceback.
"""
from __future__ import annotations

__all__ = ["WorkbenchError", "ConfigError", "MissingFileError", "UnknownNameError"]


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose (bad input, config, data, state)."""


class ConfigError(WorkbenchError, ValueError):
    """A configuration value (experiment file, option, argument) is missing or wrong."""


class MissingFileError(WorkbenchError, FileNotFoundError):
    """A file or folder the workbench needs (config, run folder, weights) is not there."""


class UnknownNameError(WorkbenchError, KeyError):
    """A name that no registry holds; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""

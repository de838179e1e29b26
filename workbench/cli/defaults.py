"""Defaults of the typed option objects, for the parser's help texts.

The objects themselves (:class:`~workbench.evaluation.settings.Protocol`,
:class:`~workbench.features.options.ExtractOptions`, ...) are the one source of
defaults: the parser leaves an option it was not given as ``None`` and the command
builds the object from the options that were given, so a default is never copied
into argparse. The help texts still show each default, read with
:func:`dataclasses.fields`. The option objects live in light modules (no torch,
pandas or scikit-learn), so ``workbench --help`` stays fast.
"""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["field_defaults", "show"]


def field_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of an imported dataclass (fields without a plain default left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def show(value: Any) -> str:
    """A default as the help texts show it: ``[5]``, ``[svm-rbf,rf]``, ``[none]``."""
    if value is None:
        return "[none]"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "[" + str(value).lower() + "]"
    return f"[{value}]"

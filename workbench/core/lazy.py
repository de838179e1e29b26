"""Packages whose public names are imported on first use.

``import workbench`` and ``workbench --help`` must not pay for torch, scikit-learn or
pandas; a package ``__init__`` lists its public names and the modules that define them,
and this module gives it the ``__getattr__`` / ``__dir__`` pair (PEP 562) that imports
a name's module the first time the name is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``exports`` maps a public name to the
    module (absolute, ``workbench.x.y``) that defines it; ``namespace`` is the package's
    ``globals()``, where a name is kept once imported."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__

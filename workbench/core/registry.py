"""One registry pattern for everything the workbench looks up by name.

Backbones, heads, baselines and metrics each keep a :class:`Registry`: ``register`` adds
an entry (a second entry under a taken name is an error unless ``replace=True``), ``get``
returns one or raises the registry's own :class:`~workbench.errors.UnknownNameError`
subclass naming close matches, and ``names()``, ``in``, ``len`` and iteration read it.

Examples
--------
>>> reg = Registry("colour")
>>> reg.register("red", 1)
1
>>> reg.get("red"), "red" in reg, reg.names()
(1, True, ['red'])
>>> reg.get("rde")
Traceback (most recent call last):
...
workbench.errors.UnknownNameError: unknown colour 'rde'; known colours: red. Did you mean: red?
"""
from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from workbench.errors import UnknownNameError, WorkbenchError

__all__ = ["DuplicateNameError", "Registry"]

T = TypeVar("T")


class DuplicateNameError(WorkbenchError, ValueError):
    """A name registered twice without ``replace=True``."""


class Registry(Generic[T]):
    """Name -> entry, in registration order.

    Parameters
    ----------
    kind
        What the entries are, for messages (``"backbone"``, ``"head"``).
    error
        The :class:`~workbench.errors.UnknownNameError` subclass :meth:`get` raises.
    hint
        Text appended to the unknown-name message (e.g. how else a name resolves).
    """

    def __init__(self, kind: str, *, error: type[UnknownNameError] = UnknownNameError, hint: str = "") -> None:
        self.kind = kind
        self.error = error
        self.hint = hint
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name`` and return it.

        Raises
        ------
        DuplicateNameError
            When ``name`` is taken and ``replace`` is false.
        """
        if not isinstance(name, str) or not name:
            raise WorkbenchError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._entries and not replace:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered (pass replace=True to "
                                     f"replace it)")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove ``name`` (e.g. a test's temporary entry) and return its entry."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``.

        Raises
        ------
        UnknownNameError
            The registry's subclass, naming up to three close matches and every known name.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def unknown(self, name: object) -> UnknownNameError:
        """The error for a name this registry does not hold (close matches included)."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        did = f" Did you mean: {', '.join(close)}?" if close else ""
        hint = f" {self.hint}" if self.hint else ""
        return self.error(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self._entries)}.{did}{hint}")

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def values(self) -> list[T]:
        """Registered entries, in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

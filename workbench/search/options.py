"""What a sweep evaluates and how it runs: typed, validated objects with the defaults.

:class:`SweepOptions` says *what* is swept (heads, block subsets, grids, ensembles);
:class:`Execution` says *how* (workers, backend). Neither changes the protocol
(:class:`workbench.evaluation.protocol.Protocol`), and :class:`Execution` never changes a
number in the records (beyond libsvm's tolerance where its memory budget sends an SVM
subset to a plain refit).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from workbench.errors import ConfigError

__all__ = ["BACKENDS", "BASELINE_PREFIX", "DEFAULT_MEMORY_FRACTION", "Execution", "SweepOptions",
           "parse_memory_budget"]

#: How an ensemble member names an end-to-end baseline: ``baseline:lite0``.
BASELINE_PREFIX = "baseline:"

#: joblib backends a sweep can spread candidates over (``dask``: a Dask cluster).
BACKENDS = ("loky", "threading", "sequential", "dask")

#: The share of the available memory the sweep's SVM units running at once may use
#: together when ``memory_budget`` is not given (the rest: the parent, other heads).
DEFAULT_MEMORY_FRACTION = 0.8

#: A smaller byte budget is surely a missing unit (``16`` meant as 16 GB).
_MIN_BUDGET_BYTES = 1 << 20


def parse_memory_budget(value: str | float | int | None) -> tuple[str, float]:
    """A ``memory_budget`` as ``("fraction", f)`` of the available memory or ``("bytes", n)``.

    ``None``: :data:`DEFAULT_MEMORY_FRACTION`. A number in (0, 1] or ``"N%"``: a fraction
    of the memory available when the heads start (on a remote Dask cluster: of a worker's
    memory limit). A larger number, or a size with a unit (``"12GB"``, ``"12 GiB"``,
    ``"500MB"``; dask's ``parse_bytes``: GB = 10^9, GiB = 2^30): bytes, at least 1 MiB.

    Raises
    ------
    ConfigError
        Naming the value, for anything else.
    """
    expected = ('expected a fraction of the available memory (0.5 or "50%") or a size ("12GB", "12GiB"), '
                "at least 1 MiB")
    if value is None:
        return "fraction", DEFAULT_MEMORY_FRACTION
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            if text.endswith("%"):
                raise ConfigError(f"memory_budget = {value!r}: {expected}") from None
            from dask.utils import parse_bytes  # dask is a dependency; imported only for a size

            try:
                number = float(parse_bytes(text))
            except (ValueError, TypeError):
                raise ConfigError(f"memory_budget = {value!r}: {expected}") from None
            if number < _MIN_BUDGET_BYTES:
                raise ConfigError(f"memory_budget = {value!r}: {expected}")
            return "bytes", number
        if text.endswith("%") and not 0 < number <= 1:
            raise ConfigError(f"memory_budget = {value!r}: a percentage must be in (0, 100]")
        value = number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"memory_budget = {value!r}: {expected}")
    if value <= 1:
        return "fraction", float(value)
    if value < _MIN_BUDGET_BYTES:
        raise ConfigError(f"memory_budget = {value!r}: {value:g} bytes is surely a missing unit; {expected}")
    return "bytes", float(int(value))


def _from_dict(cls, d: Mapping[str, Any], what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} options {unknown}; valid: {sorted(names)}")
    return cls(**dict(d))


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep evaluates.

    Parameters
    ----------
    heads
        Head names of the registry (see :func:`workbench.heads.list_heads`).
    subsets
        ``"all"`` non-empty subsets of the blocks, ``"single"``, sizes ``(k1, k2)``, or
        a list of subsets of block names (or their table codes).
    grids
        Per-head grid overriding the registry default (``{}`` for no search).
    ensembles, ensemble_heads, stacking
        Vote ensembles (hard and soft) over the per-block heads ``ensemble_heads``
        (default: all ``heads``) for every subset of two or more members; ``stacking``
        adds a logistic-regression stack.
    ensemble_members
        Instead of ``ensemble_heads`` (giving both is an error): the heads that vote
        (swept heads) and ``baseline:<name>`` entries. Each subset keeps its ensembles
        of the heads, and gets a hybrid twin of each in which the end-to-end baseline
        networks vote too (``[A] vote-soft(svm-rbf+rf+CNN lite0)``; subsets of one block
        included), computed from the baselines' stored records once they exist.
    codes
        Short codes for blocks in tables (default: each backbone's table code).
    """

    heads: tuple[str, ...] = ("svm-rbf", "rf")
    subsets: str | tuple[int, int] | tuple[tuple[str, ...], ...] = "all"
    grids: Mapping[str, Mapping[str, Sequence[Any]]] = field(default_factory=dict)
    ensembles: bool = True
    ensemble_heads: tuple[str, ...] | None = None
    stacking: bool = False
    ensemble_members: tuple[str, ...] | None = None
    codes: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        heads = (self.heads,) if isinstance(self.heads, str) else tuple(self.heads)
        if not heads or not all(isinstance(h, str) and h for h in heads):
            raise ConfigError(f"sweep heads = {self.heads!r}: expected one or more head names")
        object.__setattr__(self, "heads", tuple(dict.fromkeys(heads)))
        if self.ensemble_heads is not None:
            eh = (self.ensemble_heads,) if isinstance(self.ensemble_heads, str) else tuple(self.ensemble_heads)
            missing = [h for h in eh if h not in self.heads]
            if missing:
                raise ConfigError(f"ensemble heads {missing} are not among the swept heads {list(self.heads)}")
            object.__setattr__(self, "ensemble_heads", tuple(dict.fromkeys(eh)))
        if self.ensemble_members is not None:
            self._check_members()
        s = self.subsets
        if isinstance(s, str):
            if s not in ("all", "single"):
                raise ConfigError(f"sweep subsets = {s!r}: expected 'all', 'single', (k1, k2) or a list")
        elif isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(k, int) and not isinstance(k, bool)
                                                                   for k in s):
            object.__setattr__(self, "subsets", (int(s[0]), int(s[1])))
        elif isinstance(s, (list, tuple)) and s:
            object.__setattr__(self, "subsets", tuple((b,) if isinstance(b, str) else tuple(b) for b in s))
        else:
            raise ConfigError(f"sweep subsets = {s!r}: expected 'all', 'single', (k1, k2) or a list")
        grids = dict(self.grids or {})
        unknown = [h for h in grids if h not in self.heads]
        if unknown:
            raise ConfigError(f"grids given for heads {unknown} that are not swept ({list(self.heads)})")
        for h, g in grids.items():
            if not isinstance(g, Mapping):
                raise ConfigError(f"grid of head {h} = {g!r}: expected a mapping of parameter -> values")
        object.__setattr__(self, "grids", grids)
        for name in ("ensembles", "stacking"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"sweep {name} = {getattr(self, name)!r}: expected true or false")

    def _check_members(self) -> None:
        """``ensemble_members``: swept heads and ``baseline:<name>`` entries, at least one head."""
        em = self.ensemble_members
        members = (em,) if isinstance(em, str) else tuple(em)
        if self.ensemble_heads is not None:
            raise ConfigError("give ensemble_heads or ensemble_members, not both (ensemble_members lists the "
                              f"heads that vote as well): ensemble_heads = {list(self.ensemble_heads)}, "
                              f"ensemble_members = {list(members)}")
        if not members or not all(isinstance(m, str) and m.strip() for m in members):
            raise ConfigError(f"ensemble members = {em!r}: expected head names and baseline:<name> entries")
        heads = [m for m in members if not m.startswith(BASELINE_PREFIX)]
        bad = [m for m in members if m.startswith(BASELINE_PREFIX) and not m[len(BASELINE_PREFIX):].strip()]
        if bad:
            raise ConfigError(f"ensemble member {bad[0]!r} names no baseline; write baseline:<name>, e.g. "
                              "baseline:lite0")
        missing = [h for h in heads if h not in self.heads]
        if missing:
            raise ConfigError(f"ensemble members {missing} are not among the swept heads {list(self.heads)} "
                              "(a baseline is written baseline:<name>)")
        if not heads:
            raise ConfigError(f"ensemble members {list(members)} name no head; list the heads that vote with "
                              f"the baseline(s), e.g. {[*self.heads, *members]}")
        if not self.ensembles:
            raise ConfigError(f"ensemble members {list(members)} are given but ensembles are off")
        object.__setattr__(self, "ensemble_members", tuple(dict.fromkeys(members)))

    @property
    def member_heads(self) -> tuple[str, ...]:
        """The heads that vote in ensembles: ``ensemble_heads``, the heads of
        ``ensemble_members``, or every swept head."""
        if self.ensemble_members is not None:
            return tuple(m for m in self.ensemble_members if not m.startswith(BASELINE_PREFIX))
        return self.ensemble_heads if self.ensemble_heads is not None else self.heads

    @property
    def ensemble_baselines(self) -> tuple[str, ...]:
        """The baselines of ``ensemble_members`` (``baseline:lite0`` -> ``lite0``), in order."""
        return tuple(m[len(BASELINE_PREFIX):] for m in self.ensemble_members or () if m.startswith(BASELINE_PREFIX))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SweepOptions":
        """From a mapping of field names; unknown keys refused."""
        return _from_dict(cls, d, "sweep")

    def replace(self, **changes: Any) -> "SweepOptions":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Execution:
    """How a sweep's candidates are spread: ``n_jobs`` joblib workers on ``backend``;
    ``backend="dask"`` with ``scheduler`` an address (``tcp://host:8786``) or ``"local"``.

    ``memory_budget`` (see :func:`parse_memory_budget`) bounds the SVM units running at
    once; a unit over its share runs over fewer blocks, or as plain refits, with the same
    numbers (:func:`workbench.search.running.plan_head_units`).
    """

    n_jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    memory_budget: str | float | int | None = None

    def __post_init__(self) -> None:
        parse_memory_budget(self.memory_budget)
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0:
            raise ConfigError(f"n_jobs = {self.n_jobs!r}: expected a non-zero integer (-1: every core)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.scheduler is not None and self.backend != "dask":
            raise ConfigError("--scheduler only applies to --backend dask")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Execution":
        return _from_dict(cls, d, "execution")

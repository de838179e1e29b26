"""What a sweep evaluates and how it runs: typed, validated objects with the defaults.

:class:`SweepOptions` says *what* is swept (heads, block subsets, grids, ensembles);
:class:`Execution` says *how* (workers, backend). Neither changes the protocol
(:class:`workbench.evaluation.protocol.Protocol`), and :class:`Execution` never changes a
number in the records.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from workbench.errors import ConfigError

__all__ = ["BACKENDS", "BASELINE_PREFIX", "Execution", "SweepOptions"]

#: How an ensemble member names an end-to-end baseline: ``baseline:lite0``.
BASELINE_PREFIX = "baseline:"

#: joblib backends a sweep can spread candidates over (``dask``: a Dask cluster).
BACKENDS = ("loky", "threading", "sequential", "dask")


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
    ``backend="dask"`` with ``scheduler`` an address (``tcp://host:8786``) or ``"local"``."""

    n_jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0:
            raise ConfigError(f"n_jobs = {self.n_jobs!r}: expected a non-zero integer (-1: every core)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.scheduler is not None and self.backend != "dask":
            raise ConfigError("--scheduler only applies to --backend dask")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Execution":
        return _from_dict(cls, d, "execution")

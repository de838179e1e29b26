"""The evaluation settings of a run: :class:`Protocol` and the scorings nested CV may tune for.

A light module (no numpy, pandas or scikit-learn), so the command line reads its
defaults without importing them; :mod:`workbench.evaluation.protocol` binds a protocol
to a manifest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

__all__ = ["Protocol", "SCORINGS"]

#: What nested CV may tune hyper-parameters for (first: the default).
SCORINGS: tuple[str, ...] = ("auc", "balanced_accuracy", "accuracy")


@dataclass(frozen=True)
class Protocol:
    """How a run is evaluated; everything that makes two results comparable.

    Parameters
    ----------
    cv
        Outer folds on the training split (CV estimates; ranking and selection).
    inner_cv
        Inner folds within each outer training fold (hyper-parameter search).
    seed
        Fixes every split and every seeded model.
    scoring
        What the inner search maximizes: one of :data:`SCORINGS`.
    positive
        The positive class of a binary task (``None``: the second class listed, or
        the malignant-sounding one; see :func:`default_positive`).
    groups
        Keep the images of one ``group`` (patient) in one fold when the manifest has
        groups; ``False`` ignores the column.
    """

    cv: int = 5
    inner_cv: int = 3
    seed: int = 0
    scoring: str = "auc"
    positive: str | None = None
    groups: bool = True

    def __post_init__(self) -> None:
        for name, low in (("cv", 2), ("inner_cv", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"protocol {name} = {v!r}: expected an integer >= {low}")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"protocol scoring = {self.scoring!r}: choose from {', '.join(SCORINGS)}")
        if self.positive is not None and (not isinstance(self.positive, str) or not self.positive):
            raise ConfigError(f"protocol positive = {self.positive!r}: expected a class name")
        if not isinstance(self.groups, bool):
            raise ConfigError(f"protocol groups = {self.groups!r}: expected true or false")

    def replace(self, **changes: Any) -> "Protocol":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

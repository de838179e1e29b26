"""The study's search: splits, candidates, the sweep, its records, metrics, summaries, selection.

Names are imported lazily: the sweep pulls in torch (for extraction), which tables,
figures and statistics do not need.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Candidate": "candidates", "block_codes": "candidates", "enumerate_subsets": "candidates",
    "METRICS": "metrics", "classification_metrics": "metrics", "default_positive": "metrics",
    "FoldError": "splits", "Splits": "splits", "make_folds": "splits",
    "ResultStore": "store", "RunMismatchError": "store", "StoreCorruptError": "store",
    "summarize": "summary", "SweepInputError": "sweep", "sweep": "sweep", "search": "select",
    "SearchResult": "select",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"workbench.search.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'workbench.search' has no attribute {name!r}")

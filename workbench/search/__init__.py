"""The study's search: splits, candidates, the sweep, its records, metrics, summaries, selection.

Names are imported lazily: the sweep pulls in torch (for extraction), which tables,
figures and statistics do not need.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Candidate": "search.candidates", "block_codes": "search.candidates",
    "enumerate_subsets": "search.candidates", "SweepInputError": "search.sweep", "sweep": "search.sweep",
    "search": "search.select", "SearchResult": "search.select",
    # The evaluation layer's names, re-exported where users of the search look for them.
    "METRICS": "evaluation.metrics", "classification_metrics": "evaluation.metrics",
    "default_positive": "evaluation.metrics", "FoldError": "evaluation.splits", "Splits": "evaluation.splits",
    "make_folds": "evaluation.splits", "ResultStore": "evaluation.store", "RunMismatchError": "evaluation.store",
    "StoreCorruptError": "evaluation.store", "summarize": "evaluation.summary",
    "DuplicateLabelError": "evaluation.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"workbench.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'workbench.search' has no attribute {name!r}")

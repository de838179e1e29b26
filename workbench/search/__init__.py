"""The study's search: candidates, the sweep (plan, run, record), selection.

Names are imported lazily: the sweep pulls in torch (for extraction), which tables,
figures and statistics do not need.
"""
from __future__ import annotations

from workbench.core.lazy import lazy_exports

_EXPORTS = {
    "Candidate": "search.candidates", "block_codes": "search.candidates",
    "enumerate_subsets": "search.candidates", "SweepInputError": "search.plan", "sweep": "search.sweep",
    "SweepPlan": "search.plan", "build_plan": "search.plan",
    "SweepOptions": "search.options", "Execution": "search.options",
    "search": "search.select", "SearchResult": "search.select",
    # The evaluation layer's names, re-exported where users of the search look for them.
    "Protocol": "evaluation.protocol",
    "METRICS": "evaluation.metrics", "classification_metrics": "evaluation.metrics",
    "default_positive": "evaluation.metrics", "FoldError": "evaluation.splits", "Splits": "evaluation.splits",
    "make_folds": "evaluation.splits", "ResultStore": "evaluation.store", "RunMismatchError": "evaluation.store",
    "StoreCorruptError": "evaluation.store", "summarize": "evaluation.summary",
    "DuplicateLabelError": "evaluation.summary",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, {n: f"workbench.{m}" for n, m in _EXPORTS.items()}, globals())

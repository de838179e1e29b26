"""The study's search: splits, candidates, the sweep, its records, metrics, summaries."""
from workbench.search.candidates import Candidate, block_codes, enumerate_subsets
from workbench.search.metrics import METRICS, classification_metrics, default_positive
from workbench.search.splits import FoldError, Splits, make_folds
from workbench.search.store import ResultStore, RunMismatchError, StoreCorruptError
from workbench.search.summary import summarize
from workbench.search.sweep import SweepInputError, sweep

__all__ = [
    "Candidate", "FoldError", "METRICS", "ResultStore", "RunMismatchError", "Splits", "StoreCorruptError",
    "SweepInputError", "block_codes", "classification_metrics", "default_positive", "enumerate_subsets",
    "make_folds", "summarize", "sweep",
]

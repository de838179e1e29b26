"""Evaluation: the protocol (folds, seed, scoring, positive class), splits, metrics,
statistics, and the append-only records store. Below heads, baselines and the search,
so all of them score and record the same way."""

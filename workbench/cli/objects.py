"""The typed option objects a command calls the workbench with, built from parsed options.

An option left unset is ``None`` in the namespace (see :mod:`workbench.cli.parser`) and
is left out here, so the object's own default applies. Imported by the commands only:
these classes' modules import torch, pandas and scikit-learn.
"""
from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.values import parse_head_grids, parse_subsets, split_list
from workbench.evaluation.protocol import Protocol
from workbench.features.options import ExtractOptions
from workbench.search.options import Execution, SweepOptions

__all__ = ["protocol_of", "extract_options_of", "sweep_options_of", "execution_of"]

_PROTOCOL = ("cv", "inner_cv", "seed", "scoring", "positive", "groups", "repeats")
_EXTRACT = ("input", "box_margin", "resize", "image_size", "skip_bad", "batch_size", "num_workers", "device",
            "precision", "dtype", "boxes", "pixel_store", "preprocess_on")
_EXECUTION = ("n_jobs", "backend", "scheduler", "memory_budget")  # the last: `sweep` only


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def protocol_of(args: argparse.Namespace) -> Protocol:
    """``--cv --inner-cv --seed --scoring --positive --no-groups`` as a :class:`Protocol`."""
    return Protocol(**_given(args, _PROTOCOL))


def extract_options_of(args: argparse.Namespace) -> ExtractOptions:
    """The input and compute options as an :class:`ExtractOptions`."""
    return ExtractOptions(**_given(args, _EXTRACT))


def sweep_options_of(args: argparse.Namespace) -> SweepOptions:
    """``--heads --subsets --grid --no-ensembles --ensemble-heads --ensemble-members --stacking`` as
    :class:`SweepOptions`."""
    given: dict[str, Any] = {"grids": parse_head_grids(args.grid)}
    if args.heads is not None:
        given["heads"] = tuple(split_list(args.heads) or ())
    if args.subsets is not None:
        given["subsets"] = parse_subsets(args.subsets)
    if args.ensemble_heads is not None:
        given["ensemble_heads"] = tuple(split_list(args.ensemble_heads) or ())
    if getattr(args, "ensemble_members", None) is not None:
        given["ensemble_members"] = tuple(split_list(args.ensemble_members) or ())
    for flag in ("ensembles", "stacking"):
        if getattr(args, flag) is not None:
            given[flag] = getattr(args, flag)
    return SweepOptions(**given)


def execution_of(args: argparse.Namespace) -> Execution:
    """``--n-jobs --backend --scheduler`` as an :class:`Execution`."""
    return Execution(**_given(args, _EXECUTION))

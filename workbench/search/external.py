"""External test sets in the search: the reported models, frozen, on another set of images.

An external set (another site, another scanner; fold ``ext-<name>`` of the records) is
evaluated with the models fitted for the internal test split, unchanged: every row the
comparison reports (selected, top-k, baselines, requested; not the optimistic pick) is
scored on it at the threshold that row uses on the test split, chosen on out-of-fold CV
predictions (:func:`workbench.search.select._decide`) and never on external labels.
Intervals and paired tests against the best baseline are the test split's own
(:func:`~workbench.search.select._figures`, :func:`~workbench.search.select._paired_tests`:
Wilson / DeLong / exact McNemar, or a cluster bootstrap when a group holds several
images), and each row says how far its AUC moved from the internal test split.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workbench.evaluation import stats
from workbench.evaluation.protocol import recorded_external_sets
from workbench.evaluation.settings import EXTERNAL_PREFIX, external_fold_name, is_external_fold
from workbench.search.select import OPTIMISTIC_ROLE, _Context, _figures, _paired_tests, calls

__all__ = ["external_results"]


def _sets(ctx: _Context) -> dict[str, dict[str, Any]]:
    """External sets with records in this search, by name: what ``external.json`` keeps of
    each (digest, images, classes, source, held_out), ``{}`` for a set it does not list."""
    names = sorted({str(f)[len(EXTERNAL_PREFIX):] for f in ctx.records["fold"].unique() if is_external_fold(f)})
    if not names:
        return {}
    known = recorded_external_sets(ctx.store.root)
    return {n: dict(known.get(n, {})) for n in names}


def _groups(ctx: _Context) -> dict[str, str]:
    """Image id -> group of the external images (``external.csv``), and the search's own."""
    out: dict[str, str] = {}
    path = ctx.store.root / "external.csv"
    if path.is_file():
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "group" in frame.columns:
            out.update(zip(frame["id"], frame["group"]))
    out.update(ctx.group_of or {})
    return out


def _scored(ctx: _Context, rec: dict[str, Any], decided: dict[str, Any]) -> dict[str, Any]:
    """One record's labels, scores and calls at the candidate's frozen test threshold."""
    t = ctx.store.predictions(rec)
    return {**calls(t, ctx.pos, decided.get("threshold", np.nan), rec.get("metrics", {}).get("auc", np.nan)),
            "_ids": np.asarray(t["ids"]).astype(str)}


def _row(ctx: _Context, test_row: dict[str, Any], rec: dict[str, Any] | None, digest: str | None,
         group_of: dict[str, str]) -> dict[str, Any]:
    """A reported model's row on one external set (a note instead of figures when it cannot be scored)."""
    cand = test_row["candidate"]
    out: dict[str, Any] = {"candidate": cand, "role": test_row["role"], "kind": test_row["kind"],
                           "test_auc": test_row.get("auc", np.nan)}
    decided = ctx.decided.get(cand, {})
    if rec is None:
        return {**out, "note": "no record on this set"}
    if digest and rec.get("external_digest") not in (None, digest):
        return {**out, "note": "record of another version of this set"}
    if ctx.pos is not None and "threshold" not in decided:
        return {**out, "note": "no test record: no frozen threshold"}
    scored = _scored(ctx, rec, decided)
    g = None
    raw = [group_of.get(i, "") for i in scored["_ids"]]
    if stats.clustered(raw):
        g = np.array(raw, dtype=object)
    figures = _figures(scored, ctx.pos, ctx.alpha, g)
    out.update(n_images=int(len(scored["_y"])), **figures)
    if ctx.pos is not None:
        out["n_positive"] = int(scored["_y"].sum())
    out["delta_auc"] = out.get("auc", np.nan) - out["test_auc"]
    out["interval_method"] = ("cluster bootstrap" if g is not None
                              else ("Wilson / DeLong" if ctx.pos is not None else "Wilson"))
    return {**out, **{k: scored[k] for k in ("_y", "_p", "_pred", "_ids")}, "_groups": g}


def external_results(ctx: _Context, rows: list[dict[str, Any]], best_baseline: str | None,
                     notes: list[str]) -> dict[str, pd.DataFrame]:
    """Per external set: one row per reported model (the optimistic pick aside).

    Columns: ``candidate, role, kind, test_auc`` (internal), then as the comparison's
    test columns (``auc, auc_low, auc_high``, each proportion with its interval, the
    ``threshold``; multi-class: accuracy and the record's macro AUC), ``n_images``,
    ``n_positive``, ``delta_auc`` (external minus internal test AUC),
    ``interval_method``, ``p_auc``, ``p_accuracy`` and their Holm adjustment (over the
    set's selected and top-k rows) against the best baseline on the same images, and
    ``note`` where a model has no usable record. ``frame.attrs`` holds the set's
    ``name``, ``fold``, ``digest``, ``n_images``, ``classes``, ``source`` and
    ``held_out`` (a held-out part of the main manifest, not another site).

    Problems (images differing from the baseline's) go to ``notes``, naming the set.
    """
    sets = _sets(ctx)
    if not sets:
        return {}
    by_key = {(r["candidate"], r["fold"]): r for r in ctx.store.current_records()}
    group_of = _groups(ctx)
    out: dict[str, pd.DataFrame] = {}
    for name, info in sets.items():
        fold = external_fold_name(name)
        ext_rows = [_row(ctx, r, by_key.get((r["candidate"], fold)), info.get("digest"), group_of)
                    for r in rows if r["role"] != OPTIMISTIC_ROLE]
        set_notes: list[str] = []
        _paired_tests(ctx, ext_rows, best_baseline, set_notes)
        notes += [f"external set {name}: {n}" for n in set_notes]
        frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in ext_rows])
        frame.attrs.update(name=name, fold=fold, **{k: info.get(k) for k in
                                                     ("digest", "n_images", "classes", "source", "held_out")})
        out[name] = frame
    return out

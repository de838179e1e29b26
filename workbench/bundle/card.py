"""The model card of a bundle: its figures come from the run's report search, never anew.

``build_card`` runs :func:`~workbench.report.build.reported_search` (the report's own
records, metric, top-k and alpha) with the exported candidate included, so the CV and
test figures, the intervals, the threshold and the comparison against the best baseline
are the report's numbers. A Y-Net baseline's card also quotes its test Dice: the test
record's ``segmentation`` figures, with the bootstrap intervals the report's segmentation
table computes from the same per-image Dice. ``write_card`` renders ``MODEL_CARD.md`` from
``model.json``.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.io import atomic_write

__all__ = ["INTENDED_USE", "build_card", "segmentation_card", "write_card"]

INTENDED_USE = ("Research use only; not a medical device. Not validated for clinical decisions: the figures "
                "below come from one dataset and one split.")

_PROPORTIONS = ("sensitivity", "specificity", "accuracy", "ppv", "npv")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _with_ci(row: dict[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    v = _num(row.get(key))
    if v is None:
        return out
    out[key] = v
    lo, hi = _num(row.get(f"{key}_low")), _num(row.get(f"{key}_high"))
    if lo is not None and hi is not None:
        out[f"{key}_ci"] = [lo, hi]
    return out


def build_card(source, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Card fields of candidate ``name`` of ``source``'s run (see module docstring)."""
    from workbench.report.build import reported_search

    result, settings = reported_search(source.run, include=(name,))
    rows = result.comparison.to_dict("records")
    row = next(r for r in rows if r["candidate"] == name and r["role"] != "best on test (optimistic)")
    task = source.task
    train, test = task.train_rows["test"], task.eval_rows["test"]
    names = task.class_names
    test_fig: dict[str, Any] = {"n": int(len(test))}
    for key in ("auc", *_PROPORTIONS):
        test_fig.update(_with_ci(row, key))
    for key in ("accuracy", "sensitivity", "specificity"):
        v = _num(row.get(f"{key}_at_0.5"))
        if v is not None:
            test_fig[f"{key}_at_0.5"] = v
    cv_fig = {"auc": _num(row.get("cv_auc")), "auc_sd": _num(row.get("cv_auc_sd")),
              "folds": task.protocol["cv"] * task.protocol.get("repeats", 1)}
    metric = settings["metric"]
    if metric != "auc":
        cv_fig[metric] = _num(row.get(f"cv_{metric}"))
    card: dict[str, Any] = {
        "intended_use": INTENDED_USE,
        "role": row["role"],
        "selection_metric": metric,
        "alpha": settings["alpha"],
        "threshold": _num(row.get("threshold")),
        "threshold_rule": ("the pooled fold quantile of each fold network's Youden cut-off, applied to the test "
                           "network's validation-split scores" if record["kind"] == "baseline" else
                           "Youden's index on the out-of-fold predictions of the CV folds"),
        "figures": {"cv": cv_fig, "test": test_fig},
        "interval_method": row.get("interval_method") or ("Wilson / DeLong" if len(names) == 2 else "Wilson"),
        "training_data": {
            "manifest": str(source.manifest_path), "manifest_digest": task.manifest.digest(),
            "images": int(len(task.ids)), "task": task.protocol["task"],
            "train_counts": dict(sorted(Counter(names[i] for i in task.y[train]).items())),
            "test_counts": dict(sorted(Counter(names[i] for i in task.y[test]).items())),
        },
        "protocol": {k: task.protocol[k] for k in ("cv", "inner_cv", "seed", "scoring", "folds")},
        "degenerate": row.get("degenerate") or "",
        "near_tie": name in result.near_ties or (row["role"] == "selected" and bool(result.near_ties)),
        "notes": list(result.notes),
        "run": str(source.run.resolve()),
    }
    seg = segmentation_card(source, record, alpha=settings["alpha"])
    if seg is not None:
        card["segmentation"] = seg
    card["baseline"] = None
    if result.best_baseline is None:
        card["baseline_note"] = ("every baseline is degenerate: no paired comparison is made" if len(result.baselines)
                                 else "no end-to-end baseline in the run: nothing to compare against")
    elif result.best_baseline == name:
        card["baseline_note"] = "this model is the run's best end-to-end baseline"
    if result.best_baseline is not None and result.best_baseline != name:
        base = next((r for r in rows if r["candidate"] == result.best_baseline and r["role"] == "baseline"), None)
        if base is not None:
            card["baseline"] = {"name": result.best_baseline, "test_auc": _num(base.get("auc")),
                                "test_auc_ci": [_num(base.get("auc_low")), _num(base.get("auc_high"))],
                                "p_auc": _num(row.get("p_auc")), "p_accuracy": _num(row.get("p_accuracy")),
                                "test": "cluster bootstrap" if result.grouping and result.grouping.get("clustered")
                                else "DeLong (AUC), exact McNemar (accuracy)"}
    return card


def segmentation_card(source, record: dict[str, Any], *, alpha: float = 0.05) -> dict[str, Any] | None:
    """A Y-Net baseline's test segmentation figures (None for any other record).

    ``n``, ``median_dice``, ``mean_dice``, ``mean_iou`` and ``failed_share`` are the test
    record's own; ``median_dice_ci`` / ``mean_dice_ci`` are the report's seeded bootstrap
    intervals over the record's per-image Dice (images with a manual mask).
    """
    from workbench.evaluation.segmentation import FAILED_DICE, segmentation_summary
    from workbench.training.masks import MASK_THRESHOLD

    seg = record.get("segmentation")
    if record.get("kind") != "baseline" or not isinstance(seg, dict):
        return None
    out: dict[str, Any] = {"n": int(seg.get("n") or 0), "threshold": MASK_THRESHOLD, "failed_dice": FAILED_DICE}
    for key in ("median_dice", "mean_dice", "mean_iou", "failed_share"):
        out[key] = _num(seg.get(key))
    seg_weight = _num((record.get("config") or {}).get("seg_weight"))
    out["seg_weight"] = seg_weight
    if seg_weight == 0:
        out["note"] = ("trained without its segmentation loss (the ablation): its masks come from an untrained "
                       "decoder")
    pr = source.store.predictions(record)
    dice = np.asarray(pr["dice"], dtype=float) if "dice" in pr else np.zeros(0)
    dice = dice[np.isfinite(dice)]
    if len(dice) >= 2:  # one image has no spread to resample
        s = segmentation_summary(dice, alpha=alpha, seed=0)
        out["median_dice_ci"] = [s["median_low"], s["median_high"]]
        out["mean_dice_ci"] = [s["mean_low"], s["mean_high"]]
    return out


def _fmt(v: Any, ci: Any = None) -> str:
    if v is None:
        return "–"
    s = f"{v:.3f}"
    if ci and None not in ci:
        s += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return s


def write_card(path: Path, model: dict[str, Any]) -> None:
    """``MODEL_CARD.md`` of a bundle's ``model.json``."""
    c = model["card"]
    t, cv = c["figures"]["test"], c["figures"]["cv"]
    level = f"{100 * (1 - c['alpha']):.0f} %"
    lines = [f"# Model card: {model['name']}", "",
             f"**Intended use.** {c['intended_use']}", "",
             "## What it is", "",
             f"- Kind: {model['kind']}; classes: {', '.join(model['classes'])}"
             + (f"; positive class: {model['positive']}" if model.get("positive") else ""),
             f"- Role in its run: {c['role']} (ranked by CV {c['selection_metric']}; selection on CV only)"]
    if model.get("members"):
        lines.append(f"- Members: {'; '.join(m['name'] + ' ' + str(m['params']) for m in model['members'])}")
    if model.get("blocks"):
        lines.append(f"- Features: {', '.join(b['name'] for b in model['blocks'])} "
                     f"(input: {model.get('input_mode', 'whole')})")
    if model.get("box_source"):
        src = model["box_source"]
        lines.append(f"- Lesion box: predicted by the bundled Y-Net {src['backbone']}@{src['weights_id']} (the "
                     f"largest region of P(lesion) > {src['threshold']:g}; the whole image where its mask is "
                     f"empty), as in the run; a manual box is refused, the model was selected on predicted boxes")
    if model.get("network"):
        n = model["network"]
        lines.append(f"- Network: {n['backbone']}@{n['weights_id']} ({n['image_size']} px, {n['resize']})")
        if n.get("model") == "ynet":
            lines.append(f"- Y-Net: a U-Net on the {n['backbone']} encoder with a classification branch on its "
                         f"deepest features; it predicts the classes and a lesion mask (P(lesion) > 0.5), "
                         f"whose largest region gives the predicted box")
    if model.get("threshold") is not None:
        lines.append(f"- Operating threshold: {model['threshold']:.4f} on P({model['positive']}); "
                     f"{c['threshold_rule']}")
    d = c["training_data"]
    lines += ["", "## Training data", "",
              f"- Manifest: `{d['manifest']}` (SHA-256 {d['manifest_digest'][:16]}...), {d['images']} images",
              f"- Training split: {d['train_counts']}; test split: {d['test_counts']}",
              f"- Protocol: {c['protocol']['cv']}-fold CV, {c['protocol']['inner_cv']}-fold inner CV, seed "
              f"{c['protocol']['seed']}, inner scoring {c['protocol']['scoring']}",
              "", "## Figures", "",
              f"| | value ({level} interval) |", "|---|---|",
              f"| CV AUC (mean ± sd over {cv['folds']} folds) | {_fmt(cv.get('auc'))} ± {_fmt(cv.get('auc_sd'))} |",
              f"| Test AUC (n = {t['n']}) | {_fmt(t.get('auc'), t.get('auc_ci'))} |"]
    for key in _PROPORTIONS:
        if key in t:
            lines.append(f"| Test {key} at the threshold | {_fmt(t[key], t.get(f'{key}_ci'))} |")
    seg = c.get("segmentation")
    if seg:
        lines += [f"| Test Dice, median (n = {seg['n']} images with a manual mask) | "
                  f"{_fmt(seg.get('median_dice'), seg.get('median_dice_ci'))} |",
                  f"| Test Dice, mean | {_fmt(seg.get('mean_dice'), seg.get('mean_dice_ci'))} |",
                  f"| Test IoU, mean | {_fmt(seg.get('mean_iou'))} |",
                  f"| Test share of masks with Dice < {seg['failed_dice']:g} | {_fmt(seg.get('failed_share'))} |"]
    lines += ["", f"Intervals: {c['interval_method']}"
                  + ("; Dice: percentile bootstrap over the test images" if seg and seg.get("median_dice_ci") else "")
                  + "."]
    if seg and seg.get("note"):
        lines += ["", f"**Segmentation:** {seg['note']}."]
    b = c.get("baseline")
    if c.get("baseline_note"):
        lines += ["", f"**Baseline comparison:** {c['baseline_note']}."]
    if b:
        lines += ["", f"**Against the best end-to-end baseline ({b['name']}, test AUC "
                      f"{_fmt(b['test_auc'], b['test_auc_ci'])}):** p = {_fmt(b['p_auc'])} for AUC, "
                      f"{_fmt(b['p_accuracy'])} for accuracy ({b['test']}; not adjusted)."]
    lines += ["", "## Limitations", "",
              "- Figures come from one dataset and one fixed test split; other sites, scanners and populations "
              "are untested.",
              "- The threshold was chosen on cross-validated training predictions; its sensitivity and "
              "specificity on new data will differ."]
    if c.get("near_tie"):
        lines.append("- The selection is a near-tie: other candidates lie within one standard error on CV.")
    if c.get("degenerate"):
        lines.append(f"- Degenerate behaviour was found: {c['degenerate']}.")
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in sorted(model["versions"].items())), ""]
    atomic_write(path, "\n".join(lines).encode())

"""The report of a run folder: search, tables, figures and provenance, from the records alone.

Everything here is a function of the run folder's files (records, predictions, run.json,
experiment.toml, inputs.json, finetuned.json, the Grad-CAM maps ``workbench run`` saved
under ``gradcam/``): no timestamps, no machine names, sorted keys, so the same records
give the same bytes. Nothing here loads a network or imports torch, except the Y-Net
contour grid (``report/segmentation.py``), which re-runs a test network from the
fine-tuned store on the few images it draws.
"""
from __future__ import annotations

import json
import os
import shutil
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.io import atomic_write
from workbench.errors import ConfigError, WorkbenchError
from workbench.evaluation.calibration import RECALIBRATION_METHODS
from workbench.evaluation.degenerate import CHANCE_AUC, ONE_CLASS_SHARE
from workbench.evaluation.stats import N_BOOT
from workbench.evaluation.store import ResultStore
from workbench.report import figures as F
from workbench.report import tables as T
from workbench.report.calibration import calibration_section
from workbench.report.cd import cv_cd_section
from workbench.report.gradcam import GRID_MAX, CamSet, cam_path, write_cam_folder
from workbench.report.segmentation import segmentation_section
from workbench.search.select import search

__all__ = ["ReportSettings", "Selection", "reported_search", "write_report"]


@dataclass(frozen=True)
class Selection:
    """How candidates are ranked and selected (``metric``, ``top_k`` of an experiment's [protocol])."""

    metric: str = "auc"
    top_k: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"selection metric = {self.metric!r}: expected a metric name")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"selection top_k = {self.top_k!r}: expected an integer >= 1")


@dataclass(frozen=True)
class ReportSettings:
    """An experiment's [report]: the tests' level ``alpha``; ``publish``, a folder (relative
    to the config) the report is copied to; ``recalibrate`` (``None``, ``"platt"``,
    ``"isotonic"``), a recalibration of the selected model fitted on its out-of-fold
    predictions only and reported as a row of its own; ``decision_thresholds``, the
    threshold probabilities of the net-benefit table (binary tasks)."""

    alpha: float = 0.05
    publish: str | None = None
    recalibrate: str | None = None
    decision_thresholds: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ConfigError(f"report alpha = {self.alpha!r}: expected a number between 0 and 1 (exclusive)")
        if self.publish is not None and (not isinstance(self.publish, str) or not self.publish.strip()):
            raise ConfigError(f"report publish = {self.publish!r}: expected a folder name")
        if self.recalibrate is not None and self.recalibrate not in RECALIBRATION_METHODS:
            raise ConfigError(f"report recalibrate = {self.recalibrate!r}: expected one of "
                              f"{', '.join(RECALIBRATION_METHODS)} (or leave it out)")
        problem = decision_thresholds_problem(self.decision_thresholds)
        if problem:
            raise ConfigError(f"report decision_thresholds = {self.decision_thresholds!r}: {problem}")
        # A list from TOML becomes a tuple: the settings stay hashable and compare equal.
        object.__setattr__(self, "decision_thresholds", tuple(float(t) for t in self.decision_thresholds))


def decision_thresholds_problem(v: Any) -> str | None:
    """Why ``v`` is not a list of distinct threshold probabilities in (0, 1) (None: it is)."""
    if not isinstance(v, (list, tuple)) or not v:
        return "expected a non-empty list of threshold probabilities, e.g. [0.1, 0.2, 0.3]"
    bad = [t for t in v if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1]
    if bad:
        return f"expected numbers between 0 and 1 (exclusive); {bad[0]!r} is not"
    if len(set(v)) != len(v):
        return "expected distinct thresholds (one is repeated)"
    return None


def _settings(run: Path) -> dict[str, Any]:
    """What the report needs of ``run/experiment.toml``, the types' defaults where it says nothing."""
    path = run / "experiment.toml"
    raw = tomllib.loads(path.read_text()) if path.is_file() else {}
    proto, report = raw.get("protocol", {}), raw.get("report", {})
    return {"raw": raw, "metric": proto.get("metric", Selection.metric),
            "top_k": int(proto.get("top_k", Selection.top_k)),
            "alpha": float(report.get("alpha", ReportSettings.alpha)), "name": raw.get("name", run.name),
            "recalibrate": report.get("recalibrate", ReportSettings.recalibrate),
            "decision_thresholds": tuple(report.get("decision_thresholds", ReportSettings.decision_thresholds))}


class RunFolderError(WorkbenchError, ValueError):
    """A run folder's file is missing what the report needs, or unreadable."""


def _inputs(run: Path) -> dict[str, Any]:
    """``run/inputs.json`` (what ``workbench run`` ran on); empty for a plain sweep folder."""
    path = run / "inputs.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path}: not valid JSON ({e}); re-run the experiment to rewrite it") from e


def _in_scope(records: pd.DataFrame, run: Path) -> tuple[pd.DataFrame, int]:
    """The records of the candidates the run's config names, and how many candidates it drops.

    ``inputs.json`` (written by ``workbench run``) names the blocks, heads and baselines
    of the config; a folder without it (a plain sweep) keeps every record.
    """
    scope = _inputs(run).get("scope")
    if not scope:
        return records, 0
    blocks, heads, baselines = set(scope["blocks"]), set(scope["heads"]), set(scope["baselines"])

    def wanted(r) -> bool:
        if r["kind"] == "baseline":
            return r["baseline"] in baselines
        used = [r["head"]] if r["kind"] == "head" else list(r["heads"] or [])
        # A hybrid ensemble's CNN members must be among the config's baselines too.
        voters = r.get("baselines")
        voters = list(voters) if isinstance(voters, (list, tuple)) else []
        return set(r["blocks"] or []) <= blocks and set(used) <= heads and set(voters) <= baselines

    keep = records.apply(wanted, axis=1).astype(bool)
    return records[keep].reset_index(drop=True), int(records.loc[~keep, "candidate"].nunique())


def _backbones(records: pd.DataFrame) -> list[str]:
    names = set()
    for blocks in records["blocks"]:
        for b in blocks or []:
            names.add(b.split(":", 1)[0].split("@", 1)[0])
    return sorted(names)


def _provenance(run: Path, store, records: pd.DataFrame, settings: dict[str, Any]) -> dict[str, Any]:
    versions: dict[str, set] = {}
    cache_keys: dict[str, str] = {}
    weights: set[str] = set()
    shown = set(records["key"])
    for r in store.records():  # the full records: the frame keeps metrics, not provenance
        if r["key"] not in shown:
            continue
        for k, x in (r.get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(x))
        cache_keys.update({k: v for k, v in (r.get("cache_keys") or {}).items() if v})
        if r.get("weights_id"):
            weights.add(r["weights_id"])
    weights = sorted(weights)
    ft_file = run / "finetuned.json"
    return {
        # The manifest as the config names it (relative), not where it lay on this machine.
        "inputs": {k: v for k, v in _inputs(run).items()
                   if k not in ("manifest_file", "finetuned_root", "cache_root")},
        "experiment": settings["name"],
        "config": settings["raw"],
        "protocol": store.protocol(),
        "seeds": sorted({int(s) for s in records["seed"].dropna()}),
        "records": int(len(records)),
        "candidates": int(records["candidate"].nunique()),
        "cache_keys": dict(sorted(cache_keys.items())),
        "finetuned_features": json.loads(ft_file.read_text()) if ft_file.is_file() else {},
        "baseline_weights_ids": weights,
        "package_versions": {k: sorted(v) for k, v in sorted(versions.items())},
    }


def _gradcam(run: Path, store: ResultStore, best_baseline: str | None, folder: Path) -> tuple[list[Path], str | None]:
    """Grad-CAM grid of the best baseline's test-split network, from the maps the run saved.

    Returns the grid's paths and the note for the report (None: nothing to say).
    """
    if best_baseline is None:
        return [], None
    test = [r for r in store.current_records() if r["candidate"] == best_baseline and r["fold"] == "test"]
    if not test or not test[-1].get("weights_id") or not _inputs(run):
        return [], f"Grad-CAM grid skipped: no test network or manifest recorded for {best_baseline}"
    rec = test[-1]
    network = f"{rec['backbone']}@{rec['weights_id']}"
    path = cam_path(run, network)
    if not path.is_file():
        return [], (f"Grad-CAM grid skipped: no saved maps of {network} in this run folder "
                    f"({path.relative_to(run).as_posix()}); rerun `workbench run` to compute them")
    cams = CamSet.load(path)
    figure = write_cam_folder(cams, folder, grid_max=GRID_MAX)
    share = cams.peak_share(store.protocol().get("positive"))
    note = (f"Grad-CAM ({network}, the best baseline's test-split network): the map peaks inside the lesion "
            f"box for {share:.0%} of the correctly classified images shown that have a box") if share == share else None
    return figure, note


def _duplicate_notes(dup: dict[str, Any] | None, shown: int = 10) -> list[str]:
    """The report's lines on byte-identical images under several ids (``inputs.json``)."""
    if not dup or not dup.get("groups"):
        return []
    groups = dup["groups"]
    policy, dropped = dup.get("policy", "warn"), dup.get("dropped") or []

    def one(g: dict[str, Any]) -> str:
        copies = " = ".join(f"{i} ({lab}, {sp or 'no split'})"
                            for i, lab, sp in zip(g["ids"], g["labels"], g["splits"]))
        why = [w for w, on in (("labels differ", g.get("conflicting_labels")),
                               ("crosses train/test", g.get("crosses_test"))) if on]
        return copies + (f": {', '.join(why)}" if why else "")

    listed = "; ".join(one(g) for g in groups[:shown]) + (f"; ... ({len(groups) - shown} more)"
                                                          if len(groups) > shown else "")
    action = (f"dropped from the run: {', '.join(dropped)}" if policy == "drop" and dropped
              else "kept as they are (duplicates = \"warn\"; \"drop\" removes the conflicting copies)")
    return [f"duplicate images: {len(groups)} image(s) stored under more than one id with byte-identical "
            f"content: {listed}; {action}"]


def _method_text(result, protocol: dict[str, Any], metric: str, alpha: float, *, binary: bool) -> str:
    """The report's paragraph on protocol, thresholds, intervals and tests, as they were applied."""
    g = result.grouping or {}
    has_base = len(result.baselines) > 0
    repeats = int(protocol.get("repeats", 1))
    if repeats > 1:
        text = (f"Ranking metric: **{metric}**, mean over {repeats} × {protocol['cv']} = {repeats * protocol['cv']} "
                f"outer CV folds of the training split ({repeats} repeats of {protocol['cv']}-fold CV, each with its "
                f"own seeded partition, shared by every candidate and baseline)")
    else:
        text = f"Ranking metric: **{metric}**, mean over {protocol['cv']} outer CV folds of the training split"
    if g.get("cv_groups"):
        text += (f", grouped by the manifest's `group` column ({g['cv_groups']} groups, {g['cv_images']} images, "
                 f"{g['cv_images'] / g['cv_groups']:.2f} images per group on average: a group never straddles "
                 f"folds)")
    text += "; selection by CV only."
    if binary:
        text += " Thresholds: Youden's index on out-of-fold predictions, applied unchanged to test."
        if has_base:
            text += (" End-to-end baselines have one network per fold, each calibrated its own way, so a cut-off "
                     "on their pooled scores fits none of them: each fold network's Youden threshold is taken as a "
                     "quantile of its own out-of-fold scores, the quantiles are pooled (q), and the test network's "
                     "threshold is the q-quantile of its scores on its own validation split (held out from its "
                     "training, drawn like the training split), so it does not move with the test split's class "
                     "balance; no test image is used to set it.")
    kinds = set(result.ranking["kind"]) if "kind" in result.ranking else set()
    if binary and "vote-hard" in kinds:
        text += (" Hard votes: each member votes at its own Youden threshold, chosen on its inner out-of-fold "
                 "predictions within the CV fold's training rows (on its CV out-of-fold predictions for test); a "
                 "tie goes to the side of the members' mean margin over their thresholds.")
    if "stack" in kinds:
        text += (" Stacks: a logistic regression over the members' probabilities, fitted on the members' inner "
                 "out-of-fold predictions within the CV fold's training rows (on their CV out-of-fold predictions "
                 "for test), never on predictions of members that trained on the rows it scores.")
    names = result.ranking["candidate"].astype(str) if "candidate" in result.ranking else pd.Series([], dtype=str)
    if names.str.contains("+CNN ", regex=False).any():  # a hybrid's label names its CNN member
        text += (" Hybrid ensembles add each end-to-end baseline's fold network as a member, from its stored "
                 "predictions on the same folds; in hard votes a network votes at the Youden threshold on its own "
                 "validation split (held out from its training, used for early stopping); a hybrid stack is fitted "
                 "on all members' outer CV out-of-fold predictions for test, and on a CV fold on the rows of that "
                 "fold network's validation split only (the heads' inner out-of-fold predictions there and the "
                 "network's validation scores), since no inner-fold networks exist.")
    if repeats > 1:
        text += (" Stacks and hard-vote thresholds for test pool the out-of-fold predictions of every repeat "
                 "(each training image counted once per repeat).")
    text += (f" CV intervals: {100 * (1 - alpha):.0f} % t intervals with the Nadeau–Bengio correction "
             "(variance × (1/J + n_test/n_train) over the J folds, which overlap); p CV: the corrected resampled "
             "t-test of the per-fold ranking metric against the best baseline's, paired by fold.")
    pct = f"{100 * (1 - alpha):.0f} %"
    if g.get("clustered"):
        text += (f" The test split holds {g['test_images']} images in {g['test_groups']} groups (up to "
                 f"{g['test_max_per_group']} images per group; {g['test_images'] / g['test_groups']:.2f} on "
                 f"average), which are not independent: intervals are {pct} percentile cluster bootstrap "
                 f"intervals over groups ({N_BOOT} resamples, seed 0), and p-values against the best "
                 f"non-degenerate baseline by CV ({result.best_baseline or 'none'}) on the same test images come "
                 f"from a cluster bootstrap of the paired difference (AUC, accuracy), Holm-adjusted across the "
                 f"table.")
    else:
        text += (f" Intervals: {pct} Wilson (proportions), DeLong (AUC). p-values against the best "
                 + ("non-degenerate " if result.degenerate and has_base else "")
                 + f"baseline by CV ({result.best_baseline or 'none'}) on the same test images: DeLong (AUC), exact "
                   f"McNemar (accuracy), Holm-adjusted across the table.")
    if result.degenerate:
        text += (f" Degenerate models (at least {ONE_CLASS_SHARE:.0%} of their predictions in one class, or a CV "
                 f"AUC ≤ {CHANCE_AUC:.2f}) are marked ‡, never counted as best, never the baseline compared "
                 f"against (named below).")
    return text


def _tables(records: pd.DataFrame, result, metric: str, classes: list[str]) -> list:
    """The paper tables (per backbone, concatenations, ensembles, per class, comparison); the
    comparison last."""
    bad = result.degenerate
    tables = [T.backbone_table(records, b, metric, degenerate=bad) for b in _backbones(records)]
    if (records["size"] >= 2).any():
        tables.append(T.concatenation_table(records, metric, degenerate=bad))
    if records["kind"].isin(["vote-hard", "vote-soft", "stack"]).any():
        tables.append(T.ensemble_table(records, metric, degenerate=bad))
    if len(classes) > 2:  # per-class (one-vs-rest) and macro figures of the models compared
        shown = list(dict.fromkeys(result.selected + list(result.baselines["candidate"])))
        tables.append(T.per_class_table(records, shown, classes))
    if result.external:  # external test sets: beside the internal test split, same thresholds
        tables.append(T.external_table(result))
    if result.stability is not None:  # repeated CV: each repeat's ranking alone
        tables.append(T.stability_table(result.stability))
    tables.append(T.comparison_table(result.comparison))
    return tables


#: Tables shown in ``report.md`` under the comparison (all of them are under ``tables/``).
_REPORT_MD_TABLES = ("external", "stability", "calibration", "net_benefit", "segmentation")

#: How many of the best candidates by CV the CD diagram ranks (with every baseline).
CD_CANDIDATES = 10


def _evidence(store: ResultStore, records: pd.DataFrame, result, s: dict[str, Any], tmp: Path
              ) -> tuple[list, list[Path]]:
    """Calibration, decision curves and the CV critical-difference diagram: tables, figures
    (notes go to ``result.notes``)."""
    tables, figs, notes = calibration_section(store, records, result, alpha=s["alpha"], recalibrate=s["recalibrate"],
                                              thresholds=s["decision_thresholds"], tables_dir=None,
                                              figures_dir=tmp / "figures")
    shown = list(dict.fromkeys(list(result.ranking["candidate"].head(CD_CANDIDATES))
                               + list(result.baselines["candidate"])))
    cd_figs, cd_notes = cv_cd_section(records, s["metric"], shown, tmp / "figures", alpha=s["alpha"])
    # Y-Net baselines: Dice/IoU table from the records; the contour grid re-runs the test
    # network on the few images it shows (the one place the report loads a network).
    inputs = _inputs(store.root)
    seg_tables, seg_figs, seg_notes = segmentation_section(
        store, records, result, alpha=s["alpha"], manifest=inputs.get("manifest_file"),
        finetuned_root=inputs.get("finetuned_root"), tables_dir=None, figures_dir=tmp / "figures")
    result.notes.extend(notes + cd_notes + seg_notes)
    return tables + seg_tables, figs + cd_figs + seg_figs


def _figures(run: Path, store: ResultStore, records: pd.DataFrame, result, metric: str, folder: Path) -> list[Path]:
    """ROC curves (binary tasks), the CV heat map and the Grad-CAM grid; notes go to ``result.notes``."""
    classes, positive = list(store.protocol()["classes"]), store.protocol().get("positive")
    figs: list[Path] = []
    if positive is not None and len(classes) == 2:
        shown = list(dict.fromkeys(result.selected + list(result.baselines["candidate"])))
        curves = F.roc_curves_from_store(store, shown, classes.index(positive), fold="test")
        figs += F.roc_figure(curves, folder / "roc_test", title=f"ROC on the test split ({positive})")
    figs += F.heatmap_figure(records, metric, folder / f"heatmap_cv_{metric}",
                             title=f"CV mean {metric} by subset and head")
    # Grad-CAM explains a network, degenerate or not: with no sound baseline to compare
    # against, the top baseline by CV is still shown, and the note says it is degenerate.
    cam_of = result.best_baseline
    if cam_of is None and len(result.baselines):
        cam_of = str(result.baselines["candidate"].iloc[0])
    cam_paths, cam_note = _gradcam(run, store, cam_of, folder / "gradcam")
    if cam_note and cam_of != result.best_baseline:
        cam_note += f" ({cam_of} is degenerate: {result.degenerate.get(cam_of, 'see the comparison table')})"
    if cam_note:
        result.notes.append(cam_note)
    return figs + cam_paths


def _report_md(settings: dict[str, Any], result, protocol: dict[str, Any], tables: list, figs: list[Path],
               out: Path) -> str:
    """``report.md``: method, selection, comparison, notes and links."""
    classes, positive = list(protocol["classes"]), protocol.get("positive")
    binary = positive is not None and len(classes) == 2
    lines = [
        f"# {settings['name']}: report",
        "",
        _method_text(result, protocol, settings["metric"], settings["alpha"], binary=binary),
        "",
        f"Selected: **{result.selected[0] if result.selected else 'none'}**; top {len(result.selected)} by CV: "
        + ", ".join(result.selected),
        "",
        T.to_markdown(tables[-1]),  # the comparison
        "",
        *[part for t in tables if t.key in _REPORT_MD_TABLES for part in (T.to_markdown(t), "")],
        *[f"- {n}" for n in result.notes],
        "",
        "Tables: " + ", ".join(f"[{t.key}](tables/{t.key}.md)" for t in tables),
        "",
        "Figures: " + ", ".join(f"[{p.name}]({p.relative_to(out).as_posix()})" for p in figs if p.suffix == ".png"),
        "",
        "Provenance (config, seeds, protocol, cache keys, weights ids, versions): [provenance.json](provenance.json)",
        "",
    ]
    return "\n".join(lines)


def _reported_search(run: Path, store: ResultStore, include: tuple[str, ...] = ()
                     ) -> tuple[Any, pd.DataFrame, dict[str, Any], int]:
    """The search as the report runs it: the config's records in scope, its metric, top-k, alpha."""
    records = store.frame()
    if records.empty:
        raise RunFolderError(f"no records in {run}: run the experiment (or a sweep) first")
    records, left_out = _in_scope(records, run)
    s = _settings(run)
    result = search(store, s["metric"], top_k=s["top_k"], alpha=s["alpha"], records=records, include=include)
    return result, records, s, left_out


def reported_search(run: str | Path, include: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """``(SearchResult, settings)`` of ``run`` exactly as its report computes them.

    ``include`` adds candidates to the comparison (see :func:`~workbench.search.select.search`);
    ``settings`` holds the report's ``metric``, ``top_k``, ``alpha`` and ``name``.
    """
    run = Path(run)
    result, _, s, _ = _reported_search(run, ResultStore(run), include)
    return result, {k: v for k, v in s.items() if k != "raw"}


def write_report(run: str | Path) -> Path:
    """Write ``run/report/``: ``report.md``, ``tables/``, ``figures/``, ``provenance.json``, ``ranking.csv``.

    Reads the run folder's files only (records, predictions, the config and inputs
    ``workbench run`` recorded, the Grad-CAM maps it saved); the same files give the
    same bytes.
    """
    run = Path(run)
    store = ResultStore(run)
    result, records, s, left_out = _reported_search(run, store)
    if result.stability is not None:  # repeated CV only: a one-repeat report is unchanged
        result.notes.append(result.stability.note())
    if left_out:
        result.notes.append(f"{left_out} candidates in this folder's records are outside the config's features, "
                            f"heads and baselines (an earlier config's); they are not shown")
    result.notes += _duplicate_notes(_inputs(run).get("duplicates"))
    out = run / "report"
    # Built beside the old report and swapped in whole: no file of an earlier report (an
    # overlay of an image no longer shown) survives, and a crash leaves the old one.
    tmp = run / f".report-{uuid.uuid4().hex}.part"
    (tmp / "tables").mkdir(parents=True)
    (tmp / "figures").mkdir(parents=True)
    try:
        tables = _tables(records, result, s["metric"], list(store.protocol()["classes"]))
        figs = _figures(run, store, records, result, s["metric"], tmp / "figures")
        more_tables, more_figs = _evidence(store, records, result, s, tmp)
        # The comparison stays last: report.md shows it.
        tables = tables[:-1] + more_tables + tables[-1:]
        figs += more_figs
        T.write_tables(tables, tmp / "tables")
        prov = _provenance(run, store, records, s)
        atomic_write(tmp / "provenance.json",
                     (json.dumps(prov, indent=1, sort_keys=True, default=str) + "\n").encode())
        # (its links are relative to the report folder, so they hold after the swap)
        atomic_write(tmp / "report.md", _report_md(s, result, store.protocol(), tables, figs, tmp).encode())
        atomic_write(tmp / "ranking.csv", result.ranking.to_csv(index=False, float_format="%.6g").encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_folder(tmp, out)
    return out


def _replace_folder(new: Path, dest: Path) -> None:
    """Put folder ``new`` in place of ``dest`` (two renames; the old one removed after)."""
    old = dest.with_name(f".{dest.name}-{uuid.uuid4().hex}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)

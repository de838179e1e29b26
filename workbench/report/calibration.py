"""The report's calibration and decision-curve section (binary tasks).

For every model the comparison reports (selected, top-k, requested, baselines; not the
optimistic best-on-test row): calibration on its pooled out-of-fold CV predictions (all
repeats) and on the test split (Brier score, calibration intercept and slope with Wald
intervals, ECE, :mod:`workbench.evaluation.calibration`), a reliability diagram, and the
net benefit of biopsying at ``p >= t`` on the test split against "biopsy all" and
"biopsy none" (:mod:`workbench.evaluation.decision`), as a table at chosen thresholds and
as a decision curve. With ``recalibrate``, the selected model also appears recalibrated
(Platt or isotonic): the map is fitted on its out-of-fold predictions only and applied
unchanged to its test predictions; its out-of-fold figures are cross-fitted (each CV fold
recalibrated by a map fitted on the other folds of its repeat), so no figure of the
recalibrated row is computed on the rows its map was fitted on.

Like the rest of the report, everything is a function of the run folder's files: the
same records give byte-identical tables and figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from workbench.evaluation.calibration import (RECALIBRATION_METHODS, CalibrationError, Recalibrator, brier_score,
                                              calibration_summary, expected_calibration_error, reliability_curve)
from workbench.evaluation.decision import checked_thresholds, net_benefit, net_benefit_treat_all, \
    net_benefit_treat_none
from workbench.evaluation.settings import TEST_FOLD, fold_repeat, fold_sort_key, is_cv_fold
from workbench.evaluation.stats import clustered
from workbench.evaluation.store import ResultStore
from workbench.search.select import run_groups
from workbench.report.figures import _new_figure, _rc, curve_styles, save_figure, unit_square
from workbench.report.tables import DASH, OPTIMISTIC_ROLE, Cell, Table, _num, fmt, fmt_signed, write_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.search.select import SearchResult

__all__ = ["BINARY_ONLY_NOTE", "CURVE_THRESHOLDS", "ModelPredictions", "calibration_section", "calibration_table",
           "decision_curve_axes", "decision_curve_figure", "fmt_signed_interval", "net_benefit_table",
           "reliability_axes", "reliability_figure"]

#: Threshold probabilities of the decision curve (the figure; the table has its own).
CURVE_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)
#: Bins of the reliability diagrams and the ECE.
N_BINS = 10
BINARY_ONLY_NOTE = "Calibration and decision curves are for binary tasks; this run has {n} classes, so none are shown."
METHOD_LABEL = {"platt": "Platt", "isotonic": "isotonic"}
BASELINE_NOTE = ("Baselines have one network per CV fold, each calibrated its own way: their out-of-fold figures "
                 "and reliability curves pool the scores of different networks (they describe no single model); "
                 "their test figures are the test network's.")


@dataclass
class ModelPredictions:
    """One reported row: its out-of-fold predictions per CV fold and its test predictions.

    ``oof`` maps each CV fold name to ``(y, p)`` (0/1 truth, probability of the positive
    class); ``test`` is the test split's ``(y, p)`` or None; ``kind`` ``"baseline"`` draws
    it in the baselines' style.
    """

    label: str
    candidate: str
    role: str
    kind: str
    oof: dict[str, tuple[np.ndarray, np.ndarray]]  # CV fold -> (y 0/1, p of the positive class)
    test: tuple[np.ndarray, np.ndarray] | None
    # The image ids behind each fold's and the test split's predictions (same order), so
    # intervals can cluster over groups (patients); empty / None where unknown.
    oof_ids: dict[str, np.ndarray] = field(default_factory=dict)
    test_ids: np.ndarray | None = None

    @property
    def baseline(self) -> bool:
        return self.kind == "baseline"

    def pooled_oof(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.oof:
            return None
        folds = sorted(self.oof, key=fold_sort_key)
        return (np.concatenate([self.oof[f][0] for f in folds]), np.concatenate([self.oof[f][1] for f in folds]))

    def pooled_oof_ids(self) -> np.ndarray | None:
        """The ids of :meth:`pooled_oof`'s rows (None when any fold's are unknown)."""
        if not self.oof or set(self.oof_ids) != set(self.oof):
            return None
        return np.concatenate([self.oof_ids[f] for f in sorted(self.oof, key=fold_sort_key)])


# ---- reading -----------------------------------------------------------------------------


def _reported(result: "SearchResult") -> list[tuple[str, str, str]]:
    """``(candidate, role, kind)`` of the comparison's rows, the optimistic one left out, each once."""
    comp = result.comparison
    if comp is None or comp.empty:
        return []
    out: dict[str, tuple[str, str, str]] = {}
    for _, r in comp.iterrows():
        cand = str(r["candidate"])
        if r["role"] == OPTIMISTIC_ROLE or cand in out:
            continue
        kind = r["kind"] if "kind" in comp.columns and isinstance(r["kind"], str) else ""
        out[cand] = (cand, str(r["role"]), kind)
    return list(out.values())


def _model(store: ResultStore, recs: list[dict[str, Any]], cand: str, role: str, kind: str,
           pos: int) -> ModelPredictions:
    """The predictions of ``cand`` from its records (the last record of a fold wins)."""
    by_fold = {str(r["fold"]): r for r in recs}
    oof, test, oof_ids, test_ids = {}, None, {}, None
    for fold, rec in sorted(by_fold.items(), key=lambda kv: fold_sort_key(kv[0])):
        if not (is_cv_fold(fold) or fold == TEST_FOLD):
            continue  # external test sets are not part of this section
        pr = store.predictions(rec)
        proba = np.asarray(pr["proba"], dtype=float)
        if proba.ndim != 2 or proba.shape[1] <= pos:
            raise CalibrationError(f"{store.root / rec['predictions']}: probabilities of shape {proba.shape} "
                                   f"have no column {pos} for the positive class")
        # Clipped: a softmax or a vote can land a rounding error outside [0, 1] (1 + 2e-16).
        yp = ((np.asarray(pr["y_true"]) == pos).astype(int), np.clip(proba[:, pos], 0.0, 1.0))
        ids = np.asarray(pr["ids"]).astype(str) if "ids" in pr else None
        if fold == TEST_FOLD:
            test, test_ids = yp, ids
        else:
            oof[fold] = yp
            if ids is not None:
                oof_ids[fold] = ids
    return ModelPredictions(cand, cand, role, kind or str(recs[0].get("kind", "")), oof, test, oof_ids, test_ids)


def _recalibrated(m: ModelPredictions, method: str) -> ModelPredictions:
    """``m`` recalibrated: test by the map fitted on all its out-of-fold predictions, each CV
    fold by the map fitted on the other folds of its repeat (cross-fitted)."""
    pooled = m.pooled_oof()
    if pooled is None:
        raise CalibrationError(f"{m.candidate}: no out-of-fold predictions to fit a {method} map on")
    full = Recalibrator(method).fit(*pooled)
    test = None if m.test is None else (m.test[0], full.transform(m.test[1]))
    oof = {}
    for fold, (y, p) in m.oof.items():
        others = [f for f in m.oof if f != fold and fold_repeat(f) == fold_repeat(fold)]
        try:
            r = Recalibrator(method).fit(np.concatenate([m.oof[f][0] for f in others]),
                                         np.concatenate([m.oof[f][1] for f in others]))
        except CalibrationError:  # these folds alone cannot fit it: no cross-fitted figures
            oof = {}
            break
        oof[fold] = (y, r.transform(p))
    return ModelPredictions(f"{m.candidate} ({METHOD_LABEL[method]})", m.candidate,
                            f"{m.role}, recalibrated ({METHOD_LABEL[method]})", m.kind, oof, test,
                            {f: i for f, i in m.oof_ids.items() if f in oof}, m.test_ids)


def _summary(yp: tuple[np.ndarray, np.ndarray] | None, alpha: float,
             groups: Sequence[str] | None = None) -> dict[str, float] | None:
    if yp is None:
        return None
    y, p = yp
    if np.unique(y).size < 2:  # one class only: no intercept, slope or AUC; Brier and ECE still hold
        return {"n": int(y.size), "brier": brier_score(y, p), "ece": expected_calibration_error(y, p, N_BINS)}
    s = calibration_summary(y, p, alpha=alpha, n_bins=N_BINS, groups=groups)
    s["auc"] = float(roc_auc_score(y, p))
    return s


# ---- tables ------------------------------------------------------------------------------


def fmt_signed_interval(v: float | None, low: float | None, high: float | None) -> str:
    """``−0.485 (−1.085, 0.114)``: an estimate that may be negative, with its interval; the
    estimate alone without one, ``–`` when undefined."""
    if v is None or not np.isfinite(v):
        return DASH
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return fmt_signed(v)
    return f"{fmt_signed(v)} ({fmt_signed(low)}, {fmt_signed(high)})"


def _repeats(models: Sequence[ModelPredictions]) -> int:
    return max((fold_repeat(f) + 1 for m in models for f in m.oof), default=1)


def _groups_of(ids: np.ndarray | None, groups: Mapping[str, str] | None) -> list[str] | None:
    """The group of each id (``""``: its own), or None without ids or groups."""
    if ids is None or not groups:
        return None
    return [groups.get(str(i), "") for i in ids]


def calibration_table(models: Sequence[ModelPredictions], *, alpha: float = 0.05, key: str = "calibration",
                      notes: Sequence[str] = (), groups: Mapping[str, str] | None = None) -> Table:
    """Brier score, intercept, slope and ECE of each model, out-of-fold and on test (and test AUC).

    ``groups`` (image id -> group, e.g. the patient): where a group holds several of a
    column's images, that column's intercept and slope intervals are cluster-robust over
    the groups (images of one patient are not independent cases).
    """
    pct = f"{100 * (1 - alpha):.0f} %"
    repeats = _repeats(models)
    robust: set[str] = set()  # the parts ("OOF", "test") whose intervals clustered
    columns = ["Model", "Role", "OOF Brier", "OOF intercept", "OOF slope", "OOF ECE",
               "Test AUC", "Test Brier", "Test intercept", "Test slope", "Test ECE"]
    rows = []
    for m in models:
        cells = [Cell(m.label), Cell(m.role)]
        for part in ("oof", "test"):
            g = _groups_of(m.pooled_oof_ids() if part == "oof" else m.test_ids, groups)
            s = _summary(m.pooled_oof() if part == "oof" else m.test, alpha, g) or {}
            if part == "test":
                cells.append(Cell(fmt(s.get("auc")), _num(s.get("auc"))))
            cells.append(Cell(fmt(s.get("brier")), _num(s.get("brier"))))
            # With repeats every training image is pooled once per repeat: no independent
            # cases, so no Wald interval (the estimate stands alone).
            interval = part == "test" or repeats == 1
            if interval and clustered(g):
                robust.add("OOF" if part == "oof" else "test")
            for what in ("intercept", "slope"):
                low, high = (s.get(f"{what}_low"), s.get(f"{what}_high")) if interval else (None, None)
                cells.append(Cell(fmt_signed_interval(s.get(what), low, high), _num(s.get(what))))
            cells.append(Cell(fmt(s.get("ece")), _num(s.get("ece"))))
        rows.append(cells)
    all_notes = [
        "OOF: the pooled out-of-fold predictions of every outer CV fold"
        + (f" of all {repeats} repeats (each training image {repeats} times)" if repeats > 1 else "")
        + "; test: the test split. Probabilities of the positive class.",
        "Brier: mean squared error of the probabilities (lower is better). Intercept: calibration-in-the-large, "
        "logistic regression of the outcome with logit(p) as offset (0 is ideal; below 0, risks over-estimated). "
        "Slope: of logit(p) in a logistic regression of the outcome on it (1 is ideal; below 1, predictions too "
        f"extreme; – where p separates the classes). In parentheses: {pct} Wald intervals"
        + (" (test only: the repeats' pooled predictions are not independent cases)" if repeats > 1 else "")
        + (f"; {' and '.join(p for p in ('OOF', 'test') if p in robust)}: cluster-robust (sandwich) over the "
           "groups, since a group's images are not independent cases" if robust else "")
        + f". ECE: |mean p − observed rate| over {N_BINS} equal-width bins, weighted by the bin's share of "
          "predictions.",
        *notes,
    ]
    return Table("Calibration of the selected models and the baselines, out-of-fold and on the test split",
                 columns, rows, [n for n in all_notes if n], key)


def net_benefit_table(models: Sequence[ModelPredictions], thresholds: Sequence[float], *, key: str = "net_benefit",
                      notes: Sequence[str] = ()) -> Table:
    """Net benefit on the test split at ``thresholds``: models, then biopsy all and biopsy none."""
    t = checked_thresholds(thresholds)
    columns = ["Strategy", "Role", *[f"t = {fmt_t(x)}" for x in t]]
    rows, y_any = [], None
    for m in models:
        if m.test is None:
            rows.append([Cell(m.label), Cell(m.role), *[Cell(DASH, float("nan")) for _ in t]])
            continue
        y_any = m.test[0]
        nb = net_benefit(*m.test, t)
        rows.append([Cell(m.label), Cell(m.role), *[Cell(fmt_signed(v), float(v)) for v in nb]])
    rule = len(rows)
    all_nb = net_benefit_treat_all(y_any, t) if y_any is not None else np.full(t.size, np.nan)
    rows.append([Cell("biopsy all"), Cell("default strategy"), *[Cell(fmt_signed(v), float(v)) for v in all_nb]])
    rows.append([Cell("biopsy none"), Cell("default strategy"),
                 *[Cell(fmt_signed(v), float(v)) for v in net_benefit_treat_none(t)]])
    prev = f" (prevalence of the positive class {y_any.mean():.3f}, n = {y_any.size})" if y_any is not None else ""
    all_notes = [
        f"Net benefit on the test split{prev} of recommending a biopsy when the model's probability is at least "
        "the threshold probability t: TP/n − FP/n · t/(1 − t) (Vickers & Elkin 2006). Biopsy all: prevalence − "
        "(1 − prevalence) · t/(1 − t); biopsy none: 0. A model is worth using at t only where it beats both.",
        *notes,
    ]
    return Table("Net benefit on the test split at chosen threshold probabilities", columns, rows,
                 [n for n in all_notes if n], key, rules=(rule,))


def fmt_t(t: float) -> str:
    """A threshold probability as written in the table's header (``0.05``, ``0.1``)."""
    return f"{float(t):.4g}"


# ---- figures -----------------------------------------------------------------------------


def _styles(models: Sequence[ModelPredictions]) -> list[dict[str, Any]]:
    return curve_styles(["baseline" if m.baseline else "candidate" for m in models])


def _legend_below(fig: "Figure", axes: Sequence[Any], ncol: int = 1) -> None:
    """The legend under the axes and their labels (as the ROC figure has it), hiding no curve."""
    renderer = fig.canvas.get_renderer()
    below = min(ax.get_tightbbox(renderer).y0 for ax in axes)
    y = fig.transFigure.inverted().transform((0, below - 4 / 72 * fig.dpi))[1]
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, y), bbox_transform=fig.transFigure,
               ncol=ncol, frameon=True, framealpha=1.0, edgecolor="0.8", handlelength=3.2, borderaxespad=0.0)


def reliability_axes(models: Sequence[ModelPredictions], *, n_bins: int = N_BINS) -> "Figure":
    """Reliability diagrams, out-of-fold (left) and test (right): each model's observed rate
    against its mean predicted probability per bin
    (:func:`~workbench.evaluation.calibration.reliability_curve`), and the diagonal of
    perfect calibration. Lines carry ``gid`` ``"reliability:<oof|test>:<label>"``.
    """
    import matplotlib

    styles = _styles(models)
    with matplotlib.rc_context(_rc()):
        fig = _new_figure((8.4, 4.2))
        axes = fig.subplots(1, 2)
        for ax, part, title in zip(axes, ("oof", "test"), ("Out-of-fold (CV, pooled)", "Test split")):
            ax.plot([0, 1], [0, 1], linestyle=(0, (1, 3)), color="0.7", linewidth=0.9, label="perfect calibration",
                    gid="diagonal", zorder=1)
            for m, style in zip(models, styles):
                yp = m.pooled_oof() if part == "oof" else m.test
                if yp is None:
                    continue
                c = reliability_curve(*yp, n_bins=n_bins)
                ax.plot(c.mean_predicted, c.observed, label=m.label, clip_on=False, gid=f"reliability:{part}:{m.label}",
                        zorder=2 if m.baseline else 3, **style)
            unit_square(ax)
            ax.set_xlabel("Mean predicted probability (bin)")
            ax.set_title(title)
        axes[0].set_ylabel("Observed share of positives (bin)")
        # One legend for both panels: the first panel holds every model with OOF predictions;
        # a model with test predictions only would be missing, so take the fuller panel.
        full = max(axes, key=lambda a: len(a.get_lines()))
        _legend_below(fig, [full, *[a for a in axes if a is not full]], ncol=2)
    return fig


def reliability_figure(models: Sequence[ModelPredictions], path: str | Path, *, n_bins: int = N_BINS) -> list[Path]:
    """:func:`reliability_axes` saved as PNG and PDF (:func:`~workbench.report.figures.save_figure`)."""
    return save_figure(reliability_axes(models, n_bins=n_bins), path)


def decision_curve_axes(models: Sequence[ModelPredictions], thresholds: np.ndarray = CURVE_THRESHOLDS) -> "Figure":
    """Net benefit on the test split against the threshold probability, with biopsy all and
    biopsy none; the y-axis runs from a little below 0 to a little above the prevalence
    (the most any strategy can gain), so the steep fall of "biopsy all" does not flatten
    the curves that matter. Lines carry ``gid`` ``"decision:<label>"`` (``biopsy all``,
    ``biopsy none`` included).
    """
    import matplotlib

    tested = [m for m in models if m.test is not None]
    if not tested:
        raise CalibrationError("no model has test predictions: no decision curve to draw")
    y = tested[0].test[0]
    prevalence = float(y.mean())
    styles = _styles(models)
    with matplotlib.rc_context(_rc()):
        fig = _new_figure((5.6, 4.2))
        ax = fig.add_subplot()
        ax.plot(thresholds, net_benefit_treat_all(y, thresholds), color="0.55", linewidth=1.2, linestyle="-",
                label="biopsy all", gid="decision:biopsy all", zorder=1)
        ax.plot(thresholds, net_benefit_treat_none(thresholds), color="0.0", linewidth=0.9,
                linestyle=(0, (1, 1.5)), label="biopsy none", gid="decision:biopsy none", zorder=1)
        for m, style in zip(models, styles):
            if m.test is None:
                continue
            ax.plot(thresholds, net_benefit(*m.test, thresholds), label=m.label, markevery=0.1,
                    gid=f"decision:{m.label}", zorder=2 if m.baseline else 3, **style)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.25 * prevalence - 0.01, 1.1 * prevalence + 0.01)
        ax.set_xticks(np.linspace(0, 1, 11))
        ax.grid(True, color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlabel("Threshold probability (biopsy if p ≥ t)")
        ax.set_ylabel("Net benefit")
        ax.set_title(f"Decision curves on the test split (prevalence {prevalence:.2f})")
        _legend_below(fig, [ax], ncol=2)
    return fig


def decision_curve_figure(models: Sequence[ModelPredictions], path: str | Path,
                          thresholds: np.ndarray = CURVE_THRESHOLDS) -> list[Path]:
    """:func:`decision_curve_axes` saved as PNG and PDF."""
    return save_figure(decision_curve_axes(models, thresholds), path)


# ---- notes -------------------------------------------------------------------------------


def _ranges(mask: np.ndarray, t: np.ndarray) -> list[str]:
    """Contiguous runs of ``mask`` as ``"0.05–0.40"`` (one threshold: ``"0.05"``)."""
    out, start = [], None
    for i, on in enumerate(list(mask) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            a, b = t[start], t[i - 1]
            out.append(f"{a:.2f}" if a == b else f"{a:.2f}{DASH}{b:.2f}")
            start = None
    return out


def _best_calibrated_note(models: Sequence[ModelPredictions], alpha: float) -> str | None:
    scored = [(s["ece"], m.label, s) for m in models if (s := _summary(m.test, alpha)) is not None]
    if not scored:
        return None
    ece, label, s = min(scored, key=lambda x: (round(x[0], 12), x[1]))
    return (f"Best calibrated on the test split (lowest ECE): {label} (ECE {fmt(ece)}, Brier {fmt(s['brier'])}, "
            f"intercept {fmt_signed(s.get('intercept'))}, slope {fmt_signed(s.get('slope'))}).")


def _net_benefit_note(m: ModelPredictions) -> str | None:
    """Where ``m`` beats both default strategies on the test split (on the curve's thresholds)."""
    if m.test is None:
        return None
    t = CURVE_THRESHOLDS
    nb = net_benefit(*m.test, t)
    beats = nb > np.maximum(net_benefit_treat_all(m.test[0], t), 0.0) + 1e-12
    where = _ranges(beats, t)
    if not where:
        return (f"{m.label}: its net benefit on the test split exceeds neither biopsy all nor biopsy none at any "
                f"threshold probability from {t[0]:.2f} to {t[-1]:.2f}.")
    return (f"{m.label}: net benefit on the test split above both biopsy all and biopsy none for threshold "
            f"probabilities {', '.join(where)} (of {t[0]:.2f}{DASH}{t[-1]:.2f} in steps of 0.01).")


# ---- the section -------------------------------------------------------------------------


def calibration_section(store: ResultStore, records: pd.DataFrame, result: "SearchResult", *, alpha: float = 0.05,
                        recalibrate: str | None = None, thresholds: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
                        tables_dir: str | Path | None, figures_dir: str | Path) -> tuple[list[Table], list[Path], list[str]]:
    """Calibration and decision-curve tables, figures and notes of a run's reported models.

    Parameters
    ----------
    store
        The run folder's store.
    records
        The store's frame in the report's scope (its ``key`` column limits the records read).
    result
        The search; its ``comparison`` names the models (the optimistic row is left out).
    alpha
        1 − level of the intercept and slope intervals.
    recalibrate
        ``None``, ``"platt"`` or ``"isotonic"``: add the selected model recalibrated on its
        out-of-fold predictions only.
    thresholds
        Threshold probabilities of the net-benefit table.
    tables_dir, figures_dir
        Where ``calibration.{md,tex,csv}``, ``net_benefit.{md,tex,csv}`` and
        ``reliability.{png,pdf}``, ``decision_curve.{png,pdf}`` are written; with
        ``tables_dir=None`` the tables are only returned (the report writes all of its
        tables at once).

    Returns
    -------
    (tables, figures, notes)
        A multi-class run gets no tables or figures and one note saying why.
    """
    if recalibrate is not None and recalibrate not in RECALIBRATION_METHODS:
        raise CalibrationError(f"recalibrate = {recalibrate!r}: choose from {', '.join(RECALIBRATION_METHODS)}")
    thresholds = tuple(float(t) for t in checked_thresholds(thresholds))
    proto = store.protocol()
    classes, positive = list(proto.get("classes") or []), proto.get("positive")
    if positive is None or len(classes) != 2 or positive not in classes:
        return [], [], [BINARY_ONLY_NOTE.format(n=len(classes))]
    pos = classes.index(positive)
    keys = set(records["key"]) if records is not None and "key" in getattr(records, "columns", ()) else None
    by_cand: dict[str, list[dict[str, Any]]] = {}
    for r in store.current_records():
        if keys is None or r["key"] in keys:
            by_cand.setdefault(r["candidate"], []).append(r)
    models, notes = [], []
    for cand, role, kind in _reported(result):
        if cand not in by_cand:
            notes.append(f"{cand}: no records in scope; left out of the calibration section.")
            continue
        models.append(_model(store, by_cand[cand], cand, role, kind, pos))
    if not models:
        return [], [], notes + ["Calibration and decision curves: no reported model has records."]
    missing = [m.label for m in models if m.test is None]
    if missing:
        notes.append(f"No test record of {', '.join(missing)}: test columns and curves left empty.")
    table_notes: list[str] = []
    if recalibrate:
        selected = [m for m in models if m.role == "selected"]
        for m in selected:
            try:
                r = _recalibrated(m, recalibrate)
            except CalibrationError as e:
                notes.append(f"No {METHOD_LABEL[recalibrate]} recalibration of {m.label} ({e}).")
                continue
            models.insert(models.index(m) + 1, r)
            article = "an" if recalibrate == "isotonic" else "a"
            text = (f"{r.label}: {article} {METHOD_LABEL[recalibrate]} map fitted on {m.label}'s out-of-fold "
                    "predictions only and applied unchanged to its test predictions"
                    + ("; its OOF figures are cross-fitted (each CV fold recalibrated by the map fitted on the "
                       "other folds of its repeat)" if r.oof else "; OOF figures not shown (the folds alone "
                       "cannot fit the map)")
                    + ". The map is monotone: it changes calibration, not the order of the cases (isotonic may "
                      "tie some; test AUC beside it).")
            table_notes.append(text)
            notes.append(text)
    if any(m.baseline for m in models):
        table_notes.append(BASELINE_NOTE)
        notes.append(BASELINE_NOTE)
    tables = [calibration_table(models, alpha=alpha, notes=table_notes, groups=run_groups(store)),
              net_benefit_table(models, thresholds, notes=[n for n in table_notes if n != BASELINE_NOTE])]
    if tables_dir is not None:
        for t in tables:
            write_table(t, tables_dir)
    figures_dir = Path(figures_dir)
    figures = reliability_figure(models, figures_dir / "reliability")
    if any(m.test is not None for m in models):
        figures += decision_curve_figure(models, figures_dir / "decision_curve")
    # The findings first (best calibrated; where the selected model, and its recalibration,
    # beat both default strategies), then what the rows mean.
    findings = [_best_calibrated_note(models, alpha)]
    findings += [_net_benefit_note(m) for m in models if m.role.startswith("selected")]
    return tables, figures, [n for n in findings if n] + notes

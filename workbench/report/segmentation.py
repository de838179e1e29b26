"""The report's segmentation section: the Y-Net baselines' masks, scored and drawn.

For every Y-Net baseline of the run (a ``kind="baseline"`` record with a
``segmentation`` field), the per-image Dice and IoU its prediction files hold
(``dice``, ``iou``; NaN where the image has no manual mask) are summarised per
evaluation set and class (:func:`~workbench.evaluation.segmentation.segmentation_summary`
over the images with a lesion: median and mean with seeded percentile bootstrap
intervals, range, share of "totally wrong" masks, Dice <
:data:`~workbench.evaluation.segmentation.FAILED_DICE`; images whose manual mask is
empty, such as BUSI's normal images, count apart as "left blank" or not): the test
split, and the CV folds of repeat 0 (each training image once, scored by the fold
network that did not train on it). A figure shows, for the best Y-Net by CV (each one,
when the run has at most two), the test images of best, median and worst Dice per class
with the manual and the predicted contour; and when a Y-Net and its no-segmentation
ablation (``ynet-X`` and ``ynet-X-noseg``) are both in the run, a note says whether the
segmentation loss changed classification (CV AUC, test AUC, paired test on the same
test images).

Unlike the rest of the report, the figure needs a network: the predicted masks of the
few images shown come from re-running the baseline's test-split network (found in the
fine-tuned store by its id) on the CPU, so the same network gives the same bytes on any
machine. A network no longer in the store skips the figure with a note naming its id;
the table needs the run folder alone. torch is imported only then.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.evaluation import stats
from workbench.evaluation.segmentation import FAILED_DICE, N_BOOT, segmentation_summary
from workbench.evaluation.settings import TEST_FOLD, fold_repeat, fold_sort_key, is_cv_fold
from workbench.evaluation.store import ResultStore
from workbench.report.figures import _new_figure, _rc, save_figure
from workbench.report.tables import DASH, Cell, Table, fmt, fmt_interval, fmt_p, write_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.data.manifest import Manifest
    from workbench.search.select import SearchResult

__all__ = ["ABLATION_SUFFIX", "CV_SET", "MASK_LEVEL", "SegTile", "TEST_SET", "ablation_note", "pick_tiles",
           "segmentation_grid", "segmentation_scores", "segmentation_section", "segmentation_table",
           "ynet_records"]

TEST_SET = "test"
CV_SET = "CV (out-of-fold)"
#: A baseline named ``<name>`` + this suffix is ``<name>`` trained without its segmentation loss.
ABLATION_SUFFIX = "-noseg"
#: Contour level of the manual mask (0/1) and of the predicted probability map: the
#: threshold the Dice in the table was computed at.
MASK_LEVEL = 0.5
#: Rows of the figure: one per class while there are at most this many classes, else one.
MAX_CLASS_ROWS = 4
#: Longest side of an image as drawn (pixels): contours stay at full resolution, the
#: picture under them need not (it would make each PDF megabytes).
DRAW_PIXELS = 384
MANUAL_STYLE = {"colors": "#00d5ff", "linestyles": "solid", "linewidths": 1.4}
PREDICTED_STYLE = {"colors": "#ff3030", "linestyles": "dashed", "linewidths": 1.4}
COLUMNS = ("best", "median", "worst")


class SegmentationReportError(WorkbenchError, ValueError):
    """A Y-Net record's prediction file lacks what the segmentation section reads."""


# ---- reading -----------------------------------------------------------------------------


def ynet_records(store: ResultStore, records: pd.DataFrame | None = None) -> dict[str, list[dict[str, Any]]]:
    """The current records of every Y-Net baseline (a baseline record with a
    ``segmentation`` field), by candidate, limited to ``records``' keys when given."""
    keys = set(records["key"]) if records is not None and "key" in getattr(records, "columns", ()) else None
    ynets = {r["candidate"] for r in store.current_records()
             if r.get("kind") == "baseline" and r.get("segmentation") is not None
             and (keys is None or r["key"] in keys)}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in store.current_records():
        if r["candidate"] in ynets and (keys is None or r["key"] in keys):
            out.setdefault(r["candidate"], []).append(r)
    return {c: sorted(v, key=lambda r: fold_sort_key(r["fold"])) for c, v in sorted(out.items())}


def segmentation_scores(store: ResultStore, recs: Sequence[dict[str, Any]], classes: Sequence[str]) -> pd.DataFrame:
    """Per scored image of one Y-Net: ``set`` (:data:`TEST_SET` / :data:`CV_SET`), ``fold``,
    ``id``, ``label``, ``dice``, ``iou``, ``lesion`` (the manual mask is non-empty).

    The CV set is the CV folds of repeat 0 only (each training image once); images
    without a manual mask (NaN) are left out; external sets are not read.

    Raises
    ------
    SegmentationReportError
        A prediction file has no ``dice``/``iou`` arrays, or not one per image (naming it).
    """
    parts = []
    for r in recs:
        fold = str(r["fold"])
        if fold == TEST_FOLD:
            name = TEST_SET
        elif is_cv_fold(fold) and fold_repeat(fold) == 0:
            name = CV_SET
        else:
            continue
        pr = store.predictions(r)
        ids = np.asarray(pr["ids"]).astype(str)
        missing = [k for k in ("dice", "iou") if k not in pr or np.shape(pr[k]) != ids.shape]
        if missing:
            raise SegmentationReportError(f"{store.root / r['predictions']} ({r['candidate']} fold {fold}): no "
                                          f"per-image {' or '.join(missing)} for its {ids.size} images; re-run "
                                          f"the baseline with this workbench to record them")
        y = np.asarray(pr["y_true"]).astype(int)
        dice = np.asarray(pr["dice"], dtype=float)
        # Files written before the lesion flag: every scored image counts as a lesion image.
        lesion = np.asarray(pr["lesion"], dtype=bool) if "lesion" in pr else np.isfinite(dice)
        parts.append(pd.DataFrame({"set": name, "fold": fold, "id": ids, "label": [str(classes[i]) for i in y],
                                   "dice": dice, "iou": np.asarray(pr["iou"], dtype=float), "lesion": lesion}))
    if not parts:
        return pd.DataFrame(columns=["set", "fold", "id", "label", "dice", "iou", "lesion"])
    frame = pd.concat(parts, ignore_index=True)
    return frame[np.isfinite(frame["dice"]) & np.isfinite(frame["iou"])].reset_index(drop=True)


# ---- the table -----------------------------------------------------------------------------


def _dice_cells(lesion: pd.DataFrame, kw: dict[str, Any]) -> list[Cell]:
    """n, median/mean Dice, mean IoU, range and failed share of the lesion images (dashes without any)."""
    n = len(lesion)
    if not n:
        return [Cell("0", 0.0)] + [Cell(DASH)] * 5
    d = segmentation_summary(lesion["dice"], **kw)
    j = segmentation_summary(lesion["iou"], **kw)
    k = int(round(d["failed_share"] * n))
    return [Cell(str(n), float(n)), _interval_cell(d, "median"), _interval_cell(d, "mean"), _interval_cell(j, "mean"),
            Cell(f"{fmt(d['min'])}{DASH}{fmt(d['max'])}"),
            Cell(f"{fmt(d['failed_share'])} ({k}/{n})", float(d["failed_share"]))]


def _blank_cell(blank: pd.DataFrame) -> Cell:
    """Share (count) of no-lesion images whose prediction is empty too (Dice 1 when both are empty)."""
    if not len(blank):
        return Cell(DASH)
    kept = int((blank["dice"] == 1.0).sum())
    return Cell(f"{fmt(kept / len(blank))} ({kept}/{len(blank)})", kept / len(blank))


def _interval_cell(s: dict[str, Any], what: str) -> Cell:
    # One image has no spread to resample: the value alone.
    low, high = (s[f"{what}_low"], s[f"{what}_high"]) if s["n"] >= 2 else (None, None)
    return Cell(fmt_interval(s[what], low, high), float(s[what]))


def segmentation_table(scores: dict[str, pd.DataFrame], *, alpha: float = 0.05, n_boot: int = N_BOOT,
                       seed: int = 0, key: str = "segmentation", notes: Sequence[str] = ()) -> Table:
    """One row per (model, evaluation set, class): n, median and mean Dice and mean IoU
    with ``1 - alpha`` bootstrap intervals, range of Dice, share with Dice < 0.1, over
    the images with a lesion (a non-empty manual mask); and the share of images without
    one (an empty manual mask) whose predicted mask is empty too.

    ``scores`` maps a model's label to its :func:`segmentation_scores`; rows go in its
    order, test before CV, ``all`` before the classes (sorted).
    """
    pct = f"{100 * (1 - alpha):.0f} %"
    columns = ["Model", "Set", "Class", "n", f"Median Dice ({pct} CI)", f"Mean Dice ({pct} CI)",
               f"Mean IoU ({pct} CI)", "Dice range", f"Dice < {FAILED_DICE:g}", "No lesion: left blank"]
    rows: list[list[Cell]] = []
    rules: list[int] = []
    for label, frame in scores.items():
        rules.append(len(rows))
        for name in (TEST_SET, CV_SET):
            part = frame[frame["set"] == name]
            if part.empty:
                continue
            kw = dict(alpha=alpha, n_boot=n_boot, seed=seed)
            groups = [("all", part)] + [(str(c), g) for c, g in sorted(part.groupby("label"), key=lambda x: str(x[0]))]
            for cls, g in groups:
                rows.append([Cell(label), Cell(name), Cell(cls), *_dice_cells(g[g["lesion"]], kw),
                             _blank_cell(g[~g["lesion"]])])
    all_notes = [
        "Dice 2|P∩M|/(|P|+|M|) and IoU |P∩M|/|P∪M| of the predicted mask P (the network's lesion probability "
        f"above {MASK_LEVEL:g}, mapped back onto the image at its own resolution) against the manual mask M; "
        "n, Dice and IoU: the images with a lesion (a non-empty manual mask). An empty manual mask (no lesion, "
        "such as a normal image's) has no outline to match: \"No lesion: left blank\" is the share (count) of "
        "those images whose predicted mask is empty too. Images without a manual mask file are not scored: "
        "their prediction has no stated truth.",
        f"Test: the test-split network on the test images. {CV_SET}: each training image once, scored by the "
        "network of the CV fold that held it out (repeat 0 of the CV). Class: the manual label.",
        f"In parentheses: {pct} percentile bootstrap intervals ({n_boot} resamples, seed {seed}). Dice < "
        f"{FAILED_DICE:g}: the share (count) of \"totally wrong\" masks.",
        *notes,
    ]
    return Table("Lesion segmentation of the Y-Net baselines: Dice and IoU per image, by evaluation set and class",
                 columns, rows, [n for n in all_notes if n], key, rules=tuple(rules))


# ---- the ablation --------------------------------------------------------------------------


def _baseline_name(recs: Sequence[dict[str, Any]]) -> str:
    return str(recs[0].get("baseline") or recs[0]["candidate"])


def _seg_weight(recs: Sequence[dict[str, Any]]) -> float:
    """The segmentation loss weight the network was trained with (1 when not recorded)."""
    w = (recs[0].get("config") or {}).get("seg_weight", 1.0)
    return 1.0 if w is None else float(w)


def _epochs_note(name: str, recs: Sequence[dict[str, Any]]) -> str | None:
    """Which epoch each network kept, and what its early stopping watched (the records'
    ``config.monitor``): on the class AUC alone, a network kept at an early epoch may hold
    a decoder that has not learnt yet."""
    kept = [(r["fold"], r.get("best_epoch"), r.get("epochs_run")) for r in recs]
    kept = [(f, b, e) for f, b, e in kept if isinstance(b, int) and isinstance(e, int)]
    if not kept:
        return None
    order = sorted(kept, key=lambda k: (k[0] == TEST_FOLD, str(k[0])))
    shown = ", ".join(f"{'test' if f == TEST_FOLD else 'fold ' + str(f)} {b} of {e}" for f, b, e in order)
    if {(r.get("config") or {}).get("monitor", "auc") for r in recs} == {"auc+dice"}:
        watched = ("Early stopping watched the validation class AUC plus the validation Dice (monitor = "
                   "\"auc+dice\").")
    else:
        watched = ("Early stopping watches the validation class AUC, not the masks: a network kept at an early "
                   "epoch may hold a decoder that has not learnt yet, and its Dice shows it.")
    return f"{name}: epoch kept of epochs run, per network ({shown}). {watched}"


def _test_predictions(store: ResultStore, candidate: str) -> dict[str, np.ndarray] | None:
    test = [r for r in store.current_records() if r["candidate"] == candidate and r["fold"] == TEST_FOLD]
    return store.predictions(test[-1]) if test else None


def _test_groups(store: ResultStore, ids: np.ndarray) -> np.ndarray | None:
    """The test images' groups (``splits.csv``), or None without a group column."""
    from workbench.search.select import run_groups

    group = run_groups(store)
    return None if group is None else np.array([group.get(str(i), "") for i in ids], dtype=object)


def ablation_note(store: ResultStore, result: "SearchResult | None", full: str, ablation: str, *,
                  alpha: float = 0.05) -> str:
    """One sentence: did ``full``'s segmentation loss help its classification, against
    ``ablation`` (the same network trained without it)? CV AUC means and test AUCs of the
    comparison, and the paired test of the two on the same test images: DeLong on AUC
    (a cluster bootstrap when the test split's groups hold several images, as the
    comparison does), exact McNemar on argmax accuracy for several classes.
    """
    comp = result.comparison if result is not None else None
    row = {str(r["candidate"]): r for _, r in comp.iterrows() if r.get("role") == "baseline"} \
        if comp is not None and not comp.empty else {}
    a, b = row.get(full), row.get(ablation)
    head = f"Joint segmentation and classification ({full} against {ablation}, the same network without its " \
           f"segmentation loss)"
    if a is None or b is None:
        return f"{head}: not both in the comparison; no verdict."
    proto = store.protocol()
    classes, positive = list(proto["classes"]), proto.get("positive")
    pos = classes.index(positive) if positive is not None and len(classes) == 2 else None
    auc = "AUC" if pos is not None else "macro AUC"
    figures = (f"CV {auc} {fmt(a.get('cv_auc'))} vs {fmt(b.get('cv_auc'))}, test {auc} {fmt(a.get('auc'))} vs "
               f"{fmt(b.get('auc'))}")
    pa, pb = _test_predictions(store, full), _test_predictions(store, ablation)
    if pa is None or pb is None or not np.array_equal(pa["ids"], pb["ids"]):
        return f"{head}: {figures}; no paired test (the test images differ, or a test record is missing)."
    groups = _test_groups(store, pa["ids"]) if ((result and result.grouping) or {}).get("clustered") else None
    if pos is not None:  # the positive class's probability, as the comparison's paired tests take it
        y = (np.asarray(pa["y_true"]) == pos).astype(int)
        p1, p2 = np.asarray(pa["proba"])[:, pos], np.asarray(pb["proba"])[:, pos]
        if groups is not None:
            p, test = stats.cluster_bootstrap_test(y, groups, p1=p1, p2=p2).p_value, \
                "paired cluster bootstrap of the AUC difference"
        else:
            p, test = stats.delong_test(y, p1, p2).p_value, "paired DeLong test"
    else:  # several classes: no paired test of a macro AUC; accuracy of the argmax calls
        y = np.asarray(pa["y_true"])
        c1, c2 = np.asarray(pa["proba"]).argmax(axis=1), np.asarray(pb["proba"]).argmax(axis=1)
        if groups is not None:
            p, test = stats.cluster_bootstrap_test(y, groups, pred1=c1, pred2=c2).p_value, \
                "paired cluster bootstrap of the accuracy difference (argmax)"
        else:
            p, test = stats.mcnemar_exact(y, c1, c2).p_value, "exact McNemar test on accuracy (argmax)"
    where = f"{test} on the same {len(y)} test images p = {fmt_p(p)}"
    # The verdict's test-split direction is that of what was tested (AUC; accuracy for several classes).
    d_cv = _diff(a.get("cv_auc"), b.get("cv_auc"))
    if pos is not None:
        d_test, tested = _diff(a.get("auc"), b.get("auc")), auc
    else:
        d_test, tested = float(np.mean(c1 == y) - np.mean(c2 == y)), "accuracy"
    if not np.isfinite(p):
        verdict = "no verdict (the paired test is undefined here)"
    elif p < alpha and d_test > 0 and d_cv > 0:
        verdict = "the segmentation loss helped classification"
    elif p < alpha and d_test < 0 and d_cv < 0:
        verdict = "the segmentation loss hurt classification"
    elif p < alpha:
        verdict = "CV and test disagree on the direction, so no clear effect of the segmentation loss"
    else:
        verdict = (f"no evidence that the segmentation loss changed classification (p ≥ {alpha:g}; "
                   f"{'higher' if d_test > 0 else 'lower' if d_test < 0 else 'equal'} test {tested} with it)")
    return f"{head}: {figures}; {where}: {verdict}."


def _diff(x: Any, y: Any) -> float:
    try:
        return float(x) - float(y)
    except (TypeError, ValueError):
        return float("nan")


def _pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(full, ablation)`` baseline names present together."""
    known = set(names)
    return [(n, n + ABLATION_SUFFIX) for n in sorted(known) if n + ABLATION_SUFFIX in known]


# ---- the figure ----------------------------------------------------------------------------


@dataclass
class SegTile:
    """One image of the grid: the picture (H, W) in [0, 1], the manual mask (bool), the
    predicted probability map (float), its title, and where it goes (row, column)."""

    image: np.ndarray
    manual: np.ndarray
    predicted: np.ndarray
    title: str
    row: int
    col: int


def pick_tiles(test: pd.DataFrame, *, max_class_rows: int = MAX_CLASS_ROWS) -> list[tuple[int, int, str, str, float]]:
    """``(row, column, row label, id, dice)`` of the images a grid shows: per class (one row
    over all images when there are more than ``max_class_rows`` classes), the best, median
    and worst Dice (columns 0, 1, 2; an image shown once, so a class of one or two images
    leaves a column empty). Ties go by id; the median is the lower middle of the order."""
    classes = sorted(test["label"].unique()) if test["label"].nunique() <= max_class_rows else []
    groups = [(c, test[test["label"] == c]) for c in classes] or [("all", test)]
    out = []
    for row, (label, g) in enumerate(groups):
        order = g.sort_values(["dice", "id"], kind="stable")
        # Best and worst first: with two images the median is one of them, and its column stays empty.
        chosen = {0: order.iloc[-1], 2: order.iloc[0], 1: order.iloc[(len(order) - 1) // 2]}
        seen: set[str] = set()
        tiles = []
        for col, r in chosen.items():
            if r["id"] in seen:
                continue
            seen.add(r["id"])
            tiles.append((row, col, str(label), str(r["id"]), float(r["dice"])))
        out += sorted(tiles)
    return out


def _contour(ax: Any, field: np.ndarray, style: dict[str, Any], gid: str) -> None:
    f = np.asarray(field, dtype=float)
    # Nothing crosses the level (an empty or a full mask): no line, and no warning.
    if f.size and f.min() < MASK_LEVEL < f.max():
        cs = ax.contour(f, levels=[MASK_LEVEL], **style)
        cs.set_gid(gid)


def segmentation_grid(tiles: Sequence[SegTile], *, title: str | None = None, tile_inches: float = 2.3) -> "Figure":
    """A grid of images (grayscale) with the manual contour (solid) and the predicted one
    (dashed) at level 0.5; contour sets carry ``gid`` ``"manual:<i>"`` / ``"predicted:<i>"``
    (``i``: the tile's index in ``tiles``)."""
    import matplotlib
    from matplotlib.lines import Line2D

    if not tiles:
        raise SegmentationReportError("no images to draw")
    nrows, ncols = max(t.row for t in tiles) + 1, len(COLUMNS)
    with matplotlib.rc_context(_rc()):
        fig = _new_figure((tile_inches * ncols, (tile_inches + 0.3) * nrows + 0.4))
        fig.set_layout_engine("constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for i, t in enumerate(tiles):
            ax = axes[t.row, t.col]
            h, w = t.manual.shape
            step = max(1, -(-max(h, w) // DRAW_PIXELS))
            ax.imshow(t.image[::step, ::step], cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased",
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            _contour(ax, t.manual, MANUAL_STYLE, f"manual:{i}")
            _contour(ax, t.predicted, PREDICTED_STYLE, f"predicted:{i}")
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(t.title, fontsize=7)
        handles = [Line2D([], [], color=MANUAL_STYLE["colors"], linestyle="-", linewidth=1.4, label="manual mask"),
                   Line2D([], [], color=PREDICTED_STYLE["colors"], linestyle="--", linewidth=1.4,
                          label=f"predicted (p > {MASK_LEVEL:g})")]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _manifest(manifest: "str | Path | Manifest | None") -> "Manifest | None":
    from workbench.data.manifest import Manifest

    if manifest is None or isinstance(manifest, Manifest):
        return manifest
    return Manifest.load(manifest)


def _figure(recs: Sequence[dict[str, Any]], test: pd.DataFrame, manifest: "Manifest", finetuned_root: Any,
            path: Path) -> list[Path]:
    """The grid of one Y-Net's test images, its masks predicted again by its test network
    (on the CPU, one thread: the same bytes whoever rebuilds the report). Raises a
    :class:`WorkbenchError` when the network or an image cannot be had."""
    from workbench.data.images import decode_image
    from workbench.training.finetune import load_finetuned
    from workbench.training.masks import manual_mask, predict_masks

    rec = next(r for r in recs if r["fold"] == TEST_FOLD)
    picks = pick_tiles(test[test["lesion"]])  # an outline's quality: lesion images only
    items = list(manifest.subset([p[3] for p in picks]))
    ft = load_finetuned(rec["backbone"], rec["weights_id"], finetuned_root)
    import torch

    # CPU sums depend on the thread count (a contour moved by a pixel between a run on 2
    # threads and a rebuild on 1): one thread, so a rebuild redraws the same figure.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probs = predict_masks(ft.model, items, ft.geometry, ft.data_config, device="cpu")
    finally:
        torch.set_num_threads(threads)
    tiles = []
    for (row, col, label, image_id, d), it, prob in zip(picks, items, probs):
        image = decode_image(it.path).mean(dim=0).numpy()
        what = f"{label}, {COLUMNS[col]}" if label != "all" else COLUMNS[col]
        tiles.append(SegTile(image, manual_mask(it), prob, f"{what}\n{image_id} · Dice {d:.3f}", row, col))
    fig = segmentation_grid(tiles, title=f"{_baseline_name(recs)}: test images by Dice "
                                         f"({rec['backbone']}@{rec['weights_id']})")
    return save_figure(fig, path)


# ---- the section ---------------------------------------------------------------------------


def _figure_models(ynets: dict[str, list[dict[str, Any]]], result: "SearchResult") -> list[str]:
    """Candidates the figure is drawn for: Y-Nets trained with a segmentation loss, each
    when at most two, else the best by CV (the search's baseline order)."""
    drawn = [c for c, recs in ynets.items() if _seg_weight(recs) > 0]
    if len(drawn) <= 2:
        return drawn
    order = list(result.baselines["candidate"]) if result is not None and len(result.baselines) else []
    ranked = [c for c in order if c in drawn] + [c for c in drawn if c not in order]
    return ranked[:1]


def segmentation_section(store: ResultStore, records: pd.DataFrame | None, result: "SearchResult | None", *,
                         alpha: float = 0.05, manifest: "str | Path | Manifest | None" = None,
                         finetuned_root: str | Path | None = None, n_boot: int = N_BOOT,
                         tables_dir: str | Path | None, figures_dir: str | Path
                         ) -> tuple[list[Table], list[Path], list[str]]:
    """The segmentation table, the contour grids and their notes of a run's Y-Net baselines.

    Parameters
    ----------
    store
        The run folder's store.
    records
        The store's frame in the report's scope (its ``key`` column limits the records read).
    result
        The search: baseline order by CV (which Y-Net the figure shows) and the comparison
        (CV and test AUC of the ablation note).
    alpha
        1 − level of the bootstrap intervals and of the ablation note's verdict.
    manifest
        The run's manifest (a path or a :class:`~workbench.data.manifest.Manifest`): the
        images and manual masks the figure draws. None: no figure, and a note says why.
    finetuned_root
        The fine-tuned store holding the test networks (None: the default one).
    tables_dir, figures_dir
        Where ``segmentation.{md,tex,csv}`` and ``segmentation_<baseline>.{png,pdf}`` are
        written; with ``tables_dir=None`` the table is only returned.

    Returns
    -------
    (tables, figures, notes)
        Empty when the run has no Y-Net baseline. A figure that cannot be drawn (no
        manifest, the network not in the fine-tuned store, an image missing) is skipped
        with a note; the report never fails for it.
    """
    ynets = ynet_records(store, records)
    if not ynets:
        return [], [], []
    classes = list(store.protocol()["classes"])
    order = list(result.baselines["candidate"]) if result is not None and len(result.baselines) else []
    ranked = [c for c in order if c in ynets] + [c for c in ynets if c not in order]
    scores = {c: segmentation_scores(store, ynets[c], classes) for c in ranked}
    names = {c: _baseline_name(ynets[c]) for c in ranked}
    table_notes = [f"{names[c]} was trained without its segmentation loss (the ablation): its masks come from an "
                   f"untrained decoder, a floor rather than a result." for c in ranked if _seg_weight(ynets[c]) == 0]
    table_notes += [n for c in ranked if _seg_weight(ynets[c]) > 0 for n in [_epochs_note(names[c], ynets[c])] if n]
    by_name = {v: k for k, v in names.items()}
    table_notes += [ablation_note(store, result, by_name[f], by_name[a], alpha=alpha)
                    for f, a in _pairs(list(by_name))]
    empty = [c for c in ranked if scores[c].empty]
    notes = [f"{c}: no image with a manual mask among its evaluated images; no Dice to report." for c in empty]
    table = segmentation_table({c: scores[c] for c in ranked if not scores[c].empty}, alpha=alpha, n_boot=n_boot,
                               notes=table_notes)
    tables = [table] if table.rows else []
    if tables_dir is not None:
        for t in tables:
            write_table(t, tables_dir)
    figures: list[Path] = []
    drawn = [c for c in _figure_models(ynets, result) if not scores[c].empty]
    try:
        m = _manifest(manifest) if drawn else None
    except (WorkbenchError, OSError) as e:
        m = None
        notes.append(f"Segmentation figure skipped: the run's manifest cannot be read ({e}).")
    else:
        if drawn and m is None:
            notes.append("Segmentation figure skipped: the run does not record its manifest (no inputs.json), so "
                         "its images and manual masks cannot be found.")
    for c in drawn if m is not None else []:
        test = scores[c][scores[c]["set"] == TEST_SET]
        rec = next((r for r in ynets[c] if r["fold"] == TEST_FOLD), None)
        if test.empty or rec is None or not rec.get("weights_id"):
            notes.append(f"Segmentation figure of {c} skipped: no test record with a scored image and a network id.")
            continue
        network = f"{rec['backbone']}@{rec['weights_id']}"
        try:
            figures += _figure(ynets[c], test, m, finetuned_root, Path(figures_dir) / f"segmentation_{_safe(names[c])}")
        except (WorkbenchError, OSError) as e:
            notes.append(f"Segmentation figure of {c} skipped: its test network {network} cannot be re-run "
                         f"({type(e).__name__}: {e}).")
            continue
        notes.append(f"Segmentation figure ({c}, test network {network}, masks predicted again on the CPU): "
                     f"per class the test images of best, median and worst Dice; manual contour solid, predicted "
                     f"contour dashed (probability {MASK_LEVEL:g}).")
    return tables, figures, notes

"""The paper's figures from run records: ROC curves and a subset x head heat map.

Every figure is written twice, as PNG (200 dpi) and PDF, next to each other, and reads
in black and white: curves differ by line style, marker and grey level, never by colour
alone, and the heat map uses a luminance-monotonic colormap with its values printed in
the cells. Output is byte-for-byte reproducible (no dates or software versions in the
files), so re-running a report does not churn a paper's repository.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through
``pyplot``: nothing here switches the global backend or leaves figures open in a user's
session (a notebook keeps its inline backend).

Examples
--------
>>> from workbench.evaluation.store import ResultStore
>>> store = ResultStore("runs/thyroid")                       # doctest: +SKIP
>>> curves = roc_curves_from_store(store, ["[AVR] svm-rbf", "CNN resnet50"])  # doctest: +SKIP
>>> roc_figure(curves, "paper/fig2_roc.pdf")                 # doctest: +SKIP
[PosixPath('paper/fig2_roc.png'), PosixPath('paper/fig2_roc.pdf')]
>>> heatmap_figure(store.frame(), "auc", "paper/fig3_auc.pdf")  # doctest: +SKIP
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from workbench.evaluation.metrics import metric_label
from workbench.evaluation.store import ResultStore
from workbench.report.tables import _subset_code as join_codes  # the tables' rule, one copy
from workbench.evaluation.settings import is_cv_fold

if TYPE_CHECKING:  # matplotlib is imported where it is used, not on import of the package
    from matplotlib.figure import Figure

__all__ = [
    "RocCurve",
    "roc_curves_from_store",
    "roc_axes",
    "roc_figure",
    "heatmap_table",
    "heatmap_axes",
    "heatmap_figure",
    "save_figure",
]

#: Resolution of the PNG files.
PNG_DPI = 200
#: Ensemble kinds, in the order of their heat-map columns (after the single heads).
ENSEMBLE_KINDS = ("vote-hard", "vote-soft", "stack")
#: Numeric record fields that are not metrics (never offered as a heat-map metric).
_NOT_METRICS = frozenset({"size", "seed", "n_train", "n_eval", "seconds", "inner_score", "n", "n_pos",
                          "tp", "fp", "tn", "fn", "best_epoch", "epochs_run", "format"})

# Candidates: dark (black to dark grey), solid-ish and heavy, filled markers.
# Baselines: mid grey, thinner, broken lines with hollow markers. The two families stay
# apart in grayscale; within a family the four named line styles come first, so up to four
# curves differ by line style alone, and the marker cycle (length 7, coprime to 4) keeps
# (style, marker) pairs distinct for 28 curves.
_LINESTYLES = ("-", "--", ":", "-.")
_CANDIDATE_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_CANDIDATE_GREYS = ("0.0", "0.3", "0.45")
_BASELINE_LINESTYLES = ("--", "-.", ":")
_BASELINE_MARKERS = ("o", "s", "^", "D", "v")
_BASELINE_GREYS = ("0.5", "0.62")
#: Metadata that would otherwise stamp a date or a version into the files.
_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
_PNG_METADATA = {"Software": None}


# ---- saving ------------------------------------------------------------------------


def _rc() -> dict[str, Any]:
    """Settings every figure here is drawn and saved under."""
    return {
        "svg.hashsalt": "workbench",  # fixed ids, were a figure ever saved as SVG
        "pdf.fonttype": 42,  # TrueType text: selectable, and accepted by journals
        "font.size": 9,
        "axes.titlesize": 10,
        "legend.fontsize": 8,
    }


def _new_figure(figsize: tuple[float, float]) -> "Figure":
    """A figure on its own Agg canvas, outside pyplot's registry of open figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: "Figure", path: str | os.PathLike) -> list[Path]:
    """Write ``fig`` as PNG (200 dpi) and PDF next to each other, then close it.

    Parameters
    ----------
    fig : Figure
        A matplotlib figure (from this module or from pyplot).
    path : path
        Target; its suffix is replaced (``fig2.pdf``, ``fig2.png`` and ``fig2`` all give
        ``fig2.png`` and ``fig2.pdf``). Parent folders are created.

    Returns
    -------
    list of Path
        The PNG and the PDF path, in that order. Both are byte-identical on a re-run.
    """
    import matplotlib

    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix.lower() in (".png", ".pdf", ".svg", "") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = Path(f"{stem}.png"), Path(f"{stem}.pdf")
    with matplotlib.rc_context(_rc()):
        fig.savefig(png, format="png", dpi=PNG_DPI, bbox_inches="tight", metadata=_PNG_METADATA)
        fig.savefig(pdf, format="pdf", bbox_inches="tight", metadata=_PDF_METADATA)
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return [png, pdf]


# ---- ROC curves --------------------------------------------------------------------


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve to draw.

    Parameters
    ----------
    label : str
        Legend label, e.g. ``"[AVR] svm-rbf"``; the AUC is appended when drawn.
    y_true : ndarray
        0/1 truth, 1 the positive class.
    score : ndarray
        Higher means more likely positive (a probability or a decision value).
    kind : str
        ``"candidate"`` or ``"baseline"``: the two are drawn in different style families.
    """

    label: str
    y_true: np.ndarray
    score: np.ndarray
    kind: str = "candidate"

    def __post_init__(self) -> None:
        if self.kind not in ("candidate", "baseline"):
            raise ValueError(f"curve {self.label!r}: kind must be 'candidate' or 'baseline', not {self.kind!r}")
        y = np.asarray(self.y_true).ravel()
        s = np.asarray(self.score, dtype=float).ravel()
        if y.shape != s.shape:
            raise ValueError(f"curve {self.label!r}: {y.size} labels but {s.size} scores")
        if not np.isin(y, (0, 1)).all() or np.unique(y).size != 2:
            raise ValueError(f"curve {self.label!r}: y_true must hold both 0 (negative) and 1 (positive), "
                             f"got values {sorted(set(np.unique(y).tolist()))}")
        if not np.isfinite(s).all():
            raise ValueError(f"curve {self.label!r}: scores must be finite")
        object.__setattr__(self, "y_true", y.astype(int))
        object.__setattr__(self, "score", s)

    def roc(self) -> tuple[np.ndarray, np.ndarray, float]:
        """False-positive rates, true-positive rates and the AUC (scikit-learn)."""
        fpr, tpr, _ = roc_curve(self.y_true, self.score)
        return fpr, tpr, float(roc_auc_score(self.y_true, self.score))


def _open_store(store: ResultStore | str | os.PathLike) -> ResultStore:
    if hasattr(store, "records") and hasattr(store, "predictions"):
        return store
    return ResultStore(store)


def roc_curves_from_store(store: ResultStore | str | os.PathLike, candidates: Sequence[str],
                          positive_index: int | None = None, fold: str = "test") -> list[RocCurve]:
    """ROC curves of ``candidates`` from their stored predictions.

    Parameters
    ----------
    store : ResultStore or path
        The run folder.
    candidates : list of str
        Candidate labels as in the records (``"[AVR] svm-rbf"``, ``"CNN resnet50"``);
        records of kind ``baseline`` become baseline curves.
    positive_index : int, optional
        Column of ``proba`` that is the positive class; default: the run's positive
        class (``run.json``).
    fold : str
        ``"test"`` (default), one CV fold (``"0"``..), or ``"cv"`` for the pooled
        out-of-fold predictions of every CV fold.

    Returns
    -------
    list of RocCurve
        In the order of ``candidates``.

    Raises
    ------
    KeyError
        A candidate or fold that the run does not hold (the message lists what it does).
    """
    store = _open_store(store)
    if positive_index is None:
        proto = store.protocol()
        classes, positive = proto.get("classes"), proto.get("positive")
        if not classes or positive not in classes:
            raise ValueError(f"{store.root}: the run does not name its classes and positive class; "
                             "pass positive_index")
        positive_index = list(classes).index(positive)
    by_candidate: dict[str, list[dict[str, Any]]] = {}
    for rec in store.current_records():
        by_candidate.setdefault(rec["candidate"], []).append(rec)
    curves = []
    for label in candidates:
        if label not in by_candidate:
            raise KeyError(f"candidate {label!r} is not in {store.root}; it holds: "
                           f"{', '.join(sorted(by_candidate))}")
        recs = by_candidate[label]
        chosen = [r for r in recs if (is_cv_fold(r["fold"]) if fold == "cv" else r["fold"] == str(fold))]
        if not chosen:
            raise KeyError(f"candidate {label!r} has no fold {fold!r} in {store.root}; it has folds "
                           f"{', '.join(sorted(str(r['fold']) for r in recs))}")
        ys, ss = [], []
        for rec in chosen:
            pr = store.predictions(rec)
            proba = np.asarray(pr["proba"])
            if proba.ndim != 2 or not 0 <= positive_index < proba.shape[1]:
                raise ValueError(f"candidate {label!r}: positive_index {positive_index} is outside "
                                 f"its {proba.shape[-1]}-column probabilities")
            ys.append(np.asarray(pr["y_true"]) == positive_index)
            ss.append(proba[:, positive_index])
        kind = "baseline" if recs[0].get("kind") == "baseline" else "candidate"
        curves.append(RocCurve(label, np.concatenate(ys).astype(int), np.concatenate(ss), kind))
    return curves


def _curve_style(kind: str, i: int) -> dict[str, Any]:
    """Line properties of the ``i``-th curve of its family."""
    if kind == "baseline":
        grey = _BASELINE_GREYS[(i // len(_BASELINE_LINESTYLES)) % len(_BASELINE_GREYS)]
        return dict(linestyle=_BASELINE_LINESTYLES[i % len(_BASELINE_LINESTYLES)],
                    marker=_BASELINE_MARKERS[i % len(_BASELINE_MARKERS)], color=grey,
                    markerfacecolor="white", markeredgecolor=grey, linewidth=1.3, markersize=4.5)
    grey = _CANDIDATE_GREYS[(i // len(_LINESTYLES)) % len(_CANDIDATE_GREYS)]
    return dict(linestyle=_LINESTYLES[i % len(_LINESTYLES)], marker=_CANDIDATE_MARKERS[i % len(_CANDIDATE_MARKERS)],
                color=grey, markerfacecolor=grey, markeredgecolor=grey, linewidth=1.8, markersize=4.5)


def curve_styles(kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Line styles of curves of these kinds (``"candidate"`` / ``"baseline"``), in order:
    each kind numbered on its own, as :func:`_curve_style` takes them."""
    counts: dict[str, int] = {}
    out = []
    for k in kinds:
        out.append(_curve_style(k, counts.get(k, 0)))
        counts[k] = counts.get(k, 0) + 1
    return out


def unit_square(ax: Any) -> None:
    """Axes over [0, 1] x [0, 1], square, ticks every 0.2, a light grid below the data
    (ROC curves, reliability diagrams)."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def roc_axes(curves: Sequence[RocCurve], title: str | None = None) -> "Figure":
    """Draw ROC curves on a new square figure and return it (not saved).

    Parameters
    ----------
    curves : list of RocCurve
        Drawn in order; each legend entry reads ``label (AUC 0.912)``.
    title : str, optional
        Axes title.

    Returns
    -------
    Figure
        One axes; its lines carry ``gid`` ``"roc:<label>"`` (and ``"chance"``). The
        legend lies below the axes and its labels, so it hides no curve.
    """
    import matplotlib

    curves = list(curves)
    if not curves:
        raise ValueError("no ROC curves to draw")
    with matplotlib.rc_context(_rc()):
        fig = _new_figure((4.2, 4.2))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle=(0, (1, 3)), color="0.7", linewidth=0.9, label="_chance",
                gid="chance", zorder=1)
        for c, style in zip(curves, curve_styles([c.kind for c in curves])):
            fpr, tpr, auc = c.roc()
            # Markers spaced evenly along the drawn path (a fraction of the axes diagonal),
            # so a curve of 20 points and one of 2000 carry the same number of marks.
            ax.plot(fpr, tpr, label=f"{c.label} (AUC {auc:.3f})", markevery=0.1, clip_on=False,
                    gid=f"roc:{c.label}", zorder=3 if c.kind == "candidate" else 2, **style)
        unit_square(ax)
        ax.set_xlabel("1 − specificity (false-positive rate)")
        ax.set_ylabel("Sensitivity (true-positive rate)")
        if title:
            ax.set_title(title)
        # The legend goes below the axes, under the x label: inside, any corner of a
        # ROC plot can hold a curve (and long candidate names covered the y label).
        # Its place is measured from the drawn tick labels and x label, so it never
        # overlaps them; save_figure's bbox_inches="tight" widens the file to hold it.
        renderer = fig.canvas.get_renderer()
        below = ax.get_tightbbox(renderer).y0
        gap = 4 / 72 * fig.dpi  # 4 points
        y = ax.transAxes.inverted().transform((0, below - gap))[1]
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, y), bbox_transform=ax.transAxes, frameon=True,
                  framealpha=1.0, edgecolor="0.8", handlelength=3.2, borderaxespad=0.0)
    return fig


def roc_figure(curves: Sequence[RocCurve], path: str | os.PathLike, title: str | None = None) -> list[Path]:
    """ROC curves saved as PNG and PDF (see :func:`roc_axes` and :func:`save_figure`).

    Returns
    -------
    list of Path
        The PNG and the PDF.
    """
    return save_figure(roc_axes(curves, title=title), path)


# ---- heat map ----------------------------------------------------------------------


def _records_frame(records: Any) -> pd.DataFrame:
    """A tidy frame (metrics as columns) from a frame, a list of record dicts, or a run."""
    if isinstance(records, pd.DataFrame):
        return records
    if isinstance(records, (str, os.PathLike)) or hasattr(records, "frame"):
        return _open_store(records).frame()  # only here is the search package imported
    rows = []
    for r in records:  # the dicts of ResultStore.records(): metrics nested
        row = {k: v for k, v in r.items() if k != "metrics"}
        row.update(r.get("metrics") or {})
        rows.append(row)
    return pd.DataFrame(rows)


def _metric_names(df: pd.DataFrame) -> list[str]:
    """Numeric columns that are metrics (not counts, sizes or bookkeeping)."""
    types = pd.api.types
    return sorted(c for c in df.columns if c not in _NOT_METRICS
                  and types.is_numeric_dtype(df[c]) and not types.is_bool_dtype(df[c]))


def _subset_code(codes: Any) -> str:
    """``[AVR]`` or ``[L0a+L0b]``: the rule of the candidate labels and the tables."""
    if isinstance(codes, str):
        return codes if codes.startswith("[") else f"[{codes}]"
    return join_codes([str(c) for c in codes])


def heatmap_table(records: Any, metric: str = "auc", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """CV means of ``metric`` as a subset x (head, ensemble) table.

    Parameters
    ----------
    records : DataFrame, list of dict, ResultStore or path
        ``ResultStore.frame()``, ``ResultStore.records()``, or the run itself.
    metric : str
        A metric column (``auc``, ``accuracy``, ``sensitivity`` ...).
    columns : list of str, optional
        Which columns to show, in this order (e.g. ``["svm-rbf", "rf", "vote-soft"]``).

    Returns
    -------
    DataFrame
        Index: subset codes (``[AVR]``), by size then code; columns: head names
        (alphabetical), then ``vote-hard``, ``vote-soft``, ``stack`` where present.
        Only CV folds are averaged: test records are dropped before anything else, so a
        ranking figure can never show a test value. Baselines (no subset) are left out;
        a missing pair is NaN.

    Raises
    ------
    ValueError
        No records, or no CV records of feature subsets.
    KeyError
        ``metric`` is not a metric of the records (the message lists those that are).
    """
    cv = _cv_subset_records(records, metric)
    table = cv.groupby(["_row", "_col"], sort=False)[metric].mean().unstack("_col")
    table = table.loc[_heatmap_rows(table, cv), _heatmap_columns(table, cv, columns)]
    table.index.name, table.columns.name = "subset", None
    return table


def _cv_subset_records(records: Any, metric: str) -> pd.DataFrame:
    """The CV records of feature subsets (test and baselines dropped), each with its
    heat-map row (``_row``: subset code), size and column (``_col``)."""
    df = _records_frame(records)
    if not len(df):
        raise ValueError("no records to draw: the run is empty")
    available = _metric_names(df)
    if metric not in available:
        raise KeyError(f"unknown metric {metric!r}; the records hold: {', '.join(available)}")
    missing = [c for c in ("candidate", "kind", "codes", "fold") if c not in df.columns]
    if missing:
        raise ValueError(f"records lack the columns {missing}; pass ResultStore.frame() or .records()")
    cv = df[df["fold"].map(is_cv_fold) & (df["kind"] != "baseline")]
    cv = cv[cv["codes"].map(lambda c: c is not None and not (isinstance(c, float)) and len(c) > 0)]
    if not len(cv):
        raise ValueError("no cross-validation records of feature subsets (only test or baseline records)")
    cv = cv.assign(
        _row=cv["codes"].map(_subset_code),
        _size=cv["codes"].map(len),
        # A head's column is its name; an ensemble's its kind. Two ensembles of one kind
        # over different members (vote-soft(svm+rf), vote-soft(svm+lr)) keep their own
        # columns, named by the candidate label without the subset.
        _suffix=cv["candidate"].map(lambda s: s.split("] ", 1)[1] if s.startswith("[") and "] " in s else s),
    )
    heads = cv["kind"] == "head"
    col = pd.Series(index=cv.index, dtype=object)
    col[heads] = cv.loc[heads, "head"].astype(str)
    for kind, grp in cv[~heads].groupby("kind", sort=False):
        many = grp["_suffix"].nunique() > 1
        col[grp.index] = grp["_suffix"] if many else kind
    return cv.assign(_col=col)


def _heatmap_columns(table: pd.DataFrame, cv: pd.DataFrame, columns: Sequence[str] | None) -> list[str]:
    """Heads by name, then ensembles in ENSEMBLE_KINDS order; or ``columns`` as given."""
    rank = {k: i for i, k in enumerate(ENSEMBLE_KINDS)}
    kind_of = dict(zip(cv["_col"], cv["kind"]))

    def col_key(c: str) -> tuple:
        # Heads by name, so the frame and the records (which list candidates in
        # different orders) give the same figure.
        k = kind_of[c]
        return (0, c) if k == "head" else (1, rank.get(k, len(rank)), k, c)

    cols = sorted(table.columns, key=col_key)
    if columns is not None:
        unknown = [c for c in columns if c not in table.columns]
        if unknown:
            raise KeyError(f"columns {unknown} are not in the records; they hold: {', '.join(cols)}")
        cols = list(columns)
    return cols


def _heatmap_rows(table: pd.DataFrame, cv: pd.DataFrame) -> list[str]:
    """Subsets by size, then code."""
    sizes = cv.groupby("_row")["_size"].first()
    return sorted(table.index, key=lambda r: (sizes[r], r))


def _luminance(rgba: Sequence[float]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with the cell (WCAG contrast ratio)."""
    lum = _luminance(rgba)
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def heatmap_axes(records: Any, metric: str = "auc", title: str | None = None, *,
                 columns: Sequence[str] | None = None, vmin: float | None = None, vmax: float | None = None,
                 cmap: str = "cividis") -> "Figure":
    """Draw the subset x head heat map of CV means and return the figure (not saved).

    Parameters
    ----------
    records, metric, columns
        As :func:`heatmap_table`.
    title : str, optional
        Axes title.
    vmin, vmax : float, optional
        Colour range; default the range of the values.
    cmap : str
        A sequential colormap. The default, ``cividis``, is perceptually uniform and its
        lightness rises monotonically from dark blue to yellow, so the grey level of a
        cell in a black-and-white print still orders the values (and it is readable with
        colour-vision deficiency); a diverging or rainbow map (``jet``) would not be.

    Returns
    -------
    Figure
        Cell texts carry ``gid`` ``"cell:<row>|<column>"``; an empty cell reads ``–``.
    """
    import matplotlib
    from matplotlib.colors import Normalize

    table = heatmap_table(records, metric, columns)
    values = table.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin if vmin is not None else 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    if hi <= lo:  # every cell equal: centre the colour instead of dividing by zero
        lo, hi = lo - 0.5e-3, hi + 0.5e-3
    norm = Normalize(vmin=lo, vmax=hi)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")
    label = metric_label(metric, capital=True)
    with matplotlib.rc_context(_rc()):
        # About a quarter inch per row and an inch per column, plus room for labels.
        width = 1.6 + 0.95 * n_cols + 1.0
        height = 1.1 + 0.28 * n_rows
        fig = _new_figure((width, height))
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, norm=norm, aspect="auto",
                       interpolation="nearest")
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if np.isfinite(v):
                    text, colour = f"{v:.3f}", _text_colour(colormap(norm(v)))
                else:
                    text, colour = "–", "0.4"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7.5,
                        gid=f"cell:{table.index[i]}|{table.columns[j]}")
        ax.set_xticks(range(n_cols), [str(c) for c in table.columns], rotation=30, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(range(n_rows), [str(r) for r in table.index])
        ax.tick_params(length=0)
        # Thin white grid between cells, so neighbouring equal greys stay separate.
        ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.0)
        ax.tick_params(which="minor", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("Head / ensemble")
        ax.set_ylabel("Feature subset")
        ax.set_title(title or f"{label}, mean over CV folds")
        cbar = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
        cbar.set_label(f"{label} (CV mean)")
    return fig


def heatmap_figure(records: Any, metric: str = "auc", path: str | os.PathLike | None = None,
                   title: str | None = None, **kwargs: Any) -> list[Path]:
    """The heat map of :func:`heatmap_axes`, saved as PNG and PDF at ``path`` (required).

    Returns
    -------
    list of Path
        The PNG and the PDF.
    """
    if path is None:
        raise TypeError("heatmap_figure needs a path (its suffix is replaced by .png and .pdf)")
    return save_figure(heatmap_axes(records, metric, title, **kwargs), path)

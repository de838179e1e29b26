"""Paper figures: ROC curves and the subset x head heat map.

Most tests draw synthetic curves and record frames (a few seconds); those marked
``slow`` read a small real sweep run, whose imports (torch, via the search package) and
fits take longer than the rest together.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from workbench.report.figures import (  # noqa: E402
    RocCurve,
    heatmap_axes,
    heatmap_figure,
    heatmap_table,
    roc_axes,
    roc_curves_from_store,
    roc_figure,
    save_figure,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A sweep over single blocks and one pair; every 3rd image is test (both classes)."""
    from _sweepdata import FAST, make_task, sweep_args

    from workbench.evaluation.store import ResultStore
    from workbench.search.sweep import sweep

    manifest, fs = make_task(test_every=3)
    out = tmp_path_factory.mktemp("run")
    pair = ["alexnet:fc6", "resnet50:avgpool"]
    subsets = [[b] for b in fs.blocks] + [pair]
    # No inner grid search and a small forest: the figures need records, not good models.
    fast = dict(FAST, subsets=subsets, grids={"svm-rbf": {}, "rf": {"n_estimators": [10]}})
    sweep(manifest, fs, out=out, **sweep_args(**fast))
    return ResultStore(out)


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def _cells(fig) -> dict[str, str]:
    return {t.get_gid()[len("cell:"):]: t.get_text() for t in fig.axes[0].texts
            if (t.get_gid() or "").startswith("cell:")}


def _curves(n_candidates: int = 4, n_baselines: int = 2) -> list[RocCurve]:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    out = []
    for i in range(n_candidates + n_baselines):
        kind = "candidate" if i < n_candidates else "baseline"
        out.append(RocCurve(f"c{i}", y, y * (0.5 + 0.3 * i) + rng.normal(size=y.size), kind))
    return out


# ---- ROC -----------------------------------------------------------------------------


@pytest.mark.slow
def test_roc_from_store_files_and_auc(run, tmp_path):
    from matplotlib.image import imread
    from sklearn.metrics import roc_auc_score

    labels = ["[A] svm-rbf", "[AR] rf", "[AR] vote-soft(svm-rbf+rf)"]
    curves = roc_curves_from_store(run, labels, positive_index=1)
    assert [c.label for c in curves] == labels and {c.kind for c in curves} == {"candidate"}
    # The run's positive class is the default positive column.
    assert all(np.array_equal(a.score, b.score) for a, b in zip(curves, roc_curves_from_store(run, labels)))

    # The same AUC as the test record and as scikit-learn on the stored predictions.
    frame = run.frame()
    fig = roc_axes(curves)
    for c, text in zip(curves, _legend(fig)):
        rec = next(r for r in run.records() if r["candidate"] == c.label and r["fold"] == "test")
        pr = run.predictions(rec)
        auc = roc_auc_score(pr["y_true"] == 1, pr["proba"][:, 1])
        stored = frame.loc[(frame["candidate"] == c.label) & (frame["fold"] == "test"), "auc"].item()
        assert auc == pytest.approx(stored)
        assert text == f"{c.label} (AUC {auc:.3f})"

    paths = roc_figure(curves, tmp_path / "fig" / "roc.pdf", title="Test")
    assert paths == [tmp_path / "fig" / "roc.png", tmp_path / "fig" / "roc.pdf"]
    img = imread(paths[0])
    assert img.ndim == 3 and min(img.shape[:2]) > 500  # 200 dpi
    assert paths[1].read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_roc_pooled_cv_and_bad_candidate(run):
    (pooled,) = roc_curves_from_store(run, ["[V] rf"], fold="cv")
    n_train = sum(1 for r in run.records() if r["candidate"] == "[V] rf" and r["fold"] != "test")
    assert n_train == 3 and pooled.y_true.size == 48  # 72 images, 24 test, the rest out-of-fold once
    with pytest.raises(KeyError, match=r"'\[X\] rf'.*\[A\] rf"):
        roc_curves_from_store(run, ["[X] rf"])
    with pytest.raises(KeyError, match="no fold '7'"):
        roc_curves_from_store(run, ["[V] rf"], fold="7")


def test_roc_styles_tell_curves_apart_without_colour():
    fig = roc_axes(_curves(4, 2))
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    cand = [lines[f"roc:c{i}"] for i in range(4)]
    base = [lines["roc:c4"], lines["roc:c5"]]
    # Four candidates: four different line styles, so colour is never needed.
    assert len({ln.get_linestyle() for ln in cand}) == 4
    assert len({ln.get_linestyle() for ln in base}) == 2
    # Every curve differs in (style, marker, grey) and carries markers.
    sig = [(ln.get_linestyle(), ln.get_marker(), ln.get_color(), ln.get_markerfacecolor()) for ln in cand + base]
    assert len(set(sig)) == len(sig) and all(s[1] not in (None, "None", "") for s in sig)
    # Colours are greys (r = g = b), baselines lighter and hollow-marked.
    from matplotlib.colors import to_rgb

    grey = [to_rgb(ln.get_color()) for ln in cand + base]
    assert all(r == g == b for r, g, b in grey)
    assert min(g[0] for g in grey[4:]) > max(g[0] for g in grey[:4])
    assert all(to_rgb(ln.get_markerfacecolor()) == (1, 1, 1) for ln in base)
    # The chance diagonal, square 0..1 axes, and curves stay distinct for many curves.
    assert list(lines["chance"].get_xdata()) == [0, 1]
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1) and ax.get_aspect() == 1
    many = roc_axes(_curves(12, 6)).axes[0].get_lines()[1:]
    sig = [(ln.get_linestyle(), ln.get_marker(), ln.get_color(), ln.get_markerfacecolor()) for ln in many]
    assert len(set(sig)) == len(sig)


def test_roc_figure_grayscale_png_shows_every_curve(tmp_path):
    """In the grayscale PNG, candidates (dark) and baselines (mid grey) both show up."""
    from matplotlib.image import imread

    png, _ = roc_figure(_curves(2, 1), tmp_path / "roc")
    rgb = imread(png)[..., :3]
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    assert (gray < 0.1).sum() > 1000  # black candidate lines and text
    assert ((gray > 0.45) & (gray < 0.55)).sum() > 200  # the 0.5-grey baseline


def test_roc_legend_with_long_names_hides_no_data_and_no_label(tmp_path):
    """The legend lies outside the axes and clear of the tick labels and axis labels."""
    from matplotlib.image import imread
    from matplotlib.transforms import Bbox

    long = ["[L0a+L1a+L2a+L0b+L2b] vote-soft(svm-rbf+rf)", "[L1a+L2a+L0b+L2b] vote-soft(svm-rbf+rf)",
            "[L0a+L1a+L2a+L0b+L1b+L2b] vote-soft(svm-rbf+rf)", "CNN lite0"]
    curves = [RocCurve(name, c.y_true, c.score, c.kind) for name, c in zip(long, _curves(3, 1))]
    fig = roc_axes(curves, title="ROC on the test split")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    data_area = ax.get_window_extent(renderer)
    assert not legend.overlaps(data_area)
    labels = [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.get_xticklabels(), *ax.get_yticklabels()]
    for text in labels:
        if text.get_text():
            assert not legend.overlaps(text.get_window_extent(renderer)), text.get_text()
    assert legend.y1 < data_area.y0  # below the plot, whatever the names' length
    # The saved file holds all of it: bbox_inches="tight" grows the PNG to the legend.
    png, _ = roc_figure(curves, tmp_path / "roc_long")
    h, w = imread(png).shape[:2]
    full = Bbox.union([ax.get_tightbbox(renderer), legend])
    assert h / w == pytest.approx(full.height / full.width, rel=0.05)


def test_roc_bad_input():
    with pytest.raises(ValueError, match="both 0"):
        RocCurve("one class", np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="kind"):
        RocCurve("x", np.array([0, 1]), np.array([0.1, 0.9]), kind="radiologist")
    with pytest.raises(ValueError, match="2 labels but 3"):
        RocCurve("x", np.array([0, 1]), np.array([0.1, 0.9, 0.3]))
    with pytest.raises(ValueError, match="no ROC"):
        roc_axes([])


# ---- heat map ------------------------------------------------------------------------


@pytest.mark.slow
def test_heatmap_cells_are_cv_means(run, tmp_path):
    frame = run.frame()
    table = heatmap_table(frame, "auc")
    assert list(table.index) == ["[A]", "[R]", "[V]", "[AR]"]
    assert list(table.columns) == ["rf", "svm-rbf", "vote-hard", "vote-soft"]
    # The records (nested metrics, another order) and the store itself give the same table.
    pd.testing.assert_frame_equal(heatmap_table(run.records(), "auc"), table)
    pd.testing.assert_frame_equal(heatmap_table(run.root, "auc"), table)

    cells = _cells(heatmap_axes(frame, "accuracy"))
    cv = frame[frame["fold"] != "test"]
    expected = {}
    for cand, grp in cv.groupby("candidate"):
        row, col = cand.split("] ")
        col = col.split("(")[0]
        expected[f"{row}]|{col}"] = f"{grp['accuracy'].mean():.3f}"
    assert cells == expected

    paths = heatmap_figure(frame, "auc", tmp_path / "heat.png")
    assert [p.name for p in paths] == ["heat.png", "heat.pdf"]
    assert paths[1].read_bytes().startswith(b"%PDF")
    from matplotlib.image import imread

    assert imread(paths[0]).ndim == 3


def _synthetic_frame() -> pd.DataFrame:
    """Records whose test rows carry a value (0.111) that no CV mean can have."""
    rows = []
    subsets = [["A"], ["V"], ["A", "V"], ["A", "V", "R"], ["R"]]
    for codes in subsets:
        code = "".join(codes)
        for label, kind, head in [("svm-rbf", "head", "svm-rbf"), ("rf", "head", "rf"),
                                  ("vote-soft(svm-rbf+rf)", "vote-soft", None), ("stack(svm-rbf+rf)", "stack", None)]:
            for fold in ("0", "1", "test"):
                auc = 0.111 if fold == "test" else 0.5 + 0.1 * len(codes) + (0.01 if fold == "1" else 0.0)
                rows.append(dict(candidate=f"[{code}] {label}", kind=kind, head=head, codes=codes,
                                 size=len(codes), fold=fold, auc=auc, seed=0))
    for fold in ("0", "1", "test"):
        rows.append(dict(candidate="CNN lite0", kind="baseline", head="lite0", codes=[], size=0, fold=fold,
                         auc=0.222, seed=0))
    return pd.DataFrame(rows)


def test_heatmap_never_shows_test_or_baselines():
    frame = _synthetic_frame()
    fig = heatmap_axes(frame, "auc")
    cells = _cells(fig)
    texts = set(cells.values())
    assert "0.111" not in texts and "0.222" not in texts
    assert cells["[A]|svm-rbf"] == "0.605" and cells["[AVR]|stack"] == "0.805"
    # Rows by size then code; heads, then ensembles in kind order.
    table = heatmap_table(frame)
    assert list(table.index) == ["[A]", "[R]", "[V]", "[AV]", "[AVR]"]
    assert list(table.columns) == ["rf", "svm-rbf", "vote-soft", "stack"]
    # The colour bar names the metric; the figure grows with the rows.
    cbar_ax = fig.axes[1]
    assert "AUC" in cbar_ax.get_ylabel()
    small = heatmap_axes(frame[frame["size"] <= 1])
    assert small.get_figheight() < fig.get_figheight()


def test_heatmap_codes_read_as_in_the_tables():
    """Multi-character codes are joined with '+', as in candidate labels and tables."""
    from workbench.report.tables import _subset_code as table_code
    from workbench.search.candidates import subset_code

    rows = []
    for codes in (["L0a"], ["L0b"], ["L0a", "L0b"], ["L0a", "L1a", "L0b"]):
        label = "[" + "+".join(codes) + "]"
        for fold in ("0", "1"):
            rows.append(dict(candidate=f"{label} svm-rbf", kind="head", head="svm-rbf", codes=codes,
                             size=len(codes), fold=fold, auc=0.8, seed=0))
    table = heatmap_table(pd.DataFrame(rows))
    assert list(table.index) == ["[L0a]", "[L0b]", "[L0a+L0b]", "[L0a+L1a+L0b]"]
    for codes, code in zip((["L0a", "L0b"], ["L0a", "L1a", "L0b"]), table.index[2:]):
        assert code == table_code(codes) == subset_code(codes, {c: c for c in codes})
    assert heatmap_table(_synthetic_frame()).index[-1] == "[AVR]"  # one letter each: no '+'


def test_heatmap_text_contrasts_with_cell():
    from matplotlib.colors import to_rgb

    frame = _synthetic_frame()
    fig = heatmap_axes(frame, "auc")
    colours = {k: to_rgb(t.get_color()) for k, t in
               ((t.get_gid()[5:], t) for t in fig.axes[0].texts if (t.get_gid() or "").startswith("cell:"))}
    # Darkest cells (lowest values, cividis) get white text, brightest black.
    assert colours["[A]|rf"] == (1, 1, 1) and colours["[AVR]|rf"] == (0, 0, 0)


def test_heatmap_columns_and_missing_cells():
    frame = _synthetic_frame()
    frame = frame[~((frame["candidate"] == "[R] rf"))]
    table = heatmap_table(frame, columns=["svm-rbf", "rf"])
    assert list(table.columns) == ["svm-rbf", "rf"] and np.isnan(table.loc["[R]", "rf"])
    assert _cells(heatmap_axes(frame))["[R]|rf"] == "–"
    with pytest.raises(KeyError, match="lr"):
        heatmap_table(frame, columns=["lr"])


@pytest.mark.slow
def test_heatmap_unknown_metric_on_a_run(run):
    with pytest.raises(KeyError, match=r"unknown metric 'aucc'.*accuracy.*auc.*sensitivity"):
        heatmap_table(run.frame(), "aucc")
    with pytest.raises(KeyError, match="unknown metric 'n_train'"):
        heatmap_table(run.records(), "n_train")


def test_heatmap_bad_input():
    frame = _synthetic_frame().assign(accuracy=0.5, n_train=10)
    with pytest.raises(KeyError, match=r"unknown metric 'aucc'; the records hold: accuracy, auc\W*$"):
        heatmap_table(frame, "aucc")
    with pytest.raises(KeyError, match="unknown metric 'seed'"):
        heatmap_table(frame, "seed")
    with pytest.raises(ValueError, match="empty"):
        heatmap_table(pd.DataFrame())
    with pytest.raises(ValueError, match="empty"):
        heatmap_axes([])
    only_test = _synthetic_frame().query("fold == 'test'")
    with pytest.raises(ValueError, match="no cross-validation"):
        heatmap_table(only_test)
    with pytest.raises(TypeError, match="path"):
        heatmap_figure(_synthetic_frame(), "auc")


# ---- files ---------------------------------------------------------------------------


def test_two_runs_give_identical_bytes(tmp_path):
    frame = _synthetic_frame()
    out = []
    for name in ("a", "b"):
        paths = roc_figure(_curves(2, 1), tmp_path / name / "roc.pdf", title="ROC")
        paths += heatmap_figure(frame[frame["size"] <= 1], "auc", tmp_path / name / "heat")
        out.append([p.read_bytes() for p in paths])
    assert out[0] == out[1]
    assert b"CreationDate" not in out[0][1] and b"Matplotlib" not in out[0][0]


def test_save_figure_pyplot_figure_is_closed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    n = len(plt.get_fignums())
    paths = save_figure(fig, tmp_path / "plain")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.exists() for p in paths)
    assert len(plt.get_fignums()) == n - 1

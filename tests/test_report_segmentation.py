"""The report's segmentation section: the Y-Net table, the contour grid and the ablation note.

Fast tests write a small run folder record by record (made-up per-image Dice and IoU, no
network) and check the table against numpy / scipy computed here; the slow test trains
two tiny Y-Nets on a BUSI slice and builds the section end to end, figure included.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score

from _sweepdata import make_task
from _helpers import busi_two_class_slice
from workbench.evaluation import stats
from workbench.evaluation.protocol import Protocol, build_task
from workbench.evaluation.settings import fold_repeat, is_cv_fold
from workbench.evaluation.store import ResultStore
from workbench.report import segmentation as RS
from workbench.report.tables import fmt, fmt_p
from workbench.search.select import search

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"


# ---- a synthetic run -----------------------------------------------------------------------


def _lesion_of(ids: np.ndarray) -> np.ndarray:
    """Which images have a lesion: all but every 7th (an empty manual mask, as BUSI's normal images)."""
    return np.array([int(i[3:]) for i in ids]) % 7 != 0


def _dice_of(ids: np.ndarray, y: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Made-up Dice/IoU per image, fixed by its id; every 5th image has no manual mask (NaN);
    an image without a lesion scores 1 (left blank) or 0 (something predicted)."""
    n = np.array([int(i[3:]) for i in ids])
    dice = np.clip(0.35 + 0.5 * ((n * 37) % 100) / 100 + 0.05 * y - shift, 0, 1)
    dice[n % 11 == 0] = 0.02  # a few totally wrong masks
    iou = dice / (2 - dice)  # IoU of a mask with that Dice
    blank = ~_lesion_of(ids)
    dice[blank] = iou[blank] = (n[blank] % 2 == 0) * 1.0
    none = n % 5 == 0
    dice[none], iou[none] = np.nan, np.nan
    return dice, iou


def _write_run(root: Path, *, repeats: int = 2, dice: bool = True, n: int = 90, noisy: str = "noseg",
               noise: float = 0.6) -> ResultStore:
    """A head, a plain CNN, a Y-Net and its ablation on every fold of ``repeats`` CV repeats and
    test; the ``noisy`` one (``"noseg"`` or ``"ynet"``) sees the images through noise of sd ``noise``."""
    manifest, _ = make_task(n=n, test_every=3)
    task = build_task(manifest, Protocol(cv=3, inner_cv=3, seed=0, repeats=repeats))
    store = task.open_store(root)
    pos = list(task.class_names).index(task.positive)
    rng = np.random.default_rng(0)
    signal = (task.y == pos) * 1.0 + rng.normal(0, 0.8, task.y.size)
    models = {
        "svm": (1.0, dict(head="svm-rbf", heads=[], blocks=["alexnet:fc6"], codes=["A"], size=1), None),
        "CNN lite0": (0.7, dict(head="lite0", baseline="lite0", heads=[], blocks=[], codes=[], size=0,
                                backbone="tf_efficientnet_lite0", weights_id="ft-aaaa"), None),
        "CNN ynet-lite0": (1.3, dict(head="ynet-lite0", baseline="ynet-lite0", heads=[], blocks=[], codes=[],
                                     size=0, backbone="tf_efficientnet_lite0", weights_id="ft-notinstore1",
                                     config={"model": "ynet", "seg_weight": 1.0}), 0.0),
        "CNN ynet-lite0-noseg": (0.5, dict(head="ynet-lite0-noseg", baseline="ynet-lite0-noseg", heads=[],
                                           blocks=[], codes=[], size=0, backbone="tf_efficientnet_lite0",
                                           weights_id="ft-notinstore2",
                                           config={"model": "ynet", "seg_weight": 0.0}), 0.3),
    }
    for name, (gain, fields, shift) in models.items():
        kind = "head" if name == "svm" else "baseline"
        for fold, _, ev in task.outer:
            # Noise of its own: another order of the cases.
            mine = name.endswith("noseg") if noisy == "noseg" else name == "CNN ynet-lite0"
            extra = np.random.default_rng(1).normal(0, noise, task.y.size) if mine else 0 * signal
            p = 1 / (1 + np.exp(-gain * (signal[ev] + extra[ev] - 0.5)))
            proba = np.column_stack([1 - p, p]) if pos == 1 else np.column_stack([p, 1 - p])
            f = dict(fields)
            if shift is not None:
                f["segmentation"] = {"n": 0}  # the section reads the arrays, not this summary
            rec, preds = task.record(candidate_id=name.replace(" ", "-"), candidate=name, kind=kind, fold=fold,
                                     proba=proba, pred=proba.argmax(1), versions={}, fields=f)
            if shift is not None and dice:
                preds["dice"], preds["iou"] = _dice_of(preds["ids"], preds["y_true"], shift)
                preds["lesion"] = _lesion_of(preds["ids"]) & np.isfinite(preds["dice"])
            store.append(rec, preds)
    return store


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("seg") / "run")


@pytest.fixture(scope="module")
def run_result(run_store):
    return search(run_store, "auc", top_k=1)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _section(store, result, out, **kw):
    kw.setdefault("n_boot", 400)  # the intervals' resamples: fewer, for speed
    return RS.segmentation_section(store, store.frame(), result, tables_dir=out / "tables",
                                   figures_dir=out / "figures", **kw)


# ---- the table ----------------------------------------------------------------------------


def test_table_numbers_are_the_hand_computed_ones(run_store, run_result, tmp_path):
    tables, figures, notes = _section(run_store, run_result, tmp_path)
    assert [t.key for t in tables] == ["segmentation"] and figures == []
    for ext in ("md", "tex", "csv"):
        assert (tmp_path / "tables" / f"segmentation.{ext}").is_file()
    rows = _rows(tmp_path / "tables" / "segmentation.csv")
    # Y-Nets only (the plain CNN and the head have no masks), each set test first, "all" first.
    keys = [(r["Model"], r["Set"], r["Class"]) for r in rows]
    assert {k[0] for k in keys} == {"CNN ynet-lite0", "CNN ynet-lite0-noseg"}
    assert [k[1:] for k in keys if k[0] == "CNN ynet-lite0"] == [
        ("test", "all"), ("test", "benign"), ("test", "malignant"),
        ("CV (out-of-fold)", "all"), ("CV (out-of-fold)", "benign"), ("CV (out-of-fold)", "malignant")]
    classes = run_store.protocol()["classes"]
    recs = [r for r in run_store.current_records() if r["candidate"] == "CNN ynet-lite0"]

    def arrays(cv: bool, cls: str | None):
        chosen = [r for r in recs if (is_cv_fold(r["fold"]) and fold_repeat(r["fold"]) == 0 if cv
                                      else r["fold"] == "test")]
        prs = [run_store.predictions(r) for r in chosen]
        d = np.concatenate([p["dice"] for p in prs])
        j = np.concatenate([p["iou"] for p in prs])
        lab = np.concatenate([np.array(classes)[p["y_true"]] for p in prs])
        lesion = np.concatenate([p["lesion"] for p in prs])
        keep = np.isfinite(d) & (lab == cls if cls else True)
        return d[keep & lesion], j[keep & lesion], d[keep & ~lesion]

    by = {(r["Model"], r["Set"], r["Class"]): r for r in rows}
    for cv, name in ((False, "test"), (True, "CV (out-of-fold)")):
        for cls in (None, "benign", "malignant"):
            d, j, blank = arrays(cv, cls)
            r = by[("CNN ynet-lite0", name, cls or "all")]
            # Images without a lesion: the share left blank (Dice 1), never in the Dice figures.
            assert blank.size > 0 and float(r["No lesion: left blank"]) == pytest.approx((blank == 1).mean())
            assert int(float(r["n"])) == d.size > 5
            assert float(r["Median Dice (95 % CI)"]) == pytest.approx(np.median(d))
            assert float(r["Mean Dice (95 % CI)"]) == pytest.approx(d.mean())
            assert float(r["Mean IoU (95 % CI)"]) == pytest.approx(j.mean())
            assert float(r["Dice < 0.1"]) == pytest.approx((d < 0.1).mean())
            assert r["Dice range"] == f"{d.min():.3f}–{d.max():.3f}"
    # CV is repeat 0 only: each training image once (60 training images, every 5th unscored).
    d_cv, _, blank_cv = arrays(True, None)
    assert d_cv.size + blank_cv.size == 48 and blank_cv.size > 0
    # Intervals: scipy's percentile bootstrap with the seed the table states.
    d, j, _ = arrays(False, None)
    md = (tmp_path / "tables" / "segmentation.md").read_text()
    for stat, col in ((np.median, 4), (np.mean, 5)):
        ci = bootstrap((d,), stat, n_resamples=400, confidence_level=0.95, method="percentile",
                       random_state=np.random.default_rng(0), vectorized=False).confidence_interval
        assert tables[0].rows[0][col].text == f"{fmt(stat(d))} ({fmt(ci.low)}–{fmt(ci.high)})"
    _, _, blank = arrays(False, None)
    kept = int((blank == 1).sum())
    assert 0 < kept < blank.size and f"{fmt(kept / blank.size)} ({kept}/{blank.size}) |" in md
    assert "non-empty manual mask" in md and "left blank" in md and "not scored" in md
    assert any("ynet-lite0-noseg was trained without its segmentation loss" in n for n in tables[0].notes)


def test_a_missing_manifest_skips_the_figure_with_a_note(run_store, run_result, tmp_path):
    tables, figures, notes = _section(run_store, run_result, tmp_path / "a")
    assert tables and figures == [] and any("does not record its manifest" in n for n in notes)
    assert not list((tmp_path / "a").rglob("*.png"))
    # A manifest file that is not there: skipped too, naming it.
    _, figures, notes = _section(run_store, run_result, tmp_path / "b", manifest=tmp_path / "gone.csv")
    assert figures == [] and any("manifest cannot be read" in n and "gone.csv" in n for n in notes)


def test_the_figure_shows_y_nets_trained_with_their_segmentation_loss(run_store, run_result):
    ynets = RS.ynet_records(run_store, run_store.frame())
    assert list(ynets) == ["CNN ynet-lite0", "CNN ynet-lite0-noseg"]
    assert RS._figure_models(ynets, run_result) == ["CNN ynet-lite0"]  # never the ablation's untrained decoder
    # More than two: the best by CV only.
    many = {f"CNN ynet-{k}": ynets["CNN ynet-lite0"] for k in ("a", "b", "c")}
    order = pd.DataFrame({"candidate": ["CNN lite0", "CNN ynet-b", "CNN ynet-a", "CNN ynet-c"]})
    assert RS._figure_models(many, dataclasses.replace(run_result, baselines=order)) == ["CNN ynet-b"]


def test_the_ablation_note_gives_cv_and_test_auc_and_delong(run_store, run_result, tmp_path):
    tables, _, _ = _section(run_store, run_result, tmp_path)
    note = next(n for n in tables[0].notes if n.startswith("Joint segmentation and classification"))
    classes, positive = run_store.protocol()["classes"], run_store.protocol()["positive"]
    pos = classes.index(positive)
    test = {r["candidate"]: run_store.predictions(r) for r in run_store.current_records() if r["fold"] == "test"}
    y = (test["CNN ynet-lite0"]["y_true"] == pos).astype(int)
    pa, pb = test["CNN ynet-lite0"]["proba"][:, pos], test["CNN ynet-lite0-noseg"]["proba"][:, pos]
    cv = run_store.frame().query("fold != 'test'").groupby("candidate")["auc"].mean()
    assert (f"CV AUC {fmt(cv['CNN ynet-lite0'])} vs {fmt(cv['CNN ynet-lite0-noseg'])}, test AUC "
            f"{fmt(roc_auc_score(y, pa))} vs {fmt(roc_auc_score(y, pb))}") in note
    assert f"paired DeLong test on the same {y.size} test images p = {fmt_p(stats.delong_test(y, pa, pb).p_value)}" \
        in note
    p = stats.delong_test(y, pa, pb).p_value
    assert 0.05 < p < 1 and roc_auc_score(y, pa) != roc_auc_score(y, pb)
    side = "higher" if roc_auc_score(y, pa) > roc_auc_score(y, pb) else "lower"
    assert note.endswith(f"no evidence that the segmentation loss changed classification (p ≥ 0.05; {side} test "
                         "AUC with it).")


@pytest.mark.parametrize("noisy, verdict", [("noseg", "helped"), ("ynet", "hurt")])
def test_a_clear_difference_gets_a_plain_verdict(tmp_path, noisy, verdict):
    store = _write_run(tmp_path / "run", repeats=1, n=600, noisy=noisy, noise=4.0)
    note = RS.ablation_note(store, search(store, "auc", top_k=1), "CNN ynet-lite0", "CNN ynet-lite0-noseg")
    assert "paired DeLong test on the same 200 test images p = " in note
    assert note.endswith(f": the segmentation loss {verdict} classification.")
    # Without the ablation in the comparison: no verdict.
    result = search(store, "auc", top_k=1)
    result.comparison = result.comparison[result.comparison["candidate"] != "CNN ynet-lite0-noseg"]
    assert RS.ablation_note(store, result, "CNN ynet-lite0", "CNN ynet-lite0-noseg").endswith(
        "not both in the comparison; no verdict.")


def test_the_section_gives_identical_bytes_twice(run_store, run_result, tmp_path):
    _section(run_store, run_result, tmp_path / "a")
    _section(run_store, run_result, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_run_without_y_nets_has_no_section(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open({"classes": ["benign", "malignant"], "positive": "malignant"})
    assert RS.segmentation_section(store, None, None, tables_dir=tmp_path / "t", figures_dir=tmp_path / "f") \
        == ([], [], [])
    assert not (tmp_path / "t").exists()


def test_prediction_files_without_dice_are_named(tmp_path):
    store = _write_run(tmp_path / "run", repeats=1, dice=False)
    with pytest.raises(RS.SegmentationReportError, match=r"predictions/CNN-ynet-lite0/0\.npz.*no per-image dice"):
        RS.segmentation_section(store, None, search(store, "auc", top_k=1), tables_dir=None,
                                figures_dir=tmp_path / "f")


@pytest.mark.slow  # two whole reports (~30 s on 2 busy cores)
def test_the_report_shows_the_section_and_rebuilds_byte_identically(tmp_path):
    from workbench.report.build import write_report

    _write_run(tmp_path / "run", repeats=1)
    out = write_report(tmp_path / "run")
    md = (out / "report.md").read_text()
    assert "Lesion segmentation of the Y-Net baselines" in md and "[segmentation](tables/segmentation.md)" in md
    assert "Segmentation figure skipped: the run does not record its manifest" in md
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    out = write_report(tmp_path / "run")
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("tables/segmentation.tex") in first and first == again


def test_three_classes_get_macro_auc_and_mcnemar(tmp_path):
    """Several classes: per-class rows for each, and the ablation note on macro AUC with an
    exact McNemar test of the argmax calls (no paired test of a macro AUC exists)."""
    classes = ("benign", "malignant", "normal")
    manifest, _ = make_task(n=96, classes=classes, test_every=4)
    task = build_task(manifest, Protocol(cv=3, inner_cv=3, seed=0))
    store = task.open_store(tmp_path / "run")
    onehot = np.eye(3)[task.y]
    for name, seed in (("svm", 0), ("CNN ynet-lite0", 1), ("CNN ynet-lite0-noseg", 2)):
        base = name.removeprefix("CNN ")
        logits = 2 * onehot + np.random.default_rng(seed).normal(0, 1.2, onehot.shape)
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        fields = (dict(head="svm-rbf", heads=[], blocks=["alexnet:fc6"], codes=["A"], size=1) if name == "svm" else
                  dict(head=base, baseline=base, heads=[], blocks=[], codes=[], size=0, segmentation={"n": 0},
                       backbone="tf_efficientnet_lite0", weights_id=f"ft-{seed}",
                       config={"model": "ynet", "seg_weight": 0.0 if "noseg" in name else 1.0}))
        for fold, _, ev in task.outer:
            rec, preds = task.record(candidate_id=name.replace(" ", "-"), candidate=name,
                                     kind="head" if name == "svm" else "baseline", fold=fold, proba=proba[ev],
                                     pred=proba[ev].argmax(1), versions={}, fields=fields)
            if name != "svm":
                preds["dice"], preds["iou"] = _dice_of(preds["ids"], preds["y_true"], 0.0)
            store.append(rec, preds)
    tables, _, _ = RS.segmentation_section(store, None, search(store, "auc", top_k=1), n_boot=100,
                                           tables_dir=None, figures_dir=tmp_path / "f")
    shown = [(r[1].text, r[2].text) for r in tables[0].rows if r[0].text == "CNN ynet-lite0"]
    assert shown == [(s, c) for s in ("test", "CV (out-of-fold)") for c in ("all", *classes)]
    note = next(n for n in tables[0].notes if n.startswith("Joint segmentation"))
    test = {r["candidate"]: store.predictions(r) for r in store.current_records() if r["fold"] == "test"}
    a, b = test["CNN ynet-lite0"], test["CNN ynet-lite0-noseg"]
    p = stats.mcnemar_exact(a["y_true"], a["proba"].argmax(1), b["proba"].argmax(1)).p_value
    auc = roc_auc_score(a["y_true"], a["proba"], multi_class="ovr", average="macro")
    assert f"test macro AUC {fmt(auc)} vs " in note
    assert f"exact McNemar test on accuracy (argmax) on the same 24 test images p = {fmt_p(p)}" in note


# ---- the figure ---------------------------------------------------------------------------


def test_tiles_are_best_median_worst_per_class_each_image_once():
    test = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f", "g"],
                         "label": ["x", "x", "x", "x", "y", "y", "z"],
                         "dice": [0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.4]})
    assert RS.pick_tiles(test) == [
        (0, 0, "x", "a", 0.9), (0, 1, "x", "c", 0.5), (0, 2, "x", "b", 0.1),  # median: lower middle, ties by id
        (1, 0, "y", "f", 0.8), (1, 2, "y", "e", 0.3),  # two images: best and worst, no median column
        (2, 0, "z", "g", 0.4)]
    # More classes than rows allow: one row over all images.
    assert [t[:3] for t in RS.pick_tiles(test, max_class_rows=2)] == [(0, 0, "all"), (0, 1, "all"), (0, 2, "all")]
    assert RS.pick_tiles(test, max_class_rows=2)[1][3:] == ("c", 0.5)


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_grid_draws_both_contours_where_the_masks_are(tmp_path):
    h, w = 120, 160
    manual = _disc(h, w, 60, 50, 25)
    predicted = _disc(h, w, 90, 70, 20).astype(np.float32) * 0.9
    image = np.linspace(0, 1, h * w).reshape(h, w)
    tiles = [RS.SegTile(image, manual, predicted, "x\nimg · Dice 0.1", 0, 0),
             RS.SegTile(image, manual, np.zeros((h, w)), "empty prediction", 0, 2)]
    fig = RS.segmentation_grid(tiles, title="t")
    sets = {a.get_gid(): a for ax in fig.axes for a in ax.get_children() if a.get_gid()}
    assert set(sets) == {"manual:0", "predicted:0", "manual:1"}  # an empty mask draws no line

    def radius(gid: str, cx: float, cy: float) -> np.ndarray:
        v = np.concatenate([p.vertices for p in sets[gid].get_paths()])
        return np.hypot(v[:, 0] - cx, v[:, 1] - cy)

    assert np.abs(radius("manual:0", 60, 50) - 25).max() < 1.0
    assert np.abs(radius("predicted:0", 90, 70) - 20).max() < 1.0
    a = RS.save_figure(fig, tmp_path / "a" / "seg")
    b = RS.save_figure(RS.segmentation_grid(tiles, title="t"), tmp_path / "b" / "seg")
    assert [p.name for p in a] == ["seg.png", "seg.pdf"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    with pytest.raises(RS.SegmentationReportError, match="no images"):
        RS.segmentation_grid([])


# ---- end to end on BUSI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_slice():
    return busi_two_class_slice(12, 6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::workbench.training.finetune.SmallValidationWarning")
def test_section_end_to_end_on_tiny_y_nets(busi_slice, tmp_path, monkeypatch):
    from workbench.baselines.run import run_baselines
    from workbench.training.finetune import load_finetuned
    from workbench.training.masks import manual_mask, predict_masks
    from workbench.evaluation.segmentation import dice

    monkeypatch.setenv("WORKBENCH_FINETUNED", str(tmp_path / "ft"))
    run_baselines(busi_slice, ["ynet-lite0", "ynet-lite0-noseg"], tmp_path / "run",
                  protocol=Protocol(cv=2, inner_cv=2, seed=0), overrides={"epochs": 1, "image_size": 64},
                  progress=False)
    store = ResultStore(tmp_path / "run")
    result = search(store, "auc", top_k=1)
    tables, figures, notes = RS.segmentation_section(store, store.frame(), result, manifest=busi_slice,
                                                     n_boot=200, tables_dir=tmp_path / "a" / "t",
                                                     figures_dir=tmp_path / "a" / "f")
    assert [p.name for p in figures] == ["segmentation_ynet-lite0.png", "segmentation_ynet-lite0.pdf"]
    rows = _rows(tmp_path / "a" / "t" / "segmentation.csv")
    test_all = next(r for r in rows if r["Model"] == "CNN ynet-lite0" and r["Set"] == "test" and r["Class"] == "all")
    assert test_all["n"] == "12.0"  # every benign / malignant image has a mask
    assert any(n.startswith("Joint segmentation and classification (CNN ynet-lite0 against") for n in
               tables[0].notes)
    assert any("test network tf_efficientnet_lite0@ft-" in n for n in notes)
    # The masks drawn are the ones scored: re-run on the CPU, they give the recorded Dice.
    rec = next(r for r in store.current_records() if r["candidate"] == "CNN ynet-lite0" and r["fold"] == "test")
    pr = store.predictions(rec)
    ft = load_finetuned(rec["backbone"], rec["weights_id"])
    items = list(busi_slice.subset([str(i) for i in pr["ids"][:3]]))
    probs = predict_masks(ft.model, items, ft.geometry, ft.data_config, device="cpu")
    got = [dice(p > 0.5, manual_mask(it)) for p, it in zip(probs, items)]
    np.testing.assert_allclose(got, pr["dice"][:3], atol=1e-6)
    # Rebuilt: the same bytes, figure included.
    RS.segmentation_section(store, store.frame(), result, manifest=busi_slice, n_boot=200,
                            tables_dir=tmp_path / "b" / "t", figures_dir=tmp_path / "b" / "f")
    for part in ("t/segmentation.csv", "t/segmentation.tex", "f/segmentation_ynet-lite0.png",
                 "f/segmentation_ynet-lite0.pdf"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes(), part
    # The network gone from the store: no figure, a note naming its id, the table still there.
    tables, figures, notes = RS.segmentation_section(store, store.frame(), result, manifest=busi_slice,
                                                     finetuned_root=tmp_path / "elsewhere", n_boot=200,
                                                     tables_dir=None, figures_dir=tmp_path / "c")
    assert figures == [] and tables
    assert any(rec["weights_id"] in n and "skipped" in n for n in notes)


def test_epochs_note_says_which_epoch_each_network_kept():
    """Early stopping watches the class AUC: the note lists each network's kept epoch (test
    last), and says nothing when the records carry no epochs."""
    recs = [{"fold": "1", "best_epoch": 5, "epochs_run": 5}, {"fold": "test", "best_epoch": 1, "epochs_run": 4},
            {"fold": "0", "best_epoch": 2, "epochs_run": 5}]
    note = RS._epochs_note("ynet-lite0", recs)
    assert note.startswith("ynet-lite0: epoch kept of epochs run, per network (fold 0 2 of 5, fold 1 5 of 5, "
                           "test 1 of 4).")
    assert "validation class AUC" in note
    assert RS._epochs_note("ynet-lite0", [{"fold": "0"}, {"fold": "test", "best_epoch": None}]) is None
    # Networks that watched AUC + Dice: the note says so, not that the masks went unwatched.
    both = [{**r, "config": {"monitor": "auc+dice"}} for r in recs]
    note = RS._epochs_note("ynet-lite0", both)
    assert 'monitor = "auc+dice"' in note and "not the masks" not in note
    assert "not the masks" in RS._epochs_note("ynet-lite0", [{**r, "config": {"monitor": "auc"}} for r in recs])

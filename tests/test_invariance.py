"""A run's figures do not depend on how its data is listed.

The same images and labels, with the classes listed the other way round, the manifest's
rows shuffled, or every id renamed, must give the same folds, the same models, the same
thresholds, the same comparison and the same table text (issue 11, item 1). Built on a
manifest of tiny generated PNGs (the folds follow the images' content hashes) and
precomputed feature blocks that are a function of each image alone.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from _sweepdata import sweep_args
from conftest import write_png
from workbench.data.manifest import Manifest
from workbench.features.featureset import FeatureSet
from workbench.report import tables as T
from workbench.evaluation.protocol import Protocol, build_task
from workbench.search.select import search
from workbench.search.sweep import sweep

N = 48
BLOCKS = {"alexnet:fc6": 10, "resnet50:avgpool": 8}
SWEEP = dict(heads=["svm-rbf", "rf"], cv=3, inner_cv=2, progress=False,
             grids={"svm-rbf": {"C": [1.0], "gamma_factor": [1.0]},
                    "rf": {"n_estimators": [15], "max_features": ["sqrt"]}})


def _images(root: Path) -> list[dict]:
    """``N`` images: content, label, split and features fixed per image, whatever it is called."""
    rng = np.random.default_rng(7)
    centers = {b: rng.normal(size=(2, d)) for b, d in BLOCKS.items()}
    rows = []
    for i in range(N):
        label = ("benign", "malignant")[(i * 5) % 3 == 0]  # about one third malignant
        path = write_png(root / "images" / f"x{i:03d}.png", seed=500 + i, size=(8, 8))
        r = np.random.default_rng(1000 + i)
        k = int(label == "malignant")
        feats = {b: (r.normal(size=d) * 1.5 + centers[b][k]).astype(np.float32) for b, d in BLOCKS.items()}
        rows.append({"path": path.relative_to(root).as_posix(), "label": label,
                     "split": "test" if i % 4 == 0 else "train", "feats": feats, "n": i})
    return rows


def _variant(root: Path, rows: list[dict], name: str, *, classes: list[str], order: list[int],
             rename=lambda n: f"img{n:03d}") -> tuple[Manifest, FeatureSet, dict[str, str]]:
    """A manifest (and its features) listing ``rows`` in ``order`` under ids ``rename(n)``."""
    listed = [rows[k] for k in order]
    csv_path = root / f"{name}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label", "split"])
        w.writeheader()
        for r in listed:
            w.writerow({"id": rename(r["n"]), "path": r["path"], "label": r["label"], "split": r["split"]})
    manifest = Manifest.load(csv_path, classes=classes)
    blocks = {b: np.stack([r["feats"][b] for r in listed]) for b in BLOCKS}
    fs = FeatureSet(manifest.ids, manifest.labels, blocks, {})
    return manifest, fs, {rename(r["n"]): f"img{r['n']:03d}" for r in listed}


def _baseline(run: Path, manifest: Manifest, fs: FeatureSet) -> None:
    """A baseline with one model per fold, through the protocol's record layout."""
    task = build_task(manifest, Protocol(cv=3, inner_cv=2, seed=0, scoring="auc", positive=None))
    store = task.open_store(run)
    X = np.asarray(fs["resnet50:avgpool"])
    mal = task.class_names.index("malignant")
    for fold, tr, ev in task.outer:
        yb = (task.y[tr] == mal).astype(int)  # fit on named classes: the class order plays no part
        clf = LogisticRegression(C=0.05, max_iter=2000).fit(X[tr], yb)
        p = clf.predict_proba(X[ev])[:, 1]
        proba = np.column_stack([1 - p, p]) if mal == 1 else np.column_stack([p, 1 - p])
        store.append(*task.record(candidate_id="base", candidate="CNN stand-in", kind="baseline", fold=fold,
                                  proba=proba, pred=proba.argmax(1), versions={},
                                  fields={"head": "CNN", "heads": [], "blocks": [], "codes": [], "size": 0}))


def _outcome(run: Path, manifest: Manifest, fs: FeatureSet, id_of: dict[str, str]) -> dict:
    sweep(manifest, fs, out=run, **sweep_args(**SWEEP))
    _baseline(run, manifest, fs)
    res = search(run, "auc", top_k=2)
    records = pd.DataFrame(res.ranking)
    folds = pd.read_csv(run / "splits.csv", dtype=str)
    comp = res.comparison.drop(columns=["kind"]).set_index(["role", "candidate"]).sort_index()
    from workbench.evaluation.store import ResultStore

    recs = ResultStore(run).frame()
    tables = [T.to_markdown(t) for t in T.study_tables(recs, res.comparison, "auc", degenerate=res.degenerate)]
    return {
        "folds": sorted((id_of[i], f) for i, f in zip(folds["id"], folds["fold"])),
        "ranking": records.set_index("candidate")[["cv_auc", "cv_auc_sd", "test_auc"]].sort_index(),
        "selected": res.selected,
        "comparison": comp,
        "tables": tables,
        "notes": res.notes,
    }


def _same(a: dict, b: dict, rtol: float = 0.0) -> None:
    """Equal runs; ``rtol``: numbers may differ by solver round-off (not in any shown digit)."""
    assert a["folds"] == b["folds"]
    assert a["selected"] == b["selected"]
    pd.testing.assert_frame_equal(a["ranking"], b["ranking"], check_exact=not rtol, rtol=rtol or 1e-5)
    pd.testing.assert_frame_equal(a["comparison"], b["comparison"], check_exact=not rtol, rtol=rtol or 1e-5)
    assert a["tables"] == b["tables"]
    assert a["notes"] == b["notes"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    rows = _images(root)
    base = _variant(root, rows, "base", classes=["benign", "malignant"], order=list(range(N)))
    return root, rows, _outcome(root / "run-base", *base)


@pytest.mark.slow
def test_class_order_does_not_change_the_run(data):
    root, rows, expected = data
    # "malignant" listed first: class index 0 is now the positive class (the issue's case).
    swapped = _variant(root, rows, "swapped", classes=["malignant", "benign"], order=list(range(N)))
    got = _outcome(root / "run-swapped", *swapped)
    # libsvm's solver stops at a tolerance, and its path depends on which class is +1:
    # SVM probabilities agree to ~1e-5 (every other model exactly).
    _same(got, expected, rtol=1e-4)
    sel = got["comparison"].xs("selected", level="role").iloc[0]
    # The threshold is a real cut-off, not one that calls everything malignant.
    assert 0.05 < sel["threshold"] < 0.95 and sel["specificity"] > 0.5


@pytest.mark.slow
def test_row_order_does_not_change_the_run(data):
    root, rows, expected = data
    order = list(np.random.default_rng(3).permutation(N))
    got = _outcome(root / "run-shuffled", *_variant(root, rows, "shuffled", classes=["benign", "malignant"],
                                                    order=order))
    _same(got, expected)


@pytest.mark.slow
def test_renamed_ids_do_not_change_the_run(data):
    root, rows, expected = data
    # New names sort in another order than the old ones.
    renamed = _variant(root, rows, "renamed", classes=["benign", "malignant"], order=list(range(N)),
                       rename=lambda n: f"case-{(N - n) * 7919 % 1000:03d}-{n}")
    got = _outcome(root / "run-renamed", *renamed)
    _same(got, expected)


def test_folds_follow_the_images_not_the_listing(tmp_path):
    """Fast check of the splits alone: classes swapped, rows shuffled, ids renamed."""
    rows = _images(tmp_path)

    def folds(name, **kw):
        manifest, _, id_of = _variant(tmp_path, rows, name, **kw)
        task = build_task(manifest, Protocol(cv=3, inner_cv=2, seed=0, scoring="auc", positive=None))
        train_order = [id_of[task.ids[i]] for i in task.splits.train]
        inner = [[id_of[task.ids[task.splits.folds[0][0][j]]] for j in va] for _, va in task.inner_of["0"]]
        return (sorted((id_of[i], f) for i, f in zip(task.ids, task.splits.assignment())), train_order, inner,
                task.protocol["folds"] if kw.get("rename") is None else None)

    base = folds("a", classes=["benign", "malignant"], order=list(range(N)))
    assert folds("b", classes=["malignant", "benign"], order=list(range(N))) == base
    assert folds("c", classes=["benign", "malignant"], order=list(np.random.default_rng(1).permutation(N))) == base
    renamed = folds("d", classes=["benign", "malignant"], order=list(range(N)), rename=lambda n: f"z{N - n:03d}")
    assert renamed[:3] == base[:3]

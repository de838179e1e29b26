"""Unit tests for the parts of a sweep: block codes and subsets, the results store, the
evaluation splits, class selection, the head zoo and tuned heads, ensembles, nested
selection scores and the CLI's grid / subset parsers.

Small synthetic numpy data only: no network, no image decoding.
"""
from __future__ import annotations

import json
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from workbench.cli.values import parse_head_grids as _parse_grids
from workbench.cli.values import parse_subsets as _parse_subsets
from workbench.cli.values import parse_value as _parse_value
from workbench.data.manifest import Item, Manifest
from workbench.heads.ensembles import VOTE_KINDS, stack, vote
from workbench.heads.nested import _auc, grid_points, selection_score
from workbench.heads.tuned import TunedHead
from workbench.heads.zoo import ScaledGammaSVC, UnknownHeadError, get_head, list_heads
from workbench.search.candidates import Candidate, block_codes, enumerate_subsets, grid_suffix, subset_code
from workbench.evaluation.splits import FoldError, Splits, make_folds
from workbench.evaluation.store import ResultStore, RunMismatchError, StoreCorruptError

SIX = ["alexnet:fc6", "vgg19:fc7", "resnet50:avgpool", "inception_v3:avgpool",
       "densenet121:avgpool", "mobilenet_v2:avgpool"]
LITES = ["tf_efficientnet_lite0:avgpool", "tf_efficientnet_lite1:avgpool", "tf_efficientnet_lite2:avgpool"]


# ---- candidates: block codes ---------------------------------------------------------


def test_six_cnn_blocks_get_one_letter_each():
    codes = block_codes(SIX)
    assert codes == {"alexnet:fc6": "A", "vgg19:fc7": "V", "resnet50:avgpool": "R",
                     "inception_v3:avgpool": "I", "densenet121:avgpool": "D", "mobilenet_v2:avgpool": "M"}
    assert list(codes) == SIX  # in the order of the names
    assert subset_code(["alexnet:fc6", "vgg19:fc7", "resnet50:avgpool"], codes) == "[AVR]"
    assert subset_code(["inception_v3:avgpool"], codes) == "[I]"


def test_efficientnet_lite_blocks_get_their_digit():
    codes = block_codes(LITES)
    assert codes == dict(zip(LITES, ["L0", "L1", "L2"]))
    assert subset_code(LITES[:2], codes) == "[L0+L1]"
    # One-letter and longer codes mixed: joined with "+".
    mixed = block_codes(["alexnet:fc6", *LITES[:2]])
    assert mixed["alexnet:fc6"] == "A"
    assert subset_code(["alexnet:fc6", LITES[0]], mixed) == "[A+L0]"


def test_timm_prefix_and_weights_tag_are_ignored_for_the_letter():
    codes = block_codes(["timm/resnet50@a1_in1k:avgpool", "timm/vgg19:fc7"])
    assert codes == {"timm/resnet50@a1_in1k:avgpool": "R", "timm/vgg19:fc7": "V"}


@pytest.mark.parametrize("names", [
    ["alexnet:fc6", "alexnet:fc7"],
    ["resnet50:layer4", "resnet50:avgpool"],
    ["alexnet:fc", "alexnet:pool"],
    ["alexnet:fc", "alexnet:pool", "alexnet:conv"],
    ["resnet50:avgpool", "resnet101:avgpool", "resnet50:layer3"],
    ["vgg16:fc7", "vgg19:fc7", "vgg19:fc6"],
    SIX + LITES,
])
def test_codes_are_unique_even_for_taps_of_one_backbone(names):
    codes = block_codes(names)
    assert set(codes) == set(names)
    assert len(set(codes.values())) == len(names), codes


def test_two_alexnet_taps_use_their_tap_digits():
    assert block_codes(["alexnet:fc6", "alexnet:fc7"]) == {"alexnet:fc6": "A6", "alexnet:fc7": "A7"}
    assert block_codes(["vgg16:fc7", "vgg19:fc7"]) == {"vgg16:fc7": "V16", "vgg19:fc7": "V19"}


def test_given_codes_win_and_others_avoid_them():
    codes = block_codes(SIX, {"resnet50:avgpool": "Res", "alexnet:fc6": "V"})
    assert codes["resnet50:avgpool"] == "Res"
    assert codes["alexnet:fc6"] == "V"
    assert codes["vgg19:fc7"] != "V"
    assert len(set(codes.values())) == len(SIX)


def test_numbered_codes_do_not_collide_with_a_given_code():
    names = ["alexnet:fc", "alexnet:pool", "vgg19:fc7"]
    codes = block_codes(names, {"vgg19:fc7": "Aa"})
    assert codes == {"alexnet:fc": "Ab", "alexnet:pool": "Ac", "vgg19:fc7": "Aa"}


def test_given_codes_for_unknown_blocks_or_repeated_raise():
    with pytest.raises(ValueError, match="unknown blocks.*nope:fc"):
        block_codes(SIX, {"nope:fc": "N"})
    with pytest.raises(ValueError, match="repeated codes"):
        block_codes(SIX, {"alexnet:fc6": "X", "vgg19:fc7": "X"})


# ---- candidates: subsets ---------------------------------------------------------------


def test_all_subsets_of_six_blocks():
    subs = enumerate_subsets(SIX, "all")
    assert len(subs) == 2 ** 6 - 1 == 63
    assert len(set(subs)) == 63
    expected = {c for k in range(1, 7) for c in combinations(SIX, k)}
    assert set(subs) == expected
    # Every subset in block order, sizes ascending.
    order = {n: i for i, n in enumerate(SIX)}
    assert all([order[b] for b in s] == sorted(order[b] for b in s) for s in subs)
    assert [len(s) for s in subs] == sorted(len(s) for s in subs)
    assert len(enumerate_subsets(SIX[:3])) == 7  # "all" is the default


def test_single_and_size_range_subsets():
    assert enumerate_subsets(SIX, "single") == [(n,) for n in SIX]
    pairs_triples = enumerate_subsets(SIX, (2, 3))
    assert len(pairs_triples) == 15 + 20
    assert {len(s) for s in pairs_triples} == {2, 3}
    assert enumerate_subsets(SIX, (6, 6)) == [tuple(SIX)]


def test_explicit_subsets_are_put_in_block_order():
    subs = enumerate_subsets(SIX, [["resnet50:avgpool", "alexnet:fc6"], "vgg19:fc7",
                                   ("mobilenet_v2:avgpool", "vgg19:fc7", "alexnet:fc6")])
    assert subs == [("alexnet:fc6", "resnet50:avgpool"), ("vgg19:fc7",),
                    ("alexnet:fc6", "vgg19:fc7", "mobilenet_v2:avgpool")]


@pytest.mark.parametrize("subsets, match", [
    ([["alexnet:fc6", "nope:fc"]], "unknown blocks.*nope:fc"),
    ([[]], "empty"),
    ([["alexnet:fc6", "alexnet:fc6"]], "repeats a block"),
    ([["alexnet:fc6", "vgg19:fc7"], ["vgg19:fc7", "alexnet:fc6"]], "listed twice"),
    ((0, 2), "out of range"),
    ((3, 2), "out of range"),
    ((1, 7), "out of range"),
    ("some", "subsets must be"),
])
def test_bad_subsets_raise(subsets, match):
    with pytest.raises(ValueError, match=match):
        enumerate_subsets(SIX, subsets)


def test_no_blocks_raise():
    with pytest.raises(ValueError, match="no feature blocks"):
        enumerate_subsets([], "all")


def test_candidate_label_and_members():
    codes = block_codes(SIX)
    blocks = ("alexnet:fc6", "vgg19:fc7", "resnet50:avgpool")
    assert Candidate("head", blocks, "svm-rbf").label(codes) == "[AVR] svm-rbf"
    ens = Candidate("vote-soft", blocks, None, ("svm-rbf", "rf"))
    assert ens.label(codes) == "[AVR] vote-soft(svm-rbf+rf)"
    members = ens.members()
    assert len(members) == 6
    assert members[0] == Candidate("head", ("alexnet:fc6",), "svm-rbf")
    assert members[1] == Candidate("head", ("alexnet:fc6",), "rf")
    assert {(m.blocks, m.head) for m in members} == {((b,), h) for b in blocks for h in ("svm-rbf", "rf")}
    assert all(m.kind == "head" and m.heads == () for m in members)
    assert Candidate("head", blocks, "rf").members() == []
    lite = block_codes(LITES)
    assert Candidate("stack", tuple(LITES[:2]), None, ("rf",)).label(lite) == "[L0+L1] stack(rf)"


def test_grid_suffix_and_labels_with_head_names():
    assert grid_suffix({"C": [1, 10]}) == "{C=1,10}"
    assert grid_suffix({"gamma_factor": [0.5], "C": [1.0, 10.0]}) == "{C=1.0,10.0;gamma_factor=0.5}"
    assert grid_suffix({"max_features": ["sqrt", 0.05], "max_depth": [None]}) == \
        "{max_depth=null;max_features=sqrt,0.05}"
    assert grid_suffix({}) == "{}"
    codes = block_codes(SIX)
    named = {"svm-rbf": "svm-rbf{C=1,10}"}
    blocks = ("alexnet:fc6", "vgg19:fc7")
    assert Candidate("head", blocks, "svm-rbf").label(codes, named) == "[AV] svm-rbf{C=1,10}"
    assert Candidate("head", blocks, "rf").label(codes, named) == "[AV] rf"
    assert Candidate("vote-hard", blocks, None, ("svm-rbf", "rf")).label(codes, named) == \
        "[AV] vote-hard(svm-rbf{C=1,10}+rf)"


# ---- store ---------------------------------------------------------------------------------

PROTOCOL = {"manifest": "abc123", "cv": 5, "inner_cv": 3, "seed": 0, "scoring": "auc"}


def _record(cid: str, fold: str, auc: float, candidate: str | None = None) -> dict:
    return {"key": f"{cid}/{fold}", "candidate_id": cid, "candidate": candidate or f"[{cid}] rf",
            "fold": fold, "metrics": {"auc": auc, "accuracy": auc / 2},
            "versions": {"numpy": "x"}, "cache_keys": {"b": "k"}}


def _preds(n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    p = rng.random((n, 2))
    return {"ids": np.array([f"img{i}" for i in range(n)]), "y_true": rng.integers(0, 2, n),
            "proba": p / p.sum(1, keepdims=True)}


def test_open_twice_with_the_same_protocol(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(dict(PROTOCOL, path=Path("/data/x.csv")))  # non-JSON values are stored as str
    ResultStore(tmp_path / "run").open(dict(PROTOCOL, path=Path("/data/x.csv")))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["path"] == "/data/x.csv"
    assert store.protocol()["cv"] == 5


def test_open_with_another_protocol_names_the_field(tmp_path):
    ResultStore(tmp_path / "run").open(PROTOCOL)
    with pytest.raises(RunMismatchError) as e:
        ResultStore(tmp_path / "run").open(dict(PROTOCOL, seed=7))
    msg = str(e.value)
    assert "seed" in msg and "7" in msg
    assert "scoring" not in msg and "inner_cv" not in msg
    with pytest.raises(RunMismatchError, match="extra"):
        ResultStore(tmp_path / "run").open(dict(PROTOCOL, extra=1))
    assert isinstance(e.value, ValueError)


def test_append_records_done_predictions_round_trip(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    assert store.records() == [] and store.done() == set()
    p0, p1 = _preds(5, 0), _preds(3, 1)
    store.append(_record("c1", "0", 0.7), p0)
    store.append(_record("c1", "test", 0.8), p1)
    recs = store.records()
    assert [r["key"] for r in recs] == ["c1/0", "c1/test"]
    assert recs[0]["metrics"] == {"auc": 0.7, "accuracy": 0.35}
    assert recs[1]["predictions"] == str(Path("predictions") / "c1" / "test.npz")
    assert store.done() == {"c1/0", "c1/test"}
    for rec, p in zip(recs, (p0, p1)):
        got = store.predictions(rec)
        assert set(got) == set(p)
        for k in p:
            np.testing.assert_array_equal(got[k], p[k])
    # Every line is one JSON object.
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["c1/0", "c1/test"]


def test_numpy_values_in_records_are_stored_as_json(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    rec = dict(_record("c1", "0", 0.5), n_train=np.int64(12), score=np.float32(0.25), arr=np.arange(3))
    store.append(rec, _preds())
    (got,) = store.records()
    assert got["n_train"] == 12 and got["score"] == 0.25 and got["arr"] == [0, 1, 2]


def test_repeated_key_last_record_wins(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    store.append(_record("c1", "0", 0.1), _preds())
    store.append(_record("c1", "0", 0.9), _preds())
    (rec,) = store.records()
    assert rec["metrics"]["auc"] == 0.9


def test_torn_last_line_is_ignored_and_healed(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    store.append(_record("c1", "0", 0.7), _preds())
    path = tmp_path / "run" / "records.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"key": "c1/1", "candidate_id": "c1", "fo')  # killed mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["key"] for r in store.records()] == ["c1/0"]
    with pytest.warns(UserWarning, match="torn last line"):
        assert store.done() == {"c1/0"}
    store.append(_record("c1", "1", 0.6), _preds())
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["c1/0", "c1/1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: no more warning
        assert [r["key"] for r in store.records()] == ["c1/0", "c1/1"]


def test_torn_only_line_is_healed(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    path = tmp_path / "run" / "records.jsonl"
    path.write_bytes(b'{"key": "x')
    with pytest.warns(UserWarning):
        assert store.records() == []
    store.append(_record("c2", "0", 0.5), _preds())
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["c2/0"]


def test_corrupt_middle_line_raises_naming_the_line(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    store.append(_record("c1", "0", 0.7), _preds())
    path = tmp_path / "run" / "records.jsonl"
    with open(path, "ab") as f:
        f.write(b"this is not json\n")
    store.append(_record("c1", "1", 0.6), _preds())
    with pytest.raises(StoreCorruptError, match=r"line 2\b"):
        store.records()
    with pytest.raises(StoreCorruptError):
        store.done()


def test_record_without_predictions_file_is_not_done(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    store.append(_record("c1", "0", 0.7), _preds())
    store.append(_record("c1", "1", 0.6), _preds())
    (tmp_path / "run" / "predictions" / "c1" / "1.npz").unlink()
    assert store.done() == {"c1/0"}
    assert len(store.records()) == 2  # the line is still there; done() decides recomputation


def test_frame_sorts_and_flattens_metrics(tmp_path):
    store = ResultStore(tmp_path / "run")
    assert store.frame().empty
    store.open(PROTOCOL)
    written = [("b", "test", 0.9), ("b", "1", 0.8), ("a", "1", 0.6), ("b", "0", 0.7), ("a", "0", 0.5)]
    for cid, fold, auc in written:
        store.append(_record(cid, fold, auc, candidate=f"[{cid.upper()}] rf"), _preds())
    df = store.frame()
    assert list(zip(df["candidate"], df["fold"])) == [
        ("[A] rf", "0"), ("[A] rf", "1"), ("[B] rf", "0"), ("[B] rf", "1"), ("[B] rf", "test")]
    assert df["auc"].tolist() == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert np.allclose(df["accuracy"], df["auc"] / 2)
    for dropped in ("metrics", "versions", "cache_keys"):
        assert dropped not in df.columns
    assert {"key", "candidate_id", "predictions"} <= set(df.columns)


# ---- splits --------------------------------------------------------------------------------


def _check_partition(folds, n):
    held = np.concatenate([va for _, va in folds])
    assert sorted(held.tolist()) == list(range(n))  # each row held out exactly once
    for tr, va in folds:
        assert set(tr.tolist()) | set(va.tolist()) == set(range(n))
        assert not set(tr.tolist()) & set(va.tolist())


def test_make_folds_stratified_and_deterministic():
    y = np.array([0] * 30 + [1] * 15 + [2] * 10)
    folds = make_folds(y, 5, seed=3)
    assert len(folds) == 5
    _check_partition(folds, len(y))
    for _, va in folds:
        counts = np.bincount(y[va], minlength=3)
        np.testing.assert_array_equal(counts, [6, 3, 2])  # exact class shares per fold
    again = make_folds(y, 5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = make_folds(y, 5, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_grouped_folds_keep_each_group_on_one_side():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 5, size=30)  # 30 patients of 2-4 images
    groups = np.repeat([f"p{i:02d}" for i in range(30)], sizes)
    y = np.repeat(np.arange(30) % 2, sizes)  # one label per patient
    folds = make_folds(y, 4, seed=1, groups=groups)
    _check_partition(folds, len(y))
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert set(y[va]) == {0, 1}
    # Another seed still keeps groups whole.
    for tr, va in make_folds(y, 4, seed=2, groups=groups):
        assert not set(groups[tr]) & set(groups[va])


def test_fold_errors():
    with pytest.raises(FoldError, match="single class.*'benign'"):
        make_folds(np.zeros(10, int), 3, 0, classes=["benign", "malignant"])
    with pytest.raises(FoldError, match="single class"):
        make_folds(np.ones(10, int), 3, 0)
    y = np.array([0] * 10 + [1] * 2)
    with pytest.raises(FoldError, match="'malignant' has 2 images"):
        make_folds(y, 3, 0, classes=["benign", "malignant"])
    with pytest.raises(FoldError, match="1 has 2 images"):
        make_folds(y, 3, 0)
    with pytest.raises(FoldError, match="at least 2 folds"):
        make_folds(np.array([0, 1] * 5), 1, 0)
    # Grouped: a class with enough images but too few patients.
    y = np.array([0] * 12 + [1] * 6)
    groups = np.array([f"b{i}" for i in range(12)] + ["m0"] * 3 + ["m1"] * 3)
    with pytest.raises(FoldError, match="'malignant' has 2 groups"):
        make_folds(y, 3, 0, groups=groups, classes=["benign", "malignant"])
    assert issubclass(FoldError, ValueError)


def test_splits_build_test_rows_and_cv_rows():
    n = 40
    y = np.arange(n) % 2
    split = [("test" if i % 5 == 0 else ("train", "val", None)[i % 3]) for i in range(n)]
    s = Splits.build(y, split, n_splits=3, inner_splits=2, seed=0)
    exp_test = [i for i in range(n) if i % 5 == 0]
    assert s.test.tolist() == exp_test
    assert s.train.tolist() == [i for i in range(n) if i % 5 != 0]
    assert len(s.folds) == 3
    for tr, va in s.folds:
        assert not set(tr.tolist()) & set(exp_test) and not set(va.tolist()) & set(exp_test)
    held = sorted(np.concatenate([va for _, va in s.folds]).tolist())
    assert held == s.train.tolist()

    outer = s.outer()
    assert [name for name, _, _ in outer] == ["0", "1", "2", "test"]
    name, tr, te = outer[-1]
    assert tr.tolist() == s.train.tolist() and te.tolist() == exp_test
    for (name, tr, va), (ftr, fva) in zip(outer[:3], s.folds):
        assert np.array_equal(tr, ftr) and np.array_equal(va, fva)

    a = s.assignment()
    assert len(a) == n
    for i in range(n):
        if i in exp_test:
            assert a[i] == "test"
        else:
            k = int(a[i])
            assert i in s.folds[k][1]


def test_splits_without_test_rows_have_no_test_entry():
    y = np.arange(30) % 3
    s = Splits.build(y, [None] * 30, n_splits=3, seed=1, classes=["a", "b", "c"])
    assert s.test.size == 0
    assert [name for name, _, _ in s.outer()] == ["0", "1", "2"]
    assert "test" not in s.assignment() and "" not in s.assignment()


def test_splits_inner_positions_are_within_rows():
    n = 60
    y = np.arange(n) % 2
    s = Splits.build(y, ["train"] * n, n_splits=3, inner_splits=3, seed=0)
    tr, _ = s.folds[0]
    inner = s.inner(tr, y)
    assert len(inner) == 3
    _check_partition(inner, len(tr))
    for itr, iva in inner:
        assert set(y[tr[iva]].tolist()) == {0, 1}


def test_splits_groups_keep_patients_in_one_fold_and_lone_rows_alone():
    n = 48
    y = np.repeat(np.arange(16) % 2, 3)  # 16 patients of 3 images
    groups = [f"p{i // 3}" for i in range(n)]
    groups[0] = None  # an image without a patient is its own group
    s = Splits.build(y, ["train"] * n, n_splits=4, seed=0, groups=groups)
    assert s.groups is not None and s.groups[0].startswith("__row")
    for tr, va in s.folds:
        assert not set(s.groups[tr]) & set(s.groups[va])
    for itr, iva in s.inner(s.folds[0][0], y):
        g = s.groups[s.folds[0][0]]
        assert not set(g[itr]) & set(g[iva])


def test_splits_fold_error_for_a_tiny_class():
    y = np.array([0] * 20 + [1] * 2)
    with pytest.raises(FoldError, match="'malignant' has 2 images"):
        Splits.build(y, ["train"] * 22, n_splits=3, classes=["benign", "malignant"])


# ---- Manifest.select_classes -------------------------------------------------------------------


def _manifest(labels, classes=("benign", "malignant", "normal")):
    items = [Item(id=f"img{i}", path=Path(f"/nonexistent/img{i}.png"), label=lab, row=i + 2)
             for i, lab in enumerate(labels)]
    return Manifest(items, source=Path("/nonexistent/labels.csv"), classes=list(classes))


def test_select_classes_keeps_chosen_classes_in_given_order():
    m = _manifest(["benign", "normal", "malignant", "benign", "normal", "malignant"])
    sub = m.select_classes(["malignant", "benign"])
    assert sub.classes == ["malignant", "benign"]
    assert sub.ids == ["img0", "img2", "img3", "img5"]  # items keep their order
    assert sub.labels == ["benign", "malignant", "benign", "malignant"]
    assert len(m) == 6 and m.classes == ["benign", "malignant", "normal"]  # original untouched


def test_select_classes_errors():
    m = _manifest(["benign", "malignant"])
    with pytest.raises(ValueError, match="cat"):
        m.select_classes(["benign", "cat"])
    with pytest.raises(ValueError, match="no items"):
        m.select_classes(["normal"])  # a class of the manifest, but no item of it
    with pytest.raises(ValueError, match="duplicate"):
        m.select_classes(["benign", "benign"])


# ---- head zoo and TunedHead -------------------------------------------------------------


def _binary_data(n=60, d=5, seed=0, shift=1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + shift * y[:, None] * np.linspace(1, 0.2, d)
    return X, y


def test_zoo_lists_the_heads_and_rejects_unknown_names():
    heads = list_heads()
    assert {"svm-rbf", "svm-linear", "rf", "xgb", "logreg"} <= set(heads)
    with pytest.raises(UnknownHeadError) as e:
        get_head("nope")
    msg = str(e.value)
    assert "'nope'" in msg
    for h in heads:
        assert h in msg
    assert isinstance(e.value, KeyError)
    spec = get_head("rf")
    assert get_head(spec) is spec and spec.name == "rf"


def test_head_pipeline_sets_final_step_params():
    pipe = get_head("logreg").pipeline(seed=3, C=0.5)
    assert isinstance(pipe, Pipeline) and isinstance(pipe.steps[0][1], StandardScaler)
    assert pipe.named_steps["clf"].C == 0.5 and pipe.named_steps["clf"].random_state == 3
    assert "scale" not in get_head("rf").pipeline().named_steps


def test_scaled_gamma_svc_factor_one_is_sklearn_scale():
    X, y = _binary_data(50, 7, seed=2)
    X = X * 3.0 + 1.0
    Xt, _ = _binary_data(20, 7, seed=5)
    ours = ScaledGammaSVC(C=2.0, gamma_factor=1.0).fit(X, y)
    ref = SVC(kernel="rbf", C=2.0, gamma="scale").fit(X, y)
    np.testing.assert_allclose(ours.decision_function(Xt), ref.decision_function(Xt), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))
    # Another factor: a multiple of the scale gamma, computed independently.
    g = 3.0 / (X.shape[1] * X.var())
    ours3 = ScaledGammaSVC(C=2.0, gamma_factor=3.0).fit(X, y)
    assert ours3.gamma_ == pytest.approx(g)
    ref3 = SVC(kernel="rbf", C=2.0, gamma=g).fit(X, y)
    np.testing.assert_allclose(ours3.decision_function(Xt), ref3.decision_function(Xt), rtol=1e-9, atol=1e-9)
    assert not np.allclose(ours3.decision_function(Xt), ours.decision_function(Xt))


def test_tuned_head_clone_and_params_round_trip():
    est = TunedHead("rf", grid={"n_estimators": [10]}, inner_splits=2, scoring="accuracy", random_state=4)
    params = est.get_params()
    assert params == {"head": "rf", "grid": {"n_estimators": [10]}, "inner_splits": 2,
                      "scoring": "accuracy", "random_state": 4}
    c = clone(est)
    assert c is not est and c.get_params() == params
    c.set_params(head="logreg", inner_splits=3)
    assert c.head == "logreg" and c.inner_splits == 3 and est.head == "rf"


TINY_GRIDS = {
    "svm-rbf": {"C": [1.0], "gamma_factor": [1.0]},
    "svm-linear": {"C": [0.1]},
    "rf": {"n_estimators": [20], "max_features": ["sqrt"]},
    "xgb": {"n_estimators": [20], "max_depth": [2]},
    "logreg": {"C": [1.0]},
}


@pytest.mark.parametrize("head", sorted(TINY_GRIDS))
def test_tuned_head_fits_every_zoo_head(head):
    X, y_idx = _binary_data(60, 4, seed=1)
    names = np.array(["benign", "malignant"])
    y = names[y_idx]
    est = TunedHead(head, grid=TINY_GRIDS[head], inner_splits=3, random_state=0).fit(X, y)
    assert est.classes_.tolist() == ["benign", "malignant"]
    Xt, yt_idx = _binary_data(25, 4, seed=9)
    p = est.predict_proba(Xt)
    assert p.shape == (25, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (p >= 0).all() and (p <= 1).all()
    pred = est.predict(Xt)
    assert set(pred) <= {"benign", "malignant"}
    np.testing.assert_array_equal(pred, names[p.argmax(axis=1)])
    assert (pred == names[yt_idx]).mean() > 0.6  # learned the (strong) signal
    assert est.best_params_ in grid_points(TINY_GRIDS[head])
    assert (est.calibrator_ is not None) == get_head(head).calibrate


def test_tuned_head_three_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 20)
    X = rng.normal(size=(60, 3)) + 3 * (y[:, None] == np.array(["a", "b", "c"]))
    for head in ("svm-rbf", "logreg"):
        est = TunedHead(head, grid=TINY_GRIDS[head], inner_splits=3).fit(X, y)
        p = est.predict_proba(X)
        assert p.shape == (60, 3)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
        assert (est.predict(X) == y).mean() > 0.8


def test_tuned_head_inner_scores_match_an_independent_cv():
    X, y = _binary_data(60, 4, seed=3, shift=0.6)
    grid = {"C": [0.001, 0.1, 10.0]}
    est = TunedHead("logreg", grid=grid, inner_splits=3, random_state=5).fit(X, y)
    search = est.search_
    assert search.params == grid_points(grid)
    assert est.best_params_ == search.params[int(np.argmax(search.scores))]
    # Recompute each point's mean inner AUC with plain scikit-learn.
    from sklearn.linear_model import LogisticRegression

    cv = StratifiedKFold(3, shuffle=True, random_state=5)
    for params, score in zip(search.params, search.scores):
        aucs = []
        for tr, va in cv.split(X, y):
            m = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=5000, random_state=5,
                                                                             **params))]).fit(X[tr], y[tr])
            aucs.append(roc_auc_score(y[va], m.predict_proba(X[va])[:, 1]))
        assert score == pytest.approx(np.mean(aucs), abs=1e-12)


def test_tuned_head_picks_the_clearly_better_grid_point():
    # XOR: stumps (max_depth=1) cannot separate it, deep trees can.
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(120, 2))
    y = np.where((X[:, 0] > 0) ^ (X[:, 1] > 0), "yes", "no")
    grid = {"max_depth": [1, None], "n_estimators": [25]}
    est = TunedHead("rf", grid=grid, inner_splits=3, random_state=0).fit(X, y)
    scores = est.search_.scores
    assert scores[1] > scores[0] + 0.2
    assert est.best_params_ == {"max_depth": None, "n_estimators": 25}
    assert est.estimator_.named_steps["clf"].max_depth is None


# ---- ensembles ------------------------------------------------------------------------------------


def test_soft_vote_is_the_mean():
    rng = np.random.default_rng(0)
    P = [rng.dirichlet(np.ones(3), size=8) for _ in range(4)]
    pred, proba = vote(P, "vote-soft")
    mean = (P[0] + P[1] + P[2] + P[3]) / 4
    np.testing.assert_allclose(proba, mean)
    np.testing.assert_array_equal(pred, mean.argmax(axis=1))


def test_hard_vote_majority_and_tie_break_by_mean_probability():
    # Row 0: two weak votes for class 0 beat one strong vote for class 1 (soft would say 1).
    # Rows 1 and 2 of m1 and m2 alone: one vote each (a tie); the mean probability favours
    # class 1 (the higher index) in row 1 and class 0 in row 2.
    m1 = np.array([[0.51, 0.49], [0.6, 0.4], [0.9, 0.1]])
    m2 = np.array([[0.51, 0.49], [0.1, 0.9], [0.4, 0.6]])
    m3 = np.array([[0.00, 1.00], [0.5, 0.5], [0.5, 0.5]])  # only its row 0 matters
    pred, shares = vote([m1, m2, m3], "vote-hard")
    assert pred[0] == 0
    assert vote([m1, m2, m3], "vote-soft")[0][0] == 1
    np.testing.assert_allclose(shares[0], [2 / 3, 1 / 3])
    pred2, shares2 = vote([m1[1:], m2[1:]], "vote-hard")
    np.testing.assert_allclose(shares2, [[0.5, 0.5], [0.5, 0.5]])
    assert pred2.tolist() == [1, 0]


def test_hard_vote_three_way_tie_among_three_classes():
    a = np.array([[0.4, 0.3, 0.3]])
    b = np.array([[0.0, 0.5, 0.5 - 1e-3]])
    c = np.array([[0.0, 0.49, 0.51]])
    pred, shares = vote([a, b, c], "vote-hard")  # votes 0, 1, 2; means 0.133, 0.43, 0.44
    np.testing.assert_allclose(shares, [[1 / 3, 1 / 3, 1 / 3]])
    assert pred.tolist() == [2]


def test_vote_shares_sum_to_one_and_count_votes():
    rng = np.random.default_rng(1)
    P = [rng.dirichlet(np.ones(4), size=30) for _ in range(5)]
    _, shares = vote(P, "vote-hard")
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    counts = np.zeros((30, 4))
    for p in P:
        counts[np.arange(30), p.argmax(axis=1)] += 1
    np.testing.assert_allclose(shares, counts / 5)


def test_hard_vote_at_member_thresholds():
    # Positive class 1. Member thresholds 0.3 and 0.7: row 0 (0.4, 0.6) -> votes yes, no:
    # a tie, broken by the mean margin (0.1 - 0.1 = 0 -> positive); row 1 (0.2, 0.8) -> no, yes,
    # margin (-0.1 + 0.1) / 2 = 0 -> positive; row 2 (0.35, 0.75) -> yes, yes.
    m1 = np.array([[0.6, 0.4], [0.8, 0.2], [0.65, 0.35], [0.9, 0.1]])
    m2 = np.array([[0.4, 0.6], [0.2, 0.8], [0.25, 0.75], [0.35, 0.65]])
    pred, shares = vote([m1, m2], "vote-hard", thresholds=[0.3, 0.7], positive=1)
    np.testing.assert_allclose(shares[:, 1], [0.5, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert pred.tolist() == [1, 1, 1, 0]
    # At 0.5 for both, row 3 would be a tie; positive = 0 flips the columns.
    pred0, shares0 = vote([m1[:, ::-1], m2[:, ::-1]], "vote-hard", thresholds=[0.3, 0.7], positive=0)
    assert pred0.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(shares0, shares[:, ::-1])
    # The margin decides a tie: row (0.25 over 0.3 -> no by 0.05; 0.9 over 0.7 -> yes by 0.2).
    p, _ = vote([np.array([[0.75, 0.25]]), np.array([[0.1, 0.9]])], "vote-hard", thresholds=[0.3, 0.7], positive=1)
    assert p.tolist() == [1]
    p, _ = vote([np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]])], "vote-hard", thresholds=[0.3, 0.7], positive=1)
    assert p.tolist() == [0]
    with pytest.raises(ValueError, match="two classes"):
        vote([np.full((2, 3), 1 / 3)], "vote-hard", thresholds=[0.5], positive=1)
    with pytest.raises(ValueError, match="two classes"):
        vote([m1], "vote-soft", thresholds=[0.5], positive=1)
    with pytest.raises(ValueError, match="need 2 thresholds"):
        vote([m1, m2], "vote-hard", thresholds=[0.5], positive=1)


def test_vote_errors():
    with pytest.raises(ValueError, match="unknown vote"):
        vote([np.eye(2)], "vote-median")
    with pytest.raises(ValueError, match="at least one member"):
        vote([], "vote-soft")
    assert VOTE_KINDS == ("vote-hard", "vote-soft")


def test_stack_probabilities_and_errors():
    rng = np.random.default_rng(0)
    n, k = 80, 3
    y = np.arange(n) % k
    good = np.full((n, k), 0.1)
    good[np.arange(n), y] = 0.8
    noise = rng.dirichlet(np.ones(k), size=n)
    ye = np.arange(20) % k
    good_e = np.full((20, k), 0.1)
    good_e[np.arange(20), ye] = 0.8
    pred, proba = stack([good, noise], y, [good_e, rng.dirichlet(np.ones(k), size=20)])
    assert proba.shape == (20, k)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(pred, proba.argmax(axis=1))
    assert (pred == ye).all()  # follows the informative member
    with pytest.raises(ValueError, match="at least one member"):
        stack([], y, [])
    with pytest.raises(ValueError, match="at least one member"):
        stack([good], y, [])


def test_stack_with_a_class_missing_from_training_gives_it_zero():
    rng = np.random.default_rng(2)
    y = np.array([0, 2] * 20)
    P = rng.dirichlet(np.ones(3), size=40)
    _, proba = stack([P], y, [rng.dirichlet(np.ones(3), size=7)])
    assert proba.shape == (7, 3)
    np.testing.assert_array_equal(proba[:, 1], 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


# ---- nested selection scores ----------------------------------------------------------------


def test_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 50)
        y[:2] = [0, 1]
        s = rng.integers(0, 4, 50).astype(float)  # many ties
        assert _auc(y == 1, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert _auc(np.array([False, True]), np.array([0.3, 0.3])) == 0.5
    assert _auc(np.array([False, True]), np.array([0.1, 0.3])) == 1.0


def test_selection_score_binary_and_multiclass():
    rng = np.random.default_rng(1)
    y2 = np.arange(40) % 2
    s2 = rng.normal(size=(40, 2)) + y2[:, None] * [0, 1]
    assert selection_score(y2, s2) == pytest.approx(roc_auc_score(y2, s2[:, 1]))
    y3 = np.arange(45) % 3
    s3 = rng.normal(size=(45, 3)) + 0.8 * (y3[:, None] == np.arange(3))
    s3[:5] = np.round(s3[:5])  # a few ties too
    expected = np.mean([roc_auc_score(y3 == k, s3[:, k]) for k in range(3)])
    assert selection_score(y3, s3, "auc") == pytest.approx(expected, abs=1e-12)
    pred = s3.argmax(axis=1)
    assert selection_score(y3, s3, "accuracy") == pytest.approx((pred == y3).mean())
    recalls = [(pred[y3 == k] == k).mean() for k in range(3)]
    assert selection_score(y3, s3, "balanced_accuracy") == pytest.approx(np.mean(recalls))
    with pytest.raises(ValueError, match="unknown scoring"):
        selection_score(y3, s3, "f1")


def test_selection_score_one_class_fold_raises():
    with pytest.raises(ValueError, match="one class"):
        selection_score(np.ones(5, int), np.random.default_rng(0).normal(size=(5, 2)))
    y = np.array([0, 1, 0, 1])  # class 2 absent from a three-class fold
    with pytest.raises(ValueError, match="one class"):
        selection_score(y, np.random.default_rng(0).normal(size=(4, 3)))


def test_grid_points_order():
    assert grid_points({}) == [{}]
    assert grid_points({"gamma_factor": [0.5, 1], "C": [1, 10]}) == [
        {"C": 1, "gamma_factor": 0.5}, {"C": 1, "gamma_factor": 1},
        {"C": 10, "gamma_factor": 0.5}, {"C": 10, "gamma_factor": 1}]


# ---- CLI parsers ------------------------------------------------------------------------------------


def test_parse_grids():
    got = _parse_grids(["svm-rbf:C=1,10", "svm-rbf:gamma_factor=0.5", "rf:none"])
    assert got == {"svm-rbf": {"C": [1, 10], "gamma_factor": [0.5]}, "rf": {}}
    assert isinstance(got["svm-rbf"]["C"][0], int) and isinstance(got["svm-rbf"]["gamma_factor"][0], float)
    assert _parse_grids(["rf:max_features=sqrt,0.05,None", " xgb : max_depth = 2 "]) == {
        "rf": {"max_features": ["sqrt", 0.05, None]}, "xgb": {"max_depth": [2]}}
    assert _parse_grids([]) == {}


@pytest.mark.parametrize("bad", ["svm-rbf", ":C=1", "svm-rbf:C", "svm-rbf:C=", "svm-rbf:=1", "rf:"])
def test_parse_grids_rejects_bad_strings(bad):
    with pytest.raises(ValueError, match="--grid"):
        _parse_grids([bad])


def test_parse_value():
    assert _parse_value("3") == 3 and isinstance(_parse_value("3"), int)
    assert _parse_value("1e-3") == 0.001
    assert _parse_value("None") is None and _parse_value("null") is None
    assert _parse_value("True") is True and _parse_value("false") is False
    assert _parse_value(" sqrt ") == "sqrt"


def test_parse_subsets():
    assert _parse_subsets("all") == "all"
    assert _parse_subsets(" single ") == "single"
    assert _parse_subsets("2-3") == (2, 3)
    assert _parse_subsets("3") == (3, 3)
    assert _parse_subsets("L0+L1;L2") == [["L0", "L1"], ["L2"]]
    assert _parse_subsets("A + V ; R;") == [["A", "V"], ["R"]]


# ---- calibration ---------------------------------------------------------------------


class _GivenScores(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose decision values are its input, so scikit-learn's own
    CalibratedClassifierCV can calibrate given scores."""

    def __init__(self, n_classes=2):
        self.n_classes = n_classes

    def fit(self, X, y):
        self.classes_ = np.arange(self.n_classes)
        return self

    def decision_function(self, X):
        X = np.asarray(X, dtype=float)
        return X[:, 1] if self.n_classes == 2 else X

    def predict(self, X):
        return np.asarray(X).argmax(1)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_platt_calibration_equals_scikit_learns_sigmoid(n_classes):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    from workbench.heads.nested import as_score_matrix, fit_calibrator

    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 240)
    S = rng.normal(size=(240, n_classes)) + 1.5 * np.eye(n_classes)[y]
    T = 2 * rng.normal(size=(60, n_classes))
    if n_classes == 2:  # binary scores are [-d, d]
        S, T = as_score_matrix(S[:, 1] - S[:, 0], 2), as_score_matrix(T[:, 1], 2)
    ref = CalibratedClassifierCV(FrozenEstimator(_GivenScores(n_classes).fit(S, y)), method="sigmoid").fit(S, y)
    ours = fit_calibrator(S, y, n_classes)
    np.testing.assert_allclose(ours.predict_proba(T), ref.predict_proba(T), atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(T).sum(axis=1), 1.0)

"""Damaged run folders: errors name the file and line; damaged predictions are recomputed."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _sweepdata import make_task, sweep_args

from workbench.evaluation.store import ResultStore, StoreCorruptError, atomic_write
from workbench.search.sweep import sweep

QUICK = dict(heads=["logreg"], grids={"logreg": {"C": [1.0]}}, subsets="single", ensembles=False, cv=3,
             inner_cv=3, progress=False)
PROTOCOL = {"cv": 3, "seed": 0}


def _store(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "run")
    store.open(PROTOCOL)
    return store


def _append(store: ResultStore, cid: str = "c1", fold: str = "0") -> None:
    rng = np.random.default_rng(0)
    p = rng.random((4, 2))
    store.append({"key": f"{cid}/{fold}", "candidate_id": cid, "candidate": f"[{cid}] rf", "fold": fold,
                  "kind": "head", "metrics": {"auc": 0.5}},
                 {"ids": np.array(["a", "b", "c", "d"]), "y_true": np.array([0, 1, 0, 1]),
                  "proba": p / p.sum(1, keepdims=True)})


@pytest.mark.parametrize("line, why", [
    (b'{"key": "caf\xe9"}', "not valid UTF-8"),
    (b"{}", "not a record"),
    (b'{"key": "c1/1", "candidate_id": "c1"}', "no (text) field candidate, fold, predictions"),
    (b"[1,2]", "JSON list, not a record"),
    (b'"text"', "JSON str, not a record"),
    (b"{not json", "not valid JSON"),
])
def test_bad_records_line_names_the_file_and_line(tmp_path, line, why):
    store = _store(tmp_path)
    _append(store)
    with open(store.records_path, "ab") as f:
        f.write(line + b"\n")
    _append(store, fold="1")
    with pytest.raises(StoreCorruptError) as e:
        store.records()
    msg = str(e.value)
    assert str(store.records_path) in msg and "line 2 " in msg and why in msg
    with pytest.raises(StoreCorruptError, match="line 2 "):
        store.frame()


def test_append_records_the_size_and_digest_of_the_predictions_file(tmp_path):
    import hashlib

    store = _store(tmp_path)
    _append(store)
    (rec,) = store.records()
    data = (store.root / rec["predictions"]).read_bytes()
    assert rec["predictions_size"] == len(data)
    assert rec["predictions_sha256"] == hashlib.sha256(data).hexdigest()
    assert store.verify(rec) is None and store.done() == {"c1/0"}
    assert "predictions_sha256" not in store.frame().columns


@pytest.mark.parametrize("damage", ["garbage", "truncated", "same size, other bytes", "missing"])
def test_damaged_predictions_file_is_not_done_and_reading_it_names_it(tmp_path, damage):
    store = _store(tmp_path)
    _append(store)
    _append(store, fold="1")
    rec = store.records()[1]
    path = store.root / rec["predictions"]
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a zip file")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "same size, other bytes":
        path.write_bytes(data[:-30] + bytes(30))
    else:
        path.unlink()
    assert store.done() == {"c1/0"}
    assert str(path) in store.verify(rec)
    with pytest.raises(StoreCorruptError) as e:
        store.predictions(rec)
    assert str(path) in str(e.value) and "re-run" in str(e.value)


def test_old_records_without_a_digest_are_checked_by_opening_them(tmp_path):
    store = _store(tmp_path)
    _append(store)
    _append(store, fold="1")
    # Rewrite the lines as the first release wrote them: no size, no digest.
    lines = [json.loads(line) for line in store.records_path.read_text().splitlines()]
    for rec in lines:
        rec.pop("predictions_size"), rec.pop("predictions_sha256")
    store.records_path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert store.done() == {"c1/0", "c1/1"}
    (store.root / lines[1]["predictions"]).write_bytes(b"PK\x03\x04 garbage")
    assert store.done() == {"c1/0"}
    with pytest.raises(StoreCorruptError, match="1.npz"):
        store.predictions(store.records()[1])


def test_rerun_recomputes_damaged_predictions_and_nothing_else(tmp_path):
    manifest, fs = make_task(n=48)
    out = tmp_path / "run"
    df = sweep(manifest, fs, out=out, **sweep_args(**QUICK))
    store = ResultStore(out)
    recs = store.records()
    n_lines = len(store.records_path.read_text().splitlines())
    bad = [store.root / recs[0]["predictions"], store.root / recs[5]["predictions"]]
    bad[0].write_bytes(b"garbage")
    bad[1].write_bytes(bad[1].read_bytes()[:100])
    again = sweep(manifest, fs, out=out, **sweep_args(**QUICK))
    assert len(store.records_path.read_text().splitlines()) == n_lines + 2
    assert store.done() == {r["key"] for r in recs}
    cols = ["candidate", "fold", "auc", "accuracy"]
    assert again[cols].sort_values(cols[:2]).reset_index(drop=True).equals(
        df[cols].sort_values(cols[:2]).reset_index(drop=True))
    for rec in store.records():
        store.predictions(rec)  # every file reads back


def test_search_on_a_damaged_predictions_file_names_it(tmp_path):
    from workbench.search.select import search

    manifest, fs = make_task(n=48)
    out = tmp_path / "run"
    sweep(manifest, fs, out=out, **sweep_args(**QUICK))
    store = ResultStore(out)
    for rec in store.records():  # damage every test-split file: the search must read one
        if rec["fold"] == "test":
            (store.root / rec["predictions"]).write_bytes(b"not a zip")
    with pytest.raises(StoreCorruptError, match=r"predictions.*test\.npz"):
        search(out, "auc")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_damaged_run_json_names_the_file(tmp_path, content):
    store = _store(tmp_path)
    store.run_path.write_bytes(content)
    with pytest.raises(StoreCorruptError, match="run.json"):
        store.protocol()
    with pytest.raises(StoreCorruptError, match="run.json"):
        ResultStore(store.root).open(PROTOCOL)


def test_damaged_labels_json_names_the_file(tmp_path):
    store = _store(tmp_path)
    (store.root / "labels.json").write_bytes(b"[]")
    with pytest.raises(StoreCorruptError, match="labels.json"):
        store.plain_label_grids({"rf": {}})


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write(path, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"


def test_run_state_files_are_written_whole(tmp_path):
    manifest, fs = make_task(n=48)
    out = tmp_path / "run"
    sweep(manifest, fs, out=out, **sweep_args(**QUICK))
    names = {p.name for p in out.iterdir()}
    assert {"run.json", "splits.csv", "labels.json", "records.jsonl"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (out / "splits.csv").read_text().splitlines()[0] == "id,label,fold"

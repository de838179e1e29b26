"""The report names byte-identical images under several ids, and what the run did with them."""
from __future__ import annotations

from workbench.report.build import _duplicate_notes


def _group(ids, labels, splits, conflicting=True, crosses=True):
    return {"sha256": "f" * 64, "ids": ids, "labels": labels, "splits": splits, "rows": [1, 2],
            "conflicting_labels": conflicting, "crosses_test": crosses}


def test_duplicates_kept_are_named_with_their_conflict():
    dup = {"policy": "warn", "dropped": [],
           "groups": [_group(["busi_benign_433", "busi_malignant_145"], ["benign", "malignant"], ["test", "train"])]}
    (note,) = _duplicate_notes(dup)
    assert "busi_benign_433 (benign, test) = busi_malignant_145 (malignant, train)" in note
    assert "labels differ, crosses train/test" in note and "kept as they are" in note


def test_duplicates_dropped_are_listed_and_long_lists_are_cut():
    groups = [_group([f"a{i}", f"b{i}"], ["x", "x"], ["train", "train"], False, False) for i in range(12)]
    (note,) = _duplicate_notes({"policy": "drop", "dropped": ["b0", "b1"], "groups": groups})
    assert note.startswith("duplicate images: 12 image(s)") and "(2 more)" in note
    assert "dropped from the run: b0, b1" in note and "labels differ" not in note


def test_no_duplicates_no_note():
    assert _duplicate_notes(None) == [] and _duplicate_notes({"policy": "warn", "groups": []}) == []

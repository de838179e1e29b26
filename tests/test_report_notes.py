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


def test_method_text_states_the_hard_vote_and_stacking_rules_only_when_present():
    from types import SimpleNamespace

    import pandas as pd

    from workbench.report.build import _method_text

    def text(kinds, binary=True):
        result = SimpleNamespace(grouping={}, baselines=pd.DataFrame(), ranking=pd.DataFrame({"kind": kinds}),
                                 best_baseline=None, degenerate={})
        return _method_text(result, {"cv": 5}, "auc", 0.05, binary=binary)

    both = text(["head", "vote-hard", "stack"])
    assert "Hard votes: each member votes at its own Youden threshold" in both
    assert "Stacks: a logistic regression" in both and "never on predictions of members" in both
    plain = text(["head", "vote-soft"])
    assert "Hard votes" not in plain and "Stacks" not in plain
    assert "Hard votes" not in text(["vote-hard"], binary=False)  # several classes: argmax votes

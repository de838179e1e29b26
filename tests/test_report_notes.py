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


def test_method_text_states_repeats_hybrids_and_the_cv_correction():
    from types import SimpleNamespace

    import pandas as pd

    from workbench.report.build import _method_text

    def text(candidates, protocol):
        ranking = pd.DataFrame({"kind": ["vote-soft"] * len(candidates), "candidate": candidates})
        result = SimpleNamespace(grouping={}, baselines=pd.DataFrame(), ranking=ranking, best_baseline=None,
                                 degenerate={})
        return _method_text(result, protocol, "auc", 0.05, binary=True)

    plain = text(["[A] vote-soft(svm-rbf+rf)"], {"cv": 5})
    assert "mean over 5 outer CV folds" in plain and "Hybrid" not in plain and "repeat" not in plain
    assert "Nadeau–Bengio correction" in plain and "corrected resampled t-test" in plain
    hybrid = text(["[A] vote-soft(svm-rbf+rf)", "[A] vote-soft(svm-rbf+rf+CNN lite0)"], {"cv": 5, "repeats": 3})
    assert "mean over 3 × 5 = 15 outer CV folds" in hybrid
    assert "Hybrid ensembles add each end-to-end baseline's fold network" in hybrid
    assert "pool the out-of-fold predictions of every repeat" in hybrid

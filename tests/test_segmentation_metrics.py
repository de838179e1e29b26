"""Dice and IoU against hand computations, empty masks, summaries and their failure paths."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap

from workbench.evaluation.segmentation import (FAILED_DICE, SegmentationInputError, dice, iou, mask_scores,
                                               segmentation_summary, summary_by_class)


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


P = _mask(["##..",
           "##..",
           "....",
           "...."])
T = _mask([".##.",
           ".##.",
           ".##.",
           "...."])


def test_dice_and_iou_equal_a_hand_computation():
    # |P| = 4, |T| = 6, |P∩T| = 2 (column 1, rows 0-1), |P∪T| = 8.
    assert dice(P, T) == pytest.approx(2 * 2 / (4 + 6))  # 0.4
    assert iou(P, T) == pytest.approx(2 / 8)  # 0.25
    assert dice(T, T) == 1.0 and iou(P, P) == 1.0
    assert dice(P, ~P) == 0.0 and iou(P, ~P) == 0.0
    # Dice = 2 IoU / (1 + IoU) for any pair
    assert dice(P, T) == pytest.approx(2 * iou(P, T) / (1 + iou(P, T)))
    # 0/1 integers and bools are the same masks
    assert dice(P.astype(np.uint8), T.astype(int)) == dice(P, T)


def test_empty_masks_both_empty_is_perfect_one_empty_is_zero():
    empty = np.zeros((4, 4), dtype=bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, T) == 0.0 and iou(P, empty) == 0.0


def test_masks_that_cannot_be_compared_are_refused():
    with pytest.raises(SegmentationInputError, match="shape"):
        dice(P, np.zeros((3, 4)))
    with pytest.raises(SegmentationInputError, match="binary"):
        iou(np.full((4, 4), 0.7), T)
    with pytest.raises(SegmentationInputError, match="image 'b'.*binary"):
        mask_scores([P, np.full((4, 4), 2)], [T, T], ids=["a", "b"])
    with pytest.raises(SegmentationInputError, match="2 predicted masks for 1"):
        mask_scores([P, P], [T])


def test_per_image_scores_flag_totally_wrong_masks():
    sliver = np.zeros((10, 10), dtype=bool)
    sliver[0, 0] = True
    lesion = np.zeros((10, 10), dtype=bool)
    lesion[2:8, 2:8] = True  # 36 pixels; the sliver misses it: Dice 0
    frame = mask_scores([P, sliver, lesion], [T, lesion, lesion], ids=["x", "y", "z"], labels=["b", "m", "m"])
    assert list(frame.columns) == ["id", "label", "dice", "iou", "failed"]
    assert frame["dice"].tolist() == pytest.approx([0.4, 0.0, 1.0])
    assert frame["failed"].tolist() == [False, True, False]
    assert FAILED_DICE == 0.1


def test_summary_median_mean_range_and_share_failed():
    v = [0.9, 0.8, 0.85, 0.05, 0.7, 0.95, 0.0]
    s = segmentation_summary(v, n_boot=500, seed=1)
    assert s["n"] == 7 and s["median"] == pytest.approx(0.8) and s["mean"] == pytest.approx(np.mean(v))
    assert (s["min"], s["max"]) == (0.0, 0.95)
    assert s["failed_share"] == pytest.approx(2 / 7)
    ref = bootstrap((np.array(v),), np.median, n_resamples=500, method="percentile",
                    random_state=np.random.default_rng(1), vectorized=False).confidence_interval
    assert (s["median_low"], s["median_high"]) == pytest.approx((ref.low, ref.high))
    assert s["mean_low"] <= s["mean"] <= s["mean_high"]
    assert segmentation_summary(v, n_boot=500, seed=1) == s  # seeded: the same table twice


def test_summary_edge_cases():
    one = segmentation_summary([0.7])
    assert one["median"] == one["median_low"] == one["median_high"] == 0.7
    same = segmentation_summary([0.5, 0.5, 0.5])
    assert same["mean_low"] == same["mean_high"] == 0.5
    with pytest.raises(SegmentationInputError, match="no per-image"):
        segmentation_summary([])
    with pytest.raises(SegmentationInputError, match="NaN"):
        segmentation_summary([0.5, float("nan")])


def test_summary_by_class_all_then_sorted_classes():
    scores = pd.DataFrame({"label": ["m", "b", "m", "b"], "dice": [0.2, 0.9, 0.05, 0.7]})
    table = summary_by_class(scores, n_boot=200)
    assert table["class"].tolist() == ["all", "b", "m"]
    assert table.set_index("class").loc["m", "median"] == pytest.approx(0.125)
    assert table.set_index("class").loc["all", "failed_share"] == pytest.approx(0.25)
    with pytest.raises(SegmentationInputError, match="no column 'iou'"):
        summary_by_class(scores, "iou")

"""Confusion matrix and mIoU on hand-checkable cases."""
import math
import warnings

import pytest
import torch

from frkd.metrics import ConfusionMatrix, format_metrics


def test_update_counts_true_pred_pairs_and_skips_ignored_and_out_of_range_labels():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1], [2, 255, 7]])
    pred = torch.tensor([[0, 1, 1], [0, 2, 2]])
    cm.update(pred, target)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[0, 0] = 1  # (true 0, pred 0)
    expected[0, 1] = 1
    expected[1, 1] = 1
    expected[2, 0] = 1  # 255 and 7 are not counted
    assert torch.equal(cm.matrix, expected)
    cm.update(pred, target)
    assert torch.equal(cm.matrix, 2 * expected)


def test_compute_iou_per_class_pixel_accuracy_and_mean_over_present_classes():
    cm = ConfusionMatrix(4)
    # rows = true class, columns = predicted class; class 3 never occurs, class 2 only predicted
    cm.matrix = torch.tensor([[2, 1, 0, 0],
                              [0, 3, 1, 0],
                              [0, 0, 0, 0],
                              [0, 0, 0, 0]])
    r = cm.compute()
    iou0 = 2 / (3 + 2 - 2)
    iou1 = 3 / (4 + 4 - 3)
    assert r["per_class_iou"][0] == pytest.approx(iou0)
    assert r["per_class_iou"][1] == pytest.approx(iou1)
    assert r["per_class_iou"][2] == 0.0  # predicted but never true: counts, with IoU 0
    assert math.isnan(r["per_class_iou"][3])  # absent from both: left out
    assert r["miou"] == pytest.approx((iou0 + iou1 + 0.0) / 3)
    assert r["pixel_acc"] == pytest.approx(5 / 7)


def test_empty_matrix_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ConfusionMatrix(2).compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"])
    assert all(math.isnan(v) for v in r["per_class_iou"])


def test_perfect_prediction_and_shape_mismatch_error():
    cm = ConfusionMatrix(5)
    labels = torch.randint(0, 5, (2, 6, 7), generator=torch.Generator().manual_seed(0))
    cm.update(labels, labels)
    r = cm.compute()
    present = labels.unique().numel()
    assert r["pixel_acc"] == 1.0 and r["miou"] == 1.0
    assert sum(not math.isnan(v) for v in r["per_class_iou"]) == present
    with pytest.raises(ValueError, match="pred shape"):
        cm.update(labels[0], labels)


def test_all_reduce_is_a_no_op_without_a_process_group_and_format_names_classes():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)
    text = format_metrics(cm.compute(), ["road", "sky"])
    assert "road" in text and "sky" in text and "mIoU" in text

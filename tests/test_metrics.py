"""Metrics on hand-made cases whose answers are worked out by hand."""
import numpy as np
import pytest

from segviz.metrics import confusion_matrix, scores


def test_perfect_prediction():
    t = np.array([[0, 1], [2, 2]])
    s = scores(confusion_matrix(t, t, 3))
    assert s["miou"] == 100 and s["pixel_acc"] == 100 and s["class_acc"] == 100


def test_hand_worked_example():
    # truth:  0 0 1 1      pred: 0 1 1 1
    t = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    cm = confusion_matrix(p, t, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]
    s = scores(cm)
    # IoU0 = 1 / (2 + 1 - 1) = 0.5; IoU1 = 2 / (2 + 3 - 2) = 2/3
    assert s["miou"] == pytest.approx((0.5 + 2 / 3) / 2 * 100)
    assert s["pixel_acc"] == pytest.approx(75)
    assert s["class_acc"] == pytest.approx((0.5 + 1.0) / 2 * 100)
    assert s["per_class_iou"]["0"] == 50.0


def test_ignore_label_never_counts():
    t = np.array([0, 11, 11, 1])
    p = np.array([0, 0, 1, 1])
    s = scores(confusion_matrix(p, t, 11))
    assert s["pixel_acc"] == 100 and s["miou"] == 100


def test_absent_classes_are_left_out_of_the_mean():
    t = np.array([0, 0])
    p = np.array([0, 0])
    s = scores(confusion_matrix(p, t, 3))
    assert s["per_class_iou"]["1"] is None and s["miou"] == 100


def test_a_class_predicted_but_absent_counts_as_zero():
    t = np.array([0, 0])
    p = np.array([0, 1])
    s = scores(confusion_matrix(p, t, 2))
    assert s["per_class_iou"]["1"] == 0.0 and s["miou"] == pytest.approx(25)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)

"""Metrics on hand-made cases whose answers are worked out by hand."""
import numpy as np
import pytest
from PIL import Image

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


# --------------------------------------------------------------------------- boundaries and trimaps
from segviz.metrics import boundaries, boundary_counts, boundary_fscore, distance_to, trimap_confusion  # noqa: E402


def _halves(width=10, edge=5):
    """A 10x10 map: class 0 left of column ``edge``, class 1 from it on."""
    t = np.zeros((10, width), np.uint8)
    t[:, edge:] = 1
    return t


def test_boundary_is_both_sides_of_an_edge():
    b = boundaries(_halves())
    assert b[:, 4].all() and b[:, 5].all() and b.sum() == 20


def test_distance_to_a_boundary_is_euclidean_pixels():
    d = distance_to(boundaries(_halves()))
    assert d[0, 4] == 0 and d[0, 0] == pytest.approx(4) and d[0, 9] == pytest.approx(4)
    assert np.isinf(distance_to(np.zeros((3, 3), bool))).all()


def test_trimap_bands_count_the_pixels_near_the_edge():
    t = _halves()
    p = np.ones_like(t)  # wrong on the whole left half
    bands = trimap_confusion(p, t, 2, bands=(1, 2, 100))
    # band 1: the two edge columns (20 px, 10 of class 0 wrong); band 2: four columns; band 100: everything
    assert bands[0].tolist() == [[0, 10], [0, 10]]
    assert bands[1].tolist() == [[0, 20], [0, 20]]
    assert bands[2].tolist() == [[0, 50], [0, 50]]
    with pytest.raises(ValueError, match="needs num_classes"):
        trimap_confusion(p, t)


def test_boundary_fscore_within_the_tolerance():
    t = _halves(width=100, edge=50)
    t = np.repeat(t, 10, axis=0)  # 100x100: diagonal 141 px, tolerance 1.06 px at 0.75%
    same = boundary_counts(t, t, ignore_index=11)
    assert boundary_fscore(same) == 100
    near = boundary_counts(_halves(100, 51).repeat(10, axis=0), t, ignore_index=11)  # edge 1 px off: within tolerance
    far = boundary_counts(_halves(100, 55).repeat(10, axis=0), t, ignore_index=11)  # 5 px off: beyond it
    assert boundary_fscore(near) == 100 and boundary_fscore(far) == 0
    # an extra edge doubles the predicted boundary: precision 1/2, recall 1 -> F = 2/3
    extra = t.copy()
    extra[:, 80:] = 0
    assert boundary_fscore(boundary_counts(extra, t, ignore_index=11)) == pytest.approx(200 / 3)


def test_boundary_pixels_on_ignored_truth_do_not_count():
    # An edge with the ignore label is a truth boundary on its labelled side (VOC outlines objects with
    # ignore bands); a predicted edge deep inside ignored truth does not count, one beside labelled
    # pixels does.
    t = _halves(width=100, edge=50).repeat(10, axis=0)
    t[:, 70:] = 11
    p = t.copy()
    p[:, 70:] = 0
    p[:, 90:] = 1  # an edge inside the ignored region, 20 px from any labelled pixel: not counted
    counts = boundary_counts(p, t, ignore_index=11)
    # truth: columns 49, 50 and 69 (100 rows); prediction: 49, 50, 69 and 70 (beside labelled 69)
    assert counts.tolist() == [400, 400, 300, 300]


def test_outlines_are_drawn_on_region_borders_only():
    from segviz.viz import outlines

    image = np.zeros((10, 10, 3), np.uint8)
    drawn = outlines(image, _halves()).any(2)
    assert drawn[:, 4].all() and drawn[:, 5].all() and not drawn[2:8, 1:3].any() and not drawn[2:8, 7:9].any()


def test_a_correct_edge_inside_vocs_ignore_band_scores_full_boundary_f():
    """VOC draws a ~5 px ignore band along every object's outline: a prediction whose edge runs in
    the middle of that band is right, on a 100x100 image (tolerance 0.75% of the diagonal, ~1 px
    + the band's half-width must not drop it)."""
    t = _halves(width=100, edge=50).repeat(10, axis=0)
    p = t.copy()
    t[:, 49:51] = 255  # a 2 px band where the truth is ignored, the predicted edge in it
    assert boundary_fscore(boundary_counts(p, t, ignore_index=255)) == 100


def test_a_shared_truth_gives_the_same_counts_for_every_prediction(camvid_root):
    """review scores every model against one Truth per image (its distance transforms made once)."""
    from segviz.metrics import Truth

    name = sorted((camvid_root / "valannot").glob("*.png"))[0]
    gt = np.asarray(Image.open(name))
    truth = Truth(gt, 11, 11)
    rng = np.random.default_rng(0)
    for shift in (0, 3, 9):
        pred = np.roll(gt, shift, axis=1).copy()
        pred[rng.random(gt.shape) < 0.02] = 3
        pred[pred > 10] = 0  # predictions are class ids
        assert np.array_equal(trimap_confusion(pred, truth), trimap_confusion(pred, gt, 11))
        assert np.array_equal(boundary_counts(pred, truth), boundary_counts(pred, gt, ignore_index=11))
    assert "edge_distance" in vars(truth) and "ring" in vars(truth)  # computed once, kept
    with pytest.raises(ValueError, match="differ in shape"):
        trimap_confusion(pred[:10], truth)

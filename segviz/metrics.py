"""Confusion-matrix metrics: per-class IoU, mIoU, pixel accuracy, mean class accuracy."""
from __future__ import annotations

import functools

import numpy as np


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = truth, cols = prediction; target ids
    outside [0, num_classes) (the ignore label) are not counted."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    valid = (target >= 0) & (target < num_classes)
    idx = num_classes * target[valid].astype(np.int64) + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(cm: np.ndarray, class_names=None) -> dict:
    """Metrics from a confusion matrix. Classes absent from both truth and prediction get IoU
    NaN and are left out of the mean (as the usual CamVid evaluations do)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    truth, predicted = cm.sum(1), cm.sum(0)
    union = truth + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(truth > 0, tp / truth, np.nan)
    names = class_names or [str(i) for i in range(len(cm))]
    return {
        "miou": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan"),
        "pixel_acc": float(tp.sum() / max(cm.sum(), 1) * 100),
        "class_acc": float(np.nanmean(acc) * 100) if np.isfinite(acc).any() else float("nan"),
        "per_class_iou": {n: (None if np.isnan(v) else round(float(v) * 100, 2)) for n, v in zip(names, iou)},
    }


# --------------------------------------------------------------------------- boundaries
# Trimap band widths (px): accuracy and mIoU of the pixels this close to a ground-truth boundary, as the
# DeepLab papers plot them to show what the dense CRF fixes.
BANDS = (1, 2, 3, 5, 8, 12, 16, 20, 30, 40)
BF_TOLERANCE = 0.0075  # boundary F-score tolerance, a fraction of the image diagonal (Csurka et al., BMVC 2013)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another label (both sides of every edge)."""
    import cv2

    labels = np.ascontiguousarray(labels, np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(labels, cross) != cv2.erode(labels, cross)


def distance_to(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32: each pixel's Euclidean distance to the nearest True pixel of ``mask`` (inf without any)."""
    import cv2

    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return cv2.distanceTransform(np.where(mask, 0, 255).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


class Truth:
    """What the per-image boundary metrics need from one ground truth, computed on first use and shared
    by every prediction scored against it (the distance transforms of the truth cost as much as the
    rest of a model's scoring)."""

    def __init__(self, target: np.ndarray, num_classes: int, ignore_index: int | None = None, bands=BANDS,
                 tolerance: float = BF_TOLERANCE):
        self.target = np.asarray(target)
        self.num_classes, self.ignore_index, self.bands = num_classes, ignore_index, tuple(bands)
        self.theta = tolerance * float(np.hypot(*self.target.shape))

    def check(self, pred: np.ndarray) -> np.ndarray:
        pred = np.asarray(pred)
        if pred.shape != self.target.shape:
            raise ValueError(f"prediction {pred.shape} and target {self.target.shape} differ in shape")
        return pred

    @functools.cached_property
    def ring(self) -> np.ndarray:
        """Each pixel's narrowest band (len(bands): in none) around the truth's boundaries, ignore label
        included; pixels without a class id are -1."""
        ring = np.searchsorted(np.asarray(self.bands, np.float32), distance_to(boundaries(self.target)), side="right")
        return np.where((self.target >= 0) & (self.target < self.num_classes), ring, -1)

    @functools.cached_property
    def labelled(self) -> np.ndarray:
        return self.target != self.ignore_index

    @functools.cached_property
    def edges(self) -> np.ndarray:
        return boundaries(self.target) & self.labelled

    @functools.cached_property
    def edge_distance(self) -> np.ndarray:
        return distance_to(self.edges)

    @functools.cached_property
    def near_labelled(self) -> np.ndarray:
        return distance_to(self.labelled) <= self.theta


def trimap_confusion(pred: np.ndarray, target, num_classes: int | None = None, bands=BANDS) -> np.ndarray:
    """(len(bands), C, C): the confusion matrix of the pixels closer than each band width to a
    ground-truth boundary (:func:`boundaries` of ``target``, ignore label included). ``target`` may
    be a :class:`Truth`."""
    if not isinstance(target, Truth) and num_classes is None:
        raise ValueError("trimap_confusion needs num_classes when the target is a label map (or pass a Truth)")
    truth = target if isinstance(target, Truth) else Truth(target, num_classes, bands=bands)
    pred = truth.check(pred)
    n, k = truth.num_classes, len(truth.bands)
    # one count per (band, truth, prediction) for each pixel's narrowest band, then accumulated outwards,
    # since every band holds the narrower ones
    valid = (truth.ring >= 0) & (truth.ring < k)
    idx = (truth.ring[valid] * n + truth.target[valid].astype(np.int64)) * n + pred[valid].astype(np.int64)
    return np.cumsum(np.bincount(idx, minlength=k * n * n).reshape(k, n, n), axis=0)


def boundary_counts(pred: np.ndarray, target, ignore_index: int | None = None,
                    tolerance: float = BF_TOLERANCE) -> np.ndarray:
    """[predicted boundary pixels near a true one, predicted boundary pixels, true boundary pixels near
    a predicted one, true boundary pixels] (int64); "near" is within ``tolerance`` x the image diagonal.
    True boundaries are taken on labelled pixels only; a predicted boundary counts unless it lies
    farther than the tolerance from every labelled pixel (VOC's thin ignore band around each object
    is where a correct predicted edge falls, so it must count). Sum them over images for
    :func:`boundary_fscore`. ``target`` may be a :class:`Truth`."""
    truth = target if isinstance(target, Truth) else Truth(target, 0, ignore_index, tolerance=tolerance)
    pred = truth.check(pred)
    bp, bt, theta = boundaries(pred) & truth.near_labelled, truth.edges, truth.theta
    return np.array([(truth.edge_distance[bp] <= theta).sum(), bp.sum(), (distance_to(bp)[bt] <= theta).sum(),
                     bt.sum()], np.int64)


def boundary_fscore(counts: np.ndarray) -> float:
    """Boundary F-score (%) from :func:`boundary_counts`; NaN when neither side has a boundary."""
    matched_pred, pred, matched_true, true = (float(v) for v in counts)
    precision = matched_pred / pred if pred else float("nan")
    recall = matched_true / true if true else float("nan")
    if not (precision + recall > 0):
        return 0.0 if pred or true else float("nan")
    return 200 * precision * recall / (precision + recall)


def trimap_scores(band_cms: np.ndarray) -> dict:
    """Per band: pixel accuracy and mIoU (%) from :func:`trimap_confusion` matrices (summed over images)."""
    per_band = [scores(cm) for cm in band_cms]
    return {"accuracy": [round(s["pixel_acc"], 2) for s in per_band], "miou": [round(s["miou"], 2) for s in per_band]}

"""Confusion-matrix metrics: per-class IoU, mIoU, pixel accuracy, mean class accuracy."""
from __future__ import annotations

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

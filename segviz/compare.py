"""Run several models on one image and compare them: the engine behind the Compare tab."""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import registry, viz
from .data.palettes import CAMVID, LabelSet
from .metrics import confusion_matrix, scores
from .weights import WeightsError, read_manifest


@dataclass(frozen=True)
class ModelSet:
    name: str
    labelset: LabelSet
    description: str

    def models(self) -> list[tuple[str, str | None]]:
        """(registry name, reason it cannot run or None) for every architecture of this set."""
        raise NotImplementedError

    def load(self, name: str, device: str | None = None):
        raise NotImplementedError

    def weights_sha256(self, name: str) -> str | None:
        return None


class CamVidModels(ModelSet):
    """The compact configurations trained on CamVid and bundled in weights/."""

    def models(self):
        bundled = read_manifest()
        return [(s.name, None if s.name in bundled else "no trained weights yet")
                for s in registry.list_models(compact=True)]

    def load(self, name, device=None):
        from .inference import load_model

        return load_model(name, device=device)

    def weights_sha256(self, name):
        return read_manifest().get(name, {}).get("sha256")


MODEL_SETS: dict[str, ModelSet] = {
    "camvid": CamVidModels("camvid", CAMVID, "CamVid street scenes (11 classes), trained here"),
}


def get_model_set(name: str) -> ModelSet:
    if name not in MODEL_SETS:
        raise ValueError(f"unknown model set {name!r}; choose one of: {', '.join(MODEL_SETS)}")
    return MODEL_SETS[name]


@dataclass
class Prediction:
    name: str
    labels: np.ndarray  # (H, W) uint8
    ms: float  # forward latency
    probs: np.ndarray | None = field(default=None, repr=False)  # (C, H, W), kept for the CRF


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 48


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()


def predict_one(model_set: ModelSet, name: str, image: np.ndarray, keep_probs: bool = False) -> Prediction:
    """One model on one image, cached on (image, set, model)."""
    from .inference import predict

    key = (image_key(image), model_set.name, name)
    hit = _CACHE.get(key)
    if hit is not None and (hit.probs is not None or not keep_probs):
        _CACHE.move_to_end(key)
        return hit
    model = model_set.load(name)
    t = time.perf_counter()
    probs = predict(model, image)
    ms = (time.perf_counter() - t) * 1000
    result = Prediction(name, probs.argmax(0).astype(np.uint8), ms, probs if keep_probs else None)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def runnable(model_set: ModelSet, names: list[str]) -> list[str]:
    """The selected names that have weights; unknown names are an error."""
    available = dict(model_set.models())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"not in the {model_set.name} set: {', '.join(unknown)}; choose from: {', '.join(available)}")
    return [n for n in names if available[n] is None]


@dataclass
class Comparison:
    image: np.ndarray
    model_set: str
    predictions: list[Prediction]
    gt: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)  # name -> scores() with the ground truth

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.predictions]


def compare(image: np.ndarray, names: list[str], model_set: str = "camvid", gt: np.ndarray | None = None,
            progress=None) -> Comparison:
    """Run every selected model (that has weights) on ``image``; score them if ``gt`` is given."""
    mset = get_model_set(model_set)
    todo = runnable(mset, names)
    if not todo:
        raise ValueError("none of the selected models has trained weights")
    preds = []
    for i, name in enumerate(todo):
        if progress:
            progress(i / len(todo), f"running {name}")
        preds.append(predict_one(mset, name, image))
    result = Comparison(image, model_set, preds, gt)
    if gt is not None:
        n = mset.labelset.num_classes
        for p in preds:
            result.metrics[p.name] = scores(confusion_matrix(p.labels, gt, n), mset.labelset.classes)
    return result


def overlays(c: Comparison, alpha: float) -> list[tuple[np.ndarray, str]]:
    labelset = get_model_set(c.model_set).labelset
    return [(viz.overlay(c.image, p.labels, labelset, alpha), f"{p.name} · {p.ms:.0f} ms") for p in c.predictions]


def metrics_table(c: Comparison) -> tuple[list[str], list[list]]:
    """Header and rows: per model, mIoU, pixel accuracy and per-class IoU on this image."""
    classes = list(get_model_set(c.model_set).labelset.classes)
    header = ["model", "mIoU", "pixel acc"] + classes
    rows = []
    for name, s in c.metrics.items():
        rows.append([name, round(s["miou"], 1), round(s["pixel_acc"], 1)] +
                    [("" if s["per_class_iou"][k] is None else round(s["per_class_iou"][k], 1)) for k in classes])
    return header, rows


def comparison_card(c: Comparison, alpha: float, settings: dict | None = None) -> bytes:
    """A zip: the overlay grid PNG, every raw label map as PNG, and a JSON of names, weight
    sha256s, settings and metrics."""
    mset = get_model_set(c.model_set)
    tiles = overlays(c, alpha)
    grid = viz.titled_grid([c.image] + [t for t, _ in tiles], ["input"] + [title for _, title in tiles])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("overlays.png", _png(grid))
        for p in c.predictions:
            z.writestr(f"labels/{p.name}.png", _png(p.labels))
        info = {
            "model_set": c.model_set, "classes": list(mset.labelset.classes),
            "image_size": list(c.image.shape[:2]),
            "models": [{"name": p.name, "weights_sha256": mset.weights_sha256(p.name), "latency_ms": round(p.ms, 1)}
                       for p in c.predictions],
            "settings": {"opacity": alpha, **(settings or {})},
            "metrics": c.metrics,
        }
        z.writestr("card.json", json.dumps(info, indent=1))
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


__all__ = ["MODEL_SETS", "ModelSet", "Comparison", "compare", "overlays", "comparison_card", "metrics_table",
           "WeightsError"]

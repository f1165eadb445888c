"""Run several models on one image and compare them: the engine behind the Compare tab."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from . import registry, viz
from .data.palettes import CAMVID, VOC, LabelSet
from .metrics import confusion_matrix, scores
from .weights import read_manifest, sha256_file


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


class VOCModels(ModelSet):
    """Real PASCAL VOC models: Coral's DeepLab v3 ports (offline) and torchvision's (download)."""

    def models(self):
        from . import voc

        return [(m.name, voc.missing_reason(m)) for m in voc.catalogue()]

    def load(self, name, device=None):
        return _load_voc(name, device)

    def weights_sha256(self, name):
        from . import voc

        m = voc.get(name)
        if m.source == "coral":
            return m.sha256
        path = voc.find(m)
        return sha256_file(path) if path else None


@functools.lru_cache(maxsize=8)
def _load_voc(name: str, device: str | None = None):
    from . import voc
    from .inference import default_device

    dev = torch.device(device) if device else default_device()
    return voc.load(voc.get(name)).to(dev, memory_format=torch.channels_last).eval()


MODEL_SETS: dict[str, ModelSet] = {
    "camvid": CamVidModels("camvid", CAMVID, "CamVid street scenes (11 classes), trained here"),
    "voc": VOCModels("voc", VOC, "PASCAL VOC (21 classes): Coral's DeepLab v3 ports and torchvision's models"),
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
    predictions: list[Prediction]  # raw network outputs
    gt: np.ndarray | None = None
    crf_params: "CRFParams | None" = None
    refined: dict = field(default_factory=dict)  # name -> (H, W) labels after the dense CRF
    metrics: dict = field(default_factory=dict)  # name -> scores() of what is shown, with the ground truth
    metrics_before_crf: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.predictions]

    def shown(self) -> list[np.ndarray]:
        """The label maps on display: after the CRF when it is on."""
        return [self.refined.get(p.name, p.labels) for p in self.predictions]


_CRF_CACHE: OrderedDict = OrderedDict()


def refine(mset: ModelSet, name: str, image: np.ndarray, params) -> np.ndarray:
    from .crf import dense_crf

    key = (image_key(image), mset.name, name, params)
    if key not in _CRF_CACHE:
        probs = predict_one(mset, name, image, keep_probs=True).probs
        _CRF_CACHE[key] = dense_crf(probs, image, params).argmax(0).astype(np.uint8)
        while len(_CRF_CACHE) > _CACHE_SIZE:
            _CRF_CACHE.popitem(last=False)
    return _CRF_CACHE[key]


def compare(image: np.ndarray, names: list[str], model_set: str = "camvid", gt: np.ndarray | None = None,
            progress=None, crf_params=None) -> Comparison:
    """Run every selected model (that has weights) on ``image``; refine with the dense CRF when
    ``crf_params`` is given; score them if ``gt`` is given."""
    mset = get_model_set(model_set)
    todo = runnable(mset, names)
    if not todo:
        raise ValueError("none of the selected models has trained weights")
    result = Comparison(image, model_set, [], gt, crf_params)
    for i, name in enumerate(todo):
        if progress:
            progress(i / len(todo), f"running {name}")
        result.predictions.append(predict_one(mset, name, image, keep_probs=crf_params is not None))
        if crf_params is not None:
            if progress:
                progress((i + 0.5) / len(todo), f"dense CRF on {name}")
            result.refined[name] = refine(mset, name, image, crf_params)
    if gt is not None:
        n = mset.labelset.num_classes
        for p, shown in zip(result.predictions, result.shown()):
            result.metrics[p.name] = scores(confusion_matrix(shown, gt, n), mset.labelset.classes)
            if crf_params is not None:
                result.metrics_before_crf[p.name] = scores(confusion_matrix(p.labels, gt, n), mset.labelset.classes)
    return result


def overlays(c: Comparison, alpha: float) -> list[tuple[np.ndarray, str]]:
    labelset = get_model_set(c.model_set).labelset
    tag = " · CRF" if c.refined else ""
    return [(viz.overlay(c.image, labels, labelset, alpha), f"{p.name} · {p.ms:.0f} ms{tag}")
            for p, labels in zip(c.predictions, c.shown())]


def crf_views(c: Comparison, alpha: float) -> dict:
    """Before/after overlays and a map of the pixels the CRF changed, per model."""
    labelset = get_model_set(c.model_set).labelset
    out = {}
    for p in c.predictions:
        if p.name in c.refined:
            after = c.refined[p.name]
            out[p.name] = {"before": viz.overlay(c.image, p.labels, labelset, alpha),
                           "after": viz.overlay(c.image, after, labelset, alpha),
                           "changed": viz.changed_map(c.image, p.labels, after),
                           "changed_share": float((p.labels != after).mean())}
    return out


def metrics_table(c: Comparison) -> tuple[list[str], list[list]]:
    """Header and rows: per model, mIoU (before the CRF too when it is on), pixel accuracy and
    per-class IoU on this image."""
    classes = list(get_model_set(c.model_set).labelset.classes)
    header = ["model", "mIoU"] + (["mIoU before CRF"] if c.metrics_before_crf else []) + ["pixel acc"] + classes
    rows = []
    for name, s in c.metrics.items():
        before = [round(c.metrics_before_crf[name]["miou"], 1)] if c.metrics_before_crf else []
        rows.append([name, round(s["miou"], 1)] + before + [round(s["pixel_acc"], 1)] +
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
        for p, labels in zip(c.predictions, c.shown()):
            z.writestr(f"labels/{p.name}.png", _png(labels))
        info = {
            "model_set": c.model_set, "classes": list(mset.labelset.classes),
            "image_size": list(c.image.shape[:2]),
            "models": [{"name": p.name, "weights_sha256": mset.weights_sha256(p.name), "latency_ms": round(p.ms, 1)}
                       for p in c.predictions],
            "settings": {"opacity": alpha, "crf": c.crf_params.as_dict() if c.crf_params else None,
                         **(settings or {})},
            "metrics": c.metrics,
            "metrics_before_crf": c.metrics_before_crf or None,
        }
        z.writestr("card.json", json.dumps(info, indent=1))
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


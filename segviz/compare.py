"""Run several models on one image and compare them: the engine behind the Compare tab."""
from __future__ import annotations

import atexit
import functools
import hashlib
import io
import json
import os
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from . import env_number, records, viz
from .evaluate import ModelInput, labels_of, logits_of
from .metrics import confusion_matrix, scores
from .records import Record, resolve


@functools.lru_cache(maxsize=32)
def load(name: str) -> torch.nn.Module:
    """A record's network in eval mode on the default device (cached)."""
    from .inference import load_model

    return load_model(name)


@dataclass
class Prediction:
    name: str
    labels: np.ndarray  # (H, W) uint8
    ms: float  # forward latency
    probs: np.ndarray | None = field(default=None, repr=False)  # (C, H, W), kept for the CRF
    backend: str = "torch"  # what ran it (segviz.backends)
    scale: float = 1.0  # how many times the image was enlarged for the forward (Record.scale_for)


class ByteCache:
    """A least-recently-used dict bounded by the bytes of its values (``nbytes(value)``), not their count:
    one 1024 px prediction with its probability map weighs as much as dozens of small label maps.
    Safe to share between threads (Gradio runs events, and a cancelled run's model thread, at once)."""

    def __init__(self, max_bytes: int, nbytes):
        self.max_bytes, self.nbytes, self.bytes = max_bytes, nbytes, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __setitem__(self, key, value):
        size = self.nbytes(value)
        with self._lock:
            if key in self._items:
                self.bytes -= self.nbytes(self._items.pop(key))
            if size > self.max_bytes:
                return  # larger than the whole cache: not kept
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= self.nbytes(old)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self):
        with self._lock:
            self._items.clear()
            self.bytes = 0


def _prediction_bytes(p: "Prediction") -> int:
    return p.labels.nbytes + (p.probs.nbytes if p.probs is not None else 0)


_CACHE_MB = env_number("SEGVIZ_CACHE_MB", 512)  # predictions (with probability maps for the CRF)
_CACHE = ByteCache(_CACHE_MB << 20, _prediction_bytes)


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()


def scale_of(name: str, image: np.ndarray, input_scale: float | None = None) -> float:
    """The factor the record ``name``'s network runs ``image`` at: ``input_scale``, else its own, within the cap."""
    return records.get(name).scale_for(*image.shape[:2], input_scale)


def predict_one(name: str, image: np.ndarray, keep_probs: bool = False, inputs=None,
                input_scale: float | None = None) -> Prediction:
    """One model (a record name) on one image, cached on (image, model, scale). ``inputs``: the image's
    :class:`segviz.evaluate.ModelInput` when several models run on it (normalised once for them all).
    ``input_scale``: run the network on the image resized by this factor instead of the record's own
    (:meth:`segviz.records.Record.scale_for`). ``ms`` is the forward alone; the arg-max skips the softmax
    unless the probabilities are kept."""
    from .inference import load_runner

    scale = scale_of(name, image, input_scale)
    key = (image_key(image), name, scale)
    hit = _CACHE.get(key)
    if hit is not None and (hit.probs is not None or not keep_probs):
        return hit
    runner = load_runner(name)
    x = (inputs or ModelInput(image)).for_model(runner, runner.device)
    t = time.perf_counter()
    logits = logits_of(runner, x, runner.device, scale)
    ms = (time.perf_counter() - t) * 1000
    probs = logits.softmax(1)[0].cpu().numpy() if keep_probs else None
    labels = probs.argmax(0) if probs is not None else labels_of(logits)
    result = Prediction(name, labels.astype(np.uint8), ms, probs, runner.backend, scale)
    _CACHE[key] = result
    return result


@dataclass
class Comparison:
    image: np.ndarray
    records: list[Record]  # the models, in the order shown (one label set)
    predictions: list[Prediction]  # raw network outputs
    gt: np.ndarray | None = None
    crf_params: "CRFParams | None" = None
    input_scale: float | None = None  # the factor the user chose for every network; None: each record's own
    refined: dict = field(default_factory=dict)  # name -> (H, W) labels after the dense CRF
    metrics: dict = field(default_factory=dict)  # name -> scores() of what is shown, with the ground truth
    metrics_before_crf: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.predictions]

    @property
    def labels(self):
        return self.records[0].labels

    def shown(self) -> list[np.ndarray]:
        """The label maps on display: after the CRF when it is on."""
        return [self.refined.get(p.name, p.labels) for p in self.predictions]


_CRF_CACHE = ByteCache(max(1, _CACHE_MB // 8) << 20, lambda labels: labels.nbytes)  # CRF label maps


def _crf_labels(probs: np.ndarray, image: np.ndarray, params) -> np.ndarray:
    from .crf import dense_crf

    return dense_crf(probs, image, params).argmax(0).astype(np.uint8)


_CRF_POOL = None
_crf_pool_lock = threading.Lock()


def _crf_pool(broken=None):
    """Worker processes for the dense CRF (pydensecrf holds the GIL: threads would run one at a time).
    ``broken``: a pool that lost a worker (killed, e.g. out of memory); it is replaced by a new one."""
    global _CRF_POOL
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _crf_pool_lock:
        if broken is not None and _CRF_POOL is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            _CRF_POOL = None
        if _CRF_POOL is None:
            # fork: the workers only run numpy and pydensecrf, and need neither the app nor a fresh interpreter
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            _CRF_POOL = ProcessPoolExecutor(max_workers=os.cpu_count() or 1,
                                            mp_context=multiprocessing.get_context(method))
        return _CRF_POOL


@atexit.register
def _close_crf_pool():
    """At exit, before the interpreter tears down the modules the pool's threads still use."""
    global _CRF_POOL
    with _crf_pool_lock:
        if _CRF_POOL is not None:
            _CRF_POOL.shutdown(wait=True, cancel_futures=True)
            _CRF_POOL = None


def refine_all(names: list[str], image: np.ndarray, params, progress=None,
               input_scale: float | None = None) -> dict[str, np.ndarray]:
    """CRF-refined labels of each model (cached); several models' CRFs run in parallel processes.
    ``input_scale``: as :func:`predict_one`'s."""
    keys = {n: (image_key(image), n, params, scale_of(n, image, input_scale)) for n in names}
    out = {n: _CRF_CACHE.get(keys[n]) for n in names}
    todo = [n for n in names if out[n] is None]

    def probs(n):
        return predict_one(n, image, keep_probs=True, input_scale=input_scale).probs

    if len(todo) == 1:
        out[todo[0]] = _crf_labels(probs(todo[0]), image, params)
    elif todo:
        from concurrent.futures.process import BrokenProcessPool

        for attempt in (1, 2):  # a pool that lost a worker fails every job: once more on a new pool
            pool = _crf_pool()
            try:  # each model's CRF starts while the next model's prediction is made (or read from the cache)
                jobs = {n: pool.submit(_crf_labels, probs(n), image, params) for n in todo}
                for i, n in enumerate(todo):
                    out[n] = jobs[n].result()
                    if progress:
                        progress((i + 1) / len(todo), f"dense CRF: {i + 1} of {len(todo)} models")
                break
            except BrokenProcessPool:
                _crf_pool(broken=pool)
                if attempt == 2:
                    raise RuntimeError("the dense CRF's worker processes stopped twice (out of memory?); "
                                       "try a smaller image or fewer models") from None
    for n in todo:
        _CRF_CACHE[keys[n]] = out[n]
    return out


def compare(image: np.ndarray, names: list[str], gt: np.ndarray | None = None, progress=None,
            crf_params=None, input_scale: float | None = None) -> Comparison:
    """Run every selected model (record names) on ``image``; refine with the dense CRF when
    ``crf_params`` is given (the models' CRFs in parallel processes); score them if ``gt`` is given.
    ``input_scale``: every network runs on the image resized by this factor (0.25 to 4) instead of its
    record's own (:meth:`segviz.records.Record.scale_for`; the working-size cap still holds)."""
    from .preprocess import check_input_scale

    if not names:
        raise ValueError("select at least one model")
    if input_scale is not None:
        input_scale = check_input_scale(input_scale)
    chosen = resolve(names)
    result = Comparison(image, chosen, [], gt, crf_params, input_scale)
    inputs = ModelInput(image)
    for i, r in enumerate(chosen):
        if progress:
            progress(i / len(chosen), f"running {r.short}")
        result.predictions.append(predict_one(r.name, image, keep_probs=crf_params is not None, inputs=inputs,
                                              input_scale=input_scale))
    if crf_params is not None:
        if progress:
            progress(0.0, f"dense CRF on {len(chosen)} models")
        result.refined = refine_all([r.name for r in chosen], image, crf_params, progress, input_scale)
    if gt is not None:
        labels = result.labels
        for p, shown in zip(result.predictions, result.shown()):
            result.metrics[p.name] = scores(confusion_matrix(shown, gt, labels.num_classes), labels.classes)
            if crf_params is not None:
                result.metrics_before_crf[p.name] = scores(confusion_matrix(p.labels, gt, labels.num_classes),
                                                           labels.classes)
    return result


def overlay_title(r: Record, p: Prediction, crf: bool = False) -> str:
    """"FCN-8s · 18 ms · torch": the model's short title, its forward's latency and the backend that ran it
    ("FCN-8s · x2 · 70 ms · torch" where the image was enlarged for the forward)."""
    return (f"{r.short} · " + (f"x{p.scale:.3g} · " if p.scale != 1 else "") + f"{p.ms:.0f} ms · {p.backend}"
            + (" · CRF" if crf else ""))


def titles(c: Comparison) -> list[str]:
    return [overlay_title(r, p, bool(c.refined)) for r, p in zip(c.records, c.predictions)]


def overlays(c: Comparison, alpha: float) -> list[tuple[np.ndarray, str]]:
    return [(viz.overlay(c.image, labels, c.labels, alpha), title) for labels, title in zip(c.shown(), titles(c))]


def classes_at(c: Comparison, pixel: tuple[int, int]) -> list[list[str]]:
    """Rows of (model, class shown at ``pixel`` (y, x) of the working image) and, with a ground truth, its class."""
    y, x = pixel
    h, w = c.image.shape[:2]
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel ({y}, {x}) is outside the {w}x{h} image")
    names = list(c.labels.classes)

    def name(i: int) -> str:
        return names[i] if i < len(names) else "ignored"

    rows = [[r.short, name(int(labels[y, x]))] for r, labels in zip(c.records, c.shown())]
    if c.gt is not None:
        rows.append(["ground truth", name(int(c.gt[y, x]))])
    return rows


def crf_views(c: Comparison, alpha: float) -> dict:
    """Before/after overlays and a map of the pixels the CRF changed, per model."""
    labelset = c.labels
    out = {}
    for p in c.predictions:
        if p.name in c.refined:
            after = c.refined[p.name]
            out[p.name] = {"before": viz.stamp(viz.overlay(c.image, p.labels, labelset, alpha), "before the CRF"),
                           "after": viz.stamp(viz.overlay(c.image, after, labelset, alpha), "after the CRF", right=True),
                           "changed": viz.changed_map(c.image, p.labels, after),
                           "changed_share": float((p.labels != after).mean())}
    return out


def metrics_table(c: Comparison) -> tuple[list[str], list[list]]:
    """Header and rows: per model, mIoU (before the CRF too when it is on), pixel accuracy and
    per-class IoU on this image."""
    classes = list(c.labels.classes)
    header = ["model", "mIoU"] + (["mIoU before CRF"] if c.metrics_before_crf else []) + ["pixel acc"] + classes
    rows = []
    for name, s in c.metrics.items():
        before = [round(c.metrics_before_crf[name]["miou"], 1)] if c.metrics_before_crf else []
        rows.append([name, round(s["miou"], 1)] + before + [round(s["pixel_acc"], 1)] +
                    [("" if s["per_class_iou"][k] is None else round(s["per_class_iou"][k], 1)) for k in classes])
    return header, rows


def shows(c: Comparison, image) -> bool:
    """Whether ``image`` (as uploaded) is the one ``c`` compared: a ground truth uploaded later is scored
    on ``c``'s predictions only then."""
    from .preprocess import prepare_image

    return image is not None and np.array_equal(prepare_image(image).image, c.image)


def file_identity(source) -> dict | None:
    """{"name", "sha256"} of an uploaded file (a path) or pasted bytes; None without one. An image
    handed over in memory (PIL, numpy, a stream) has no file: its type is named, without a sha256."""
    from .weights import sha256_file

    if source is None:
        return None
    if isinstance(source, (bytes, bytearray)):
        return {"name": "pasted image", "sha256": hashlib.sha256(source).hexdigest()}
    if isinstance(source, (str, os.PathLike)):
        return {"name": os.path.basename(str(source)), "sha256": sha256_file(source)}
    return {"name": f"in-memory {type(source).__name__}", "sha256": None}


def comparison_card(c: Comparison, alpha: float, settings: dict | None = None, files: dict | None = None) -> bytes:
    """A zip: the overlay grid and legend PNGs, every raw label map and (with a ground truth) every error
    map as PNG, and a JSON of the input files (``files``: {"input", "ground_truth"} -> name and sha256),
    model names, weight sha256s, settings and metrics."""
    tiles = overlays(c, alpha)
    grid = viz.titled_grid([c.image] + [t for t, _ in tiles], ["input"] + [title for _, title in tiles])
    shown = c.shown()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("overlays.png", png_bytes(grid))
        z.writestr("legend.png", png_bytes(viz.legend_image(c.labels, set(np.unique(np.stack(shown)).tolist()))))
        for p, labels in zip(c.predictions, shown):
            z.writestr(f"labels/{p.name}.png", png_bytes(labels))
            if c.gt is not None:
                z.writestr(f"errors/{p.name}.png", png_bytes(viz.error_map(labels, c.gt, c.labels.ignore_index)))
        info = {
            **(files or {}),
            "dataset": c.records[0].dataset.name, "classes": list(c.labels.classes),
            "image_size": list(c.image.shape[:2]),
            "models": [{"name": r.name, "title": r.title, "weights_file": r.file, "weights_sha256": r.sha256,
                        "latency_ms": round(p.ms, 1), "backend": p.backend, "input_scale": p.scale}
                       for r, p in zip(c.records, c.predictions)],
            "settings": {"opacity": alpha, "crf": c.crf_params.as_dict() if c.crf_params else None,
                         "input_scale": "each model's own" if c.input_scale is None else c.input_scale,
                         **(settings or {})},
            "metrics": c.metrics,
            "metrics_before_crf": c.metrics_before_crf or None,
        }
        z.writestr("card.json", json.dumps(info, indent=1))
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    """An image (uint8 array) as PNG file bytes."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


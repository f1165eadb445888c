"""Forward latency of each model against torchvision's ``deeplabv3_resnet50`` in the same process.

Timings are medians of ``runs`` forwards after ``warmup`` forwards, fp32. Every model is timed
on every backend (:mod:`segviz.backends`: torch contiguous, torch channels_last, OpenVINO,
ONNX Runtime) with its trained weights when it has them; the fastest backend that agrees with
torch is the one the app would choose. The reference is timed as torchvision builds it
(contiguous; ``ratio`` is against this one) and channels_last, each before and after the models
(averaged); the headline ratio is against the faster of the two layouts. Each model's multiply-adds
(``gmacs``) and the rate its chosen backend achieves tell work from speed.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from . import records, registry


def trained_networks() -> list[str]:
    """The registry keys of every model trained here (the records' networks), in the review's order."""
    return list(dict.fromkeys(r.network for r in records.all_records() if r.trained_here))


def time_forward(model: torch.nn.Module, x: torch.Tensor, warmup: int = 2, runs: int = 5) -> float:
    """Median seconds of one forward."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if x.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def gmacs(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Billions of multiply-adds of one forward (torch's FLOP counter halved: what torchvision's weights
    metadata calls "GFLOPS", e.g. 4.089 for ResNet-50 at 224x224)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9


def reference_model() -> torch.nn.Module:
    import torchvision

    return torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                              aux_loss=False)


def _trained_or_random(name: str, num_classes: int) -> tuple[torch.nn.Module, str | None]:
    """The trained weights of registry model ``name`` when there is a record, else random weights."""
    for r in records.all_records():
        if r.trained_here and r.network == name and r.missing() is None:
            return r.load(), r.sha256
    return registry.build(name, num_classes=num_classes), None


def bench(names: list[str], size=(360, 480), warmup: int = 2, runs: int = 5, device: str = "cpu",
          num_classes: int = 11, progress=None, backends: tuple[str, ...] | None = None) -> dict:
    """Per model: every backend's median forward (ms) and arg-max agreement with torch, the backend
    :func:`segviz.backends.fastest` picks, and ratios against torchvision's ``deeplabv3_resnet50``
    timed in the same process (as built, channels_last, and the faster of the two)."""
    from . import backends as be

    dev = torch.device(device)
    x = torch.rand(1, 3, *size, device=dev)
    ref = reference_model().to(dev).eval()
    ref_gmacs = gmacs(ref, x.contiguous())

    def time_reference() -> tuple[float, float]:
        """As torchvision builds and users run it (contiguous), and channels_last."""
        plain = time_forward(ref.to(memory_format=torch.contiguous_format), x.contiguous(), warmup, runs)
        cl = time_forward(ref.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last),
                          warmup, runs)
        return plain, cl

    before = time_reference()
    fast = torch.channels_last if before[1] < before[0] else torch.contiguous_format

    def probe() -> float:
        """The reference's faster layout again, more briefly: the CPU's speed between two models."""
        return time_forward(ref.to(memory_format=fast), x.contiguous(memory_format=fast), 1, 3)

    probes = [min(before)]
    which = tuple(backends or (be.BACKENDS if dev.type == "cpu" else ("torch",)))
    trained = set(trained_networks())
    rows = []
    for name in names:
        spec = registry.get_spec(name)
        model, _ = _trained_or_random(name, num_classes)
        model = model.to(dev).eval()
        measured = be.measure(model, None, size=size, backends=which, runs=runs)
        chosen = be.fastest(measured)
        if "ms" not in measured.get(chosen, {}):
            raise ValueError(f"{name}: none of {', '.join(which)} ran it here (" + "; ".join(
                f"{b}: {m.get('error', 'arg-max disagrees with torch')}" for b, m in measured.items()) + ")")
        ms = measured[chosen]["ms"]
        work = gmacs(model, x)
        rows.append({"name": name, "compact": spec.compact, "trained": name in trained, "backends": measured,
                     "backend": chosen, "ms": ms, "ratio": None, "gmacs": round(work, 3),
                     "gmacs_per_s": round(work / ms * 1000, 1)})
        probes.append(probe())
        rows[-1]["adjacent_reference_ms"] = round((probes[-2] + probes[-1]) / 2 * 1000, 1)
        if progress:
            progress(rows[-1])
    # The reference is timed before and after the models and the two averaged: a shared CPU's speed drifts
    # over a run of minutes, and the ratio should not depend on when the reference happened to run.
    after = time_reference()
    del ref
    ref_s, ref_cl_s = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    fastest_ref_ms = min(ref_s, ref_cl_s) * 1000
    for r in rows:
        r["ratio"] = round(r["ms"] / (ref_s * 1000), 3)
    counted = [r for r in rows if r["compact"] and r["trained"]]
    compact, compact_gmacs = sum(r["ms"] for r in counted), sum(r["gmacs"] for r in counted)
    return {"size": list(size), "device": str(dev), "threads": torch.get_num_threads(), "warmup": warmup, "runs": runs,
            "cpu": be.cpu_name(), "versions": be.versions(),
            "reference": {"name": "torchvision deeplabv3_resnet50 (random weights)", "ms": round(ref_s * 1000, 1),
                          "gmacs": round(ref_gmacs, 2), "before_after_ms": [round(t * 1000, 1) for t in (before[0], after[0])]},
            "reference_channels_last": {"ms": round(ref_cl_s * 1000, 1),
                                        "before_after_ms": [round(t * 1000, 1) for t in (before[1], after[1])]},
            "models": rows, "compact_sum_ms": round(compact, 1), "compact_sum_ratio": round(compact / (ref_s * 1000), 3),
            "compact_sum_ratio_channels_last": round(compact / (ref_cl_s * 1000), 3),
            "compact_sum_ratio_fastest_reference": round(compact / fastest_ref_ms, 3),
            # Each model against the reference's faster layout timed just before and just after it: the same
            # ratio with the CPU's drift over the run taken out.
            "compact_sum_ratio_adjacent_reference": round(sum(r["ms"] / r["adjacent_reference_ms"] for r in counted), 3),
            # The ratio the sum would have if every model ran at the reference's rate of multiply-adds per second.
            "compact_sum_gmacs": round(compact_gmacs, 2), "compact_sum_gmacs_ratio": round(compact_gmacs / ref_gmacs, 3)}


def bench_review(data=None, limit: int | None = None, warmup: int = 2, runs: int = 5, size=(360, 480)) -> dict:
    """The Review's first pass against the models' own forwards, in one process: every CamVid model on the
    runner the app chooses (``--backend auto``), its forward timed bench's way (median of ``runs`` after
    ``warmup``, on a ``size`` frame enlarged to the record's input scale and brought back, as the Review runs
    it) before and after a first pass over CamVid val into a fresh database, and the frames and labels
    decoded once on their own. ``ratio``: the first pass over (frames x mean forwards per frame + decoding);
    the issue's goal is 1.3 or less."""
    import functools
    import tempfile

    from . import review
    from .evaluate import logits_of
    from .inference import load_runner

    runners = [(load_runner(r.name), r.scale_for(*size)) for r in review.choose_models("all", "camvid")]
    x = torch.rand(1, 3, *size)

    def forwards() -> float:
        return sum(time_forward(functools.partial(logits_of, r, device=r.device, scale=s), r.normalize(x), warmup, runs)
                   for r, s in runners)

    source = review.camvid_source(data, "val", limit)
    t = time.perf_counter()
    for item in source.items:
        review.load_pair(item, source.labels)
    decoding = time.perf_counter() - t
    before = forwards()
    with tempfile.TemporaryDirectory() as tmp:
        store = review.Store(os.path.join(tmp, "review.sqlite"))
        t = time.perf_counter()
        result = review.run(source, "all", store, backend="auto")
        first = time.perf_counter() - t
        store.close()
    after = forwards()
    n = len(result.items)
    return {"frames": n, "models": len(runners), "first_pass_s": round(first, 2), "decoding_s": round(decoding, 2),
            "forwards_per_frame_s": {"before": round(before, 3), "after": round(after, 3)},
            "ratio": round(first / (n * (before + after) / 2 + decoding), 3),
            "runners": {r.name: result.backends.get(r.name) for r in result.models},
            "input_scales": {r.name: r.input_scale for r in result.models}}


def bench_first_runs(warm: bool = True, frames: int = 3, size=(360, 480), names: list[str] | None = None,
                     seed: int = 0) -> dict:
    """The Compare tab's first comparisons in this process (run it fresh): every ready CamVid model (or ``names``)
    on the runner the app chooses, at its input scale, on ``frames`` new random ``size`` frames in a row, through
    the tab's path (:func:`segviz.ui.compare.predictions_ahead`), after the app's start-up warm-up
    (:func:`segviz.inference.warm_up`) or, with ``warm=False``, with the runners only prepared. ``forwards_s``: each
    comparison's forwards summed (what the overlay titles add up to); ``vs_last``: each over the last one, the
    reference, by then warm."""
    import numpy as np

    from . import records
    from .inference import load_runner, warm_up
    from .ui.compare import Stopwatch, predictions_ahead

    names = names or [r.name for r in records.records("camvid") if r.missing() is None]
    if not names:
        raise ValueError("no CamVid model's weights are here: python -m segviz weights list")
    t = time.perf_counter()
    if warm:
        warm_up("camvid", log=lambda line: None)
    for name in names:
        load_runner(name)
    prepared = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    sums = []
    for _ in range(frames):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        sums.append(sum(p.ms for _, p in predictions_ahead(image, names, False, Stopwatch())) / 1000)
    return {"warm_up": warm, "models": len(names), "size": list(size), "threads": torch.get_num_threads(),
            "prepare_s": round(prepared, 2), "forwards_s": [round(v, 3) for v in sums],
            "vs_last": [round(v / sums[-1], 3) for v in sums],
            "runners": {name: load_runner(name).backend for name in names},
            "input_scales": {name: records.get(name).scale_for(*size) for name in names}}


def bench_crf(size=(360, 480), labels: int = 12, iterations: int = 5, runs: int = 5, seed: int = 0) -> dict:
    """Our :func:`segviz.crf.dense_crf` against the same raw pydensecrf calls, same inputs, same process."""
    import numpy as np

    from .crf import CRFParams, dcrf, dense_crf

    rng = np.random.default_rng(seed)
    h, w = size
    logits = rng.normal(size=(labels, h, w)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    params = CRFParams(iterations=iterations)

    def raw():
        d = dcrf.DenseCRF2D(w, h, labels)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(labels, -1)))
        d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
        d.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image,
                               compat=params.bilateral_compat)
        return np.asarray(d.inference(iterations), dtype=np.float32).reshape(labels, h, w)

    def ours():
        return dense_crf(probs, image, params)

    difference = float(np.abs(raw() - ours()).max())  # the wrapper must compute what raw pydensecrf computes
    times = {"raw": [], "ours": []}
    for _ in range(runs):  # interleaved, so drifts in machine load hit both alike
        for name, fn in (("raw", raw), ("ours", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    raw_s, ours_s = statistics.median(times["raw"]), statistics.median(times["ours"])
    return {"size": list(size), "labels": labels, "iterations": iterations, "runs": runs,
            "raw_pydensecrf_ms": round(raw_s * 1000, 1), "segviz_dense_crf_ms": round(ours_s * 1000, 1),
            "overhead": round(ours_s / raw_s - 1, 4), "max_abs_difference": difference}


def bench_erf(image, pixel=None, model_set: str = "camvid", runs: int = 3) -> dict:
    """Time the Receptive field tab's work for every ready model at ``pixel`` (default: the centre): the first call (loads models, traces the
    theoretical fields), the median of warm calls at a new pixel each (the gradients), and the median of
    calls at the first pixel again (tiles already made). The reference, in the same process: each model's
    own forward and plain autograd backward to the input at a new pixel, summed (what a warm call cost
    before :mod:`segviz.gradients`)."""
    from .compare import load
    from .evaluate import layout
    from .preprocess import prepare_image, scale_pixel
    from .receptive_field import erf_grid

    names = [r.name for r in records.records(model_set) if r.missing() is None]

    def timed(at):
        t = time.perf_counter()
        erf_grid(image, at, names)
        return time.perf_counter() - t

    prepared = prepare_image(image)
    img = prepared.image
    pixel = pixel or (prepared.original_size[0] // 2, prepared.original_size[1] // 2)
    raw = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float().div(255)

    def plain(at):
        at = scale_pixel(at, prepared.original_size, img.shape[:2])
        t = time.perf_counter()
        for name in names:
            model = load(name)
            inp = model.normalize(raw).contiguous(memory_format=layout(model)).requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(model(inp)["out"][0, 0, at[0], at[1]], inp)
        return time.perf_counter() - t

    first = timed(pixel)
    reference = [plain((pixel[0] - 3 * k, pixel[1] + 4 * k)) for k in range(1, runs + 1)]
    warm = [timed((pixel[0] + 5 * k, pixel[1] - 7 * k)) for k in range(1, runs + 1)]
    reference += [plain((pixel[0] - 3 * k, pixel[1] - 4 * k)) for k in range(1, runs + 1)]
    again = [timed(pixel) for _ in range(runs)]
    warm_s, reference_s = statistics.median(warm), statistics.median(reference)
    return {"models": names, "pixel": list(pixel), "threads": torch.get_num_threads(),
            "first_call_s": round(first, 2), "warm_median_s": round(warm_s, 2),
            "same_pixel_again_s": round(statistics.median(again), 3),
            "plain_autograd_s": round(reference_s, 2), "warm_vs_plain_autograd": round(warm_s / reference_s, 3)}

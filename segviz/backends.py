"""Inference backends, chosen per model and per machine by measurement.

The same trained network can run as:

- ``torch``: PyTorch eager, contiguous (NCHW) memory;
- ``torch-channels-last``: PyTorch eager, channels_last memory (faster on some CPUs, about 3x
  slower for dilated depthwise convolutions on others, e.g. AVX2-only EPYCs);
- ``openvino``: the module converted by OpenVINO (``openvino.convert_model``), compiled for the CPU
  in fp32 with dynamic height and width, and for each input size seen twice on its own;
- ``onnxruntime``: exported to ONNX (``torch.onnx.export``) and run by ONNX Runtime.

No layout or backend is fastest everywhere, so at a model's first use on a machine
:func:`runner` times every available backend on one input, a 360x480 frame enlarged by the model's
input scale (720x960 for the CamVid models, which run at x2), keeps the fastest whose arg-max agrees
with PyTorch's on at least 99.9% of the pixels, and remembers the choice in the user cache
(``~/.cache/segviz/backends.json``) under a key made of the CPU model, the thread count, the library
versions, the runners' revision, the probe's size and the weights' sha256.
``SEGVIZ_BACKEND=NAME`` (or ``--backend`` in the CLI) overrides the choice. On CUDA the model stays
on PyTorch with fp16 autocast.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import statistics
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .evaluate import layout as layout_of

BACKENDS = ("torch", "torch-channels-last", "openvino", "onnxruntime")
PROBE_SIZE = (360, 480)  # a CamVid frame, and a 4:3 photo at the app's working size, before the input scale
MIN_AGREEMENT = 0.999
STATIC_SIZES = 4  # input sizes OpenVINO keeps a compiled model for
RUNNERS_REVISION = 2  # in the remembered choices' key: runners that changed are timed again
_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("SEGVIZ_CACHE", Path.home() / ".cache" / "segviz"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    out = {"torch": torch.__version__}
    for name in ("openvino", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - missing or broken: that backend is unavailable
            out[name] = None
    return out


def converted_file(kind: str, key: str, suffix: str) -> Path:
    """Where a model converted for ``kind`` (openvino, onnx) is kept: named by the weights (``key``) and by
    what the conversion depends on (the runners' revision, torch's exporter, OpenVINO's converter), so that
    new versions convert again instead of loading a graph the old ones exported."""
    import hashlib

    made_by = f"runners {RUNNERS_REVISION}|torch {torch.__version__}"
    if kind == "openvino":
        made_by += f"|openvino {versions()['openvino']}"
    return cache_dir() / kind / f"{key}-{hashlib.sha256(made_by.encode()).hexdigest()[:10]}{suffix}"


def _drop_older_conversions(path: Path, key: str) -> None:
    """Remove the files of the same weights converted by an older revision or converter than ``path``'s."""
    for old in path.parent.glob(f"{key}*"):
        if old.stem != path.stem and ".tmp" not in old.name:
            old.unlink(missing_ok=True)


def missing(backend: str) -> str | None:
    """None when ``backend`` can run here; otherwise why not (one line)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}"
    if backend in ("openvino", "onnxruntime") and versions()[backend] is None:
        return f"{backend} is not installed (pip install {backend})"
    if backend == "onnxruntime":
        try:
            import onnx  # noqa: F401  (torch.onnx.export writes through it)
        except ImportError:
            return "onnx is not installed (pip install onnx)"
    return None


def missing_note() -> str | None:
    """One line for the app's header when a faster CPU backend cannot run here, else None."""
    why = [missing(name) for name in ("openvino", "onnxruntime")]
    why = [w for w in why if w]
    if not why:
        return None
    fallback = ("the models run on PyTorch alone, which on some CPUs is several times slower" if len(why) == 2
                else "the models are timed on the backends that remain")
    return "; ".join(why) + f": {fallback} (`pip install -r requirements.txt` adds it all)"


@dataclass
class Runner:
    """A model ready to run: ``runner(x)`` takes normalised (N, 3, H, W) floats and returns
    ``{"out": logits}`` like the module; ``backend`` says what runs it."""

    backend: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    note: str | None = None  # why the backend asked for could not run, if so

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.fn(x)}


class _Logits(torch.nn.Module):
    """The module with a tensor output, as exporters want it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _torch(model: torch.nn.Module, layout: torch.memory_format) -> Callable:
    if layout_of(model) != layout:  # a copy: the caller's module (load_model's, shared) keeps its own layout
        model = copy.deepcopy(model).to(memory_format=layout)
    model = model.eval()
    device = next(model.parameters()).device

    def run(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            return model(x.to(device).contiguous(memory_format=layout))["out"].float()
    return run


def _openvino(model: torch.nn.Module, key: str | None) -> Callable:
    import openvino as ov

    core = ov.Core()
    xml = converted_file("openvino", key, ".xml") if key else None
    if xml is not None and xml.exists():
        ir = core.read_model(str(xml))
    else:
        example = torch.zeros(1, 3, 64, 64)
        ir = ov.convert_model(_Logits(copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)).eval(),
                              example_input=example, input=[ov.PartialShape([1, 3, -1, -1])])
        if xml is not None:
            xml.parent.mkdir(parents=True, exist_ok=True)
            tmp = xml.with_name(xml.stem + f".{os.getpid()}.tmp.xml")
            ov.save_model(ir, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
            os.replace(tmp, xml)
            _drop_older_conversions(xml, key)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    dynamic = core.compile_model(ir, "CPU", config)
    # The same graph compiled for one input size runs 4-42% faster than the dynamic one on an AVX2 EPYC
    # (FCN-8s 44 vs 62 ms, U-Net 53 vs 90 ms at 360x480): a size seen a second time gets its own compiled
    # model (about 0.2 s to compile), kept for the last STATIC_SIZES sizes; a size seen once (an upload)
    # runs on the dynamic one and costs no compile.
    sizes: OrderedDict = OrderedDict()  # (N, C, H, W) -> compiled model, or None when seen once
    lock = threading.Lock()
    local = threading.local()  # one infer request per thread and compiled model

    def compiled_for(shape):
        with lock:
            seen = shape in sizes
            compiled = sizes.get(shape)
            if compiled is None and seen:
                static = ir.clone()
                static.reshape(list(shape))
                compiled = sizes[shape] = core.compile_model(static, "CPU", config)
            elif not seen:
                sizes[shape] = None
            sizes.move_to_end(shape)
            while len(sizes) > STATIC_SIZES:
                sizes.popitem(last=False)
        return compiled or dynamic

    def run(x):
        a = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        compiled = compiled_for(a.shape)
        requests = local.__dict__.setdefault("requests", weakref.WeakKeyDictionary())
        if compiled not in requests:
            requests[compiled] = compiled.create_infer_request()
        out = requests[compiled].infer([a])
        return torch.from_numpy(np.array(out[0], copy=True))
    return run


_ort_pool = threading.Lock()
_ort_pool_threads: int | None = None


def ort_options():
    """ONNX Runtime's session options: every session of the process shares one pool of torch's thread count.
    With a pool per session, the threads of the model that just ran keep spinning while the next model
    runs, and the models of a comparison slow each other down: all 12 in a row took 1430-1661 ms with a
    pool each against 1029-1325 ms with the shared pool (2 cores, same process), while one model run
    again and again is as fast either way (sums of 12: 915-1090 vs 937-1063 ms). Idle threads that sleep
    instead (``allow_spinning`` 0) cure the first and slow the second by a fifth."""
    import onnxruntime as ort

    global _ort_pool_threads
    with _ort_pool:
        if _ort_pool_threads is None:
            from onnxruntime.capi import _pybind_state

            _ort_pool_threads = torch.get_num_threads()
            _pybind_state.set_global_thread_pool_sizes(_ort_pool_threads, 1)
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    return options


def _onnxruntime(model: torch.nn.Module, key: str | None) -> Callable:
    import onnxruntime as ort

    def export(f):
        net = _Logits(copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)).eval()
        torch.onnx.export(net, (torch.zeros(1, 3, 96, 128),), f, input_names=["x"], output_names=["out"],
                          dynamic_axes={"x": {2: "h", 3: "w"}, "out": {2: "h", 3: "w"}}, opset_version=17,
                          dynamo=False)

    if key is None:  # nothing to name a file after (no weights sha256): converted in memory, no file left behind
        buffer = io.BytesIO()
        export(buffer)
        source = buffer.getvalue()
    else:
        path = converted_file("onnx", key, ".onnx")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.onnx")
            export(str(tmp))
            os.replace(tmp, path)
            _drop_older_conversions(path, key)
        source = str(path)
    session = ort.InferenceSession(source, ort_options(), providers=["CPUExecutionProvider"])

    def run(x):
        out = session.run(None, {"x": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(out[0])
    return run


def make(model: torch.nn.Module, backend: str, key: str | None = None) -> Runner:
    """``model`` (eval mode, weights loaded) as a :class:`Runner` on ``backend``; ``key`` names the
    converted files in the user cache (the weights' sha256)."""
    why = missing(backend)
    if why:
        raise ValueError(why)
    device = next(model.parameters()).device
    if device.type != "cpu" and backend not in ("torch", "torch-channels-last"):
        raise ValueError(f"{backend} runs on the CPU only; the model is on {device}")
    if backend == "torch":
        fn = _torch(model, torch.contiguous_format)
    elif backend == "torch-channels-last":
        fn = _torch(model, torch.channels_last)
    elif backend == "openvino":
        fn = _openvino(model, key)
    else:
        fn = _onnxruntime(model, key)
    return Runner(backend, fn, model.normalize, device)


def _median_ms(fn, x, warmup: int = 1, runs: int = 3) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(model: torch.nn.Module, key: str | None = None, size=PROBE_SIZE, backends=BACKENDS,
            runs: int = 3) -> dict[str, dict]:
    """Per backend: median ms of one forward at ``size`` and arg-max agreement with ``torch`` on a
    smooth random image (or why it cannot run)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=gen), size=size,
                                        mode="bilinear", align_corners=False)
    x = model.normalize(x.to(next(model.parameters()).device))
    reference = make(model, "torch")(x)["out"].argmax(1)
    out = {}
    for name in backends:
        why = missing(name)
        if why:
            out[name] = {"error": why}
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                runner = make(model, name, key)  # exporters print whole graphs when they give up
            agree = float((runner(x)["out"].argmax(1) == reference).float().mean())
            out[name] = {"ms": round(_median_ms(runner.fn, x, runs=runs), 1), "agreement": round(agree, 5)}
        except Exception as e:  # noqa: BLE001 - a backend that cannot take this model is reported, not fatal
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    return out


def fastest(measured: dict[str, dict]) -> str:
    ok = {n: m["ms"] for n, m in measured.items() if "ms" in m and m["agreement"] >= MIN_AGREEMENT}
    return min(ok, key=ok.get) if ok else "torch"


def _choices_file() -> Path:
    return cache_dir() / "backends.json"


def probe_at(scale: float = 1.0) -> tuple[int, int]:
    """The size a model is timed at: :data:`PROBE_SIZE` enlarged by the model's input scale (the size its
    forwards run at), since a backend's lead can change with the input size."""
    return round(PROBE_SIZE[0] * scale), round(PROBE_SIZE[1] * scale)


def machine_key(sha256: str, size=PROBE_SIZE) -> str:
    v = versions()
    return (f"{cpu_name()}|threads {torch.get_num_threads()}|torch {v['torch']}|openvino {v['openvino']}|"
            f"onnxruntime {v['onnxruntime']}|runners {RUNNERS_REVISION}|probe {size[0]}x{size[1]}|{sha256}")


def remembered(sha256: str, size=PROBE_SIZE) -> str | None:
    try:
        return json.loads(_choices_file().read_text()).get(machine_key(sha256, size), {}).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def remember(sha256: str, backend: str, measured: dict, size=PROBE_SIZE) -> None:
    _remember_entry(machine_key(sha256, size), {"backend": backend, "measured": measured})


def _remember_entry(key: str, entry: dict) -> None:
    path = _choices_file()
    with _lock:
        try:
            choices = json.loads(path.read_text())
        except (OSError, ValueError):
            choices = {}
        choices[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1))
        os.replace(tmp, path)


def remembered_timings(sha256: str | None, size=PROBE_SIZE) -> dict[str, dict]:
    """Every backend's timing remembered for these weights on this machine: the backend choice's and the
    torch layouts' (:func:`torch_layout`), the choice's winning where both timed a backend."""
    if not sha256:
        return {}
    key = machine_key(sha256, size)
    try:
        known = json.loads(_choices_file().read_text())
    except (OSError, ValueError):
        return {}
    return {**(known.get(f"{key}|layout") or {}).get("measured", {}), **(known.get(key) or {}).get("measured", {})}


def torch_layout(model: torch.nn.Module, sha256: str | None, size=PROBE_SIZE) -> torch.memory_format:
    """The faster memory layout for running ``model`` in torch on this CPU (CUDA: channels_last, for its
    fp16 tensor cores): from the backend measurement remembered for these weights when there is one,
    else measured now (torch's two layouts only) and remembered; ``SEGVIZ_BACKEND=torch`` or
    ``torch-channels-last`` forces one. Neither is fastest everywhere: on an AVX2-only EPYC
    channels_last makes the dilated models 3-4x slower and the others faster."""
    if next(model.parameters()).device.type == "cuda":
        return torch.channels_last
    names = {"torch": torch.contiguous_format, "torch-channels-last": torch.channels_last}
    if requested() in names:  # SEGVIZ_BACKEND names a torch layout: that one, unmeasured
        return names[requested()]
    measured = remembered_timings(sha256, size)
    if not all("ms" in measured.get(n, {}) for n in names):
        # at the full probe size: at a quarter of it the two layouts came within 10% for DeepLab v1, whose
        # channels_last forward is 3.7x slower at 360x480 on the same CPU
        measured = measure(model, None, size=size, backends=tuple(names), runs=1)
        if sha256:
            _remember_entry(f"{machine_key(sha256, size)}|layout", {"measured": measured})
    timed = {n: measured[n]["ms"] for n in names if "ms" in measured.get(n, {})}
    return names[min(timed, key=timed.get)] if timed else torch.contiguous_format


def requested() -> str | None:
    """The backend forced by ``SEGVIZ_BACKEND`` (None: choose by measurement)."""
    name = os.environ.get("SEGVIZ_BACKEND") or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"SEGVIZ_BACKEND={name!r} is not a backend; choose one of: {', '.join(BACKENDS)}")
    return name


def runner(model: torch.nn.Module, sha256: str | None, backend: str | None = None, size=PROBE_SIZE) -> Runner:
    """The model on ``backend``, else on ``SEGVIZ_BACKEND``, else on the backend measured fastest on
    this machine at ``size`` (measured once, then remembered). Falls back to ``torch`` when the chosen
    backend is not installed, and says why in ``runner.note``."""
    device = next(model.parameters()).device
    if device.type == "cuda":  # torch with fp16 autocast, in the layout load_model gave it (no copy)
        return make(model, "torch-channels-last" if layout_of(model) == torch.channels_last else "torch")
    backend = backend or requested()
    if backend is None:
        backend = remembered(sha256, size) if sha256 else None
        if backend is None:  # the torch layouts may already be timed (load_model chose one): not again
            known = {n: m for n, m in remembered_timings(sha256, size).items() if "ms" in m}
            measured = {**known, **measure(model, sha256, size=size,
                                           backends=tuple(b for b in BACKENDS if b not in known))}
            backend = fastest(measured)
            if sha256:
                remember(sha256, backend, measured, size)
    note = None
    why = missing(backend)
    if why:
        note, backend = f"{why}; running on torch", "torch"
    r = make(model, backend, sha256)
    r.note = note
    return r

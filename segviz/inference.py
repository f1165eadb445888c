"""Load trained models (cached, on CUDA when present), as modules or on a backend runner."""
from __future__ import annotations

import functools
import os
import threading

import torch

from . import records, registry
from .weights import MANIFEST, WeightsError, load_safetensors, sha256_file


def probe_size(record: records.Record) -> tuple[int, int]:
    """The size the record's backends are timed at: a 360x480 frame at the record's input scale."""
    from .backends import PROBE_SIZE, probe_at

    return probe_at(record.scale_for(*PROBE_SIZE))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str, weights: str | None = None, device: str | None = None,
               manifest: str = str(MANIFEST)) -> torch.nn.Module:
    """See :func:`_load_model` (cached on the arguments, however they are passed). One thread at a time:
    two that miss the cache together (the app's warm-up and a request) would each build and keep a copy."""
    with _model_lock:
        return _load_model(name, weights, device, str(manifest))


_model_lock = threading.RLock()


@functools.lru_cache(maxsize=32)
def _load_model(name: str, weights: str | None, device: str | None, manifest: str) -> torch.nn.Module:
    """A trained model in eval mode on ``device`` (default: CUDA when present), in the memory layout
    torch runs it fastest in on this machine (:func:`segviz.backends.torch_layout`). ``name`` is a record
    (``fcn8s_mobilenet_edgetpu.camvid``, or a registry key with one record); its weights are
    sha256-checked. With ``weights`` (a safetensors file), ``name`` may be any registry key.
    Cached per arguments."""
    from .backends import PROBE_SIZE, torch_layout

    size = PROBE_SIZE
    if weights is None:
        record = records.get(name, manifest)
        model, sha, size = record.load(), record.sha256, probe_size(record)
    else:
        network = name.rsplit(".", 1)[0] if name not in registry.names() and "." in name else name
        spec = registry.get_spec(network)
        if not os.path.exists(weights):
            raise FileNotFoundError(f"weights file {weights} does not exist")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(weights, "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{weights} is not a readable safetensors file ({e})") from None
        model = load_safetensors(registry.build(spec.name, num_classes=int(meta.get("num_classes", 11))), weights,
                                 check="warn")
        sha = sha256_file(weights)
    model = model.to(torch.device(device) if device else default_device()).eval()
    return model.to(memory_format=torch_layout(model, sha, size))


_runner_lock = threading.Lock()


def load_runner(name: str, backend: str | None = None, manifest: str = str(MANIFEST)):
    """See :func:`_load_runner`; one thread at a time prepares runners (the app's warm-up thread and a
    request may ask for the same model at once)."""
    with _runner_lock:
        return _load_runner(name, backend, manifest)


@functools.lru_cache(maxsize=32)
def _load_runner(name: str, backend: str | None = None, manifest: str = str(MANIFEST)):
    """The record ``name`` ready to predict on the backend chosen for this machine
    (:func:`segviz.backends.runner`: measured at first use on a frame at the record's input scale,
    remembered, ``SEGVIZ_BACKEND`` overrides).
    Foreign networks without an exporter-friendly graph (the TFLite port) stay on torch."""
    from . import backends

    record = records.get(name, manifest)
    model = load_model(record.name, manifest=manifest)
    if not record.trained_here:
        return backends.make(model, "torch")
    return backends.runner(model, record.sha256, backend, probe_size(record))


_MODEL_THREAD = None
_model_thread_lock = threading.Lock()


def model_thread():
    """The one thread the app runs its models' forwards on (the Compare tab's models, the start-up warm-up), kept
    for the process's life. The runners keep per-thread state (OpenVINO an infer request per thread and model,
    PyTorch's OpenMP a team of threads per calling thread) that a new thread builds again: the warm-up's forwards
    leave it ready for the first comparison only when they ran on the same thread. One thread also lets a
    cancelled comparison's last model finish before the next comparison's first starts."""
    global _MODEL_THREAD
    from concurrent.futures import ThreadPoolExecutor

    with _model_thread_lock:
        if _MODEL_THREAD is None:
            _MODEL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segviz-models")
        return _MODEL_THREAD


def _forwards(runner, x: torch.Tensor, times: int) -> None:
    from .evaluate import logits_of

    with torch.inference_mode():
        for _ in range(times):
            logits_of(runner, x, runner.device)


# A backend's first forward at a new size builds its kernels for that size, and the OpenVINO runner compiles a
# model for a size at its second sight (segviz.backends): without them, the twelve CamVid models' first two
# comparisons of 360x480 frames took 1.4-1.8x the fourth on a 2-core EPYC (`python -m segviz bench --first-runs
# --no-warm-up --runs 4`). Two forwards at warm-up leave the third's speed.
WARM_FORWARDS = 2
WARM_FIELD_SIZE = (360, 480)  # a CamVid frame (the app's examples), and a 4:3 photo's working size


def warm_up(dataset: str = "camvid", log=print) -> None:
    """Prepare every ready model of ``dataset`` on its backend (measured and converted once per
    machine, then remembered) and run it :data:`WARM_FORWARDS` times on a blank frame of
    :func:`probe_size` (a CamVid frame at the record's input scale), so that the first comparison does
    not pay for either; then trace each one's theoretical receptive field at :data:`WARM_FIELD_SIZE`,
    which the Receptive field tab's first grid at that size would otherwise wait for. The forwards run on
    :func:`model_thread`, where the Compare tab's forwards run."""
    import time

    from .receptive_field import theoretical_field

    ready = [r for r in records.records(dataset) if r.missing() is None]
    for r in ready:
        t = time.perf_counter()
        runner = load_runner(r.name)
        prepared = time.perf_counter() - t
        x = torch.zeros(1, 3, *probe_size(r), device=runner.device)
        model_thread().submit(_forwards, runner, x, WARM_FORWARDS).result()
        log(f"{r.name}: {runner.backend} ({prepared:.1f} s, then {WARM_FORWARDS} forwards at "
            f"{x.shape[-2]}x{x.shape[-1]} in {time.perf_counter() - t - prepared:.1f} s)")
    t = time.perf_counter()
    for r in ready:
        theoretical_field(r.name, WARM_FIELD_SIZE)
    log(f"receptive fields traced at {WARM_FIELD_SIZE[0]}x{WARM_FIELD_SIZE[1]} ({time.perf_counter() - t:.1f} s)")

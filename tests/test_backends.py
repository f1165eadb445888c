"""Inference backends: every one agrees with torch on real frames; the choice is measured, remembered
and can be overridden; a missing backend falls back to torch and says so."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from segviz import backends
from segviz.evaluate import predict_logits
from segviz.inference import load_model

# A stride-32 FCN and an output-stride-8 dilated model (the layouts differ most on those).
MODELS = ["fcn8s_mobilenet_edgetpu.camvid", "deeplabv1_mobilenet_edgetpu.camvid"]
FRAMES = ["0016E5_07959.png", "0016E5_08109.png"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEGVIZ_BACKEND", raising=False)


def _agreement_on_real_frames(name, camvid_root):
    model = load_model(name, device="cpu")
    frames = [np.asarray(Image.open(camvid_root / "val" / f).convert("RGB")) for f in FRAMES]
    reference = [predict_logits(backends.make(model, "torch"), f).argmax(1) for f in frames]
    out = {}
    for b in backends.BACKENDS:
        if backends.missing(b):
            continue
        runner = backends.make(model, b, key=name)
        out[b] = min(float((predict_logits(runner, f).argmax(1) == ref).float().mean())
                     for f, ref in zip(frames, reference))
    return out


@pytest.mark.parametrize("name", [MODELS[0], pytest.param(MODELS[1], marks=pytest.mark.slow)])
def test_every_backend_agrees_with_torch_on_real_frames(name, camvid_root):
    agreement = _agreement_on_real_frames(name, camvid_root)
    assert set(agreement) == set(backends.BACKENDS)  # requirements.txt installs both exporters
    assert all(a >= 0.999 for a in agreement.values()), agreement


@pytest.mark.slow
def test_every_trained_model_on_every_backend(camvid_root):
    from segviz import records

    for r in records.records("camvid"):
        agreement = _agreement_on_real_frames(r.name, camvid_root)
        assert set(agreement) == set(backends.BACKENDS) and all(a >= 0.999 for a in agreement.values()), (r.name, agreement)


def test_the_choice_is_measured_once_then_remembered(monkeypatch):
    model = load_model(MODELS[0], device="cpu")
    calls = []
    real = backends.measure

    def counting(*args, **kwargs):
        calls.append(1)
        kwargs.update(backends=("torch", "torch-channels-last"), runs=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "measure", counting)
    first = backends.runner(model, "sha-of-test-weights")
    second = backends.runner(model, "sha-of-test-weights")
    assert len(calls) == 1 and first.backend == second.backend
    saved = json.loads((backends.cache_dir() / "backends.json").read_text())
    key = backends.machine_key("sha-of-test-weights")
    assert saved[key]["backend"] == first.backend and backends.cpu_name() in key
    ms = {b: m["ms"] for b, m in saved[key]["measured"].items()}
    assert first.backend == min(ms, key=ms.get)  # the fastest of those measured


def test_torch_layouts_timed_by_load_model_are_not_timed_again_for_the_choice(monkeypatch):
    model = load_model(MODELS[0], device="cpu")
    sha = "1" * 64
    backends._remember_entry(backends.machine_key(sha) + "|layout", {"measured": {
        "torch": {"ms": 5.0, "agreement": 1.0}, "torch-channels-last": {"ms": 9.0, "agreement": 1.0}}})
    asked = []

    def fake(model, key=None, size=None, backends=(), runs=3):
        asked.append(tuple(backends))
        return {b: {"ms": 100.0, "agreement": 1.0} for b in backends}

    monkeypatch.setattr(backends, "measure", fake)
    chosen = backends.runner(model, sha)
    assert asked == [("openvino", "onnxruntime")] and chosen.backend == "torch"  # 5 ms, remembered from before
    assert json.loads(backends._choices_file().read_text())[backends.machine_key(sha)]["measured"]["torch"]["ms"] == 5.0


def test_override_and_missing_backend(monkeypatch):
    model = load_model(MODELS[0], device="cpu")
    monkeypatch.setenv("SEGVIZ_BACKEND", "torch-channels-last")
    assert backends.runner(model, "x").backend == "torch-channels-last"
    monkeypatch.setenv("SEGVIZ_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="not a backend"):
        backends.runner(model, "x")
    monkeypatch.setattr(backends, "versions", lambda: {"torch": torch.__version__, "openvino": None,
                                                       "onnxruntime": None})
    r = backends.runner(model, "x", backend="openvino")
    assert r.backend == "torch" and "openvino is not installed" in r.note


def test_a_record_is_timed_at_the_size_it_runs_at(monkeypatch):
    """The bundled CamVid models run on the frame enlarged 2x, so their backends are timed on a 720x960
    input, and the choice is remembered under that size (a choice made at 360x480 is not reused)."""
    from segviz import inference, records

    record = records.get(MODELS[0])
    assert record.input_scale == 2 and inference.probe_size(record) == (720, 960)
    sizes = []

    def fake(model, key=None, size=None, backends=(), runs=3):
        sizes.append(tuple(size))
        return {b: {"ms": 1.0 if b == "onnxruntime" else 9.0, "agreement": 1.0} for b in backends}

    monkeypatch.setattr(backends, "measure", fake)
    backends.remember(record.sha256, "openvino", {}, backends.PROBE_SIZE)  # chosen at the frame's own size
    inference._load_model.cache_clear(), inference._load_runner.cache_clear()
    try:
        chosen = inference.load_runner(record.name)
    finally:
        inference._load_model.cache_clear(), inference._load_runner.cache_clear()
    assert set(sizes) == {(720, 960)}  # the torch layouts (load_model), then the other backends
    assert chosen.backend == "onnxruntime" == backends.remembered(record.sha256, (720, 960))
    assert backends.remembered(record.sha256) == "openvino"


def test_the_app_warm_up_runs_every_ready_model_twice_at_the_size_it_runs_at(monkeypatch):
    """The first forwards at a new size are the slow ones (kernels built, OpenVINO's model for that size
    compiled at its second sight): the warm-up spends them on a CamVid frame at each record's input scale, on
    the thread the Compare tab runs its models on, so that a first comparison on such a frame does not."""
    import threading

    from segviz import inference, receptive_field, records

    shapes, threads = {}, set()

    class Runner:
        backend, device = "openvino", "cpu"

        def __init__(self, name):
            self.name = name

        def __call__(self, x):
            shapes.setdefault(self.name, []).append(tuple(x.shape))
            threads.add(threading.current_thread().name)
            return {"out": x[:, :1]}

    monkeypatch.setattr(inference, "load_runner", Runner)
    monkeypatch.setattr(receptive_field, "theoretical_field", lambda name, size: None)
    lines = []
    inference.warm_up("camvid", log=lines.append)
    ready = [r for r in records.records("camvid") if r.missing() is None]
    assert ready and all(r.input_scale == 2 for r in ready)
    assert shapes == {r.name: [(1, 3, 720, 960)] * 2 for r in ready}
    assert "2 forwards at 720x960" in lines[0]
    model_thread = inference.model_thread().submit(lambda: threading.current_thread().name).result()
    assert threads == {model_thread} != {threading.current_thread().name}


def test_a_backend_that_disagrees_is_never_chosen():
    measured = {"torch": {"ms": 100.0, "agreement": 1.0}, "openvino": {"ms": 10.0, "agreement": 0.98},
                "onnxruntime": {"error": "no"}}
    assert backends.fastest(measured) == "torch"
    measured["torch-channels-last"] = {"ms": 50.0, "agreement": 1.0}
    assert backends.fastest(measured) == "torch-channels-last"


def _traced(fn, example):
    """``fn`` as torch.jit.trace records it (the path the ONNX and OpenVINO exporters take)."""
    class Wrap(torch.nn.Module):
        def forward(self, x):
            return fn(x)
    return torch.jit.trace(Wrap(), example)


def test_exportable_adaptive_pool_equals_torchs():
    from segviz.models.pspnet import adaptive_avg_pool

    for bins in (1, 2, 3, 6):
        traced = _traced(lambda x: adaptive_avg_pool(x, bins), torch.randn(1, 4, 32, 32))
        for size in [(67, 93), (13, 7), (6, 6), (120, 160)]:  # odd, non-divisible and smaller-than-bins sizes
            x = torch.randn(2, 4, *size)
            torch.testing.assert_close(traced(x), torch.nn.functional.adaptive_avg_pool2d(x, bins), atol=1e-6, rtol=0)


def test_exportable_unpool_equals_torchs():
    from segviz.models.segnet import max_unpool

    def pool_unpool(x):
        y, idx = torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
        return max_unpool(y, idx, x.shape[-2:])
    traced = _traced(pool_unpool, torch.randn(1, 3, 32, 32))
    for size in [(67, 93), (32, 48)]:
        x = torch.randn(2, 3, *size)
        y, idx = torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
        assert torch.equal(traced(x), torch.nn.functional.max_unpool2d(y, idx, 2, 2, output_size=size))


# PSPNet's adaptive pooling also has its own exporter test in the default run
@pytest.mark.parametrize("name", [pytest.param("pspnet_mobilenet_edgetpu", marks=pytest.mark.slow),
                                  "segnet_mobilenet_edgetpu"])
def test_every_backend_computes_torchs_logits(name, tmp_path, monkeypatch):
    """Export (ONNX, OpenVINO) must not change what the model computes, at more than one size; a model
    without a cache key is converted in memory and leaves no model file in the temporary directory."""
    import tempfile

    from segviz.registry import build

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    torch.manual_seed(0)
    model = build(name, num_classes=11).eval()
    with torch.no_grad():  # random BN statistics, so the logits have a scale worth comparing
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    available = [b for b in backends.BACKENDS if not backends.missing(b)]
    assert set(available) == set(backends.BACKENDS)  # requirements.txt installs both exporters
    runners = {b: backends.make(model, b) for b in available}
    for i, size in enumerate([(96, 128), (120, 160), (96, 128)]):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = model(x)["out"]
        assert ref.std() > 1e-3
        for b, runner in runners.items():
            if i == 2 and b != "openvino":  # the size seen again: OpenVINO runs it on its own compiled model
                continue
            out = runner.fn(x)
            assert out.shape == ref.shape, (b, size)
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=f"{name} on {b} at {size}")
    assert not [f for f in tmp_path.rglob("*") if f.suffix in (".onnx", ".xml", ".bin")]


def test_openvino_compiles_a_size_seen_twice_and_keeps_the_last_few(monkeypatch):
    ov = pytest.importorskip("openvino")
    from segviz.registry import build

    compiled = []
    compile_model = ov.Core.compile_model
    monkeypatch.setattr(ov.Core, "compile_model", lambda self, model, *a, **k: compiled.append(
        [d.get_length() if d.is_static else -1 for d in model.input(0).get_partial_shape()]) or compile_model(self, model, *a, **k))
    monkeypatch.setattr(backends, "STATIC_SIZES", 2)
    run = backends.make(build("fcn8s_mobilenet_edgetpu", num_classes=3).eval(), "openvino").fn
    sizes = [(64, 96), (64, 96), (64, 96), (32, 64), (96, 64), (64, 96), (64, 96)]
    for h, w in sizes:
        assert run(torch.randn(1, 3, h, w)).shape == (1, 3, h, w)
    # dynamic once; 64x96 on its second sighting; 32x64 and 96x64 seen once; 64x96 pushed out by them,
    # seen once more (dynamic), then compiled again
    assert compiled == [[1, 3, -1, -1], [1, 3, 64, 96], [1, 3, 64, 96]]


def test_onnxruntime_sessions_share_one_thread_pool(monkeypatch):
    """The sessions the backend makes use the process's one pool (ONNX Runtime refuses such a session
    when no global pool exists, so making one and running it is the check)."""
    ort = pytest.importorskip("onnxruntime")
    made, real = [], ort.InferenceSession

    def spy(source, options=None, **kwargs):
        made.append(options)
        return real(source, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    runner = backends.make(load_model(MODELS[0], device="cpu"), "onnxruntime")
    assert runner.fn(torch.zeros(1, 3, 64, 64)).shape[-2:] == (64, 64)
    assert len(made) == 1 and made[0].use_per_session_threads is False
    assert backends._ort_pool_threads == torch.get_num_threads()


def test_the_app_says_once_when_a_faster_backend_is_missing(monkeypatch):
    from segviz.ui import device_line

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backends.missing_note() is None and "Note:" not in device_line()  # both installed (requirements.txt)
    monkeypatch.setattr(backends, "versions", lambda: {"torch": torch.__version__, "openvino": None, "onnxruntime": None})
    note = backends.missing_note()
    assert "openvino is not installed" in note and "onnxruntime is not installed" in note
    assert device_line().count("Note:") == 1 and "PyTorch alone" in device_line()
    monkeypatch.setattr(backends, "versions", lambda: {"torch": torch.__version__, "openvino": "2026.4.1",
                                                       "onnxruntime": None})
    assert "PyTorch alone" not in backends.missing_note() and "backends that remain" in backends.missing_note()


def test_one_model_input_serves_every_model_with_the_same_normalisation(camvid_root):
    """Review runs a dozen models on one frame: the frame becomes a tensor and is normalised once per
    normalisation, and the logits and labels are exactly what predict_logits gives each model alone."""
    from segviz.evaluate import ModelInput, labels_of, logits_of

    frame = np.asarray(Image.open(camvid_root / "val" / FRAMES[0]).convert("RGB"))
    inputs = ModelInput(frame)
    models = [load_model(n, device="cpu") for n in MODELS]
    xs = [inputs.for_model(m) for m in models]
    assert xs[0] is xs[1]  # both trained here on EfficientNet-Lite0: one normalised tensor
    voc = load_model("deeplabv3_mnv2.voc", device="cpu")  # the Coral port normalises its own way
    assert inputs.for_model(voc) is not xs[0]
    for m, x in zip(models + [voc], xs + [inputs.for_model(voc)]):
        alone = predict_logits(m, frame)
        assert torch.equal(logits_of(m, x), alone)
        assert np.array_equal(labels_of(alone), alone.argmax(1)[0].numpy())


def test_torch_layout_is_measured_once_remembered_and_can_be_forced(monkeypatch):
    """Neither memory layout is fastest everywhere: load_model runs each model in the one measured faster
    on this machine, measured once per weights and remembered; SEGVIZ_BACKEND naming a torch layout forces it."""
    from segviz.evaluate import layout
    from segviz.registry import build

    model = build("fcn8s_mobilenet_edgetpu", num_classes=11).eval()
    calls, real = [], backends.measure

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backends"))
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "measure", counting)
    chosen = backends.torch_layout(model, "0" * 64)
    assert calls == [("torch", "torch-channels-last")]
    entry = json.loads(backends._choices_file().read_text())[backends.machine_key("0" * 64) + "|layout"]
    timed = {n: m["ms"] for n, m in entry["measured"].items()}
    faster = min(timed, key=timed.get)
    assert chosen == {"torch": torch.contiguous_format, "torch-channels-last": torch.channels_last}[faster]
    assert backends.torch_layout(model, "0" * 64) == chosen and len(calls) == 1  # remembered
    monkeypatch.setenv("SEGVIZ_BACKEND", "torch-channels-last")
    assert backends.torch_layout(model, "1" * 64) == torch.channels_last and len(calls) == 1
    # A runner in the other layout works on a copy: the caller's (shared) module keeps its layout.
    before = layout(model)
    other = torch.channels_last if before == torch.contiguous_format else torch.contiguous_format
    backends._torch(model, other)
    assert layout(model) == before


def test_converted_files_are_named_by_the_weights_and_by_what_converted_them(monkeypatch, tmp_path):
    """A new runners' revision or converter version converts again (the files' names differ), the same ones
    find the file made before."""
    monkeypatch.setenv("SEGVIZ_CACHE", str(tmp_path))
    monkeypatch.setattr(backends, "versions", lambda: {"torch": torch.__version__, "openvino": "2026.4.1"})
    first = backends.converted_file("openvino", "ab12", ".xml")
    assert first == backends.converted_file("openvino", "ab12", ".xml") and first.parent == tmp_path / "openvino"
    assert first.name.startswith("ab12-") and first.suffix == ".xml"
    monkeypatch.setattr(backends, "versions", lambda: {"torch": torch.__version__, "openvino": "2027.0.0"})
    assert backends.converted_file("openvino", "ab12", ".xml") != first
    onnx = backends.converted_file("onnx", "ab12", ".onnx")
    monkeypatch.setattr(backends, "RUNNERS_REVISION", backends.RUNNERS_REVISION + 1)
    assert backends.converted_file("onnx", "ab12", ".onnx") != onnx
    # converting again removes what an older conversion of the same weights left
    older = [onnx, onnx.with_suffix(".xml"), onnx.with_suffix(".bin"), tmp_path / "onnx" / "ab12.onnx"]
    newer = backends.converted_file("onnx", "ab12", ".onnx")
    other = tmp_path / "onnx" / "cd34-0000000000.onnx"
    for f in [*older, newer, other]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    backends._drop_older_conversions(newer, "ab12")
    assert sorted(f.name for f in (tmp_path / "onnx").iterdir()) == sorted([newer.name, other.name])

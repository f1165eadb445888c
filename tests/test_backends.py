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
MODELS = ["fcn8s_efficientnet_lite0.camvid", "deeplabv1_efficientnet_lite0.camvid"]
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


@pytest.mark.parametrize("name", MODELS)
def test_every_backend_agrees_with_torch_on_real_frames(name, camvid_root):
    agreement = _agreement_on_real_frames(name, camvid_root)
    assert {"torch", "torch-channels-last"} <= set(agreement)
    assert all(a >= 0.999 for a in agreement.values()), agreement


@pytest.mark.slow
def test_every_trained_model_on_every_backend(camvid_root):
    from segviz import records

    for r in records.records("camvid"):
        agreement = _agreement_on_real_frames(r.name, camvid_root)
        assert all(a >= 0.999 for a in agreement.values()), (r.name, agreement)


def test_the_choice_is_measured_once_then_remembered(monkeypatch):
    model = load_model(MODELS[0], device="cpu")
    calls = []
    real = backends.measure

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs, backends=("torch", "torch-channels-last"), runs=1)

    monkeypatch.setattr(backends, "measure", counting)
    first = backends.runner(model, "sha-of-test-weights")
    second = backends.runner(model, "sha-of-test-weights")
    assert len(calls) == 1 and first.backend == second.backend
    saved = json.loads((backends.cache_dir() / "backends.json").read_text())
    key = backends.machine_key("sha-of-test-weights")
    assert saved[key]["backend"] == first.backend and backends.cpu_name() in key
    ms = {b: m["ms"] for b, m in saved[key]["measured"].items()}
    assert first.backend == min(ms, key=ms.get)  # the fastest of those measured


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


def test_a_backend_that_disagrees_is_never_chosen():
    measured = {"torch": {"ms": 100.0, "agreement": 1.0}, "openvino": {"ms": 10.0, "agreement": 0.98},
                "onnxruntime": {"error": "no"}}
    assert backends.fastest(measured) == "torch"
    measured["torch-channels-last"] = {"ms": 50.0, "agreement": 1.0}
    assert backends.fastest(measured) == "torch-channels-last"

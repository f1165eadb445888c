"""The dense CRF: real pydensecrf underneath, validated inputs, and an effect on real predictions."""
import numpy as np
import pytest

from segviz import crf
from segviz.crf import CRFError, CRFParams, dense_crf

pytestmark = pytest.mark.skipif(not crf.AVAILABLE, reason="pydensecrf is not installed")


def two_halves(h=40, w=60, noise=0.3, seed=0):
    """A left-red / right-blue image and noisy softmax that is right only on average."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2:] = (30, 30, 200)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2:] = 1
    p1 = np.clip(np.where(truth == 1, 0.6, 0.4) + rng.normal(0, noise, (h, w)), 0.01, 0.99)
    return image, np.stack([1 - p1, p1]).astype(np.float32), truth


def test_crf_cleans_noise_along_image_edges():
    image, probs, truth = two_halves()
    before = (probs.argmax(0) == truth).mean()
    after = (dense_crf(probs, image).argmax(0) == truth).mean()
    assert before < 0.8 and after > 0.97


def test_output_is_a_distribution_of_the_same_shape():
    image, probs, _ = two_halves()
    q = dense_crf(probs, image, CRFParams(iterations=3))
    assert q.shape == probs.shape and q.dtype == np.float32
    assert np.allclose(q.sum(0), 1, atol=1e-4)


def test_working_scale_returns_full_size():
    image, probs, truth = two_halves(80, 120)
    q = dense_crf(probs, image, CRFParams(scale=0.5))
    assert q.shape == probs.shape and (q.argmax(0) == truth).mean() > 0.95


@pytest.mark.parametrize("mutate, message", [
    (lambda p, i: (p[0], i), r"\(C, H, W\)"),
    (lambda p, i: (p, i.astype(np.float32)), "uint8"),
    (lambda p, i: (p, i[:10]), "differ|but the image"),
    (lambda p, i: (p * 3, i), r"\[0, 1\]"),
    (lambda p, i: (np.full_like(p, np.nan), i), "finite"),
    (lambda p, i: (p[:1], i), "2 classes"),
    (lambda p, i: (p, i[..., :2]), r"\(H, W, 3\)"),
])
def test_bad_inputs_are_one_line_errors(mutate, message):
    image, probs, _ = two_halves()
    p, i = mutate(probs, image)
    with pytest.raises(CRFError, match=message) as e:
        dense_crf(p, i)
    assert "\n" not in str(e.value)


def test_non_contiguous_inputs_are_accepted():
    image, probs, truth = two_halves()
    q = dense_crf(np.asfortranarray(probs), image[:, ::1].copy(order="F"))
    assert (q.argmax(0) == truth).mean() > 0.97


@pytest.mark.parametrize("params, message", [
    (CRFParams(iterations=0), "iterations"), (CRFParams(bilateral_srgb=0), "bilateral_srgb"),
    (CRFParams(gaussian_compat=-1), "gaussian_compat"), (CRFParams(scale=2), "scale"),
])
def test_bad_parameters(params, message):
    image, probs, _ = two_halves()
    with pytest.raises(CRFError, match=message):
        dense_crf(probs, image, params)


def test_without_pydensecrf_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(crf, "AVAILABLE", False)
    image, probs, _ = two_halves()
    with pytest.raises(CRFError, match="pip install pydensecrf2"):
        dense_crf(probs, image)
    from segviz.ui.compare import crf_settings

    with pytest.raises(ValueError, match="pydensecrf2"):
        crf_settings(True)
    assert crf_settings(False) is None


def test_app_builds_with_the_crf_disabled_when_pydensecrf_is_missing(monkeypatch):
    monkeypatch.setattr(crf, "AVAILABLE", False)
    import segviz.ui

    demo = segviz.ui.build()
    boxes = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "crf-on"]
    assert boxes and boxes[0].interactive is False


def test_wrapper_equals_raw_pydensecrf():
    from segviz.bench import bench_crf

    result = bench_crf(size=(48, 64), labels=4, iterations=2, runs=1)
    assert result["max_abs_difference"] <= 1e-6 and result["segviz_dense_crf_ms"] > 0


def test_several_models_crf_in_worker_processes_equal_the_direct_call(camvid_root):
    import numpy as np
    from PIL import Image

    from segviz import compare as engine
    from segviz.crf import AVAILABLE, CRFParams, dense_crf

    if not AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    image = np.asarray(Image.open(camvid_root / "val" / "0016E5_07971.png").convert("RGB"))
    names = ["fcn8s_efficientnet_lite0.camvid", "fcn32s_efficientnet_lite0.camvid"]
    params = CRFParams(iterations=2, scale=0.5)
    c = engine.compare(image, names, crf_params=params)  # two CRFs: the process pool
    for name in names:
        direct = dense_crf(engine.predict_one(name, image, keep_probs=True).probs, image, params).argmax(0)
        assert np.array_equal(c.refined[name], direct), name


def test_a_crf_worker_that_dies_is_replaced(camvid_root):
    """A worker killed (out of memory, say) breaks its pool for every later job: the next comparison
    with the CRF gets a new pool instead of failing until the app restarts."""
    import os

    import numpy as np
    from PIL import Image

    from segviz import compare as engine
    from segviz.crf import AVAILABLE, CRFParams

    if not AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    pool = engine._crf_pool()
    with pytest.raises(Exception):
        pool.submit(os._exit, 1).result()  # the worker dies: the pool is broken
    image = np.asarray(Image.open(camvid_root / "val" / "0016E5_07971.png").convert("RGB"))[::4, ::4].copy()
    names = ["fcn8s_efficientnet_lite0.camvid", "fcn32s_efficientnet_lite0.camvid"]
    c = engine.compare(image, names, crf_params=CRFParams(iterations=1))
    assert set(c.refined) == set(names) and engine._crf_pool() is not pool

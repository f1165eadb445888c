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
    names = ["fcn8s_mobilenet_edgetpu.camvid", "fcn32s_mobilenet_edgetpu.camvid"]
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
    names = ["fcn8s_mobilenet_edgetpu.camvid", "fcn32s_mobilenet_edgetpu.camvid"]
    c = engine.compare(image, names, crf_params=CRFParams(iterations=1))
    assert set(c.refined) == set(names) and engine._crf_pool() is not pool


def test_crf_study_scores_what_evaluate_scores_and_tunes_on_the_first_half_only(camvid_root):
    from segviz.crf import AVAILABLE
    from segviz.data.camvid import CamVid
    from segviz.evaluate import crf_study, evaluate
    from segviz.inference import load_model

    if not AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    model = load_model("fcn8s_mobilenet_edgetpu.camvid")
    drive = CamVid(camvid_root, "seq:0006R0", limit=31)
    four = drive.subset(range(0, 31, 10))
    only_default = crf_study(model, four, tune_every=1, progress=False, grid={"bilateral_sxy": (80.0,)})
    assert only_default["images"] == 4 and only_default["tuned_on"] == "every frame of frames 0-1"
    assert only_default["miou"] == round(evaluate(model, four, progress=False)["miou"], 2)
    second_half = round(evaluate(model, drive.subset([20, 30]), progress=False)["miou"], 2)
    assert only_default["second_half_miou"] == second_half
    # a grid holding only pydensecrf's defaults tunes to them: the tuned score is the default score
    assert only_default["tuned_params"] == CRFParams().as_dict()
    assert only_default["second_half_miou_crf_tuned"] == only_default["second_half_miou_crf_default"]
    assert only_default["miou_crf_default"] != only_default["miou"]  # the CRF changed some labels
    two = crf_study(model, four, tune_every=1, progress=False, grid={"bilateral_sxy": (10.0, 80.0)})
    assert {k: v for k, v in two["tuned_params"].items() if k != "bilateral_sxy"} == {
        k: v for k, v in CRFParams().as_dict().items() if k != "bilateral_sxy"}
    assert two["tuned_params"]["bilateral_sxy"] in (10.0, 80.0)


def test_crf_tune_names_its_split_weights_and_grid(camvid_root, capsys, tmp_path):
    import json
    import shutil

    from segviz import records
    from segviz.cli import main
    from segviz.crf import AVAILABLE
    from segviz.weights import WEIGHTS_DIR, sha256_file

    if not AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    record = records.get("fcn32s_mobilenet_edgetpu.camvid")
    one = ["--grid", "bilateral_srgb=5", "--grid", "bilateral_compat=3"]  # one setting, not the default
    assert main(["crf-tune", "--model", record.name, "--split", "seq:0006R0", "--limit", "2", "--json",
                 "--data", str(camvid_root), *one]) == 0
    bundled = json.loads(capsys.readouterr().out)
    assert (bundled["split"], bundled["images"], bundled["weights_sha256"]) == ("seq:0006R0", 2, record.sha256)
    assert bundled["input_scale"] == record.input_scale == 2  # the record runs on the frames enlarged 2x
    assert bundled["tuned_params"] == {**CRFParams().as_dict(), "bilateral_srgb": 5.0, "bilateral_compat": 3.0}
    copy = tmp_path / "w.safetensors"
    shutil.copy(WEIGHTS_DIR / record.file, copy)
    assert main(["crf-tune", "--model", "fcn32s_mobilenet_edgetpu", "--weights", str(copy), "--split", "seq:0006R0",
                 "--limit", "2", "--json", "--data", str(camvid_root), "--input-scale", "2", *one]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["weights_sha256"] == sha256_file(copy) and own["miou"] == bundled["miou"]
    for bad, message in [("bilateral_sxy=0", "bilateral_sxy must be positive"), ("scale=0.5", "NAME one of"),
                         ("bilateral_srgb=5,x", "expected numbers")]:
        with pytest.raises(SystemExit):
            main(["crf-tune", "--model", record.name, "--grid", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err, err


def test_camvid_preset_is_the_setting_most_architectures_chose_on_the_held_out_drive():
    import json
    from collections import Counter

    from conftest import ROOT
    from segviz.crf import PRESETS, preset
    from segviz.evaluate import CRF_GRID

    rows = json.loads((ROOT / "assets" / "crf.json").read_text())
    for axis in CRF_GRID:  # per parameter, the value chosen most often (a tie goes to the smaller value)
        counts = Counter(r["tuned_params"][axis] for r in rows)
        top = max(counts.values())
        assert getattr(PRESETS["camvid"], axis) == min(v for v, c in counts.items() if c == top), axis
    unsearched = {k: v for k, v in CRFParams().as_dict().items() if k not in CRF_GRID}
    assert {k: v for k, v in preset("camvid").as_dict().items() if k not in CRF_GRID} == unsearched
    # assets/crf_preset.json scored exactly this setting, for every architecture
    at_preset = json.loads((ROOT / "assets" / "crf_preset.json").read_text())
    assert all(r["tuned_params"] == preset("camvid").as_dict() for r in at_preset) and len(at_preset) == len(rows)
    assert preset("voc") == CRFParams() and preset("anything else") == CRFParams()


def test_predict_with_the_crf_applies_the_model_sets_preset(camvid_root, tmp_path):
    import numpy as np
    from PIL import Image

    from segviz import compare as engine
    from segviz.crf import AVAILABLE, dense_crf, preset
    from segviz.predict import predict_files

    if not AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    small = tmp_path / "small.png"
    Image.open(camvid_root / "val" / "0016E5_07959.png").convert("RGB").resize((240, 180)).save(small)
    name = "fcn32s_mobilenet_edgetpu.camvid"
    predict_files([name], [str(small)], tmp_path / "o", crf=True, progress=False, log=lambda *a: None)
    labels = np.asarray(Image.open(tmp_path / "o" / name / "small.png"))
    image = np.asarray(Image.open(small))
    probs = engine.predict_one(name, image, keep_probs=True).probs
    assert np.array_equal(labels, dense_crf(probs, image, preset("camvid")).argmax(0))
    assert not np.array_equal(labels, dense_crf(probs, image, CRFParams()).argmax(0))  # the preset made a difference

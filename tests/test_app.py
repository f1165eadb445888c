"""The app: handlers on real images, the HTTP API through gradio_client, and a real browser."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import start_app
from segviz import records, viz
from segviz.data.palettes import CAMVID
from segviz.preprocess import InputError
from segviz.ui import OUTPUTS
from segviz.ui.compare import export_card, ready_names, restyle, run_compare
from segviz.weights import read_manifest

ROOT = Path(__file__).resolve().parent.parent
READY = ready_names("camvid")
TITLES = [records.get(n).short for n in READY]  # what overlays, charts and tables call each model
needs_weights = pytest.mark.skipif(not READY, reason="no bundled weights yet")


@pytest.fixture(scope="module")
def frame(camvid_root):
    return str(camvid_root / "val" / "0016E5_07959.png"), str(camvid_root / "valannot" / "0016E5_07959.png")


def test_short_titles_come_from_the_specs():
    assert records.get("gcn_mobilenet_edgetpu.camvid").short == "GCN"
    assert records.get("deeplabv2_mobilenet_edgetpu.camvid").short == "DeepLab v2"  # "DeepLab v2 (ASPP)"
    assert records.get("deeplabv3_mnv2.voc").short == "DeepLab v3 MobileNetV2"
    assert all(len(t) <= 12 for t in TITLES), TITLES


def test_overlays_leave_voc_background_transparent():
    from segviz.data.palettes import CAMVID, VOC
    from segviz.viz import overlay

    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[:4] = 15  # person
    shown = overlay(image, labels, VOC, 0.6)
    assert np.array_equal(shown[4:], image[4:]) and not np.array_equal(shown[:4], image[:4])
    assert not np.array_equal(overlay(image, labels * 0, CAMVID, 0.6), image)  # CamVid's class 0 is Sky: coloured


@needs_weights
def test_compare_runs_every_ready_model_and_scores_them(frame):
    from segviz.compare import classes_at

    image, mask = frame
    plain = run_compare(image, READY, 0.6)
    r = run_compare(image, READY, 0.6, gt=mask)
    # A ground truth given afterwards is scored on the cached predictions: no model runs again.
    assert all(a is b for a, b in zip(plain["view"].comparison.predictions, r["view"].comparison.predictions))
    # ... only when the image on screen is still the one compared (not a newer upload).
    from segviz.compare import file_identity, shows

    assert shows(r["view"].comparison, image) and not shows(r["view"].comparison, mask) \
        and not shows(r["view"].comparison, None)
    # A library caller's in-memory image has no file to name or hash; the card says so.
    assert file_identity(Image.open(image)) == {"name": "in-memory PngImageFile", "sha256": None}
    # A map too short for a readable colour bar is returned as it is.
    short = np.zeros((20, 30, 3), np.uint8)
    assert viz.with_colour_bar(short, "magma", [(0, "0")], "x") is short
    assert [t.split(" · ")[0] for _, t in r["overlays"]] == TITLES
    # each title says the frame was enlarged to the record's input scale for the forward
    assert [t.split(" · ")[1] for _, t in r["overlays"]] == [f"x{records.get(n).input_scale:g}" for n in READY]
    assert all(o.shape == (360, 480, 3) for o, _ in r["overlays"])
    # The pixel readout: each model's class at a road pixel, and the truth's.
    rows = classes_at(r["view"].comparison, (340, 240))
    assert [m for m, _ in rows] == TITLES + ["ground truth"] and rows[-1][1] == "Road"
    assert sum(c == "Road" for _, c in rows[:-1]) >= len(READY) - 1
    with pytest.raises(ValueError, match="outside the 480x360 image"):
        classes_at(r["view"].comparison, (360, 0))
    # Overlays the page already has are used as they are, not drawn again; stale ones are not.
    drawn = [(f"tile{i}.png", t) for i, (_, t) in enumerate(r["overlays"])]
    assert run_compare(image, READY, 0.6, drawn=drawn)["overlays"] is drawn
    fewer = drawn[:-1]
    redrawn = run_compare(image, READY, 0.6, drawn=fewer)["overlays"]
    assert redrawn is not fewer and all(isinstance(o, np.ndarray) for o, _ in redrawn)
    # The disagreement map carries its colour bar: magma from 0 (bottom) to all but one model (top).
    import matplotlib

    bar = r["disagreement"][:, 480 + 4 + 7]
    assert r["disagreement"].shape[0] == 360 and r["disagreement"].shape[1] > 480
    magma = matplotlib.colormaps["magma"]
    assert np.abs(bar[16].astype(int) - np.round(np.array(magma(1.0)[:3]) * 255)).max() <= 3
    assert np.abs(bar[-7].astype(int) - np.round(np.array(magma(0.0)[:3]) * 255)).max() <= 3
    # The agreement matrix names the models by their short titles.
    ticks = [t.get_text() for t in r["agreement"].axes[0].get_xticklabels()]
    assert ticks == TITLES
    header, rows = r["metrics"]
    assert header[:3] == ["model", "mIoU", "pixel acc"] and len(rows) == len(READY)
    manifest = read_manifest()
    for row in rows:  # one frame scores near the model's val mIoU, not at chance
        assert row[1] > manifest[row[0]]["val_miou"] - 25 and row[2] > 70
    for name in CAMVID.classes:
        assert name in r["legend"]
    assert len(r["errors"]) == len(READY)
    # Opacity 0 shows the image itself; the card carries the weights' identities.
    plain = restyle(r["view"], 0.0)
    assert np.array_equal(plain[0][0], np.asarray(Image.open(image).convert("RGB")))
    card_path = export_card(r["view"])
    assert Path(card_path).parent == Path(OUTPUTS)  # removed with the other outputs after SEGVIZ_KEEP_OUTPUTS
    with zipfile.ZipFile(card_path) as z:
        card = json.loads(z.read("card.json"))
        assert {"overlays.png", "legend.png", *(f"labels/{n}.png" for n in READY),
                *(f"errors/{n}.png" for n in READY)} <= set(z.namelist())
        labels = np.asarray(Image.open(z.open(f"labels/{READY[0]}.png")))
        errors = np.asarray(Image.open(z.open(f"errors/{READY[0]}.png")))
    assert [m["weights_sha256"] for m in card["models"]] == [manifest[n]["sha256"] for n in READY]
    assert [m["input_scale"] for m in card["models"]] == [manifest[n]["input_scale"] for n in READY]
    assert card["settings"]["opacity"] == 0.0 and READY[0] in card["metrics"]
    assert labels.shape == (360, 480) and labels.max() < 11
    assert np.array_equal(errors, r["errors"][0][0])
    import hashlib

    assert card["input"] == {"name": "0016E5_07959.png", "sha256": hashlib.sha256(Path(image).read_bytes()).hexdigest()}
    assert card["ground_truth"]["sha256"] == hashlib.sha256(Path(mask).read_bytes()).hexdigest()


@needs_weights
def test_a_record_runs_on_the_image_enlarged_to_its_input_scale_within_the_working_size_cap(frame):
    """A CamVid record runs on a 360x480 frame enlarged 2x, its logits brought back to the frame's size; a larger
    image is enlarged only up to the 1024 px working-size cap, one past it not at all, and a VOC model never."""
    from segviz.compare import predict_one
    from segviz.evaluate import ModelInput, labels_of, logits_of
    from segviz.inference import load_runner
    from segviz.preprocess import prepare_image

    name = "fcn8s_mobilenet_edgetpu.camvid"
    record = records.get(name)
    assert record.input_scale == 2
    assert record.scale_for(360, 480) == 2 and record.scale_for(720, 960) == 1024 / 960
    assert record.scale_for(768, 1024) == 1 and record.scale_for(1500, 2000) == 1
    assert records.get("deeplabv3_mnv2.voc").input_scale == 1
    image = prepare_image(frame[0]).image
    got = predict_one(name, image)
    runner = load_runner(name)
    x = ModelInput(image).for_model(runner, runner.device)
    assert got.scale == 2 and np.array_equal(got.labels, labels_of(logits_of(runner, x, runner.device, 2)))
    assert not np.array_equal(got.labels, labels_of(logits_of(runner, x, runner.device)))


@needs_weights
def test_the_user_can_run_every_network_at_one_input_scale_instead_of_its_own(frame, tmp_path):
    """The Compare tab's "Network input size": x1 runs a CamVid record on the frame's own size (its logits as
    the module's own forward gives them), cached apart from its x2 run; the cap still holds above x1, the
    titles and the card say the factor, and a factor outside 0.25-4 is refused in one line."""

    from segviz.compare import predict_one
    from segviz.evaluate import ModelInput, labels_of, logits_of
    from segviz.inference import load_runner
    from segviz.preprocess import prepare_image
    from segviz.ui.compare import INPUT_SCALE_CHOICES, input_scale_of

    name = "fcn8s_mobilenet_edgetpu.camvid"
    record = records.get(name)
    assert record.scale_for(360, 480, 1.5) == 1.5 and record.scale_for(360, 480, 3) == 1024 / 480
    assert record.scale_for(360, 480, 0.5) == 0.5 and record.scale_for(1500, 2000, 0.5) == 0.5
    image = prepare_image(frame[0]).image
    runner = load_runner(name)
    x = ModelInput(image).for_model(runner, runner.device)
    own, at_one = predict_one(name, image), predict_one(name, image, input_scale=1)
    assert (own.scale, at_one.scale) == (2, 1)
    assert np.array_equal(at_one.labels, labels_of(logits_of(runner, x, runner.device)))
    assert not np.array_equal(at_one.labels, own.labels) and predict_one(name, image) is own
    assert [input_scale_of(v) for _, v in INPUT_SCALE_CHOICES] == [None, 0.5, 1.0, 1.5, 2.0]
    r = run_compare(frame[0], READY[:2], 0.6, input_scale=1)
    assert [t for _, t in r["overlays"]] == [f"{t} · {p.ms:.0f} ms · {p.backend}"
                                             for t, p in zip(TITLES[:2], r["view"].comparison.predictions)]
    r = run_compare(frame[0], READY[:2], 0.6, input_scale=1.5)
    assert all(t.split(" · ")[1] == "x1.5" for _, t in r["overlays"])
    card = json.loads(zipfile.ZipFile(export_card(r["view"])).read("card.json"))
    assert card["settings"]["input_scale"] == 1.5 and {m["input_scale"] for m in card["models"]} == {1.5}
    for bad in ("9", "0", "x2", True):
        with pytest.raises(ValueError, match="^the input scale must be a number from 0.25 to 4, got") as e:
            input_scale_of(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="input scale"):
        run_compare(frame[0], READY[:1], 0.6, input_scale=5)


@needs_weights
def test_dense_crf_in_the_comparison(frame):
    from segviz import crf
    from segviz.ui.compare import crf_settings

    if not crf.AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    image, mask = frame
    params = crf_settings(True, 5, 3, 3, 80, 13, 10, 0.5)
    r = run_compare(image, READY[:1], 0.6, gt=mask, crf=params)
    view = r["crf"][READY[0]]
    assert view["before"].shape == view["after"].shape == (360, 480, 3)
    assert 0 < view["changed_share"] < 0.5  # it changes something, but not everything
    # The slider's two sides say which is which: a black label strip top-left (before), top-right (after).
    assert (view["before"][14, :8] == 0).all() and (view["after"][14, -8:-2] == 0).all()
    assert not (view["before"][14, -8:-2] == 0).all()
    header, rows = r["metrics"]
    assert header[1:3] == ["mIoU", "mIoU before CRF"] and abs(rows[0][1] - rows[0][2]) < 15
    assert r["overlays"][0][1].endswith("CRF")
    streamed = [("tile.png", r["overlays"][0][1].removesuffix(" · CRF"))]  # before the CRF: not what is shown now
    again = run_compare(image, READY[:1], 0.6, gt=mask, crf=params, drawn=streamed)
    assert again["overlays"][0][0] is not streamed[0][0] and again["overlays"][0][1].endswith("CRF")
    with zipfile.ZipFile(export_card(r["view"])) as z:
        card = json.loads(z.read("card.json"))
    assert card["settings"]["crf"]["scale"] == 0.5 and card["metrics_before_crf"]
    with pytest.raises(ValueError, match="iterations"):
        crf_settings(True, 0)


@needs_weights
@pytest.mark.parametrize("make, message", [
    (lambda d: d / "x.png", "does not exist"),
    (lambda d: (d / "c.png").write_bytes(b"garbage") and d / "c.png", "not a readable image"),
])
def test_bad_images_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        run_compare(str(make(tmp_path)), READY[:1], 0.5)


@needs_weights
def test_bad_masks_and_selections(frame, tmp_path):
    image, _ = frame
    # A VOC label map (person, ignore) on CamVid models: shown unscored, with a warning.
    voc = np.full((360, 480), 15, np.uint8)
    voc[:10] = 255
    Image.fromarray(voc).save(tmp_path / "voc.png")
    r = run_compare(image, READY[:1], 0.5, gt=str(tmp_path / "voc.png"))
    assert r["metrics"] == (["model"], []) and r["errors"] == [] and len(r["overlays"]) == 1
    assert any(n.startswith("ground truth not scored: the mask holds label values 15, 255 outside 0-10")
               and "CamVid" in n for n in r["notes"]), r["notes"]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="is 10x10 but the image is 480x360"):
        run_compare(image, READY[:1], 0.5, gt=str(tmp_path / "small.png"))
    with pytest.raises(ValueError, match="at least one"):
        run_compare(image, [], 0.5)
    with pytest.raises(KeyError, match="no trained model 'nonsense_model'"):
        run_compare(image, ["nonsense_model"], 0.5)
    with pytest.raises(ValueError, match="different label sets"):
        run_compare(image, [READY[0], "deeplabv3_mnv2.voc"], 0.5)


def test_examples_are_test_frames_when_there_are_and_name_the_models_that_trained_on_them(camvid_root, tmp_path,
                                                                                           monkeypatch):
    import shutil

    from segviz.ui.compare import example_images, examples_label

    monkeypatch.setenv("SEGVIZ_DATA", str(camvid_root))
    val = example_images()
    assert len(val) == 6 and {Path(p).parent for p in val} == {camvid_root / "val"}
    # The manifest's own flag (set when the weights were bundled) says which models trained on val's frames.
    every = records.records("camvid")
    trained = [r.short for r in every if r.metrics.get("val_trained_on")]
    named = f" (trained on by {', '.join(trained)})" if trained else ""
    assert examples_label(val) == "CamVid val frames" + (
        " (every CamVid model here trained on them)" if len(trained) == len(every) else named)
    # with every model trained on val (the records' train split made trainval), the label says so shortly
    import dataclasses

    monkeypatch.setattr(records, "records", lambda dataset: [dataclasses.replace(
        r, metrics={**r.metrics, "train_split": "trainval"}) for r in every])
    assert examples_label(val) == "CamVid val frames (every CamVid model here trained on them)"
    monkeypatch.undo()
    for folder in ("test", "testannot"):
        (tmp_path / folder).mkdir()
    lines = []
    for i, (image, label) in enumerate(zip(sorted((camvid_root / "val").iterdir())[:2],
                                           sorted((camvid_root / "valannot").iterdir())[:2])):
        shutil.copy(image, tmp_path / "test" / f"Seq05VD_f{i:05d}.png")
        shutil.copy(label, tmp_path / "testannot" / f"Seq05VD_f{i:05d}.png")
        lines.append(f"test/Seq05VD_f{i:05d}.png testannot/Seq05VD_f{i:05d}.png")
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(camvid_root / "train.txt", tmp_path / "train.txt")
    monkeypatch.setenv("SEGVIZ_DATA", str(tmp_path))
    test = example_images()
    assert [Path(p).name for p in test] == ["Seq05VD_f00000.png", "Seq05VD_f00001.png"]
    assert examples_label(test) == "CamVid test frames"
    # The Review tab opens at the same split: test here, val where the folder has no test split.
    from segviz.ui.review import default_split

    assert default_split() == "test"
    (tmp_path / "test.txt").unlink()
    assert default_split() == "val"
    monkeypatch.setenv("SEGVIZ_DATA", str(tmp_path / "nowhere"))
    assert default_split() == "val" and example_images() == []


def test_models_tab_lists_every_record_and_every_untrained_architecture():
    from segviz.registry import list_models
    from segviz.ui.models import HEADERS, model_rows, models_html

    rows = {r[0]: r for r in model_rows()}
    every = records.all_records()
    trained = {r.network for r in every}
    assert set(rows) == {r.name for r in every} | {s.name for s in list_models() if s.name not in trained}
    col = {h: i for i, h in enumerate(HEADERS)}
    for name, entry in read_manifest().items():
        val = "trained on val" if entry["val_trained_on"] else f"{entry['val_miou']:.2f}"
        assert rows[name][col["val mIoU (ours)"]] == val
        if "heldout" in entry:
            assert rows[name][col["held-out sequence mIoU (ours)"]].startswith(str(entry["heldout"]["miou"]))
        assert rows[name][col["input scale"]] == f"x{entry['input_scale']:g}"
        assert rows[name][col["trained on"]] == "camvid"
    review = col["VOC12 test mIoU (review)"]
    assert rows["fcn8s_mobilenet_edgetpu.camvid"][review] == 62.2  # the review's FCN figure
    assert rows["deeplabv3_mobilenet_edgetpu.camvid"][review] == 85.7
    assert rows["deeplabv3_mnv2.voc"][col["trained on"]] == "voc"
    # paper-faithful configurations: the papers' parameter counts and traced fields
    assert abs(rows["fcn8s_vgg16"][col["params (M)"]] - 134) < 1.5 and rows["fcn8s_vgg16"][col["output stride"]] == 8
    assert rows["pspnet_resnet50"][col["theoretical field at 360x480"]].startswith("whole image")
    html = models_html()
    assert 'href="https://arxiv.org/abs/1706.05587"' in html and html.count("<tr>") == len(rows) + 1


def test_crf_iterations_must_be_whole_numbers():
    from segviz import crf
    from segviz.ui.compare import crf_settings

    if not crf.AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    assert crf_settings(True, 5.0).iterations == 5  # sliders send floats
    for bad in (5.7, "5", None, float("nan"), True):
        with pytest.raises(ValueError, match="CRF iterations must be a whole number"):
            crf_settings(True, bad)


@pytest.mark.parametrize("pixel", [("abc", 3), None, (1, None), (1.5, 2), (1,), "ab"])
def test_pixels_that_are_not_two_whole_numbers_are_refused(pixel):
    from segviz.preprocess import scale_pixel

    with pytest.raises(ValueError, match="the pixel must be a"):
        scale_pixel(pixel, (360, 480), (360, 480))


def test_a_pixel_outside_the_image_is_refused_not_clamped():
    from segviz.preprocess import scale_pixel

    assert scale_pixel((719, 959), (720, 960), (360, 480)) == (359, 479)
    assert scale_pixel([0, 0], (720, 960), (360, 480)) == (0, 0)
    for pixel in [(720, 0), (0, 960), (-1, 5), (5, -1)]:
        with pytest.raises(ValueError, match="outside the 960x720 image"):
            scale_pixel(pixel, (720, 960), (360, 480))


def test_crf_budget_scales_the_crf_down_or_refuses():
    from segviz.crf import CRFParams
    from segviz.ui.compare import crf_within_budget

    light = CRFParams(5, scale=1.0)
    assert crf_within_budget(light, (360, 480), 11, budget=10_000_000) == (light, None)
    heavy = CRFParams(20, bilateral_sxy=200, scale=1.0)  # the heaviest the sliders allow, 1024 px, 11 models
    scaled, note = crf_within_budget(heavy, (768, 1024), 11, budget=40_000_000)
    assert 0.25 <= scaled.scale < 1 and scaled.iterations == 20 and "working scale" in note
    assert 768 * 1024 * scaled.scale ** 2 * 20 * 11 <= 40_000_000
    with pytest.raises(ValueError, match="over this server's budget"):
        crf_within_budget(heavy, (768, 1024), 11, budget=1_000_000)
    assert crf_within_budget(None, (768, 1024), 11) == (None, None)
    # With the server's default budget: the default CRF on a CamVid frame with every model runs as asked,
    # the heaviest the sliders allow on a 1024 px image runs at a lower scale.
    assert crf_within_budget(CRFParams(), (360, 480), 11)[1] is None
    assert crf_within_budget(heavy, (768, 1024), 11)[0].scale < 0.5


def test_prediction_caches_are_bounded_in_bytes():
    from segviz.compare import ByteCache

    cache = ByteCache(1000, lambda a: a.nbytes)
    for i in range(10):
        cache[i] = np.zeros(300, np.uint8)
    assert cache.bytes <= 1000 and len(cache) == 3 and list(cache._items) == [7, 8, 9]
    cache.get(7)  # used: now the newest
    cache[10] = np.zeros(300, np.uint8)
    assert list(cache._items) == [9, 7, 10]
    cache["big"] = np.zeros(5000, np.uint8)  # larger than the cache: not kept, nothing evicted for it
    assert "big" not in cache and len(cache) == 3
    cache[9] = np.zeros(900, np.uint8)  # replacing a key re-counts its bytes
    assert cache.bytes <= 1000 and list(cache._items) == [9]


def test_prediction_cache_keeps_its_byte_count_under_concurrent_use():
    """Compare's model thread and other sessions' events share the cache: its count must not drift
    (a drifted count above the bound made every later insert fail on an empty dict)."""
    import sys
    import threading

    from segviz.compare import ByteCache

    cache = ByteCache(400, lambda a: a.nbytes)
    errors = []

    def work(k):
        try:
            for i in range(3000):
                cache[(k, i % 7)] = np.zeros(100, np.uint8)
                cache.get((k - 1, i % 7))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert cache.bytes == sum(v.nbytes for v in cache._items.values()) <= 400


def test_outputs_are_new_files_never_rewritten():
    from segviz.ui import png_file

    a = np.zeros((20, 30, 3), np.uint8)
    first, second = png_file(a), png_file(a)
    assert first != second  # the same picture twice: two files, so no download reads one being rewritten
    assert np.array_equal(np.asarray(Image.open(first)), a) and png_file("x.png") == "x.png"


def test_run_can_be_cancelled_and_old_outputs_are_deleted():
    import segviz.ui

    demo = segviz.ui.build()
    deps = demo.config["dependencies"]
    run = next(i for i, d in enumerate(deps) if d.get("api_name") == "compare")
    assert any(run in (d.get("cancels") or []) for d in deps)
    assert demo.delete_cache and demo.delete_cache[1] > 0
    # segviz's own outputs: writing one removes those older than KEEP_OUTPUTS_S, keeps the newer ones.
    from segviz import ui

    old, new = ui.output_file(b"old", ".zip"), ui.output_file(b"new", ".zip")
    os.makedirs(os.path.join(ui.OUTPUTS, "unpacked-old"))  # an unpacked review zip
    for path in (old, os.path.join(ui.OUTPUTS, "unpacked-old")):
        os.utime(path, (time.time() - ui.KEEP_OUTPUTS_S - 10,) * 2)
    ui._last_prune.clear()
    newest = ui.png_file(np.zeros((4, 4, 3), np.uint8))
    assert not os.path.exists(old) and not os.path.exists(os.path.join(ui.OUTPUTS, "unpacked-old"))
    assert os.path.exists(new) and os.path.exists(newest)


def test_models_run_ahead_of_the_overlays_and_stop_when_the_run_is_closed(monkeypatch):
    """The Compare tab colours and sends one overlay while the next model runs, on one thread for every run;
    a model's error reaches the request, and a closed (cancelled) run stops the models after the one running."""
    import threading

    from segviz import inference
    from segviz.ui import compare as ui_compare

    ran, gate, threads = [], threading.Event(), set()

    def fake_stream(image, names, keep_probs=False, input_scale=None):
        threads.add(threading.get_ident())
        for n in names:
            if n == "broken":
                raise ValueError("broken has no weights")
            ran.append(n)
            yield n, n.upper()
            gate.wait(5)  # the next model starts only when the test lets it

    monkeypatch.setattr(ui_compare, "stream_predictions", fake_stream)
    clock = ui_compare.Stopwatch()
    ahead = ui_compare.predictions_ahead(None, ["a", "b", "c"], False, clock)
    assert next(ahead) == ("a", "A")
    ahead.close()  # cancelled while "b" waits to start
    gate.set()
    deadline = time.time() + 5
    while len(ran) < 2 and time.time() < deadline:  # the model that was running finishes
        time.sleep(0.05)
    time.sleep(0.3)  # time enough for "c" to start, were the models not stopped
    assert ran == ["a", "b"] and "models" in clock.seconds  # "c" never ran
    with pytest.raises(ValueError, match="broken has no weights"):
        list(ui_compare.predictions_ahead(None, ["x", "broken"], False, ui_compare.Stopwatch()))
    assert list(ui_compare.predictions_ahead(None, ["d"], False, ui_compare.Stopwatch())) == [("d", "D")]
    # three runs, on the one thread the app's models run on (the warm-up's forwards too)
    assert threads == {inference.model_thread().submit(threading.get_ident).result()} != {threading.get_ident()}


# --------------------------------------------------------------------------- a live server
@pytest.fixture(scope="module")
def server():
    url, proc = start_app(SEGVIZ_MAX_FILE_SIZE="2mb")
    yield url
    proc.terminate()
    proc.wait(20)


@needs_weights
def test_gradio_client_api(server, frame):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    names = [e["api_name"] if isinstance(e, dict) else e for e in client.view_api(return_format="dict")["named_endpoints"]]
    assert {"/compare", "/restyle", "/model_set", "/export_card", "/receptive_field", "/field_depth",
            "/dilation_coverage", "/dilation_taps", "/review"} <= set(names)  # the README lists them
    image, mask = frame
    out = client.predict(handle_file(image), READY, 0.6, handle_file(mask), api_name="/compare")
    gallery, legend = out[0], out[1]
    assert len(gallery) == len(READY) and "Bicyclist" in legend
    assert gallery[0]["caption"].startswith(TITLES[0])
    # choosing a model set sets the CRF sliders to its parameters (iterations, Gaussian sxy / compat, bilateral
    # sxy / srgb / compat): pydensecrf's defaults for VOC, CamVid's preset for CamVid
    from segviz.crf import CRFParams, preset

    for model_set, params in [("voc", CRFParams()), ("camvid", preset("camvid"))]:
        sliders = client.predict(model_set, api_name="/model_set")[2:]
        assert list(sliders) == [params.iterations, params.gaussian_sxy, params.gaussian_compat, params.bilateral_sxy,
                                 params.bilateral_srgb, params.bilateral_compat], model_set
    assert preset("camvid") != CRFParams()


@needs_weights
def test_api_is_stateless_any_set_from_a_fresh_client(server, frame):
    """/compare takes VOC models from a client that never touched the model-set radio, then CamVid ones."""
    from gradio_client import Client, handle_file

    from conftest import CORAL

    if not (CORAL / "deeplabv3_mnv2_pascal_quant.tflite").exists():
        pytest.skip("the Coral model is not in ../shared")
    client = Client(server, verbose=False)
    out = client.predict(handle_file(str(CORAL / "bird_segmentation.bmp")), ["deeplabv3_mnv2.voc"], 0.6, None,
                         api_name="/compare")
    assert len(out[0]) == 1 and "bird" in out[1]
    out = client.predict(handle_file(frame[0]), READY[:2], 0.6, None, api_name="/compare")
    assert len(out[0]) == 2 and "Bicyclist" in out[1]


@contextlib.contextmanager
def _browser_page(url):
    """A 1440x1000 page of Debian's chromium at ``url`` (no network beyond 127.0.0.1), closed afterwards."""
    from playwright.sync_api import sync_playwright

    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-background-networking",
                                          "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.slow  # every model twice in a real browser: the longest test of the default run, so CI's second pass
@needs_weights
def test_browser_upload_run_all_and_read_the_legend(server, camvid_root, tmp_path):
    with _browser_page(server) as page:
        page.wait_for_selector("#run")
        assert "CPU" in page.inner_text("#header") or "CUDA" in page.inner_text("#header")
        # A first run prepares every model (the server's warm-up may still be converting them), each network on
        # the frame's own size ("Network input size": x1, where the CamVid models' own is x2); then a frame no
        # test ran, at each model's own size, so no model's prediction is cached: the time below is what a user
        # waits.
        page.set_input_files("#input-image input[type=file]", str(camvid_root / "val" / "0016E5_08139.png"))
        page.wait_for_selector("#input-image img")
        page.check("#input-scale input[value='1']")
        page.click("#run")
        page.wait_for_function("document.querySelector('#notes').innerText.includes('Time on the server')",
                               timeout=300_000)
        alts = page.eval_on_selector_all("#overlays .thumbnail-item img", "els => els.map(e => e.alt)")
        assert len(alts) == len(READY) and not any(" · x2 · " in a for a in alts), alts
        page.check("#input-scale input[value='own']")
        page.set_input_files("#input-image input[type=file]", str(camvid_root / "val" / "0016E5_08151.png"))
        page.wait_for_selector("#input-image img")
        start = time.time()
        page.click("#run")
        page.wait_for_function("!document.querySelector('#notes').innerText.includes('Time on the server')",
                               timeout=60_000)  # the run has started: the last one's results are cleared
        page.wait_for_function(f"document.querySelectorAll('#overlays .thumbnail-item img').length == {len(READY)}",
                               timeout=300_000)
        seconds = time.time() - start
        # The gallery lazy-loads its images: load them all before reading and photographing the page.
        page.eval_on_selector_all("img", "els => els.forEach(e => { e.loading = 'eager'; })")
        page.wait_for_function("[...document.querySelectorAll('#overlays img, #disagreement img')]"
                               ".every(e => e.complete && e.naturalWidth > 0)", timeout=60_000)
        alts = page.eval_on_selector_all("#overlays .thumbnail-item img", "els => els.map(e => e.alt)")
        assert [a.split(" · ")[:2] for a in alts] == [[t, "x2"] for t in TITLES]
        # each title carries its forward: "FCN-8s · x2 · 120 ms · openvino"
        forwards = sum(float(next(f for f in a.split(" · ") if f.endswith(" ms"))[:-3]) for a in alts) / 1000
        # The overlays stream in model by model; the legend and the figures come with the last step.
        page.wait_for_function("document.querySelectorAll('#legend .segviz-legend-item').length > 0",
                               timeout=120_000)
        to_legend = time.time() - start
        legend = page.eval_on_selector_all("#legend .segviz-legend-item", "els => els.map(e => e.dataset.class)")
        assert legend == list(CAMVID.classes)
        # The server's own account of the request: decode, models, colouring (the overlays), figures.
        stages = dict(re.findall(r"(\w+) (\d+\.\d+) s", page.inner_text("#notes").split("Time on the server:")[1]))
        stages = {k: float(v) for k, v in stages.items()}
        assert list(stages) == ["decode", "models", "colouring", "figures"], stages
        assert stages["models"] >= 0.8 * forwards, (stages, forwards)  # the models ran here, nothing was cached
        assert stages["decode"] + stages["models"] <= seconds  # colouring overlaps the next model's forward
        # What the user sees: the swatch of every predicted class is drawn in its exact palette colour
        # (classes no model predicted are faded, so their swatches blend with the page).
        shown = page.eval_on_selector_all("#legend .segviz-legend-item",
                                          "els => els.filter(e => getComputedStyle(e).opacity === '1')"
                                          ".map(e => e.dataset.class)")
        colours = {name: tuple(c) for name, c in zip(CAMVID.classes, CAMVID.colors)}
        for _ in range(20):  # Gradio dims an output until its event has finished: look again until it has
            swatches = np.asarray(Image.open(io.BytesIO(page.locator("#legend").screenshot())).convert("RGB"))
            seen = {tuple(c) for c in swatches.reshape(-1, 3)}
            if all(colours[n] in seen for n in shown):
                break
            time.sleep(0.5)
        assert len(shown) >= 5 and all(colours[n] in seen for n in shown), [n for n in shown if colours[n] not in seen]
        # Every overlay is in the 1440x1000 window at once, and the gallery does not scroll inside.
        page.evaluate("window.scrollTo(0, 0)")
        bottoms = page.eval_on_selector_all("#overlays .thumbnail-item", "els => els.map(e => e.getBoundingClientRect().bottom)")
        assert len(bottoms) == len(READY) and max(bottoms) <= 1000, bottoms
        assert page.evaluate("(() => { const g = document.querySelector('#overlays .grid-wrap');"
                             " return g.scrollHeight <= g.clientHeight + 1; })()")
        shot = Path(os.environ.get("SEGVIZ_SCREENSHOT", tmp_path / "compare.png"))
        page.screenshot(path=str(shot), full_page=True)
        # A click on the probed overlay (the first) lists each model's class at that pixel: road, low in the middle.
        box = page.locator("#probe img").bounding_box()
        page.locator("#probe img").click(position={"x": box["width"] / 2, "y": box["height"] * 0.95})
        page.wait_for_function(f"document.querySelector('#readout').innerText.includes({TITLES[-1]!r})", timeout=60_000)
        readout = page.inner_text("#readout")
        assert all(t in readout for t in TITLES) and readout.count("Road") >= len(READY) - 1, readout
        # A ground truth uploaded after the run is scored at once, from the cached predictions.
        page.set_input_files("#ground-truth input[type=file]", str(camvid_root / "valannot" / "0016E5_08151.png"))
        page.get_by_role("tab", name="Ground truth").click()
        page.wait_for_function(f"document.querySelectorAll('#errors .thumbnail-item').length == {len(READY)}",
                               timeout=120_000)
        # A run that fails leaves nothing of the last one on screen.
        page.eval_on_selector_all("#architectures input[type=checkbox]:checked", "els => els.forEach(e => e.click())")
        page.click("#run")
        page.wait_for_selector("text=select at least one model", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('#overlays .thumbnail-item img').length == 0 && "
                               "document.querySelectorAll('#legend .segviz-legend-item').length == 0", timeout=60_000)
    full = np.asarray(Image.open(shot).convert("RGB"))
    assert full.shape[1] == 1440 and full.shape[0] >= 1000  # the whole page, not a blank or cropped capture
    print(f"\nclick to last overlay: {seconds:.2f} s for {len(READY)} models, whose forwards took {forwards:.2f} s "
          f"({seconds / forwards:.2f}x): decode {stages['decode']:.2f} s, models {stages['models']:.2f} s, colouring "
          f"{stages['colouring']:.2f} s (while the next models ran), after the last model "
          f"{seconds - stages['decode'] - stages['models']:.2f} s (its overlay's colouring, transfer, rendering); "
          f"then figures {stages['figures']:.2f} s (click to legend {to_legend:.2f} s)")


@pytest.mark.slow
@pytest.mark.browser
@needs_weights
def test_browser_receptive_field_tiles_and_depth_plot(server, camvid_root, tmp_path):
    """Uncropped tiles (the whole 480x360 frame, with its colour bar) and the field-against-depth plot."""
    with _browser_page(server) as page:
        page.get_by_role("tab", name="Receptive field").click()
        page.set_input_files("#rf-image input[type=file]", str(camvid_root / "val" / "0016E5_08151.png"))
        page.wait_for_selector("#rf-image img")
        page.click("#rf-run")
        page.wait_for_function("document.querySelectorAll('#rf-grid .thumbnail-item img').length > 0 && "
                               "document.querySelector('#rf-depth img')", timeout=600_000)
        page.eval_on_selector_all("img", "els => els.forEach(e => { e.loading = 'eager'; })")
        page.wait_for_function("[...document.querySelectorAll('#rf-grid img, #rf-depth img')]"
                               ".every(e => e.complete && e.naturalWidth > 0)", timeout=60_000)
        fits = page.eval_on_selector_all("#rf-grid .thumbnail-item img",
                                         "els => els.map(e => [getComputedStyle(e).objectFit, e.naturalWidth, e.naturalHeight])")
        assert all(fit == "contain" and w > 480 and h == 360 for fit, w, h in fits), fits
        shot = Path(os.environ.get("SEGVIZ_RF_SCREENSHOT", tmp_path / "receptive_field.png"))
        page.screenshot(path=str(shot), full_page=True)


@needs_weights
@pytest.mark.parametrize("endpoint", ["/compare", "/receptive_field", "/dilation_taps"])
def test_bad_uploads_through_the_api_are_one_line_messages_without_paths(server, tmp_path, endpoint):
    """Empty, random, HTML, SVG and 20000x20000 files reach segviz.preprocess, not Gradio's decoder."""
    from gradio_client import Client, handle_file

    from test_preprocess import BAD_UPLOADS, make_bad_upload

    client = Client(server, verbose=False)
    args = {"/compare": lambda f: (f, READY[:1], 0.6, None),
            "/receptive_field": lambda f: (f, READY[:1], "predicted", False),
            "/dilation_taps": lambda f: (f, "deeplabv3_mobilenet_edgetpu")}[endpoint]
    for name in sorted(BAD_UPLOADS):
        with pytest.raises(Exception) as e:
            client.predict(*args(handle_file(make_bad_upload(tmp_path, name))), api_name=endpoint)
        message = str(e.value)
        assert "\n" not in message.strip(), (name, message)
        assert "preprocess" not in message and "/tmp" not in message and "gradio" not in message, (name, message)
        expected = "empty" if name == "empty.png" else "pixels" if name == "huge.png" else "not a readable image"
        assert expected in message, (name, message)


@needs_weights
def test_uploads_over_the_size_limit_are_refused_with_a_message(server, tmp_path):
    """The server fixture runs with SEGVIZ_MAX_FILE_SIZE=2mb."""
    from gradio_client import Client, handle_file

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    client = Client(server, verbose=False)
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(big)), READY[:1], 0.6, None, api_name="/compare")
    assert "exceeds the maximum file size of 2097152 bytes" in str(e.value)  # refused by the client, from the config
    # and by the server itself, for a client that does not check
    import httpx

    r = httpx.post(server + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    assert r.status_code == 413 and "/tmp" not in r.text, (r.status_code, r.text)


# --------------------------------------------------------------------------- weights that do not load
def _bad_weights(tmp_path, kind):
    good = ROOT / "weights" / read_manifest()["fcn8s_mobilenet_edgetpu.camvid"]["file"]
    data = good.read_bytes()
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header":
        n = int.from_bytes(data[:8], "little")
        path.write_bytes(data[:8] + b"X" * n + data[8 + n:])  # the JSON header garbled
    elif kind == "png":
        path = tmp_path / "picture.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    elif kind == "other_model":
        path.write_bytes((ROOT / "weights" / read_manifest()["deeplabv1_mobilenet_edgetpu.camvid"]["file"]).read_bytes())
    return str(path)


@needs_weights
@pytest.mark.parametrize("kind, message", [("truncated", "not a readable safetensors file"),
                                           ("header", "not a readable safetensors file"),
                                           ("png", "not a readable safetensors file"),
                                           ("other_model", "does not fit FCN")])
def test_bad_weights_files_are_one_line_errors(tmp_path, kind, message):
    from segviz.inference import load_model
    from segviz.weights import WeightsError

    with pytest.raises(WeightsError, match=message) as e:
        load_model("fcn8s_mobilenet_edgetpu", weights=_bad_weights(tmp_path, kind), device="cpu")
    assert "\n" not in str(e.value)


@needs_weights
def test_cli_weights_option_with_a_png_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "segviz", "eval", "--model", "fcn8s_mobilenet_edgetpu",
                          "--weights", _bad_weights(tmp_path, "png")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "is not a readable safetensors file" in out.stderr and "Traceback" not in out.stderr


@needs_weights
def test_a_tampered_bundled_file_costs_only_that_model(frame, tmp_path, monkeypatch):
    """The other models run; the notes name the tampered one. Its sha256 check is the real one, on a copy of
    the weights folder whose first file has one byte changed."""
    import shutil

    import segviz.ui.compare as ui_compare

    if len(READY) < 2:
        pytest.skip("needs two trained models")
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(ROOT / "weights" / "manifest.json", folder / "manifest.json")
    manifest = read_manifest()
    for name in READY[:2]:
        (folder / manifest[name]["file"]).symlink_to(ROOT / "weights" / manifest[name]["file"])
    tampered = folder / manifest[READY[0]]["file"]
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0xFF
    tampered.unlink()
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(ui_compare, "load", lambda name: records.get(name, folder / "manifest.json").load())
    r = run_compare(frame[0], READY[:2], 0.6)
    assert [t.split(" · ")[0] for _, t in r["overlays"]] == TITLES[1:2]
    note = next(n for n in r["notes"] if n.startswith(f"{READY[0]} not run"))
    assert "corrupt or was modified" in note and str(tmp_path) not in note
    with pytest.raises(Exception, match="corrupt or was modified"):
        run_compare(frame[0], READY[:1], 0.6)  # nothing left to run: the error itself


@needs_weights
def test_receptive_field_without_a_click_uses_the_centre_of_any_image(tmp_path, monkeypatch):
    import segviz.receptive_field
    from segviz.receptive_field import erf_grid

    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(small)
    tiles, rows, pixel = erf_grid(str(small), None, READY[:1])
    assert pixel == (32, 48) and len(tiles) == 1
    assert tiles[0][0].shape[0] == 64 and tiles[0][0].shape[1] > 96  # the tile and its colour bar
    import re

    assert re.fullmatch(r"\d+ x \d+ px \(\d+\.\dx the image's height, \d+\.\dx its width\)", rows[0][2]), rows[0][2]
    # The same grid again is made from the cache: no gradient is taken.
    monkeypatch.setattr(segviz.receptive_field, "effective_field", lambda *a, **k: pytest.fail("recomputed"))
    again, rows_again, _ = erf_grid(str(small), None, READY[:1])
    assert np.array_equal(again[0][0], tiles[0][0]) and rows_again == rows
    with pytest.raises(ValueError, match="outside the 96x64 image"):
        erf_grid(str(small), (180, 240), READY[:1])


@needs_weights
def test_api_refuses_fractional_crf_iterations(server, frame):
    from gradio_client import Client, handle_file

    from segviz import crf

    if not crf.AVAILABLE:
        pytest.skip("pydensecrf is not installed")
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="CRF iterations must be a whole number, got 5.7"):
        client.predict(handle_file(frame[0]), READY[:1], 0.6, None, True, 5.7, 3, 3, 80, 13, 10, 0.5,
                       api_name="/compare")


@needs_weights
def test_dilation_taps_through_the_api_are_new_pngs_at_the_frames_size(server, frame):
    """The Dilation tab hands over its picture as a new file per call, like the other tabs."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    first, legend = client.predict(handle_file(frame[0]), "deeplabv3_mobilenet_edgetpu", api_name="/dilation_taps")
    second, _ = client.predict(handle_file(frame[0]), "deeplabv3_mobilenet_edgetpu", api_name="/dilation_taps")
    assert "ASPP rate 12 (every 192 px)" in legend and "image pooling (bins)" in legend
    assert Path(first).name != Path(second).name
    for path in (first, second):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (480, 360)


def test_a_malformed_setting_stops_the_app_with_one_line(monkeypatch):
    import subprocess
    import sys

    from segviz import env_number

    out = subprocess.run([sys.executable, "app.py", "--no-warm-up"], cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "SEGVIZ_CACHE_MB": "1G"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip() == \
        "error: SEGVIZ_CACHE_MB='1G': must be a whole number of at least 0 (default 512)", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "app.py", "--no-warm-up"], cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "SEGVIZ_MAX_FILE_SIZE": "20m"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip() == \
        "error: SEGVIZ_MAX_FILE_SIZE='20m': must be a file size such as 20mb, 500kb or 1gb", out.stderr[-2000:]
    monkeypatch.delenv("SEGVIZ_TEST_NUMBER", raising=False)
    assert env_number("SEGVIZ_TEST_NUMBER", 7) == 7
    for raw, whole, expected in (("12", True, 12), ("2e6", False, 2e6), (" 3 ", True, 3)):
        monkeypatch.setenv("SEGVIZ_TEST_NUMBER", raw)
        assert env_number("SEGVIZ_TEST_NUMBER", 1, whole=whole) == expected
    for raw in ("1.5", "-1", "x"):
        monkeypatch.setenv("SEGVIZ_TEST_NUMBER", raw)
        with pytest.raises(ValueError, match="SEGVIZ_TEST_NUMBER"):
            env_number("SEGVIZ_TEST_NUMBER", 1)

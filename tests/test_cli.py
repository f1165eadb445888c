"""The command line: JSON outputs, one-line errors, the bench and report commands."""
import json

import pytest

from conftest import ROOT
from segviz import registry
from segviz.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow  # builds every configuration, the 134M-parameter VGG ones included
def test_models_json_has_the_promised_fields(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == [s.name for s in registry.list_models()]
    for key in ("name", "title", "arxiv", "year", "voc12_miou", "backbone", "output_stride", "params"):
        assert all(key in r for r in rows), key
    fcn8s = next(r for r in rows if r["name"] == "fcn8s_vgg16")
    assert fcn8s["voc12_miou"] == 62.2 and abs(fcn8s["params"] - 134e6) / 134e6 < 0.02


def test_unknown_model_is_a_one_line_error(capsys):
    code, _, err = run(capsys, "rf", "--model", "fcn9s")
    assert code == 2 and err.count("\n") == 1 and "fcn8s_mobilenet_edgetpu" in err


def test_rf_command_reports_the_context_module(capsys):
    code, out, _ = run(capsys, "rf", "--model", "dilation8_mobilenet_edgetpu", "--size", "64x64", "--json")
    result = json.loads(out)
    sizes = [l["size"][0] for l in result["layers"] if l["layer"].startswith("context.") and l["type"] == "Conv2d"]
    # 3x3 convs at rates 1, 1, 2, 4, 8, 16, 1 then a 1x1, on a stride-8 map: each adds 2 * rate * 8 px
    assert len(sizes) == 8
    assert [b - a for a, b in zip(sizes, sizes[1:])] == [16, 32, 64, 128, 256, 16, 0]
    assert result["output"]["whole_image"] is False
    # Output stride 8, upsampled by 8 without corner alignment: pixel i reads (i + 0.5) / 8 - 0.5, whose
    # unit sits at input pixel i - 3.5; the stride-32 FCN's transposed conv (k 64, s 32, p 16) at i - 15.5.
    assert result["output"]["start"] == [-3.5, -3.5]
    code, out, _ = run(capsys, "rf", "--model", "fcn32s_mobilenet_edgetpu", "--size", "64x64")
    assert "centred on input pixel (y - 15.5, x - 15.5)" in out


def test_bench_json_has_backends_choice_and_ratios(capsys):
    code, out, _ = run(capsys, "bench", "--models", "fcn8s_mobilenet_edgetpu", "--size", "64x96", "--runs", "1",
                       "--warmup", "0", "--backend", "torch", "torch-channels-last", "--json")
    result = json.loads(out)
    row = result["models"][0]
    ref = result["reference"]["ms"]
    assert code == 0 and ref > 0 and set(row["backends"]) == {"torch", "torch-channels-last"}
    timed = {b: m["ms"] for b, m in row["backends"].items()}
    assert row["backend"] == min(timed, key=timed.get) and row["ms"] == timed[row["backend"]]
    assert row["ratio"] == pytest.approx(row["ms"] / ref, abs=0.001)
    assert row["trained"] and result["compact_sum_ms"] == row["ms"]  # the sum counts trained compact models
    fastest = min(ref, result["reference_channels_last"]["ms"])
    assert result["compact_sum_ratio_fastest_reference"] == pytest.approx(row["ms"] / fastest, abs=0.001)
    assert result["compact_sum_ratio_adjacent_reference"] == pytest.approx(row["ms"] / row["adjacent_reference_ms"],
                                                                            abs=0.002)
    # gmacs (3 decimals), ms and gmacs_per_s (1 decimal) are rounded: the rate lies within what their rounding allows
    low = (row["gmacs"] - 0.0005) / (row["ms"] + 0.05) * 1000 - 0.05
    assert low <= row["gmacs_per_s"] <= (row["gmacs"] + 0.0005) / (row["ms"] - 0.05) * 1000 + 0.05
    assert result["compact_sum_gmacs_ratio"] == pytest.approx(row["gmacs"] / result["reference"]["gmacs"], abs=0.001)


def test_bench_with_no_backend_that_runs_a_model_says_so_in_one_line(capsys, monkeypatch):
    from segviz import backends

    monkeypatch.setattr(backends, "missing", lambda b: "openvino is not installed" if b == "openvino" else None)
    code, _, err = run(capsys, "bench", "--models", "fcn8s_mobilenet_edgetpu", "--size", "64x96", "--runs", "1",
                       "--warmup", "0", "--backend", "openvino")
    assert code == 2 and err.count("\n") == 1 and "none of openvino ran it here (openvino: openvino is not installed)" in err


def test_bench_review_times_the_first_pass_against_the_forwards(capsys, camvid_root):
    code, out, _ = run(capsys, "bench", "--review", "--limit", "1", "--runs", "1", "--warmup", "0", "--size", "64x96",
                       "--data", str(camvid_root), "--json")
    r = json.loads(out)
    assert code == 0 and r["frames"] == 1 and r["models"] == len(r["runners"]) >= 10
    f = r["forwards_per_frame_s"]
    expected = r["first_pass_s"] / (r["frames"] * (f["before"] + f["after"]) / 2 + r["decoding_s"])
    assert r["ratio"] == pytest.approx(expected, rel=0.02)  # rounded fields


def test_bench_first_runs_times_the_first_comparisons_against_the_last(capsys, monkeypatch):
    from segviz import bench, inference

    code, out, _ = run(capsys, "bench", "--first-runs", "--no-warm-up", "--runs", "2", "--size", "64x96", "--json")
    r = json.loads(out)
    assert code == 0 and not r["warm_up"] and r["models"] == len(r["runners"]) >= 10 and len(r["forwards_s"]) == 2
    assert set(r["input_scales"].values()) == {2.0}  # the bundled CamVid models, at their own scale
    assert r["vs_last"][-1] == 1.0 and r["vs_last"][0] == pytest.approx(r["forwards_s"][0] / r["forwards_s"][1], rel=0.02)
    warmed = []
    monkeypatch.setattr(inference, "warm_up", lambda dataset, log: warmed.append(dataset))
    r = bench.bench_first_runs(frames=1, size=(64, 96), names=["fcn8s_mobilenet_edgetpu.camvid"])
    assert warmed == ["camvid"] and r["warm_up"] and r["models"] == 1


@pytest.mark.slow
def test_bench_erf_times_the_grid_against_plain_autograd(capsys, tmp_path):
    import cv2
    import numpy as np

    image = tmp_path / "small.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    code, out, _ = run(capsys, "bench", "--erf", "--image", str(image), "--runs", "1", "--json")
    r = json.loads(out)
    assert code == 0 and len(r["models"]) >= 10 and r["pixel"] == [24, 32]
    assert r["warm_vs_plain_autograd"] == pytest.approx(r["warm_median_s"] / r["plain_autograd_s"], rel=0.1)  # rounded


def test_bench_counts_multiply_adds_as_torchvision_metadata_does():
    """torchvision lists each model's cost as "GFLOPS" in its weights' metadata: multiply-adds, in fact."""
    import torch
    import torchvision

    from segviz.bench import gmacs, reference_model

    resnet = torchvision.models.resnet50(weights=None).eval()
    assert gmacs(resnet, torch.zeros(1, 3, 224, 224)) == pytest.approx(
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"], abs=0.001)
    meta = torchvision.models.segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["_ops"]
    aux = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                             aux_loss=True).eval()
    assert gmacs(aux, torch.zeros(1, 3, 520, 520)) == pytest.approx(meta, abs=0.001)  # its metadata counts the aux head
    assert gmacs(reference_model().eval(), torch.zeros(1, 3, 520, 520)) < meta  # bench's reference runs without it


def test_report_prints_the_bundled_models(capsys):
    from segviz.weights import read_manifest

    code, out, _ = run(capsys, "report")
    assert code == 0
    some_val = any(not e.get("val_trained_on") for e in read_manifest().values())
    for name, entry in read_manifest().items():
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        frames = {"train": "train", "trainval": "train + val", "noseq:0006R0": "train + val without 0006R0"}
        assert row.startswith(f"| {name} | {frames[entry['train_split']]} | x{entry.get('input_scale', 1):g} |")
        if some_val:
            val = "trained on val" if entry.get("val_trained_on") else f"{entry['val_miou']:.2f}"
            assert f"| {val} | {entry['num_params'] / 1e6:.2f}M |" in row
        else:  # every model trained on val's frames: no val column
            assert "| val mIoU |" not in out and f"| {entry['num_params'] / 1e6:.2f}M |" in row
        seconds = entry["recipe"]["epochs"] * entry["epoch_seconds_median"] if "epoch_seconds_median" in entry else \
            entry["train_seconds"]
        minutes = seconds / 60
        assert f"| {entry['recipe']['epochs']} | {minutes:.0f} min |" in row
        if "heldout" in entry:
            held = entry["heldout"]
            rest = [v for k, v in held["per_class_iou"].items() if k != "Bicyclist"]
            ten = sum(rest) / len(rest)  # summed in order, as printed (numpy's pairwise sum can round the other way)
            accuracy = " | ".join(f"{held[k]:.1f}" if k in held else "-" for k in ("pixel_acc", "class_acc"))
            assert f"| {held['miou']:.2f} ({held['split'][4:]}) | {ten:.2f} | {accuracy} |" in row
    bench = json.loads((ROOT / "assets" / "bench.json").read_text())
    for r in bench["models"]:  # every backend's time and the chosen one
        row = next(line for line in out.splitlines() if line.startswith(f"| {r['name']} |"))
        assert row.endswith(f"| {r['backend']} | {r['ratio']:.3f} | {r['gmacs']:.2f} | {r['gmacs_per_s']:.1f} |")
        assert f"| {r['ms']:.1f} |" in row
    held = {e["model"]: e["heldout"] for e in read_manifest().values() if "heldout" in e}
    assert all(h["input_scale"] == 2 for h in held.values())  # the bundled models run on the frames enlarged 2x

    def at_one(h):  # the held-out run's mIoU at input scale 1, as validated during training
        return h["miou_at_input_scale"]["1"]

    rows = json.loads((ROOT / "assets" / "crf.json").read_text())
    at_preset = {r["model"]: r for r in json.loads((ROOT / "assets" / "crf_preset.json").read_text())}
    assert sorted(r["model"] for r in rows) == sorted(held) == sorted(at_preset)
    assert "| model | seq:0006R0 mIoU (input x2) |" in out
    for r in rows:  # the CRF study measured each architecture's held-out run on the drive it never saw, as bundled
        h, p = held[r["model"]], at_preset[r["model"]]
        assert (r["split"], r["weights_sha256"], r["images"]) == (h["split"], h["weights_sha256"], 101), r["model"]
        assert r["input_scale"] == p["input_scale"] == h["input_scale"], r["model"]
        assert r["miou"] == pytest.approx(h["miou"], abs=0.01), r["model"]
        # the preset's run: the same weights and frames, so the same scores without the CRF and with its defaults
        assert {k: p[k] for k in ("split", "weights_sha256", "miou", "miou_crf_default", "second_half_miou")} == {
            k: r[k] for k in ("split", "weights_sha256", "miou", "miou_crf_default", "second_half_miou")}, r["model"]
        row = next(line for line in out.splitlines() if line.startswith(f"| {r['model']} | {r['miou']:.2f} |"))
        assert row.endswith(f"| {r['second_half_miou_crf_tuned']:.2f} | {r['tuned_params']['bilateral_sxy']:g}, "
                            f"{r['tuned_params']['bilateral_srgb']:g}, {r['tuned_params']['bilateral_compat']:g} | "
                            f"{p['second_half_miou_crf_tuned']:.2f} |")
    tta = json.loads((ROOT / "assets" / "tta.json").read_text())
    assert sorted(r["model"] for r in tta) == sorted(held)
    for r in tta:  # multi-scale + flip inference (`eval --tta`) of the same held-out runs on the same frames
        h = held[r["model"]]
        assert (r["split"], r["weights_sha256"]) == (h["split"], h["weights_sha256"]), r["model"]
        # run at input scale 1, before the bundled models ran at 2
        assert r["miou"] == pytest.approx(at_one(h), abs=0.01) and r["tta"] == {"scales": [0.75, 1.0, 1.25], "flip": True}
        assert f"| {r['model']} | {r['miou']:.2f} | {r['miou_tta']:.2f} | {r['miou_tta'] - r['miou']:+.2f} |" in out
    trial = json.loads((ROOT / "assets" / "trial_heldout.json").read_text())
    by_arch = {registry.get_spec(m).arch: h for m, h in held.items()}
    assert {registry.get_spec(t["model"]).backbone for t in trial} <= set(registry.TRIAL_BACKBONES)
    for t in trial:  # each trial run against the bundled architecture's held-out run, on the same frames
        spec = registry.get_spec(t["model"])
        h = by_arch[spec.arch]
        at = h["miou_at_input_scale"]  # the bundled weights run on the frames at their own size and enlarged 1.5 times
        assert t["split"] == h["split"] and t["recipe"]["val_split"] == t["split"]
        row = next(line for line in out.splitlines() if line.startswith(f"| {spec.arch} | {h['miou']:.2f} | "))
        assert row.startswith(f"| {spec.arch} | {h['miou']:.2f} | {at['1']:.2f} | {at['1.5']:.2f} | "
                              f"{t['miou']:.2f} ({t['epoch']}) | {t['miou'] - at['1']:+.2f} | ")
        assert row.endswith(f"| {spec.backbone} |")


def test_bad_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--size", "big"])
    assert "360x480" in capsys.readouterr().err


def test_predict_writes_label_maps_at_the_image_size_for_both_sets(capsys, tmp_path, camvid_root):
    import numpy as np
    from PIL import Image

    from conftest import CORAL
    from segviz.evaluate import labels_of, predict_logits
    from segviz.inference import load_model

    frame = camvid_root / "val" / "0016E5_07959.png"
    big = tmp_path / "big.png"  # larger than the 1024 px working size: labels come back at 1100x1300
    Image.open(frame).resize((1300, 1100)).save(big)
    code, out, _ = run(capsys, "predict", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--out", str(tmp_path / "o"),
                       "--quiet", str(frame), str(big))
    assert code == 0 and "wrote 4 files" in out
    labels = np.asarray(Image.open(tmp_path / "o" / "fcn8s_mobilenet_edgetpu.camvid" / "0016E5_07959.png"))
    assert labels.shape == (360, 480) and labels.max() < 11
    # The model's own arg-max at the record's input scale, computed without the comparison pipeline (whose cache
    # predict filled).
    rgb = np.asarray(Image.open(frame).convert("RGB"))
    same = labels_of(predict_logits(load_model("fcn8s_mobilenet_edgetpu.camvid"), rgb, scale=2))
    assert np.array_equal(labels, same)
    assert np.asarray(Image.open(tmp_path / "o" / "fcn8s_mobilenet_edgetpu.camvid" / "big.png")).shape == (1100, 1300)
    overlay = Image.open(tmp_path / "o" / "fcn8s_mobilenet_edgetpu.camvid" / "0016E5_07959_overlay.png")
    assert overlay.size == (480, 360) and overlay.mode == "RGB"
    if (CORAL / "deeplabv3_mnv2_pascal_quant.tflite").exists():
        code, out, _ = run(capsys, "predict", "--model", "deeplabv3_mnv2.voc", "--out", str(tmp_path / "v"), "--quiet",
                           str(CORAL / "bird_segmentation.bmp"))
        bird = np.asarray(Image.open(tmp_path / "v" / "deeplabv3_mnv2.voc" / "bird_segmentation.png"))
        assert code == 0 and (bird == 3).mean() > 0.05  # VOC id 3 is "bird"


def test_predict_runs_every_model_at_the_input_scale_asked_for(capsys, tmp_path, camvid_root):
    import numpy as np
    from PIL import Image

    from segviz.evaluate import labels_of, predict_logits
    from segviz.inference import load_model

    frame = camvid_root / "val" / "0016E5_07959.png"
    code, out, _ = run(capsys, "predict", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--out", str(tmp_path / "o"),
                       "--quiet", "--input-scale", "1", str(frame))
    assert code == 0 and "wrote 2 files" in out
    labels = np.asarray(Image.open(tmp_path / "o" / "fcn8s_mobilenet_edgetpu.camvid" / "0016E5_07959.png"))
    rgb = np.asarray(Image.open(frame).convert("RGB"))
    model = load_model("fcn8s_mobilenet_edgetpu.camvid")
    assert np.array_equal(labels, labels_of(predict_logits(model, rgb, scale=1)))
    assert not np.array_equal(labels, labels_of(predict_logits(model, rgb, scale=2)))
    with pytest.raises(SystemExit) as e:
        run(capsys, "predict", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--out", str(tmp_path / "x"),
            "--input-scale", "5", str(frame))
    assert e.value.code == 2 and not (tmp_path / "x").exists()


def test_predict_skips_bad_images_and_refuses_unknown_models(capsys, tmp_path, camvid_root):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, out, err = run(capsys, "predict", "--model", "fcn8s_mobilenet_edgetpu", "--out", str(tmp_path / "o"),
                         "--quiet", str(bad), str(camvid_root / "val" / "0016E5_07959.png"))
    assert code == 1 and "1 image(s) skipped" in out and "bad.png: not a readable image" in err
    assert not list((tmp_path / "o" / "fcn8s_mobilenet_edgetpu.camvid").glob("bad*"))
    code, _, err = run(capsys, "predict", "--model", "fcn9s", "--out", str(tmp_path / "x"), str(bad))
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "x").exists()
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / "0016E5_07959.png"  # the same stem as the frame: its outputs would be overwritten
    twin.write_bytes((camvid_root / "val" / "0016E5_07959.png").read_bytes())
    code, _, err = run(capsys, "predict", "--model", "fcn8s_mobilenet_edgetpu", "--out", str(tmp_path / "y"),
                       str(camvid_root / "val" / "0016E5_07959.png"), str(twin))
    assert code == 2 and err.count("\n") == 1 and "would both be written as 0016E5_07959.png" in err
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_models_json_fields_match_assets(capsys):
    """assets/models.json (read by the Models tab) holds what the tracer computes now."""
    from segviz import PROJECT_ROOT

    saved = {r["name"]: r for r in json.loads((PROJECT_ROOT / "assets" / "models.json").read_text())}
    from segviz.registry import list_models

    assert set(saved) == {s.name for s in list_models()}
    code, out, _ = run(capsys, "models", "--json", "--field", "360x480")
    fresh = {r["name"]: r for r in json.loads(out)}
    for name in fresh:
        assert fresh[name]["params"] == saved[name]["params"], name
        assert fresh[name]["theoretical_field"] == saved[name]["theoretical_field"], name


@pytest.mark.parametrize("argv, message", [
    (["weights", "download"], "weights download needs a model: deeplabv3_mnv2.voc"),
    (["weights", "bundle"], "weights bundle needs --model NAME"),
    (["weights", "trial"], "weights trial needs --heldout-run RUN"),
])
def test_weights_actions_without_a_model_say_so_in_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_damaged_camvid_frame_is_named_in_one_line(capsys, camvid_root, tmp_path):
    pair = (camvid_root / "val.txt").read_text().split("\n")[0].split()
    for rel in pair:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((camvid_root / rel).read_bytes())
    (tmp_path / "val.txt").write_text(" ".join(pair) + "\n")
    image = tmp_path / pair[0]
    image.write_bytes(image.read_bytes()[:5000])  # cut short
    code, _, err = run(capsys, "eval", "--model", "fcn8s_mobilenet_edgetpu", "--data", str(tmp_path), "--split", "val")
    assert code == 2 and err.count("\n") == 1 and f"{image}: not a readable image" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "fcn8s_mobilenet_edgetpu", "--eval-every", "0"], "must be at least 1"),
    (["train", "--model", "fcn8s_mobilenet_edgetpu", "--lr", "abc"], "expected a number"),
    (["train", "--model", "fcn8s_mobilenet_edgetpu", "--photometric", "1.5"], "must be in [0, 1]"),
    (["bench", "--runs", "0"], "must be at least 1"),
    (["rf", "--model", "fcn8s_mobilenet_edgetpu", "--classes", "-2"], "must be at least 1"),
    (["loadtest", "--url", "http://127.0.0.1:9/", "--clients", "0"], "must be at least 1"),
])
def test_every_number_is_range_checked_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_eval_tta_scores_the_averaged_predictions(capsys, camvid_root):
    from segviz.data.camvid import CamVid
    from segviz.evaluate import labels_of, predict_probs_tta
    from segviz.inference import load_model
    from segviz.metrics import confusion_matrix, scores

    code, out, _ = run(capsys, "eval", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--data", str(camvid_root),
                       "--split", "seq:0006R0", "--limit", "1", "--tta", "--json")
    result = json.loads(out)  # 0.75, 1 and 1.25 times the record's input scale, 2
    assert code == 0 and result["tta"] == {"scales": [1.5, 2.0, 2.5], "flip": True}
    image, target = CamVid(camvid_root, "seq:0006R0", limit=1)[0]
    probs = predict_probs_tta(load_model("fcn8s_mobilenet_edgetpu.camvid"), image, scales=(1.5, 2.0, 2.5))
    want = scores(confusion_matrix(labels_of(probs), target, 11), CamVid(camvid_root, "val").labels.classes)
    assert result["miou"] == want["miou"] and result["per_class_iou"] == want["per_class_iou"]


def test_eval_input_scale_runs_the_model_on_the_resized_frame_and_scores_at_its_size(capsys, camvid_root):
    import torch.nn.functional as F

    from segviz.data.camvid import CamVid
    from segviz.evaluate import labels_of, logits_of, to_tensor
    from segviz.inference import load_model
    from segviz.metrics import confusion_matrix, scores

    code, out, _ = run(capsys, "eval", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--data", str(camvid_root),
                       "--split", "seq:0006R0", "--limit", "1", "--input-scale", "1.5", "--json")
    result = json.loads(out)
    assert code == 0 and result["input_scale"] == 1.5
    image, target = CamVid(camvid_root, "seq:0006R0", limit=1)[0]
    model = load_model("fcn8s_mobilenet_edgetpu.camvid")
    x = F.interpolate(model.normalize(to_tensor(image)), size=(540, 720), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits_of(model, x), size=image.shape[:2], mode="bilinear", align_corners=False)
    want = scores(confusion_matrix(labels_of(logits), target, 11), CamVid(camvid_root, "val").labels.classes)
    assert result["miou"] == want["miou"] and result["per_class_iou"] == want["per_class_iou"]
    plain = json.loads(run(capsys, "eval", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--data", str(camvid_root),
                           "--split", "seq:0006R0", "--limit", "1", "--input-scale", "1", "--json")[1])
    assert plain["miou"] != result["miou"] and "input_scale" not in plain


def test_eval_runs_a_record_at_its_input_scale_unless_told_otherwise(capsys, camvid_root):
    """The bundled CamVid records run on the frame enlarged 2x (the manifest's input_scale); eval does the same by
    default, --input-scale overrides it, and a --weights file (not the record's) runs at 1."""
    from segviz import records
    from segviz.weights import WEIGHTS_DIR

    assert records.get("fcn8s_mobilenet_edgetpu.camvid").input_scale == 2
    args = ("eval", "--model", "fcn8s_mobilenet_edgetpu.camvid", "--data", str(camvid_root), "--limit", "1", "--json")
    default = json.loads(run(capsys, *args)[1])
    assert default["input_scale"] == 2
    assert json.loads(run(capsys, *args, "--input-scale", "2")[1])["miou"] == default["miou"]
    weights = WEIGHTS_DIR / records.get("fcn8s_mobilenet_edgetpu.camvid").file  # the same file, as any other file
    plain = json.loads(run(capsys, "eval", "--model", "fcn8s_mobilenet_edgetpu", "--weights", str(weights),
                           "--data", str(camvid_root), "--limit", "1", "--json")[1])
    assert "input_scale" not in plain and plain["miou"] != default["miou"]


def test_eval_says_how_many_frames_the_bundled_model_trained_on(capsys, camvid_root):
    from segviz import records
    from segviz.data.camvid import CamVid

    entry = records.get("fcn32s_mobilenet_edgetpu").metrics
    trained = {image.name for image, _ in CamVid(camvid_root, entry["train_split"]).pairs}
    val = [image.name for image, _ in CamVid(camvid_root, "val", limit=2).pairs]
    code, out, _ = run(capsys, "eval", "--model", "fcn32s_mobilenet_edgetpu", "--data", str(camvid_root), "--limit", "2")
    count = sum(name in trained for name in val)
    assert code == 0 and (f"note: the model trained on {count} of these 2 frames" in out) == (count > 0)
    # other weights: not known, so not said
    code, out, _ = run(capsys, "eval", "--model", "fcn32s_mobilenet_edgetpu", "--data", str(camvid_root), "--limit", "1",
                       "--json", "--weights", str(ROOT / "weights" / records.get("fcn32s_mobilenet_edgetpu").file))
    assert code == 0 and json.loads(out)["trained_on"] is None

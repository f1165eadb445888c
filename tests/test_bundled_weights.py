"""The bundled CamVid models: verified loading and their measured quality on real val images."""
import json
import shutil

import pytest

from segviz.inference import load_model
from segviz.weights import MANIFEST, WeightsError, read_manifest, sha256_file

BUNDLED = sorted(read_manifest())


def test_every_compact_architecture_has_bundled_weights():
    from segviz.registry import list_models

    trained = {e["model"] for e in read_manifest().values()}
    compact = {s.name for s in list_models(compact=True)}
    assert not compact - trained, f"compact architectures without bundled weights: {sorted(compact - trained)}"
    assert all(name == f"{e['model']}.{e['dataset']}" for name, e in read_manifest().items())


@pytest.mark.parametrize("name", BUNDLED)
def test_manifest_matches_files(name):
    entry = read_manifest()[name]
    path = MANIFEST.parent / entry["file"]
    assert sha256_file(path) == entry["sha256"]
    assert entry["val_miou"] >= 35, "a bundled model must have been trained well past chance (11 classes)"
    # the names listing copies from the registry (records are listed without importing the model modules)
    from segviz.registry import SPEC_FIELDS, get_spec, spec_fields

    assert {k: entry[k] for k in SPEC_FIELDS} == spec_fields(get_spec(entry["model"]))


# The dilated output-stride-8 models take about 17 s each on 2 cores: they run with the slow tests (CI runs both).
DILATED = {"dilation8", "deeplabv1", "deeplabv2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if read_manifest()[n]["arch"] in DILATED
                                  else n for n in BUNDLED])
def test_bundled_model_keeps_its_measured_quality(name, camvid_root):
    from segviz.bundle import val_subset
    from segviz.evaluate import evaluate

    entry = read_manifest()[name]
    subset = val_subset(camvid_root)
    assert [p[0].name for p in subset.pairs] == entry["subset"]["images"]
    # at the record's input scale, as the app runs it and as the entry's scores were measured
    result = evaluate(load_model(name, device="cpu"), subset, progress=False, input_scale=entry.get("input_scale", 1))
    assert abs(result["miou"] - entry["subset"]["miou"]) <= 1.0, (result["miou"], entry["subset"]["miou"])


@pytest.fixture
def private_manifest(tmp_path):
    if not BUNDLED:
        pytest.skip("no bundled weights yet")
    name = BUNDLED[0]
    entry = read_manifest()[name]
    shutil.copy(MANIFEST.parent / entry["file"], tmp_path / entry["file"])
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {name: entry}}))
    return name, tmp_path / "manifest.json", tmp_path / entry["file"]


def test_tampered_weights_are_refused_in_one_line(private_manifest):
    name, manifest, path = private_manifest
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        load_model(name, manifest=str(manifest))
    assert "modified" in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_weights_say_what_to_run(private_manifest):
    name, manifest, path = private_manifest
    path.unlink()
    with pytest.raises(WeightsError, match="missing.*git checkout"):
        load_model(name, manifest=str(manifest))


def test_untrained_model_is_named(private_manifest):
    _, manifest, _ = private_manifest
    with pytest.raises(KeyError, match="no trained model 'segnet_vgg16'"):
        load_model("segnet_vgg16", manifest=str(manifest))


def test_invalid_manifest_is_named(private_manifest):
    name, manifest, _ = private_manifest
    manifest.write_text("{not json")
    with pytest.raises(WeightsError, match="manifest.json is not a valid weights manifest") as e:
        load_model(name, manifest=str(manifest))
    assert "\n" not in str(e.value)


def test_a_flipped_data_byte_in_a_user_file_is_caught(tmp_path, capsys):
    from safetensors.torch import save_file

    from segviz.cli import main
    from segviz.registry import build
    from segviz.weights import save_safetensors

    model = build("fcn32s_mobilenet_edgetpu", num_classes=11)
    path = tmp_path / "mine.safetensors"
    save_safetensors(model, path, {"num_classes": 11})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # a byte inside the last tensor's data, not the header
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="was modified after it was saved"):
        load_model("fcn32s_mobilenet_edgetpu", weights=str(path), device="cpu")
    # A file written without segviz's checksum loads, and says that it was not checked.
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain), metadata={"num_classes": "11"})
    with pytest.warns(UserWarning, match="records no checksum"):
        load_model("fcn32s_mobilenet_edgetpu", weights=str(plain), device="cpu")
    assert main(["eval", "--model", "fcn32s_mobilenet_edgetpu", "--weights", str(path), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was modified" in err


@pytest.mark.parametrize("name", [n for n, e in read_manifest().items() if e["dataset"] == "camvid"])
def test_every_camvid_model_records_a_held_out_run_of_its_own_recipe(name):
    """The held-out column describes the bundled weights' recipe: a run of it, splits, seed and validation
    frequency aside, that never trained on the sequence it was scored on."""
    from segviz.bundle import recipe_differences

    entry = read_manifest()[name]
    held = entry["heldout"]
    sequence = held["split"].removeprefix("seq:")
    assert held["recipe"]["train_split"] == f"noseq:{sequence}" and held["recipe"]["val_split"] == held["split"]
    assert held["recipe"]["model"] == entry["model"]
    assert recipe_differences(entry["recipe"], held["recipe"]) == []
    assert held["last_epoch"] == entry["recipe"]["epochs"] and held["epoch"] <= held["last_epoch"]


def test_two_threads_loading_one_model_get_one_copy(private_manifest):
    """The app's warm-up and a request may ask for the same model at once: one load, one module kept."""
    import threading

    name, manifest, _ = private_manifest
    got = []
    threads = [threading.Thread(target=lambda: got.append(load_model(name, manifest=str(manifest)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and got[0] is got[1] is got[2]

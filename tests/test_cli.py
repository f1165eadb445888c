"""The command line: JSON outputs, one-line errors, the bench and report commands."""
import json

import pytest

from segviz import registry
from segviz.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


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
    assert code == 2 and err.count("\n") == 1 and "fcn8s_efficientnet_lite0" in err


def test_rf_command_reports_the_context_module(capsys):
    code, out, _ = run(capsys, "rf", "--model", "dilation8_efficientnet_lite0", "--size", "64x64", "--json")
    result = json.loads(out)
    sizes = [l["size"][0] for l in result["layers"] if l["layer"].startswith("context.") and l["type"] == "Conv2d"]
    # 3x3 convs at rates 1, 1, 2, 4, 8, 16, 1 then a 1x1, on a stride-8 map: each adds 2 * rate * 8 px
    assert len(sizes) == 8
    assert [b - a for a, b in zip(sizes, sizes[1:])] == [16, 32, 64, 128, 256, 16, 0]
    assert result["output"]["whole_image"] is False


def test_bench_json_has_ratios_against_the_reference(capsys):
    code, out, _ = run(capsys, "bench", "--models", "fcn8s_efficientnet_lite0", "--size", "64x96", "--runs", "1",
                       "--warmup", "0", "--json")
    result = json.loads(out)
    row = result["models"][0]
    assert code == 0 and result["reference"]["ms"] > 0 and row["ratio"] == pytest.approx(
        row["ms"] / result["reference"]["ms"], rel=0.02)
    assert result["compact_sum_ms"] == row["ms"]


def test_report_prints_the_bundled_models(capsys):
    from segviz.weights import read_manifest

    code, out, _ = run(capsys, "report")
    assert code == 0
    for name, entry in read_manifest().items():
        assert f"| {name} | {entry['val_miou']:.2f} |" in out


def test_bad_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--size", "big"])
    assert "360x480" in capsys.readouterr().err

"""Receptive fields traced through real modules agree with published numbers."""
import pytest
import torchvision
from torch import nn

from segviz.receptive_field import describe, final_field, trace


def test_vgg16_matches_the_published_table():
    # Araujo et al., "Computing Receptive Fields of CNNs" (Distill 2019), table of modern
    # networks: VGG-16 212 at pool5; the per-layer recurrence gives conv5_3 = 196.
    layers, _ = trace(torchvision.models.vgg16().features, (224, 224))
    by_name = {l.name: l.field[0] for l in layers}
    assert by_name["28"].size == 196 and by_name["28"].jump == 16  # conv5_3
    assert by_name["30"].size == 212 and by_name["30"].jump == 32  # pool5
    assert by_name["4"].size == 6 and by_name["16"].size == 44  # pool1, pool3


def test_torchvision_resnet50_matches_the_published_values():
    # ResNet-50 as torchvision builds it (stride on the 3x3 conv): conv1 7, layer1 35, layer2 91,
    # layer3 267, layer4 427 (samson-wang's "ResNet Receptive Field Size" table).
    from segviz.backbones import build_backbone

    _, outs = trace(build_backbone("resnet50"), (224, 224))
    assert [outs[f"level{i}"][0].size for i in range(1, 6)] == [7, 35, 91, 267, 427]
    assert [outs[f"level{i}"][0].jump for i in range(1, 6)] == [2, 4, 8, 16, 32]


def test_dilated_context_module_grows_as_in_the_paper():
    # Yu & Koltun 2016, Table 1: receptive field 3, 5, 9, 17, 33, 65, 67, 67.
    from segviz.models.dilation import ContextModule

    layers, _ = trace(ContextModule(4), (80, 80), channels=4)
    assert [l.field[0].size for l in layers if l.kind == "Conv2d"] == [3, 5, 9, 17, 33, 65, 67, 67]


def test_branches_take_the_union_and_global_pooling_is_the_whole_image():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, padding=4, dilation=4)

        def forward(self, x):
            return self.a(x) + self.b(x)

    h, w = final_field(TwoPaths(), (32, 32))
    assert h.size == 9 and w.size == 9 and not h.whole
    from segviz.models.deeplab import ASPP

    h, _ = final_field(ASPP(3, (2, 4)), (16, 16))
    assert h.whole and "whole image" in describe((h, h))


def test_strided_transposed_and_upsampling_layers():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1))
    h, _ = final_field(net, (32, 32))
    assert h.jump == 1 and h.size == 3 + (2 - 1) * 2  # each output gathers 2 inputs 2 px apart
    up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
    h, _ = final_field(nn.Sequential(nn.Conv2d(3, 3, 2, stride=2), up), (32, 32))
    assert h.jump == 0.5 and h.size == 4


def test_asymmetric_kernels_have_separate_fields():
    from segviz.models.gcn import GlobalConv

    h, w = final_field(nn.Conv2d(3, 3, (7, 1), padding=(3, 0)), (32, 32))
    assert (h.size, w.size) == (7, 1)
    h, w = final_field(GlobalConv(3, 2, k=15), (32, 32))
    assert (h.size, w.size) == (15, 15)


@pytest.mark.parametrize("name", ["fcn8s_mobilenet_edgetpu", "segnet_mobilenet_edgetpu",
                                  "deeplabv2_mobilenet_edgetpu", "unet_mobilenet_edgetpu"])
def test_every_compact_model_traces(name):
    from segviz.registry import build

    layers, outs = trace(build(name, num_classes=3), (64, 96))
    assert len(layers) > 50 and outs["out"][0].size > 100


def test_deeplab_largefov_field_is_the_released_networks():
    # DeepLab-LargeFOV's released train.prototxt (DeepLab v1), by hand with r <- r + (k_eff - 1) * j:
    # conv1_1, conv1_2 (3x3): 3, 5; pool1 3x3/2 pad 1: 7, j 2
    # conv2_1, conv2_2: 11, 15; pool2 3x3/2: 19, j 4
    # conv3_1..3: 27, 35, 43; pool3 3x3/2: 51, j 8
    # conv4_1..3: 67, 83, 99; pool4 3x3/1: 115
    # conv5_1..3 (dilation 2, k_eff 5): 147, 179, 211; pool5 3x3/1: 227; pool5a (avg) 3x3/1: 243
    # fc6 (3x3, dilation 12, k_eff 25): 243 + 24 * 8 = 435; fc7, fc8 (1x1): 435, jump 8.
    # Feature map at 360x480: 181x241 after pool1, 91x121 after pool2, 46x61 from pool3 on.
    from segviz.registry import build

    layers, _ = trace(build("deeplabv1_vgg16", num_classes=21), (360, 480))
    by_name = {l.name: l for l in layers}
    pools = [l for l in layers if l.kind in ("MaxPool2d", "AvgPool2d")]
    assert [l.field[0].size for l in pools] == [7, 19, 51, 115, 227, 243]
    assert [l.shape[-2:] for l in pools] == [(181, 241), (91, 121)] + [(46, 61)] * 4
    fc8 = by_name["fc8"]
    assert (fc8.field[0].size, fc8.field[1].size, fc8.field[0].jump) == (435, 435, 8)


def test_tracing_on_the_meta_device_gives_the_real_fields():
    from segviz.registry import build

    model = build("deeplabv2_mobilenet_edgetpu", num_classes=3)
    real = trace(model, (64, 96))
    meta = trace(model.to("meta"), (64, 96))
    assert [l.field for l in real[0]] == [l.field for l in meta[0]] and real[1] == meta[1]


def test_field_against_depth_shows_vgg_pools_dilation_and_global_pooling():
    from segviz.receptive_field import field_by_depth

    # Araujo et al. (Distill 2019): VGG-16's pool1-pool5 fields are 6, 16, 44, 100 and 212 px.
    fcn = field_by_depth("fcn32s_vgg16", (360, 480))
    assert [round(p.size) for p in fcn if p.kind == "pool"] == [6, 16, 44, 100, 212]
    assert fcn[-1].kind == "output" and fcn[-1].size == 436  # as in assets/models.json
    v1 = field_by_depth("deeplabv1_vgg16", (360, 480))
    # fc6 of DeepLab-LargeFOV: a 3x3 convolution at dilation 12 on stride 8 takes the field from 243 to 435.
    assert max(p.size for p in v1 if p.kind == "dilated") == 435
    v3 = field_by_depth("deeplabv3_resnet101", (360, 480))
    assert v3[-1].kind == "global" and {"strided", "pool", "dilated"} <= {p.kind for p in v3}
    assert [p.depth for p in v3] == list(range(1, len(v3) + 1))


def test_the_depth_plot_holds_every_selected_model_and_configuration():
    from segviz.ui.receptive_field import depth_figure

    fig = depth_figure(None, ["fcn8s_mobilenet_edgetpu.camvid"], ["deeplabv1_vgg16", "pspnet_resnet50"])
    labels = [l.get_label() for l in fig.axes[0].get_lines() if not l.get_label().startswith("_")]
    assert labels == ["FCN-8s", "DeepLab v1 (vgg16)", "PSPNet (resnet50)"]
    with pytest.raises(ValueError, match="select at least one"):
        depth_figure(None, [], [])


def test_the_app_warm_up_traces_every_ready_models_field_at_the_examples_size(monkeypatch):
    """The Receptive field tab's first grid on a CamVid frame finds the theoretical fields traced."""
    from segviz import inference, receptive_field, records

    class Runner:
        backend, device = "torch", "cpu"

        def __call__(self, x):
            return {"out": x}

    traced = []
    monkeypatch.setattr(inference, "load_runner", lambda name: Runner())
    monkeypatch.setattr(receptive_field, "theoretical_field", lambda name, size: traced.append((name, size)))
    lines = []
    inference.warm_up("camvid", log=lines.append)
    ready = [r.name for r in records.records("camvid") if r.missing() is None]
    assert ready and traced == [(name, (360, 480)) for name in ready]
    assert lines[-1].startswith("receptive fields traced at 360x480")

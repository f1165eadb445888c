"""Receptive fields traced through real modules agree with published numbers."""
import pytest
import torch
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


@pytest.mark.parametrize("name", ["fcn8s_efficientnet_lite0", "segnet_efficientnet_lite0",
                                  "deeplabv2_efficientnet_lite0", "unet_efficientnet_lite0"])
def test_every_compact_model_traces(name):
    from segviz.registry import build

    layers, outs = trace(build(name, num_classes=3), (64, 96))
    assert len(layers) > 50 and outs["out"][0].size > 100

"""Multi-Scale Context Aggregation by Dilated Convolutions (Yu & Koltun, ICLR 2016,
https://arxiv.org/abs/1511.07122).

Faithful: the front-end is VGG16 with its last two pools removed and the following convs
dilated 2 (conv5) and 4 (fc6, 7x7), giving output stride 8; the basic context module
works on the C class maps: seven 3x3 convs with dilations 1, 1, 2, 4, 8, 16, 1 (ReLU after
each) and a 1x1 conv, all identity-initialised so that it starts as a pass-through
(paper, section 3). Output is upsampled bilinearly.
Deviations: front-end and context module are trained together rather than in two stages;
no reflection padding of the input. Compact: EfficientNet-Lite0 at output stride 8 (its
last two strides dilated 2 and 4) with a 1x1 "fc" layer of 256 channels instead of fc6/fc7.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..backbones.vgg import vgg16_classifier_as_conv
from ..layers import SegmentationModel, upsample_to
from ..registry import ModelSpec, register

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


def identity_init(conv: nn.Conv2d) -> None:
    """Each output channel starts as a copy of the same input channel (paper, eq. 3)."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    k = conv.kernel_size[0] // 2
    with torch.no_grad():
        for c in range(conv.out_channels):
            conv.weight[c, c, k, k] = 1.0


class ContextModule(nn.Sequential):
    """The basic context module: receptive field grows 3, 5, 9, 17, 33, 65, 67, 67 (paper, table 1)."""

    def __init__(self, channels: int):
        layers = []
        for d in CONTEXT_DILATIONS:
            conv = nn.Conv2d(channels, channels, 3, padding=d, dilation=d)
            identity_init(conv)
            layers += [conv, nn.ReLU(inplace=True)]
        final = nn.Conv2d(channels, channels, 1)
        identity_init(final)
        super().__init__(*layers, final)


class DilatedNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, frontend_head: nn.Module, num_classes: int, context: bool = True):
        super().__init__(backbone)
        self.frontend_head = frontend_head
        self.context = ContextModule(num_classes) if context else nn.Identity()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        scores = self.frontend_head(self.backbone(x)[4])  # (N, C, H/8, W/8)
        return {"out": upsample_to(self.context(scores), size)}  # (N, C, H, W)


def build_dilation(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                   context: bool = True) -> DilatedNet:
    net = build_backbone(backbone, weights=backbone_weights, output_stride=8)
    if backbone == "vgg16":
        fc6, fc7 = nn.Conv2d(512, 4096, 7, padding=12, dilation=4), nn.Conv2d(4096, 4096, 1)
        vgg16_classifier_as_conv(backbone_weights, fc6, fc7)
        head = nn.Sequential(fc6, nn.ReLU(True), nn.Dropout2d(0.5), fc7, nn.ReLU(True), nn.Dropout2d(0.5),
                             nn.Conv2d(4096, num_classes, 1))
    else:
        head = nn.Sequential(nn.Conv2d(net.channels[4], 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(True),
                             nn.Dropout2d(0.1), nn.Conv2d(256, num_classes, 1))
    return DilatedNet(net, head, num_classes, context)


for _bb, _compact in (("vgg16", False), ("efficientnet_lite0", True)):
    register(ModelSpec(
        name=f"dilation8_{_bb}", arch="dilation8", title="Dilation8 (front-end + context)", backbone=_bb,
        output_stride=8, paper="Multi-Scale Context Aggregation by Dilated Convolutions", year=2015,
        arxiv="1511.07122", voc12_miou=75.3,
        key_idea="Dilated convolutions grow the receptive field exponentially without losing resolution: "
                 "a front-end without its last pools plus a context module of rates 1-16.",
        builder=partial(build_dilation, backbone=_bb), compact=_compact))

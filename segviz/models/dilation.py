"""Multi-Scale Context Aggregation by Dilated Convolutions (Yu & Koltun, ICLR 2016,
https://arxiv.org/abs/1511.07122).

Faithful: the front-end is VGG16 with its last two pools removed and the following convs
dilated 2 (conv5) and 4 (fc6, 7x7), giving output stride 8; the basic context module
works on the C class maps: seven 3x3 convs with dilations 1, 1, 2, 4, 8, 16, 1 (ReLU after
each) and a 1x1 conv, all identity-initialised so that it starts as a pass-through
(paper, section 3). Output is upsampled bilinearly.
Deviations from the released ``dilation8`` nets (fyu/dilation): front-end and context module
are trained together rather than in two stages; the released nets use unpadded convs on an
input reflection-padded by 186 px, ours padded convs (same field sizes, different borders);
the released final upsampling is a fixed bilinear 16x16 deconvolution, ours bilinear
interpolation (the same operation up to the border); the released VOC model's context module
is, as far as we know, the basic one implemented here (the paper also reports a "large"
variant with wider layers, not implemented). Compact: MobileNet-EdgeTPU (or EfficientNet-Lite0, the
compact backbone before it) at output stride 8 (its last two strides dilated 2 and 4) with a 1x1 "fc"
layer of 256 channels instead of fc6/fc7.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..backbones.vgg import vgg16_classifier_as_conv
from ..dilation import Branch
from ..layers import SegmentationModel
from ..registry import ModelSpec, register

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


@dataclass(frozen=True)
class DilationConfig:
    # True: VGG's fc6 (7x7, dilation 4) and fc7 convolutionalised, 4096 wide, ImageNet's weights;
    # False: one 1x1 conv-BN-ReLU "fc" layer of ``fc_width`` channels (the compact form).
    convolutionalised_fc: bool = True
    fc_width: int = 4096
    context_dilations: tuple[int, ...] = CONTEXT_DILATIONS
    output_stride: int = 8

    def branches(self) -> list[Branch]:
        return [Branch(f"context layer {i + 1}, rate {r}", r, self.output_stride)
                for i, r in enumerate(self.context_dilations)]


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

    def __init__(self, channels: int, dilations=CONTEXT_DILATIONS):
        layers = []
        for d in dilations:
            conv = nn.Conv2d(channels, channels, 3, padding=d, dilation=d)
            identity_init(conv)
            layers += [conv, nn.ReLU(inplace=True)]
        final = nn.Conv2d(channels, channels, 1)
        identity_init(final)
        super().__init__(*layers, final)


class DilatedNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, frontend_head: nn.Module, num_classes: int, context: bool = True,
                 config: DilationConfig = DilationConfig()):
        super().__init__(backbone)
        self.config = config
        self.frontend_head = frontend_head
        self.context = ContextModule(num_classes, config.context_dilations) if context else nn.Identity()

    def decode(self, feats, size):
        scores = self.frontend_head(feats[4])  # (N, C5, H/8, W/8) -> (N, num_classes, H/8, W/8)
        return self.context(scores)  # (N, num_classes, H/8, W/8), upsampled by the base forward


def frontend_head(backbone: nn.Module, num_classes: int, config: DilationConfig, backbone_weights: str | None):
    if config.convolutionalised_fc:
        w = config.fc_width
        fc6, fc7 = nn.Conv2d(backbone.channels[4], w, 7, padding=12, dilation=4), nn.Conv2d(w, w, 1)
        vgg16_classifier_as_conv(backbone_weights, fc6, fc7)
        return nn.Sequential(fc6, nn.ReLU(True), nn.Dropout2d(0.5), fc7, nn.ReLU(True), nn.Dropout2d(0.5),
                             nn.Conv2d(w, num_classes, 1))
    w = config.fc_width
    return nn.Sequential(nn.Conv2d(backbone.channels[4], w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
                         nn.Dropout2d(0.1), nn.Conv2d(w, num_classes, 1))


CONFIGS = {"vgg16": DilationConfig(), "efficientnet_lite0": DilationConfig(convolutionalised_fc=False, fc_width=256)}
CONFIGS["mobilenet_edgetpu"] = CONFIGS["efficientnet_lite0"]


def build_dilation(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                   context: bool = True, config: DilationConfig | None = None) -> DilatedNet:
    config = config or CONFIGS[backbone]
    net = build_backbone(backbone, weights=backbone_weights, output_stride=config.output_stride)
    return DilatedNet(net, frontend_head(net, num_classes, config, backbone_weights), num_classes, context, config)


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"dilation8_{_bb}", arch="dilation8", order=50, title="Dilation8 (front-end + context)", backbone=_bb,
        output_stride=_cfg.output_stride, paper="Multi-Scale Context Aggregation by Dilated Convolutions", year=2015,
        arxiv="1511.07122", voc12_miou=75.3,
        key_idea="Dilated convolutions grow the receptive field exponentially without losing resolution: "
                 "a front-end without its last pools plus a context module of rates 1-16.",
        builder=partial(build_dilation, backbone=_bb), config=_cfg))

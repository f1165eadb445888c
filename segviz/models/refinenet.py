"""RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic Segmentation
(Lin, Milan, Shen & Reid, CVPR 2017, https://arxiv.org/abs/1611.06612).

Faithful: four cascaded RefineNet blocks from stride 32 down to stride 4. Each block has
residual conv units (RCU: ReLU-conv3x3-ReLU-conv3x3 + identity) on every input path
(two each), multi-resolution fusion (a 3x3 conv per path, upsampled to the finest path,
summed), chained residual pooling (5x5 stride-1 max-pools followed by 3x3 convs, each
result added back) and an output RCU. Widths 512 (RefineNet-4) and 256 on ResNet-101;
two RCUs and a 1x1 classifier at stride 4, then bilinear upsampling.
Deviations: 2 pooling blocks in CRP (the paper's first version; its released code uses 4);
torchvision's ResNet-101 (stride on the 3x3 conv) instead of the released MatConvNet
ResNet-101 (stride on the first 1x1, as the original MSRA model), which changes the traced
receptive field slightly; single-scale inference (the released evaluation averages scales).
Compact: MobileNet-EdgeTPU (EfficientNet-Lite0 before it) with widths 96/64/48/32 from stride 32
to 4 and one final RCU.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel, upsample_to
from ..registry import ModelSpec, register


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class RCU(nn.Module):
    """Residual conv unit."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = conv3x3(channels, channels), conv3x3(channels, channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class ChainedResidualPooling(nn.Module):
    def __init__(self, channels: int, blocks: int = 2):
        super().__init__()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(blocks))

    def forward(self, x):
        x = self.relu(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))  # each pooling block works on the previous one's output
            x = x + path
        return x


class RefineNetBlock(nn.Module):
    def __init__(self, in_channels: list[int], width: int):
        super().__init__()
        # Adaptive convs: a 3x3 to this block's width, then two RCUs per path.
        self.adapt = nn.ModuleList(nn.Sequential(conv3x3(c, width), RCU(width), RCU(width)) for c in in_channels)
        # Multi-resolution fusion (only when there are several paths).
        self.fuse = nn.ModuleList(conv3x3(width, width) for _ in in_channels) if len(in_channels) > 1 else None
        self.crp = ChainedResidualPooling(width)
        self.out = RCU(width)

    def forward(self, *paths: torch.Tensor) -> torch.Tensor:
        paths = [adapt(p) for adapt, p in zip(self.adapt, paths)]
        if self.fuse is not None:
            size = max((p.shape[-2:] for p in paths), key=lambda s: s[0] * s[1])
            x = sum(upsample_to(conv(p), size) for conv, p in zip(self.fuse, paths))
        else:
            x = paths[0]
        return self.out(self.crp(x))


@dataclass(frozen=True)
class RefineNetConfig:
    widths: tuple[int, int, int, int] = (512, 256, 256, 256)  # RefineNet-4 (stride 32) down to RefineNet-1 (stride 4)
    final_rcus: int = 2  # RCUs before the classifier


class RefineNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: RefineNetConfig = RefineNetConfig()):
        super().__init__(backbone)
        self.config = config
        c = backbone.channels
        w4, w3, w2, w1 = config.widths
        final_rcus = config.final_rcus
        self.refine4 = RefineNetBlock([c[4]], w4)
        self.refine3 = RefineNetBlock([c[3], w4], w3)
        self.refine2 = RefineNetBlock([c[2], w3], w2)
        self.refine1 = RefineNetBlock([c[1], w2], w1)
        self.head = nn.Sequential(*[RCU(w1) for _ in range(final_rcus)], nn.Dropout2d(0.1), nn.Conv2d(w1, num_classes, 1))

    def decode(self, feats, size):
        _, c2, c3, c4, c5 = feats
        r4 = self.refine4(c5)  # (N, w4, H/32, W/32)
        r3 = self.refine3(c4, r4)  # (N, w3, H/16, W/16)
        r2 = self.refine2(c3, r3)  # (N, w2, H/8, W/8)
        r1 = self.refine1(c2, r2)  # (N, w1, H/4, W/4)
        return self.head(r1)  # (N, num_classes, H/4, W/4), upsampled by the base forward


CONFIGS = {"resnet101": RefineNetConfig(), "efficientnet_lite0": RefineNetConfig((96, 64, 48, 32), final_rcus=1)}
CONFIGS["mobilenet_edgetpu"] = CONFIGS["efficientnet_lite0"]


def build_refinenet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                    config: RefineNetConfig | None = None) -> RefineNet:
    return RefineNet(build_backbone(backbone, weights=backbone_weights), num_classes, config or CONFIGS[backbone])


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"refinenet_{_bb}", arch="refinenet", order=80, title="RefineNet", backbone=_bb, output_stride=4,
        paper="RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic Segmentation", year=2016,
        arxiv="1611.06612", voc12_miou=84.2,
        key_idea="Multi-path refinement: residual conv units, multi-resolution fusion and chained residual pooling "
                 "fuse every backbone level from coarse to fine, without dilation.",
        builder=partial(build_refinenet, backbone=_bb), config=_cfg))

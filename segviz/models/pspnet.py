"""PSPNet: Pyramid Scene Parsing Network (Zhao, Shi, Qi, Wang & Jia, CVPR 2017,
https://arxiv.org/abs/1612.01105).

Faithful: dilated ResNet (output stride 8), the pyramid pooling module (average pools to
1x1, 2x2, 3x3 and 6x6 bins, a 1x1 conv to C/4 channels each with BN, bilinear upsampling,
concatenated with the input), a 3x3 conv, and the auxiliary loss head on res4 (the paper
weights it 0.4; segviz.train does the same).
Remaining deviations from the released PSPNet (hszhao/PSPNet, Caffe): the faithful
configuration is ResNet-50 (the VOC 85.4 is ResNet-101's) built by torchvision with a single
7x7 stem, where the released ResNets have a deep stem of three 3x3 convs; the released nets
pool the bins with fixed kernels for their 473x473 crops (kernel = stride = 60/b on a 60x60
map, equal to adaptive pooling there) and upsample with Caffe's ``Interp``
(align_corners=True), ours adaptive pooling at any size and align_corners=False.
Compact: MobileNet-EdgeTPU (EfficientNet-Lite0 before it) at output stride 16 (8 would triple
the backbone's cost on a CPU), pyramid width 80 per bin and a 128-channel 3x3 conv; the aux head sits
on the stride-16 level.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import build_backbone
from ..dilation import Branch
from ..layers import FCNHead, SegmentationModel, conv_bn_relu
from ..registry import ModelSpec, register


@dataclass(frozen=True)
class PSPNetConfig:
    width: int = 512  # the 3x3 conv after the pyramid
    output_stride: int = 8
    bins: tuple[int, ...] = (1, 2, 3, 6)
    aux: bool = True  # FCNHead on the stride-16 level in training (weighted 0.4 by segviz.train)

    def branches(self) -> list[Branch]:
        return [Branch(f"{b}x{b} bins", 0, self.output_stride, bins=b) for b in self.bins]


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)``. When traced for export (ONNX, OpenVINO), where the
    ONNX exporter cannot take adaptive pooling at a dynamic size, the same bins are computed
    with PyTorch's index arithmetic: bin ``i`` of ``n`` averages rows ``floor(i*H/n)`` to
    ``ceil((i+1)*H/n)`` (exclusive), rows first then columns (a rectangle's mean is the mean
    of its row means)."""
    if not torch.jit.is_tracing():
        return F.adaptive_avg_pool2d(x, bins)
    for dim in (2, 3):
        n = x.shape[dim]
        x = torch.cat([x.narrow(dim, (i * n) // bins, ((i + 1) * n + bins - 1) // bins - (i * n) // bins)
                       .mean(dim, keepdim=True) for i in range(bins)], dim)
    return x


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` that exports (see :func:`adaptive_avg_pool`); no parameters, so
    the state dict keys are those of ``nn.AdaptiveAvgPool2d``."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, x):
        return adaptive_avg_pool(x, self.bins)


class PyramidPooling(nn.Module):
    def __init__(self, in_channels: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        inter = in_channels // len(bins)
        self.stages = nn.ModuleList(nn.Sequential(AdaptiveAvgPool(b), conv_bn_relu(in_channels, inter, 1)) for b in bins)
        self.out_channels = in_channels + inter * len(bins)

    def forward(self, x):
        size = x.shape[-2:]
        return torch.cat([x] + [F.interpolate(s(x), size, mode="bilinear", align_corners=False) for s in self.stages], 1)


class PSPNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: PSPNetConfig):
        super().__init__(backbone)
        self.config = config
        self.ppm = PyramidPooling(backbone.channels[4], config.bins)
        self.head = nn.Sequential(conv_bn_relu(self.ppm.out_channels, config.width, 3), nn.Dropout2d(0.1),
                                  nn.Conv2d(config.width, num_classes, 1))
        if config.aux:
            self.aux_classifier = FCNHead(backbone.channels[3], num_classes)

    def decode(self, feats, size):
        return self.head(self.ppm(feats[4]))  # (N, C5 + 4 * C5/4 -> classes, H/OS, W/OS)


# Compact: output stride 16 (8 would triple EfficientNet-Lite0's cost on a CPU), a 128-channel conv.
CONFIGS = {"resnet50": PSPNetConfig(), "efficientnet_lite0": PSPNetConfig(width=128, output_stride=16),
           "efficientnet_lite2": PSPNetConfig(width=128, output_stride=16)}
CONFIGS["mobilenet_edgetpu"] = CONFIGS["efficientnet_lite0"]


def build_pspnet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None, aux: bool = True,
                 config: PSPNetConfig | None = None) -> PSPNet:
    config = replace(config or CONFIGS[backbone], aux=aux)
    net = build_backbone(backbone, weights=backbone_weights, output_stride=config.output_stride)
    return PSPNet(net, num_classes, config)


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"pspnet_{_bb}", arch="pspnet", order=90, title="PSPNet", backbone=_bb, output_stride=_cfg.output_stride,
        paper="Pyramid Scene Parsing Network", year=2016, arxiv="1612.01105", voc12_miou=85.4,
        key_idea="A pyramid pooling module pools the last feature map into 1, 2, 3 and 6 bins for global scene context.",
        builder=partial(build_pspnet, backbone=_bb), aux=_cfg.aux, config=_cfg))

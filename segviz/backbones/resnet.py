"""ResNet-50/101 (He et al. 2015, arXiv 1512.03385) as torchvision builds them, with output
stride 8/16 by dilation (``replace_stride_with_dilation``). Module names are torchvision's
(conv1, bn1, layer1..layer4) so that torchvision's segmentation checkpoints load unchanged.
"""
from __future__ import annotations

import torch

from .base import Backbone

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


class ResNet(Backbone):
    channels = (64, 256, 512, 1024, 2048)
    mean, std = MEAN, STD

    def __init__(self, depth: int = 50, output_stride: int = 32, weights: str | None = None):
        super().__init__()
        import torchvision

        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if weights not in (None, "imagenet"):
            raise ValueError(f"unknown weights {weights!r} for resnet{depth}; choose 'imagenet' or None")
        builder = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        net = builder(weights="DEFAULT" if weights else None, replace_stride_with_dilation=_DILATE[output_stride])
        self.output_stride = output_stride
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.relu(self.bn1(self.conv1(x)))  # (N, 64, H/2, W/2)
        c2 = self.layer1(self.maxpool(c1))  # (N, 256, H/4, W/4)
        c3 = self.layer2(c2)  # (N, 512, H/8, W/8)
        c4 = self.layer3(c3)  # (N, 1024, H/16, W/16) or H/8 when dilated
        c5 = self.layer4(c4)  # (N, 2048, H/32, W/32) or less when dilated
        return [c1, c2, c3, c4, c5]


def resnet50(*, weights: str | None = None, output_stride: int = 32) -> ResNet:
    return ResNet(50, output_stride, weights)


def resnet101(*, weights: str | None = None, output_stride: int = 32) -> ResNet:
    return ResNet(101, output_stride, weights)

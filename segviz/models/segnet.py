"""SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation
(Badrinarayanan, Kendall & Cipolla, TPAMI 2017, https://arxiv.org/abs/1511.00561).

Faithful: the encoder max-pools with ``return_indices=True``; the decoder upsamples with
``MaxUnpool2d`` using those indices (no learned upsampling), each unpooling followed by
convolutions that densify the sparse map, mirroring the encoder (VGG16-BN: 13 + 13 convs,
29.4M parameters as the paper's table gives).
Compact adaptation: EfficientNet-Lite0 downsamples with strided depthwise convs, not pools,
so the strides of its four strided blocks are removed and a 2x2 max-pool with indices sits
before each of them instead (stem + block 0 | pool | 1-2 | pool | 3-4 | pool | 5-10 | pool |
11-15); the stem keeps its stride, so the decoder ends at stride 2 and the scores are
upsampled bilinearly for the last factor of 2. Each decoder level is two 3x3 conv-BN-ReLU,
the first after the unpooling, as in the paper.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel, conv_bn_relu, upsample_to
from ..registry import ModelSpec, register


class SegNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, stage_channels: list[int], pooled: list[bool], num_classes: int,
                 convs_per_level: list[int]):
        super().__init__(backbone)
        backbone.remove_strides()
        self.pooled = list(pooled)  # is stage i followed by a pool (whose indices the decoder reuses)?
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        c = stage_channels
        self.decoder = nn.ModuleList()
        for level, n in enumerate(convs_per_level):
            cout = c[level - 1] if level > 0 else c[0]
            convs = [conv_bn_relu(c[level], c[level]) for _ in range(n - 1)]
            convs.append(conv_bn_relu(c[level], cout) if level > 0 else nn.Conv2d(c[0], num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*convs))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        indices, sizes = {}, {}
        for i, stage in enumerate(self.backbone.pooling_stages()):
            x = stage(x)
            if self.pooled[i]:
                sizes[i] = x.shape[-2:]
                x, indices[i] = self.pool(x)  # (N, C_i, ceil(H_i/2), ceil(W_i/2)) + where each max came from
        for level in reversed(range(len(self.decoder))):
            if level in indices:
                x = self.unpool(x, indices[level], output_size=sizes[level])  # sparse, 2x larger
            x = self.decoder[level](x)  # densify
        return {"out": upsample_to(x, size) if x.shape[-2:] != size else x}  # (N, num_classes, H, W)


def build_segnet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None) -> SegNet:
    if backbone == "vgg16":
        net = build_backbone("vgg16", weights=backbone_weights, batch_norm=True)
        return SegNet(net, [64, 128, 256, 512, 512], [True] * 5, num_classes, [2, 2, 3, 3, 3])
    net = build_backbone(backbone, weights=backbone_weights)
    return SegNet(net, [16, 24, 40, 112, 320], [True, True, True, True, False], num_classes, [2, 2, 2, 2, 2])


for _bb, _compact in (("vgg16", False), ("efficientnet_lite0", True)):
    register(ModelSpec(
        name=f"segnet_{_bb}", arch="segnet", title="SegNet", backbone=_bb, output_stride=32,
        paper="SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation", year=2015,
        arxiv="1511.00561", voc12_miou=59.9,
        key_idea="The decoder upsamples with the encoder's max-pooling indices, so nothing is learned for upsampling.",
        builder=partial(build_segnet, backbone=_bb), compact=_compact))

"""SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation
(Badrinarayanan, Kendall & Cipolla, TPAMI 2017, https://arxiv.org/abs/1511.00561).

Faithful: the encoder max-pools with ``return_indices=True``; the decoder upsamples with
``MaxUnpool2d`` using those indices (no learned upsampling), each unpooling followed by
convolutions that densify the sparse map, mirroring the encoder (VGG16-BN: 13 + 13 convs,
29.4M parameters as the paper's table gives).
Compact adaptation: EfficientNet-Lite0 downsamples with strided convs, not pools, so its
five strides are removed and a 2x2 max-pool with indices is put before each downsampling
stage (stem, block 0, blocks 1-2, 3-4, 5-10 | pool | 11-15). Each decoder level is one
depthwise-separable conv (the encoder's own kind of conv) to keep full-resolution work cheap.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel
from ..registry import ModelSpec, register


def _conv(cin: int, cout: int, separable: bool, last: bool = False) -> nn.Sequential:
    if separable:
        layers = [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(True),
                  nn.Conv2d(cin, cout, 1, bias=last)]
    else:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=last)]
    if not last:
        layers += [nn.BatchNorm2d(cout), nn.ReLU(True)]
    return nn.Sequential(*layers)


class SegNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, pooled_channels: list[int], top_channels: int, num_classes: int,
                 convs_per_level: list[int], separable: bool):
        super().__init__(backbone)
        backbone.remove_strides()
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        c = pooled_channels
        # Bridges the encoder's last stage back to the width of the last pooled map (compact only).
        self.decoder_top = _conv(top_channels, c[4], separable) if top_channels != c[4] else nn.Identity()
        self.decoder = nn.ModuleList()
        for level in range(5):
            cout = c[level - 1] if level > 0 else c[0]
            convs = [_conv(c[level], c[level], separable) for _ in range(convs_per_level[level] - 1)]
            convs.append(_conv(c[level], cout, separable) if level > 0 else _conv(c[0], num_classes, separable, last=True))
            self.decoder.append(nn.Sequential(*convs))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.backbone.pooling_stages()
        indices, sizes = [], []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i < 5:
                sizes.append(x.shape[-2:])
                x, idx = self.pool(x)  # (N, C_i, ceil(H_i/2), ceil(W_i/2)) + where each max came from
                indices.append(idx)
        x = self.decoder_top(x)  # (N, C_4, H/32, W/32)
        for level in reversed(range(5)):
            x = self.unpool(x, indices[level], output_size=sizes[level])  # sparse, 2x larger
            x = self.decoder[level](x)
        return {"out": x}  # (N, num_classes, H, W)


def build_segnet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None) -> SegNet:
    if backbone == "vgg16":
        net = build_backbone("vgg16", weights=backbone_weights, batch_norm=True)
        return SegNet(net, [64, 128, 256, 512, 512], 512, num_classes, [2, 2, 3, 3, 3], separable=False)
    net = build_backbone(backbone, weights=backbone_weights)
    return SegNet(net, [32, 16, 24, 40, 112], 320, num_classes, [1, 1, 1, 1, 1], separable=True)


for _bb, _compact in (("vgg16", False), ("efficientnet_lite0", True)):
    register(ModelSpec(
        name=f"segnet_{_bb}", arch="segnet", title="SegNet", backbone=_bb, output_stride=32,
        paper="SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation", year=2015,
        arxiv="1511.00561", voc12_miou=59.9,
        key_idea="The decoder upsamples with the encoder's max-pooling indices, so nothing is learned for upsampling.",
        builder=partial(build_segnet, backbone=_bb), compact=_compact))

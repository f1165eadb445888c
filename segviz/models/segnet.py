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

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel, conv_bn_relu
from ..registry import ModelSpec, register


@dataclass(frozen=True)
class SegNetConfig:
    pooled: tuple[bool, ...] = (True,) * 5  # is stage i followed by a pool (whose indices the decoder reuses)?
    convs_per_level: tuple[int, ...] = (2, 2, 3, 3, 3)  # decoder convs per level, mirroring VGG16's encoder
    batch_norm_backbone: bool = True  # SegNet's encoder is VGG16-BN


class SegNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: SegNetConfig):
        super().__init__(backbone)
        backbone.remove_strides()
        self.config = config
        self.pooled = list(config.pooled)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        c = backbone.channels  # the width of each pooling stage
        self.decoder = nn.ModuleList()
        for level, n in enumerate(config.convs_per_level):
            cout = c[level - 1] if level > 0 else c[0]
            convs = [conv_bn_relu(c[level], c[level]) for _ in range(n - 1)]
            convs.append(conv_bn_relu(c[level], cout) if level > 0 else nn.Conv2d(c[0], num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*convs))

    def pool_levels(self) -> list[int]:
        """The encoder stages whose max-pool indices the decoder reuses."""
        return [i for i, p in enumerate(self.pooled) if p]

    def features(self, x: torch.Tensor):
        """The encoder, keeping each pool's indices and input size for the decoder."""
        indices, sizes = {}, {}
        for i, stage in enumerate(self.backbone.pooling_stages()):
            x = stage(x)
            if self.pooled[i]:
                sizes[i] = x.shape[-2:]
                x, indices[i] = self.pool(x)  # (N, C_i, ceil(H_i/2), ceil(W_i/2)) + where each max came from
        return x, indices, sizes

    def decode(self, feats, size):
        x, indices, sizes = feats
        for level in reversed(range(len(self.decoder))):
            if level in indices:
                x = self.unpool(x, indices[level], output_size=sizes[level])  # sparse, 2x larger
            x = self.decoder[level](x)  # densify
        return x  # (N, num_classes, H, W), or H/2 x W/2 for the compact form (upsampled by the base forward)


# Compact: EfficientNet-Lite0's stem keeps its stride, so four pools and two convs per decoder level.
CONFIGS = {"vgg16": SegNetConfig(),
           "efficientnet_lite0": SegNetConfig(pooled=(True, True, True, True, False), convs_per_level=(2,) * 5,
                                              batch_norm_backbone=False)}


def build_segnet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                 config: SegNetConfig | None = None) -> SegNet:
    config = config or CONFIGS[backbone]
    extra = {"batch_norm": True} if config.batch_norm_backbone else {}
    return SegNet(build_backbone(backbone, weights=backbone_weights, **extra), num_classes, config)


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"segnet_{_bb}", arch="segnet", order=40, title="SegNet", backbone=_bb, output_stride=32,
        paper="SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation", year=2015,
        arxiv="1511.00561", voc12_miou=59.9,
        key_idea="The decoder upsamples with the encoder's max-pooling indices, so nothing is learned for upsampling.",
        builder=partial(build_segnet, backbone=_bb), compact=_bb == "efficientnet_lite0", config=_cfg))

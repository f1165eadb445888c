"""U-Net: Convolutional Networks for Biomedical Image Segmentation (Ronneberger, Fischer &
Brox, MICCAI 2015, https://arxiv.org/abs/1505.04597): the encoder-decoder example.

Faithful (``unet_vanilla``): the paper's own contracting path (two 3x3 convs + ReLU per
level, 64 to 1024 channels, 2x2 max-pools) and expansive path (2x2 up-convolution halving
the channels, concatenation with the cropped encoder map, two 3x3 convs), 1x1 classifier.
Deviations from the released Caffe model (u-net-release): the convs are padded, so the
output has the input's size and no cropping is needed (the released net uses unpadded
convs, a 572x572 tile giving 388x388 scores, and overlap-tile inference); no drop-out at the
end of the contracting path (the paper and release have it); no weighted loss map for
touching borders (a cell-segmentation device, irrelevant to street scenes).
Compact: the MobileNet-EdgeTPU levels (strides 2..32; EfficientNet-Lite0's before it) are the
contracting path; each decoder level is a 2x2 up-convolution, concatenation, and two 3x3 conv-BN-ReLU; the
decoder stops at stride 2 and the scores are upsampled bilinearly. On MobileNet-EdgeTPU the decoder is wider
than the encoder it mirrors (32, 64, 96, 128 channels at strides 2, 4, 8, 16 against the encoder's 16, 24,
40, 72), where the paper's is as wide as its encoder: with the encoder's widths it underfitted and scored
2.7 mIoU lower on a drive it never trained on, in runs of the same 20 epochs (README, "Wider decoders for
U-Net and SegNet"; the bundled model trained for 40).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel, conv_bn_relu, crop_to
from ..registry import ModelSpec, register


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, batch_norm: bool):
        if batch_norm:
            super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))
        else:
            super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(True), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(True))


class UpBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int, batch_norm: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)  # the paper's "up-convolution"
        self.conv = DoubleConv(cout + skip, cout, batch_norm)

    def forward(self, x, skip):
        x = self.up(x)
        x = nn.functional.pad(x, (0, max(0, skip.shape[-1] - x.shape[-1]), 0, max(0, skip.shape[-2] - x.shape[-2])))
        return self.conv(torch.cat([skip, crop_to(x, skip.shape[-2:])], 1))


class UNetEncoder(nn.Module):
    """The paper's contracting path; levels at strides 1, 2, 4, 8, 16."""

    channels = (64, 128, 256, 512, 1024)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    output_stride = 16

    def __init__(self):
        super().__init__()
        c = self.channels
        self.levels = nn.ModuleList([DoubleConv(3, c[0], False)] + [DoubleConv(c[i - 1], c[i], False) for i in range(1, 5)])
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


@dataclass(frozen=True)
class UNetConfig:
    paper_encoder: bool = False  # the paper's own contracting path instead of a (pretrained) backbone
    batch_norm: bool = True  # conv-BN-ReLU in the decoder (the paper has no batch norm)
    # The decoder's width at each encoder level but the deepest (stride 1 or 2 first); None mirrors the encoder's.
    decoder_widths: tuple[int, ...] | None = None


class UNet(SegmentationModel):
    def __init__(self, encoder: nn.Module, num_classes: int, config: UNetConfig = UNetConfig()):
        super().__init__(encoder)
        self.config = config
        batch_norm = config.batch_norm
        c = encoder.channels
        d = tuple(config.decoder_widths or c[:4]) + (c[4],)  # d[i]: the decoder's width at level i
        self.up = nn.ModuleList(UpBlock(d[i + 1], c[i], d[i], batch_norm) for i in (3, 2, 1, 0))
        self.classifier = nn.Conv2d(d[0], num_classes, 1)

    def decode(self, feats, size):
        y = feats[4]  # the bottom of the U
        for up, skip in zip(self.up, reversed(feats[:4])):
            y = up(y, skip)  # up 2x, concatenate the encoder map, two 3x3 convs
        return self.classifier(y)  # (N, num_classes, H, W) for the vanilla U-Net, H/2 x W/2 for the compact one


CONFIGS = {"vanilla": UNetConfig(paper_encoder=True, batch_norm=False), "efficientnet_lite0": UNetConfig(),
           "mobilenet_edgetpu": UNetConfig(decoder_widths=(32, 64, 96, 128))}


def build_unet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
               config: UNetConfig | None = None) -> UNet:
    config = config or CONFIGS[backbone]
    if config.paper_encoder:
        if backbone_weights is not None:
            raise ValueError("unet_vanilla has no pretrained encoder; use backbone_weights=None")
        encoder = UNetEncoder()
    else:
        encoder = build_backbone(backbone, weights=backbone_weights)
    return UNet(encoder, num_classes, config)


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"unet_{_bb}", arch="unet", order=120, title="U-Net", backbone=_bb,
        output_stride=1 if _cfg.paper_encoder else 2,  # the decoder ends at the encoder's first level
        paper="U-Net: Convolutional Networks for Biomedical Image Segmentation", year=2015, arxiv="1505.04597",
        voc12_miou=None,
        key_idea="A symmetric encoder-decoder: every decoder level concatenates the encoder map of the same size.",
        builder=partial(build_unet, backbone=_bb), config=_cfg))

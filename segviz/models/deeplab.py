"""The DeepLab family.

v1 "LargeFOV": Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected
CRFs (Chen et al., ICLR 2015, https://arxiv.org/abs/1412.7062). As the released
DeepLab-LargeFOV ``train.prototxt``: VGG16 with 3x3 pad-1 max-pools (stride 2 for pool1-3,
stride 1 for pool4 and pool5), conv5 dilated 2, a 3x3 stride-1 pad-1 average pool (pool5a),
fc6 a 3x3 atrous conv of rate 12 with 1024 channels, fc7 1x1 (1024), fc8 classifier
(20.5M parameters with 21 classes, the paper's Table 2); bilinear upsampling of the stride-8
scores; dense CRF afterwards. Remaining deviations: the released net is trained against
labels subsampled by 8 (we upsample the scores to the labels instead), its fc6/fc7 are
initialised from subsampled ImageNet fc6/fc7 weights (ours from scratch), and torchvision's
VGG16 replaces the Caffe VGG16 (same layers, different ImageNet weights and RGB input).

v2: DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution,
and Fully Connected CRFs (Chen et al., TPAMI 2017, https://arxiv.org/abs/1606.00915).
ResNet-101 at output stride 8 and ASPP: four parallel 3x3 atrous convs with rates 6, 12,
18, 24 straight to class scores, summed (the released ResNet-101 model's "fc1_c0..c3").
Remaining deviations from the released ResNet-101 prototxt: torchvision's ResNet-101 (stride
on the 3x3 conv; the released MSRA-style net strides on the first 1x1, and has frozen BN), so
the traced receptive field differs slightly; single-scale input (the released model fuses
three scales, 1, 0.75 and 0.5, by max: "MSC"); dilation 2 in res4 and 4 in res5 as released.

v3: Rethinking Atrous Convolution for Semantic Image Segmentation (Chen et al. 2017,
https://arxiv.org/abs/1706.05587). ASPP with batch norm: a 1x1 branch, three 3x3 atrous
branches (rates 6, 12, 18 at output stride 16, doubled at 8) and image-level pooling,
concatenated and projected to 256 channels. Module names follow torchvision so that
torchvision's ``deeplabv3_resnet50`` state dict loads into ``deeplabv3_resnet50`` unchanged.

Compact configurations use MobileNet-EdgeTPU, with the sizes first chosen for EfficientNet-Lite0
(the compact backbone before it, kept as a configuration). v1: fc6 is a depthwise-separable atrous conv
(rate 12, the way DeepLab's MobileNet variants make atrous convs cheap), 256 channels.
v2: unchanged ASPP-to-scores. v3: output stride 16 and 128-channel ASPP.
The dense CRF is not part of any network here: it is a post-processing step (segviz.crf).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import build_backbone
from ..dilation import Branch
from ..layers import FCNHead, SegmentationModel
from ..registry import ModelSpec, register


# ----------------------------------------------------------------------------- v1 and v2
@dataclass(frozen=True)
class DeepLabV1Config:
    width: int = 1024  # fc6/fc7 channels
    separable: bool = False  # fc6 as a depthwise-separable atrous conv (the compact form)
    rate: int = 12  # fc6's dilation: the "large field of view"
    output_stride: int = 8
    released_pools: bool = False  # DeepLab-LargeFOV's 3x3 pools + pool5a (VGG16 only)

    def branches(self) -> list[Branch]:
        return [Branch(f"fc6 rate {self.rate}", self.rate, self.output_stride)]


class DeepLabV1(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: DeepLabV1Config):
        super().__init__(backbone)
        self.config = config
        cin, width, r = backbone.channels[4], config.width, config.rate
        if config.released_pools:
            backbone.use_deeplab_pools()
        # pool5a: the released net's 3x3 average pool before fc6 (Caffe counts the padding, as PyTorch does).
        self.pool5a = nn.AvgPool2d(3, 1, padding=1) if config.released_pools else nn.Identity()
        if config.separable:
            self.fc6 = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=r, dilation=r, groups=cin, bias=False),
                                     nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, width, 1, bias=False),
                                     nn.BatchNorm2d(width), nn.ReLU(True))
        else:
            self.fc6 = nn.Sequential(nn.Conv2d(cin, width, 3, padding=r, dilation=r), nn.ReLU(True), nn.Dropout2d(0.5))
        self.fc7 = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(True), nn.Dropout2d(0.5))
        self.fc8 = nn.Conv2d(width, num_classes, 1)

    def decode(self, feats, size):
        return self.fc8(self.fc7(self.fc6(self.pool5a(feats[4]))))  # (N, C5, H/8, W/8) -> (N, num_classes, H/8, W/8)


@dataclass(frozen=True)
class DeepLabV2Config:
    rates: tuple[int, ...] = (6, 12, 18, 24)
    output_stride: int = 8

    def branches(self) -> list[Branch]:
        return [Branch(f"ASPP rate {r}", r, self.output_stride) for r in self.rates]


class ASPPSum(nn.Module):
    """DeepLab v2's ASPP: parallel atrous convs straight to class scores, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates=(6, 12, 18, 24)):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for b in self.branches:
            nn.init.normal_(b.weight, std=0.01)
            nn.init.zeros_(b.bias)

    def forward(self, x):
        return sum(branch(x) for branch in self.branches)


class DeepLabV2(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: DeepLabV2Config):
        super().__init__(backbone)
        self.config = config
        self.aspp = ASPPSum(backbone.channels[4], num_classes, config.rates)

    def decode(self, feats, size):
        return self.aspp(feats[4])  # (N, C5, H/8, W/8) -> (N, num_classes, H/8, W/8)


V1_CONFIGS = {"vgg16": DeepLabV1Config(released_pools=True), "efficientnet_lite0": DeepLabV1Config(width=256, separable=True)}
V2_CONFIGS = {"resnet101": DeepLabV2Config(), "efficientnet_lite0": DeepLabV2Config()}


def build_deeplabv1(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                    config: DeepLabV1Config | None = None) -> DeepLabV1:
    config = config or V1_CONFIGS[backbone]
    net = build_backbone(backbone, weights=backbone_weights, output_stride=config.output_stride)
    return DeepLabV1(net, num_classes, config)


def build_deeplabv2(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                    config: DeepLabV2Config | None = None) -> DeepLabV2:
    config = config or V2_CONFIGS[backbone]
    return DeepLabV2(build_backbone(backbone, weights=backbone_weights, output_stride=config.output_stride),
                     num_classes, config)


# ----------------------------------------------------------------------------- v3
@dataclass(frozen=True)
class DeepLabV3Config:
    width: int = 256  # ASPP and head channels
    output_stride: int = 8
    base_rates: tuple[int, ...] = (6, 12, 18)  # at output stride 16; scaled to the actual stride
    aux: bool = True  # FCNHead on the stride-16 level in training

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(r * 16 // self.output_stride for r in self.base_rates)  # 6/12/18 at OS 16, 12/24/36 at OS 8

    def branches(self) -> list[Branch]:
        os_ = self.output_stride
        return ([Branch("1x1", 1, os_, kernel=1)] + [Branch(f"ASPP rate {r}", r, os_) for r in self.rates] +
                [Branch("image pooling", 0, os_, bins=1)])


class ASPPConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, rate: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv, broadcast back."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels: int, rates, out_channels: int = 256):
        super().__init__()
        self.rates = tuple(rates)
        branches = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())]
        branches += [ASPPConv(in_channels, out_channels, r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, rates, width: int = 256):
        super().__init__(ASPP(in_channels, rates, width), nn.Conv2d(width, width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, num_classes, 1))


class DeepLabV3(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: DeepLabV3Config):
        super().__init__(backbone)
        self.config = config
        self.classifier = DeepLabHead(backbone.channels[4], num_classes, config.rates, config.width)
        if config.aux:
            self.aux_classifier = FCNHead(backbone.channels[3], num_classes)

    def decode(self, feats, size):
        return self.classifier(feats[4])  # ASPP on (N, C5, H/OS, W/OS) -> (N, num_classes, H/OS, W/OS)


V3_CONFIGS = {"resnet50": DeepLabV3Config(), "resnet101": DeepLabV3Config(),
              "efficientnet_lite0": DeepLabV3Config(width=128, output_stride=16)}
for _configs in (V1_CONFIGS, V2_CONFIGS, V3_CONFIGS):
    _configs["mobilenet_edgetpu"] = _configs["efficientnet_lite0"]


def build_deeplabv3(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                    output_stride: int | None = None, aux: bool = True,
                    config: DeepLabV3Config | None = None) -> DeepLabV3:
    config = config or V3_CONFIGS[backbone]
    config = replace(config, output_stride=output_stride or config.output_stride, aux=aux)
    net = build_backbone(backbone, weights=backbone_weights, output_stride=config.output_stride)
    return DeepLabV3(net, num_classes, config)


_V1 = dict(paper="Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs", year=2014,
           arxiv="1412.7062", voc12_miou=None)  # the review quotes 79.7 for v1 and v2 together
_V2 = dict(paper="DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and "
                 "Fully Connected CRFs", year=2016, arxiv="1606.00915", voc12_miou=79.7)
_V3 = dict(paper="Rethinking Atrous Convolution for Semantic Image Segmentation", year=2017, arxiv="1706.05587",
           voc12_miou=85.7)
for _bb, _cfg in V1_CONFIGS.items():
    register(ModelSpec(
        name=f"deeplabv1_{_bb}", arch="deeplabv1", order=60, title="DeepLab v1 (LargeFOV)", backbone=_bb,
        output_stride=_cfg.output_stride,
        key_idea="Atrous convolution keeps resolution at stride 8 and fc6 at rate 12 sees a large field of view; "
                 "a dense CRF sharpens the boundaries.",
        builder=partial(build_deeplabv1, backbone=_bb), config=_cfg, **_V1))
for _bb, _cfg in V2_CONFIGS.items():
    register(ModelSpec(
        name=f"deeplabv2_{_bb}", arch="deeplabv2", order=70, title="DeepLab v2 (ASPP)", backbone=_bb,
        output_stride=_cfg.output_stride,
        key_idea="Atrous spatial pyramid pooling: parallel atrous convs at rates 6/12/18/24 see objects at several scales.",
        builder=partial(build_deeplabv2, backbone=_bb), config=_cfg, **_V2))
for _bb, _cfg in V3_CONFIGS.items():
    register(ModelSpec(
        name=f"deeplabv3_{_bb}", arch="deeplabv3", order=110, title="DeepLab v3", backbone=_bb,
        output_stride=_cfg.output_stride,
        key_idea="ASPP with batch norm and image-level pooling for global context; output stride 8 or 16.",
        builder=partial(build_deeplabv3, backbone=_bb), aux=_cfg.aux,
        config=_cfg, **_V3))

"""FCN: Fully Convolutional Networks for Semantic Segmentation (Long, Shelhamer & Darrell,
CVPR 2015, https://arxiv.org/abs/1411.4038).

Faithful: the classifier is convolutionalised (VGG16's fc6/fc7 become 7x7 and 1x1 convs,
loadable from ImageNet weights), upsampling is a learned transposed convolution
initialised to bilinear interpolation, and FCN-16s/8s add 1x1 score layers on pool4
(stride 16) and pool3 (stride 8), zero-initialised, summed with the 2x-upsampled coarser
scores, and cropped to size (the paper's crop layers).
Deviations from the released nets (``voc-fcn{32,16,8}s`` of fcn.berkeleyvision.org): no
100-pixel padding on conv1_1 with an unpadded fc6 and offset crops (fc6 pads by 3 instead,
so sizes line up without offsets); this moves where each unit's field is centred, not its
size (fc7 404 px, 436 px after the 32x upsampling, as the released FCN-32s). The released
nets keep the final upsampling deconvolution fixed at bilinear (``lr_mult: 0``); ours learns
it from the bilinear init, as the paper describes. The three variants are trained from
ImageNet directly rather than each fine-tuned from the coarser one, and torchvision's VGG16
replaces the Caffe one (same layers, different ImageNet weights). Compact: MobileNet-EdgeTPU, whose
1x1 "head" conv to 1280 channels (the layer before its DeepLab head) plays fc6/fc7, with skips from the
stride-16 (72 ch) and stride-8 (40 ch) levels; EfficientNet-Lite0, the compact backbone before it, has
the same 1280-wide head.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

from ..backbones import build_backbone
from ..backbones.vgg import vgg16_classifier_as_conv
from ..layers import SegmentationModel, crop_to, learned_upsampler
from ..registry import ModelSpec, register

SKIPS = {"32s": 0, "16s": 1, "8s": 2}


@dataclass(frozen=True)
class FCNConfig:
    # True: VGG's fc6/fc7 convolutionalised (7x7 and 1x1 convs, 4096 wide, ImageNet's weights);
    # False: the backbone's own final 1x1 "head" conv plays fc6/fc7 (EfficientNet-Lite0's, 1280 wide).
    convolutionalised_fc: bool = True
    fc_width: int = 4096
    dropout: float = 0.5


class FCN(SegmentationModel):
    def __init__(self, backbone: nn.Module, classifier: nn.Module, classifier_channels: int, num_classes: int, skips: int):
        super().__init__(backbone)
        self.skips = skips  # 0: FCN-32s, 1: FCN-16s, 2: FCN-8s
        self.classifier = classifier
        self.score_fr = nn.Conv2d(classifier_channels, num_classes, 1)
        if skips >= 1:
            self.score_pool4 = nn.Conv2d(backbone.channels[3], num_classes, 1)
            self.upscore2 = learned_upsampler(num_classes, 2)
        if skips >= 2:
            self.score_pool3 = nn.Conv2d(backbone.channels[2], num_classes, 1)
            self.upscore_pool4 = learned_upsampler(num_classes, 2)
        for name in ("score_pool4", "score_pool3"):
            if hasattr(self, name):  # the paper zero-initialises the skip scores
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)
        self.upscore = learned_upsampler(num_classes, 32 // 2**skips)

    def decode(self, feats, size):
        score = self.score_fr(self.classifier(feats[4]))  # (N, C, H/32, W/32)
        if self.skips >= 1:
            pool4 = self.score_pool4(feats[3])  # (N, C, H/16, W/16)
            score = crop_to(self.upscore2(score), pool4.shape[-2:]) + pool4
        if self.skips >= 2:
            pool3 = self.score_pool3(feats[2])  # (N, C, H/8, W/8)
            score = crop_to(self.upscore_pool4(score), pool3.shape[-2:]) + pool3
        return crop_to(self.upscore(score), size)  # (N, C, H, W): the paper's crop layer


def fcn_classifier(backbone: nn.Module, config: FCNConfig, backbone_weights: str | None) -> nn.Module:
    """fc6/fc7 as convolutions: VGG's classifier convolutionalised, or the backbone's own head conv."""
    if config.convolutionalised_fc:
        w = config.fc_width
        fc6, fc7 = nn.Conv2d(backbone.channels[4], w, 7, padding=3), nn.Conv2d(w, w, 1)
        vgg16_classifier_as_conv(backbone_weights, fc6, fc7)
        return nn.Sequential(fc6, nn.ReLU(True), nn.Dropout2d(config.dropout), fc7, nn.ReLU(True),
                             nn.Dropout2d(config.dropout))
    classifier = nn.Sequential(backbone.head, nn.Dropout2d(config.dropout))
    backbone.head = None  # now owned by the classifier
    return classifier


CONFIGS = {"vgg16": FCNConfig(),
           "efficientnet_lite0": FCNConfig(convolutionalised_fc=False, fc_width=1280, dropout=0.1),
           "efficientnet_lite2": FCNConfig(convolutionalised_fc=False, fc_width=1280, dropout=0.1)}
CONFIGS["mobilenet_edgetpu"] = CONFIGS["efficientnet_lite0"]


def build_fcn(*, variant: str, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
              config: FCNConfig | None = None) -> FCN:
    config = config or CONFIGS[backbone]
    # The backbone's own head conv is built only when it plays fc6/fc7.
    extra = {} if config.convolutionalised_fc else {"with_head": True}
    net = build_backbone(backbone, weights=backbone_weights, **extra)
    classifier = fcn_classifier(net, config, backbone_weights)
    return FCN(net, classifier, config.fc_width, num_classes, SKIPS[variant])


_PAPER = dict(paper="Fully Convolutional Networks for Semantic Segmentation", year=2015, arxiv="1411.4038", voc12_miou=62.2)
_IDEAS = {
    "32s": "Convolutionalise a classifier and upsample its stride-32 scores with one learned deconvolution.",
    "16s": "FCN-32s plus a skip: scores from pool4 (stride 16) are added before upsampling.",
    "8s": "FCN-16s plus a second skip from pool3 (stride 8): finer detail from shallower layers.",
}
for _order, _variant in enumerate(("32s", "16s", "8s")):
    for _bb, _cfg in CONFIGS.items():
        register(ModelSpec(
            name=f"fcn{_variant}_{_bb}", arch=f"fcn{_variant}", order=10 + _order, title=f"FCN-{_variant}",
            backbone=_bb, output_stride=32 // 2 ** SKIPS[_variant], key_idea=_IDEAS[_variant],
            builder=partial(build_fcn, variant=_variant, backbone=_bb), config=_cfg, **_PAPER))

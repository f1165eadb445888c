"""SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation
(Badrinarayanan, Kendall & Cipolla, TPAMI 2017, https://arxiv.org/abs/1511.00561).

Faithful (VGG16): the encoder max-pools with ``return_indices=True``; the decoder upsamples
with those indices (no learned upsampling), each unpooling followed by convolutions that
densify the sparse map, mirroring the encoder (VGG16-BN: 13 + 13 convs, 29.4M parameters as
the paper's table gives).
Remaining deviations from the released SegNet (``segnet_train.prototxt`` of SegNet-Tutorial):
max-pools use ``ceil_mode`` (Caffe's rounding) and unpooling is a scatter into the pre-pool
size, both as Caffe does; the released net trains with median-frequency class weights (so
does ``segviz.train``); our decoder convs drop the bias before their BN (redundant there).

Compact (MobileNet-EdgeTPU; EfficientNet-Lite0 before it), redesigned so that the pretrained
encoder computes exactly what it was trained to: the four strided convs (depthwise in Lite0, the
fused 3x3 expansions of EdgeTPU's first two stages) keep their strides and weights, and the
max-pool indices come from a *parallel* 2x2 max-pool (stride 2, ceil mode) of the features
entering each strided block (levels at strides 2, 4, 8, 16; EdgeTPU's 16, 24, 40, 72 channels).
The pooled values are discarded; only the argmax positions are kept. The decoder mirrors the
encoder levels: at each stride two 3x3 conv-BN-ReLU, the last narrowing to the width of the
level below, then an unpooling through that level's indices (a sparse map of that width,
twice as large), which the next level's convs densify. Differences from the paper, precisely:
(1) the indices mark the maxima of the features *before* a strided conv, not of the features
the encoder actually downsampled (the encoder downsamples by strided convs, which have no
argmax), so the unpooled values land where the pre-stride features peaked; (2) the decoder
starts with two convs at stride 32 before the first unpooling (in the paper the first decoder
step is an unpooling), because the indices of the deepest level (stride 16 -> 32) have the
stride-16 width, which the stride-32 features reach through those convs; (3) the stem's
stride-2 conv has no pool beside it (its input is the 3-channel image), so the decoder ends at
stride 2 and the scores are upsampled bilinearly for the last factor of 2; (4) two convs per
decoder level instead of VGG16's 2-2-3-3-3; (5) on MobileNet-EdgeTPU the decoder is wider than the
encoder (2x its width at stride 2, 4x at strides 4 to 16: 32, 96, 160, 288 channels), and each level's
index map is reused for every group of decoder channels as wide as the encoder's (decoder channel j unpools
through the indices of encoder channel j mod C). In the paper the decoder is as wide as the encoder; with
the encoder's 16-72 channels it underfitted and scored 6.2 mIoU lower on a drive it never trained on, in
runs of the same 20 epochs (README, "Wider decoders for U-Net and SegNet"; the bundled model trained for
40). Nothing is learned for upsampling, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel, conv_bn_relu
from ..registry import ModelSpec, register


def max_unpool(x: torch.Tensor, indices: torch.Tensor, size) -> torch.Tensor:
    """``F.max_unpool2d(x, indices, 2, output_size=size)``. When traced for export (ONNX,
    OpenVINO), where max_unpool2d's Python checks on the traced sizes fail, the same result is
    computed as a scatter: each value goes to the flat position its index names in a zero map."""
    if not torch.jit.is_tracing():
        return F.max_unpool2d(x, indices, 2, 2, output_size=size)
    n, c = x.shape[0], x.shape[1]
    h, w = size[0], size[1]
    out = x.new_zeros((n, c, h * w))
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, h, w)


@dataclass(frozen=True)
class SegNetConfig:
    pooled: tuple[bool, ...] = (True,) * 5  # is stage i followed by a pool (whose indices the decoder reuses)?
    convs_per_level: tuple[int, ...] = (2, 2, 3, 3, 3)  # decoder convs per level, mirroring VGG16's encoder
    batch_norm_backbone: bool = True  # SegNet's encoder is VGG16-BN
    # False: the encoder's own max-pools give the indices (VGG16). True: the backbone keeps its strided
    # convs and a parallel 2x2 max-pool of each strided block's input gives them (EfficientNet-Lite0).
    parallel_pools: bool = False
    # Decoder channels per encoder channel at each level (parallel pools only): the unpooling of a level k times as
    # wide as the encoder's reuses each index map for k decoder channels.
    widen: tuple[int, ...] = (1,) * 5


class SegNet(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, config: SegNetConfig):
        super().__init__(backbone)
        self.config = config
        self.pooled = list(config.pooled)
        if not config.parallel_pools:
            backbone.remove_strides()
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
        c = backbone.channels  # the encoder's width at each level
        d = [ci * k for ci, k in zip(c, config.widen)]  # the decoder's
        self.decoder = nn.ModuleList()
        for level, n in enumerate(config.convs_per_level):
            cin = c[level] if level == len(c) - 1 else d[level]  # the deepest level reads the encoder's output
            cout = d[level - 1] if level > 0 else d[0]
            convs = [conv_bn_relu(cin if i == 0 else d[level], d[level]) for i in range(n - 1)]
            convs.append(conv_bn_relu(d[level] if n > 1 else cin, cout) if level > 0
                         else nn.Conv2d(d[0], num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*convs))

    def pool_levels(self) -> list[int]:
        """The levels whose max-pool indices the decoder reuses."""
        return [i for i, p in enumerate(self.pooled) if p]

    def features(self, x: torch.Tensor):
        """The encoder, keeping each pool's indices and input size for the decoder."""
        indices, sizes = {}, {}
        if self.config.parallel_pools:
            levels = self.backbone(x)  # unchanged strided encoder: strides 2, 4, 8, 16, 32
            for i in self.pool_levels():
                sizes[i] = levels[i].shape[-2:]
                _, indices[i] = self.pool(levels[i])  # argmax of each 2x2 window entering the next strided block
            return levels[-1], indices, sizes
        for i, stage in enumerate(self.backbone.pooling_stages()):
            x = stage(x)
            if self.pooled[i]:
                sizes[i] = x.shape[-2:]
                x, indices[i] = self.pool(x)  # (N, C_i, ceil(H_i/2), ceil(W_i/2)) + where each max came from
        return x, indices, sizes

    def decode(self, feats, size):
        x, indices, sizes = feats
        if self.config.parallel_pools:
            for level in reversed(range(len(self.decoder))):
                x = self.decoder[level](x)  # densify, then narrow to level - 1's width
                if level - 1 in indices:
                    k = self.config.widen[level - 1]  # each index map serves k decoder channels
                    x = max_unpool(x, indices[level - 1].repeat(1, k, 1, 1), sizes[level - 1])  # sparse, 2x larger
            return x  # (N, num_classes, H/2, W/2), upsampled by the base forward
        for level in reversed(range(len(self.decoder))):
            if level in indices:
                x = max_unpool(x, indices[level], sizes[level])  # sparse, 2x larger
            x = self.decoder[level](x)  # densify
        return x  # (N, num_classes, H, W)


# Compact: parallel pools beside the four strided blocks (the stem has none), two convs per decoder level.
CONFIGS = {"vgg16": SegNetConfig(),
           "efficientnet_lite0": SegNetConfig(pooled=(True, True, True, True, False), convs_per_level=(2,) * 5,
                                              batch_norm_backbone=False, parallel_pools=True)}
CONFIGS["mobilenet_edgetpu"] = SegNetConfig(pooled=(True, True, True, True, False), convs_per_level=(2,) * 5,
                                            batch_norm_backbone=False, parallel_pools=True, widen=(2, 4, 4, 4, 1))


def build_segnet(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None,
                 config: SegNetConfig | None = None) -> SegNet:
    config = config or CONFIGS[backbone]
    extra = {"batch_norm": True} if config.batch_norm_backbone else {}
    return SegNet(build_backbone(backbone, weights=backbone_weights, **extra), num_classes, config)


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"segnet_{_bb}", arch="segnet", order=40, title="SegNet", backbone=_bb,
        output_stride=2 if _cfg.parallel_pools else 1,  # the decoder ends at the encoder's first level
        paper="SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation", year=2015,
        arxiv="1511.00561", voc12_miou=59.9,
        key_idea="The decoder upsamples with the encoder's max-pooling indices, so nothing is learned for upsampling.",
        builder=partial(build_segnet, backbone=_bb), config=_cfg))

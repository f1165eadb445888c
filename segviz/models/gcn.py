"""Large Kernel Matters -- Improve Semantic Segmentation by Global Convolutional Network
(Peng, Zhang, Yu, Luo & Sun, CVPR 2017, https://arxiv.org/abs/1703.02719).

Faithful: on each backbone level (strides 4..32) a global convolutional network (GCN)
module with k = 15: the sum of a (k x 1 then 1 x k) branch and a (1 x k then k x 1)
branch, no nonlinearity, straight to class scores; a boundary-refinement (BR) residual
block (x + conv3x3(ReLU(conv3x3(x)))) after each; coarse scores are upsampled by learned
deconvolutions, added to the finer level and refined again; two final deconv + BR steps
bring the scores to full resolution (paper, Figure 2). No dilation anywhere.
Deviations: the paper's backbone is ResNet-152; ResNet-101 here (torchvision's, stride on
the 3x3 conv). The authors released no network definition, so this follows the paper's
Figure 2 and text only. Compact: MobileNet-EdgeTPU (EfficientNet-Lite0 before it).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

from ..backbones import build_backbone
from ..layers import SegmentationModel, crop_to, learned_upsampler
from ..registry import ModelSpec, register


class GlobalConv(nn.Module):
    """A k x k receptive field for O(k) parameters: (k x 1 + 1 x k) + (1 x k + k x 1)."""

    def __init__(self, in_channels: int, out_channels: int, k: int = 15):
        super().__init__()
        p = k // 2
        self.left = nn.Sequential(nn.Conv2d(in_channels, out_channels, (k, 1), padding=(p, 0)),
                                  nn.Conv2d(out_channels, out_channels, (1, k), padding=(0, p)))
        self.right = nn.Sequential(nn.Conv2d(in_channels, out_channels, (1, k), padding=(0, p)),
                                   nn.Conv2d(out_channels, out_channels, (k, 1), padding=(p, 0)))

    def forward(self, x):
        return self.left(x) + self.right(x)


class BoundaryRefinement(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.residual(x)


@dataclass(frozen=True)
class GCNConfig:
    k: int = 15  # the global conv's kernel size (the paper's best, Table 1)


class GCN(SegmentationModel):
    def __init__(self, backbone: nn.Module, num_classes: int, k: int = 15):
        super().__init__(backbone)
        self.config = GCNConfig(k)
        c = backbone.channels
        self.gcn = nn.ModuleList(GlobalConv(c[i], num_classes, k) for i in (1, 2, 3, 4))  # strides 4, 8, 16, 32
        self.br_in = nn.ModuleList(BoundaryRefinement(num_classes) for _ in range(4))
        self.br_fused = nn.ModuleList(BoundaryRefinement(num_classes) for _ in range(3))
        self.up = nn.ModuleList(learned_upsampler(num_classes, 2) for _ in range(5))
        self.br_final = nn.ModuleList(BoundaryRefinement(num_classes) for _ in range(2))

    def decode(self, feats, size):
        feats = feats[1:]  # strides 4, 8, 16, 32
        scores = [br(gcn(f)) for gcn, br, f in zip(self.gcn, self.br_in, feats)]
        y = scores[3]  # (N, C, H/32, W/32)
        for i in (2, 1, 0):  # stride 16, 8, 4
            y = self.br_fused[i](crop_to(self.up[i](y), scores[i].shape[-2:]) + scores[i])
        y = self.br_final[0](self.up[3](y))  # (N, C, H/2, W/2)
        y = self.br_final[1](self.up[4](y))  # (N, C, H, W) or a little larger
        return crop_to(y, size)


CONFIGS = {"resnet101": GCNConfig(), "efficientnet_lite0": GCNConfig()}
CONFIGS["mobilenet_edgetpu"] = CONFIGS["efficientnet_lite0"]


def build_gcn(*, backbone: str, num_classes: int = 21, backbone_weights: str | None = None, k: int | None = None,
              config: GCNConfig | None = None) -> GCN:
    config = config or CONFIGS[backbone]
    return GCN(build_backbone(backbone, weights=backbone_weights), num_classes, k or config.k)


for _bb, _cfg in CONFIGS.items():
    register(ModelSpec(
        name=f"gcn_{_bb}", arch="gcn", order=100, title="Large Kernel Matters (GCN)", short="GCN", backbone=_bb,
        output_stride=1,  # the last boundary refinement runs at the input's size
        paper="Large Kernel Matters -- Improve Semantic Segmentation by Global Convolutional Network", year=2017,
        arxiv="1703.02719", voc12_miou=82.2,
        key_idea="Large separable kernels (k x 1 + 1 x k) make classification robust, and a residual boundary "
                 "refinement block sharpens localisation.",
        builder=partial(build_gcn, backbone=_bb), config=_cfg))

"""VGG16 (Simonyan & Zisserman 2014, arXiv 1409.1556) as torchvision builds it, cut into five
levels that end at its five max-pools (strides 2..32, widths 64, 128, 256, 512, 512).

FCN, SegNet, the Dilation front-end and DeepLab v1 all start from this network. For output
stride 8/16 the later pools are removed and the following convs dilated, as the Dilation
paper's front-end does. DeepLab v1 pools differently (:meth:`VGG16.use_deeplab_pools`: its
released nets use 3x3 pad-1 max-pools, stride 2 for pool1-3 and stride 1 for pool4/pool5),
which changes the receptive field by far more than a few pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class VGG16(Backbone):
    channels = (64, 128, 256, 512, 512)
    mean, std = MEAN, STD

    def __init__(self, output_stride: int = 32, batch_norm: bool = False):
        super().__init__()
        import torchvision

        features = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None).features
        stages, current = [], []
        for layer in features:
            if isinstance(layer, nn.MaxPool2d):
                layer.ceil_mode = True  # as Caffe pools: odd sizes keep their last row/column
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
        self.stages = nn.ModuleList(stages)
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.output_stride = output_stride
        rate = 1
        for level, stage in enumerate(self.stages):
            for i, layer in enumerate(stage):
                if isinstance(layer, nn.Conv2d):
                    layer.dilation, layer.padding = (rate, rate), (rate, rate)
            if 2 ** (level + 1) > output_stride:
                stage[-1] = nn.Identity()  # pool removed; later convs dilated instead
                rate *= 2
            elif isinstance(stage[-1], nn.Identity):
                stage[-1] = nn.MaxPool2d(2, 2, ceil_mode=True)

    def use_deeplab_pools(self) -> None:
        """DeepLab-LargeFOV's released pooling (``train.prototxt`` of DeepLab v1): pool1-3 are 3x3
        stride-2 pad-1 max-pools, pool4 and pool5 3x3 stride-1 pad-1 max-pools (output stride 8;
        conv5 dilated 2 as ``set_output_stride(8)`` leaves it). Caffe rounds pool sizes up, so
        ``ceil_mode`` keeps Caffe's output sizes. No parameters change."""
        if self.output_stride != 8:
            raise ValueError("DeepLab's pools need output_stride 8")
        for level, stage in enumerate(self.stages):
            stage[-1] = nn.MaxPool2d(3, 2 if level < 3 else 1, padding=1, ceil_mode=True)

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def remove_strides(self) -> None:
        """Drop the five max-pools (SegNet pools between stages itself, keeping the indices)."""
        for stage in self.stages:
            stage[-1] = nn.Identity()

    def pooling_stages(self) -> list[nn.Module]:
        return list(self.stages)


def vgg16(*, weights: str | None = None, output_stride: int = 32, batch_norm: bool = False) -> VGG16:
    model = VGG16(output_stride=output_stride, batch_norm=batch_norm)
    if weights == "imagenet":
        import torchvision

        tv = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights="DEFAULT")
        own = [p for p in model.state_dict()]
        theirs = [v for k, v in tv.features.state_dict().items()]
        model.load_state_dict(dict(zip(own, theirs)), strict=True)
    elif weights is not None:
        raise ValueError(f"unknown weights {weights!r} for vgg16; choose 'imagenet' or None")
    return model


def vgg16_classifier_as_conv(weights: str | None, fc6: nn.Conv2d, fc7: nn.Conv2d) -> None:
    """Convolutionalise VGG16's ImageNet fc6/fc7 into 7x7 and 1x1 convs (FCN, section 3.1)."""
    if weights != "imagenet":
        return
    import torchvision

    tv = torchvision.models.vgg16(weights="DEFAULT").classifier
    with torch.no_grad():
        fc6.weight.copy_(tv[0].weight.view(fc6.weight.shape))
        fc6.bias.copy_(tv[0].bias)
        fc7.weight.copy_(tv[3].weight.view(fc7.weight.shape))
        fc7.bias.copy_(tv[3].bias)

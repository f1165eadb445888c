"""Backbones: each returns five feature levels at nominal strides 2, 4, 8, 16, 32."""
from __future__ import annotations

from .base import Backbone
from .efficientnet_lite import efficientnet_lite0, efficientnet_lite2
from .mobilenet_edgetpu import mobilenet_edgetpu
from .resnet import resnet50, resnet101
from .vgg import vgg16

BACKBONES = {
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_lite2": efficientnet_lite2,
    "mobilenet_edgetpu": mobilenet_edgetpu,
    "vgg16": vgg16,
    "resnet50": resnet50,
    "resnet101": resnet101,
}

# The weights each backbone starts training from: ImageNet classification, or Cityscapes segmentation for
# MobileNet-EdgeTPU (the only pretrained weights of it there are here).
PRETRAINED = {"efficientnet_lite0": "imagenet", "efficientnet_lite2": "imagenet", "vgg16": "imagenet",
              "resnet50": "imagenet", "resnet101": "imagenet", "mobilenet_edgetpu": "cityscapes"}


def build_backbone(name: str, *, weights: str | None = None, output_stride: int = 32, **kwargs) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](weights=weights, output_stride=output_stride, **kwargs)


__all__ = ["Backbone", "BACKBONES", "PRETRAINED", "build_backbone"]

"""Blocks shared by two or more models."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``size`` (H, W), the fixed upsampling most papers use."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def bilinear_kernel(channels: int, k: int) -> torch.Tensor:
    """Weights that make a per-channel ConvTranspose2d do bilinear interpolation (FCN's init)."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = torch.arange(k, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, k, k)
    weight[range(channels), range(channels)] = kernel
    return weight


def learned_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A transposed conv upsampling by ``factor``, initialised to bilinear and trained (FCN, GCN)."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def crop_to(x: torch.Tensor, size) -> torch.Tensor:
    """FCN's crop layer: cut a (possibly larger) upsampled map to ``size``."""
    return x[..., : size[0], : size[1]]


class FCNHead(nn.Sequential):
    """The auxiliary head torchvision (DeepLab v3) and PSPNet put on the stride-16 level."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = max(in_channels // 4, 32)
        super().__init__(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
                         nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


class SegmentationModel(nn.Module):
    """Backbone + head; ``forward`` returns ``{"out": logits at input size}`` (+ ``"aux"``).

    The one forward every model shares (torchvision's ``_SimpleSegmentationModel``):
    ``features`` (the backbone's levels by default) -> ``decode`` (the paper's head, which a
    subclass writes) -> bilinear resize to the input size when the head stops short of it ->
    in training, ``aux_classifier`` on level ``aux_level`` resized the same way.
    """

    aux_level = 3  # the stride-16 level (torchvision's "aux" on ResNet's layer3)

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.aux_classifier = None  # a subclass with an auxiliary head sets it after its main head
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB floats in [0, 1] -> the backbone's ImageNet normalisation."""
        return (images - self.mean) / self.std

    def branches(self) -> list:
        """The dilated / pooled branches this model declares through its config (``segviz.dilation.Branch``)."""
        declare = getattr(getattr(self, "config", None), "branches", None)
        return list(declare()) if declare is not None else []

    def features(self, x: torch.Tensor):
        return self.backbone(x)  # five levels at strides 2, 4, 8, 16, 32 (capped by the output stride)

    def decode(self, feats, size) -> torch.Tensor:
        """The paper's head: features -> class scores at its own stride (``size`` is the input's, for crops)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.features(x)
        out = self.decode(feats, size)  # (N, num_classes, H/s, W/s) for the head's finest stride s
        result = {"out": out if out.shape[-2:] == size else upsample_to(out, size)}  # (N, num_classes, H, W)
        if self.aux_classifier is not None and self.training:
            result["aux"] = upsample_to(self.aux_classifier(feats[self.aux_level]), size)
        return result
